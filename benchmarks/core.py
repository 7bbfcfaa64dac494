"""Core micro-benchmarks: hashing, ring lookup, shard get/put, cart add and list, beside their floors.

Every contender runs in the same process, interleaved round by round (so a
noisy neighbour slows all of them alike), and each figure is the median over
rounds of the mean time per call within a round.

    python benchmarks/core.py            # full run (about a minute)
    python benchmarks/core.py --quick    # a few seconds, for a smoke test
    python benchmarks/core.py --markdown docs/benchmarks-core.md

Floors: ``dict`` get/put, a raw ``lmdb`` put and get in one transaction each
(the least a shard on LMDB can do per operation), and ``sha1 -> int`` for
``hash_key``.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import lmdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dhtcart import CartService, DHTServer, HashRing, PartitionRing, hash_key
from dhtcart.backends.lmdb import LMDBBackend

Bench = Callable[[int], None]  # runs the operation n times


def measure(benches: dict[str, Bench], n: int, rounds: int) -> dict[str, list[float]]:
    """Per-call seconds for each bench, one sample per round, benches interleaved."""
    samples: dict[str, list[float]] = {name: [] for name in benches}
    for fn in benches.values():  # warm up
        fn(max(1, n // 10))
    for _ in range(rounds):
        for name, fn in benches.items():
            t0 = time.perf_counter()
            fn(n)
            samples[name].append((time.perf_counter() - t0) / n)
    return samples


def _hash_benches() -> dict[str, Bench]:
    texts = [f"customer-{i}" for i in range(1000)]
    sha1 = hashlib.sha1

    def floor(n: int) -> None:
        for i in range(n):
            int.from_bytes(sha1(texts[i % 1000].encode()).digest(), "big")

    def seed(n: int) -> None:
        for i in range(n):
            int(sha1(texts[i % 1000].encode()).hexdigest(), 16) % 2**63

    def ours(n: int) -> None:
        for i in range(n):
            hash_key(texts[i % 1000])

    return {"floor: sha1 -> int": floor, "seed: int(hexdigest) % 2**63": seed, "hash_key": ours}


def _ring_benches() -> dict[str, Bench]:
    names = [f"shard-{i}" for i in range(10)]
    keys = [hash_key(f"k{i}") for i in range(1000)]
    part, classic = PartitionRing(names), HashRing(names)

    def p(n: int) -> None:
        f = part.node_for
        for i in range(n):
            f(keys[i % 1000])

    def h(n: int) -> None:
        f = classic.node_for
        for i in range(n):
            f(keys[i % 1000])

    return {"node_for PartitionRing (10 shards)": p, "node_for HashRing (10 x 160 vnodes)": h}


def _shard_benches(tmp: Path) -> tuple[dict[str, Bench], list[object]]:
    value = b"x" * 200
    keys = [hash_key(f"k{i}") for i in range(1000)]
    benches: dict[str, Bench] = {}
    closers: list[object] = []

    d: dict[int, bytes] = {}

    def dict_put(n: int) -> None:
        for i in range(n):
            d[keys[i % 1000]] = value

    def dict_get(n: int) -> None:
        for i in range(n):
            d.get(keys[i % 1000])

    benches["floor: dict put"] = dict_put
    benches["floor: dict get"] = dict_get

    for mode in ("process", "power"):
        env = lmdb.open(str(tmp / f"raw-{mode}"), map_size=1 << 28, sync=mode == "power", metasync=mode == "power")
        closers.append(env)

        def raw_put(n: int, env: lmdb.Environment = env) -> None:
            for i in range(n):
                with env.begin(write=True) as txn:
                    txn.put(keys[i % 1000].to_bytes(8, "big"), value)

        def raw_get(n: int, env: lmdb.Environment = env) -> None:
            for i in range(n):
                with env.begin() as txn:
                    txn.get(keys[i % 1000].to_bytes(8, "big"))

        benches[f"floor: raw lmdb put ({mode})"] = raw_put
        benches[f"floor: raw lmdb get ({mode})"] = raw_get

    # Not a floor of dhtcart's (its shards do not use a writable map): what LMDB's MDB_WRITEMAP would
    # save per write, commits without a pwrite per page. The map's file is then as large as the map,
    # with holes, and a page written into a hole on a full filesystem kills the process with SIGBUS:
    # the reason dhtcart does not use it (docs/benchmarks.md, "The floors").
    wm = lmdb.open(str(tmp / "raw-writemap"), map_size=1 << 28, sync=False, metasync=False, writemap=True)
    closers.append(wm)

    def raw_put_writemap(n: int, env: lmdb.Environment = wm) -> None:
        for i in range(n):
            with env.begin(write=True) as txn:
                txn.put(keys[i % 1000].to_bytes(8, "big"), value)

    benches["raw lmdb put (process, writemap: not dhtcart's)"] = raw_put_writemap

    shards = {
        "memory": DHTServer(),
        "lmdb process": DHTServer(LMDBBackend(tmp / "shard-process")),
        "lmdb power": DHTServer(LMDBBackend(tmp / "shard-power", durability="power")),
    }
    for label, shard in shards.items():
        closers.append(shard)

        def put(n: int, shard: DHTServer = shard) -> None:
            for i in range(n):
                shard.put(keys[i % 1000], value)

        def get(n: int, shard: DHTServer = shard) -> None:
            for i in range(n):
                shard.get(keys[i % 1000])

        benches[f"DHTServer.put ({label})"] = put
        benches[f"DHTServer.get ({label})"] = get
    return benches, closers


def _cart_benches(tmp: Path) -> tuple[dict[str, Bench], list[CartService]]:
    far = datetime(2100, 1, 1, tzinfo=timezone.utc)
    services = {
        "memory": CartService(),
        "lmdb process": CartService.open(tmp / "store-process"),
        "lmdb power": CartService.open(tmp / "store-power", durability="power"),
    }
    benches: dict[str, Bench] = {}
    for label, svc in services.items():
        # a small cart: re-adding one of 3 items (the cart stays small however long we run)
        for j in range(3):
            svc.add_item("small", f"sku-{j}", "1.99")

        def add(n: int, svc: CartService = svc) -> None:
            for i in range(n):
                svc.add_item("small", f"sku-{i % 3}", "1.99")

        def add_sale(n: int, svc: CartService = svc) -> None:
            for i in range(n):
                svc.add_item("sale", f"sku-{i % 3}", "1.99", 1, True, far)

        benches[f"CartService.add_item, 3-item cart ({label})"] = add
        if label != "lmdb power":
            benches[f"CartService.add_item with a sale date, 3-item cart ({label})"] = add_sale
    big = services["memory"]
    for j in range(1000):
        big.add_item("big", f"sku-{j:04d}", "1.99")

    def add_big(n: int) -> None:
        for i in range(n):
            big.add_item("big", f"sku-{i % 1000:04d}", "1.99")

    benches["CartService.add_item, 1000-item cart (memory)"] = add_big

    # listing a 100-item cart: warm (this service decoded the record last) and cold (a service
    # that has not seen it: one parse of the record, every line once)
    listed = services["memory"]
    for j in range(100):
        listed.add_item("listed", f"sku-{j:03d}", "1.99")

    def list_warm(n: int) -> None:
        for _ in range(n):
            listed.list_items("listed")

    def list_cold(n: int) -> None:
        store = listed.store
        for _ in range(n):
            CartService(store).list_items("listed")

    benches["CartService.list_items, 100-item cart, warm (memory)"] = list_warm
    benches["CartService.list_items, 100-item cart, cold (memory)"] = list_cold
    return benches, list(services.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few rounds, small n (smoke test)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--markdown", type=Path, help="write the results table to this file")
    args = ap.parse_args()
    rounds = 3 if args.quick else args.rounds
    scale = 0.1 if args.quick else 1.0

    rows: list[tuple[str, float, float]] = []  # name, median us, p90 us

    def run(title: str, benches: dict[str, Bench], n: int) -> dict[str, float]:
        samples = measure(benches, max(10, int(n * scale)), rounds)
        med = {}
        for name, s in samples.items():
            m = statistics.median(s) * 1e6
            q = sorted(s)[int(0.9 * (len(s) - 1))] * 1e6
            rows.append((name, m, q))
            med[name] = m
        return med

    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        h = run("hash", _hash_benches(), 20000)
        run("ring", _ring_benches(), 20000)
        sb, closers = _shard_benches(tmp)
        s = run("shard", sb, 2000)
        cb, services = _cart_benches(tmp)
        c = run("cart", cb, 1000)
        for svc in services:
            svc.close()
        for obj in closers:
            obj.close()  # type: ignore[attr-defined]

    ratios = [
        ("hash_key / sha1->int floor", h["hash_key"] / h["floor: sha1 -> int"], "<= 1.10"),
        ("hash_key / seed formula", h["hash_key"] / h["seed: int(hexdigest) % 2**63"], ""),
        ("DHTServer.put memory / dict put", s["DHTServer.put (memory)"] / s["floor: dict put"], ""),
        (
            "DHTServer.put lmdb / raw lmdb put (process)",
            s["DHTServer.put (lmdb process)"] / s["floor: raw lmdb put (process)"],
            "",
        ),
        (
            "DHTServer.get lmdb / raw lmdb get (process)",
            s["DHTServer.get (lmdb process)"] / s["floor: raw lmdb get (process)"],
            "",
        ),
        (
            "raw lmdb put: writemap / process (not dhtcart's)",
            s["raw lmdb put (process, writemap: not dhtcart's)"] / s["floor: raw lmdb put (process)"],
            "",
        ),
        (
            "add_item 3-item cart: lmdb process / memory",
            c["CartService.add_item, 3-item cart (lmdb process)"] / c["CartService.add_item, 3-item cart (memory)"],
            "<= 1.3 (issue 16)",
        ),
        (
            "add_item 1000-item / 3-item cart (memory)",
            c["CartService.add_item, 1000-item cart (memory)"] / c["CartService.add_item, 3-item cart (memory)"],
            "seed: ~5x",
        ),
    ]
    goals = {
        "CartService.add_item, 3-item cart (memory)": "<= 15",
        "CartService.add_item, 3-item cart (lmdb process)": "<= 30",
    }
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Run {stamp}, Python {platform.python_version()}, {platform.machine()},"
        f" {rounds} rounds, `python benchmarks/core.py{' --quick' if args.quick else ''}`",
        "",
        "| operation | median µs/op | p90 µs/op | goal |",
        "| --- | ---: | ---: | --- |",
    ]
    lines += [f"| {n} | {m:.3f} | {q:.3f} | {goals.get(n, '')} |" for n, m, q in rows]
    lines += ["", "| ratio (medians) | value | goal |", "| --- | ---: | --- |"]
    lines += [f"| {n} | {v:.2f} | {g} |" for n, v, g in ratios]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
