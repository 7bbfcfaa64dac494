"""CartService: the seed's five operations and their rules, on every backend."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from dhtcart import (
    CartEmpty,
    CartItem,
    CartService,
    DHTServerStore,
    InvalidInput,
    ItemNotFound,
    Receipt,
    ReceiptLine,
    SaleExpired,
    TooManyRetries,
    VersionConflict,
    render,
)
from dhtcart.backends.fencing import FencedBackend
from dhtcart.backends.memory import MemoryBackend
from dhtcart.cart import VersionedCarts
from dhtcart.errors import Conflict, CorruptData, InvalidValue, NotFound
from dhtcart.hashing import hash_key
from tests.conftest import BackendEnv, _flushall, _RedisUnavailable, skip_or_fail
from tests.helpers import run_python, snapshot

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)


class Clock:
    """A settable clock for ``CartService(clock=...)``."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def timed(env: BackendEnv, store: DHTServerStore, clock: Clock) -> CartService:
    """A cart service on the parametrised store whose time the test controls."""
    return env.carts(store, clock=clock)


def ids(items: list[CartItem]) -> list[str]:
    return [i.item_id for i in items]


def test_seed_scenario(timed: CartService, clock: Clock) -> None:
    """The seed's five endpoints in the order its tests used them."""
    assert timed.list_items("customer-1") == []
    a = timed.add_item("customer-1", "036000291459", "19.99", item_count=2)
    # the line records when it was added (the seed profile renders it as "timestamp")
    assert a == CartItem("036000291459", Decimal("19.99"), 2, False, None, False, clock.now)
    b = timed.add_item(
        "customer-1",
        "sku-sale",
        "5.00",
        item_count=1,
        special_sale=True,
        sale_expiration=T0 + timedelta(days=1),
    )
    assert b.special_sale and b.sale_expiration == T0 + timedelta(days=1) and not b.expired
    timed.add_item("customer-1", "sku-3", 1, item_count=4)
    assert ids(timed.list_items("customer-1")) == ["036000291459", "sku-sale", "sku-3"]

    updated = timed.update_count("customer-1", "036000291459", 3)
    assert updated is not None and updated.item_count == 3
    assert timed.delete_item("customer-1", "sku-3") is None
    items = timed.list_items("customer-1")
    assert [(i.item_id, i.item_count) for i in items] == [("036000291459", 3), ("sku-sale", 1)]

    clock.now = T0 + timedelta(hours=1)
    receipt = timed.checkout("customer-1")
    assert isinstance(receipt, Receipt)
    assert receipt.customer_id == "customer-1"
    assert receipt.lines == [
        ReceiptLine("036000291459", Decimal("19.99"), 3, Decimal("59.97")),
        ReceiptLine("sku-sale", Decimal("5.00"), 1, Decimal("5.00")),
    ]
    assert receipt.total == Decimal("64.97")
    assert receipt.checked_out_at == clock.now
    assert timed.list_items("customer-1") == []
    assert_carts_empty(timed.store)
    as_json = render.receipt(receipt, money=str)
    assert as_json["total"] == "64.97" and as_json["lines"][0]["itemId"] == "036000291459"
    json.dumps(as_json)


def test_readding_sums_counts_on_one_line(carts: CartService) -> None:
    carts.add_item("c", "apple", "1.00", item_count=2)
    carts.add_item("c", "pear", "2.00")
    again = carts.add_item("c", "apple", "1.50", item_count=5)
    assert again.item_count == 7 and again.offered_price == Decimal("1.50")
    items = carts.list_items("c")
    assert ids(items) == ["apple", "pear"], "one line per item, in the order first added"
    assert items[0].item_count == 7
    for _ in range(10):
        carts.add_item("c", "pear", "2.00")
    assert [(i.item_id, i.item_count) for i in carts.list_items("c")] == [("apple", 7), ("pear", 11)]


def test_update_to_zero_removes_the_line(carts: CartService) -> None:
    carts.add_item("c", "a", "1")
    carts.add_item("c", "b", "1")
    assert carts.update_count("c", "a", 0) is None
    assert ids(carts.list_items("c")) == ["b"]
    assert carts.update_count("c", "b", 0) is None
    assert carts.list_items("c") == []
    assert_carts_empty(carts.store)


