"""What a shard owns: key ranges and their hand-over states, as plain integers.

Every fenced backend keeps, inside its own medium, an :class:`Ownership`
record: the membership ``epoch`` of its last change, the highest rebalancer
``token`` it has seen (a fencing token: changes carrying a lower one are
refused), and :class:`Segments`, a partition of the whole key space into
ranges ``(lo, hi]``, each in one state:

``OWNED`` (``"o"``)
    the shard alone serves reads and writes of these keys;
``PRIMARY`` (``"p"``)
    the shard serves reads of these keys and decides their writes, which
    other shards copy: ``peer`` lists those *backups* (``name@born``, comma
    separated). A plain write is refused: it must go through the replicated
    write (decide here, apply at every backup, commit here);
``FROZEN`` (``"f"``)
    the shard serves reads but refuses writes: the range is being copied to
    its next owner, so nothing may change under the copy (``peer``: the
    backups it had, if any);
``BACKUP`` (``"b"``)
    the shard keeps a copy of these keys, applies the writes that its primary
    decided (``peer`` names it, ``name@born``) and refuses everything else;
``NOT_OWNED`` (``"-"``)
    the shard refuses every operation; ``peer`` names the shard the range was
    handed to, when this shard knows it.

A record is ``leased`` in a store that keeps more than one copy of each key:
its shard then serves reads only while its *lease* runs (a time kept beside
the record, renewed by clients that have just read the membership), so that a
primary that was taken out while it was unreachable answers nothing stale when
it comes back (``docs/replication.md``).

A backend checks the state of a key in the same atomic step as the operation
(an LMDB transaction, a Redis script, a lock; a Redis read, by the ownership
generation read right after the record) and refuses with
:class:`~dhtcart.errors.Moved` where the state does not allow it. This module
knows nothing of rings or stores: ranges are integers, states are letters.

Errors: a caller's bad ranges or states are
:class:`~dhtcart.errors.InvalidInput`; a stored record that does not parse
(:meth:`Ownership.from_json`, :meth:`Segments.from_list`) is
:class:`~dhtcart.errors.CorruptData`; both are ``ValueError`` subclasses.

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
import re
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from itertools import compress, islice
from operator import eq, lt
from typing import Any, NamedTuple

from dhtcart.errors import CorruptData, InvalidInput, InvalidKey, LeaseLost, Moved

__all__ = [
    "BACKUP",
    "FAST_READ",
    "FROZEN",
    "NOT_OWNED",
    "OWNED",
    "PRIMARY",
    "READABLE",
    "SERVED",
    "STATES",
    "TABLE_BITS",
    "TABLE_SHIFT",
    "Ownership",
    "Segments",
    "join_peers",
    "peer_id",
    "split_peers",
]

OWNED = "o"
PRIMARY = "p"
FROZEN = "f"
BACKUP = "b"
NOT_OWNED = "-"
STATES = frozenset({OWNED, PRIMARY, FROZEN, BACKUP, NOT_OWNED})
#: the states in which a shard answers reads
READABLE = frozenset({OWNED, PRIMARY, FROZEN})
#: slice states a backend's read path may pass on its slice table alone, without :meth:`Ownership.check`
FAST_READ = frozenset({OWNED, PRIMARY})
#: the states in which a shard holds a copy that must not be overwritten by a migration's import
SERVED = frozenset({OWNED, PRIMARY, FROZEN, BACKUP})


def peer_id(name: str, born: int) -> str:
    """How a record names a shard of one incarnation: ``name@born``."""
    return f"{name}@{born}"


def join_peers(ids: Iterable[str]) -> str:
    """A ``peer`` field listing shards (``name@born`` each)."""
    return ",".join(ids)


def split_peers(peer: str) -> list[tuple[str, int]]:
    """``(name, born)`` of each shard a ``peer`` field lists (a bare name has born 0)."""
    out: list[tuple[str, int]] = []
    for part in peer.split(","):
        if not part:
            continue
        name, _, born = part.partition("@")
        out.append((name, int(born) if born.isdigit() else 0))
    return out


_MAX_KEY = (1 << 63) - 1
#: a ``peer`` field: shard ids (a shard name, ``@`` and its birth number optional), comma separated
_PEERS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}(@[0-9]+)?(,[A-Za-z0-9][A-Za-z0-9._-]{0,63}(@[0-9]+)?)*")
_INT = frozenset({int})
_STR = frozenset({str})
_REPEAT = re.compile(r"(.)\1", re.DOTALL)  # a character twice in a row
#: :meth:`Segments.slice_state` cuts the key space into ``2**TABLE_BITS`` slices
TABLE_BITS = 12
TABLE_SHIFT = 63 - TABLE_BITS


class Segments:
    """An immutable partition of ``(-1, 2**63 - 1]`` into ranges with states.

    ``his[i]`` is the last key of segment ``i``, which holds the keys
    ``his[i-1] < key <= his[i]`` (``his[-1]`` is ``-1``); neighbouring
    segments always differ in state or peer. Lookup is a binary search.
    """

    __slots__ = ("fast", "his", "peers", "slices", "states")

    his: list[int]
    states: list[str]
    peers: list[str]

    def __init__(self, his: Sequence[int], states: Sequence[str], peers: Sequence[str]) -> None:
        if not len(his) == len(states) == len(peers):
            raise InvalidInput(
                "segments", f"his, states and peers differ in length ({len(his)}, {len(states)}, {len(peers)})"
            )
        self.his, self.states, self.peers = _merge(his, states, peers)
        #: slice -> state, filled by :meth:`slice_state`
        self.slices: dict[int, str] = {}
        #: the slices met so far whose every key is in a state of ``FAST_READ`` (a read path's
        #: one test: ``key >> TABLE_SHIFT in fast``), filled by :meth:`slice_state`
        self.fast: set[int] = set()

    def slice_state(self, b: int) -> str:
        """The state of every key of slice ``b`` (keys ``k >> TABLE_SHIFT == b``), or ``""``
        when the slice holds a boundary (then ask :meth:`lookup`). Cached per slice.

        The fast path of a check: ``slices.get(key >> TABLE_SHIFT) or slice_state(...)``.
        """
        state = self.slices.get(b)
        if state is None:
            his = self.his
            i = bisect_left(his, b << TABLE_SHIFT)
            state = self.states[i] if his[i] >= ((b + 1) << TABLE_SHIFT) - 1 else ""
            if state in FAST_READ:
                self.fast.add(b)  # before the state: a reader that sees one in fast sees it cached
            self.slices[b] = state
        return state

    @classmethod
    def all(cls, state: str = NOT_OWNED, peer: str = "") -> Segments:
        """The whole key space in one ``state``."""
        return cls([_MAX_KEY], [state], [peer])

    @classmethod
    def owning(cls, ranges: Iterable[tuple[int, int]], state: str = OWNED) -> Segments:
        """``ranges`` (``(lo, hi]`` pairs, in any order, not overlapping) in ``state``, the rest not owned."""
        return cls.all().replace_many([(lo, hi, state, "") for lo, hi in ranges])

    def lookup(self, key: int) -> tuple[str, str]:
        """``(state, peer)`` of ``key`` (an int in ``[0, 2**63)``)."""
        if type(key) is not int or not 0 <= key <= _MAX_KEY:
            raise InvalidKey(f"key must be an int in [0, 2**63), not {key!r}")
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
        return self.replace_many([(lo, hi, state, peer)], expect=expect)

    def replace_many(self, changes: Sequence[tuple[int, int, str, str]], *, expect: str | None = None) -> Segments:
        """A copy with each ``(lo, hi, state, peer)`` of ``changes`` applied (ranges must not
        overlap); one pass over the segments, whatever the number of changes.
        ``expect`` as in :meth:`replace`, for every range.

        A change that is not ``(int, int, state, str)`` with ``-1 <= lo < hi <= 2**63 - 1``,
        a peer that does not list shards (``name`` or ``name@born``, comma separated, names
        as :func:`~dhtcart.checks.check_shard_name` allows), or ranges that overlap, are
        :class:`~dhtcart.errors.InvalidInput`; nothing changes."""
        if not changes:
            return self
        todo: list[tuple[int, int, str, str]] = []
        for change in changes:
            row: Sequence[object] = change
            if not (isinstance(row, tuple | list) and len(row) == 4):
                raise InvalidInput("changes", f"an ownership change is (lo, hi, state, peer), not {row!r}")
            lo, hi, state, peer = row
            if type(lo) is not int or type(hi) is not int or not isinstance(peer, str):
                raise InvalidInput("changes", f"an ownership change is (int, int, state, str), not {row!r}")
            if state not in STATES or not isinstance(state, str):
                raise InvalidInput("changes", f"unknown ownership state {state!r} (known: {sorted(STATES)})")
            if peer and not _PEERS_RE.fullmatch(peer):
                raise InvalidInput("changes", f"a peer lists shards, name or name@born, comma separated; got {peer!r}")
            todo.append((lo, hi, state, peer))
        todo.sort()
        prev_hi = -1
        for lo, hi, _, _ in todo:
            if not prev_hi <= lo < hi <= _MAX_KEY:
                raise InvalidInput(
                    "changes", f"range ({lo}, {hi}] is empty, out of [-1, 2**63 - 1] or overlaps another"
                )
            prev_hi = hi
            if expect is not None:
                for a, b, st, _ in self.spans(lo, hi):
                    if st != expect:
                        raise LeaseLost(
                            f"keys ({a}, {b}] are in state {st!r}, not {expect!r}:"
                            " another rebalancer changed this shard"
                        )
        his, states, peers = self.his, self.states, self.peers
        out_h: list[int] = []
        out_s: list[str] = []
        out_p: list[str] = []
        i = 0
        for lo, hi, state, peer in todo:
            while his[i] <= lo:  # whole segments before the change
                out_h.append(his[i])
                out_s.append(states[i])
                out_p.append(peers[i])
                i += 1
            if (out_h[-1] if out_h else -1) < lo:  # the segment holding lo + 1 starts before it
                out_h.append(lo)
                out_s.append(states[i])
                out_p.append(peers[i])
            out_h.append(hi)
            out_s.append(state)
            out_p.append(peer)
            while his[i] < hi:  # segments the change covers
                i += 1
            if his[i] == hi:
                i += 1  # the segment ends with the change; else its tail stays, emitted later
        out_h += his[i:]
        out_s += states[i:]
        out_p += peers[i:]
        return Segments(out_h, out_s, out_p)

    def to_list(self) -> list[list[Any]]:
        """JSON-able form: ``[[hi, state, peer], ...]``."""
        return [[h, s, p] for h, s, p in zip(self.his, self.states, self.peers)]

    @classmethod
    def from_list(cls, rows: Iterable[Sequence[Any]]) -> Segments:
        """Rebuild from :meth:`to_list` (or any ``(hi, state, peer)`` rows), checking the shape.

        The rows are a stored record: any that do not make a partition of the key
        space are :class:`~dhtcart.errors.CorruptData`."""
        his, states, peers = [], [], []
        for row in rows:
            if type(row) not in (tuple, list) or len(row) != 3:  # a type check: an ABC's costs ~10x
                raise CorruptData(f"bad ownership segment {row!r}: not a row [hi, state, peer]")
            his.append(row[0])
            states.append(row[1])
            peers.append(row[2])
        return cls._checked(his, states, peers)

    @classmethod
    def from_columns(cls, his: list[Any], states: list[Any], peers: list[Any]) -> Segments:
        """Rebuild from the three columns of a stored record (the lists are taken, not copied),
        checked as :meth:`from_list` checks rows, without making a row per segment."""
        if not len(his) == len(states) == len(peers):
            raise CorruptData("ownership segment columns of different lengths")
        return cls._checked(his, states, peers)

    @classmethod
    def from_typed_columns(cls, his: list[int], states: list[str], peers: list[str]) -> Segments:
        """Rebuild from the columns of a stored record whose types its decoder made sure of (every
        last key an ``int`` in ``[0, 2**64)``, every state and peer a ``str``): checked as
        :meth:`from_columns` checks, in C loops only, a first read's parse of a few thousand
        segments taking tens of µs. The lists are taken, not copied."""
        if not len(his) == len(states) == len(peers):
            raise CorruptData("ownership segment columns of different lengths")
        if not set(states) <= STATES:
            raise CorruptData(f"bad ownership segment states: {sorted(set(states) - STATES)[:3]!r}")
        _check_order(his)
        _check_peers(peers)
        if any(peers):  # merged: no two neighbours alike in state and peer (C loops, no pair made)
            merged = not any(compress(map(eq, peers, islice(peers, 1, None)), map(eq, states, islice(states, 1, None))))
        else:
            merged = _REPEAT.search("".join(states)) is None
        if not merged:  # neighbours alike: not as dhtcart writes a record, but one all the same
            return cls(his, states, peers)
        segments = cls.__new__(cls)
        segments.his, segments.states, segments.peers = his, states, peers
        segments.slices, segments.fast = {}, set()
        return segments

    @classmethod
    def _checked(cls, his: list[Any], states: list[Any], peers: list[Any]) -> Segments:
        """Segments of a stored record's columns, each checked (a stored record is parsed on
        every ownership change: the checks go column by column)."""
        # set and map: C loops (every client parses a shard's record at each change of it)
        if not set(map(type, his)) <= _INT or not set(states) <= STATES:
            for row in zip(his, states, peers):
                if type(row[0]) is not int or row[1] not in STATES:
                    raise CorruptData(f"bad ownership segment {list(row)!r}")
        if not set(map(type, peers)) <= _STR:
            raise CorruptData(f"bad ownership segment peers: {[p for p in peers if type(p) is not str][:3]!r}")
        _check_peers(peers)
        _check_order(his)
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


def _check_order(his: list[int]) -> None:
    """:class:`CorruptData` unless a stored record's last keys ascend from 0 up to 2**63 - 1."""
    if not his or his[-1] != _MAX_KEY or his[0] < 0 or not all(map(lt, his, islice(his, 1, None))):
        raise CorruptData("ownership segments must be ascending and end at 2**63 - 1")


