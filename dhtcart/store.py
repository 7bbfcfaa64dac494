"""The store: a ring of shards, routing every key to its owner and following redirects.

>>> from dhtcart import DHTServerStore, hash_key
>>> store = DHTServerStore(shards=5)          # five in-memory shards
>>> store.put(hash_key("alice"), b"cart")
1
>>> store.get(hash_key("alice")).value
b'cart'
>>> store[hash_key("alice")]                 # a MutableMapping[int, bytes] too
b'cart'
>>> report = store.add_shard("shard-5")       # moves about 1/6 of the keys
>>> sorted(store.stats())
['shard-0', 'shard-1', 'shard-2', 'shard-3', 'shard-4', 'shard-5']
>>> store.epoch                                # 1, then migration, commit
3
>>> store.close()

A persistent store is found by one *location* (see
:func:`dhtcart.membership.parse_location`): a directory::

    store/
      manifest.json     the membership: epoch, members, URLs, the ring, a migration in progress
      ADMIN             flock: the rebalance lease (held while a rebalance runs)
      LEASE             the last lease token handed out, and its holder
      shards/shard-0/   one LMDB environment per shard (data.mdb, lock.mdb)
      ...

or a Redis database that keeps the membership, so that clients on other hosts
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

The store only routes. Creating a store, rebalances (:meth:`DHTServerStore.add_shard`,
``remove_shard``, ``set_weight``), finishing a stopped one and retiring shards
are the :class:`~dhtcart.rebalance.coordinator.Coordinator`'s, one per handle;
they run while every other handle, in any process, keeps serving: one at a
time, under the membership's lease (another rebalancer gets
:class:`~dhtcart.errors.StoreBusy`). The protocol is in ``docs/rebalance.md``.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Literal, TypeVar

from dhtcart.backends import open_backend
from dhtcart.backends.base import BackendContext, Record
from dhtcart.backends.fencing import FencedBackend
from dhtcart.backends.ownership import FROZEN, NOT_OWNED, OWNED, Ownership, Segments
from dhtcart.checks import MAX_VALUE_SIZE, check_key, check_seconds, check_shard_name, check_value, check_version
from dhtcart.errors import (
    InvalidInput,
    KeyUnavailable,
    Moved,
    ShardUnavailable,
    StoreClosed,
    StoreNotFound,
)
from dhtcart.hashing import KEY_SPACE, MAX_KEY
from dhtcart.membership import (
    LocalMembership,
    Membership,
    MembershipDoc,
    open_membership,
    parse_location,
)
from dhtcart.rebalance.coordinator import Coordinator, RebalanceStatus
from dhtcart.rebalance.mover import Migration
from dhtcart.rebalance.plan import Progress, RebalancePlan, RebalanceReport
from dhtcart.ring import DEFAULT_PARTITIONS, HashRing, PartitionRing, ring_from_dict
from dhtcart.server import DHTServer
from dhtcart.settings import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LEASE_TTL,
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_REDIRECT_TIMEOUT,
    DEFAULT_TAKEOVER_AFTER,
    MANIFEST_FORMAT,
)

__all__ = ["DEFAULT_REDIRECT_TIMEOUT", "MANIFEST_FORMAT", "DHTServerStore", "RebalanceStatus"]

_T = TypeVar("_T")

Durability = Literal["process", "power"]
AnyRing = HashRing | PartitionRing


class _View:
    """One epoch of the membership, as this handle routes with it (immutable once built)."""

    __slots__ = ("doc", "epoch", "migration", "names", "ring", "shards", "shift", "table")

    def __init__(self, doc: MembershipDoc, shards: dict[str, DHTServer], ring: AnyRing | None = None) -> None:
        self.doc = doc
        self.epoch = doc.epoch
        self.ring: AnyRing = ring_from_dict(doc.ring) if ring is None else ring
        self.shards = shards
        self.migration = None if doc.migration is None else Migration(self.ring, ring_from_dict(doc.migration["ring"]))
        self.table: list[FencedBackend] | None = None
        self.shift = 0
        #: each backend's shard name (the label of what an operation touched)
        self.names: dict[FencedBackend, str] = {s.backend: n for n, s in shards.items()}  # type: ignore[misc]
        if self.migration is None and isinstance(self.ring, PartitionRing):
            # the hot path: a shift and an index straight to the backend
            self.table = [self.backend(o) for o in self.ring.owners()]
            self.shift = self.ring.shift

    def backend(self, name: str) -> FencedBackend:
        backend = self.shards[name].backend
        assert isinstance(backend, FencedBackend)
        return backend

    def backends(self) -> dict[str, FencedBackend]:
        """Every shard's backend by name (during a migration, old and new shards)."""
        return {n: self.backend(n) for n in self.shards}

    def route(self, key: int) -> FencedBackend:
        table = self.table
        if table is not None:
            return table[key >> self.shift]
        mig = self.migration
        name = mig.owner(key) if mig is not None else self.ring.node_for(key)
        return self.backend(name)


