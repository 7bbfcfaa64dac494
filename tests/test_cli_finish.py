"""Inspection changes nothing: a migration left by a killed rebalancer, seen by ``stats`` and ``plan``,
finished by ``dhtcart finish``.

A real rebalancer process (``tests/rebalance_child.py crashat``) SIGKILLs itself
in the middle of a batch, so the store holds a published migration, a frozen
batch copied to its target, and nobody holding the lease. The real ``dhtcart``
command then inspects it (nothing on disk may change: not the membership, not
one shard's records) and finishes it.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dhtcart import DHTServerStore, Record
from dhtcart.backends.ownership import FROZEN
from dhtcart.cli import EXIT_BUSY, EXIT_OK
from tests.cli_helpers import manifest_epoch, one_error_line, run_cli, tree
from tests.helpers import ROOT, child_env, manifest, placement
from tests.rebalance_child import key_of, value_for

pytest.importorskip("rich")

N_KEYS = 600
CHILD = ROOT / "tests" / "rebalance_child.py"


@pytest.fixture
def interrupted(tmp_path: Path) -> tuple[Path, dict[int, int]]:
    """A store whose rebalancer (adding ``extra``) was killed right after copying its 3rd batch."""
    directory = tmp_path / "store"
    model = {}
    with DHTServerStore.open(directory, shards=3, partitions=256) as store:
        for i in range(N_KEYS):
            key = key_of(i)
            model[key] = store.put(key, value_for(key, 1))
    out = subprocess.run(
        [sys.executable, str(CHILD), "crashat", str(directory), "copy", "3", "add", "--name", "extra",
         "--batch-size", "20"],
        capture_output=True, text=True, timeout=120, env=child_env(), cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == -signal.SIGKILL, out.stdout + out.stderr
    assert "killed at copy 3" in out.stdout
    doc = manifest(directory)
    assert doc["migration"] is not None and "extra" in doc["shards"]
    return directory, model


def _shard_records(directory: Path) -> dict[str, tuple[object, int]]:
    """Each shard's ownership record and key count, read without finishing anything."""
    with DHTServerStore.open(directory, create=False, finish=False) as store:
        out: dict[str, tuple[object, int]] = {}
        for name, server in store.shards.items():
            backend = server.backend
            out[name] = (backend.ownership(), server.count())  # type: ignore[attr-defined]
        assert any(own.segments.in_state(FROZEN) for own, _ in out.values()), "expected a frozen batch"  # type: ignore[attr-defined]
        return out


def test_stats_and_plan_show_an_interrupted_migration_and_change_nothing(
    interrupted: tuple[Path, dict[int, int]],
) -> None:
    directory, _ = interrupted
    files, records, epoch = tree(directory), _shard_records(directory), manifest_epoch(directory)

    r = run_cli("stats", "--data", directory)
    assert r.returncode == EXIT_OK, r.stderr
    out = " ".join(r.stdout.split())  # rich may wrap the long line
    m = re.search(r"membership epoch (\d+); rebalance interrupted \(adding extra\): ([\d.]+)% of the moving", out)
    assert m and int(m.group(1)) == epoch and 0 < float(m.group(2)) < 100, out
    assert f"no rebalancer holds the lease: `dhtcart finish --data {directory}` finishes it" in out
    assert "the next rebalance" in out and "a writer that meets a half-moved batch finishes that batch" in out
    assert "extra" in r.stdout  # the shard being added is listed

    r = run_cli("stats", "--json", "--data", directory)
    assert r.returncode == EXIT_OK, r.stderr
    assert set(json.loads(r.stdout)) == {"shard-0", "shard-1", "shard-2", "extra"}

    for argv in (["plan", "add-shard"], ["plan", "remove-shard", "shard-0"], ["plan", "set-weight", "shard-0", "2"]):
        r = run_cli(*argv, "--data", directory)
        assert r.returncode == EXIT_BUSY, r.stderr
        assert one_error_line(r) == (
            f"dhtcart: error: store {directory}: a rebalance is interrupted; plan once it has finished"
            f" (`dhtcart finish --data {directory}` finishes it)"
        )

    assert tree(directory) == files  # not one byte of the membership or of a shard changed
    assert _shard_records(directory) == records
    assert manifest_epoch(directory) == epoch


def test_finish_completes_what_the_killed_rebalancer_left(interrupted: tuple[Path, dict[int, int]]) -> None:
    directory, model = interrupted
    epoch = manifest_epoch(directory)

    r = run_cli("finish", "--data", directory, "--batch-size", "50")
    assert r.returncode == EXIT_OK, r.stderr
    m = re.search(r"moved ([\d,]+) keys", r.stdout)
    assert m and int(m.group(1).replace(",", "")) > 0, r.stdout
    doc = manifest(directory)
    assert doc["migration"] is None and doc["epoch"] > epoch

    with DHTServerStore.open(directory, create=False, finish=False) as store:
        store._check()  # every key on its owner only, every shard's record exactly its arcs
        assert sorted(store.shards) == ["extra", "shard-0", "shard-1", "shard-2"]
        for key, version in model.items():
            assert store.get(key) == Record(version, value_for(key, version))
        assert len(placement(store)) == N_KEYS

    r = run_cli("stats", "--data", directory)
    assert r.returncode == EXIT_OK and "interrupted" not in r.stdout and "in progress" not in r.stdout
    r = run_cli("finish", "--data", directory)
    assert r.returncode == EXIT_OK
    assert r.stdout.strip() == f"nothing to finish: no rebalance was interrupted (membership epoch {doc['epoch']})"


def test_a_rebalance_command_finishes_the_interrupted_one_first(interrupted: tuple[Path, dict[int, int]]) -> None:
    directory, model = interrupted
    r = run_cli("add-shard", "later", "--data", directory)
    assert r.returncode == EXIT_OK, r.stderr
    with DHTServerStore.open(directory, create=False, finish=False) as store:
        store._check()
        assert sorted(store.shards) == ["extra", "later", "shard-0", "shard-1", "shard-2"]
        assert all(store.get(k) == Record(v, value_for(k, v)) for k, v in model.items())