def _check_peers(peers: list[str]) -> None:
    """:class:`CorruptData` unless every peer of a stored record lists shards (each distinct
    peer checked once: a record has thousands of segments and a handful of peers)."""
    bad = [p for p in set(peers) if p and not _PEERS_RE.fullmatch(p)]
    if bad:
        raise CorruptData(f"bad ownership segment peers: {sorted(bad)[:3]!r}")


def _one_letter_runs(states: Sequence[str]) -> bool:
    """Whether every state is one letter and none repeats its neighbour, seen in C loops (the
    states are not checked again here: a stored record's were, and any others merge as before)."""
    try:
        joined = "".join(states)
    except TypeError:  # not all str
        return False
    return len(joined) == len(states) and "" not in states and _REPEAT.search(joined) is None


def _merge(his: Sequence[int], states: Sequence[str], peers: Sequence[str]) -> tuple[list[int], list[str], list[str]]:
    if not any(peers) and _one_letter_runs(states):  # merged already (a stored record is)
        return list(his), list(states), list(peers)
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


def _redirect(state: str, peer: str) -> str | None:
    """The shard a refusal points to: the new owner of a range handed over, a backup's primary."""
    if not peer:
        return None
    if state == NOT_OWNED:
        return peer
    if state == BACKUP:
        return peer.partition("@")[0]
    return None


