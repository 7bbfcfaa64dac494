"""Live membership benchmark: the fences' cost, migration speed with writers, latency during a rebalance.

    python benchmarks/live.py              # LMDB (and Redis when a server binary is found), ~2 minutes
    python benchmarks/live.py --quick      # fewer keys and rounds: a smoke test

What it measures, each figure beside its baseline in the same run:

1. **The fence's cost per operation.** ``get`` and ``put`` through a one-shard
   ``DHTServerStore`` (routing, the ownership check in the shard's own
   transaction or script, redirects ready) beside the same operation on a bare,
   unfenced backend holding the same keys; and the fenced backend alone. Nine
   interleaved rounds, medians. Goal: store / bare <= 1.1 on LMDB and Redis.
2. **Migration speed** on LMDB: ``add_shard`` then ``remove_shard`` (4 <-> 5
   shards, default batch of 1,000) with no other process, and with three writer
   processes doing random puts on the same store the whole time. Goal:
   >= 100,000 keys/s while writers run.
3. **Latency during a rebalance** on LMDB: a client process doing gets and
   puts records every operation's latency; another process adds a shard and
   removes it again, eight times (one rebalance alone is ~0.2 s, a few hundred
   operations: too few for a p99); mean, p50/p90/p99 and max of the operations
   that started during a rebalance beside the others. Goal: p99 <= 10 ms.

It prints tables and a markdown snippet for ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from bisect import bisect_right
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dhtcart import DHTServerStore
from dhtcart.backends.base import Backend
from dhtcart.backends.lmdb import LMDBBackend

ROOT = Path(__file__).resolve().parent.parent
VALUE = b"v" * 100


def _keys(n: int, seed: int = 1) -> list[int]:
    rng = random.Random(seed)
    return [rng.getrandbits(63) for _ in range(n)]


def _per_op(fn: Callable[[int], Any], keys: list[int]) -> float:
    t0 = time.perf_counter()
    for k in keys:
        fn(k)
    return (time.perf_counter() - t0) / len(keys) * 1e6


def fence_cost(kind: str, n_keys: int, rounds: int, redis_url: str | None = None) -> list[dict[str, Any]]:
    """get/put µs per op: bare backend, fenced backend, one-shard store (medians), and the ratios."""
    keys = _keys(n_keys)
    tmp = Path(tempfile.mkdtemp(prefix="dhtcart-live-"))
    if kind == "lmdb":
        bare: Backend = LMDBBackend(tmp / "bare")
        store = DHTServerStore.open(tmp / "store", shards=1)
    else:
        from dhtcart.backends.redis import RedisBackend

        assert redis_url is not None
        bare = RedisBackend.from_url(f"{redis_url}?prefix=bench-bare:")
        store = DHTServerStore({"r0": f"{redis_url}?prefix=bench-store:"})
    fenced = store.servers[next(iter(store.servers))].backend
    for k in keys:
        bare.put(k, VALUE)
        store.put(k, VALUE)
    samples: dict[str, list[float]] = {}
    ops: dict[str, Callable[[int], Any]] = {
        "get bare": bare.get,
        "get fenced backend": fenced.get,
        "get store": store.get,
        "put bare": lambda k: bare.put(k, VALUE),
        "put fenced backend": lambda k: fenced.put(k, VALUE),
        "put store": lambda k: store.put(k, VALUE),
    }
    for _ in range(rounds):
        for name, fn in ops.items():
            samples.setdefault(name, []).append(_per_op(fn, keys))
    med = {name: statistics.median(v) for name, v in samples.items()}
    rows = []
    for op in ("get", "put"):
        b, f, s = med[f"{op} bare"], med[f"{op} fenced backend"], med[f"{op} store"]
        rows.append({"backend": kind, "op": op, "bare": b, "fenced": f, "store": s, "fence": f / b, "ratio": s / b})
    if kind == "redis":
        bare.destroy()
        fenced.destroy()
    else:
        bare.close()
    store.close()
    return rows


# -- migration with writers ------------------------------------------------------------------


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def child_writer(directory: str, seconds: float, seed: int) -> None:
    """Random puts on random keys of the store until ``seconds`` pass; print the count."""
    store = DHTServerStore.open(directory)
    rng = random.Random(seed)
    n = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        store.put(rng.getrandbits(63), VALUE)
        n += 1
    print(n)
    store.close()


def child_latency(directory: str, seconds: float, out: str) -> None:
    """Gets and puts on known keys until ``seconds`` pass; write (start_ns, latency_ns) per op."""
    store = DHTServerStore.open(directory)
    keys = _keys(20_000, seed=2)
    rng = random.Random(3)
    rows: list[tuple[int, int]] = []
    deadline = time.monotonic() + seconds
    ns = time.monotonic_ns
    while time.monotonic() < deadline:
        k = rng.choice(keys)
        t0 = ns()
        if rng.random() < 0.5:
            store.get(k)
        else:
            store.put(k, VALUE)
        rows.append((t0, ns() - t0))
        time.sleep(0.0002)  # a steady client, not a saturating one
    Path(out).write_text(json.dumps(rows))
    store.close()


def child_rebalance(directory: str, cycles: int, delay: float, out: str) -> None:
    """After ``delay`` seconds, add a shard and remove it again, ``cycles`` times; write each
    rebalance's start and end (monotonic ns) and the keys it moved."""
    store = DHTServerStore.open(directory)
    time.sleep(delay)
    windows = []
    for i in range(cycles):
        for op in ("add", "remove"):
            t0 = time.monotonic_ns()
            report = store.add_shard(f"live{i}") if op == "add" else store.remove_shard(f"live{i}")
            windows.append([t0, time.monotonic_ns(), report.keys_moved])
        time.sleep(0.1)
    Path(out).write_text(json.dumps(windows))
    store.close()


