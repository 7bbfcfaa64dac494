"""dhtcart: a consistent-hashing DHT with pluggable storage, and a cart service on it.

>>> from dhtcart import CartService
>>> with CartService() as carts:
...     _ = carts.add_item("alice", "036000291459", "4.99", item_count=2)
...     [item.item_id for item in carts.list_items("alice")]
['036000291459']

``import dhtcart`` imports neither Redis nor the HTTP server; those are extras.
"""

import importlib as _importlib
import typing as _typing

from dhtcart._version import __version__
from dhtcart.errors import (
    CartEmpty,
    Conflict,
    CorruptData,
    DHTCartError,
    EmptyRing,
    ForkedError,
    InvalidInput,
    InvalidKey,
    InvalidValue,
    ItemNotFound,
    KeyUnavailable,
    LeaseExpired,
    LeaseLost,
    MalformedHistory,
    Moved,
    NotFound,
    PortUnavailable,
    PreconditionFailed,
    SaleExpired,
    ShardExists,
    ShardFull,
    ShardNotFound,
    ShardUnavailable,
    StoreBusy,
    StoreClosed,
    StoreNotFound,
    StoreReadOnly,
    TooManyRetries,
    ValidationError,
    VersionConflict,
    WorkloadFailed,
    WriteInFlight,
)

if _typing.TYPE_CHECKING:
    from dhtcart.backends import open_backend
    from dhtcart.backends.base import Backend, Record
    from dhtcart.cart import CartItem, CartService, Receipt, ReceiptLine, Versioned
    from dhtcart.hashing import KEY_SPACE, MAX_KEY, hash_key
    from dhtcart.rebalance import RebalancePlan, RebalanceReport
    from dhtcart.ring import Arc, HashRing, Move, PartitionRing
    from dhtcart.server import DHTServer
    from dhtcart.store import DHTServerStore, RebalanceStatus

# The rest is imported when first used (PEP 562), so that the command line's
# ``--version`` and usage errors, which import ``dhtcart._version`` and
# ``dhtcart.errors`` only, never load the store and its backends.
_LAZY = {
    "open_backend": "dhtcart.backends",
    **dict.fromkeys(("Backend", "Record"), "dhtcart.backends.base"),
    **dict.fromkeys(("CartItem", "CartService", "Receipt", "ReceiptLine", "Versioned"), "dhtcart.cart"),
    **dict.fromkeys(("KEY_SPACE", "MAX_KEY", "hash_key"), "dhtcart.hashing"),
    **dict.fromkeys(("RebalancePlan", "RebalanceReport"), "dhtcart.rebalance"),
    **dict.fromkeys(("Arc", "HashRing", "Move", "PartitionRing"), "dhtcart.ring"),
    "DHTServer": "dhtcart.server",
    **dict.fromkeys(("DHTServerStore", "RebalanceStatus"), "dhtcart.store"),
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "KEY_SPACE",
    "MAX_KEY",
    "Arc",
    "Backend",
    "CartEmpty",
    "CartItem",
    "CartService",
    "Conflict",
    "CorruptData",
    "DHTCartError",
    "DHTServer",
    "DHTServerStore",
    "EmptyRing",
    "ForkedError",
    "HashRing",
    "InvalidInput",
    "InvalidKey",
    "InvalidValue",
    "ItemNotFound",
    "KeyUnavailable",
    "LeaseExpired",
    "LeaseLost",
    "MalformedHistory",
    "Move",
    "Moved",
    "NotFound",
    "PartitionRing",
    "PortUnavailable",
    "PreconditionFailed",
    "RebalancePlan",
    "RebalanceReport",
    "RebalanceStatus",
    "Receipt",
    "ReceiptLine",
    "Record",
    "SaleExpired",
    "ShardExists",
    "ShardFull",
    "ShardNotFound",
    "ShardUnavailable",
    "StoreBusy",
    "StoreClosed",
    "StoreNotFound",
    "StoreReadOnly",
    "TooManyRetries",
    "ValidationError",
    "VersionConflict",
    "Versioned",
    "WorkloadFailed",
    "WriteInFlight",
    "__version__",
    "hash_key",
    "open_backend",
]
