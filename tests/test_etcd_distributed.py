"""A store whose membership lives in a three-member etcd cluster, its shards on real Redis servers, every
client a process started from the ``etcd://`` URL alone (``tests/etcd_child.py``), under failures.

* writer processes increment shared counters by compare-and-set while another process adds, reweights
  and removes shards: every counter equals the increments acknowledged, the recorded histories are
  linearizable (``dhtcart.checker``), every key lives only on its owner afterwards;
* the etcd leader SIGKILLed during a rebalance, then a second member: with two of three alive the
  rebalance completes and no writer stops; with one of three, rebalances fail with a typed error while
  the writers go on with the epoch they have; with the quorum back, the rebalancer finishes its work
  with nobody's help;
* a rebalancer SIGSTOPped past its lease: another process takes over and finishes; after SIGCONT the old
  one publishes nothing and moves nothing (every shard's records and ownership are as the successor
  left them);
* a rebalancer SIGKILLed right after a freeze: a write to the frozen batch waits until etcd expires the
  lease, then its client takes the lease over and finishes the batch;
* a published epoch reaches a watching handle before it touches a moved key (for a Redis-kept
  membership, the same handle learns it from a redirect).

* with two copies of every key, a shard's Redis server and the etcd leader SIGKILLed at the same moment
  under writer processes: no acknowledged write is lost, the histories are linearizable, and the repair
  brings every key back to two copies on live shards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dhtcart import DHTServerStore, Record, hash_key
from dhtcart.backends.ownership import FROZEN
from dhtcart.hashing import MAX_KEY
from tests.conftest import redis_binary
from tests.etcd_server import EtcdCluster, wait_until
from tests.helpers import ROOT, Histories, child_env, placement
from tests.live_child import counter_key
from tests.test_etcd_membership import etcd_binary

CHILD = Path(__file__).with_name("etcd_child.py")
KEYS = 16
BACKGROUND = 1500

pytestmark = [pytest.mark.slow, pytest.mark.etcd, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with EtcdCluster(tmp_path_factory.mktemp("etcd-dist"), binary=etcd_binary()) as started:
        yield started


@pytest.fixture(scope="module")
def redis_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Any]]:
    from tests.redis_server import running

    with running(4, lambda i: tmp_path_factory.mktemp(f"dist-redis{i}"), redis_binary()) as servers:
        yield servers


@pytest.fixture
def healthy(cluster: EtcdCluster) -> Iterator[EtcdCluster]:
    """The cluster with every member running, before and after the test."""
    for member in cluster.members:
        if member.paused:
            member.resume()
        if not member.running:
            member.restart()
    cluster.wait_leader()
    yield cluster
    for member in cluster.members:
        if member.paused:
            member.resume()
        if not member.running:
            member.restart()
    cluster.wait_leader()


class Child:
    """A child process whose output lines are collected by a thread as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(CHILD), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
            cwd=ROOT,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def seen(self, word: str) -> list[list[str]]:
        return [line.split() for line in list(self.lines) if line.split()[:1] == [word]]

    def wait(self, timeout: float = 200) -> str:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self._reader.join(10)
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def ops(self) -> int:
        found = self.seen("ops")
        return int(found[-1][1]) if found else 0

    def kill(self) -> None:
        if self.proc.poll() is None:
            if sys.platform.startswith("linux"):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)


def _store(location: str, servers: list[Any], prefix: str) -> None:
    shards = {f"r{i}": f"{servers[i].url}?prefix={prefix}-r{i}:" for i in range(3)}
    with DHTServerStore.open(location, shards=shards) as store:
        for i in range(BACKGROUND):  # background records, so that batches are many
            store.put(hash_key(f"bg-{i}"), b"background")


def _writers(location: str, tmp_path: Path, n: int = 3, min_ops: int = 60) -> list[Child]:
    (tmp_path / "histories").mkdir(exist_ok=True)
    return [
        Child(
            "incr", location, "--keys", str(KEYS), "--seed", str(w), "--min-ops", str(min_ops),
            "--history", str(tmp_path / "histories" / f"p{w}.jsonl"), "--stop", str(tmp_path / "stop"),
        )
        for w in range(n)
    ]  # fmt: skip


def _finish_writers(writers: list[Child], tmp_path: Path) -> tuple[dict[int, int], list[float]]:
    (tmp_path / "stop").touch()
    acked: dict[int, int] = {}
    waits = []
    for writer in writers:
        err = writer.wait()
        assert writer.proc.returncode == 0, err
        for line in writer.lines:
            word, _, rest = line.partition(" ")
            if word == "acked":
                for key, count in json.loads(rest).items():
                    acked[int(key)] = acked.get(int(key), 0) + count
            elif word == "maxwait":
                waits.append(float(rest.split()[0]))
    return acked, waits


