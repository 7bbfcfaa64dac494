"""Moving data when the ring changes: plans, live migration, reports.

A rebalance goes from an old ring to a new one. :func:`plan` lists the arcs
whose owner changes (``old.moves(new)``) and counts, by ordered range scans of
the source shards, the keys and bytes in them: its cost grows with what moves,
never with what stays.

:class:`Migration` then moves each arc in batches. For each batch, with the
store's gate held exclusively (so no operation runs meanwhile):

1. scan up to ``batch_size`` records of the arc from the source shard;
2. write them to the target with their versions (``put_many``);
3. advance the arc's cursor: keys up to the last one copied now route to the
   target;
4. delete them from the source, each only at the version copied.

Between batches the gate is open and every operation routes through
:meth:`Migration.owner`: the target for keys at or below the arc's cursor, the
source above it. So an operation waits for at most one batch, every
acknowledged write lands where the next read looks, and a crash between steps
2 and 4 leaves at worst an identical copy on both sides, which re-running the
migration (the store's journal says what to re-run) copies again and drops.

If a shard *fails* midway (an exception, the process lives on), copies may be
left where no route leads: on the target if step 2 failed, on the source if
step 4 did. The batch's keys and versions are kept in :attr:`Migration.dirty`
(and in the store's journal) and deleted, at exactly those versions, before
the migration goes on, so a stale copy can never come back later.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dhtcart._rwlock import RWLock
from dhtcart.backends.base import Record
from dhtcart.ring import Move, Ring
from dhtcart.server import DHTServer

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MAX_ARCS_PER_BATCH",
    "Migration",
    "Progress",
    "RebalancePlan",
    "RebalanceReport",
    "estimate_keys",
    "plan",
]

DEFAULT_BATCH_SIZE = 1000
#: arcs one batch may span (bounds how long one batch holds the gate)
MAX_ARCS_PER_BATCH = 256

#: progress callback: ``progress(keys_moved_so_far, keys_planned)``
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class RebalancePlan:
    """What a rebalance would move, computed without moving anything."""

    moves: list[Move]
    keys: int  #: keys in the moving arcs now
    bytes: int  #: their values' bytes
    total_keys: int  #: all keys in the store
    keys_by_move: list[int] = field(repr=False)

    @property
    def fraction(self) -> float:
        """Share of all keys that would move."""
        return self.keys / self.total_keys if self.total_keys else 0.0

    def by_route(self) -> dict[tuple[str, str], int]:
        """Keys that would move, per ``(source, target)``."""
        out: dict[tuple[str, str], int] = {}
        for m, n in zip(self.moves, self.keys_by_move):
            out[(m.source, m.target)] = out.get((m.source, m.target), 0) + n
        return out


@dataclass(frozen=True)
class RebalanceReport:
    """What a rebalance did."""

    keys_moved: int
    bytes_moved: int
    seconds: float
    arcs: int
    keys_before: dict[str, int]
    keys_after: dict[str, int]

    @property
    def keys_per_second(self) -> float:
        return self.keys_moved / self.seconds if self.seconds > 0 else 0.0

    @property
    def max_mean_load(self) -> float:
        """Most loaded shard's keys over the mean (1.0 is perfect balance)."""
        counts = list(self.keys_after.values())
        if not counts or not sum(counts):
            return 1.0
        return max(counts) / (sum(counts) / len(counts))


def estimate_keys(moves: list[Move], old: Ring, servers: Mapping[str, DHTServer]) -> int:
    """Estimate the keys in ``moves`` from shard counts and arc sizes, reading no records.

    Keys are uniform hashes, so a source shard's keys in an arc are about its
    count times the arc's share of what it owns. Used for progress bars.
    """
    owned: dict[str, int] = {}
    for arc in old.arcs():
        owned[arc.node] = owned.get(arc.node, 0) + arc.size
    total = 0.0
    for m in moves:
        if owned.get(m.source):
            total += servers[m.source].count() * m.size / owned[m.source]
    return round(total)