def test_upc_keeps_leading_zero(carts: CartService) -> None:
    carts.add_item("c", "036000291459", "2.50")
    carts.add_item("c", "0", "1")
    carts.add_item("c", "00", "1")
    assert ids(carts.list_items("c")) == ["036000291459", "0", "00"]
    assert carts.checkout("c").lines[0].item_id == "036000291459"


def test_money_is_exact(carts: CartService) -> None:
    item = carts.add_item("c", "dime", "0.10", item_count=3)
    assert item.line_total == Decimal("0.30")
    carts.add_item("c", "float-a", 0.1)  # floats are read through their repr, never float arithmetic
    carts.add_item("c", "float-b", 0.2)
    carts.add_item("c", "int", 7)
    carts.add_item("c", "dec", Decimal("1.1"))
    prices = {i.item_id: i.offered_price for i in carts.list_items("c")}
    assert prices == {
        "dime": Decimal("0.10"),
        "float-a": Decimal("0.10"),
        "float-b": Decimal("0.20"),
        "int": Decimal("7.00"),
        "dec": Decimal("1.10"),
    }
    assert all(str(p).count(".") == 1 and len(str(p).split(".")[1]) == 2 for p in prices.values())
    receipt = carts.checkout("c")
    assert receipt.total == Decimal("8.70")
    assert str(receipt.total) == "8.70"
    assert receipt.lines[0].line_total == Decimal("0.30") and str(receipt.lines[0].line_total) == "0.30"


@pytest.mark.parametrize("zero", ["-0", "-0.00", Decimal("-0"), -0.0])
def test_negative_zero_price_is_plain_zero(zero: object) -> None:
    """A price of minus zero is accepted as zero, and must not be shown as "-0.00"."""
    with CartService() as carts:  # validation is the same on every backend
        item = carts.add_item("c", "free", zero)  # type: ignore[arg-type]
        assert str(item.offered_price) == "0.00"
        assert render.line(item, money=str)["offeredPrice"] == "0.00"
        assert str(carts.list_items("c")[0].offered_price) == "0.00"


def test_many_small_prices_sum_exactly(carts: CartService) -> None:
    for i in range(30):
        carts.add_item("c", f"i{i}", "0.10", item_count=3)
    assert carts.checkout("c").total == Decimal("9.00")


def test_expired_sale(timed: CartService, clock: Clock) -> None:
    timed.add_item("c", "regular", "3.00")
    timed.add_item("c", "flash", "1.00", special_sale=True, sale_expiration=T0 + timedelta(minutes=30))
    timed.add_item("c", "later", "2.00", special_sale=True, sale_expiration="2024-06-01T13:00:00Z")
    timed.add_item("c", "not-a-sale", "4.00", special_sale=False, sale_expiration=T0 - timedelta(days=1))
    assert [i.expired for i in timed.list_items("c")] == [False, False, False, False]
    key = hash_key("c")
    before = timed.store.get(key)

    clock.now = T0 + timedelta(minutes=30)  # the expiration instant itself is past the sale
    listed = {i.item_id: i.expired for i in timed.list_items("c")}
    assert listed == {"regular": False, "flash": True, "later": False, "not-a-sale": False}
    clock.now = T0 + timedelta(hours=2)
    listed = {i.item_id: i.expired for i in timed.list_items("c")}
    assert listed == {"regular": False, "flash": True, "later": True, "not-a-sale": False}

    with pytest.raises(SaleExpired) as info:
        timed.checkout("c")
    assert info.value.item_ids == ["flash", "later"]
    assert "flash" in str(info.value) and "later" in str(info.value)
    assert info.value.customer_id == "c"
    assert isinstance(info.value, Conflict)
    assert timed.store.get(key) == before, "a refused checkout changes nothing"
    assert len(timed.list_items("c")) == 4

    # the caller removes one and re-adds the other with fresh terms, then checks out
    timed.delete_item("c", "flash")
    timed.add_item("c", "later", "2.50", special_sale=True, sale_expiration=clock.now + timedelta(hours=1))
    receipt = timed.checkout("c")
    assert [(ln.item_id, ln.item_count, ln.unit_price) for ln in receipt.lines] == [
        ("regular", 1, Decimal("3.00")),
        ("later", 2, Decimal("2.50")),
        ("not-a-sale", 1, Decimal("4.00")),
    ]
    assert receipt.total == Decimal("12.00")


