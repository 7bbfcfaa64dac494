"""Backends: the interface on every medium, choice by URL, and LMDB's own promises.

The interface tests use ``make_backend`` (parametrised over memory, LMDB and
Redis). The LMDB tests below check what only LMDB has: the byte layout, the map
that grows by itself (and loses a whole transaction, never part of one, when
it cannot), both durability modes, fork detection and stale reader slots; and,
on real media (:mod:`tests.media`), a full disk, read-only media, and an
environment cache that never hands a directory another's environment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import lmdb
import pytest

import dhtcart.backends as backends_mod
import dhtcart.backends.lmdb as lmdb_mod
from dhtcart import (
    Backend,
    DHTServer,
    DHTServerStore,
    ForkedError,
    InvalidInput,
    Moved,
    Record,
    ShardFull,
    ShardUnavailable,
    StoreClosed,
    StoreReadOnly,
    VersionConflict,
)
from dhtcart.backends import backend_schemes, open_backend
from dhtcart.backends.lmdb import LMDBBackend
from dhtcart.backends.memory import MemoryBackend
from dhtcart.backends.ownership import Ownership, Segments
from dhtcart.hashing import MAX_KEY
from tests.conftest import BackendEnv
from tests.helpers import child_env, load_records
from tests.media import ext4_image, fill, read_only_view, run_unprivileged, small_tmpfs

# -- the interface, on every backend ------------------------------------------------


def test_backend_interface(make_backend: Callable[..., Backend]) -> None:
    b = make_backend()
    assert isinstance(b, Backend)
    assert b.url
    assert b.get(5) is None
    assert b.put(5, b"a") == 1
    assert b.put(5, b"b", 1) == 2
    with pytest.raises(VersionConflict):
        b.put(5, b"c", 1)
    with pytest.raises(VersionConflict):
        b.put(6, b"c", 3)
    assert b.get(5) == Record(2, b"b") and b.get(6) is None
    assert load_records(b, [(MAX_KEY, Record(9, b"top")), (0, Record(3, b"bottom"))]) == 2
    assert list(b.scan(-1, MAX_KEY)) == [
        (0, Record(3, b"bottom")),
        (5, Record(2, b"b")),
        (MAX_KEY, Record(9, b"top")),
    ]
    assert list(b.scan(0, MAX_KEY, 1)) == [(5, Record(2, b"b"))]
    assert b.delete(0, 3) and b.delete(MAX_KEY, 9)
    with pytest.raises(VersionConflict):
        b.delete(5, 1)
    assert b.count() == 1
    with pytest.raises(VersionConflict):
        b.delete(5, 1)
    assert b.delete(5, 2) is True and b.delete(5) is False
    assert b.count() == 0
    b.close()
    b.close()
    with pytest.raises(StoreClosed):
        b.get(5)
    with pytest.raises(StoreClosed):
        b.put(5, b"x")


def test_backend_context_manager(env: BackendEnv) -> None:
    url = env.url()
    with open_backend(url) as b:
        b.put(1, b"x")
    with pytest.raises(StoreClosed):
        b.count()
    if env.persistent:
        with open_backend(url) as b2:
            assert b2.get(1) == Record(1, b"x")


def test_destroy_removes_the_data(env: BackendEnv) -> None:
    url = env.url()
    b = open_backend(url)
    b.put(1, b"x")
    b.put(2, b"y")
    b.destroy()
    with pytest.raises(StoreClosed):
        b.get(1)
    if env.persistent:
        with open_backend(url) as again:
            assert again.count() == 0 and again.get(1) is None


# -- choosing a backend by URL ---------------------------------------------------------


def test_open_backend_by_url(tmp_path: Path) -> None:
    assert isinstance(open_backend("memory://"), MemoryBackend)
    with open_backend(f"lmdb://{tmp_path / 'a'}") as b:
        assert isinstance(b, LMDBBackend) and b.durability == "process"
        assert b.url == f"lmdb://{tmp_path / 'a'}"
    with open_backend(f"lmdb://{tmp_path / 'b'}?durability=power&map_size=65536") as b:
        assert isinstance(b, LMDBBackend) and b.durability == "power"
    with open_backend(f"lmdb://{tmp_path / 'c'}", durability="power") as b:
        assert isinstance(b, LMDBBackend) and b.durability == "power"
    assert {"memory", "lmdb", "redis", "rediss"} <= set(backend_schemes())


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("nope://x", ValueError),
        ("no-scheme", ValueError),
        ("", ValueError),
        ("lmdb://", ValueError),
        ("lmdb:///tmp/x?colour=red", ValueError),
        ("lmdb:///tmp/x?durability=maybe", ValueError),
        (b"memory://", TypeError),
        (None, TypeError),
    ],
)
def test_open_backend_rejects(url: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        open_backend(url)  # type: ignore[arg-type]


def test_memory_takes_no_options() -> None:
    with pytest.raises(TypeError):
        open_backend("memory://", durability="power")


def test_entry_points_are_registered() -> None:
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="dhtcart.backends")}
    assert names["memory"] == "dhtcart.backends.memory:MemoryBackend"
    assert names["lmdb"] == "dhtcart.backends.lmdb:LMDBBackend"


def test_third_party_backend_through_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []

    class ThirdParty(MemoryBackend):
        @classmethod
        def from_url(cls, url: str, **options: object) -> ThirdParty:
            opened.append(url)
            return cls()

    real = backends_mod.entry_points

    def fake_entry_points(group: str) -> list[object]:
        eps = list(real(group=group))
        return [*eps, SimpleNamespace(name="thirdparty", load=lambda: ThirdParty)]

    monkeypatch.setattr(backends_mod, "entry_points", fake_entry_points)
    assert "thirdparty" in backend_schemes()
    b = open_backend("thirdparty://anything")
    assert isinstance(b, ThirdParty) and opened == ["thirdparty://anything"]
    with DHTServer(b) as shard:
        assert shard.put(1, b"x") == 1
    store = DHTServerStore({"a": "thirdparty://a", "b": "thirdparty://b"})
    store.put(3, b"y")
    assert store.get(3) == Record(1, b"y")
    store.close()


# -- LMDB: layout ----------------------------------------------------------------------


def test_lmdb_keys_are_8_byte_big_endian(tmp_path: Path) -> None:
    with LMDBBackend(tmp_path) as b:
        for k in (MAX_KEY, 256, 1, 0, 2**56):
            b.put(k, b"v%d" % k)
        b.put(256, b"again")
    env = lmdb.open(str(tmp_path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            raw = list(txn.cursor())
    finally:
        env.close()
    assert [k for k, _ in raw] == [k.to_bytes(8, "big") for k in (0, 1, 256, 2**56, MAX_KEY)]
    assert dict(raw)[(256).to_bytes(8, "big")] == (2).to_bytes(8, "big") + b"again"


# -- LMDB: the map grows by itself, and never keeps part of a transaction --------------


def test_lmdb_map_grows_by_itself(tmp_path: Path) -> None:
    with LMDBBackend(tmp_path, map_size=4096 * 16) as b:
        start = b._env.info()["map_size"]
        value = os.urandom(10_000)
        for k in range(300):  # ~3 MB through a 64 KiB map
            assert b.put(k, value) == 1
        records = [(10_000 + k, Record(5, os.urandom(8_000))) for k in range(500)]
        assert b.import_ranges(0, [(9_999, MAX_KEY)], records) == 500  # one transaction far larger than the map was
        grown = b._env.info()["map_size"]
        assert grown > start
        assert b.count() == 800
        assert all(b.get(k) == Record(1, value) for k in range(300))
        assert dict(b.scan(9_999, MAX_KEY)) == dict(records)
    with LMDBBackend(tmp_path, map_size=4096 * 16) as again:  # reopening with a small map is fine
        assert again.count() == 800


def test_lmdb_writes_after_another_process_grew_the_map(tmp_path: Path) -> None:
    """Another process grows the map past this one's mapping: this process's next write
    begins its transaction on the grown map (LMDB answers MDB_MAP_RESIZED to the begin),
    and every operation goes on; nothing is refused, and the read path does the same."""
    with LMDBBackend(tmp_path, map_size=4096 * 16) as b:
        assert b.put(1, b"a") == 1
        start = b._env.info()["map_size"]
        grower = (
            "import sys\n"
            "from dhtcart.backends.lmdb import LMDBBackend\n"
            "with LMDBBackend(sys.argv[1], map_size=4096 * 16) as other:\n"
            "    for k in range(2, 400):\n"
            "        other.put(k, b'x' * 2000)\n"
            "    print(other._env.info()['map_size'])\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", grower, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
            env=child_env(),
        )
        assert int(done.stdout) > start  # the other process's map is larger than this one's
        assert b.put(1000, b"from here") == 1  # the write path adopts the new size
        assert b.put(1, b"b", expected_version=1) == 2
        assert b.get(399) == Record(1, b"x" * 2000) and b.count() == 400


def test_lmdb_an_ownership_write_that_did_not_commit_is_not_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard's record written in a transaction that then aborts (here: the check that the data
    file was not deleted under it says it was) must not be what this process serves from: another
    process may commit the next generation with a record of its own, and a read of a key that
    record does not own must be refused (a stale cache here would serve it: not linearizable)."""
    from dhtcart.backends.ownership import NOT_OWNED, OWNED

    with LMDBBackend(tmp_path, fenced=True) as b:
        b.claim(Ownership(1, 1, Segments.all(OWNED)))
        b.put(5, b"x")
        b.claim(Ownership(2, 2, Segments.all(NOT_OWNED, "elsewhere")))
        monkeypatch.setattr(b._shared, "next_check", 0.0)
        monkeypatch.setattr(b._shared, "removed", lambda: True)
        with pytest.raises(ShardUnavailable):
            b.claim(Ownership(3, 3, Segments.all(OWNED)))  # written, then not committed
        monkeypatch.undo()
        other = (
            "import sys\n"
            "from dhtcart.backends.lmdb import LMDBBackend\n"
            "from dhtcart.backends.ownership import NOT_OWNED, Ownership, Segments\n"
            "with LMDBBackend(sys.argv[1], fenced=True) as o:\n"
            "    o.claim(Ownership(4, 4, Segments.all(NOT_OWNED, 'other')))\n"
        )
        subprocess.run([sys.executable, "-c", other, str(tmp_path)], check=True, timeout=120, env=child_env())
        with pytest.raises(Moved):
            b.get(5)
        with pytest.raises(Moved):
            b.put(5, b"y")


