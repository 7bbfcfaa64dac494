"""The linearizability checker: one hand-made history per anomaly, random valid histories, mutations.

Hand-made histories are written as real time reads: each helper appends an
event, so the order of the calls is the order of the lines. The random
histories come from ``tests/register_sim.py`` (a simulated register with
random overlaps, unknown outcomes and failures: linearizable by
construction). Each mutation below changes one event in a way that provably
breaks linearizability (the argument is in its docstring), and on small
histories the brute-force oracle ``tests/reference_checker.py`` confirms it.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from dhtcart import MalformedHistory
from dhtcart.verify import ANOMALY_KINDS, CheckReport, check_file, check_history, merge_histories, read_history
from tests.reference_checker import reference_linearizable
from tests.register_sim import SimOp, simulate

Event = dict[str, Any]


class H:
    """A history being written: ``h.invoke(...)``, ``h.ok(...)``, or ``h.write(...)`` for both at once."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def invoke(self, p: int, f: str, key: Any = 1, **fields: Any) -> int:
        self.events.append({"process": p, "type": "invoke", "f": f, "key": key, **fields})
        return len(self.events)

    def done(self, kind: str, p: int, f: str, key: Any = 1, **fields: Any) -> int:
        self.events.append({"process": p, "type": kind, "f": f, "key": key, **fields})
        return len(self.events)

    def ok(self, p: int, f: str, key: Any = 1, **fields: Any) -> int:
        return self.done("ok", p, f, key, **fields)

    # whole operations, one after the other
    def write(self, p: int, value: str, version: int, key: Any = 1) -> None:
        self.invoke(p, "write", key, value=value)
        self.ok(p, "write", key, value=value, version=version)

    def cas(self, p: int, expected: int, value: str, version: int | None, key: Any = 1) -> None:
        self.invoke(p, "cas", key, expected=expected, value=value)
        if version is None:
            self.done("fail", p, "cas", key)
        else:
            self.ok(p, "cas", key, value=value, version=version)

    def read(self, p: int, value: str | None, version: int, key: Any = 1) -> None:
        self.invoke(p, "read", key)
        self.ok(p, "read", key, value=value, version=version)

    def delete(self, p: int, existed: bool, expected: int | None = None, key: Any = 1) -> None:
        extra = {} if expected is None else {"expected": expected}
        self.invoke(p, "delete", key, **extra)
        self.ok(p, "delete", key, existed=existed)

    def check(self, **options: Any) -> CheckReport:
        report = check_history(self.events, **options)
        # the oracle agrees on every hand-made history
        assert report.valid is reference_linearizable(self.events) or report.valid is None
        return report


def only_anomaly(report: CheckReport) -> Any:
    assert report.valid is False, report
    kinds = {a.kind for a in report.anomalies}
    assert len(kinds) == 1, [(a.kind, a.explanation) for a in report.anomalies]
    return report.anomalies[0]


def lines(anomaly: Any) -> list[int]:
    return sorted(op.invoke_line for op in anomaly.operations)


# -- valid histories ---------------------------------------------------------------------


def test_sequential_writes_reads_and_deletes() -> None:
    h = H()
    h.read(0, None, 0)
    h.write(0, "a", 1)
    h.cas(1, 1, "b", 2)
    h.read(2, "b", 2)
    h.delete(0, True)
    h.read(1, None, 0)
    h.write(2, "c", 1)  # a deleted key's version restarts at 1
    h.cas(0, 1, "d", 2)  # ABA: version 1 of the new life
    h.delete(1, True, expected=2)
    h.delete(1, False)
    h.delete(2, False, expected=0)
    assert h.check().valid is True


def test_concurrent_read_may_see_either_side_of_a_write() -> None:
    for seen in (("a", 1), ("b", 2)):
        h = H()
        h.write(0, "a", 1)
        h.invoke(1, "write", value="b")
        h.invoke(2, "read")
        h.ok(2, "read", value=seen[0], version=seen[1])
        h.ok(1, "write", value="b", version=2)
        assert h.check().valid is True


