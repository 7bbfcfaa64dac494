"""Live membership: rebalances while other processes (and, for Redis, other "hosts") serve.

Three writer processes (``tests/live_child.py incr``) add one to shared counters
by compare-and-set while a fourth process loops add_shard / set_weight /
remove_shard. Every writer opens the store from its location alone: the
directory for an LMDB store; for a Redis store, the URL of the Redis database
that keeps the membership (no file is shared, as on separate hosts). Afterwards
each counter equals the increments its writers saw acknowledged, every key
lives only on its owner, and the writers' histories (every read and
compare-and-set, with invocation and completion times) are checked for
linearizability by ``dhtcart.verify``'s checker.

Redis-specific: a rebalancer killed mid-batch leaves its lease to expire, and a
client that waits on the frozen batch takes it over within the lease's time to
live; with the membership's database down, handles keep serving with the
membership they have and rebalances are refused with ShardUnavailable.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dhtcart import DHTServerStore, Record, ShardUnavailable, hash_key
from dhtcart.backends.ownership import FROZEN
from tests.conftest import redis_binary
from tests.helpers import Histories, child_env, placement
from tests.live_child import counter_key

CHILD = Path(__file__).with_name("live_child.py")
ROOT = CHILD.parent.parent
KEYS = 24
REBALANCES = 3  # add, reweight or remove a shard, under the writers
MIN_INCREMENTS = 100  # per writer, at least
CEILING = 120.0  # seconds: bounds a hang, not the work (an idle machine needs a few)
MAX_WAIT = 15.0  # seconds one increment may take, rebalances and a loaded machine included

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def redis_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Any]]:
    """Four real Redis (or Valkey) servers on loopback ports, for this module."""
    from tests.redis_server import running

    with running(4, lambda i: tmp_path_factory.mktemp(f"live{i}"), redis_binary()) as servers:
        yield servers


def _flush(servers: list[Any]) -> None:
    import redis

    for server in servers:
        client = redis.Redis(port=server.port)
        client.flushall()
        client.close()


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-u", str(CHILD), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=ROOT,
    )


def _increments_between(histories: Path, begin: int, end: int) -> int:
    """Compare-and-set increments acknowledged between two ``time.monotonic_ns()`` readings, from the histories."""
    n = 0
    for path in histories.glob("p*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            event = json.loads(line)
            if event["type"] == "ok" and event["f"] == "cas" and begin < event["time"] < end:
                n += 1
    return n


@pytest.mark.parametrize("replicas", [1, 2], ids=["one-copy", "two-copies"])
@pytest.mark.parametrize("kind", ["lmdb", "redis"])
def test_three_writers_and_a_rebalancer_lose_no_increment(
    kind: str, replicas: int, tmp_path: Path, request: Any
) -> None:
    """The work is counted, not timed: the writers run until the rebalancer has done its rebalances.

    With two copies the rebalancer also changes the number of copies (2 <-> 3), and
    afterwards every key is on exactly its replicas.

    Each writer acknowledges an increment before the rebalancer starts, and
    keeps going until the rebalancer is done and it has made
    :data:`MIN_INCREMENTS`; every rebalance thus happens while all three
    write, however slow the machine. :data:`CEILING` only bounds a hang.
    """
    (tmp_path / "histories").mkdir()
    if kind == "lmdb":
        location = str(tmp_path / "store")
        DHTServerStore.open(location, shards=3, replicas=replicas).close()
        template = ""
    else:
        servers = request.getfixturevalue("redis_servers")
        _flush(servers)
        location = f"{servers[0].url}?prefix=membership:"
        shards = {f"r{i}": f"{servers[i].url}?prefix=r{i}:" for i in range(3)}
        DHTServerStore.open(location, shards=shards, replicas=replicas).close()
        template = f"{servers[3].url}?prefix={{name}}:"
    with DHTServerStore.open(location) as store:  # background records, so that batches are many
        for i in range(3000):
            store.put(hash_key(f"bg-{i}"), b"background")
    stop = tmp_path / "stop"
    writers = [
        _spawn(
            "incr", location, "--seconds", str(CEILING), "--keys", str(KEYS), "--seed", str(w),
            "--history", str(tmp_path / "histories" / f"p{w}.jsonl"),
            "--stop-file", str(stop), "--min-ops", str(MIN_INCREMENTS),
        )
        for w in range(3)
    ]  # fmt: skip
    rebalancer = None
    try:
        for proc in writers:  # each has opened the store and acknowledged an increment
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == "writing", f"{line!r} {proc.stderr.read() if proc.stderr else ''}"
        rebalancer = _spawn(
            "rebalance", location, "--rebalances", str(REBALANCES), "--seconds", str(CEILING),
            "--url-template", template, *(["--replicas", "2"] if replicas > 1 else []),
        )  # fmt: skip
        r_out, r_err = rebalancer.communicate(timeout=CEILING + 60)
    except BaseException:
        for proc in [*writers, *([rebalancer] if rebalancer else [])]:
            _kill(proc)
        raise
    finally:
        stop.touch()
    assert rebalancer.returncode == 0, r_err
    begin = int(r_out.split("begin")[1].split()[0])
    rebalances, end = (int(x) for x in r_out.split("rebalances")[-1].split()[:2])
    assert rebalances == REBALANCES, f"the rebalancer did {rebalances} rebalances within {CEILING} s: {r_out}"
    acked: dict[int, int] = {}
    waits = []
    for proc in writers:
        out, err = proc.communicate(timeout=CEILING + 60)
        assert proc.returncode == 0, err
        assert "end stopped" in out, f"a writer reached the {CEILING} s ceiling before the rebalancer was done"
        for line in out.splitlines():
            word, _, rest = line.partition(" ")
            if word == "acked":
                for key, n in json.loads(rest).items():
                    acked[int(key)] = acked.get(int(key), 0) + n
            elif word == "maxwait":
                waits.append(float(rest.split()[0]))
    checked = Histories(tmp_path / "histories").check().operations  # linearizable, by dhtcart.verify's checker
    with DHTServerStore.open(location) as store:
        store._check()  # every key on exactly its replicas, every shard's record its ranges
        if replicas == 1:
            placement(store)  # and no key on two shards
        for i in range(KEYS):
            key = counter_key(i)
            rec = store.get(key)
            assert rec is not None and int(rec.value) == acked[key], f"counter {i}: increments lost"
            assert rec.version == acked[key]
        assert store.count() == 3000 + KEYS
        epoch = store.epoch
    during = _increments_between(tmp_path / "histories", begin, end)
    print(
        f"\n{kind}: {rebalances} rebalances (epoch {epoch}) in {(end - begin) / 1e9:.1f} s,"
        f" {sum(acked.values())} increments ({during} during the rebalances), {checked} operations checked,"
        f" writers' longest waits {waits}"
    )
    assert sum(acked.values()) >= 3 * MIN_INCREMENTS
    assert during > 0, "the writers made no progress while the shards moved"
    assert max(waits) < MAX_WAIT, f"an increment waited {max(waits):.1f} s"


def test_a_redis_kept_store_opens_from_its_url_alone(redis_servers: list[Any], tmp_path: Path) -> None:
    from dhtcart import InvalidInput

    _flush(redis_servers)
    location = f"{redis_servers[0].url}?prefix=m:"
    shards = {f"r{i}": f"{redis_servers[i].url}?prefix=s{i}:" for i in range(3)}
    with DHTServerStore.open(location, shards=shards) as store:
        assert store.directory is None and store.location == redis_servers[0].url + "?prefix=m:"
        store.put(7, b"seven")
    with DHTServerStore.open(location, shards={"ignored": "redis://nowhere:1/0"}) as again:
        assert sorted(again.servers) == ["r0", "r1", "r2"] and again.get(7) == Record(1, b"seven")
        with pytest.raises(InvalidInput, match="backend= URL"):  # no directory for a default LMDB shard
            again.add_shard("r3")
        again.remove_shard("r2")  # a Redis-kept store empties a removed shard but keeps its fence
        import redis

        client = redis.Redis(port=redis_servers[2].port)
        assert sorted(client.keys("s2:*")) == [b"s2:own", b"s2:own:meta"]
        client.close()
    with pytest.raises(InvalidInput, match="needs shards"):
        DHTServerStore.open(f"{redis_servers[1].url}?prefix=empty:", shards=3)


def test_a_dead_rebalancers_lease_expires_and_a_waiting_client_takes_over(
    redis_servers: list[Any], tmp_path: Path
) -> None:
    _flush(redis_servers)
    location = f"{redis_servers[0].url}?prefix=m:"
    shards = {f"r{i}": f"{redis_servers[i].url}?prefix=s{i}:" for i in range(3)}
    with DHTServerStore.open(location, shards=shards, lease_ttl=1.0) as store:
        keys = [hash_key(f"k{i}") for i in range(1500)]
        for key in keys:
            store.put(key, b"v1")
    code = f"""