def test_lmdb_full_map_loses_the_whole_transaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lmdb_mod, "_MAX_MAP_SIZE", 1 << 20)  # the map may not grow past 1 MiB
    with LMDBBackend(tmp_path, map_size=1 << 18) as b:
        b.put(1, b"kept")
        too_much = [(100 + k, Record(1, os.urandom(4_000))) for k in range(500)]  # ~2 MB
        with pytest.raises(ShardFull, match="largest size") as info:  # a full map that may not grow
            b.import_ranges(0, [(99, MAX_KEY)], too_much)
        assert info.value.shard == tmp_path.name and info.value.address == str(tmp_path)
        assert b.count() == 1, "nothing of the failed transaction is there"
        assert list(b.scan(-1, MAX_KEY)) == [(1, Record(1, b"kept"))]
        with pytest.raises(ShardFull):
            b.put(2, os.urandom(2 << 20))
        assert b.get(2) is None
        assert b.put(3, b"still works") == 1
        assert b.count() == 2


# -- LMDB: durability modes --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["process", "power"])
def test_lmdb_durability_modes(tmp_path: Path, mode: str) -> None:
    with LMDBBackend(tmp_path, durability=mode) as b:  # type: ignore[arg-type]
        flags = b._env.flags()
        assert flags["sync"] is (mode == "power")
        assert flags["metasync"] is (mode == "power")
        for k in range(50):
            b.put(k, b"%d" % k)
        b.put(0, b"zero", expected_version=1)
    with LMDBBackend(tmp_path) as again:
        assert again.count() == 50
        assert again.get(0) == Record(2, b"zero")
        assert again.get(49) == Record(1, b"49")


