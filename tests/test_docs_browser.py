"""/docs and /redoc in a real headless browser, with every name but 127.0.0.1 unresolvable.

The pages load Swagger UI and ReDoc from the package (fastapi-offline's
files), not from a CDN; with the browser unable to reach any other host,
the operations still render. Chromium comes from Debian's ``chromium``
package (``.ci/run`` installs it); without a browser the test skips, which
under ``CI=true`` is a failure.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")

from tests.serve_process import Server

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome-headless-shell")


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"no headless browser on PATH ({', '.join(BROWSERS)}); apt-get install chromium")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("docs")
    srv = Server(root / "data", root / "server.log")
    try:
        yield srv
    finally:
        srv.stop()


def _dom(browser: str, url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran (virtual time), offline but for the loopback server."""
    r = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",  # no CDN could answer
            "--virtual-time-budget=20000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_swagger_ui_renders_the_operations_offline(server: Server, tmp_path: Path) -> None:
    dom = _dom(_browser(), server.url + "/docs", tmp_path / "profile")
    assert "Failed to load API definition" not in dom
    paths = set(re.findall(r'class="opblock-summary-path[^"]*" data-path="([^"]+)"', dom))
    assert paths >= {"/item/{customerId}/{itemId}", "/items/{customerId}", "/checkout/{customerId}", "/healthz"}, dom[
        :2000
    ]
    operations = set(re.findall(r'id="operations-[\w-]+-(\w+)"', dom))
    assert operations >= {"addItem", "updateCount", "deleteItem", "listItems", "checkout", "readyz"}


def test_redoc_renders_offline(server: Server, tmp_path: Path) -> None:
    dom = _dom(_browser(), server.url + "/redoc", tmp_path / "profile")
    assert "Add an item (re-adding sums the counts)" in dom and "Check out" in dom, dom[:2000]
