"""The store: a ring of shards, routing every key to its owner and following redirects.

>>> from dhtcart import DHTServerStore, hash_key
>>> store = DHTServerStore(shards=5)          # five in-memory shards
>>> store.put(hash_key("alice"), b"cart")
1
>>> store.get(hash_key("alice")).value
b'cart'
>>> report = store.add_shard("shard-5")       # moves about 1/6 of the keys
>>> sorted(store.stats())
['shard-0', 'shard-1', 'shard-2', 'shard-3', 'shard-4', 'shard-5']
>>> store.epoch                                # 1, then migration, commit
3
>>> store.close()

A persistent store lives in one directory::

    store/
      manifest.json     the membership: epoch, members, URLs, the ring, a migration in progress
      ADMIN             flock: the rebalance lease (held while a rebalance runs)
      LEASE             the last lease token handed out, and its holder
      shards/shard-0/   one LMDB environment per shard (data.mdb, lock.mdb)
      ...

or keeps its membership in a Redis database, so that clients on other hosts
open it from one URL: ``DHTServerStore.open("redis://host:6379/0", shards={...})``.

Routing: each handle routes with its cached copy of the membership (see
:mod:`dhtcart.membership`). Each shard checks, in the same atomic step as the
operation, that it owns the key, and otherwise answers with a redirect
(:class:`~dhtcart.errors.Moved`); the handle then reloads the membership when
the redirect says it is stale, follows the owner the shard names, or waits for
a hand-over in progress, and tries again, for at most ``redirect_timeout``
seconds (then :class:`~dhtcart.errors.KeyUnavailable`). So a handle opened
before a rebalance keeps working after it, never writes to the wrong shard,
and never reads a value older than the newest acknowledged one.

Rebalances (:meth:`DHTServerStore.add_shard`, ``remove_shard``,
``set_weight``) run while every other handle, in any process, keeps serving:
one at a time, under the membership's lease (another rebalancer gets
:class:`~dhtcart.errors.StoreBusy`). The protocol is in
:mod:`dhtcart.rebalance` and ``docs/rebalance.md``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from dhtcart.backends import open_backend
from dhtcart.backends.base import Backend, BackendContext, Record
from dhtcart.backends.ownership import FROZEN, NOT_OWNED, OWNED, Ownership, Segments
from dhtcart.errors import (
    InvalidInput,
    KeyUnavailable,
    Moved,
    ShardExists,
    ShardNotFound,
    ShardUnavailable,
    StoreBusy,
    StoreClosed,
)
from dhtcart.hashing import KEY_SPACE, MAX_KEY
from dhtcart.membership import (
    DEFAULT_LEASE_TTL,
    DirectoryMembership,
    Lease,
    LocalMembership,
    Membership,
    MembershipDoc,
    holder_name,
    open_membership,
)
from dhtcart.rebalance import (
    DEFAULT_BATCH_SIZE,
    Migration,
    Mover,
    Progress,
    RebalancePlan,
    RebalanceReport,
    estimate_keys,
    plan,
)
from dhtcart.ring import (
    DEFAULT_PARTITIONS,
    MAX_PARTITIONS,
    PARTITIONS_PER_WEIGHT,
    HashRing,
    PartitionRing,
    ring_from_dict,
)
from dhtcart.server import MAX_VALUE_SIZE, DHTServer, check_key, check_value, check_version

__all__ = ["DEFAULT_REDIRECT_TIMEOUT", "MANIFEST_FORMAT", "DHTServerStore", "RebalanceStatus"]

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 2
SHARDS_DIR = "shards"
#: seconds an operation follows redirects before it raises KeyUnavailable
DEFAULT_REDIRECT_TIMEOUT = 15.0
#: seconds an operation waits on a hand-over before it tries to finish it itself
DEFAULT_TAKEOVER_AFTER = 0.25
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_T = TypeVar("_T")

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


def _check_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
        raise InvalidInput(name, f"must be a positive number of seconds, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class RebalanceStatus:
    """Where the store's membership stands (``dhtcart stats`` shows it)."""

    epoch: int  #: the membership epoch this handle routes with
    migrating: bool  #: a migration is in progress (or was left by a rebalancer that stopped)
    arcs: int  #: arcs that change owner in the migration
    arcs_done: int  #: arcs wholly handed over
    fraction_done: float  #: share of the moving key space already handed over
    holder: str | None  #: who holds the rebalance lease, if anyone
    adding: list[str]  #: shards the migration adds
    removing: list[str]  #: shards it removes
    unreachable: list[str]  #: shards whose records could not be read (their progress counts as none)
    keys_moved: int = 0  #: keys the current (or last) migration has moved, as its rebalancer last reported
    keys_planned: int = 0  #: the keys it expects to move (an estimate from shard counts)