def test_lmdb_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LMDBBackend(tmp_path, durability="sometimes")  # type: ignore[arg-type]
    for size in (0, 100, -1, True, "big", 4095):
        with pytest.raises(ValueError):
            LMDBBackend(tmp_path, map_size=size)  # type: ignore[arg-type]


def test_lmdb_sync(tmp_path: Path) -> None:
    with LMDBBackend(tmp_path) as b:
        b.put(1, b"x")
        b.sync()
    with pytest.raises(StoreClosed):
        b.sync()


# -- LMDB: fork ----------------------------------------------------------------------------


def _in_fork(fn: Callable[[], int]) -> int:
    """Run ``fn`` in a forked child; return its exit code (the child never returns)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            code = fn()
        except BaseException:
            code = 98
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_lmdb_forked_error_in_child(tmp_path: Path) -> None:
    b = LMDBBackend(tmp_path)
    b.put(1, b"parent")

    def child() -> int:
        results = []
        for op in (
            lambda: b.get(1),
            lambda: b.put(2, b"child"),
            lambda: b.count(),
            lambda: list(b.scan(-1, 10)),
        ):
            try:
                op()
                results.append(False)
            except ForkedError as exc:
                results.append("fork" in str(exc))
        b.close()  # closing in the child must not touch the parent's environment
        return 0 if all(results) else 1

    assert _in_fork(child) == 0, "a backend opened before fork() must raise ForkedError in the child"
    # the parent's handle is unharmed
    assert b.get(1) == Record(1, b"parent")
    assert b.get(2) is None
    assert b.put(4, b"after") == 1
    b.close()


def test_lmdb_reopen_in_child_after_fork(tmp_path: Path) -> None:
    """ForkedError says "open the store again in the child": that must work.

    The child closes the inherited handle (as the error suggests) and opens
    the directory afresh; its write must then reach the parent.
    """
    b = LMDBBackend(tmp_path)
    b.put(1, b"parent")

    def child() -> int:
        b.close()
        try:
            mine = LMDBBackend(tmp_path)
        except ShardUnavailable:
            return 3  # "The environment ... is already open in this process"
        with mine:
            if mine.get(1) != Record(1, b"parent"):
                return 4
            mine.put(3, b"child's own")
        return 0

    code = _in_fork(child)
    assert code != 3, "after fork() and close(), reopening the directory failed (already open)"
    assert code == 0
    assert b.get(3) == Record(1, b"child's own")
    b.close()


def test_store_opened_before_fork(tmp_path: Path) -> None:
    store = DHTServerStore.open(tmp_path / "s", shards=2)
    store.put(1, b"x")

    def child() -> int:
        try:
            store.get(1)
        except ForkedError:
            return 0
        return 1

    assert _in_fork(child) == 0
    assert store.get(1) == Record(1, b"x")
    store.close()


# -- LMDB: stale readers -------------------------------------------------------------------

_HOLD_READER = """
import sys, time
from dhtcart.backends.lmdb import LMDBBackend
b = LMDBBackend(sys.argv[1])
txn = b._env.begin()           # a read transaction, never finished
txn.get((1).to_bytes(8, "big"))
print("holding", flush=True)
time.sleep(120)
"""


def test_lmdb_stale_reader_of_killed_process(tmp_path: Path) -> None:
    """A process killed inside a read transaction leaves a reader slot behind.

    While that slot stands, LMDB cannot reuse any page freed after its
    snapshot, so every overwrite grows the file. Opening the backend (in any
    process) clears slots of dead processes; after that, writers reuse pages
    again.
    """
    writer = LMDBBackend(tmp_path)  # stays open throughout, as a long-running server would
    writer.put(1, os.urandom(65536))
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD_READER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "holding"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert str(child.pid) in writer._env.readers(), "the killed reader's slot is still there"

    def growth(rounds: int) -> int:
        before = writer._env.info()["last_pgno"]
        for i in range(rounds):
            writer.put(1, bytes([i % 256]) * 65536)
        return int(writer._env.info()["last_pgno"] - before)

    pinned = growth(40)
    assert pinned > 40 * 10, "with a stale reader pinned, overwrites cannot reuse pages (test of the test)"
    # another process opens the store: its open clears the dead reader's slot
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"from dhtcart.backends.lmdb import LMDBBackend; LMDBBackend({str(tmp_path)!r}).close()",
        ],
        check=True,
        env=child_env(),
        timeout=60,
    )
    assert str(child.pid) not in writer._env.readers()
    assert growth(40) < 40, "once cleared, writers reuse freed pages"
    assert writer.get(1) == Record(81, bytes([39]) * 65536)
    writer.close()


def test_lmdb_many_backends_one_process(tmp_path: Path) -> None:
    shards = [LMDBBackend(tmp_path / f"s{i}") for i in range(20)]
    for i, b in enumerate(shards):
        b.put(i, b"%d" % i)
    for b in shards:
        b.close()
    for i in range(20):
        with LMDBBackend(tmp_path / f"s{i}") as b:
            assert b.get(i) == Record(1, b"%d" % i) and b.count() == 1


def test_fast_local_is_declared_by_the_backend(env: BackendEnv, tmp_path: Path) -> None:
    """Only memory and LMDB without per-commit fsync may run on an event loop."""
    from dhtcart.backends.lmdb import LMDBBackend

    b = env.backend()
    assert b.fast_local is (env.kind in ("memory", "lmdb"))
    assert env.store().fast_local is b.fast_local
    with LMDBBackend(tmp_path / "power", durability="power") as power:
        assert not power.fast_local


@pytest.mark.parametrize("backend_kind", ["memory", "lmdb"])  # the Redis backend is another branch's
def test_boundary_counts_from_one(env: BackendEnv) -> None:
    b = env.backend()
    b.put(5, b"x")
    assert b.boundary(0, 10, 1) == (5, 1)  # type: ignore[attr-defined]
    for n in (0, -1, True, 1.0):
        with pytest.raises(InvalidInput):
            b.boundary(0, 10, n)  # type: ignore[attr-defined]


# -- LMDB on a full disk (a real tmpfs, filled by another file) ----------------------------

_READ_ALL = """
import json, sys
from dhtcart.backends.lmdb import LMDBBackend
with LMDBBackend(sys.argv[1]) as b:
    print(json.dumps({str(k): [r.version, len(r.value), r.value[:1].hex()] for k, r in b.scan(-1, 2**63 - 1)}))
