"""``dhtcart verify`` end to end: real client processes on LMDB and Redis stores, a planted bug, ``--check``.

Every run here is the real command in a subprocess, whose client processes
open the store themselves. It must exit 0 on the real backends, and exit 1
naming the anomaly on a backend with a planted bug (``tests/buggy_backend.py``,
registered through the ``dhtcart.backends`` entry points). The ``--rebalance``
runs are in ``tests/test_verify_rebalance.py``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dhtcart import DHTServerStore, StoreBusy
from tests.verify_support import (
    buggy_store,
    linearizable,
    lmdb_store,
    redis_store,
    redis_trio,  # noqa: F401 - a fixture
    report_of,
    user_data,
    verify,
)

RUN = ["--clients", "3", "--keys", "5", "--seconds", "2"]


def _kinds(data: dict[str, Any]) -> set[str]:
    return set(data["check"]["anomaly_counts"])


def _all_clients_worked_and_raced(data: dict[str, Any]) -> None:
    """The history holds exactly what the clients did, every client did some, and they overlapped.

    Counted against the run itself, not against the clock: how many
    operations fit in the run's seconds is the machine's business.
    """
    check, stats = data["check"], data["client_stats"]
    assert len(stats) == data["clients"] and all(s["operations"] > 0 for s in stats), stats
    # modify runs made again: after a conflict one more cas, failed (a redirect: the same cas again)
    retried = sum(s["retried"] for s in stats)
    assert check["operations"] == sum(s["operations"] for s in stats) + retried
    assert check["ok"] == sum(s["ok"] for s in stats)
    assert check["fail"] + check["info"] == sum(s["fail"] + s["info"] for s in stats) + retried
    assert check["fail"] > 0, "no compare-and-set lost a race: the clients did not overlap"


def test_lmdb_store_is_linearizable_and_keeps_the_users_data(tmp_path: Path) -> None:
    before = lmdb_store(tmp_path / "store")
    proc = verify("--data", str(tmp_path / "store"), *RUN, "--json", tmp=tmp_path)
    data = linearizable(proc, tmp_path / "history.jsonl")
    check = data["check"]
    assert check["valid"] is True and check["keys"] == 5
    assert check["ok"] + check["fail"] + check["info"] == check["operations"]
    _all_clients_worked_and_raced(data)
    assert data["keys_removed"] == 5 and data["client_failures"] == []
    assert user_data(tmp_path / "store") == before


def test_a_planted_stale_read_is_caught_and_named(tmp_path: Path) -> None:
    env = buggy_store(tmp_path / "store", tmp_path / "plugins", "stale-read", 0.05)
    history = tmp_path / "history.jsonl"
    proc = verify("--data", str(tmp_path / "store"), *RUN, "--history", str(history), env=env, tmp=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "NOT LINEARIZABLE" in proc.stdout and "stale-read on key" in proc.stdout
    # the history it wrote shows the same when checked on its own (no plugin needed for that)
    again = verify("--check", str(history), "--json")
    assert again.returncode == 1
    assert "stale-read" in _kinds(report_of(again))


def test_a_compare_and_set_let_through_on_an_old_version_is_caught(tmp_path: Path) -> None:
    env = buggy_store(tmp_path / "store", tmp_path / "plugins", "stale-cas", 0.2)
    proc = verify("--data", str(tmp_path / "store"), *RUN, "--json", env=env, tmp=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "cas-wrong-version" in _kinds(report_of(proc))
    # a test that meets a failed run shows the history of the anomaly's key (a CI run loses the file)
    key = report_of(proc)["check"]["anomalies"][0]["key"]
    with pytest.raises(AssertionError, match=f"history of key {key} ") as failed:
        linearizable(proc, tmp_path / "history.jsonl")
    assert f'"key":{key},' in str(failed.value)


def test_redis_store_is_linearizable_while_shards_are_paused(tmp_path: Path, redis_trio: list[Any]) -> None:  # noqa: F811
    """Three real servers, each paused in turn for longer than the clients' timeout (0.3 s)."""
    before = redis_store(tmp_path / "store", redis_trio)
    proc = verify("--data", str(tmp_path / "store"), "--kill-shard", *RUN[:-1], "3", "--json", tmp=tmp_path)
    data = linearizable(proc, tmp_path / "history.jsonl")
    assert data["pauses"] == 3 and not data["pause_errors"]
    assert data["check"]["valid"] is True
    assert data["check"]["info"] > 0, "some operations timed out during the pauses"
    assert data["keys_removed"] == 5
    assert user_data(tmp_path / "store") == before