class _View:
    """One epoch of the membership, as this handle routes with it (immutable once built)."""

    __slots__ = ("doc", "epoch", "migration", "ring", "servers", "shift", "table")

    def __init__(self, doc: MembershipDoc, servers: dict[str, DHTServer], ring: AnyRing | None = None) -> None:
        self.doc = doc
        self.epoch = doc.epoch
        self.ring: AnyRing = ring_from_dict(doc.ring) if ring is None else ring
        self.servers = servers
        self.migration = None if doc.migration is None else Migration(self.ring, ring_from_dict(doc.migration["ring"]))
        self.table: list[Backend] | None = None
        self.shift = 0
        if self.migration is None and isinstance(self.ring, PartitionRing):
            # the hot path: a shift and an index straight to the backend
            self.table = [servers[o].backend for o in self.ring.owners()]
            self.shift = self.ring.shift

    def route(self, key: int) -> Backend:
        table = self.table
        if table is not None:
            return table[key >> self.shift]
        mig = self.migration
        name = mig.owner(key) if mig is not None else self.ring.node_for(key)
        return self.servers[name].backend


def _op_get(backend: Backend, key: int) -> Record | None:
    return backend.get(key)


class DHTServerStore:
    """Shards behind a consistent-hash ring.

    ``DHTServerStore(shards=5)`` is a working in-memory store of five shards
    named ``shard-0`` … ``shard-4``. ``shards`` may also be a mapping of shard
    name to backend URL or open :class:`Backend` (``{"a": "memory://", "b":
    "redis://h:6379/0"}``). Placement is a :class:`~dhtcart.ring.PartitionRing`
    of ``partitions`` partitions unless ``ring`` is given (it must list exactly
    the shards). Such a store's membership lives in this process; use
    :meth:`open` for a store that other processes and hosts share.
    """

    _view: _View  #: the membership this handle routes with (replaced whole, never changed)

    def __init__(
        self,
        shards: int | Mapping[str, str | Backend] = 5,
        *,
        backend: str = "memory://",
        partitions: int = DEFAULT_PARTITIONS,
        ring: AnyRing | None = None,
        redirect_timeout: float = DEFAULT_REDIRECT_TIMEOUT,
    ) -> None:
        urls = self._shard_urls(shards, backend)
        if ring is None:
            ring = PartitionRing(list(urls), partitions=partitions)
        elif set(ring.nodes) != set(urls):
            raise InvalidInput("ring", "the ring's nodes must be exactly the shards")
        self._init(LocalMembership(), "process", redirect_timeout)
        self._instances.update((n, u) for n, u in urls.items() if isinstance(u, Backend))
        try:
            doc = MembershipDoc(
                1, ring.to_dict(), {n: self._url_of(u) for n, u in urls.items()}, dict.fromkeys(urls, 1), "process"
            )
            # claim the shards: a store without shared membership owns them alone (a shard
            # that cannot be reached now is claimed when it first answers)
            self._claim_all(doc, ring, token=0, lazy=True)
            self._membership.create(doc)
            self._apply(doc, ring)
        except BaseException:
            self.close()
            raise

    def _init(self, membership: Membership, durability: str, redirect_timeout: float) -> None:
        self._membership = membership
        self._durability = durability
        self._redirect_timeout = _check_seconds("redirect_timeout", redirect_timeout)
        self._takeover_after = DEFAULT_TAKEOVER_AFTER
        self._instances: dict[str, Backend] = {}
        self._opened: dict[tuple[str, int], DHTServer] = {}  # (name, born) -> shard
        self._open_lock = threading.Lock()
        self._apply_lock = threading.Lock()
        self._unclaimed: dict[Backend, Ownership] = {}  # shards to claim when they answer
        self._admin = threading.Lock()  # this handle's rebalances, one at a time
        self._closed = False
        self._counters = {"redirects": 0, "reloads": 0, "waits": 0, "takeovers": 0}

    @staticmethod
    def _url_of(u: str | Backend) -> str:
        return u if isinstance(u, str) else u.url

    @staticmethod
    def _shard_urls(shards: int | Mapping[str, str | Backend], backend: str) -> dict[str, str | Backend]:
        if isinstance(shards, Mapping):
            urls = {_check_shard_name(n): u for n, u in shards.items()}
            for n, u in urls.items():
                if not isinstance(u, str | Backend):
                    raise InvalidInput("shards", f"shard {n!r}: a URL or a Backend, not {type(u).__name__}")
        elif isinstance(shards, bool) or not isinstance(shards, int):
            raise InvalidInput("shards", f"must be an int or a mapping name -> URL, not {type(shards).__name__}")
        else:
            if not 1 <= shards <= 4096:
                raise InvalidInput("shards", f"must be between 1 and 4096, got {shards}")
            urls = {f"shard-{i}": backend for i in range(shards)}
        if not urls:
            raise InvalidInput("shards", "a store needs at least one shard")
        return urls

    # -- shards and views ---------------------------------------------------------

    def _context(self, name: str) -> BackendContext:
        return BackendContext(name=name, base_dir=self._membership.base_dir, durability=self._durability, fenced=True)

    def _server(self, name: str, url: str, born: int) -> DHTServer:
        """The open shard ``name`` of incarnation ``born`` (opened on first use)."""
        key = (name, born)
        server = self._opened.get(key)
        if server is None:
            with self._open_lock:
                server = self._opened.get(key)
                if server is None:
                    instance = self._instances.get(name)
                    if instance is not None:
                        instance.fenced = True
                        backend = instance
                    else:
                        backend = open_backend(url, context=self._context(name))
                    server = self._opened[key] = DHTServer(backend, name=name)
        return server

    def _apply(self, doc: MembershipDoc, ring: AnyRing | None = None) -> _View:
        """Route with ``doc`` (whose ring may be given as an object) from now on, if it is newer."""
        with self._apply_lock:
            current: _View | None = self.__dict__.get("_view")
            if current is not None and doc.epoch <= current.epoch:
                return current
            servers = {n: self._server(n, u, doc.born.get(n, 0)) for n, u in doc.shards.items()}
            view = self._view = _View(doc, servers, ring)
            return view

    def _refresh(self) -> _View:
        """Reload the membership; route with it if it is newer."""
        self._counters["reloads"] += 1
        doc = self._membership.load()
        if doc is None:
            raise StoreClosed(f"the store at {self._membership.location} no longer exists")
        return self._apply(doc)

    def _claim_all(self, doc: MembershipDoc, ring: AnyRing, token: int, *, lazy: bool = False) -> None:
        """Give every shard of ``doc`` the record of owning its arcs of ``ring`` (a store being
        created claims its shards, whatever token they have seen).

        ``lazy``: a shard that cannot be reached now is claimed when it first
        refuses an operation (stores whose membership is in this process only).
        """
        arcs: dict[str, list[tuple[int, int]]] = {n: [] for n in doc.shards}
        for arc in ring.arcs():
            arcs[arc.node].append((arc.lo, arc.hi))
        for name, url in doc.shards.items():
            backend = self._server(name, url, doc.born[name]).backend
            record = Ownership(doc.epoch, token, Segments.owning(arcs[name]))
            try:
                backend.claim(record, force=True)
            except ShardUnavailable:
                if not lazy:
                    raise
                self._unclaimed[backend] = record

    def _claim_late(self, backend: Backend) -> bool:
        """Claim a shard that was unreachable when the store was made; whether it was one."""
        record = self._unclaimed.get(backend)
        if record is None:
            return False
        backend.claim(record, force=True)
        self._unclaimed.pop(backend, None)
        return True

    # -- persistent stores ----------------------------------------------------------

    @classmethod
    def open(
        cls,
        location: str | os.PathLike[str],
        *,
        shards: int | Mapping[str, str] = 5,
        durability: Durability = "process",
        partitions: int = DEFAULT_PARTITIONS,
        lock_timeout: float = 10.0,
        redirect_timeout: float = DEFAULT_REDIRECT_TIMEOUT,
        lease_ttl: float = DEFAULT_LEASE_TTL,
    ) -> DHTServerStore:
        """Create or reopen the store whose membership lives at ``location``.

        ``location`` is a directory (``manifest.json`` there), or a
        ``redis://host:port/db[?prefix=...]`` URL of a Redis database that
        holds the membership, so that clients on any host open the store from
        that URL alone. On creation, ``shards`` LMDB shards are made under
        ``directory/shards`` (or ``shards`` maps names to backend URLs, e.g.
        Redis servers; relative ``lmdb://`` paths are taken inside the
        directory; a Redis-kept store needs the mapping). On reopening,
        ``shards`` and ``partitions`` are ignored: the membership says what the
        store is. ``durability`` is the LMDB mode (see
        :mod:`dhtcart.backends.lmdb`), fixed at creation. ``lock_timeout``
        bounds the wait for another process that is creating the store.
        ``lease_ttl``: how long a Redis-kept lease outlives a dead holder.

        If a rebalancer died and left a migration, and nobody holds the lease,
        opening finishes the migration first.
        """
        if durability not in ("process", "power"):
            raise InvalidInput("durability", f"must be 'process' or 'power', not {durability!r}")
        lock_timeout = _check_seconds("lock_timeout", lock_timeout)
        membership = open_membership(location, lease_ttl=_check_seconds("lease_ttl", lease_ttl))
        store = cls.__new__(cls)
        store._init(membership, durability, redirect_timeout)
        try:
            doc = membership.load()
            if doc is None or doc.legacy:
                doc = store._create_or_upgrade(shards, durability, partitions, lock_timeout)
            store._durability = doc.durability
            store._apply(doc)
            if doc.migration is not None or doc.retired:
                store._finish_if_free()
        except BaseException:
            store.close()
            raise
        return store

    def _wait_lease(self, timeout: float) -> Lease:
        deadline = time.monotonic() + timeout
        while True:
            lease = self._membership.try_lease(holder_name())
            if lease is not None:
                return lease
            if time.monotonic() > deadline:
                holder = self._membership.lease_holder()
                raise StoreBusy(
                    f"store {self._membership.location} is locked by {holder or 'another process'}"
                    f" (creating it, or rebalancing) for more than {timeout:g} s; try again later"
                )
            time.sleep(0.02)

    def _create_or_upgrade(
        self, shards: int | Mapping[str, str], durability: str, partitions: int, lock_timeout: float
    ) -> MembershipDoc:
        with self._wait_lease(lock_timeout) as lease:
            doc = self._membership.load()
            if doc is not None and not doc.legacy:
                return doc  # another process created it meanwhile
            if doc is not None:  # dhtcart 0.1's manifest: give the shards their ownership records
                self._durability = doc.durability
                new = doc.next(born=dict.fromkeys(doc.shards, 1))
                self._claim_all(new, ring_from_dict(new.ring), lease.token)
                self._membership.publish(new, lease)
                return new
            self._durability = durability
            local = isinstance(self._membership, DirectoryMembership)
            urls = self._shard_urls(shards, "")
            if not local and not all(urls.values()):
                raise InvalidInput("shards", "a store whose membership is kept in Redis needs shards={name: URL, ...}")
            named = {n: (u if isinstance(u, str) and u else f"lmdb://{SHARDS_DIR}/{n}") for n, u in urls.items()}
            for name, url in named.items():
                self._check_persistent_url(name, url)
            ring = PartitionRing(list(named), partitions=partitions)
            doc = MembershipDoc(1, ring.to_dict(), named, dict.fromkeys(named, 1), durability)
            self._claim_all(doc, ring, lease.token)
            return self._membership.create(doc)

    def _check_persistent_url(self, name: str, url: object) -> str:
        if not isinstance(url, str):
            raise InvalidInput("backend", "a persistent store records its shards by URL: pass the backend's URL")
        if url.startswith("memory:"):
            raise InvalidInput(
                "backend", f"shard {name!r}: a persistent store cannot have a memory:// shard: its keys would vanish"
            )
        return url

    # -- routing ------------------------------------------------------------------

    @property
    def ring(self) -> AnyRing:
        """The current ring (during a rebalance: the ring before it)."""
        return self._view.ring

    @property
    def epoch(self) -> int:
        """The membership epoch this handle routes with."""
        return self._view.epoch

    @property
    def servers(self) -> dict[str, DHTServer]:
        """The shards by name (a copy of the mapping; during a rebalance, old and new)."""
        return dict(self._view.servers)

    @property
    def directory(self) -> Path | None:
        """The store's directory, or ``None`` for a store without one."""
        base = self._membership.base_dir
        return None if base is None else Path(base)

    @property
    def location(self) -> str:
        """Where the membership lives: a directory, a Redis URL (password masked), or ``"memory"``."""
        return self._membership.location

    @property
    def fast_local(self) -> bool:
        """Whether every shard is :attr:`~dhtcart.backends.base.Backend.fast_local` (an event
        loop may then call the store directly instead of through a thread)."""
        return all(s.backend.fast_local for s in self._view.servers.values())

    def routing_stats(self) -> dict[str, int]:
        """Counts since open: ``redirects`` followed, membership ``reloads``, ``waits`` on a
        hand-over, ``takeovers`` of a dead rebalancer's batches."""
        return dict(self._counters)

    def server_for(self, key: int) -> DHTServer:
        """The shard that owns ``key`` as far as this handle knows (no redirect is followed)."""
        key = check_key(key)
        view = self._view
        backend = view.route(key)
        for server in view.servers.values():
            if server.backend is backend:
                return server
        raise ShardNotFound(f"no shard routes key {key}")  # pragma: no cover - routes come from servers

    def get(self, key: int) -> Record | None:
        """``Record(version, value)`` under ``key``, or ``None``."""
        if type(key) is not int or not 0 <= key < KEY_SPACE:
            key = check_key(key)
        view = self._view
        table = view.table
        try:
            if table is not None:
                return table[key >> view.shift].get(key)
            return view.route(key).get(key)
        except (Moved, StoreClosed) as exc:
            return self._retry(key, exc, _op_get)

    def put(self, key: int, value: bytes, expected_version: int | None = None) -> int:
        """Store ``value``; return the new version (compare-and-set with ``expected_version``)."""
        if type(key) is not int or not 0 <= key < KEY_SPACE:
            key = check_key(key)
        if type(value) is not bytes or len(value) > MAX_VALUE_SIZE:
            value = check_value(value)
        if expected_version is not None and (type(expected_version) is not int or expected_version < 0):
            check_version(expected_version)
        view = self._view
        table = view.table
        try:
            if table is not None:
                return table[key >> view.shift].put(key, value, expected_version)
            return view.route(key).put(key, value, expected_version)
        except (Moved, StoreClosed) as exc:
            return self._retry(key, exc, lambda b, k: b.put(k, value, expected_version))

    def delete(self, key: int, expected_version: int | None = None) -> bool:
        """Remove ``key``; return whether it existed (conditional with ``expected_version``)."""
        if type(key) is not int or not 0 <= key < KEY_SPACE:
            key = check_key(key)
        if expected_version is not None and (type(expected_version) is not int or expected_version < 0):
            check_version(expected_version)
        view = self._view
        try:
            return view.route(key).delete(key, expected_version)
        except (Moved, StoreClosed) as exc:
            return self._retry(key, exc, lambda b, k: b.delete(k, expected_version))

    def _retry(self, key: int, exc: Exception, op: Callable[[Backend, int], _T]) -> _T:
        """Follow redirects for ``key`` until ``op`` runs on its owner, or the bound is reached.

        A redirect that names the owner is followed at once (at most a few in a
        row); one from a shard with a newer epoch reloads the membership first;
        one without an owner (a hand-over in flight) waits, with a growing
        pause of at most 5 ms, and every ``DEFAULT_TAKEOVER_AFTER`` seconds of
        waiting tries to take the lease and finish a dead rebalancer's batch itself.
        """
        if isinstance(exc, StoreClosed) and self._closed:
            raise exc
        if self._unclaimed and isinstance(exc, Moved):
            backend = self._view.route(key)
            if self._claim_late(backend):
                return op(backend, key)
        counters = self._counters
        start = time.monotonic()
        deadline = start + self._redirect_timeout
        delay = 0.0002
        last_reload = 0.0
        follows = 0
        next_takeover = start + self._takeover_after
        for attempt in itertools.count():
            counters["redirects"] += 1
            now = time.monotonic()
            moved = exc if isinstance(exc, Moved) else None
            view = self._view
            owner = moved.owner if moved is not None and moved.state == NOT_OWNED else None
            if (
                moved is None  # a shard closed under us: it left the membership
                or moved.epoch > view.epoch  # the shard has seen a newer membership
                or (attempt == 0 and owner not in view.servers)  # a redirect this view cannot follow
                or now - last_reload > 0.05  # waiting long: the membership may have moved on
            ):
                try:
                    view = self._refresh()
                except ShardUnavailable:  # the membership's database is down: go on with this view
                    if now > deadline:
                        raise
                last_reload = now
            if owner is not None and owner in view.servers and follows < 4:
                follows += 1
                target = view.servers[owner].backend
                if view.migration is not None:
                    view.migration.learn(key, owner)
            else:  # a hand-over in flight (frozen, or released and not yet taken): wait
                if now > deadline:
                    where = moved.shard if moved is not None and moved.shard else "?"
                    raise KeyUnavailable(
                        key,
                        where,
                        f"redirects reached no owner within {self._redirect_timeout:g} s"
                        " (a hand-over did not finish: is a shard it needs down?)",
                    ) from exc
                if now >= next_takeover and view.migration is not None:
                    next_takeover = now + self._takeover_after  # the lease may be held: try again later
                    self._take_over()
                    view = self._view
                counters["waits"] += 1
                time.sleep(delay)
                delay = min(delay * 2, 0.005)
                follows = 0
                target = view.route(key)
            try:
                return op(target, key)
            except Moved as again:
                again.shard = next((n for n, s in view.servers.items() if s.backend is target), None)
                exc = again
            except StoreClosed as again:
                if self._closed:
                    raise
                exc = again
        raise AssertionError("unreachable")  # pragma: no cover

    def _take_over(self) -> None:
        """Finish the batches a dead rebalancer left half done, if nobody holds the lease.

        Best effort: whatever goes wrong (the membership's database down, a shard
        unreachable), the waiting operation goes on waiting and tries again later.
        """
        try:
            lease = self._membership.try_lease(holder_name())
        except Exception:
            return
        if lease is None:
            return
        try:
            self._counters["takeovers"] += 1
            view = self._refresh()
            if view.migration is None:
                return
            mover = Mover(view.migration, self._backends(view), lease.token, view.epoch, check_lease=lease.check)
            mover.run(in_flight_only=True)
        except Exception:
            pass
        finally:
            lease.release()

    @staticmethod
    def _backends(view: _View) -> dict[str, Backend]:
        return {n: s.backend for n, s in view.servers.items()}

    def items(self) -> Iterator[tuple[int, Record]]:
        """Every ``(key, record)`` that a shard serves, shard by shard (for inspection and tests).

        Only the ranges each shard owns are read, so a copy left on a shard that
        no longer owns it is never listed and every key appears once.
        """
        for server in list(self._view.servers.values()):
            for lo, hi in server.backend.ownership().segments.in_state(OWNED, FROZEN):
                yield from server.backend.scan(lo, hi)

    def stats(self) -> dict[str, int]:
        """Keys per shard (during a rebalance, a batch in flight may be counted on both sides)."""
        return {name: s.count() for name, s in sorted(self._view.servers.items())}

    def count(self) -> int:
        """Keys in the whole store (exact outside a rebalance)."""
        return sum(s.count() for s in self._view.servers.values())

    def __len__(self) -> int:
        return self.count()

    def rebalance_status(self) -> RebalanceStatus:
        """The epoch, and how far a migration in progress has gone (read from the shards' records)."""
        view = self._refresh()
        holder = self._membership.lease_holder()
        mig = view.migration
        report = self._membership.progress()
        moved, planned = (report[1], report[2]) if report is not None else (0, 0)
        if mig is None:
            return RebalanceStatus(view.epoch, False, 0, 0, 1.0, holder, [], [], [], moved, planned)
        done_arcs = 0
        done = total = 0
        segs: dict[str, Segments] = {}
        unreachable = []
        for name, server in view.servers.items():
            if name in mig.new.nodes:
                try:
                    segs[name] = server.backend.ownership().segments
                except ShardUnavailable:
                    unreachable.append(name)
                    segs[name] = Segments.all()
        for m in mig.moves:
            owned = sum(b - a for a, b, st, _ in segs[m.target].spans(m.lo, m.hi) if st == OWNED)
            total += m.size
            done += owned
            done_arcs += int(owned == m.size)
        since = view.doc.migration["since"] if view.doc.migration else -1
        adding = sorted(set(mig.new.nodes) - set(view.ring.nodes))
        removing = sorted(view.doc.migration["drop"]) if view.doc.migration else []
        return RebalanceStatus(
            view.epoch,
            True,
            len(mig.moves),
            done_arcs,
            done / total if total else 1.0,
            holder,
            adding,
            removing,
            sorted(unreachable),
            moved if report is not None and report[0] == since else 0,
            planned if report is not None and report[0] == since else 0,
        )

    # -- rebalancing ------------------------------------------------------------

    def _next_name(self) -> str:
        servers = self._view.servers
        i = len(servers)
        while f"shard-{i}" in servers:
            i += 1
        return f"shard-{i}"

    def _ring_with(self, op: str, name: str, weight: int = 1) -> AnyRing:
        """The ring after the change (from the current ring; call with no migration pending)."""
        view = self._view
        if view.migration is not None:
            raise StoreBusy(
                f"store {self.location}: a rebalance is in progress (or stopped unfinished);"
                " plan once it has finished (any rebalance or finish_rebalance() finishes a stopped one)"
            )
        ring = view.ring.copy()
        servers = view.servers
        if op == "add":
            if name in servers:
                raise ShardExists(f"shard {name!r} is already in the store")
            total = sum(ring.nodes.values()) + weight
        elif name not in ring.nodes:
            raise ShardNotFound(f"no shard named {name!r}; shards: {', '.join(sorted(ring.nodes))}")
        elif op == "remove":
            if len(ring.nodes) == 1:
                raise InvalidInput("name", "cannot remove the last shard of a store")
            total = sum(ring.nodes.values()) - ring.nodes[name]
        else:
            total = sum(ring.nodes.values()) - ring.nodes[name] + weight
        if isinstance(ring, PartitionRing):
            # keep >= PARTITIONS_PER_WEIGHT partitions per unit of weight: balance within 1/64
            while ring.partitions < PARTITIONS_PER_WEIGHT * total and ring.partitions < MAX_PARTITIONS:
                ring = ring.doubled()
        if op == "add":
            ring.add_node(name, weight)
        elif op == "remove":
            ring.remove_node(name)
        else:
            ring.set_weight(name, weight)
        return ring

    def plan_add_shard(self, name: str, weight: int = 1) -> RebalancePlan:
        """What :meth:`add_shard` would move, without moving anything."""
        _check_shard_name(name)
        new = self._ring_with("add", name, weight)
        servers = dict(self._view.servers)
        servers.setdefault(name, DHTServer(name=name))  # empty stand-in: only read as a target
        return plan(self._view.ring, new, servers)

    def plan_remove_shard(self, name: str) -> RebalancePlan:
        """What :meth:`remove_shard` would move, without moving anything."""
        return plan(self._view.ring, self._ring_with("remove", name), self._view.servers)

    def plan_set_weight(self, name: str, weight: int) -> RebalancePlan:
        """What :meth:`set_weight` would move, without moving anything."""
        return plan(self._view.ring, self._ring_with("weight", name, weight), self._view.servers)

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

        ``backend`` is the new shard's URL (or, for a store without shared
        membership, an open :class:`Backend`): by default a new LMDB directory
        in a directory store, ``memory://`` in an in-process one.
        """
        return self._rebalance("add", name, weight, backend, batch_size, progress)

    def remove_shard(
        self, name: str, *, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None
    ) -> RebalanceReport:
        """Move a shard's keys to their new owners, then drop the shard and its data."""
        return self._rebalance("remove", name, 1, None, batch_size, progress)

    def set_weight(
        self,
        name: str,
        weight: int,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: Progress | None = None,
    ) -> RebalanceReport:
        """Change a shard's weight and move the arcs that change owner."""
        return self._rebalance("weight", name, weight, None, batch_size, progress)

    def finish_rebalance(
        self, *, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None
    ) -> RebalanceReport | None:
        """Finish a rebalance that stopped (an error, or its process died).

        Operations keep routing correctly meanwhile; this continues the
        migration where the shards' records say it stopped. Returns ``None``
        if there was nothing to finish. Raises :class:`StoreBusy` while another
        rebalancer holds the lease.
        """
        self._check_open()
        with self._admin, self._lease() as lease:
            before = self.stats()
            start = time.perf_counter()
            doc = self._refresh().doc
            if doc.migration is None and not doc.retired:
                return None
            mover = self._finish(lease, batch_size, progress)
            return self._report(mover, start, before)

    def _lease(self) -> Lease:
        lease = self._membership.try_lease(holder_name())
        if lease is None:
            holder = self._membership.lease_holder()
            raise StoreBusy(
                f"store {self._membership.location}: another rebalance is running"
                f" (lease held by {holder or 'another handle'}); try again when it ends"
            )
        return lease

    def _finish_if_free(self) -> None:
        """Finish a stopped migration when nobody holds the lease (the next opener's duty).

        A shard it needs being down does not stop the opening: the store routes
        with the membership as it is, and the next rebalance, opener or
        :meth:`finish_rebalance` tries again.
        """
        lease = self._membership.try_lease(holder_name())
        if lease is not None:
            with lease, contextlib.suppress(ShardUnavailable, KeyUnavailable):
                self._finish(lease)

    def _reporter(self, epoch: int, planned: int) -> Callable[[int], None]:
        """Report keys moved to the membership (for every handle's status and metrics), at most
        every quarter second."""
        membership = self._membership
        last = [0.0]
        membership.report_progress(epoch, 0, planned)

        def report(moved: int) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.25:
                last[0] = now
                membership.report_progress(epoch, moved, max(planned, moved))

        return report

    def _finish(
        self, lease: Lease, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None
    ) -> Mover | None:
        """Holding ``lease``: finish the migration in the membership, if any, and destroy retired shards."""
        view = self._refresh()
        mover = None
        doc = view.doc
        if view.migration is not None:
            planned = estimate_keys(view.migration.moves, view.ring, view.servers)
            mover = Mover(
                view.migration,
                self._backends(view),
                lease.token,
                doc.epoch,
                batch_size=batch_size,
                progress=progress,
                planned=planned,
                check_lease=lease.check,
                report=self._reporter(doc.epoch, planned),
            )
            mover.run()
            self._membership.report_progress(doc.epoch, mover.keys_moved, max(planned, mover.keys_moved))
            doc = self._commit(doc, lease)
        if doc.retired:
            self._destroy_retired(doc, lease)
        return mover

    def _commit(self, doc: MembershipDoc, lease: Lease) -> MembershipDoc:
        """The migration is done: publish the new ring, and the shards that left as retired."""
        assert doc.migration is not None
        drop = list(doc.migration["drop"])
        new = doc.next(
            ring=doc.migration["ring"],
            shards={n: u for n, u in doc.shards.items() if n not in drop},
            born={n: b for n, b in doc.born.items() if n not in drop},
            migration=None,
            retired={**doc.retired, **{n: doc.shards[n] for n in drop if n in doc.shards}},
        )
        self._membership.publish(new, lease)
        self._apply(new)
        return new

    def _destroy_retired(self, doc: MembershipDoc, lease: Lease) -> MembershipDoc:
        """Empty the shards that left the ring (they own nothing any more), then remove them.

        The emptying is fenced by the lease's token on the shard itself (its
        record is set to own nothing, then every record is dropped), so a
        rebalancer whose lease expired can never empty a shard that a successor
        has re-created meanwhile. The medium itself (an LMDB directory, a Redis
        shard's keys) is removed only where a lease cannot expire under a live
        holder (a directory store's flock, a store in one process); a Redis-kept
        store leaves a removed shard's empty ownership record behind, so that an
        old rebalancer stays fenced out of it. A retired shard that cannot be
        reached stays retired, to be emptied by the next lease holder.
        """
        # a retired shard this handle has open: its newest incarnation (the one that left)
        retiring = {name: server for (name, _), server in sorted(self._opened.items(), key=lambda kv: kv[0][1])}
        removable = isinstance(self._membership, DirectoryMembership | LocalMembership)
        left: dict[str, str] = {}
        for name, url in doc.retired.items():
            server = retiring.get(name)
            try:
                backend = server.backend if server is not None else open_backend(url, context=self._context(name))
                backend.update_ownership(lease.token, doc.epoch)  # fenced: refused if a newer rebalancer came
                served = backend.ownership().segments.in_state(OWNED, FROZEN)
                if served:
                    raise RuntimeError(f"shard {name!r} left the ring but still serves {len(served)} ranges")
                backend.update_ownership(lease.token, doc.epoch, [(-1, MAX_KEY, NOT_OWNED, "")])
                backend.drop_ranges(lease.token, [(-1, MAX_KEY)])
                if removable:
                    backend.destroy()
                else:
                    backend.close()
            except ShardUnavailable:
                left[name] = url
                continue
            for key in [k for k in self._opened if k[0] == name]:
                del self._opened[key]
        if left == doc.retired:
            return doc
        new = doc.next(retired=left)
        self._membership.publish(new, lease)
        self._apply(new)
        return new

    def _rebalance(
        self,
        op: str,
        name: str | None,
        weight: int,
        backend: str | Backend | None,
        batch_size: int,
        progress: Progress | None,
    ) -> RebalanceReport:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInput("batch_size", f"must be a positive int, got {batch_size!r}")
        self._check_open()
        with self._admin:  # this handle's threads one after the other: each computes from the last
            if op == "add":
                name = _check_shard_name(name if name is not None else self._next_name())
            assert name is not None
            if self._refresh().migration is None:
                self._ring_with(op, name, weight)  # the errors before any data moves, without the lease
            persistent = not isinstance(self._membership, LocalMembership)
            if op == "add":
                if backend is None and persistent and self.directory is None:
                    raise InvalidInput(
                        "backend",
                        "a store whose membership is kept in Redis has no directory for a new LMDB shard:"
                        " give the new shard's backend= URL (e.g. redis://host:6379/0)",
                    )
                if backend is None:
                    backend = f"lmdb://{SHARDS_DIR}/{name}" if self.directory is not None else "memory://"
                if persistent:
                    backend = self._check_persistent_url(name, backend)
            with self._lease() as lease:
                self._finish(lease)  # a migration a stopped rebalancer left comes first
                view = self._view
                doc = view.doc
                new_ring = self._ring_with(op, name, weight)
                start = time.perf_counter()
                before = self.stats()
                epoch = doc.epoch + 1
                shards, born = dict(doc.shards), dict(doc.born)
                if op == "add":
                    assert backend is not None
                    if isinstance(backend, Backend):
                        self._instances[name] = backend
                    shards[name] = self._url_of(backend)
                    born[name] = epoch
                    added = self._server(name, shards[name], epoch).backend
                    held = added.count()
                    if held or added.ownership().segments.in_state(OWNED, FROZEN):
                        self._opened.pop((name, epoch), None)
                        if not isinstance(backend, Backend):
                            added.close()
                        raise InvalidInput(
                            "backend",
                            f"the new shard's medium ({added.url}) already holds {held} records or is"
                            " another shard's: a new shard must start empty, on a medium of its own",
                        )
                    added.claim(Ownership(epoch, lease.token, Segments.all()))  # owns nothing yet
                mig = doc.next(
                    shards=shards,
                    born=born,
                    migration={"ring": new_ring.to_dict(), "drop": [name] if op == "remove" else [], "since": epoch},
                )
                self._membership.publish(mig, lease)
                view = self._apply(mig)
                assert view.migration is not None
                planned = estimate_keys(view.migration.moves, view.ring, view.servers)
                mover = Mover(
                    view.migration,
                    self._backends(view),
                    lease.token,
                    epoch,
                    batch_size=batch_size,
                    progress=progress,
                    planned=planned,
                    check_lease=lease.check,
                    report=self._reporter(epoch, planned),
                )
                mover.run()
                self._membership.report_progress(epoch, mover.keys_moved, max(planned, mover.keys_moved))
                doc = self._commit(mig, lease)
                if doc.retired:
                    self._destroy_retired(doc, lease)
                return self._report(mover, start, before)

    def _report(self, mover: Mover | None, start: float, before: dict[str, int]) -> RebalanceReport:
        return RebalanceReport(
            keys_moved=mover.keys_moved if mover else 0,
            bytes_moved=mover.bytes_moved if mover else 0,
            seconds=time.perf_counter() - start,
            arcs=len(mover.migration.moves) if mover else 0,
            keys_before=before,
            keys_after=self.stats(),
        )

    # -- checks and lifetime ----------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the store is closed")

    def _check(self) -> None:
        """Assert the store's invariants: the ring's own, every shard's record owning
        exactly its arcs, and every key on its owner only."""
        view = self._refresh()
        assert view.migration is None, "a rebalance is in progress"
        assert not view.doc.retired, "a retired shard is not destroyed yet"
        ring = view.ring
        ring._check()
        assert set(ring.nodes) == set(view.servers), "ring and shards disagree"
        arcs: dict[str, list[tuple[int, int]]] = {n: [] for n in view.servers}
        for arc in ring.arcs():
            arcs[arc.node].append((arc.lo, arc.hi))
        for name, server in view.servers.items():
            segs = server.backend.ownership().segments
            assert not segs.in_state(FROZEN), f"{name} has frozen ranges"
            expected = Segments.owning(arcs[name]).in_state(OWNED)
            assert segs.in_state(OWNED) == expected, f"{name}'s ownership record differs from its arcs"
            for key, _ in server.backend.scan(-1, MAX_KEY):
                owner = ring.node_for(key)
                assert owner == name, f"key {key} is on {name}, its owner is {owner}"

    def close(self) -> None:
        """Close every shard and the membership. Idempotent."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        for server in list(self._opened.values()):
            server.close()
        self._membership.close()

    def __enter__(self) -> DHTServerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        view: _View | None = self.__dict__.get("_view")
        n = len(view.servers) if view is not None else 0
        return f"<DHTServerStore {n} shards at {self._membership.location}, epoch {view.epoch if view else 0}>"
