"""Rebalances across processes: SIGKILL at random moments, and the store's lock.

Crash: a child process (``tests/rebalance_child.py crash``) opens an LMDB store
and loops ``add_shard`` / ``remove_shard`` / ``set_weight`` with small batches
while a thread of it updates and deletes keys, printing every intent and every
acknowledgement. The parent SIGKILLs it at a random moment: mostly in the
middle of a rebalance, sometimes inside its ``open()`` while that finishes the
rebalance a previous child left in the journal (the parent then skips its own
check and leaves the recovery to the next child). It reopens the store and
checks: the journal is empty, every key is on exactly one shard (its owner),
every key has its last acknowledged value and version (or the one write that
was in flight), nothing acknowledged as deleted came back, and no shard
directory outside the manifest holds data.

Rounds: 30 by default; ``DHTCART_REBALANCE_ROUNDS=200`` (or ``--rounds 200``
when ``conftest.py`` defines that option) for more. ``DHTCART_REBALANCE_SEED``
replays a run.

Multi-process: while one process has the store open, a rebalance in another
raises ``StoreBusy`` and changes nothing; while a rebalance runs, opening the
store elsewhere raises ``StoreBusy`` instead of routing with a stale ring.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from dhtcart import DHTServerStore, StoreBusy, hash_key
from dhtcart.backends.lmdb import LMDBBackend
from dhtcart.ring import ring_from_dict
from tests.helpers import child_env
from tests.rebalance_child import key_of, value_for

CHILD = Path(__file__).resolve().parent / "rebalance_child.py"
ROOT = CHILD.parent.parent
N_KEYS = 3000
PARTITIONS = 256

pytestmark = pytest.mark.slow


def _rounds(config: pytest.Config) -> int:
    option = config.getoption("--rounds", default=None)
    if option:
        return int(option)
    return int(os.environ.get("DHTCART_REBALANCE_ROUNDS", "30"))


def _spawn(*args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-u", str(CHILD), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=stdin,
        text=True,
        env=child_env(),
        cwd=ROOT,
    )


def _run_child(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHILD), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        cwd=ROOT,
    )


class Lines:
    """Collects a child's complete stdout lines in a thread; lets the test wait for one."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.endswith("\n"):
                break  # a line cut by the kill: it never happened as far as we know
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<eof>")
            self._cond.notify_all()

    def wait_for(self, prefix: str, timeout: float = 30.0, start: int = 0) -> int:
        """Index of the first line (from ``start``) that starts with ``prefix``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(start, len(self.lines)):
                    if self.lines[i].startswith(prefix):
                        return i
                    if self.lines[i] == "<eof>":
                        raise AssertionError(f"child ended without {prefix!r}: {self.stderr()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {prefix!r} from the child in {timeout} s: {self.lines[-5:]}")
                self._cond.wait(left)

    def join(self) -> list[str]:
        self._thread.join(30)
        return [line for line in self.lines if line != "<eof>"]

    def stderr(self) -> str:
        self.proc.wait(30)
        assert self.proc.stderr is not None
        return self.proc.stderr.read()[-3000:]


def _manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def _make_store(directory: Path, n_keys: int) -> dict[int, int]:
    store = DHTServerStore.open(directory, shards=4, partitions=PARTITIONS)
    model = {}
    for i in range(n_keys):
        key = key_of(i)
        model[key] = store.put(key, value_for(key, 1))
    store.close()
    return model


# -- SIGKILL during rebalances --------------------------------------------------------------


class Model:
    """What the parent knows: acknowledged versions and deletes, and the operations in flight.

    An operation is in flight from its intent line until its acknowledgement;
    when the child is killed in between, either outcome is allowed, and the
    next check adopts the one found. Rounds that skip the check (to let the
    next child recover the journal itself) carry their in-flight operations over.
    """

    def __init__(self, versions: dict[int, int]) -> None:
        self.versions = versions
        self.deleted: set[int] = set()
        self.pending: dict[int, tuple[str, int]] = {}

    def apply(self, lines: list[str]) -> None:
        for line in lines:
            word, *rest = line.split()
            if word in ("put?", "del?"):
                self.pending[int(rest[0])] = (word[:3], int(rest[1]))
            elif word == "put!":
                key, version = int(rest[0]), int(rest[1])
                assert key not in self.deleted, f"the child wrote a deleted key: {line}"
                self.versions[key] = version
                self.pending.pop(key, None)
            elif word == "del!":
                key = int(rest[0])
                del self.versions[key]
                self.deleted.add(key)
                self.pending.pop(key, None)
            elif word == "conflict":
                raise AssertionError(f"the child saw a compare-and-set conflict it cannot have: {line}")

    def check(self, store: DHTServerStore) -> None:
        """Every key as acknowledged (or as its in-flight operation left it); adopt what is found."""
        for key in list(self.versions):
            rec = store.get(key)
            flight = self.pending.get(key)
            if rec is None:
                assert flight == ("del", self.versions[key]), f"key {key} (version {self.versions[key]}) lost"
                del self.versions[key]
                self.deleted.add(key)
                continue
            allowed = {self.versions[key]}
            if flight is not None and flight[0] == "put":
                allowed.add(flight[1])
            assert rec.version in allowed, f"key {key}: version {rec.version}, expected one of {allowed}"
            assert rec.value == value_for(key, rec.version), f"key {key}: wrong value for its version"
            self.versions[key] = rec.version
        for key in self.deleted:
            assert store.get(key) is None, f"deleted key {key} came back"
        assert store.count() == len(self.versions), "a key is stored twice, or an unknown key appeared"
        self.pending.clear()


def _orphans(directory: Path, manifest: dict) -> dict[str, int]:
    """Shard directories that the manifest does not list, with their key counts."""
    listed = {Path(url[len("lmdb://") :]).name for url in manifest["shards"].values()}
    out = {}
    for path in sorted((directory / "shards").iterdir()):
        if path.name not in listed:
            with LMDBBackend(path) as backend:
                out[path.name] = backend.count()
    return out


def test_sigkill_at_random_moments_of_rebalances(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    rounds = _rounds(request.config)
    seed = int(os.environ.get("DHTCART_REBALANCE_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"\nseed {seed} (DHTCART_REBALANCE_SEED={seed} replays it), {rounds} rounds")
    directory = tmp_path / "store"
    model = Model(_make_store(directory, N_KEYS))
    stats: Counter[str] = Counter()
    started = time.monotonic()
    for r in range(rounds):
        journal_at_start = _manifest(directory)["journal"]
        proc = _spawn("crash", str(directory), "--seed", str(seed + r), "--keys", str(N_KEYS))
        lines = Lines(proc)
        try:
            if journal_at_start:
                # while its open() finishes the journaled rebalance (a few tens of ms)
                lines.wait_for("opening")
                time.sleep(rng.uniform(0.0, 0.08))
            elif rng.random() < 0.1:
                time.sleep(rng.uniform(0.0, 0.4))  # early: while it starts
            else:
                lines.wait_for("ready")
                time.sleep(rng.uniform(0.0, 0.6))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        events = lines.join()
        assert proc.returncode == -signal.SIGKILL, f"the child ended by itself: {lines.stderr()}"
        ready = any(e.startswith("ready") for e in events)
        journal = _manifest(directory)["journal"]
        stats[f"killed in phase {journal['phase']}" if journal else "killed between rebalances"] += 1
        if journal_at_start:
            stats["children that had to recover a journal"] += 1
            stats["... killed inside open()"] += not ready and any(e == "opening" for e in events)
        stats["rebalances completed"] += sum(e.startswith("done") for e in events)
        model.apply(events)
        if journal and rng.random() < 0.4 and r < rounds - 1:
            stats["rounds left to the next child to recover"] += 1
            continue
        # reopen: finishes the journaled rebalance, then every invariant holds
        with DHTServerStore.open(directory, lock_timeout=30) as store:
            manifest = _manifest(directory)
            assert manifest["journal"] is None, f"round {r}: the journal survived a reopen"
            store._check()  # the ring is sound and every key is on its owner
            model.check(store)
            assert set(store.servers) == set(manifest["shards"])
        orphans = _orphans(directory, manifest)
        assert not any(orphans.values()), f"round {r}: directories outside the manifest hold keys: {orphans}"
        stats["orphan shard directories (empty)"] = len(orphans)
    seconds = time.monotonic() - started
    print(f"{rounds} rounds in {seconds:.1f} s; {len(model.deleted)} keys deleted; {dict(stats)}")
    # the kills must have hit rebalances in flight, or this test proves nothing
    assert stats["killed in phase migrate"] + stats["killed in phase drop"] >= rounds // 3, stats
    assert stats["rebalances completed"] >= rounds, stats


# -- the lock: one process rebalances only when it has the store alone ----------------------


def _tree(directory: Path) -> dict[str, bytes | None]:
    """The manifest's bytes and the shard directories' names (what a refused rebalance must not touch)."""
    out: dict[str, bytes | None] = {"manifest": (directory / "manifest.json").read_bytes()}
    out.update({p.name: None for p in (directory / "shards").iterdir()})
    return out


def test_rebalance_in_another_process_is_refused_while_the_store_is_open(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    versions = _make_store(directory, 1000)
    with DHTServerStore.open(directory) as store:
        before = _tree(directory)
        for op, name in [("add", "intruder"), ("remove", "shard-1"), ("weight", "shard-2")]:
            out = _run_child("try", str(directory), op, "--name", name, "--lock-timeout", "5")
            assert out.returncode == 0, out.stderr
            assert out.stdout.split() == ["busy"], f"{op}: {out.stdout} {out.stderr}"
            assert _tree(directory) == before, f"a refused {op} changed the store"
        # this process's store is unaffected and still works
        store._check()
        for key, version in versions.items():
            assert store.get(key).version == version
        key = key_of(0)
        store.put(key, value_for(key, 2), expected_version=1)
    # alone now: the same rebalance goes through
    out = _run_child("try", str(directory), "add", "--name", "intruder")
    assert out.stdout.split() == ["done"], out.stderr
    with DHTServerStore.open(directory) as store:
        assert "intruder" in store.servers
        store._check()
        assert store.get(key_of(0)).version == 2
        assert store.count() == 1000


def test_opening_while_another_process_rebalances_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    versions = _make_store(directory, 2000)
    proc = _spawn("slow", str(directory), "--name", "late", "--batch-size", "4", "--pause", "0.01")
    lines = Lines(proc)
    try:
        lines.wait_for("progress")
        for _ in range(3):
            t0 = time.monotonic()
            with pytest.raises(StoreBusy):
                DHTServerStore.open(directory, lock_timeout=0.2)
            assert time.monotonic() - t0 < 5
        assert proc.poll() is None, "the rebalance should still be running"
        lines.wait_for("done", timeout=120)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 0, lines.stderr()
    with DHTServerStore.open(directory) as store:
        assert "late" in store.servers and store.stats()["late"] > 0
        store._check()
        for key, version in versions.items():
            rec = store.get(key)
            assert rec is not None and rec.version == version and rec.value == value_for(key, version)


def test_a_refused_rebalance_opens_no_window_for_another(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes have the store open and both try to rebalance: both must be refused.

    Deterministic replay of a race found by these tests: a refused ``add_shard``
    converts its shared ``LOCK`` to exclusive, fails, and (flock conversions are
    not atomic) holds no lock until it re-takes the shared one; the other process
    is asked to rebalance exactly then. Before the ``ADMIN`` lock, it won: two
    processes looping ``add_shard`` each succeeded about 40 times in 5 seconds,
    shards went missing from the manifest, and the stale process's writes were lost.
    """
    import dhtcart.store as store_module

    directory = tmp_path / "store"
    _make_store(directory, 2000)
    other = _spawn("hold", str(directory), stdin=subprocess.PIPE)
    lines = Lines(other)
    answers: list[str] = []
    problems: list[str] = []

    try:
        lines.wait_for("open")
        store = DHTServerStore.open(directory)
        real_flock = fcntl.flock

        class Shim:
            LOCK_SH, LOCK_EX, LOCK_NB, LOCK_UN = fcntl.LOCK_SH, fcntl.LOCK_EX, fcntl.LOCK_NB, fcntl.LOCK_UN

            @staticmethod
            def flock(fd: int, op: int) -> None:
                if op == fcntl.LOCK_SH and not answers and fd == store._lock_fd:
                    # the refused rebalance is about to re-take its shared lock: it holds none now
                    assert other.stdin is not None
                    start = len(lines.lines)
                    other.stdin.write("add other\n")
                    other.stdin.flush()
                    answers.append(lines.lines[_answer(lines, start)])
                real_flock(fd, op)

        monkeypatch.setattr(store_module, "fcntl", Shim)
        with pytest.raises(StoreBusy):
            store.add_shard("mine")
        monkeypatch.undo()
        if not answers:  # no window (a fixed library): ask now, while this process has the store open
            start = len(lines.lines)
            assert other.stdin is not None
            other.stdin.write("add other\n")
            other.stdin.flush()
            answers.append(lines.lines[_answer(lines, start)])
        if answers != ["busy"]:
            problems.append(f"the other process rebalanced while this one had the store open: {answers}")
        # the consequence: this process routes with its old ring and writes where nobody will look
        new_ring = ring_from_dict(_manifest(directory)["ring"])
        probes = (hash_key(f"probe-{i}") for i in range(5000))
        moved = [k for k in probes if store.ring.node_for(k) != new_ring.node_for(k)][:200]
        for key in moved:
            store.put(key, b"written by the stale process")
        store.close()
        assert other.stdin is not None
        other.stdin.write("close\n")
        other.stdin.flush()
        lines.wait_for("closed")
        with DHTServerStore.open(directory) as fresh:
            lost = sum(fresh.get(k) is None for k in moved)
            if lost:
                problems.append(f"{lost} of {len(moved)} acknowledged writes of the stale process are lost")
            try:
                fresh._check()
            except AssertionError as exc:
                problems.append(f"store invariant broken: {exc}")
    finally:
        if other.poll() is None:
            other.kill()
        other.wait(30)
    assert not problems, "\n".join(problems)


def _answer(lines: Lines, start: int) -> int:
    """Index of the other process's answer (``busy`` or ``done``) after line ``start``."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for i in range(start, len(lines.lines)):
            if lines.lines[i] in ("busy", "done"):
                return i
        time.sleep(0.005)
    raise AssertionError(f"no answer from the other process: {lines.lines[-5:]}")


def test_two_processes_racing_to_rebalance_never_both_win(tmp_path: Path) -> None:
    """Both processes keep the store open and loop ``add_shard``: every attempt must be refused."""
    directory = tmp_path / "store"
    _make_store(directory, 500)
    procs = [_spawn("race", str(directory), "--name", tag, "--max-seconds", "2") for tag in ("a", "b")]
    outs = [p.communicate(timeout=60) for p in procs]
    for proc, (out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
        words = out.split()
        assert words[0] == "attempts" and int(words[1]) > 50, out
        assert "won" not in words, f"a rebalance ran while the other process had the store open: {out}"
    with DHTServerStore.open(directory) as store:
        assert sorted(store.servers) == [f"shard-{i}" for i in range(4)]
        assert sorted(p.name for p in (directory / "shards").iterdir()) == sorted(store.servers)
        store._check()
        assert store.count() == 500