def test_sale_expiration_forms(carts: CartService) -> None:
    utc = timezone.utc
    carts.add_item("c", "z", "1", special_sale=True, sale_expiration="2030-01-01T00:00:00Z")
    carts.add_item("c", "offset", "1", special_sale=True, sale_expiration="2030-01-01T02:00:00+02:00")
    carts.add_item("c", "naive-str", "1", special_sale=True, sale_expiration="2030-01-01T00:00:00")
    carts.add_item("c", "naive-dt", "1", special_sale=True, sale_expiration=datetime(2030, 1, 1))
    tz = timezone(timedelta(hours=-5))
    carts.add_item("c", "aware-dt", "1", special_sale=True, sale_expiration=datetime(2029, 12, 31, 19, tzinfo=tz))
    for item in carts.list_items("c"):
        assert item.sale_expiration == datetime(2030, 1, 1, tzinfo=utc), item.item_id
        assert item.sale_expiration.utcoffset() == timedelta(0)


def test_checkout_empties_atomically(carts: CartService) -> None:
    carts.add_item("alice", "a", "1.00", item_count=2)
    carts.add_item("bob", "b", "2.00")
    receipt = carts.checkout("alice")
    assert receipt.total == Decimal("2.00")
    assert carts.list_items("alice") == []
    assert ids(carts.list_items("bob")) == ["b"], "other carts are untouched"
    with pytest.raises(CartEmpty):
        carts.checkout("alice")


def test_checkout_of_empty_or_missing_cart(carts: CartService) -> None:
    with pytest.raises(CartEmpty) as info:
        carts.checkout("nobody")
    assert isinstance(info.value, KeyError) and isinstance(info.value, NotFound)
    assert info.value.customer_id == "nobody"
    carts.add_item("c", "x", "1")
    carts.delete_item("c", "x")
    with pytest.raises(CartEmpty):
        carts.checkout("c")
    assert_carts_empty(carts.store)


def test_missing_item(carts: CartService) -> None:
    for op in (lambda: carts.update_count("c", "ghost", 1), lambda: carts.delete_item("c", "ghost")):
        with pytest.raises(ItemNotFound) as info:
            op()
        assert isinstance(info.value, KeyError)
        assert (info.value.customer_id, info.value.item_id) == ("c", "ghost")
    carts.add_item("c", "real", "1")
    snap = snapshot(carts.store)
    with pytest.raises(ItemNotFound):
        carts.update_count("c", "ghost", 0)
    with pytest.raises(ItemNotFound):
        carts.delete_item("c", "ghost")
    assert snapshot(carts.store) == snap


def test_forced_hash_collision(env: BackendEnv, store: DHTServerStore) -> None:
    carts = env.carts(store, hasher=lambda s: 42)
    carts.add_item("alice", "shared-sku", "1.00", item_count=1)
    carts.add_item("bob", "shared-sku", "9.00", item_count=5)
    carts.add_item("bob", "bobs-own", "2.00")
    assert [(i.item_id, i.item_count) for i in carts.list_items("alice")] == [("shared-sku", 1)]
    assert [(i.item_id, i.item_count) for i in carts.list_items("bob")] == [
        ("shared-sku", 5),
        ("bobs-own", 1),
    ]
    assert list(snapshot(store)) == [42], "both carts live under the one colliding key"
    with pytest.raises(ItemNotFound):
        carts.delete_item("alice", "bobs-own")
    carts.update_count("alice", "shared-sku", 3)
    assert carts.list_items("bob")[0].item_count == 5
    receipt = carts.checkout("alice")
    assert receipt.total == Decimal("3.00") and [ln.item_id for ln in receipt.lines] == ["shared-sku"]
    assert carts.list_items("alice") == []
    assert len(carts.list_items("bob")) == 2, "checking out alice leaves bob's cart"
    with pytest.raises(CartEmpty):
        carts.checkout("alice")
    assert carts.checkout("bob").total == Decimal("47.00")
    assert_carts_empty(store)