"""


def _read_all_in_a_new_process(path: Path) -> dict[int, tuple[int, int, str]]:
    """Every record of the LMDB directory, as a fresh process opening it sees them."""
    proc = subprocess.run(
        [sys.executable, "-c", _READ_ALL, str(path)], capture_output=True, text=True, timeout=60, env=child_env()
    )
    assert proc.returncode == 0, proc.stderr
    return {int(k): tuple(v) for k, v in json.loads(proc.stdout).items()}  # type: ignore[misc]


def test_lmdb_full_disk_refuses_writes_keeps_reads_and_recovers(tmp_path: Path) -> None:
    """A write that finds no room is ShardFull and not applied; reads go on; nothing acknowledged is
    lost; once room is made, writes work again (no reopening)."""
    with small_tmpfs(tmp_path / "disk", "8m") as disk:
        path = disk / "shard"
        b = LMDBBackend(path)
        acked: dict[int, bytes] = {}
        for k in range(20):
            acked[k] = os.urandom(20_000)
            assert b.put(k, acked[k]) == 1
        filler = fill(disk)
        refused = None
        for k in range(100, 300):  # fresh 64 KiB values need fresh pages: the file must grow
            value = os.urandom(65_536)
            try:
                b.put(k, value)
            except ShardFull as exc:
                refused = (k, exc)
                break
            acked[k] = value  # fitted in pages freed earlier: acknowledged, so it must be kept
        assert refused is not None, "200 writes of 64 KiB fitted on a full 8 MiB disk"
        key, exc = refused
        assert isinstance(exc, ShardUnavailable) and exc.shard == "shard" and exc.address == str(path)
        assert "no room" in str(exc) and "not applied" in str(exc)
        assert b.get(key) is None, "the refused write was not applied"
        with pytest.raises(ShardFull):  # a compare-and-set that needs room is refused the same way
            b.put(key, os.urandom(65_536), expected_version=0)
        assert {k: b.get(k) for k in acked} == {k: Record(1, v) for k, v in acked.items()}  # reads go on
        assert b.count() == len(acked) and len(list(b.scan(-1, MAX_KEY))) == len(acked)
        seen = _read_all_in_a_new_process(path)  # another process opens the full disk's shard and reads
        assert sorted(seen) == sorted(acked)

        filler.unlink()  # room again: the same backend writes, nothing was lost
        assert b.put(key, b"after") == 1
        assert b.put(0, b"again", expected_version=1) == 2
        b.close()
        seen = _read_all_in_a_new_process(path)
        assert sorted(seen) == sorted({*acked, key})
        assert seen[0] == (2, 5, b"a".hex()) and seen[key] == (1, 5, b"a".hex())
        assert all(seen[k] == (1, len(v), v[:1].hex()) for k, v in acked.items() if k != 0)


def test_lmdb_a_commit_the_disk_cuts_short_is_shard_full(tmp_path: Path) -> None:
    """A commit whose pages only partly fit: the filesystem takes part of LMDB's write and LMDB
    reports the short write as EIO ("short write, filesystem full?" in its source). With (almost)
    no room left, that EIO is a full disk, not an unavailable one."""
    with small_tmpfs(tmp_path / "disk", "8m") as disk, LMDBBackend(disk / "shard") as b:
        b.put(1, b"kept")
        filler = fill(disk, leave=1 << 20)
        with pytest.raises(ShardFull) as info:
            b.put(2, os.urandom(3 << 20))  # 3 MiB into 1 MiB: the write is cut short
        assert "Input/output error" in str(info.value), "the short-write (EIO) path was taken"
        assert b.get(2) is None and b.get(1) == Record(1, b"kept")
        filler.unlink()
        assert b.put(2, b"fits now") == 1


_OPEN_NEW_SHARD = """
import sys
from dhtcart.backends.lmdb import LMDBBackend
from dhtcart.errors import DHTCartError
try:
    LMDBBackend(sys.argv[1]).close()
    print("opened")
