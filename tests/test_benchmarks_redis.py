"""Smoke tests of the Redis benchmark scripts that call dhtcart's Lua scripts by hand.

``benchmarks/redis_write_cost.py`` and ``benchmarks/redis_fence.py`` pass the
scripts their ``KEYS`` themselves, so a script that takes one more key breaks
them without breaking any other test (the fenced PUT's fifth key did). No
timing is asserted: each runs a few writes on a real server and must print its
table to the end.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import redis_binary

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("script", "args", "last_row"),
    [
        ("redis_write_cost.py", ["--writes", "20", "--rounds", "1", "--keys", "10"], "8. dhtcart put script, fenced"),
        ("redis_fence.py", ["--reads", "20", "--rounds", "1"], "|"),
    ],
)
def test_the_redis_benchmark_scripts_run_to_the_end(script: str, args: list[str], last_row: str) -> None:
    redis_binary()  # a server to run on, or fail under CI=true
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert last_row in proc.stdout, proc.stdout[-3000:]
