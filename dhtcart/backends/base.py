"""The backend interface: versioned records, ordered by key, on some medium.

A backend is the storage of one shard. It knows nothing of rings or carts: it
stores ``Record(version, value)`` under integer keys in ``[0, 2**63)`` and keeps
them ordered by key, so ``scan(lo, hi)`` costs what it returns.

Keys and values arrive already validated by :class:`dhtcart.server.DHTServer`
(ints in range, ``bytes``); a backend only has to be correct and atomic:

* ``put`` with ``expected_version`` is a compare-and-set, atomic on the medium:
  it writes only if the current version equals ``expected_version`` (0 means
  "absent"), else raises :class:`~dhtcart.errors.VersionConflict` and changes
  nothing. Each successful write makes the version one more than before
  (a new key starts at 1).
* ``put_many`` writes records *with the versions given* (migration keeps the
  source's versions); it is atomic per call where the medium allows it.
* ``delete_many`` removes keys, but only where the stored version is the one
  given (so dropping an old copy after migration never drops a newer write).

Backends are chosen by URL scheme and registered in the ``dhtcart.backends``
entry-point group; see :func:`dhtcart.backends.open_backend`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import NamedTuple

__all__ = ["Backend", "Record"]


class Record(NamedTuple):
    """A stored value and its version (1 for the first write, +1 per write)."""

    version: int
    value: bytes


class Backend(ABC):
    """One shard's storage. Subclasses must be safe to use from many threads."""

    #: the URL the backend was opened from (passwords masked)
    url: str = ""

    #: whether every operation completes in microseconds on this machine, with
    #: no network round trip and no disk flush, so that an event loop may call
    #: it directly instead of handing it to a thread (memory, LMDB without
    #: per-commit fsync). Third-party backends are assumed slow unless they say so.
    fast_local: bool = False

    @abstractmethod
    def get(self, key: int) -> Record | None:
        """Return the record under ``key``, or ``None``."""

    @abstractmethod
    def put(self, key: int, value: bytes, expected_version: int | None = None) -> int:
        """Write ``value``; return the new version. CAS when ``expected_version`` is set."""

    @abstractmethod
    def delete(self, key: int, expected_version: int | None = None) -> bool:
        """Remove ``key``; return whether it existed. CAS when ``expected_version`` is set."""

    @abstractmethod
    def scan(self, lo: int, hi: int, limit: int | None = None) -> Iterator[tuple[int, Record]]:
        """Yield ``(key, record)`` for ``lo < key <= hi`` in key order, at most ``limit``."""

    @abstractmethod
    def put_many(self, items: Iterable[tuple[int, Record]]) -> int:
        """Write records keeping their versions; return how many were written."""

    @abstractmethod
    def delete_many(self, items: Iterable[tuple[int, int]]) -> int:
        """Delete each ``(key, version)`` whose stored version is ``version``; return the count."""

    @abstractmethod
    def count(self) -> int:
        """Return the number of keys stored."""

    @abstractmethod
    def close(self) -> None:
        """Release the medium. Idempotent."""

    def pause(self, seconds: float) -> None:
        """Make the medium unreachable for ``seconds`` (fault injection for tests and ``dhtcart verify``).

        Operations started meanwhile wait, time out with
        :class:`~dhtcart.errors.ShardUnavailable`, or both; the medium is not
        damaged. Backends that cannot do this raise ``NotImplementedError``.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot be paused")

    def destroy(self) -> None:
        """Close and remove every trace of the shard from its medium (used when a shard leaves)."""
        self.close()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"