except DHTCartError as exc:
    print(type(exc).__name__, exc)
"""


def test_lmdb_a_new_shard_on_a_full_disk_is_shard_full_not_sigbus(tmp_path: Path) -> None:
    """LMDB writes its lock file's reader table through a memory map: on a full tmpfs, a page without
    blocks is SIGBUS, which kills the process. The lock file is given its blocks first, so a
    process making a shard on a full disk gets ShardFull and lives."""
    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        (disk / "new").mkdir()
        filler = fill(disk)
        proc = subprocess.run(
            [sys.executable, "-c", _OPEN_NEW_SHARD, str(disk / "new")],
            capture_output=True,
            text=True,
            timeout=60,
            env=child_env(),
        )
        assert proc.returncode == 0, f"the process died (exit {proc.returncode}): {proc.stderr}"
        assert proc.stdout.startswith("ShardFull "), proc.stdout
        assert sorted(p.name for p in (disk / "new").iterdir()) in ([], ["lock.mdb"], ["data.mdb", "lock.mdb"])
        filler.unlink()
        with LMDBBackend(disk / "new") as b:  # with room, the same directory becomes a shard
            assert b.put(1, b"x") == 1
        lock = os.stat(disk / "new" / "lock.mdb")
        assert lock.st_blocks * 512 >= lock.st_size, "the lock file has all its blocks"


# -- LMDB on read-only media -----------------------------------------------------------------


def _filled_shard(path: Path) -> dict[int, Record]:
    with LMDBBackend(path, fenced=True) as b:
        b.claim(Ownership(1, 1, Segments.owning([(-1, MAX_KEY)])))
        for k in range(10):
            b.put(k, b"v%d" % k)
        b.put(3, b"three", expected_version=1)
        return dict(b.scan(-1, MAX_KEY))


def _assert_read_only(b: LMDBBackend, records: dict[int, Record]) -> None:
    assert b.read_only
    assert b.get(3) == Record(2, b"three") and b.get(99) is None
    assert dict(b.scan(-1, MAX_KEY)) == records and b.count() == len(records)
    assert b.ownership().segments.lookup(5) == ("o", "")
    b.sync()  # nothing to flush
    for write in (
        lambda: b.put(1, b"x"),
        lambda: b.put(100, b"new", expected_version=0),
        lambda: b.delete(1),
        lambda: b.update_ownership(2, 2),
        lambda: b.claim(Ownership(2, 2, Segments.all())),
        lambda: b.drop_ranges(2, [(-1, MAX_KEY)]),
        lambda: b.import_ranges(2, [(1000, 2000)], []),
    ):
        with pytest.raises(StoreReadOnly, match="read-only") as info:
            write()
        assert isinstance(info.value, PermissionError) and str(b.path) in str(info.value)
    assert dict(b.scan(-1, MAX_KEY)) == records, "nothing changed"


def test_lmdb_read_only_filesystem_can_be_inspected(tmp_path: Path) -> None:
    """A shard seen through a read-only bind mount (EROFS on every write, for root too): reads work,
    every write is StoreReadOnly; a shard that does not exist yet cannot be made there."""
    records = _filled_shard(tmp_path / "src" / "shard")
    with read_only_view(tmp_path / "src", tmp_path / "ro") as ro:
        with LMDBBackend(ro / "shard", fenced=True) as b:
            _assert_read_only(b, records)
            with pytest.raises(StoreReadOnly):
                b.destroy()
        assert (ro / "shard" / "data.mdb").exists()
        with pytest.raises(StoreReadOnly, match="read-only"):
            LMDBBackend(ro / "missing")
    with LMDBBackend(tmp_path / "src" / "shard") as rw:  # the medium itself was never changed
        assert not rw.read_only and dict(rw.scan(-1, MAX_KEY)) == records


_UNPRIVILEGED = """
import json, sys
from dhtcart.backends.lmdb import LMDBBackend
from dhtcart.errors import DHTCartError
out = {}
with LMDBBackend(sys.argv[1], fenced=True) as b:
    out["read_only"] = b.read_only
    out["locked"] = b._shared.locked
    out["get"] = list(b.get(3))[0]
    out["count"] = b.count()
    try:
        b.put(1, b"x")
        out["put"] = "written"
    except DHTCartError as exc:
        out["put"] = [type(exc).__name__, isinstance(exc, PermissionError), str(exc)]
