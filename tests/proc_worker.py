"""Child-process workers for the concurrency and crash tests (not a test module).

Usage: ``python tests/proc_worker.py MODE DIR [ARGS...]``

``cas DIR N`` / ``naive DIR N PAUSE``
    Open the LMDB store in DIR, print ``ready``, wait for a line on stdin,
    then add one to the counter ``hash_key("counter")`` N times, with
    compare-and-set (``cas``) or by read-then-put (``naive``). Prints
    ``done RETRIES``.
``modify DIR N``
    Like ``cas``, with the store's one-step read-modify-write (``store.modify``).
``modify-hang DIR``
    Open the store, print ``ready``, then modify ``hash_key("counter")`` with
    a change that prints ``inside`` and sleeps: the parent SIGKILLs it inside
    the write transaction.
``cas-until DIR K SEED [modify]``
    Open the store in DIR, print ``ready``, wait for a line on stdin, then add
    one to a random counter among ``hash_key("counter-0")`` ... ``counter-{K-1}``
    with compare-and-set (with ``modify``: the store's ``modify``), until a
    second line arrives on stdin; print ``acked`` after the first acknowledged
    increment, and ``done ACKS RETRIES`` at the end (ACKS: acknowledged
    increments; RETRIES: 0 with ``modify``, whose retries the store makes).
``modify-until DIR``
    Like ``modify`` on ``hash_key("counter")``, until a second line arrives on
    stdin; print ``done ACKS``.
``cart-adds DIR N CUSTOMER``
    Open ``CartService.open(DIR)``, print ``ready``, wait for stdin, add one
    unit of ``sku`` to CUSTOMER's cart N times; print ``done``.
``cart-crash DIR SEED``
    Open ``CartService.open(DIR)``, print ``ready``, then add one unit of
    random items to random customers' carts forever, printing
    ``added CUSTOMER ITEM COUNT`` (flushed) after each add returns. Killed by
    the parent.

Every mode takes ``--history FILE --process N`` at the end: then each store
operation is recorded (``dhtcart.verify.HistoryRecorder``, as process N)
into FILE, line by line, so a kill leaves every event recorded so far.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from dhtcart import CartService, DHTServerStore, hash_key
    from dhtcart.verify import HistoryRecorder, HistoryWriter
    from tests.helpers import cas_increment, naive_increment

    recording: tuple[str, int] | None = None
    if "--history" in argv:
        at = argv.index("--history")
        recording = (argv[at + 1], int(argv[argv.index("--process") + 1]))
        argv = argv[:at]

    def recorded(store: DHTServerStore) -> Any:
        """The store itself, or a recorder over it when --history was given."""
        if recording is None:
            return store
        return HistoryRecorder(store, HistoryWriter(recording[0]), process=recording[1])

    mode, directory = argv[0], argv[1]
    if mode in ("cas", "naive"):
        n = int(argv[2])
        pause = float(argv[3]) if mode == "naive" else 0.0
        key = hash_key("counter")
        with DHTServerStore.open(directory) as store:
            target = recorded(store)
            print("ready", flush=True)
            sys.stdin.readline()
            retries = 0
            for _ in range(n):
                if mode == "cas":
                    retries += cas_increment(target, key)
                else:
                    naive_increment(target, key, pause)
            print(f"done {retries}", flush=True)
        return 0
    if mode == "modify":
        n = int(argv[2])
        key = hash_key("counter")
        with DHTServerStore.open(directory) as store:
            target = recorded(store)
            print("ready", flush=True)
            sys.stdin.readline()
            for _ in range(n):
                target.modify(key, lambda rec: b"%d" % (int(rec.value) + 1 if rec is not None else 1))
            print("done 0", flush=True)
        return 0
    if mode == "modify-until":  # increments until "stop" on stdin (600 s at most), then "done <count>"
        import threading
        import time

        key = hash_key("counter")
        stop = threading.Event()
        with DHTServerStore.open(directory) as store:
            target = recorded(store)
            print("ready", flush=True)
            sys.stdin.readline()
            threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
            done, deadline = 0, time.monotonic() + 600
            while not stop.is_set() and time.monotonic() < deadline:
                target.modify(key, lambda rec: b"%d" % (int(rec.value) + 1 if rec is not None else 1))
                done += 1
            print(f"done {done}", flush=True)
        return 0
    if mode in ("modify-hang", "fork-then-hang"):
        import os
        import time

        key = hash_key("counter")
        with DHTServerStore.open(directory) as store:
            store.get(key)  # the shard's environment is open before the fork
            if mode == "fork-then-hang":  # a child that outlives this process, doing nothing
                child = os.fork()
                if child == 0:
                    time.sleep(60)
                    os._exit(0)
                print(f"child {child}", flush=True)
            print("ready", flush=True)

            def hang(rec: Any) -> bytes:
                print("inside", flush=True)
                time.sleep(60)
                return b"never"

            store.modify(key, hang)
        return 0
    if mode == "cas-until":
        import threading

        keys = [hash_key(f"counter-{i}") for i in range(int(argv[2]))]
        rnd = random.Random(int(argv[3]))
        one_step = argv[4:5] == ["modify"]
        stop = threading.Event()
        with DHTServerStore.open(directory) as store:
            target = recorded(store)
            print("ready", flush=True)
            sys.stdin.readline()
            threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
            acks = retries = 0
            while not stop.is_set():
                if one_step:
                    target.modify(rnd.choice(keys), lambda rec: b"%d" % (int(rec.value) + 1 if rec else 1))
                else:
                    retries += cas_increment(target, rnd.choice(keys))
                acks += 1
                if acks == 1:
                    print("acked", flush=True)  # under way: the test starts what it races against now
            print(f"done {acks} {retries}", flush=True)
        return 0
    if mode == "cart-adds":
        n, customer = int(argv[2]), argv[3]
        with DHTServerStore.open(directory) as store:
            carts = CartService(recorded(store))
            print("ready", flush=True)
            sys.stdin.readline()
            for _ in range(n):
                carts.add_item(customer, "sku", "0.10")
            print("done", flush=True)
        return 0
    if mode == "cart-crash":
        rnd = random.Random(int(argv[2]))
        customers = [f"customer-{i}" for i in range(12)]
        items = ["036000291459", "sku-1", "sku-2", "0042"]
        carts = CartService(recorded(DHTServerStore.open(directory)))
        print("ready", flush=True)
        while True:
            customer, item = rnd.choice(customers), rnd.choice(items)
            line = carts.add_item(customer, item, "1.25")
            print(f"added {customer} {item} {line.item_count}", flush=True)
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
