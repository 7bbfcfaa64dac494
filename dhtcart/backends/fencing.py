"""The fencing and migration protocol: what a backend speaks so that a store can use it.

A store routes every key with its cached copy of the membership, which may be
stale; what keeps it correct is each shard's own record of the key ranges it
owns (:class:`~dhtcart.backends.ownership.Ownership`), kept *inside* the
shard's medium and checked in the same atomic step as every operation (on
Redis, a read is checked by the ownership generation read right after it, which
says the same: docs/redis.md, "A fenced read").

A :class:`FencedBackend` opened by a store is *fenced* (``context.fenced``):
every ``get``, ``put`` and ``delete`` checks the record and raises
:class:`~dhtcart.errors.Moved` for a key the shard does not own (or a write to
a frozen key), doing nothing else. A fenced medium without a record owns
nothing. A backend opened on its own (``open_backend(url)``) is not fenced and
serves every key.

The rebalancer changes ownership and moves records with the token-fenced
methods below (``update_ownership``, ``claim``, ``import_ranges``,
``import_marks``, ``drop_ranges``, ``repair_entries``): each refuses a token older than the
newest the shard has seen (:class:`~dhtcart.errors.LeaseLost`), so a
rebalancer that lost its lease can change nothing. The protocol that drives
them is in :mod:`dhtcart.rebalance.mover`.

**Replicated writes** (a store with ``replicas > 1``; ``docs/replication.md``)
take three steps, each atomic on one shard:

1. :meth:`FencedBackend.decide` on the key's primary: the ownership check, the
   compare-and-set against the *committed* version, and the write recorded as
   :class:`Pending` (one pending write per key at most: another is refused
   with :class:`~dhtcart.errors.WriteInFlight` until it is finished);
2. :meth:`FencedBackend.apply` on every backup the primary's record lists: a
   backup takes only writes decided by the primary *its* record names (a store
   calls :meth:`FencedBackend.send_apply`, the same in two halves, so that all
   the backups work at the same time);
3. :meth:`FencedBackend.commit` on the primary: the pending write becomes the
   record that reads return.

Reads return committed records only, so a value is never read before every
replica holds it. Each write carries a stamp ``(life, version)`` that orders it
among its key's writes across deletes; a delete leaves a grave (a :data:`Mark`),
so a late apply of an older write changes nothing (``docs/replication.md``,
"Lives and graves"). On a ``leased`` record a primary answers reads only while
its lease runs (:meth:`renew_lease`), else :class:`~dhtcart.errors.LeaseExpired`.
"""

from __future__ import annotations

import random
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import NamedTuple

from dhtcart.backends.base import Backend, Record
from dhtcart.backends.ownership import Ownership
from dhtcart.errors import InvalidInput

__all__ = [
    "Change",
    "Entry",
    "FencedBackend",
    "Mark",
    "Pending",
    "Update",
    "apply_changes",
    "decode_mark",
    "encode_mark",
    "stamp_of",
    "write_life",
]

#: a change of one record: the current record (``None``: absent) to the new value, or ``None``
#: to leave it as it is (see :meth:`FencedBackend.modify`)
Update = Callable[[Record | None], bytes | None]
#: a compare-and-set loop gives up after this many conflicts in a row
MAX_UPDATE_TRIES = 10_000


def back_off(conflicts: int) -> None:
    """The pause of a compare-and-set loop after ``conflicts`` conflicts in a row.

    None for the first four (a conflict or two is ordinary: try again at once);
    from then on a random pause of up to 0.5 ms per conflict, at most 10 ms, so
    that writers contending for one key spread out instead of retrying in
    lockstep (each retry is a round trip the server serves for nothing).
    """
    if conflicts > 4:
        time.sleep(random.uniform(0, 0.0005 * min(conflicts - 1, 20)))


def modify_by_cas(
    key: int,
    change: Callable[[Record | None], bytes | None],
    tries: int,
    get: Callable[[int], Record | None],
    put: Callable[[int, bytes, int], int],
) -> Record | None:
    """A read-modify-write as a compare-and-set loop: ``get`` the record, ``change`` it, ``put``
    it back if its version did not move (``put(key, value, expected_version)`` returns the new
    version or raises :class:`~dhtcart.errors.VersionConflict`), else again; at most ``tries``
    times, pausing after the fourth conflict in a row (:func:`back_off`), then
    :class:`~dhtcart.errors.TooManyRetries`, nothing written."""
    from dhtcart.errors import TooManyRetries, VersionConflict

    for attempt in range(tries):
        if attempt:
            back_off(attempt)
        current = get(key)
        value = change(current)
        if value is None:
            return current
        try:
            version = put(key, value, current.version if current is not None else 0)
        except VersionConflict:
            continue
        return Record(version, value)
    raise TooManyRetries(f"key {key}: {tries} compare-and-set conflicts in a row; nothing was written")