print(json.dumps(out))
"""


@pytest.mark.parametrize("writable_lock", [False, True], ids=["nothing-writable", "lock-file-writable"])
def test_lmdb_read_only_for_an_unprivileged_user(tmp_path: Path, writable_lock: bool) -> None:
    """Permission bits (root bypasses them, so the shard is opened by root without capabilities):
    with nothing writable LMDB can only read without its lock table; with the lock file writable,
    readers are registered. Either way reads work and writes are StoreReadOnly."""
    base = Path(tempfile.mkdtemp(prefix="dhtcart-ro-"))
    try:
        base.chmod(0o755)
        shard = base / "shard"
        records = _filled_shard(shard)
        shard.chmod(0o555)
        (shard / "data.mdb").chmod(0o444)
        (shard / "lock.mdb").chmod(0o666 if writable_lock else 0o444)
        proc = run_unprivileged(_UNPRIVILEGED, str(shard))
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["read_only"] is True and out["locked"] is writable_lock
        assert out["get"] == 2 and out["count"] == len(records)
        name, is_permission_error, message = out["put"]
        assert name == "StoreReadOnly" and is_permission_error and str(shard) in message
        with LMDBBackend(shard) as b:  # root (no permission bits) sees it unchanged
            assert dict(b.scan(-1, MAX_KEY)) == records
    finally:
        for p in base.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(base)


# -- LMDB: the environment cache never hands a directory another's environment ---------------

_DESTROY = """
import sys
from dhtcart.backends.lmdb import LMDBBackend
LMDBBackend(sys.argv[1]).destroy()
"""

_REPLACE_FILES = """
import os, sys
shard, backup = sys.argv[1], sys.argv[2]
for name in ("data.mdb", "lock.mdb"):
    os.replace(os.path.join(backup, name), os.path.join(shard, name))
