"""Placement at scale, ring arithmetic only: 1,000 shards on 100 hosts, with and without partition doubling.

    python benchmarks/placement_sim.py            # grow 10 -> 1,000 shards, then remove whole hosts
    python benchmarks/placement_sim.py --quick    # grow to 200 shards

No data is stored: each step computes the ring a store would have and the
arcs that change owner (``old.moves(new)``), so "moved" is the share of the
key space that changes shards, which is what a store's keys (uniform hashes)
follow. Two policies, from the same start (a ``PartitionRing`` of 4,096
partitions and 10 shards):

* ``fixed``: 4,096 partitions for ever (dhtcart 0.1);
* ``doubling``: the store's policy, ``PartitionRing.doubled()`` before any
  change that would leave fewer than 64 partitions per unit of weight.

Shards are named ``h<host>-s<i>`` and placed on 100 hosts round-robin; weights
are 1. At each checkpoint it reports: max/mean share per shard and per host,
and, over the adds (or removals) since the previous checkpoint, the median and
worst moved share divided by the ideal (1/(n+1) for an add to n shards, the
removed shard's share for a removal), and whether every move went only to the
added shard (from the removed one). The removals take out whole hosts (10
shards each, one at a time), as decommissioning a machine would.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dhtcart.hashing import KEY_SPACE
from dhtcart.ring import MAX_PARTITIONS, PARTITIONS_PER_WEIGHT, PartitionRing

HOSTS = 100


def _name(i: int) -> str:
    return f"h{i % HOSTS}-s{i // HOSTS}"


def _shares(ring: PartitionRing) -> dict[str, float]:
    counts = ring.counts()
    return {n: c / ring.partitions for n, c in counts.items()}


def _balance(ring: PartitionRing) -> tuple[float, float]:
    shares = _shares(ring)
    mean = 1 / len(shares)
    hosts: dict[str, float] = {}
    for n, s in shares.items():
        host = n.split("-")[0]
        hosts[host] = hosts.get(host, 0.0) + s
    host_mean = 1 / len(hosts)
    return max(shares.values()) / mean, max(hosts.values()) / host_mean


def _change(ring: PartitionRing, op: str, name: str, doubling: bool) -> PartitionRing:
    new = ring.copy()
    if doubling:
        total = len(new.nodes) + (1 if op == "add" else -1)
        while new.partitions < PARTITIONS_PER_WEIGHT * total and new.partitions < MAX_PARTITIONS:
            new = new.doubled()
    if op == "add":
        new.add_node(name)
    else:
        new.remove_node(name)
    return new


def run(target: int, checkpoints: list[int]) -> list[dict[str, object]]:
    rows = []
    for policy in ("fixed", "doubling"):
        ring = PartitionRing([_name(i) for i in range(10)], partitions=4096)
        ratios: list[float] = []
        only_new = True
        t0 = time.perf_counter()
        for n in range(10, target):
            name = _name(n)
            new = _change(ring, "add", name, policy == "doubling")
            moves = ring.moves(new)
            moved = sum(m.size for m in moves) / KEY_SPACE
            ratios.append(moved / (1 / (n + 1)))
            only_new &= all(m.target == name for m in moves)
            ring = new
            if n + 1 in checkpoints:
                shard_bal, host_bal = _balance(ring)
                rows.append(
                    {
                        "policy": policy,
                        "step": f"grow to {n + 1}",
                        "partitions": ring.partitions,
                        "shard max/mean": shard_bal,
                        "host max/mean": host_bal,
                        "moved/ideal median": statistics.median(ratios),
                        "moved/ideal worst": max(ratios),
                        "only to the new shard": only_new,
                        "seconds": time.perf_counter() - t0,
                    }
                )
                ratios, only_new = [], True
        # decommission whole hosts, one shard at a time
        for host in range(3):
            ratios, only_old = [], True
            for name in [n for n in sorted(ring.nodes) if n.split("-")[0] == f"h{host}"]:
                share = _shares(ring)[name]
                new = _change(ring, "remove", name, policy == "doubling")
                moves = ring.moves(new)
                moved = sum(m.size for m in moves) / KEY_SPACE
                ratios.append(moved / share)
                only_old &= all(m.source == name for m in moves)
                ring = new
            shard_bal, host_bal = _balance(ring)
            rows.append(
                {
                    "policy": policy,
                    "step": f"remove host h{host} ({len(ring.nodes)} left)",
                    "partitions": ring.partitions,
                    "shard max/mean": shard_bal,
                    "host max/mean": host_bal,
                    "moved/ideal median": statistics.median(ratios),
                    "moved/ideal worst": max(ratios),
                    "only to the new shard": only_old,
                    "seconds": time.perf_counter() - t0,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    target = 200 if args.quick else 1000
    checkpoints = [c for c in (50, 100, 200, 400, 700, 1000) if c <= target]
    rows = run(target, checkpoints)
    print(f"# placement simulation, {time.strftime('%Y-%m-%d')}: {HOSTS} hosts, 10 -> {target} shards, weight 1")
    print(
        "\n| policy | step | partitions | shard max/mean | host max/mean | moved/ideal median | worst"
        " | moves only new (add) / only old (remove) |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(
            f"| {r['policy']} | {r['step']} | {r['partitions']:,} | {r['shard max/mean']:.3f}"
            f" | {r['host max/mean']:.3f} | {r['moved/ideal median']:.3f} | {r['moved/ideal worst']:.3f}"
            f" | {'yes' if r['only to the new shard'] else 'no'} |"
        )


if __name__ == "__main__":
    main()