def _check_store(location: str, acked: dict[int, int], tmp_path: Path) -> int:
    """Counters exact, every key on its owner only, histories linearizable; the operations checked."""
    checked = Histories(tmp_path / "histories").check().operations
    with DHTServerStore.open(location) as store:
        store._check()
        placement(store)
        for i in range(KEYS):
            key = counter_key(i)
            rec = store.get(key)
            assert rec is not None and int(rec.value) == acked[key] == rec.version, f"counter {i}: increments lost"
        assert store.count() == BACKGROUND + KEYS
    return checked


def test_writers_lose_no_increment_while_another_process_adds_removes_and_reweights(
    healthy: EtcdCluster, redis_servers: list[Any], tmp_path: Path
) -> None:
    location = healthy.url("live")
    _store(location, redis_servers, "live")
    writers = _writers(location, tmp_path)
    wait_until(lambda: all(w.ops() >= 10 for w in writers), 60, "every writer is writing")
    template = f"{redis_servers[3].url}?prefix=live-{{name}}:"
    rebalancer = Child("rebalance", location, "--count", "6", "--template", template, "--seed", "1")
    err = rebalancer.wait()
    assert rebalancer.proc.returncode == 0, err
    assert rebalancer.seen("rebalances") == [["rebalances", "6"]]
    assert not rebalancer.seen("error"), rebalancer.seen("error")
    acked, waits = _finish_writers(writers, tmp_path)
    checked = _check_store(location, acked, tmp_path)
    assert sum(acked.values()) >= 180 and max(waits) < 5.0
    print(f"\n6 rebalances, {sum(acked.values())} increments, {checked} operations checked, longest waits {waits}")


def test_the_etcd_leader_killed_during_rebalances_then_a_second_member(
    healthy: EtcdCluster, redis_servers: list[Any], tmp_path: Path
) -> None:
    cluster = healthy
    location = cluster.url("quorum")
    _store(location, redis_servers, "quorum")
    writers = _writers(location, tmp_path)
    wait_until(lambda: all(w.ops() >= 10 for w in writers), 60, "every writer is writing")
    template = f"{redis_servers[3].url}?prefix=quorum-{{name}}:"
    holds = tmp_path / "holds"
    holds.mkdir()
    rebalancer = Child(
        "rebalance", location, "--count", "6", "--template", template, "--seed", "2",
        "--hold-at", "2,4", "--hold-dir", str(holds),
    )  # fmt: skip
    try:
        # 1. the leader dies in the middle of the second rebalance (its migration published, its lease
        #    held, batches still to move): two of three remain, and it completes
        wait_until(lambda: rebalancer.seen("holding"), 120, "the second rebalance is moving data")
        first = cluster.leader()
        first.kill()
        (holds / "go-2").touch()
        wait_until(lambda: len(rebalancer.seen("done")) >= 3, 120, "rebalances go on with two members")
        assert not rebalancer.seen("error"), f"two of three members keep rebalances going: {rebalancer.seen('error')}"
        # 2. in the middle of the fourth, a second member dies: one of three, no quorum
        wait_until(lambda: rebalancer.seen("holding")[1:], 120, "the fourth rebalance is moving data")
        second = next(m for m in cluster.members if m.running)
        second.kill()
        ops = [w.ops() for w in writers]
        (holds / "go-4").touch()
        wait_until(lambda: rebalancer.seen("error"), 120, "a rebalance refused without a quorum")
        kinds = {line[2] for line in rebalancer.seen("error")}
        assert kinds <= {"ShardUnavailable", "LeaseLost", "StoreBusy"}, kinds
        assert len(rebalancer.seen("done")) == 3, "no rebalance completes without a quorum"
        wait_until(lambda: all(w.ops() >= o + 20 for w, o in zip(writers, ops)), 120, "the writers go on")
        with DHTServerStore.open(location, finish=False) as late:  # a new client opens from a member's copy
            assert late.rebalance_status().migrating  # the fourth rebalance's migration, on the last epoch
            assert late.get(counter_key(0)) is not None
        assert all(w.proc.poll() is None for w in writers), "no writer stopped"
        # 3. the quorum comes back: the rebalancer finishes its work by itself
        first.restart()
        second.restart()
        err = rebalancer.wait()
        assert rebalancer.proc.returncode == 0, err
        assert rebalancer.seen("rebalances") == [["rebalances", "6"]]
    finally:
        rebalancer.kill()
        acked, waits = _finish_writers(writers, tmp_path)
    checked = _check_store(location, acked, tmp_path)
    errors = [" ".join(line[2:4]) for line in rebalancer.seen("error")]
    print(f"\n{sum(acked.values())} increments, {checked} operations checked, waits {waits}; refusals: {errors[:3]}")


