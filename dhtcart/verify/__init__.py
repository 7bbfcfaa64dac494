"""Verification: record what concurrent clients do to a store, and decide whether it was linearizable.

A tool beside the library, not part of it: it uses a store as any client
does (``get``/``put``/``delete``), and nothing in dhtcart's core imports it.
This package's ``__init__`` names its public API; the work lives in

==========================  ===============================================================
:mod:`.history`             the history format: :class:`HistoryRecorder` (wraps a store),
                            :class:`HistoryWriter` (one file per process),
                            :func:`read_history`, :func:`merge_histories` (by time)
:mod:`.checker`             :func:`check_history` / :func:`check_file` -> :class:`CheckReport`
                            with :class:`Anomaly` witnesses (``parse``, ``rules``, ``search``)
:mod:`.workload`            one client: :func:`run_workload`, the operation mix
:mod:`.run`                 a whole run: :func:`verify_store` (client processes, faults,
                            merge, check, clean-up) -> :class:`VerifyRun`
:mod:`.client`              the client process: ``python -m dhtcart.verify.client``
:mod:`.command`             ``dhtcart verify``: :func:`add_verify_parser`, :func:`run_verify`
==========================  ===============================================================

Record a history, check it:

>>> from dhtcart import DHTServerStore
>>> from dhtcart.verify import HistoryRecorder, check_history
>>> events = []
>>> with DHTServerStore(shards=2) as store:
...     client = HistoryRecorder(store, events.append, process=0)
...     client.put(7, b"a")
...     client.put(7, b"b", expected_version=1)
1
2
>>> check_history(events).valid
True

The history format, the anomalies and how the checker decides are in
``docs/verify.md``. The old paths ``dhtcart.checker``, ``dhtcart.history`` and
``dhtcart.workload`` still import the same names.
"""

from dhtcart.verify.checker import (
    ANOMALY_KINDS,
    DEFAULT_MAX_STEPS,
    MAX_CONFIGURATIONS,
    Anomaly,
    CheckReport,
    Operation,
    check_file,
    check_history,
)
from dhtcart.verify.command import (
    EXIT_BUSY,
    EXIT_LINEARIZABLE,
    EXIT_NOT_LINEARIZABLE,
    EXIT_RUN_FAILED,
    EXIT_USAGE,
    add_verify_parser,
    run_verify,
)
from dhtcart.verify.history import (
    HistoryRecorder,
    HistoryWriter,
    KeyValueStore,
    encode_value,
    merge_histories,
    read_history,
)
from dhtcart.verify.run import VerifyRun, draw_keys, open_store, verify_store
from dhtcart.verify.workload import DEFAULT_RATE, MIX, OPERATIONS, WorkloadStats, check_mix, parse_mix, run_workload

__all__ = [
    # histories
    "HistoryRecorder",
    "HistoryWriter",
    "KeyValueStore",
    "encode_value",
    "merge_histories",
    "read_history",
    # the checker
    "ANOMALY_KINDS",
    "DEFAULT_MAX_STEPS",
    "MAX_CONFIGURATIONS",
    "Anomaly",
    "CheckReport",
    "Operation",
    "check_file",
    "check_history",
    # workloads and runs
    "DEFAULT_RATE",
    "MIX",
    "OPERATIONS",
    "VerifyRun",
    "WorkloadStats",
    "check_mix",
    "draw_keys",
    "open_store",
    "parse_mix",
    "run_workload",
    "verify_store",
    # the command
    "EXIT_BUSY",
    "EXIT_LINEARIZABLE",
    "EXIT_NOT_LINEARIZABLE",
    "EXIT_RUN_FAILED",
    "EXIT_USAGE",
    "add_verify_parser",
    "run_verify",
]
