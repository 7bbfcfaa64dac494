"""A full disk under a real ``dhtcart serve --workers 2`` and the real ``dhtcart add-shard``.

The store lives on a small tmpfs mounted for the test; another file fills it.
Before the fix, a full disk answered ``500 internal_error`` to a third of the
writes and dropped about as many connections (``lmdb.DiskError``,
``mdb_txn_commit: Input/output error``), and ``dhtcart add-shard`` printed
``OSError: [Errno 28]``. Now each shard says :class:`~dhtcart.errors.ShardFull`:
writes answer 503 with ``Retry-After`` (the write was not applied), no request
gets a 500, keep-alive connections stay up, reads answer 200, and once the
file is deleted writes work again, with every acknowledged write in its cart.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest

from dhtcart import CartService, DHTServerStore

pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from tests.media import fill, small_tmpfs
from tests.serve_process import Server, clean_env, command

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CLIENTS = 4
PER_CLIENT = 60


class _Client:
    """One keep-alive HTTP/1.1 connection, which must never be closed by the server."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.conn.connect()
        self.sock = self.conn.sock
        self.port = self.sock.getsockname()[1]

    def request(self, method: str, path: str, body: object = None) -> tuple[int, dict[str, str], object]:
        data = None if body is None else json.dumps(body)
        headers = {} if body is None else {"Content-Type": "application/json"}
        self.conn.request(method, path, body=data, headers=headers)
        r = self.conn.getresponse()
        payload = json.loads(r.read() or b"null")
        assert not r.will_close, f"{method} {path}: the server closes the connection ({r.status}, {payload})"
        assert self.conn.sock is self.sock, "the connection was opened again"
        return r.status, {k.lower(): v for k, v in r.getheaders()}, payload

    def close(self) -> None:
        self.conn.close()


def _writes(port: int, tag: str, acked: Counter[tuple[str, str]], statuses: Counter[int], lock: threading.Lock) -> None:
    """``CLIENTS`` keep-alive connections add items; each answer is an acknowledged write (2xx) or
    a refusal that changed nothing (503 with Retry-After, in the error shape)."""
    problems: list[str] = []

    def client(c: int) -> None:
        conn = _Client(port)
        try:
            for i in range(PER_CLIENT):
                customer, item = f"{tag}-{c}-{i % 12}", f"sku-{i % 5}"
                status, headers, payload = conn.request(
                    "POST", f"/item/{customer}/{item}", {"offeredPrice": 1.25, "itemCount": 1}
                )
                with lock:
                    statuses[status] += 1
                    if status in (200, 201):
                        acked[(customer, item)] += 1
                    elif status == 503:
                        if "retry-after" not in headers or set(payload) != {"error"}:  # type: ignore[arg-type]
                            problems.append(f"503 without Retry-After or the error shape: {headers} {payload}")
                    else:
                        problems.append(f"{status}: {payload}")
        except Exception as exc:  # a dropped connection, an assertion of _Client
            with lock:
                problems.append(f"client {c}: {type(exc).__name__}: {exc}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not problems, problems[:5]


def test_serve_on_a_full_disk_refuses_writes_with_503_and_loses_nothing(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", "16m") as disk:
        data = disk / "data"
        with DHTServerStore.open(data, shards=2):
            pass
        server = Server(data, tmp_path / "server.log", "--workers", "2", "--no-access-log")
        acked: Counter[tuple[str, str]] = Counter()
        statuses: Counter[int] = Counter()
        lock = threading.Lock()
        try:
            _writes(server.port, "room", acked, statuses, lock)
            assert set(statuses) <= {200, 201} and statuses.total() == CLIENTS * PER_CLIENT, statuses

            filler = fill(disk)
            statuses.clear()
            _writes(server.port, "full", acked, statuses, lock)
            assert set(statuses) <= {200, 201, 503} and statuses[503] > 0, statuses
            # reads keep answering, on a kept-alive connection too
            reader = _Client(server.port)
            for customer in sorted({c for c, _ in acked})[:20]:
                status, _, payload = reader.request("GET", f"/items/{customer}")
                assert status == 200, payload
                counts = {line["itemId"]: line["itemCount"] for line in payload["items"]}  # type: ignore[index]
                assert all(counts.get(item) == n for (c, item), n in acked.items() if c == customer), payload
            reader.close()
            status, _, payload = _Client(server.port).request("GET", "/readyz")
            assert status == 200, payload  # every shard answers: a full disk is not a shard down

            # the admin command on the full disk: refused in one line, nothing changed
            manifest = (data / "manifest.json").read_bytes()
            done = subprocess.run(
                [*command(), "add-shard", "extra"],
                capture_output=True,
                text=True,
                timeout=60,
                env=clean_env(DHTCART_DATA=str(data)),
            )
            said = (done.stdout + done.stderr).strip()
            assert done.returncode != 0 and "Traceback" not in said and "OSError" not in said, said
            assert "no room" in said, said
            assert (data / "manifest.json").read_bytes() == manifest
            assert sorted(p.name for p in (data / "shards").iterdir()) == ["shard-0", "shard-1"]

            filler.unlink()  # room again: writes work at once, without a restart
            statuses.clear()
            _writes(server.port, "after", acked, statuses, lock)
            assert set(statuses) <= {200, 201}, statuses
        finally:
            server.stop()
        log = server.log()
        assert "Traceback" not in log and "internal_error" not in log, log[-3000:]
        with CartService.open(data) as carts:  # every acknowledged write is there
            for (customer, item), n in acked.items():
                counts = {it.item_id: it.item_count for it in carts.list_items(customer)}
                assert counts.get(item) == n, f"{customer}/{item}: {counts.get(item)} in the cart, {n} acknowledged"
