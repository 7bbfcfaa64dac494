"""``DHTServer``: one shard on its own, a backend with every argument checked.

A convenience for using one backend directly, outside any store, with the
store's argument checks in front of it. It is not a layer of the store: a
store routes each key straight to its shards' backends (through the fencing
protocol of :mod:`dhtcart.backends.fencing`), and ``store.shards`` hands out
``DHTServer`` objects over those backends for inspection (``count``,
``scan``). In dhtcart's words a *shard* is one member of the ring: a name
(the ring node) and its backend (the medium); ``DHTServer`` is its Python
object.

>>> with DHTServer() as shard:
...     shard.put(42, b"hello")
...     shard.put(42, b"world", expected_version=1)
...     shard.get(42)
1
2
Record(version=2, value=b'world')
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from dhtcart.backends import open_backend
from dhtcart.backends.base import Backend, Record
from dhtcart.checks import MAX_VALUE_SIZE, check_key, check_range, check_value, check_version
from dhtcart.errors import InvalidInput

__all__ = ["MAX_VALUE_SIZE", "DHTServer"]


class DHTServer:
    """One shard of the DHT.

    ``backend`` is a :class:`~dhtcart.backends.base.Backend` or a backend URL
    (default ``memory://``). Every key is checked (an ``int`` in ``[0, 2**63)``,
    not ``bool``) and every value (bytes-like, at most :data:`MAX_VALUE_SIZE`);
    bad input raises :class:`~dhtcart.errors.InvalidKey` or
    :class:`~dhtcart.errors.InvalidValue` and stores nothing.

    Each key has a version: 1 after the first write, one more after each
    write. ``put(..., expected_version=v)`` is a compare-and-set (``v=0``:
    the key must not exist) and raises :class:`~dhtcart.errors.VersionConflict`
    without changing anything when the stored version differs.
    """

    def __init__(self, backend: Backend | str = "memory://", *, name: str = "shard", **options: Any) -> None:
        self.name = name
        self.backend: Backend = open_backend(backend, **options) if isinstance(backend, str) else backend

    @property
    def url(self) -> str:
        """The backend's URL (passwords masked)."""
        return self.backend.url

    def get(self, key: int) -> Record | None:
        """Return ``Record(version, value)`` under ``key``, or ``None`` if absent."""
        return self.backend.get(check_key(key))

    def put(self, key: int, value: bytes, expected_version: int | None = None) -> int:
        """Store ``value`` under ``key`` and return its new version.

        With ``expected_version`` it is a compare-and-set: the write happens
        only if the stored version equals it (0: the key must be absent).
        """
        key = check_key(key)
        data = check_value(value)
        if expected_version is not None:
            check_version(expected_version)
        return self.backend.put(key, data, expected_version)

    def delete(self, key: int, expected_version: int | None = None) -> bool:
        """Remove ``key``; return whether it existed (conditional with ``expected_version``)."""
        key = check_key(key)
        if expected_version is not None:
            check_version(expected_version)
        return self.backend.delete(key, expected_version)

    def scan(self, lo: int, hi: int, limit: int | None = None) -> Iterator[tuple[int, Record]]:
        """Yield ``(key, record)`` for ``lo < key <= hi``, in key order (``lo`` may be -1)."""
        lo, hi = check_range(lo, hi)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise InvalidInput("limit", f"must be an int >= 0, not {limit!r}")
        if lo >= hi:
            return iter(())
        return self.backend.scan(lo, hi, limit)

    def count(self) -> int:
        """Number of keys on this shard."""
        return self.backend.count()

    def __len__(self) -> int:
        return self.count()

    def close(self) -> None:
        """Close the backend. Idempotent."""
        self.backend.close()

    def __enter__(self) -> DHTServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<DHTServer {self.name!r} {self.url}>"
