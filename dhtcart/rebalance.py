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
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dhtcart._rwlock import RWLock
from dhtcart.ring import Move, Ring
from dhtcart.server import DHTServer

__all__ = ["DEFAULT_BATCH_SIZE", "Migration", "Progress", "RebalancePlan", "RebalanceReport", "plan"]

DEFAULT_BATCH_SIZE = 1000

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
        """Move every arc, one batch per exclusive hold of ``gate``."""
        for i, m in enumerate(self.moves):
            src, dst = servers[m.source], servers[m.target]
            while True:
                with gate.write():
                    batch = list(src.scan(self.cursors[i], m.hi, limit=batch_size))
                    if batch:
                        dst.put_many(batch)
                    # the last batch of an arc hands the whole rest of the arc over
                    self.cursors[i] = batch[-1][0] if len(batch) == batch_size else m.hi
                    if batch:
                        src.delete_many((k, r.version) for k, r in batch)
                self.keys_moved += len(batch)
                self.bytes_moved += sum(len(r.value) for _, r in batch)
                if progress is not None and batch:
                    progress(self.keys_moved, max(planned, self.keys_moved))
                if len(batch) < batch_size:
                    break
