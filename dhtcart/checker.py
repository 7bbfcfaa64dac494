"""Is a history of concurrent operations linearizable? One versioned register per key.

A history (format in ``docs/verify.md``) lists, in real-time order, the
invocation and the completion of every operation: ``read``, ``write``,
``cas`` (compare-and-set on a version) and ``delete`` (optionally
conditional), each completed ``ok``, ``fail`` (a compare-and-set found
another version: nothing was written) or ``info`` (unknown: it may take
effect at any time after its invocation, or never). Every key is a register
whose state is *absent* (version 0) or a value with a version: 1 for the
first write, one more per write, and 1 again for the first write after a
delete. Keys start absent.

:func:`check_history` decides, key by key (linearizability is local), whether
some total order of the operations respects real time (an operation that
completed before another began comes first) and explains every result. It
returns a :class:`CheckReport`; when the answer is no, each
:class:`Anomaly` names the key, the few operations that cannot all be right
and what is wrong with them.

>>> ok_write = [
...     {"process": 0, "type": "invoke", "f": "write", "key": 7, "value": "a"},
...     {"process": 0, "type": "ok", "f": "write", "key": 7, "value": "a", "version": 1},
... ]
>>> check_history(ok_write).valid
True
>>> stale = ok_write + [
...     {"process": 1, "type": "invoke", "f": "read", "key": 7},
...     {"process": 1, "type": "ok", "f": "read", "key": 7, "value": None, "version": 0},
... ]
>>> report = check_history(stale)
>>> report.valid, report.anomalies[0].kind
(False, 'stale-read')

How it decides (details and complexity in ``docs/verify.md``):

1. *Certificates.* Cheap rules, each a proof that no order exists, find the
   usual anomalies with the smallest witness (one to three operations): a
   read of a value nobody wrote, a read of a value before its write began, a
   value read at a version it was not written at, two writes with one version
   and no delete that could separate them, a read that returned a state some
   completed operation had already replaced. Sorting and sweeping: O(n log n).
2. *Search.* If no rule fires, a just-in-time linearization search (Lowe's
   refinement of Wing and Gong's) decides exactly. Versions pin the order of
   writes, so the search almost never branches: a read is placed as soon as
   the state it saw is current, and an acknowledged write only where the
   version before it is current. Operations whose outcome is unknown and whose
   value nobody read are interchangeable and counted, not enumerated. About
   linear time for histories whose operations succeed; exponential in the
   worst case, so the search is bounded (``max_steps``) and a key that
   exhausts it is reported as undecided, never as linearizable.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dhtcart.errors import MalformedHistory

__all__ = [
    "ANOMALY_KINDS",
    "DEFAULT_MAX_STEPS",
    "MAX_CONFIGURATIONS",
    "Anomaly",
    "CheckReport",
    "Operation",
    "check_file",
    "check_history",
]

#: what each anomaly kind means (the ``kind`` of an :class:`Anomaly`)
ANOMALY_KINDS: dict[str, str] = {
    "stale-read": "a read returned a state that a completed operation had already replaced",
    "lost-write": "an acknowledged write was overwritten by a later write that got the same version",
    "duplicate-version": "two writes got the same version with no delete that could separate them",
    "cas-wrong-version": "a compare-and-set succeeded although the key was no longer at the version it expected",
    "value-never-written": "a read returned a value that no operation wrote",
    "future-read": "a read returned a value whose only writes began after the read completed",
    "read-wrong-version": "a value was read at a version it was not written at",
    "impossible-result": "an operation reported a result no register can give (e.g. absent with a version)",
    "no-linearization": "no order of the operations explains this one (found by the exhaustive search)",
}

#: steps the search may take per key, at least (it also allows 1,000 per event of the key); a step
#: is one configuration explored or compared, about a microsecond
DEFAULT_MAX_STEPS = 1_000_000
#: configurations the search may keep at once for a key (each a different explanation so far)
MAX_CONFIGURATIONS = 2_000

_FUNCTIONS = ("read", "write", "cas", "delete")
_NEVER = 1 << 62  # the completion position of an operation that never completed (or ended info)


def _is_int(x: object) -> bool:
    return type(x) is int


def _canon(value: Any) -> Any:
    """A hashable stand-in for a JSON value: strings as themselves, anything else as canonical JSON."""
    if type(value) is str:
        return value
    return ("json", json.dumps(value, sort_keys=True, separators=(",", ":")))


# -- operations ------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """One operation of a history, as a witness shows it.

    ``outcome`` is ``"ok"``, ``"fail"`` or ``"info"`` (also for an operation
    that never completed). ``version`` is the version an ``ok`` read saw or an
    ``ok`` write made, or the version a ``fail`` reported finding. Lines are
    1-based positions in the history.
    """

    process: Any
    f: str
    key: Any
    outcome: str
    value: Any = None
    version: int | None = None
    expected: int | None = None
    existed: bool | None = None
    invoke_line: int = 0
    complete_line: int | None = None

    def __str__(self) -> str:
        f, outcome = self.f, self.outcome
        if f == "read":
            call = "read"
        elif f == "write":
            call = f"write {self.value!r}"
        elif f == "cas":
            call = f"cas {self.value!r} if version {self.expected}"
        else:
            call = "delete" if self.expected is None else f"delete if version {self.expected}"
        if outcome == "ok":
            if f == "read":
                result = "absent" if self.value is None else f"{self.value!r} v{self.version}"
            elif f == "delete":
                result = {True: "ok (existed)", False: "ok (was absent)", None: "ok"}[self.existed]
            else:
                result = f"ok v{self.version}"
        elif outcome == "fail":
            result = "fail" + (f" (found v{self.version})" if self.version is not None else "")
        else:
            result = "info (outcome unknown)" if self.complete_line is not None else "never completed"
        lines = f"line {self.invoke_line}" + (f"-{self.complete_line}" if self.complete_line is not None else "")
        return f"process {self.process}: {call} -> {result} [{lines}]"

    def to_dict(self) -> dict[str, Any]:
        """The operation as a JSON-ready dict (``None`` fields left out)."""
        out: dict[str, Any] = {"process": self.process, "f": self.f, "key": self.key, "outcome": self.outcome}
        for name in ("value", "version", "expected", "existed"):
            v = getattr(self, name)
            if v is not None:
                out[name] = v
        out["invoke_line"] = self.invoke_line
        out["complete_line"] = self.complete_line
        return out


class _Op:
    """An operation while checking: where it starts and ends, what it did."""

    __slots__ = (
        "canon",
        "done_line",
        "existed",
        "expected",
        "f",
        "id",
        "inv",
        "key",
        "outcome",
        "process",
        "ret",
        "value",
        "version",
    )

    def __init__(self, id: int, process: Any, f: str, key: Any, inv: int) -> None:
        self.id = id
        self.process = process
        self.f = f
        self.key = key
        self.inv = inv
        self.ret = _NEVER  # the completion line of an ok or fail; _NEVER otherwise
        self.done_line: int | None = None  # the completion line, info included
        self.outcome = "info"
        self.value: Any = None
        self.canon: Any = None
        self.version: int | None = None
        self.expected: int | None = None
        self.existed: bool | None = None

    def public(self) -> Operation:
        return Operation(
            process=self.process,
            f=self.f,
            key=self.key,
            outcome=self.outcome,
            value=self.value,
            version=self.version,
            expected=self.expected,
            existed=self.existed,
            invoke_line=self.inv,
            complete_line=self.done_line,
        )

    def __repr__(self) -> str:
        return f"<_Op {self.public()}>"


# -- the report ------------------------------------------------------------------------


@dataclass(frozen=True)
class Anomaly:
    """Why one key's history is not linearizable: the operations that cannot all be right.

    ``kind`` is a key of :data:`ANOMALY_KINDS`; ``explanation`` says in a
    sentence what the operations show.
    """

    kind: str
    key: Any
    operations: tuple[Operation, ...]
    explanation: str

    def to_dict(self) -> dict[str, Any]:
        """The anomaly as a JSON-ready dict."""
        return {
            "kind": self.kind,
            "key": self.key,
            "explanation": self.explanation,
            "operations": [op.to_dict() for op in self.operations],
        }


@dataclass(frozen=True)
class CheckReport:
    """The verdict on a history.

    ``valid`` is ``True`` (every key linearizable), ``False`` (at least one
    anomaly) or ``None`` (no anomaly, but the search gave up on the keys in
    ``undecided``: not shown linearizable). ``anomalies`` holds at most the
    first ``max_anomalies`` found; ``anomaly_counts`` counts them all by kind.
    ``info`` counts operations whose outcome is unknown, including those that
    never completed (``open``).
    """

    valid: bool | None
    operations: int
    ok: int
    fail: int
    info: int
    open: int
    keys: int
    anomalies: tuple[Anomaly, ...] = ()
    anomaly_counts: Mapping[str, int] = field(default_factory=dict)
    undecided: tuple[Any, ...] = ()
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return {
            "valid": self.valid,
            "operations": self.operations,
            "ok": self.ok,
            "fail": self.fail,
            "info": self.info,
            "open": self.open,
            "keys": self.keys,
            "anomaly_counts": dict(self.anomaly_counts),
            "anomalies": [a.to_dict() for a in self.anomalies],
            "undecided": list(self.undecided),
            "seconds": round(self.seconds, 6),
        }


# -- parsing ---------------------------------------------------------------------------


def _version(event: Mapping[str, Any], line: int, name: str, required: bool) -> int | None:
    if name not in event or event[name] is None:
        if required:
            raise MalformedHistory(line, f"{event.get('type')} {event.get('f', '')} needs {name!r} (an int >= 0)")
        return None
    v = event[name]
    if not _is_int(v) or v < 0:
        raise MalformedHistory(line, f"{name!r} must be an int >= 0, not {v!r}")
    result: int = v
    return result


def _parse(events: Iterable[Mapping[str, Any]]) -> tuple[dict[Any, list[_Op]], Counter[str]]:
    """Pair invocations with completions; return the operations by key and the outcome counts."""
    open_ops: dict[Any, _Op] = {}
    by_key: dict[Any, list[_Op]] = {}
    counts: Counter[str] = Counter()
    line = 0
    for line, event in enumerate(events, 1):
        if not isinstance(event, Mapping):
            raise MalformedHistory(line, f"an event is a JSON object, not {type(event).__name__}")
        try:
            process = event["process"]
            kind = event["type"]
        except KeyError as exc:
            raise MalformedHistory(line, f"every event needs {exc.args[0]!r}") from None
        if not isinstance(process, (int, str)) or isinstance(process, bool):
            raise MalformedHistory(line, f"process must be an int or a string, not {process!r}")
        if kind == "invoke":
            if process in open_ops:
                prev = open_ops[process]
                raise MalformedHistory(
                    line, f"process {process!r} invokes while its {prev.f} from line {prev.inv} has not completed"
                )
            f = event.get("f")
            if f not in _FUNCTIONS:
                raise MalformedHistory(line, f"f must be one of {', '.join(_FUNCTIONS)}, not {f!r}")
            key = event.get("key")
            if not isinstance(key, (int, str)) or isinstance(key, bool):
                raise MalformedHistory(line, f"key must be an int or a string, not {key!r}")
            op = _Op(counts["operations"], process, f, key, line)
            counts["operations"] += 1
            if f in ("write", "cas"):
                if event.get("value") is None:
                    raise MalformedHistory(line, f"a {f} needs the value it writes (null means absent)")
                op.value = event["value"]
                op.canon = _canon(op.value)
            if f == "cas":
                op.expected = _version(event, line, "expected", True)
            elif f == "delete":
                op.expected = _version(event, line, "expected", False)
            open_ops[process] = op
            by_key.setdefault(key, []).append(op)
        elif kind in ("ok", "fail", "info"):
            found = open_ops.pop(process, None)
            if found is None:
                raise MalformedHistory(line, f"{kind} from process {process!r}, which has no operation in progress")
            op = found
            for name in ("f", "key"):
                if name in event and event[name] != getattr(op, name):
                    was = getattr(op, name)
                    said = f"{kind} says {name}={event[name]!r}, its invocation (line {op.inv}) {was!r}"
                    raise MalformedHistory(line, said)
            op.outcome = kind
            op.done_line = line
            counts[kind] += 1
            if kind == "info":
                continue
            op.ret = line
            if kind == "ok":
                if op.f == "read":
                    if "value" not in event:
                        raise MalformedHistory(line, "an ok read needs the value it saw (null when absent)")
                    op.value = event["value"]
                    op.canon = None if op.value is None else _canon(op.value)
                    op.version = _version(event, line, "version", True)
                elif op.f in ("write", "cas"):
                    op.version = _version(event, line, "version", True)
                else:
                    existed = event.get("existed")
                    if existed is not None and not isinstance(existed, bool):
                        raise MalformedHistory(line, f"existed must be true, false or absent, not {existed!r}")
                    op.existed = existed
            else:
                op.version = _version(event, line, "version", False)
        else:
            raise MalformedHistory(line, f"type must be invoke, ok, fail or info, not {kind!r}")
    counts["open"] = len(open_ops)
    return by_key, counts


# -- certificates: rules that prove a key's history is not linearizable -------------------


class _Deletes:
    """The deletes that may have removed something, for "could a delete fall between?" queries."""

    def __init__(self, ops: Sequence[_Op]) -> None:
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

    def __init__(self, op: _Op, version: int, lo: int, hi: int) -> None:
        self.op, self.version, self.lo, self.hi = op, version, lo, hi


def _can_write_version(w: _Op, version: int) -> bool:
    if w.outcome == "ok":
        return w.version == version
    if w.f == "cas":
        assert w.expected is not None
        return w.expected + 1 == version
    return True


class _Rules:
    """Proofs of non-linearizability for one key; each finding lists the operations it rests on."""

    def __init__(self, key: Any, ops: Sequence[_Op]) -> None:
        self.key = key
        self.ops = ops
        self.found: list[Anomaly] = []

    def add(self, kind: str, ops: Sequence[_Op], text: str) -> None:
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

    def values(self) -> tuple[dict[Any, list[_Op]], dict[Any, list[_Op]]]:
        """Check every value read against its writers; return writers and reads by value."""
        writers: dict[Any, list[_Op]] = defaultdict(list)
        reads_of: dict[Any, list[_Op]] = defaultdict(list)
        for op in self.ops:
            if op.f in ("write", "cas") and op.outcome != "fail":
                writers[op.canon].append(op)
            elif op.f == "read" and op.outcome == "ok" and op.canon is not None:
                reads_of[op.canon].append(op)
        for canon, reads in reads_of.items():
            ws = writers.get(canon)
            versions: dict[int, _Op] = {}
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

    def producers(self, writers: dict[Any, list[_Op]], reads_of: dict[Any, list[_Op]]) -> list[_Producer]:
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

    def stale_reads(self, writers: dict[Any, list[_Op]], deletes: _Deletes) -> None:
        """Reads that returned a state which a completed operation had already replaced.

        One sweep in line order. For a read R of value x (one writer, W, which
        completed): an operation M that began after W completed and completed
        before R began, and that made or saw another state, shows x was gone
        before R (x has no other writer). For a read of *absent*: a write
        completed before R began, with no delete that could fall between.
        Without any delete in the key, versions alone order writes: a read of
        version k after a write of version j > k completed is stale.
        """
        sweep: list[tuple[int, int, _Op]] = []
        for op in self.ops:
            if op.outcome != "ok":
                continue
            sweep.append((op.ret, 0, op))
            if (op.f == "read") or (op.f == "delete" and (op.existed is False or op.expected == 0)):
                sweep.append((op.inv, 1, op))
        sweep.sort(key=lambda e: e[0])
        # the two completed operations that began last, with different states
        best: tuple[int, Any, _Op] | None = None
        second: tuple[int, Any, _Op] | None = None
        last_producer: _Op | None = None  # the completed write that began last
        top: _Op | None = None  # the completed write with the highest version
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
            if other is not None and w.ret < _NEVER and other[0] > w.ret:
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


# -- the search ------------------------------------------------------------------------


class _Budget(Exception):
    """The search used up its steps."""


_READ, _FAIL, _MUT, _OPT, _POOL, _DROP = range(6)
_EXACT, _PRESENT, _ANYWHERE = range(3)
_ABSENT: tuple[int, Any] = (0, None)


class _Unread:
    """The value of a write nobody read: no read can match it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unread>"