def migration(n_keys: int, repeats: int) -> list[dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="dhtcart-mig-"))
    directory = tmp / "store"
    store = DHTServerStore.open(directory, shards=4)
    for k in _keys(n_keys):
        store.put(k, VALUE)
    rows = []
    for writers in (0, 3):
        rates: list[float] = []
        procs = [_spawn("writer", str(directory), "3600", str(w)) for w in range(writers)]
        time.sleep(1.0 if writers else 0)
        started = time.monotonic()
        for r in range(repeats):
            for op in ("add", "remove"):
                report = store.add_shard(f"m{r}") if op == "add" else store.remove_shard(f"m{r}")
                rates.append(report.keys_per_second)
        seconds = time.monotonic() - started
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(30)
        rows.append(
            {
                "writers": writers,
                "keys/s median": statistics.median(rates),
                "keys/s min": min(rates),
                "rebalances": len(rates),
                "seconds": seconds,
            }
        )
    store.close()
    return rows


def latency(seconds: float, cycles: int) -> dict[str, Any]:
    """One client's operations (gets and puts, 0.2 ms apart) while another process adds and
    removes a shard ``cycles`` times: latency during the rebalances against the rest."""
    tmp = Path(tempfile.mkdtemp(prefix="dhtcart-lat-"))
    directory = tmp / "store"
    store = DHTServerStore.open(directory, shards=4)
    for k in _keys(200_000, seed=5):
        store.put(k, VALUE)
    for k in _keys(20_000, seed=2):
        store.put(k, VALUE)
    store.close()
    lat_out, reb_out = str(tmp / "lat.json"), str(tmp / "reb.json")
    client = _spawn("latency", str(directory), str(seconds), lat_out)
    rebalancer = _spawn("rebalance", str(directory), str(cycles), "1.0", reb_out)
    for p in (client, rebalancer):
        _, err = p.communicate(timeout=seconds * 10 + 60)
        assert p.returncode == 0, err
    rows = json.loads(Path(lat_out).read_text())
    windows = json.loads(Path(reb_out).read_text())
    assert rows[-1][0] > windows[-1][1], "the client stopped before the last rebalance ended"
    starts = [w[0] for w in windows]

    def rebalancing(t: int) -> bool:
        i = bisect_right(starts, t) - 1
        return i >= 0 and t <= windows[i][1]

    during = sorted(lat for t, lat in rows if rebalancing(t))
    steady = sorted(lat for t, lat in rows if not rebalancing(t))

    def q(xs: list[int], p: float) -> float:
        return xs[min(len(xs) - 1, int(p * len(xs)))] / 1e6 if xs else float("nan")

    out: dict[str, Any] = {
        "rebalances": len(windows),
        "rebalance seconds": sum(w[1] - w[0] for w in windows) / 1e9,
        "keys moved": sum(w[2] for w in windows),
    }
    for when, xs in (("steady", steady), ("during", during)):
        out[f"{when} ops"] = len(xs)
        out[f"{when} mean ms"] = statistics.fmean(xs) / 1e6 if xs else float("nan")
        for name, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)):
            out[f"{when} {name} ms"] = q(xs, p)
    return out


