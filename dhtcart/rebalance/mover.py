"""The hand-over protocol: moving data and ownership, batch by batch, when replica lists change.

A migration goes from an old placement to a new one (another ring, another
number of copies, or shards taken out by a failover: see
:mod:`dhtcart.replication.placement`). Where a range's replica list changes
from ``old`` (primary ``P`` first) to ``new`` (primary ``Q`` first), the
:class:`Mover` hands it over in batches. Each shard's own ownership record
(:mod:`dhtcart.backends.ownership`) is the truth, and a batch goes through
these steps, each one atomic on one shard::

    1. freeze    P: OWNED|PRIMARY -> FROZEN       P serves reads, refuses writes
    2. finish    P's pending replicated writes of the batch: applied to P's backups, committed
    3. copy      every shard of ``new`` not in ``old``: import the records (not served yet)
    4. backups   every backup of ``new`` -> BACKUP of Q
    5. release   P: FROZEN -> NOT_OWNED(Q), or BACKUP of Q if P stays a backup
                 (when P stays the primary, FROZEN -> its new state: steps 5 and 6 are one)
    6. take      Q: NOT_OWNED|BACKUP -> OWNED (one copy) or PRIMARY (with the new backups)
    7. drop      the shards of ``old`` not in ``new``: NOT_OWNED, then their copies deleted

With one copy per key (``old = (S,)``, ``new = (T,)``) this is the protocol of
dhtcart 0.2: freeze S, copy to T, release S, take T, drop S. At every instant
a key has at most one shard that answers it (an owner or a primary), and
exactly one outside steps 5-6 of its own batch; writes wait (the store retries
them) from step 1 to step 6, reads only between 5 and 6. Nothing changes
under the copy, so nothing written is lost; the writes decided before the
freeze are finished in step 2, before anything is copied. Every step carries
the rebalancer's lease token, and every shard refuses a token older than the
newest it has seen.

The protocol keeps no state of its own: where a migration stands is read from
the shards' records. :meth:`Mover.run` first raises its token on every shard
involved (fencing out any earlier rebalancer), then, range by range, finishes
what it finds half done (a frozen range is finished and copied again to the
shards that do not hold it yet; a released one is taken) and goes on with
what is not started. So running it again after a crash at any step finishes
the migration, and a client that waits on a frozen range can run it with
``in_flight_only=True`` to finish just the batches a dead rebalancer left. A
batch that fails before its copy is complete is unfrozen again (``P`` serves
it as before); after that it is left for the next run to finish.
"""

from __future__ import annotations

import contextlib
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence

from dhtcart.backends.base import Record
from dhtcart.backends.fencing import FencedBackend, Pending
from dhtcart.backends.ownership import BACKUP, FROZEN, NOT_OWNED, OWNED, PRIMARY, Segments, join_peers
from dhtcart.errors import Moved
from dhtcart.rebalance.plan import Progress
from dhtcart.replication.placement import Names, Placement, ReplicaMove, diff_table
from dhtcart.settings import DEFAULT_BATCH_SIZE

__all__ = ["MAX_RANGES_PER_BATCH", "Migration", "Mover", "target_state"]

#: ranges one batch may span (bounds the size of one ownership change)
MAX_RANGES_PER_BATCH = 256


def target_state(names: Names, ids: Mapping[str, str]) -> tuple[str, str]:
    """The state and peer the primary of a range with replica list ``names`` keeps."""
    if len(names) <= 1:
        return OWNED, ""
    return PRIMARY, join_peers(ids[n] for n in names[1:])