"""


def _child(code: str, *args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, env=child_env()
    )
    assert proc.returncode == 0, proc.stderr


def _writes_fail_unavailable(b: LMDBBackend) -> ShardUnavailable:
    """The error a write to ``b`` raises now that its data file is gone (it checks once a second)."""
    deadline = time.monotonic() + 5
    for i in range(1000):
        try:
            b.put(10_000 + i, b"lost?")
        except ShardUnavailable as exc:
            return exc
        assert time.monotonic() < deadline, "writes to a deleted data file went on for 5 s"
        time.sleep(0.01)
    raise AssertionError("1000 writes to a deleted data file were accepted")


def test_lmdb_a_new_directory_with_a_destroyed_shard_s_inode_gets_a_new_environment(tmp_path: Path) -> None:
    """ext4 hands a freed inode to the next directory made, so a new shard directory can have the
    ``(st_dev, st_ino)`` of one destroyed earlier (the key of this process's environment cache).
    Provoked for real: the shard opened here is destroyed by another process, this process closes
    it (as a store handle does when it learns the shard left), then directories are made until one
    has the old inode. The shard made there is empty and independent of the old one."""
    with ext4_image(tmp_path / "fs") as fs:
        shards = fs / "shards"
        shards.mkdir()
        old = LMDBBackend(shards / "g")
        old.put(1, b"old data")
        inode = os.stat(shards / "g").st_ino
        _child(_DESTROY, str(shards / "g"))  # the rebalancer, in another process, removes the shard
        assert not (shards / "g").exists()
        exc = _writes_fail_unavailable(old)  # this process's open environment now writes to nothing
        assert "deleted" in str(exc) and exc.shard == "g"
        assert old.get(1) == Record(1, b"old data")  # what it has open still reads
        old.close()

        reused = None
        deadline = time.monotonic() + 20
        for i in range(2000):  # bounded in count and time
            candidate = shards / f"h{i}"
            candidate.mkdir()
            if os.stat(candidate).st_ino == inode:
                reused = candidate
                break
            candidate.rmdir()
            if time.monotonic() > deadline:
                break
        assert reused is not None, f"no new directory got inode {inode} back (ext4 reuses freed inodes)"
        with LMDBBackend(reused) as new:
            assert new.count() == 0 and new.get(1) is None, "the new shard sees the destroyed one's data"
            assert new.put(2, b"new data") == 1
        assert _read_all_in_a_new_process(reused) == {2: (1, 8, b"n".hex())}


def test_lmdb_a_shard_whose_files_were_replaced_in_place_gets_a_new_environment(tmp_path: Path) -> None:
    """The directory keeps its inode while another process replaces its files (a shard restored
    from a backup): this process must not go on with the environment of the replaced files."""
    shard, backup = tmp_path / "g", tmp_path / "backup"
    with LMDBBackend(backup) as b:
        b.put(7, b"from the backup")
    old = LMDBBackend(shard)
    old.put(1, b"before")
    inode = os.stat(shard).st_ino
    _child(_REPLACE_FILES, str(shard), str(backup))
    assert os.stat(shard).st_ino == inode, "the directory is the same one"
    with LMDBBackend(shard) as restored:  # opened again in the process that has the old files open
        assert dict(restored.scan(-1, MAX_KEY)) == {7: Record(1, b"from the backup")}
        assert restored.put(8, b"after the restore") == 1
    exc = _writes_fail_unavailable(old)  # the old environment's file is gone: its writes would be lost
    assert exc.address == str(shard)
    old.close()
    assert sorted(_read_all_in_a_new_process(shard)) == [7, 8]
