"""The cart service: five operations over the store, each one atomic change, retried on conflict.

The operations are written once, in :class:`VersionedCarts`, where each
returns its result with the cart's version (:class:`~dhtcart.cart.values.Versioned`);
:class:`CartService` offers the same operations returning the result alone.

Every change is one :meth:`~dhtcart.store.DHTServerStore.modify` of the
cart's record (:meth:`CartService._change`): one atomic step on memory and
LMDB shards, a compare-and-set loop retried on a conflict on Redis and in
stores that keep several copies; a listing is one read
(:meth:`CartService._read`). Those two methods are the only places the
cart touches the store.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Set
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import lru_cache
from typing import Any, Concatenate, ParamSpec, TypeVar

from dhtcart.backends.base import Record
from dhtcart.cart import codec
from dhtcart.cart.rules import (
    MAX_COUNT,
    MAX_LINES,
    check_count,
    check_datetime,
    check_expected_version,
    check_flag,
    check_id,
    check_price,
)
from dhtcart.cart.values import CartItem, ExpectedVersion, Receipt, ReceiptLine, Versioned
from dhtcart.errors import (
    CartEmpty,
    InvalidInput,
    ItemNotFound,
    PreconditionFailed,
    SaleExpired,
    TooManyRetries,
)
from dhtcart.hashing import hash_key
from dhtcart.store import DHTServerStore

__all__ = ["CartService", "VersionedCarts"]

T = TypeVar("T")
P = ParamSpec("P")

_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_MS = timedelta(milliseconds=1)
_CACHE_SIZE = 256  #: decoded records kept per service


def _utcnow() -> datetime:
    return datetime.now(_UTC)


def _to_ms(when: datetime) -> int:
    """Milliseconds since the epoch, exactly (no float on the way)."""
    return (when - _EPOCH) // _MS


@lru_cache(maxsize=4096)
def _from_ms(ms: int) -> datetime:
    """The time ``ms`` milliseconds after the epoch (the lines of carts being read repeat: cached)."""
    return _EPOCH + timedelta(0, ms // 1000, ms % 1000 * 1000)


# stored texts repeat from read to read; the values made from them are immutable
_isoformat = lru_cache(maxsize=1024)(datetime.isoformat)
_fromisoformat = lru_cache(maxsize=1024)(datetime.fromisoformat)
_decimal = lru_cache(maxsize=4096)(Decimal)
_new = tuple.__new__  # builds a named tuple from its fields, without the generated __new__'s call


def _item(ln: codec.Line, now: datetime) -> CartItem:
    """The listed form of a stored line at time ``now`` (``expired`` depends on it)."""
    expiration = None if ln.expiration is None else _fromisoformat(ln.expiration)
    expired = ln.sale and expiration is not None and expiration <= now
    added = None if ln.added is None else _from_ms(ln.added)
    return _new(CartItem, (ln.item_id, _decimal(ln.price), ln.item_count, ln.sale, expiration, expired, added))


def _matches(expected: int | Set[int], version: int) -> bool:
    return expected == version if isinstance(expected, int) else version in expected


def _shown(expected: int | Set[int]) -> str:
    return str(expected) if isinstance(expected, int) else " or ".join(str(v) for v in sorted(expected)) or "(none)"


class VersionedCarts:
    """The five cart operations, each returning :class:`~dhtcart.cart.values.Versioned`: the result
    and the cart's version. Reached as :attr:`CartService.versioned`.

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
    With ``expected_version`` (a version, or a set of versions), a change is
    made only if the cart is at it, else
    :class:`~dhtcart.errors.PreconditionFailed`: one compare-and-set, no retry.
    """

    __slots__ = ("_carts",)

    def __init__(self, carts: CartService) -> None:
        self._carts = carts

    def list_items(self, customer_id: str) -> Versioned[list[CartItem]]:
        """The customer's items in the order they were added (``[]`` for no cart)."""
        check_id(customer_id, "customer_id")
        carts = self._carts
        now = carts._clock()
        lines, version = carts._read(customer_id)
        return Versioned([_item(ln, now) for ln in lines], version)

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
        """Add ``item_count`` units, to the item's line if it is there (taking the new offer's price
        and sale terms); the line after the add.

        Raises :class:`~dhtcart.errors.InvalidInput` naming the parameter for bad input, also
        when the line would hold more than ``MAX_COUNT`` units or the cart more than
        ``MAX_LINES`` items.
        """
        check_id(customer_id, "customer_id")
        check_id(item_id, "item_id")
        price_dec = check_price(offered_price)
        price = str(price_dec)
        check_count(item_count, "item_count")
        check_flag(special_sale, "special_sale")
        expiration = None if sale_expiration is None else check_datetime(sale_expiration)
        exp = None if expiration is None else _isoformat(expiration)
        expected = check_expected_version(expected_version)
        now = self._carts._clock()
        added = _to_ms(now)
        expired = special_sale and expiration is not None and expiration <= now

        def add(lines: codec.Lines) -> CartItem:
            entry = lines.get(item_id)
            count = item_count + (entry.item_count if entry is not None else 0)
            if count > MAX_COUNT:
                raise InvalidInput("item_count", f"the cart would hold {count} units; the limit is {MAX_COUNT}")
            if entry is None and len(lines) >= MAX_LINES:
                raise InvalidInput("item_id", f"the cart already holds {MAX_LINES} items, the limit")
            lines.put(codec.line(item_id, price, count, special_sale, exp, added))
            return CartItem(item_id, price_dec, count, special_sale, expiration, expired, _from_ms(added))

        return self._carts._change(customer_id, add, expected)

    def update_count(
        self, customer_id: str, item_id: str, new_count: int, *, expected_version: ExpectedVersion = None
    ) -> Versioned[CartItem | None]:
        """Set the item's count; 0 removes the line (the result is then ``None``).

        Raises :class:`~dhtcart.errors.ItemNotFound` if the item is not in the cart.
        """
        check_id(customer_id, "customer_id")
        check_id(item_id, "item_id")
        check_count(new_count, "new_count", allow_zero=True)
        expected = check_expected_version(expected_version)
        now = self._carts._clock()

        def update(lines: codec.Lines) -> CartItem | None:
            entry = lines.get(item_id)
            if entry is None:
                raise ItemNotFound(customer_id, item_id)
            if new_count == 0:
                lines.pop(item_id)
                return None
            changed = codec.line(item_id, entry.price, new_count, entry.sale, entry.expiration, entry.added)
            lines.put(changed)
            return _item(changed, now)

        return self._carts._change(customer_id, update, expected)

    def delete_item(
        self, customer_id: str, item_id: str, *, expected_version: ExpectedVersion = None
    ) -> Versioned[None]:
        """Remove the item's line. Raises :class:`~dhtcart.errors.ItemNotFound` if it is not there."""
        check_id(customer_id, "customer_id")
        check_id(item_id, "item_id")
        expected = check_expected_version(expected_version)

        def delete(lines: codec.Lines) -> None:
            if lines.pop(item_id) is None:
                raise ItemNotFound(customer_id, item_id)

        return self._carts._change(customer_id, delete, expected)

    def checkout(self, customer_id: str, *, expected_version: ExpectedVersion = None) -> Versioned[Receipt]:
        """Empty the cart atomically; the receipt.

        Raises :class:`~dhtcart.errors.CartEmpty` for an empty cart and
        :class:`~dhtcart.errors.SaleExpired` (naming the items) if any sale
        price has expired; neither changes anything.
        """
        check_id(customer_id, "customer_id")
        expected = check_expected_version(expected_version)
        now = self._carts._clock()

        def check_out(lines: codec.Lines) -> Receipt:
            if not lines:
                raise CartEmpty(customer_id)
            items = [_item(ln, now) for ln in lines]
            expired = [it.item_id for it in items if it.expired]
            if expired:
                raise SaleExpired(customer_id, expired)
            receipt_lines = [ReceiptLine(it.item_id, it.offered_price, it.item_count, it.line_total) for it in items]
            total = sum((ln.line_total for ln in receipt_lines), Decimal("0.00"))
            lines.clear()
            return Receipt(customer_id, receipt_lines, total, now, items)

        return self._carts._change(customer_id, check_out, expected)


