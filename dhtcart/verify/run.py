"""A whole verification run: client processes on a store, faults meanwhile, one history, one verdict.

What ``dhtcart verify`` runs. :func:`verify_store`:

1. draws ``keys`` keys of its own from a fresh random run id
   (``hash_key("dhtcart-verify/<run>/<i>")``), and makes sure none is in the
   store (else draws again), so the run cannot touch a user's data
   (:func:`draw_keys`);
2. starts ``clients`` client *processes* (``python -m dhtcart.verify.client``,
   each running :func:`~dhtcart.verify.workload.run_workload`), each
   opening the store itself and writing its own history file; starts them
   together once all are ready;
3. meanwhile, optionally, rebalances from this process (``rebalance``: add a
   temporary shard, remove it, again, until the time is up) and makes shards
   unreachable for a while (``kill_shard``: :meth:`Backend.pause
   <dhtcart.backends.base.Backend.pause>`, three times, each time a shard
   that holds some of the run's keys);
4. merges the files by time into one history, checks it
   (:func:`dhtcart.verify.checker.check_history`), and deletes the run's keys.

It returns a :class:`VerifyRun`. Client processes run on this machine: their
clocks are one clock (``CLOCK_MONOTONIC``), which real-time order needs.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import selectors
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from dhtcart.errors import (
    Conflict,
    DHTCartError,
    InvalidInput,
    ShardUnavailable,
    StoreBusy,
    StoreNotFound,
    WorkloadFailed,
)
from dhtcart.hashing import hash_key
from dhtcart.settings import DEFAULT_LOCK_TIMEOUT
from dhtcart.store import DHTServerStore
from dhtcart.verify.checker import CheckReport, check_history
from dhtcart.verify.history import HistoryWriter, merge_histories, read_history
from dhtcart.verify.workload import DEFAULT_RATE, MIX, WorkloadStats, check_mix

__all__ = ["VerifyRun", "draw_keys", "open_store", "verify_store"]

#: the module the client processes run (``python -m CLIENT CONFIG INDEX``)
CLIENT = "dhtcart.verify.client"
READY_TIMEOUT = 60.0  # seconds a client may take to open the store
PAUSES = 3  # how many times --kill-shard makes a shard unreachable


# -- the store and its keys ------------------------------------------------------------


def open_store(location: str | os.PathLike[str], *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> DHTServerStore:
    """Open an existing store (any location form: a directory, ``lmdb://``, ``redis://``, ``etcd://``).

    Never creates one. Raises :class:`~dhtcart.errors.InvalidInput` when
    there is no store there.
    """
    try:
        return DHTServerStore.open(location, create=False, lock_timeout=lock_timeout)
    except StoreNotFound:
        raise InvalidInput("store", f"no dhtcart store at {os.fspath(location)}") from None


def draw_keys(store: DHTServerStore, n: int, *, attempts: int = 5) -> tuple[str, list[int]]:
    """A fresh run id and ``n`` keys derived from it, none of them present in ``store``.

    Keys are ``hash_key("dhtcart-verify/<run>/<i>")`` for a random 64-bit run
    id: a user's key collides with probability about ``n / 2**63``, and a key
    that is present makes the run draw again (``attempts`` times at most).
    """
    for _ in range(attempts):
        run = secrets.token_hex(8)
        keys = [hash_key(f"dhtcart-verify/{run}/{i}") for i in range(n)]
        if len(set(keys)) == n and all(store.get(k) is None for k in keys):
            return run, keys
    raise Conflict(f"could not draw {n} keys absent from the store in {attempts} attempts")


def _remove_keys(store: DHTServerStore, keys: Sequence[int], timeout: float = 30.0) -> int:
    """Delete the run's keys, retrying unreachable shards for up to ``timeout`` seconds; return how many."""
    deadline = time.monotonic() + timeout
    removed = 0
    for key in keys:
        while True:
            try:
                store.delete(key)
                removed += 1
                break
            except (ShardUnavailable, StoreBusy):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
    return removed


# -- a whole run -----------------------------------------------------------------------


@dataclass
class VerifyRun:
    """What :func:`verify_store` did and what the checker found."""

    report: CheckReport
    history: Path
    clients: int
    keys: int
    seconds: float
    run: str
    #: the clients' operation mix (weights by operation)
    mix: dict[str, int] = field(default_factory=lambda: dict(MIX))
    client_stats: list[WorkloadStats] = field(default_factory=list)
    client_failures: list[str] = field(default_factory=list)
    rebalances: int = 0
    rebalance_refusals: int = 0
    rebalance_errors: list[str] = field(default_factory=list)
    pauses: int = 0
    pause_errors: list[str] = field(default_factory=list)
    #: pauses long enough that the clients failed the shard over (a replicated store only)
    kills: int = 0
    #: shards a failover took out during the run, added back (empty) after it
    restored: list[str] = field(default_factory=list)
    keys_removed: int = 0

    @property
    def rebalance_blocked(self) -> bool:
        """Rebalancing was asked for, and the store refused every attempt as busy."""
        return self.rebalances == 0 and self.rebalance_refusals > 0

    def to_dict(self) -> dict[str, Any]:
        """As a JSON-ready dict (the check report under ``"check"``)."""
        return {
            "run": self.run,
            "history": str(self.history),
            "clients": self.clients,
            "keys": self.keys,
            "mix": self.mix,
            "seconds": round(self.seconds, 3),
            "rebalances": self.rebalances,
            "rebalance_refusals": self.rebalance_refusals,
            "rebalance_errors": self.rebalance_errors,
            "pauses": self.pauses,
            "pause_errors": self.pause_errors,
            "kills": self.kills,
            "restored": self.restored,
            "client_failures": self.client_failures,
            "keys_removed": self.keys_removed,
            "client_stats": [s.to_dict() for s in self.client_stats],
            "check": self.report.to_dict(),
        }


def _pausable(store: DHTServerStore) -> list[str]:
    """The shards whose backend can be paused (probed with a 1 ms pause)."""
    names = []
    for name, server in sorted(store.servers.items()):
        try:
            server.backend.pause(0.001)
        except NotImplementedError:
            continue
        names.append(name)
    return names


class _Faults:
    """The coordinator's faults, during the clients' run: pauses in a thread, rebalances in the caller's."""

    def __init__(self, store: DHTServerStore, run: VerifyRun, rng: random.Random, seconds: float) -> None:
        self.store = store
        self.run = run
        self.rng = rng
        self.seconds = seconds
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.before: dict[str, tuple[str, int, str | None]] = {}  # the shards: name: (url, weight, domain)

    def _owners(self, keys: Sequence[int]) -> set[str]:
        """The shards that own some of the run's keys now (those a pause affects)."""
        owners = set()
        for key in keys:
            with contextlib.suppress(DHTCartError):
                owners.add(self.store.server_for(key).name)
        return owners

    def start_pauses(self, shards: list[str], start: float, keys: Sequence[int]) -> None:
        """Make shards unreachable, :data:`PAUSES` times, in a thread.

        On a replicated store the middle one is a *kill*: the shard stays
        unreachable past its reply timeout and the probe after it, so the
        clients fail it over (the repair takes it out of the ring; it is
        added back, empty, after the run: :meth:`restore`); the other pauses
        stay within the reply timeout (a slow shard, not a dead one).
        """
        length = max(0.2, min(3.0, self.seconds / 5))
        kill_at = -1
        if self.store.replicas > 1:
            kill_at = PAUSES // 2
            self.before = {name: self._spec(name) for name in self.store.servers}

        def pauses() -> None:
            over = 0.0  # when the last pause ends: never pause a server that is still paused
            for n in range(PAUSES):
                at = max(start + (n + 1) * self.seconds / (PAUSES + 1), over + 0.05)
                if self.stop.wait(max(0.0, at - time.monotonic())):
                    return
                alive = [s for s in shards if s in self.store.servers]
                if not alive:
                    return
                owners = self._owners(keys)
                alive = [s for s in alive if s in owners] or alive
                name = self.rng.choice(alive)
                backend = self.store.servers[name].backend
                timeout = _reply_timeout(backend)
                if n == kill_at:
                    seconds = 2 * timeout + 1.0  # the operation that meets it, the probe, a margin
                elif kill_at >= 0:
                    seconds = min(length, timeout / 2)
                else:
                    seconds = length
                try:
                    over = time.monotonic() + seconds
                    backend.pause(seconds)
                    self.run.pauses += 1
                    if n == kill_at:
                        self.run.kills += 1
                except Exception as exc:  # reported, the run goes on
                    self.run.pause_errors.append(f"{name}: {type(exc).__name__}: {exc}")

        self.thread = threading.Thread(target=pauses, name="dhtcart-verify-pauses", daemon=True)
        self.thread.start()

    def _spec(self, name: str) -> tuple[str, int, str | None]:
        """What adding shard ``name`` back takes: its URL (credentials included), weight, domain."""
        doc = self.store.membership.load()
        assert doc is not None
        return doc.shards[name], self.store.ring.nodes.get(name, 1), doc.domains.get(name)

    def restore(self, deadline: float) -> None:
        """After a run on a replicated store: finish the repair, and add back the shards it took out.

        The repair takes a shard that was failed over out of the ring and
        empties it (its data is treated as lost); it comes back as a new,
        empty shard of the same name, URL, weight and domain, and receives its
        share again.
        """
        if not self.before:
            return
        while time.monotonic() < deadline:
            try:
                self.store.repair()
                self.store.finish_rebalance()
                for name, (url, weight, domain) in self.before.items():
                    if name not in self.store.servers:
                        self.store.add_shard(name, weight=weight, backend=url, domain=domain)
                        self.run.restored.append(name)
                return
            except (ShardUnavailable, StoreBusy) as exc:
                self._note(f"restoring the shards: {type(exc).__name__}: {exc}")
                time.sleep(0.5)

    def rebalance_until(self, deadline: float, name: str, backend: str | None) -> None:
        """Add shard ``name`` and remove it again, over and over, until ``deadline``."""
        while time.monotonic() < deadline:
            try:
                if name not in self.store.servers:
                    self.store.add_shard(name, backend=backend)
                self.store.remove_shard(name)
                self.run.rebalances += 1
            except StoreBusy as exc:
                self.run.rebalance_refusals += 1
                self._note(f"StoreBusy: {exc}")
                time.sleep(0.5)
            except ShardUnavailable as exc:  # a paused shard: finish once it is back
                self._note(f"ShardUnavailable: {exc}")
                self._finish(deadline + 30)
            except DHTCartError as exc:
                self._note(f"{type(exc).__name__}: {exc}")
                time.sleep(0.5)

    def _note(self, text: str) -> None:
        if text not in self.run.rebalance_errors:
            self.run.rebalance_errors.append(text)

    def _finish(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                self.store.finish_rebalance()
                return
            except (ShardUnavailable, StoreBusy):
                time.sleep(0.2)

    def cleanup(self, name: str) -> None:
        """Stop the pauses; make sure the temporary shard is gone."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(10)
        deadline = time.monotonic() + 60
        while name in self.store.servers and time.monotonic() < deadline:
            try:
                self._finish(deadline)
                if name in self.store.servers:
                    self.store.remove_shard(name)
            except (ShardUnavailable, StoreBusy) as exc:
                self._note(f"removing {name}: {exc}")
                time.sleep(0.5)


def _reply_timeout(backend: object) -> float:
    """The seconds a shard's backend waits for a reply (Redis: its ``?timeout=``; 2 s if it has none)."""
    timeout = getattr(backend, "timeout", None)
    return float(timeout) if isinstance(timeout, (int, float)) else 2.0


def _start_clients(config: Path, clients: int, workdir: Path) -> tuple[list[subprocess.Popen[str]], list[IO[str]]]:
    procs: list[subprocess.Popen[str]] = []
    errs: list[IO[str]] = []
    for i in range(clients):
        err = open(workdir / f"client-{i}.err", "w", encoding="utf-8")  # noqa: SIM115
        errs.append(err)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", CLIENT, str(config), str(i)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        )
    return procs, errs


def _wait_ready(procs: list[subprocess.Popen[str]], timeout: float) -> list[int]:
    """Indices of the clients that printed ``ready`` within ``timeout`` seconds."""
    ready = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for i, p in enumerate(procs):
            assert p.stdout is not None
            sel.register(p.stdout, selectors.EVENT_READ, i)
        waiting = len(procs)
        while waiting and time.monotonic() < deadline:
            for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
                i = key.data
                line = procs[i].stdout.readline() if procs[i].stdout else ""
                sel.unregister(key.fileobj)
                waiting -= 1
                if line.strip() == "ready":
                    ready.append(i)
    return sorted(ready)


def _tail(path: Path, n: int = 600) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(encoding="utf-8", errors="replace")[-n:].strip()
    return ""


def verify_store(
    location: str | os.PathLike[str],
    *,
    clients: int = 4,
    keys: int = 10,
    seconds: float = 10.0,
    rate: float | None = DEFAULT_RATE,
    rebalance: bool = False,
    kill_shard: bool = False,
    history: str | os.PathLike[str] | None = None,
    seed: int | None = None,
    rebalance_backend: str | None = None,
    max_steps: int | None = None,
    progress: Callable[[str], None] | None = None,
    mix: Mapping[str, int] | None = None,
) -> VerifyRun:
    """Run ``clients`` client processes on the store at ``location`` and check their history.

    ``rate`` is the total operations per second of all clients (``None`` or 0:
    as fast as they go). ``mix`` weighs the clients' operations (default
    :data:`~dhtcart.verify.workload.MIX`; see
    :func:`~dhtcart.verify.workload.check_mix`).

    ``history`` is where the merged history is written (default: a file in a
    temporary directory, kept and named in the result). ``rebalance_backend``
    is the temporary shard's URL (default: the store's choice, a new LMDB
    directory in a store with a directory). Raises
    :class:`~dhtcart.errors.InvalidInput` for bad arguments (including
    ``kill_shard`` on a store none of whose shards can be paused) and
    :class:`~dhtcart.errors.WorkloadFailed` if no client could start.
    """
    for name, value, low, high in (("clients", clients, 1, 64), ("keys", keys, 1, 100_000)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidInput(name, f"must be an int between {low} and {high}, got {value!r}")
    if not 0 < seconds <= 86_400:
        raise InvalidInput("seconds", f"must be more than 0 and at most a day, got {seconds!r}")
    if rate is not None and not 0 <= rate <= 10_000_000:
        raise InvalidInput("rate", f"must be between 0 (no limit) and 10,000,000 operations per second, got {rate!r}")
    mix = check_mix(MIX if mix is None else mix)
    say = progress or (lambda text: None)
    store = open_store(location)
    workdir = Path(tempfile.mkdtemp(prefix="dhtcart-verify-"))
    target = Path(history) if history is not None else workdir / "history.jsonl"
    procs: list[subprocess.Popen[str]] = []
    errs: list[IO[str]] = []
    run_keys: list[int] = []
    run = VerifyRun(report=check_history([]), history=target, clients=clients, keys=keys, seconds=0.0, run="", mix=mix)
    try:
        shards = _pausable(store) if kill_shard else []
        if kill_shard and not shards:
            raise InvalidInput(
                "kill_shard", "no shard of this store can be paused: its backends do not implement pause()"
            )
        run_id, run_keys = draw_keys(store, keys)
        run.run = run_id
        seed = seed if seed is not None else secrets.randbits(32)
        config = workdir / "config.json"
        config.write_text(
            json.dumps(
                {
                    "location": os.fspath(location),
                    "keys": run_keys,
                    "seconds": seconds,
                    "seed": seed,
                    "rate": rate / clients if rate else None,
                    "run": run_id,
                    "dir": str(workdir),
                    "mix": mix,
                }
            ),
            encoding="utf-8",
        )
        say(f"starting {clients} client processes")
        procs, errs = _start_clients(config, clients, workdir)
        ready = _wait_ready(procs, READY_TIMEOUT)
        for i, p in enumerate(procs):
            if i not in ready:
                p.kill()
                p.wait()
                run.client_failures.append(f"client {i} did not start: {_tail(workdir / f'client-{i}.err')}")
        if not ready:
            raise WorkloadFailed("no client process could open the store: " + "; ".join(run.client_failures))
        start = time.monotonic()
        for i in ready:
            stdin = procs[i].stdin
            assert stdin is not None
            stdin.write("go\n")
            stdin.flush()
        say(f"{len(ready)} clients running for {seconds:g} s")
        faults = _Faults(store, run, random.Random(seed), seconds)
        temp = f"verify-{run_id[:8]}"
        try:
            if shards:
                faults.start_pauses(shards, start, run_keys)
            if rebalance:
                faults.rebalance_until(start + seconds, temp, rebalance_backend)
            for i in ready:
                p = procs[i]
                try:
                    out, _ = p.communicate(timeout=max(1.0, start + seconds - time.monotonic()) + 60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    out, _ = p.communicate()
                if p.returncode != 0:
                    run.client_failures.append(
                        f"client {i} exited with {p.returncode}: {_tail(workdir / f'client-{i}.err')}"
                    )
                lines = out.strip().splitlines()
                with contextlib.suppress(ValueError, IndexError, TypeError):
                    run.client_stats.append(WorkloadStats(**json.loads(lines[-1])))
            run.seconds = time.monotonic() - start
        finally:
            faults.cleanup(temp)
            faults.restore(time.monotonic() + 120)
        say("merging and checking the history")
        streams = [read_history(workdir / f"client-{i}.jsonl") for i in ready]
        with HistoryWriter(target) as out_file:
            for ev in merge_histories(streams):
                out_file(ev)
        run.report = check_history(read_history(target), max_steps=max_steps)
        return run
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for err in errs:
            err.close()
        try:
            if run_keys:
                run.keys_removed = _remove_keys(store, run_keys)
        finally:
            store.close()
            for f in workdir.glob("client-*"):
                f.unlink()
            with contextlib.suppress(OSError):
                (workdir / "config.json").unlink()
            if history is not None or not target.exists():  # else the history lives there
                shutil.rmtree(workdir, ignore_errors=True)
