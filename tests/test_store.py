"""DHTServerStore: routing, stats, persistence and the manifest, on every backend."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from dhtcart import (
    DHTServer,
    DHTServerStore,
    HashRing,
    InvalidInput,
    Moved,
    PartitionRing,
    Record,
    ShardUnavailable,
    StoreBusy,
    StoreClosed,
    VersionConflict,
)
from dhtcart.backends.lmdb import LMDBBackend
from dhtcart.hashing import MAX_KEY, hash_key
from tests.conftest import BackendEnv, skip_or_fail
from tests.helpers import EDGE_KEYS, child_env, snapshot


def _keys(n: int, seed: int = 0) -> list[int]:
    rnd = random.Random(seed)
    return EDGE_KEYS + [hash_key(f"customer-{i}") for i in range(n // 2)] + [rnd.getrandbits(63) for _ in range(n // 2)]


def test_every_key_on_its_ring_owner(store: DHTServerStore) -> None:
    keys = _keys(400)
    for k in keys:
        store.put(k, k.to_bytes(8, "big"))
    store._check()
    servers = store.servers
    for k in keys:
        owner = store.ring.node_for(k)
        assert store.server_for(k) is servers[owner]
        assert servers[owner].get(k) == Record(1, k.to_bytes(8, "big"))
        for name, s in servers.items():
            if name != owner:  # a shard that does not own a key redirects, never answers
                with pytest.raises(Moved) as info:
                    s.get(k)
                assert info.value.key == k and info.value.state == "-"
                assert not list(s.scan(k - 1, k)), f"key {k} also on {name}"
        assert store.get(k) == Record(1, k.to_bytes(8, "big"))
    assert len(snapshot(store)) == len(set(keys))
    # every shard got a share
    assert all(n > 0 for n in store.stats().values())


def test_versions_cas_and_delete_through_the_store(store: DHTServerStore) -> None:
    k = hash_key("bob")
    assert store.get(k) is None
    assert store.put(k, b"a", expected_version=0) == 1
    assert store.put(k, b"b") == 2
    with pytest.raises(VersionConflict):
        store.put(k, b"c", expected_version=1)
    assert store.get(k) == Record(2, b"b")
    with pytest.raises(VersionConflict):
        store.delete(k, expected_version=1)
    assert store.delete(k, expected_version=2) is True
    assert store.delete(k) is False
    assert store.get(k) is None
    store._check()


@pytest.mark.parametrize("replicas", [1, 2])
def test_last_shard_names_the_shard_of_a_refused_operation_too(env: BackendEnv, replicas: int) -> None:
    """A conflict, or an exception of ``modify``'s change, is counted on the key's shard (its
    primary), not on the shard of the operation before it (what the HTTP face labels its metrics with)."""
    store = env.store(replicas=replicas)
    assert store.last_shard() is None
    keys = [hash_key(f"last-{i}") for i in range(64)]
    a = keys[0]
    b = next(k for k in keys if store.shard_for(k) != store.shard_for(a))
    store.put(b, b"1")

    def refuse(record: Record | None) -> bytes:
        raise LookupError("no such item")

    refusals = [
        lambda: store.put(b, b"2", expected_version=7),
        lambda: store.delete(b, expected_version=7),
        lambda: store.modify(b, refuse),
    ]
    for refused in refusals:
        store.put(a, b"x")
        assert store.last_shard() == store.shard_for(a)
        with pytest.raises((VersionConflict, LookupError)):
            refused()
        assert store.last_shard() == store.shard_for(b)
    assert store.get(b) == Record(1, b"1")  # nothing written


def test_stats_and_count(store: DHTServerStore) -> None:
    keys = set(_keys(300, seed=4))
    for k in keys:
        store.put(k, b"x")
    stats = store.stats()
    assert list(stats) == sorted(store.servers)
    assert sum(stats.values()) == len(keys) == store.count() == len(store)
    for name, s in store.servers.items():
        assert stats[name] == s.count() == len(list(s.scan(-1, MAX_KEY)))
    for k in list(keys)[:100]:
        store.delete(k)
    assert store.count() == len(keys) - 100


def test_items_lists_everything_once(store: DHTServerStore) -> None:
    written = {k: Record(1, b"%d" % k) for k in _keys(200, seed=9)}
    for k, r in written.items():
        store.put(k, r.value)
    assert snapshot(store) == written


def test_closed_store(env: BackendEnv) -> None:
    store = env.store()
    store.put(1, b"x")
    with store:
        pass
    with pytest.raises(StoreClosed):
        store.get(1)
    with pytest.raises(StoreClosed):
        store.put(1, b"y")
    store.close()  # idempotent


def test_seed_simplest_use() -> None:
    store = DHTServerStore(shards=5)
    assert sorted(store.servers) == [f"shard-{i}" for i in range(5)]
    assert isinstance(store.ring, PartitionRing)
    for i in range(100):
        store.put(hash_key(f"c{i}"), b"%d" % i)
    assert store.count() == 100
    assert all(store.get(hash_key(f"c{i}")) == Record(1, b"%d" % i) for i in range(100))
    assert all(s.url == "memory://" for s in store.servers.values())
    store._check()
    store.close()
    assert len(DHTServerStore()) == 0  # the default is usable too


def test_store_with_named_shards_and_own_ring() -> None:
    ring = HashRing(["a", "b", "c"], vnodes=32)
    with DHTServerStore({"a": "memory://", "b": "memory://", "c": "memory://"}, ring=ring) as store:
        assert store.ring is ring
        for k in _keys(100):
            store.put(k, b"v")
        store._check()
    with pytest.raises(ValueError):
        DHTServerStore({"a": "memory://"}, ring=HashRing(["a", "b"]))


# -- persistence -----------------------------------------------------------------------


def test_reopen_gives_same_ring_and_every_key(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = DHTServerStore.open(root, shards=5)
    ring_before = store.ring.to_dict()
    keys = _keys(500, seed=2)
    expected: dict[int, Record] = {}
    for i, k in enumerate(keys):
        v = store.put(k, b"%d" % i)
        expected[k] = Record(v, b"%d" % i)
    for k in keys[:50]:  # some keys at higher versions, some deleted
        expected[k] = Record(store.put(k, b"again"), b"again")
    for k in keys[50:80]:
        store.delete(k)
        expected.pop(k, None)
    store.close()

    again = DHTServerStore.open(root, shards=2)  # `shards` is ignored on reopening
    assert again.ring.to_dict() == ring_before
    assert sorted(again.servers) == [f"shard-{i}" for i in range(5)]
    assert snapshot(again) == expected
    for k, rec in expected.items():
        assert again.get(k) == rec
    again._check()
    # and the versions continue where they were
    k0 = keys[0]
    assert again.put(k0, b"next", expected_version=expected[k0].version) == expected[k0].version + 1
    again.close()


def test_reopen_after_rebalance_keeps_new_ring(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with DHTServerStore.open(root, shards=3) as store:
        for k in _keys(300):
            store.put(k, b"x")
        before = snapshot(store)
        store.add_shard("extra")
        store._check()
        ring = store.ring.to_dict()
    with DHTServerStore.open(root) as again:
        assert again.ring.to_dict() == ring
        assert "extra" in again.servers
        assert snapshot(again) == before
        again._check()


def test_manifest_content(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with DHTServerStore.open(root, shards=3, partitions=64, durability="power") as store:
        store.put(1, b"x")
        ring = store.ring.to_dict()
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["format"] == 2
    assert manifest["epoch"] == 1
    assert manifest["durability"] == "power"
    assert manifest["migration"] is None and manifest["retired"] == {}
    assert manifest["born"] == {f"shard-{i}": 1 for i in range(3)}
    assert manifest["ring"] == ring
    assert manifest["ring"]["type"] == "partition" and manifest["ring"]["partitions"] == 64
    assert manifest["ring"]["weights"] == {"shard-0": 1, "shard-1": 1, "shard-2": 1}
    assert len(manifest["ring"]["owners"]) == 64
    assert manifest["shards"] == {f"shard-{i}": f"lmdb://shards/shard-{i}" for i in range(3)}
    assert (root / "ADMIN").exists() and json.loads((root / "LEASE").read_text())["token"] == 1
    for i in range(3):
        assert (root / "shards" / f"shard-{i}" / "data.mdb").exists()
    # the durability chosen at creation is used again when reopening
    with DHTServerStore.open(root) as again:
        for s in again.servers.values():
            assert isinstance(s.backend, LMDBBackend) and s.backend.durability == "power"
            assert s.backend._env.flags()["sync"] is True


def test_default_durability_is_process(tmp_path: Path) -> None:
    with DHTServerStore.open(tmp_path) as store:
        for s in store.servers.values():
            assert isinstance(s.backend, LMDBBackend) and s.backend.durability == "process"
    assert json.loads((tmp_path / "manifest.json").read_text())["durability"] == "process"


def test_open_rejects_bad_durability(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DHTServerStore.open(tmp_path, durability="never")  # type: ignore[arg-type]
    assert not (tmp_path / "manifest.json").exists()


def test_two_stores_in_one_process_stay_apart(tmp_path: Path) -> None:
    with DHTServerStore.open(tmp_path / "a") as a, DHTServerStore.open(tmp_path / "b") as b:
        a.put(1, b"a")
        b.put(1, b"b")
        assert a.get(1) == Record(1, b"a") and b.get(1) == Record(1, b"b")


_HOLD = """
import sys, time
from dhtcart import DHTServerStore
s = DHTServerStore.open(sys.argv[1])
print("open", flush=True)
for line in sys.stdin:
    key = int(line)
    rec = s.get(key)
    print(rec.version if rec else 0, rec.value.decode() if rec else "-", s.epoch, flush=True)
