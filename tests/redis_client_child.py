"""Client processes for ``tests/test_redis_distributed.py`` (not a test module).

Each mode opens the persistent store in ``DIR`` the way a client on another
host would: from its ``manifest.json`` alone (the shards' Redis URLs are in it).

Usage: ``python tests/redis_client_child.py MODE DIR [ARGS...]``

``adds DIR N SEED CUSTOMERS ITEMS``
    ``CartService.open(DIR)``; print ``ready {"shards": {name: url}}``; wait for
    a line on stdin; then make N ``add_item`` calls, each to a customer and an
    item picked at random (seeded) from the comma-separated ``CUSTOMERS`` and
    ``ITEMS``, with a random count of 1 to 3. Print
    ``done {"acked": {"customer/item": units}, "calls": n, "errors": [...]}``:
    only adds whose call returned are counted as acknowledged.
``hold DIR``
    ``DHTServerStore.open(DIR)``; print ``ready``; keep the store open until a
    line arrives on stdin; close it; print ``closed``.
``try-open DIR LOCK_TIMEOUT``
    Try ``DHTServerStore.open(DIR, lock_timeout=LOCK_TIMEOUT)``; print
    ``busy MESSAGE`` if it raised :class:`~dhtcart.errors.StoreBusy`, else
    ``opened`` (and close it).

Every output line is flushed at once; a line starting with ``error`` reports
an unexpected exception.
"""

from __future__ import annotations

import json
import random
import sys
import traceback
from collections import Counter
from pathlib import Path


def _say(line: str) -> None:
    print(line, flush=True)


def _adds(directory: str, n: int, seed: int, customers: list[str], items: list[str]) -> None:
    from dhtcart import CartService

    rnd = random.Random(seed)
    acked: Counter[str] = Counter()
    errors: list[str] = []
    with CartService.open(directory) as carts:
        shards = {name: server.url for name, server in carts.store.servers.items()}
        _say("ready " + json.dumps({"shards": shards}))
        sys.stdin.readline()
        for _ in range(n):
            customer, item, count = rnd.choice(customers), rnd.choice(items), rnd.randint(1, 3)
            try:
                carts.add_item(customer, item, "1.25", item_count=count)
            except Exception as exc:  # reported to the parent, never counted as acknowledged
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            acked[f"{customer}/{item}"] += count
    _say("done " + json.dumps({"acked": dict(acked), "calls": n, "errors": errors[:20]}))


def _hold(directory: str) -> None:
    from dhtcart import DHTServerStore

    with DHTServerStore.open(directory):
        _say("ready")
        sys.stdin.readline()
    _say("closed")


def _try_open(directory: str, lock_timeout: float) -> None:
    from dhtcart import DHTServerStore, StoreBusy

    try:
        store = DHTServerStore.open(directory, lock_timeout=lock_timeout)
    except StoreBusy as exc:
        _say(f"busy {exc}")
        return
    store.close()
    _say("opened")


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    mode, directory = argv[0], argv[1]
    try:
        if mode == "adds":
            n, seed = int(argv[2]), int(argv[3])
            _adds(directory, n, seed, argv[4].split(","), argv[5].split(","))
        elif mode == "hold":
            _hold(directory)
        elif mode == "try-open":
            _try_open(directory, float(argv[2]))
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    except Exception:
        _say("error " + traceback.format_exc().replace("\n", " | "))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
