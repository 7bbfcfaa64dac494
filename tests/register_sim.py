"""A simulated versioned register that produces linearizable histories (not a test module).

It has the backends' semantics exactly: a key is absent (version 0) or holds
a value with a version; each write makes the version one more; a delete
makes the key absent, so the next write makes version 1 again; a
compare-and-set (and a conditional delete) on the wrong version fails and
changes nothing. Simulated processes invoke operations, the simulator lets
each one take effect at a random moment between its invocation and its
completion (the *linearization*), and some operations end ``info``: their
effect is hidden, happens later, or never happens. The history it writes is
therefore linearizable by construction, and the simulator remembers the
order it used, so tests can mutate it in ways that provably break it.

Used by the checker's tests and by ``benchmarks/verify_bench.py``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

#: the mix of operations (weights); "cdelete" is a delete with ``expected``
DEFAULT_MIX = {"read": 35, "write": 15, "cas": 30, "delete": 5, "cdelete": 15}


@dataclass
class SimOp:
    """One simulated operation and what really happened to it."""

    process: int
    f: str
    key: int
    value: str | None = None
    expected: int | None = None
    invoke_line: int = 0
    complete_line: int | None = None  # None: never completed
    outcome: str = ""  # ok / fail / info ("" while in flight)
    applied: bool = False  # took effect (for a fail: was checked)
    result: dict[str, Any] = field(default_factory=dict)  # the ok/fail fields
    order: int = -1  # position in the linearization

    @property
    def ret(self) -> float:
        """The completion line of an ok/fail, infinity otherwise (what real time constrains)."""
        return self.complete_line if self.outcome in ("ok", "fail") and self.complete_line else float("inf")


def _apply(state: dict[int, tuple[int, str | None]], op: SimOp) -> dict[str, Any]:
    """Apply ``op`` to the register; return its result fields (with "type")."""
    version, value = state.get(op.key, (0, None))
    f = op.f
    if f == "read":
        return {"type": "ok", "value": value, "version": version}
    if f == "write":
        state[op.key] = (version + 1, op.value)
        return {"type": "ok", "version": version + 1}
    if f == "cas":
        if version != op.expected:
            return {"type": "fail", "version": version}
        state[op.key] = (version + 1, op.value)
        return {"type": "ok", "version": version + 1}
    if op.expected is not None and version != op.expected:
        return {"type": "fail", "version": version}
    state.pop(op.key, None)
    return {"type": "ok", "existed": version > 0}


def simulate(
    rng: random.Random,
    *,
    processes: int = 4,
    keys: int = 1,
    operations: int = 20,
    p_info: float = 0.1,
    p_open: float = 0.02,
    p_report_found: float = 0.5,
    p_reuse: float = 0.0,
    mix: dict[str, int] | None = None,
) -> tuple[list[dict[str, Any]], list[SimOp]]:
    """Run the simulation; return the history's events and the operations with their truth.

    ``p_info``: chance that a completion is ``info`` (the effect then happened
    before it, happens later, or never); ``p_open``: chance that such an
    operation never completes at all (a crash). ``p_report_found``: chance that
    a ``fail`` says which version it found. ``p_reuse``: chance that a write
    writes a value written before (values are unique otherwise).
    """
    mix = mix or DEFAULT_MIX
    names, weights = zip(*mix.items())
    state: dict[int, tuple[int, str | None]] = {}
    events: list[dict[str, Any]] = []
    ops: list[SimOp] = []
    inflight: dict[int, SimOp] = {}
    seen: dict[tuple[int, int], int] = {}  # (process, key) -> version last seen
    late: list[SimOp] = []  # unknown outcome, effect still to come
    order = 0
    n = 0
    names_of = list(range(processes))  # the process id each client slot now runs as
    next_name = processes

    def take_effect(op: SimOp) -> None:
        nonlocal order
        op.result = _apply(state, op)
        op.applied = True
        op.order = order
        order += 1

    while n < operations or inflight or late:
        choices = []
        idle = [p for p in range(processes) if p not in inflight]
        if n < operations and idle:
            choices += ["invoke"] * 3
        waiting = [op for op in inflight.values() if not op.applied]
        if waiting:
            choices += ["apply"] * 2
        if inflight:
            choices += ["complete"] * 2
        if late:
            choices.append("late")
        choice = rng.choice(choices)
        if choice == "invoke":
            p = rng.choice(idle)
            f = rng.choices(names, weights)[0]
            key = rng.randrange(keys)
            op = SimOp(process=p, f="delete" if f == "cdelete" else f, key=key)
            event: dict[str, Any] = {"process": names_of[p], "type": "invoke", "f": op.f, "key": key}
            if op.f in ("write", "cas"):
                op.value = f"v{rng.randrange(n)}" if n and rng.random() < p_reuse else f"v{n}"
                event["value"] = op.value
            if f in ("cas", "cdelete"):
                guess = seen.get((p, key), 0)
                op.expected = guess if rng.random() < 0.8 else rng.randrange(4)
                event["expected"] = op.expected
            events.append(event)
            op.invoke_line = len(events)
            ops.append(op)
            inflight[p] = op
            n += 1
        elif choice == "apply":
            take_effect(rng.choice(waiting))
        elif choice == "late":
            op = late.pop(rng.randrange(len(late)))
            take_effect(op)
        else:
            op = rng.choice(list(inflight.values()))
            del inflight[op.process]
            if rng.random() < p_info:
                op.outcome = "info"
                if not op.applied and rng.random() < 0.5:
                    late.append(op)  # takes effect later (a paused server runs it afterwards)
                if rng.random() < p_open:
                    names_of[op.process] = next_name  # never completes: the process crashed;
                    next_name += 1  # a new one takes its place
                    continue
                events.append({"process": names_of[op.process], "type": "info", "f": op.f, "key": op.key})
                op.complete_line = len(events)
                continue
            if not op.applied:
                take_effect(op)
            result = dict(op.result)
            op.outcome = result["type"]
            if op.outcome == "fail" and rng.random() >= p_report_found:
                del result["version"]
            if "version" in result:
                seen[(op.process, op.key)] = result["version"]
            elif op.f == "delete" and op.outcome == "ok":
                seen[(op.process, op.key)] = 0
            events.append({"process": names_of[op.process], "f": op.f, "key": op.key, **result})
            op.complete_line = len(events)
    return events, ops
