"""A brute-force linearizability checker, independent of ``dhtcart.verify.checker`` (not a test module).

It tries every order Wing and Gong's way: repeatedly pick an operation that
no remaining completed operation precedes in real time, apply it to the
register, and backtrack; operations whose outcome is unknown may be picked or
left out. Memoised on (remaining operations, state), so it is exact and
exponential: for histories of a dozen operations per key, as an oracle for
the checker's tests. Semantics are those of ``docs/verify.md``, written out
again from the document rather than shared with the checker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

INF = float("inf")


class _Op:
    def __init__(self, event: Mapping[str, Any], line: int) -> None:
        self.f: str = event["f"]
        self.key = event["key"]
        self.value = event.get("value")
        self.expected: int | None = event.get("expected")
        self.inv = line
        self.ret = INF
        self.outcome = "info"
        self.result: dict[str, Any] = {}


def _pair(events: Sequence[Mapping[str, Any]]) -> list[_Op]:
    ops: list[_Op] = []
    open_: dict[Any, _Op] = {}
    for line, ev in enumerate(events, 1):
        if ev["type"] == "invoke":
            op = _Op(ev, line)
            open_[ev["process"]] = op
            ops.append(op)
        else:
            op = open_.pop(ev["process"])
            op.outcome = ev["type"]
            if op.outcome != "info":
                op.ret = line
                op.result = dict(ev)
    return ops


def _step(op: _Op, state: tuple[int, Any]) -> tuple[int, Any] | None:
    """The state after ``op`` at ``state``, or None if ``op`` cannot happen there with its result."""
    version, value = state
    r = op.result
    if op.outcome == "fail":
        if version == op.expected:
            return None
        if r.get("version") is not None and r["version"] != version:
            return None
        return state
    ok = op.outcome == "ok"
    if op.f == "read":
        return state if (r["value"], r["version"]) == (value, version) else None
    if op.f == "write":
        if ok and r["version"] != version + 1:
            return None
        return (version + 1, op.value)
    if op.f == "cas":
        if version != op.expected or (ok and r["version"] != version + 1):
            return None
        return (version + 1, op.value)
    # delete
    if op.expected is not None and version != op.expected:
        return None
    if ok and r.get("existed") is not None and r["existed"] != (version > 0):
        return None
    return (0, None)


def _relevant(op: _Op) -> bool:
    if op.f == "read":
        return op.outcome == "ok"
    if op.outcome == "fail":
        return op.expected is not None  # a failed unconditional write or delete did nothing
    return True


def linearizable_key(ops: Sequence[_Op]) -> bool:
    ops = [op for op in ops if _relevant(op)]
    must = frozenset(i for i, op in enumerate(ops) if op.outcome != "info")

    @cache
    def search(remaining: frozenset[int], state: tuple[int, Any]) -> bool:
        if not (remaining & must):
            return True
        horizon = min(ops[i].ret for i in remaining)
        for i in remaining:
            if ops[i].inv < horizon:
                after = _step(ops[i], state)
                if after is not None and search(remaining - {i}, after):
                    return True
        return False

    return search(frozenset(range(len(ops))), (0, None))


def reference_linearizable(events: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the history is linearizable (every key on its own)."""
    by_key: dict[Any, list[_Op]] = {}
    for op in _pair(events):
        by_key.setdefault(op.key, []).append(op)
    return all(linearizable_key(ops) for ops in by_key.values())
