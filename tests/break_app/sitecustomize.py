"""Loaded by every Python process started with this directory on PYTHONPATH (site's hook).

With ``DHTCART_TEST_BREAK_APP=1``, ``import dhtcart.http`` fails, as it would
in a broken installation: ``dhtcart serve`` itself starts, its workers cannot
build the app. Used by ``test_http_serve.py`` only.
"""

import os
import sys

if os.environ.get("DHTCART_TEST_BREAK_APP") == "1":

    class _Broken:
        @staticmethod
        def find_spec(name: str, path: object = None, target: object = None) -> None:
            if name == "dhtcart.http":
                raise ImportError("dhtcart.http is broken on purpose (tests/break_app)")

    sys.meta_path.insert(0, _Broken())  # type: ignore[arg-type]
