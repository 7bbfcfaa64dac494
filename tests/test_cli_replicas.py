"""The command line and copies: ``init --replicas``, ``set-replicas``, ``repair``, ``stats``' replica lines.

Each test runs the real ``dhtcart`` command in a subprocess on an LMDB store.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from dhtcart import DHTServerStore, Record, hash_key
from tests.helpers import child_env


def dhtcart(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dhtcart", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=child_env(COLUMNS="200"),
    )


def _fill(directory: Path, n: int = 300) -> dict[int, Record | None]:
    with DHTServerStore.open(directory) as store:
        for i in range(n):
            store.put(hash_key(f"k{i}"), b"v%d" % i)
        return {hash_key(f"k{i}"): store.get(hash_key(f"k{i}")) for i in range(n)}


def test_init_with_copies_then_set_replicas(tmp_path: Path) -> None:
    data = tmp_path / "s"
    out = dhtcart("init", "--data", str(data), "--shards", "3", "--replicas", "2")
    assert out.returncode == 0, out.stderr
    assert "created, 3 shards, 2 copies of every key" in out.stdout
    again = dhtcart("init", "--data", str(data), "--replicas", "3")
    assert again.returncode == 0 and "--replicas 3 ignored: the store exists" in again.stdout
    before = _fill(data)
    stats = dhtcart("stats", "--data", str(data))
    assert stats.returncode == 0, stats.stderr
    assert "2 copies of every key; every key has all its copies" in stats.stdout
    assert "primary of" in stats.stdout and "600 records (2 copies of each key)" in stats.stdout
    up = dhtcart("set-replicas", "3", "--data", str(data))
    assert up.returncode == 0, up.stderr
    with DHTServerStore.open(data) as store:
        assert store.replicas == 3
        store._check()
        assert {k: store.get(k) for k in before} == before
    for bad in ("0", "8", "two"):
        refused = dhtcart("set-replicas", bad, "--data", str(data))
        assert refused.returncode == 2 and "set-replicas" in refused.stderr


def test_repair_after_a_lost_shard_directory(tmp_path: Path) -> None:
    data = tmp_path / "s"
    assert dhtcart("init", "--data", str(data), "--shards", "4", "--replicas", "2").returncode == 0
    before = _fill(data)
    nothing = dhtcart("repair", "--data", str(data))
    assert nothing.returncode == 0 and "nothing to repair" in nothing.stdout
    shutil.rmtree(data / "shards" / "shard-1")
    stats = dhtcart("stats", "--data", str(data))  # inspection changes nothing: no failover yet
    assert stats.returncode == 1 and "shard-1" in stats.stderr
    with DHTServerStore.open(data, read_lease=0.2) as store:  # a reader meets the lost shard: a failover
        store._coordinator.repair_in_background = lambda: None  # type: ignore[method-assign]
        assert {k: store.get(k) for k in before} == before
        assert store.rebalance_status().down == ["shard-1"]
    taken = dhtcart("stats", "--data", str(data))
    assert taken.returncode == 0, taken.stderr
    assert "taken out by a failover: shard-1" in taken.stdout and "dhtcart repair" in taken.stdout
    fixed = dhtcart("repair", "--data", str(data))
    assert fixed.returncode == 0 and "removed shard-1" in fixed.stdout, fixed.stderr
    with DHTServerStore.open(data) as store:
        store._check()
        assert {k: store.get(k) for k in before} == before
        assert "shard-1" not in store.shards
