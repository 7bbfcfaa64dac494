"""The fencing and migration protocol: what a backend speaks so that a store can use it.

A store routes every key with its cached copy of the membership, which may be
stale; what keeps it correct is each shard's own record of the key ranges it
owns (:class:`~dhtcart.backends.ownership.Ownership`), kept *inside* the
shard's medium and checked in the same atomic step as every operation.

A :class:`FencedBackend` opened by a store is *fenced* (``context.fenced``):
every ``get``, ``put`` and ``delete`` checks the record and raises
:class:`~dhtcart.errors.Moved` for a key the shard does not own (or a write to
a frozen key), doing nothing else. A fenced medium without a record owns
nothing. A backend opened on its own (``open_backend(url)``) is not fenced and
serves every key.

The rebalancer changes ownership and moves records with the token-fenced
methods below (``update_ownership``, ``claim``, ``import_ranges``,
``drop_ranges``): each refuses a token older than the newest the shard has
seen (:class:`~dhtcart.errors.LeaseLost`), so a rebalancer that lost its lease
can change nothing. The protocol that drives them is in
:mod:`dhtcart.rebalance.mover`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

from dhtcart.backends.base import Backend, Record
from dhtcart.backends.ownership import Ownership

__all__ = ["Change", "FencedBackend", "apply_changes"]

#: one ownership change: ``(lo, hi, state, peer)`` sets the keys ``lo < key <= hi``
Change = tuple[int, int, str, str]


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


class FencedBackend(Backend):
    """A backend that keeps an ownership record and speaks the migration protocol.

    Memory, LMDB and Redis are fenced backends; a third-party backend that
    implements only :class:`~dhtcart.backends.base.Backend` works on its own
    but cannot be a store's shard.
    """

    #: whether get/put/delete check the ownership record (set from the context)
    fenced: bool = False

    #: the encoding of :meth:`export_ranges` / :meth:`import_encoded`, or ``""`` when the
    #: backend copies only :class:`Record` objects; shards of one format move records
    #: between them without decoding them
    copy_format: str = ""

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
