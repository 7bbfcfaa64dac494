"""The changes of a store's membership: creating, upgrading, rebalancing, finishing, retiring.

The store (:mod:`dhtcart.store`) routes keys and follows redirects; everything
that *changes* who owns what goes through one :class:`Coordinator` per store
handle, under the membership's lease:

* creating a store (claiming its shards) or upgrading dhtcart 0.1's manifest;
* a rebalance (``add``, ``remove``, ``weight``): publish the migration, hand
  the arcs over with the :class:`~dhtcart.rebalance.mover.Mover`, commit the
  new ring, retire the shards that left;
* finishing what a stopped rebalancer left (the next rebalance, the next
  opener, :meth:`finish_rebalance`, or a handle whose operation waited on a
  frozen batch);
* destroying retired shards (emptied under the lease's token);
* the status of a migration, read from the shards' own records.

Every step is idempotent and reads where it stands from the membership and the
shards' records, so any handle can finish another's work. The protocol is
drawn in ``docs/rebalance.md``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dhtcart.backends import Backend, open_backend
from dhtcart.backends.fencing import FencedBackend
from dhtcart.backends.memory import MemoryBackend
from dhtcart.backends.ownership import FROZEN, NOT_OWNED, OWNED, Ownership, Segments
from dhtcart.checks import check_shard_name
from dhtcart.errors import (
    InvalidInput,
    KeyUnavailable,
    LeaseLost,
    ShardExists,
    ShardNotFound,
    ShardUnavailable,
    StoreBusy,
)
from dhtcart.hashing import MAX_KEY
from dhtcart.membership import DirectoryMembership, Lease, LocalMembership, MembershipDoc, holder_name
from dhtcart.rebalance.mover import Mover
from dhtcart.rebalance.plan import Progress, RebalancePlan, RebalanceReport, estimate_keys, plan
from dhtcart.ring import MAX_PARTITIONS, PARTITIONS_PER_WEIGHT, HashRing, PartitionRing, ring_from_dict
from dhtcart.settings import DEFAULT_BATCH_SIZE, SHARDS_DIR

if TYPE_CHECKING:
    from dhtcart.store import DHTServerStore, _View

__all__ = ["Coordinator", "RebalanceStatus"]

AnyRing = HashRing | PartitionRing


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


def check_persistent_url(name: str, url: object) -> str:
    """``url`` if it can be a shard of a store that outlives this process."""
    if not isinstance(url, str):
        raise InvalidInput("backend", "a persistent store records its shards by URL: pass the backend's URL")
    if url.startswith("memory:"):
        raise InvalidInput(
            "backend", f"shard {name!r}: a persistent store cannot have a memory:// shard: its keys would vanish"
        )
    return url


class Coordinator:
    """Every change of one store handle's membership (see the module doc)."""

    def __init__(self, store: DHTServerStore) -> None:
        self._store = store
        self._membership = store._membership

    # -- leases -------------------------------------------------------------------

    def lease(self) -> Lease:
        """The rebalance lease now, or :class:`StoreBusy` naming its holder."""
        lease = self._membership.try_lease(holder_name())
        if lease is None:
            holder = self._membership.lease_holder()
            raise StoreBusy(
                f"store {self._membership.location}: another rebalance is running"
                f" (lease held by {holder or 'another handle'}); try again when it ends"
            )
        return lease

    def wait_lease(self, timeout: float) -> Lease:
        """The rebalance lease, waiting up to ``timeout`` seconds for it."""
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

    # -- creating -----------------------------------------------------------------

    def claim_all(self, doc: MembershipDoc, ring: AnyRing, token: int, *, lazy: bool = False) -> None:
        """Give every shard of ``doc`` the record of owning its arcs of ``ring`` (a store being
        created claims its shards, whatever token they have seen).

        ``lazy``: a shard that cannot be reached now is claimed when it first
        refuses an operation (stores whose membership is in this process only).
        """
        arcs: dict[str, list[tuple[int, int]]] = {n: [] for n in doc.shards}
        for arc in ring.arcs():
            arcs[arc.node].append((arc.lo, arc.hi))
        for name, url in doc.shards.items():
            backend = self._store._backend(name, url, doc.born[name])
            record = Ownership(doc.epoch, token, Segments.owning(arcs[name]))
            try:
                backend.claim(record, force=True)
            except ShardUnavailable:
                if not lazy:
                    raise
                self._store._unclaimed[backend] = record

    def create_or_upgrade(
        self, shards: int | Mapping[str, str], durability: str, partitions: int, lock_timeout: float
    ) -> MembershipDoc:
        """Create the store (its shards claimed), or upgrade dhtcart 0.1's manifest; return the document."""
        store = self._store
        with self.wait_lease(lock_timeout) as lease:
            doc = self._membership.load()
            if doc is not None and not doc.legacy:
                return doc  # another process created it meanwhile
            if doc is not None:  # dhtcart 0.1's manifest: give the shards their ownership records
                store._durability = doc.durability
                new = doc.next(born=dict.fromkeys(doc.shards, 1))
                self.claim_all(new, ring_from_dict(new.ring), lease.token)
                self._membership.publish(new, lease)
                return new
            store._durability = durability
            local = isinstance(self._membership, DirectoryMembership)
            urls = store._shard_urls(shards, "")
            if not local and not all(urls.values()):
                raise InvalidInput(
                    "shards", "a store whose membership is kept in a database needs shards={name: URL, ...}"
                )
            named = {n: (u if isinstance(u, str) and u else f"lmdb://{SHARDS_DIR}/{n}") for n, u in urls.items()}
            for name, url in named.items():
                check_persistent_url(name, url)
            ring = PartitionRing(list(named), partitions=partitions)
            doc = MembershipDoc(1, ring.to_dict(), named, dict.fromkeys(named, 1), durability)
            self.claim_all(doc, ring, lease.token)
            return self._membership.create(doc)

    # -- finishing ------------------------------------------------------------------

    def finish_if_free(self) -> None:
        """Finish a stopped migration when nobody holds the lease (the next opener's duty).

        A shard it needs being down does not stop the opening: the store routes
        with the membership as it is, and the next rebalance, opener or
        :meth:`finish_rebalance` tries again.
        """
        lease = self._membership.try_lease(holder_name())
        if lease is not None:
            with lease, contextlib.suppress(ShardUnavailable, KeyUnavailable):
                self.finish(lease)

    def finish_rebalance(
        self, *, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None
    ) -> RebalanceReport | None:
        """See :meth:`dhtcart.store.DHTServerStore.finish_rebalance`."""
        store = self._store
        with store._admin, self.lease() as lease:
            before = store.stats()
            start = time.perf_counter()
            doc = store._refresh().doc
            if doc.migration is None and not doc.retired:
                return None
            mover = self.finish(lease, batch_size, progress)
            return self._report(mover, start, before)

    def take_over(self) -> None:
        """Finish the batches a dead rebalancer left half done, if nobody holds the lease.

        Best effort: whatever goes wrong (the membership's database down, a shard
        unreachable), the waiting operation goes on waiting and tries again later.
        """
        store = self._store
        try:
            lease = self._membership.try_lease(holder_name())
        except Exception:
            return
        if lease is None:
            return
        try:
            store._counters["takeovers"] += 1
            view = store._refresh()
            if view.migration is None:
                return
            mover = Mover(view.migration, view.backends(), lease.token, view.epoch, check_lease=lease.check)
            mover.run(in_flight_only=True)
        except Exception:
            pass
        finally:
            lease.release()

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

    def _move(
        self, view: _View, lease: Lease, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None
    ) -> Mover:
        """Hand over every batch of the migration ``view`` shows, reporting progress."""
        assert view.migration is not None
        planned = estimate_keys(view.migration.moves, view.ring, view.backends())
        mover = Mover(
            view.migration,
            view.backends(),
            lease.token,
            view.epoch,
            batch_size=batch_size,
            progress=progress,
            planned=planned,
            check_lease=lease.check,
            report=self._reporter(view.epoch, planned),
        )
        mover.run()
        self._membership.report_progress(view.epoch, mover.keys_moved, max(planned, mover.keys_moved))
        return mover

    def finish(
        self, lease: Lease, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None
    ) -> Mover | None:
        """Holding ``lease``: finish the migration in the membership, if any, and destroy retired shards."""
        view = self._store._refresh()
        mover = None
        doc = view.doc
        if view.migration is not None:
            mover = self._move(view, lease, batch_size, progress)
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
        self._store._apply(new)
        return new

    def _destroy_retired(self, doc: MembershipDoc, lease: Lease) -> MembershipDoc:
        """Empty the shards that left the ring (they own nothing any more), then remove them.

        The emptying is fenced by the lease's token on the shard itself (its
        record is set to own nothing, then every record is dropped), so a
        rebalancer whose lease expired can never empty a shard that a successor
        has re-created meanwhile. The medium itself (an LMDB directory, a Redis
        shard's keys) is removed only where a lease cannot expire under a live
        holder (a directory store's flock, a store in one process); a store kept
        in a database leaves a removed shard's empty ownership record behind, so
        that an old rebalancer stays fenced out of it. A retired shard that
        cannot be reached stays retired, to be emptied by the next lease holder.
        """
        store = self._store
        removable = isinstance(self._membership, DirectoryMembership | LocalMembership)
        left: dict[str, str] = {}
        for name, url in doc.retired.items():
            opened: Backend | None = None
            try:
                backend: Backend | None = store._retiring(name)
                if backend is None:
                    backend = opened = open_backend(url, context=store._context(name))
                if not isinstance(backend, FencedBackend):  # pragma: no cover - a store's shards are fenced
                    raise InvalidInput("backend", f"shard {name!r} is not a fenced backend")
                backend.update_ownership(lease.token, doc.epoch)  # fenced: refused if a newer rebalancer came
                served = backend.ownership().segments.in_state(OWNED, FROZEN)
                if served:
                    raise LeaseLost(f"shard {name!r} left the ring but still serves {len(served)} ranges")
                backend.update_ownership(lease.token, doc.epoch, [(-1, MAX_KEY, NOT_OWNED, "")])
                backend.drop_ranges(lease.token, [(-1, MAX_KEY)])
                if removable:
                    backend.destroy()
                else:
                    backend.close()
            except ShardUnavailable:
                left[name] = url
                continue
            finally:
                if opened is not None:
                    opened.close()  # opened here: never left open, emptied or not (idempotent)
            store._forget(name)
        if left == doc.retired:
            return doc
        new = doc.next(retired=left)
        self._membership.publish(new, lease)
        store._apply(new)
        return new

    # -- rebalancing --------------------------------------------------------------

    def next_name(self) -> str:
        """The first name ``shard-N`` no shard has, counting from the number of shards."""
        shards = self._store._view.shards
        i = len(shards)
        while f"shard-{i}" in shards:
            i += 1
        return f"shard-{i}"

    def ring_with(self, op: str, name: str, weight: int = 1) -> AnyRing:
        """The ring after the change (from the current ring; call with no migration pending)."""
        store = self._store
        view = store._view
        if view.migration is not None:
            raise StoreBusy(
                f"store {store.location}: a rebalance is in progress (or stopped unfinished);"
                " plan once it has finished (any rebalance or finish_rebalance() finishes a stopped one)"
            )
        ring = view.ring.copy()
        shards = view.shards
        if op == "add":
            if name in shards:
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

    def plan(self, op: str, name: str, weight: int = 1) -> RebalancePlan:
        """What the change would move, without moving anything."""
        view = self._store._view
        new = self.ring_with(op, name, weight)
        backends: dict[str, FencedBackend] = dict(view.backends())
        if op == "add":
            backends.setdefault(name, MemoryBackend())  # empty stand-in: only read as a target
        return plan(view.ring, new, backends)

    def rebalance(
        self,
        op: str,
        name: str | None,
        weight: int,
        backend: str | FencedBackend | None,
        batch_size: int,
        progress: Progress | None,
    ) -> RebalanceReport:
        """Add, remove or reweight a shard: the migration published, handed over, committed."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInput("batch_size", f"must be a positive int, got {batch_size!r}")
        store = self._store
        store._check_open()
        with store._admin:  # this handle's threads one after the other: each computes from the last
            if op == "add":
                name = check_shard_name(name if name is not None else self.next_name())
            assert name is not None
            if store._refresh().migration is None:
                self.ring_with(op, name, weight)  # the errors before any data moves, without the lease
            persistent = not isinstance(self._membership, LocalMembership)
            if op == "add":
                if backend is None and persistent and store.directory is None:
                    raise InvalidInput(
                        "backend",
                        "a store whose membership is kept in a database has no directory for a new LMDB shard:"
                        " give the new shard's backend= URL (e.g. redis://host:6379/0)",
                    )
                if backend is None:
                    backend = f"lmdb://{SHARDS_DIR}/{name}" if store.directory is not None else "memory://"
                if persistent:
                    backend = check_persistent_url(name, backend)
            with self.lease() as lease:
                self.finish(lease)  # a migration a stopped rebalancer left comes first
                doc = store._view.doc
                new_ring = self.ring_with(op, name, weight)
                start = time.perf_counter()
                before = store.stats()
                epoch = doc.epoch + 1
                shards, born = dict(doc.shards), dict(doc.born)
                if op == "add":
                    assert backend is not None
                    if isinstance(backend, FencedBackend):
                        store._instances[name] = backend
                    shards[name] = backend if isinstance(backend, str) else backend.url
                    born[name] = epoch
                    added = store._backend(name, shards[name], epoch)
                    held = added.count()
                    if held or added.ownership().segments.in_state(OWNED, FROZEN):
                        store._forget(name, epoch, close=not isinstance(backend, FencedBackend))
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
                view = store._apply(mig)
                mover = self._move(view, lease, batch_size, progress)
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
            keys_after=self._store.stats(),
        )

    # -- status -----------------------------------------------------------------

    def status(self) -> RebalanceStatus:
        """The epoch, and how far a migration in progress has gone (read from the shards' records)."""
        view = self._store._refresh()
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
        for name, backend in view.backends().items():
            if name in mig.new.nodes:
                try:
                    segs[name] = backend.ownership().segments
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
