"""``dhtcart verify --rebalance``: shards added and removed while client processes run.

The coordinator adds a temporary shard and removes it, again and again, on
its own store handle while the clients (other processes) use the store. That
needs live rebalancing across processes: a store that refuses a rebalance
while other processes have it open makes the run exit 4 and say so, and
these tests fail with that message.

How many rebalances fit in a run depends on the machine, not on dhtcart: on
a loaded machine one add-and-remove of a Redis shard takes seconds, and with
``--kill-shard`` three pauses take 60% of a short run, each stopping the
rebalance in flight (it is finished once the shard is back, and the next one
starts). So a test runs until the work is done: if a run completed no
rebalance, it runs again, longer, up to a ceiling (:data:`LMDB_SECONDS`,
:data:`REDIS_SECONDS`). Every
run is checked in full: exit 0, linearizable, the pauses made, the user's data
untouched; only the amount of work done decides whether another run is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dhtcart import DHTServerStore
from tests.verify_support import (
    linearizable,
    lmdb_store,
    patiently,
    redis_store,
    redis_trio,  # noqa: F401 - a fixture
    user_data,
    verify,
)

#: the runs' lengths, until one has completed a rebalance (one run, of the first length, on an idle machine)
LMDB_SECONDS = (4, 20, 40)
#: with --kill-shard, a run of S seconds has rebalancing room for S / 4 before the first pause
REDIS_SECONDS = (5, 20, 40)


def _shards(root: Path) -> dict[str, int]:
    def stats() -> dict[str, int]:
        with DHTServerStore.open(root) as store:
            return store.stats()

    return patiently(stats)


def _runs_until_a_rebalance(root: Path, tmp: Path, lengths: tuple[int, ...], *args: str) -> list[dict[str, Any]]:
    """``dhtcart verify --data ROOT --rebalance ARGS --seconds S``, for S in ``lengths`` until a run rebalanced.

    Asserts what every run must show; returns the runs' reports (the last one rebalanced).
    """
    before = user_data(root)
    reports = []
    for seconds in lengths:
        proc = verify("--data", str(root), "--rebalance", *args, "--seconds", str(seconds), "--json", tmp=tmp)
        data = linearizable(proc, tmp / "history.jsonl")
        reports.append(data)
        assert data["check"]["valid"] is True
        assert data["client_failures"] == [] and data["keys_removed"] == data["keys"]
        assert user_data(root) == before
        if data["rebalances"] >= 1:
            return reports
    done = [(r["seconds"], r["rebalances"], r["rebalance_errors"]) for r in reports]
    pytest.fail(f"no run completed a rebalance (seconds, rebalances, errors): {done}")


def test_lmdb_store_is_linearizable_while_shards_come_and_go(tmp_path: Path) -> None:
    root = tmp_path / "store"
    lmdb_store(root)
    shards = set(_shards(root))
    reports = _runs_until_a_rebalance(root, tmp_path, LMDB_SECONDS, "--clients", "3", "--keys", "5")
    assert reports[-1]["rebalances"] >= 1
    assert set(_shards(root)) == shards, "the temporary shard is gone"


def test_redis_store_is_linearizable_while_shards_come_and_go_and_pause(
    tmp_path: Path,
    redis_trio: list[Any],  # noqa: F811
) -> None:
    root = tmp_path / "store"
    redis_store(root, redis_trio)
    shards = set(_shards(root))
    temp = f"redis://127.0.0.1:{redis_trio[0].port}/1?timeout=0.3&prefix=verify-temp:"
    args = ["--rebalance-backend", temp, "--kill-shard", "--clients", "3", "--keys", "5"]
    reports = _runs_until_a_rebalance(root, tmp_path, REDIS_SECONDS, *args)
    for data in reports:
        assert data["pauses"] == 3 and data["pause_errors"] == []
        assert data["check"]["info"] > 0, "some operations timed out during the pauses"
    assert reports[-1]["rebalances"] >= 1
    assert set(_shards(root)) == shards, "the temporary shard is gone"
