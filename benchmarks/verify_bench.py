"""How long the linearizability checker takes on big histories (goal: 100,000 operations, 100 keys, < 10 s).

Histories come from the simulated register of ``tests/register_sim.py``:
``--processes`` clients with random overlaps, the operation mix of
``dhtcart verify``'s workload, and a share of unknown outcomes (``info``: the
effect happened before, happens later, or never; 1% of them never complete).
Each round checks a fresh history (a new seed) of each setting; the figure
is the median over rounds, with min and max (the machine is shared: other
jobs slow some rounds). A last setting plants one stale read in a valid
history, to time a rejection.

    python benchmarks/verify_bench.py                 # 5 rounds, about a minute
    python benchmarks/verify_bench.py --quick         # 10,000 operations, 1 round
    python benchmarks/verify_bench.py --rounds 7 --markdown
    python benchmarks/verify_bench.py --info 0.1,0.2 --rounds 1   # where the search starts to branch
"""

from __future__ import annotations

import argparse
import copy
import platform
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dhtcart.verify import MIX, check_history
from tests.register_sim import simulate

#: the workload's mix as its histories hold it: a ``modify`` is recorded as the compare-and-set it is
HISTORY_MIX = {f: w for f, w in MIX.items() if f != "modify"}
HISTORY_MIX["cas"] = HISTORY_MIX.get("cas", 0) + MIX.get("modify", 0)


def plant_stale_read(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Make the last ok read of some key return the first value written to that key (long overwritten)."""
    first: dict[Any, tuple[Any, int]] = {}
    invoked: dict[Any, dict[str, Any]] = {}
    for e in events:
        if e["type"] == "invoke":
            invoked[e["process"]] = e
        elif e["type"] == "ok" and e["f"] in ("write", "cas") and e["key"] not in first:
            first[e["key"]] = (invoked[e["process"]]["value"], e["version"])
    out = copy.deepcopy(events)
    for e in reversed(out):
        if e["type"] == "ok" and e["f"] == "read" and e["key"] in first and e["value"] != first[e["key"]][0]:
            e["value"], e["version"] = first[e["key"]]
            return out
    raise RuntimeError("no read to make stale")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--processes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="10,000 operations, 1 round")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument(
        "--info",
        metavar="SHARES",
        help="comma-separated shares of unknown outcomes to measure instead, e.g. 0.1,0.2 (no planted run)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.operations, args.rounds = 10_000, 1
    settings = [("1% info", 0.01, False), ("5% info", 0.05, False), ("1% info, one stale read planted", 0.01, True)]
    if args.info:
        settings = [(f"{float(x):.0%} info", float(x), False) for x in args.info.split(",")]
    samples: dict[str, list[float]] = {name: [] for name, _, _ in settings}
    verdicts: dict[str, set[Any]] = {name: set() for name, _, _ in settings}
    started = datetime.now(timezone.utc)
    for r in range(args.rounds):
        for name, p_info, plant in settings:
            rng = random.Random(1000 * r + int(p_info * 100) + plant)
            events, _ = simulate(
                rng,
                processes=args.processes,
                keys=args.keys,
                operations=args.operations,
                p_info=p_info,
                p_open=0.01,
                mix=HISTORY_MIX,
            )
            if plant:
                events = plant_stale_read(events)
            t0 = time.perf_counter()
            report = check_history(events)
            samples[name].append(time.perf_counter() - t0)
            verdicts[name].add(report.valid if not plant else tuple(sorted(report.anomaly_counts)))
            undecided = f", {len(report.undecided)} keys undecided" if report.undecided else ""
            print(f"round {r + 1} {name}: {samples[name][-1]:.2f} s, valid={report.valid}{undecided}", file=sys.stderr)
    print(
        f"{args.operations:,} operations, {args.keys} keys, {args.processes} processes, {args.rounds} rounds;"
        f" {started:%Y-%m-%d %H:%M} UTC; Python {platform.python_version()} on {platform.machine()}"
    )
    if args.markdown:
        print("\n| history | median s | min s | max s | verdict |\n| --- | ---: | ---: | ---: | --- |")
    for name, times in samples.items():
        verdict = ", ".join(str(v) for v in sorted(verdicts[name], key=str))
        med, lo, hi = statistics.median(times), min(times), max(times)
        if args.markdown:
            print(f"| {name} | {med:.2f} | {lo:.2f} | {hi:.2f} | {verdict} |")
        else:
            print(f"{name:34} median {med:6.2f} s  min {lo:6.2f}  max {hi:6.2f}  verdict {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