s.close()
"""


def test_rebalance_while_another_process_has_the_store_open(tmp_path: Path) -> None:
    """The other process's handle, opened before the rebalance, reads the moved keys' newest values."""
    root = tmp_path / "s"
    with DHTServerStore.open(root, shards=2) as store:
        keys = _keys(200)
        for k in keys:
            store.put(k, b"v1")
    other = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert other.stdin is not None and other.stdout is not None
    try:
        assert other.stdout.readline().strip() == "open"
        with DHTServerStore.open(root) as store:
            store.add_shard("s9")
            moved = [k for k in keys if store.ring.node_for(k) == "s9"]
            assert moved
            for k in moved:
                assert store.put(k, b"v2", expected_version=1) == 2
            store._check()
            assert store.epoch == 3
        for k in moved[:20]:
            other.stdin.write(f"{k}\n")
            other.stdin.flush()
            assert other.stdout.readline().split() == ["2", "v2", "3"]  # newest value, via a redirect
    finally:
        other.stdin.close()
        other.wait(30)
    assert other.returncode == 0


# -- an unreachable shard ----------------------------------------------------------------


def test_unreachable_shard_is_shard_unavailable() -> None:
    try:
        import dhtcart.backends.redis  # noqa: F401
        from tests.redis_server import free_port
    except ImportError as exc:
        skip_or_fail(f"Redis support is not importable: {exc}")
    dead = f"redis://127.0.0.1:{free_port()}/0?timeout=0.3"
    with DHTServerStore({"live": "memory://", "dead": dead}, partitions=64) as store:
        live_key = next(k for k in _keys(100) if store.ring.node_for(k) == "live")
        dead_key = next(k for k in _keys(100) if store.ring.node_for(k) == "dead")
        with pytest.raises(ShardUnavailable) as info:
            store.put(dead_key, b"x")
        assert isinstance(info.value, ConnectionError) and info.value.shard == "dead"
        with pytest.raises(ShardUnavailable):
            store.get(dead_key)
        assert store.put(live_key, b"fine") == 1, "the other shards are unaffected"
        assert store.get(live_key) == Record(1, b"fine")
        assert isinstance(store.servers["live"], DHTServer)


def test_persistent_store_refuses_a_memory_shard(tmp_path: Path) -> None:
    """A memory:// shard in a persistent store would lose its keys on close: refused, nothing changes."""
    with DHTServerStore.open(tmp_path / "s", shards=2) as store:
        store.put(5, b"v")
        before = store.ring.to_dict()
        with pytest.raises(InvalidInput, match="memory"):
            store.add_shard("m", backend="memory://")
        assert store.ring.to_dict() == before and "m" not in store.servers
        assert store.get(5) == Record(1, b"v")
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["migration"] is None and "m" not in manifest["shards"] and manifest["epoch"] == 1


