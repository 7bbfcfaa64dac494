"""Smoke tests of ``benchmarks/ycsb.py``: its quick run on LMDB and on real Redis servers, and its generators.

No timing is asserted (the figures are whatever the machine measures); what is
checked is that the script runs to the end, prints its tables and goals, writes
its JSON (and plot), every read finds its record, and that the key choice is
YCSB's (the ported FNV hash and zipfian constant).
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import redis_binary

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "ycsb.py"


def _ycsb() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ycsb_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def _run_quick(tmp_path: Path, *extra: str) -> tuple[str, dict[str, Any]]:
    out = tmp_path / "ycsb.json"
    args = [sys.executable, str(SCRIPT), "--quick", "--dir", str(tmp_path), "--json", str(out), *extra]
    if importlib.util.find_spec("matplotlib") is not None:
        args += ["--plot", str(tmp_path / "ycsb.png")]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    if "--plot" in args:
        assert (tmp_path / "ycsb.png").stat().st_size > 0
    return proc.stdout, json.loads(out.read_text())


def _check(stdout: str, data: dict[str, Any], backend: str, title: str) -> None:
    assert f"**{title}**" in stdout
    assert "| workload | clients | dhtcart ops/s | raw ops/s |" in stdout
    assert "Every read found its record." in stdout
    rows = [m for m in data["summary"] if m["backend"] == backend]
    assert {(m["workload"], m["clients"]) for m in rows} == {(w, c) for w in "ABCDF" for c in (1, 2)}
    for m in rows:
        assert m["dhtcart_ops_s"] > 0 and m["raw_ops_s"] > 0 and m["ratio"] > 0
    assert data["goals"] and all(g["backend"] == backend for g in data["goals"])
    for line in stdout.splitlines():
        if line.startswith(f"| {title} store >="):
            assert line.endswith(("| yes |", "| **no** |"))


def test_quick_lmdb(tmp_path: Path) -> None:
    stdout, data = _run_quick(tmp_path, "--backends", "lmdb")
    _check(stdout, data, "lmdb", "LMDB")


@pytest.mark.redis
def test_quick_redis(tmp_path: Path) -> None:
    stdout, data = _run_quick(tmp_path, "--backends", "redis", "--binary", redis_binary())
    _check(stdout, data, "redis", "Redis")


def test_generators_are_ycsbs() -> None:
    ycsb = _ycsb()
    # YCSB's first hashed key is "user6284781860667377211": Utils.fnvhash64(0)
    assert ycsb.fnv64(0) == 6284781860667377211
    plan = ycsb.make_plan(ycsb.WORKLOADS["C"], 20_000, 20_000, seed=1, insert_base=10**6)
    counts = collections.Counter(plan.nums)
    assert all(0 <= n < 20_000 for n in counts)
    # the most popular rank holds 1/zeta(10**10, 0.99) = 3.8 % of the requests
    assert 0.03 < counts.most_common(1)[0][1] / 20_000 < 0.05
    plan = ycsb.make_plan(ycsb.WORKLOADS["D"], 20_000, 20_000, seed=1, insert_base=10**6)
    ops = collections.Counter(plan.codes)
    assert 0.04 < ops[ycsb.INSERT] / 20_000 < 0.06 and ops[ycsb.READ] + ops[ycsb.INSERT] == 20_000
    inserted: set[int] = set()
    for code, n in zip(plan.codes, plan.nums):
        if code == ycsb.INSERT:
            inserted.add(n)
        else:  # a read of a loaded record or of one this client already inserted
            assert n < 20_000 or n in inserted
    # latest: most reads go to the newest records
    assert sum(1 for c, n in zip(plan.codes, plan.nums) if c == ycsb.READ and n >= 10**6) > 0.4 * ops[ycsb.READ]