def _snapshot(store: DHTServerStore) -> dict[str, Any]:
    """Every shard's records and ownership record, as stored."""
    out: dict[str, Any] = {}
    for name, server in sorted(store.shards.items()):
        backend = server.backend
        out[name] = (list(backend.scan(-1, MAX_KEY)), backend.ownership())  # type: ignore[attr-defined]
    return out


def test_a_rebalancer_paused_past_its_lease_is_taken_over_and_changes_nothing_after(
    healthy: EtcdCluster, redis_servers: list[Any], tmp_path: Path
) -> None:
    location = healthy.url("paused")
    _store(location, redis_servers, "paused")
    paused = Child("pausing", location, "--backend", f"{redis_servers[3].url}?prefix=paused-late:", "--lease-ttl", "2")
    try:
        wait_until(lambda: paused.seen("frozen"), 60, "the rebalancer froze its first batch")
        stat = Path(f"/proc/{paused.proc.pid}/stat")
        wait_until(lambda: stat.read_text().split(")")[1].split()[0] == "T", 10, "the rebalancer stopped")
        with DHTServerStore.open(location, finish=False) as store:
            status = store.rebalance_status()
            assert status.migrating and status.holder is not None  # its lease still stands, for now
        finisher = Child("finish", location, "--lease-ttl", "2")  # waits out the lease, then finishes
        err = finisher.wait()
        assert finisher.proc.returncode == 0, err
        assert finisher.seen("finished")
        with DHTServerStore.open(location, finish=False) as store:
            store._check()
            before = _snapshot(store)
            epoch = store.epoch
            assert "late" in store.servers and not store.rebalance_status().migrating
        os.kill(paused.proc.pid, signal.SIGCONT)
        err = paused.wait(60)
        assert paused.proc.returncode == 0, err
    finally:
        paused.kill()
    assert paused.seen("resumed")
    assert not paused.seen("applied"), f"the old rebalancer changed something: {paused.seen('applied')}"
    assert not paused.seen("completed")
    stopped = paused.seen("stopped")
    assert stopped and stopped[0][1] in ("LeaseLost", "StoreBusy"), paused.lines
    with DHTServerStore.open(location, finish=False) as store:
        assert store.epoch == epoch, "the old rebalancer published nothing"
        assert _snapshot(store) == before, "the old rebalancer moved nothing"
        assert store.count() == BACKGROUND
        for server in store.servers.values():
            assert not server.backend.ownership().segments.in_state(FROZEN)  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["etcd", "redis"])
