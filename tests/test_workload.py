"""One client's workload, the run's keys, and a whole run through the library API."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dhtcart import Conflict, DHTServerStore, InvalidInput, hash_key
from dhtcart.verify import (
    MIX,
    HistoryRecorder,
    WorkloadStats,
    check_history,
    draw_keys,
    merge_histories,
    open_store,
    run_workload,
    verify_store,
)


def test_threads_running_the_workload_make_a_linearizable_history() -> None:
    """Four threads, one recorder each (one process each), on one in-memory store, the store's
    modify among the operations (dhtcart verify's mix)."""
    assert MIX["modify"] > 0
    streams: list[list[dict[str, Any]]] = [[] for _ in range(4)]
    stats: list[WorkloadStats] = []
    keys = [hash_key(f"k{i}") for i in range(3)]
    with DHTServerStore(shards=2) as store:

        def client(i: int) -> None:
            rec = HistoryRecorder(store, streams[i].append, process=i)
            # the work is the 1,500 operations; the seconds only bound a hang
            stats.append(run_workload(rec, keys, seconds=120, seed=i, max_operations=1500, value_prefix=f"{i}:"))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    report = check_history(merge_histories(streams))
    assert report.valid is True
    assert sum(s.operations for s in stats) == 6000
    assert report.operations == 6000 + sum(s.retried for s in stats), "a modify run again is one more cas"
    assert (report.ok, report.fail, report.info) == (
        sum(s.ok for s in stats),
        sum(s.fail + s.retried for s in stats),
        0,
    )
    assert report.fail > 0, "compare-and-sets raced"


def test_rate_paces_a_client() -> None:
    """50 operations at 200 per second: exponential gaps of 5 ms on average, about 0.25 s in all.

    The gaps come from the seeded generator, so their sum is fixed: the run
    cannot end before it, however fast the machine (flat out, 50 operations on
    memory take a few milliseconds). A busy machine only delays the end: the
    upper bound is a generous one, for a pacing that overshoots badly.
    """
    with DHTServerStore(shards=1) as store:
        rec = HistoryRecorder(store, lambda e: None, process=0)
        start = time.monotonic()
        stats = run_workload(rec, [1, 2], seconds=120, seed=1, rate=200, max_operations=50)
        took = time.monotonic() - start
    assert stats.operations == 50
    assert 0.1 < took < 10, took


def test_workload_needs_keys() -> None:
    with DHTServerStore(shards=1) as store, pytest.raises(InvalidInput):
        run_workload(HistoryRecorder(store, lambda e: None, process=0), [], seconds=1)


def test_drawn_keys_are_absent_and_a_present_one_makes_a_new_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    with DHTServerStore(shards=2) as store:
        run, keys = draw_keys(store, 5)
        assert len(set(keys)) == 5 and all(store.get(k) is None for k in keys)
        assert keys == [hash_key(f"dhtcart-verify/{run}/{i}") for i in range(5)]
        store.put(hash_key("dhtcart-verify/taken/3"), b"a user's data")
        ids = iter(["taken", "fresh"])
        monkeypatch.setattr("dhtcart.verify.run.secrets.token_hex", lambda n: next(ids))
        assert draw_keys(store, 5)[0] == "fresh"
        ids = iter(["taken"] * 5)
        with pytest.raises(Conflict, match="could not draw"):
            draw_keys(store, 5)


def test_open_store_never_creates_one(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no dhtcart store"):
        open_store(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


def test_a_whole_run_through_the_api(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with DHTServerStore.open(root, shards=3) as store:
        for i in range(20):
            store.put(hash_key(f"user-{i}"), b"keep me")
        before = dict(store.items())
    history = tmp_path / "history.jsonl"
    run = verify_store(root, clients=2, keys=4, seconds=1.0, history=history, seed=7)
    assert run.report.valid is True
    assert run.report.operations == sum(s.operations for s in run.client_stats) > 0
    assert run.report.keys == 4 and run.keys_removed == 4
    assert run.history == history and history.stat().st_size > 0
    assert not run.client_failures and len(run.client_stats) == 2
    json.dumps(run.to_dict())
    with DHTServerStore.open(root) as store:
        assert dict(store.items()) == before, "the run touched nothing but its own keys"
    with pytest.raises(InvalidInput, match="clients"):
        verify_store(root, clients=0)
    with pytest.raises(InvalidInput, match="paused"):
        verify_store(root, kill_shard=True, seconds=1)
    with pytest.raises(InvalidInput, match="mix"):
        verify_store(root, seconds=1, mix={"read": 0})


@pytest.mark.parametrize("mix", [{}, {"read": 0, "cas": 0}, {"read": 1, "scan": 1}, {"read": -1}, {"read": 1.5}])
def test_a_mix_of_unknown_operations_or_bad_weights_is_refused(mix: dict[str, Any]) -> None:
    with DHTServerStore(shards=1) as store, pytest.raises(InvalidInput, match="mix"):
        run_workload(HistoryRecorder(store, lambda e: None, process=0), [1], seconds=1, mix=mix)


@pytest.mark.parametrize(
    "text", ["", "read", "read=", "read=x", "read=-1", "read=\u00b2", "=3", "read=1,read=1", "read=0", "fly=1"]
)
def test_a_mix_written_wrong_is_refused(text: str) -> None:
    from dhtcart.verify.workload import parse_mix

    with pytest.raises(InvalidInput, match="mix"):
        parse_mix(text)


def test_a_written_mix_weighs_only_what_it_names() -> None:
    from dhtcart.verify.workload import parse_mix

    assert parse_mix(" read = 3 ,cdelete=0,modify=2") == {"read": 3, "cdelete": 0, "modify": 2}
