"""dhtcart: a consistent-hashing DHT with pluggable storage, and a cart service on it.

>>> from dhtcart import CartService
>>> with CartService() as carts:
...     _ = carts.add_item("alice", "036000291459", "4.99", item_count=2)
...     [item.item_id for item in carts.list_items("alice")]
['036000291459']

``import dhtcart`` imports neither Redis nor the HTTP server; those are extras.
"""

from dhtcart._version import __version__
from dhtcart.backends import open_backend
from dhtcart.backends.base import Backend, Record
from dhtcart.cart import CartItem, CartService, Receipt, ReceiptLine, Versioned
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
from dhtcart.hashing import KEY_SPACE, MAX_KEY, hash_key
from dhtcart.rebalance import RebalancePlan, RebalanceReport
from dhtcart.ring import Arc, HashRing, Move, PartitionRing
from dhtcart.server import DHTServer
from dhtcart.store import DHTServerStore, RebalanceStatus

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