def test_failed_compare_and_set_and_the_version_it_found() -> None:
    h = H()
    h.write(0, "a", 1)
    h.write(0, "b", 2)
    h.invoke(1, "cas", expected=1, value="x")
    h.done("fail", 1, "cas", version=2)
    h.invoke(1, "delete", expected=1)
    h.done("fail", 1, "delete")
    assert h.check().valid is True


def test_unknown_outcomes_may_happen_later_or_never() -> None:
    h = H()
    h.invoke(0, "write", value="a")
    h.done("info", 0, "write")  # a timeout: it may still happen
    h.read(1, None, 0)
    h.read(1, "a", 1)  # ...and it did, after its info
    h.invoke(2, "write", value="never")
    h.done("info", 2, "write")  # this one never happened
    h.invoke(3, "cas", expected=1, value="c")  # never completes (a crash)
    h.write(0, "b", 2)
    h.read(1, "b", 2)
    assert h.check().valid is True


def test_an_unknown_outcome_fills_a_version_gap() -> None:
    h = H()
    h.invoke(0, "write", value="lost")
    h.done("info", 0, "write")
    h.write(1, "a", 2)  # version 1 was the unknown write's
    assert h.check().valid is True
    h2 = H()
    h2.write(1, "a", 2)  # ...but nothing can have made version 1 here
    report = h2.check()
    assert only_anomaly(report).kind == "no-linearization"


def test_versions_repeat_across_deletes_with_concurrency() -> None:
    h = H()
    h.write(0, "a", 1)
    h.invoke(1, "delete")
    h.invoke(2, "write", value="b")
    h.ok(2, "write", value="b", version=1)  # after the delete: a new life
    h.ok(1, "delete", existed=True)
    h.read(0, "b", 1)
    assert h.check().valid is True


def test_keys_are_independent() -> None:
    h = H()
    h.write(0, "a", 1, key=1)
    h.write(0, "a", 1, key="other")
    h.read(1, "a", 1, key="other")
    assert h.check().valid is True


# -- one anomaly of each kind --------------------------------------------------------------


def test_stale_read_after_a_newer_write_completed() -> None:
    h = H()
    h.write(0, "a", 1)  # lines 1-2
    h.write(1, "b", 2)  # lines 3-4
    h.read(2, "a", 1)  # lines 5-6: "b" replaced it before this read began
    anomaly = only_anomaly(h.check())
    assert anomaly.kind == "stale-read"
    assert lines(anomaly) == [1, 3, 5]


def test_stale_read_by_versions_alone() -> None:
    h = H()
    h.invoke(0, "write", value="a")  # 1
    h.invoke(1, "write", value="b")  # 2: begins before "a" is acknowledged
    h.ok(0, "write", value="a", version=1)
    h.ok(1, "write", value="b", version=2)
    h.read(2, "a", 1)  # no delete in this key: version 2 is after version 1
    anomaly = only_anomaly(h.check())
    assert anomaly.kind == "stale-read"
    assert lines(anomaly) == [1, 2, 5]


def test_stale_read_of_absent_after_an_acknowledged_write() -> None:
    h = H()
    h.write(0, "a", 1)
    h.read(1, None, 0)
    anomaly = only_anomaly(h.check())
    assert anomaly.kind == "stale-read" and lines(anomaly) == [1, 3]
    h2 = H()  # the same with a delete that could have come between: fine
    h2.write(0, "a", 1)
    h2.invoke(2, "delete")
    h2.read(1, None, 0)
    h2.ok(2, "delete", existed=True)
    assert h2.check().valid is True


def test_lost_write_overwritten_at_the_same_version() -> None:
    h = H()
    h.write(0, "a", 1)
    h.write(1, "b", 1)  # no delete: "a" vanished from the version chain
    anomaly = only_anomaly(h.check())
    assert anomaly.kind == "lost-write" and lines(anomaly) == [1, 3]


def test_two_concurrent_writes_with_one_version() -> None:
    h = H()
    h.invoke(0, "write", value="a")
    h.invoke(1, "write", value="b")
    h.ok(0, "write", value="a", version=1)
    h.ok(1, "write", value="b", version=1)
    anomaly = only_anomaly(h.check())
    assert anomaly.kind == "duplicate-version" and lines(anomaly) == [1, 2]


