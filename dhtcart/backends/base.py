"""The backend interface: versioned records, ordered by key, on some medium.

A backend is the storage of one shard. It knows nothing of rings or carts: it
stores ``Record(version, value)`` under integer keys in ``[0, 2**63)`` and keeps
them ordered by key, so ``scan(lo, hi)`` costs what it returns.

Keys and values arrive already validated by :class:`dhtcart.server.DHTServer`
or the store (ints in range, ``bytes``); a backend only has to be correct and
atomic:

* ``put`` with ``expected_version`` is a compare-and-set, atomic on the medium:
  it writes only if the current version equals ``expected_version`` (0 means
  "absent"), else raises :class:`~dhtcart.errors.VersionConflict` and changes
  nothing. Each successful write makes the version one more than before
  (a new key starts at 1).
* ``put_many`` writes records *with the versions given*; ``delete_many``
  removes keys only where the stored version is the one given.

**Ownership fences.** A backend opened by a store is *fenced*
(``context.fenced``): it keeps an :class:`~dhtcart.backends.ownership.Ownership`
record inside its medium and checks it in the same atomic step as every
``get``, ``put`` and ``delete``, raising :class:`~dhtcart.errors.Moved` for a
key it does not own (or a write to a frozen key) and doing nothing else. A
fenced medium without a record owns nothing. A backend opened on its own
(``open_backend(url)``) is not fenced and serves every key. The rebalancer
changes ownership and moves records with the token-fenced methods
``update_ownership``, ``import_range`` and ``drop_range``: each refuses a token
older than the newest the shard has seen (:class:`~dhtcart.errors.LeaseLost`),
so a rebalancer that lost its lease can change nothing.

Backends are chosen by URL scheme and registered in the ``dhtcart.backends``
entry-point group; see :func:`dhtcart.backends.open_backend`. A backend class
offers ``from_url(url, *, context=None, **options)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from dhtcart.backends.ownership import Ownership

__all__ = ["Backend", "BackendContext", "Change", "Record", "apply_changes"]

#: one ownership change: ``(lo, hi, state, peer)`` sets the keys ``lo < key <= hi``
Change = tuple[int, int, str, str]


class Record(NamedTuple):
    """A stored value and its version (1 for the first write, +1 per write)."""

    version: int
    value: bytes


@dataclass(frozen=True)
class BackendContext:
    """What a store tells a backend it opens, beside the URL.

    ``name`` is the shard's name (for messages); a relative path in a URL is
    taken inside ``base_dir`` (the store's directory); ``durability`` is the
    store's choice for media that offer one (LMDB), unless the URL says
    otherwise; ``fenced`` makes the backend check its ownership record on every
    operation (see the module doc).
    """

    name: str = "shard"
    base_dir: Path | None = None
    durability: str = "process"
    fenced: bool = False


def apply_changes(
    current: Ownership, token: int, epoch: int, changes: Sequence[Change], expect: str | None
) -> Ownership:
    """The record after ``changes``, made by the holder of ``token`` at membership ``epoch``.

    Refuses (:class:`~dhtcart.errors.LeaseLost`) a token older than the
    record's, or, with ``expect``, a range not wholly in that state. The
    record keeps the newest token and epoch it has seen. Backends call this
    inside their atomic step.
    """
    current.check_token(token)
    segments = current.segments.replace_many(changes, expect=expect)
    return Ownership(max(epoch, current.epoch), max(token, current.token), segments)


class Backend(ABC):
    """One shard's storage. Subclasses must be safe to use from many threads."""

    #: whether get/put/delete check the ownership record (set from the context)
    fenced: bool = False

    #: the URL the backend was opened from (passwords masked)
    url: str = ""

    #: whether every operation completes in microseconds on this machine, with
    #: no network round trip and no disk flush, so that an event loop may call
    #: it directly instead of handing it to a thread (memory, LMDB without
    #: per-commit fsync). Third-party backends are assumed slow unless they say so.
    fast_local: bool = False

    #: the encoding of :meth:`export_ranges` / :meth:`import_encoded`, or ``""`` when the
    #: backend copies only :class:`Record` objects; shards of one format move records
    #: between them without decoding them
    copy_format: str = ""

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
        """Return the number of keys stored (copies the shard does not own included)."""

    # -- ownership: the store's fences ------------------------------------------------

    @abstractmethod
    def ownership(self) -> Ownership:
        """The ownership record (``Ownership.nothing()`` for a medium without one)."""

    @abstractmethod
    def update_ownership(
        self, token: int, epoch: int, changes: Sequence[Change] = (), expect: str | None = None
    ) -> Ownership:
        """Apply ``changes`` atomically (see :func:`apply_changes`); return the new record.

        With no changes, this only raises the record's token (a new rebalancer
        fencing out the old one).
        """

    @abstractmethod
    def claim(self, ownership: Ownership, *, force: bool = False) -> None:
        """Replace the ownership record (a store creating its shards, or adding one).

        Refused (:class:`~dhtcart.errors.LeaseLost`) if the shard has seen a
        newer token than ``ownership.token``, unless ``force`` (a store whose
        membership lives in one process claims its shards for itself).
        """

    @abstractmethod
    def import_ranges(
        self, token: int, ranges: Sequence[tuple[int, int]], records: Sequence[tuple[int, Record]]
    ) -> int:
        """Make the records in the ``ranges`` (``(lo, hi]`` each) exactly ``records``, atomically.

        ``records`` keep their versions and all lie in the ranges. Refused
        (:class:`~dhtcart.errors.LeaseLost`) for a stale ``token`` or if the
        shard serves any key of the ranges: a copy never overwrites what a shard
        owns. Idempotent. Returns how many records were written.
        """

    @abstractmethod
    def drop_ranges(self, token: int, ranges: Sequence[tuple[int, int]]) -> int:
        """Delete every record in the ``ranges``; refused for a stale token or a served range.

        Returns how many went. Idempotent.
        """

    def export_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[tuple[bytes, bytes]]:
        """Every record of the ``ranges`` as ``(key, encoded record)`` in :attr:`copy_format`."""
        raise NotImplementedError(f"{type(self).__name__} has no copy format")

    def import_encoded(
        self, token: int, ranges: Sequence[tuple[int, int]], items: Sequence[tuple[bytes, bytes]]
    ) -> int:
        """:meth:`import_ranges`, for records from :meth:`export_ranges` of a shard of the same format."""
        raise NotImplementedError(f"{type(self).__name__} has no copy format")

    def boundary(self, lo: int, hi: int, n: int) -> tuple[int, int]:
        """``(cut, found)``: the ``n``-th key after ``lo`` in ``(lo, hi]`` and ``n``, or
        ``(hi, number of keys in the range)`` if it holds fewer (``n >= 1``)."""
        found = 0
        for key, _ in self.scan(lo, hi, limit=n):
            found += 1
            if found == n:
                return key, n
        return hi, found

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
