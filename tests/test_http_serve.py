"""What production users expect of ``dhtcart serve``, over real HTTP against real processes.

Each server here is the command a user types (:class:`tests.serve_process.Server`):

* the seed client's scenario under ``--compat seed``;
* ``ETag`` / ``If-Match``: a stale tag gets 412 and changes nothing; clients
  racing with one tag through two workers: exactly one wins, every round;
* ``HEAD`` on every ``GET`` route: the same status and headers, no body;
* ``/metrics`` counting the requests that two workers served, and keeping a
  killed worker's counts while its live gauge goes;
* stalled clients disconnected after ``--request-timeout``; the connection
  limit; a port in use; workers that cannot start (exit 3, never 0).

Every address is on the loopback interface; every loop is bounded.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from tests.serve_process import Server, assert_error, body, clean_env, command, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BREAK_APP = Path(__file__).resolve().parent / "break_app"


@pytest.fixture(scope="module")
def seed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("seed")
    srv = Server(root / "data", root / "server.log", "--compat", "seed")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("two")
    srv = Server(root / "data", root / "server.log", "--workers", "2")
    try:
        yield srv
    finally:
        srv.stop()


# -- the seed client, unchanged -------------------------------------------------------------


def test_seed_client_scenario(seed_server: Server) -> None:
    """The seed's tests/test_api.py scenario, as the issue lists it, against --compat seed."""
    with httpx.Client(base_url=seed_server.url, timeout=10.0) as c:
        r = c.delete("/items/jea265")  # checkout of an empty cart: 200 {} in the seed's shapes
        assert r.status_code == 200 and r.json() == {}
        assert c.get("/items/jea265").json() == []
        r = c.post("/items/jea265/036000291459", json={"unitCount": 2, "offeredPrice": 50})
        assert r.status_code == 200
        added = r.json()
        assert added["itemId"] == "036000291459" and added["unitCount"] == 2 and added["offeredPrice"] == 50
        assert set(added) == {"itemId", "unitCount", "offeredPrice", "specialSale", "saleExpiration", "timestamp"}
        assert abs(added["timestamp"] - time.time()) < 60  # epoch seconds of the add
        assert c.post("/items/jea265/987243752377", json={"unitCount": 3, "offeredPrice": 10}).status_code == 200
        items = c.get("/items/jea265").json()
        assert [(i["itemId"], i["unitCount"], i["offeredPrice"]) for i in items] == [
            ("036000291459", 2, 50),
            ("987243752377", 3, 10),
        ]
        r = c.put("/items/jea265/036000291459", json={"newCount": 1})
        assert r.status_code == 200 and r.json()["unitCount"] == 1
        assert c.get("/items/jea265").json()[0]["unitCount"] == 1
        r = c.delete("/items/jea265/036000291459")
        assert r.status_code == 200 and r.json() == {}
        items = c.get("/items/jea265").json()
        assert [i["itemId"] for i in items] == ["987243752377"]
        r = c.post("/checkout/jea265")
        assert r.status_code == 200
        lines = body(r)
        assert isinstance(lines, list) and sum(ln["unitCount"] * ln["offeredPrice"] for ln in lines) == Decimal(30)
        assert c.get("/items/jea265").json() == []


def test_seed_profile_keeps_the_seed_bugs_fixed(seed_server: Server) -> None:
    with httpx.Client(base_url=seed_server.url, timeout=10.0) as c:
        c.post("/items/sb/0001", json={"unitCount": 2, "offeredPrice": 1})
        r = c.post("/item/sb/0001", json={"itemCount": 3, "offeredPrice": 1})  # the README spelling too
        assert r.json()["unitCount"] == 5 and r.json()["itemId"] == "0001"  # summed; zeros kept
        assert len(c.get("/items/sb").json()) == 1
        assert_error(c.post("/items/sb/x", json={"unitCount": "2", "offeredPrice": 1}), 422, "invalid_input")
        assert_error(c.put("/items/sb/missing", json={"newCount": 1}), 404, "item_not_found")
        assert c.post("/checkout/nobody").json() == []  # nothing to check out: an empty array
        tag = c.get("/items/sb").headers["etag"]
        r = c.get("/items/sb", headers={"If-None-Match": "*"})  # the seed profile honours it too
        assert (r.status_code, r.content, r.headers["etag"]) == (304, b"", tag)


