"""DHTServer: one shard, on every backend (memory, LMDB, Redis) through one fixture."""

from __future__ import annotations

import random
import threading

import pytest

from dhtcart import DHTServer, Record, StoreClosed, VersionConflict
from dhtcart.errors import Conflict, DHTCartError
from dhtcart.hashing import MAX_KEY
from tests.conftest import BackendEnv
from tests.helpers import EDGE_KEYS, load_records


def test_missing_key_is_none(shard: DHTServer) -> None:
    assert shard.get(1) is None
    assert shard.get(0) is None and shard.get(MAX_KEY) is None
    assert shard.count() == 0 and len(shard) == 0


def test_versions_start_at_one_and_grow_by_one(shard: DHTServer) -> None:
    assert shard.put(7, b"a") == 1
    assert shard.get(7) == Record(1, b"a")
    for expected in range(2, 12):
        assert shard.put(7, b"v%d" % expected) == expected
    rec = shard.get(7)
    assert rec == Record(11, b"v11")
    assert type(rec.value) is bytes
    # each key has its own version
    assert shard.put(8, b"b") == 1
    assert shard.get(7).version == 11  # type: ignore[union-attr]


@pytest.mark.parametrize("key", EDGE_KEYS)
def test_edge_keys(shard: DHTServer, key: int) -> None:
    assert shard.put(key, b"edge") == 1
    assert shard.get(key) == Record(1, b"edge")
    assert [k for k, _ in shard.scan(-1, MAX_KEY)] == [key]
    assert shard.delete(key) is True
    assert shard.get(key) is None


def test_bytes_like_values_come_back_as_bytes(shard: DHTServer) -> None:
    shard.put(1, bytearray(b"ba"))
    shard.put(2, memoryview(b"mv"))
    shard.put(3, b"")
    shard.put(4, bytes(range(256)) * 4)
    assert shard.get(1) == Record(1, b"ba") and type(shard.get(1).value) is bytes  # type: ignore[union-attr]
    assert shard.get(2) == Record(1, b"mv") and type(shard.get(2).value) is bytes  # type: ignore[union-attr]
    assert shard.get(3) == Record(1, b"")
    assert shard.get(4) == Record(1, bytes(range(256)) * 4)


def test_large_value(shard: DHTServer) -> None:
    big = random.Random(1).randbytes(3 * 1024 * 1024)
    assert shard.put(5, big) == 1
    assert shard.get(5) == Record(1, big)


def test_compare_and_set(shard: DHTServer) -> None:
    # 0 = must not exist
    assert shard.put(1, b"first", expected_version=0) == 1
    with pytest.raises(VersionConflict) as info:
        shard.put(1, b"again", expected_version=0)
    err = info.value
    assert (err.key, err.expected, err.actual) == (1, 0, 1)
    assert isinstance(err, Conflict) and isinstance(err, DHTCartError)
    assert shard.get(1) == Record(1, b"first"), "a failed CAS changes nothing"
    assert shard.put(1, b"second", expected_version=1) == 2
    for stale in (1, 3, 100):
        with pytest.raises(VersionConflict) as info:
            shard.put(1, b"stale", expected_version=stale)
        assert (info.value.expected, info.value.actual) == (stale, 2)
    assert shard.get(1) == Record(2, b"second")
    # CAS on an absent key with a non-zero version fails and creates nothing
    with pytest.raises(VersionConflict) as info:
        shard.put(2, b"x", expected_version=1)
    assert info.value.actual == 0
    assert shard.get(2) is None and shard.count() == 1


def test_conditional_delete(shard: DHTServer) -> None:
    shard.put(1, b"a")
    shard.put(1, b"b")
    with pytest.raises(VersionConflict) as info:
        shard.delete(1, expected_version=1)
    assert (info.value.expected, info.value.actual) == (1, 2)
    assert shard.get(1) == Record(2, b"b"), "a failed conditional delete changes nothing"
    with pytest.raises(VersionConflict):
        shard.delete(1, expected_version=0)
    assert shard.delete(1, expected_version=2) is True
    assert shard.get(1) is None
    # absent keys
    assert shard.delete(1) is False
    assert shard.delete(1, expected_version=0) is False
    with pytest.raises(VersionConflict):
        shard.delete(1, expected_version=1)
    assert shard.count() == 0


def test_unconditional_delete_and_recreate(shard: DHTServer) -> None:
    shard.put(9, b"x")
    shard.put(9, b"y")
    assert shard.delete(9) is True
    assert shard.get(9) is None
    assert shard.put(9, b"z", expected_version=0) == 1, "a deleted key starts again at version 1"