_UNREAD = _Unread()

State = tuple[int, Any]
Used = tuple[int, ...]  # per class of unknown-outcome operations (by index), how many were used
Config = tuple[State, frozenset[int], Used]

_W, _D = ("w",), ("d",)  # the generic classes: an unconditional write, an unconditional delete
_KIND_W, _KIND_D, _KIND_C, _KIND_CD = range(4)


def _used_inc(used: Used, index: int) -> Used:
    if index < len(used):
        return (*used[:index], used[index] + 1, *used[index + 1 :])
    return used + (0,) * (index - len(used)) + (1,)


class _Search:
    """Just-in-time linearization of one key's operations.

    A *configuration* is a state of the register, the set of pending
    operations already placed (linearized ahead of their completion) and how
    many interchangeable unknown-outcome operations of each class were used.
    Walking the history, an invocation only registers the operation (a read
    is placed at once where the state it saw is current); a completion forces
    the operation in: each configuration is extended by every sequence of
    pending operations that ends with it. Read-like operations (reads, fails)
    are placed as soon as their state is current, which loses nothing because
    they change nothing. Configurations that are no better than another (same
    state and placed set, more unknown-outcome operations used) are dropped.
    """

    def __init__(self, ops: Sequence[_Op], max_steps: int) -> None:
        self.ops = {op.id: op for op in ops}
        self.steps = max_steps
        read_values: dict[Any, int] = {}
        writers: Counter[Any] = Counter()
        for op in ops:
            if op.f == "read" and op.outcome == "ok" and op.canon is not None:
                assert op.version is not None
                read_values.setdefault(op.canon, op.version)
            elif op.f in ("write", "cas") and op.outcome != "fail":
                writers[op.canon] += 1
        self.writers = writers
        self.role: dict[int, int] = {}
        self.pre: dict[int, tuple[int, int]] = {}  # individual mutations: (kind, version)
        self.post: dict[int, State] = {}
        self.seen_state: dict[int, State] = {}  # reads: the state they saw
        self.fail_pred: dict[int, tuple[int, int | None]] = {}  # fails: (expected, reported version)
        self.pool_class: dict[int, tuple[Any, ...]] = {}
        self.events: list[tuple[int, int, int]] = []  # (line, 0 invoke / 1 complete, op id)
        for op in ops:
            role = self._classify(op, read_values)
            self.role[op.id] = role
            if role == _DROP:
                continue
            self.events.append((op.inv, 0, op.id))
            if role in (_READ, _FAIL, _MUT):
                self.events.append((op.ret, 1, op.id))
        self.events.sort()
        # what is pending now
        self.mut_exact: dict[int, set[int]] = defaultdict(set)
        self.mut_present: set[int] = set()
        self.mut_anywhere: set[int] = set()
        self.writer_of: dict[Any, set[int]] = defaultdict(set)
        self.pending_writes = 0  # individual mutations that write, pending
        self.pending_deletes = 0
        self.reads_at: dict[State, set[int]] = defaultdict(set)
        self.fails: set[int] = set()
        # unknown-outcome operations nobody read, by class: ("w",), ("c", e), ("d",), ("cd", e)
        self.class_index: dict[tuple[Any, ...], int] = {}
        self.class_kind: list[int] = []
        self.invoked: list[int] = []  # per class: how many were invoked so far
        self.pool_writes = 0  # of them, writes (any class)
        self.pool_deletes = 0
        self._sums: dict[Used, tuple[int, int]] = {(): (0, 0)}

    def _classify(self, op: _Op, read_values: dict[Any, int]) -> int:
        f, outcome, e = op.f, op.outcome, op.expected
        if f == "read":
            if outcome != "ok":
                return _DROP
            assert op.version is not None
            self.seen_state[op.id] = (op.version, op.canon)
            return _READ
        if outcome == "fail":
            if e is None:
                return _DROP  # an unconditional write or delete that did not happen
            self.fail_pred[op.id] = (e, op.version)
            return _FAIL
        if f in ("write", "cas"):
            value = op.canon if op.canon in read_values else _UNREAD
            if outcome == "ok":
                assert op.version is not None
                self.pre[op.id] = (_EXACT, op.version - 1)
                self.post[op.id] = (op.version, value)
                return _MUT
            if value is _UNREAD:
                self.pool_class[op.id] = _W if f == "write" else ("c", e)
                return _POOL
            if f == "cas":
                assert e is not None
                self.pre[op.id] = (_EXACT, e)
                self.post[op.id] = (e + 1, value)
            elif self.writers[op.canon] == 1:
                # its value was read, and it is the only writer: it happened, at the
                # version the reads saw (the rules made sure they all saw one)
                version = read_values[op.canon]
                self.pre[op.id] = (_EXACT, version - 1)
                self.post[op.id] = (version, value)
            else:  # another operation may have written what was read: any version
                self.pre[op.id] = (_ANYWHERE, 0)
                self.post[op.id] = (-1, value)
            return _OPT
        # delete
        if outcome == "ok":
            if e == 0 or (e is None and op.existed is False):
                self.seen_state[op.id] = _ABSENT
                return _READ
            self.post[op.id] = _ABSENT
            if e is not None:
                self.pre[op.id] = (_EXACT, e)
            else:
                self.pre[op.id] = (_PRESENT, 0) if op.existed else (_ANYWHERE, 0)
            return _MUT
        if e == 0:
            return _DROP
        self.pool_class[op.id] = _D if e is None else ("cd", e)
        return _POOL

    # -- registering and retiring pending operations

    def _add_pending(self, i: int) -> None:
        kind, version = self.pre[i]
        if kind == _EXACT:
            self.mut_exact[version].add(i)
        elif kind == _PRESENT:
            self.mut_present.add(i)
        else:
            self.mut_anywhere.add(i)
        post = self.post[i]
        if post[0]:
            self.pending_writes += 1
            self.writer_of[post[1]].add(i)
        else:
            self.pending_deletes += 1

    def _remove_pending(self, i: int) -> None:
        kind, version = self.pre[i]
        if kind == _EXACT:
            self.mut_exact[version].discard(i)
        elif kind == _PRESENT:
            self.mut_present.discard(i)
        else:
            self.mut_anywhere.discard(i)
        post = self.post[i]
        if post[0]:
            self.pending_writes -= 1
            self.writer_of[post[1]].discard(i)
        else:
            self.pending_deletes -= 1

    # -- the register

    def _after(self, i: int, state: State) -> State:
        """The state after individual mutation ``i`` at ``state`` (version -1 in ``post``: one more than now)."""
        after = self.post[i]
        return (state[0] + 1, after[1]) if after[0] < 0 else after

    def _fail_ok(self, i: int, version: int) -> bool:
        expected, found = self.fail_pred[i]
        return version == found if found is not None else version != expected

    def _greedy(self, state: State, placed: frozenset[int]) -> frozenset[int]:
        """Place every pending read-like operation that ``state`` satisfies."""
        add = [r for r in self.reads_at.get(state, ()) if r not in placed]
        if self.fails:
            v = state[0]
            add += [i for i in self.fails if i not in placed and self._fail_ok(i, v)]
        return placed.union(add) if add else placed

    def _register_pool(self, cls: tuple[Any, ...]) -> None:
        index = self.class_index.get(cls)
        if index is None:
            index = self.class_index[cls] = len(self.invoked)
            self.invoked.append(0)
            self.class_kind.append({"w": _KIND_W, "d": _KIND_D, "c": _KIND_C, "cd": _KIND_CD}[cls[0]])
        self.invoked[index] += 1
        if cls[0] in ("w", "c"):
            self.pool_writes += 1
        else:
            self.pool_deletes += 1

    def _used_sums(self, used: Used) -> tuple[int, int]:
        """(writes, deletes) among the unknown-outcome operations ``used`` counts."""
        sums = self._sums.get(used)
        if sums is None:
            kinds = self.class_kind
            w = sum(n for i, n in enumerate(used) if kinds[i] in (_KIND_W, _KIND_C))
            sums = self._sums[used] = (w, sum(used) - w)
        return sums

    def _left(self, used: Used, cls: tuple[Any, ...]) -> int:
        index = self.class_index.get(cls)
        if index is None:
            return 0
        return self.invoked[index] - (used[index] if index < len(used) else 0)

    def _no_worse(self, a: Used, b: Used) -> bool:
        """Whether a configuration that used ``a`` can do whatever one that used ``b`` can.

        An unconditional write (class ``w``) can stand in for any compare-and-set
        (class ``c, e``) and an unconditional delete (``d``) for any conditional
        one (``cd, e``): ``a`` is no worse if the generic operations it has left
        over ``b`` cover every specific one it used more of. Costs a step.
        """
        self.steps -= 1
        if a == b:
            return True
        kinds = self.class_kind
        la, lb = len(a), len(b)
        spare_w = spare_d = 0
        for i in range(max(la, lb)):
            x = a[i] if i < la else 0
            y = b[i] if i < lb else 0
            if x == y:
                continue
            kind = kinds[i]
            if kind == _KIND_W:
                spare_w += y - x
            elif kind == _KIND_D:
                spare_d += y - x
            elif x > y:
                if kind == _KIND_C:
                    spare_w -= x - y
                else:
                    spare_d -= x - y
        return spare_w >= 0 and spare_d >= 0

    def _pool_moves(self, v: int, used: Used) -> list[tuple[int, State]]:
        """The unknown-outcome operations worth trying at version ``v``: (class index, state after).

        A specific class (``c, v``; ``cd, v``) is preferred to the generic one
        with the same effect: using it leaves the more useful one for later.
        """
        moves = []
        for specific, generic, after in ((("c", v), _W, (v + 1, _UNREAD)), (("cd", v), _D, _ABSENT)):
            if after is _ABSENT and not v:
                continue  # nothing to delete
            for cls in (specific, generic):
                if self._left(used, cls) > 0:
                    moves.append((self.class_index[cls], after))
                    break
        return moves

    def _reachable(self, state: State, placed: frozenset[int], used: Used, target: int) -> bool:
        """Whether the pending operations could still bring the register to where ``target`` fits."""
        writes, deletes = self.pending_writes, self.pending_deletes
        for i in placed:
            if i in self.post:
                if self.post[i][0]:
                    writes -= 1
                else:
                    deletes -= 1
        if target in self.post and self.post[target][0]:
            writes -= 1
        used_writes, used_deletes = self._used_sums(used)
        writes += self.pool_writes - used_writes
        deletes += self.pool_deletes - used_deletes
        v = state[0]
        role = self.role[target]
        if role == _READ:
            want, value = self.seen_state[target]
            if want == 0:
                return deletes > 0
            return any(w not in placed for w in self.writer_of.get(value, ()))
        if role == _FAIL:
            found = self.fail_pred[target][1]
            if found is None:
                return writes > 0 or deletes > 0
            want = found
        else:
            kind, want = self.pre[target]
            if kind == _ANYWHERE:
                return True
            if kind == _PRESENT:
                return v > 0 or writes > 0
        if want == v:
            return True
        if want > v and writes >= want - v:
            return True
        return deletes > 0 and writes >= want

    def _explore(self, start: Config, target: int) -> list[Config]:
        """Every configuration in which ``target`` (completing now) is placed, from ``start``."""
        role = self.role[target]
        results: list[Config] = []
        stack = [start]
        seen: dict[tuple[State, frozenset[int]], list[Used]] = {(start[0], start[1]): [start[2]]}
        while stack:
            config = stack.pop()
            self.steps -= 1
            if self.steps < 0:
                raise _Budget
            state, placed, used = config
            v = state[0]
            if role == _READ:
                if state == self.seen_state[target]:
                    results.append(config)
                    continue
            elif role == _FAIL:
                if self._fail_ok(target, v):
                    results.append(config)
                    continue
            else:
                kind, want = self.pre[target]
                if kind == _ANYWHERE or (v == want if kind == _EXACT else v > 0):
                    after = self._after(target, state)
                    results.append((after, self._greedy(after, placed), used))
            if not self._reachable(state, placed, used, target):
                continue
            nexts: list[Config] = []
            present = self.mut_present if v else ()
            for i in itertools.chain(self.mut_exact.get(v, ()), present, self.mut_anywhere):
                if i != target and i not in placed:
                    after = self._after(i, state)
                    nexts.append((after, self._greedy(after, placed | {i}), used))
            for index, after2 in self._pool_moves(v, used):
                nexts.append((after2, self._greedy(after2, placed), _used_inc(used, index)))
            for nxt in nexts:
                key = (nxt[0], nxt[1])
                known = seen.get(key)
                if known is None:
                    seen[key] = [nxt[2]]
                elif any(self._no_worse(u, nxt[2]) for u in known):
                    continue
                else:
                    known.append(nxt[2])
                stack.append(nxt)
        return results

    def _prune(self, configs: Iterable[Config]) -> list[Config]:
        """Drop duplicates, and configurations no better than another (same state, fewer resources left)."""
        groups: dict[tuple[State, frozenset[int]], list[Used]] = {}
        for state, placed, used in configs:
            known = groups.setdefault((state, placed), [])
            if any(self._no_worse(u, used) for u in known):
                continue
            known[:] = [u for u in known if not self._no_worse(used, u)]
            known.append(used)
        return [(s, p, u) for (s, p), us in groups.items() for u in us]

    def run(self) -> tuple[bool, _Op | None, list[Config]]:
        """Walk the history; return (linearizable, the operation that could not be placed, its configurations)."""
        configs: list[Config] = [(_ABSENT, frozenset(), ())]
        for _, completes, i in self.events:
            role = self.role[i]
            if not completes:
                if role == _READ:
                    state = self.seen_state[i]
                    self.reads_at[state].add(i)
                    configs = [(s, p | {i}, u) if s == state else (s, p, u) for s, p, u in configs]
                elif role == _FAIL:
                    self.fails.add(i)
                    configs = [(s, p | {i}, u) if self._fail_ok(i, s[0]) else (s, p, u) for s, p, u in configs]
                elif role in (_MUT, _OPT):
                    self._add_pending(i)
                else:
                    self._register_pool(self.pool_class[i])
                continue
            self.steps -= len(configs)
            if self.steps < 0:
                raise _Budget
            after: list[Config] = []
            for config in configs:
                state, placed, used = config
                if i in placed:
                    after.append((state, placed - {i}, used))
                else:
                    for s, p, u in self._explore(config, i):
                        after.append((s, p - {i} if i in p else p, u))
            if role == _READ:
                self.reads_at[self.seen_state[i]].discard(i)
            elif role == _FAIL:
                self.fails.discard(i)
            else:
                self._remove_pending(i)
            if not after:
                return False, self.ops[i], configs
            configs = self._prune(after)
            if len(configs) > MAX_CONFIGURATIONS:
                raise _Budget
            if len(configs) == 1:
                self._retire(configs)
        return True, None, configs

    def _retire(self, configs: list[Config]) -> list[Config]:
        """Unknown-outcome operations placed in the only configuration are done for good."""
        state, placed, used = configs[0]
        done = [i for i in placed if self.role[i] == _OPT]
        if done:
            for i in done:
                self._remove_pending(i)
            configs[0] = (state, placed.difference(done), used)
        return configs