def test_stored_value_names_the_customer(carts: CartService) -> None:
    carts.add_item("carol", "036000291459", "1.25", item_count=2)
    rec = carts.store.get(hash_key("carol"))
    assert rec is not None and rec.version == 1
    assert b'"carol"' in rec.value, "the record holds its customer id (collision detection)"
    assert b"036000291459" in rec.value, "item ids are stored as strings"
    carts.add_item("carol", "x", "1")
    assert carts.store.get(hash_key("carol")).version == 2  # type: ignore[union-attr]


def test_a_cart_item_renders_as_json(carts: CartService) -> None:
    """The cart knows nothing of rendering: dhtcart.render gives a line its JSON fields."""
    item = carts.add_item("c", "i", "1.50", item_count=2, special_sale=True, sale_expiration="2099-01-01T00:00:00Z")
    assert not hasattr(item, "to_dict")
    assert render.line(item, money=str) == {
        "itemId": "i",
        "offeredPrice": "1.50",
        "itemCount": 2,
        "specialSale": True,
        "saleExpiration": "2099-01-01T00:00:00+00:00",
        "expired": False,
    }
    assert item.line_total == Decimal("3.00")


class _AlwaysConflicting(MemoryBackend):
    """A shard whose read-modify-write is a compare-and-set loop (as on Redis) that always loses."""

    modify = FencedBackend.modify  # the compare-and-set loop, not the memory backend's one step

    def put(self, key: int, value: bytes, expected_version: int | None = None) -> int:
        current = self.get(key)
        raise VersionConflict(key, expected_version or 0, (current.version if current else 0) + 1)


def test_too_many_retries_writes_nothing() -> None:
    store = DHTServerStore({"a": _AlwaysConflicting(), "b": _AlwaysConflicting()})
    carts = CartService(store, max_retries=5)
    with pytest.raises(TooManyRetries) as info:
        carts.add_item("c", "x", "1")
    assert isinstance(info.value, Conflict)
    assert store.count() == 0
    store.close()


def test_default_service_is_in_memory() -> None:
    with CartService() as carts:
        carts.add_item("c", "x", "1")
        assert all(s.url == "memory://" for s in carts.store.servers.values())
        assert len(carts.store.servers) == 5


def test_open_persists_across_reopen(tmp_path: Path) -> None:
    with CartService.open(tmp_path / "carts") as carts:
        carts.add_item("alice", "036000291459", "0.10", item_count=3)
        carts.add_item("bob", "b", "1")
        carts.add_item("bob", "c", "2", special_sale=True, sale_expiration="2099-01-01T00:00:00Z")
        carts.checkout("bob")
        carts.add_item("bob", "after", "3")
        listed = carts.list_items("alice")
    with pytest.raises(Exception):  # noqa: B017 - the service closed the store it opened
        carts.list_items("alice")
    with CartService.open(tmp_path / "carts") as again:
        assert again.list_items("alice") == listed
        assert [(i.item_id, i.item_count) for i in again.list_items("bob")] == [("after", 1)]
        assert again.checkout("alice").total == Decimal("0.30")
    with CartService.open(tmp_path / "carts") as third:
        assert third.list_items("alice") == []


def test_service_does_not_close_a_store_it_was_given(env: BackendEnv, store: DHTServerStore) -> None:
    with CartService(store) as carts:
        carts.add_item("c", "x", "1")
    assert store.get(hash_key("c")) is not None  # still open


def test_add_reencodes_only_the_line_it_touches(monkeypatch: pytest.MonkeyPatch) -> None:
    """DESIGN: the seed re-serialised the whole cart on every add, so an add to a
    1,000-item cart cost ~5x one to an empty cart. dhtcart encodes only the line an
    add touches (plus the customer header); the speed itself is measured in
    benchmarks/core.py, this checks the mechanism, which timing noise cannot flake."""
    from dhtcart.cart import codec

    calls: list[object] = []
    real = codec.line

    def counting(item_id: str, *fields: Any) -> codec.Line:
        calls.append([item_id, *fields])
        return real(item_id, *fields)

    with CartService() as carts:
        for i in range(1000):
            carts.add_item("big", f"item-{i}", "1.00")
        monkeypatch.setattr(codec, "line", counting)
        carts.add_item("big", "item-5", "1.00")  # re-add: one line changes
        carts.update_count("big", "item-7", 3)
        carts.add_item("big", "item-new", "2.00")
        encoded_lines = [c for c in calls if isinstance(c, list)]
        assert len(encoded_lines) == 3, encoded_lines
        assert [line[0] for line in encoded_lines] == ["item-5", "item-7", "item-new"]
        counts = {i.item_id: i.item_count for i in carts.list_items("big")}
    assert len(counts) == 1001 and counts["item-5"] == 2 and counts["item-7"] == 3