import os, signal, sys
from dhtcart import DHTServerStore
from dhtcart.backends.ownership import FROZEN
from dhtcart.backends.redis import RedisBackend
real = RedisBackend.update_ownership
def update(self, token, epoch, changes=(), expect=None):
    out = real(self, token, epoch, changes, expect)
    if changes and changes[0][2] == FROZEN:
        print("frozen", *(f"{{lo}}:{{hi}}" for lo, hi, _, _ in changes), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return out
RedisBackend.update_ownership = update
s = DHTServerStore.open({location!r}, lease_ttl=1.0)
s.add_shard("r3", backend={redis_servers[3].url + "?prefix=s3:"!r}, batch_size=50)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=child_env())
    assert out.returncode == -signal.SIGKILL, out.stderr
    ranges = [tuple(int(x) for x in r.split(":")) for r in out.stdout.split()[1:]]
    frozen = [k for k in keys if any(lo < k <= hi for lo, hi in ranges)]
    assert frozen, "no key in the frozen batch"
    with DHTServerStore.open(location, lease_ttl=1.0) as client:  # the lease is still held: no recovery
        assert client.rebalance_status().migrating
        assert client.get(frozen[0]) == Record(1, b"v1")  # reads of a frozen batch are served
        t0 = time.monotonic()
        assert client.put(frozen[0], b"v2", expected_version=1) == 2  # waits for the lease to expire
        waited = time.monotonic() - t0
        assert 0.2 < waited < 5.0, waited
        assert client.routing_stats()["takeovers"] >= 1
        for server in client.servers.values():
            assert not server.backend.ownership().segments.in_state(FROZEN)
        client.finish_rebalance()
        client._check()
        assert client.get(frozen[0]) == Record(2, b"v2")
        assert sum(client.get(k) is not None for k in keys) == len(keys)


def test_the_membership_database_down(redis_servers: list[Any], tmp_path: Path) -> None:
    """Handles keep serving with the membership they have; what needs the membership fails clearly."""
    from tests.redis_server import RedisServer

    _flush(redis_servers)
    meta = RedisServer(tmp_path / "meta", binary=redis_servers[0].binary)
    meta.start()
    try:
        location = f"{meta.url}?prefix=m:&timeout=0.3"
        shards = {f"r{i}": f"{redis_servers[i].url}?prefix=d{i}:" for i in range(3)}
        store = DHTServerStore.open(location, shards=shards)
        try:
            store.put(1, b"one")
            meta.stop()
            assert store.get(1) == Record(1, b"one")  # routing needs no membership read
            assert store.put(2, b"two") == 1
            with pytest.raises(ShardUnavailable, match="membership"):
                store.add_shard("r3", backend=f"{redis_servers[3].url}?prefix=d3:")
            assert "r3" not in store.servers
            with pytest.raises(ShardUnavailable, match="membership"):
                DHTServerStore.open(location)
        finally:
            store.close()
    finally:
        meta.stop()


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
