"""Bad input at every public entry point: a typed error, and nothing stored.

One table: each row names an entry point, the bad argument, the dhtcart
error class expected and the built-in it must also be (so ``except
ValueError`` / ``TypeError`` / ``KeyError`` keeps working). Each row runs
against a world holding some data (a shard, a store, a cart service, two
rings), on memory and on LMDB, and the world must be exactly as it was
afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from dhtcart import (
    CartService,
    DHTServer,
    DHTServerStore,
    HashRing,
    InvalidInput,
    InvalidKey,
    InvalidValue,
    ItemNotFound,
    PartitionRing,
    hash_key,
    open_backend,
)
from dhtcart.cart import MAX_COUNT, MAX_ID_LENGTH, MAX_PRICE
from dhtcart.errors import DHTCartError
from dhtcart.hashing import MAX_KEY
from dhtcart.server import MAX_VALUE_SIZE
from tests.helpers import snapshot


@dataclass
class World:
    shard: DHTServer
    store: DHTServerStore
    carts: CartService
    hring: HashRing
    pring: PartitionRing

    def state(self) -> Any:
        return (
            list(self.shard.scan(-1, MAX_KEY)),
            snapshot(self.store),
            snapshot(self.carts.store),
            self.hring.to_dict(),
            self.hring.segments(),
            self.pring.to_dict(),
        )


@pytest.fixture(scope="module", params=["memory", "lmdb"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if request.param == "memory":
        shard = DHTServer()
        store = DHTServerStore(shards=3)
        carts = CartService()
    else:
        root: Path = tmp_path_factory.mktemp("bad-input")
        shard = DHTServer(f"lmdb://{root / 'shard'}")
        store = DHTServerStore.open(root / "store", shards=3)
        carts = CartService.open(root / "carts")
    shard.put(1, b"one")
    shard.put(MAX_KEY, b"top")
    store.put(hash_key("x"), b"x")
    store.put(0, b"zero")
    carts.add_item("alice", "036000291459", "1.99", item_count=2)
    carts.add_item("alice", "sale", "0.50", special_sale=True, sale_expiration="2099-01-01T00:00:00Z")
    w = World(shard, store, carts, HashRing(["a", "b"], vnodes=8), PartitionRing(["a", "b"], partitions=16))
    yield w
    shard.close()
    store.close()
    carts.close()


Call = Callable[[World], Any]

BAD_KEYS: list[tuple[str, Any]] = [
    ("str", "1"),
    ("float", 1.0),
    ("none", None),
    ("true", True),
    ("false", False),
    ("bytes", b"\x01"),
    ("decimal", Decimal(1)),
    ("neg", -1),
    ("2**63", 2**63),
    ("2**64", 2**64),
    ("huge-neg", -(2**70)),
]
BAD_VALUES: list[tuple[str, Any]] = [
    ("str", "text"),
    ("int", 5),
    ("none", None),
    ("list", [1, 2]),
    ("oversize", bytes(MAX_VALUE_SIZE + 1)),
]
BAD_VERSIONS: list[tuple[str, Any]] = [("neg", -1), ("str", "1"), ("true", True), ("float", 1.5)]
BAD_IDS: list[tuple[str, Any]] = [
    ("empty", ""),
    ("too-long", "x" * (MAX_ID_LENGTH + 1)),
    ("none", None),
    ("int", 36000291459),
    ("bytes", b"abc"),
    ("nul", "a\x00b"),
    ("tab", "a\tb"),
    ("newline", "a\n"),
    ("escape", "\x1b[31m"),
    ("del", "a\x7f"),
    ("line-sep", "a\u2028b"),
    ("surrogate", "a\ud800"),
    ("lead-space", " a"),
    ("trail-space", "a "),
]
BAD_PRICES: list[tuple[str, Any]] = [
    ("nan-str", "NaN"),
    ("nan-float", math.nan),
    ("nan-dec", Decimal("NaN")),
    ("snan-dec", Decimal("sNaN")),
    ("inf-str", "inf"),
    ("inf-float", math.inf),
    ("neg-inf", -math.inf),
    ("inf-dec", Decimal("Infinity")),
    ("neg-str", "-1"),
    ("neg-cent", -0.01),
    ("neg-dec", Decimal("-5")),
    ("three-dp-str", "1.005"),
    ("three-dp-dec", Decimal("0.001")),
    ("three-dp-float", 1.005),
    ("tiny", "1e-9"),
    ("too-big", MAX_PRICE + Decimal("0.01")),
    ("huge-exp", "1e400"),
    ("words", "ten dollars"),
    ("empty", ""),
    ("none", None),
    ("bool", True),
    ("list", [1]),
    # a string price is a plain decimal: no spaces, exponents, separators or non-ASCII digits
    ("spaces", " 2.25 "),
    ("exponent", "1E+2"),
    ("underscore", "5_0"),
    ("fullwidth", "\uff11\uff10"),
]
BAD_COUNTS: list[tuple[str, Any]] = [
    ("zero", 0),
    ("neg", -1),
    ("over-max", MAX_COUNT + 1),
    ("huge", 10**100),
    ("str", "3"),
    ("float", 2.0),
    ("bool", True),
    ("none", None),
    ("decimal", Decimal(2)),
]
BAD_DATES: list[tuple[str, Any]] = [
    ("words", "not a date"),
    ("month-13", "2024-13-01T00:00:00Z"),
    ("feb-30", "2024-02-30T00:00:00"),
    ("empty", ""),
    ("too-long", "2024-01-01T00:00:00" + "0" * 60),
    ("int", 1717243200),
    ("float", 1.5),
    ("bytes", b"2024-01-01"),
    ("date", date(2024, 1, 1)),
    ("bad-offset", "2024-01-01T00:00:00+25:00"),
]
BAD_FLAGS: list[tuple[str, Any]] = [("str", "true"), ("int", 1), ("none", None), ("zero", 0)]


def _rows() -> Iterator[Any]:
    def row(id_: str, call: Call, error: type[Exception], builtin: type[Exception]) -> Any:
        return pytest.param(call, error, builtin, id=id_)

    # -- DHTServer ---------------------------------------------------------------
    for name, k in BAD_KEYS:
        yield row(f"shard.get-key-{name}", lambda w, k=k: w.shard.get(k), InvalidKey, TypeError)
        yield row(f"shard.put-key-{name}", lambda w, k=k: w.shard.put(k, b"v"), InvalidKey, ValueError)
        yield row(f"shard.delete-key-{name}", lambda w, k=k: w.shard.delete(k), InvalidKey, ValueError)
        yield row(f"store.get-key-{name}", lambda w, k=k: w.store.get(k), InvalidKey, TypeError)
        yield row(f"store.put-key-{name}", lambda w, k=k: w.store.put(k, b"v"), InvalidKey, ValueError)
        yield row(f"store.delete-key-{name}", lambda w, k=k: w.store.delete(k), InvalidKey, ValueError)
    for name, v in BAD_VALUES:
        yield row(f"shard.put-value-{name}", lambda w, v=v: w.shard.put(7, v), InvalidValue, TypeError)
        yield row(f"store.put-value-{name}", lambda w, v=v: w.store.put(7, v), InvalidValue, ValueError)
    for name, ver in BAD_VERSIONS:
        yield row(
            f"shard.put-version-{name}",
            lambda w, ver=ver: w.shard.put(1, b"v", ver),
            InvalidValue,
            ValueError,
        )
        yield row(
            f"shard.delete-version-{name}",
            lambda w, ver=ver: w.shard.delete(1, ver),
            InvalidValue,
            ValueError,
        )
        yield row(
            f"store.put-version-{name}",
            lambda w, ver=ver: w.store.put(0, b"v", ver),
            InvalidValue,
            ValueError,
        )
        yield row(
            f"store.delete-version-{name}",
            lambda w, ver=ver: w.store.delete(0, ver),
            InvalidValue,
            ValueError,
        )
    for name, bound in [
        ("str", "0"),
        ("none", None),
        ("true", True),
        ("float", 0.5),
        ("-2", -2),
        ("2**63", 2**63),
    ]:
        yield row(f"shard.scan-lo-{name}", lambda w, b=bound: w.shard.scan(b, MAX_KEY), InvalidKey, ValueError)
        yield row(f"shard.scan-hi-{name}", lambda w, b=bound: w.shard.scan(-1, b), InvalidKey, ValueError)
    for name, limit in [("neg", -1), ("str", "5"), ("true", True), ("float", 2.5)]:
        yield row(
            f"shard.scan-limit-{name}",
            lambda w, n=limit: w.shard.scan(-1, MAX_KEY, n),
            ValueError,
            ValueError,
        )

    # -- rings --------------------------------------------------------------------
    for cls in (HashRing, PartitionRing):
        c = cls.__name__
        for name, nodes, err in [
            ("one-str", "abc", TypeError),
            ("none", None, TypeError),
            ("int", 5, TypeError),
            ("empty-name", [""], ValueError),
            ("int-name", [1], ValueError),
            ("none-name", [None], ValueError),
            ("duplicate", ["a", "a"], ValueError),
            ("weight-0", {"a": 0}, ValueError),
            ("weight-neg", {"a": -1}, ValueError),
            ("weight-bool", {"a": True}, ValueError),
            ("weight-float", {"a": 1.5}, ValueError),
            ("weight-str", {"a": "2"}, ValueError),
        ]:
            yield row(f"{c}-nodes-{name}", lambda w, cls=cls, n=nodes: cls(n), err, err)
        for name, weight in [("0", 0), ("neg", -2), ("bool", True), ("str", "1"), ("float", 1.0)]:
            ring_attr = "hring" if cls is HashRing else "pring"
            yield row(
                f"{c}.add_node-weight-{name}",
                lambda w, a=ring_attr, x=weight: getattr(w, a).add_node("c", x),
                ValueError,
                ValueError,
            )
        for name, node in [("empty", ""), ("none", None), ("int", 3), ("existing", "a")]:
            ring_attr = "hring" if cls is HashRing else "pring"
            yield row(
                f"{c}.add_node-name-{name}",
                lambda w, a=ring_attr, n=node: getattr(w, a).add_node(n),
                ValueError,
                ValueError,
            )
    for name, v in [("0", 0), ("bool", True), ("str", "8"), ("neg", -1)]:
        yield row(f"HashRing-vnodes-{name}", lambda w, v=v: HashRing(["a"], vnodes=v), ValueError, ValueError)
    for name, p in [("0", 0), ("3", 3), ("bool", True), ("2**21", 2**21), ("str", "16")]:
        yield row(
            f"PartitionRing-partitions-{name}",
            lambda w, p=p: PartitionRing(["a"], partitions=p),
            ValueError,
            ValueError,
        )

    # -- hash_key and open_backend ---------------------------------------------------
    for name, x in [("bytes", b"a"), ("int", 1), ("none", None), ("list", ["a"])]:
        yield row(f"hash_key-{name}", lambda w, x=x: hash_key(x), TypeError, TypeError)
    for name, url, err in [
        ("none", None, TypeError),
        ("bytes", b"memory://", TypeError),
        ("empty", "", ValueError),
        ("no-scheme", "just/a/path", ValueError),
        ("unknown-scheme", "floppy://a", ValueError),
        ("lmdb-no-dir", "lmdb://", ValueError),
        ("lmdb-bad-option", "lmdb:///tmp/x?speed=fast", ValueError),
    ]:
        yield row(f"open_backend-{name}", lambda w, u=url: open_backend(u), err, err)

    # -- CartService -----------------------------------------------------------------
    cart_ops: list[tuple[str, Callable[[World, Any], Any]]] = [
        ("list_items-customer", lambda w, x: w.carts.list_items(x)),
        ("add_item-customer", lambda w, x: w.carts.add_item(x, "i", "1.00")),
        ("add_item-item", lambda w, x: w.carts.add_item("alice", x, "1.00")),
        ("update_count-customer", lambda w, x: w.carts.update_count(x, "036000291459", 1)),
        ("update_count-item", lambda w, x: w.carts.update_count("alice", x, 1)),
        ("delete_item-customer", lambda w, x: w.carts.delete_item(x, "036000291459")),
        ("delete_item-item", lambda w, x: w.carts.delete_item("alice", x)),
        ("checkout-customer", lambda w, x: w.carts.checkout(x)),
    ]
    for op_name, op in cart_ops:
        for name, bad in BAD_IDS:
            yield row(f"cart.{op_name}-{name}", lambda w, op=op, b=bad: op(w, b), InvalidInput, ValueError)
    for name, price in BAD_PRICES:
        yield row(
            f"cart.add_item-price-{name}",
            lambda w, p=price: w.carts.add_item("alice", "new", p),
            InvalidInput,
            ValueError,
        )
    for name, count in BAD_COUNTS:
        yield row(
            f"cart.add_item-count-{name}",
            lambda w, n=count: w.carts.add_item("alice", "036000291459", "1.99", item_count=n),
            InvalidInput,
            ValueError,
        )
        if name != "zero":  # zero is a valid new count: it removes the line
            yield row(
                f"cart.update_count-count-{name}",
                lambda w, n=count: w.carts.update_count("alice", "036000291459", n),
                InvalidInput,
                TypeError,
            )
    yield row(
        "cart.add_item-count-sum-over-max",
        lambda w: w.carts.add_item("alice", "036000291459", "1.99", item_count=MAX_COUNT),
        InvalidInput,
        ValueError,
    )
    for name, when in BAD_DATES:
        yield row(
            f"cart.add_item-date-{name}",
            lambda w, d=when: w.carts.add_item("alice", "new", "1.00", special_sale=True, sale_expiration=d),
            InvalidInput,
            ValueError,
        )
    for name, flag in BAD_FLAGS:
        yield row(
            f"cart.add_item-special_sale-{name}",
            lambda w, f=flag: w.carts.add_item("alice", "new", "1.00", special_sale=f),
            InvalidInput,
            TypeError,
        )
    for name, ver in [*BAD_VERSIONS, ("set-of-str", {1, "2"}), ("list", [1])]:
        yield row(
            f"cart.add_item-expected_version-{name}",
            lambda w, v=ver: w.carts.add_item("alice", "new", "1.00", expected_version=v),
            InvalidValue,
            ValueError,
        )
        yield row(
            f"cart.checkout-expected_version-{name}",
            lambda w, v=ver: w.carts.checkout("alice", expected_version=v),
            InvalidValue,
            TypeError,
        )
    # absent things are KeyErrors, and change nothing either
    yield row(
        "cart.update_count-missing-item",
        lambda w: w.carts.update_count("alice", "nope", 1),
        ItemNotFound,
        KeyError,
    )
    yield row(
        "cart.delete_item-missing-item",
        lambda w: w.carts.delete_item("alice", "nope"),
        ItemNotFound,
        KeyError,
    )
    yield row(
        "cart.update_count-missing-cart",
        lambda w: w.carts.update_count("zed", "x", 0),
        ItemNotFound,
        KeyError,
    )


ROWS = list(_rows())


@pytest.mark.parametrize(("call", "error", "builtin"), ROWS)
def test_bad_input_is_refused_and_stores_nothing(
    world: World, call: Call, error: type[Exception], builtin: type[Exception]
) -> None:
    assert issubclass(error, builtin)
    before = world.state()
    with pytest.raises(error) as info:
        result = call(world)
        if hasattr(result, "__next__"):  # a lazy scan must refuse before yielding
            next(result)
    assert isinstance(info.value, builtin)
    assert str(info.value), "the error says what is wrong"
    assert world.state() == before, "bad input must leave everything as it was"


# Entry points whose errors are plain built-ins today (see the report): they
# are refused with the right built-in above; this checks that they are also
# part of dhtcart's error tree, as errors.py says of "every exception dhtcart raises".
def test_every_refusal_is_a_dhtcart_error(world: World) -> None:
    outside: list[str] = []
    for param in ROWS:
        call, _, builtin = param.values
        try:
            result = call(world)
            if hasattr(result, "__next__"):
                next(result)
        except builtin as exc:
            if not isinstance(exc, DHTCartError):
                outside.append(f"{param.id}: {type(exc).__name__}")
    where = sorted({o.split("-")[0] for o in outside})
    assert not outside, f"{len(outside)} refusals are plain built-ins, not DHTCartError, in: {where}"


def test_too_many_lines_in_one_cart(monkeypatch: pytest.MonkeyPatch) -> None:
    import dhtcart.cart.service as cart_mod

    monkeypatch.setattr(cart_mod, "MAX_LINES", 40)  # the rule, at a size that keeps the test quick
    with CartService() as carts:
        for i in range(40):
            carts.add_item("big", f"i{i}", "1")
        before = snapshot(carts.store)
        with pytest.raises(InvalidInput) as info:
            carts.add_item("big", "one-too-many", "1")
        assert isinstance(info.value, ValueError) and info.value.field == "item_id"
        assert snapshot(carts.store) == before
        assert carts.add_item("big", "i0", "1").item_count == 2  # an existing line still takes more units


# -- what is valid must stay valid ---------------------------------------------------


@pytest.mark.parametrize(
    "when",
    [
        "2030-01-01T00:00:00",  # naive: taken as UTC
        "2030-01-01T00:00:00Z",
        "2030-01-01T00:00:00z",
        "2030-01-01T01:00:00+01:00",
        "2030-01-01",
        datetime(2030, 1, 1),
        datetime(2030, 1, 1, tzinfo=timezone.utc),
    ],
)
def test_valid_dates_are_accepted(when: Any) -> None:
    with CartService() as carts:
        item = carts.add_item("c", "i", "1", special_sale=True, sale_expiration=when)
        assert item.sale_expiration == datetime(2030, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("price", "expected"),
    [
        ("0", "0.00"),
        ("0.00", "0.00"),
        (0, "0.00"),
        ("1.5", "1.50"),
        (".5", "0.50"),
        ("-0", "0.00"),
        (MAX_PRICE, f"{MAX_PRICE}.00"),
        (Decimal("0.100"), "0.10"),
        (19.99, "19.99"),
    ],
)
def test_valid_prices_are_accepted(price: Any, expected: str) -> None:
    with CartService() as carts:
        assert str(carts.add_item("c", "i", price).offered_price) == expected


@pytest.mark.parametrize("count", [1, MAX_COUNT])
def test_count_bounds_are_accepted(count: int) -> None:
    with CartService() as carts:
        assert carts.add_item("c", "i", "1", item_count=count).item_count == count


@pytest.mark.parametrize("ident", ["a", "x" * MAX_ID_LENGTH, "036000291459", "é中文🛒", "with inner space"])
def test_valid_ids_are_accepted(ident: str) -> None:
    with CartService() as carts:
        carts.add_item(ident, ident, "1")
        assert [i.item_id for i in carts.list_items(ident)] == [ident]


def test_value_of_exactly_the_limit_is_accepted() -> None:
    with DHTServer() as shard:
        assert shard.put(1, bytes(MAX_VALUE_SIZE)) == 1
