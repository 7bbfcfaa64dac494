"""The shopping cart: five operations over the DHT, safe under concurrency.

>>> carts = CartService()                       # in memory
>>> item = carts.add_item("alice", "036000291459", "50", item_count=2)
>>> item.item_id, item.offered_price, item.item_count
('036000291459', Decimal('50.00'), 2)
>>> _ = carts.add_item("alice", "sku-2", Decimal("10"), item_count=3)
>>> _ = carts.update_count("alice", "036000291459", 1)
>>> carts.delete_item("alice", "036000291459")
>>> carts.checkout("alice").total
Decimal('30.00')
>>> carts.list_items("alice")
[]

A cart is one value under ``hash_key(customer_id)``. The value is a small
JSON document with a format tag; it maps each customer id to its lines, so
two customers whose ids hash to the same 63-bit key share the record but
never see each other's items. Every change is read, modify, compare-and-set,
retried on :class:`~dhtcart.errors.VersionConflict`: concurrent writers,
threads or processes, never lose an update.

Rules:

* adding an item already in the cart adds to its count (one line per item)
  and takes the new offer's price and sale terms;
* ``update_count(..., 0)`` removes the line;
* a special-sale price holds until ``sale_expiration``; after it, the item is
  listed with ``expired=True`` and checkout raises
  :class:`~dhtcart.errors.SaleExpired` naming the items, changing nothing;
* checkout returns a :class:`Receipt` and empties the cart atomically.

Money is :class:`decimal.Decimal` with at most two decimal places; item ids
are strings (leading zeros kept); times are timezone-aware (naive times and
ISO strings without an offset are taken as UTC).
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections.abc import Callable, Iterator, Set
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

from dhtcart import render
from dhtcart.errors import (
    CartEmpty,
    CorruptData,
    InvalidInput,
    ItemNotFound,
    PreconditionFailed,
    SaleExpired,
    TooManyRetries,
    VersionConflict,
)
from dhtcart.hashing import hash_key
from dhtcart.store import DHTServerStore

__all__ = [
    "MAX_COUNT",
    "MAX_ID_LENGTH",
    "MAX_LINES",
    "MAX_PRICE",
    "CartItem",
    "CartService",
    "Receipt",
    "ReceiptLine",
    "Versioned",
    "VersionedCarts",
]

T = TypeVar("T")

#: what ``expected_version`` may be: one version, or any of several (an ``If-Match`` list)
ExpectedVersion = int | Set[int] | None

MAX_ID_LENGTH = 128  #: characters in a customer or item id
MAX_COUNT = 1_000_000  #: units of one item in one cart
MAX_PRICE = Decimal("1000000000")  #: the largest unit price
MAX_LINES = 10_000  #: distinct items in one cart
FORMAT = 1  #: the stored value's format tag

_CENT = Decimal("0.01")
_ZERO = Decimal("0.00")
_PRICE_RE = re.compile(r"-?[0-9]+(\.[0-9]*)?|-?\.[0-9]+")
_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_MS = timedelta(milliseconds=1)


def _utcnow() -> datetime:
    return datetime.now(_UTC)


def _to_ms(when: datetime) -> int:
    """Milliseconds since the epoch, exactly (no float on the way)."""
    return (when - _EPOCH) // _MS


def _from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


# -- validation ---------------------------------------------------------------


def check_id(value: object, field: str) -> str:
    """A customer or item id: a non-empty str of at most 128 printable characters.

    No ``/`` (an id is one path segment of the HTTP API), no U+FFFD, no
    surrounding white space. Ids are compared as given: no Unicode normalisation.
    """
    if not isinstance(value, str):
        raise InvalidInput(field, f"must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidInput(field, "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInput(field, f"must be at most {MAX_ID_LENGTH} characters, got {len(value)}")
    if not value.isprintable():  # also false for surrogates and other unassigned/format code points
        raise InvalidInput(field, "must not contain control or unprintable characters")
    if "/" in value or "\ufffd" in value:
        # an id is one URL path segment of the HTTP API; U+FFFD is what undecodable bytes become
        raise InvalidInput(field, "must not contain '/' or U+FFFD (the mark of bytes that were not UTF-8)")
    if value != value.strip():
        raise InvalidInput(field, "must not start or end with white space")
    return value


def check_count(value: object, field: str, *, allow_zero: bool = False) -> int:
    """A whole number of units, 1..MAX_COUNT (0 too when ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(field, f"must be a whole number, not {type(value).__name__}")
    low = 0 if allow_zero else 1
    if not low <= value <= MAX_COUNT:
        raise InvalidInput(field, f"must be between {low} and {MAX_COUNT}, got {value}")
    return value


def check_price(value: object, field: str = "offeredPrice") -> Decimal:
    """A unit price: finite, 0 <= price <= MAX_PRICE, at most two decimal places.

    Accepts ``Decimal``, ``int``, ``str`` and ``float`` (read through its
    shortest repr, so ``10.1`` is ``Decimal("10.10")``, never float arithmetic).
    """
    if isinstance(value, bool):
        raise InvalidInput(field, "must be a number, not a bool")
    try:
        if isinstance(value, Decimal):
            if value.is_finite():
                return _price_of_decimal(value, field)
            price = value
        elif isinstance(value, int):
            price = Decimal(value)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidInput(field, "must be a finite number")
            price = Decimal(repr(value))
        elif isinstance(value, str):
            if len(value) > 40 or not _PRICE_RE.fullmatch(value):
                raise InvalidInput(field, f"is not a plain decimal number like 12.34: {value[:40]!r}")
            return _price_of_text(value, field)
        else:
            raise InvalidInput(field, f"must be a number, not {type(value).__name__}")
    except InvalidOperation:
        raise InvalidInput(field, f"is not a number: {value!r}") from None
    if not price.is_finite():
        raise InvalidInput(field, "must be a finite number")
    return _check_decimal_price(price, field)


_isoformat = lru_cache(maxsize=1024)(datetime.isoformat)  # sale dates repeat; datetimes are immutable


@lru_cache(maxsize=4096)
def _price_of_text(text: str, field: str) -> Decimal:
    """Prices repeat: parse each distinct string once (the result is immutable)."""
    return check_price(Decimal(text), field)


@lru_cache(maxsize=4096)
def _price_of_decimal(value: Decimal, field: str) -> Decimal:
    """Prices repeat: check each distinct (finite) decimal once; equal decimals give the same price."""
    return _check_decimal_price(value, field)


def _check_decimal_price(price: Decimal, field: str) -> Decimal:
    if price < 0:
        raise InvalidInput(field, "must not be negative")
    if price > MAX_PRICE:
        raise InvalidInput(field, f"must be at most {MAX_PRICE}")
    if price != price.quantize(_CENT):
        raise InvalidInput(field, "must have at most two decimal places")
    return price.quantize(_CENT) if price else _ZERO  # no "-0.00"


def check_datetime(value: object, field: str = "saleExpiration") -> datetime:
    """A point in time: an aware ``datetime`` or an ISO 8601 string; naive means UTC."""
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, str):
        text = value.strip()
        if not text or len(text) > 64:
            raise InvalidInput(field, "must be an ISO 8601 date-time")
        if text[-1] in "zZ":
            text = text[:-1] + "+00:00"
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidInput(field, f"is not an ISO 8601 date-time: {value!r}") from None
    else:
        raise InvalidInput(field, f"must be an ISO 8601 string or a datetime, not {type(value).__name__}")
    if when.tzinfo is None or when.utcoffset() is None:
        when = when.replace(tzinfo=_UTC)
    try:
        return when.astimezone(_UTC)
    except OverflowError:
        raise InvalidInput(field, f"is out of range once converted to UTC: {value!r:.60}") from None