class Ownership(NamedTuple):
    """A shard's record of what it owns (see the module doc)."""

    epoch: int
    token: int
    segments: Segments
    #: whether reads need a running lease (a store that keeps several copies of each key)
    leased: bool = False

    @classmethod
    def nothing(cls) -> Ownership:
        """The record of a fenced medium that has none: it owns no key."""
        return cls(0, 0, Segments.all())

    def to_json(self) -> bytes:
        """Compact JSON: the boundaries as one list of ints, the states as one string."""
        segs = self.segments
        return json.dumps(
            {
                "epoch": self.epoch,
                "token": self.token,
                **({"leased": True} if self.leased else {}),
                "his": segs.his,
                "states": "".join(segs.states),
                "peers": {str(i): p for i, p in enumerate(segs.peers) if p},
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Ownership:
        """Parse :meth:`to_json`'s bytes; a record that does not parse is :class:`~dhtcart.errors.CorruptData`."""
        try:
            data = json.loads(raw)
            his = data["his"]
            states = data["states"]
            if not isinstance(his, list) or not isinstance(states, str) or len(his) != len(states):
                raise CorruptData("ownership record: 'his' and 'states' must be a list and a string of one length")
            peers = [""] * len(his)
            for i, p in data["peers"].items():
                index = int(i)
                if not 0 <= index < len(his):
                    raise CorruptData(f"ownership record: peer of segment {i} of {len(his)}")
                peers[index] = p
            epoch, token = data["epoch"], data["token"]
            if type(epoch) is not int or type(token) is not int:
                raise CorruptData(f"ownership record: epoch and token must be ints, not {epoch!r} and {token!r}")
            leased = data.get("leased", False)
            if type(leased) is not bool:
                raise CorruptData(f"ownership record: 'leased' must be a bool, not {leased!r}")
            return cls(epoch, token, Segments._checked(his, list(states), peers), leased)
        except CorruptData:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:  # bytes that are not the record
            shown = raw[:80] if isinstance(raw, bytes | str) else type(raw).__name__
            raise CorruptData(f"ownership record does not parse ({type(exc).__name__}: {exc}): {shown!r}") from exc

    def check(self, key: int, write: bool) -> None:
        """Raise :class:`~dhtcart.errors.Moved` unless this record lets an operation on ``key``
        through: a read if the key is owned, primary or frozen, a plain write only if it is
        owned (a primary's writes are replicated: see :meth:`check_decide`)."""
        segs = self.segments
        if segs.slice_state(key >> TABLE_SHIFT) == OWNED:
            return
        i = bisect_left(segs.his, key)
        state = segs.states[i]
        if state == OWNED or (not write and state in READABLE):
            return
        raise Moved(key, self.epoch, state, _redirect(state, segs.peers[i]))

    def check_decide(self, key: int) -> str:
        """The backups of ``key`` (its segment's ``peer``) if this shard may decide a write of it
        (owned or primary), else :class:`~dhtcart.errors.Moved`."""
        segs = self.segments
        i = bisect_left(segs.his, key)
        state = segs.states[i]
        if state == OWNED:
            return ""
        if state == PRIMARY:
            return segs.peers[i]
        raise Moved(key, self.epoch, state, _redirect(state, segs.peers[i]))

    def check_apply(self, key: int, primary: str) -> None:
        """Raise :class:`~dhtcart.errors.Moved` unless this shard keeps ``key`` as a backup of
        ``primary`` (``name@born``): a write decided by any other shard is refused."""
        segs = self.segments
        i = bisect_left(segs.his, key)
        state, peer = segs.states[i], segs.peers[i]
        if state == BACKUP and peer == primary:
            return
        raise Moved(key, self.epoch, state, _redirect(state, peer))

    def check_unserved(self, lo: int, hi: int, what: str, *, allow: str = "") -> None:
        """Raise :class:`~dhtcart.errors.LeaseLost` if the shard serves any key of ``(lo, hi]``."""
        for a, b, state, _ in self.segments.spans(lo, hi):
            if state != NOT_OWNED and state not in allow:
                raise LeaseLost(f"cannot {what} keys ({a}, {b}]: this shard serves them (state {state!r})")

    def check_token(self, token: int) -> None:
        """Raise :class:`~dhtcart.errors.LeaseLost` if ``token`` is older than the newest seen."""
        if token < self.token:
            raise LeaseLost(
                f"rebalancer token {token} is older than {self.token}, already seen by this shard:"
                " another rebalancer took over"
            )
