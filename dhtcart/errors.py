"""Every exception dhtcart raises, in one tree.

Errors subclass the built-in that fits, so ``except ValueError`` or
``except KeyError`` keeps working for callers who do not know dhtcart::

    DHTCartError                          base of everything below
    ├── ValidationError (ValueError)      bad input; nothing was stored
    │   ├── InvalidKey (+TypeError)       not an int in [0, 2**63), or a bool
    │   ├── InvalidValue (+TypeError)     not bytes-like, or too large
    │   ├── InvalidInput (+TypeError)     an argument: a cart field, a node name, a URL...
    │   └── MalformedHistory              a history file is not in the documented format
    ├── NotFound (KeyError)               something asked for by name is absent
    │   ├── ItemNotFound                  no such item in the cart
    │   ├── CartEmpty                     checkout of an empty or missing cart
    │   ├── ShardNotFound                 no shard of that name
    │   └── StoreNotFound                 no store at that location (opened with create=False)
    ├── Conflict                          the request is valid but the state forbids it
    │   ├── VersionConflict               compare-and-set saw another version
    │   ├── SaleExpired                   checkout with expired sale prices
    │   ├── TooManyRetries                optimistic retries exhausted
    │   ├── ShardExists                   add_shard with a name already used
    │   └── PreconditionFailed            the cart is not at the version the caller expected
    ├── ShardUnavailable (ConnectionError) a shard's server cannot be reached
    │   ├── KeyUnavailable                redirects did not reach the key's owner in time
    │   └── ShardFull                     a shard's medium has no room left (a full disk); reads go on
    ├── StoreReadOnly (PermissionError)   the store's medium may be read but not changed
    ├── PortUnavailable (OSError)         the HTTP server cannot listen where it was asked to
    ├── Moved                             a shard refused a key it does not own (a redirect)
    │   └── LeaseExpired                  a primary's lease to serve reads ran out: renew, then retry
    ├── WriteInFlight                     a write of the key is decided and not committed: finish it first
    ├── EmptyRing (LookupError)           a ring with no nodes was asked for one
    ├── StoreBusy                         another rebalancer holds the store's lease
    │   └── LeaseLost                     a rebalancer's lease passed to another
    ├── StoreClosed                       the store/shard was closed
    ├── ForkedError                       a handle opened before fork() used after it
    ├── CorruptData (ValueError)          a stored record cannot be decoded
    └── WorkloadFailed (RuntimeError)     a verification run's client processes could not run

A missing key is *not* an exception: ``get`` returns ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "CartEmpty",
    "Conflict",
    "CorruptData",
    "DHTCartError",
    "EmptyRing",
    "ForkedError",
    "InvalidInput",
    "InvalidKey",
    "InvalidValue",
    "ItemNotFound",
    "KeyUnavailable",
    "LeaseExpired",
    "LeaseLost",
    "Moved",
    "MalformedHistory",
    "NotFound",
    "PortUnavailable",
    "PreconditionFailed",
    "SaleExpired",
    "ShardExists",
    "ShardNotFound",
    "ShardFull",
    "ShardUnavailable",
    "StoreBusy",
    "StoreClosed",
    "StoreNotFound",
    "StoreReadOnly",
    "TooManyRetries",
    "ValidationError",
    "VersionConflict",
    "WorkloadFailed",
    "WriteInFlight",
]


class DHTCartError(Exception):
    """Base class of every dhtcart error."""


class ValidationError(DHTCartError, ValueError):
    """Bad input: nothing was stored or changed."""


class InvalidKey(ValidationError, TypeError):
    """A key is not an ``int`` in ``[0, 2**63)`` (``bool`` is not a key)."""


class InvalidValue(ValidationError, TypeError):
    """A value is not bytes-like, or is larger than the shard accepts."""


class InvalidInput(ValidationError, TypeError):
    """An argument is malformed (a cart field, a node name, a weight, a URL); ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class MalformedHistory(ValidationError):
    """A history of operations is not in the format of ``docs/verify.md``; ``line`` says where (1-based)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


class NotFound(DHTCartError, KeyError):
    """Something asked for by name does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ItemNotFound(NotFound):
    """The cart holds no item with that id."""

    def __init__(self, customer_id: str, item_id: str) -> None:
        super().__init__(f"cart of {customer_id!r} has no item {item_id!r}")
        self.customer_id = customer_id
        self.item_id = item_id


class CartEmpty(NotFound):
    """Checkout of a cart that is empty or was never created."""

    def __init__(self, customer_id: str) -> None:
        super().__init__(f"cart of {customer_id!r} is empty: nothing to check out")
        self.customer_id = customer_id


class ShardNotFound(NotFound):
    """No shard of that name is a member of the store."""


class StoreNotFound(NotFound):
    """No store exists at the location given, and the caller asked not to create one."""


class Conflict(DHTCartError):
    """The request is well formed, but the current state forbids it."""


class VersionConflict(Conflict):
    """A compare-and-set found another version than expected; nothing changed."""

    def __init__(self, key: int, expected: int, actual: int) -> None:
        super().__init__(f"key {key}: expected version {expected}, found {actual} (0 means absent); re-read and retry")
        self.key = key
        self.expected = expected
        self.actual = actual


class SaleExpired(Conflict):
    """Checkout refused: these items' special-sale prices have expired."""

    def __init__(self, customer_id: str, item_ids: Sequence[str]) -> None:
        ids = ", ".join(item_ids)
        super().__init__(
            f"cart of {customer_id!r}: sale price expired for {ids}; remove or re-add these items, then check out"
        )
        self.customer_id = customer_id
        self.item_ids = list(item_ids)


