"""Certificates: cheap rules that each prove a key's history is not linearizable.

Each rule is a sufficient condition, never a guess: it fires only on a
history that no order of the operations can explain (the tests check this
against a brute-force oracle), and it names the smallest witness, one to
three operations, as an :class:`~dhtcart.verify.checker.report.Anomaly`:
a result no register gives, a value nobody wrote or read before its write
began, a version no writer of the value can have, two producers of one
version with no delete that could come between them, a read of a state
already replaced. Sorting, binary search and one sweep: O(n log n) per key.
What the rules cannot prove is left to :mod:`dhtcart.verify.checker.search`.

>>> from dhtcart.verify.checker.parse import parse_events
>>> by_key, _ = parse_events([
...     {"process": 0, "type": "invoke", "f": "read", "key": 1},
...     {"process": 0, "type": "ok", "f": "read", "key": 1, "value": "ghost", "version": 1},
... ])
>>> [(a.kind, a.explanation) for a in Rules(1, by_key[1]).run()]
[('value-never-written', "read 'ghost', which no operation wrote")]
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from dhtcart.verify.checker.parse import NEVER, Op
from dhtcart.verify.checker.report import Anomaly

__all__ = ["Rules"]


class _Deletes:
    """The deletes that may have removed something, for "could a delete fall between?" queries."""

    def __init__(self, ops: Sequence[Op]) -> None:
        dels = sorted(
            (
                op
                for op in ops
                if op.f == "delete"
                and op.outcome != "fail"
                and op.expected != 0
                and not (op.outcome == "ok" and op.existed is False)
            ),
            key=lambda op: op.inv,
        )
        self.any = bool(dels)
        self._inv = [op.inv for op in dels]
        self._max_ret: list[int] = list(itertools.accumulate((op.ret for op in dels), max))

    def between(self, after: int, before: int) -> bool:
        """Whether some delete may take effect after a point > ``after`` and before a point < ``before``.

        That needs the delete to start before ``before`` and end after ``after``.
        """
        n = bisect.bisect_left(self._inv, before)
        return n > 0 and self._max_ret[n - 1] > after


class _Producer:
    """An operation known to have made version ``version``, somewhere in ``(lo, hi)``."""

    __slots__ = ("hi", "lo", "op", "version")

    def __init__(self, op: Op, version: int, lo: int, hi: int) -> None:
        self.op, self.version, self.lo, self.hi = op, version, lo, hi


def _can_write_version(w: Op, version: int) -> bool:
    if w.outcome == "ok":
        return w.version == version
    if w.f == "cas":
        assert w.expected is not None
        return w.expected + 1 == version
    return True


class Rules:
    """Proofs of non-linearizability for one key; each finding lists the operations it rests on."""

    def __init__(self, key: Any, ops: Sequence[Op]) -> None:
        self.key = key
        self.ops = ops
        self.found: list[Anomaly] = []

    def add(self, kind: str, ops: Sequence[Op], text: str) -> None:
        self.found.append(Anomaly(kind, self.key, tuple(op.public() for op in ops), text))

    def run(self) -> list[Anomaly]:
        self.impossible_results()
        writers, reads_of = self.values()
        deletes = _Deletes(self.ops)
        producers = self.producers(writers, reads_of)
        self.duplicates(producers, deletes)
        self.stale_reads(writers, deletes)
        return self.found

    def impossible_results(self) -> None:
        for op in self.ops:
            if op.outcome == "ok":
                v = op.version
                if op.f == "read":
                    if op.canon is None and v != 0:
                        self.add("impossible-result", [op], f"read the key as absent with version {v} (absent is 0)")
                    elif op.canon is not None and v == 0:
                        self.add("impossible-result", [op], "read a value with version 0 (a stored value has >= 1)")
                elif op.f in ("write", "cas"):
                    assert v is not None
                    if v < 1:
                        self.add("impossible-result", [op], "a write reported version 0 (a write makes version >= 1)")
                    elif op.f == "cas" and op.expected is not None and v != op.expected + 1:
                        self.add(
                            "cas-wrong-version",
                            [op],
                            f"a compare-and-set expecting version {op.expected} made version {v},"
                            f" not {op.expected + 1}: it was let through on another version",
                        )
                elif op.expected is not None and op.existed is not None and (op.expected >= 1) != op.existed:
                    self.add(
                        "impossible-result",
                        [op],
                        f"a delete conditional on version {op.expected} succeeded,"
                        f" yet reported the key {'present' if op.existed else 'absent'}",
                    )
            elif op.outcome == "fail" and op.expected is not None and op.version == op.expected:
                self.add(
                    "impossible-result",
                    [op],
                    f"a {op.f} expecting version {op.expected} failed, yet reported finding version {op.version}",
                )

    def values(self) -> tuple[dict[Any, list[Op]], dict[Any, list[Op]]]:
        """Check every value read against its writers; return writers and reads by value."""
        writers: dict[Any, list[Op]] = defaultdict(list)
        reads_of: dict[Any, list[Op]] = defaultdict(list)
        for op in self.ops:
            if op.f in ("write", "cas") and op.outcome != "fail":
                writers[op.canon].append(op)
            elif op.f == "read" and op.outcome == "ok" and op.canon is not None:
                reads_of[op.canon].append(op)
        for canon, reads in reads_of.items():
            ws = writers.get(canon)
            versions: dict[int, Op] = {}
            for r in reads:
                assert r.version is not None
                if r.version == 0:
                    continue  # reported as an impossible result
                if not ws:
                    self.add("value-never-written", [r], f"read {r.value!r}, which no operation wrote")
                elif all(w.inv > r.ret for w in ws):
                    self.add(
                        "future-read",
                        [r, ws[0]],
                        f"read {r.value!r} before any write of it began",
                    )
                elif not any(_can_write_version(w, r.version) for w in ws):
                    w = ws[0]
                    made = f"version {w.version}" if w.outcome == "ok" else f"version {(w.expected or 0) + 1}"
                    self.add(
                        "read-wrong-version",
                        [r, w],
                        f"read {r.value!r} as version {r.version}, but it was written as {made}",
                    )
                else:
                    versions.setdefault(r.version, r)
            if ws and len(ws) == 1 and len(versions) > 1:
                (v1, r1), (v2, r2) = list(versions.items())[:2]
                self.add(
                    "read-wrong-version",
                    [ws[0], r1, r2],
                    f"{r1.value!r} was written once but read as version {v1} and as version {v2}",
                )
        return writers, reads_of

    def producers(self, writers: dict[Any, list[Op]], reads_of: dict[Any, list[Op]]) -> list[_Producer]:
        """Operations that surely made a version: acknowledged writes, and unacknowledged ones someone read."""
        out = [
            _Producer(op, op.version, op.inv, op.ret)
            for op in self.ops
            if op.f in ("write", "cas") and op.outcome == "ok" and op.version is not None and op.version >= 1
        ]
        for canon, reads in reads_of.items():
            ws = writers.get(canon)
            if ws and len(ws) == 1 and ws[0].outcome == "info":
                versions = {r.version for r in reads}
                if len(versions) == 1:
                    (version,) = versions
                    assert version is not None
                    out.append(_Producer(ws[0], version, ws[0].inv, min(r.ret for r in reads)))
        return out

    def duplicates(self, producers: list[_Producer], deletes: _Deletes) -> None:
        """Two operations that made one version need a delete between them."""
        by_version: dict[int, list[_Producer]] = defaultdict(list)
        for p in producers:
            by_version[p.version].append(p)
        for version, group in by_version.items():
            if len(group) < 2:
                continue
            group = sorted(group, key=lambda p: p.lo)[:64]  # bounded: a longer group is left to the search
            reported: set[int] = set()
            for a, b in itertools.combinations(group, 2):
                if a.op.id in reported or b.op.id in reported:
                    continue
                if (a.lo < b.hi and deletes.between(a.lo, b.hi)) or (b.lo < a.hi and deletes.between(b.lo, a.hi)):
                    continue
                reported.update((a.op.id, b.op.id))
                first, second = (a, b) if a.op.ret < b.op.inv else (b, a) if b.op.ret < a.op.inv else (None, None)
                nodel = "and no delete could have come between them"
                if first is not None and second is not None:
                    if second.op.f == "cas" and second.op.outcome == "ok":
                        self.add(
                            "cas-wrong-version",
                            [first.op, second.op],
                            f"a compare-and-set succeeded expecting version {version - 1} after another write"
                            f" had made version {version} (acknowledged before it began), {nodel}",
                        )
                    else:
                        self.add(
                            "lost-write",
                            [first.op, second.op],
                            f"a write acknowledged as version {version} was overwritten by a later write"
                            f" that also got version {version}, {nodel}",
                        )
                else:
                    self.add("duplicate-version", [a.op, b.op], f"two writes both made version {version}, {nodel}")

    def stale_reads(self, writers: dict[Any, list[Op]], deletes: _Deletes) -> None:
        """Reads that returned a state which a completed operation had already replaced.

        One sweep in line order. For a read R of value x (one writer, W, which
        completed): an operation M that began after W completed and completed
        before R began, and that made or saw another state, shows x was gone
        before R (x has no other writer). For a read of *absent*: a write
        completed before R began, with no delete that could fall between.
        Without any delete in the key, versions alone order writes: a read of
        version k after a write of version j > k completed is stale.
        """
        sweep: list[tuple[int, int, Op]] = []
        for op in self.ops:
            if op.outcome != "ok":
                continue
            sweep.append((op.ret, 0, op))
            if (op.f == "read") or (op.f == "delete" and (op.existed is False or op.expected == 0)):
                sweep.append((op.inv, 1, op))
        sweep.sort(key=lambda e: e[0])
        # the two completed operations that began last, with different states
        best: tuple[int, Any, Op] | None = None
        second: tuple[int, Any, Op] | None = None
        last_producer: Op | None = None  # the completed write that began last
        top: Op | None = None  # the completed write with the highest version
        for _, kind, op in sweep:
            if kind == 0:
                if op.f in ("write", "cas"):
                    state: Any = (op.version, op.canon)
                    if last_producer is None or op.inv > last_producer.inv:
                        last_producer = op
                    if op.version is not None and (top is None or op.version > (top.version or 0)):
                        top = op
                elif op.f == "read":
                    state = (op.version, op.canon)
                else:
                    state = (0, None)
                if best is None or op.inv > best[0]:
                    if best is not None and best[1] != state:
                        second = best
                    best = (op.inv, state, op)
                elif best[1] != state and (second is None or op.inv > second[0]):
                    second = (op.inv, state, op)
                continue
            # an operation that saw a state begins: was that state already gone?
            seen: tuple[int, Any] = (op.version or 0, op.canon) if op.f == "read" else (0, None)
            if seen[1] is None:
                if last_producer is not None and not deletes.between(last_producer.inv, op.ret):
                    self.add(
                        "stale-read",
                        [last_producer, op],
                        f"found the key absent after a write of {last_producer.value!r}"
                        f" (v{last_producer.version}) was acknowledged, and no delete could have come between",
                    )
                continue
            ws = writers.get(seen[1], [])
            if len(ws) != 1:
                continue
            w = ws[0]
            other = best if best is not None and best[1] != seen else second
            if other is not None and w.ret < NEVER and other[0] > w.ret:
                m = other[2]
                self.add(
                    "stale-read",
                    [w, m, op],
                    f"read {op.value!r} (v{op.version}) after it was replaced: the operation in the middle"
                    " began after that write completed and completed before the read began",
                )
            elif not deletes.any and top is not None and top.version is not None and top.version > seen[0]:
                self.add(
                    "stale-read",
                    [w, top, op],
                    f"read version {seen[0]} after version {top.version} was acknowledged (this key has no delete,"
                    " so versions only grow)",
                )