def test_duplicate_versions_are_fine_in_two_lives() -> None:
    h = H()
    h.write(0, "a", 1)
    h.delete(1, True)
    h.write(2, "b", 1)
    assert h.check().valid is True


def test_compare_and_set_through_on_an_old_version() -> None:
    h = H()
    h.write(0, "a", 1)
    h.cas(1, 0, "b", 1)  # "must be absent", yet it succeeded after "a"
    anomaly = only_anomaly(h.check())
    assert anomaly.kind == "cas-wrong-version" and lines(anomaly) == [1, 3]


def test_compare_and_set_that_made_the_wrong_version() -> None:
    h = H()
    h.write(0, "a", 1)
    h.write(0, "b", 2)
    h.cas(1, 1, "c", 3)  # expected 1, made 3: it went through on version 2
    anomaly = only_anomaly(h.check())
    assert anomaly.kind == "cas-wrong-version" and lines(anomaly) == [5]


def test_read_of_a_value_never_written() -> None:
    h = H()
    h.write(0, "a", 1)
    h.read(1, "ghost", 1)
    anomaly = only_anomaly(h.check())
    assert anomaly.kind == "value-never-written" and lines(anomaly) == [3]
    h2 = H()  # a failed compare-and-set wrote nothing either
    h2.cas(0, 0, "x", None)
    h2.read(1, "x", 1)
    assert only_anomaly(h2.check()).kind == "value-never-written"


def test_read_from_the_future() -> None:
    h = H()
    h.read(1, "a", 1)
    h.write(0, "a", 1)
    anomaly = only_anomaly(h.check())
    assert anomaly.kind == "future-read" and lines(anomaly) == [1, 3]


def test_read_at_the_wrong_version() -> None:
    h = H()
    h.write(0, "a", 1)
    h.read(1, "a", 2)
    anomaly = only_anomaly(h.check())
    assert anomaly.kind == "read-wrong-version" and lines(anomaly) == [1, 3]
    h2 = H()  # an unacknowledged write read at two versions
    h2.invoke(0, "write", value="a")
    h2.read(1, "a", 1)
    h2.read(1, "a", 2)
    assert only_anomaly(h2.check()).kind == "read-wrong-version"


@pytest.mark.parametrize(
    "events",
    [
        [("read", {}, {"value": None, "version": 3})],
        [("read", {}, {"value": "a", "version": 0})],
        [("write", {"value": "a"}, {"version": 0})],
        [("delete", {"expected": 2}, {"existed": False})],
    ],
)
def test_results_no_register_gives(events: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> None:
    h = H()
    for f, call, result in events:
        h.invoke(0, f, **call)
        h.ok(0, f, **result)
    assert only_anomaly(h.check()).kind == "impossible-result"
    h2 = H()
    h2.invoke(0, "cas", expected=0, value="a")
    h2.done("fail", 0, "cas", version=0)  # a conflict that found what it expected
    assert only_anomaly(h2.check()).kind == "impossible-result"


def test_failed_compare_and_set_although_the_version_matched() -> None:
    h = H()
    h.write(0, "a", 1)
    h.cas(1, 1, "b", None)  # nothing else ran: version 1 was current throughout
    anomaly = only_anomaly(h.check())
    assert anomaly.kind == "no-linearization"
    assert lines(anomaly) == [1, 3]
    assert "v1" in anomaly.explanation


def test_every_kind_is_documented() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "verify.md").read_text()
    for kind in ANOMALY_KINDS:
        assert f"`{kind}`" in text, kind


# -- the report, bounds, malformed histories ----------------------------------------------