@pytest.mark.parametrize("bad", ["a/b", "x\ufffd"])
def test_ids_refuse_slash_and_replacement_character(bad: str) -> None:
    """An id is one path segment of the HTTP API, and U+FFFD marks bytes that were not UTF-8."""
    with CartService() as carts:
        with pytest.raises(InvalidInput):
            carts.add_item(bad, "i", "1")
        with pytest.raises(InvalidInput):
            carts.add_item("c", bad, "1")
        assert carts.list_items("c") == []


def assert_carts_empty(store: DHTServerStore) -> None:
    """An emptied cart stays as an empty record (never deleted: its version must keep
    growing, or a writer holding version 1 of the old cart could overwrite a new one)."""
    from dhtcart.cart.codec import decode

    for _, rec in store.items():
        assert all(not lines for lines in decode(rec.value).values()), rec


def test_emptied_cart_keeps_its_version_growing() -> None:
    """The ABA case: a stale writer holding version 1 of a checked-out cart must not
    overwrite the cart a new add created."""
    with CartService() as carts:
        carts.add_item("c", "a", "10")
        key = hash_key("c")
        stale = carts.store.get(key)
        assert stale is not None and stale.version == 1
        carts.checkout("c")
        carts.add_item("c", "b", "1")
        with pytest.raises(VersionConflict):
            carts.store.put(key, stale.value, expected_version=stale.version)
        assert [(i.item_id, i.item_count) for i in carts.list_items("c")] == [("b", 1)]


# -- the package: one parse per read, no rendering, the caller's own names ------------------


