"""What a rebalance would move, and what it did: plans, estimates and reports.

:func:`plan` lists the arcs whose owner changes between two rings
(``old.moves(new)``) and counts, by ordered range scans of the source shards,
the keys and bytes in them: its cost grows with what moves, never with what
stays.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dhtcart.backends.base import Backend
from dhtcart.ring import Move, Ring

__all__ = ["Progress", "RebalancePlan", "RebalanceReport", "estimate_keys", "plan"]

#: progress callback: ``progress(keys_moved_so_far, keys_planned)``
Progress = Callable[[int, int], None]


class _Moving(Protocol):
    """A range that moves: a ring's :class:`~dhtcart.ring.Move` or a replica list's change."""

    @property
    def source(self) -> str: ...

    @property
    def size(self) -> int: ...


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


def estimate_keys(moves: Sequence[_Moving], old: Ring, backends: Mapping[str, Backend]) -> int:
    """Estimate the keys in ``moves`` from shard counts and arc sizes, reading no records.

    Keys are uniform hashes, so a source shard's keys in an arc are about its
    count times the arc's share of what it owns. Used for progress bars.
    """
    owned: dict[str, int] = {}
    for arc in old.arcs():
        owned[arc.node] = owned.get(arc.node, 0) + arc.size
    counts: dict[str, int] = {}  # each source counted once, not once per arc
    total = 0.0
    for m in moves:
        if owned.get(m.source):
            if m.source not in counts:
                counts[m.source] = backends[m.source].count()
            total += counts[m.source] * m.size / owned[m.source]
    return round(total)


def plan(old: Ring, new: Ring, backends: Mapping[str, Backend]) -> RebalancePlan:
    """Count what moving from ``old`` to ``new`` would move (reads only the moving arcs)."""
    moves = old.moves(new)
    per_move = []
    nbytes = 0
    for m in moves:
        n = 0
        for _, rec in backends[m.source].scan(m.lo, m.hi):
            n += 1
            nbytes += len(rec.value)
        per_move.append(n)
    total = sum(b.count() for b in backends.values())
    return RebalancePlan(moves, sum(per_move), nbytes, total, per_move)
