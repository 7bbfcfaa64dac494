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
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dhtcart.backends import Backend, open_backend
from dhtcart.backends.fencing import FencedBackend
from dhtcart.backends.memory import MemoryBackend
from dhtcart.backends.ownership import BACKUP, NOT_OWNED, SERVED, Ownership, Segments, peer_id
from dhtcart.backends.unreachable import UnreachableBackend
from dhtcart.checks import check_shard_name
from dhtcart.errors import (
    InvalidInput,
    KeyUnavailable,
    LeaseLost,
    ShardExists,
    ShardNotFound,
    ShardUnavailable,
    StoreBusy,
    StoreClosed,
)
from dhtcart.hashing import MAX_KEY
from dhtcart.membership import DirectoryMembership, Lease, LocalMembership, MembershipDoc, holder_name
from dhtcart.rebalance import failover as takeout
from dhtcart.rebalance.mover import Mover, target_state
from dhtcart.rebalance.plan import Progress, RebalancePlan, RebalanceReport, estimate_keys, plan
from dhtcart.replication.placement import placement_of, shard_domains
from dhtcart.ring import MAX_PARTITIONS, PARTITIONS_PER_WEIGHT, HashRing, PartitionRing, ring_from_dict
from dhtcart.settings import DEFAULT_BATCH_SIZE, DEFAULT_LOCK_TIMEOUT, DEFAULT_READ_LEASE, SHARDS_DIR

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
    replicas: int = 1  #: copies of every key the store keeps (during a change of it: the new number)
    down: list[str] = field(default_factory=list)  #: shards taken out by a failover, not yet removed
    #: share of the key space with fewer live copies than ``replicas`` (0.0: every key fully replicated)
    under_replicated: float = 0.0

    @property
    def shards_down(self) -> int:
        """How many shards a failover took out (and the repair has not removed yet)."""
        return len(self.down)


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
        self._failing = threading.Lock()  # this handle's failovers, one at a time
        self._repairing: threading.Thread | None = None
        self._starting = threading.Lock()  # held while the background repair is started
        self._stopping = threading.Event()  # the handle is closing: background work stops
        self._next_finish = 0.0  # when a failover() may next try to finish a stopped failover

    def stop(self, timeout: float = 30.0) -> None:
        """Stop this handle's background repair at its next batch (its lease released), and wait for it."""
        self._stopping.set()
        running = self._repairing
        if running is not None and running is not threading.current_thread():
            running.join(timeout)

    def _check(self, lease: Lease) -> Callable[[], None]:
        """The check a mover makes before each batch: the lease still held, the handle not closing."""

        def check() -> None:
            lease.check()
            if self._stopping.is_set():
                raise StoreClosed("the store handle is closing: its background work stops here")

        return check

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
        """Give every shard of ``doc`` the record of its ranges of ``ring`` (a store being created
        claims its shards, whatever token they have seen): owned or primary where it comes first
        in a range's replica list, backup where it comes later.

        ``lazy``: a shard that cannot be reached now is claimed when it first
        refuses an operation (stores whose membership is in this process only).
        """
        ids = {n: peer_id(n, doc.born[n]) for n in doc.shards}
        changes: dict[str, list[tuple[int, int, str, str]]] = {n: [] for n in doc.shards}
        for lo, hi, names in placement_of(doc, ring).lists():
            if not names:
                continue
            state, peer = target_state(names, ids)
            changes[names[0]].append((lo, hi, state, peer))
            for backup in names[1:]:
                changes[backup].append((lo, hi, BACKUP, ids[names[0]]))
        for name, url in doc.shards.items():
            backend = self._store._backend(name, url, doc.born[name], create=True)
            record = Ownership(doc.epoch, token, Segments.all().replace_many(changes[name]), doc.replicas > 1)
            try:
                backend.claim(record, force=True)
                if doc.replicas > 1:
                    backend.renew_lease(doc.epoch, time.time() + doc.read_lease)
            except ShardUnavailable:
                if not lazy:
                    raise
                self._store._unclaimed[backend] = record

    def create_or_upgrade(
        self,
        shards: int | Mapping[str, str],
        durability: str,
        partitions: int,
        lock_timeout: float,
        *,
        replicas: int = 1,
        domains: Mapping[str, str] | None = None,
        read_lease: float = DEFAULT_READ_LEASE,
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
            doc = MembershipDoc(
                1,
                ring.to_dict(),
                named,
                dict.fromkeys(named, 1),
                durability,
                replicas=replicas,
                domains=shard_domains(named, domains),
                read_lease=read_lease,
            )
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
            if doc.migration is None and not doc.retired and not doc.unpromoted:
                return None
            mover = self.finish(lease, batch_size, progress)  # a stopped failover first, then a migration
            return self._report(mover, start, before)

    def take_over(self) -> None:
        """Finish the batches a dead rebalancer left half done, or the failover a dead process
        decided (then repair in the background, as that process would have), if nobody holds the lease.

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
        failed_over = False
        try:
            store._counters["takeovers"] += 1
            view = store._refresh()
            if view.doc.unpromoted:
                self._finish_failover(lease)
                failed_over = True
                view = store._view
            if view.migration is None:
                return
            self._mover(view, lease).run(in_flight_only=True)
        except Exception:
            pass
        finally:
            lease.release()
            if failed_over:  # the dead process's repair is this handle's now
                self.repair_in_background()

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
        planned = estimate_keys(view.migration.moves, view.ring, view.live_backends())
        mover = self._mover(
            view,
            lease,
            batch_size=batch_size,
            progress=progress,
            planned=planned,
            report=self._reporter(view.epoch, planned),
        )
        mover.run()
        self._membership.report_progress(view.epoch, mover.keys_moved, max(planned, mover.keys_moved))
        return mover

    def _mover(self, view: _View, lease: Lease, **options: Any) -> Mover:
        """The mover of the migration ``view`` shows, with this lease (live shards only)."""
        assert view.migration is not None
        doc = view.doc
        leased = view.migration.new.replicas > 1 or view.migration.old.replicas > 1

        def grant(backend: FencedBackend) -> None:  # the rebalancer read the membership: it may renew
            backend.renew_lease(doc.epoch, time.time() + doc.read_lease)

        return Mover(
            view.migration,
            view.live_backends(),
            lease.token,
            view.epoch,
            ids=view.ids,
            leased=leased,
            grant=grant,
            check_lease=self._check(lease),
            **options,
        )

    def finish(
        self, lease: Lease, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None
    ) -> Mover | None:
        """Holding ``lease``: finish a failover and a migration in the membership, if any, and
        destroy retired shards."""
        view = self._store._refresh()
        if view.doc.unpromoted:
            self._finish_failover(lease)
            view = self._store._view
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
        replicas = int(doc.migration.get("replicas", doc.replicas))
        new = doc.next(
            ring=doc.migration["ring"],
            shards={n: u for n, u in doc.shards.items() if n not in drop},
            born={n: b for n, b in doc.born.items() if n not in drop},
            migration=None,
            retired={**doc.retired, **{n: doc.shards[n] for n in drop if n in doc.shards}},
            replicas=replicas,
            domains={n: d for n, d in doc.domains.items() if n not in drop},
            down={n: e for n, e in doc.down.items() if n not in drop},
            abandoned=sorted({*doc.abandoned, *(n for n in drop if n in doc.down)}),
        )
        if replicas == 1 and doc.replicas > 1:  # one copy again: reads need no lease any more
            for name, backend in self._store._view.live_backends().items():
                if name in new.shards:
                    backend.update_ownership(lease.token, new.epoch, leased=False)
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
                if backend is None or isinstance(backend, UnreachableBackend):  # try its medium afresh
                    backend = opened = open_backend(url, context=store._context(name, create=True))
                if not isinstance(backend, FencedBackend):  # pragma: no cover - a store's shards are fenced
                    raise InvalidInput("backend", f"shard {name!r} is not a fenced backend")
                backend.update_ownership(lease.token, doc.epoch)  # fenced: refused if a newer rebalancer came
                served = backend.ownership().segments.in_state(*SERVED)
                if served and name not in doc.abandoned:  # a failover's stale record: emptied anyway
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
        new = doc.next(retired=left, abandoned=[n for n in doc.abandoned if n in left])
        self._membership.publish(new, lease)
        store._apply(new)
        return new

    # -- failover and repair (docs/replication.md) ----------------------------------

    def failover(self, suspects: set[str]) -> bool:
        """Take the ``suspects`` that still do not answer out of the replica sets of their keys.

        Run by whichever handle saw them fail (see
        :mod:`dhtcart.rebalance.failover` for the steps and their bounds). A
        suspect that answers is left alone; one whose removal would leave a
        range without a copy is left too. Another rebalancer holding the lease
        means the caller waits and tries again. After a failover, the repair
        (the removal of the dead shards from the ring, which restores the
        missing copies) runs in a background thread of this handle. Suspects
        taken out already by a failover whose process died before carrying it
        out: that failover is finished (at most every takeover pause), so that
        a write whose backup is dead never waits on it until its bound. Returns
        whether a failover ran (or was finished).
        """
        store = self._store
        if not self._failing.acquire(blocking=False):
            with self._failing:  # another thread of this handle is at it: wait for it
                return False
        try:
            doc = store._refresh().doc
            if doc.replicas < 2:
                return False
            if not {n for n in suspects if n in doc.shards and n not in doc.down}:
                # taken out already; but a failover decided and not carried out (its process died
                # after publishing it) leaves the dead shard named as a backup on live primaries:
                # writes would meet it until their bound. Finish it (at most every takeover pause).
                now = time.monotonic()
                if not doc.unpromoted or now < self._next_finish:
                    return False
                self._next_finish = now + store._takeover_after
            try:
                lease = self._membership.try_lease(holder_name())
            except ShardUnavailable:
                return False
            if lease is None:
                return False
            with lease:
                ran = self._take_out(lease, suspects)
        finally:
            self._failing.release()
        if ran:
            self.repair_in_background()
        return ran

    def _take_out(self, lease: Lease, suspects: set[str]) -> bool:
        store = self._store
        view = store._refresh()
        doc = view.doc
        live = view.live_backends()
        dead = sorted(n for n in suspects if n in live and not takeout.probe(live[n]))
        if not dead:
            if doc.unpromoted:  # another process's failover, stopped after its decision: finish it
                self._finish_failover(lease)
                return True
            return False
        down = dict(doc.down)
        ring = view.ring
        new_ring = ring_from_dict(doc.migration["ring"]) if doc.migration else None
        for name in dead:  # every range must keep a copy (in both placements during a migration)
            trial = doc.next(down={**down, name: {}})
            rings = [ring] if new_ring is None else [ring, new_ring]
            if all(names for r in rings for _, _, names in placement_of(trial, r).lists()):
                down[name] = {}
        taken = [n for n in dead if n in down and n not in doc.down]
        if not taken:
            return False
        # the decision needs every other live shard's record: one that does not answer either
        # (and is not taken out with these, to keep a copy of every range) stops the failover
        # before anything is published; the next operation that meets it tries again
        segments = {n: b.ownership().segments for n, b in live.items() if n not in taken}
        trial = doc.next(down=down)
        placements = [placement_of(trial, r) for r in ([ring] if new_ring is None else [ring, new_ring])]

        def order(key: int) -> tuple[str, ...]:  # the replica lists of the key, old then new
            return tuple(n for p in placements for n in p.replicas_for(key))

        dead_ids = {view.ids[n]: n for n in taken}
        orphans = takeout.decide(segments, set(dead_ids), order)
        by_dead: dict[str, list[list[Any]]] = {n: [] for n in taken}
        for orphan in orphans:  # every orphan belongs to the dead shard its survivors named
            by_dead[self._dead_primary(segments, orphan, dead_ids)].append(orphan.to_list())
        for name in taken:
            down[name] = {"epoch": doc.epoch + 1, "promoted": False, "orphans": by_dead[name]}
        new = doc.next(down=down)
        self._membership.publish(new, lease)
        store._apply(new)
        self._finish_failover(lease)
        return True

    @staticmethod
    def _dead_primary(segments: Mapping[str, Segments], orphan: takeout.Orphan, dead: Mapping[str, str]) -> str:
        """Which dead shard ``orphan``'s survivors kept it for."""
        for name in orphan.survivors:
            state, peer = segments[name].lookup(orphan.hi)
            if state == BACKUP and peer in dead:
                return dead[peer]
        return next(iter(dead.values()))  # pragma: no cover - decide() only returns such ranges

    def _finish_failover(self, lease: Lease) -> None:
        """Holding ``lease``: finish every failover the membership shows unfinished."""
        store = self._store
        view = store._refresh()

        def publish(doc: MembershipDoc) -> None:
            self._membership.publish(doc, lease)
            store._apply(doc)

        takeout.finish(view.doc, lease, view.live_backends(), view.ids, publish)

    def repair_in_background(self) -> None:
        """Restore the copies a failover took out, in a daemon thread of this handle (one at a time).

        The repair removes the dead shards from the ring with the hand-over
        protocol: live, crash-safe, and finished by the next opener, rebalance
        or ``finish_rebalance()`` if this process stops first.
        """
        with self._starting:  # failover() and take_over() may both start one, from two threads
            if (self._repairing is not None and self._repairing.is_alive()) or self._stopping.is_set():
                return
            self._repairing = threading.Thread(target=self._repair_quietly, name="dhtcart-repair", daemon=True)
            self._repairing.start()

    def _repair_quietly(self) -> None:
        with contextlib.suppress(Exception):  # best effort: the next opener or rebalance finishes it
            self.repair()

    def repair(self, *, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None) -> list[str]:
        """Remove every shard a failover took out from the ring (restoring the missing copies on the
        next shards of each key's preference list); return the names this call removed. A failover
        decided and not carried out (its process died) is finished first.

        Waits for this handle's background repair first; another handle's
        repair holding the lease makes this wait too (:class:`StoreBusy` after
        the store's lock timeout).
        """
        store = self._store
        running = self._repairing
        if running is not None and running is not threading.current_thread():
            running.join()
        removed: list[str] = []
        deadline = time.monotonic() + DEFAULT_LOCK_TIMEOUT  # waits for another holder of the lease
        tries = 0  # removals tried: one per dead shard, and a few that another handle made first
        while True:
            view = store._refresh()
            unpromoted = view.doc.unpromoted
            down = sorted(n for n, e in view.doc.down.items() if e.get("promoted") and n in view.ring.nodes)
            if not (down or unpromoted) or store._closed or self._stopping.is_set() or len(view.ring.nodes) == 1:
                return removed
            if tries >= 64:  # never in a healthy store: say so rather than return as if done
                left = down or unpromoted
                raise StoreBusy(f"store {store.location}: shards {left} are still to repair after {tries} tries")
            try:
                if unpromoted:  # a failover decided and not carried out (its process died): finish it first
                    with store._admin, self.lease() as lease:
                        self._finish_failover(lease)
                else:
                    self.rebalance("remove", down[0], 1, None, batch_size, progress)
                    removed.append(down[0])
            except ShardNotFound:
                pass  # another handle removed it meanwhile
            except StoreBusy:  # another handle holds the lease (or it ran out unreleased): wait for it
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
                continue  # a wait is not a try
            tries += 1

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
        *,
        domain: str | None = None,
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
                    added = store._backend(name, shards[name], epoch, create=True)
                    held = added.count()
                    if held or added.ownership().segments.in_state(*SERVED):
                        store._forget(name, epoch, close=not isinstance(backend, FencedBackend))
                        raise InvalidInput(
                            "backend",
                            f"the new shard's medium ({added.url}) already holds {held} records or is"
                            " another shard's: a new shard must start empty, on a medium of its own",
                        )
                    added.claim(Ownership(epoch, lease.token, Segments.all()))  # owns nothing yet
                domains = dict(doc.domains)
                if op == "add":
                    domains[name] = domain or shard_domains({name: shards[name]})[name]
                mig = doc.next(
                    shards=shards,
                    born=born,
                    domains=domains,
                    migration={"ring": new_ring.to_dict(), "drop": [name] if op == "remove" else [], "since": epoch},
                )
                self._membership.publish(mig, lease)
                view = store._apply(mig)
                mover = self._move(view, lease, batch_size, progress)
                doc = self._commit(mig, lease)
                if doc.retired:
                    self._destroy_retired(doc, lease)
                return self._report(mover, start, before)

    def set_replicas(self, replicas: int, batch_size: int, progress: Progress | None) -> RebalanceReport:
        """Keep ``replicas`` copies of every key: a migration of the same ring to that many copies."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInput("batch_size", f"must be a positive int, got {batch_size!r}")
        store = self._store
        store._check_open()
        with store._admin, self.lease() as lease:
            self.finish(lease)
            doc = store._view.doc
            start = time.perf_counter()
            before = store.stats()
            if replicas == doc.replicas:
                return self._report(None, start, before)
            mig = doc.next(migration={"ring": doc.ring, "drop": [], "since": doc.epoch + 1, "replicas": replicas})
            self._membership.publish(mig, lease)
            view = store._apply(mig)
            mover = self._move(view, lease, batch_size, progress)
            self._commit(mig, lease)
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
        """The epoch, how far a migration in progress has gone (read from the shards' records),
        the shards down and the share of the key space short of copies."""
        view = self._store._refresh()
        doc = view.doc
        holder = self._membership.lease_holder()
        mig = view.migration
        report = self._membership.progress()
        moved, planned = (report[1], report[2]) if report is not None else (0, 0)
        target = mig.new if mig is not None else view.placement
        short = sum(hi - lo for lo, hi, _ in target.under_replicated()) / float(MAX_KEY + 1)
        if mig is not None:  # a range counts as short until its batch has reached every new copy
            short += sum(m.size for m in mig.moves if len(m.new) > len(m.old)) / float(MAX_KEY + 1)
        replicas = int(doc.migration.get("replicas", doc.replicas)) if doc.migration else doc.replicas
        down = sorted(doc.down)
        if mig is None:
            return RebalanceStatus(
                view.epoch, False, 0, 0, 1.0, holder, [], [], [], moved, planned, replicas, down, min(short, 1.0)
            )
        done_arcs = 0
        done = total = 0
        segs: dict[str, Segments] = {}
        unreachable = []
        for name, backend in view.live_backends().items():
            try:
                segs[name] = backend.ownership().segments
            except ShardUnavailable:
                unreachable.append(name)
                segs[name] = Segments.all()
        for m in mig.moves:
            if not m.new or m.target not in segs:
                continue
            want = target_state(m.new, view.ids)
            owned = sum(b - a for a, b, st, peer in segs[m.target].spans(m.lo, m.hi) if (st, peer) == want)
            total += m.size
            done += owned
            done_arcs += int(owned == m.size)
        if mig.moves and total:
            short -= sum(m.size for m in mig.moves if len(m.new) > len(m.old)) * (done / total) / float(MAX_KEY + 1)
        since = doc.migration["since"] if doc.migration else -1
        adding = sorted(set(mig.new.ring.nodes) - set(view.ring.nodes))
        removing = sorted(doc.migration["drop"]) if doc.migration else []
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
            replicas,
            down,
            max(0.0, min(short, 1.0)),
        )
