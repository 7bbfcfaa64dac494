"""Which shards hold each key: replica lists from the ring, the number of copies, failure domains.

A key's *replica list* is its first shard (the primary, which decides its
writes and answers its reads) followed by its backups. It is computed from
the ring alone, so every handle that knows the membership computes the same
lists, with no shared state:

1. walk the ring clockwise from the key (the preference list), taking shards
   whose failure domain is not taken yet, until ``replicas`` are found;
2. if there are fewer domains than ``replicas``, fill up with the next shards
   met, whatever their domain;
3. drop the shards that are *down* (taken out by a failover and not yet
   removed from the ring): their keys have one copy fewer until the repair.

A Redis shard's default domain is its server (``host:port``: two databases of
one server fail together); any other shard is its own domain unless it names
one. This module does no I/O: it is the placement half of the replication
protocol, tested on its own.

>>> from dhtcart.ring import PartitionRing
>>> ring = PartitionRing(["a", "b", "c"], partitions=8)
>>> p = Placement(ring, 2)
>>> [len(names) for _, _, names in p.lists()] == [2] * len(p.lists())
True
>>> p.replicas_for(0)[0] == ring.node_for(0)     # the primary is the ring's owner
True
>>> Placement(ring, 2, down=frozenset({"a"})).replicas_for(0) == tuple(
...     n for n in p.replicas_for(0) if n != "a")
True
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from dhtcart.errors import InvalidInput
from dhtcart.ring import HashRing, PartitionRing

__all__ = [
    "MAX_REPLICAS",
    "Placement",
    "ReplicaMove",
    "check_replicas",
    "default_domain",
    "diff_table",
    "placement_of",
    "shard_domains",
]

#: the most copies of a key a store keeps
MAX_REPLICAS = 7

AnyRing = HashRing | PartitionRing
Names = tuple[str, ...]


def default_domain(name: str, url: str) -> str:
    """The failure domain of shard ``name`` at ``url`` when none is named: a Redis server's
    ``host:port`` (its databases fail together), else the shard itself."""
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss") and parts.hostname:
        return f"{parts.hostname}:{parts.port or 6379}"
    return f"shard:{name}"


def shard_domains(urls: Mapping[str, str], named: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each shard's failure domain: the one ``named`` for it, else :func:`default_domain`."""
    named = named or {}
    return {n: named.get(n) or default_domain(n, u) for n, u in urls.items()}


class _Config(Protocol):
    """What a placement is computed from (a membership document)."""

    @property
    def replicas(self) -> int: ...

    @property
    def domains(self) -> dict[str, str]: ...

    @property
    def down(self) -> dict[str, Any]: ...


def placement_of(doc: _Config, ring: AnyRing, replicas: int | None = None) -> Placement:
    """The replica lists a membership document gives with ``ring`` (and ``replicas`` copies if asked)."""
    return Placement(ring, doc.replicas if replicas is None else replicas, doc.domains, frozenset(doc.down))


def check_replicas(replicas: object) -> int:
    """``replicas`` if it is an int in ``[1, MAX_REPLICAS]``, else :class:`InvalidInput`."""
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= MAX_REPLICAS:
        raise InvalidInput("replicas", f"must be an int between 1 and {MAX_REPLICAS}, got {replicas!r}")
    return replicas


@dataclass(frozen=True)
class ReplicaMove:
    """Keys ``lo < key <= hi`` whose replica list changes from ``old`` to ``new`` (primary first)."""

    lo: int
    hi: int
    old: Names
    new: Names

    @property
    def size(self) -> int:
        """Number of keys in the range."""
        return self.hi - self.lo

    @property
    def source(self) -> str:
        """The old primary (``""`` if every old copy is down)."""
        return self.old[0] if self.old else ""

    @property
    def target(self) -> str:
        """The new primary."""
        return self.new[0] if self.new else ""