def test_a_store_of_dhtcart_0_1_is_upgraded_when_opened(tmp_path: Path) -> None:
    """Format 1 (no epoch, no ownership records): opening gives each shard its record, epoch 1."""
    root = tmp_path / "old"
    ring = PartitionRing(["shard-0", "shard-1"], partitions=64)
    for name in ring.nodes:  # shards as 0.1 wrote them: plain records, no ownership
        with LMDBBackend(root / "shards" / name) as b:
            for k in _keys(100):
                if ring.node_for(k) == name:
                    b.put(k, b"old")
    old = {
        "format": 1,
        "durability": "process",
        "ring": ring.to_dict(),
        "shards": {n: f"lmdb://shards/{n}" for n in ring.nodes},
        "journal": None,
    }
    (root / "manifest.json").write_text(json.dumps(old))
    with DHTServerStore.open(root) as store:
        assert store.epoch == 1 and store.ring.to_dict() == ring.to_dict()
        store._check()
        assert all(store.get(k) == Record(1, b"old") for k in _keys(100))
        store.add_shard("shard-2")
        store._check()
    assert json.loads((root / "manifest.json").read_text())["format"] == 2
    old["journal"] = {"phase": "migrate"}
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(StoreBusy, match=r"dhtcart 0\.1"):
        DHTServerStore.open(tmp_path / "unfinished")


