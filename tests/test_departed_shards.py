"""Shards that leave the membership are closed by every handle that learns it, in every process.

A removed LMDB shard's directory is deleted by the rebalancer, but a process
that still has its environment open keeps the deleted ``data.mdb`` and
``lock.mdb`` open and mapped, which pins their disk space until it exits. A
handle closes the shards that left when it learns the new membership
(``DHTServerStore._apply``). A removal publishes two epochs: the commit (the
shard leaves the ring and is listed as retired) and, once the shard is
destroyed, one that only empties the retired list. Nothing redirects a handle
to that second epoch (no shard's ownership changes with it), so a handle that
learned the commit must close the retired shard then.

The first test drives that order in one process; the second counts the
descriptors and maps of the deleted files in a real ``dhtcart serve --workers
2`` after six ``dhtcart add-shard`` / ``remove-shard`` cycles run beside it,
from ``/proc/<pid>/fd`` and ``/proc/<pid>/maps``.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dhtcart import DHTServerStore, Record

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from tests.serve_process import Server, clean_env, command  # noqa: E402

#: keys spread over the whole ring, so that every shard holds some
SPREAD = [k * (2**63 // 64) + 12345 for k in range(64)]


def _held(pid: int, marker: str) -> tuple[list[str], list[str]]:
    """The descriptors and memory maps of process ``pid`` whose path contains ``marker``."""
    fds = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed meanwhile
            continue
        if marker in target:
            fds.append(target)
    with open(f"/proc/{pid}/maps") as f:
        maps = [line.split(None, 5)[-1].strip() for line in f if marker in line]
    return fds, maps


def test_a_handle_that_learns_a_shard_retired_closes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Handle ``a`` reloads between the rebalancer's commit and its destroy (the order is forced
    here; in a server it is a matter of timing), so the last epoch it ever learns lists the shard
    as retired. It must close the shard then: no later epoch will reach it."""
    data = tmp_path / "store"
    rebalancer = DHTServerStore.open(data, shards=2)
    a = DHTServerStore.open(data)
    try:
        rebalancer.add_shard("g")
        for k in SPREAD:
            a.put(k, b"x")  # a follows the redirects to g, and opens it
        assert any(n == "g" for n, _ in a._opened), "a opened g"
        real_destroy: Callable[..., Any] = rebalancer._coordinator._destroy_retired
        learned = []

        def destroy_after_a_reloads(*args: Any, **kwargs: Any) -> Any:
            learned.append(a._refresh().doc)  # a learns the commit: g left the ring, retired
            return real_destroy(*args, **kwargs)

        monkeypatch.setattr(rebalancer._coordinator, "_destroy_retired", destroy_after_a_reloads)
        rebalancer.remove_shard("g")
        assert learned and "g" in learned[0].retired and "g" not in learned[0].shards
        assert a.epoch == learned[0].epoch < rebalancer.epoch, "a knows the commit, not the epoch after it"
        assert not any(n == "g" for n, _ in a._opened), "a keeps the retired shard open"
        fds, maps = _held(os.getpid(), f"{data}/shards/g/")
        assert fds == [] and maps == [], (fds, maps)
        assert all(a.get(k) == Record(1, b"x") for k in SPREAD)  # and routes on without it
    finally:
        a.close()
        rebalancer.close()


def _group(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (the server and its workers)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
            pids.append(int(entry))
    return pids


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_removed_shards_stay_open_in_no_worker(tmp_path: Path) -> None:
    """Six add/remove cycles of shards g0..g5 while two workers serve: afterwards no process of
    the server holds a descriptor or a map of a removed shard's files (the workers held 18
    descriptors and 12 maps each before handles closed departed shards).

    ``--no-metrics``: each worker's metrics would reload the membership every five seconds and
    so hide a handle that does not close, on learning an epoch, the shards it says left.
    """
    data = tmp_path / "data"
    with DHTServerStore.open(data, shards=2) as store:
        for k in SPREAD:
            store.put(k, b"seed")
    server = Server(data, tmp_path / "server.log", "--workers", "2", "--no-access-log", "--no-metrics")
    stop = threading.Event()
    statuses: list[int] = []

    def traffic(c: int) -> None:  # carts all over the ring, so each worker opens every new shard
        i = 0
        with httpx.Client(base_url=server.url, timeout=30.0) as http:
            while not stop.is_set():
                i += 1
                try:
                    statuses.append(http.post(f"/item/c{c}-{i % 97}/sku", json={"offeredPrice": 1}).status_code)
                except httpx.TransportError:
                    statuses.append(-1)

    clients = [threading.Thread(target=traffic, args=(c,), daemon=True) for c in range(4)]
    try:
        for t in clients:
            t.start()
        env = clean_env(DHTCART_DATA=str(data))
        for i in range(6):
            for argv in (["add-shard", f"g{i}", "--batch-size", "50"], ["remove-shard", f"g{i}", "--batch-size", "50"]):
                done = subprocess.run([*command(), *argv], capture_output=True, text=True, timeout=120, env=env)
                assert done.returncode == 0, f"{argv}: {done.stdout}\n{done.stderr}"
        stop.set()
        for t in clients:
            t.join(60)
        assert statuses and set(statuses) <= {200, 201}, sorted(set(statuses))
        workers = [p for p in _group(server.proc.pid) if p != server.proc.pid]
        workers = [p for p in workers if b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(workers) == 2, workers
        # each worker serves requests for carts all over the ring on fresh connections, until it
        # has routed a key of every removed shard's former arcs: bounded in count and time
        leaks: dict[int, tuple[list[str], list[str]]] = {}
        deadline = time.monotonic() + 30
        for _ in range(40):
            for c in range(40):
                r = httpx.get(f"{server.url}/items/c0-{c}", timeout=10.0, headers={"Connection": "close"})
                assert r.status_code == 200, r.text
            leaks = {p: _held(p, f"{data}/shards/g") for p in _group(server.proc.pid)}
            leaks = {p: held for p, held in leaks.items() if held != ([], [])}
            if not leaks or time.monotonic() > deadline:
                break
        for p in workers:  # the test can see a worker's shards: the current ones are open
            fds, maps = _held(p, f"{data}/shards/shard-")
            assert any(f.endswith("/data.mdb") for f in fds) and maps, (p, fds, maps)
        assert not leaks, f"processes still hold removed shards' files (fds, maps): {leaks}"
    finally:
        stop.set()
        server.stop()
    assert not list((data / "shards").glob("g*")), "the removed shards' directories are gone"
