"""The hand-over protocol: moving data and ownership, batch by batch, when the ring changes.

A rebalance goes from an old ring to a new one (see :mod:`dhtcart.rebalance.plan`
for what it would move). :class:`Mover` hands the arcs whose owner changes over, batch by batch, from source ``S`` to
target ``T``. Each shard's own ownership record (see
:mod:`dhtcart.backends.ownership`) is the truth, and a batch goes through five
steps, each one atomic on one shard::

    1. freeze   S: ranges OWNED -> FROZEN     S serves reads, refuses writes
    2. copy     T: import the records         T does not serve them yet
    3. release  S: FROZEN -> NOT_OWNED(T)     S redirects to T
    4. take     T: NOT_OWNED -> OWNED         T serves them
    5. drop     S: delete its copies

So at every instant a key is served by at most one shard, and by exactly one
outside steps 3-4 of its own batch; writes wait (the store retries them) from
step 1 to step 4, reads only between 3 and 4. Nothing changes under the copy,
so nothing written is lost. Every step carries the rebalancer's lease token
and every shard refuses a token older than the newest it has seen.

The protocol keeps no state of its own: where a migration stands is read from
the shards' records. :meth:`Mover.run` first raises its token on every shard
involved (fencing out any earlier rebalancer), then, arc by arc, finishes what
it finds half done (a frozen range is copied again; a released one is taken)
and goes on with what is not started. So running it again after a crash at any
step finishes the migration, and a client that waits on a frozen range can run
it with ``in_flight_only=True`` to finish just the batches a dead rebalancer
left. A batch that fails before its release is unfrozen again (``S`` serves it
as before); after the release it is left for the next run to finish.
"""

from __future__ import annotations

import contextlib
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence

from dhtcart.backends.base import Record
from dhtcart.backends.fencing import FencedBackend
from dhtcart.backends.ownership import FROZEN, NOT_OWNED, OWNED, Segments
from dhtcart.rebalance.plan import Progress
from dhtcart.ring import Ring
from dhtcart.settings import DEFAULT_BATCH_SIZE

__all__ = ["MAX_RANGES_PER_BATCH", "Migration", "Mover"]

#: ranges one batch may span (bounds the size of one ownership change)
MAX_RANGES_PER_BATCH = 256


class Migration:
    """Where keys are during a migration from ``old`` to ``new``, as far as one handle knows.

    A key outside the moving arcs is where both rings put it. A key in a
    moving arc is on the arc's source until its batch is handed over, then on
    the target; :attr:`hints` records, per arc, the highest key known to be on
    the target already (batches go in key order), learned from the handle's
    own rebalances and from redirects. A wrong guess costs one redirect.
    """

    def __init__(self, old: Ring, new: Ring) -> None:
        self.old = old
        self.new = new
        self.moves = old.moves(new)
        self._his = [m.hi for m in self.moves]
        #: per move: keys up to this one are (believed) on the target
        self.hints = [m.lo for m in self.moves]

    def move_of(self, key: int) -> int | None:
        """The index of the moving arc holding ``key``, or ``None``."""
        i = bisect_left(self._his, key)
        if i < len(self.moves) and self.moves[i].lo < key:
            return i
        return None

    def owner(self, key: int) -> str:
        """The shard to ask first for ``key``."""
        i = bisect_left(self._his, key)
        if i < len(self.moves):
            m = self.moves[i]
            if m.lo < key:
                return m.target if key <= self.hints[i] else m.source
        return self.new.node_for(key)

    def learn(self, key: int, owner: str) -> None:
        """A shard said ``key`` is on ``owner`` now."""
        i = self.move_of(key)
        if i is not None and self.moves[i].target == owner and key > self.hints[i]:
            self.hints[i] = key


