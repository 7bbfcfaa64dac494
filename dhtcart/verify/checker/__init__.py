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

The package's modules follow those steps: :mod:`~dhtcart.verify.checker.parse`
reads the events into operations (and rejects a malformed history),
:mod:`~dhtcart.verify.checker.rules` holds the certificates,
:mod:`~dhtcart.verify.checker.search` the search, and
:mod:`~dhtcart.verify.checker.report` what they return. This module puts them
together, key by key.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from dhtcart.verify.checker.parse import parse_events
from dhtcart.verify.checker.report import ANOMALY_KINDS, Anomaly, CheckReport, Operation
from dhtcart.verify.checker.rules import Rules
from dhtcart.verify.checker.search import (
    DEFAULT_MAX_STEPS,
    MAX_CONFIGURATIONS,
    BudgetExhausted,
    Search,
    search_anomaly,
)
from dhtcart.verify.history import read_history

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
    by_key, counts = parse_events(events)
    anomalies: list[Anomaly] = []
    kinds: Counter[str] = Counter()
    undecided: list[Any] = []
    for key, ops in by_key.items():
        found = Rules(key, ops).run()
        if not found:
            budget = max_steps if max_steps is not None else max(DEFAULT_MAX_STEPS, 2_000 * len(ops))
            search = Search(ops, budget)
            try:
                ok, culprit, configs = search.run()
            except BudgetExhausted:
                undecided.append(key)
                continue
            if not ok:
                assert culprit is not None
                found = [search_anomaly(key, ops, culprit, configs)]
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
    return check_history(read_history(path), **options)
