"""The public surface: ``dhtcart.__all__`` and what ``import dhtcart`` drags in."""

from __future__ import annotations

import json
import types

import dhtcart
import dhtcart.errors
from tests.helpers import run_python

EXPECTED = {
    # placement and keys
    "KEY_SPACE", "MAX_KEY", "hash_key", "Arc", "HashRing", "Move", "PartitionRing",
    # shards and backends
    "Backend", "Record", "DHTServer", "open_backend",
    # the store and rebalancing
    "DHTServerStore", "RebalancePlan", "RebalanceReport", "RebalanceStatus",
    # carts
    "CartItem", "CartService", "Receipt", "ReceiptLine", "Versioned",
    # errors
    "CartEmpty", "Conflict", "DHTCartError", "EmptyRing", "ForkedError", "InvalidInput", "InvalidKey",
    "InvalidValue", "ItemNotFound", "KeyUnavailable", "LeaseLost", "Moved", "NotFound", "SaleExpired",
    "ShardExists", "ShardNotFound",
    "ShardUnavailable", "StoreBusy", "StoreClosed", "TooManyRetries", "ValidationError", "VersionConflict",
    "CorruptData", "PreconditionFailed",  # issue 10
    "MalformedHistory", "WorkloadFailed",  # issue 9
    "StoreNotFound", "StoreReadOnly", "ShardFull", "PortUnavailable",  # issue 15
    "LeaseExpired", "WriteInFlight",  # issue 13
    "__version__",
}  # fmt: skip


def test_all_lists_exactly_the_public_names() -> None:
    assert set(dhtcart.__all__) == EXPECTED
    assert len(dhtcart.__all__) == len(set(dhtcart.__all__)), "no duplicates"


def test_every_name_in_all_is_importable() -> None:
    for name in dhtcart.__all__:
        assert hasattr(dhtcart, name), name
    namespace: dict[str, object] = {}
    exec("from dhtcart import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(dhtcart.__all__)


def test_no_public_name_left_out() -> None:
    public = {n for n, v in vars(dhtcart).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert public <= set(dhtcart.__all__), f"public but not in __all__: {public - set(dhtcart.__all__)}"


def test_every_error_is_exported_and_in_the_tree() -> None:
    for name in dhtcart.errors.__all__:
        cls = getattr(dhtcart, name)
        assert issubclass(cls, dhtcart.DHTCartError)
        assert cls.__doc__, f"{name} needs a one-line docstring"
    assert issubclass(dhtcart.ValidationError, ValueError)
    assert issubclass(dhtcart.InvalidInput, TypeError) and issubclass(dhtcart.InvalidKey, TypeError)
    assert issubclass(dhtcart.NotFound, KeyError)
    assert issubclass(dhtcart.ShardUnavailable, ConnectionError)
    assert issubclass(dhtcart.KeyUnavailable, dhtcart.ShardUnavailable)  # HTTP answers 503 to both
    assert issubclass(dhtcart.LeaseLost, dhtcart.StoreBusy)
    assert issubclass(dhtcart.EmptyRing, LookupError)


def test_version_string() -> None:
    assert isinstance(dhtcart.__version__, str) and dhtcart.__version__.count(".") >= 2


_PROBE = """
import json, sys
import dhtcart
heavy = ("redis", "fastapi", "uvicorn", "rich", "starlette", "pydantic", "dhtcart.backends.redis",
         "dhtcart.http", "dhtcart.cli", "hypothesis", "numpy")
print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""


def test_import_dhtcart_stays_light() -> None:
    loaded = json.loads(run_python(_PROBE))
    assert loaded == [], f"import dhtcart imported optional or heavy modules: {loaded}"


def test_using_the_core_stays_light() -> None:
    code = _PROBE.replace(
        "import dhtcart\n",
        "import dhtcart, tempfile\n"
        "with dhtcart.CartService() as c: c.add_item('a', 'b', '1')\n"
        "s = dhtcart.DHTServerStore.open(tempfile.mkdtemp()); s.put(1, b'x'); s.close()\n",
    )
    assert json.loads(run_python(code)) == []
