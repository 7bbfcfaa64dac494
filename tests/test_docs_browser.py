"""/docs and /redoc in a real headless browser, with every name but 127.0.0.1 unresolvable.

The pages load Swagger UI and ReDoc from the package (fastapi-offline's
files), not from a CDN; with the browser unable to reach any other host,
the operations still render. Chromium comes from Debian's ``chromium``
package (``.ci/run`` installs it); without a browser the test skips, which
under ``CI=true`` is a failure.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from tests.serve_process import Server  # noqa: E402

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
    assert operations >= {"addItem", "updateCount", "deleteItem", "listItems", "checkout", "readyz", "metrics"}


def test_swagger_ui_offers_the_documented_example_body(server: Server, tmp_path: Path) -> None:
    """ "Try it out" sends the body Swagger UI shows: the documented example, which the API accepts
    (Swagger UI used to make one up from every field, itemCount and unitCount together: refused)."""
    dom = _dom(_browser(), server.url + "/docs#/cart/addItem", tmp_path / "profile")  # deep link: expanded
    section = dom.partition("opblock-section-request-body")[2]
    assert section, dom[:2000]
    shown = json.loads(
        html.unescape(re.sub(r"<[^>]+>", "", section.partition("<code")[2].partition(">")[2].partition("</code>")[0]))
    )
    assert shown == {"offeredPrice": 50, "itemCount": 2}
    r = httpx.post(server.url + "/item/swagger/036000291459", json=shown, timeout=10)
    assert r.status_code == 200 and r.json()["itemCount"] == 2


def test_redoc_renders_offline(server: Server, tmp_path: Path) -> None:
    dom = _dom(_browser(), server.url + "/redoc", tmp_path / "profile")
    assert "Add an item (re-adding sums the counts)" in dom and "Check out" in dom, dom[:2000]
