"""What a shard owns: key ranges and their hand-over states, as plain integers.

Every fenced backend keeps, inside its own medium, an :class:`Ownership`
record: the membership ``epoch`` of its last change, the highest rebalancer
``token`` it has seen (a fencing token: changes carrying a lower one are
refused), and :class:`Segments`, a partition of the whole key space into
ranges ``(lo, hi]``, each in one state:

``OWNED`` (``"o"``)
    the shard serves reads and writes of these keys;
``FROZEN`` (``"f"``)
    the shard serves reads but refuses writes: the range is being copied to
    its next owner, so nothing may change under the copy;
``NOT_OWNED`` (``"-"``)
    the shard refuses every operation; ``peer`` names the shard the range was
    handed to, when this shard knows it.

A backend checks the state of a key in the same atomic step as the operation
(an LMDB transaction, a Redis script, a lock) and refuses with
:class:`~dhtcart.errors.Moved` where the state does not allow it. This module
knows nothing of rings or stores: ranges are integers, states are letters.

>>> segs = Segments.owning([(9, 20), (40, 50)])
>>> segs.lookup(15), segs.lookup(30), segs.lookup(50)
(('o', ''), ('-', ''), ('o', ''))
>>> segs = segs.replace(9, 15, FROZEN, expect=OWNED)
>>> segs.spans(0, 60)
[(0, 9, '-', ''), (9, 15, 'f', ''), (15, 20, 'o', ''), (20, 40, '-', ''), (40, 50, 'o', ''), (50, 60, '-', '')]
>>> segs.replace(9, 15, NOT_OWNED, "shard-7", expect=FROZEN).lookup(12)
('-', 'shard-7')
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import Any, NamedTuple

from dhtcart.errors import LeaseLost

__all__ = ["FROZEN", "NOT_OWNED", "OWNED", "STATES", "TABLE_BITS", "TABLE_SHIFT", "Ownership", "Segments", "WHOLE"]

OWNED = "o"
FROZEN = "f"
NOT_OWNED = "-"
STATES = frozenset({OWNED, FROZEN, NOT_OWNED})

_MAX_KEY = (1 << 63) - 1
#: the whole key space as one range ``(lo, hi]``
WHOLE = (-1, _MAX_KEY)
#: :meth:`Segments.table` cuts the key space into ``2**TABLE_BITS`` slices
TABLE_BITS = 12
TABLE_SHIFT = 63 - TABLE_BITS


class Segments:
    """An immutable partition of ``(-1, 2**63 - 1]`` into ranges with states.

    ``his[i]`` is the last key of segment ``i``, which holds the keys
    ``his[i-1] < key <= his[i]`` (``his[-1]`` is ``-1``); neighbouring
    segments always differ in state or peer. Lookup is a binary search.
    """

    __slots__ = ("_table", "his", "peers", "states")

    his: list[int]
    states: list[str]
    peers: list[str]

    def __init__(self, his: Sequence[int], states: Sequence[str], peers: Sequence[str]) -> None:
        self.his, self.states, self.peers = _merge(his, states, peers)
        self._table: list[str | None] | None = None

    def table(self) -> list[str | None]:
        """The state of each of the ``2**TABLE_BITS`` equal slices of the key space, or
        ``None`` for a slice that holds a boundary (look it up with :meth:`lookup`).

        Built once per record: ``table()[key >> TABLE_SHIFT]`` is the fast path of a check.
        """
        if self._table is None:
            out: list[str | None] = []
            his, states = self.his, self.states
            i = 0
            for b in range(1 << TABLE_BITS):
                start, end = b << TABLE_SHIFT, ((b + 1) << TABLE_SHIFT) - 1
                while his[i] < start:
                    i += 1
                out.append(states[i] if his[i] >= end else None)
            self._table = out
        return self._table

    @classmethod
    def all(cls, state: str = NOT_OWNED, peer: str = "") -> Segments:
        """The whole key space in one ``state``."""
        return cls([_MAX_KEY], [state], [peer])

    @classmethod
    def owning(cls, ranges: Iterable[tuple[int, int]], state: str = OWNED) -> Segments:
        """``ranges`` (``(lo, hi]`` pairs, in any order) in ``state``, the rest not owned."""
        segs = cls.all()
        for lo, hi in sorted(ranges):
            segs = segs.replace(lo, hi, state)
        return segs

    def lookup(self, key: int) -> tuple[str, str]:
        """``(state, peer)`` of ``key``."""
        i = bisect_left(self.his, key)
        return self.states[i], self.peers[i]

    def spans(self, lo: int = -1, hi: int = _MAX_KEY) -> list[tuple[int, int, str, str]]:
        """The segments met in ``(lo, hi]``, clipped to it: ``(lo, hi, state, peer)`` each."""
        out: list[tuple[int, int, str, str]] = []
        if lo >= hi:
            return out
        i = bisect_left(self.his, lo + 1)
        start = lo
        while i < len(self.his) and start < hi:
            end = min(self.his[i], hi)
            out.append((start, end, self.states[i], self.peers[i]))
            start = end
            i += 1
        return out

    def in_state(self, *states: str) -> list[tuple[int, int]]:
        """The ranges ``(lo, hi]`` whose state is one of ``states``, in key order."""
        return [(lo, hi) for lo, hi, st, _ in self.spans() if st in states]

    def replace(self, lo: int, hi: int, state: str, peer: str = "", *, expect: str | None = None) -> Segments:
        """A copy with ``(lo, hi]`` set to ``state`` (and ``peer``).

        With ``expect``, every key of ``(lo, hi]`` must be in that state now,
        or :class:`~dhtcart.errors.LeaseLost` is raised (someone else changed
        the shard's ownership) and nothing changes.
        """
        if state not in STATES:
            raise ValueError(f"unknown ownership state {state!r}")
        if not -1 <= lo < hi <= _MAX_KEY:
            raise ValueError(f"bad range ({lo}, {hi}]")
        if expect is not None:
            wrong = [s for s in self.spans(lo, hi) if s[2] != expect]
            if wrong:
                a, b, st, _ = wrong[0]
                raise LeaseLost(
                    f"keys ({a}, {b}] are in state {st!r}, not {expect!r}: another rebalancer changed this shard"
                )
        his, states, peers = self.his, self.states, self.peers
        i = bisect_left(his, lo + 1)  # first segment holding a key of (lo, hi]
        j = bisect_left(his, hi)  # the segment holding hi
        new_h: list[int] = his[:i]
        new_s: list[str] = states[:i]
        new_p: list[str] = peers[:i]
        seg_lo = his[i - 1] if i else -1
        if seg_lo < lo:  # the first segment starts before lo: keep its head
            new_h.append(lo)
            new_s.append(states[i])
            new_p.append(peers[i])
        new_h.append(hi)
        new_s.append(state)
        new_p.append(peer)
        if his[j] > hi:  # the last segment ends after hi: keep its tail
            new_h.append(his[j])
            new_s.append(states[j])
            new_p.append(peers[j])
        new_h += his[j + 1 :]
        new_s += states[j + 1 :]
        new_p += peers[j + 1 :]
        return Segments(new_h, new_s, new_p)

    def to_list(self) -> list[list[Any]]:
        """JSON-able form: ``[[hi, state, peer], ...]``."""
        return [[h, s, p] for h, s, p in zip(self.his, self.states, self.peers)]

    @classmethod
    def from_list(cls, rows: Iterable[Sequence[Any]]) -> Segments:
        """Rebuild from :meth:`to_list`, checking the shape."""
        his, states, peers = [], [], []
        for row in rows:
            h, s, p = row
            if type(h) is not int or s not in STATES or not isinstance(p, str):
                raise ValueError(f"bad ownership segment {row!r}")
            his.append(h)
            states.append(s)
            peers.append(p)
        if not his or his[-1] != _MAX_KEY or any(a >= b for a, b in pairwise(his)) or his[0] < 0:
            raise ValueError("ownership segments must be ascending and end at 2**63 - 1")
        return cls(his, states, peers)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Segments):
            return NotImplemented
        return (self.his, self.states, self.peers) == (other.his, other.states, other.peers)

    def __hash__(self) -> int:
        return hash((tuple(self.his), tuple(self.states), tuple(self.peers)))

    def __repr__(self) -> str:
        owned = sum(b - a for a, b in self.in_state(OWNED, FROZEN))
        return f"<Segments {len(self.his)} segments, {owned / (_MAX_KEY + 1):.1%} of keys served>"


def _merge(his: Sequence[int], states: Sequence[str], peers: Sequence[str]) -> tuple[list[int], list[str], list[str]]:
    out_h: list[int] = []
    out_s: list[str] = []
    out_p: list[str] = []
    for h, s, p in zip(his, states, peers, strict=True):
        if out_s and out_s[-1] == s and out_p[-1] == p:
            out_h[-1] = h
        else:
            out_h.append(h)
            out_s.append(s)
            out_p.append(p)
    return out_h, out_s, out_p


class Ownership(NamedTuple):
    """A shard's record of what it owns (see the module doc)."""

    epoch: int
    token: int
    segments: Segments

    @classmethod
    def nothing(cls) -> Ownership:
        """The record of a fenced medium that has none: it owns no key."""
        return cls(0, 0, Segments.all())

    def to_json(self) -> bytes:
        return json.dumps(
            {"epoch": self.epoch, "token": self.token, "segments": self.segments.to_list()},
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Ownership:
        data = json.loads(raw)
        return cls(int(data["epoch"]), int(data["token"]), Segments.from_list(data["segments"]))

    def check_unserved(self, lo: int, hi: int, what: str) -> None:
        """Raise :class:`~dhtcart.errors.LeaseLost` if the shard serves any key of ``(lo, hi]``."""
        for a, b, state, _ in self.segments.spans(lo, hi):
            if state != NOT_OWNED:
                raise LeaseLost(f"cannot {what} keys ({a}, {b}]: this shard serves them (state {state!r})")

    def check_token(self, token: int) -> None:
        """Raise :class:`~dhtcart.errors.LeaseLost` if ``token`` is older than the newest seen."""
        if token < self.token:
            raise LeaseLost(
                f"rebalancer token {token} is older than {self.token}, already seen by this shard:"
                " another rebalancer took over"
            )
