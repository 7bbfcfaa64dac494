"""A store that cannot write (a full disk) or fails: 503 with Retry-After, reads go on, connections stay.

Seen before: ``dhtcart serve --workers 2`` on an LMDB store whose disk filled
answered 500 to a third of its requests and dropped as many connections
(uvicorn's "Exception in ASGI application" on ``lmdb.DiskError``). The LMDB
backend raises :class:`~dhtcart.errors.ShardFull` (a ``ShardUnavailable``) for
a full medium; the HTTP face answers it ``503 shard_full`` with ``Retry-After``
in the error shape, keeps the connection, and keeps serving reads. 500 is for
bugs only, and even a bug's 500 leaves a keep-alive connection open.

* in process (httpx's ASGI transport): a backend whose writes raise
  ``ShardFull``, under the app, in both ways the app makes store calls;
* over real HTTP: ``dhtcart serve --workers 2`` whose LMDB shards refuse
  writes with ``ShardFull`` (or fail with a plain exception, as a medium's
  exception that escaped would) through ``tests/full_disk/sitecustomize.py``,
  on keep-alive connections. The real full disk is the LMDB backend's test.
"""

from __future__ import annotations

import asyncio
import http.client
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from dhtcart import CartService, DHTServerStore, hash_key  # noqa: E402
from dhtcart.backends.memory import MemoryBackend  # noqa: E402
from dhtcart.errors import ShardFull, StoreReadOnly  # noqa: E402
from dhtcart.http import create_app  # noqa: E402
from tests.serve_process import Server, clean_env  # noqa: E402

FULL_DISK = Path(__file__).resolve().parent / "full_disk"


