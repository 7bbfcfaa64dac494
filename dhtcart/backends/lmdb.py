"""LMDB backend: one LMDB environment per shard directory.

Keys are stored as 8-byte big-endian integers, so LMDB's byte order is the
ring's order and a range scan is a cursor walk. A record is the 8-byte
big-endian version followed by the value.

Durability (``durability=``, or ``?durability=`` in the URL):

``"process"`` (default)
    Commits are written to the file without ``fsync`` (LMDB ``sync=False``).
    Every acknowledged write survives the process being killed (``SIGKILL``),
    because the data is in the operating system's page cache; a power loss or
    kernel crash may lose the last commits (and LMDB then makes no promise for
    the file as a whole).
``"power"``
    ``fsync`` at every commit (LMDB's default). Every acknowledged write
    survives power loss, at the cost of one disk flush per write.

Ownership (when fenced by a store): the record lives in the same environment,
under keys that begin with the byte ``0xff`` (no record key can: records are
8-byte keys below ``2**63``), and every get, put and delete reads it in its
own transaction. Each process keeps the parsed record in memory and checks
an 8-byte generation counter per transaction, re-reading the record only
when it changed.

Threads: one backend may be used by many threads (a lock serialises this
process's transactions). Several backends (or stores) of one process opened
on one directory share one LMDB environment, which LMDB requires. Processes: several processes may open the same
directory; LMDB serialises their writes, so compare-and-set stays atomic
across them. Fork: a backend opened before ``fork()`` must not be used in the
child (LMDB forbids it); doing so raises :class:`~dhtcart.errors.ForkedError`.
The map grows by itself: a write that finds it full is aborted whole, the map
doubles, and the write is retried.

Errors: no ``lmdb`` exception and no ``OSError`` leaves this module. One table
(:func:`_medium_error`) turns them into dhtcart's, for every transaction:

=======================================================  ==============================================
LMDB or the filesystem says                              the caller gets
=======================================================  ==============================================
``ReadonlyError``, ``EROFS``, ``EACCES``, ``EPERM``      :class:`~dhtcart.errors.StoreReadOnly` (writes)
a full map that may not grow (at its largest size, or   :class:`~dhtcart.errors.ShardFull`: the write
an address-space limit), ``ENOSPC``, ``EDQUOT``,         was not applied, reads go on, and writes work
``EFBIG``, an ``EIO`` of a write on a filesystem with    again once there is room
(almost) no room left
a damaged file (``CorruptedError``, ``InvalidError``,    :class:`~dhtcart.errors.CorruptData`
``PageNotFoundError``), a record shorter than a version
``EIO`` and every other ``lmdb.Error`` or ``OSError``,   :class:`~dhtcart.errors.ShardUnavailable`
a write to a ``data.mdb`` deleted under the process
=======================================================  ==============================================

LMDB reports a write that the filesystem cut short as ``EIO`` (LMDB's own
comment: "short write, filesystem full?"), which is what a filling disk
gives when a commit's pages only partly fit; such an ``EIO`` counts as a full
disk when the filesystem has less than 1 MiB left. A commit is atomic, so a
failed one changed nothing: LMDB writes the new pages first and the meta page
last. The lock file is given its disk blocks when dhtcart creates it: LMDB
writes its reader table through a memory map, and on a full filesystem a
page without blocks would kill the process with ``SIGBUS``.

Read-only media: a shard whose directory (or ``data.mdb``) cannot be written
is opened read-only: reads work, writes raise
:class:`~dhtcart.errors.StoreReadOnly`. When ``lock.mdb`` cannot be written
either (a read-only filesystem, or a lock file the user may not write), the
environment is opened without LMDB's lock table: readers are then not
registered, so **no writer may run on the store meanwhile** (a writer that
does not see them may reuse the pages they read). :attr:`LMDBBackend.read_only`
tells which way a shard was opened.

Writers of several processes: a write first takes an exclusive ``flock`` of
the shard's ``data.mdb`` (the descriptor the environment holds open anyway),
then LMDB's writer mutex, and lets go of both when it commits or aborts. So
LMDB's mutex never has a waiter: a process waits in the kernel's queue of
the ``flock`` instead. LMDB's mutex is a robust one (a process killed while
holding it hands it over), but a process killed just after being woken to
take it, while another process has taken it in between, can leave a third
waiter asleep forever: the kernel's clean-up of a killed waiter acts only on
a mutex nobody holds. ``tests/test_modify.py`` kills writers among others at
random moments and saw such a hang about once in ten rounds before this
queue; a ``flock`` is released by the kernel when its holder dies and has no
such window. It costs about 0.4 µs a write (two system calls).

The environment cache: one environment per directory per process, found by
the directory's ``(st_dev, st_ino)`` and handed out only while ``data.mdb``
in that directory is still the file it has open. On a local Linux filesystem an
open environment keeps its directory's inode from being reused, even after
the directory is deleted (its open files hold the directory), so a new shard
directory never shares a live environment's key; the ``data.mdb`` check keeps
that true where inode numbers come back sooner (network and FUSE filesystems),
and when a shard directory's files are replaced in place (restored from a
backup, or made again by another process).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import shutil
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar
from urllib.parse import parse_qsl

import lmdb

from dhtcart.backends.base import BackendContext, Record, check_expected, stored_record
from dhtcart.backends.fencing import (
    MAX_UPDATE_TRIES,
    Change,
    Entry,
    FencedBackend,
    Mark,
    Pending,
    Update,
    apply_changes,
    change_called_back,
    decode_mark,
    encode_mark,
    stamp_of,
    write_life,
)
from dhtcart.backends.ownership import BACKUP, OWNED, TABLE_SHIFT, Ownership
from dhtcart.errors import (
    CorruptData,
    DHTCartError,
    ForkedError,
    InvalidInput,
    LeaseExpired,
    ShardFull,
    ShardUnavailable,
    StoreClosed,
    StoreReadOnly,
    WriteInFlight,
)

__all__ = ["DEFAULT_MAP_SIZE", "Durability", "LMDBBackend"]

Durability = Literal["process", "power"]
DEFAULT_MAP_SIZE = 64 * 1024 * 1024
_MAX_MAP_SIZE = 1 << 40
_SCAN_BATCH = 1024
_WRITE_ATTEMPTS = 64  # map growths and adoptions of another process's size, per write
_READ_ATTEMPTS = 8
#: seconds between two looks, by a writer, at whether the shard's data file was deleted under it
_REMOVED_CHECK_EVERY = 1.0
_T = TypeVar("_T")

#: what LMDB and the filesystem raise; :func:`_medium_error` turns each into dhtcart's. dhtcart's
#: own errors are let through first wherever this is caught: ShardUnavailable is an OSError too
_MEDIUM = (lmdb.Error, OSError)
_flock, _LOCK_EX, _LOCK_UN = fcntl.flock, fcntl.LOCK_EX, fcntl.LOCK_UN
#: errno values of a medium that has no room for a write
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: errno values of a medium that refuses changes
_REFUSED = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
#: an EIO of a write counts as a full disk when the filesystem has less room than this left
_FULL_BELOW = 1 << 20
#: LMDB errors of a damaged file
_DAMAGED = (lmdb.CorruptedError, lmdb.InvalidError, lmdb.PageNotFoundError)
#: errno by message, for versions of py-lmdb whose exceptions carry no ``code``
_ERRNO_BY_TEXT = {os.strerror(code): code for code in errno.errorcode}

# Ownership keys: 0xff x 8 then a name, so they sort after every record key
# and a scan that stops past its range never reads them as records.
_META = b"\xff" * 8
_GEN = _META + b"gen"  # 8-byte counter, +1 at every ownership change
_OWN = _META + b"own"  # Ownership.to_json()
_LEASE = _META + b"lease"  # 8-byte big-endian milliseconds since the epoch: the lease to serve reads
# Pending (decided, not committed) writes of a primary: 0xfe then the 8-byte key, so they
# sort after every record key and before the ownership keys, and no record scan reads them.
_PENDING = b"\xfe"
# Marks (lives and graves, a store that keeps copies: fencing.Mark): 0xfd then the 8-byte key,
# 16 bytes (life, version) each, sorting between the records and the pending writes.
_MARK = b"\xfd"
_UNREAD = object()
#: records exported as they are stored: 8-byte big-endian key, 8-byte big-endian version + value
_COPY_FORMAT = "lmdb-v1"

_MAX_KEY = (1 << 63) - 1

_forks = 0  # how many times this process is a fork's child (checked instead of getpid per call)


def _errno(exc: BaseException) -> int:
    """The errno behind an LMDB or filesystem error (0 when there is none)."""
    if isinstance(exc, OSError):
        return exc.errno or 0
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code:
        return code
    return _ERRNO_BY_TEXT.get(str(exc).rpartition(": ")[2], 0)


def _no_room(path: str) -> bool:
    """Whether the filesystem holding ``path`` has (almost) no room left."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _FULL_BELOW


