"""Faults of the medium, driven through the public API: what escapes is a dhtcart error of the right class.

The export test walks ``errors.__all__`` and cannot see an exception that
escapes untyped. These tests make real faults (a read-only bind mount, a map
that cannot grow under an address-space limit, a full tmpfs, records and
ownership records damaged behind the backend's back with LMDB itself, a shard
directory deleted under an open store) and call the public API of the store,
the cart service and the backends: each call must succeed, or raise exactly
the documented :class:`~dhtcart.errors.DHTCartError` subclass. A table of
calls per fault; every mismatch is reported at once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest

import dhtcart.backends.lmdb as lmdb_mod
from dhtcart import (
    CartService,
    CorruptData,
    DHTCartError,
    DHTServerStore,
    InvalidInput,
    Record,
    ShardFull,
    ShardUnavailable,
    StoreClosed,
    StoreReadOnly,
    hash_key,
)
from dhtcart.backends import open_backend
from dhtcart.backends.lmdb import LMDBBackend
from dhtcart.backends.ownership import Ownership, Segments
from dhtcart.hashing import MAX_KEY
from tests.conftest import BackendEnv
from tests.helpers import child_env
from tests.media import fill, read_only_view, small_tmpfs

#: the expectation of a call that must succeed
OK = None
Calls = dict[str, tuple[Callable[[], object], type[DHTCartError] | None]]


def mismatches(calls: Calls) -> list[str]:
    """Run every call; list those that did not end as expected (an untyped exception, another
    dhtcart error than expected, a success where an error was expected, or the reverse)."""
    wrong = []
    for name, (call, expected) in calls.items():
        try:
            result = call()
            if hasattr(result, "__next__"):
                list(result)  # type: ignore[call-overload]  # a generator runs when consumed
        except DHTCartError as exc:
            if expected is None or not isinstance(exc, expected):
                wrong.append(f"{name}: {type(exc).__name__}: {exc}")
        except Exception as exc:
            wrong.append(f"{name}: untyped {type(exc).__module__}.{type(exc).__name__}: {exc}")
        else:
            if expected is not None:
                wrong.append(f"{name}: succeeded, expected {expected.__name__}")
    return wrong


def _customer_on(store: DHTServerStore, shard: str) -> tuple[str, int]:
    """A customer id whose cart lives on ``shard``, and its key."""
    for i in range(10_000):
        key = hash_key(f"c{i}")
        if store.shard_for(key) == shard:
            return f"c{i}", key
    raise AssertionError(f"no customer of 10,000 on {shard}")


def _seed(path: Path, n: int = 3) -> tuple[str, int, str, int]:
    """A directory store of ``n`` shards with two carts: one on shard-0, one elsewhere."""
    with DHTServerStore.open(path, shards=n) as store:
        carts = CartService(store)
        mine, key = _customer_on(store, "shard-0")
        other, other_key = _customer_on(store, "shard-1")
        carts.add_item(mine, "sku-1", "2.50", item_count=2)
        carts.add_item(other, "sku-2", "1.00")
    return mine, key, other, other_key


#: keys the tests write raw bytes under (never a cart's key)
RAW = hash_key("raw bytes, not a cart")


def _reads(store: DHTServerStore, carts: CartService, key: int, customer: str) -> Calls:
    return {
        "store.get": (lambda: store.get(key), OK),
        "store[key]": (lambda: store[key], OK),
        "key in store": (lambda: key in store, OK),
        "store.items": (lambda: list(store.items()), OK),
        "store.stats": (lambda: store.stats(), OK),
        "len(store)": (lambda: len(store), OK),
        "store.rebalance_status": (lambda: store.rebalance_status(), OK),
        "store.health": (lambda: store.health(), OK),
        "carts.list_items": (lambda: carts.list_items(customer), OK),
    }


def _writes(store: DHTServerStore, carts: CartService, key: int, customer: str, error: type[DHTCartError]) -> Calls:
    return {
        "store.put": (lambda: store.put(RAW, b"new"), error),
        "store.put (compare-and-set)": (lambda: store.put(key, b"new", expected_version=1), error),
        "store[key] = value": (lambda: store.__setitem__(RAW, b"new"), error),
        "store.delete": (lambda: store.delete(key), error),
        "carts.add_item": (lambda: carts.add_item(customer, "sku-9", "1.00"), error),
        "carts.update_count": (lambda: carts.update_count(customer, "sku-1", 5), error),
        "carts.delete_item": (lambda: carts.delete_item(customer, "sku-1"), error),
        "carts.checkout": (lambda: carts.checkout(customer), error),
        "store.add_shard": (lambda: store.add_shard("extra"), error),
        "store.remove_shard": (lambda: store.remove_shard("shard-2"), error),
        "store.set_weight": (lambda: store.set_weight("shard-1", 3), error),
    }


# -- a read-only medium ----------------------------------------------------------------------


def test_a_read_only_store_reads_and_refuses_every_change(tmp_path: Path) -> None:
    """The store's directory seen through a read-only bind mount (EROFS, for root too)."""
    mine, key, _, _ = _seed(tmp_path / "src")
    with read_only_view(tmp_path / "src", tmp_path / "ro") as ro:
        with DHTServerStore.open(ro) as store:
            carts = CartService(store)
            wrong = mismatches(
                {
                    **_reads(store, carts, key, mine),
                    **_writes(store, carts, key, mine, StoreReadOnly),
                }
            )
            assert not wrong, wrong
            assert [(i.item_id, i.item_count) for i in carts.list_items(mine)] == [("sku-1", 2)]
        assert not mismatches({"open a new store there": (lambda: DHTServerStore.open(ro / "new"), StoreReadOnly)})
        assert not mismatches({"open a shard there": (lambda: LMDBBackend(ro / "shards" / "new"), StoreReadOnly)})
    with DHTServerStore.open(tmp_path / "src") as store:  # nothing changed underneath
        assert store.epoch == 1 and sorted(store.shards) == ["shard-0", "shard-1", "shard-2"]
        assert [i.item_count for i in CartService(store).list_items(mine)] == [2]


