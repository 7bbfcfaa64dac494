"""Placement: which shard owns a key.

The ring is the interval ``[0, 2**63)`` closed into a circle. A ring is a
sorted list of *points*, each owned by a node; a key belongs to the first
point at or after it, clockwise, wrapping past ``2**63 - 1`` to the first
point. Two placements share that model and one interface:

:class:`HashRing`
    The classic consistent-hash ring. Each node owns ``vnodes * weight``
    points at ``hash_key(f"{name}-{i}")``, so any process that knows the
    members builds the same ring with no shared state. Balance is random:
    about ``±1/sqrt(vnodes)`` per node.

:class:`PartitionRing`
    Dynamo's strategy 3: ``partitions`` equal arcs (a power of two), each
    assigned to a node; the assignment is chosen greedily by weight and is
    *state* to persist (``to_dict`` / ``from_dict``), which the store's manifest
    does. Loads are within one partition of the ideal and lookup is a shift
    and an index. This is what :class:`~dhtcart.store.DHTServerStore` uses.

Both are safe to read from many threads while one thread changes them: each
change builds a new immutable snapshot and swaps it in with one assignment.

Arcs are half-open ``(lo, hi]``: they hold the keys ``lo < key <= hi``. An arc
that would wrap past ``2**63 - 1`` is reported as two, so ``lo`` may be ``-1``
(the arc that starts at key 0) and every arc is a plain range to scan.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice, pairwise
from typing import Any, NamedTuple, Protocol

from dhtcart.errors import EmptyRing, InvalidInput, ShardNotFound
from dhtcart.hashing import KEY_BITS, MAX_KEY, hash_key

__all__ = [
    "DEFAULT_PARTITIONS",
    "DEFAULT_VNODES",
    "MAX_PARTITIONS",
    "PARTITIONS_PER_WEIGHT",
    "Arc",
    "HashRing",
    "Move",
    "PartitionRing",
    "Ring",
    "moves_between",
]

DEFAULT_VNODES = 160
DEFAULT_PARTITIONS = 4096
#: the most partitions a PartitionRing may have
MAX_PARTITIONS = 1 << 20
#: the store doubles a PartitionRing's partitions to keep at least this many per unit of weight
PARTITIONS_PER_WEIGHT = 64


class Arc(NamedTuple):
    """Keys ``lo < key <= hi`` owned by ``node``."""

    lo: int
    hi: int
    node: str

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and self.lo < key <= self.hi

    @property
    def size(self) -> int:
        """Number of keys in the arc."""
        return self.hi - self.lo


class Move(NamedTuple):
    """Keys ``lo < key <= hi`` whose owner changes from ``source`` to ``target``."""

    lo: int
    hi: int
    source: str
    target: str

    @property
    def size(self) -> int:
        """Number of keys in the arc."""
        return self.hi - self.lo


class Ring(Protocol):
    """What the store needs of a placement."""

    @property
    def nodes(self) -> dict[str, int]: ...

    def node_for(self, key: int) -> str: ...

    def preference_list(self, key: int, n: int) -> list[str]: ...

    def segments(self) -> tuple[list[int], list[str]]: ...

    def arcs(self, node: str | None = None) -> list[Arc]: ...

    def moves(self, other: Ring) -> list[Move]: ...

    def copy(self) -> Any: ...

    def add_node(self, name: str, weight: int = 1) -> None: ...

    def remove_node(self, name: str) -> None: ...

    def set_weight(self, name: str, weight: int) -> None: ...

    def to_dict(self) -> dict[str, Any]: ...

    def _check(self) -> None: ...


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidInput("name", f"a node name must be a non-empty str, got {name!r}")
    return name


def _check_weight(weight: object) -> int:
    if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
        raise InvalidInput("weight", f"must be a positive int, got {weight!r}")
    return weight


def _node_items(nodes: object) -> Iterable[tuple[str, int]]:
    if isinstance(nodes, Mapping):
        return nodes.items()
    if isinstance(nodes, str) or not isinstance(nodes, Iterable):
        raise InvalidInput("nodes", f"must be an iterable of names or a mapping name -> weight, not {nodes!r:.40}")
    return ((n, 1) for n in nodes)


def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InvalidInput("n", f"must be an int >= 0, got {n!r}")
    return n


def _merge_runs(his: list[int], owners: list[str]) -> tuple[list[int], list[str]]:
    """Drop boundaries between neighbouring segments that have the same owner."""
    out_h: list[int] = []
    out_o: list[str] = []
    for hi, owner in zip(his, owners):
        if out_o and out_o[-1] == owner:
            out_h[-1] = hi
        else:
            out_h.append(hi)
            out_o.append(owner)
    return out_h, out_o


def moves_between(old: Ring, new: Ring) -> list[Move]:
    """Arcs whose owner differs from ``old`` to ``new``, in key order.

    Works for any two rings (a :class:`HashRing` against a
    :class:`PartitionRing` too): it merges both rings' segment boundaries, so
    its cost is the number of segments, never the number of keys.
    """
    ah, ao = old.segments()
    bh, bo = new.segments()
    if not ao or not bo:
        if not ao and not bo:
            return []
        raise EmptyRing("cannot compute moves to or from an empty ring")
    out: list[Move] = []
    i = j = 0
    lo = -1
    while lo < MAX_KEY:
        hi = min(ah[i], bh[j])
        src, dst = ao[i], bo[j]
        if src != dst:
            if out and out[-1].hi == lo and out[-1].source == src and out[-1].target == dst:
                out[-1] = Move(out[-1].lo, hi, src, dst)
            else:
                out.append(Move(lo, hi, src, dst))
        if ah[i] == hi:
            i += 1
        if bh[j] == hi:
            j += 1
        lo = hi
    return out


class _RingBase:
    """Shared behaviour: nodes, arcs, moves, copying."""

    _lock: threading.Lock
    # All of a ring's state is one tuple, replaced by a single assignment, so a
    # reader that takes ``self._state`` once sees one consistent ring.
    _state: tuple[Any, ...]

    @property
    def _weights(self) -> dict[str, int]:
        weights: dict[str, int] = self._state[0]
        return weights

    @property
    def nodes(self) -> dict[str, int]:
        """A copy of the members and their weights."""
        return dict(self._weights)

    def __len__(self) -> int:
        return len(self._weights)

    def __contains__(self, name: object) -> bool:
        return name in self._weights

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._weights))

    def _apply(self, weights: dict[str, int]) -> None:  # pragma: no cover - abstract
        """Install a new snapshot for ``weights`` (called with ``_lock`` held)."""
        raise NotImplementedError

    def add_node(self, name: str, weight: int = 1) -> None:
        """Add ``name`` with ``weight`` (HashRing: ``vnodes * weight`` points;
        PartitionRing: it takes partitions from the most loaded nodes)."""
        _check_name(name)
        _check_weight(weight)
        with self._lock:
            if name in self._weights:
                raise InvalidInput("name", f"node {name!r} is already in the ring")
            self._apply({**self._weights, name: weight})

    def remove_node(self, name: str) -> None:
        """Remove ``name``; its keys go to the other nodes (HashRing: the next points
        clockwise; PartitionRing: its partitions go to the least loaded nodes)."""
        with self._lock:
            if name not in self._weights:
                raise ShardNotFound(f"no node named {name!r} in the ring")
            weights = dict(self._weights)
            del weights[name]
            self._apply(weights)

    def set_weight(self, name: str, weight: int) -> None:
        """Change ``name``'s weight; its share of the keys follows."""
        _check_weight(weight)
        with self._lock:
            if name not in self._weights:
                raise ShardNotFound(f"no node named {name!r} in the ring")
            self._apply({**self._weights, name: weight})

    def segments(self) -> tuple[list[int], list[str]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def arcs(self, node: str | None = None) -> list[Arc]:
        """The arcs of ``node`` (or of every node), in key order, adjacent arcs merged."""
        his, owners = self.segments()
        out = []
        lo = -1
        for hi, owner in zip(his, owners):
            if node is None or owner == node:
                out.append(Arc(lo, hi, owner))
            lo = hi
        return out

    def share(self, node: str) -> float:
        """Fraction of the key space that ``node`` owns."""
        return sum(a.size for a in self.arcs(node)) / (MAX_KEY + 1)

    def moves(self, other: Ring) -> list[Move]:
        """Arcs ``(lo, hi]`` whose owner differs between this ring and ``other``.

        >>> a = HashRing(["a", "b"]); b = a.copy(); b.add_node("c")
        >>> all(m.target == "c" for m in a.moves(b))
        True
        """
        return moves_between(self, other)  # type: ignore[arg-type]


class HashRing(_RingBase):
    """Classic consistent hashing with virtual nodes derived from node names.

    >>> ring = HashRing(["shard-0", "shard-1", "shard-2"])
    >>> ring.node_for(hash_key("alice")) in ring
    True
    >>> HashRing(["x", "y"]).node_for(12345) == HashRing(["y", "x"]).node_for(12345)
    True
    >>> len(set(ring.preference_list(42, 3)))
    3

    ``nodes`` is an iterable of names (weight 1) or a mapping name -> weight.
    Lookup is a binary search over ``len(nodes) * vnodes * weight`` points:
    O(log points). Two nodes whose points collide: the point goes to the node
    whose name sorts first, in every process.
    """

    def __init__(self, nodes: Iterable[str] | Mapping[str, int] = (), *, vnodes: int = DEFAULT_VNODES) -> None:
        if isinstance(vnodes, bool) or not isinstance(vnodes, int) or vnodes < 1:
            raise InvalidInput("vnodes", f"must be a positive int, got {vnodes!r}")
        self.vnodes = vnodes
        self._lock = threading.Lock()
        items = _node_items(nodes)
        weights: dict[str, int] = {}
        for name, weight in items:
            _check_name(name)
            if name in weights:
                raise InvalidInput("nodes", f"node {name!r} given twice")
            weights[name] = _check_weight(weight)
        self._state = (weights, *self._build(weights))

    @property
    def _snap(self) -> tuple[list[int], list[str]]:
        _, points, owners = self._state
        return points, owners

    def _points_of(self, name: str, weight: int) -> Iterator[int]:
        for i in range(self.vnodes * weight):
            yield hash_key(f"{name}-{i}")

    def _build(self, weights: Mapping[str, int]) -> tuple[list[int], list[str]]:
        pairs = sorted((point, name) for name, w in weights.items() for point in self._points_of(name, w))
        points: list[int] = []
        owners: list[str] = []
        for point, name in pairs:
            if points and points[-1] == point:
                continue  # collision: the name that sorts first keeps the point
            points.append(point)
            owners.append(name)
        return points, owners

    def _apply(self, weights: dict[str, int]) -> None:
        self._state = (weights, *self._build(weights))

    def node_for(self, key: int) -> str:
        """The node owning ``key``: the first point at or after it, wrapping. O(log points)."""
        state = self._state  # read once: one consistent snapshot
        points: list[int] = state[1]
        owners: list[str] = state[2]
        if not points:
            raise EmptyRing("the ring has no nodes")
        i = bisect_left(points, key)
        return owners[i if i < len(points) else 0]

    def preference_list(self, key: int, n: int) -> list[str]:
        """Up to ``n`` distinct nodes met clockwise from ``key``; the first is the owner."""
        _check_n(n)
        points, owners = self._snap
        if not points:
            raise EmptyRing("the ring has no nodes")
        want = min(n, len(set(owners)))
        if want == 0:
            return []
        out: list[str] = []
        i = bisect_left(points, key)
        m = len(points)
        for step in range(m):
            owner = owners[(i + step) % m]
            if owner not in out:
                out.append(owner)
                if len(out) == want:
                    break
        return out

    def segments(self) -> tuple[list[int], list[str]]:
        """Boundaries ``his`` (ascending, last is ``2**63 - 1``) and owners:
        keys in ``(his[i-1], his[i]]`` belong to ``owners[i]`` (``his[-1]`` is -1)."""
        points, owners = self._snap
        if not points:
            return [], []
        his = list(points)
        own = list(owners)
        if his[-1] != MAX_KEY:
            his.append(MAX_KEY)
            own.append(owners[0])
        return _merge_runs(his, own)

    def copy(self) -> HashRing:
        """An independent ring with the same members and points."""
        return HashRing(self._weights, vnodes=self.vnodes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description from which :meth:`from_dict` rebuilds the ring."""
        return {"type": "hash", "vnodes": self.vnodes, "weights": dict(self._weights)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HashRing:
        """Rebuild a ring from :meth:`to_dict`'s output."""
        return cls(data["weights"], vnodes=data["vnodes"])

    def _check(self) -> None:
        """Assert the internal invariants (used by the tests)."""
        weights, points, owners = self._state
        assert len(points) == len(owners)
        assert all(a < b for a, b in pairwise(points)), "points not strictly sorted"
        assert all(0 <= p <= MAX_KEY for p in points)
        expected = self._build(weights)
        assert (points, owners) == expected, "snapshot differs from members"
        assert set(owners) <= set(weights)

    def __repr__(self) -> str:
        return f"HashRing({self._weights!r}, vnodes={self.vnodes})"


class PartitionRing(_RingBase):
    """Fixed equal partitions assigned to nodes by weight (Dynamo's strategy 3).

    The key space is cut into ``partitions`` (a power of two) equal arcs;
    partition ``p`` holds keys ``key >> (63 - log2(partitions)) == p``. Each
    partition is owned by one node. Changing the members moves whole
    partitions, greedily, always from the node most over its weighted share
    to the one most under it, and only while that improves the balance, so:

    * adding a node moves only partitions to the new node, about ``1/n`` of them;
    * removing a node moves only that node's partitions;
    * every node holds within one partition of ``partitions * weight / total``.

    The assignment depends on the order of changes, so it is state: persist
    :meth:`to_dict` (the store keeps it in its manifest). Lookup is O(1).

    >>> ring = PartitionRing(["a", "b", "c"], partitions=64)
    >>> sorted(ring.counts().values())
    [21, 21, 22]
    >>> before = ring.copy(); ring.add_node("d")
    >>> {m.target for m in before.moves(ring)}
    {'d'}
    """

    def __init__(
        self,
        nodes: Iterable[str] | Mapping[str, int] = (),
        *,
        partitions: int = DEFAULT_PARTITIONS,
    ) -> None:
        if (
            isinstance(partitions, bool)
            or not isinstance(partitions, int)
            or partitions < 1
            or partitions & (partitions - 1)
            or partitions > MAX_PARTITIONS
        ):
            raise InvalidInput("partitions", f"must be a power of two up to 2**20, got {partitions!r}")
        self.partitions = partitions
        self._balanced = True  # False for a doubled() ring until its next change
        self._shift = KEY_BITS - (partitions.bit_length() - 1)
        self._lock = threading.Lock()
        items = _node_items(nodes)
        weights: dict[str, int] = {}
        for name, weight in items:
            _check_name(name)
            if name in weights:
                raise InvalidInput("nodes", f"node {name!r} given twice")
            weights[name] = _check_weight(weight)
        self._state = (weights, self._assign([""] * partitions, weights) if weights else [])

    @property
    def _owners(self) -> list[str]:
        owners: list[str] = self._state[1]
        return owners

    # -- assignment ---------------------------------------------------------

    def _order(self) -> list[int]:
        """A fixed pseudo-random order of partitions: which ones a donor gives first."""
        return sorted(range(self.partitions), key=lambda p: hash_key(f"partition-{p}"))

    def _assign(self, owners: list[str], weights: Mapping[str, int]) -> list[str]:
        """Return a new owner list for ``weights``, moving as few partitions as it can.

        Partitions whose owner left (or is ``""``) are handed out first, each to
        the node with the lowest ``(count + 1) / weight``; then partitions move
        from the most loaded node to the least loaded while that lowers the
        maximum load. Ties go to the name that sorts first.
        """
        owners = list(owners)
        order = self._order()
        names = sorted(weights)
        held: dict[str, list[int]] = {n: [] for n in names}
        free: list[int] = []
        for p in reversed(order):  # so that .pop() gives partitions in `order`
            owner = owners[p]
            if owner in held:
                held[owner].append(p)
            else:
                free.append(p)
        free.reverse()

        def load(n: str, extra: int = 0) -> float:
            return (len(held[n]) + extra) / weights[n]

        for p in free:
            target = min(names, key=lambda n: (load(n, 1), n))
            owners[p] = target
            held[target].append(p)
        while True:
            donor = max(names, key=lambda n: (load(n), n))
            receiver = min(names, key=lambda n: (load(n, 1), n))
            if donor == receiver or load(receiver, 1) >= load(donor):
                break
            p = held[donor].pop()
            owners[p] = receiver
            held[receiver].append(p)
        return owners

    def _apply(self, weights: dict[str, int]) -> None:
        if weights:
            start = self._owners or [""] * self.partitions
            owners = self._assign(start, weights)
        else:
            owners = []
        self._state = (weights, owners)
        self._balanced = True

    # -- lookup -------------------------------------------------------------

    def node_for(self, key: int) -> str:
        """The node owning ``key``. O(1): a shift and an index.

        ``key`` must be a valid key (an int in ``[0, 2**63)``); for speed it is
        not checked here (the store and the shards check it).
        """
        owners: list[str] = self._state[1]
        if not owners:
            raise EmptyRing("the ring has no nodes")
        return owners[key >> self._shift]

    @property
    def shift(self) -> int:
        """``key >> shift`` is the partition of ``key``."""
        return self._shift

    def owners(self) -> list[str]:
        """The owner of each partition, in partition order (a copy)."""
        return list(self._owners)

    def doubled(self) -> PartitionRing:
        """The same placement with twice the partitions: every key keeps its owner.

        Each partition splits into two halves owned by the same node, so no key
        moves. The store doubles its ring before a change that would leave
        fewer than :data:`PARTITIONS_PER_WEIGHT` partitions per unit of weight,
        so that loads stay within ``1/64`` of ideal however many shards join.

        >>> ring = PartitionRing(["a", "b", "c"], partitions=8)
        >>> twice = ring.doubled()
        >>> twice.partitions, all(twice.node_for(k) == ring.node_for(k) for k in range(0, 2**63, 2**59))
        (16, True)
        >>> ring.moves(twice)
        []
        """
        if self.partitions >= MAX_PARTITIONS:
            raise InvalidInput("partitions", f"cannot double past {MAX_PARTITIONS} partitions")
        weights, owners = self._state
        ring = PartitionRing(partitions=self.partitions * 2)
        ring._state = (dict(weights), [o for o in owners for _ in (0, 1)])
        ring._balanced = False
        return ring

    def preference_list(self, key: int, n: int) -> list[str]:
        """Up to ``n`` distinct nodes met clockwise from ``key``; the first is the owner."""
        _check_n(n)
        weights, owners = self._state
        if not owners:
            raise EmptyRing("the ring has no nodes")
        want = min(n, len(weights))
        if want == 0:
            return []
        out: list[str] = []
        p = key >> self._shift
        q = self.partitions
        for step in range(q):
            owner = owners[(p + step) % q]
            if owner not in out:
                out.append(owner)
                if len(out) == want:
                    break
        return out

    def counts(self) -> dict[str, int]:
        """Partitions held by each node."""
        weights, owners = self._state
        out = dict.fromkeys(weights, 0)
        for owner in owners:
            out[owner] += 1
        return out

    def segments(self) -> tuple[list[int], list[str]]:
        """Boundaries and owners, as :meth:`HashRing.segments`."""
        owners = self._owners
        if not owners:
            return [], []
        size = 1 << self._shift
        # the last partition of each run of one owner (a view builds this at every new epoch)
        ends = [p for p, (a, b) in enumerate(zip(owners, islice(owners, 1, None))) if a != b]
        ends.append(len(owners) - 1)
        return [(p + 1) * size - 1 for p in ends], [owners[p] for p in ends]

    def copy(self) -> PartitionRing:
        """An independent ring with the same assignment."""
        weights, owners = self._state
        ring = PartitionRing(partitions=self.partitions)
        ring._state = (dict(weights), list(owners))
        ring._balanced = self._balanced
        return ring

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (members, weights and the assignment)."""
        weights, owners = self._state
        names = sorted(weights)
        index = {n: i for i, n in enumerate(names)}
        return {
            "type": "partition",
            "partitions": self.partitions,
            "weights": {n: weights[n] for n in names},
            "owners": [index[o] for o in owners],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PartitionRing:
        """Rebuild a ring from :meth:`to_dict`'s output, checking it."""
        ring = cls(partitions=data["partitions"])
        names = sorted(data["weights"])
        ring._state = (
            {n: _check_weight(data["weights"][n]) for n in names},
            [names[i] for i in data["owners"]],
        )
        if ring._weights and len(ring._owners) != ring.partitions:
            raise InvalidInput("ring", "the description has the wrong number of partitions")
        return ring

    def _check(self) -> None:
        """Assert the internal invariants (used by the tests)."""
        weights, owners = self._state
        if not weights:
            assert owners == []
            return
        assert len(owners) == self.partitions
        assert set(owners) <= set(weights), "a partition has an unknown owner"
        if not self._balanced:
            return  # doubled: balanced as before at half the partitions, which a move might improve
        counts = dict.fromkeys(weights, 0)
        for owner in owners:
            counts[owner] += 1
        loads = {n: counts[n] / w for n, w in weights.items()}
        hi = max(loads.values())
        # no single move from the most to the least loaded node would help
        for n, w in weights.items():
            assert (counts[n] + 1) / w >= hi or n == max(loads, key=lambda m: (loads[m], m)), (
                "assignment is not balanced"
            )

    def __repr__(self) -> str:
        return f"PartitionRing({self._weights!r}, partitions={self.partitions})"


def ring_from_dict(data: Mapping[str, Any]) -> HashRing | PartitionRing:
    """Rebuild whichever ring :meth:`to_dict` described."""
    kind = data.get("type")
    if kind == "hash":
        return HashRing.from_dict(data)
    if kind == "partition":
        return PartitionRing.from_dict(data)
    raise InvalidInput("ring", f"unknown ring type {kind!r}")
