"""In-memory backend: a ``SortedDict`` guarded by a lock.

Thread-safe; not shared between processes; gone when the process ends. When
fenced, the ownership record is checked under the same lock as the operation.

Errors: the medium is this process's memory, which raises nothing of its own
(a process out of memory gets Python's ``MemoryError``, not a dhtcart error);
bad arguments are :class:`~dhtcart.errors.InvalidInput`, a closed backend
:class:`~dhtcart.errors.StoreClosed`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any, NoReturn

from sortedcontainers import SortedDict

from dhtcart.backends.base import BackendContext, Record, check_expected
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
    stamp_of,
    write_life,
)
from dhtcart.backends.ownership import BACKUP, OWNED, TABLE_SHIFT, Ownership
from dhtcart.checks import check_seconds
from dhtcart.errors import InvalidInput, LeaseExpired, ShardUnavailable, StoreClosed, WriteInFlight

__all__ = ["MemoryBackend"]

_SCAN_BATCH = 512


class MemoryBackend(FencedBackend):
    """Records in a :class:`sortedcontainers.SortedDict`, ordered by key.

    >>> b = MemoryBackend()
    >>> b.put(5, b"a"), b.put(5, b"b")
    (1, 2)
    >>> list(b.scan(0, 10))
    [(5, Record(version=2, value=b'b'))]
    """

    fast_local = True

    def __init__(self, *, fenced: bool = False, name: str = "memory") -> None:
        self.url = "memory://"
        self.name = name
        self.fenced = fenced
        self._paused_until = 0.0  # monotonic time until which the shard does not answer
        self._data: SortedDict = SortedDict()
        self._lock = threading.Lock()
        self._changing = 0  # the thread running a modify's change (holding the lock), else 0
        self._closed = False
        self._own = Ownership.nothing()
        self._pending: dict[int, Pending] = {}  # decided, not committed (this shard as a primary)
        self._marks: SortedDict = SortedDict()  # key: Mark (lives and graves, a store with copies)
        self._lease = 0.0  # end of the lease to serve reads, seconds since the epoch

    @classmethod
    def from_url(cls, url: str, *, context: BackendContext | None = None, **options: Any) -> MemoryBackend:
        """Open from ``memory://`` (no options)."""
        if options:
            raise InvalidInput("url", f"memory:// takes no options, got {sorted(options)}")
        if url.partition("://")[2].strip("/"):
            raise InvalidInput("url", f"memory:// takes no path or query, got {url!r}")
        if context is None:
            return cls()
        return cls(fenced=context.fenced, name=context.name)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"{self!r} is closed")
        if self._paused_until and time.monotonic() < self._paused_until:
            raise ShardUnavailable(self.name, self.url, "paused (fault injection): no request reached it")

    def _wait(self) -> None:
        """Take the lock another holds: wait for it, unless it is this thread's, in a change."""
        if self._changing == threading.get_ident():
            raise change_called_back(self.name)
        self._lock.acquire()

    def _locked(self) -> threading.Lock:
        """The lock, for a ``with`` block off the hot path (see :meth:`_wait`)."""
        if self._changing == threading.get_ident():
            raise change_called_back(self.name)
        return self._lock

    def pause(self, seconds: float) -> None:
        """Refuse every operation for ``seconds`` with :class:`~dhtcart.errors.ShardUnavailable`
        (nothing is applied), as a server that went away and came back (fault injection)."""
        self._paused_until = time.monotonic() + check_seconds("seconds", seconds)

    def get(self, key: int) -> Record | None:
        if not self.fenced:
            if self._closed or self._paused_until:
                self._check_open()
            rec: Record | None = self._data.get(key)
            return rec
        if not self._lock.acquire(False):  # cheaper than a with-block, and a change calling back is found
            self._wait()
        try:
            if self._closed or self._paused_until:
                self._check_open()
            own = self._own
            if key >> TABLE_SHIFT not in own.segments.fast:  # the slices' table, then the check
                own.check(key, False)
            if own.leased and time.time() >= self._lease:
                state, _ = own.segments.lookup(key)
                raise LeaseExpired(key, own.epoch, state)
            rec = self._data.get(key)
            return rec
        finally:
            self._lock.release()

    def put(self, key: int, value: bytes, expected_version: int | None = None) -> int:
        if not self._lock.acquire(False):  # cheaper than a with-block, and a change calling back is found
            self._wait()
        try:
            if self._closed or self._paused_until:
                self._check_open()
            if self.fenced:
                own = self._own
                if own.segments.slices.get(key >> TABLE_SHIFT) != OWNED:
                    own.check(key, True)
                if self._pending and key in self._pending:
                    self._in_flight(key)
            old: Record | None = self._data.get(key)
            current = old.version if old is not None else 0
            check_expected(key, expected_version, current)
            current += 1
            self._data[key] = Record(current, value)
            return current
        finally:
            self._lock.release()

    def modify(self, key: int, change: Update, tries: int = MAX_UPDATE_TRIES) -> Record | None:
        """One critical section: the fence, the read, ``change``, the write (see :class:`FencedBackend`)."""
        if not self._lock.acquire(False):  # cheaper than a with-block, and a change calling back is found
            self._wait()
        try:
            if self._closed or self._paused_until:
                self._check_open()
            if self.fenced:
                own = self._own
                if own.segments.slices.get(key >> TABLE_SHIFT) != OWNED:
                    own.check(key, True)
                if self._pending and key in self._pending:
                    self._in_flight(key)
            old: Record | None = self._data.get(key)
            self._changing = threading.get_ident()
            try:
                value = change(old)
            finally:
                self._changing = 0
            if value is None:
                return old
            new = Record((old.version if old is not None else 0) + 1, value)
            self._data[key] = new
            return new
        finally:
            self._lock.release()

    def delete(self, key: int, expected_version: int | None = None) -> bool:
        if not self._lock.acquire(False):  # cheaper than a with-block, and a change calling back is found
            self._wait()
        try:
            self._check_open()
            if self.fenced:
                self._own.check(key, True)
                if self._pending and key in self._pending:
                    self._in_flight(key)
            old: Record | None = self._data.get(key)
            current = old.version if old is not None else 0
            check_expected(key, expected_version, current)
            if old is None:
                return False
            del self._data[key]
            return True
        finally:
            self._lock.release()

    def scan(self, lo: int, hi: int, limit: int | None = None) -> Iterator[tuple[int, Record]]:
        # Copy out in small batches under the lock, so a long scan never
        # blocks writers for long and never sees a dict changing under it.
        remaining = limit
        while remaining is None or remaining > 0:
            n = _SCAN_BATCH if remaining is None else min(_SCAN_BATCH, remaining)
            with self._locked():
                self._check_open()
                keys = list(islice(self._data.irange(lo, hi, inclusive=(False, True)), n))
                batch = [(k, self._data[k]) for k in keys]
            yield from batch
            if len(batch) < n:
                return
            lo = batch[-1][0]
            if remaining is not None:
                remaining -= len(batch)

    def count(self) -> int:
        self._check_open()
        return len(self._data)

    # -- ownership ----------------------------------------------------------------------

    def ownership(self) -> Ownership:
        self._check_open()
        return self._own

    def update_ownership(
        self,
        token: int,
        epoch: int,
        changes: Sequence[Change] = (),
        expect: str | None = None,
        *,
        leased: bool | None = None,
    ) -> Ownership:
        with self._locked():
            self._check_open()
            self._own = apply_changes(self._own, token, epoch, changes, expect, leased)
            return self._own

    def claim(self, ownership: Ownership, *, force: bool = False) -> None:
        with self._locked():
            self._check_open()
            if not force:
                self._own.check_token(ownership.token)
            self._own = ownership

    def import_ranges(
        self, token: int, ranges: Sequence[tuple[int, int]], records: Sequence[tuple[int, Record]]
    ) -> int:
        with self._locked():
            self._check_open()
            self._own.check_token(token)
            for lo, hi in ranges:
                self._own.check_unserved(lo, hi, "import")
            self._delete_ranges(ranges)
            for key, rec in records:
                self._data[key] = Record(rec.version, bytes(rec.value))
            return len(records)

    def _delete_ranges(self, ranges: Sequence[tuple[int, int]]) -> int:
        data = self._data
        n = 0
        for lo, hi in ranges:
            for k in list(data.irange(lo, hi, inclusive=(False, True))):
                del data[k]
                n += 1
            for k in [k for k in self._pending if lo < k <= hi]:
                del self._pending[k]
            for k in list(self._marks.irange(lo, hi, inclusive=(False, True))):
                del self._marks[k]
        return n

    def drop_ranges(self, token: int, ranges: Sequence[tuple[int, int]]) -> int:
        with self._locked():
            self._check_open()
            self._own.check_token(token)
            for lo, hi in ranges:
                self._own.check_unserved(lo, hi, "drop")
            return self._delete_ranges(ranges)

    def boundary(self, lo: int, hi: int, n: int) -> tuple[int, int]:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidInput("n", f"boundary counts keys from 1, got {n!r}")
        with self._locked():
            self._check_open()
            keys = list(islice(self._data.irange(lo, hi, inclusive=(False, True)), n))
        return (keys[-1], n) if len(keys) == n else (hi, len(keys))

    # -- replicated writes and leases -----------------------------------------------------

    def _in_flight(self, key: int) -> NoReturn:
        """A plain write of a key with a replicated write pending (a handle on the replicated view
        decided it, during a change of the number of copies): have the caller finish that first."""
        raise WriteInFlight(key, self._pending[key]._replace(backups=self._backups(key)))

    def _backups(self, key: int) -> str:
        state, peer = self._own.segments.lookup(key)
        return "" if state == BACKUP else peer

    def decide(self, key: int, value: bytes | None, expected_version: int | None = None) -> Pending:
        with self._locked():
            self._check_open()
            backups = self._own.check_decide(key) if self.fenced else ""
            waiting = self._pending.get(key)
            if waiting is not None:
                raise WriteInFlight(key, waiting._replace(backups=backups))
            old: Record | None = self._data.get(key)
            current = old.version if old is not None else 0
            check_expected(key, expected_version, current)
            if value is None and old is None:
                return Pending(key, 0, 0, None, backups)  # nothing to delete: nothing to replicate
            life = write_life(None if old is None else current, self._marks.get(key))
            decided = Pending(key, current, current + 1, value, backups, life)
            self._pending[key] = decided
            return decided

    def pending(self, key: int) -> Pending | None:
        with self._locked():
            self._check_open()
            waiting = self._pending.get(key)
            return None if waiting is None else waiting._replace(backups=self._backups(key))

    def scan_pending(self, lo: int, hi: int) -> list[Pending]:
        with self._locked():
            self._check_open()
            return [p._replace(backups=self._backups(k)) for k, p in sorted(self._pending.items()) if lo < k <= hi]

    def commit(self, key: int, version: int, life: int) -> bool:
        with self._locked():
            self._check_open()
            waiting = self._pending.get(key)
            if waiting is None or waiting.version != version or waiting.life != life:
                return False
            del self._pending[key]
            self._write(key, life, version, waiting.value)
            return True

    def _write(self, key: int, life: int, version: int, value: bytes | None) -> None:
        """Hold the write of stamp ``(life, version)``: its record and mark, or its grave (``value`` None)."""
        if value is None:
            self._data.pop(key, None)
            self._marks[key] = (life, version)
            return
        self._data[key] = Record(version, value)
        if life:
            self._marks[key] = (life, 0)
        else:
            self._marks.pop(key, None)

    def _stamp(self, key: int) -> tuple[int, int]:
        old: Record | None = self._data.get(key)
        return stamp_of(None if old is None else old.version, self._marks.get(key))

    def apply(self, primary: str, pending: Pending) -> None:
        key = pending.key
        with self._locked():
            self._check_open()
            if self.fenced:
                self._own.check_apply(key, primary)
            if self._stamp(key) < pending.stamp:
                self._write(key, pending.life, pending.version, pending.value)

    def repair_entries(self, token: int, entries: Sequence[Entry]) -> int:
        n = 0
        with self._locked():
            self._check_open()
            self._own.check_token(token)
            for key, life, version, value in entries:
                if self._stamp(key) < (life, version):
                    self._write(key, life, version, None if value is None else bytes(value))
                    n += 1
        return n

    def marks(self, ranges: Sequence[tuple[int, int]]) -> dict[int, Mark]:
        with self._locked():
            self._check_open()
            marks = self._marks
            return {k: marks[k] for lo, hi in ranges for k in marks.irange(lo, hi, inclusive=(False, True))}

    def import_marks(self, token: int, ranges: Sequence[tuple[int, int]], marks: dict[int, Mark]) -> None:
        with self._locked():
            self._check_open()
            self._own.check_token(token)
            for lo, hi in ranges:
                self._own.check_unserved(lo, hi, "import")
            for lo, hi in ranges:
                for k in list(self._marks.irange(lo, hi, inclusive=(False, True))):
                    del self._marks[k]
            for key, mark in marks.items():
                self._marks[key] = (int(mark[0]), int(mark[1]))

    def renew_lease(self, epoch: int, until: float) -> float:
        with self._locked():
            self._check_open()
            if epoch >= self._own.epoch and until > self._lease:
                self._lease = until
            return self._lease

    def lease(self) -> float:
        self._check_open()
        return self._lease

    def close(self) -> None:
        self._closed = True
