"""SIGKILL at random moments: every add a child reported as done survives.

A child process (``tests/proc_worker.py cart-crash``) opens an LMDB cart
store with ``CartService.open`` and adds items to carts forever, printing a
line after each add returns. The parent kills it with SIGKILL at a random
moment (sometimes while it is still opening the store), reopens the store and
checks that every reported add is there, then starts the next round on the
same store. ``DHTCART_CRASH_ROUNDS`` sets the number of rounds (default 20).

Every round's child also records its store operations (as process
``round + 1``), and so do the parent's reads after each round (process 0): the
history of all the rounds, with the operations each kill cut short, must be
linearizable.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import IO

import pytest

from dhtcart import CartService, DHTServerStore
from tests.helpers import Histories, worker

ROUNDS = int(os.environ.get("DHTCART_CRASH_ROUNDS", "20"))
CUSTOMERS = [f"customer-{i}" for i in range(12)]
ROUND_TIMEOUT = 30.0  # seconds a round may take before the test gives up on it


class _Drain(threading.Thread):
    """Reads a child's stdout to its end as it comes (``out``), so that the child never blocks on it."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.out = ""

    def run(self) -> None:
        self.out = self.stream.read()


def _drain(stream: IO[str]) -> _Drain:
    reader = _Drain(stream)
    reader.start()
    return reader


def _cut_short(histories: Histories, process: int) -> bool:
    """Whether the kill left process ``process``'s last store operation open (invoked, never done)."""
    assert histories.directory is not None
    path = histories.directory / f"p{process}.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return bool(lines) and json.loads(lines[-1]).get("type") == "invoke"


def _state(root: Path, histories: Histories) -> Counter[tuple[str, str]]:
    with DHTServerStore.open(root) as store:
        store._check()
        carts = CartService(histories.recorder(store, 0))  # type: ignore[arg-type]
        state: Counter[tuple[str, str]] = Counter()
        for c in CUSTOMERS:
            for item in carts.list_items(c):
                state[(c, item.item_id)] = item.item_count
        return state


@pytest.mark.slow
@pytest.mark.timeout(max(300, int(ROUNDS * ROUND_TIMEOUT)))
def test_sigkill_loses_no_reported_add(tmp_path: Path) -> None:
    root = tmp_path / "carts"
    histories = Histories(tmp_path / "histories")
    rnd = random.Random(int(os.environ.get("DHTCART_CRASH_SEED", "4242")))
    before: Counter[tuple[str, str]] = Counter()
    total_reported = 0
    killed_while_adding = 0
    killed_in_an_operation = 0
    # ROUNDS rounds, then on until ROUNDS // 2 kills landed while the child was adding and one in
    # the middle of a store operation (on a busy machine a child adds less in the same random
    # time, and most kills land between operations: about one in ten lands in one): 4 x ROUNDS
    # at most
    for round_no in itertools.count():
        enough = killed_while_adding >= ROUNDS // 2 and killed_in_an_operation >= 1
        if round_no >= ROUNDS and (enough or round_no >= 4 * ROUNDS):
            break
        proc = worker("cart-crash", str(root), str(rnd.getrandbits(32)), *histories.worker_args(round_no + 1))
        assert proc.stdout is not None and proc.stderr is not None
        if rnd.random() < 0.25:
            # blind: often while the child is still starting or opening the store
            reader = _drain(proc.stdout)
            time.sleep(rnd.uniform(0.0, 0.6))
        else:
            assert proc.stdout.readline().strip() == "ready", f"round {round_no}: child did not start"
            reader = _drain(proc.stdout)
            time.sleep(rnd.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=ROUND_TIMEOUT)
        # the reports were read as they came (through the same buffered pipe object as readline():
        # communicate() would lose what it buffered): a child blocked on a full pipe is killed
        # while it waits to print, never in the middle of a store operation
        reader.join(ROUND_TIMEOUT)
        out, err = reader.out, proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
        if proc.stdin is not None:
            proc.stdin.close()
        assert proc.returncode == -signal.SIGKILL, f"round {round_no}: child ended on its own: {err}"
        lines = out.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines.pop()  # cut off mid-line by the kill: not a report
        reported: dict[tuple[str, str], int] = {}
        adds = 0
        for line in lines:
            parts = line.split()
            if parts[0] == "added":
                _, customer, item, count = parts
                reported[(customer, item)] = int(count)
                adds += 1
        if adds:
            killed_while_adding += 1
        total_reported += adds
        killed_in_an_operation += _cut_short(histories, round_no + 1)

        after = _state(root, histories)
        for pair, count in reported.items():
            assert after[pair] >= count, f"round {round_no}: {pair} reported {count}, found {after[pair]}"
        for pair, count in before.items():
            assert after[pair] >= count, f"round {round_no}: {pair} went from {count} to {after[pair]}"
        # each add is one unit: what is stored is what was there, plus every reported add,
        # plus at most the one add that finished but was killed before it could report
        grown = sum(after.values()) - sum(before.values())
        assert adds <= grown <= adds + 1, f"round {round_no}: {adds} adds reported, store grew by {grown}"
        before = after
    assert killed_while_adding >= ROUNDS // 2, f"{killed_while_adding} of {round_no} kills landed while adding"
    assert total_reported > 0
    report = histories.check()
    assert report.open == killed_in_an_operation > 0, f"{report.open} operations cut short by {round_no} kills"