def change_called_back(shard: str) -> InvalidInput:
    """The error of a ``modify`` change that called its own shard: the shard holds its lock (or
    its LMDB write transaction) for the change, so the call would wait for itself forever."""
    return InvalidInput(
        "change",
        f"shard {shard!r}: a modify's change function called the store back (a get, put, scan, ...);"
        " it runs inside the shard's atomic step, so such a call would wait for itself:"
        " compute the new value from the record it is given alone (nothing was written)",
    )


#: one ownership change: ``(lo, hi, state, peer)`` sets the keys ``lo < key <= hi``
Change = tuple[int, int, str, str]


def apply_changes(
    current: Ownership,
    token: int,
    epoch: int,
    changes: Sequence[Change],
    expect: str | None,
    leased: bool | None = None,
) -> Ownership:
    """The record after ``changes``, made by the holder of ``token`` at membership ``epoch``.

    Refuses (:class:`~dhtcart.errors.LeaseLost`) a token older than the
    record's, or, with ``expect``, a range not wholly in that state. The
    record keeps the newest token and epoch it has seen. Backends call this
    inside their atomic step.
    """
    current.check_token(token)
    segments = current.segments.replace_many(changes, expect=expect)
    return Ownership(
        max(epoch, current.epoch),
        max(token, current.token),
        segments,
        current.leased if leased is None else leased,
    )


class Pending(NamedTuple):
    """A write a primary decided and has not committed: ``prev`` is the version it replaces
    (0: absent), ``version`` the one it makes (``prev + 1``), ``value`` the bytes or ``None``
    for a delete; ``backups`` the primary's record's list of them when read (``name@born``,
    comma separated); ``life`` the key's life the write belongs to (see :data:`Mark`: a put
    that creates the key after a delete starts the next life; a delete ends the current one).

    A write's *stamp* ``(life, version)`` orders it among all the writes of its key, across
    deletes: users' versions start at 1 again after a delete, lives only grow."""

    key: int
    prev: int
    version: int
    value: bytes | None
    backups: str = ""
    life: int = 0

    def encode(self) -> bytes:
        """``prev`` and ``version`` as 8 bytes each, a flag byte (1: put, 0: delete; 3 and 2: the
        same with the 8-byte life next, when it is not 0), the value."""
        head = self.prev.to_bytes(8, "big") + self.version.to_bytes(8, "big")
        if self.life:
            flag = b"\x02" if self.value is None else b"\x03"
            return head + flag + self.life.to_bytes(8, "big") + (self.value or b"")
        return head + (b"\x00" if self.value is None else b"\x01") + (self.value or b"")

    @classmethod
    def decode(cls, key: int, raw: bytes, backups: str = "") -> Pending:
        """The inverse of :meth:`encode` (``CorruptData`` for bytes that are not one)."""
        from dhtcart.errors import CorruptData

        flag = raw[16:17]
        if len(raw) < 17 or flag not in (b"\x00", b"\x01", b"\x02", b"\x03") or (flag >= b"\x02" and len(raw) < 25):
            raise CorruptData(f"key {key}: a pending write of {len(raw)} bytes cannot be decoded")
        life, start = (int.from_bytes(raw[17:25], "big"), 25) if flag >= b"\x02" else (0, 17)
        value = bytes(raw[start:]) if flag in (b"\x01", b"\x03") else None
        return cls(key, int.from_bytes(raw[:8], "big"), int.from_bytes(raw[8:16], "big"), value, backups, life)

    @property
    def stamp(self) -> tuple[int, int]:
        """``(life, version)``: the order of this write among its key's writes."""
        return (self.life, self.version)


#: What a shard keeps of a key beyond its record, in a store that keeps copies
#: (``docs/replication.md``, "Lives and graves"): ``(life, 0)`` for a record of a
#: life after the first (a key created again after a delete), ``(life, version)``
#: for a *grave*: the key was deleted at that stamp and holds no record. A key
#: without a mark is of life 0 (a record), or was never written or deleted
#: without one (absent: stamp ``(0, 0)``).
Mark = tuple[int, int]
#: a write as levelling makes it: key, life, version, value (``None``: a grave)
Entry = tuple[int, int, int, bytes | None]