# -- no room -----------------------------------------------------------------------------------


def test_a_full_disk_refuses_writes_and_keeps_reads(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", "8m") as disk:
        mine, key, _, _ = _seed(disk / "store")
        with DHTServerStore.open(disk / "store") as store:
            carts = CartService(store)
            filler = fill(disk)  # (a shard made on a full disk: tests/test_backends.py, in a child process)
            big = os.urandom(1 << 20)  # a write that needs new pages whatever LMDB has freed
            wrong = mismatches(
                {
                    **_reads(store, carts, key, mine),
                    "store.put (1 MiB)": (lambda: store.put(key, big), ShardFull),
                    "store.put (1 MiB, compare-and-set)": (
                        lambda: store.put(key + 1, big, expected_version=0),
                        ShardFull,
                    ),
                    "store.add_shard": (lambda: store.add_shard("extra"), ShardFull),
                    "store.remove_shard": (lambda: store.remove_shard("shard-2"), ShardFull),
                }
            )
            assert not wrong, wrong
            # small writes may fit in pages LMDB freed earlier: each one is acknowledged or ShardFull
            acknowledged, refused = [], 0
            for i in range(200):
                try:
                    carts.add_item(f"small-{i}", "sku", "1.00")
                    acknowledged.append(f"small-{i}")
                except ShardFull:
                    refused += 1
            assert refused, "200 cart writes all fitted on a full disk"
            filler.unlink()
            assert not mismatches(
                {
                    "store.put (1 MiB) after room is made": (lambda: store.put(RAW, big), OK),
                    "carts.add_item after room is made": (lambda: carts.add_item(mine, "sku-3", "1.00"), OK),
                }
            )
            assert all(carts.list_items(c) for c in acknowledged), "an acknowledged write was lost"
            assert store.get(RAW) == Record(1, big) and store.get(RAW + 1) is None
            assert [(i.item_id, i.item_count) for i in carts.list_items(mine)] == [("sku-1", 2), ("sku-3", 1)]


_MAP_CANNOT_GROW = """
import json, os, resource, sys
from dhtcart.backends.lmdb import LMDBBackend
from dhtcart.errors import DHTCartError
b = LMDBBackend(sys.argv[1], map_size=1 << 20)
value = os.urandom(256 << 10)
size = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (16 << 20), resource.RLIM_INFINITY))
out = {"acked": [], "refused": None, "untyped": None}
for k in range(100):
    try:
        b.put(k, value)
        out["acked"].append(k)
    except DHTCartError as exc:
        out["refused"] = [k, type(exc).__name__, str(exc)]
        break
    except Exception as exc:
        out["untyped"] = [k, type(exc).__module__ + "." + type(exc).__name__, str(exc)]
        break
# what the refused write left: reads go on, the refused key is absent
out["reads"] = [k for k in out["acked"] if b.get(k) is not None and b.get(k).value == value]
out["count"] = b.count()
out["refused_absent"] = out["refused"] is not None and b.get(out["refused"][0]) is None
resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
out["after"] = b.put(1000, value)  # with the limit lifted the map grows again
print(json.dumps(out))
"""


def test_a_full_map_that_cannot_grow_is_shard_full(tmp_path: Path) -> None:
    """A real limit on the map: the process may not map more address space (``RLIMIT_AS``). LMDB
    unmaps the old map before it maps the new one, and a failed remap leaves it with none, so
    the backend tries the new size first and refuses the write: reads go on."""
    proc = subprocess.run(
        [sys.executable, "-c", _MAP_CANNOT_GROW, str(tmp_path / "shard")],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["untyped"] is None, out["untyped"]
    assert out["refused"] is not None, "the map grew past the address-space limit"
    k, name, message = out["refused"]
    assert name == "ShardFull" and "cannot map" in message, message
    assert out["reads"] == out["acked"] == list(range(k)) and out["count"] == k
    assert out["refused_absent"] and out["after"] == 1


# -- damaged records ---------------------------------------------------------------------------


def _write_raw(shard_dir: Path, items: dict[bytes, bytes]) -> None:
    """Write ``items`` into an LMDB directory with LMDB itself, behind dhtcart's back."""
    env = lmdb.open(str(shard_dir), max_dbs=0)
    try:
        with env.begin(write=True) as txn:
            for k, v in items.items():
                txn.put(k, v)
    finally:
        env.close()


def test_a_record_too_short_for_its_version_is_corrupt_data(tmp_path: Path) -> None:
    mine, key, other, other_key = _seed(tmp_path / "store")
    _write_raw(tmp_path / "store" / "shards" / "shard-0", {key.to_bytes(8, "big"): b"\x01\x02\x03"})
    with DHTServerStore.open(tmp_path / "store") as store:
        carts = CartService(store)
        wrong = mismatches(
            {
                "store.get": (lambda: store.get(key), CorruptData),
                "store[key]": (lambda: store[key], CorruptData),
                "store.items": (lambda: list(store.items()), CorruptData),
                "store.put": (lambda: store.put(key, b"x"), CorruptData),
                "store.put (compare-and-set)": (lambda: store.put(key, b"x", expected_version=1), CorruptData),
                "store.delete (compare-and-set)": (lambda: store.delete(key, expected_version=1), CorruptData),
                "carts.list_items": (lambda: carts.list_items(mine), CorruptData),
                "carts.add_item": (lambda: carts.add_item(mine, "sku-3", "1.00"), CorruptData),
                "other shards: store.get": (lambda: store.get(other_key), OK),
                "other shards: carts.add_item": (lambda: carts.add_item(other, "sku-3", "1.00"), OK),
                "store.stats": (lambda: store.stats(), OK),
            }
        )
        assert not wrong, wrong
        assert store.delete(key) is True  # an unconditional delete removes the damage
        assert store.put(key, b"whole again") == 1


def test_a_damaged_lmdb_file_is_corrupt_data(tmp_path: Path) -> None:
    _seed(tmp_path / "store")
    data = tmp_path / "store" / "shards" / "shard-1" / "data.mdb"
    with open(data, "r+b") as f:
        f.write(b"\x00" * 8192)  # both meta pages
    wrong = mismatches(
        {
            "LMDBBackend": (lambda: LMDBBackend(data.parent), CorruptData),
            "DHTServerStore.open": (lambda: DHTServerStore.open(tmp_path / "store"), CorruptData),
            "CartService.open": (lambda: CartService.open(tmp_path / "store"), CorruptData),
        }
    )
    assert not wrong, wrong


def test_a_corrupt_ownership_record_is_corrupt_data(tmp_path: Path) -> None:
    """The shard's record of what it owns, damaged behind its back (with a new generation, so every
    process reads it again): every operation on that shard says so; the others work."""
    mine, key, other, other_key = _seed(tmp_path / "store")
    shard = tmp_path / "store" / "shards" / "shard-0"
    with LMDBBackend(shard) as b:
        generation = int.from_bytes(b._env.begin().get(lmdb_mod._GEN), "big")
    _write_raw(shard, {lmdb_mod._OWN: b'{"epoch": 1, "his": [', lmdb_mod._GEN: (generation + 1).to_bytes(8, "big")})
    with DHTServerStore.open(tmp_path / "store") as store:
        carts = CartService(store)
        wrong = mismatches(
            {
                "store.get": (lambda: store.get(key), CorruptData),
                "store.put": (lambda: store.put(key, b"x"), CorruptData),
                "store.delete": (lambda: store.delete(key), CorruptData),
                "store.items": (lambda: list(store.items()), CorruptData),
                "carts.add_item": (lambda: carts.add_item(mine, "sku-3", "1.00"), CorruptData),
                "other shards: store.get": (lambda: store.get(other_key), OK),
                "other shards: carts.add_item": (lambda: carts.add_item(other, "sku-3", "1.00"), OK),
                "shard-0 opened on its own: ownership": (
                    lambda: LMDBBackend(shard, fenced=True).ownership(),
                    CorruptData,
                ),
            }
        )
        assert not wrong, wrong
        health = store.health()  # a probe names the damaged shard rather than failing (/readyz: 503, not 500)
        assert health["shard-0"] is not None and "ownership record" in health["shard-0"]
        assert all(why is None for name, why in health.items() if name != "shard-0")


# -- a shard directory deleted under an open store ---------------------------------------------


def test_a_shard_directory_deleted_under_an_open_store(tmp_path: Path) -> None:
    """Someone deletes shard-0's directory while a store has it open. The open handle goes on
    reading what it has open, but refuses writes (they would go to a file nobody opens again)
    within a second; other shards work; a handle opened afterwards finds the shard gone
    (ShardUnavailable at once: its medium is not made again, empty)."""
    mine, key, other, other_key = _seed(tmp_path / "store")
    with DHTServerStore.open(tmp_path / "store", redirect_timeout=0.5) as store:
        carts = CartService(store)
        assert store.get(key) is not None
        beside = [k for k in range(key + 1, key + 5000) if store.shard_for(k) == "shard-0"][:500]  # no carts
        assert len(beside) == 500
        shutil.rmtree(tmp_path / "store" / "shards" / "shard-0")
        refused = None
        deadline = time.monotonic() + 5
        for k in beside:  # bounded: the backend looks at its data file once a second
            try:
                store.put(k, b"into a deleted file?")
            except ShardUnavailable as exc:
                refused = exc
                break
            assert time.monotonic() < deadline, "writes to the deleted shard went on for 5 s"
            time.sleep(0.01)
        assert refused is not None and refused.shard == "shard-0" and "deleted" in str(refused), refused
        wrong = mismatches(
            {
                "store.put": (lambda: store.put(beside[0], b"x"), ShardUnavailable),
                "carts.add_item": (lambda: carts.add_item(mine, "sku-3", "1.00"), ShardUnavailable),
                "store.get (what is open)": (lambda: store.get(key), OK),
                "carts.list_items (what is open)": (lambda: carts.list_items(mine), OK),
                "other shards: carts.add_item": (lambda: carts.add_item(other, "sku-3", "1.00"), OK),
            }
        )
        assert not wrong, wrong
        with DHTServerStore.open(tmp_path / "store", redirect_timeout=0.5) as late:
            wrong = mismatches(
                {
                    "a later handle: store.get": (lambda: late.get(key), ShardUnavailable),
                    "a later handle: store.put": (lambda: late.put(key, b"x"), ShardUnavailable),
                    "a later handle, other shards": (lambda: late.get(other_key), OK),
                }
            )
            assert not wrong, wrong


# -- bad arguments and closed backends, on memory and LMDB --------------------------------------


@pytest.mark.parametrize("backend_kind", ["memory", "lmdb"])  # the Redis backend is another branch's
def test_bad_arguments_and_closed_backends_are_typed(env: BackendEnv) -> None:
    b = open_backend(env.url(), context=None)
    b.claim(Ownership(1, 1, Segments.all("o")))  # type: ignore[attr-defined]
    b.put(5, b"x")
    wrong = mismatches(
        {
            "update_ownership, unknown state": (lambda: b.update_ownership(2, 1, [(0, 9, "z", "")]), InvalidInput),  # type: ignore[attr-defined]
            "update_ownership, overlapping": (
                lambda: b.update_ownership(2, 1, [(0, 9, "f", ""), (5, 20, "f", "")]),  # type: ignore[attr-defined]
                InvalidInput,
            ),
            "update_ownership, out of the key space": (
                lambda: b.update_ownership(2, 1, [(0, MAX_KEY + 1, "f", "")]),  # type: ignore[attr-defined]
                InvalidInput,
            ),
            "boundary, n = 0": (lambda: b.boundary(0, 10, 0), InvalidInput),  # type: ignore[attr-defined]
        }
    )
    assert not wrong, wrong
    assert b.get(5) == Record(1, b"x") and b.ownership().token == 1  # type: ignore[attr-defined]
    b.close()
    wrong = mismatches(
        {
            name: (call, StoreClosed)
            for name, call in {
                "get": lambda: b.get(5),
                "put": lambda: b.put(5, b"y"),
                "delete": lambda: b.delete(5),
                "scan": lambda: b.scan(-1, MAX_KEY),
                "count": b.count,
                "ownership": b.ownership,  # type: ignore[attr-defined]
                "update_ownership": lambda: b.update_ownership(3, 1),  # type: ignore[attr-defined]
                "drop_ranges": lambda: b.drop_ranges(3, [(100, 200)]),  # type: ignore[attr-defined]
            }.items()
        }
    )
    assert not wrong, wrong
