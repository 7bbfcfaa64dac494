"""Shared by the end-to-end tests of ``dhtcart verify`` (not a test module).

The command runs as a real subprocess (``python -m dhtcart verify``) whose
client processes open the store themselves; stores are real LMDB
directories, or directories whose shards are real Redis servers, or shards
of the planted-bug backend of ``tests/buggy_backend.py``, registered for the
subprocesses through a ``*.dist-info`` directory on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dhtcart import DHTServerStore, Record, ShardUnavailable, hash_key
from tests.buggy_backend import plugin_path
from tests.conftest import redis_binary
from tests.helpers import ROOT, child_env, run_python

USER_KEYS = 30
T = TypeVar("T")


def patiently(step: Callable[[], T], seconds: float = 30.0) -> T:
    """``step()``, again while it raises ``ShardUnavailable`` (for up to ``seconds``).

    The Redis stores here have short timeouts (0.3 s) so that a paused shard
    is noticed quickly during a run; on a loaded machine a server can also
    miss such a deadline while a test sets up or inspects a store, which says
    nothing about dhtcart. Only set-up and inspection go through this; the
    runs themselves record timeouts as unknown outcomes, as they should. Each
    step must be safe to repeat: creating a store (nothing is published until
    every shard is claimed), writing a value, reading.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            return step()
        except ShardUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def verify(
    *args: str, env: dict[str, str] | None = None, tmp: Path | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m dhtcart verify ARGS`` and return the finished process.

    With ``tmp``, a run without ``--history`` writes its history there (not in
    a temporary directory of its own, which the command keeps).
    """
    if tmp is not None and "--check" not in args and "--history" not in args:
        args = (*args, "--history", str(tmp / "history.jsonl"))
    return subprocess.run(
        [sys.executable, "-m", "dhtcart", "verify", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(**(env or {})),
        cwd=ROOT,
    )


def report_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON report a ``--json`` run printed."""
    try:
        data: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON report (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}") from None
    return data


def linearizable(proc: subprocess.CompletedProcess[str], history: Path) -> dict[str, Any]:
    """The report of a ``--json`` run that must have exited 0; else an error with the report and,
    for every anomaly, the history's last lines of its key up to it (a CI run loses the file)."""
    data = report_of(proc)
    if proc.returncode == 0:
        return data
    detail = [f"exit {proc.returncode}", proc.stdout, proc.stderr]
    anomalies = data.get("check", {}).get("anomalies", [])
    if history.exists():
        lines = history.read_text(encoding="utf-8").splitlines()
        for anomaly in anomalies[:3]:
            last = max((op.get("complete_line") or op.get("invoke_line") or 0) for op in anomaly["operations"])
            key = str(anomaly["key"])
            mine = [f"{n}: {line}" for n, line in enumerate(lines[:last], 1) if f'"key":{key},' in line]
            detail.append(f"history of key {key} (lines up to {last}, the last 60):\n" + "\n".join(mine[-60:]))
    raise AssertionError("\n".join(detail))


def user_data(root: Path) -> dict[int, Record]:
    """Every key and record in the store (to show a run leaves the user's data alone)."""

    def read() -> dict[int, Record]:
        with DHTServerStore.open(root) as store:
            return dict(store.items())

    return patiently(read)


def lmdb_store(root: Path, shards: int = 3) -> dict[int, Record]:
    """A store of ``shards`` LMDB shards holding some user data; return that data."""
    with DHTServerStore.open(root, shards=shards) as store:
        for i in range(USER_KEYS):
            store.put(hash_key(f"user-{i}"), b"keep me")
    return user_data(root)


def redis_store(root: Path, servers: list[Any], timeout: float = 0.3, replicas: int = 1) -> dict[int, Record]:
    """A store whose shards are the given real Redis servers (one each, a prefix of this store's own),
    keeping ``replicas`` copies of each key."""
    prefix = f"v{abs(hash(str(root))) % 10**8}:"
    shards = {f"r{i}": f"redis://127.0.0.1:{s.port}/0?timeout={timeout}&prefix={prefix}" for i, s in enumerate(servers)}
    with patiently(lambda: DHTServerStore.open(root, shards=shards, replicas=replicas)) as store:
        for i in range(USER_KEYS):
            patiently(lambda: store.put(hash_key(f"user-{i}"), b"keep me"))  # noqa: B023 - called at once
    return user_data(root)


def buggy_store(root: Path, plugins: Path, bug: str, rate: float) -> dict[str, str]:
    """A store of three planted-bug shards; return the environment that registers the backend."""
    env = {"PYTHONPATH": os.pathsep.join([str(plugin_path(plugins)), str(ROOT)])}
    urls = {f"b{i}": f"buggy://{root / f'b{i}'}?bug={bug}&rate={rate}" for i in range(3)}
    run_python(
        f"from dhtcart import DHTServerStore\nDHTServerStore.open({str(root)!r}, shards={urls!r}).close()",
        **env,
    )
    return env


@pytest.fixture(scope="module")
def redis_trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Any]]:
    """Three real Redis servers for the module."""
    from tests.redis_server import running

    with running(3, lambda i: tmp_path_factory.mktemp(f"verify-redis{i}"), redis_binary()) as servers:
        yield servers