def test_a_replicated_redis_store_is_linearizable_while_a_shard_is_killed(
    tmp_path: Path,
    redis_trio: list[Any],  # noqa: F811
) -> None:
    """Two copies of each key; the middle pause outlasts the clients' timeout and a probe, so they
    fail the shard over and its keys are served by the other copies; the repair takes it out, and
    verify adds it back, empty, after the run. The user's data survives the lost shard.

    Deletes among the operations found the late apply after a delete (docs/replication.md,
    "Lives and graves"): about one run in 25 failed with both cores busy before graves.
    """
    before = redis_store(tmp_path / "store", redis_trio, replicas=2)
    args = ["--kill-shard", "--replicas", "2", "--clients", "3", "--keys", "5", "--seconds", "5", "--json"]
    proc = verify("--data", str(tmp_path / "store"), *args, tmp=tmp_path)
    data = linearizable(proc, tmp_path / "history.jsonl")
    assert data["check"]["valid"] is True
    done = {json.loads(line)["f"] for line in (tmp_path / "history.jsonl").read_text().splitlines()}
    assert done == {"read", "cas", "write", "delete"}, done  # modify is recorded as the compare-and-set it is
    assert data["pauses"] == 3 and data["kills"] == 1 and not data["pause_errors"]
    assert len(data["restored"]) == 1, data  # the killed shard was failed over, taken out and added back
    assert data["keys_removed"] == 5
    assert user_data(tmp_path / "store") == before
    with DHTServerStore.open(tmp_path / "store") as store:
        assert sorted(store.servers) == ["r0", "r1", "r2"] and store.replicas == 2
        assert store.rebalance_status().down == [] and store.health() == dict.fromkeys(store.servers)


