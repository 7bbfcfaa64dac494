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

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Literal, TypeVar

from dhtcart.backends import open_backend
from dhtcart.backends.base import BackendContext, Record
from dhtcart.backends.fencing import MAX_UPDATE_TRIES, FencedBackend, Pending, Update, modify_by_cas
from dhtcart.backends.ownership import (
    BACKUP,
    NOT_OWNED,
    READABLE,
    Ownership,
    Segments,
    peer_id,
)
from dhtcart.backends.unreachable import UnreachableBackend
from dhtcart.checks import MAX_VALUE_SIZE, check_key, check_seconds, check_shard_name, check_value, check_version
from dhtcart.errors import (
    CorruptData,
    DHTCartError,
    InvalidInput,
    KeyUnavailable,
    LeaseExpired,
    Moved,
    ShardUnavailable,
    StoreClosed,
    StoreNotFound,
    WriteInFlight,
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
from dhtcart.rebalance.mover import Migration, target_state
from dhtcart.rebalance.plan import Progress, RebalancePlan, RebalanceReport
from dhtcart.replication.placement import check_replicas, placement_of, shard_domains
from dhtcart.replication.protocol import (
    MOVED,
    OK,
    STALE,
    UNREACHABLE,
    Apply,
    Commit,
    Completion,
    Done,
    Failover,
    Refresh,
    Reread,
    Unknown,
    after_unreachable,
    renewal,
)
from dhtcart.ring import DEFAULT_PARTITIONS, HashRing, PartitionRing, ring_from_dict
from dhtcart.server import DHTServer
from dhtcart.settings import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LEASE_TTL,
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_READ_LEASE,
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

    __slots__ = (
        "by_name",
        "doc",
        "epoch",
        "ids",
        "migration",
        "names",
        "placement",
        "replicated",
        "ring",
        "shards",
        "shift",
        "table",
    )

    def __init__(self, doc: MembershipDoc, shards: dict[str, DHTServer], ring: AnyRing | None = None) -> None:
        self.doc = doc
        self.epoch = doc.epoch
        self.ring: AnyRing = ring_from_dict(doc.ring) if ring is None else ring
        self.shards = shards
        #: each shard's backend by name (checked once here, not on each routing)
        self.by_name: dict[str, FencedBackend] = {n: self._checked(s.backend) for n, s in shards.items()}
        #: writes go through the replicated protocol (decide, apply, commit)
        self.replicated = doc.replicas > 1 or bool(doc.migration and doc.migration.get("replicas", 1) > 1)
        #: each shard's name in records: ``name@born``
        self.ids = {n: peer_id(n, doc.born.get(n, 0)) for n in shards}
        self.placement = placement_of(doc, self.ring)
        self.migration: Migration | None = None
        if doc.migration is not None:
            new = placement_of(doc, ring_from_dict(doc.migration["ring"]), doc.migration.get("replicas"))
            self.migration = Migration(self.placement, new)
        self.table: list[FencedBackend] | None = None
        self.shift = 0
        #: each backend's shard name (the label of what an operation touched)
        self.names: dict[FencedBackend, str] = {s.backend: n for n, s in shards.items()}  # type: ignore[misc]
        if self.migration is None and isinstance(self.ring, PartitionRing):
            # the hot path: a shift and an index straight to the primary's backend
            self.shift = self.ring.shift
            if not doc.down:
                by_name = {n: self.backend(n) for n in shards}  # once per shard, not per partition
                self.table = [by_name[o] for o in self.ring.owners()]
            elif all(names for _, _, names in self.placement.lists()):
                table: list[FencedBackend] = [self.backend(self.ring.owners()[0])] * self.ring.partitions
                for lo, hi, names in self.placement.lists():
                    backend = self.backend(names[0])
                    for part in range((lo + 1) >> self.shift, (hi >> self.shift) + 1):
                        table[part] = backend
                self.table = table

    @staticmethod
    def _checked(backend: object) -> FencedBackend:
        assert isinstance(backend, FencedBackend)
        return backend

    def backend(self, name: str) -> FencedBackend:
        return self.by_name[name]

    def backends(self) -> dict[str, FencedBackend]:
        """Every shard's backend by name (during a migration, old and new shards), down ones included."""
        return {n: self.backend(n) for n in self.shards}

    def live_backends(self) -> dict[str, FencedBackend]:
        """The backends of the shards that are not down."""
        return {n: self.backend(n) for n in self.shards if n not in self.doc.down}

    def replicas(self, key: int) -> tuple[str, ...]:
        """The replica list of ``key`` this handle routes with (primary first)."""
        mig = self.migration
        return mig.replicas(key) if mig is not None else self.placement.replicas_for(key)

    def route(self, key: int) -> FencedBackend:
        table = self.table
        if table is not None:
            return table[key >> self.shift]
        mig = self.migration  # replicas(), inline: during a migration every operation routes here
        names = mig.replicas(key) if mig is not None else self.placement.replicas_for(key)
        if not names:
            raise KeyUnavailable(key, "-", "every shard that holds a copy of this key is down")
        return self.by_name[names[0]]


class _NowReplicated(Exception):
    """Inside :meth:`DHTServerStore._retry`: a plain write found the handle's view replicated."""


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
        replicas: int = 1,
        domains: Mapping[str, str] | None = None,
        read_lease: float = DEFAULT_READ_LEASE,
    ) -> None:
        replicas = check_replicas(replicas)
        read_lease = check_seconds("read_lease", read_lease)
        urls = self._shard_urls(shards, backend)
        if ring is None:
            ring = PartitionRing(list(urls), partitions=partitions)
        elif set(ring.nodes) != set(urls):
            raise InvalidInput("ring", "the ring's nodes must be exactly the shards")
        self._init(LocalMembership(), "process", redirect_timeout)
        self._instances.update((n, u) for n, u in urls.items() if isinstance(u, FencedBackend))
        try:
            named = {n: u if isinstance(u, str) else u.url for n, u in urls.items()}
            doc = MembershipDoc(
                1,
                ring.to_dict(),
                named,
                dict.fromkeys(urls, 1),
                "process",
                replicas=replicas,
                domains=shard_domains(named, domains),
                read_lease=read_lease,
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
        self._track = False  # whether to record it: from the first last_shard() on
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

    def _context(self, name: str, create: bool = False) -> BackendContext:
        return BackendContext(
            name=name, base_dir=self._membership.base_dir, durability=self._durability, fenced=True, create=create
        )

    def _server(self, name: str, url: str, born: int, create: bool = False) -> DHTServer:
        """The open shard ``name`` of incarnation ``born`` (opened on first use; ``create``: a new
        shard, whose medium may be made). A shard that cannot be opened is kept as an
        :class:`~dhtcart.backends.unreachable.UnreachableBackend`: every call to it raises
        :class:`~dhtcart.errors.ShardUnavailable`, and the store opens all the same."""
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
                        try:
                            opened = open_backend(url, context=self._context(name, create))
                        except ShardUnavailable as exc:
                            opened = UnreachableBackend(name, url, exc.reason)
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

    def _backend(self, name: str, url: str, born: int, create: bool = False) -> FencedBackend:
        backend = self._server(name, url, born, create).backend
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
        replicas: int = 1,
        domains: Mapping[str, str] | None = None,
        read_lease: float = DEFAULT_READ_LEASE,
    ) -> DHTServerStore:
        """Create or reopen the store at ``location``.

        ``location`` is a directory path or ``lmdb://PATH`` (the membership in
        ``manifest.json`` there, the shards under ``shards/``), ``memory://``
        (a store in this process, like ``DHTServerStore(shards=...)``), a
        ``redis://host:port/db[?prefix=...]`` URL of a Redis database that
        holds the membership, or an ``etcd://h1:p,h2:p/prefix`` (``etcds://``
        with TLS) URL of an etcd cluster that does (``docs/membership.md``),
        so that clients on any host open the store from that URL alone; any
        other scheme is :class:`~dhtcart.errors.InvalidInput`
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

        ``replicas`` (a new store's; default 1) is how many copies of every key
        the store keeps, on distinct shards in distinct failure ``domains``
        where there are that many (``{shard: domain}``; by default a Redis
        server is one domain, any other shard its own); change it later with
        :meth:`set_replicas`. ``read_lease``: the seconds a primary of a
        replicated store serves reads after a renewal, which bounds how long a
        failover waits (``docs/replication.md``).
        """
        replicas = check_replicas(replicas)
        read_lease = check_seconds("read_lease", read_lease)
        loc = parse_location(location)
        if durability is None:
            durability = "power" if loc.options.get("durability") == "power" else "process"
        if durability not in ("process", "power"):
            raise InvalidInput("durability", f"must be 'process' or 'power', not {durability!r}")
        lock_timeout = check_seconds("lock_timeout", lock_timeout)
        if loc.kind == "memory":
            if not create:
                raise StoreNotFound("memory:// is a new store each time it is opened: there is none to reopen")
            return cls(
                shards if shards else 5,
                partitions=partitions,
                redirect_timeout=redirect_timeout,
                replicas=replicas,
                domains=domains,
                read_lease=read_lease,
            )
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
                doc = store._coordinator.create_or_upgrade(
                    shards,
                    durability,
                    partitions,
                    lock_timeout,
                    replicas=replicas,
                    domains=domains,
                    read_lease=read_lease,
                )
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
    def replicas(self) -> int:
        """Copies of every key the store keeps (during a change of it, the number it goes to)."""
        doc = self._view.doc
        return int(doc.migration.get("replicas", doc.replicas)) if doc.migration else doc.replicas

    def replicas_for(self, key: int) -> tuple[str, ...]:
        """The shards that hold ``key`` now, as far as this handle knows: its primary first, then
        its backups (shards taken out by a failover are left out; during a rebalance, the list the
        key's batch is at)."""
        return self._view.replicas(check_key(key))

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
        """The shard that this thread's last :meth:`get`, :meth:`put`, :meth:`delete` or
        :meth:`modify` went to (the owner it reached after any redirects): what a face labels
        its metrics with, at no cost of routing the key again.

        An operation the shard refused by its own rules (a version conflict, an
        exception raised by ``modify``'s change) counts as having gone there;
        one that reached no owner leaves the last shard it tried.

        A handle records it from the first call of this method on (a
        :class:`~dhtcart.cart.CartService` makes that call when it is created),
        so that a store nobody asks pays nothing per operation; ``None`` before
        this thread's first operation since.
        """
        self._track = True
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
        ``/readyz`` and ``dhtcart stats`` report. Shards a failover took out are
        left out: the store serves without them (see :meth:`rebalance_status`).
        """
        out: dict[str, str | None] = {}
        down = self._view.doc.down
        for name, server in sorted(self._view.shards.items()):
            if name in down:
                continue
            try:
                backend = server.backend
                assert isinstance(backend, FencedBackend)
                backend.ownership()
                out[name] = None
            except (ShardUnavailable, StoreClosed, CorruptData) as exc:
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
            if self._track:  # before the call: a refused operation counts on its shard too
                self._last.backend = backend
            return backend.get(key)
        except (Moved, StoreClosed, ShardUnavailable) as exc:
            return self._retry(key, exc, _op_get, write=False)

    def put(self, key: int, value: bytes, expected_version: int | None = None) -> int:
        """Store ``value``; return the new version (compare-and-set with ``expected_version``)."""
        if type(key) is not int or not 0 <= key < KEY_SPACE:
            key = check_key(key)
        if type(value) is not bytes or len(value) > MAX_VALUE_SIZE:
            value = check_value(value)
        if expected_version is not None and (type(expected_version) is not int or expected_version < 0):
            check_version(expected_version)
        view = self._view
        if view.replicated:
            return self._replicated(key, value, expected_version).version
        table = view.table
        try:
            backend = table[key >> view.shift] if table is not None else view.route(key)
            if self._track:  # before the call: a refused operation counts on its shard too
                self._last.backend = backend
            return backend.put(key, value, expected_version)
        except (Moved, StoreClosed, ShardUnavailable, WriteInFlight) as exc:
            return self._plain_retry(
                key,
                exc,
                lambda b, k: b.put(k, value, expected_version),
                lambda: self._replicated(key, value, expected_version).version,
            )

    def delete(self, key: int, expected_version: int | None = None) -> bool:
        """Remove ``key``; return whether it existed (conditional with ``expected_version``)."""
        if type(key) is not int or not 0 <= key < KEY_SPACE:
            key = check_key(key)
        if expected_version is not None and (type(expected_version) is not int or expected_version < 0):
            check_version(expected_version)
        view = self._view
        if view.replicated:
            return self._replicated(key, None, expected_version).version != 0
        try:
            backend = view.route(key)
            if self._track:  # before the call: a refused operation counts on its shard too
                self._last.backend = backend
            return backend.delete(key, expected_version)
        except (Moved, StoreClosed, ShardUnavailable, WriteInFlight) as exc:
            return self._plain_retry(
                key,
                exc,
                lambda b, k: b.delete(k, expected_version),
                lambda: self._replicated(key, None, expected_version).version != 0,
            )

    def modify(self, key: int, change: Update, *, tries: int = MAX_UPDATE_TRIES) -> Record | None:
        """Read ``key``, ``change`` its record, write the value it returns, atomically; the record after.

        ``change(record)`` gets the current record (``None`` when absent) and
        returns the new value (bytes-like), or ``None`` to leave the key as it
        is; an exception it raises aborts the change, and nothing is written.
        On memory and LMDB shards this is one atomic step with the ownership
        check (one lock, one write transaction): ``change`` runs once. Where the
        medium cannot run Python in its atomic step (Redis), and in a store
        that keeps several copies, it is a compare-and-set loop: ``change`` may
        run again on a newer record. So ``change`` must depend on the record
        alone, take a short, bounded time (an LMDB shard's writers wait for
        it), do no I/O and not call the store (a call back into the memory or
        LMDB shard whose step it runs in is refused with
        :class:`~dhtcart.errors.InvalidInput`; one into another shard is not
        detected, and two such changes can wait for each other); ``tries``
        bounds such a loop,
        which pauses a little after the fourth conflict in a row (then
        :class:`~dhtcart.errors.TooManyRetries`, nothing written). See
        docs/api.md, "One atomic read-modify-write".

        >>> store = DHTServerStore(shards=2)
        >>> store.modify(7, lambda rec: b"1" if rec is None else b"%d" % (int(rec.value) + 1))
        Record(version=1, value=b'1')
        >>> store.modify(7, lambda rec: b"%d" % (int(rec.value) + 1))
        Record(version=2, value=b'2')
        >>> store.modify(7, lambda rec: None)   # leave it as it is
        Record(version=2, value=b'2')
        """
        if type(key) is not int or not 0 <= key < KEY_SPACE:
            key = check_key(key)

        def checked(record: Record | None) -> bytes | None:
            value = change(record)
            if value is None:
                return None
            return value if type(value) is bytes and len(value) <= MAX_VALUE_SIZE else check_value(value)

        view = self._view
        if view.replicated:
            return self._modify_replicated(key, checked, tries)
        table = view.table
        try:
            backend = table[key >> view.shift] if table is not None else view.route(key)
            if self._track:  # before the call: a refused operation counts on its shard too
                self._last.backend = backend
            return backend.modify(key, checked, tries)
        except (Moved, StoreClosed, ShardUnavailable, WriteInFlight) as exc:
            return self._plain_retry(
                key,
                exc,
                lambda b, k: b.modify(k, checked, tries),
                lambda: self._modify_replicated(key, checked, tries),
            )

    def _plain_retry(
        self, key: int, exc: Exception, op: Callable[[FencedBackend, int], _T], replicated: Callable[[], _T]
    ) -> _T:
        """:meth:`_retry` of a plain write; if this handle learns meanwhile that the store keeps
        several copies (another handle's ``set_replicas``: its primaries refuse plain writes), the
        write goes by the replicated path instead. Every plain attempt before was refused or never
        reached a shard (one that may have is not tried again): nothing was written twice."""

        def plain(backend: FencedBackend, k: int) -> _T:
            if self._view.replicated:
                raise _NowReplicated
            return op(backend, k)

        try:
            return self._retry(key, exc, plain)
        except _NowReplicated:
            return replicated()

    # -- replicated writes (docs/replication.md) -------------------------------------

    def _modify_replicated(
        self, key: int, checked: Callable[[Record | None], bytes | None], tries: int
    ) -> Record | None:
        """:meth:`modify` in a store that keeps several copies: a compare-and-set loop."""
        return modify_by_cas(key, checked, tries, self.get, lambda k, v, e: self._replicated(k, v, e).version)

    def _replicated(self, key: int, value: bytes | None, expected_version: int | None) -> Pending:
        """A write of a store that keeps several copies: decided by the key's primary, applied
        by every backup its record lists, then committed (``value`` ``None``: a delete)."""
        decided_on: list[FencedBackend] = []

        def decide(backend: FencedBackend, k: int) -> Pending:
            decided_on.append(backend)
            return backend.decide(k, value, expected_version)

        try:
            view = self._view
            backend = view.route(key)
            decided_on.append(backend)
            if self._track:
                self._last.backend = backend
            pending = backend.decide(key, value, expected_version)
        except (Moved, StoreClosed, ShardUnavailable, WriteInFlight) as exc:
            pending = self._retry(key, exc, decide)
        primary = decided_on[-1]
        if pending.version:  # a delete of an absent key replicates nothing
            try:
                self._complete(primary, pending)
            except ShardUnavailable as exc:  # this write is decided, pending: the next writer finishes it
                if exc.unknown:
                    raise
                reason = f"{exc.reason}; this write was decided: its outcome is unknown"
                if isinstance(exc, KeyUnavailable):
                    raise KeyUnavailable(key, exc.shard, reason, unknown=True) from exc
                raise ShardUnavailable(exc.shard, exc.address, reason, unknown=True) from exc
        return pending

    def _complete(self, primary: FencedBackend, pending: Pending) -> None:
        """Apply a write ``primary`` decided to every backup its record lists, then commit it.

        The decisions are :class:`~dhtcart.replication.protocol.Completion`'s;
        this drives it with this handle's shards and membership. A backup that
        does not answer is taken out (a failover) and the write goes on with
        the others; one that refuses (it was pointed at another primary) means
        the range moved on: the write was then finished already (by the handle
        that moved it), or its outcome is unknown (its primary was taken out),
        and the caller is told which.
        """
        name = self._view.names.get(primary, "?")
        completion = Completion(name, pending)
        deadline = time.monotonic() + self._redirect_timeout
        pause = 0.001  # after a failover request: another holder may be at it, so wait a growing while
        while True:
            step = completion.next()
            if isinstance(step, Apply):
                if time.monotonic() > deadline:
                    raise KeyUnavailable(pending.key, name, "the backups of this write did not take it in time")
                completion.applied(self._apply_all(completion, step))
            elif isinstance(step, Commit):
                try:
                    primary.commit(completion.pending.key, completion.pending.version, completion.pending.life)
                except (ShardUnavailable, StoreClosed):
                    self._suspect([name])
                    completion.commit_failed()
                    continue
                completion.committed()
            elif isinstance(step, Failover):
                self._suspect(step.shards)
                completion.failed_over()
                time.sleep(pause)  # not a spin on the membership while another handle fails over
                pause = min(pause * 2, 0.05)
            elif isinstance(step, Reread):
                try:
                    fresh = primary.pending(pending.key)
                except (ShardUnavailable, StoreClosed):
                    completion.reread(None, answered=False)
                    continue
                completion.reread(fresh)
            elif isinstance(step, Refresh):
                view = self._refresh()
                completion.refreshed(primary_is_member=name in view.doc.shards and name not in view.doc.down)
                if not isinstance(completion.next(), Done | Unknown):
                    time.sleep(0.001)
            elif isinstance(step, Unknown):
                raise ShardUnavailable(name, "-", f"{step.reason}: its outcome is unknown", unknown=True)
            else:
                return

    def _apply_all(self, completion: Completion, step: Apply) -> dict[str, str]:
        """Send the pending write to every backup of ``step``; each one's outcome."""
        view = self._view
        primary_id = view.ids.get(step.primary, "")
        outcomes: dict[str, str] = {}
        sent: list[tuple[str, Callable[[], None]]] = []
        try:
            for backup in step.backups:  # sent to every backup first, so that they work at the same time
                if backup not in view.shards or view.doc.born.get(backup) != completion.backup_born(backup):
                    outcomes[backup] = STALE  # this handle's view is older than the primary's record
                    continue
                try:
                    sent.append((backup, view.backend(backup).send_apply(primary_id, completion.pending)))
                except (Moved, StoreClosed):
                    outcomes[backup] = MOVED
                except ShardUnavailable:
                    outcomes[backup] = UNREACHABLE
        finally:
            # then each one's answer; every reply is read, even after an unexpected error (each
            # sent request holds a connection until its reply is read)
            error: BaseException | None = None
            for backup, outcome in sent:
                try:
                    outcome()
                    outcomes[backup] = OK
                except (Moved, StoreClosed):
                    outcomes[backup] = MOVED
                except ShardUnavailable:
                    outcomes[backup] = UNREACHABLE
                except BaseException as exc:  # re-raised once every reply is read
                    error = error or exc
            if error is not None:
                raise error
        return outcomes

    def _renew(self, backend: FencedBackend) -> None:
        """Renew a primary's lease to serve reads, from a membership read just now (if it is still a member)."""
        started = time.time()
        try:
            doc = self._membership.load()
        except ShardUnavailable:
            return  # the membership cannot be read: no renewal, the read waits and tries again
        if doc is None:
            raise StoreClosed(f"the store at {self._membership.location} no longer exists")
        view = self._apply(doc)
        name = view.names.get(backend)
        if name is None:
            return
        until = renewal(
            shards=doc.born,
            down=doc.down,
            name=name,
            born=view.doc.born.get(name, -1),
            started=started,
            lease=doc.read_lease,
        )
        if until is not None:
            with contextlib.suppress(ShardUnavailable, StoreClosed):
                backend.renew_lease(doc.epoch, until)

    def _suspect(self, names: Iterable[str]) -> None:
        """Shards that did not answer: have them taken out of the replica sets of their keys
        (a failover, if they still do not answer and every key keeps a copy)."""
        if self._view.doc.replicas > 1 or self._view.replicated:
            with contextlib.suppress(DHTCartError):  # best effort: the operation waits and tries again
                self._coordinator.failover(set(names))

    def _unreachable(self, exc: ShardUnavailable, write: bool, name: str | None = None) -> None:
        """A shard did not answer: raise ``exc``, or have the shard taken out (a failover) or find
        it gone from the membership, so that the caller routes again (the decision is
        :func:`~dhtcart.replication.protocol.after_unreachable`'s)."""
        view = self._view
        member = True
        if not view.replicated and not (write and exc.unknown):
            try:
                view = self._refresh()  # a handle routing with an older epoch: has the shard left?
            except ShardUnavailable:
                raise exc from None
            member = (name or exc.shard) in view.shards
        action = after_unreachable(replicated=view.replicated, write=write, unknown=exc.unknown, member=member)
        if action == "raise":
            raise exc
        if action == "failover":
            self._suspect([name or exc.shard])

    def _retry(self, key: int, exc: Exception, op: Callable[[FencedBackend, int], _T], *, write: bool = True) -> _T:
        """Follow redirects for ``key`` until ``op`` runs on its owner, or the bound is reached.

        A redirect that names the owner is followed at once (at most a few in a
        row); one from a shard with a newer epoch reloads the membership first;
        one without an owner (a hand-over in flight) waits, with a growing
        pause of at most 5 ms, and every ``DEFAULT_TAKEOVER_AFTER`` seconds of
        waiting tries to take the lease and finish a dead rebalancer's batch
        itself. In a store that keeps several copies, a primary whose lease ran
        out is renewed, a write in flight on the key is finished first, and a
        shard that does not answer is taken out (a failover) before the next try
        (a write whose request may have reached it is not tried again: its
        outcome is unknown and the caller is told so).
        """
        if isinstance(exc, StoreClosed) and self._closed:
            raise exc
        if isinstance(exc, ShardUnavailable):
            first: str | None = None
            with contextlib.suppress(KeyUnavailable):
                first = self._view.names.get(self._view.route(key))
            self._unreachable(exc, write, first)
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
        target: FencedBackend | None = None
        for attempt in itertools.count():
            counters["redirects"] += 1
            now = time.monotonic()
            moved = exc if isinstance(exc, Moved) and not isinstance(exc, LeaseExpired) else None
            view = self._view
            owner = moved.owner if moved is not None and moved.state in (NOT_OWNED, BACKUP) else None
            if (
                (moved is None and not isinstance(exc, LeaseExpired | WriteInFlight))  # closed, unreachable
                or (moved is not None and moved.epoch > view.epoch)  # the shard has seen a newer membership
                or (attempt == 0 and owner not in view.shards)  # a redirect this view cannot follow
                or now - last_reload > 0.05  # waiting long: the membership may have moved on
            ):
                try:
                    view = self._refresh()
                except ShardUnavailable:  # the membership's database is down: go on with this view
                    if now > deadline:
                        raise
                last_reload = now
            if isinstance(exc, LeaseExpired | WriteInFlight) and target is not None and now < deadline:
                pass  # renewed or finished just below: try the same shard again at once
            elif owner is not None and owner in view.shards and follows < 4:
                follows += 1
                target = view.backend(owner)
                if view.migration is not None:
                    view.migration.learn(key, owner)
            else:  # a hand-over in flight (frozen, released and not yet taken, a failover): wait
                if now > deadline:
                    where = moved.shard if moved is not None and moved.shard else "?"
                    raise KeyUnavailable(
                        key,
                        where,
                        f"redirects reached no owner within {self._redirect_timeout:g} s"
                        " (a hand-over did not finish: is a shard it needs down?)",
                    ) from exc
                if now >= next_takeover and (view.migration is not None or view.doc.down):
                    next_takeover = now + self._takeover_after  # the lease may be held: try again later
                    self._coordinator.take_over()
                    view = self._view
                counters["waits"] += 1
                time.sleep(delay)
                delay = min(delay * 2, 0.005)
                follows = 0
                target = view.route(key)
            try:
                if self._track:
                    self._last.backend = target
                return op(target, key)
            except LeaseExpired as again:
                self._renew(target)
                exc = again
            except Moved as again:
                again.shard = view.names.get(target)
                exc = again
            except WriteInFlight as again:
                self._complete(target, again.pending)  # type: ignore[arg-type]  # a Pending
                exc = again
            except ShardUnavailable as again:
                self._unreachable(again, write, view.names.get(target))
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
        view = self._view
        for backend in view.live_backends().values():
            for lo, hi in backend.ownership().segments.in_state(*READABLE):
                yield from backend.scan(lo, hi)

    def values(self) -> Iterator[bytes]:  # type: ignore[override]
        """Every value a shard serves (see :meth:`items`)."""
        for _, record in self.items():
            yield record.value

    def stats(self) -> dict[str, int]:
        """Keys per shard (during a rebalance, a batch in flight may be counted on both sides;
        with several copies, each copy counts on its shard). Shards taken out by a failover
        are left out."""
        view = self._view
        return {name: s.count() for name, s in sorted(view.shards.items()) if name not in view.doc.down}

    def count(self) -> int:
        """Keys in the whole store (exact outside a rebalance), each counted once."""
        view = self._view
        if not view.replicated:
            return sum(s.count() for s in view.shards.values())
        return sum(1 for _ in self.items())

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
        domain: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: Progress | None = None,
    ) -> RebalanceReport:
        """Add a shard and move to it the arcs it now owns (and nothing else).

        ``backend`` is the new shard's URL (or, for a store without shared
        membership, an open backend): by default a new LMDB directory in a
        directory store, ``memory://`` in an in-process one. ``domain`` names
        its failure domain (a host, a rack, a disk: copies of a key go to
        distinct domains where there are enough); by default a Redis server's
        ``host:port``, or the shard itself.
        """
        return self._coordinator.rebalance("add", name, weight, backend, batch_size, progress, domain=domain)

    def set_replicas(
        self, replicas: int, *, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None
    ) -> RebalanceReport:
        """Keep ``replicas`` copies of every key from now on: the copies are made (or dropped)
        live, with the hand-over protocol, while every handle keeps serving."""
        return self._coordinator.set_replicas(check_replicas(replicas), batch_size, progress)

    def repair(self, *, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None) -> list[str]:
        """Restore the copies of every key that a failover took out: remove the shards it took out
        from the ring (their keys get new copies on the next shards of their preference lists).
        Returns the shards removed. A failover starts this by itself in the background; this runs
        it now and waits for it (finishing first a failover whose process died after deciding it)."""
        self._check_open()
        return self._coordinator.repair(batch_size=batch_size, progress=progress)

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
        """Finish a rebalance or a failover that stopped (an error, or its process died).

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
        """Assert the store's invariants: the ring's own, every live shard's record holding exactly
        its ranges of the replica lists (primary or backup), and every key on exactly its
        replicas, with the same version and value on each (used by the tests)."""
        view = self._refresh()
        doc = view.doc
        assert view.migration is None, "a rebalance is in progress"
        assert not set(doc.retired) & set(doc.shards), "a retired shard is still a member"
        assert not doc.unpromoted, "a failover is unfinished"
        ring = view.ring
        ring._check()
        assert set(ring.nodes) == set(view.shards), "ring and shards disagree"
        live = view.live_backends()
        want: dict[str, Segments] = {}
        changes: dict[str, list[tuple[int, int, str, str]]] = {n: [] for n in live}
        for lo, hi, names in view.placement.lists():
            assert names, f"keys ({lo}, {hi}] have no live copy"
            state, peer = target_state(names, view.ids)
            changes[names[0]].append((lo, hi, state, peer))
            for backup in names[1:]:
                changes[backup].append((lo, hi, BACKUP, view.ids[names[0]]))
        for name, backend in live.items():
            want[name] = Segments.all().replace_many(changes[name])
            own = backend.ownership()
            segs = own.segments  # where a range went (a not-owned range's peer) is only a hint
            segs = segs.replace_many([(a, b, NOT_OWNED, "") for a, b in segs.in_state(NOT_OWNED)])
            assert segs == want[name], f"{name}'s ownership record differs from its replica lists"
            assert own.leased == (doc.replicas > 1), f"{name}'s record is leased={own.leased}"
            assert not backend.scan_pending(-1, MAX_KEY) or doc.replicas > 1, f"{name} has pending writes"
        copies: dict[int, dict[str, Record]] = {}
        for name, backend in live.items():
            for key, rec in backend.scan(-1, MAX_KEY):
                copies.setdefault(key, {})[name] = rec
        for key, held in copies.items():
            names = view.placement.replicas_for(key)
            assert set(held) == set(names), f"key {key} is on {sorted(held)}, its replicas are {list(names)}"
            primary = held[names[0]]
            assert all(r == primary for r in held.values()), f"key {key}'s copies differ: {held}"

    def close(self) -> None:
        """Close every shard and the membership. Idempotent."""
        if getattr(self, "_closed", True):
            return
        self._coordinator.stop()  # a background repair stops at its next batch and gives its lease back
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
