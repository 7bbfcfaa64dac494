"""Replication across processes on LMDB: writers, a rebalancer, a lost shard directory.

Real processes on one store directory (``tests/proc_worker.py``,
``tests/rebalance_child.py``), every operation recorded and checked for
linearizability. The random SIGKILLs of rebalancers and repairers of a
replicated store are in ``test_rebalance_crash.py`` (``two-copies``); the
Redis tests (servers killed and paused) in ``test_replication_redis.py``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dhtcart import DHTServerStore, Record, hash_key
from tests.helpers import Histories, assert_repaired, child_env, worker

CHILD = Path(__file__).resolve().parent / "rebalance_child.py"
ROOT = CHILD.parent.parent

pytestmark = pytest.mark.slow


def _wait_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 120) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"no {prefix!r} from {proc.args}: {proc.stderr.read() if proc.stderr else ''}")


@pytest.mark.parametrize(
    ("how", "copies"),
    [("cas", ""), ("modify", ""), ("cas", "1,2"), ("modify", "1,2")],
    ids=["cas", "modify", "cas-one-and-two-copies", "modify-one-and-two-copies"],
)
def test_counters_stay_exact_while_another_process_rebalances_a_replicated_store(
    tmp_path: Path, how: str, copies: str
) -> None:
    """Three writer processes add to shared counters with compare-and-set (or the store's modify)
    while a fourth adds, removes and reweights shards and changes the number of copies (or, with
    ``copies``, only switches between one copy and two: writers on the old view write by the plain
    path while others decide replicated writes of the same keys); every acknowledged increment is
    there, the histories are linearizable, every key is on exactly its replicas."""
    directory = tmp_path / "store"
    counters = 8
    first = int(copies.split(",")[0]) if copies else 2
    with DHTServerStore.open(directory, shards=3, replicas=first, partitions=256):
        pass
    histories = Histories(tmp_path / "histories")
    mode = ["modify"] if how == "modify" else []
    writers = [
        worker("cas-until", str(directory), str(counters), str(i), *mode, *histories.worker_args(i)) for i in range(3)
    ]
    rebalancer: subprocess.Popen[str] | None = None
    try:
        for w in writers:
            _wait_line(w, "ready")
        for w in writers:
            assert w.stdin is not None
            w.stdin.write("go\n")
            w.stdin.flush()
        for w in writers:  # every writer under way before the rebalancer starts: they race all of it
            _wait_line(w, "acked")
        rebalancer = subprocess.Popen(
            [sys.executable, "-u", str(CHILD), "rebalancer", str(directory), "--seed", "7", "--max-seconds", "600"]
            + (["--copies", copies] if copies else []),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
            cwd=ROOT,
        )
        _wait_line(rebalancer, "ready")
        rounds = 12 if copies else 4  # whole rebalances (switching copies is quick: more of them)
        done = [_wait_line(rebalancer, "done", timeout=300) for _ in range(rounds)]
        for w in writers:
            assert w.stdin is not None
            w.stdin.write("stop\n")
            w.stdin.flush()
        acks = 0
        for w in writers:
            line = _wait_line(w, "done", timeout=120)
            acks += int(line.split()[1])
            assert w.wait(60) == 0
    finally:
        if rebalancer is not None:
            rebalancer.kill()
            rebalancer.wait(30)
        for w in writers:
            if w.poll() is None:
                w.kill()
                w.wait(30)
    assert acks > 0 and len(done) == rounds
    with DHTServerStore.open(directory) as store:  # finishes the migration the killed rebalancer left
        total = 0
        for i in range(counters):
            rec = store.get(hash_key(f"counter-{i}"))
            total += int(rec.value) if rec is not None else 0
        assert total == acks, f"{acks} increments acknowledged, {total} found"
        store._check()
    histories.check()


def test_a_shard_directory_deleted_while_closed_is_served_and_repaired(tmp_path: Path) -> None:
    """LMDB, two copies: a shard's directory is deleted while the store is closed. The store opens,
    serves every key with its last value (a failover takes the lost shard out), and the repair
    restores two copies of every key."""
    directory = tmp_path / "store"
    keys = [hash_key(f"k-{i}") for i in range(600)]
    with DHTServerStore.open(directory, shards=4, replicas=2, partitions=256, read_lease=0.3) as store:
        for i, k in enumerate(keys):
            store.put(k, b"one %d" % i)
        for i, k in enumerate(keys[::3]):
            store.put(k, b"two %d" % i, expected_version=1)
        last = {k: store.get(k) for k in keys}
        lost = store.replicas_for(keys[0])[0]
        lost_dir = Path(store.shards[lost].url.removeprefix("lmdb://"))
    shutil.rmtree(lost_dir)
    with DHTServerStore.open(directory) as store:
        assert {k: store.get(k) for k in keys} == last, "every key with its last value"
        status = store.rebalance_status()
        assert lost in status.down or lost not in store.ring.nodes
        # the failover's own repair may have finished it already
        assert assert_repaired(store, lost, keys) in ([lost], [])
        assert not lost_dir.exists()
        assert {k: store.get(k) for k in keys} == last
    with DHTServerStore.open(directory) as again:  # and a fresh handle sees the same
        assert all(again.get(k) == rec for k, rec in last.items())
        assert all(isinstance(rec, Record) for rec in last.values())