def test_report_counts_and_json() -> None:
    h = H()
    h.write(0, "a", 1)
    h.cas(1, 0, "b", None)
    h.invoke(2, "read")
    h.done("info", 2, "read")
    h.invoke(3, "write", value="c")  # never completes
    report = h.check()
    assert (report.operations, report.ok, report.fail, report.info, report.open, report.keys) == (4, 1, 1, 2, 1, 1)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["valid"] is True and data["anomalies"] == []
    bad = H()
    bad.write(0, "a", 1)
    bad.read(1, "zzz", 1)
    data = check_history(bad.events).to_dict()
    assert data["valid"] is False and data["anomaly_counts"] == {"value-never-written": 1}
    (anomaly,) = data["anomalies"]
    assert anomaly["operations"][0] == {
        "process": 1,
        "f": "read",
        "key": 1,
        "outcome": "ok",
        "value": "zzz",
        "version": 1,
        "invoke_line": 3,
        "complete_line": 4,
    }
    assert "process 1: read -> 'zzz' v1 [line 3-4]" in str(report.anomalies or bad.check().anomalies[0].operations[0])


def test_a_search_that_runs_out_of_steps_is_undecided_not_valid() -> None:
    events, _ = simulate(random.Random(5), processes=4, operations=60, p_info=0.2)
    assert check_history(events).valid is True
    report = check_history(events, max_steps=3)
    assert report.valid is None and report.undecided == (0,)


@pytest.mark.parametrize(
    ("events", "line", "message"),
    [
        ([{"process": 0, "type": "ok", "f": "read", "key": 1}], 1, "no operation in progress"),
        ([{"type": "invoke"}], 1, "'process'"),
        ([{"process": 0, "type": "start", "f": "read", "key": 1}], 1, "type must be"),
        ([{"process": 0, "type": "invoke", "f": "increment", "key": 1}], 1, "f must be"),
        ([{"process": 0, "type": "invoke", "f": "read", "key": [1]}], 1, "key must be"),
        ([{"process": 0, "type": "invoke", "f": "write", "key": 1}], 1, "needs the value"),
        ([{"process": 0, "type": "invoke", "f": "cas", "key": 1, "value": "a"}], 1, "'expected'"),
        (
            [{"process": 0, "type": "invoke", "f": "read", "key": 1}, {"process": 0, "type": "invoke", "f": "read"}],
            2,
            "has not completed",
        ),
        (
            [{"process": 0, "type": "invoke", "f": "write", "key": 1, "value": "a"}, {"process": 0, "type": "ok"}],
            2,
            "'version'",
        ),
        (
            [{"process": 0, "type": "invoke", "f": "read", "key": 1}, {"process": 0, "type": "ok", "version": 0}],
            2,
            "needs the value",
        ),
        (
            [{"process": 0, "type": "invoke", "f": "read", "key": 1}, {"process": 0, "type": "ok", "key": 2}],
            2,
            "key=2",
        ),
        ([7], 1, "JSON object"),
    ],
)
def test_malformed_histories_name_the_line(events: list[Any], line: int, message: str) -> None:
    with pytest.raises(MalformedHistory, match=message) as exc:
        check_history(events)
    assert exc.value.line == line and isinstance(exc.value, ValueError)


def test_history_files_cut_lines_and_merging(tmp_path: Path) -> None:
    h = H()
    h.write(0, "a", 1)
    h.read(1, "a", 1)
    path = tmp_path / "h.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in h.events) + '{"process": 1, "ty')  # cut by a kill
    assert list(read_history(path)) == h.events
    assert check_file(path).valid is True
    path.write_text(json.dumps(h.events[0]) + "\nnot json\n")
    with pytest.raises(MalformedHistory, match="line 2: not JSON"):
        check_file(path)
    with pytest.raises(OSError):
        check_file(tmp_path / "missing.jsonl")
    with pytest.raises(MalformedHistory, match="int 'time'"):
        list(merge_histories([[{"process": 0, "type": "invoke"}]]))
    # each stream keeps its own order even when its times tie
    a = [{"process": 0, "type": "ok", "time": 3}, {"process": 0, "type": "invoke", "time": 3}]
    b = [{"process": 1, "type": "invoke", "time": 3}]
    assert [(e["process"], e["type"]) for e in merge_histories([a, b])] == [(1, "invoke"), (0, "ok"), (0, "invoke")]


# -- random histories ----------------------------------------------------------------------


def _small(events: list[Event]) -> bool:
    """Small enough for the brute-force oracle."""
    return len(events) <= 26