class TooManyRetries(Conflict):
    """An optimistic read-modify-write kept conflicting; nothing changed."""


class ShardExists(Conflict):
    """A shard of that name is already a member of the store."""


class ShardUnavailable(DHTCartError, ConnectionError):
    """A shard's medium cannot be reached.

    The operation was never half-applied. If the connection failed before the
    request was sent, nothing happened; if the reply was lost (a timeout), the
    write either happened whole or not at all and ``reason`` says it is unknown:
    re-read before retrying a non-idempotent change.
    """

    def __init__(self, shard: str, address: str, reason: str, *, unknown: bool = False) -> None:
        super().__init__(f"shard {shard!r} at {address} is unavailable: {reason}")
        self.shard = shard
        self.address = address
        self.reason = reason
        #: whether the request may have been applied (it was sent and no reply came)
        self.unknown = unknown


class KeyUnavailable(ShardUnavailable):
    """A key's owner could not be reached through redirects within the store's bound.

    Raised after ``redirect_timeout`` seconds of redirects (a hand-over that
    did not finish: a rebalancer stopped, or a shard it needs is down). Nothing
    was applied by the failed attempt, and the key's data is kept where it
    was, unless ``unknown`` is true: in a store that keeps several copies, a
    write its primary had decided whose backups did not take it in time. That
    write stays pending and the key's next writer finishes it, so its outcome
    is unknown: re-read before retrying a non-idempotent change.
    """

    def __init__(self, key: int, shard: str, reason: str, *, unknown: bool = False) -> None:
        super().__init__(shard, "-", reason, unknown=unknown)
        self.key = key
        self.args = (f"key {key}: no owner reachable: {reason}",)


class ShardFull(ShardUnavailable):
    """A shard's medium has no room left (a full disk, a full Redis ``maxmemory``): the write
    was not applied. Reads keep working; writes work again once room is made."""


class StoreReadOnly(DHTCartError, PermissionError):
    """The store's medium (a directory, a file) may be read but not changed: inspecting the
    store works, changing it does not. Nothing was changed."""


class PortUnavailable(DHTCartError, OSError):
    """The HTTP server cannot listen on the host and port it was given (in use, not an
    address of this machine, not permitted): choose another ``--host`` or ``--port``."""


class Moved(DHTCartError):
    """A shard does not own ``key`` (a typed redirect, never an answer); nothing was done.

    ``epoch`` is the membership epoch of the shard's own record of what it owns;
    ``state`` is ``"-"`` (not owned) or ``"f"`` (frozen: being handed over, reads
    only); ``owner`` names the shard it was handed to, when the shard knows.
    The store follows redirects by itself; only direct users of a fenced
    backend see this.
    """

    def __init__(self, key: int, epoch: int, state: str = "-", owner: str | None = None) -> None:
        where = f"; try {owner!r}" if owner else ""
        what = "is being handed over (reads only)" if state == "f" else "is not owned here"
        super().__init__(f"key {key} {what} (ownership epoch {epoch}){where}")
        self.key = key
        self.epoch = epoch
        self.state = state
        self.owner = owner
        self.shard: str | None = None  #: the refusing shard's name, filled in by the store


class LeaseExpired(Moved):
    """A primary of a replicated store refused a read because its lease to serve ran out.

    A lease is renewed by a client that has just read the membership and
    found the shard still a member (``docs/replication.md``); a primary taken
    out while it was unreachable is never renewed, so it never answers a read
    that a newer primary might contradict. The store renews and retries by
    itself.
    """


class WriteInFlight(DHTCartError):
    """A primary has a write of ``key`` decided and not yet committed (its writer is slow or
    died): the store finishes that write (applies it to the backups, commits it), then
    retries its own. ``pending`` is the decided write (:class:`~dhtcart.backends.fencing.Pending`)."""

    def __init__(self, key: int, pending: object) -> None:
        super().__init__(f"key {key}: a replicated write is decided and not committed yet; finish it, then retry")
        self.key = key
        self.pending = pending


class EmptyRing(DHTCartError, LookupError):
    """The ring has no nodes, so no key has an owner."""


class StoreBusy(DHTCartError):
    """Another rebalancer holds the store's lease (or its lock, while it is created)."""


class LeaseLost(StoreBusy):
    """This rebalancer's lease passed to another (it expired, or was fenced by a newer token).

    The rebalancer stops at once; the new holder finishes its work.
    """


class StoreClosed(DHTCartError):
    """The store, shard or backend was closed."""


class WorkloadFailed(DHTCartError, RuntimeError):
    """The client processes of a verification run could not start or run (``dhtcart verify``)."""


class ForkedError(DHTCartError):
    """A handle opened before ``fork()`` was used in the child: open it again there."""


class PreconditionFailed(Conflict):
    """The cart is not at the version the caller named (an HTTP ``If-Match``); nothing changed.

    ``actual`` is the cart's current version (0: no cart was ever stored).
    """

    def __init__(self, customer_id: str, expected: object, actual: int) -> None:
        super().__init__(f"cart of {customer_id!r} is at version {actual}, not {expected}; re-read it and decide again")
        self.customer_id = customer_id
        self.expected = expected
        self.actual = actual


class CorruptData(DHTCartError, ValueError):
    """A stored record cannot be decoded (an unknown format tag, damaged bytes)."""
