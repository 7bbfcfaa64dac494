"""The store: a ring of shards, routing every key to its owner.

>>> from dhtcart import DHTServerStore, hash_key
>>> store = DHTServerStore(shards=5)          # five in-memory shards
>>> store.put(hash_key("alice"), b"cart")
1
>>> store.get(hash_key("alice")).value
b'cart'
>>> report = store.add_shard("shard-5")       # moves about 1/6 of the keys
>>> sorted(store.stats())
['shard-0', 'shard-1', 'shard-2', 'shard-3', 'shard-4', 'shard-5']
>>> store.close()

A persistent store lives in one directory::

    store/
      manifest.json     members, weights, backend URLs, the ring, the journal
      LOCK              flock: shared while open, exclusive during a rebalance
      shards/shard-0/   one LMDB environment per shard (data.mdb, lock.mdb)
      ...

``DHTServerStore.open(directory)`` creates it or opens it again, with the same
ring and every key. If a rebalance was interrupted (the process was killed),
opening the store finishes it first.

Processes: several processes may open one store and use it at once (LMDB
serialises their writes; compare-and-set stays atomic). A rebalance needs the
store alone: it takes the ``LOCK`` file exclusively, so it raises
:class:`~dhtcart.errors.StoreBusy` while another process has the store open,
and opening the store from another process while a rebalance runs raises
:class:`~dhtcart.errors.StoreBusy` too (after ``lock_timeout`` seconds).
Within a process, operations from other threads keep running during a
rebalance and wait at most for one batch.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, cast

from dhtcart._rwlock import RWLock
from dhtcart.backends import open_backend
from dhtcart.backends.base import Backend, Record
from dhtcart.errors import InvalidInput, ShardExists, ShardNotFound, StoreBusy, StoreClosed
from dhtcart.hashing import MAX_KEY
from dhtcart.rebalance import (
    DEFAULT_BATCH_SIZE,
    Migration,
    Progress,
    RebalancePlan,
    RebalanceReport,
    estimate_keys,
    plan,
)
from dhtcart.ring import DEFAULT_PARTITIONS, HashRing, PartitionRing, ring_from_dict
from dhtcart.server import DHTServer, check_key

__all__ = ["MANIFEST_FORMAT", "DHTServerStore"]

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
LOCK = "LOCK"
ADMIN = "ADMIN"
SHARDS_DIR = "shards"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

Durability = Literal["process", "power"]
AnyRing = HashRing | PartitionRing


def _check_shard_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidInput(
            "name",
            f"shard name must be 1-64 characters of letters, digits, '.', '_' or '-',"
            f" starting with a letter or digit; got {name!r}",
        )
    return name


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``path`` so that a crash leaves either the old or the new file, whole."""
    tmp = path.with_name(path.name + ".tmp")
    # 0600: shard URLs may carry credentials
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class DHTServerStore:
    """Shards behind a consistent-hash ring.

    ``DHTServerStore(shards=5)`` is a working in-memory store of five shards
    named ``shard-0`` … ``shard-4``. ``shards`` may also be a mapping of shard
    name to backend URL (``{"a": "memory://", "b": "redis://h:6379/0"}``).
    Placement is a :class:`~dhtcart.ring.PartitionRing` of ``partitions``
    partitions unless ``ring`` is given (it must list exactly the shards).
    Use :meth:`open` for a persistent store in a directory.
    """

    def __init__(
        self,
        shards: int | Mapping[str, str | Backend] = 5,
        *,
        backend: str = "memory://",
        partitions: int = DEFAULT_PARTITIONS,
        ring: AnyRing | None = None,
    ) -> None:
        urls = self._shard_urls(shards, backend)
        if ring is None:
            ring = PartitionRing(list(urls), partitions=partitions)
        elif set(ring.nodes) != set(urls):
            raise ValueError("the ring's nodes must be exactly the shards")
        self._setup(ring, urls, directory=None, durability="process")

    @staticmethod
    def _shard_urls(shards: int | Mapping[str, str | Backend], backend: str) -> dict[str, str | Backend]:
        if isinstance(shards, Mapping):
            urls = {_check_shard_name(n): u for n, u in shards.items()}
        elif isinstance(shards, bool) or not isinstance(shards, int):
            raise InvalidInput("shards", f"must be an int or a mapping name -> URL, not {type(shards).__name__}")
        else:
            if not 1 <= shards <= 4096:
                raise InvalidInput("shards", f"must be between 1 and 4096, got {shards}")
            urls = {f"shard-{i}": backend for i in range(shards)}
        if not urls:
            raise InvalidInput("shards", "a store needs at least one shard")
        return urls

    def _setup(
        self,
        ring: AnyRing,
        urls: Mapping[str, str | Backend],
        *,
        directory: Path | None,
        durability: Durability,
        lock_fd: int | None = None,
    ) -> None:
        self._directory = directory
        self._durability: Durability = durability
        self._lock_fd = lock_fd
        self._ring: AnyRing = ring
        self._urls: dict[str, str] = {n: u if isinstance(u, str) else u.url for n, u in urls.items()}
        self._servers: dict[str, DHTServer] = {}
        self._migration: Migration | None = None
        self._journal: dict[str, Any] = {}
        self._admin_fd: int | None = None
        self._gate = RWLock()
        self._admin = threading.Lock()
        self._closed = False
        try:
            for name, url in urls.items():
                self._servers[name] = self._open_server(name, url)
        except BaseException:
            self.close()
            raise

    def _open_server(self, name: str, url: str | Backend) -> DHTServer:
        if isinstance(url, Backend):
            return DHTServer(url, name=name)
        options: dict[str, Any] = {}
        if url.startswith("lmdb://"):
            path = url[len("lmdb://") :].partition("?")[0]
            if self._directory is not None and not os.path.isabs(path):
                url = f"lmdb://{self._directory / path}" + url[len("lmdb://") + len(path) :]
            if "durability=" not in url:
                options["durability"] = self._durability
        elif url.startswith(("redis://", "rediss://")):
            options["name"] = name
        return DHTServer(open_backend(url, **options), name=name)

    # -- persistent stores ------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        shards: int | Mapping[str, str] = 5,
        durability: Durability = "process",
        partitions: int = DEFAULT_PARTITIONS,
        lock_timeout: float = 10.0,
    ) -> DHTServerStore:
        """Create or reopen the persistent store in ``directory``.

        On creation, ``shards`` LMDB shards are made under ``directory/shards``
        (or ``shards`` maps names to backend URLs, e.g. Redis servers; relative
        ``lmdb://`` paths are taken inside ``directory``). On reopening,
        ``shards`` and ``partitions`` are ignored: the manifest says what the
        store is. ``durability`` is the LMDB mode (see
        :mod:`dhtcart.backends.lmdb`) and is fixed at creation.
        """
        if durability not in ("process", "power"):
            raise ValueError(f"durability must be 'process' or 'power', not {durability!r}")
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            manifest = cls._load_or_create(root, fd, shards, durability, partitions, lock_timeout)
        except BaseException:
            os.close(fd)
            raise
        store = cls.__new__(cls)
        store._setup(
            ring_from_dict(manifest["ring"]),
            manifest["shards"],
            directory=root,
            durability=manifest.get("durability", "process"),
            lock_fd=fd,
        )
        return store

    @classmethod
    def _load_or_create(
        cls,
        root: Path,
        fd: int,
        shards: int | Mapping[str, str],
        durability: Durability,
        partitions: int,
        lock_timeout: float,
    ) -> dict[str, Any]:
        """Return the manifest with a shared lock held, first creating or recovering it."""
        deadline = time.monotonic() + lock_timeout
        path = root / MANIFEST
        while True:
            if cls._try_lock(fd, fcntl.LOCK_SH):
                manifest = cls._read_manifest(path)
                if manifest is not None and not manifest.get("journal"):
                    return manifest
                # creating or recovering needs the store alone; ADMIN first, as a
                # rebalancer does, so that no handle is converting LOCK meanwhile
                fcntl.flock(fd, fcntl.LOCK_UN)  # hold nothing while waiting, or two openers livelock
                admin = os.open(root / ADMIN, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    if cls._try_lock(admin, fcntl.LOCK_EX) and cls._try_lock(fd, fcntl.LOCK_EX):
                        try:
                            manifest = cls._read_manifest(path)
                            if manifest is None:
                                manifest = cls._create(root, shards, durability, partitions)
                            elif manifest.get("journal"):
                                manifest = cls._recover(root, manifest)
                        finally:
                            fcntl.flock(fd, fcntl.LOCK_SH)  # downgrade (not atomic: re-read)
                        continue
                finally:
                    os.close(admin)  # releases ADMIN
            if time.monotonic() > deadline:
                raise StoreBusy(
                    f"store {root} is locked by another process (a rebalance or a recovery"
                    f" in progress) for more than {lock_timeout} s; try again later"
                )
            time.sleep(0.02)

    @staticmethod
    def _try_lock(fd: int, mode: int) -> bool:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    @staticmethod
    def _read_manifest(path: Path) -> dict[str, Any] | None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        data: dict[str, Any] = json.loads(text)
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{path}: unsupported manifest format {data.get('format')!r}")
        return data

    @classmethod
    def _create(
        cls, root: Path, shards: int | Mapping[str, str], durability: Durability, partitions: int
    ) -> dict[str, Any]:
        urls = cls._shard_urls(shards, "")
        urls = {n: (u or f"lmdb://{SHARDS_DIR}/{n}") for n, u in urls.items()}
        ring = PartitionRing(list(urls), partitions=partitions)
        manifest = {
            "format": MANIFEST_FORMAT,
            "durability": durability,
            "ring": ring.to_dict(),
            "shards": urls,
            "journal": None,
        }
        _write_json_atomic(root / MANIFEST, manifest)
        return manifest

    @classmethod
    def _recover(cls, root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        """Finish the rebalance that the journal describes (we hold the lock alone)."""
        journal = manifest["journal"]
        store = cls.__new__(cls)
        urls = {**manifest["shards"], **journal.get("shards", {})}
        store._setup(
            ring_from_dict(manifest["ring"]),
            urls,
            directory=root,
            durability=manifest.get("durability", "process"),
        )
        try:
            store._manifest_cache = manifest
            store._journal = {k: v for k, v in journal.items() if k != "dirty"}
            if journal["phase"] == "migrate":
                new_ring = ring_from_dict(journal["ring"])
                mig = Migration(store._ring, new_ring)
                dirty = journal.get("dirty")
                if dirty:
                    mig.dirty = (dirty[0], [(k, v) for k, v in dirty[1]])
                store._migration = mig
                store._run_migration(mig, DEFAULT_BATCH_SIZE, None, 0)
                store._commit(new_ring, journal["shards"], list(journal.get("drop", [])))
            else:
                store._drop(list(journal.get("drop", [])))
            result = store._manifest_cache
        finally:
            store.close()
        return result

    # -- manifest writes (persistent stores only) -------------------------------

    _manifest_cache: dict[str, Any]

    def _save(self, **changes: Any) -> None:
        if self._directory is None:
            return
        cached = getattr(self, "_manifest_cache", None)
        manifest = dict(cached or self._read_manifest(self._directory / MANIFEST) or {})
        manifest.update(changes)
        manifest.setdefault("format", MANIFEST_FORMAT)
        manifest.setdefault("durability", self._durability)
        _write_json_atomic(self._directory / MANIFEST, manifest)
        self._manifest_cache = manifest

    def _commit(self, new_ring: AnyRing, new_urls: Mapping[str, str], drop: list[str]) -> None:
        """Switch to ``new_ring`` (migration done), then drop the departed shards."""
        with self._gate.write():
            self._ring = new_ring
            self._migration = None
        kept = {n: u for n, u in new_urls.items() if n not in drop}
        self._save(
            ring=new_ring.to_dict(),
            shards=kept,
            journal={"phase": "drop", "drop": drop, "shards": {n: new_urls[n] for n in drop if n in new_urls}}
            if drop
            else None,
        )
        self._urls = kept
        if drop:
            self._drop(drop)

    def _drop(self, names: list[str]) -> None:
        with self._gate.write():  # no stats()/count() iterating the shards meanwhile
            gone = [s for s in (self._servers.pop(n, None) for n in names) if s is not None]
        for server in gone:
            server.backend.destroy()
        self._save(journal=None)

    # -- routing ----------------------------------------------------------------

    @property
    def ring(self) -> AnyRing:
        """The current ring (during a rebalance: the ring before it)."""
        return self._ring

    @property
    def servers(self) -> dict[str, DHTServer]:
        """The shards by name (a copy of the mapping)."""
        return dict(self._servers)

    @property
    def fast_local(self) -> bool:
        """Whether every shard is :attr:`~dhtcart.backends.base.Backend.fast_local` (an event
        loop may then call the store directly instead of through a thread)."""
        return all(s.backend.fast_local for s in list(self._servers.values()))

    @property
    def directory(self) -> Path | None:
        """The store's directory, or ``None`` for a store without one."""
        return self._directory

    def _route(self, key: int) -> DHTServer:
        mig = self._migration
        return self._servers[self._ring.node_for(key) if mig is None else mig.owner(key)]

    def server_for(self, key: int) -> DHTServer:
        """The shard that owns ``key`` now."""
        key = check_key(key)
        with self._gate.read():
            return self._route(key)

    def get(self, key: int) -> Record | None:
        """``Record(version, value)`` under ``key``, or ``None``."""
        key = check_key(key)
        gate = self._gate
        gate.acquire_read()
        try:
            return self._route(key).get(key)
        finally:
            gate.release_read()

    def put(self, key: int, value: bytes, expected_version: int | None = None) -> int:
        """Store ``value``; return the new version (compare-and-set with ``expected_version``)."""
        key = check_key(key)
        gate = self._gate
        gate.acquire_read()
        try:
            return self._route(key).put(key, value, expected_version)
        finally:
            gate.release_read()

    def delete(self, key: int, expected_version: int | None = None) -> bool:
        """Remove ``key``; return whether it existed (conditional with ``expected_version``)."""
        key = check_key(key)
        gate = self._gate
        gate.acquire_read()
        try:
            return self._route(key).delete(key, expected_version)
        finally:
            gate.release_read()

    def items(self) -> Iterator[tuple[int, Record]]:
        """Every ``(key, record)``, shard by shard (for inspection and tests)."""
        for server in list(self._servers.values()):
            yield from server.scan(-1, MAX_KEY)

    def stats(self) -> dict[str, int]:
        """Keys per shard."""
        with self._gate.read():  # not in the middle of a batch: no key counted twice
            return {name: s.count() for name, s in sorted(self._servers.items())}

    def count(self) -> int:
        """Keys in the whole store."""
        with self._gate.read():
            return sum(s.count() for s in self._servers.values())

    def __len__(self) -> int:
        return self.count()

    # -- rebalancing ------------------------------------------------------------

    def _next_name(self) -> str:
        i = len(self._servers)
        while f"shard-{i}" in self._servers:
            i += 1
        return f"shard-{i}"

    def _ring_with(self, op: str, name: str, weight: int = 1) -> AnyRing:
        ring = self._ring.copy()
        if op == "add":
            if name in self._servers:
                raise ShardExists(f"shard {name!r} is already in the store")
            ring.add_node(name, weight)
        elif name not in self._servers:
            raise ShardNotFound(f"no shard named {name!r}; shards: {', '.join(sorted(self._servers))}")
        elif op == "remove":
            if len(self._servers) == 1:
                raise InvalidInput("name", "cannot remove the last shard of a store")
            ring.remove_node(name)
        else:
            ring.set_weight(name, weight)
        return ring

    def plan_add_shard(self, name: str, weight: int = 1) -> RebalancePlan:
        """What :meth:`add_shard` would move, without moving anything."""
        _check_shard_name(name)
        new = self._ring_with("add", name, weight)
        servers = dict(self._servers)
        servers.setdefault(name, DHTServer(name=name))  # empty stand-in: only read as a target
        return plan(self._ring, new, servers)

    def plan_remove_shard(self, name: str) -> RebalancePlan:
        """What :meth:`remove_shard` would move, without moving anything."""
        return plan(self._ring, self._ring_with("remove", name), self._servers)

    def plan_set_weight(self, name: str, weight: int) -> RebalancePlan:
        """What :meth:`set_weight` would move, without moving anything."""
        return plan(self._ring, self._ring_with("weight", name, weight), self._servers)

    def add_shard(
        self,
        name: str | None = None,
        weight: int = 1,
        backend: str | Backend | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: Progress | None = None,
    ) -> RebalanceReport:
        """Add a shard and move to it the arcs it now owns (and nothing else).

        ``backend`` is the new shard's URL (or an open :class:`Backend`, whose
        ``url`` then goes in the manifest): by default a new LMDB directory in a
        persistent store, ``memory://`` otherwise.
        """
        with self._admin:
            name = _check_shard_name(name if name is not None else self._next_name())
            if backend is None:
                backend = f"lmdb://{SHARDS_DIR}/{name}" if self._directory is not None else "memory://"
            return self._rebalance(("add", name, weight), {name: backend}, [], batch_size, progress)

    def remove_shard(
        self, name: str, *, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None
    ) -> RebalanceReport:
        """Move a shard's keys to their new owners, then drop the shard and its data."""
        with self._admin:
            return self._rebalance(("remove", name, 1), {}, [name], batch_size, progress)

    def set_weight(
        self,
        name: str,
        weight: int,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: Progress | None = None,
    ) -> RebalanceReport:
        """Change a shard's weight and move the arcs that change owner."""
        with self._admin:
            return self._rebalance(("weight", name, weight), {}, [], batch_size, progress)

    def _rebalance(
        self,
        change: tuple[str, str, int],
        added: Mapping[str, str | Backend],
        removed: list[str],
        batch_size: int,
        progress: Progress | None,
    ) -> RebalanceReport:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInput("batch_size", f"must be a positive int, got {batch_size!r}")
        # the caller holds self._admin: the new ring is computed from the current
        # one inside it, so two threads' rebalances run one after the other
        self._check_open()
        if self._migration is not None:
            raise StoreBusy("a previous rebalance stopped on an error: call finish_rebalance() first")
        new = self._ring_with(*change)
        if self._directory is not None:
            for url in added.values():
                if isinstance(url, Backend):
                    raise InvalidInput(
                        "backend", "a persistent store records its shards by URL: pass the backend's URL"
                    )
                if url.startswith("memory:"):
                    raise InvalidInput(
                        "backend", "a persistent store cannot have a memory:// shard: its keys would vanish on close"
                    )
        self._lock_exclusive()
        try:
            start = time.perf_counter()
            before = self.stats()
            mig = Migration(self._ring, new)
            planned = estimate_keys(mig.moves, self._ring, self._servers) if progress else 0
            new_urls = {**self._urls, **{n: u if isinstance(u, str) else u.url for n, u in added.items()}}
            self._journal = {"phase": "migrate", "ring": new.to_dict(), "shards": new_urls, "drop": removed}
            self._save(journal=self._journal)  # first: a crash from here on is finished on reopening
            try:
                opened = {n: self._open_server(n, u) for n, u in added.items()}
            except BaseException:
                self._save(journal=None)  # nothing moved yet: forget the rebalance
                raise
            with self._gate.write():
                self._servers.update(opened)
                self._urls = new_urls
                self._migration = mig
            self._run_migration(mig, batch_size, progress, planned)
            self._commit(new, new_urls, removed)
            return self._report(mig, start, before)
        finally:
            self._lock_shared()

    def _report(
        self, mig: Migration, start: float, before: dict[str, int], moved: int = 0, nbytes: int = 0
    ) -> RebalanceReport:
        """What ``mig`` did since it had moved ``moved`` keys and ``nbytes`` bytes."""
        return RebalanceReport(
            keys_moved=mig.keys_moved - moved,
            bytes_moved=mig.bytes_moved - nbytes,
            seconds=time.perf_counter() - start,
            arcs=len(mig.moves),
            keys_before=before,
            keys_after=self.stats(),
        )

    def _run_migration(self, mig: Migration, batch_size: int, progress: Progress | None, planned: int) -> None:
        """Run (or continue) ``mig``, keeping the journal's record of stale copies exact.

        Stale copies of a failed batch are dropped first and the journal rewritten
        without them *before* anything moves again: replaying an old list after
        those keys moved for real would delete live records.
        """
        try:
            if mig.dirty is not None:
                mig.clean(self._servers)
                self._save(journal=self._journal)  # self._journal never holds "dirty"
            mig.run(self._servers, self._gate, batch_size=batch_size, progress=progress, planned=planned)
        except BaseException:
            if mig.dirty is not None:  # remember where stale copies may be, across a restart too
                self._save(journal={**self._journal, "dirty": [mig.dirty[0], mig.dirty[1]]})
            raise

    def finish_rebalance(
        self, *, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None
    ) -> RebalanceReport | None:
        """Finish a rebalance that stopped on an error (a shard was unavailable).

        Operations keep routing correctly meanwhile; this continues the
        migration where it stopped. Returns ``None`` if there was nothing to finish.
        (A store reopened after a crash finishes by itself.)
        """
        with self._admin:
            self._check_open()
            mig = self._migration
            if mig is None:
                return None
            self._lock_exclusive()
            try:
                start = time.perf_counter()
                before = self.stats()
                moved, nbytes = mig.keys_moved, mig.bytes_moved
                self._run_migration(mig, batch_size, progress, 0)
                journal = self._journal
                self._commit(cast(AnyRing, mig.new), journal["shards"], list(journal["drop"]))
                return self._report(mig, start, before, moved, nbytes)
            finally:
                self._lock_shared()

    def _lock_exclusive(self) -> None:
        """Take the store alone, or raise StoreBusy.

        Converting our shared ``LOCK`` to exclusive is not atomic: a failed
        attempt may drop the shared lock for a moment. So a rebalancer first
        takes ``ADMIN`` exclusively: two handles can never both be converting,
        and neither can slip in while the other's shared lock is down.
        """
        if self._lock_fd is None or self._directory is None:
            return
        admin = os.open(self._directory / ADMIN, os.O_RDWR | os.O_CREAT, 0o600)
        if not self._try_lock(admin, fcntl.LOCK_EX):
            os.close(admin)
            raise StoreBusy(f"store {self._directory}: another rebalance is running")
        if not self._try_lock(self._lock_fd, fcntl.LOCK_EX):
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)  # a failed conversion may drop our lock
            os.close(admin)
            raise StoreBusy(
                f"store {self._directory} is open in another process; a rebalance needs it"
                " alone: close the other processes (servers, CLIs) and try again"
            )
        self._admin_fd = admin

    def _lock_shared(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
        admin = self._admin_fd
        if admin is not None:
            os.close(admin)  # releases ADMIN
            self._admin_fd = None

    # -- checks and lifetime ----------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the store is closed")

    def _check(self) -> None:
        """Assert the store's invariants: the ring's own, and every key on its owner."""
        assert self._migration is None, "a rebalance is in progress"
        self._ring._check()
        assert set(self._ring.nodes) == set(self._servers), "ring and shards disagree"
        for name, server in self._servers.items():
            for key, _ in server.scan(-1, MAX_KEY):
                owner = self._ring.node_for(key)
                assert owner == name, f"key {key} is on {name}, its owner is {owner}"

    def close(self) -> None:
        """Close every shard and release the store's lock. Idempotent."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        for server in self._servers.values():
            server.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> DHTServerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f" at {self._directory}" if self._directory else ""
        return f"<DHTServerStore {len(self._servers)} shards{where}>"
