"""Hypothesis state machines: shard, store and cart against plain-Python models.

Each machine runs on every backend of the ``env`` fixture (memory, LMDB,
Redis); after every step the invariants compare the real thing with the model
and call the ``_check()`` methods (``store._check()`` includes the ring's).
Bounded (examples x steps) so the whole module stays well under a minute.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from dhtcart import (
    CartEmpty,
    ItemNotFound,
    Record,
    SaleExpired,
    ShardExists,
    ShardNotFound,
    VersionConflict,
)
from dhtcart.hashing import MAX_KEY, hash_key
from tests.conftest import BackendEnv
from tests.helpers import EDGE_KEYS, snapshot

# a small pool of keys, so operations meet each other; plus the edges
KEY_POOL = sorted(set(EDGE_KEYS + [hash_key(f"k{i}") for i in range(12)]))
pool_keys = st.sampled_from(KEY_POOL)
small_values = st.binary(max_size=16)

# examples per backend: Redis round trips and LMDB fsyncs cost more than memory
EXAMPLES = {"memory": 60, "lmdb": 35, "redis": 20}


def _settings(kind: str, steps: int = 30, scale: float = 1.0) -> settings:
    return settings(max_examples=max(5, int(EXAMPLES[kind] * scale)), stateful_step_count=steps, deadline=None)


# -- the shard ----------------------------------------------------------------------


class ShardMachine(RuleBasedStateMachine):
    def __init__(self, env: BackendEnv) -> None:
        super().__init__()
        env.reset()
        self.env = env
        self.shard = env.server()
        self.model: dict[int, Record] = {}

    def teardown(self) -> None:
        self.env.close_all()

    def _version(self, key: int) -> int:
        rec = self.model.get(key)
        return rec.version if rec else 0

    @rule(key=pool_keys, value=small_values)
    def put(self, key: int, value: bytes) -> None:
        v = self.shard.put(key, value)
        assert v == self._version(key) + 1
        self.model[key] = Record(v, value)

    @rule(key=pool_keys, value=small_values, right=st.booleans(), delta=st.integers(1, 3))
    def compare_and_set(self, key: int, value: bytes, right: bool, delta: int) -> None:
        current = self._version(key)
        if right:
            v = self.shard.put(key, value, expected_version=current)
            assert v == current + 1
            self.model[key] = Record(v, value)
        else:
            wrong = current + delta if current == 0 or delta % 2 else current - 1
            with pytest.raises(VersionConflict) as info:
                self.shard.put(key, value, expected_version=wrong)
            assert info.value.actual == current

    @rule(key=pool_keys)
    def delete(self, key: int) -> None:
        assert self.shard.delete(key) is (key in self.model)
        self.model.pop(key, None)

    @rule(key=pool_keys, right=st.booleans())
    def conditional_delete(self, key: int, right: bool) -> None:
        current = self._version(key)
        if right:
            assert self.shard.delete(key, expected_version=current) is (current > 0)
            self.model.pop(key, None)
        else:
            with pytest.raises(VersionConflict):
                self.shard.delete(key, expected_version=current + 1)

    @rule(lo=st.sampled_from([-1, *KEY_POOL]), hi=st.sampled_from(KEY_POOL), limit=st.none() | st.integers(0, 5))
    def scan(self, lo: int, hi: int, limit: int | None) -> None:
        expect = sorted((k, r) for k, r in self.model.items() if lo < k <= hi)
        if limit is not None:
            expect = expect[:limit]
        assert list(self.shard.scan(lo, hi, limit)) == expect

    @rule(key=pool_keys)
    def get(self, key: int) -> None:
        assert self.shard.get(key) == self.model.get(key)

    @invariant()
    def agrees_with_model(self) -> None:
        assert self.shard.count() == len(self.model)
        assert list(self.shard.scan(-1, MAX_KEY)) == sorted(self.model.items())


def test_shard_state_machine(env: BackendEnv) -> None:
    run_state_machine_as_test(lambda: ShardMachine(env), settings=_settings(env.kind))


# -- the store, with rebalancing ----------------------------------------------------


class StoreMachine(RuleBasedStateMachine):
    def __init__(self, env: BackendEnv) -> None:
        super().__init__()
        env.reset()
        self.env = env
        self.store = env.store(3, partitions=64)
        self.model: dict[int, Record] = {}
        self.rnd = random.Random(0)
        self.extra = 0

    def teardown(self) -> None:
        self.env.close_all()

    def _version(self, key: int) -> int:
        rec = self.model.get(key)
        return rec.version if rec else 0

    @rule(key=pool_keys, value=small_values)
    def put(self, key: int, value: bytes) -> None:
        v = self.store.put(key, value)
        assert v == self._version(key) + 1
        self.model[key] = Record(v, value)

    @rule(key=pool_keys, value=small_values, right=st.booleans())
    def compare_and_set(self, key: int, value: bytes, right: bool) -> None:
        current = self._version(key)
        if right:
            self.model[key] = Record(self.store.put(key, value, expected_version=current), value)
        else:
            with pytest.raises(VersionConflict):
                self.store.put(key, value, expected_version=current + 1)

    @rule(key=pool_keys, conditional=st.booleans())
    def delete(self, key: int, conditional: bool) -> None:
        expected = self._version(key) if conditional else None
        assert self.store.delete(key, expected) is (key in self.model)
        self.model.pop(key, None)

    @rule(n=st.integers(1, 30), seed=st.integers(0, 1000))
    def bulk_write(self, n: int, seed: int) -> None:
        """Many distinct keys, so rebalances have something to move."""
        rnd = random.Random(seed)
        for _ in range(n):
            key = rnd.getrandbits(63)
            value = b"%d" % key
            self.model[key] = Record(self.store.put(key, value), value)

    @precondition(lambda self: len(self.store.servers) < 6)
    @rule(weight=st.integers(1, 3))
    def add_shard(self, weight: int) -> None:
        self.extra += 1
        name = f"x{self.extra}"
        url = self.env.url() if self.env.kind == "redis" else None
        report = self.store.add_shard(name, weight, backend=url, batch_size=7)
        assert name in self.store.servers
        assert sum(report.keys_after.values()) == len(self.model)
        assert report.keys_moved == report.keys_after[name]
        with pytest.raises(ShardExists):
            self.store.add_shard(name)

    @precondition(lambda self: len(self.store.servers) > 1)
    @rule(data=st.data())
    def remove_shard(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.store.servers)))
        keys_there = self.store.stats()[name]
        report = self.store.remove_shard(name, batch_size=5)
        assert name not in self.store.servers and name not in self.store.ring
        assert report.keys_moved == keys_there
        with pytest.raises(ShardNotFound):
            self.store.remove_shard(name)

    @rule(data=st.data(), weight=st.integers(1, 4))
    def set_weight(self, data: st.DataObject, weight: int) -> None:
        name = data.draw(st.sampled_from(sorted(self.store.servers)))
        self.store.set_weight(name, weight)
        assert self.store.ring.nodes[name] == weight

    @rule(key=pool_keys)
    def get(self, key: int) -> None:
        assert self.store.get(key) == self.model.get(key)

    @invariant()
    def agrees_with_model(self) -> None:
        self.store._check()  # the ring's own check, and every key on its owner
        assert snapshot(self.store) == self.model
        assert self.store.count() == len(self.model) == sum(self.store.stats().values())


def test_store_state_machine(env: BackendEnv) -> None:
    run_state_machine_as_test(lambda: StoreMachine(env), settings=_settings(env.kind, steps=20, scale=0.6))


# -- the cart ------------------------------------------------------------------------

T0 = datetime(2024, 6, 1, tzinfo=timezone.utc)
CUSTOMERS = ["alice", "bob", "carol", "dave"]
ITEMS = ["036000291459", "sku-1", "sku-2", "0"]
prices = st.sampled_from(["0.10", "0.01", "1.99", "10", "0"]).map(Decimal)


class CartMachine(RuleBasedStateMachine):
    """A model cart: customer -> {item: [price, count, sale, expiration]} in insertion order."""

    def __init__(self, env: BackendEnv, hasher: Callable[[str], int]) -> None:
        super().__init__()
        env.reset()
        self.env = env
        self.now = T0
        self.carts = env.carts(env.store(3, partitions=64), clock=lambda: self.now, hasher=hasher)
        self.model: dict[str, dict[str, list[Any]]] = {}

    def teardown(self) -> None:
        self.env.close_all()

    @rule(
        customer=st.sampled_from(CUSTOMERS),
        item=st.sampled_from(ITEMS),
        price=prices,
        count=st.integers(1, 5),
        sale_minutes=st.none() | st.integers(-10, 60),
    )
    def add_item(self, customer: str, item: str, price: Decimal, count: int, sale_minutes: int | None) -> None:
        sale = sale_minutes is not None
        exp = self.now + timedelta(minutes=sale_minutes) if sale_minutes is not None else None
        got = self.carts.add_item(customer, item, price, item_count=count, special_sale=sale, sale_expiration=exp)
        lines = self.model.setdefault(customer, {})
        total = count + (lines[item][1] if item in lines else 0)
        lines[item] = [price, total, sale, exp]
        assert got.item_count == total and got.offered_price == price

    @rule(customer=st.sampled_from(CUSTOMERS), item=st.sampled_from(ITEMS), count=st.integers(0, 4))
    def update_count(self, customer: str, item: str, count: int) -> None:
        lines = self.model.get(customer, {})
        if item not in lines:
            with pytest.raises(ItemNotFound):
                self.carts.update_count(customer, item, count)
            return
        got = self.carts.update_count(customer, item, count)
        if count == 0:
            assert got is None
            del lines[item]
        else:
            assert got is not None and got.item_count == count
            lines[item][1] = count

    @rule(customer=st.sampled_from(CUSTOMERS), item=st.sampled_from(ITEMS))
    def delete_item(self, customer: str, item: str) -> None:
        lines = self.model.get(customer, {})
        if item not in lines:
            with pytest.raises(ItemNotFound):
                self.carts.delete_item(customer, item)
            return
        self.carts.delete_item(customer, item)
        del lines[item]

    @rule(customer=st.sampled_from(CUSTOMERS))
    def checkout(self, customer: str) -> None:
        lines = self.model.get(customer, {})
        if not lines:
            with pytest.raises(CartEmpty):
                self.carts.checkout(customer)
            return
        expired = [i for i, (_, _, sale, exp) in lines.items() if sale and exp is not None and exp <= self.now]
        if expired:
            with pytest.raises(SaleExpired) as info:
                self.carts.checkout(customer)
            assert info.value.item_ids == expired
            return
        receipt = self.carts.checkout(customer)
        assert [(ln.item_id, ln.unit_price, ln.item_count) for ln in receipt.lines] == [
            (i, p, c) for i, (p, c, _, _) in lines.items()
        ]
        assert receipt.total == sum((p * c for p, c, _, _ in lines.values()), Decimal("0"))
        lines.clear()

    @rule(minutes=st.integers(1, 30))
    def time_passes(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)

    @invariant()
    def agrees_with_model(self) -> None:
        for customer in CUSTOMERS:
            listed = self.carts.list_items(customer)
            lines = self.model.get(customer, {})
            assert [(i.item_id, i.offered_price, i.item_count, i.special_sale, i.sale_expiration) for i in listed] == [
                (i, p, c, s, e) for i, (p, c, s, e) in lines.items()
            ]
            assert [i.expired for i in listed] == [
                bool(s and e is not None and e <= self.now) for _, _, s, e in lines.values()
            ]
        self.carts.store._check()
        # every non-empty cart has its record; emptied carts stay as empty records (never
        # deleted, so versions keep growing), and no record holds lines the model lacks
        keys = {self.carts._hasher(c) for c, lines in self.model.items() if lines}
        assert keys <= set(snapshot(self.carts.store))
        from dhtcart.cart.codec import decode

        for _, rec in self.carts.store.items():
            for customer, stored in decode(rec.value).items():
                assert not stored or self.model.get(customer), customer


@pytest.mark.parametrize("hasher", ["sha1", "colliding"])
def test_cart_state_machine(env: BackendEnv, hasher: str) -> None:
    fn = hash_key if hasher == "sha1" else (lambda s: hash_key(s) % 2)  # force customers to share keys
    run_state_machine_as_test(lambda: CartMachine(env, fn), settings=_settings(env.kind, steps=25, scale=0.6))