class Migration:
    """Where keys are during a migration from placement ``old`` to ``new``, as far as one handle knows.

    A key outside the moving ranges has the same replicas in both. A key in a
    moving range has its old replicas until its batch is handed over, then its
    new ones; :attr:`hints` records, per range, the highest key known to be
    handed over already (batches go in key order), learned from the handle's
    own rebalances and from redirects. A wrong guess costs one redirect.
    """

    def __init__(self, old: Placement, new: Placement) -> None:
        self.old = old
        self.new = new
        # the moves, and one table for :meth:`replicas` (every operation of a handle routes
        # through it during a migration), from one walk over both placements
        moves, self._ends, self._where = diff_table(old.lists(), new.lists())
        self.moves: list[ReplicaMove] = moves
        self._his = [m.hi for m in moves]
        #: per move: keys up to this one are (believed) handed over
        self.hints = [m.lo for m in moves]

    def move_of(self, key: int) -> int | None:
        """The index of the moving range holding ``key``, or ``None``."""
        i = bisect_left(self._his, key)
        if i < len(self.moves) and self.moves[i].lo < key:
            return i
        return None

    def replicas(self, key: int) -> Names:
        """The replica list to use first for ``key`` (primary first)."""
        where = self._where[bisect_left(self._ends, key)]
        if type(where) is int:
            m = self.moves[where]
            return m.new if key <= self.hints[where] else m.old
        return where  # type: ignore[return-value]

    def owner(self, key: int) -> str:
        """The shard to ask first for ``key`` (``""`` if it has no live copy)."""
        names = self.replicas(key)
        return names[0] if names else ""

    def learn(self, key: int, owner: str) -> None:
        """A shard said ``key`` is served by ``owner`` now."""
        i = self.move_of(key)
        if i is not None and self.moves[i].target == owner and key > self.hints[i]:
            self.hints[i] = key