@dataclass(frozen=True, eq=False)
class Placement:
    """The replica lists of a ring with ``replicas`` copies, ``domains`` and shards ``down``."""

    ring: AnyRing
    replicas: int = 1
    domains: Mapping[str, str] = field(default_factory=dict)
    down: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        check_replicas(self.replicas)
        his, names = self._compute()
        object.__setattr__(self, "_his", his)
        object.__setattr__(self, "_names", names)

    def _domain(self, name: str) -> str:
        return self.domains.get(name) or f"shard:{name}"

    def _compute(self) -> tuple[list[int], list[Names]]:
        his, owners = self.ring.segments()
        if not his:
            return [], []
        n = len(owners)
        want = min(self.replicas, len(set(owners)))
        lists: list[Names] = []
        if want == 1:  # one copy: each segment's owner (the walk below would stop at it)
            down = self.down
            if not down:  # the ring's segments are merged runs: neighbours differ already
                return list(his), [(owner,) for owner in owners]
            lists = [() if owner in down else (owner,) for owner in owners]
        for i in range(n if want > 1 else 0):
            chosen: list[str] = []
            domains: set[str] = set()
            seen: list[str] = []  # distinct shards in walk order
            for step in range(n):
                owner = owners[(i + step) % n]
                if owner in seen:
                    continue
                seen.append(owner)
                dom = self._domain(owner)
                if dom not in domains:
                    chosen.append(owner)
                    domains.add(dom)
                    if len(chosen) == want:
                        break
                if len(seen) == len(self.ring.nodes):
                    break
            for owner in seen:  # fewer domains than copies: the next shards met, whatever their domain
                if len(chosen) >= want:
                    break
                if owner not in chosen:
                    chosen.append(owner)
            lists.append(tuple(name for name in chosen if name not in self.down))
        # merge neighbours with equal lists
        out_h: list[int] = []
        out_n: list[Names] = []
        for hi, names in zip(his, lists):
            if out_n and out_n[-1] == names:
                out_h[-1] = hi
            else:
                out_h.append(hi)
                out_n.append(names)
        return out_h, out_n

    def lists(self) -> list[tuple[int, int, Names]]:
        """``(lo, hi, replica list)`` for the whole key space, in key order, neighbours merged."""
        his: list[int] = self._his  # type: ignore[attr-defined]
        names: list[Names] = self._names  # type: ignore[attr-defined]
        out = []
        lo = -1
        for hi, n in zip(his, names):
            out.append((lo, hi, n))
            lo = hi
        return out

    def replicas_for(self, key: int) -> Names:
        """The replica list of ``key``: its primary first (empty if every copy is down)."""
        his: list[int] = self._his  # type: ignore[attr-defined]
        names: list[Names] = self._names  # type: ignore[attr-defined]
        return names[bisect_left(his, key)]

    def ranges_of(self, name: str) -> dict[str, list[tuple[int, int]]]:
        """The ranges where ``name`` is ``"primary"`` and where it is a ``"backup"``."""
        out: dict[str, list[tuple[int, int]]] = {"primary": [], "backup": []}
        for lo, hi, names in self.lists():
            if names and names[0] == name:
                out["primary"].append((lo, hi))
            elif name in names:
                out["backup"].append((lo, hi))
        return out

    def diff(self, other: Placement) -> list[ReplicaMove]:
        """The ranges whose replica list differs from ``self`` to ``other``, in key order."""
        return diff_lists(self.lists(), other.lists())

    def under_replicated(self) -> list[tuple[int, int, Names]]:
        """The ranges holding fewer copies than ``replicas`` (shards down, or too few shards)."""
        want = min(self.replicas, len(self.ring.nodes))
        return [(lo, hi, n) for lo, hi, n in self.lists() if len(n) < want]


def diff_lists(old: Iterable[tuple[int, int, Names]], new: Iterable[tuple[int, int, Names]]) -> list[ReplicaMove]:
    """The ranges where two ``lists()`` differ (both cover the whole key space), merged."""
    return diff_table(list(old), list(new))[0]


def diff_table(
    old: list[tuple[int, int, Names]], new: list[tuple[int, int, Names]]
) -> tuple[list[ReplicaMove], list[int], list[Names | int]]:
    """:func:`diff_lists`, and in the same walk a routing table of the migration between them.

    The table cuts the key space into ranges ending at ``ends[k]`` (in key
    order); ``where[k]`` is the index of the move that range lies in, or, for
    a range that does not move, its replica list in ``new``.
    """
    spans: list[tuple[int, int, Names, Names]] = []  # the moves, as tuples until the end (cheaper)
    ends: list[int] = []
    where: list[Names | int] = []
    i = j = 0
    lo = -1
    na, nb = len(old), len(new)
    while i < na and j < nb:
        ahi, bhi = old[i][1], new[j][1]
        hi = ahi if ahi < bhi else bhi
        a, b = old[i][2], new[j][2]
        if a != b:
            last = spans[-1] if spans else None
            if last is not None and last[1] == lo and last[2] == a and last[3] == b:  # the same move goes on
                spans[-1] = (last[0], hi, a, b)
                ends[-1] = hi  # the table's last range is that move's
            else:
                spans.append((lo, hi, a, b))
                ends.append(hi)
                where.append(len(spans) - 1)
        elif where and where[-1] == b and ends[-1] == lo:  # a move's index never equals a list
            ends[-1] = hi
        else:
            ends.append(hi)
            where.append(b)
        lo = hi
        if ahi == hi:
            i += 1
        if bhi == hi:
            j += 1
    return [ReplicaMove(*span) for span in spans], ends, where