def _fill(shard: DHTServer, keys: list[int]) -> dict[int, Record]:
    load_records(shard.backend, ((k, Record(1 + k % 5, k.to_bytes(8, "big"))) for k in keys))
    return {k: Record(1 + k % 5, k.to_bytes(8, "big")) for k in keys}


def test_scan_order_and_bounds(shard: DHTServer) -> None:
    rnd = random.Random(3)
    keys = sorted(set(EDGE_KEYS + [rnd.getrandbits(63) for _ in range(300)] + [2**56 - 1, 2**56, 255, 256]))
    model = _fill(shard, keys)
    everything = list(shard.scan(-1, MAX_KEY))
    assert [k for k, _ in everything] == keys, "ordered by key, as integers"
    assert dict(everything) == model

    def expect(lo: int, hi: int) -> list[int]:
        return [k for k in keys if lo < k <= hi]

    bounds = [-1, 0, 1, 2, 255, 256, 2**56 - 1, 2**56, 2**62, MAX_KEY - 1, MAX_KEY, *rnd.sample(keys, 10)]
    for lo in bounds:
        for hi in bounds:
            got = [k for k, _ in shard.scan(lo, hi)]
            assert got == expect(lo, hi), (lo, hi)
    assert [k for k, _ in shard.scan(-1, 0)] == [0]
    assert [k for k, _ in shard.scan(0, 1)] == [1], "lo is excluded, hi included"
    assert list(shard.scan(5, 5)) == [] and list(shard.scan(10, 3)) == []


def test_scan_limit_across_batches(shard: DHTServer) -> None:
    keys = list(range(10, 10 + 2600))
    model = _fill(shard, keys)
    assert shard.count() == 2600
    for limit in (0, 1, 511, 512, 513, 1000, 1024, 1025, 1500, 2600, 5000):
        got = list(shard.scan(-1, MAX_KEY, limit=limit))
        assert [k for k, _ in got] == keys[:limit], limit
        assert all(model[k] == r for k, r in got)
    got = list(shard.scan(500, 2000, limit=700))
    assert [k for k, _ in got] == [k for k in keys if 500 < k <= 2000][:700]
    assert len(list(shard.scan(-1, MAX_KEY))) == 2600


def test_copied_records_keep_their_versions(shard: DHTServer) -> None:
    """A migration's copy (import_ranges) writes records with their versions; writes continue from them."""
    shard.put(1, b"old")
    shard.put(1, b"old2")
    records = [(1, Record(7, b"seven")), (2, Record(1, b"one")), (3, Record(42, b""))]
    assert shard.backend.import_ranges(0, [(0, 3)], records) == 3  # type: ignore[attr-defined]
    assert shard.get(1) == Record(7, b"seven"), "the copy replaces what the range held, with the given version"
    assert shard.get(2) == Record(1, b"one")
    assert shard.get(3) == Record(42, b"")
    assert shard.put(1, b"eight") == 8, "later writes continue from the kept version"
    assert shard.put(3, b"x", expected_version=42) == 43
    assert shard.count() == 3


def test_count_and_len(shard: DHTServer) -> None:
    for k in range(50):
        shard.put(k * 1000, b"x")
    assert shard.count() == len(shard) == 50
    shard.put(0, b"again")
    assert shard.count() == 50
    shard.delete(0)
    assert shard.count() == 49


def test_close_and_context_manager(env: BackendEnv) -> None:
    url = env.url()
    with DHTServer(url) as shard:
        assert shard.put(1, b"a") == 1
        assert shard.url
    # closed: every operation says so, and closing again is harmless
    for op in (
        lambda: shard.get(1),
        lambda: shard.put(1, b"b"),
        lambda: shard.delete(1),
        lambda: list(shard.scan(-1, MAX_KEY)),
        lambda: shard.count(),
    ):
        with pytest.raises(StoreClosed):
            op()
    shard.close()
    shard.close()
    if env.persistent:
        with DHTServer(url) as again:
            assert again.get(1) == Record(1, b"a"), "reopening sees the data"
            assert again.count() == 1


def test_concurrent_compare_and_set_increments(shard: DHTServer) -> None:
    shard.put(1, b"0")
    errors: list[BaseException] = []

    def bump(n: int) -> None:
        try:
            for _ in range(n):
                while True:
                    rec = shard.get(1)
                    assert rec is not None
                    try:
                        shard.put(1, b"%d" % (int(rec.value) + 1), expected_version=rec.version)
                        break
                    except VersionConflict:
                        continue
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=bump, args=(100,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert shard.get(1) == Record(401, b"400")


def test_repr_and_name(env: BackendEnv) -> None:
    shard = env.server(name="alpha")
    assert shard.name == "alpha"
    assert "alpha" in repr(shard)