class Mover:
    """Hands the arcs of a :class:`Migration` over, with ``token`` at membership ``epoch``.

    ``backends`` maps every shard of the migration to its (fenced) backend.
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
        self.batch_size = batch_size
        self.progress = progress
        self.planned = planned
        self.check_lease = check_lease
        self.report = report
        self.keys_moved = 0
        self.bytes_moved = 0
        self.batches = 0
        self._segs: dict[str, Segments] = {}

    def run(self, *, in_flight_only: bool = False) -> None:
        """Finish the migration (or, with ``in_flight_only``, only its half-done batches)."""
        moves = self.migration.moves
        routes: dict[tuple[str, str], list[int]] = {}
        for i, m in enumerate(moves):
            routes.setdefault((m.source, m.target), []).append(i)
        for name in sorted({m.source for m in moves} | {m.target for m in moves}):
            # fence: from now on no older rebalancer can change these shards
            self._segs[name] = self.backends[name].update_ownership(self.token, self.epoch).segments
        for (source, target), idxs in routes.items():
            self._route(source, target, idxs, in_flight_only)
        if in_flight_only:
            return
        if self.check_lease is not None:
            self.check_lease()
        by_source: dict[str, list[tuple[int, int]]] = {}
        for m in moves:
            by_source.setdefault(m.source, []).append((m.lo, m.hi))
        for source, ranges in by_source.items():  # copies a crash left before their drop
            for start in range(0, len(ranges), MAX_RANGES_PER_BATCH):
                self.backends[source].drop_ranges(self.token, ranges[start : start + MAX_RANGES_PER_BATCH])

    def _next_span(self, source: str, target: str, pos: int, hi: int) -> tuple[int, int, str] | None:
        """The first range from ``pos`` that the target does not serve yet, with the source's state there."""
        for a, b, state, _ in self._segs[target].spans(pos, hi):
            if state != OWNED:
                sa, sb, s_state, _ = self._segs[source].spans(a, b)[0]
                return sa, sb, s_state
        return None

    def _route(self, source: str, target: str, idxs: list[int], in_flight_only: bool) -> None:
        moves = self.migration.moves
        src = self.backends[source]
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
                span = self._next_span(source, target, pos, moves[i].hi)
                if span is None:  # this arc is done
                    k += 1
                    if k < len(idxs):
                        pos = moves[idxs[k]].lo
                    continue
                a, b, state = span
                if state == OWNED:
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
                if state == FROZEN:  # frozen by an earlier rebalancer: copy again, then go on
                    self._hand_over(source, target, [(a, b)], [i], frozen=True)
                else:  # released: the copy is complete, the target has only to take it
                    self._take(source, target, [(a, b)], [i], None, 0)
                pos = b
            if ranges:
                self._hand_over(source, target, ranges, owners, frozen=False)

    def _hand_over(
        self, source: str, target: str, ranges: Sequence[tuple[int, int]], owners: Sequence[int], *, frozen: bool
    ) -> None:
        src, dst = self.backends[source], self.backends[target]
        token, epoch = self.token, self.epoch
        released = False
        try:
            if not frozen:
                self._segs[source] = src.update_ownership(
                    token, epoch, [(lo, hi, FROZEN, "") for lo, hi in ranges], expect=OWNED
                ).segments
            if src.copy_format and src.copy_format == dst.copy_format:  # as stored: no decoding
                items = src.export_ranges(ranges)
                dst.import_encoded(token, ranges, items)
                copied, nbytes = len(items), sum(len(raw) for _, raw in items) - 8 * len(items)
            else:
                records: list[tuple[int, Record]] = []
                for lo, hi in ranges:
                    records += src.scan(lo, hi)
                dst.import_ranges(token, ranges, records)
                copied, nbytes = len(records), sum(len(r.value) for _, r in records)
            released = True  # from here on the release may have happened: never undo it
            self._segs[source] = src.update_ownership(
                token, epoch, [(lo, hi, NOT_OWNED, target) for lo, hi in ranges], expect=FROZEN
            ).segments
        except BaseException:
            if not released:
                self._unfreeze(source, ranges)
            raise
        self._take(source, target, ranges, owners, copied, nbytes)

    def _unfreeze(self, source: str, ranges: Sequence[tuple[int, int]]) -> None:
        """Give a failed batch back to its source (best effort: a later run finishes it otherwise)."""
        with contextlib.suppress(Exception):  # unreachable, or not frozen: the next run finishes it
            self._segs[source] = (
                self.backends[source]
                .update_ownership(self.token, self.epoch, [(lo, hi, OWNED, "") for lo, hi in ranges], expect=FROZEN)
                .segments
            )

    def _take(
        self,
        source: str,
        target: str,
        ranges: Sequence[tuple[int, int]],
        owners: Sequence[int],
        copied: int | None,
        nbytes: int,
    ) -> None:
        self._segs[target] = (
            self.backends[target]
            .update_ownership(self.token, self.epoch, [(lo, hi, OWNED, "") for lo, hi in ranges], expect=NOT_OWNED)
            .segments
        )
        hints = self.migration.hints
        for i, (_, hi) in zip(owners, ranges):
            if hi > hints[i]:
                hints[i] = hi
        dropped = self.backends[source].drop_ranges(self.token, ranges)
        moved = dropped if copied is None else copied
        self.keys_moved += moved
        self.bytes_moved += nbytes
        self.batches += 1
        if self.report is not None:
            self.report(self.keys_moved)
        if self.progress is not None and moved:
            self.progress(self.keys_moved, max(self.planned, self.keys_moved))