@settings(max_examples=300)
@given(
    st.randoms(use_true_random=False),
    st.integers(1, 5),
    st.integers(1, 3),
    st.integers(1, 40),
    st.sampled_from([0.0, 0.1, 0.3]),
    st.sampled_from([0.0, 0.3]),
)
def test_simulated_histories_are_linearizable(
    rng: random.Random, processes: int, keys: int, operations: int, p_info: float, p_reuse: float
) -> None:
    """Linearizable by construction; some write values written before (a cart emptied twice is one value)."""
    events, _ = simulate(
        rng, processes=processes, keys=keys, operations=operations, p_info=p_info, p_open=0.2, p_reuse=p_reuse
    )
    report = check_history(events)
    assert report.valid is True, [(a.kind, a.explanation) for a in report.anomalies]
    if _small(events):
        assert reference_linearizable(events)


def _ret(op: SimOp) -> float:
    return op.ret


def _may_delete(op: SimOp) -> bool:
    """Whether ``op`` is a delete that may have removed something."""
    return (
        op.f == "delete"
        and op.outcome != "fail"
        and op.expected != 0
        and not (op.outcome == "ok" and op.result.get("existed") is False)
    )


def _delete_between(ops: list[SimOp], key: int, lo: float, hi: float) -> bool:
    return any(_may_delete(d) and d.key == key and d.invoke_line < hi and _ret(d) > lo for d in ops)


def _ok(ops: list[SimOp], *fs: str) -> list[SimOp]:
    return [op for op in ops if op.outcome == "ok" and op.f in fs]


def _state_after(op: SimOp) -> tuple[int, Any]:
    if op.f in ("write", "cas"):
        return (op.result["version"], op.value)
    if op.f == "read":
        return (op.result["version"], op.result["value"])
    return (0, None)


def mutate_never_written(rng: random.Random, events: list[Event], ops: list[SimOp]) -> str | None:
    """An ok read returns a value that no operation wrote."""
    reads = _ok(ops, "read")
    if not reads:
        return None
    r = rng.choice(reads)
    ev = events[r.complete_line - 1]  # type: ignore[operator]
    ev["value"], ev["version"] = "never-written", max(1, ev["version"])
    return "value-never-written"


def mutate_cas_version(rng: random.Random, events: list[Event], ops: list[SimOp]) -> str | None:
    """An ok compare-and-set expecting version e reports making version e + 2 (it must make e + 1)."""
    cases = _ok(ops, "cas")
    if not cases:
        return None
    c = rng.choice(cases)
    events[c.complete_line - 1]["version"] = c.expected + 2  # type: ignore[operator]
    return "cas-wrong-version"


def mutate_read_version(rng: random.Random, events: list[Event], ops: list[SimOp]) -> str | None:
    """An ok read of a value written by an acknowledged write reports another version (values are unique)."""
    writers = {op.value: op for op in _ok(ops, "write", "cas")}
    reads = [r for r in _ok(ops, "read") if r.result["value"] in writers]
    if not reads:
        return None
    r = rng.choice(reads)
    events[r.complete_line - 1]["version"] = writers[r.result["value"]].result["version"] + rng.choice([1, 2])  # type: ignore[operator]
    return "read-wrong-version"


def mutate_info_to_fail(rng: random.Random, events: list[Event], ops: list[SimOp]) -> str | None:
    """An unknown-outcome write whose value someone read becomes a failure: then nobody wrote that value."""
    read_values = {r.result["value"] for r in _ok(ops, "read")}
    cands = [
        op
        for op in ops
        if op.f in ("write", "cas") and op.outcome == "info" and op.complete_line and op.value in read_values
    ]
    if not cands:
        return None
    op = rng.choice(cands)
    ev = events[op.complete_line - 1]  # type: ignore[operator]
    ev["type"] = "fail"
    return "value-never-written"