def _redis_url() -> tuple[str | None, Any]:
    try:
        sys.path.insert(0, str(ROOT))
        from tests.redis_server import RedisServer, find_server_binary
    except ImportError:
        return None, None
    binary = find_server_binary()
    if binary is None:
        return None, None
    server = RedisServer(Path(tempfile.mkdtemp(prefix="dhtcart-bench-redis-")), binary=binary)
    server.start()
    return server.url, server


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("writer", "latency", "rebalance"):
        mode, *rest = sys.argv[1:]
        if mode == "writer":
            child_writer(rest[0], float(rest[1]), int(rest[2]))
        elif mode == "latency":
            child_latency(rest[0], float(rest[1]), rest[2])
        else:
            child_rebalance(rest[0], int(rest[1]), float(rest[2]), rest[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    keys, rounds = (5_000, 3) if args.quick else (20_000, 9)
    print(f"# dhtcart live benchmark, {time.strftime('%Y-%m-%d')}, Python {platform.python_version()}")
    rows = fence_cost("lmdb", keys, rounds)
    url, server = _redis_url()
    try:
        if url is not None:
            rows += fence_cost("redis", keys // 5, rounds, url)
    finally:
        if server is not None:
            server.stop()
    print("\n| backend | op | bare backend µs | fenced backend µs | store µs | fenced / bare | store / bare |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['backend']} | {r['op']} | {r['bare']:.2f} | {r['fenced']:.2f} | {r['store']:.2f}"
            f" | {r['fence']:.2f}x | {r['ratio']:.2f}x |"
        )
    mig = migration(20_000 if args.quick else 400_000, 1 if args.quick else 3)
    print("\n| writers | migration keys/s (median) | min | rebalances | seconds |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in mig:
        print(
            f"| {r['writers']} | {r['keys/s median']:,.0f} | {r['keys/s min']:,.0f} | {r['rebalances']}"
            f" | {r['seconds']:.1f} |"
        )
    lat = latency(3.0, 1) if args.quick else latency(12.0, 8)
    print("\n| ops | count | mean ms | p50 ms | p90 ms | p99 ms | max ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for when in ("steady", "during"):
        print(
            f"| {when} | {lat[f'{when} ops']:,} | {lat[f'{when} mean ms']:.3f} | {lat[f'{when} p50 ms']:.3f}"
            f" | {lat[f'{when} p90 ms']:.3f} | {lat[f'{when} p99 ms']:.3f} | {lat[f'{when} max ms']:.2f} |"
        )
    print(
        f"\n{lat['rebalances']} rebalances moved {lat['keys moved']:,} keys in {lat['rebalance seconds']:.2f} s"
        " (a shard added and removed again, by another process)"
    )


if __name__ == "__main__":
    main()