def test_a_new_shard_on_another_shards_medium_is_refused(tmp_path: Path) -> None:
    """Adding a shard on a medium that an existing shard uses (even an empty one) changes nothing."""
    with DHTServerStore.open(tmp_path / "s", shards=3) as store:
        for k in _keys(50):
            if store.server_for(k).name != "shard-0":
                store.put(k, b"v")  # shard-0 stays empty, but owns its arcs
        assert store.stats()["shard-0"] == 0
        with pytest.raises(InvalidInput, match="another shard's"):
            store.add_shard("x", backend="lmdb://shards/shard-0")
        with pytest.raises(InvalidInput, match="already holds"):
            store.add_shard("y", backend="lmdb://shards/shard-1")
        assert sorted(store.servers) == ["shard-0", "shard-1", "shard-2"] and store.epoch == 1
        store._check()
        store.add_shard("z")  # and the store goes on
        store._check()


def test_a_stopped_add_is_finished_by_the_next_change_of_its_shard(tmp_path: Path) -> None:
    store = DHTServerStore.open(tmp_path / "s", shards=3)
    for k in _keys(500):
        store.put(k, b"v")

    def stop(done: int, total: int) -> None:
        raise RuntimeError("stopped half way")

    with pytest.raises(RuntimeError):
        store.add_shard("x", batch_size=20, progress=stop)
    with pytest.raises(StoreBusy, match="in progress"):  # a plan describes a ring that is still changing
        store.plan_remove_shard("x")
    store.set_weight("x", 2)  # finishes adding x, then reweights it
    store.remove_shard("x")
    assert sorted(store.servers) == ["shard-0", "shard-1", "shard-2"]
    store._check()
    assert store.count() == len(set(_keys(500)))
    store.close()


def test_watching_the_lease_never_makes_a_rebalance_busy(tmp_path: Path) -> None:
    """``rebalance_status()`` (``dhtcart stats``) asks who holds the lease; that must not refuse a rebalance."""
    import threading

    store = DHTServerStore.open(tmp_path / "s", shards=2)
    stop = threading.Event()

    def watch() -> None:
        with DHTServerStore.open(tmp_path / "s") as watcher:
            while not stop.is_set():
                watcher.rebalance_status()

    t = threading.Thread(target=watch)
    t.start()
    try:
        for i in range(60):
            store.set_weight("shard-0", 1 + i % 3)
    finally:
        stop.set()
        t.join(30)
        store.close()