def _result_of(op: Callable[Concatenate[VersionedCarts, P], Versioned[T]]) -> Callable[Concatenate[CartService, P], T]:
    """``op`` as a :class:`CartService` method that returns the result without the version."""

    @functools.wraps(op)
    def plain(self: CartService, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return op(self._versioned, *args, **kwargs).value

    # what help() and inspect show: the operation's signature, returning the result alone
    signature = inspect.signature(op)
    returns = str(signature.return_annotation).removeprefix("Versioned[").removesuffix("]")
    plain.__signature__ = signature.replace(return_annotation=returns)  # type: ignore[attr-defined]
    plain.__annotations__ = {**op.__annotations__, "return": returns}
    return plain


class CartService:
    """The five cart operations over a :class:`~dhtcart.store.DHTServerStore` (see :mod:`dhtcart.cart`).

    ``CartService()`` keeps carts in memory; ``CartService(store)`` uses your
    store (and leaves it open); :meth:`open` opens (or creates) the store at a
    location and closes it with the service. ``clock`` returns the current
    aware time (tests inject one); ``hasher`` maps a customer id to its key;
    ``max_retries`` bounds the compare-and-set retries of one change.

    Each operation is documented in :class:`VersionedCarts`, which offers the
    same operations with the cart's version (:attr:`versioned`).
    """

    def __init__(
        self,
        store: DHTServerStore | None = None,
        *,
        clock: Callable[[], datetime] = _utcnow,
        hasher: Callable[[str], int] = hash_key,
        max_retries: int = 1000,
    ) -> None:
        for name, fn in (("clock", clock), ("hasher", hasher)):
            if not callable(fn):
                raise InvalidInput(name, f"must be callable, not {type(fn).__name__}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 1:
            raise InvalidInput("max_retries", f"must be a positive int, got {max_retries!r}")
        if store is None:
            store = DHTServerStore()
            self._owns_store = True
        else:
            self._owns_store = False
        self.store = store  #: the store the carts are kept in
        record_shards = getattr(store, "last_shard", None)  # a store, or a wrapper of one (a history recorder)
        if record_shards is not None:
            record_shards()  # from now on the store records each operation's shard (the metrics' label)
        self._clock = clock
        self._hasher = hasher
        self.max_retries = max_retries
        self._decoded = codec.DecodedCache(_CACHE_SIZE)
        self._keys: dict[str, int] = {}
        self._versioned = VersionedCarts(self)

    @classmethod
    def open(cls, location: str | os.PathLike[str], **store_options: Any) -> CartService:
        """A service over the store at ``location``, opened (or created) now and closed with the service.

        ``location`` is any form :meth:`DHTServerStore.open <dhtcart.store.DHTServerStore.open>`
        takes (:func:`dhtcart.membership.parse_location`): a directory path or
        ``lmdb://PATH`` (LMDB shards there), ``memory://`` (a new store in this
        process) or ``redis://host:port/db`` (a membership kept in Redis);
        ``store_options`` are that method's keywords (``shards``, ``durability``, ...).
        """
        service = cls(DHTServerStore.open(location, **store_options))
        service._owns_store = True
        return service

    # -- the five operations (written once, in VersionedCarts) ---------------------------

    list_items = _result_of(VersionedCarts.list_items)
    add_item = _result_of(VersionedCarts.add_item)
    update_count = _result_of(VersionedCarts.update_count)
    delete_item = _result_of(VersionedCarts.delete_item)
    checkout = _result_of(VersionedCarts.checkout)

    @property
    def versioned(self) -> VersionedCarts:
        """The same operations, each returning :class:`~dhtcart.cart.values.Versioned` (the result and
        the cart's version)."""
        return self._versioned

    # -- what a face asks of the store, through the service ------------------------------

    @property
    def fast_local(self) -> bool:
        """Whether every shard answers from this machine without a flush (a call takes tens of
        microseconds: an event loop may make it directly rather than through a thread)."""
        return self.store.fast_local

    def health(self, timeout: float | None = None) -> dict[str, str | None]:
        """Ask every shard to answer now: shard name -> ``None`` if it did, else why not
        (``timeout``: seconds, for media that can bound a call)."""
        return self.store.health(timeout)

    def replication(self) -> dict[str, object]:
        """How the store keeps its copies now: ``replicas``, the shards a failover took ``down``
        (not yet removed by the repair), the share of the key space ``under_replicated`` and
        whether a ``migrating`` repair or rebalance is in progress (``/readyz`` shows it)."""
        status = self.store.rebalance_status()
        return {
            "replicas": status.replicas,
            "down": list(status.down),
            "underReplicated": round(status.under_replicated, 6),
            "migrating": status.migrating,
        }

    def last_shard(self) -> str | None:
        """The shard this thread's last cart operation reached (``None`` before any): what metrics
        are labelled with. Call it in the thread that made the operation."""
        return self.store.last_shard()

    def shard_of(self, customer_id: str) -> str:
        """The shard that holds the customer's cart, as far as the store knows now."""
        return self.store.shard_for(self._key(check_id(customer_id, "customer_id")))

    # -- the two places the store is used ------------------------------------------------

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

    def _read(self, customer_id: str) -> tuple[codec.Lines, int]:
        """The customer's lines (never to be mutated) and the cart's version (0: no record)."""
        key = self._key(customer_id)
        rec = self.store.get(key)
        if rec is None:
            return codec.EMPTY, 0
        return self._decoded.decode(key, rec.value).get(customer_id, codec.EMPTY), rec.version

    def _change(
        self, customer_id: str, fn: Callable[[codec.Lines], T], expected: ExpectedVersion = None
    ) -> Versioned[T]:
        """Apply ``fn`` to the customer's lines in one ``store.modify`` (see the module doc).

        ``fn`` gets a private copy of the lines, changes it in place and
        returns the result. It may raise: nothing is written then. Returns
        the result and the cart's version after the change. With
        ``expected``, the change is made only at that version (one
        compare-and-set, no retry): otherwise
        :class:`~dhtcart.errors.PreconditionFailed`.
        """
        key = self._key(customer_id)
        done: dict[str, Any] = {}  # what the last run of ``change`` made (it may run more than once)

        def change(rec: Record | None) -> bytes | None:
            version = rec.version if rec is not None else 0
            if expected is not None and not _matches(expected, version):
                raise PreconditionFailed(customer_id, _shown(expected), version)
            bucket = self._decoded.decode(key, rec.value) if rec is not None else {}
            lines = bucket.get(customer_id, codec.EMPTY).copy()
            done.clear()
            done["result"] = fn(lines)
            bucket = dict(bucket)
            if lines:
                bucket[customer_id] = lines
            else:
                bucket.pop(customer_id, None)
            if not bucket and rec is None:
                return None  # nothing to store
            # An emptied cart is written as an empty record, never deleted: a deleted key's
            # version would restart at 1, and a writer still holding version 1 of the old cart
            # could then overwrite a new one (the ABA problem).
            done["bucket"], done["raw"] = bucket, codec.encode(bucket)
            return done["raw"]  # type: ignore[no-any-return]

        try:
            # one atomic step on memory and LMDB (the change runs inside the shard's lock or write
            # transaction); a compare-and-set loop elsewhere, at most max_retries times (with
            # ``expected``, once: a conflict then means the cart moved on from that version)
            rec = self.store.modify(key, change, tries=1 if expected is not None else self.max_retries)
        except TooManyRetries:
            if expected is not None:
                raise PreconditionFailed(customer_id, _shown(expected), self._version(key)) from None
            raise TooManyRetries(
                f"cart of {customer_id!r} changed under us {self.max_retries} times; try again"
            ) from None
        if "raw" not in done:
            return Versioned(done["result"], 0)
        self._decoded.remember(key, done["raw"], done["bucket"])
        assert rec is not None
        return Versioned(done["result"], rec.version)

    def _version(self, key: int) -> int:
        rec = self.store.get(key)
        return rec.version if rec is not None else 0

    # -- lifetime -------------------------------------------------------------------

    def close(self) -> None:
        """Close the store if this service opened it."""
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> CartService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
