"""The backend interface: versioned records, ordered by key, on some medium.

A backend is the storage of one shard. It knows nothing of rings or carts: it
stores ``Record(version, value)`` under integer keys in ``[0, 2**63)`` and keeps
them ordered by key, so ``scan(lo, hi)`` costs what it returns. This module is
the *data* interface, all a backend needs to be used on its own
(``open_backend(url)``); a backend that a store can use also speaks the
fencing and migration protocol of :mod:`dhtcart.backends.fencing`.

Keys and values arrive already validated (by the store, or by
:class:`dhtcart.server.DHTServer`: ints in range, ``bytes``); a backend only
has to be correct and atomic:

* ``put`` with ``expected_version`` is a compare-and-set, atomic on the medium:
  it writes only if the current version equals ``expected_version`` (0 means
  "absent"), else raises :class:`~dhtcart.errors.VersionConflict` and changes
  nothing. Each successful write makes the version one more than before
  (a new key starts at 1).
* ``delete`` with ``expected_version`` is conditional in the same way.
* A backend raises only dhtcart's errors (:mod:`dhtcart.errors`): each one
  turns its medium's exceptions into them in one place.

Backends are chosen by URL scheme and registered in the ``dhtcart.backends``
entry-point group; see :func:`dhtcart.backends.open_backend`. A backend class
offers ``from_url(url, *, context=None, **options)``.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from dhtcart.errors import VersionConflict

__all__ = ["Backend", "BackendContext", "Record", "check_expected"]


class Record(NamedTuple):
    """A stored value and its version (1 for the first write, +1 per write)."""

    version: int
    value: bytes


_version_of = struct.Struct(">Q").unpack_from
_new_tuple = tuple.__new__


def stored_record(raw: bytes) -> Record:
    """The :class:`Record` of a stored record ``raw``: its 8-byte big-endian version, then the value.

    The caller checks ``len(raw) >= 8``. A hot path (every read of LMDB and
    Redis): it makes the tuple without the Python frame of ``Record.__new__``,
    which costs about as much as the rest of the conversion.

    >>> stored_record(b"\\x00" * 7 + b"\\x02" + b"ab")
    Record(version=2, value=b'ab')
    """
    return _new_tuple(Record, (_version_of(raw)[0], raw[8:]))


@dataclass(frozen=True)
class BackendContext:
    """What a store tells a backend it opens, beside the URL.

    ``name`` is the shard's name (for messages); a relative path in a URL is
    taken inside ``base_dir`` (the store's directory); ``durability`` is the
    store's choice for media that offer one (LMDB), unless the URL says
    otherwise; ``fenced`` makes the backend check its ownership record on every
    operation (see the module doc); ``create`` says the shard is new, so its
    medium may be made: a store opening an existing shard passes ``False``, and
    a medium that has vanished (a deleted directory, a lost disk) is then
    :class:`~dhtcart.errors.ShardUnavailable`, never silently made again empty.
    """

    name: str = "shard"
    base_dir: Path | None = None
    durability: str = "process"
    fenced: bool = False
    create: bool = True


def check_expected(key: int, expected_version: int | None, current: int) -> None:
    """The compare-and-set rule of every backend, in one place: raise
    :class:`~dhtcart.errors.VersionConflict` unless ``expected_version`` is ``None``
    (unconditional) or equals ``current`` (0: absent). Call it inside the atomic step."""
    if expected_version is not None and expected_version != current:
        raise VersionConflict(key, expected_version, current)


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
    def count(self) -> int:
        """Return the number of keys stored (copies the shard does not own included)."""

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
