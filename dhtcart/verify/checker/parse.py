"""Reading a history: pair each invocation with its completion, check the format, group by key.

:func:`parse_events` turns the events (dicts in the format of
``docs/verify.md``) into :class:`Op` records, one per operation, grouped by
key: where the operation begins and ends (its lines), what it asked and what
it got. Everything the rules and the search need is computed here once, such
as a hashable stand-in for each value (:func:`canon`). A history that breaks
the format raises :class:`~dhtcart.errors.MalformedHistory` naming the line.

>>> by_key, counts = parse_events([
...     {"process": 0, "type": "invoke", "f": "write", "key": 7, "value": "a"},
...     {"process": 1, "type": "invoke", "f": "read", "key": 7},
...     {"process": 0, "type": "ok", "f": "write", "key": 7, "value": "a", "version": 1},
... ])
>>> [str(op.public()) for op in by_key[7]]
["process 0: write 'a' -> ok v1 [line 1-3]", 'process 1: read -> never completed [line 2]']
>>> counts["operations"], counts["ok"], counts["open"]
(2, 1, 1)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from dhtcart.errors import MalformedHistory
from dhtcart.verify.checker.report import Operation

__all__ = ["FUNCTIONS", "NEVER", "Op", "canon", "parse_events"]

#: the operations a history may hold
FUNCTIONS = ("read", "write", "cas", "delete")
#: the completion line of an operation that never completed (or ended ``info``): after every line
NEVER = 1 << 62


def _is_int(x: object) -> bool:
    return type(x) is int


def canon(value: Any) -> Any:
    """A hashable stand-in for a JSON value: strings as themselves, anything else as canonical JSON."""
    if type(value) is str:
        return value
    return ("json", json.dumps(value, sort_keys=True, separators=(",", ":")))


class Op:
    """An operation while checking: where it starts and ends, what it did.

    ``inv`` is the line of its invocation; ``ret`` the line of its completion
    if it completed ``ok`` or ``fail``, else :data:`NEVER` (an unknown outcome
    may take effect at any later time); ``done_line`` the completion's line
    whatever the outcome. ``canon`` is :func:`canon` of the value it wrote or
    read; ``id`` numbers the operations of the whole history from 0.
    """

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
        self.ret = NEVER  # the completion line of an ok or fail; NEVER otherwise
        self.done_line: int | None = None  # the completion line, info included
        self.outcome = "info"
        self.value: Any = None
        self.canon: Any = None
        self.version: int | None = None
        self.expected: int | None = None
        self.existed: bool | None = None

    def public(self) -> Operation:
        """The operation as a report shows it."""
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
        return f"<Op {self.public()}>"


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


def parse_events(events: Iterable[Mapping[str, Any]]) -> tuple[dict[Any, list[Op]], Counter[str]]:
    """Pair invocations with completions; return the operations by key and the outcome counts.

    The counts are ``operations``, ``ok``, ``fail``, ``info`` and ``open``
    (invoked, never completed). Raises :class:`~dhtcart.errors.MalformedHistory`.
    """
    open_ops: dict[Any, Op] = {}
    by_key: dict[Any, list[Op]] = {}
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
            if f not in FUNCTIONS:
                raise MalformedHistory(line, f"f must be one of {', '.join(FUNCTIONS)}, not {f!r}")
            key = event.get("key")
            if not isinstance(key, (int, str)) or isinstance(key, bool):
                raise MalformedHistory(line, f"key must be an int or a string, not {key!r}")
            op = Op(counts["operations"], process, f, key, line)
            counts["operations"] += 1
            if f in ("write", "cas"):
                if event.get("value") is None:
                    raise MalformedHistory(line, f"a {f} needs the value it writes (null means absent)")
                op.value = event["value"]
                op.canon = canon(op.value)
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
                    op.canon = None if op.value is None else canon(op.value)
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