def plan(old: Ring, new: Ring, servers: Mapping[str, DHTServer]) -> RebalancePlan:
    """Count what moving from ``old`` to ``new`` would move (reads only the moving arcs)."""
    moves = old.moves(new)
    per_move = []
    nbytes = 0
    for m in moves:
        n = 0
        for _, rec in servers[m.source].scan(m.lo, m.hi):
            n += 1
            nbytes += len(rec.value)
        per_move.append(n)
    total = sum(s.count() for s in servers.values())
    return RebalancePlan(moves, sum(per_move), nbytes, total, per_move)


class Migration:
    """The state of a live migration from ``old`` to ``new`` (see the module doc)."""

    def __init__(self, old: Ring, new: Ring, moves: list[Move] | None = None) -> None:
        self.old = old
        self.new = new
        self.moves = old.moves(new) if moves is None else moves
        self._his = [m.hi for m in self.moves]
        self.cursors = [m.lo for m in self.moves]
        self.keys_moved = 0
        self.bytes_moved = 0
        #: ``(shard, [(key, version), ...])`` of a batch that failed midway, or None
        self.dirty: tuple[str, list[tuple[int, int]]] | None = None

    def owner(self, key: int) -> str:
        """Where ``key`` lives right now (call with the gate held for reading)."""
        i = bisect_left(self._his, key)
        if i < len(self.moves):
            m = self.moves[i]
            if m.lo < key:
                return m.target if key <= self.cursors[i] else m.source
        return self.new.node_for(key)

    def run(
        self,
        servers: Mapping[str, DHTServer],
        gate: RWLock,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: Progress | None = None,
        planned: int = 0,
    ) -> None:
        """Move every arc, one batch per exclusive hold of ``gate``.

        A batch gathers up to ``batch_size`` records from successive arcs of one
        ``(source, target)`` route (at most :data:`MAX_ARCS_PER_BATCH` arcs), so
        many small arcs cost one bulk write and one bulk delete, not one each.

        If a shard fails midway, the half-done batch is recorded in
        :attr:`dirty` (where copies of it may linger) before the error
        propagates; :meth:`clean` removes them, and ``run`` may then be called
        again to continue from the cursors.
        """
        self.clean(servers)
        routes: dict[tuple[str, str], list[int]] = {}
        for i, m in enumerate(self.moves):
            if self.cursors[i] < m.hi:
                routes.setdefault((m.source, m.target), []).append(i)
        for (source, target), todo in routes.items():
            # records go backend to backend: they were checked when first written
            src, dst = servers[source].backend, servers[target].backend
            pos = 0
            while pos < len(todo):
                with gate.write():
                    batch: list[tuple[int, Record]] = []
                    advance: list[tuple[int, int]] = []
                    arcs = 0
                    while pos < len(todo) and len(batch) < batch_size and arcs < MAX_ARCS_PER_BATCH:
                        i = todo[pos]
                        want = batch_size - len(batch)
                        got = list(src.scan(self.cursors[i], self.moves[i].hi, limit=want))
                        batch += got
                        arcs += 1
                        if len(got) == want:  # the arc may hold more: continue it next batch
                            advance.append((i, got[-1][0]))
                            break
                        advance.append((i, self.moves[i].hi))  # the arc is done, all of it
                        pos += 1
                    versions = [(k, r.version) for k, r in batch]
                    if batch:
                        try:
                            dst.put_many(batch)
                        except BaseException:
                            self.dirty = (target, versions)  # copies may sit on the target
                            raise
                    for i, cursor in advance:  # cut over: these keys now route to the target
                        self.cursors[i] = cursor
                    if batch:
                        try:
                            src.delete_many(versions)
                        except BaseException:
                            self.dirty = (source, versions)  # old copies may sit on the source
                            raise
                self.keys_moved += len(batch)
                self.bytes_moved += sum(len(r.value) for _, r in batch)
                if progress is not None and batch:
                    progress(self.keys_moved, max(planned, self.keys_moved))

    def clean(self, servers: Mapping[str, DHTServer]) -> None:
        """Drop the copies a failed batch may have left where no route leads."""
        if self.dirty is not None:
            name, versions = self.dirty
            servers[name].backend.delete_many(versions)
            self.dirty = None
