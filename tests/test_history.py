"""The recorder: what each outcome of a store call becomes in the history, and the file sink."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dhtcart import DHTServerStore, InvalidKey, InvalidValue, ShardUnavailable, VersionConflict
from dhtcart.verify import HistoryRecorder, HistoryWriter, check_file, check_history, encode_value, read_history
from tests.helpers import ROOT, child_env
from tests.redis_server import free_port


def _strip(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in events:
        assert type(e["time"]) is int
        out.append({k: v for k, v in e.items() if k != "time"})
    return out


def test_ok_results_and_a_failed_compare_and_set() -> None:
    events: list[dict[str, Any]] = []
    with DHTServerStore(shards=2) as store:
        rec = HistoryRecorder(store, events.append, process="p")
        assert rec.get(5) is None
        assert rec.put(5, b"a") == 1
        assert rec.put(5, b"b", expected_version=1) == 2
        with pytest.raises(VersionConflict):
            rec.put(5, b"c", expected_version=1)
        with pytest.raises(VersionConflict):
            rec.delete(5, expected_version=7)
        assert rec.delete(5, expected_version=2) is True
        assert rec.delete(5) is False
    p = {"process": "p", "key": 5}
    assert _strip(events) == [
        {**p, "type": "invoke", "f": "read"},
        {**p, "type": "ok", "f": "read", "value": None, "version": 0},
        {**p, "type": "invoke", "f": "write", "value": "a"},
        {**p, "type": "ok", "f": "write", "value": "a", "version": 1},
        {**p, "type": "invoke", "f": "cas", "value": "b", "expected": 1},
        {**p, "type": "ok", "f": "cas", "value": "b", "version": 2},
        {**p, "type": "invoke", "f": "cas", "value": "c", "expected": 1},
        {**p, "type": "fail", "f": "cas", "version": 2},
        {**p, "type": "invoke", "f": "delete", "expected": 7},
        {**p, "type": "fail", "f": "delete", "version": 2},
        {**p, "type": "invoke", "f": "delete", "expected": 2},
        {**p, "type": "ok", "f": "delete", "existed": True},
        {**p, "type": "invoke", "f": "delete"},
        {**p, "type": "ok", "f": "delete", "existed": False},
    ]
    times = [e["time"] for e in events]
    assert times == sorted(times)
    assert check_history(events).valid is True


def test_an_unreachable_shard_is_an_unknown_outcome() -> None:
    """A real connection refused (nothing listens on the port): ShardUnavailable, recorded as info."""
    pytest.importorskip("redis")
    port = free_port()
    events: list[dict[str, Any]] = []
    with DHTServerStore({"r": f"redis://127.0.0.1:{port}/0?timeout=0.2"}) as store:
        rec = HistoryRecorder(store, events.append, process=1)
        with pytest.raises(ShardUnavailable):
            rec.put(9, b"x", expected_version=0)
        with pytest.raises(ShardUnavailable):
            rec.get(9)
    expected = [("invoke", "cas"), ("info", "cas"), ("invoke", "read"), ("info", "read")]
    assert [(e["type"], e["f"]) for e in events] == expected
    report = check_history(events)
    assert (report.valid, report.info) == (True, 2)


def test_validation_errors_are_never_recorded() -> None:
    events: list[dict[str, Any]] = []
    with DHTServerStore(shards=1) as store:
        rec = HistoryRecorder(store, events.append, process=0)
        with pytest.raises(InvalidKey):
            rec.get(-1)
        with pytest.raises(InvalidValue):
            rec.put(1, "not bytes")  # type: ignore[arg-type]
        with pytest.raises(InvalidValue):
            rec.put(1, b"x", expected_version=-1)
        with pytest.raises(InvalidValue):
            rec.delete(1, expected_version=True)  # type: ignore[arg-type]
    assert events == []


def test_values_that_are_not_text() -> None:
    assert encode_value(b"caf\xc3\xa9") == "café"
    assert encode_value(b"\x00\xff") == {"base64": "AP8="}
    events: list[dict[str, Any]] = []
    with DHTServerStore(shards=1) as store:
        rec = HistoryRecorder(store, events.append, process=0)
        rec.put(1, b"\xff")
        rec.get(1)
    assert events[-1]["value"] == {"base64": "/w=="}
    assert check_history(events).valid is True


_KILLED_CHILD = """
import sys, time
from dhtcart import DHTServerStore
from dhtcart.verify import HistoryRecorder, HistoryWriter
store = DHTServerStore.open(sys.argv[1])
sink = HistoryWriter(sys.argv[2])
rec = HistoryRecorder(store, sink, process=0)
rec.put(1, b"a")
class Slow:  # the store call that never returns: the kill lands while it runs
    def put(self, *a):
        print("inside", flush=True)
        time.sleep(60)