def _op_get(backend: FencedBackend, key: int) -> Record | None:
    return backend.get(key)


class DHTServerStore(MutableMapping[int, bytes]):
    """Shards behind a consistent-hash ring.

    ``DHTServerStore(shards=5)`` is a working in-memory store of five shards
    named ``shard-0`` … ``shard-4``. ``shards`` may also be a mapping of shard
    name to backend URL or open :class:`~dhtcart.backends.fencing.FencedBackend`
    (``{"a": "memory://", "b": "redis://h:6379/0"}``). Placement is a
    :class:`~dhtcart.ring.PartitionRing` of ``partitions`` partitions unless
    ``ring`` is given (it must list exactly the shards). Such a store's
    membership lives in this process; use :meth:`open` for a store that other
    processes and hosts share.

    The primary API is :meth:`get` / :meth:`put` / :meth:`delete`, with
    versions and compare-and-set. The store is also a
    ``MutableMapping[int, bytes]`` for code that expects a dict:
    ``store[key]`` (``KeyError`` if absent), ``store[key] = value``,
    ``del store[key]``, ``key in store``, ``len(store)`` and iteration over
    the keys. Two deliberate differences from a plain mapping: :meth:`get`
    returns the :class:`~dhtcart.backends.base.Record` (version and value),
    and :meth:`items` yields ``(key, Record)`` pairs; :meth:`values` yields
    the values' bytes. A store compares equal only to itself (it is a handle,
    not a value).
    """

    _view: _View  #: the membership this handle routes with (replaced whole, never changed)

    def __init__(
        self,
        shards: int | Mapping[str, str | FencedBackend] = 5,
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
        self._instances.update((n, u) for n, u in urls.items() if isinstance(u, FencedBackend))
        try:
            doc = MembershipDoc(
                1,
                ring.to_dict(),
                {n: u if isinstance(u, str) else u.url for n, u in urls.items()},
                dict.fromkeys(urls, 1),
                "process",
            )
            # claim the shards: a store without shared membership owns them alone (a shard
            # that cannot be reached now is claimed when it first answers)
            self._coordinator.claim_all(doc, ring, token=0, lazy=True)
            self._membership.create(doc)
            self._apply(doc, ring)
        except BaseException:
            self.close()
            raise

    def _init(self, membership: Membership, durability: str, redirect_timeout: float) -> None:
        self._membership = membership
        self._durability = durability
        self._redirect_timeout = check_seconds("redirect_timeout", redirect_timeout)
        self._takeover_after = DEFAULT_TAKEOVER_AFTER
        self._instances: dict[str, FencedBackend] = {}
        self._opened: dict[tuple[str, int], DHTServer] = {}  # (name, born) -> shard
        self._open_lock = threading.Lock()
        self._apply_lock = threading.Lock()
        self._unclaimed: dict[FencedBackend, Ownership] = {}  # shards to claim when they answer
        self._admin = threading.Lock()  # this handle's rebalances, one at a time
        self._closed = False
        self._counters = {"redirects": 0, "reloads": 0, "waits": 0, "takeovers": 0}
        self._last = threading.local()  # the shard each thread's last operation went to
        self._coordinator = Coordinator(self)

    @staticmethod
    def _shard_urls(shards: int | Mapping[str, str | FencedBackend], backend: str) -> dict[str, str | FencedBackend]:
        if isinstance(shards, Mapping):
            urls = {check_shard_name(n, "shards"): u for n, u in shards.items()}
            for n, u in urls.items():
                if not isinstance(u, str | FencedBackend):
                    raise InvalidInput(
                        "shards",
                        f"shard {n!r}: a URL or a fenced backend (memory, LMDB, Redis), not {type(u).__name__}",
                    )
        elif isinstance(shards, bool) or not isinstance(shards, int):
            raise InvalidInput("shards", f"must be an int or a mapping name -> URL, not {type(shards).__name__}")
        else:
            if not 1 <= shards <= 4096:
                raise InvalidInput("shards", f"must be between 1 and 4096, got {shards}")
            urls = {f"shard-{i}": backend for i in range(shards)}
        if not urls:
            raise InvalidInput("shards", "a store needs at least one shard")
        return urls

    # -- shards and views (also the coordinator's interface to this handle) ----------------

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
                        opened = open_backend(url, context=self._context(name))
                        if not isinstance(opened, FencedBackend):
                            opened.close()
                            raise InvalidInput(
                                "backend",
                                f"shard {name!r}: {url} is not a fenced backend (a store's shards keep an"
                                " ownership record: see dhtcart.backends.fencing)",
                            )
                        backend = opened
                    server = self._opened[key] = DHTServer(backend, name=name)
        return server

    def _backend(self, name: str, url: str, born: int) -> FencedBackend:
        backend = self._server(name, url, born).backend
        assert isinstance(backend, FencedBackend)
        return backend

    def _retiring(self, name: str) -> FencedBackend | None:
        """The newest incarnation of shard ``name`` this handle has open, if any (a shard leaving)."""
        born = [b for (n, b) in self._opened if n == name]
        if not born:
            return None
        backend = self._opened[(name, max(born))].backend
        assert isinstance(backend, FencedBackend)
        return backend

    def _forget(self, name: str, born: int | None = None, *, close: bool = False) -> None:
        """Stop tracking shard ``name`` (one incarnation, or all), closing it if asked."""
        for key in [k for k in self._opened if k[0] == name and (born is None or k[1] == born)]:
            server = self._opened.pop(key)
            if close:
                server.close()

    def _apply(self, doc: MembershipDoc, ring: AnyRing | None = None) -> _View:
        """Route with ``doc`` (whose ring may be given as an object) from now on, if it is newer.

        Shards that left the membership are closed, retired ones too: a handle
        never keeps a removed shard's medium open.
        """
        with self._apply_lock:
            current: _View | None = self.__dict__.get("_view")
            if current is not None and doc.epoch <= current.epoch:
                return current
            shards = {n: self._server(n, u, doc.born.get(n, 0)) for n, u in doc.shards.items()}
            view = self._view = _View(doc, shards, ring)
            self._close_departed(doc)
            return view

    def _close_departed(self, doc: MembershipDoc) -> None:
        """Close the shards this handle opened that ``doc`` no longer has in the ring.

        Retired shards are closed too: whoever destroys one opens it again by its
        URL, and a handle that learned the epoch in which a shard retired may never
        learn the next one (it only empties ``retired``, so no redirect leads to it).
        """
        for (name, born), server in list(self._opened.items()):
            if doc.born.get(name) == born and name in doc.shards:
                continue
            if name in self._instances and (doc.born.get(name) is not None or name in doc.retired):
                continue  # an instance handed in by the caller: reused by its next incarnation, or destroyed
            del self._opened[(name, born)]
            server.close()

    def _pushed(self, doc: MembershipDoc) -> None:
        """A document the membership pushed (its watch thread): route with it if it is newer."""
        if not self._closed:
            self._apply(doc)

    def _refresh(self) -> _View:
        """Reload the membership; route with it if it is newer."""
        self._counters["reloads"] += 1
        doc = self._membership.load()
        if doc is None:
            raise StoreClosed(f"the store at {self._membership.location} no longer exists")
        return self._apply(doc)

    def _claim_late(self, backend: FencedBackend) -> bool:
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
        durability: Durability | None = None,
        partitions: int = DEFAULT_PARTITIONS,
        create: bool = True,
        finish: bool = True,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        redirect_timeout: float = DEFAULT_REDIRECT_TIMEOUT,
        lease_ttl: float = DEFAULT_LEASE_TTL,
    ) -> DHTServerStore:
        """Create or reopen the store at ``location``.

        ``location`` is a directory path or ``lmdb://PATH`` (the membership in
        ``manifest.json`` there, the shards under ``shards/``), ``memory://``
        (a store in this process, like ``DHTServerStore(shards=...)``), or a
        ``redis://host:port/db[?prefix=...]`` URL of a Redis database that
        holds the membership, so that clients on any host open the store from
        that URL alone; any other scheme is :class:`~dhtcart.errors.InvalidInput`
        naming the accepted forms. On creation, ``shards`` LMDB shards are made
        under ``directory/shards`` (or ``shards`` maps names to backend URLs,
        e.g. Redis servers; relative ``lmdb://`` paths are taken inside the
        directory; a database-kept store needs the mapping). On reopening,
        ``shards`` and ``partitions`` are ignored: the membership says what
        the store is.

        ``durability`` is the LMDB mode of a new store (see
        :mod:`dhtcart.backends.lmdb`; default ``"process"``, or what an
        ``lmdb://PATH?durability=`` location says), fixed at creation.
        ``create=False`` opens only an existing store
        (:class:`~dhtcart.errors.StoreNotFound` otherwise). ``finish``: if a
        rebalancer stopped and left a migration, and nobody holds the lease,
        the opener finishes it first (the default); inspection passes
        ``finish=False`` and changes nothing. ``lock_timeout`` bounds the wait
        for another process that is creating the store; ``lease_ttl`` is how
        long a database-kept lease outlives a dead holder.
        """
        loc = parse_location(location)
        if durability is None:
            durability = "power" if loc.options.get("durability") == "power" else "process"
        if durability not in ("process", "power"):
            raise InvalidInput("durability", f"must be 'process' or 'power', not {durability!r}")
        lock_timeout = check_seconds("lock_timeout", lock_timeout)
        if loc.kind == "memory":
            if not create:
                raise StoreNotFound("memory:// is a new store each time it is opened: there is none to reopen")
            return cls(shards if shards else 5, partitions=partitions, redirect_timeout=redirect_timeout)
        membership = open_membership(loc, lease_ttl=check_seconds("lease_ttl", lease_ttl))
        store = cls.__new__(cls)
        store._init(membership, durability, redirect_timeout)
        try:
            doc = membership.load()
            if doc is None and not create:
                raise StoreNotFound(
                    f"no dhtcart store at {membership.location}"
                    f" (create one with: dhtcart init --data {_quote(location)})"
                )
            if doc is None or doc.legacy:
                doc = store._coordinator.create_or_upgrade(shards, durability, partitions, lock_timeout)
            store._durability = doc.durability
            store._apply(doc)
            # a kind that pushes new epochs (etcd) switches this handle as soon as one is published;
            # the shards' redirects stay the safety net, so a late or lost push costs a redirect
            membership.watch(store._pushed)
            if finish and (doc.migration is not None or doc.retired):
                store._coordinator.finish_if_free()
        except BaseException:
            store.close()
            raise
        return store

    # -- what the handle routes with ------------------------------------------------

    @property
    def ring(self) -> AnyRing:
        """The current ring (during a rebalance: the ring before it)."""
        return self._view.ring

    @property
    def epoch(self) -> int:
        """The membership epoch this handle routes with."""
        return self._view.epoch

    @property
    def shards(self) -> dict[str, DHTServer]:
        """The shards by name (a copy of the mapping; during a rebalance, old and new)."""
        return dict(self._view.shards)

    @property
    def servers(self) -> dict[str, DHTServer]:
        """The shards by name: the seed's name for :attr:`shards`."""
        return self.shards

    @property
    def directory(self) -> Path | None:
        """The store's directory, or ``None`` for a store without one."""
        base = self._membership.base_dir
        return None if base is None else Path(base)

    @property
    def location(self) -> str:
        """Where the membership lives: a directory, a database URL (password masked), or ``"memory"``."""
        return self._membership.location

    @property
    def membership(self) -> Membership:
        """Where the membership document and the lease live (its kind, its watch)."""
        return self._membership

    @property
    def fast_local(self) -> bool:
        """Whether every shard is :attr:`~dhtcart.backends.base.Backend.fast_local` (an event
        loop may then call the store directly instead of through a thread)."""
        return all(s.backend.fast_local for s in self._view.shards.values())

    def routing_stats(self) -> dict[str, int]:
        """Counts since open: ``redirects`` followed, membership ``reloads``, ``waits`` on a
        hand-over, ``takeovers`` of a dead rebalancer's batches."""
        return dict(self._counters)

    def shard_for(self, key: int) -> str:
        """The name of the shard that owns ``key`` as far as this handle knows (no redirect is followed)."""
        key = check_key(key)
        view = self._view
        return view.names[view.route(key)]

    def server_for(self, key: int) -> DHTServer:
        """The :class:`DHTServer` that owns ``key`` as far as this handle knows (see :meth:`shard_for`)."""
        return self._view.shards[self.shard_for(key)]

    def last_shard(self) -> str | None:
        """The shard that this thread's last successful :meth:`get`, :meth:`put` or :meth:`delete`
        went to (``None`` before the first): what a face labels its metrics with, at no cost of
        routing the key again."""
        backend = getattr(self._last, "backend", None)
        if backend is None:
            return None
        name = self._view.names.get(backend)
        if name is None:  # it left the membership since
            name = next((n for (n, _), s in self._opened.items() if s.backend is backend), None)
        return name

    def health(self, timeout: float | None = None) -> dict[str, str | None]:
        """Ask every shard to answer now: shard name -> ``None`` if it did, else why not.

        Reads one shard's ownership record each (the membership's members, not
        the keys); ``timeout`` is advisory for media that can take one. What
        ``/readyz`` and ``dhtcart stats`` report.
        """
        out: dict[str, str | None] = {}
        for name, server in sorted(self._view.shards.items()):
            try:
                backend = server.backend
                assert isinstance(backend, FencedBackend)
                backend.ownership()
                out[name] = None
            except (ShardUnavailable, StoreClosed) as exc:
                out[name] = str(exc)
        return out

    # -- the data path ----------------------------------------------------------------

    def get(self, key: int) -> Record | None:  # type: ignore[override]  # the Record, not the bytes
        """``Record(version, value)`` under ``key``, or ``None``."""
        if type(key) is not int or not 0 <= key < KEY_SPACE:
            key = check_key(key)
        view = self._view
        table = view.table
        try:
            backend = table[key >> view.shift] if table is not None else view.route(key)
            record = backend.get(key)
            self._last.backend = backend
            return record
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
            backend = table[key >> view.shift] if table is not None else view.route(key)
            version = backend.put(key, value, expected_version)
            self._last.backend = backend
            return version
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
            backend = view.route(key)
            existed = backend.delete(key, expected_version)
            self._last.backend = backend
            return existed
        except (Moved, StoreClosed) as exc:
            return self._retry(key, exc, lambda b, k: b.delete(k, expected_version))

    def _retry(self, key: int, exc: Exception, op: Callable[[FencedBackend, int], _T]) -> _T:
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
                or (attempt == 0 and owner not in view.shards)  # a redirect this view cannot follow
                or now - last_reload > 0.05  # waiting long: the membership may have moved on
            ):
                try:
                    view = self._refresh()
                except ShardUnavailable:  # the membership's database is down: go on with this view
                    if now > deadline:
                        raise
                last_reload = now
            if owner is not None and owner in view.shards and follows < 4:
                follows += 1
                target = view.backend(owner)
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
                    self._coordinator.take_over()
                    view = self._view
                counters["waits"] += 1
                time.sleep(delay)
                delay = min(delay * 2, 0.005)
                follows = 0
                target = view.route(key)
            try:
                result = op(target, key)
                self._last.backend = target
                return result
            except Moved as again:
                again.shard = view.names.get(target)
                exc = again
            except StoreClosed as again:
                if self._closed:
                    raise
                exc = again
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the mapping protocol -------------------------------------------------------

    def __getitem__(self, key: int) -> bytes:
        record = self.get(key)
        if record is None:
            raise KeyError(key)
        return record.value

    def __setitem__(self, key: int, value: bytes) -> None:
        self.put(key, value)

    def __delitem__(self, key: int) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]  # get checks the key

    def __iter__(self) -> Iterator[int]:
        for key, _ in self.items():
            yield key

    def __len__(self) -> int:
        return self.count()

    __eq__ = object.__eq__  # a handle, not a value
    __hash__ = object.__hash__

    # -- inspection -----------------------------------------------------------------

    def items(self) -> Iterator[tuple[int, Record]]:  # type: ignore[override]  # records, with versions
        """Every ``(key, record)`` that a shard serves, shard by shard (for inspection and tests).

        Only the ranges each shard owns are read, so a copy left on a shard that
        no longer owns it is never listed and every key appears once.
        """
        for server in list(self._view.shards.values()):
            backend = server.backend
            assert isinstance(backend, FencedBackend)
            for lo, hi in backend.ownership().segments.in_state(OWNED, FROZEN):
                yield from backend.scan(lo, hi)

    def values(self) -> Iterator[bytes]:  # type: ignore[override]
        """Every value a shard serves (see :meth:`items`)."""
        for _, record in self.items():
            yield record.value

    def stats(self) -> dict[str, int]:
        """Keys per shard (during a rebalance, a batch in flight may be counted on both sides)."""
        return {name: s.count() for name, s in sorted(self._view.shards.items())}

    def count(self) -> int:
        """Keys in the whole store (exact outside a rebalance)."""
        return sum(s.count() for s in self._view.shards.values())

    def rebalance_status(self) -> RebalanceStatus:
        """The epoch, and how far a migration in progress has gone (read from the shards' records)."""
        return self._coordinator.status()

    # -- rebalancing (the coordinator's) ----------------------------------------------

    def new_shard_name(self) -> str:
        """The name :meth:`add_shard` gives a shard when none is asked for (``shard-N``)."""
        return self._coordinator.next_name()

    def plan_add_shard(self, name: str, weight: int = 1) -> RebalancePlan:
        """What :meth:`add_shard` would move, without moving anything."""
        return self._coordinator.plan("add", check_shard_name(name), weight)

    def plan_remove_shard(self, name: str) -> RebalancePlan:
        """What :meth:`remove_shard` would move, without moving anything."""
        return self._coordinator.plan("remove", name)

    def plan_set_weight(self, name: str, weight: int) -> RebalancePlan:
        """What :meth:`set_weight` would move, without moving anything."""
        return self._coordinator.plan("weight", name, weight)

    def add_shard(
        self,
        name: str | None = None,
        weight: int = 1,
        backend: str | FencedBackend | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: Progress | None = None,
    ) -> RebalanceReport:
        """Add a shard and move to it the arcs it now owns (and nothing else).

        ``backend`` is the new shard's URL (or, for a store without shared
        membership, an open backend): by default a new LMDB directory in a
        directory store, ``memory://`` in an in-process one.
        """
        return self._coordinator.rebalance("add", name, weight, backend, batch_size, progress)

    def remove_shard(
        self, name: str, *, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None
    ) -> RebalanceReport:
        """Move a shard's keys to their new owners, then drop the shard and its data."""
        return self._coordinator.rebalance("remove", name, 1, None, batch_size, progress)

    def set_weight(
        self,
        name: str,
        weight: int,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: Progress | None = None,
    ) -> RebalanceReport:
        """Change a shard's weight and move the arcs that change owner."""
        return self._coordinator.rebalance("weight", name, weight, None, batch_size, progress)

    def finish_rebalance(
        self, *, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None
    ) -> RebalanceReport | None:
        """Finish a rebalance that stopped (an error, or its process died).

        Operations keep routing correctly meanwhile; this continues the
        migration where the shards' records say it stopped. Returns ``None``
        if there was nothing to finish. Raises :class:`~dhtcart.errors.StoreBusy`
        while another rebalancer holds the lease.
        """
        self._check_open()
        return self._coordinator.finish_rebalance(batch_size=batch_size, progress=progress)

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
        assert set(ring.nodes) == set(view.shards), "ring and shards disagree"
        arcs: dict[str, list[tuple[int, int]]] = {n: [] for n in view.shards}
        for arc in ring.arcs():
            arcs[arc.node].append((arc.lo, arc.hi))
        for name, backend in view.backends().items():
            segs = backend.ownership().segments
            assert not segs.in_state(FROZEN), f"{name} has frozen ranges"
            expected = Segments.owning(arcs[name]).in_state(OWNED)
            assert segs.in_state(OWNED) == expected, f"{name}'s ownership record differs from its arcs"
            for key, _ in backend.scan(-1, MAX_KEY):
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
        n = len(view.shards) if view is not None else 0
        return f"<DHTServerStore {n} shards at {self._membership.location}, epoch {view.epoch if view else 0}>"


def _quote(location: str | os.PathLike[str]) -> str:
    text = os.fspath(location)
    return text if text and all(c.isalnum() or c in "/._-:@" for c in text) else repr(text)