# -- ETag and If-Match ---------------------------------------------------------------------------


def test_etag_and_if_match(two_workers: Server) -> None:
    with httpx.Client(base_url=two_workers.url, timeout=10.0) as c:
        r = c.get("/items/etag-cart")
        assert r.headers["etag"] == '"0"'  # no cart yet
        r = c.post("/item/etag-cart/a", json={"offeredPrice": 1}, headers={"If-Match": '"0"'})
        assert r.status_code == 200
        tag = r.headers["etag"]
        assert re.fullmatch(r'"[0-9]+"', tag) and c.get("/items/etag-cart").headers["etag"] == tag
        before = c.get("/items/etag-cart").content

        stale = '"0"'
        for method, path, payload in (
            ("POST", "/item/etag-cart/b", {"offeredPrice": 2}),
            ("PUT", "/item/etag-cart/a", {"newCount": 5}),
            ("DELETE", "/item/etag-cart/a", None),
            ("DELETE", "/items/etag-cart", None),
        ):
            r = c.request(method, path, json=payload, headers={"If-Match": stale})
            err = assert_error(r, 412, "precondition_failed")
            assert err["details"] == {"customerId": "etag-cart", "etag": tag} and r.headers["etag"] == tag
        assert c.get("/items/etag-cart").content == before  # a stale If-Match changed nothing

        r = c.put("/item/etag-cart/a", json={"newCount": 4}, headers={"If-Match": tag})
        assert r.status_code == 200 and r.json()["itemCount"] == 4
        new_tag = r.headers["etag"]
        assert new_tag != tag and c.get("/items/etag-cart").headers["etag"] == new_tag
        assert_error(
            c.put("/item/etag-cart/a", json={"newCount": 1}, headers={"If-Match": 'W/"1"'}), 412, "precondition_failed"
        )
        for method in ("GET", "HEAD"):  # If-None-Match naming the current version: 304, no body on the wire
            r = c.request(method, "/items/etag-cart", headers={"If-None-Match": new_tag})
            assert (r.status_code, r.content, r.headers["etag"]) == (304, b"", new_tag)
        assert c.get("/items/etag-cart", headers={"If-None-Match": tag}).status_code == 200  # an older one
        r = c.delete("/items/etag-cart", headers={"If-Match": f'"999", {new_tag}'})  # a list: any may match
        assert r.status_code == 200 and body(r)["total"] == Decimal("4.00")
        assert c.put("/item/etag-cart/a", json={"newCount": 1}, headers={"If-Match": "*"}).status_code == 404


