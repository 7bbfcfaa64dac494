"""End to end: a real ``dhtcart serve`` process on a free loopback port, driven over HTTP.

The server is started with the command a user types (``dhtcart serve --port P
--data DIR``; ``python -m dhtcart`` when the script is not on PATH), waited for
(at most 20 s), and always stopped in teardown: SIGTERM, then SIGKILL to its
whole process group if it lingers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from dhtcart import CartService  # noqa: E402

READY_TIMEOUT = 20.0


def _command() -> list[str]:
    script = shutil.which("dhtcart")
    return [script] if script else [sys.executable, "-m", "dhtcart"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One ``dhtcart serve`` process (and its workers, in their own process group)."""

    def __init__(self, data: Path, log: Path, *extra: str) -> None:
        self.data = data
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DHTCART_")}
        self.proc = subprocess.Popen(
            [*_command(), "serve", "--port", str(self.port), "--data", str(data), *extra],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: teardown can reach the workers too
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dhtcart serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"dhtcart serve not ready after {READY_TIMEOUT} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, as a process manager sends it; return the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.terminate(10.0)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # leftover workers, if any
            self.proc.wait(5)
            self._log.close()


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


def _body(r: Any) -> Any:
    return json.loads(r.content, parse_float=Decimal)


def _error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message", "details"}, doc
    assert doc["error"]["code"] == code
    return doc["error"]  # type: ignore[no-any-return]


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
    _error(http.post("/item/cy/x", content=b"{nope", headers=json_type), 400, "malformed_json")
    _error(http.get("/no/such/thing"), 404, "not_found")
    _error(http.delete("/item/cy/missing"), 404, "item_not_found")
    _error(http.delete("/items/cy"), 404, "cart_empty")
    r = http.request("PATCH", "/items/cy")
    _error(r, 405, "method_not_allowed")
    assert set(r.headers["allow"].split(", ")) == {"GET", "HEAD", "DELETE"}  # HEAD works on every GET route
    http.post("/item/cy/old", json={"offeredPrice": 1, "specialSale": True, "saleExpiration": "2001-01-01"})
    err = _error(http.delete("/items/cy"), 409, "sale_expired")
    assert err["details"]["itemIds"] == ["old"]
    big = b'{"offeredPrice": 1, "saleExpiration": "' + b"x" * 100_000 + b'"}'
    _error(http.post("/item/cy/x", content=big, headers=json_type), 413, "payload_too_large")
    _error(
        http.post("/item/cy/x", content=b'{"offeredPrice": 1}', headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    _error(http.post("/item/cy/x", json={"offeredPrice": 1, "itemCount": "2"}), 422, "invalid_input")
    _error(http.post("/item/cy/x", json={"offeredPrice": 1, "colour": "red"}), 422, "invalid_input")
    _error(http.get("/items/" + "c" * 129), 422, "invalid_input")
    _error(http.get("/items/a%01b"), 422, "invalid_input")
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
                            _error(r, 503, "unavailable")
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