HistoryRecorder(Slow(), sink, process=1).put(2, b"b")
"""


def test_a_killed_writer_leaves_every_event_it_recorded(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    DHTServerStore.open(tmp_path / "store", shards=1).close()
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CHILD, str(tmp_path / "store"), str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=ROOT,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "inside"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    proc.stdout.close()
    events = list(read_history(path))
    assert [(e["process"], e["type"]) for e in events] == [(0, "invoke"), (0, "ok"), (1, "invoke")]
    report = check_file(path)
    assert (report.valid, report.open) == (True, 1)


def test_writer_appends_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    with HistoryWriter(path) as w:
        w({"process": 0, "type": "invoke", "f": "read", "key": 1, "value": "é"})
    with HistoryWriter(path, append=True) as w:
        w({"process": 0, "type": "ok", "f": "read", "key": 1, "value": None, "version": 0})
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["invoke", "ok"]
    assert "é" in lines[0]


class _Rerunning:
    """A store whose ``modify`` runs the change on each record of ``runs`` in turn, as a
    compare-and-set loop does after a write that did not take effect, then returns ``after``."""

    def __init__(self, runs: list[Any], after: Any) -> None:
        self.runs, self.after = runs, after

    def modify(self, key: int, change: Any) -> Any:
        for rec in self.runs:
            change(rec)
        return self.after


def _kinds(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["f"]) for e in events]


class _Unreachable:
    """A store whose ``modify`` fails before it runs the change (its read of the record timed out)."""

    def modify(self, key: int, change: Any) -> Any:
        raise ShardUnavailable("r1", "redis://127.0.0.1:1/0", "no answer within 0.3 s")


def test_a_modify_that_failed_before_its_change_ran_is_an_unknown_read() -> None:
    """Every call is one operation of the history, as the workload counts them."""
    events: list[dict[str, Any]] = []
    recorder = HistoryRecorder(_Unreachable(), events.append, process=0)
    with pytest.raises(ShardUnavailable):
        recorder.modify(5, lambda r: b"c")
    assert _kinds(events) == [("invoke", "read"), ("info", "read")]
    assert recorder.repeated == 0
    assert check_history(events).info == 1


def test_a_modify_run_again_on_a_changed_record_was_a_conflict_and_on_the_same_one_is_the_same_cas() -> None:
    from dhtcart.backends.base import Record

    v1, v2 = Record(1, b"a"), Record(2, b"b")
    events: list[dict[str, Any]] = []
    recorder = HistoryRecorder(_Rerunning([v1, v2], Record(3, b"c")), events.append, process=0)
    recorder.modify(5, lambda r: b"c")
    assert _kinds(events) == [("invoke", "cas"), ("fail", "cas"), ("invoke", "cas"), ("ok", "cas")]
    assert recorder.repeated == 1, "one operation more than the call"
    assert [e.get("expected") for e in events if e["type"] == "invoke"] == [1, 2]
    assert "version" not in events[1], "the conflict's version is not known to the recorder"

    events = []  # refused for another reason (a redirect): the same record, the same value again
    recorder = HistoryRecorder(_Rerunning([v1, v1, v1], Record(2, b"c")), events.append, process=0)
    recorder.modify(5, lambda r: b"c")
    assert _kinds(events) == [("invoke", "cas"), ("ok", "cas")], "one compare-and-set, invoked at the first run"
    assert recorder.repeated == 0
    assert (events[0]["expected"], events[1]["version"]) == (1, 2)

    events = []  # the same record, another value: the first run's outcome is left unknown
    values = iter([b"c", b"d"])
    recorder = HistoryRecorder(_Rerunning([v1, v1], Record(2, b"d")), events.append, process=0)
    recorder.modify(5, lambda r: next(values))
    assert _kinds(events) == [("invoke", "cas"), ("info", "cas"), ("invoke", "cas"), ("ok", "cas")]
    assert recorder.repeated == 1
    times = [e["time"] for e in events]
    assert times == sorted(times), "one process's events in time order"

    events = []  # the first run writes, the second leaves the record: a read, and no KeyError
    calls = iter([b"c", None])
    HistoryRecorder(_Rerunning([v1, v2], v2), events.append, process=0).modify(5, lambda r: next(calls))
    assert _kinds(events) == [("invoke", "cas"), ("fail", "cas"), ("invoke", "read"), ("ok", "read")]
    assert events[-1]["version"] == 2
    times = [e["time"] for e in events]
    assert times == sorted(times)
