"""A hypothesis state machine: data operations interleaved with rebalances, against a dict.

Rules put, bulk-put, compare-and-set, delete (plain and conditional),
``add_shard``, ``remove_shard`` and ``set_weight`` (with tiny batches, so every
rebalance runs many batches), and on persistent backends close-and-reopen. After
every step the invariants of DESIGN.md hold:

1. every key written and not deleted is readable with its last value and version,
   and nothing deleted comes back (the store holds exactly the model's keys);
2. each key lives on exactly one shard, its owner (``store._check()``).

Each rebalance is also checked against its own preview (``plan_*``): the same
keys moved, per route, and only along the routes a rebalance may take (adding
moves keys only to the new shard, removing only from the removed shard).

It runs on every backend of the ``env`` fixture (memory, LMDB, Redis) with the
store's ``PartitionRing`` of 64 partitions, and on memory with a classic
``HashRing`` too. Examples and steps are bounded so that the module stays well
under a minute on two cores; ``DHTCART_STATEFUL_EXAMPLES`` raises the count.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from dhtcart import DHTServerStore, HashRing, VersionConflict, hash_key
from dhtcart.hashing import MAX_KEY
from tests.helpers import placement

PARTITIONS = 64
_PART = (MAX_KEY + 1) // PARTITIONS
MAX_SHARDS = 6

#: keys worth hitting: both ends of the key space, both sides of partition
#: boundaries (arc edges are where an off-by-one would lose a key), and ordinary keys
KEY_POOL = sorted(
    {0, 1, MAX_KEY - 1, MAX_KEY}
    | {p * _PART + d for p in (1, 7, 31, 32, 63) for d in (-1, 0, 1)}
    | {hash_key(f"key-{i}") for i in range(40)}
)
keys = st.one_of(st.sampled_from(KEY_POOL), st.integers(min_value=0, max_value=MAX_KEY))
values = st.binary(max_size=24)
batch_sizes = st.integers(min_value=1, max_value=7)

EXAMPLES = int(os.environ.get("DHTCART_STATEFUL_EXAMPLES", "20"))
STEPS = 30


class RebalanceMachine(RuleBasedStateMachine):
    """The store against ``model: key -> (version, value)``."""

    def __init__(self, env, ring: str = "partition") -> None:
        super().__init__()
        self.env = env
        self.ring_kind = ring
        self.model: dict[int, tuple[int, bytes]] = {}
        self.deleted: set[int] = set()
        self.names = (f"n{i}" for i in itertools.count())
        self.store: DHTServerStore | None = None

    # -- set-up ---------------------------------------------------------------------

    @initialize(shards=st.integers(min_value=1, max_value=4))
    def make_store(self, shards: int) -> None:
        if self.ring_kind == "hash":
            names = [f"shard-{i}" for i in range(shards)]
            self.store = DHTServerStore(shards=shards, ring=HashRing(names, vnodes=8))
        else:
            self.store = self.env.store(shards, partitions=PARTITIONS)

    def teardown(self) -> None:
        store = self.store
        if store is not None:
            directory = store.directory
            store.close()
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
        self.env.reset()

    def _new_backend(self) -> str | None:
        # memory and LMDB: the store's default (a new LMDB directory inside the store)
        return self.env.url() if self.env.kind == "redis" else None

    # -- data operations ------------------------------------------------------------

    def _version(self, key: int) -> int:
        return self.model[key][0] if key in self.model else 0

    def _wrote(self, key: int, version: int, value: bytes) -> None:
        self.model[key] = (version, value)
        self.deleted.discard(key)

    @rule(key=keys, value=values)
    def put(self, key: int, value: bytes) -> None:
        assert self.store is not None
        version = self.store.put(key, value)
        assert version == self._version(key) + 1
        self._wrote(key, version, value)

    @rule(ks=st.lists(keys, min_size=1, max_size=40), value=values)
    def put_many(self, ks: list[int], value: bytes) -> None:
        assert self.store is not None
        for key in ks:
            self._wrote(key, self.store.put(key, value), value)

    @rule(key=keys, value=values, right=st.booleans())
    def compare_and_set(self, key: int, value: bytes, right: bool) -> None:
        assert self.store is not None
        current = self._version(key)
        if right:
            version = self.store.put(key, value, expected_version=current)
            assert version == current + 1
            self._wrote(key, version, value)
        else:
            with pytest.raises(VersionConflict):
                self.store.put(key, value, expected_version=current + 1)

    @rule(key=keys, conditional=st.booleans())
    def delete(self, key: int, conditional: bool) -> None:
        assert self.store is not None
        existed = key in self.model
        expected = self._version(key) if conditional and existed else None
        assert self.store.delete(key, expected) is existed
        if existed:
            del self.model[key]
            self.deleted.add(key)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def delete_with_wrong_version(self, data: st.DataObject) -> None:
        assert self.store is not None
        key = data.draw(st.sampled_from(sorted(self.model)))
        with pytest.raises(VersionConflict):
            self.store.delete(key, expected_version=self._version(key) + 1)

    # -- rebalances -----------------------------------------------------------------

    def _check_against_plan(self, plan, report, before: dict[int, str], routes: str) -> None:
        assert self.store is not None
        after = placement(self.store)
        moved = Counter((before[k], after[k]) for k in before if after.get(k) != before[k])
        assert set(after) == set(before), "a rebalance lost or invented keys"
        assert report.keys_moved == plan.keys == sum(moved.values())
        assert dict(moved) == {r: n for r, n in plan.by_route().items() if n}
        assert report.bytes_moved == plan.bytes
        assert report.keys_after == self.store.stats()
        if routes.startswith("to:"):
            assert all(dst == routes[3:] for _, dst in moved)
        elif routes.startswith("from:"):
            assert all(src == routes[5:] for src, _ in moved)

    @precondition(lambda self: self.store is not None and len(self.store.servers) < MAX_SHARDS)
    @rule(weight=st.integers(min_value=1, max_value=3), batch_size=batch_sizes)
    def add_shard(self, weight: int, batch_size: int) -> None:
        assert self.store is not None
        name = next(self.names)
        before = placement(self.store)
        plan = self.store.plan_add_shard(name, weight)
        assert placement(self.store) == before, "a plan moved something"
        report = self.store.add_shard(name, weight, self._new_backend(), batch_size=batch_size)
        assert name in self.store.ring.nodes
        self._check_against_plan(plan, report, before, f"to:{name}")

    @precondition(lambda self: self.store is not None and len(self.store.servers) > 1)
    @rule(data=st.data(), batch_size=batch_sizes)
    def remove_shard(self, data: st.DataObject, batch_size: int) -> None:
        assert self.store is not None
        name = data.draw(st.sampled_from(sorted(self.store.servers)))
        before = placement(self.store)
        plan = self.store.plan_remove_shard(name)
        report = self.store.remove_shard(name, batch_size=batch_size)
        assert name not in self.store.servers and name not in self.store.ring.nodes
        self._check_against_plan(plan, report, before, f"from:{name}")

    @precondition(lambda self: self.store is not None)
    @rule(data=st.data(), weight=st.integers(min_value=1, max_value=4), batch_size=batch_sizes)
    def set_weight(self, data: st.DataObject, weight: int, batch_size: int) -> None:
        assert self.store is not None
        name = data.draw(st.sampled_from(sorted(self.store.servers)))
        before = placement(self.store)
        plan = self.store.plan_set_weight(name, weight)
        report = self.store.set_weight(name, weight, batch_size=batch_size)
        assert self.store.ring.nodes[name] == weight
        self._check_against_plan(plan, report, before, "any")

    @precondition(lambda self: self.store is not None and self.store.directory is not None)
    @rule()
    def reopen(self) -> None:
        assert self.store is not None and self.store.directory is not None
        ring = self.store.ring.to_dict()
        self.store.close()
        self.store = DHTServerStore.open(self.store.directory)
        assert self.store.ring.to_dict() == ring

    # -- invariants -----------------------------------------------------------------

    @invariant()
    def every_write_readable_nothing_deleted_back(self) -> None:
        if self.store is None:
            return
        for key, (version, value) in self.model.items():
            rec = self.store.get(key)
            assert rec is not None, f"key {key} was lost"
            assert (rec.version, rec.value) == (version, value), f"key {key}: {rec} != {(version, value)}"
        for key in self.deleted:
            assert self.store.get(key) is None, f"deleted key {key} came back"
        assert self.store.count() == len(self.model)

    @invariant()
    def each_key_on_its_owner(self) -> None:
        if self.store is not None:
            self.store._check()


def _run(env, ring: str = "partition") -> None:
    run_state_machine_as_test(
        lambda: RebalanceMachine(env, ring),
        settings=settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None),
    )


def test_rebalance_state_machine(env) -> None:
    """PartitionRing (the store's default) on memory, LMDB and Redis."""
    _run(env)


@pytest.mark.parametrize("backend_kind", ["memory"], indirect=True)
def test_rebalance_state_machine_hash_ring(env) -> None:
    """The classic HashRing (manifest-free placement) behind a memory store."""
    _run(env, "hash")
