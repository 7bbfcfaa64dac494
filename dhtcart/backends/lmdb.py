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

Threads: one backend may be used by many threads (a lock serialises this
process's transactions). Processes: several processes may open the same
directory; LMDB serialises their writes, so compare-and-set stays atomic
across them. Fork: a backend opened before ``fork()`` must not be used in the
child (LMDB forbids it); doing so raises :class:`~dhtcart.errors.ForkedError`.
The map grows by itself: a write that finds it full is aborted whole, the map
doubles, and the write is retried.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Literal
from urllib.parse import parse_qsl

import lmdb

from dhtcart.backends.base import Backend, Record
from dhtcart.errors import ForkedError, InvalidInput, StoreClosed, VersionConflict

__all__ = ["DEFAULT_MAP_SIZE", "Durability", "LMDBBackend"]

Durability = Literal["process", "power"]
DEFAULT_MAP_SIZE = 64 * 1024 * 1024
_MAX_MAP_SIZE = 1 << 40
_SCAN_BATCH = 1024


def _kb(key: int) -> bytes:
    return key.to_bytes(8, "big")


def _unpack(raw: bytes) -> Record:
    return Record(int.from_bytes(raw[:8], "big"), raw[8:])


class LMDBBackend(Backend):
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
    ) -> None:
        if durability not in ("process", "power"):
            raise InvalidInput("durability", f"must be 'process' or 'power', not {durability!r}")
        if isinstance(map_size, bool) or not isinstance(map_size, int) or map_size < 4096:
            raise InvalidInput("map_size", f"must be an int >= 4096, not {map_size!r}")
        self.path = os.fspath(path)
        self.durability: Durability = durability
        self.fast_local = durability == "process"  # "power" waits for a disk flush per write
        self.url = f"lmdb://{os.path.abspath(self.path)}"
        os.makedirs(self.path, exist_ok=True)
        self._env = lmdb.open(
            self.path,
            map_size=map_size,
            subdir=True,
            sync=durability == "power",
            metasync=durability == "power",
            readahead=False,
            max_readers=max_readers,
            max_dbs=0,
        )
        self._env.reader_check()  # clear slots left by killed processes
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> LMDBBackend:
        """Open ``lmdb:///abs/dir`` or ``lmdb://rel/dir``, with ``?durability=power&map_size=N``."""
        if not url.startswith("lmdb://"):
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
        return cls(path, **options)

    # -- plumbing -------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise StoreClosed(f"{self!r} is closed")
        if os.getpid() != self._pid:
            raise ForkedError(
                f"{self!r} was opened in process {self._pid} and used after fork(); open the store again in the child"
            )

    def _write(self, fn: Any) -> Any:
        """Run ``fn(txn)`` in a write transaction, growing the map when it is full."""
        with self._lock:
            self._check()
            for _ in range(64):
                try:
                    with self._env.begin(write=True) as txn:
                        return fn(txn)
                except lmdb.MapFullError:
                    # slots of killed readers pin old pages: free them before growing
                    self._env.reader_check()
                    size = self._env.info()["map_size"]
                    if size >= _MAX_MAP_SIZE:
                        raise
                    self._env.set_mapsize(min(size * 2, _MAX_MAP_SIZE))
                except lmdb.MapResizedError:
                    self._env.set_mapsize(0)  # another process grew it: adopt its size
            raise RuntimeError("LMDB write kept failing to fit the map")  # pragma: no cover

    def _read(self, fn: Any) -> Any:
        with self._lock:
            self._check()
            for _ in range(8):
                try:
                    with self._env.begin() as txn:
                        return fn(txn)
                except lmdb.MapResizedError:
                    self._env.set_mapsize(0)
            raise RuntimeError("LMDB read kept seeing the map resized")  # pragma: no cover

    # -- operations -------------------------------------------------------------

    def get(self, key: int) -> Record | None:
        raw = self._read(lambda txn: txn.get(_kb(key)))
        return None if raw is None else _unpack(raw)

    def put(self, key: int, value: bytes, expected_version: int | None = None) -> int:
        kb = _kb(key)

        def op(txn: lmdb.Transaction) -> int:
            raw = txn.get(kb)
            current = 0 if raw is None else int.from_bytes(raw[:8], "big")
            if expected_version is not None and expected_version != current:
                raise VersionConflict(key, expected_version, current)
            version = current + 1
            txn.put(kb, version.to_bytes(8, "big") + value)
            return version

        result: int = self._write(op)
        return result

    def delete(self, key: int, expected_version: int | None = None) -> bool:
        kb = _kb(key)

        def op(txn: lmdb.Transaction) -> bool:
            raw = txn.get(kb)
            current = 0 if raw is None else int.from_bytes(raw[:8], "big")
            if expected_version is not None and expected_version != current:
                raise VersionConflict(key, expected_version, current)
            return raw is not None and bool(txn.delete(kb))

        result: bool = self._write(op)
        return result

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
                    out.append((k, _unpack(raw)))  # type: ignore[arg-type]  # bytes: buffers=False
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

    def put_many(self, items: Iterable[tuple[int, Record]]) -> int:
        rows = [(_kb(k), r.version.to_bytes(8, "big") + r.value) for k, r in items]

        def op(txn: lmdb.Transaction) -> int:
            txn.cursor().putmulti(rows)
            return len(rows)

        result: int = self._write(op)
        return result

    def delete_many(self, items: Iterable[tuple[int, int]]) -> int:
        rows = [(_kb(k), v) for k, v in items]

        def op(txn: lmdb.Transaction) -> int:
            n = 0
            for kb, version in rows:
                raw = txn.get(kb)
                if raw is not None and int.from_bytes(raw[:8], "big") == version:
                    txn.delete(kb)
                    n += 1
            return n

        result: int = self._write(op)
        return result

    def count(self) -> int:
        with self._lock:
            self._check()
            entries: int = self._env.stat()["entries"]
            return entries

    def sync(self) -> None:
        """Flush to disk now (useful in ``"process"`` mode before a planned shutdown)."""
        with self._lock:
            self._check()
            self._env.sync(True)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # Closing in a forked child too lets the child open the directory
            # again (py-lmdb refuses a second open of an environment it still
            # counts as open); the parent's handle is unaffected.
            self._env.close()

    def destroy(self) -> None:
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