def stamp_of(version: int | None, mark: Mark | None) -> tuple[int, int]:
    """The stamp ``(life, version)`` of what a shard holds for a key: its record's ``version``
    (``None``: no record) and its :data:`Mark`.

    A record beside a grave was created after that delete by a plain write (a store that kept
    one copy for a while, whose plain writes leave marks as they are): it belongs to the next
    life, so a stale grave never counts as newer than the record.
    """
    if version is not None:
        if mark is None:
            return (0, version)
        return (mark[0] + 1 if mark[1] else mark[0], version)
    return mark if mark and mark[1] else (0, 0)


def write_life(version: int | None, mark: Mark | None) -> int:
    """The life of a write decided where the key's record has ``version`` (``None``: no record)
    and this :data:`Mark`: the record's life, or, creating the key after a grave, the next one."""
    if version is not None:
        return stamp_of(version, mark)[0]
    return mark[0] + 1 if mark and mark[1] else 0


def encode_mark(life: int, version: int) -> bytes:
    """A :data:`Mark` as stored: life and version, 8 bytes big-endian each."""
    return int(life).to_bytes(8, "big") + int(version).to_bytes(8, "big")


def decode_mark(raw: bytes | memoryview) -> Mark:
    """The inverse of :func:`encode_mark` (``CorruptData`` for bytes that are not one)."""
    from dhtcart.errors import CorruptData

    raw = bytes(raw)
    if len(raw) != 16:
        raise CorruptData(f"a mark of {len(raw)} bytes (16 expected)")
    return (int.from_bytes(raw[:8], "big"), int.from_bytes(raw[8:], "big"))


def _nothing() -> None:
    return None


