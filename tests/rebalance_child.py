"""Child process for the rebalance crash and multi-process tests (not a test module).

Run as ``python tests/rebalance_child.py MODE DIR [options]`` on an LMDB store
directory. Every line it prints is one event, flushed at once, so a parent that
SIGKILLs it reads only whole lines of things that really happened:

``crash``
    Print ``opening``, open the store (which finishes an interrupted rebalance
    first), print ``ready``, then loop forever: ``add_shard`` / ``remove_shard`` /
    ``set_weight`` with small batches, printing ``op ...``, ``progress DONE
    TOTAL`` and ``done ...``, while a writer thread updates and deletes keys
    with compare-and-set and prints an intent before each operation and an
    acknowledgement after it returns::

        put? KEY VERSION      about to write VERSION (value: value_for(KEY, VERSION))
        put! KEY VERSION      acknowledged
        del? KEY VERSION      about to delete (conditional on VERSION)
        del! KEY              acknowledged

    The writer deletes only keys of the first quarter of the data set (so the
    store never empties, however many rounds run) and never re-creates a key it
    finds missing, so a deleted key that reappears is a resurrection. The
    process exits by itself after ``--max-seconds`` if nobody kills it.

``try OP``
    Open the store and try one rebalance (``add``, ``remove`` or ``weight``);
    print ``done`` or ``busy`` (``StoreBusy``) and exit 0.

``hold``
    Open the store, print ``open``, then obey stdin lines: ``add NAME`` tries
    that rebalance and prints ``done`` or ``busy``; ``close`` (or end of input)
    closes the store and exits.

``slow``
    Open the store and run one ``add_shard`` with tiny batches and a sleep in the
    progress callback, printing ``progress ...`` lines, then ``done``.

``race``
    Open the store, wait a moment (so that a sibling opens it too), then try
    ``add_shard`` over and over for ``--max-seconds``; print ``won NAME`` for
    every attempt that was not refused, then ``attempts N``; keep the store open
    1.5 s more (while the sibling is still trying), then close it.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from pathlib import Path

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


def _writer(store: DHTServerStore, keys: list[int], rng: random.Random, stop: threading.Event) -> None:
    deletable = set(keys[: len(keys) // 4])  # the rest always stays, however long the run
    while not stop.is_set():
        key = rng.choice(keys)
        rec = store.get(key)
        if rec is None:
            continue  # deleted earlier: never bring it back
        if key in deletable and rng.random() < 0.3:
            say("del?", key, rec.version)
            store.delete(key, expected_version=rec.version)
            say("del!", key)
        else:
            version = rec.version + 1
            say("put?", key, version)
            try:
                store.put(key, value_for(key, version), expected_version=rec.version)
            except VersionConflict:  # pragma: no cover - this thread is the only writer
                say("conflict", key)
                raise
            say("put!", key, version)
        time.sleep(0.0005)


def crash(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    say("opening")  # open() finishes an interrupted rebalance first: a moment worth killing
    store = DHTServerStore.open(args.directory, lock_timeout=30)
    say("ready", len(store.servers))
    keys = [key_of(i) for i in range(args.keys)]
    stop = threading.Event()
    writer = threading.Thread(target=_writer, args=(store, keys, random.Random(args.seed + 1), stop))
    writer.daemon = True
    writer.start()
    deadline = time.monotonic() + args.max_seconds
    names = (f"s{args.seed}x{i}" for i in range(1_000_000))

    def progress(done: int, total: int) -> None:
        say("progress", done, total)

    while time.monotonic() < deadline:
        shards = sorted(store.servers)
        batch = rng.choice([4, 9, 16])
        if len(shards) < 3:
            op = "add"
        elif len(shards) > 5:
            op = "remove"
        else:
            op = rng.choice(["add", "remove", "weight"])
        if op == "add":
            name = next(names)
            say("op add", name)
            store.add_shard(name, weight=rng.choice([1, 1, 2]), batch_size=batch, progress=progress)
        elif op == "remove":
            name = rng.choice(shards)
            say("op remove", name)
            store.remove_shard(name, batch_size=batch, progress=progress)
        else:
            name = rng.choice(shards)
            weight = rng.choice([1, 2, 3])
            say("op weight", name, weight)
            store.set_weight(name, weight, batch_size=batch, progress=progress)
        say("done", op)
    stop.set()
    writer.join()
    store.close()


def _try(store: DHTServerStore, op: str, name: str) -> str:
    try:
        if op == "add":
            store.add_shard(name)
        elif op == "remove":
            store.remove_shard(name)
        else:
            store.set_weight(name, 3)
    except StoreBusy:
        return "busy"
    return "done"


def try_once(args: argparse.Namespace) -> None:
    store = DHTServerStore.open(args.directory, lock_timeout=args.lock_timeout)
    try:
        say(_try(store, args.op, args.name))
    finally:
        store.close()


def hold(args: argparse.Namespace) -> None:
    store = DHTServerStore.open(args.directory, lock_timeout=args.lock_timeout)
    say("open")
    try:
        for line in sys.stdin:
            words = line.split()
            if not words or words[0] == "close":
                break
            say(_try(store, words[0], words[1]))
    finally:
        store.close()
    say("closed")


def slow(args: argparse.Namespace) -> None:
    store = DHTServerStore.open(args.directory, lock_timeout=args.lock_timeout)

    def progress(done: int, total: int) -> None:
        say("progress", done, total)
        time.sleep(args.pause)

    report = store.add_shard(args.name, batch_size=args.batch_size, progress=progress)
    store.close()
    say("done", report.keys_moved)


def race(args: argparse.Namespace) -> None:
    store = DHTServerStore.open(args.directory, lock_timeout=args.lock_timeout)
    try:
        time.sleep(0.5)  # let the sibling process open the store too
        deadline = time.monotonic() + args.max_seconds
        attempts = 0
        while time.monotonic() < deadline:
            name = f"{args.name}{attempts}"
            attempts += 1
            if _try(store, "add", name) == "done":
                say("won", name)
        say("attempts", attempts)
        time.sleep(1.5)  # stay open while the sibling finishes its own attempts
    finally:
        store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["crash", "try", "hold", "slow", "race"])
    parser.add_argument("directory")
    parser.add_argument("op", nargs="?", default="add", choices=["add", "remove", "weight"])
    parser.add_argument("--name", default="extra")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keys", type=int, default=3000)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--lock-timeout", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--pause", type=float, default=0.005)
    args = parser.parse_args(argv)
    {"crash": crash, "try": try_once, "hold": hold, "slow": slow, "race": race}[args.mode](args)


if __name__ == "__main__":
    main()
