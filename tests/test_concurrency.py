"""Concurrent writers lose nothing: threads on every backend, processes on one LMDB store.

The naive read-then-put test is a test of the tests: it shows that the same
workload *without* compare-and-set loses updates, so the exact totals the
other tests see are the work of compare-and-set, not of luck or scheduling.

Every test also records its store operations (``tests.helpers.Histories``:
one recorder per thread or worker process, the parent's setup and final
reads too) and checks that the whole history is linearizable, beyond the end
state. The naive workload's history is linearizable too: it loses updates
because of what the *application* does between its read and its write; each
read and write on the register is still correct.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from dhtcart import CartEmpty, CartService, DHTServerStore, Record
from dhtcart.hashing import hash_key
from tests.conftest import BackendEnv
from tests.helpers import Histories, cas_increment, naive_increment, snapshot, worker


def _run_threads(n: int, target, *args) -> None:  # type: ignore[no-untyped-def]
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(30)
            target(i, *args)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    assert not errors, errors[:3]


# -- threads, on every backend --------------------------------------------------------


@pytest.mark.slow
def test_8_threads_x_250_adds_to_one_cart(carts: CartService) -> None:
    histories = Histories()
    services = [CartService(histories.recorder(carts.store, i)) for i in range(8)]  # type: ignore[arg-type]

    def adds(i: int) -> None:
        for _ in range(250):
            services[i].add_item("shared-customer", "036000291459", "0.10")

    _run_threads(8, adds)
    assert histories.check().ok >= 2000  # one atomic read-modify-write (a recorded cas) per add, at least
    items = carts.list_items("shared-customer")
    assert [(i.item_id, i.item_count) for i in items] == [("036000291459", 2000)]
    assert carts.store.get(hash_key("shared-customer")).version == 2000  # type: ignore[union-attr]
    assert carts.checkout("shared-customer").total == Decimal("200.00")


@pytest.mark.slow
def test_adds_racing_checkouts_lose_nothing(carts: CartService) -> None:
    """Every unit added is either in a receipt or still in the cart: checkout is atomic."""
    receipts: list[int] = []
    stop = threading.Event()
    histories = Histories()
    services = [CartService(histories.recorder(carts.store, i)) for i in range(4)]  # type: ignore[arg-type]

    def work(i: int) -> None:
        if i == 0:
            while not stop.is_set():
                try:
                    receipts.append(sum(ln.item_count for ln in services[0].checkout("c").lines))
                except CartEmpty:
                    time.sleep(0.001)
        else:
            for k in range(150):
                services[i].add_item("c", f"item-{k % 3}", "1.00")
            if i == 1:
                time.sleep(0.05)
                stop.set()

    _run_threads(4, work)
    histories.check()
    left = sum(i.item_count for i in carts.list_items("c"))
    assert sum(receipts) + left == 3 * 150
    assert receipts, "the checkout thread should have checked out at least once"


def test_threads_on_different_carts(carts: CartService) -> None:
    histories = Histories()
    services = [CartService(histories.recorder(carts.store, i)) for i in range(6)]  # type: ignore[arg-type]

    def adds(i: int) -> None:
        for k in range(60):
            services[i].add_item(f"customer-{i}", f"item-{k % 4}", "2.00")

    _run_threads(6, adds)
    histories.check()
    for i in range(6):
        assert sorted((x.item_id, x.item_count) for x in carts.list_items(f"customer-{i}")) == [
            (f"item-{k}", 15) for k in range(4)
        ]
    carts.store._check()


@pytest.mark.slow
def test_reads_and_writes_during_rebalance(env: BackendEnv) -> None:
    """DESIGN invariant 3: other threads keep working during a rebalance and lose nothing."""
    store = env.store(3, partitions=256)
    keys = [hash_key(f"counter-{i}") for i in range(40)]
    histories = Histories()
    setup = histories.recorder(store, "setup")
    for k in keys:
        setup.put(k, b"0")
    rnd = random.Random(3)
    for _ in range(1500):  # ballast, so each rebalance has batches to move
        store.put(rnd.getrandbits(63), b"ballast")
    stop = threading.Event()
    done = [0] * 4
    recorders = [histories.recorder(store, i) for i in range(4)]

    def bump(i: int) -> None:
        if i == 0:
            try:
                backend = env.url() if env.kind == "redis" else None
                store.add_shard("extra", backend=backend, batch_size=50)
                store.remove_shard("shard-0" if env.kind != "redis" else "r0", batch_size=50)
                store.set_weight("extra", 3, batch_size=50)
            finally:
                stop.set()
            return
        while not stop.is_set() or done[i] < 100:
            cas_increment(recorders[i], keys[(i * 7 + done[i]) % len(keys)])  # type: ignore[arg-type]
            done[i] += 1

    _run_threads(4, bump)
    final = histories.recorder(store, "final")
    total = sum(int(final.get(k).value) for k in keys)  # type: ignore[union-attr]
    assert total == sum(done)
    histories.check()
    store._check()
    assert len(snapshot(store)) == store.count()


# -- processes, on one LMDB store -------------------------------------------------------


def _run_processes(mode: str, root: Path, *args: str, n: int = 4, histories: Histories | None = None) -> list[str]:
    """Run ``n`` workers together; with ``histories``, each records its operations as process 1..n."""
    procs = [worker(mode, str(root), *args, *(histories.worker_args(i + 1) if histories else [])) for i in range(n)]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            assert line == "ready", f"worker did not start: {line!r} {p.stderr.read() if p.stderr else ''}"
        for p in procs:  # all are ready: start them together
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            outs.append(out.strip())
        return outs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.slow
def test_4_processes_x_500_compare_and_set_increments(tmp_path: Path) -> None:
    root = tmp_path / "store"
    histories = Histories(tmp_path / "histories")
    with DHTServerStore.open(root, shards=3) as store:
        histories.recorder(store, 0).put(hash_key("counter"), b"0")
    outs = _run_processes("cas", root, "500", histories=histories)
    assert all(o.startswith("done") for o in outs)
    with DHTServerStore.open(root) as store:
        rec = histories.recorder(store, 0).get(hash_key("counter"))
        assert rec == Record(2001, b"2000"), "every compare-and-set increment is there"
        store._check()
    report = histories.check()
    retries = sum(int(o.split()[1]) for o in outs)
    assert report.fail == retries, "every retry is a failed compare-and-set in the history"


@pytest.mark.slow
def test_naive_read_then_put_loses_updates(tmp_path: Path) -> None:
    """Test of the test: the same workload without compare-and-set loses updates."""
    root = tmp_path / "store"
    histories = Histories(tmp_path / "histories")
    with DHTServerStore.open(root, shards=3) as store:
        histories.recorder(store, 0).put(hash_key("counter"), b"0")
    _run_processes("naive", root, "500", "0.0005", histories=histories)
    with DHTServerStore.open(root) as store:
        rec = histories.recorder(store, 0).get(hash_key("counter"))
    histories.check()  # linearizable all the same: the register did nothing wrong
    assert rec is not None
    assert rec.version == 2001, "all 2,000 writes happened..."
    assert int(rec.value) < 2000, "...but the naive path lost some of the increments"


def test_naive_helper_loses_updates_in_threads() -> None:
    histories = Histories()
    with DHTServerStore(shards=2) as store:
        key = hash_key("counter")
        main = histories.recorder(store, "main")
        main.put(key, b"0")
        naive = [histories.recorder(store, f"naive-{i}") for i in range(4)]
        _run_threads(4, lambda i: [naive_increment(naive[i], key, 0.0005) for _ in range(50)])  # type: ignore[arg-type]
        assert int(main.get(key).value) < 200  # type: ignore[union-attr]
        main.put(key, b"0")
        careful = [histories.recorder(store, f"cas-{i}") for i in range(4)]
        _run_threads(4, lambda i: [cas_increment(careful[i], key) for _ in range(50)])  # type: ignore[arg-type]
        assert main.get(key).value == b"200"  # type: ignore[union-attr]
    histories.check()


@pytest.mark.slow
def test_4_processes_add_to_one_lmdb_cart(tmp_path: Path) -> None:
    root = tmp_path / "carts"
    histories = Histories(tmp_path / "histories")
    CartService.open(root).close()
    _run_processes("cart-adds", root, "250", "shared", histories=histories)
    with DHTServerStore.open(root) as store:
        carts = CartService(histories.recorder(store, 0))  # type: ignore[arg-type]
        assert [(i.item_id, i.item_count) for i in carts.list_items("shared")] == [("sku", 1000)]
    histories.check()


def test_worker_script_reports_bad_mode(tmp_path: Path) -> None:
    p = worker("bogus", str(tmp_path))
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0 and "unknown mode" in err
    assert isinstance(p, subprocess.Popen)