def mutate_stale(rng: random.Random, events: list[Event], ops: list[SimOp]) -> str | None:
    """An ok read returns the state of an acknowledged write W that an ok operation M had replaced.

    W completed before M began and M completed before the read began, so in
    every order W < M < read; M made or saw another state, and W's value has
    no other writer, so the read cannot see it.
    """
    triples = []
    for r in _ok(ops, "read"):
        for w in _ok(ops, "write", "cas"):
            if w.key != r.key or (r.result["value"], r.result["version"]) == (w.value, w.result["version"]):
                continue
            for m in ops:
                if (
                    m.key == r.key
                    and m.outcome == "ok"
                    and m is not w
                    and w.ret < m.invoke_line
                    and m.ret < r.invoke_line
                ) and _state_after(m) != (w.result["version"], w.value):
                    triples.append((r, w))
                    break
    if not triples:
        return None
    r, w = rng.choice(triples)
    ev = events[r.complete_line - 1]  # type: ignore[operator]
    ev["value"], ev["version"] = w.value, w.result["version"]
    return "stale-read"


def mutate_absent(rng: random.Random, events: list[Event], ops: list[SimOp]) -> str | None:
    """An ok read returns *absent* after an acknowledged write, with no delete that could fall between."""
    cands = [
        r
        for r in _ok(ops, "read")
        if r.result["value"] is not None
        and any(
            w.key == r.key and w.ret < r.invoke_line and not _delete_between(ops, r.key, w.invoke_line, r.ret)
            for w in _ok(ops, "write", "cas")
        )
    ]
    if not cands:
        return None
    r = rng.choice(cands)
    ev = events[r.complete_line - 1]  # type: ignore[operator]
    ev["value"], ev["version"] = None, 0
    return "stale-read"


def mutate_duplicate(rng: random.Random, events: list[Event], ops: list[SimOp]) -> str | None:
    """An acknowledged write B reports the version of another acknowledged write A of its key.

    Two writes with one version need a delete between them, and none could fall between.
    """
    pairs = []
    writes = _ok(ops, "write", "cas")
    for a in writes:
        for b in writes:
            if a is b or a.key != b.key or a.result["version"] == b.result["version"]:
                continue
            ab = a.invoke_line < b.ret and _delete_between(ops, a.key, a.invoke_line, b.ret)
            ba = b.invoke_line < a.ret and _delete_between(ops, a.key, b.invoke_line, a.ret)
            if not ab and not ba:
                pairs.append((a, b))
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    events[b.complete_line - 1]["version"] = a.result["version"]  # type: ignore[operator]
    return "duplicate-version"


def mutate_failed_cas_on_current_version(rng: random.Random, events: list[Event], ops: list[SimOp]) -> str | None:
    """A failed compare-and-set is made to expect the version the key provably held throughout.

    P (an acknowledged write) completed before F began, and every other
    operation that might change the key either completed before P began or
    began after F completed: P's version is current for all of F.
    """
    cands = []
    for f in ops:
        if f.outcome != "fail":
            continue
        for p in _ok(ops, "write", "cas"):
            if p.key != f.key or not p.ret < f.invoke_line:
                continue
            others = [
                m
                for m in ops
                if m is not p and m.key == f.key and m.f in ("write", "cas", "delete") and m.outcome != "fail"
            ]
            if all(m.ret < p.invoke_line or m.invoke_line > f.ret for m in others):
                cands.append((f, p))
    if not cands:
        return None
    f, p = rng.choice(cands)
    events[f.invoke_line - 1]["expected"] = p.result["version"]
    events[f.complete_line - 1].pop("version", None)  # type: ignore[operator]
    return "no-linearization"


MUTATIONS = [
    mutate_never_written,
    mutate_cas_version,
    mutate_read_version,
    mutate_info_to_fail,
    mutate_stale,
    mutate_absent,
    mutate_duplicate,
    mutate_failed_cas_on_current_version,
]


