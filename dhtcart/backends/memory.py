"""In-memory backend: a ``SortedDict`` guarded by a lock.

Thread-safe; not shared between processes; gone when the process ends.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from sortedcontainers import SortedDict

from dhtcart.backends.base import Backend, Record
from dhtcart.errors import StoreClosed, VersionConflict

__all__ = ["MemoryBackend"]

_SCAN_BATCH = 512


class MemoryBackend(Backend):
    """Records in a :class:`sortedcontainers.SortedDict`, ordered by key.

    >>> b = MemoryBackend()
    >>> b.put(5, b"a"), b.put(5, b"b")
    (1, 2)
    >>> list(b.scan(0, 10))
    [(5, Record(version=2, value=b'b'))]
    """

    fast_local = True

    def __init__(self) -> None:
        self.url = "memory://"
        self._data: SortedDict = SortedDict()
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryBackend:
        """Open from ``memory://`` (no options)."""
        if options:
            raise TypeError(f"memory:// takes no options, got {sorted(options)}")
        return cls()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"{self!r} is closed")

    def get(self, key: int) -> Record | None:
        self._check_open()
        rec: Record | None = self._data.get(key)
        return rec

    def put(self, key: int, value: bytes, expected_version: int | None = None) -> int:
        with self._lock:
            self._check_open()
            old: Record | None = self._data.get(key)
            current = old.version if old is not None else 0
            if expected_version is not None and expected_version != current:
                raise VersionConflict(key, expected_version, current)
            version = current + 1
            self._data[key] = Record(version, value)
            return version

    def delete(self, key: int, expected_version: int | None = None) -> bool:
        with self._lock:
            self._check_open()
            old: Record | None = self._data.get(key)
            current = old.version if old is not None else 0
            if expected_version is not None and expected_version != current:
                raise VersionConflict(key, expected_version, current)
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

    def put_many(self, items: Iterable[tuple[int, Record]]) -> int:
        items = list(items)
        with self._lock:
            self._check_open()
            for key, rec in items:
                self._data[key] = Record(rec.version, bytes(rec.value))
        return len(items)

    def delete_many(self, items: Iterable[tuple[int, int]]) -> int:
        n = 0
        with self._lock:
            self._check_open()
            for key, version in items:
                old = self._data.get(key)
                if old is not None and old.version == version:
                    del self._data[key]
                    n += 1
        return n

    def count(self) -> int:
        self._check_open()
        return len(self._data)

    def close(self) -> None:
        self._closed = True
