"""Taking a shard that stopped answering out of the replica sets of its keys (``docs/replication.md``).

A failover is run by whichever handle saw a shard fail, holding the rebalance
lease. Its decisions are made from the shards' own records and published in
the membership *before* any shard changes, so a failover that stops half way
is finished by the next lease holder exactly as it was decided::

    0. probe      the suspects, with their own timeout: one that answers is left alone
    1. decide     from the live shards' records: the ranges each dead shard was the
                  primary of ("orphans"), who among their backups becomes primary (the
                  first survivor in the range's replica list), and the primaries that
                  lose a backup; a shard is taken out only if every range keeps a copy
    2. publish    epoch E+1: the dead shards ``down``, the orphans with their new primaries
    3. fence      every live shard: its token and epoch raised; primaries drop the dead
                  backups from their lists; every survivor of an orphan becomes a BACKUP
                  of the new primary, so it refuses a write the dead primary decided
    4. wait       until the dead primaries' leases have run out: ``read_lease`` plus
                  twice ``clock_skew`` after the publication (a lease is only renewed
                  by a handle that read a membership listing the shard, no later than
                  the renewal's start)
    5. level      the survivors of each orphan: every record the newest one has
    6. promote    the new primary: BACKUP -> PRIMARY (or OWNED when it is alone), with a lease
    7. publish    epoch E+2: the failover is done (the shards stay ``down`` until the repair)

Then the repair (a rebalance removing the dead shards from the ring) restores
the missing copies with the hand-over protocol of :mod:`dhtcart.rebalance.mover`.
Steps 3-7 read nothing but the published decision and the records, so running
them again after a crash at any step finishes the failover.

The decisions (step 1) are a pure function of the records: :func:`decide`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from dhtcart.backends.fencing import Change, Entry, FencedBackend, stamp_of
from dhtcart.backends.ownership import BACKUP, FROZEN, OWNED, PRIMARY, Segments, join_peers, split_peers
from dhtcart.errors import LeaseLost, ShardUnavailable, StoreClosed
from dhtcart.membership import Lease, MembershipDoc
from dhtcart.replication.placement import Names

__all__ = ["Orphan", "decide", "finish", "level", "resolve"]


@dataclass(frozen=True)
class Orphan:
    """Keys ``lo < key <= hi`` whose primary died: ``primary`` takes over, ``survivors`` keep copies."""

    lo: int
    hi: int
    primary: str
    survivors: tuple[str, ...]

    def to_list(self) -> list[Any]:
        return [self.lo, self.hi, self.primary, list(self.survivors)]

    @classmethod
    def from_list(cls, row: Sequence[Any]) -> Orphan:
        return cls(int(row[0]), int(row[1]), str(row[2]), tuple(str(s) for s in row[3]))


def decide(
    segments: Mapping[str, Segments],
    dead_ids: set[str],
    order: Callable[[int], Names],
) -> list[Orphan]:
    """The orphans of the dead shards (``name@born`` in ``dead_ids``), from the live shards' records.

    A range is an orphan where some live shard keeps it as a BACKUP of a dead
    shard; its survivors are those shards, and its new primary the first of
    them in ``order(hi)`` (the range's replica list), else the first by name.
    Pure: no I/O.
    """
    cuts: set[int] = set()
    owned: list[tuple[int, int, str]] = []  # (lo, hi, live shard) kept as a backup of a dead one
    for name, segs in segments.items():
        for lo, hi, state, peer in segs.spans():
            if state == BACKUP and peer in dead_ids:
                owned.append((lo, hi, name))
                cuts.update((lo, hi))
    if not owned:
        return []
    bounds = sorted(cuts)
    out: list[Orphan] = []
    for a, b in pairwise(bounds):
        survivors = tuple(sorted(n for lo, hi, n in owned if lo <= a and b <= hi))
        if not survivors:
            continue
        ranked = [n for n in order(b) if n in survivors]
        primary = ranked[0] if ranked else survivors[0]
        rest = (
            primary,
            *[n for n in ranked if n != primary],
            *[n for n in survivors if n not in ranked and n != primary],
        )
        if out and out[-1].hi == a and out[-1].primary == primary and out[-1].survivors == rest:
            out[-1] = Orphan(out[-1].lo, b, primary, rest)
        else:
            out.append(Orphan(a, b, primary, rest))
    return out


def resolve(decisions: Sequence[tuple[int, Sequence[Orphan]]], dead: set[str]) -> list[Orphan]:
    """One orphan per range from the decisions of every unfinished failover, ``(epoch, orphans)``.

    Where decisions overlap (the new primary that one failover chose stopped
    answering too, and a later failover took it out), a range keeps the
    survivors of every decision covering it, the newest decision's first,
    without the ``dead`` shards; its new primary is the first of them (the
    first live shard of its replica list, as the newest decision ranked them).
    A range left with no survivor is dropped (a failover never takes out a
    range's last copy). Pure: no I/O.
    """
    rows = [(epoch, o) for epoch, orphans in decisions for o in orphans]
    cuts = sorted({bound for _, o in rows for bound in (o.lo, o.hi)})
    out: list[Orphan] = []
    for a, b in pairwise(cuts):
        covering = sorted(((e, o) for e, o in rows if o.lo <= a and b <= o.hi), key=lambda row: -row[0])
        survivors: list[str] = []
        for _, o in covering:
            survivors += [n for n in o.survivors if n not in dead and n not in survivors]
        if not survivors:
            continue
        names = tuple(survivors)
        if out and out[-1].hi == a and out[-1].survivors == names:
            out[-1] = Orphan(out[-1].lo, b, names[0], names)
        else:
            out.append(Orphan(a, b, names[0], names))
    return out


def _drop_dead(segs: Segments, dead_ids: set[str]) -> list[tuple[int, int, str, str]]:
    """The changes that remove dead backups from a primary's (or frozen primary's) lists."""
    changes = []
    for lo, hi, state, peer in segs.spans():
        if state in (PRIMARY, FROZEN) and peer:
            ids = [p for p in peer.split(",") if p]
            rest = [p for p in ids if p not in dead_ids]
            if len(rest) != len(ids):
                new_state = state if state == FROZEN else (PRIMARY if rest else OWNED)
                changes.append((lo, hi, new_state, join_peers(rest)))
    return changes


def level(backends: Mapping[str, FencedBackend], token: int, orphan: Orphan) -> int:
    """Make the survivors of ``orphan`` hold the same writes: the newest stamp of each key
    (a record, or a grave where the newest write was a delete).

    Any choice is linearizable here: survivors differ only in writes the dead
    primary had not committed (a primary commits a write only once every
    backup holds it, and reads return committed writes only); keeping the
    newest keeps the most. Stamps order a key's writes across deletes
    (:class:`~dhtcart.backends.fencing.Pending`), so a survivor that kept a
    late apply of an older life never wins. Returns how many writes were made.
    """
    holders = [n for n in orphan.survivors if n in backends]
    newest: dict[int, Entry] = {}
    held: dict[str, dict[int, tuple[int, int]]] = {}
    for name in holders:
        marks = backends[name].marks([(orphan.lo, orphan.hi)])
        stamps: dict[int, tuple[int, int]] = {}
        entries: list[Entry] = []
        for key, rec in backends[name].scan(orphan.lo, orphan.hi):
            entries.append((key, *stamp_of(rec.version, marks.get(key)), rec.value))
        records = {entry[0] for entry in entries}  # a grave beside a record is stale (see stamp_of)
        entries += [
            (key, life, version, None) for key, (life, version) in marks.items() if version and key not in records
        ]
        for entry in entries:
            key, life, version, _ = entry
            stamps[key] = (life, version)
            best = newest.get(key)
            if best is None or best[1:3] < (life, version):
                newest[key] = entry
        held[name] = stamps
    written = 0
    for name in holders:
        missing = [e for k, e in sorted(newest.items()) if held[name].get(k, (0, 0)) < e[1:3]]
        for start in range(0, len(missing), 1000):
            written += backends[name].repair_entries(token, missing[start : start + 1000])
    return written


def finish(
    doc: MembershipDoc,
    lease: Lease,
    backends: Mapping[str, FencedBackend],
    ids: Mapping[str, str],
    publish: Callable[[MembershipDoc], None],
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> MembershipDoc:
    """Steps 3-7 for every shard of ``doc.down`` not promoted yet (see the module doc); the new document.

    ``backends``: the live shards; ``ids``: every shard's ``name@born``.
    Raises :class:`~dhtcart.errors.ShardUnavailable` if a survivor stops
    answering too (the caller takes it out, and this runs again).
    """
    pending = {n: e for n, e in doc.down.items() if not e.get("promoted")}
    if not pending:
        return doc
    started = time.time()  # the publication of these decisions happened before this
    dead = set(doc.down)
    dead_ids = {ids[n] for n in dead if n in ids}
    token, epoch = lease.token, doc.epoch
    decisions = [
        (int(e.get("epoch", 0)), [Orphan.from_list(row) for row in e.get("orphans", [])]) for e in pending.values()
    ]
    orphans = resolve(decisions, dead)
    # 3. fence: raise every live shard's token and epoch, drop dead backups, point survivors at the new primary
    needed = {n for orphan in orphans for n in orphan.survivors}
    for name, backend in sorted(backends.items()):
        lease.check()
        try:
            segs = backend.update_ownership(token, epoch).segments
        except (ShardUnavailable, StoreClosed):
            if name in needed:
                raise  # a survivor must be fenced before its range gets a primary: try again later
            continue  # down too, and no orphan needs it: its own failover deals with it
        changes = _drop_dead(segs, dead_ids)
        for orphan in orphans:
            if name in orphan.survivors:
                changes.append((orphan.lo, orphan.hi, BACKUP, ids[orphan.primary]))
        if changes:  # a shard has one state per key: these never overlap
            backend.update_ownership(token, epoch, sorted(changes))
    # 4. wait out the dead primaries' leases
    until = started + doc.read_lease + 2 * doc.clock_skew
    while True:
        lease.check()
        left = until - time.time()
        if left <= 0:
            break
        sleep(min(left, 0.25))
    # 5. level the survivors of every orphan
    promotions: dict[str, list[Change]] = {}
    for orphan in orphans:
        lease.check()
        level(backends, token, orphan)
        rest = [ids[n] for n in orphan.survivors[1:] if n in backends]
        state, peer = (PRIMARY, join_peers(rest)) if rest else (OWNED, "")
        promotions.setdefault(orphan.primary, []).append((orphan.lo, orphan.hi, state, peer))
    # 6. promote: each new primary takes all its orphans in one atomic step (after step 3 set them
    #    all BACKUP, so a rerun after a crash half way through promotes them again the same way)
    for name, changes in sorted(promotions.items()):
        lease.check()
        primary = backends[name]
        primary.update_ownership(token, epoch, sorted(changes), expect=BACKUP)
        primary.renew_lease(epoch, time.time() + doc.read_lease)
    # 7. done
    down = {n: ({"epoch": e.get("epoch", epoch), "promoted": True} if n in pending else e) for n, e in doc.down.items()}
    new = doc.next(down=down)
    publish(new)
    return new


def probe(backend: FencedBackend) -> bool:
    """Whether a shard answers now (its own timeout bounds the wait)."""
    try:
        backend.ownership()
    except (ShardUnavailable, StoreClosed, LeaseLost):
        return False
    return True


def peers_of(segs: Segments) -> set[str]:
    """Every shard ``name@born`` that a record's primaries and backups name."""
    out: set[str] = set()
    for _, _, state, peer in segs.spans():
        if state in (PRIMARY, FROZEN, BACKUP):
            out.update(f"{n}@{b}" for n, b in split_peers(peer))
    return out