class Mover:
    """Hands the ranges of a :class:`Migration` over, with ``token`` at membership ``epoch``.

    ``backends`` maps every live shard of the migration to its (fenced)
    backend and ``ids`` every shard to its ``name@born`` (how records name
    primaries and backups). ``leased``: the records of a store that keeps
    several copies, whose primaries serve reads under a lease; ``grant`` is
    called with a shard that has just become a primary (to give it a lease).
    ``check_lease`` is called before each batch and raises
    :class:`~dhtcart.errors.LeaseLost` when the lease is gone; ``report`` after
    each batch with the keys moved so far.
    """

    def __init__(
        self,
        migration: Migration,
        backends: Mapping[str, FencedBackend],
        token: int,
        epoch: int,
        *,
        ids: Mapping[str, str] | None = None,
        leased: bool = False,
        grant: Callable[[FencedBackend], None] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: Progress | None = None,
        planned: int = 0,
        check_lease: Callable[[], None] | None = None,
        report: Callable[[int], None] | None = None,
    ) -> None:
        self.migration = migration
        self.backends = backends
        self.token = token
        self.epoch = epoch
        self.ids: Mapping[str, str] = ids if ids is not None else {n: n for n in backends}
        self.leased = leased
        self.grant = grant
        self.batch_size = batch_size
        self.progress = progress
        self.planned = planned
        self.check_lease = check_lease
        self.report = report
        self.keys_moved = 0
        self.bytes_moved = 0
        self.batches = 0
        self._segs: dict[str, Segments] = {}

    def _set(self, name: str, ranges: Sequence[tuple[int, int]], state: str, peer: str, expect: str | None) -> None:
        """One ownership change on shard ``name``: ``ranges`` to ``state``/``peer`` (token-fenced)."""
        self._segs[name] = (
            self.backends[name]
            .update_ownership(self.token, self.epoch, [(lo, hi, state, peer) for lo, hi in ranges], expect=expect)
            .segments
        )

    def run(self, *, in_flight_only: bool = False) -> None:
        """Finish the migration (or, with ``in_flight_only``, only its half-done batches)."""
        moves = self.migration.moves
        groups: dict[tuple[Names, Names], list[int]] = {}
        for i, m in enumerate(moves):
            if m.old and m.new:  # a range with no live copy cannot be handed over
                groups.setdefault((m.old, m.new), []).append(i)
        involved = sorted({n for m in moves for n in (*m.old, *m.new) if n in self.backends})
        for name in involved:
            # fence: from now on no older rebalancer can change these shards
            backend = self.backends[name]
            own = (
                backend.update_ownership(self.token, self.epoch, leased=True)
                if self.leased
                else backend.update_ownership(self.token, self.epoch)
            )
            self._segs[name] = own.segments
        for (old, new), idxs in groups.items():
            self._group(old, new, idxs, in_flight_only)
        if in_flight_only:
            return
        if self.check_lease is not None:
            self.check_lease()
        for (old, new), idxs in groups.items():  # leavers a crash left before their drop
            ranges = [(moves[i].lo, moves[i].hi) for i in idxs]
            for name in old:
                if name not in new and name in self.backends:
                    self._leave(name, ranges, new[0])

    def _leave(self, name: str, ranges: Sequence[tuple[int, int]], primary: str) -> None:
        """Shard ``name`` keeps no copy of ``ranges`` any more: not owned (pointing at ``primary``), then emptied."""
        for start in range(0, len(ranges), MAX_RANGES_PER_BATCH):
            chunk = ranges[start : start + MAX_RANGES_PER_BATCH]
            kept = [(a, b) for lo, hi in chunk for a, b, st, _ in self._segs[name].spans(lo, hi) if st == BACKUP]
            if kept:
                self._set(name, kept, NOT_OWNED, primary, BACKUP)
            self.backends[name].drop_ranges(self.token, chunk)

    def _next_span(self, p: str, q: str, pos: int, hi: int, done: tuple[str, str]) -> tuple[int, int, str, str] | None:
        """The first range from ``pos`` that ``q`` does not serve as it should yet, with ``p``'s state there."""
        for a, b, state, peer in self._segs[q].spans(pos, hi):
            if (state, peer) != done:
                sa, sb, s_state, s_peer = self._segs[p].spans(a, b)[0]
                return sa, sb, s_state, s_peer
        return None

    def _group(self, old: Names, new: Names, idxs: list[int], in_flight_only: bool) -> None:
        moves = self.migration.moves
        p, q = old[0], new[0]
        before = target_state(old, self.ids)
        done = target_state(new, self.ids)
        src = self.backends[p]
        k = 0  # the move being worked on, and where in it
        pos = moves[idxs[0]].lo
        while k < len(idxs):
            if self.check_lease is not None:
                self.check_lease()
            ranges: list[tuple[int, int]] = []
            owners: list[int] = []
            keys = 0
            while k < len(idxs) and len(ranges) < MAX_RANGES_PER_BATCH and keys < self.batch_size:
                i = idxs[k]
                span = self._next_span(p, q, pos, moves[i].hi, done)
                if span is None:  # this range is done
                    k += 1
                    if k < len(idxs):
                        pos = moves[idxs[k]].lo
                    continue
                a, b, state, peer = span
                if (state, peer) == before:
                    if in_flight_only:
                        pos = b  # not started: not ours to do now
                        continue
                    cut, found = src.boundary(a, b, self.batch_size - keys)
                    ranges.append((a, cut))
                    owners.append(i)
                    keys += found
                    pos = cut
                    continue
                if ranges:  # a half-done batch: hand over what is gathered first
                    break
                if state == FROZEN:  # frozen by an earlier rebalancer: finish it from there
                    self._hand_over(old, new, [(a, b)], [i], frozen=True)
                else:  # released: the copies are complete, the new primary has only to take it
                    self._take(old, new, [(a, b)], [i], None, 0)
                pos = b
            if ranges:
                self._hand_over(old, new, ranges, owners, frozen=False)

    def _roll_forward(self, p: str, waiting: Pending) -> None:
        """Finish a replicated write that ``p`` decided before it was frozen: apply it, commit it."""
        primary = self.ids[p]
        for name in [n for n, _ in _peers(waiting.backups)]:
            backend = self.backends.get(name)
            if backend is None:
                continue  # taken out (down): its copy is gone anyway
            with contextlib.suppress(Moved):  # not a backup of p any more: this range moved on
                backend.apply(primary, waiting)
        self.backends[p].commit(waiting.key, waiting.version, waiting.life)

    def _hand_over(
        self, old: Names, new: Names, ranges: Sequence[tuple[int, int]], owners: Sequence[int], *, frozen: bool
    ) -> None:
        p, q = old[0], new[0]
        src = self.backends[p]
        before = target_state(old, self.ids)
        copied_out = False
        copied = nbytes = 0
        try:
            if not frozen:
                self._set(p, ranges, FROZEN, before[1], before[0])
            # writes decided before the freeze: finished before anything is copied (one scan of the
            # batch's span, the ranges in key order; a pending write between two of them is not ours)
            spans = sorted(ranges)  # disjoint (lo, hi] ranges
            his = [hi for _, hi in spans]
            for waiting in src.scan_pending(spans[0][0], his[-1]):
                i = bisect_left(his, waiting.key)
                if i < len(spans) and spans[i][0] < waiting.key:
                    self._roll_forward(p, waiting)
            for name in new:
                if name in old:
                    continue
                todo = [
                    (a, b) for lo, hi in ranges for a, b, st, _ in self._segs[name].spans(lo, hi) if st == NOT_OWNED
                ]
                if todo:  # a newcomer that does not hold the batch yet
                    copied, nbytes = self._copy(p, name, todo)
            copied_out = True  # from here on other shards may point at Q: never unfreeze
            self._point_backups(old, new, ranges)
            if p == q:
                state, peer = target_state(new, self.ids)
                self._set(p, ranges, state, peer, FROZEN)
                if self.leased and self.grant is not None:
                    self.grant(src)
            elif p in new:
                self._set(p, ranges, BACKUP, self.ids[q], FROZEN)
            else:
                self._set(p, ranges, NOT_OWNED, q, FROZEN)
        except BaseException:
            if not copied_out:
                self._unfreeze(p, ranges, before)
            raise
        self._take(old, new, ranges, owners, copied, nbytes)

    def _copy(self, p: str, name: str, ranges: Sequence[tuple[int, int]]) -> tuple[int, int]:
        """Copy ``ranges`` from ``p`` to ``name`` (which does not serve them); ``(records, bytes)``."""
        src, dst = self.backends[p], self.backends[name]
        marks = src.marks(ranges)  # lives and graves: a late apply is refused on the copy too
        if src.copy_format and src.copy_format == dst.copy_format:  # as stored: no decoding
            items = src.export_ranges(ranges)
            dst.import_encoded(self.token, ranges, items)
            n, nbytes = len(items), sum(len(raw) for _, raw in items) - 8 * len(items)
        else:
            records: list[tuple[int, Record]] = []
            for lo, hi in ranges:
                records += src.scan(lo, hi)
            dst.import_ranges(self.token, ranges, records)
            n, nbytes = len(records), sum(len(r.value) for _, r in records)
        if marks:  # the import cleared the ranges' marks
            dst.import_marks(self.token, ranges, marks)
        return n, nbytes

    def _point_backups(self, old: Names, new: Names, ranges: Sequence[tuple[int, int]]) -> None:
        """Every backup of ``new`` (but the old primary, released next) becomes a backup of the new primary."""
        p, q = old[0], new[0]
        want = self.ids[q]
        for name in new[1:]:
            if name == p:
                continue
            todo = [
                (a, b, st)
                for lo, hi in ranges
                for a, b, st, peer in self._segs[name].spans(lo, hi)
                if (st, peer) != (BACKUP, want)
            ]
            for expect in (NOT_OWNED, BACKUP):
                part = [(a, b) for a, b, st in todo if st == expect]
                if part:
                    self._set(name, part, BACKUP, want, expect)

    def _unfreeze(self, p: str, ranges: Sequence[tuple[int, int]], before: tuple[str, str]) -> None:
        """Give a failed batch back to its primary (best effort: a later run finishes it otherwise)."""
        with contextlib.suppress(Exception):  # unreachable, or not frozen: the next run finishes it
            self._set(p, ranges, before[0], before[1], FROZEN)

    def _take(
        self,
        old: Names,
        new: Names,
        ranges: Sequence[tuple[int, int]],
        owners: Sequence[int],
        copied: int | None,
        nbytes: int,
    ) -> None:
        p, q = old[0], new[0]
        if p != q:
            self._point_backups(old, new, ranges)  # idempotent: a run that stopped after the release
            state, peer = target_state(new, self.ids)
            self._set(q, ranges, state, peer, BACKUP if q in old else NOT_OWNED)
            if self.leased and self.grant is not None:
                self.grant(self.backends[q])
        hints = self.migration.hints
        for i, (_, hi) in zip(owners, ranges):
            if hi > hints[i]:
                hints[i] = hi
        dropped = 0
        for name in old:
            if name not in new and name in self.backends:
                if name == p:
                    dropped += self.backends[name].drop_ranges(self.token, ranges)
                else:
                    self._leave(name, ranges, q)
        moved = dropped if copied is None else copied
        self.keys_moved += moved
        self.bytes_moved += nbytes
        self.batches += 1
        if self.report is not None:
            self.report(self.keys_moved)
        if self.progress is not None and moved:
            self.progress(self.keys_moved, max(self.planned, self.keys_moved))


def _peers(field: str) -> list[tuple[str, int]]:
    from dhtcart.backends.ownership import split_peers

    return split_peers(field)
