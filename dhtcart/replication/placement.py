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
from dhtcart.hashing import MAX_KEY
from dhtcart.ring import HashRing, PartitionRing

__all__ = [
    "MAX_REPLICAS",
    "Placement",
    "ReplicaMove",
    "check_replicas",
    "default_domain",
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
    a = list(old)
    b = list(new)
    out: list[ReplicaMove] = []
    i = j = 0
    lo = -1
    while lo < MAX_KEY and i < len(a) and j < len(b):
        hi = min(a[i][1], b[j][1])
        if a[i][2] != b[j][2]:
            if out and out[-1].hi == lo and out[-1].old == a[i][2] and out[-1].new == b[j][2]:
                prev = out.pop()
                out.append(ReplicaMove(prev.lo, hi, prev.old, prev.new))
            else:
                out.append(ReplicaMove(lo, hi, a[i][2], b[j][2]))
        lo = hi
        if a[i][1] == hi:
            i += 1
        if b[j][1] == hi:
            j += 1
    return out