# -- data ---------------------------------------------------------------------


class CartItem(NamedTuple):
    """One line of a cart, as listed (an immutable named tuple)."""

    item_id: str
    offered_price: Decimal
    item_count: int
    special_sale: bool
    sale_expiration: datetime | None
    expired: bool  #: a special-sale price whose expiration has passed
    #: when the item was last added (the offer the line carries), to the millisecond;
    #: ``None`` for lines stored before dhtcart recorded it
    added_at: datetime | None = None

    @property
    def line_total(self) -> Decimal:
        return self.offered_price * self.item_count

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the seed API's field names (money as strings): :func:`dhtcart.render.line`."""
        return render.line(self, money=str)


@dataclass(frozen=True)
class ReceiptLine:
    """One line of a receipt."""

    item_id: str
    unit_price: Decimal
    item_count: int
    line_total: Decimal


@dataclass(frozen=True)
class Receipt:
    """What checkout returns: the lines, the exact total, and when."""

    customer_id: str
    lines: list[ReceiptLine]
    total: Decimal
    checked_out_at: datetime
    #: the cart's items as they were checked out, in the order added
    items: list[CartItem] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (money as strings): :func:`dhtcart.render.receipt`."""
        return render.receipt(self, money=str)


class Versioned(Generic[T]):
    """A result and the version of the cart it came from (or made): ``value, version = ...``.

    The version is the cart record's (0: no cart was ever stored). It grows
    with every change, so it names one state of the cart: pass it back as
    ``expected_version`` to change the cart only if nobody changed it since.
    """

    __slots__ = ("value", "version")

    def __init__(self, value: T, version: int) -> None:
        self.value = value
        self.version = version

    def __iter__(self) -> Iterator[Any]:
        yield self.value
        yield self.version

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Versioned) and (self.value, self.version) == (other.value, other.version)

    def __hash__(self) -> int:
        return hash((self.value, self.version))

    def __repr__(self) -> str:
        return f"Versioned(value={self.value!r}, version={self.version})"


# -- the stored format ----------------------------------------------------------
#
# One record holds the carts of every customer whose id hashes to its key
# (almost always exactly one). It is newline-separated JSON, one line per cart
# line, so that a change re-encodes only the line it touches:
#
#     dhtcart-cart 1                                      <- format tag and version
#     "alice"                                             <- a customer (a JSON string)
#     ["036000291459","50.00",2,false,null,1764577654669] <- item id, price, count, sale,
#     ...                                                    expiration, added (ms since epoch)
#
# JSON escapes newlines inside strings, so a line never contains one. Lines
# written before the added time was kept have five elements; they read as
# ``added_at=None``.

_TAG = b"dhtcart-cart %d" % FORMAT
_Line = list[Any]  # [price str, count, special_sale, expiration ISO str or None, added ms or None]
_Lines = dict[str, bytes]  # item id -> its encoded line, in the order added
_Bucket = dict[str, _Lines]  # customer id -> lines

_quote = json.encoder.encode_basestring_ascii  # C: str -> JSON string


def _encode_line(item_id: str, line: _Line) -> bytes:
    """``json.dumps([item_id, *line])``, compact, without building an encoder per call."""
    price, count, sale, exp, added = line
    return (
        f"[{_quote(item_id)},{_quote(price)},{count:d},{'true' if sale else 'false'},"
        f"{'null' if exp is None else _quote(exp)}{'' if added is None else f',{added:d}'}]"
    ).encode()


def _decode_line(frag: bytes) -> _Line:
    line: _Line = json.loads(frag)[1:]
    if len(line) == 4:
        line.append(None)
    return line


def _decode_lines(lines: _Lines) -> list[list[Any]]:
    """Every line as ``[item_id, price, count, sale, expiration(, added)]``, in one C-level parse."""
    rows: list[list[Any]] = json.loads(b"[" + b",".join(lines.values()) + b"]")
    return rows


def _encode(bucket: _Bucket) -> bytes:
    parts = [_TAG]
    for customer, lines in bucket.items():
        parts.append(_header(customer))
        parts += lines.values()
    return b"\n".join(parts)


@lru_cache(maxsize=4096)
def _header(customer: str) -> bytes:
    return _quote(customer).encode()


def _decode(raw: bytes) -> _Bucket:
    frags = raw.split(b"\n")
    if frags[0] != _TAG:
        raise CorruptData(f"cart record has an unknown format tag {frags[0][:32]!r}")
    rows = json.loads(b"[" + b",".join(frags[1:]) + b"]")
    bucket: _Bucket = {}
    lines: _Lines = {}
    for row, frag in zip(rows, frags[1:]):
        if isinstance(row, str):
            lines = bucket.setdefault(row, {})
        else:
            lines[row[0]] = frag
    return bucket


_CACHE_SIZE = 256


class CartService:
    """The five cart operations over a :class:`~dhtcart.store.DHTServerStore`.

    ``CartService()`` keeps carts in memory; ``CartService(store)`` uses your
    store; ``CartService.open(directory)`` opens (or creates) a persistent LMDB
    store there and closes it with the service. ``clock`` returns the current
    aware time (tests inject one); ``hasher`` maps a customer id to its key.
    """

    def __init__(
        self,
        store: DHTServerStore | None = None,
        *,
        clock: Callable[[], datetime] = _utcnow,
        hasher: Callable[[str], int] = hash_key,
        max_retries: int = 1000,
    ) -> None:
        self._owns_store = store is None
        self.store = store if store is not None else DHTServerStore()
        self._clock = clock
        self._hasher = hasher
        self.max_retries = max_retries
        self._cache: dict[int, tuple[bytes, _Bucket]] = {}
        self._keys: dict[str, int] = {}

    @classmethod
    def open(cls, directory: str | Path, **store_options: Any) -> CartService:
        """A service over the persistent store in ``directory`` (see :meth:`DHTServerStore.open`)."""
        service = cls(DHTServerStore.open(directory, **store_options))
        service._owns_store = True
        return service

    # -- the read-modify-compare-and-set loop ------------------------------------

    def _load(self, key: int, raw: bytes) -> _Bucket:
        """Decode ``raw``, reusing the last decoding of this key when the bytes are the same.

        The cache is checked against the stored bytes themselves, never a
        version alone, so it can not serve stale data; its entries are never
        mutated, so threads may share them.
        """
        hit = self._cache.get(key)
        if hit is not None and (hit[0] is raw or hit[0] == raw):
            return hit[1]
        bucket = _decode(raw)
        self._remember(key, raw, bucket)
        return bucket

    def _remember(self, key: int, raw: bytes, bucket: _Bucket) -> None:
        cache = self._cache
        if len(cache) >= _CACHE_SIZE:
            with suppress(KeyError, StopIteration, RuntimeError):  # raced with another thread
                del cache[next(iter(cache))]
        cache[key] = (raw, bucket)

    def _change(
        self,
        customer_id: str,
        fn: Callable[[_Lines], tuple[T, _Lines]],
        expected: ExpectedVersion = None,
    ) -> tuple[T, int]:
        """Apply ``fn`` to the customer's lines until the compare-and-set succeeds.

        ``fn`` gets a private copy of the lines and returns ``(result,
        new_lines)``. It may raise: nothing is written then. Returns the
        result and the cart's version after the change. With ``expected``,
        the change is made only at that version (one compare-and-set, no
        retry): otherwise :class:`~dhtcart.errors.PreconditionFailed`.
        """
        key = self._key(customer_id)
        store = self.store
        for attempt in range(self.max_retries):
            rec = store.get(key)
            version = rec.version if rec is not None else 0
            if expected is not None and not _matches(expected, version):
                raise PreconditionFailed(customer_id, _shown(expected), version)
            bucket = self._load(key, rec.value) if rec is not None else {}
            result, lines = fn(dict(bucket.get(customer_id, {})))
            bucket = dict(bucket)
            if lines:
                bucket[customer_id] = lines
            else:
                bucket.pop(customer_id, None)
            if not bucket and rec is None:
                return result, 0
            try:
                # An emptied cart is written as an empty record, never deleted: a
                # deleted key's version would restart at 1, and a writer still
                # holding version 1 of the old cart could then overwrite a new one.
                raw = _encode(bucket)
                new_version = store.put(key, raw, version)
                self._remember(key, raw, bucket)
                return result, new_version
            except VersionConflict as exc:
                if expected is not None:  # the cart moved on from the version the caller named
                    raise PreconditionFailed(customer_id, _shown(expected), exc.actual) from None
                if attempt >= 4:  # heavy contention: back off a little, with jitter
                    time.sleep(random.uniform(0, 0.0005 * min(attempt, 20)))
        raise TooManyRetries(f"cart of {customer_id!r} changed under us {self.max_retries} times; try again")

    def _key(self, customer_id: str) -> int:
        """The customer's key; hashes are remembered for recently seen customers."""
        keys = self._keys
        key = keys.get(customer_id)
        if key is None:
            key = self._hasher(customer_id)
            if len(keys) >= _CACHE_SIZE * 16:
                keys.clear()
            keys[customer_id] = key
        return key

    def shard_of(self, customer_id: str) -> str:
        """The name of the shard that holds the customer's cart now (for metrics and logs)."""
        return self.store.server_for(self._key(customer_id)).name

    @staticmethod
    def _make_item(
        item_id: str, price: str, count: int, sale: bool, exp: str | None, now: datetime, added: int | None = None
    ) -> CartItem:
        expiration = datetime.fromisoformat(exp) if exp is not None else None
        expired = bool(sale) and expiration is not None and expiration <= now
        return CartItem(
            item_id, Decimal(price), count, bool(sale), expiration, expired, None if added is None else _from_ms(added)
        )

    def _items(self, lines: _Lines, now: datetime) -> list[CartItem]:
        make = self._make_item
        return [make(r[0], r[1], r[2], r[3], r[4], now, r[5] if len(r) > 5 else None) for r in _decode_lines(lines)]

    # -- the five operations (each also in :attr:`versioned`, with the cart's version) ---

    def list_items(self, customer_id: str) -> list[CartItem]:
        """The customer's items in the order they were added (``[]`` for no cart)."""
        return self._list_items(customer_id)[0]

    def add_item(
        self,
        customer_id: str,
        item_id: str,
        offered_price: Decimal | int | str | float,
        item_count: int = 1,
        special_sale: bool = False,
        sale_expiration: datetime | str | None = None,
        *,
        expected_version: ExpectedVersion = None,
    ) -> CartItem:
        """Add ``item_count`` units (to the existing line if the item is there); return the line.

        With ``expected_version``, only if the cart is at that version
        (else :class:`~dhtcart.errors.PreconditionFailed`); likewise for the
        other changes.
        """
        return self._add_item(
            customer_id, item_id, offered_price, item_count, special_sale, sale_expiration, expected_version
        )[0]

    def update_count(
        self, customer_id: str, item_id: str, new_count: int, *, expected_version: ExpectedVersion = None
    ) -> CartItem | None:
        """Set the item's count; 0 removes it (returns ``None``). Raises :class:`ItemNotFound`."""
        return self._update_count(customer_id, item_id, new_count, expected_version)[0]

    def delete_item(self, customer_id: str, item_id: str, *, expected_version: ExpectedVersion = None) -> None:
        """Remove the item's line. Raises :class:`ItemNotFound` if it is not there."""
        self._delete_item(customer_id, item_id, expected_version)

    def checkout(self, customer_id: str, *, expected_version: ExpectedVersion = None) -> Receipt:
        """Empty the cart atomically and return the receipt.

        Raises :class:`CartEmpty` for an empty cart and :class:`SaleExpired`
        (naming the items) if any sale price has expired; neither changes anything.
        """
        return self._checkout(customer_id, expected_version)[0]

    @property
    def versioned(self) -> VersionedCarts:
        """The same operations, each returning :class:`Versioned` (the result and the cart's version)."""
        return VersionedCarts(self)

    # -- the implementations: (result, version) ------------------------------------------

    def _list_items(self, customer_id: str) -> tuple[list[CartItem], int]:
        check_id(customer_id, "customerId")
        now = self._clock()
        key = self._key(customer_id)
        rec = self.store.get(key)
        if rec is None:
            return [], 0
        lines = self._load(key, rec.value).get(customer_id)
        return (self._items(lines, now) if lines else []), rec.version

    def _add_item(
        self,
        customer_id: str,
        item_id: str,
        offered_price: Decimal | int | str | float,
        item_count: int,
        special_sale: bool,
        sale_expiration: datetime | str | None,
        expected: ExpectedVersion,
    ) -> tuple[CartItem, int]:
        check_id(customer_id, "customerId")
        check_id(item_id, "itemId")
        price_dec = check_price(offered_price)
        price = str(price_dec)
        check_count(item_count, "itemCount")
        if not isinstance(special_sale, bool):
            raise InvalidInput("specialSale", f"must be true or false, not {type(special_sale).__name__}")
        expiration = None if sale_expiration is None else check_datetime(sale_expiration)
        exp = None if expiration is None else _isoformat(expiration)
        now = self._clock()
        added = _to_ms(now)
        expired = special_sale and expiration is not None and expiration <= now

        def fn(lines: _Lines) -> tuple[CartItem, _Lines]:
            entry = lines.get(item_id)
            count = item_count + (_decode_line(entry)[1] if entry is not None else 0)
            if count > MAX_COUNT:
                raise InvalidInput("itemCount", f"the cart would hold {count} units; the limit is {MAX_COUNT}")
            if entry is None and len(lines) >= MAX_LINES:
                raise InvalidInput("itemId", f"the cart already holds {MAX_LINES} items, the limit")
            lines[item_id] = _encode_line(item_id, [price, count, special_sale, exp, added])
            return CartItem(item_id, price_dec, count, special_sale, expiration, expired, _from_ms(added)), lines

        return self._change(customer_id, fn, expected)

    def _update_count(
        self, customer_id: str, item_id: str, new_count: int, expected: ExpectedVersion
    ) -> tuple[CartItem | None, int]:
        check_id(customer_id, "customerId")
        check_id(item_id, "itemId")
        check_count(new_count, "newCount", allow_zero=True)
        now = self._clock()

        def fn(lines: _Lines) -> tuple[CartItem | None, _Lines]:
            entry = lines.get(item_id)
            if entry is None:
                raise ItemNotFound(customer_id, item_id)
            if new_count == 0:
                del lines[item_id]
                return None, lines
            price, _, sale, exp, added = _decode_line(entry)
            lines[item_id] = _encode_line(item_id, [price, new_count, sale, exp, added])
            return self._make_item(item_id, price, new_count, sale, exp, now, added), lines

        return self._change(customer_id, fn, expected)

    def _delete_item(self, customer_id: str, item_id: str, expected: ExpectedVersion) -> tuple[None, int]:
        check_id(customer_id, "customerId")
        check_id(item_id, "itemId")

        def fn(lines: _Lines) -> tuple[None, _Lines]:
            if item_id not in lines:
                raise ItemNotFound(customer_id, item_id)
            del lines[item_id]
            return None, lines

        return self._change(customer_id, fn, expected)

    def _checkout(self, customer_id: str, expected: ExpectedVersion) -> tuple[Receipt, int]:
        check_id(customer_id, "customerId")
        now = self._clock()

        def fn(lines: _Lines) -> tuple[Receipt, _Lines]:
            if not lines:
                raise CartEmpty(customer_id)
            items = self._items(lines, now)
            expired = [it.item_id for it in items if it.expired]
            if expired:
                raise SaleExpired(customer_id, expired)
            receipt_lines = [ReceiptLine(it.item_id, it.offered_price, it.item_count, it.line_total) for it in items]
            total = sum((ln.line_total for ln in receipt_lines), Decimal("0.00"))
            return Receipt(customer_id, receipt_lines, total, now, items), {}

        return self._change(customer_id, fn, expected)

    # -- lifetime -------------------------------------------------------------------

    def close(self) -> None:
        """Close the store if this service opened it."""
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> CartService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VersionedCarts:
    """:class:`CartService`'s operations, each returning :class:`Versioned`: the result and the cart's version.

    >>> carts = CartService()
    >>> items, version = carts.versioned.list_items("alice")
    >>> items, version
    ([], 0)
    >>> line, version = carts.versioned.add_item("alice", "sku-1", "2.50", expected_version=0)
    >>> version
    1
    >>> carts.versioned.add_item("alice", "sku-2", "1.00", expected_version=0)
    Traceback (most recent call last):
    ...
    dhtcart.errors.PreconditionFailed: cart of 'alice' is at version 1, not 0; re-read it and decide again

    The version is the one after the change (a change that wrote nothing
    leaves it as it was). HTTP ``ETag`` and ``If-Match`` are these versions.
    """

    __slots__ = ("_carts",)

    def __init__(self, carts: CartService) -> None:
        self._carts = carts

    def list_items(self, customer_id: str) -> Versioned[list[CartItem]]:
        """:meth:`CartService.list_items`, and the version of the cart listed."""
        return Versioned(*self._carts._list_items(customer_id))

    def add_item(
        self,
        customer_id: str,
        item_id: str,
        offered_price: Decimal | int | str | float,
        item_count: int = 1,
        special_sale: bool = False,
        sale_expiration: datetime | str | None = None,
        *,
        expected_version: ExpectedVersion = None,
    ) -> Versioned[CartItem]:
        """:meth:`CartService.add_item`, and the cart's new version."""
        return Versioned(
            *self._carts._add_item(
                customer_id, item_id, offered_price, item_count, special_sale, sale_expiration, expected_version
            )
        )

    def update_count(
        self, customer_id: str, item_id: str, new_count: int, *, expected_version: ExpectedVersion = None
    ) -> Versioned[CartItem | None]:
        """:meth:`CartService.update_count`, and the cart's new version."""
        return Versioned(*self._carts._update_count(customer_id, item_id, new_count, expected_version))

    def delete_item(
        self, customer_id: str, item_id: str, *, expected_version: ExpectedVersion = None
    ) -> Versioned[None]:
        """:meth:`CartService.delete_item`, and the cart's new version."""
        return Versioned(*self._carts._delete_item(customer_id, item_id, expected_version))

    def checkout(self, customer_id: str, *, expected_version: ExpectedVersion = None) -> Versioned[Receipt]:
        """:meth:`CartService.checkout`, and the version of the emptied cart."""
        return Versioned(*self._carts._checkout(customer_id, expected_version))


def _matches(expected: int | Set[int], version: int) -> bool:
    return expected == version if isinstance(expected, int) else version in expected


def _shown(expected: int | Set[int]) -> str:
    return str(expected) if isinstance(expected, int) else " or ".join(str(v) for v in sorted(expected)) or "(none)"
