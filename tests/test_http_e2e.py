"""End to end: a real ``dhtcart serve`` process on a free loopback port, driven over HTTP.

The server is :class:`tests.serve_process.Server`: started with the command a
user types (``dhtcart serve --port P --data DIR``), waited for, and always
stopped in teardown. The issue-10 features (seed profile, ETag/If-Match,
HEAD, metrics, stalled clients, port in use) are in ``test_http_serve.py``.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from dhtcart import CartService  # noqa: E402
from tests.serve_process import Server, assert_error  # noqa: E402
from tests.serve_process import body as _body  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("e2e")
    srv = Server(root / "data", root / "server.log")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        yield c


# -- the seed's scenario, every spelling ---------------------------------------------------


def test_seed_scenario(http: httpx.Client, server: Server) -> None:
    assert f"store {server.data} (5 shards)" in server.log()  # created before the workers start
    assert _body(http.get("/items/alice")) == {"customerId": "alice", "items": []}
    assert http.post("/item/alice/036000291459", json={"offeredPrice": 50, "itemCount": 2}).status_code == 200
    assert http.post("/item/alice/sku-2", json={"offeredPrice": 10, "itemCount": 3}).status_code == 200
    assert _body(http.put("/item/alice/036000291459", json={"newCount": 1}))["itemCount"] == 1
    assert http.delete("/item/alice/036000291459").status_code == 204
    r = http.delete("/items/alice")
    assert r.status_code == 200 and _body(r)["total"] == Decimal("30.00") and '"total":30.00' in r.text
    assert _body(http.get("/items/alice"))["items"] == []


def test_seed_code_spellings(http: httpx.Client) -> None:
    assert _body(http.post("/items/bob/036000291459", json={"offeredPrice": 50, "unitCount": 2}))["itemCount"] == 2
    assert http.post("/items/bob/sku-2", json={"offeredPrice": 10, "unitCount": 3}).status_code == 200
    assert _body(http.put("/items/bob/036000291459", json={"newCount": 1}))["itemCount"] == 1
    assert http.delete("/items/bob/036000291459").status_code == 204
    assert _body(http.post("/checkout/bob"))["total"] == Decimal("30.00")
    assert _body(http.get("/items/bob"))["items"] == []


def test_every_error_status_over_the_wire(http: httpx.Client, server: Server) -> None:
    json_type = {"content-type": "application/json"}
    assert_error(http.post("/item/cy/x", content=b"{nope", headers=json_type), 400, "malformed_json")
    assert_error(http.get("/no/such/thing"), 404, "not_found")
    assert_error(http.delete("/item/cy/missing"), 404, "item_not_found")
    assert_error(http.delete("/items/cy"), 404, "cart_empty")
    r = http.request("PATCH", "/items/cy")
    assert_error(r, 405, "method_not_allowed")
    assert set(r.headers["allow"].split(", ")) == {"GET", "HEAD", "DELETE"}  # HEAD works on every GET route
    http.post("/item/cy/old", json={"offeredPrice": 1, "specialSale": True, "saleExpiration": "2001-01-01"})
    err = assert_error(http.delete("/items/cy"), 409, "sale_expired")
    assert err["details"]["itemIds"] == ["old"]
    big = b'{"offeredPrice": 1, "saleExpiration": "' + b"x" * 100_000 + b'"}'
    assert_error(http.post("/item/cy/x", content=big, headers=json_type), 413, "payload_too_large")
    assert_error(
        http.post("/item/cy/x", content=b'{"offeredPrice": 1}', headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    assert_error(http.post("/item/cy/x", json={"offeredPrice": 1, "itemCount": "2"}), 422, "invalid_input")
    assert_error(http.post("/item/cy/x", json={"offeredPrice": 1, "colour": "red"}), 422, "invalid_input")
    assert_error(http.get("/items/" + "c" * 129), 422, "invalid_input")
    assert_error(http.get("/items/a%01b"), 422, "invalid_input")
    assert http.get("/healthz").json() == {"status": "ok"}
    # one log line per request: method, path, status, latency
    time.sleep(0.2)
    assert re.search(r'"POST /item/cy/x" 413 [0-9.]+ms', server.log()), server.log()[-2000:]
    assert re.search(r'"DELETE /items/cy" 409 [0-9.]+ms', server.log())


# -- concurrency through two worker processes ------------------------------------------------


def test_eight_threads_hundred_adds_two_workers(tmp_path: Path) -> None:
    srv = Server(tmp_path / "data", tmp_path / "server.log", "--workers", "2")
    try:
        statuses: Counter[int] = Counter()
        lock = threading.Lock()

        def client() -> None:
            with httpx.Client(base_url=srv.url, timeout=30.0) as c:
                for _ in range(100):
                    r = c.post("/item/shared-cart/036000291459", json={"offeredPrice": 1.25})
                    with lock:
                        statuses[r.status_code] += 1

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == {200: 800}
        items = _body(httpx.get(srv.url + "/items/shared-cart"))["items"]
        assert [(i["itemId"], i["itemCount"]) for i in items] == [("036000291459", 800)]
        pids = set(re.findall(r"\[(\d+)\] dhtcart\.access", srv.log()))
        assert pids, "no access log lines"
        assert srv.terminate() == 0
        assert "Stopping parent process" in srv.log() or "Finished server process" in srv.log()
    finally:
        srv.stop()


# -- SIGTERM with requests in flight -------------------------------------------------------------


def test_sigterm_with_requests_in_flight(tmp_path: Path) -> None:
    srv = Server(tmp_path / "data", tmp_path / "server.log")
    ok = 0
    failed_cleanly: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()
    try:

        def client() -> None:
            nonlocal ok
            with httpx.Client(base_url=srv.url, timeout=10.0) as c:
                while not stop.is_set():
                    try:
                        r = c.post("/item/term/x", json={"offeredPrice": 2})
                    except httpx.TransportError as exc:  # connection closed or refused: clean
                        with lock:
                            failed_cleanly[type(exc).__name__] += 1
                        if isinstance(exc, httpx.ConnectError):
                            return  # the port is closed: the server is gone
                        continue
                    with lock:
                        if r.status_code == 200:
                            ok += 1
                        else:  # shutting down: a 503 in the error shape, never a 500
                            assert_error(r, 503, "unavailable")
                            failed_cleanly["503"] += 1

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while ok < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ok >= 200, srv.log()[-2000:]
        started = time.monotonic()
        code = srv.terminate(15.0)
        took = time.monotonic() - started
        stop.set()
        for t in threads:
            t.join(20)
        assert code == 0, srv.log()[-2000:]
        assert took < 10, f"shutdown took {took:.1f} s"
        assert "Application shutdown complete" in srv.log()
    finally:
        stop.set()
        srv.stop()
    # every acknowledged add is on disk (a request cut off mid-way may or may not have landed)
    with CartService.open(tmp_path / "data") as carts:
        items = carts.list_items("term")
    stored = items[0].item_count if items else 0
    assert ok <= stored <= ok + sum(failed_cleanly.values()), (ok, stored, failed_cleanly)
    print(f"SIGTERM: {ok} acknowledged, {stored} stored, failures {dict(failed_cleanly)}, {took:.2f} s")
