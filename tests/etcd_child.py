"""Child processes of the etcd tests (not a test module). Each opens the store from its location alone
(the ``etcd://`` URL), as a client on another host would, and prints one event per line, flushed.

``incr LOCATION --keys K --seed N --history FILE --stop FILE --min-ops M``
    Add one to random shared counters by compare-and-set (retrying on
    conflict), recording every read and compare-and-set in ``FILE``
    (``docs/verify.md``'s format), until the file ``--stop`` exists *and* it
    has made ``M`` increments: it runs until the work is done, not for a
    time. Prints ``ops N`` every 10 increments, then ``acked {key: n}`` and
    ``maxwait SECONDS OPS``. Exits 3 past ``--ceiling`` seconds.

``rebalance LOCATION --count N --template T``
    Run ``N`` rebalances, cycling add / reweight / remove of shards
    ``e<seed>-<i>`` whose URL is ``T.format(name=...)``. Prints ``start I OP
    NAME``, ``progress I`` once per rebalance after its first batch (with
    ``--hold-at I --hold-dir D``: then ``holding I``, and it waits for the file
    ``D/go-I`` before the next batch, its lease held), ``done I
    OP NAME EPOCH``, and ``error I TYPE MESSAGE`` for a typed refusal
    (``StoreBusy``, ``LeaseLost``, ``ShardUnavailable``), after which it tries
    again (a migration that a failed attempt published is finished by the
    next). Any other exception ends it with a traceback. ``rebalances N`` at
    the end; exits 3 past ``--ceiling`` seconds.

``pausing LOCATION --backend URL --lease-ttl S``
    Add shard ``late`` with batches of 50 and SIGSTOP itself right after the
    first freeze (the parent sends SIGCONT). From then on every shard step
    and membership publication it attempts prints ``applied STEP`` or
    ``refused STEP TYPE``; at the end ``stopped TYPE`` (the rebalance
    raised) or ``completed``.

``finish LOCATION --lease-ttl S``
    Open the store and finish the migration a stopped rebalancer left,
    retrying while its lease is still held; prints ``finished EPOCH``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``dhtcart`` and ``tests`` importable from the tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dhtcart import DHTServerStore, ShardExists, ShardNotFound, ShardUnavailable, StoreBusy, VersionConflict
from tests.live_child import History, counter_key


def say(*parts: object) -> None:
    print(*parts, flush=True)


def incr(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    store = DHTServerStore.open(args.location, lock_timeout=30)
    keys = [counter_key(i) for i in range(args.keys)]
    acked: dict[int, int] = dict.fromkeys(keys, 0)
    worst, ops = 0.0, 0
    ns = time.monotonic_ns
    stop = Path(args.stop)
    ceiling = time.monotonic() + args.ceiling
    with open(args.history, "w", encoding="utf-8") as out:
        history = History(out, args.seed)
        while not (ops >= args.min_ops and stop.exists()):
            if time.monotonic() > ceiling:
                say("ceiling", ops)
                sys.exit(3)
            key = rng.choice(keys)
            t0 = time.monotonic()
            while True:
                history.event("invoke", "read", key, ns())
                rec = store.get(key)
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
                history.event("ok", "cas", key, ns(), expected=version, value=new, version=got)
                break
            acked[key] += 1
            worst = max(worst, time.monotonic() - t0)
            ops += 1
            if ops % 10 == 0:
                say("ops", ops)
    say("acked", json.dumps({str(k): v for k, v in acked.items()}))
    say("maxwait", f"{worst:.3f}", ops, json.dumps(store.routing_stats()))
    store.close()


def rebalance(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    store = DHTServerStore.open(args.location, lock_timeout=30, lease_ttl=args.lease_ttl)
    ceiling = time.monotonic() + args.ceiling
    cycle = ["add", "weight", "remove"]
    holds = {int(i) for i in args.hold_at.split(",") if i}
    done = 0
    added: list[str] = []
    while done < args.count:
        if time.monotonic() > ceiling:
            say("ceiling", done)
            sys.exit(3)
        i = done + 1
        op = cycle[done % 3]
        name = f"e{args.seed}-{i}" if op == "add" else (added[-1] if added else "")
        reported = []

        def progress(moved: int, total: int, i: int = i, reported: list[int] = reported) -> None:
            if not reported:
                reported.append(moved)
                say("progress", i)
                if i in holds and args.hold_dir:  # between two batches, the lease held: the parent acts
                    holds.discard(i)
                    say("holding", i)
                    go = Path(args.hold_dir) / f"go-{i}"
                    until = time.monotonic() + 120
                    while not go.exists() and time.monotonic() < until:
                        time.sleep(0.01)

        say("start", i, op, name)
        try:
            if op == "add":
                backend = args.template.format(name=name)
                with contextlib.suppress(ShardExists):  # an earlier attempt published it; this one finished it
                    store.add_shard(name, weight=rng.choice([1, 2]), backend=backend, batch_size=40, progress=progress)
                added.append(name)
            elif op == "weight":
                store.set_weight(name, rng.choice([2, 3]), batch_size=40, progress=progress)
            else:
                with contextlib.suppress(ShardNotFound):
                    store.remove_shard(name, batch_size=40, progress=progress)
                added.remove(name)
        except (StoreBusy, ShardUnavailable) as exc:  # LeaseLost is a StoreBusy
            say("error", i, type(exc).__name__, str(exc).replace("\n", " ")[:300])
            time.sleep(0.5)
            continue
        done += 1
        say("done", i, op, name, store.epoch)
    say("rebalances", done)
    store.close()


def pausing(args: argparse.Namespace) -> None:
    from dhtcart.backends.ownership import FROZEN
    from dhtcart.backends.redis import RedisBackend
    from dhtcart.errors import DHTCartError
    from dhtcart.membership.etcd import EtcdMembership

    resumed = [False]

    def watched(cls: Any, step: str) -> None:
        real = getattr(cls, step)

        def call(*a: Any, **k: Any) -> Any:
            try:
                out = real(*a, **k)
            except DHTCartError as exc:
                if resumed[0]:
                    say("refused", step, type(exc).__name__)
                raise
            if resumed[0]:
                say("applied", step)
            elif step == "update_ownership" and len(a) > 3 and a[3] and a[3][0][2] == FROZEN:
                say("frozen", *(f"{lo}:{hi}" for lo, hi, _, _ in a[3]))
                os.kill(os.getpid(), signal.SIGSTOP)  # the parent lets the lease expire, then SIGCONTs
                resumed[0] = True
                say("resumed")
            return out

        setattr(cls, step, call)

    for step in ("update_ownership", "import_ranges", "import_encoded", "drop_ranges", "claim"):
        if hasattr(RedisBackend, step):
            watched(RedisBackend, step)
    watched(EtcdMembership, "publish")
    store = DHTServerStore.open(args.location, lease_ttl=args.lease_ttl)
    try:
        store.add_shard("late", backend=args.backend, batch_size=50)
    except DHTCartError as exc:
        say("stopped", type(exc).__name__, str(exc).replace("\n", " ")[:300])
    else:
        say("completed")
    store.close()


def finish(args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.ceiling
    store = DHTServerStore.open(args.location, lease_ttl=args.lease_ttl)  # finishes it, if the lease is free
    while store.rebalance_status().migrating:
        if time.monotonic() > deadline:
            say("ceiling")
            sys.exit(3)
        try:
            store.finish_rebalance()
        except StoreBusy:
            time.sleep(0.1)
    say("finished", store.epoch)
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["incr", "rebalance", "pausing", "finish"])
    parser.add_argument("location")
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--history", default="history.jsonl")
    parser.add_argument("--stop", default="stop")
    parser.add_argument("--min-ops", type=int, default=100)
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--template", default="")
    parser.add_argument("--backend", default="")
    parser.add_argument("--lease-ttl", type=float, default=5.0)
    parser.add_argument("--hold-at", default="", help="rebalances (1-based, comma-separated) to hold in")
    parser.add_argument("--hold-dir", default="", help="where the go-<i> files that end a hold appear")
    parser.add_argument("--ceiling", type=float, default=150.0)
    args = parser.parse_args()
    {"incr": incr, "rebalance": rebalance, "pausing": pausing, "finish": finish}[args.mode](args)


if __name__ == "__main__":
    main()