#: histories shaped so that a rare mutation finds something to change
SETUPS: dict[Any, dict[str, Any]] = {
    mutate_info_to_fail: {"p_info": 0.5, "p_open": 0.0, "mix": {"read": 50, "write": 30, "cas": 20}},
    mutate_failed_cas_on_current_version: {"processes": 1, "p_info": 0.0},
}


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.__name__[len("mutate_") :])
@settings(max_examples=60, suppress_health_check=[HealthCheck.filter_too_much])  # see the next test
@given(
    rng=st.randoms(use_true_random=False),
    processes=st.integers(1, 4),
    keys=st.integers(1, 2),
    operations=st.integers(2, 30),
    p_info=st.sampled_from([0.0, 0.1, 0.3]),
)
def test_one_mutation_makes_a_history_non_linearizable(
    mutation: Any, rng: random.Random, processes: int, keys: int, operations: int, p_info: float
) -> None:
    setup = {"processes": processes, "keys": keys, "operations": operations, "p_info": p_info, "p_open": 0.1}
    setup.update(SETUPS.get(mutation, {}))
    events, ops = simulate(rng, **setup)  # type: ignore[arg-type]
    mutated = copy.deepcopy(events)
    expected = mutation(rng, mutated, ops)
    assume(expected is not None)  # else this history has nothing this mutation applies to
    event("small enough for the oracle" if _small(events) else "checked by the checker only")
    if _small(events):  # the mutation's argument, checked by brute force
        assert reference_linearizable(events)
        assert not reference_linearizable(mutated), mutation.__name__
    report = check_history(mutated)
    assert report.valid is False, (mutation.__name__, json.dumps(mutated))
    assert report.anomalies


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.__name__[len("mutate_") :])
def test_every_mutation_finds_work_and_breaks_the_history(mutation: Any) -> None:
    """The property above filters; here, on 200 seeded histories, each mutation applies often."""
    applied = 0
    for seed in range(200):
        rng = random.Random(seed)
        setup = {"processes": rng.randint(1, 4), "operations": rng.randint(2, 30), "p_info": 0.1}
        setup.update(SETUPS.get(mutation, {}))
        events, ops = simulate(rng, **setup)  # type: ignore[arg-type]
        mutated = copy.deepcopy(events)
        if mutation(rng, mutated, ops) is not None:
            applied += 1
            assert check_history(mutated).valid is False, seed
    assert applied >= 40, f"{mutation.__name__} applied to only {applied} of 200 histories"


def _perturb(rng: random.Random, events: list[Event]) -> list[Event]:
    """One random change to one completion or the order of two events: linearizable or not."""
    out = copy.deepcopy(events)
    completions = [e for e in out if e["type"] != "invoke"]
    if not completions:
        return out
    e = rng.choice(completions)
    r = rng.random()
    if e["type"] == "ok" and "version" in e and r < 0.4:
        e["version"] = max(0, e["version"] + rng.choice([-2, -1, 1, 2]))
    elif e["type"] == "ok" and e["f"] == "read" and r < 0.7:
        values = [x.get("value") for x in out if x.get("value") is not None] + [None]
        e["value"] = rng.choice(values)
        e["version"] = 0 if e["value"] is None else max(1, e["version"])
    elif r < 0.85:
        e["type"] = rng.choice(["ok", "fail", "info"])
        if e["type"] == "ok" and e["f"] == "read":
            e.setdefault("value", None)
            e.setdefault("version", 0)
        elif e["type"] == "ok" and e["f"] in ("write", "cas"):
            e.setdefault("version", rng.randrange(1, 4))
    else:
        j = rng.randrange(len(out) - 1)
        if out[j]["process"] != out[j + 1]["process"]:
            out[j], out[j + 1] = out[j + 1], out[j]
    return out


@settings(max_examples=500)
@given(
    st.randoms(use_true_random=False),
    st.integers(1, 4),
    st.integers(1, 2),
    st.integers(1, 11),
    st.sampled_from([0.0, 0.4]),
)
def test_checker_agrees_with_brute_force(
    rng: random.Random, processes: int, keys: int, operations: int, p_reuse: float
) -> None:
    events, _ = simulate(
        rng, processes=processes, keys=keys, operations=operations, p_info=0.25, p_open=0.2, p_reuse=p_reuse
    )
    changed = _perturb(rng, events)
    try:
        report = check_history(changed)
    except MalformedHistory:
        return  # e.g. an ok write without its version: not a history
    assert report.valid is reference_linearizable(changed), json.dumps(changed)
