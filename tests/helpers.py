"""Helpers shared by the test modules (not a test module itself).

Kept free of heavy imports (no hypothesis): child processes import it too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from dhtcart import DHTServerStore, Record
from dhtcart.hashing import MAX_KEY
from dhtcart.verify import CheckReport, HistoryRecorder, KeyValueStore, check_history, merge_histories, read_history

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "proc_worker.py"

#: keys that matter most: the ends of the key space and a few round numbers
EDGE_KEYS = [0, 1, 2, 2**32, 2**62, MAX_KEY - 1, MAX_KEY]


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a child Python that imports dhtcart and ``tests.*`` from this tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def run_python(code: str, *, timeout: float = 60, **env: str) -> str:
    """Run ``python -c code`` in a fresh interpreter; return its stdout (fails on a non-zero exit)."""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(**env),
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stdout


def worker(*args: str, **popen: Any) -> subprocess.Popen[str]:
    """Start ``tests/proc_worker.py`` with ``args`` (stdout piped, text mode)."""
    return subprocess.Popen(
        [sys.executable, "-u", str(WORKER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=ROOT,
        **popen,
    )


def load_records(backend: Any, records: Any) -> int:
    """Write ``(key, Record)`` pairs keeping their versions, as a migration's copy does (test set-up).

    One ``import_ranges`` per key, each over the range ``(key - 1, key]``, so no
    other record is touched; the backend must not serve those keys (an unfenced
    backend serves none). Returns how many were written.
    """
    n = 0
    for key, rec in records:
        n += backend.import_ranges(0, [(key - 1, key)], [(key, Record(*rec))])
    return n


def snapshot(store: DHTServerStore) -> dict[int, Record]:
    """Every key and record of a store, whatever shard it is on (keys must be unique)."""
    out: dict[int, Record] = {}
    for key, rec in store.items():
        assert key not in out, f"key {key} is on two shards"
        out[key] = rec
    return out


# -- increments: the careful way and the naive way --------------------------------------


def cas_increment(store: DHTServerStore, key: int) -> int:
    """Add one to the counter under ``key`` with compare-and-set; return the retries it took."""
    from dhtcart import VersionConflict

    retries = 0
    while True:
        rec = store.get(key)
        current = int(rec.value) if rec is not None else 0
        try:
            store.put(key, b"%d" % (current + 1), expected_version=rec.version if rec is not None else 0)
            return retries
        except VersionConflict:
            retries += 1


def naive_increment(store: DHTServerStore, key: int, pause: float = 0.0) -> None:
    """Add one the way the seed did: read, (think), write unconditionally. Loses updates."""
    import time

    rec = store.get(key)
    current = int(rec.value) if rec is not None else 0
    if pause:
        time.sleep(pause)  # widen the window another writer can slip into
    store.put(key, b"%d" % (current + 1))


def manifest(directory: Path) -> dict[str, Any]:
    """The membership document of the store in ``directory``, as stored."""
    import json

    data: dict[str, Any] = json.loads((directory / "manifest.json").read_text())
    return data


def placement(store: DHTServerStore) -> dict[int, str]:
    """Which shard holds each key (asserting that no key is on two shards)."""
    where: dict[int, str] = {}
    for name, server in store.servers.items():
        for key, _ in server.scan(-1, MAX_KEY):
            assert key not in where, f"key {key} is on {where[key]} and on {name}"
            where[key] = name
    return where


# -- recording what a test does, and checking it ----------------------------------------


class Histories:
    """The operations of one test, recorded per thread or per process, then merged and checked.

    ``recorder(store, process)`` records in memory (threads of this process);
    ``worker_args(process)`` are the arguments that make ``tests/proc_worker.py``
    record into a file of ``directory``. ``check()`` merges everything by time
    and asserts the history is linearizable (DESIGN invariant 6).
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self.streams: list[list[dict[str, Any]]] = []

    def recorder(self, store: KeyValueStore, process: int | str) -> HistoryRecorder:
        stream: list[dict[str, Any]] = []
        self.streams.append(stream)
        return HistoryRecorder(store, stream.append, process=process)

    def worker_args(self, process: int) -> list[str]:
        assert self.directory is not None, "worker histories need a directory"
        self.directory.mkdir(parents=True, exist_ok=True)
        return ["--history", str(self.directory / f"p{process}.jsonl"), "--process", str(process)]

    def check(self) -> CheckReport:
        files = sorted(self.directory.glob("p*.jsonl")) if self.directory is not None else []
        report = check_history(merge_histories([*self.streams, *(read_history(f) for f in files)]))
        assert report.valid is True, [
            (a.kind, a.explanation, [str(op) for op in a.operations]) for a in report.anomalies
        ]
        return report


def assert_repaired(store: DHTServerStore, lost: str, keys: Any, copies: int = 2, timeout: float = 60) -> list[str]:
    """Repair ``store`` (what a background repair left) and check it is whole again: no shard
    down, nothing under-replicated, ``lost`` out of the ring, every key of ``keys`` on exactly
    ``copies`` live replicas. Returns what this call's ``repair()`` removed."""
    import time

    removed = store.repair()
    deadline = time.monotonic() + timeout
    while store.rebalance_status().migrating:
        assert time.monotonic() < deadline, f"the repair did not finish within {timeout:g} s"
        time.sleep(0.05)
    status = store.rebalance_status()
    assert status.down == [] and status.under_replicated == 0.0, status
    assert lost not in store.ring.nodes
    store._check()  # every key on exactly its replicas, every shard's record its arcs
    for key in keys:
        where = store.replicas_for(key)
        assert len(where) == copies and lost not in where, (key, where)
    return removed