def _race(clients: list[httpx.Client], tag: str) -> Counter[int]:
    """Every client adds at once with ``If-Match: tag``; the statuses they got."""
    barrier = threading.Barrier(len(clients))
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def write(client: httpx.Client) -> None:
        barrier.wait(timeout=20)
        r = client.post("/item/race/x", json={"offeredPrice": 1}, headers={"If-Match": tag})
        with lock:
            statuses[r.status_code] += 1

    threads = [threading.Thread(target=write, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return statuses


def test_clients_racing_with_one_etag_exactly_one_wins(two_workers: Server) -> None:
    """Eight clients, one ETag, through two worker processes: one write lands, seven get 412, every round."""
    rounds, clients = 15, [httpx.Client(base_url=two_workers.url, timeout=10.0) for _ in range(8)]
    try:
        clients[0].post("/item/race/x", json={"offeredPrice": 1})
        for rnd in range(rounds):
            statuses = _race(clients, clients[0].get("/items/race").headers["etag"])
            assert statuses == {200: 1, 412: len(clients) - 1}, (rnd, statuses)
        items = clients[0].get("/items/race").json()["items"]
        assert items[0]["itemCount"] == 1 + rounds  # exactly one add per round landed
    finally:
        for c in clients:
            c.close()


# -- HEAD --------------------------------------------------------------------------------------


GET_ROUTES = [
    "/items/head-cart",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/redoc",
    "/docs/static/swagger-ui.css",
]


def test_head_on_every_get_route(two_workers: Server) -> None:
    with httpx.Client(base_url=two_workers.url, timeout=10.0) as c:
        c.post("/item/head-cart/x", json={"offeredPrice": 1})
        for path in GET_ROUTES:
            got, head = c.get(path), c.head(path)
            assert head.status_code == got.status_code == 200, path
            assert head.content == b"", path
            assert head.headers["content-type"] == got.headers["content-type"], path
            if path != "/metrics":  # the metrics grow between the two requests
                assert head.headers["content-length"] == got.headers["content-length"], path
            assert head.headers.get("etag") == got.headers.get("etag"), path
    # on the wire: headers, then nothing (a body would corrupt the next response on the connection)
    with socket.create_connection(("127.0.0.1", two_workers.port), timeout=5) as s:
        s.sendall(b"HEAD /items/head-cart HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"etag:" in head.lower() and rest == b""


# -- metrics across workers -----------------------------------------------------------------------


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of the series of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            series, _, value = line.rpartition(" ")
            found = dict(re.findall(r'(\w+)="([^"]*)"', series))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(value)
    return total


def test_metrics_count_the_requests_of_two_workers(two_workers: Server) -> None:
    """Requests on fresh connections until both workers have served some; any worker's /metrics counts all."""
    route = {"route": "/items/{customerId}", "method": "GET"}

    def scrape() -> str:
        time.sleep(0.2)  # the last response's counting happens just after it is sent
        return httpx.get(two_workers.url + "/metrics", timeout=10.0).text

    before = scrape()
    served_by: set[str] = set()
    sent = 0
    deadline = time.monotonic() + 30
    while (len(served_by) < 2 or sent < 50) and sent < 2000 and time.monotonic() < deadline:
        with httpx.Client(base_url=two_workers.url, timeout=10.0) as c:  # a new connection each time
            assert c.get("/items/metered").status_code == 200
        sent += 1
        if sent % 25 == 0:
            time.sleep(0.1)  # let the access log reach its file
            served_by = set(re.findall(r'\[(\d+)\] dhtcart\.access: \S+ "GET /items/metered"', two_workers.log()))
    assert len(served_by) == 2, f"one worker served all {sent} requests"
    for _ in range(3):  # whichever worker answers, it reports both
        after = scrape()
        grown = _metric(after, "dhtcart_http_requests_total", **route, status="200") - _metric(
            before, "dhtcart_http_requests_total", **route, status="200"
        )
        assert grown == sent
        assert (
            _metric(after, "dhtcart_http_request_duration_seconds_count", **route)
            - _metric(before, "dhtcart_http_request_duration_seconds_count", **route)
            == sent
        )
        assert _metric(after, "dhtcart_store_operations_total", operation="list") >= sent
        assert _metric(after, "dhtcart_workers") == 2
        assert 'dhtcart_http_request_duration_seconds_bucket{le="0.005"' in after


# -- bad clients ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("guarded")
    srv = Server(root / "data", root / "server.log", "--request-timeout", "1", "--max-connections", "12")
    try:
        yield srv
    finally:
        srv.stop()


def test_stalled_clients_are_disconnected_after_the_timeout(guarded: Server) -> None:
    """Ten clients stall: before their first byte, mid-headers, mid-body. All are answered 408 and closed."""
    stalls = [
        b"",  # connects and says nothing
        b"GET /items/x HTTP/1.1\r\nHost: x\r\n",  # headers never finished
        b"POST /item/x/y HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{",
    ]
    sockets = []
    for i in range(10):
        s = socket.create_connection(("127.0.0.1", guarded.port), timeout=10)
        s.sendall(stalls[i % len(stalls)])
        sockets.append(s)
    started = time.monotonic()
    answers = []
    try:
        for s in sockets:
            raw = b""
            while chunk := s.recv(65536):  # until the server closes the connection
                raw += chunk
            answers.append((time.monotonic() - started, raw))
    finally:
        for s in sockets:
            s.close()
    took = max(t for t, _ in answers)
    assert 0.5 <= took < 5, f"stalled connections closed after {took:.1f} s (timeout 1 s)"
    for _, raw in answers:
        assert raw.startswith(b"HTTP/1.1 408"), raw[:200]
        assert b'"code":"request_timeout"' in raw
    assert httpx.get(guarded.url + "/healthz", timeout=5).status_code == 200  # and the server is fine


def test_connections_beyond_the_limit_get_503(guarded: Server) -> None:
    idle = [socket.create_connection(("127.0.0.1", guarded.port), timeout=10) for _ in range(12)]
    try:
        time.sleep(0.1)
        with httpx.Client(base_url=guarded.url, timeout=5) as c:
            r = c.get("/healthz")
        assert_error(r, 503, "too_many_connections")
        assert r.headers["retry-after"] == "1" and r.headers["connection"] == "close"
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the idle ones are gone: room again
        if httpx.get(guarded.url + "/healthz", timeout=5).status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError("the server never had room again")


def test_port_in_use_says_which_option_to_change(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for workers in ("1", "2"):
            r = subprocess.run(
                [*command(), "serve", "--port", str(port), "--data", str(tmp_path / "d"), "--workers", workers],
                capture_output=True,
                text=True,
                timeout=60,
                env=clean_env(),
            )
            assert r.returncode == 3, (r.returncode, r.stderr)
            assert f"port {port}" in r.stderr and "in use" in r.stderr and "--port" in r.stderr, r.stderr
            assert "Traceback" not in r.stderr
    assert not (tmp_path / "d").exists()  # checked before the store was created


@pytest.mark.parametrize("workers", ["1", "2"])
def test_workers_that_cannot_start_make_serve_exit_non_zero(tmp_path: Path, workers: str) -> None:
    """The app cannot be imported in the workers: serve exits 3, not 0, and does not hang."""
    env = clean_env(DHTCART_TEST_BREAK_APP="1")
    env["PYTHONPATH"] = f"{BREAK_APP}:{env['PYTHONPATH']}"
    port = free_port()
    started = time.monotonic()
    r = subprocess.run(
        [*command(), "serve", "--port", str(port), "--data", str(tmp_path / "d"), "--workers", workers],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 3, (r.returncode, r.stderr[-3000:])
    assert "cannot build the app" in r.stderr and "broken on purpose" in r.stderr
    assert time.monotonic() - started < 30


def _workers_of(server: Server) -> set[int]:
    """The pids of the server's worker processes (its spawned children, not multiprocessing's helpers)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == server.proc.pid and b"spawn_main" in cmdline:
            pids.add(int(entry.name))
    return pids


def test_a_killed_worker_is_replaced_and_its_counts_kept(tmp_path: Path) -> None:
    """SIGKILL one of two workers: uvicorn starts another; the dead one's counts stay, its gauge goes."""
    srv = Server(tmp_path / "data", tmp_path / "server.log", "--workers", "2")
    try:
        for _ in range(40):
            with httpx.Client(base_url=srv.url, timeout=10.0) as c:
                assert c.get("/items/killed").status_code == 200
        time.sleep(0.3)
        before = _metric(httpx.get(srv.url + "/metrics", timeout=10).text, "dhtcart_http_requests_total")
        assert before >= 40
        workers = _workers_of(srv)
        assert len(workers) == 2, workers
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = _workers_of(srv)
            if len(now) == 2 and victim not in now:
                text = httpx.get(srv.url + "/metrics", timeout=10).text
                if _metric(text, "dhtcart_workers") == 2:
                    break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no replacement worker, or the dead one still counted:\n{srv.log()[-3000:]}")
        assert _metric(text, "dhtcart_http_requests_total") >= before  # the dead worker's requests stay counted
        assert srv.terminate() == 0
    finally:
        srv.stop()