def _made(state: State, ops: Sequence[_Op], before: int) -> _Op | None:
    """The acknowledged write that most plausibly made ``state``: the last one begun before line ``before``."""
    version, value = state
    found = None
    for op in ops:
        made = op.f in ("write", "cas") and op.outcome == "ok" and op.version == version and op.inv < before
        if made and (value is _UNREAD or op.canon == value) and (found is None or op.inv > found.inv):
            found = op
    return found


def _describe_state(state: State, made: _Op | None) -> str:
    version, _value = state
    if version == 0:
        return "absent"
    if made is not None:
        return f"{made.value!r} v{version}"
    return f"v{version}"


def _search_anomaly(key: Any, ops: Sequence[_Op], op: _Op, configs: list[Config]) -> Anomaly:
    """The witness of a failed search: the operation that could not be placed, and who made the states."""
    states = sorted({c[0] for c in configs}, key=lambda s: s[0])[:4]
    involved = [op]
    described = []
    for state in states:
        made = _made(state, ops, op.ret)
        described.append(_describe_state(state, made))
        if made is not None and made not in involved:
            involved.append(made)
    if op.f == "read" and op.canon is not None:
        for other in ops:
            if other.canon == op.canon and other.f in ("write", "cas") and other not in involved:
                involved.append(other)
                break
    involved.sort(key=lambda o: o.inv)
    return Anomaly(
        "no-linearization",
        key,
        tuple(o.public() for o in involved),
        f"no order of the operations explains this {op.f} (line {op.inv}): when it completed"
        f" the key could only be {' or '.join(described)}",
    )