def _refuses_changes(exc: BaseException) -> bool:
    """Whether ``exc`` says that the medium may be read but not changed."""
    return isinstance(exc, lmdb.ReadonlyError) or _errno(exc) in _REFUSED


def _medium_error(exc: BaseException, shard: str, path: str, *, write: bool) -> DHTCartError:
    """The one translation of LMDB's and the filesystem's errors into dhtcart's (see the module doc).

    ``write`` says whether the operation may change the medium (a write
    transaction, opening or creating the environment, a flush, a removal).
    """
    reason = str(exc) or type(exc).__name__
    code = _errno(exc)
    if isinstance(exc, lmdb.ReadonlyError) or (write and code in _REFUSED):
        return StoreReadOnly(
            f"shard {shard!r}: its directory {path} is read-only ({reason}): it can be read, not changed;"
            " nothing was changed"
        )
    if (
        isinstance(exc, lmdb.MapFullError | lmdb.DiskError)
        or code in _NO_ROOM
        or (write and code == errno.EIO and _no_room(path))
    ):
        return ShardFull(
            shard,
            path,
            f"no room left on its medium ({reason}): the write was not applied; reads go on,"
            " and writes work again once space is freed",
        )
    if isinstance(exc, _DAMAGED):
        return CorruptData(f"shard {shard!r} at {path}: the LMDB file is damaged ({reason})")
    return ShardUnavailable(shard, path, reason)


class _MediumErrors:
    """:func:`_medium_error` applied to a block: ``with errors:`` lets dhtcart's own errors through
    and turns LMDB's and the filesystem's into dhtcart's (as httpx's ``map_exceptions`` does).

    The transaction paths call :meth:`reraise` from a plain ``except`` instead, which costs
    nothing when nothing is raised (a ``with`` costs a tenth of a microsecond per call).
    """

    __slots__ = ("path", "shard", "write")

    def __init__(self, shard: str, path: str, *, write: bool) -> None:
        self.shard = shard
        self.path = path
        self.write = write

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            self.reraise(exc)

    def reraise(self, exc: BaseException) -> None:
        """Raise dhtcart's error for ``exc`` if it is the medium's; return if it is not (the caller re-raises it)."""
        if isinstance(exc, _MEDIUM) and not isinstance(exc, DHTCartError):  # ShardUnavailable is an OSError too
            raise _medium_error(exc, self.shard, self.path, write=self.write) from exc


def _can_map(size: int) -> bool:
    """Whether this process can map ``size`` more bytes of address space now.

    Growing the map unmaps the old one before it maps the new: if that fails
    (an address-space limit, ``RLIMIT_AS``), LMDB is left without a map and the
    environment can no longer even read. So the new size is tried first, with
    a mapping that costs nothing (no access, no reservation).
    """
    try:
        probe = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _NORESERVE, prot=0)
    except (OSError, ValueError, OverflowError):
        return False
    probe.close()
    return True


_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0)