class FencedBackend(Backend):
    """A backend that keeps an ownership record and speaks the migration protocol.

    Memory, LMDB and Redis are fenced backends; a third-party backend that
    implements only :class:`~dhtcart.backends.base.Backend` works on its own
    but cannot be a store's shard.

    When :attr:`fenced`, a plain write (``put``, ``delete``, ``modify``) goes
    through only where the key is owned, and, atomically with that check,
    only if no replicated write of the key is pending (:meth:`decide`);
    otherwise it raises :class:`~dhtcart.errors.WriteInFlight` with that
    write, which the store finishes before trying again. So a handle that
    still routes with one copy during ``set_replicas`` never slips a write in
    between another handle's decide and commit (docs/replication.md).
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
        self,
        token: int,
        epoch: int,
        changes: Sequence[Change] = (),
        expect: str | None = None,
        *,
        leased: bool | None = None,
    ) -> Ownership:
        """Apply ``changes`` atomically (see :func:`apply_changes`); return the new record.

        With no changes, this only raises the record's token (a new rebalancer
        fencing out the old one). ``leased`` sets whether the record's reads
        need a lease (``None``: unchanged).
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
        """Make the records in the ``ranges`` (``(lo, hi]`` each) exactly ``records``, atomically
        (the ranges' pending writes and marks go: :meth:`import_marks` brings the source's).

        ``records`` keep their versions and all lie in the ranges. Refused
        (:class:`~dhtcart.errors.LeaseLost`) for a stale ``token`` or if the
        shard serves any key of the ranges: a copy never overwrites what a shard
        owns. Idempotent. Returns how many records were written.
        """

    @abstractmethod
    def drop_ranges(self, token: int, ranges: Sequence[tuple[int, int]]) -> int:
        """Delete every record in the ``ranges`` (their pending writes and marks too); refused for a
        stale token or a served range.

        Returns how many records went. Idempotent.
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

    # -- one atomic read-modify-write ---------------------------------------------------

    def modify(self, key: int, change: Update, tries: int = MAX_UPDATE_TRIES) -> Record | None:
        """Read ``key``, ``change`` its record, write the value it returns: one atomic step.

        ``change(record)`` gets the current record (``None`` when absent) and
        returns the new value, or ``None`` to leave the key as it is; the
        ownership check (a plain write: the shard must own the key) is in the
        same step. An exception it raises aborts the step, nothing written.
        Returns the record after the step.

        This default is a compare-and-set loop (read, change, write if the
        version did not move, else again), for media that cannot run Python
        inside their atomic step (Redis): ``change`` may then run more than
        once (at most ``tries`` times, pausing a little after the fourth
        conflict in a row (:func:`back_off`), then
        :class:`~dhtcart.errors.TooManyRetries`, nothing written). Memory and
        LMDB run it once, inside their lock or write transaction. Either way
        ``change`` must be a function of the record alone, quick, and do no I/O.
        """
        return modify_by_cas(key, change, tries, self.get, self.put)

    # -- replicated writes and leases (``docs/replication.md``) ------------------------

    @abstractmethod
    def decide(self, key: int, value: bytes | None, expected_version: int | None = None) -> Pending:
        """On the key's primary: decide a write (``value``; ``None`` deletes) and record it pending.

        Atomic with the ownership check: the shard must own the key or be its
        primary (else :class:`~dhtcart.errors.Moved`); a pending write of the
        key raises :class:`~dhtcart.errors.WriteInFlight` (finish it first);
        ``expected_version`` is compared with the committed version
        (:class:`~dhtcart.errors.VersionConflict`). Returns the pending write,
        with the backups it must reach.
        """

    @abstractmethod
    def pending(self, key: int) -> Pending | None:
        """The write of ``key`` decided and not committed on this shard, with its backups now."""

    @abstractmethod
    def scan_pending(self, lo: int, hi: int) -> list[Pending]:
        """Every pending write of ``lo < key <= hi``, with their backups now (a migration finishes them)."""

    @abstractmethod
    def commit(self, key: int, version: int, life: int) -> bool:
        """Make the pending write of ``key`` at stamp ``(life, version)`` the record (a delete:
        remove it, and leave a grave); whether it was still pending.

        Idempotent: a write already committed (by its writer, or by another
        handle that finished it) is left as it is, and so is another pending
        write of the same version in another life.
        """

    @abstractmethod
    def apply(self, primary: str, pending: Pending) -> None:
        """On a backup: apply a write that ``primary`` (``name@born``) decided, if newer than what is kept.

        Refused (:class:`~dhtcart.errors.Moved`) unless this shard's record
        keeps the key as a backup of that very primary, so a write decided by
        a primary that was taken out never lands. The write is applied only if
        its stamp is newer than the stamp of what the shard holds (its record,
        or its grave: :func:`stamp_of`), so a late apply changes nothing, after
        a delete too; a delete leaves a grave.
        """

    @abstractmethod
    def marks(self, ranges: Sequence[tuple[int, int]]) -> dict[int, Mark]:
        """Every :data:`Mark` of the ``ranges`` (``(lo, hi]`` each; the hand-over copies them with the records)."""

    @abstractmethod
    def import_marks(self, token: int, ranges: Sequence[tuple[int, int]], marks: dict[int, Mark]) -> None:
        """Make the marks of the ``ranges`` exactly ``marks`` (after :meth:`import_ranges`;
        refused as it is: a stale token or a served range)."""

    @abstractmethod
    def repair_entries(self, token: int, entries: Sequence[Entry]) -> int:
        """Write each :data:`Entry` (a record, or a grave where its value is ``None``) unless this
        shard holds its stamp or a newer one (token-fenced); how many were written.

        Used to bring the surviving replicas of a range level with each other
        before one of them becomes its primary, deletes included.
        """

    def send_apply(self, primary: str, pending: Pending) -> Callable[[], None]:
        """:meth:`apply` in two halves, so that a write reaches all its backups at once: send it
        now, and return a function that waits for its outcome (raising what :meth:`apply` raises).

        A store sends the write to every backup, then waits for each: on a
        network medium the backups work at the same time, and the write costs
        one round trip, not one per backup. This default applies at once (a
        medium in this process has no round trip to overlap) and returns a
        function that does nothing. Call the returned function exactly once.
        """
        self.apply(primary, pending)
        return _nothing

    def repair_records(self, token: int, records: Sequence[tuple[int, Record]]) -> int:
        """:meth:`repair_entries` of records of the first life: each written unless this shard holds
        that stamp or a newer one (token-fenced). Returns how many were written."""
        return self.repair_entries(token, [(key, 0, rec.version, rec.value) for key, rec in records])

    @abstractmethod
    def renew_lease(self, epoch: int, until: float) -> float:
        """Let this shard serve reads until ``until`` (seconds since the Unix epoch), if ``epoch``
        is not older than its record's; return the lease's end now (0: none).

        The caller read the membership at ``epoch`` and found this shard a
        member no earlier than ``until - lease``: see ``docs/replication.md``
        for why that bounds what a paused shard can answer.
        """

    @abstractmethod
    def lease(self) -> float:
        """When this shard's lease to serve reads ends (seconds since the Unix epoch; 0: none)."""