def check_history(
    events: Iterable[Mapping[str, Any]],
    *,
    max_steps: int | None = None,
    max_anomalies: int = 100,
) -> CheckReport:
    """Decide whether ``events`` (dicts in the format of ``docs/verify.md``) are linearizable.

    Raises :class:`~dhtcart.errors.MalformedHistory` (a ``ValueError``) for
    events that break the format, naming the line. ``max_steps`` bounds the
    search per key (default: :data:`DEFAULT_MAX_STEPS`, or 1,000 per event of
    the key if more); a key that needs more is reported in ``undecided``.
    """
    start = time.perf_counter()
    by_key, counts = _parse(events)
    anomalies: list[Anomaly] = []
    kinds: Counter[str] = Counter()
    undecided: list[Any] = []
    for key, ops in by_key.items():
        found = _Rules(key, ops).run()
        if not found:
            budget = max_steps if max_steps is not None else max(DEFAULT_MAX_STEPS, 2_000 * len(ops))
            search = _Search(ops, budget)
            try:
                ok, culprit, configs = search.run()
            except _Budget:
                undecided.append(key)
                continue
            if not ok:
                assert culprit is not None
                found = [_search_anomaly(key, ops, culprit, configs)]
        for anomaly in found:
            kinds[anomaly.kind] += 1
            if len(anomalies) < max_anomalies:
                anomalies.append(anomaly)
    valid = False if kinds else (None if undecided else True)
    return CheckReport(
        valid=valid,
        operations=counts["operations"],
        ok=counts["ok"],
        fail=counts["fail"],
        info=counts["info"] + counts["open"],
        open=counts["open"],
        keys=len(by_key),
        anomalies=tuple(anomalies),
        anomaly_counts=dict(kinds),
        undecided=tuple(undecided),
        seconds=time.perf_counter() - start,
    )


def check_file(path: str | os.PathLike[str], **options: Any) -> CheckReport:
    """:func:`check_history` on a history file (one JSON object per line).

    Raises ``OSError`` if the file cannot be read and
    :class:`~dhtcart.errors.MalformedHistory` if a line is not a valid event.
    """
    from dhtcart.history import read_history

    return check_history(read_history(path), **options)