class FullableBackend(MemoryBackend):
    """A memory shard whose medium can fill up: then every write raises ``ShardFull``, reads work."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.full = False

    def put(self, key: int, value: bytes, expected_version: int | None = None) -> int:
        if self.full:
            raise ShardFull(self.name, "/srv/dhtcart/shards/" + self.name, "no space left on device")
        return super().put(key, value, expected_version)

    def modify(self, key: int, change: Any, tries: int = 1) -> Any:  # the cart's writes
        if self.full:
            raise ShardFull(self.name, "/srv/dhtcart/shards/" + self.name, "no space left on device")
        return super().modify(key, change, tries)


def _error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message", "details"}, doc
    assert doc["error"]["code"] == code, doc
    return doc["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("inline", [True, False], ids=["event-loop", "thread-pool"])
def test_a_full_shard_answers_503_and_reads_keep_working(inline: bool) -> None:
    shards = {f"s{i}": FullableBackend(f"s{i}") for i in range(3)}
    store = DHTServerStore(shards)
    service = CartService(store)
    app = create_app(service, inline=inline)

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://dhtcart") as c:
            assert (await c.post("/item/ann/a", json={"offeredPrice": 2, "itemCount": 3})).status_code == 200
            assert (await c.post("/item/ann/b", json={"offeredPrice": 1})).status_code == 200
            before = await c.get("/items/ann")
            for backend in shards.values():
                backend.full = True
            shard = service.shard_of("ann")
            for method, path, payload in (
                ("POST", "/item/ann/c", {"offeredPrice": 1}),
                ("POST", "/items/ann/a", {"offeredPrice": 2, "unitCount": 1}),
                ("PUT", "/item/ann/a", {"newCount": 5}),
                ("DELETE", "/item/ann/b", None),
                ("DELETE", "/items/ann", None),
                ("POST", "/checkout/ann", None),
            ):
                r = await c.request(method, path, json=payload)
                err = _error(r, 503, "shard_full")
                assert r.headers["retry-after"] == "5"
                assert err["details"] == {"shard": shard}
                assert "/srv/dhtcart" not in r.text  # the medium's address is logged, not shown
                again = await c.get("/items/ann")  # reads keep working, and nothing changed
                assert (again.status_code, again.content, again.headers["etag"]) == (
                    200,
                    before.content,
                    before.headers["etag"],
                )
            assert (await c.get("/healthz")).status_code == 200
            assert (await c.get("/readyz")).status_code == 200  # every shard answers (reads)
            text = (await c.get("/metrics")).text
            assert f'dhtcart_store_errors_total{{error="ShardFull",shard="{shard}"}} 6.0' in text
            assert 'status="500"' not in text
            for backend in shards.values():  # room again: writes work again
                backend.full = False
            r = await c.delete("/items/ann")
            assert r.status_code == 200 and json.loads(r.content, parse_float=Decimal)["total"] == Decimal("7.00")

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def test_a_read_only_store_answers_503() -> None:
    class ReadOnly(DHTServerStore):
        read_only = False

        def put(self, key: int, value: bytes, expected_version: int | None = None) -> int:
            if self.read_only:
                raise StoreReadOnly("the store's directory is mounted read-only")
            return super().put(key, value, expected_version)

        def modify(self, key: int, change: Any, *, tries: int = 1) -> Any:  # the cart's writes
            if self.read_only:
                raise StoreReadOnly("the store's directory is mounted read-only")
            return super().modify(key, change, tries=tries)

    store = ReadOnly(shards=2)
    CartService(store).add_item("ro", "a", "1")
    store.read_only = True
    app = create_app(CartService(store))

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dhtcart") as c:
            r = await c.post("/item/ro/b", json={"offeredPrice": 1})
            _error(r, 503, "store_read_only")
            assert r.headers["retry-after"] == "5" and "mounted" not in r.text
            assert [i["itemId"] for i in (await c.get("/items/ro")).json()["items"]] == ["a"]

    try:
        asyncio.run(scenario())
    finally:
        store.close()


# -- over real HTTP: dhtcart serve, keep-alive connections ---------------------------------------


def _request(conn: http.client.HTTPConnection, method: str, path: str, payload: Any = None) -> tuple[int, Any, Any]:
    """One request on ``conn``, which must still be the same open connection afterwards."""
    sock = conn.sock
    body = None if payload is None else json.dumps(payload)
    headers = {"Content-Type": "application/json"} if payload is not None else {}
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    assert r.getheader("connection") != "close", (method, path, r.status, data[:200])
    assert sock is None or conn.sock is sock, "the connection was closed and opened again"
    return r.status, r.headers, json.loads(data) if data else None


def test_a_full_disk_under_dhtcart_serve_keeps_connections_and_reads(tmp_path: Path) -> None:
    flag = tmp_path / "disk"
    env = clean_env(DHTCART_TEST_FULL_DISK=str(flag))
    env["PYTHONPATH"] = f"{FULL_DISK}:{env['PYTHONPATH']}"
    server = Server(tmp_path / "data", tmp_path / "server.log", "--workers", "2", env=env)
    conns = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=10) for _ in range(6)]
    try:
        for i, conn in enumerate(conns):  # connections spread over both workers
            status, _, _ = _request(conn, "POST", f"/item/full-{i}/a", {"offeredPrice": 1})
            assert status == 200
        flag.write_text("full")
        for _ in range(5):
            for i, conn in enumerate(conns):
                status, headers, doc = _request(conn, "POST", f"/item/full-{i}/a", {"offeredPrice": 1})
                assert status == 503 and doc["error"]["code"] == "shard_full", doc
                assert headers["retry-after"] == "5" and headers["content-type"] == "application/json"
                status, _, doc = _request(conn, "GET", f"/items/full-{i}")
                assert status == 200 and doc["items"][0]["itemCount"] == 1  # reads go on
        flag.write_text("bug")  # a medium's exception that escaped: a bug, 500, the connection stays
        for i, conn in enumerate(conns):
            status, _, doc = _request(conn, "POST", f"/item/full-{i}/a", {"offeredPrice": 1})
            assert status == 500 and doc["error"]["code"] == "internal_error", doc
            assert "simulated" not in json.dumps(doc)
            assert _request(conn, "GET", f"/items/full-{i}")[0] == 200
        flag.write_text("")  # room again
        for i, conn in enumerate(conns):
            status, _, doc = _request(conn, "POST", f"/item/full-{i}/a", {"offeredPrice": 1})
            assert status == 200 and doc["itemCount"] == 2
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
    finally:
        for conn in conns:
            conn.close()
        server.stop()
    log = server.log()
    assert "Exception in ASGI application" not in log  # uvicorn never saw an exception escape the app
    assert "a medium exception that escaped the backend" in log  # the bug is logged, with its traceback
    errors = sum(
        float(line.rpartition(" ")[2])
        for line in metrics.splitlines()
        if line.startswith('dhtcart_store_errors_total{error="ShardFull"')
    )
    assert errors == 5 * len(conns)
    with DHTServerStore.open(tmp_path / "data") as store:  # the refused writes wrote nothing
        carts = CartService(store)
        assert [carts.list_items(f"full-{i}")[0].item_count for i in range(len(conns))] == [2] * len(conns)
        assert all(store.get(hash_key(f"full-{i}")).version == 2 for i in range(len(conns)))  # type: ignore[union-attr]
