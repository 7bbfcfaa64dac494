"""A shard that fails in the middle of a rebalance: nothing is lost, nothing comes back.

A flaky backend raises ShardUnavailable from put_many (the copy) or from
delete_many (the drop) once. The store keeps serving, writes and deletes made
meanwhile survive, and finish_rebalance() completes the move, after which no
stale copy is anywhere (so a deleted key cannot come back).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pytest

from dhtcart import MAX_KEY, DHTServerStore, ShardUnavailable, StoreBusy, hash_key
from dhtcart.backends.base import Record
from dhtcart.backends.lmdb import LMDBBackend
from dhtcart.backends.memory import MemoryBackend


class FlakyBackend(MemoryBackend):
    """A memory backend whose next bulk write or bulk delete can be made to fail."""

    fail_put_many = False
    fail_delete_many = False

    def put_many(self, items: Iterable[tuple[int, Record]]) -> int:
        items = list(items)
        if self.fail_put_many:
            self.fail_put_many = False
            super().put_many(items[: len(items) // 2])  # half applied, as a lost connection might
            raise ShardUnavailable("flaky", "memory://", "connection lost")
        return super().put_many(items)

    def delete_many(self, items: Iterable[tuple[int, int]]) -> int:
        items = list(items)
        if self.fail_delete_many:
            self.fail_delete_many = False
            raise ShardUnavailable("flaky", "memory://", "connection lost")
        return super().delete_many(items)


@pytest.mark.parametrize("where", ["copy", "drop"])
def test_failed_batch_is_finished_without_loss_or_resurrection(where: str) -> None:
    a, b, c = FlakyBackend(), FlakyBackend(), FlakyBackend()
    store = DHTServerStore({"a": a, "b": b}, partitions=64)
    model: dict[int, bytes] = {}
    for i in range(2000):
        key = hash_key(f"k{i}")
        store.put(key, b"v%d" % i)
        model[key] = b"v%d" % i
    calls = 0

    def progress(moved: int, planned: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # make the third batch fail
            if where == "copy":
                c.fail_put_many = True  # the copy to the new shard breaks
            else:
                a.fail_delete_many = True  # dropping an old copy from "a" breaks

    with pytest.raises(ShardUnavailable):
        store.add_shard("c", backend=c, batch_size=100, progress=progress)
    assert calls == 2
    # the store keeps serving every key, and writes and deletes go on
    for key, value in model.items():
        rec = store.get(key)
        assert rec is not None and rec.value == value
    # delete exactly the keys a failed batch may have left a stale copy of
    stale = {
        k
        for name, backend in (("a", a), ("b", b), ("c", c))
        for k, _ in backend.scan(-1, MAX_KEY)
        if store.server_for(k).name != name
    }
    assert stale, "the failure left no stale copy: the test would prove nothing"
    for key in stale:
        assert store.delete(key)
        del model[key]
    changed = [k for k in list(model)[::7] if k not in stale]
    for key in changed[:100]:
        store.put(key, b"new")
        model[key] = b"new"
    for key in changed[100:200]:
        assert store.delete(key)
        del model[key]
    with pytest.raises(StoreBusy, match="finish_rebalance"):
        store.add_shard("d")
    report = store.finish_rebalance(batch_size=100)
    assert report is not None and report.keys_moved > 0
    assert store.finish_rebalance() is None
    store._check()  # every key on its owner, exactly once: no stale copy left anywhere
    assert {k: r.value for k, r in store.items()} == model
    assert sorted(store.stats()) == ["a", "b", "c"]
    assert sum(store.stats().values()) == len(model)


def test_recovery_never_replays_a_cleaned_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch fails, finish_rebalance() cleans it and moves those keys for real, then the
    process dies before the commit: reopening must not delete the moved keys again."""
    store = DHTServerStore.open(tmp_path / "s", shards=2, partitions=64)
    model = {}
    for i in range(3000):
        key = hash_key(f"k{i}")
        store.put(key, b"v%d" % i)
        model[key] = b"v%d" % i
    real = LMDBBackend.put_many
    failed = []

    def fail_once(self: LMDBBackend, items: Iterable[tuple[int, Record]]) -> int:
        items = list(items)
        if not failed:
            failed.append(True)
            real(self, items[: len(items) // 2])
            raise ShardUnavailable("c", self.url, "disk went away")
        return real(self, items)

    monkeypatch.setattr(LMDBBackend, "put_many", fail_once)
    with pytest.raises(ShardUnavailable):
        store.add_shard("c", batch_size=100)
    journal = json.loads((tmp_path / "s" / "manifest.json").read_text())["journal"]
    assert journal["dirty"], "the failed batch is journaled"

    def crash(*args: object) -> None:
        raise RuntimeError("killed before the commit")

    monkeypatch.setattr(store, "_commit", crash)
    with pytest.raises(RuntimeError):
        store.finish_rebalance(batch_size=100)
    journal = json.loads((tmp_path / "s" / "manifest.json").read_text())["journal"]
    assert journal["phase"] == "migrate" and "dirty" not in journal
    store.close()
    with DHTServerStore.open(tmp_path / "s") as again:  # recovery finishes the rebalance
        again._check()
        assert {k: r.value for k, r in again.items()} == model
        assert sorted(again.stats()) == ["c", "shard-0", "shard-1"]