def test_a_published_epoch_reaches_a_watching_handle_before_it_touches_a_moved_key(
    kind: str, healthy: EtcdCluster, redis_servers: list[Any], tmp_path: Path
) -> None:
    prefix = f"push-{kind}"
    location = healthy.url(prefix) if kind == "etcd" else f"{redis_servers[3].url}?prefix={prefix}-m:"
    _store(location, redis_servers, prefix)
    keys = [hash_key(f"bg-{i}") for i in range(BACKGROUND)]
    with DHTServerStore.open(location) as handle:
        before = handle.epoch
        assert all(handle.get(k) == Record(1, b"background") for k in keys)
        code = (
            "import sys\nfrom dhtcart import DHTServerStore\n"
            "with DHTServerStore.open(sys.argv[1]) as s:\n"
            "    r = s.add_shard('pushed', backend=sys.argv[2])\n"
            "    print(s.epoch, r.keys_moved)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, location, f"{redis_servers[3].url}?prefix={prefix}-pushed:"],
            capture_output=True,
            text=True,
            timeout=120,
            env=child_env(),
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        final, moved = map(int, done.stdout.split())
        assert moved > 0
        if kind == "etcd":
            assert handle.membership.watching is True
            wait_until(lambda: handle.epoch == final, 10, "the handle switches without touching a key")
        else:
            assert handle.membership.watching is None and handle.epoch == before  # it cannot know yet
        assert all(handle.get(k) == Record(1, b"background") for k in keys)
        redirects = handle.routing_stats()["redirects"]
        if kind == "etcd":
            assert redirects == 0, "a watching handle never touched a moved key with an old epoch"
        else:
            assert redirects >= 1 and handle.epoch == final  # a redirect told it


def test_a_killed_rebalancers_etcd_lease_expires_and_a_waiting_client_takes_over(
    healthy: EtcdCluster, redis_servers: list[Any], tmp_path: Path
) -> None:
    """SIGKILL right after a freeze: the frozen batch's writes wait until etcd expires the dead holder's
    lease, then the waiting client takes the lease (a larger token) and finishes the batch itself."""
    location = healthy.url("killed")
    _store(location, redis_servers, "killed")
    code = f"""
import os, signal
from dhtcart import DHTServerStore
from dhtcart.backends.ownership import FROZEN
from dhtcart.backends.redis import RedisBackend
real = RedisBackend.update_ownership
def update(self, token, epoch, changes=(), expect=None):
    out = real(self, token, epoch, changes, expect)
    if changes and changes[0][2] == FROZEN:
        print("frozen", token, *(f"{{lo}}:{{hi}}" for lo, hi, _, _ in changes), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return out
RedisBackend.update_ownership = update
s = DHTServerStore.open({location!r}, lease_ttl=2.0)
s.add_shard("late", backend={redis_servers[3].url + "?prefix=killed-late:"!r}, batch_size=50)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=child_env())
    assert out.returncode == -signal.SIGKILL, out.stderr
    words = out.stdout.split()
    dead_token = int(words[1])
    ranges = [tuple(int(x) for x in r.split(":")) for r in words[2:]]
    keys = [hash_key(f"bg-{i}") for i in range(BACKGROUND)]
    frozen = [k for k in keys if any(lo < k <= hi for lo, hi in ranges)]
    assert frozen, "no key in the frozen batch"
    with DHTServerStore.open(location, lease_ttl=2.0, finish=False) as client:
        assert client.rebalance_status().migrating
        assert client.get(frozen[0]) == Record(1, b"background")  # reads of a frozen batch are served
        assert client.put(frozen[0], b"new", expected_version=1) == 2  # waits for etcd to expire the lease
        assert client.routing_stats()["takeovers"] >= 1
        tokens = {server.backend.ownership().token for server in client.servers.values()}  # type: ignore[attr-defined]
        assert max(tokens) > dead_token, "the taker's token fenced the dead rebalancer out"
        for server in client.servers.values():
            assert not server.backend.ownership().segments.in_state(FROZEN)  # type: ignore[attr-defined]
        client.finish_rebalance()
        client._check()
        assert client.get(frozen[0]) == Record(2, b"new")
        assert sum(client.get(k) is not None for k in keys) == len(keys)


def test_a_shard_server_and_the_etcd_leader_killed_together_lose_no_acknowledged_write(
    healthy: EtcdCluster, tmp_path: Path
) -> None:
    """Two copies on three fresh Redis servers (their own: one of them dies), the membership in etcd.
    Writers' failover of the dead server needs the lease and a publication, which wait for the
    election of a new etcd leader; the writers' calls meanwhile may raise (recorded as of unknown
    outcome), never lose an acknowledged increment."""
    from tests.redis_server import running
    from tests.test_replication_redis import FAILOVER_BOUND, _check_after_the_kill, _finish, _total, _wait_for
    from tests.test_replication_redis import _writers as _tolerant_writers

    cluster = healthy
    location = cluster.url("together")
    with running(3, lambda i: tmp_path / f"redis{i}", redis_binary()) as servers:
        shards = {f"r{i}": f"{servers[i].url}?prefix=r{i}:&timeout=0.5" for i in range(3)}
        DHTServerStore.open(location, shards=shards, replicas=2, read_lease=1.0).close()
        procs = _tolerant_writers(location, tmp_path)
        try:
            start = _total(location)
            _wait_for(lambda: _total(location) >= start + 200, "the writers made 200 increments")
            leader = cluster.leader()
            servers[1].kill()  # SIGKILL, never restarted
            leader.kill()  # SIGKILL; restarted by the fixture after the test
            killed_at = _total(location)
            _wait_for(lambda: _total(location) >= killed_at + 300, "the writers went on after both kills")
            acked, raised, worst = _finish(procs, tmp_path)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        _check_after_the_kill(location, tmp_path, acked, raised, worst, dead="r1")  # from the etcd URL alone
    # the failover also waits for etcd to elect a leader (about one election timeout)
    assert worst < FAILOVER_BOUND + cluster.election_ms / 1000 * 3, f"a writer waited {worst:.1f} s"