def _lock_file_size(max_readers: int) -> int:
    """At least what LMDB makes ``lock.mdb`` for ``max_readers`` readers (a header and one
    cache-line-aligned slot per reader; 128 bytes covers every cache line LMDB builds for)."""
    return -(-(4096 + 128 * max_readers) // 4096) * 4096


def _reserve_lock_file(path: str, max_readers: int) -> None:
    """Make ``lock.mdb`` with its disk blocks allocated, if it does not exist yet.

    LMDB sizes a new lock file with ``ftruncate`` (no blocks) and writes its
    reader table through a memory map: on a full filesystem the first touch of
    a page without blocks is ``SIGBUS``, which kills the process. A file made
    here has every block; it is built under another name and linked into place,
    so another process never sees it half made (if one made ``lock.mdb`` first,
    its file is kept). No room raises ``OSError(ENOSPC)``, nothing left behind.
    """
    lock = os.path.join(path, "lock.mdb")
    if os.path.exists(lock):
        return
    tmp = f"{lock}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.posix_fallocate(fd, 0, _lock_file_size(max_readers))
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile: LMDB uses that one
            os.link(tmp, lock)
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _data_file(path: str) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of ``path``'s ``data.mdb``, or ``None`` if there is none."""
    try:
        st = os.stat(os.path.join(path, "data.mdb"))
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _after_fork() -> None:
    global _forks
    _forks += 1
    _ENVS.clear()  # the parent's environments must not be shared with the child
    for env in list(_EVERY_ENV):  # nor their data.mdb descriptors, whose flock is the writers' queue
        with contextlib.suppress(OSError):
            env.release_descriptor()


class _Env:
    """One LMDB environment of this process, shared by every backend opened on its directory.

    Opened for writing when the medium allows it, else read-only (see the
    module doc); ``data`` identifies the ``data.mdb`` it has open.
    """

    def __init__(self, path: str, durability: Durability, map_size: int, max_readers: int) -> None:
        options: dict[str, Any] = {"map_size": map_size, "subdir": True, "max_readers": max_readers, "max_dbs": 0}
        #: the medium refuses changes: reads only
        self.readonly = False
        #: readers are registered in LMDB's lock table (not so for a read-only lock file)
        self.locked = True
        try:
            _reserve_lock_file(path, max_readers)
            self.env = lmdb.open(
                path,
                sync=durability == "power",
                metasync=durability == "power",
                readahead=False,
                **options,
            )
        except _MEDIUM as exc:
            if not _refuses_changes(exc):
                raise
            self.readonly = True
            try:  # the lock file may still be writable: readers stay registered
                self.env = lmdb.open(path, readonly=True, **options)
                self.locked = os.access(os.path.join(path, "lock.mdb"), os.W_OK)
            except lmdb.Error as again:
                if not _refuses_changes(again):
                    raise
                self.env = lmdb.open(path, readonly=True, lock=False, **options)
                self.locked = False
        try:
            if self.locked:
                self.env.reader_check()  # clear slots left by killed processes
            # data.mdb, held open to tell when the directory is deleted (or the file replaced) under
            # us, and the writers' queue (its flock); for writing where the environment writes, as a
            # flock emulated with a byte-range lock (NFS) needs
            mode = os.O_RDONLY if self.readonly else os.O_RDWR
            self.data_fd = os.open(os.path.join(path, "data.mdb"), mode | os.O_CLOEXEC)
        except BaseException:
            self.env.close()
            raise
        st = os.fstat(self.data_fd)
        #: ``(st_dev, st_ino)`` of the data.mdb this environment has open
        self.data = (st.st_dev, st.st_ino)
        self.next_check = 0.0  # when removed() next looks at data.mdb
        self.gone = False  # data.mdb was seen unlinked
        self.path = path
        self.lock = threading.Lock()
        #: the thread running a ``modify``'s change (holding ``lock`` and the write transaction), else 0
        self.changing = 0
        self.users = 0
        _EVERY_ENV.add(self)
        self.durability = durability
        self.gen: object = _UNREAD  # generation of the cached ownership record (None: no record)
        self.own = Ownership.nothing()
        self.tid = -1  # a read snapshot (LMDB transaction id) in which ``gen`` was read
        self.slices: dict[int, str] = self.own.segments.slices  # the write path's lookup
        self.fast: set[int] = self.own.segments.fast  # the read path's: slices readable without a check
        self.leased = False  # whether the cached record is leased (reads then check the lease)
        self.lease_ms = 0  # the lease to serve reads, as of snapshot ``tid`` (a leased record only)
        #: the record the write transaction under way stores, and its generation: cached once it commits
        self.staged: tuple[Ownership, bytes] | None = None

    def removed(self) -> bool:
        """Whether data.mdb was unlinked since it was opened (its directory deleted, or the file
        replaced), so that a write would go to a file nobody opens again. Looked at once a
        second at most (an ``fstat`` costs as much as a third of a write), and once seen, for
        good (an unlinked file never comes back); call with ``lock`` held."""
        if self.gone:
            return True
        now = time.monotonic()
        if now < self.next_check:
            return False
        self.next_check = now + _REMOVED_CHECK_EVERY
        self.gone = os.fstat(self.data_fd).st_nlink == 0
        return self.gone

    def close(self) -> None:
        """Close the environment and the descriptor; again is a no-op (each backend of a forked
        child closes its environment)."""
        self.env.close()
        self.release_descriptor()

    def release_descriptor(self) -> None:
        """Close ``data_fd`` once. A forked child calls this for every environment it inherited
        at once: the ``flock`` of the writers' queue belongs to the open file, which the child
        shares, and would otherwise outlive a parent killed while it held it."""
        fd, self.data_fd = self.data_fd, -1
        if fd >= 0:
            os.close(fd)

    def load_ownership(self, txn: lmdb.Transaction, gen: object) -> Ownership:
        """The record as of ``txn``, whose generation key reads ``gen`` (call with ``lock`` held);
        :class:`~dhtcart.errors.CorruptData` if it does not parse."""
        if gen != self.gen:
            raw = txn.get(_OWN)
            try:
                own = Ownership.nothing() if raw is None else Ownership.from_json(bytes(raw))
            except CorruptData as exc:
                raise CorruptData(f"the shard at {self.path}: {exc}") from exc
            self.cache(own, gen)
        return self.own

    def cache(self, own: Ownership, gen: object) -> None:
        """Keep ``own`` as the record of generation ``gen``, with the tables the hot paths read."""
        self.own, self.slices, self.fast, self.leased = own, own.segments.slices, own.segments.fast, own.leased
        self.gen = gen


_ENVS: dict[tuple[int, int], _Env] = {}
_EVERY_ENV: weakref.WeakSet[_Env] = weakref.WeakSet()  # every one made in this process, open or not
_ENVS_LOCK = threading.Lock()
os.register_at_fork(after_in_child=_after_fork)


def _kb(key: int) -> bytes:
    return key.to_bytes(8, "big")


def _unpack(raw: bytes, key: int) -> Record:
    if len(raw) < 8:
        raise _short_record(key, raw)
    return stored_record(raw)


def _short_record(key: int, raw: bytes | memoryview) -> CorruptData:
    return CorruptData(f"key {key}: stored record of {len(raw)} bytes is too short to hold its 8-byte version")


def _version(key: int, raw: bytes | memoryview | None) -> int:
    """The version of a stored record (0: none)."""
    if raw is None:
        return 0
    if len(raw) < 8:
        raise _short_record(key, raw)
    return int.from_bytes(raw[:8], "big")


def _delete_range(txn: lmdb.Transaction, lo: int, hi: int) -> int:
    """Delete every record ``lo < key <= hi`` in ``txn`` (and any pending write there); return how many records."""
    cur = txn.cursor()
    n = 0
    hi_kb = _kb(hi)
    if cur.set_range(_kb(lo + 1)):
        while True:
            kb = bytes(cur.key())  # b"" once the cursor has run off the end
            if len(kb) != 8 or kb > hi_kb:
                break
            cur.delete()  # and moves to the next record
            n += 1
    _delete_prefixed(cur, _PENDING, lo, hi)
    _delete_prefixed(cur, _MARK, lo, hi)
    return n


def _delete_prefixed(cur: lmdb.Cursor, prefix: bytes, lo: int, hi: int) -> None:
    """Delete every entry ``prefix + key`` with ``lo < key <= hi`` (pending writes, marks)."""
    hi_kb = _kb(hi)
    if cur.set_range(prefix + _kb(lo + 1)):
        while True:
            kb = bytes(cur.key())  # b"" once the cursor has run off the end
            if len(kb) != 9 or kb[:1] != prefix or kb[1:] > hi_kb:
                break
            cur.delete()  # and moves to the next entry


def _prefixed(txn: lmdb.Transaction, prefix: bytes, lo: int, hi: int) -> list[tuple[int, bytes]]:
    """``(key, value)`` of every entry ``prefix + key`` with ``lo < key <= hi`` in ``txn``."""
    out: list[tuple[int, bytes]] = []
    cur = txn.cursor()
    if not cur.set_range(prefix + _kb(lo + 1)):
        return out
    hi_kb = _kb(hi)
    for key, raw in cur:
        kb = bytes(key)
        if len(kb) != 9 or kb[:1] != prefix or kb[1:] > hi_kb:
            break
        out.append((int.from_bytes(kb[1:], "big"), bytes(raw)))
    return out


def _pendings(txn: lmdb.Transaction, lo: int, hi: int) -> list[tuple[int, bytes]]:
    """``(key, encoded Pending)`` of every pending write ``lo < key <= hi`` in ``txn``."""
    return _prefixed(txn, _PENDING, lo, hi)


def _mark(raw: bytes | memoryview | None) -> Mark | None:
    """A :data:`~dhtcart.backends.fencing.Mark` as stored (``None``: none)."""
    return None if raw is None else decode_mark(raw)


def _stamp(txn: lmdb.Transaction, kb: bytes) -> tuple[tuple[int, int], Mark | None]:
    """The stamp of what ``txn`` holds for the key ``kb`` (record and mark), and the mark."""
    raw = txn.get(kb)
    mark = _mark(txn.get(_MARK + kb))
    return stamp_of(None if raw is None else int.from_bytes(raw[:8], "big"), mark), mark


def _write_entry(
    txn: lmdb.Transaction, kb: bytes, life: int, version: int, value: bytes | None, mark: Mark | None
) -> None:
    """Hold the write of stamp ``(life, version)``: its record and mark, or its grave (``value``
    None); ``mark`` is the key's mark now (only a mark that changes is written)."""
    if value is None:
        txn.delete(kb)
        txn.put(_MARK + kb, encode_mark(life, version))
        return
    txn.put(kb, version.to_bytes(8, "big") + value)
    if life:
        if mark != (life, 0):
            txn.put(_MARK + kb, encode_mark(life, 0))
    elif mark is not None:
        txn.delete(_MARK + kb)


class LMDBBackend(FencedBackend):
    """Records in one LMDB environment under ``path``.

    >>> import tempfile
    >>> with LMDBBackend(tempfile.mkdtemp()) as b:
    ...     b.put(1, b"a"), b.put(1, b"b", expected_version=1), b.get(1)
    (1, 2, Record(version=2, value=b'b'))
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "process",
        map_size: int = DEFAULT_MAP_SIZE,
        max_readers: int = 1024,
        fenced: bool = False,
        name: str | None = None,
        create: bool = True,
    ) -> None:
        if durability not in ("process", "power"):
            raise InvalidInput("durability", f"must be 'process' or 'power', not {durability!r}")
        if isinstance(map_size, bool) or not isinstance(map_size, int) or map_size < 4096:
            raise InvalidInput("map_size", f"must be an int >= 4096, not {map_size!r}")
        self.path = os.fspath(path)
        #: the shard's name in messages (the store's name for it, else the directory's)
        self.name = name if name is not None else os.path.basename(os.path.normpath(self.path))
        self.durability: Durability = durability
        self.fast_local = durability == "process"  # "power" waits for a disk flush per write
        self.copy_format = _COPY_FORMAT
        self.fenced = fenced
        self.url = f"lmdb://{os.path.abspath(self.path)}"
        if not create and not os.path.isfile(os.path.join(self.path, "data.mdb")):
            raise ShardUnavailable(
                self.name, self.url, "its LMDB environment is gone (the directory was deleted, or its disk lost)"
            )
        self._closed = True  # until the environment is open
        self._reading = _MediumErrors(self.name, self.path, write=False)
        self._writing = _MediumErrors(self.name, self.path, write=True)
        with self._writing:
            shared = self._open_shared(durability, map_size, max_readers)
        self._shared: _Env = shared
        self._env = shared.env
        self._lock = shared.lock
        self._forks = _forks
        self._closed = False

    def _open_shared(self, durability: Durability, map_size: int, max_readers: int) -> _Env:
        """This process's environment of the directory, opened now or shared (counted as one more user)."""
        for attempt in range(3):
            try:
                os.makedirs(self.path, exist_ok=True)
                st = os.stat(self.path)
                self._id = (st.st_dev, st.st_ino)
                with _ENVS_LOCK:
                    shared = _ENVS.get(self._id)
                    if shared is not None and shared.data != _data_file(self.path):
                        # the directory now holds other files than the environment has open (they
                        # were replaced, or a deleted directory's inode came back): not theirs
                        del _ENVS[self._id]
                        shared = None
                    if shared is None:
                        shared = _ENVS[self._id] = _Env(self.path, durability, map_size, max_readers)
                    elif shared.durability != durability and not shared.readonly:
                        raise InvalidInput(
                            "durability",
                            f"{self.path} is already open in this process with durability={shared.durability!r}",
                        )
                    shared.users += 1
                return shared
            except (lmdb.Error, FileNotFoundError):
                # the directory was removed while we opened it (a shard leaving while another
                # process opens it by an older membership): make it again
                if attempt == 2 or os.path.isdir(self.path):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def from_url(cls, url: str, *, context: BackendContext | None = None, **options: Any) -> LMDBBackend:
        """Open ``lmdb:///abs/dir`` or ``lmdb://rel/dir``, with ``?durability=power&map_size=N``.

        A relative directory is taken inside ``context.base_dir`` (the store's
        directory) when there is one; ``context.durability`` applies unless the
        URL or ``options`` say otherwise.
        """
        if not isinstance(url, str) or not url.startswith("lmdb://"):
            raise InvalidInput("url", f"not an lmdb:// URL: {url!r}")
        rest = url[len("lmdb://") :]
        path, _, query = rest.partition("?")
        if not path:
            raise InvalidInput("url", f"lmdb URL {url!r} names no directory")
        try:
            pairs = parse_qsl(query, strict_parsing=bool(query))
        except ValueError:
            raise InvalidInput("url", f"malformed query in lmdb URL {url!r}") from None
        for k, v in pairs:
            if k == "durability":
                options.setdefault("durability", v)
            elif k == "map_size":
                if not v.isdigit():
                    raise InvalidInput("url", f"map_size must be a whole number of bytes, not {v!r}")
                options.setdefault("map_size", int(v))
            else:
                raise InvalidInput("url", f"unknown lmdb URL option {k!r} (known: durability, map_size)")
        if context is not None:
            if context.base_dir is not None and not os.path.isabs(path):
                path = str(Path(context.base_dir) / path)
            options.setdefault("durability", context.durability)
            options.setdefault("fenced", context.fenced)
            options.setdefault("name", context.name)
            options.setdefault("create", context.create)
        return cls(path, **options)

    @property
    def read_only(self) -> bool:
        """Whether the shard was opened read-only because its medium refuses changes (see the module doc)."""
        return self._shared.readonly

    # -- plumbing -------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise StoreClosed(f"{self!r} is closed")
        if self._forks != _forks:
            raise ForkedError(
                f"{self!r} was opened before fork() and used in the child; open the store again in the child"
            )

    def _lease_expired(self, key: int) -> NoReturn:
        """A leased record's read while its lease does not run: refuse it."""
        own = self._shared.own
        raise LeaseExpired(key, own.epoch, own.segments.lookup(key)[0])

    def _fence(self, txn: lmdb.Transaction, key: int, write: bool) -> None:
        """Raise Moved unless the ownership record lets this operation through."""
        self._shared.load_ownership(txn, txn.get(_GEN)).check(key, write)

    def _fence_write(self, txn: lmdb.Transaction, key: int, kb: bytes) -> None:
        """:meth:`_fence` of a plain write, with the reads' fast table (the write path); then
        :class:`~dhtcart.errors.WriteInFlight` if a replicated write of the key is pending (a
        handle on the replicated view decided it, during a change of the number of copies:
        the caller finishes it first, so that the two never interleave on one record)."""
        shared = self._shared
        gen = txn.get(_GEN)
        if gen != shared.gen:
            shared.load_ownership(txn, gen)
        if shared.slices.get(key >> TABLE_SHIFT) != OWNED:  # not cached, or not owned throughout
            shared.own.check(key, True)
        waiting = txn.get(_PENDING + kb)
        if waiting is not None:
            raise WriteInFlight(key, Pending.decode(key, bytes(waiting), self._backups_of(shared.own, key)))

    def _wait(self) -> None:
        """Take the lock another thread holds: wait for it, unless this thread holds it, in a change."""
        if self._shared.changing == threading.get_ident():
            raise change_called_back(self.name)
        self._lock.acquire()

    def _locked(self) -> threading.Lock:
        """The lock, for a ``with`` block off the hot path (see :meth:`_wait`)."""
        if self._shared.changing == threading.get_ident():
            raise change_called_back(self.name)
        return self._lock

    def _write(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(txn, *args)`` in a write transaction, growing the map when it is full."""
        if not self._lock.acquire(False):  # cheaper than a with-block, and a change calling back is found
            self._wait()
        try:
            shared = self._shared
            if self._closed or self._forks != _forks:
                self._check()
            if shared.readonly:
                raise StoreReadOnly(
                    f"shard {self.name!r}: its directory {self.path} is read-only (opened for reading only):"
                    " it can be read, not changed; nothing was changed"
                )
            try:
                # the processes' writers queue here first, so LMDB's writer mutex never has waiters:
                # see "Writers of several processes" in the module doc
                _flock(shared.data_fd, _LOCK_EX)
            except _MEDIUM as exc:
                self._writing.reraise(exc)
                raise
            try:
                for _ in range(_WRITE_ATTEMPTS):
                    try:
                        txn = self._env.begin(write=True)
                    except lmdb.MapResizedError:  # another process grew the map: adopt its size
                        self._env.set_mapsize(0)
                        continue
                    shared.staged = None
                    try:
                        result = fn(txn, *args)
                        # after the fence (a redirect comes first); looked at once a second at most
                        if (shared.gone or time.monotonic() >= shared.next_check) and shared.removed():
                            raise ShardUnavailable(
                                self.name,
                                self.path,
                                "its data file was deleted while open (the shard's directory removed, or"
                                " the file replaced): the write was not applied, as it would be lost",
                            )
                        txn.commit()
                        if shared.staged is not None:  # an ownership record this transaction stored
                            shared.cache(*shared.staged)
                            shared.staged, shared.tid = None, -1
                        return result
                    except lmdb.MapFullError:
                        txn.abort()
                        self._grow()
                    except lmdb.MapResizedError:
                        txn.abort()
                        self._env.set_mapsize(0)  # another process grew it: adopt its size
                    except BaseException:
                        txn.abort()
                        raise
            except _MEDIUM as exc:  # the mapping, without a context manager's cost (the hot path)
                self._writing.reraise(exc)
                raise
            finally:
                try:  # noqa: SIM105  # not contextlib.suppress: the hot path
                    _flock(shared.data_fd, _LOCK_UN)
                except OSError:  # the descriptor is gone (closed by a fork's child hook): so is its lock
                    pass
        finally:
            self._lock.release()
        raise ShardUnavailable(
            self.name, self.path, f"a write found the map full or resized {_WRITE_ATTEMPTS} times in a row"
        )

    def _grow(self) -> None:
        """Double the map after a write found it full, or raise ShardFull when it may not grow."""
        # slots of killed readers pin old pages: free them before growing
        if self._shared.locked:
            self._env.reader_check()
        size = self._env.info()["map_size"]
        if size >= _MAX_MAP_SIZE:
            raise ShardFull(
                self.name,
                self.path,
                f"the LMDB map is full at its largest size ({size} bytes): the write was not applied;"
                " reads go on, and writes that fit work again once records are deleted",
            )
        grown = min(size * 2, _MAX_MAP_SIZE)
        if not _can_map(grown):
            raise ShardFull(
                self.name,
                self.path,
                f"the LMDB map is full and this process cannot map {grown} bytes (an address-space limit):"
                " the write was not applied; reads go on",
            )
        try:
            self._env.set_mapsize(grown)
        except lmdb.Error as exc:  # the probe passed, then the map failed: the environment has no map
            raise ShardFull(
                self.name, self.path, f"the LMDB map is full and could not grow ({exc}): the write was not applied"
            ) from exc

    def _read(self, fn: Callable[[lmdb.Transaction], _T]) -> _T:
        if not self._lock.acquire(False):  # cheaper than a with-block, and a change calling back is found
            self._wait()
        try:
            self._check()
            try:
                for _ in range(_READ_ATTEMPTS):
                    try:
                        with self._env.begin() as txn:
                            return fn(txn)
                    except lmdb.MapResizedError:
                        self._env.set_mapsize(0)
            except _MEDIUM as exc:
                self._reading.reraise(exc)
                raise
        finally:
            self._lock.release()
        raise ShardUnavailable(self.name, self.path, f"a read found the map resized {_READ_ATTEMPTS} times in a row")

    # -- operations -------------------------------------------------------------

    def get(self, key: int) -> Record | None:
        kb = key.to_bytes(8, "big")
        if not self._lock.acquire(False):  # cheaper than a with-block, and a change calling back is found
            self._wait()
        try:
            if self._closed or self._forks != _forks:
                self._check()
            try:
                try:
                    txn = self._env.begin()
                except lmdb.MapResizedError:
                    self._env.set_mapsize(0)
                    txn = self._env.begin()
                try:
                    if self.fenced:  # the fence, inline: this is the hot path
                        shared = self._shared
                        tid = txn.id()
                        if tid != shared.tid:  # another snapshot than the one last checked: read the generation
                            own = shared.load_ownership(txn, txn.get(_GEN))
                            if own.leased:  # and the lease (a renewal is a write: a new snapshot)
                                lease = txn.get(_LEASE)
                                shared.lease_ms = 0 if lease is None else int.from_bytes(lease, "big")
                            shared.tid = tid
                        if key >> TABLE_SHIFT not in shared.fast:  # a slice not wholly owned or primary
                            self._fence(txn, key, False)
                        if shared.leased and time.time() * 1000 >= shared.lease_ms:
                            self._lease_expired(key)
                    raw = txn.get(kb)
                finally:
                    txn.abort()
            except _MEDIUM as exc:  # the hot path: the mapping without a context manager's cost
                self._reading.reraise(exc)
                raise
        finally:
            self._lock.release()
        if raw is None:
            return None
        if len(raw) < 8:
            raise _short_record(key, raw)
        return stored_record(raw)

    def put(self, key: int, value: bytes, expected_version: int | None = None) -> int:
        return self._write(self._put, key, value, expected_version)

    def _put(self, txn: lmdb.Transaction, key: int, value: bytes, expected_version: int | None) -> int:
        kb = key.to_bytes(8, "big")
        if self.fenced:
            self._fence_write(txn, key, kb)
        current = _version(key, txn.get(kb))
        check_expected(key, expected_version, current)
        current += 1
        txn.put(kb, current.to_bytes(8, "big") + value)
        return current

    def modify(self, key: int, change: Update, tries: int = MAX_UPDATE_TRIES) -> Record | None:
        """One write transaction: the fence, the read, ``change``, the write (see :class:`FencedBackend`).

        ``change`` runs while this process holds the shard's LMDB writer lock,
        which every process's writes to the shard wait for: keep it quick.
        """
        kb = _kb(key)
        fenced = self.fenced
        shared = self._shared

        first: list[Any] = []  # (raw, value) of the change's run, for a retry of the transaction

        def op(txn: lmdb.Transaction) -> Record | None:
            if fenced:
                self._fence_write(txn, key, kb)
            raw = txn.get(kb)
            old = None if raw is None else _unpack(raw, key)  # type: ignore[arg-type]  # bytes (buffers=False)
            if first and first[0] == raw:  # the map grew and the transaction runs again: change ran once
                value = first[1]
            else:
                shared.changing = threading.get_ident()
                try:
                    value = change(old)
                finally:
                    shared.changing = 0
                first[:] = (raw, value)
            if value is None:
                return old
            version = (old.version if old is not None else 0) + 1
            txn.put(kb, version.to_bytes(8, "big") + value)
            return Record(version, value)

        return self._write(op)

    def delete(self, key: int, expected_version: int | None = None) -> bool:
        kb = _kb(key)
        fenced = self.fenced

        def op(txn: lmdb.Transaction) -> bool:
            if fenced:
                self._fence_write(txn, key, kb)
            raw = txn.get(kb)
            if raw is not None and len(raw) < 8 and expected_version is None:
                return bool(txn.delete(kb))  # an unconditional delete removes a damaged record too
            check_expected(key, expected_version, _version(key, raw))
            return raw is not None and bool(txn.delete(kb))

        return self._write(op)

    def scan(self, lo: int, hi: int, limit: int | None = None) -> Iterator[tuple[int, Record]]:
        remaining = limit
        while remaining is None or remaining > 0:
            n = _SCAN_BATCH if remaining is None else min(_SCAN_BATCH, remaining)
            start = lo + 1

            def op(txn: lmdb.Transaction, start: int = start, n: int = n) -> list[tuple[int, Record]]:
                out: list[tuple[int, Record]] = []
                cur = txn.cursor()
                if not cur.set_range(_kb(start)):
                    return out
                for kb, raw in cur:
                    k = int.from_bytes(kb, "big")
                    if k > hi:
                        break
                    out.append((k, _unpack(raw, k)))  # type: ignore[arg-type]  # bytes: buffers=False
                    if len(out) >= n:
                        break
                return out

            batch: list[tuple[int, Record]] = self._read(op)
            yield from batch
            if len(batch) < n:
                return
            lo = batch[-1][0]
            if remaining is not None:
                remaining -= len(batch)

    def count(self) -> int:
        def op(txn: lmdb.Transaction) -> int:
            entries: int = txn.stat(self._env.open_db())["entries"]
            meta = sum(txn.get(k) is not None for k in (_GEN, _OWN, _LEASE))
            return entries - meta - len(_pendings(txn, -1, _MAX_KEY)) - len(_prefixed(txn, _MARK, -1, _MAX_KEY))

        return self._read(op)

    # -- ownership ----------------------------------------------------------------------

    def ownership(self) -> Ownership:
        return self._read(lambda txn: self._shared.load_ownership(txn, txn.get(_GEN)))

    def _store_ownership(self, txn: lmdb.Transaction, own: Ownership) -> None:
        gen = txn.get(_GEN)
        nxt = (int.from_bytes(gen, "big") + 1 if gen else 1).to_bytes(8, "big")
        txn.put(_OWN, own.to_json())
        txn.put(_GEN, nxt)
        # cached (it spares a parse) by _write once the transaction has committed: cached now, a
        # transaction that then aborted would leave this process a record that never was, under
        # a generation another process may commit next with a record of its own
        self._shared.staged = (own, nxt)

    def update_ownership(
        self,
        token: int,
        epoch: int,
        changes: Sequence[Change] = (),
        expect: str | None = None,
        *,
        leased: bool | None = None,
    ) -> Ownership:
        def op(txn: lmdb.Transaction) -> Ownership:
            current = self._shared.load_ownership(txn, txn.get(_GEN))
            new = apply_changes(current, token, epoch, changes, expect, leased)
            if new != current:
                self._store_ownership(txn, new)
            return new

        return self._write(op)

    def claim(self, ownership: Ownership, *, force: bool = False) -> None:
        def op(txn: lmdb.Transaction) -> None:
            if not force:
                self._shared.load_ownership(txn, txn.get(_GEN)).check_token(ownership.token)
            self._store_ownership(txn, ownership)

        self._write(op)

    def import_ranges(
        self, token: int, ranges: Sequence[tuple[int, int]], records: Sequence[tuple[int, Record]]
    ) -> int:
        return self.import_encoded(
            token, ranges, [(_kb(k), r.version.to_bytes(8, "big") + r.value) for k, r in records]
        )

    def export_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[tuple[bytes, bytes]]:
        def op(txn: lmdb.Transaction) -> list[tuple[bytes, bytes]]:
            out: list[tuple[bytes, bytes]] = []
            cur = txn.cursor()
            for lo, hi in ranges:
                hi_kb = _kb(hi)
                if not cur.set_range(_kb(lo + 1)):
                    continue
                for kb, raw in cur:
                    if len(kb) != 8 or kb > hi_kb:  # type: ignore[operator]  # bytes: buffers=False
                        break
                    out.append((kb, raw))  # type: ignore[arg-type]  # bytes: buffers=False
            return out

        return self._read(op)

    def _check_unserved(self, txn: lmdb.Transaction, token: int, ranges: Sequence[tuple[int, int]], what: str) -> None:
        """A migration's fence, in its write transaction: ``token`` is not stale, no range is served."""
        own = self._shared.load_ownership(txn, txn.get(_GEN))
        own.check_token(token)
        for lo, hi in ranges:
            own.check_unserved(lo, hi, what)

    def import_encoded(
        self, token: int, ranges: Sequence[tuple[int, int]], items: Sequence[tuple[bytes, bytes]]
    ) -> int:
        rows = items

        def op(txn: lmdb.Transaction) -> int:
            self._check_unserved(txn, token, ranges, "import")
            for lo, hi in ranges:
                _delete_range(txn, lo, hi)
            if rows:
                txn.cursor().putmulti(rows)
            return len(rows)

        return self._write(op)

    def drop_ranges(self, token: int, ranges: Sequence[tuple[int, int]]) -> int:
        def op(txn: lmdb.Transaction) -> int:
            self._check_unserved(txn, token, ranges, "drop")
            return sum(_delete_range(txn, lo, hi) for lo, hi in ranges)

        return self._write(op)

    def boundary(self, lo: int, hi: int, n: int) -> tuple[int, int]:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidInput("n", f"boundary counts keys from 1, got {n!r}")

        def op(txn: lmdb.Transaction) -> tuple[int, int]:
            cur = txn.cursor()
            if not cur.set_range(_kb(lo + 1)):
                return hi, 0
            hi_kb = _kb(hi)
            found = 0
            for key in cur.iternext(keys=True, values=False):
                kb = bytes(key)
                if len(kb) != 8 or kb > hi_kb:
                    break
                found += 1
                if found == n:
                    return int.from_bytes(kb, "big"), n
            return hi, found

        return self._read(op)

    # -- replicated writes and leases -----------------------------------------------------

    def _own_now(self, txn: lmdb.Transaction) -> Ownership:
        return self._shared.load_ownership(txn, txn.get(_GEN))

    def _backups_of(self, own: Ownership, key: int) -> str:
        state, peer = own.segments.lookup(key)
        return "" if state == BACKUP else peer

    def decide(self, key: int, value: bytes | None, expected_version: int | None = None) -> Pending:
        kb = _kb(key)
        fenced = self.fenced

        def op(txn: lmdb.Transaction) -> Pending:
            backups = self._own_now(txn).check_decide(key) if fenced else ""
            waiting = txn.get(_PENDING + kb)
            if waiting is not None:
                raise WriteInFlight(key, Pending.decode(key, bytes(waiting), backups))
            raw = txn.get(kb)
            current = 0 if raw is None else int.from_bytes(raw[:8], "big")
            check_expected(key, expected_version, current)
            if value is None and raw is None:
                return Pending(key, 0, 0, None, backups)  # nothing to delete: nothing to replicate
            life = write_life(None if raw is None else current, _mark(txn.get(_MARK + kb)))
            decided = Pending(key, current, current + 1, value, backups, life)
            txn.put(_PENDING + kb, decided.encode())
            return decided

        return self._write(op)

    def pending(self, key: int) -> Pending | None:
        def op(txn: lmdb.Transaction) -> Pending | None:
            raw = txn.get(_PENDING + _kb(key))
            if raw is None:
                return None
            return Pending.decode(key, bytes(raw), self._backups_of(self._own_now(txn), key))

        return self._read(op)

    def scan_pending(self, lo: int, hi: int) -> list[Pending]:
        def op(txn: lmdb.Transaction) -> list[Pending]:
            own = self._own_now(txn)
            return [Pending.decode(k, raw, self._backups_of(own, k)) for k, raw in _pendings(txn, lo, hi)]

        return self._read(op)

    def commit(self, key: int, version: int, life: int) -> bool:
        kb = _kb(key)

        def op(txn: lmdb.Transaction) -> bool:
            raw = txn.get(_PENDING + kb)
            if raw is None:
                return False
            waiting = Pending.decode(key, bytes(raw), "")
            if waiting.version != version or waiting.life != life:
                return False
            txn.delete(_PENDING + kb)
            _write_entry(txn, kb, life, version, waiting.value, _mark(txn.get(_MARK + kb)))
            return True

        return self._write(op)

    def apply(self, primary: str, pending: Pending) -> None:
        key = pending.key
        kb = _kb(key)
        fenced = self.fenced

        def op(txn: lmdb.Transaction) -> None:
            if fenced:
                self._own_now(txn).check_apply(key, primary)
            held, mark = _stamp(txn, kb)
            if held < pending.stamp:
                _write_entry(txn, kb, pending.life, pending.version, pending.value, mark)

        self._write(op)

    def repair_entries(self, token: int, entries: Sequence[Entry]) -> int:
        rows = [(_kb(k), life, version, None if value is None else bytes(value)) for k, life, version, value in entries]

        def op(txn: lmdb.Transaction) -> int:
            self._own_now(txn).check_token(token)
            n = 0
            for kb, life, version, value in rows:
                held, mark = _stamp(txn, kb)
                if held < (life, version):
                    _write_entry(txn, kb, life, version, value, mark)
                    n += 1
            return n

        return self._write(op)

    def marks(self, ranges: Sequence[tuple[int, int]]) -> dict[int, Mark]:
        def op(txn: lmdb.Transaction) -> dict[int, Mark]:
            return {k: _mark(raw) for lo, hi in ranges for k, raw in _prefixed(txn, _MARK, lo, hi)}  # type: ignore[misc]

        return self._read(op)

    def import_marks(self, token: int, ranges: Sequence[tuple[int, int]], marks: dict[int, Mark]) -> None:
        rows = [(_MARK + _kb(k), encode_mark(*mark)) for k, mark in sorted(marks.items())]

        def op(txn: lmdb.Transaction) -> None:
            self._check_unserved(txn, token, ranges, "import")
            cur = txn.cursor()
            for lo, hi in ranges:
                _delete_prefixed(cur, _MARK, lo, hi)
            for kb, raw in rows:
                txn.put(kb, raw)

        self._write(op)

    def renew_lease(self, epoch: int, until: float) -> float:
        until_ms = int(until * 1000)

        def op(txn: lmdb.Transaction) -> float:
            raw = txn.get(_LEASE)
            current = 0 if raw is None else int.from_bytes(raw, "big")
            if epoch >= self._own_now(txn).epoch and until_ms > current:
                txn.put(_LEASE, until_ms.to_bytes(8, "big"))
                current = until_ms
            return current / 1000

        return self._write(op)

    def lease(self) -> float:
        raw = self._read(lambda txn: txn.get(_LEASE))
        return 0.0 if raw is None else int.from_bytes(raw, "big") / 1000

    def sync(self) -> None:
        """Flush to disk now (useful in ``"process"`` mode before a planned shutdown; nothing to do
        on a shard opened read-only)."""
        with self._locked():
            self._check()
            if self._shared.readonly:
                return
            with self._writing:
                self._env.sync(True)

    def close(self) -> None:
        with self._locked():
            if self._closed:
                return
            self._closed = True
        with _ENVS_LOCK:
            shared = self._shared
            shared.users -= 1
            if shared.users > 0 and self._forks == _forks:
                return
            if _ENVS.get(self._id) is shared:
                del _ENVS[self._id]
        with shared.lock:
            # Closing in a forked child too lets the child open the directory
            # again (py-lmdb refuses a second open of an environment it still
            # counts as open); the parent's handle is unaffected.
            shared.close()

    def destroy(self) -> None:
        """Close, then remove the shard's directory (gone already is fine; a medium that refuses
        raises the mapped error, e.g. :class:`~dhtcart.errors.StoreReadOnly`)."""
        self.close()
        failed: list[BaseException] = []

        def note(exc: BaseException) -> None:
            if not isinstance(exc, FileNotFoundError):  # removed meanwhile by another process
                failed.append(exc)

        if sys.version_info >= (3, 12):
            shutil.rmtree(self.path, onexc=lambda _f, _p, exc: note(exc))
        else:
            shutil.rmtree(self.path, onerror=lambda _f, _p, info: note(info[1]))
        if failed:
            with self._writing:
                raise failed[0]
