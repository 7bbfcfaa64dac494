"""Child processes of the live-rebalance tests (not a test module).

``python tests/live_child.py incr LOCATION --seconds S --keys K --seed N --history FILE [--stop-file F --min-ops M]``
    Open the store from ``LOCATION`` alone (a directory or the membership's
    ``redis://`` URL) and, for ``S`` seconds, add one to random shared
    counters (``live-counter-0`` .. ``K-1``) by compare-and-set, retrying on
    conflict. With ``--stop-file``, run until that file exists and at least
    ``M`` increments were acknowledged instead (``S`` is then the ceiling).
    Every read and compare-and-set goes to ``FILE`` as a history
    (one JSON object per line, ``docs/verify.md``'s format, with monotonic
    ``time`` in ns). Print ``writing`` after the first increment; at the end
    ``acked {key: increments}`` as JSON, ``maxwait SECONDS OPS`` and ``end
    stopped`` (by the stop file) or ``end deadline``.

``python tests/live_child.py rebalance LOCATION --seconds S --seed N [--rebalances R] [--url-template T]``
    For ``S`` seconds (or until ``R`` rebalances are done, ``S`` then being the
    ceiling), loop add_shard / set_weight / remove_shard on the store;
    new shards get ``T.format(i=...)`` as their URL (default: a new LMDB
    directory). Print ``begin T0`` (``time.monotonic_ns()``) before the first,
    ``done OP NAME`` per rebalance and ``busy`` when another rebalancer held
    the lease; at the end ``rebalances N T1``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import IO, Any

if __package__ in (None, ""):  # run as a script: make ``dhtcart`` importable from the tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dhtcart import DHTServerStore, ShardUnavailable, StoreBusy, VersionConflict, hash_key


def counter_key(i: int) -> int:
    return hash_key(f"live-counter-{i}")


class History:
    """Writes history events as JSON lines (the time is taken by the caller, next to the call)."""

    def __init__(self, out: IO[str], process: int) -> None:
        self.out = out
        self.process = process

    def event(self, kind: str, f: str, key: int, t: int, **fields: Any) -> None:
        record = {"process": self.process, "type": kind, "f": f, "key": key, "time": t, **fields}
        self.out.write(json.dumps(record) + "\n")


def _why(t0: float, f: str, key: int, exc: Exception) -> None:
    """Tell stderr why a tolerated call raised, and how long its increment had waited."""
    print(f"raised after {time.monotonic() - t0:.3f} s: {f} of key {key}: {exc!r}", file=sys.stderr, flush=True)


def incr(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    store = DHTServerStore.open(args.location, lock_timeout=30)
    keys = [counter_key(i) for i in range(args.keys)]
    acked: dict[int, int] = dict.fromkeys(keys, 0)
    raised: dict[int, int] = dict.fromkeys(keys, 0)  # increments whose outcome is unknown (the call raised)
    worst, ops = 0.0, 0
    ns = time.monotonic_ns
    with open(args.history, "w", encoding="utf-8") as out:
        history = History(out, args.seed)
        deadline = time.monotonic() + args.seconds
        stop = Path(args.stop_file) if args.stop_file else None
        stopped = False
        while time.monotonic() < deadline:
            if stop is not None and ops >= args.min_ops and stop.exists():
                stopped = True
                break
            key = rng.choice(keys)
            t0 = time.monotonic()
            done = False
            while True:
                history.event("invoke", "read", key, ns())
                try:
                    rec = store.get(key)
                except ShardUnavailable as exc:  # with --tolerate: no copy reached in time (an info read)
                    if not args.tolerate:
                        raise
                    history.event("info", "read", key, ns())
                    _why(t0, "read", key, exc)
                    break
                t = ns()
                if rec is None:
                    history.event("ok", "read", key, t, value=None, version=0)
                    current, version = 0, 0
                else:
                    history.event("ok", "read", key, t, value=rec.value.decode(), version=rec.version)
                    current, version = int(rec.value), rec.version
                new = str(current + 1)
                history.event("invoke", "cas", key, ns(), expected=version, value=new)
                try:
                    got = store.put(key, new.encode(), expected_version=version)
                except VersionConflict:
                    history.event("fail", "cas", key, ns(), expected=version, value=new)
                    continue
                except ShardUnavailable as exc:  # with --tolerate: a shard died under the write: unknown outcome
                    if not args.tolerate:
                        raise
                    history.event("info", "cas", key, ns(), expected=version, value=new)
                    _why(t0, "cas", key, exc)
                    raised[key] += 1
                    break
                history.event("ok", "cas", key, ns(), expected=version, value=new, version=got)
                done = True
                break
            if not done:
                worst = max(worst, time.monotonic() - t0)
                continue
            acked[key] += 1
            worst = max(worst, time.monotonic() - t0)
            ops += 1
            if ops == 1:
                print("writing", flush=True)
    print("acked", json.dumps({str(k): v for k, v in acked.items()}), flush=True)
    print("raised", json.dumps({str(k): v for k, v in raised.items()}), flush=True)
    print("maxwait", f"{worst:.3f}", ops, flush=True)
    print("end", "stopped" if stopped else "deadline", flush=True)
    store.close()


def rebalance(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    store = DHTServerStore.open(args.location, lock_timeout=30)
    deadline = time.monotonic() + args.seconds
    n = 0
    i = 0
    print("begin", time.monotonic_ns(), flush=True)
    while time.monotonic() < deadline and (args.rebalances is None or n < args.rebalances):
        shards = sorted(store.servers)
        added = [s for s in shards if s.startswith("live")]
        if not added:
            op = "add"
        elif len(added) >= 2:
            op = "remove"
        else:
            op = rng.choice(["add", "remove", "weight", *(["replicas"] if args.replicas else [])])
        try:
            if op == "replicas":
                name = str(3 if store.replicas == 2 else 2)
                store.set_replicas(int(name), batch_size=rng.choice([20, 100]))
            elif op == "add":
                name = f"live{args.seed}-{i}"
                i += 1
                backend = args.url_template.format(i=i, name=name) if args.url_template else None
                store.add_shard(name, weight=rng.choice([1, 2]), backend=backend, batch_size=rng.choice([20, 100]))
            elif op == "remove":
                name = rng.choice(added)
                store.remove_shard(name, batch_size=rng.choice([20, 100]))
            else:
                name = rng.choice(shards)
                store.set_weight(name, rng.choice([1, 2, 3]), batch_size=rng.choice([20, 100]))
        except StoreBusy:
            print("busy", flush=True)
            time.sleep(0.01)
            continue
        n += 1
        print("done", op, name, store.epoch, flush=True)
    print("rebalances", n, time.monotonic_ns(), flush=True)
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["incr", "rebalance"])
    parser.add_argument("location")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--history", default="history.jsonl")
    parser.add_argument("--url-template", default="")
    parser.add_argument("--stop-file", default="")
    parser.add_argument("--min-ops", type=int, default=0)
    parser.add_argument("--rebalances", type=int, default=None)
    parser.add_argument(
        "--tolerate", action="store_true", help="incr: a write of unknown outcome is recorded, not fatal"
    )
    parser.add_argument("--replicas", type=int, default=None, help="rebalance: also change the number of copies")
    args = parser.parse_args()
    {"incr": incr, "rebalance": rebalance}[args.mode](args)


if __name__ == "__main__":
    main()
