"""A shard that fails in the middle of a rebalance: nothing is lost, nothing comes back.

A flaky backend raises ShardUnavailable from import_ranges (the copy: after
applying it, as a lost reply would) or from drop_ranges (the drop) once. The
store keeps serving (a failed copy is unfrozen again; a failed drop leaves
copies where the shard no longer serves), writes and deletes made meanwhile
survive, and finish_rebalance() completes the move, after which no stale copy
is anywhere (so a deleted key cannot come back).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from dhtcart import MAX_KEY, DHTServerStore, ShardUnavailable, hash_key
from dhtcart.backends.base import Record
from dhtcart.backends.memory import MemoryBackend


class FlakyBackend(MemoryBackend):
    """A memory backend whose next bulk copy or bulk drop can be made to fail."""

    fail_import = False
    fail_drop = False

    def import_ranges(
        self, token: int, ranges: Sequence[tuple[int, int]], records: Sequence[tuple[int, Record]]
    ) -> int:
        n = super().import_ranges(token, ranges, records)
        if self.fail_import:
            self.fail_import = False
            raise ShardUnavailable("flaky", "memory://", "connection lost")  # applied, reply lost
        return n

    def drop_ranges(self, token: int, ranges: Sequence[tuple[int, int]]) -> int:
        if self.fail_drop:
            self.fail_drop = False
            raise ShardUnavailable("flaky", "memory://", "connection lost")
        return super().drop_ranges(token, ranges)


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
                c.fail_import = True  # the copy to the new shard breaks
            else:
                a.fail_drop = True  # dropping an old copy from "a" breaks

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
    assert store.rebalance_status().migrating
    report = store.finish_rebalance(batch_size=100)
    assert report is not None and report.keys_moved > 0
    assert store.finish_rebalance() is None
    store._check()  # every key on its owner, exactly once: no stale copy left anywhere
    assert {k: r.value for k, r in store.items()} == model
    assert sorted(store.stats()) == ["a", "b", "c"]
    assert sum(store.stats().values()) == len(model)
