"""Child processes for the rebalance crash and multi-process tests (not a test module).

Run as ``python tests/rebalance_child.py MODE DIR [options]`` on an LMDB store
directory. Every line it prints is one event, flushed at once, so a parent that
SIGKILLs it reads only whole lines of things that really happened:

``writer``
    Open the store and update and delete its own keys (``--first`` to
    ``--last`` of the data set) with compare-and-set until told to stop,
    printing an intent before each operation and an acknowledgement after it::

        put? KEY VERSION      about to write VERSION (value: value_for(KEY, VERSION))
        put! KEY VERSION      acknowledged
        del? KEY VERSION      about to delete (conditional on VERSION)
        del! KEY              acknowledged

    It deletes only the first quarter of its keys and never re-creates a key
    it finds missing, so a deleted key that reappears is a resurrection.
    Stdin commands: ``pause`` (prints ``paused`` once no operation is in
    flight), ``resume``, ``stop`` (prints ``maxwait SECONDS OPS`` and exits).
    With ``--history FILE`` every operation is recorded there (``docs/verify.md``).

``rebalancer``
    Print ``opening``, open the store (which finishes a migration a killed
    rebalancer left, when the lease is free), print ``ready``, then loop
    ``add_shard`` / ``remove_shard`` / ``set_weight`` with small batches,
    printing ``op ...``, ``progress DONE TOTAL`` and ``done ...``. With
    ``--copies A,B`` every rebalance is ``set_replicas``, alternating between
    ``A`` and ``B`` copies (handles on the old view write by the other path).

``repairer``
    On a replicated store one of whose shard directories the parent deleted:
    print ``opening``, open the store, print ``ready``; rewrite ``--first`` to
    ``--last`` with compare-and-set (the ``put?``/``put!`` lines of the
    writer; the first read of the lost shard's keys makes this handle take it
    out of their replica sets; a write of the same version that a killed
    repairer left pending is finished first: ``finished-pending KEY
    VERSION``); print ``repairing``, run ``repair()`` (the lost
    shard removed from the ring, its copies made again), print ``repaired``;
    add a shard of its own when fewer than ``--shards`` are left (``op add``,
    ``done add``); print ``finished``.

``crashat STEP N OP``
    Open the store, then run one rebalance (``add``, ``remove`` or ``weight``)
    and SIGKILL itself right after the ``N``-th time the protocol step
    ``STEP`` returns: ``freeze``, ``copy``, ``release``, ``take``, ``drop``
    (shard steps), ``publish`` (a new membership document) or ``destroy`` (a
    removed shard's data). The steps of ``open()`` finishing an earlier
    migration count too.

``try OP``
    Open the store and try one rebalance; print ``done`` or ``busy`` (``StoreBusy``).

``race``
    Loop ``add_shard`` then ``remove_shard`` of a shard of its own for
    ``--max-seconds``; print ``ran START END`` (monotonic seconds while it held
    the lease) for every rebalance that ran and ``busy`` for every one refused,
    then ``attempts N``.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``dhtcart`` importable from the tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dhtcart import DHTServerStore, StoreBusy, VersionConflict, hash_key

_OUT = threading.Lock()


def say(*parts: object) -> None:
    """Print one event line, whole, flushed."""
    line = " ".join(str(p) for p in parts) + "\n"
    with _OUT:
        sys.stdout.write(line)
        sys.stdout.flush()


def key_of(i: int) -> int:
    """The ``i``-th key of the test data set."""
    return hash_key(f"crash-key-{i}")


def value_for(key: int, version: int) -> bytes:
    """The value the tests store under ``key`` at ``version`` (so a value proves its version)."""
    return b"%d:%d:" % (key, version) + b"x" * 40


# -- writer ---------------------------------------------------------------------------------


def writer(args: argparse.Namespace) -> None:
    from dhtcart.verify import HistoryRecorder, HistoryWriter

    rng = random.Random(args.seed)
    handle = DHTServerStore.open(args.directory, lock_timeout=30, redirect_timeout=args.redirect_timeout)
    sink = HistoryWriter(args.history) if args.history else None
    store: Any = HistoryRecorder(handle, sink, process=f"writer-{args.seed}") if sink is not None else handle
    keys = [key_of(i) for i in range(args.first, args.last)]
    deletable = set(keys[: len(keys) // 4])
    running = threading.Event()
    running.set()
    stop = threading.Event()
    idle = threading.Event()

    def commands() -> None:
        for line in sys.stdin:
            word = line.strip()
            if word == "pause":
                running.clear()
                idle.wait()
                say("paused")
            elif word == "resume":
                running.set()
            elif word == "stop":
                break
        stop.set()
        running.set()

    threading.Thread(target=commands, daemon=True).start()
    say("ready")
    worst = 0.0
    ops = 0
    while not stop.is_set():
        if not running.is_set():
            idle.set()
            running.wait()
            continue
        idle.clear()
        if not running.is_set():
            continue
        key = rng.choice(keys)
        t0 = time.monotonic()
        rec = store.get(key)
        if rec is not None:
            if key in deletable and rng.random() < 0.2:
                say("del?", key, rec.version)
                store.delete(key, expected_version=rec.version)
                say("del!", key)
            elif args.modify:  # the store's one-step read-modify-write, from the version it finds

                def change(found: Any, key: int = key) -> bytes:
                    version = (found.version if found is not None else 0) + 1
                    say("put?", key, version)  # before the commit, as the compare-and-set below
                    return value_for(key, version)

                after = store.modify(key, change)
                say("put!", key, after.version)
            else:
                version = rec.version + 1
                say("put?", key, version)
                try:
                    store.put(key, value_for(key, version), expected_version=rec.version)
                except VersionConflict:  # pragma: no cover - this process is the only writer of key
                    say("conflict", key)
                    raise
                say("put!", key, version)
        worst = max(worst, time.monotonic() - t0)
        ops += 1
        idle.set()
        time.sleep(0.001)
    say("maxwait", f"{worst:.3f}", ops)
    if sink is not None:
        sink.close()
    handle.close()


# -- rebalancer -----------------------------------------------------------------------------


def _one_rebalance(store: DHTServerStore, rng: random.Random, names: Any, **kw: Any) -> str:
    shards = sorted(store.servers)
    batch = rng.choice([4, 9, 16])
    if len(shards) < 3:
        op = "add"
    elif len(shards) > 5:
        op = "remove"
    else:
        op = rng.choice(["add", "remove", "weight", "replicas"] if store.replicas > 1 else ["add", "remove", "weight"])
    if op == "replicas":
        n = 3 if store.replicas == 2 else 2
        say("op replicas", n)
        store.set_replicas(n, batch_size=batch, **kw)
    elif op == "add":
        name = next(names)
        say("op add", name)
        store.add_shard(name, weight=rng.choice([1, 1, 2]), batch_size=batch, **kw)
    elif op == "remove":
        name = rng.choice(shards)
        say("op remove", name)
        store.remove_shard(name, batch_size=batch, **kw)
    else:
        name = rng.choice(shards)
        weight = rng.choice([1, 2, 3])
        say("op weight", name, weight)
        store.set_weight(name, weight, batch_size=batch, **kw)
    return op


def rebalancer(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    say("opening")
    store = DHTServerStore.open(args.directory, lock_timeout=30)
    say("ready", len(store.servers))
    deadline = time.monotonic() + args.max_seconds
    names = (f"s{args.seed}x{i}" for i in range(1_000_000))

    def progress(done: int, total: int) -> None:
        say("progress", done, total)

    copies = [int(n) for n in args.copies.split(",")] if args.copies else []
    while time.monotonic() < deadline:
        try:
            if copies:
                n = copies[1] if store.replicas == copies[0] else copies[0]
                say("op replicas", n)
                store.set_replicas(n, batch_size=rng.choice([4, 9, 16]), progress=progress)
                op = "replicas"
            else:
                op = _one_rebalance(store, rng, names, progress=progress)
        except StoreBusy:  # a writer holds the lease, finishing a batch a killed child left
            say("busy")
            time.sleep(0.01)
            continue
        say("done", op)
    store.close()


# -- repairer -------------------------------------------------------------------------------


def repairer(args: argparse.Namespace) -> None:
    say("opening")
    store = DHTServerStore.open(args.directory, lock_timeout=30)
    say("ready", len(store.servers))
    for i in range(args.first, args.last):
        key = key_of(i)
        rec = store.get(key)
        if rec is None:
            continue
        version = rec.version + 1
        say("put?", key, version)
        try:
            store.put(key, value_for(key, version), expected_version=rec.version)
        except VersionConflict:  # a killed repairer's write of this version, left pending, was
            rec = store.get(key)  # finished first (the values are the version's, so it is this one)
            assert rec is not None and rec.version == version and rec.value == value_for(key, version), rec
            say("finished-pending", key, version)
        say("put!", key, version)
    say("repairing")
    say("repaired", *store.repair(batch_size=args.batch_size))
    if len(store.ring.nodes) < args.shards:
        name = f"r{args.seed}"
        say("op add", name)
        store.add_shard(name, batch_size=args.batch_size)
        say("done add")
    say("finished")
    store.close()


# -- crash at a chosen step -----------------------------------------------------------------


def _install_crash(step: str, n: int) -> None:
    """SIGKILL this process right after the ``n``-th return of protocol step ``step``."""
    from dhtcart.backends.lmdb import LMDBBackend
    from dhtcart.backends.ownership import FROZEN, NOT_OWNED, OWNED
    from dhtcart.membership import DirectoryMembership

    count = [0]

    def hit() -> None:
        count[0] += 1
        if count[0] == n:
            say("killed at", step, n)
            os.kill(os.getpid(), signal.SIGKILL)

    def kind(changes: Any, expect: Any) -> str | None:
        if not changes:
            return None
        state = changes[0][2]
        if state == FROZEN:
            return "freeze"
        if state == NOT_OWNED:
            return "release"
        if state == OWNED and expect == NOT_OWNED:
            return "take"
        return None  # an unfreeze after a failure

    real_update = LMDBBackend.update_ownership

    def update_ownership(self: LMDBBackend, token: int, epoch: int, changes: Any = (), expect: Any = None) -> Any:
        result = real_update(self, token, epoch, changes, expect)
        if kind(changes, expect) == step:
            hit()
        return result

    def wrap(cls: Any, attr: str, name: str) -> None:
        real = getattr(cls, attr)

        def wrapper(*a: Any, **k: Any) -> Any:
            result = real(*a, **k)
            if name == step:
                hit()
            return result

        setattr(cls, attr, wrapper)

    LMDBBackend.update_ownership = update_ownership  # type: ignore[method-assign]
    wrap(LMDBBackend, "import_encoded", "copy")  # import_ranges goes through it too
    wrap(LMDBBackend, "drop_ranges", "drop")
    wrap(LMDBBackend, "destroy", "destroy")
    wrap(DirectoryMembership, "publish", "publish")


def crashat(args: argparse.Namespace) -> None:
    _install_crash(args.step, args.n)
    say("opening")
    store = DHTServerStore.open(args.directory, lock_timeout=30)
    say("ready")
    _try(store, args.op, args.name, batch_size=args.batch_size)
    say("survived")  # the step was not reached N times
    store.close()


# -- one rebalance, and two racing ---------------------------------------------------------


def _try(store: DHTServerStore, op: str, name: str, **kw: Any) -> str:
    try:
        if op == "add":
            store.add_shard(name, **kw)
        elif op == "remove":
            store.remove_shard(name, **kw)
        else:
            store.set_weight(name, 3, **kw)
    except StoreBusy:
        return "busy"
    return "done"


def try_once(args: argparse.Namespace) -> None:
    store = DHTServerStore.open(args.directory, lock_timeout=args.lock_timeout)
    try:
        say(_try(store, args.op, args.name))
    finally:
        store.close()


def race(args: argparse.Namespace) -> None:
    from dhtcart.membership import DirectoryMembership

    held: list[float] = []
    real_try = DirectoryMembership.try_lease

    def try_lease(self: DirectoryMembership, holder: str) -> Any:
        lease = real_try(self, holder)
        if lease is not None:
            held.append(time.monotonic())  # after it is ours
            real_release = lease.release

            def release() -> None:
                if len(held) % 2:
                    held.append(time.monotonic())  # before it is given up
                real_release()

            lease.release = release  # type: ignore[method-assign]
        return lease

    DirectoryMembership.try_lease = try_lease  # type: ignore[method-assign]
    store = DHTServerStore.open(args.directory, lock_timeout=args.lock_timeout)
    try:
        deadline = time.monotonic() + args.max_seconds
        attempts = 0
        while time.monotonic() < deadline:
            attempts += 1
            op = "remove" if args.name in store.servers else "add"
            held.clear()
            if _try(store, op, args.name, batch_size=50) == "done":
                say("ran", f"{held[0]:.6f}", f"{held[1]:.6f}", op)
            else:
                say("busy")
                time.sleep(0.002)
        say("attempts", attempts)
    finally:
        store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["writer", "rebalancer", "repairer", "crashat", "try", "race"])
    parser.add_argument("directory")
    parser.add_argument("step", nargs="?", default="copy")
    parser.add_argument("n", nargs="?", type=int, default=1)
    parser.add_argument("op", nargs="?", default="add", choices=["add", "remove", "weight"])
    parser.add_argument("--name", default="extra")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--last", type=int, default=1000)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--lock-timeout", type=float, default=10.0)
    parser.add_argument("--redirect-timeout", type=float, default=15.0)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--copies", default="", help="rebalancer: only set_replicas, alternating A,B")
    parser.add_argument("--shards", type=int, default=4, help="repairer: add a shard when fewer are left")
    parser.add_argument("--history", default="", help="writer: record every operation to this file")
    parser.add_argument("--modify", action="store_true", help="writer: write with store.modify, not get + cas")
    args = parser.parse_args(argv)
    modes = {
        "writer": writer,
        "rebalancer": rebalancer,
        "repairer": repairer,
        "crashat": crashat,
        "try": try_once,
        "race": race,
    }
    if args.mode == "try":
        args.op = args.step  # ``try OP``
    modes[args.mode](args)


if __name__ == "__main__":
    main()
