"""What the checker returns: a :class:`CheckReport`, its :class:`Anomaly` witnesses, the operations they name.

Plain frozen dataclasses, each with ``to_dict()`` for JSON. The kinds of
anomaly, and what each means, are :data:`ANOMALY_KINDS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ANOMALY_KINDS", "Anomaly", "CheckReport", "Operation"]

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
