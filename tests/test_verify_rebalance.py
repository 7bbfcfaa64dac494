"""``dhtcart verify --rebalance``: shards added and removed while client processes run.

The coordinator adds a temporary shard and removes it, again and again, on
its own store handle while the clients (other processes) use the store. That
needs live rebalancing across processes: a store that refuses a rebalance
while other processes have it open makes the run exit 4 and say so, and
these tests fail with that message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dhtcart import DHTServerStore
from tests.verify_support import (
    lmdb_store,
    redis_store,
    redis_trio,  # noqa: F401 - a fixture
    report_of,
    user_data,
    verify,
)


def _shards(root: Path) -> dict[str, int]:
    with DHTServerStore.open(root) as store:
        return store.stats()


def test_lmdb_store_is_linearizable_while_shards_come_and_go(tmp_path: Path) -> None:
    root = tmp_path / "store"
    before = lmdb_store(root)
    shards = set(_shards(root))
    args = ["--data", str(root), "--rebalance", "--clients", "3", "--keys", "5", "--seconds", "4", "--json"]
    proc = verify(*args, tmp=tmp_path)
    data = report_of(proc)
    assert proc.returncode == 0, f"exit {proc.returncode}: {data['rebalance_errors']}"
    assert data["rebalances"] >= 1 and data["check"]["valid"] is True
    assert set(_shards(root)) == shards, "the temporary shard is gone"
    assert user_data(root) == before


def test_redis_store_is_linearizable_while_shards_come_and_go_and_pause(
    tmp_path: Path,
    redis_trio: list[Any],  # noqa: F811
) -> None:
    root = tmp_path / "store"
    before = redis_store(root, redis_trio)
    temp = f"redis://127.0.0.1:{redis_trio[0].port}/1?timeout=0.3&prefix=verify-temp:"
    proc = verify(
        "--data",
        str(root),
        "--rebalance",
        "--rebalance-backend",
        temp,
        "--kill-shard",
        "--clients",
        "3",
        "--keys",
        "5",
        "--seconds",
        "5",
        "--json",
        tmp=tmp_path,
    )
    data = report_of(proc)
    assert proc.returncode == 0, f"exit {proc.returncode}: {data['rebalance_errors']}"
    assert data["rebalances"] >= 1 and data["pauses"] == 3
    assert data["check"]["valid"] is True
    assert user_data(root) == before
