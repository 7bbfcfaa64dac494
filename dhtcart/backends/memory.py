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
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any

from sortedcontainers import SortedDict

from dhtcart.backends.base import BackendContext, Record, check_expected
from dhtcart.backends.fencing import Change, FencedBackend, apply_changes
from dhtcart.backends.ownership import Ownership
from dhtcart.errors import InvalidInput, StoreClosed

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

    def __init__(self, *, fenced: bool = False) -> None:
        self.url = "memory://"
        self.fenced = fenced
        self._data: SortedDict = SortedDict()
        self._lock = threading.Lock()
        self._closed = False
        self._own = Ownership.nothing()

    @classmethod
    def from_url(cls, url: str, *, context: BackendContext | None = None, **options: Any) -> MemoryBackend:
        """Open from ``memory://`` (no options)."""
        if options:
            raise InvalidInput("url", f"memory:// takes no options, got {sorted(options)}")
        if url.partition("://")[2].strip("/"):
            raise InvalidInput("url", f"memory:// takes no path or query, got {url!r}")
        return cls(fenced=context is not None and context.fenced)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"{self!r} is closed")

    def _fence(self, key: int, write: bool) -> None:
        """Raise Moved unless the record lets this operation through (call with the lock held)."""
        self._own.check(key, write)

    def get(self, key: int) -> Record | None:
        if not self.fenced:
            self._check_open()
            rec: Record | None = self._data.get(key)
            return rec
        with self._lock:
            self._check_open()
            self._fence(key, False)
            rec = self._data.get(key)
            return rec

    def put(self, key: int, value: bytes, expected_version: int | None = None) -> int:
        with self._lock:
            self._check_open()
            if self.fenced:
                self._fence(key, True)
            old: Record | None = self._data.get(key)
            current = old.version if old is not None else 0
            check_expected(key, expected_version, current)
            version = current + 1
            self._data[key] = Record(version, value)
            return version

    def delete(self, key: int, expected_version: int | None = None) -> bool:
        with self._lock:
            self._check_open()
            if self.fenced:
                self._fence(key, True)
            old: Record | None = self._data.get(key)
            current = old.version if old is not None else 0
            check_expected(key, expected_version, current)
            if old is None:
                return False
            del self._data[key]
            return True

    def scan(self, lo: int, hi: int, limit: int | None = None) -> Iterator[tuple[int, Record]]:
        # Copy out in small batches under the lock, so a long scan never
        # blocks writers for long and never sees a dict changing under it.
        remaining = limit
        while remaining is None or remaining > 0:
            n = _SCAN_BATCH if remaining is None else min(_SCAN_BATCH, remaining)
            with self._lock:
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
        self, token: int, epoch: int, changes: Sequence[Change] = (), expect: str | None = None
    ) -> Ownership:
        with self._lock:
            self._check_open()
            self._own = apply_changes(self._own, token, epoch, changes, expect)
            return self._own

    def claim(self, ownership: Ownership, *, force: bool = False) -> None:
        with self._lock:
            self._check_open()
            if not force:
                self._own.check_token(ownership.token)
            self._own = ownership

    def import_ranges(
        self, token: int, ranges: Sequence[tuple[int, int]], records: Sequence[tuple[int, Record]]
    ) -> int:
        with self._lock:
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
        return n

    def drop_ranges(self, token: int, ranges: Sequence[tuple[int, int]]) -> int:
        with self._lock:
            self._check_open()
            self._own.check_token(token)
            for lo, hi in ranges:
                self._own.check_unserved(lo, hi, "drop")
            return self._delete_ranges(ranges)

    def boundary(self, lo: int, hi: int, n: int) -> tuple[int, int]:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidInput("n", f"boundary counts keys from 1, got {n!r}")
        with self._lock:
            self._check_open()
            keys = list(islice(self._data.irange(lo, hi, inclusive=(False, True)), n))
        return (keys[-1], n) if len(keys) == n else (hi, len(keys))

    def close(self) -> None:
        self._closed = True
