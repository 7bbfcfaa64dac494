"""One shard: validation and versions in front of a backend.

>>> with DHTServer() as shard:
...     shard.put(42, b"hello")
...     shard.put(42, b"world", expected_version=1)
...     shard.get(42)
1
2
Record(version=2, value=b'world')
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from dhtcart.backends import open_backend
from dhtcart.backends.base import Backend, Record
from dhtcart.errors import InvalidInput, InvalidKey, InvalidValue
from dhtcart.hashing import KEY_SPACE, MAX_KEY

__all__ = ["MAX_VALUE_SIZE", "DHTServer", "check_key", "check_value", "check_version"]

#: the largest value a shard accepts, in bytes
MAX_VALUE_SIZE = 16 * 1024 * 1024


def check_key(key: object) -> int:
    """Return ``key`` if it is an ``int`` in ``[0, 2**63)`` (not a ``bool``), else raise :class:`InvalidKey`."""
    if type(key) is not int:
        if isinstance(key, bool) or not isinstance(key, int):
            raise InvalidKey(
                f"key must be an int in [0, 2**63), not {type(key).__name__}; use dhtcart.hash_key(text) for strings"
            )
        key = int(key)
    if not 0 <= key < KEY_SPACE:
        raise InvalidKey(f"key {key} is outside [0, 2**63)")
    return key


def check_value(value: object) -> bytes:
    """Return ``value`` as ``bytes`` if it is bytes-like and small enough, else raise :class:`InvalidValue`."""
    if type(value) is bytes:
        data = value
    elif isinstance(value, (bytearray, memoryview)):
        data = bytes(value)
    else:
        raise InvalidValue(f"value must be bytes-like (bytes, bytearray, memoryview), not {type(value).__name__}")
    if len(data) > MAX_VALUE_SIZE:
        raise InvalidValue(f"value of {len(data)} bytes exceeds the limit of {MAX_VALUE_SIZE} bytes")
    return data


def check_version(version: object, what: str = "expected_version") -> int:
    """Return ``version`` if it is an ``int >= 0`` (not a ``bool``), else raise :class:`InvalidValue`."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise InvalidValue(f"{what} must be an int >= 0, not {version!r}")
    return version


def _check_range(lo: object, hi: object) -> tuple[int, int]:
    for name, bound in (("lo", lo), ("hi", hi)):
        if isinstance(bound, bool) or not isinstance(bound, int):
            raise InvalidKey(f"{name} must be an int, not {type(bound).__name__}")
    assert isinstance(lo, int) and isinstance(hi, int)
    if not (-1 <= lo <= MAX_KEY and -1 <= hi <= MAX_KEY):
        raise InvalidKey(f"range ({lo}, {hi}] must lie within [-1, 2**63 - 1]")
    return lo, hi


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
        lo, hi = _check_range(lo, hi)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise InvalidInput("limit", f"must be an int >= 0, not {limit!r}")
        if lo >= hi:
            return iter(())
        return self.backend.scan(lo, hi, limit)

    def put_many(self, items: Iterable[tuple[int, Record]]) -> int:
        """Write records keeping their versions (migration). All are checked before any is written."""
        checked = []
        for key, rec in items:
            if not isinstance(rec, Record):
                if not isinstance(rec, tuple) or len(rec) != 2:
                    raise InvalidValue(f"key {key}: a record is (version, value), not {rec!r:.60}")
                rec = Record(*rec)
            version = check_version(rec.version, "version")
            if version < 1:
                raise InvalidValue(f"key {key}: a stored version is >= 1, not {version}")
            checked.append((check_key(key), Record(version, check_value(rec.value))))
        return self.backend.put_many(checked) if checked else 0

    def delete_many(self, items: Iterable[tuple[int, int]]) -> int:
        """Delete each ``(key, version)`` still at that version; return how many went."""
        checked = [(check_key(k), check_version(v, "version")) for k, v in items]
        return self.backend.delete_many(checked) if checked else 0

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