def test_a_cold_read_parses_each_stored_line_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A service that has not seen a record yet decodes it in one parse, every line once
    (it used to parse each line twice: the record, then its lines again to list them);
    a warm read and a change parse nothing."""
    store = DHTServerStore(shards=2)
    with CartService(store) as writer:
        for i in range(50):
            writer.add_item("big", f"sku-{i}", "1.00")
    parsed: list[int] = []
    real = json.loads

    def counting(text: Any, *args: Any, **kwargs: Any) -> Any:
        value = real(text, *args, **kwargs)
        parsed.append(len(value) if isinstance(value, list) else 1)
        return value

    cold = CartService(store, clock=Clock())  # nothing decoded yet
    monkeypatch.setattr(json, "loads", counting)
    items = cold.list_items("big")
    assert len(items) == 50
    assert parsed == [51]  # one parse of the customer's header and its 50 lines
    parsed.clear()
    assert cold.list_items("big") == items  # warm: the decoding is reused (checked against the bytes)
    assert cold.add_item("big", "sku-7", "1.00").item_count == 2  # a change encodes one line, parses none
    assert cold.checkout("big").total == Decimal("51.00")
    assert parsed == []
    store.close()


def test_a_damaged_record_is_corrupt_data() -> None:
    with CartService() as carts:
        key = hash_key("c")
        for raw in (b'dhtcart-cart 1\n"c"\n[1,2', b'dhtcart-cart 1\n["i","1.00",1,false,null]', b"x"):
            carts.store.put(key, raw)
            with pytest.raises(CorruptData):
                carts.list_items("c")
            with pytest.raises(CorruptData):
                carts.add_item("c", "i", "1")
            assert carts.store.get(key).value == raw  # type: ignore[union-attr]  # nothing written


def test_the_cart_imports_no_rendering_and_no_face() -> None:
    """cart -> render -> cart was a circle; the cart knows nothing of rendering now."""
    code = "import sys, dhtcart.cart; print(' '.join(sorted(m for m in sys.modules if m.startswith('dhtcart'))))"
    loaded = run_python(code).split()
    assert "dhtcart.cart.service" in loaded
    assert not [m for m in loaded if m == "dhtcart.render" or m.startswith(("dhtcart.http", "dhtcart.metrics"))]


def test_both_faces_of_the_operations_take_the_same_arguments() -> None:
    """The five operations are written once: CartService's return the result, versioned's add the version."""
    for name in ("list_items", "add_item", "update_count", "delete_item", "checkout"):
        plain, versioned = (
            inspect.signature(getattr(CartService, name)),
            inspect.signature(getattr(VersionedCarts, name)),
        )
        assert plain.parameters == versioned.parameters, name
        assert versioned.return_annotation == f"Versioned[{plain.return_annotation}]", name
        assert getattr(CartService, name).__doc__ == getattr(VersionedCarts, name).__doc__


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.list_items(""), "customer_id"),
        (lambda c: c.add_item("c", "a/b", "1"), "item_id"),
        (lambda c: c.add_item("c", "i", "-1"), "offered_price"),
        (lambda c: c.add_item("c", "i", "1", item_count=0), "item_count"),
        (lambda c: c.add_item("c", "i", "1", 999_999) and c.add_item("c", "i", "1", 2), "item_count"),
        (lambda c: c.add_item("c", "i", "1", special_sale="yes"), "special_sale"),
        (lambda c: c.add_item("c", "i", "1", sale_expiration="soon"), "sale_expiration"),
        (lambda c: c.update_count("c", "i", -1), "new_count"),
        (lambda c: c.delete_item(" c", "i"), "customer_id"),
        (lambda c: c.checkout("c" * 129), "customer_id"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_errors_name_the_python_parameter(call: Callable[[CartService], Any], field: str) -> None:
    """A Python caller reads its own parameter names (the HTTP face maps them to its JSON fields)."""
    with CartService() as carts:
        with pytest.raises(InvalidInput) as info:
            call(carts)
        assert info.value.field == field and str(info.value).startswith(f"{field}: ")
        assert not any(ch.isupper() for ch in info.value.field)


@pytest.mark.parametrize("bad", ["3", -1, True, 1.0, {1, "2"}, [1]])
def test_a_bad_expected_version_is_refused_before_anything(bad: Any) -> None:
    with CartService() as carts:
        carts.add_item("c", "i", "1")
        before = snapshot(carts.store)
        for call in (
            lambda: carts.add_item("c", "j", "1", expected_version=bad),
            lambda: carts.update_count("c", "i", 5, expected_version=bad),
            lambda: carts.delete_item("c", "i", expected_version=bad),
            lambda: carts.checkout("c", expected_version=bad),
        ):
            with pytest.raises(InvalidValue) as info:
                call()
            assert isinstance(info.value, ValueError) and "expected_version" in str(info.value)
        assert snapshot(carts.store) == before


def test_open_takes_every_location_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with CartService.open("memory://") as carts:
        carts.add_item("c", "i", "1")
        assert carts.store.directory is None and carts.store.location == "memory"
        assert [s.url for s in carts.store.shards.values()] == ["memory://"] * 5
    assert list(tmp_path.iterdir()) == []  # in memory: no directory named "memory:"
    with CartService.open(f"lmdb://{tmp_path / 'a'}", shards=2) as carts:
        carts.add_item("c", "i", "1", item_count=3)
    for same in (tmp_path / "a", str(tmp_path / "a"), "a", "./a", f"lmdb://{tmp_path / 'a'}"):
        with CartService.open(same) as again:
            assert again.store.directory is not None
            assert again.store.directory.resolve() == (tmp_path / "a").resolve()
            assert len(again.store.shards) == 2
            assert [(i.item_id, i.item_count) for i in again.list_items("c")] == [("i", 3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    with pytest.raises(InvalidInput, match="location"):
        CartService.open("ftp://example.com/carts")


def test_open_takes_a_redis_location(redis_session_server: Any) -> None:
    if isinstance(redis_session_server, _RedisUnavailable):
        skip_or_fail(redis_session_server.reason)
    port = redis_session_server.port
    _flushall(port)
    location = f"redis://127.0.0.1:{port}/0?prefix=carts:"
    shards = {f"r{i}": f"redis://127.0.0.1:{port}/{i + 1}?prefix=carts:" for i in range(2)}
    with CartService.open(location, shards=shards) as carts:
        carts.add_item("c", "i", "1.50", item_count=2)
        assert sorted(carts.store.shards) == ["r0", "r1"] and carts.store.directory is None
    with CartService.open(location) as again:  # another client, from the URL alone
        assert again.checkout("c").total == Decimal("3.00")
    _flushall(port)