def test_a_redis_store_is_linearizable_while_it_switches_between_one_copy_and_two(
    tmp_path: Path,
    redis_trio: list[Any],  # noqa: F811
) -> None:
    """A handle of this process switches the store between one copy and two while the clients
    run: clients on the old view write by the plain path while others decide replicated writes
    of the same keys, and a client's plain write is refused by a new primary. Every such run was
    not linearizable before plain writes looked for pending ones (duplicate versions, lost
    writes: docs/replication.md, "Plain writes meet pending ones too")."""
    before = redis_store(tmp_path / "store", redis_trio, replicas=1)
    switched: list[int] = []  # when each switch ended (time.monotonic_ns, the clients' clock)
    stop = threading.Event()

    def switch() -> None:
        with DHTServerStore.open(tmp_path / "store") as store:
            while not stop.is_set() and len(switched) < 40:
                try:
                    store.set_replicas(2 if store.replicas == 1 else 1, batch_size=4)
                except StoreBusy:
                    time.sleep(0.05)
                    continue
                switched.append(time.monotonic_ns())

    switcher = threading.Thread(target=switch)
    switcher.start()
    try:
        proc = verify("--data", str(tmp_path / "store"), *RUN[:4], "--seconds", "8", "--json", tmp=tmp_path)
    finally:
        stop.set()
        switcher.join(120)
    assert linearizable(proc, tmp_path / "history.jsonl")["check"]["valid"] is True
    times = [json.loads(line)["time"] for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    during = [t for t in switched if min(times) < t < max(times)]
    print(f"{len(switched)} switches, {len(during)} while the clients ran")
    assert len(during) >= 2, f"{len(switched)} switches, {len(during)} while the clients ran"
    assert user_data(tmp_path / "store") == before


def test_a_mix_weighs_what_the_clients_do(tmp_path: Path) -> None:
    lmdb_store(tmp_path / "store")
    proc = verify("--data", str(tmp_path / "store"), *RUN, "--mix", "read=3,write=1", "--json", tmp=tmp_path)
    data = linearizable(proc, tmp_path / "history.jsonl")
    assert data["mix"] == {"read": 3, "write": 1} and data["check"]["valid"] is True
    done = {json.loads(line)["f"] for line in (tmp_path / "history.jsonl").read_text().splitlines()}
    assert done == {"read", "write"}, done


def test_replicas_creates_a_directory_store_or_must_match_an_existing_one(tmp_path: Path) -> None:
    proc = verify("--data", str(tmp_path / "new"), "--replicas", "2", *RUN, "--json", tmp=tmp_path)
    assert linearizable(proc, tmp_path / "history.jsonl")["check"]["valid"] is True
    with DHTServerStore.open(tmp_path / "new", create=False) as store:
        assert store.replicas == 2 and len(store) == 0
    other = verify("--data", str(tmp_path / "new"), "--replicas", "3", "--seconds", "1", tmp=tmp_path)
    assert other.returncode == 2 and "set-replicas" in other.stderr and "keeps 2 copies" in other.stderr


def test_redis_store_is_linearizable_flat_out(tmp_path: Path, redis_trio: list[Any]) -> None:  # noqa: F811
    redis_store(tmp_path / "store", redis_trio)
    proc = verify("--data", str(tmp_path / "store"), *RUN, "--rate", "0", "--json", tmp=tmp_path)
    data = linearizable(proc, tmp_path / "history.jsonl")
    assert data["check"]["valid"] is True
    _all_clients_worked_and_raced(data)


def test_kill_shard_needs_a_shard_that_can_pause(tmp_path: Path) -> None:
    before = lmdb_store(tmp_path / "store")
    proc = verify("--data", str(tmp_path / "store"), "--kill-shard", "--seconds", "1", tmp=tmp_path)
    assert proc.returncode == 2
    assert "can be paused" in proc.stderr
    assert user_data(tmp_path / "store") == before


def _history(tmp_path: Path, read_value: str | None) -> Path:
    events = [
        {"process": 0, "type": "invoke", "f": "write", "key": 1, "value": "a"},
        {"process": 0, "type": "ok", "f": "write", "key": 1, "value": "a", "version": 1},
        {"process": 1, "type": "invoke", "f": "read", "key": 1},
        {"process": 1, "type": "ok", "f": "read", "key": 1, "value": read_value, "version": 1 if read_value else 0},
    ]
    path = tmp_path / f"h-{read_value}.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def test_check_a_history_file(tmp_path: Path) -> None:
    good = verify("--check", str(_history(tmp_path, "a")))
    assert good.returncode == 0 and "LINEARIZABLE" in good.stdout
    bad = verify("--check", str(_history(tmp_path, None)))
    assert bad.returncode == 1
    assert "stale-read on key 1" in bad.stdout and "process 1: read -> absent [line 3-4]" in bad.stdout
    data = report_of(verify("--check", str(_history(tmp_path, None)), "--json"))
    assert data["check"]["valid"] is False and data["check"]["anomalies"][0]["kind"] == "stale-read"
    undecided = verify("--check", str(_history(tmp_path, "a")), "--max-steps", "1", "--json")
    assert undecided.returncode == 1 and report_of(undecided)["check"]["valid"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--clients", "0", "--data", "x"], "--clients"),
        (["--seconds", "0", "--data", "x"], "--seconds"),
        ([], "one of the arguments"),
        (["--data", "a", "--check", "b"], "not allowed with"),
        (["--check", "h.jsonl", "--rebalance"], "only apply to a run"),
        (["--check", "h.jsonl", "--replicas", "2"], "only apply to a run"),
        (["--data", "x", "--replicas", "0"], "--replicas"),
        (["--data", "x", "--mix", "read=0"], "not all 0"),
        (["--data", "x", "--mix", "read=5,fly=3"], "operations among"),
        (["--data", "x", "--mix", "read"], "NAME=WEIGHT"),
        (["--data", "x", "--mix", "read=1,read=2"], "each operation once"),
        (["--check", "h.jsonl", "--mix", "read=1"], "only apply to a run"),
        (["--store", "redis://127.0.0.1:1/0", "--replicas", "2"], "cannot open"),
        (["--data", "x", "--rebalance-backend", "memory://"], "needs --rebalance"),
        (["--data", "no-store-here"], "no dhtcart store"),
        (["--check", "no-such-file.jsonl"], "cannot read"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    proc = verify(*[a if a not in ("x", "no-store-here") else str(tmp_path / a) for a in args])
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_an_unreachable_store_is_a_failed_run_not_a_verdict(tmp_path: Path) -> None:
    """The shard's server is gone: exit 3, never 1 (which says "not linearizable")."""
    from tests.redis_server import RedisServer, find_server_binary

    server = RedisServer(tmp_path / "redis", binary=find_server_binary())
    server.start()  # a store is created on shards it can reach (it writes their ownership records)
    try:
        DHTServerStore.open(tmp_path / "store", shards={"r0": f"{server.url}?timeout=0.2"}).close()
    finally:
        server.stop()
    proc = verify("--data", str(tmp_path / "store"), "--seconds", "1", tmp=tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "could not be carried out: ShardUnavailable" in proc.stderr


def test_a_malformed_history_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"process": 0, "type": "ok", "f": "read", "key": 1}\n')
    proc = verify("--check", str(path))
    assert proc.returncode == 2 and "line 1: ok from process 0" in proc.stderr
