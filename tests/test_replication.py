"""Replication in one process: placement, the shard-side protocol, replicated stores, failover, repair.

The cross-process and cross-host tests (writer processes, SIGKILL, Redis
servers killed and paused) are in ``test_replication_procs.py`` and
``test_replication_redis.py``; the protocol is drawn in ``docs/replication.md``.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dhtcart import DHTServerStore, LeaseExpired, Moved, Record, VersionConflict, WriteInFlight, hash_key
from dhtcart.backends.fencing import FencedBackend, Pending
from dhtcart.backends.ownership import BACKUP, OWNED, PRIMARY, Ownership, Segments
from dhtcart.errors import InvalidInput, ShardUnavailable
from dhtcart.hashing import MAX_KEY
from dhtcart.rebalance import failover as takeout
from dhtcart.rebalance.mover import Migration
from dhtcart.replication.placement import Placement, default_domain
from dhtcart.ring import HashRing, PartitionRing
from tests.conftest import BackendEnv
from tests.helpers import Histories


@pytest.fixture
def renv(env: BackendEnv) -> BackendEnv:
    """A :class:`BackendEnv` of each backend (memory, LMDB, Redis: the conftest's ``env``)."""
    return env


def _keys(n: int, tag: str = "k") -> list[int]:
    return [hash_key(f"{tag}-{i}") for i in range(n)]


def _unreachable(backend: object) -> None:
    """Make one handle's backend object refuse every call, as a medium that stopped answering
    this process (the medium itself, and other handles, are untouched)."""
    from dhtcart.errors import ShardUnavailable

    def refuse(*args: object, **kwargs: object) -> None:
        raise ShardUnavailable("victim", "-", "unreachable from this handle (fault injection)")

    methods = ("get", "put", "delete", "scan", "count", "ownership", "decide", "apply", "send_apply", "commit")
    for method in (*methods, "pending"):
        setattr(backend, method, refuse)


def _three_shards_one_unreachable() -> tuple[DHTServerStore, list[int], str]:
    """A memory store of 3 shards, 2 copies, 100 keys at version 1; the primary of the first key
    stops answering (nothing failed over yet); no background repair."""
    store = DHTServerStore(shards=3, replicas=2, read_lease=0.2)
    keys = _keys(100)
    for k in keys:
        store.put(k, b"v")
    victim = store.replicas_for(keys[0])[0]
    _unreachable(store.shards[victim].backend)
    store._coordinator.repair_in_background = lambda: None  # type: ignore[method-assign]
    return store, keys, victim


def _fail_over_and_die_after_deciding(store: DHTServerStore, victim: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Start a failover of ``victim`` that stops right after publishing its decision, as if its
    process died there (later failovers run whole)."""
    real_finish = takeout.finish
    stops = {"n": 0}

    def stop_after_decision(*args: object, **kwargs: object) -> object:
        stops["n"] += 1
        if stops["n"] == 1:
            raise RuntimeError("the failover's process died after publishing its decision")
        return real_finish(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(takeout, "finish", stop_after_decision)
    with pytest.raises(RuntimeError):
        store._coordinator.failover({victim})


def _failover_stopped_after_deciding(
    renv: BackendEnv, monkeypatch: pytest.MonkeyPatch, copy: int, **options: float
) -> tuple[DHTServerStore, list[int], str]:
    """A 3-shard store keeping 2 copies of 200 keys at version 1, whose shard holding the first
    key's copy ``copy`` (0: its primary, 1: its backup) stopped answering, and whose failover
    was decided and published by a process that died then (no background repair)."""
    store = renv.store(3, replicas=2, read_lease=0.2, **options)
    keys = _keys(200)
    for k in keys:
        store.put(k, b"v")
    victim = store.replicas_for(keys[0])[copy]
    _unreachable(store.shards[victim].backend)
    _fail_over_and_die_after_deciding(store, victim, monkeypatch)
    store._coordinator.repair_in_background = lambda: None  # type: ignore[method-assign]
    doc = store._refresh().doc
    assert victim in doc.down and not doc.down[victim]["promoted"], "the decision is published, not carried out"
    return store, keys, victim


def _copies(store: DHTServerStore, key: int) -> dict[str, Record]:
    """The copies of ``key`` on every live shard, read behind the store's back."""
    out = {}
    for name, shard in store.shards.items():
        if name in store.rebalance_status().down:
            continue
        for _, rec in shard.backend.scan(key - 1, key):
            out[name] = rec
    return out


# -- placement ----------------------------------------------------------------------------


def test_replica_lists_are_distinct_shards_in_distinct_domains() -> None:
    ring = PartitionRing([f"s{i}" for i in range(6)], partitions=256)
    domains = {f"s{i}": f"host{i // 2}" for i in range(6)}  # three hosts, two shards each
    p = Placement(ring, 3, domains)
    for lo, hi, names in p.lists():
        assert len(names) == 3 and len(set(names)) == 3
        assert len({domains[n] for n in names}) == 3, (lo, hi, names)
        assert names[0] == ring.node_for(hi)
    fewer = Placement(ring, 4, domains)  # four copies, three domains: the fourth shares a domain
    assert all(len(names) == 4 and len({domains[n] for n in names}) == 3 for _, _, names in fewer.lists())


@given(
    n=st.integers(1, 6),
    old_replicas=st.integers(1, 3),
    new_replicas=st.integers(1, 3),
    change=st.sampled_from(["add", "remove", "weight", "none"]),
    partitioned=st.booleans(),
    progress=st.lists(st.floats(0, 1), min_size=1, max_size=8),
    keys=st.lists(st.integers(0, MAX_KEY), max_size=20),
)
def test_a_migration_routes_each_key_by_its_move_and_hint(
    n: int, old_replicas: int, new_replicas: int, change: str, partitioned: bool, progress: list[float], keys: list[int]
) -> None:
    """Migration.replicas (one bisect over a merged table) agrees with the rule it implements:
    a key in a moving range has its new list once its move's hint has passed it, its old one
    before; any other key has its list in the new placement. Checked at every boundary too."""
    names = [f"s{i}" for i in range(n)]

    def ring(nodes: dict[str, int]) -> HashRing | PartitionRing:
        return PartitionRing(nodes, partitions=64) if partitioned else HashRing(nodes, vnodes=8)

    old_nodes = dict.fromkeys(names, 1)
    new_nodes = dict(old_nodes)
    if change == "add":
        new_nodes["extra"] = 1
    elif change == "remove" and n > 1:
        del new_nodes["s0"]
    elif change == "weight":
        new_nodes["s0"] = 3
    old = Placement(ring(old_nodes), min(old_replicas, len(old_nodes)))
    new = Placement(ring(new_nodes), min(new_replicas, len(new_nodes)))
    mig = Migration(old, new)
    for i, m in enumerate(mig.moves):  # hand some of each move over
        mig.hints[i] = m.lo + int((m.hi - m.lo) * progress[i % len(progress)])
    probes = set(keys)
    for lo, hi, _ in new.lists():
        probes |= {lo, lo + 1, hi, hi + 1}
    for m, hint in zip(mig.moves, mig.hints):
        probes |= {m.lo, m.lo + 1, m.hi, m.hi + 1, hint, hint + 1}
    for key in sorted(k for k in probes if 0 <= k <= MAX_KEY):
        moving = [i for i, m in enumerate(mig.moves) if m.lo < key <= m.hi]
        if moving:
            m = mig.moves[moving[0]]
            want = m.new if key <= mig.hints[moving[0]] else m.old
        else:
            want = new.replicas_for(key)
        assert mig.replicas(key) == want, (key, moving)


def test_two_databases_of_one_redis_server_are_one_domain() -> None:
    assert default_domain("a", "redis://10.0.0.1:6379/0") == default_domain("b", "redis://10.0.0.1:6379/1")
    assert default_domain("a", "redis://10.0.0.1:6379/0") != default_domain("b", "redis://10.0.0.1:6380/0")
    assert default_domain("a", "lmdb:///x") != default_domain("b", "lmdb:///x")


@given(
    n=st.integers(1, 7),
    replicas=st.integers(1, 4),
    down=st.sets(st.integers(0, 6), max_size=3),
    keys=st.lists(st.integers(0, MAX_KEY), min_size=1, max_size=20),
)
def test_placement_lists_agree_with_the_preference_list(n: int, replicas: int, down: set[int], keys: list[int]) -> None:
    ring = HashRing([f"s{i}" for i in range(n)], vnodes=16)
    dead = frozenset(f"s{i}" for i in down if i < n)
    p = Placement(ring, replicas, {}, dead)
    for key in keys:
        full = ring.preference_list(key, min(replicas, n))
        assert p.replicas_for(key) == tuple(s for s in full if s not in dead)
    # the lists cover the key space, and diff() finds exactly the keys whose lists differ
    other = Placement(ring, min(replicas + 1, 7), {}, frozenset())
    moves = p.diff(other)
    for key in keys:
        moving = any(m.lo < key <= m.hi for m in moves)
        assert moving == (p.replicas_for(key) != other.replicas_for(key))


def test_bad_numbers_of_copies_are_refused() -> None:
    for bad in (0, -1, 8, True, 2.0, "2"):
        with pytest.raises(InvalidInput):
            DHTServerStore(shards=3, replicas=bad)  # type: ignore[arg-type]


# -- the shard side: decide, apply, commit, leases ------------------------------------------


def _pair(renv: BackendEnv, primary_url: str | None = None) -> tuple[FencedBackend, FencedBackend]:
    """A primary and its backup over the whole key space, fenced, as a store would set them."""
    primary = renv.backend(primary_url or renv.url(), context=None)
    backup = renv.backend(renv.url(), context=None)
    assert isinstance(primary, FencedBackend) and isinstance(backup, FencedBackend)
    primary.fenced = backup.fenced = True
    primary.claim(Ownership(1, 1, Segments.all(PRIMARY, "b@1"), leased=True), force=True)
    backup.claim(Ownership(1, 1, Segments.all(BACKUP, "a@1"), leased=True), force=True)
    return primary, backup


def test_decide_apply_commit(renv: BackendEnv) -> None:
    primary, backup = _pair(renv)
    decided = primary.decide(7, b"one", expected_version=0)
    assert decided == Pending(7, 0, 1, b"one", "b@1")
    with pytest.raises(WriteInFlight) as info:  # one pending write per key
        primary.decide(7, b"two")
    assert info.value.pending == decided
    primary.renew_lease(1, time.time() + 60)
    assert primary.get(7) is None, "a pending write is not read"
    backup.apply("a@1", decided)
    backup.apply("a@1", decided)  # idempotent
    with pytest.raises(Moved):
        backup.apply("c@1", decided)  # only the primary the backup's record names
    assert primary.commit(7, 1, 0) is True and primary.commit(7, 1, 0) is False
    assert primary.get(7) == Record(1, b"one")
    with pytest.raises(VersionConflict):  # against the committed version
        primary.decide(7, b"x", expected_version=0)
    gone = primary.decide(7, None, expected_version=1)
    assert gone.value is None and gone.prev == 1
    backup.apply("a@1", gone)
    primary.commit(7, gone.version, gone.life)
    assert primary.get(7) is None and list(backup.scan(-1, MAX_KEY)) == []
    assert primary.decide(8, None).version == 0, "deleting an absent key decides nothing"
    assert primary.pending(8) is None


def test_a_delete_leaves_a_grave_and_the_key_created_again_is_of_the_next_life(renv: BackendEnv) -> None:
    """docs/replication.md, "Lives and graves": stamps order a key's writes across deletes, on
    the primary and its backup, and a late apply or commit of an older write changes nothing."""
    primary, backup = _pair(renv)
    first = primary.decide(7, b"one", expected_version=0)
    backup.apply("a@1", first)
    assert primary.commit(7, 1, 0) and first.life == 0
    gone = primary.decide(7, None, expected_version=1)
    assert (gone.prev, gone.version, gone.life) == (1, 2, 0)
    backup.apply("a@1", gone)
    assert primary.commit(7, 2, 0)
    assert primary.marks([(-1, MAX_KEY)]) == backup.marks([(-1, MAX_KEY)]) == {7: (0, 2)}  # the graves
    again = primary.decide(7, b"new", expected_version=0)
    assert (again.prev, again.version, again.life) == (0, 1, 1), "users' versions start at 1 again"
    assert Pending.decode(7, again.encode(), "b@1") == again
    backup.apply("a@1", again)
    assert primary.commit(7, 1, 0) is False, "a late commit of version 1 of the first life"
    assert primary.commit(7, 1, 1) is True
    primary.renew_lease(1, time.time() + 60)
    assert primary.get(7) == Record(1, b"new")
    assert primary.marks([(-1, MAX_KEY)]) == backup.marks([(-1, MAX_KEY)]) == {7: (1, 0)}  # a record of life 1
    for late in (first, gone):  # late applies of the first life: older than what the backup holds
        backup.apply("a@1", late)
    assert list(backup.scan(-1, MAX_KEY)) == [(7, Record(1, b"new"))]
    assert backup.marks([(-1, MAX_KEY)]) == {7: (1, 0)}
    backup.apply("a@1", Pending(9, 4, 5, None))  # a delete of a key the backup never held: a grave
    backup.apply("a@1", Pending(9, 3, 4, b"late"))
    assert list(backup.scan(8, 9)) == [] and backup.marks([(8, 9)]) == {9: (0, 5)}


def test_levelling_keeps_the_newest_stamp_graves_included(renv: BackendEnv) -> None:
    """Survivors that differ by a delete, or by lives, end with the newest write of each key."""
    a, b = (renv.backend(renv.url(), context=None) for _ in range(2))
    for backend in (a, b):
        assert isinstance(backend, FencedBackend)
        backend.fenced = True
        backend.claim(Ownership(1, 1, Segments.all(BACKUP, "x@1"), leased=True), force=True)
    # key 1: a holds version 4; b holds its grave (5). key 2: a holds life 1, b an older life.
    # key 3: only b holds it. key 4: a holds a grave older than b's record of the next life
    a.apply("x@1", Pending(1, 3, 4, b"four"))
    b.apply("x@1", Pending(1, 4, 5, None))
    a.apply("x@1", Pending(2, 0, 1, b"life 1", life=1))
    b.apply("x@1", Pending(2, 6, 7, b"life 0"))
    b.apply("x@1", Pending(3, 0, 1, b"three"))
    a.apply("x@1", Pending(4, 1, 2, None))
    b.apply("x@1", Pending(4, 0, 1, b"next", life=1))
    orphan = takeout.Orphan(-1, MAX_KEY, "a", ("a", "b"))
    assert takeout.level({"a": a, "b": b}, 2, orphan) == 4
    for backend in (a, b):
        assert list(backend.scan(-1, MAX_KEY)) == [
            (2, Record(1, b"life 1")),
            (3, Record(1, b"three")),
            (4, Record(1, b"next")),
        ]
        assert backend.marks([(-1, MAX_KEY)]) == {1: (0, 5), 2: (1, 0), 4: (1, 0)}


def test_a_record_beside_an_old_grave_is_of_the_next_life(renv: BackendEnv) -> None:
    """A store that kept one copy for a while created a deleted key again by a plain write, which
    leaves the grave as it was: the record is newer than that grave, in every comparison
    (found by review: levelling kept the old grave and deleted an acknowledged write)."""
    x, a, b = (renv.backend(renv.url(), context=None) for _ in range(3))
    for backend, state, peer in ((x, PRIMARY, "a@1,b@1"), (a, BACKUP, "x@1"), (b, BACKUP, "x@1")):
        assert isinstance(backend, FencedBackend)
        backend.fenced = True
        backend.claim(Ownership(1, 1, Segments.all("-", "")), force=True)
        backend.import_ranges(2, [(-1, MAX_KEY)], [(5, Record(1, b"plain"))])
        backend.import_marks(2, [(-1, MAX_KEY)], {5: (0, 3)})
        backend.claim(Ownership(1, 2, Segments.all(state, peer), leased=True), force=True)
    newer = x.decide(5, b"newer", 1)
    assert newer.stamp == (1, 2)
    a.apply("x@1", newer)
    a.apply("x@1", Pending(5, 2, 3, None))  # a late delete of the old life: older than both
    assert list(a.scan(-1, MAX_KEY)) == [(5, Record(2, b"newer"))] and a.marks([(-1, MAX_KEY)]) == {5: (1, 0)}
    orphan = takeout.Orphan(-1, MAX_KEY, "a", ("a", "b"))
    assert takeout.level({"a": a, "b": b}, 3, orphan) == 1
    for backend in (a, b):
        assert list(backend.scan(-1, MAX_KEY)) == [(5, Record(2, b"newer"))]


def test_marks_go_with_a_copy_and_a_drop(renv: BackendEnv) -> None:
    backend = renv.backend(renv.url(), context=None)
    assert isinstance(backend, FencedBackend)
    backend.fenced = True
    backend.claim(Ownership(1, 1, Segments.all("-", "")), force=True)
    marks = {k: (k % 3, k % 2 * 9) for k in range(1, 2600)}  # graves and lives, > 2 script batches
    backend.import_ranges(2, [(0, 5000)], [(3, Record(1, b"x"))])
    backend.import_marks(2, [(0, 5000)], marks)
    assert backend.marks([(0, 5000)]) == marks and backend.marks([(10, 20)]) == {k: marks[k] for k in range(11, 21)}
    assert backend.marks([(10, 12), (1200, 2400), (4000, 4100)]) == {k: marks[k] for k in (11, 12, *range(1201, 2401))}
    backend.import_marks(2, [(0, 100)], {50: (7, 7)})  # exactly these, in that range
    assert backend.marks([(0, 100)]) == {50: (7, 7)} and len(backend.marks([(0, 5000)])) == 2500
    assert backend.count() == 1, "marks are not records"
    backend.drop_ranges(2, [(0, 5000)])
    assert backend.marks([(-1, MAX_KEY)]) == {} and backend.count() == 0


def test_a_primary_without_a_running_lease_answers_no_read(renv: BackendEnv) -> None:
    url = renv.url()
    primary, backup = _pair(renv, url)

    def readers() -> list[FencedBackend]:
        """The primary's handle, and on a medium that outlives handles, a new one with nothing
        cached, whose first read reads the ownership record (Redis: in the read's transaction)."""
        if not renv.persistent:
            return [primary]
        fresh = renv.backend(url, context=None)
        assert isinstance(fresh, FencedBackend)
        fresh.fenced = True
        return [primary, fresh]

    pend = primary.decide(3, b"v")
    backup.apply("a@1", pend)
    primary.commit(3, pend.version, pend.life)
    for reader in readers():
        with pytest.raises(LeaseExpired):
            reader.get(3)
    assert primary.renew_lease(0, time.time() + 60) == 0, "a renewal from an older epoch is refused"
    until = primary.renew_lease(1, time.time() + 0.5)
    assert all(reader.get(3) == Record(1, b"v") for reader in readers())
    assert primary.lease() == pytest.approx(until, abs=0.002)
    time.sleep(0.55)
    for reader in readers():
        with pytest.raises(LeaseExpired):
            reader.get(3)
    with pytest.raises(Moved):
        backup.get(3)  # a backup answers no read, leased or not


def test_pending_writes_are_finished_or_dropped_with_their_range(renv: BackendEnv) -> None:
    primary, _ = _pair(renv)
    for k in (5, 10, 15):
        primary.decide(k, b"p%d" % k)
    assert [p.key for p in primary.scan_pending(5, 15)] == [10, 15]
    assert all(p.backups == "b@1" for p in primary.scan_pending(-1, MAX_KEY))
    assert primary.count() == 0, "pending writes are not records"
    primary.update_ownership(2, 2, [(-1, MAX_KEY, "-", "")])
    primary.drop_ranges(2, [(-1, 10)])
    assert [p.key for p in primary.scan_pending(-1, MAX_KEY)] == [15]


def test_repair_records_keeps_the_newest(renv: BackendEnv) -> None:
    _, backup = _pair(renv)
    backup.apply("a@1", Pending(1, 0, 3, b"three"))
    assert backup.repair_records(1, [(1, Record(2, b"two")), (2, Record(5, b"five"))]) == 1
    assert dict(backup.scan(-1, MAX_KEY)) == {1: Record(3, b"three"), 2: Record(5, b"five")}


# -- replicated stores ------------------------------------------------------------------------


def test_every_key_lives_on_exactly_its_replicas(renv: BackendEnv) -> None:
    store = renv.store(4, replicas=3)
    assert store.replicas == 3
    keys = _keys(300)
    for i, k in enumerate(keys):
        store.put(k, b"v%d" % i)
    for k in keys[::3]:
        store.put(k, b"again", expected_version=1)
    for k in keys[1::7]:
        assert store.delete(k)
    with pytest.raises(VersionConflict):
        store.put(keys[0], b"stale", expected_version=1)
    store._check()
    for k in keys[:30]:
        names = store.replicas_for(k)
        assert len(set(names)) == 3
        held = _copies(store, k)
        assert set(held) == (set(names) if store.get(k) is not None else set())


def test_set_replicas_makes_and_drops_copies_live(renv: BackendEnv) -> None:
    store = renv.store(4)
    keys = _keys(400)
    model = {k: store.put(k, b"v") for k in keys}
    for n in (2, 3, 1, 2):
        report = store.set_replicas(n)
        assert store.replicas == n
        store._check()
        assert {k: store.get(k) for k in keys} == {k: Record(v, b"v") for k, v in model.items()}
        assert report.keys_moved >= 0
    assert all(len(store.replicas_for(k)) == 2 for k in keys)


def test_rebalances_keep_every_copy(renv: BackendEnv) -> None:
    store = renv.store(3, replicas=2)
    keys = _keys(300)
    for k in keys:
        store.put(k, b"x")
    store.add_shard("extra")
    store._check()
    store.set_weight("extra", 3)
    store._check()
    store.remove_shard(sorted(n for n in store.shards if n != "extra")[0])
    store._check()
    assert all(store.get(k) == Record(1, b"x") for k in keys)
    assert all(len(store.replicas_for(k)) == 2 for k in keys)


def test_concurrent_compare_and_set_with_replicas_is_linearizable(renv: BackendEnv, tmp_path: Path) -> None:
    store = renv.store(4, replicas=2)
    keys = _keys(6, "hot")
    histories = Histories()
    handles = [histories.recorder(store, i) for i in range(4)]
    done = [0] * 4

    def work(i: int) -> None:
        h = handles[i]
        rnd = random.Random(i)
        for _ in range(120):
            k = rnd.choice(keys)
            rec = h.get(k)
            try:
                h.put(k, b"%d" % (int(rec.value) + 1 if rec else 1), rec.version if rec else 0)
                done[i] += 1
            except VersionConflict:
                pass

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    histories.check()
    assert sum(int(store.get(k).value) for k in keys if store.get(k)) == sum(done), "every acknowledged increment"
    store._check()


def test_a_pending_write_is_finished_by_the_next_writer(renv: BackendEnv) -> None:
    """A writer that died after deciding (its write pending on the primary, applied on no
    backup) never blocks the key: the next writer finishes it, then writes its own."""
    store = renv.store(3, replicas=3)
    key = hash_key("orphaned-write")
    store.put(key, b"one")
    primary = store.shards[store.replicas_for(key)[0]].backend
    assert isinstance(primary, FencedBackend)
    primary.decide(key, b"two", expected_version=1)  # the writer dies here
    assert store.get(key) == Record(1, b"one"), "not committed: not read"
    assert store.put(key, b"three", expected_version=2) == 3, "the dead writer's write counts first"
    assert store.get(key) == Record(3, b"three")
    store._check()


def test_failover_takes_a_dead_shard_out_and_the_repair_restores_every_copy(renv: BackendEnv) -> None:
    store = renv.store(4, replicas=2, read_lease=0.3)
    keys = _keys(400)
    for k in keys:
        store.put(k, b"before")
    victim = store.replicas_for(keys[0])[0]
    _unreachable(store.shards[victim].backend)  # stops answering, never comes back
    started = time.monotonic()
    assert store.put(keys[0], b"after", expected_version=1) == 2
    took = time.monotonic() - started
    assert victim in store.rebalance_status().down
    assert took < 15, f"the first write to a dead primary's key took {took:.1f} s"
    for k in keys[1:]:  # every key readable and writable, with its last value
        assert store.get(k) == Record(1, b"before")
    deadline = time.monotonic() + 60
    while (store.rebalance_status().down or store.rebalance_status().migrating) and time.monotonic() < deadline:
        time.sleep(0.05)
    status = store.rebalance_status()
    assert status.down == [] and status.under_replicated == 0.0, status
    assert victim not in store.ring.nodes
    assert store.get(keys[0]) == Record(2, b"after")
    for k in keys:
        assert len(store.replicas_for(k)) == 2 and victim not in store.replicas_for(k)
        assert len(_copies(store, k)) == 2


def test_a_repair_waits_out_another_holders_lease_then_repairs() -> None:
    """repair() meets the rebalance lease held by another holder (a rebalancer, or a process
    killed while holding it, whose lease runs out): it waits, up to the store's lock timeout,
    then repairs; it never returns as if done with the dead shard still in the ring. (It gave
    up silently after 64 waits of 50 ms: a killed repairer's 5 s lease outlasted them.)"""
    import threading

    store, keys, victim = _three_shards_one_unreachable()
    assert store.put(keys[0], b"w", expected_version=1) == 2  # the write fails the victim over
    assert victim in store.rebalance_status().down
    held = store.membership.try_lease("another process")
    assert held is not None
    release = threading.Timer(4.0, held.release)  # longer than the 3.2 s the repair used to wait
    release.start()
    try:
        started = time.monotonic()
        assert store.repair() == [victim]
        assert time.monotonic() - started >= 3.5  # it did wait for the lease
    finally:
        release.cancel()
    assert victim not in store.ring.nodes and store.rebalance_status().down == []
    assert all(store.get(k) is not None for k in keys)
    store._check()


def test_a_failover_stopped_after_its_decision_is_finished_by_the_next_holder(
    renv: BackendEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, keys, victim = _failover_stopped_after_deciding(renv, monkeypatch, copy=0)
    assert store.put(keys[0], b"w", expected_version=1) == 2  # a waiting write finishes the failover
    assert store._refresh().doc.down[victim]["promoted"]
    assert all(store.get(k) is not None for k in keys)
    store.repair()
    store._check()


def test_a_write_whose_backup_died_finishes_a_failover_stopped_after_its_decision(
    renv: BackendEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failover of a dead backup was decided and published, and its process died before
    carrying it out: a write whose backup is that shard (its primary alive) finishes the
    failover itself, and does not spin against the dead backup until it gives up. (Found in
    CI: a writer of tests/test_replication_redis.py waited the whole redirect_timeout, 15 s.)"""
    # the first key's backup dies (the primary of other keys)
    store, keys, victim = _failover_stopped_after_deciding(renv, monkeypatch, copy=1, redirect_timeout=5.0)
    assert store.put(keys[0], b"w", expected_version=1) == 2  # its backup is the dead shard
    assert store._refresh().doc.down[victim]["promoted"]
    assert store.get(keys[0]) == Record(2, b"w")
    assert all(store.get(k) is not None for k in keys)
    store.repair()
    store._check()


def test_a_decided_write_that_runs_out_of_time_raises_with_an_unknown_outcome(
    renv: BackendEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write decided by its primary whose backups do not take it within ``redirect_timeout``
    (its backup dead, the failover stopped after its decision, the lease held by another
    process) stays pending, and the key's next writer finishes it: the error says its outcome
    is unknown (``KeyUnavailable`` used to say that nothing was applied: a caller trusting that
    and retrying would have applied its change twice)."""
    store, keys, _ = _failover_stopped_after_deciding(renv, monkeypatch, copy=1, redirect_timeout=1.0)
    lease = store._membership.try_lease("another process")  # which is slow to finish it
    assert lease is not None
    with pytest.raises(ShardUnavailable) as raised:
        store.put(keys[0], b"1", expected_version=1)
    assert raised.value.unknown and "outcome is unknown" in str(raised.value)
    lease.release()
    store.finish_rebalance()  # the failover, here rather than in the next put (its 1 s would be tight)
    assert store.put(keys[0], b"2", expected_version=2) == 3, "the next writer finished it first"
    assert store.get(keys[0]) == Record(3, b"2")


@pytest.mark.parametrize("how", ["put", "cas", "delete", "modify"])
def test_a_plain_write_finishes_a_replicated_write_pending_on_its_key_first(renv: BackendEnv, how: str) -> None:
    """During ``set_replicas``, a handle that still routes with one copy writes by the plain
    path while a handle on the replicated view has decided a write of the same key on the same
    shard (an owned range: a decide there lists no backups). The plain write must not slip in
    between that decide and its commit: both compare-and-sets from one version would succeed,
    and the commit would overwrite the plain write. A plain write of a key with a pending write
    finishes that write first (as a decide does), then runs against the version it made."""
    store = renv.store(3)  # one copy: every range owned, every write plain
    key = hash_key("two paths, one key")
    store.put(key, b"first")
    primary = store.servers[store.replicas_for(key)[0]].backend
    decided = primary.decide(key, b"replicated", 1)  # a handle on the replicated view, half way
    if how == "put":
        assert store.put(key, b"plain") == 3
        after = Record(3, b"plain")
    elif how == "cas":
        with pytest.raises(VersionConflict):
            store.put(key, b"plain", expected_version=1)
        after = Record(2, b"replicated")
    elif how == "delete":
        with pytest.raises(VersionConflict):
            store.delete(key, expected_version=1)
        assert store.delete(key, expected_version=2)
        after = None
    else:
        assert store.modify(key, lambda rec: rec.value + b"+plain" if rec else b"?") == Record(3, b"replicated+plain")
        after = Record(3, b"replicated+plain")
    assert primary.pending(key) is None
    store._complete(primary, decided)  # the deciding handle goes on: its write stood, once, and stays
    assert store.get(key) == after


@pytest.mark.parametrize("how", ["put", "cas", "delete", "modify"])
def test_a_handle_opened_before_set_replicas_writes_by_the_replicated_path(tmp_path: Path, how: str) -> None:
    """A handle whose view predates another handle's ``set_replicas(2)`` tries a plain write; the
    primary refuses it (a primary's writes are replicated), the handle learns the new membership
    and writes by the replicated path. (It used to go on trying the plain write until its
    ``redirect_timeout``, then raise ``KeyUnavailable``.)"""
    stale = DHTServerStore.open(tmp_path / "store", shards=3, redirect_timeout=5.0)
    admin = DHTServerStore.open(tmp_path / "store")
    try:
        key = hash_key("a stale view")
        stale.put(key, b"one")
        admin.set_replicas(2)
        assert not stale._view.replicated, "the handle still routes with one copy"
        if how == "put":
            assert stale.put(key, b"two") == 2
        elif how == "cas":
            assert stale.put(key, b"two", expected_version=1) == 2
        elif how == "delete":
            assert stale.delete(key, expected_version=1)
        else:
            assert stale.modify(key, lambda rec: b"two") == Record(2, b"two")
        want = None if how == "delete" else Record(2, b"two")
        assert admin.get(key) == want and stale.get(key) == want
        admin._check()  # every key on exactly its two copies
    finally:
        stale.close()
        admin.close()


@pytest.mark.parametrize("then", ["deleted", "created-again"])
def test_a_late_apply_of_a_finished_write_does_not_come_back_after_a_delete(renv: BackendEnv, then: str) -> None:
    """A writer that finishes another's write can be slow (a busy machine, a paused server):
    its apply reaches the backup after the write was committed, and the key deleted (and
    maybe created again, at version 1). Found by ``dhtcart verify --kill-shard --replicas 2``
    under load: a read after the failover returned the deleted value. The delete left a grave
    on the backup, and a key created again is of a later life: the late apply is older than
    both (docs/replication.md, "Lives and graves")."""
    store = renv.store(3, replicas=2, read_lease=0.2)
    store._coordinator.repair_in_background = lambda: None  # type: ignore[method-assign]
    key = hash_key("late")
    store.put(key, b"first")
    first, second = store.replicas_for(key)
    primary, backup = store.servers[first].backend, store.servers[second].backend
    late = primary.decide(key, b"finished by another writer", 1)  # a writer decides version 2 ...
    store._complete(primary, late)  # ... another writer finishes it; the first still holds it
    assert store.delete(key)
    if then == "created-again":
        assert store.put(key, b"new", expected_version=0) == 1
    before = store.get(key)
    backup.apply(store._view.ids[first], late)  # the first writer's apply lands now
    _unreachable(primary)  # the primary dies: its backup is failed over to
    assert store.get(key) == before


def test_a_new_copy_takes_the_graves_along(renv: BackendEnv) -> None:
    """The hand-over copies a range's marks with its records: a shard that becomes a backup
    after a delete refuses a late apply of the deleted write, as the old backups do."""
    store = renv.store(3, replicas=2, read_lease=0.2)
    store._coordinator.repair_in_background = lambda: None  # type: ignore[method-assign]
    key = hash_key("graves travel")
    store.put(key, b"first")
    old = store.replicas_for(key)
    primary = store.servers[old[0]].backend
    late = primary.decide(key, b"finished by another writer", 1)
    store._complete(primary, late)
    assert store.delete(key)
    store.set_replicas(3)
    new = store.replicas_for(key)
    (newcomer,) = set(new) - set(old)
    assert new[0] == old[0], "the same primary: the late write's decider is still named"
    copy = store.servers[newcomer].backend
    assert copy.marks([(key - 1, key)]) == {key: (0, 3)}, "the delete's grave came with the copy"
    copy.apply(store._view.ids[new[0]], late)  # the late apply reaches the new backup
    assert list(copy.scan(key - 1, key)) == []
    _unreachable(primary)
    assert store.get(key) is None


@pytest.mark.parametrize("how", ["repair", "finish_rebalance"])
def test_repair_and_finish_rebalance_finish_a_failover_whose_process_died(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failover decided and published, its process dead before carrying it out, and no
    operation meeting it since: repair() finishes it and repairs; finish_rebalance() finishes
    it (neither returns as if there were nothing to do; both did, found by the random-kill test)."""
    store, keys, victim = _three_shards_one_unreachable()
    _fail_over_and_die_after_deciding(store, victim, monkeypatch)
    assert not store._refresh().doc.down[victim]["promoted"]
    if how == "repair":
        assert store.repair() == [victim]
        assert victim not in store.ring.nodes and store.rebalance_status().down == []
    else:
        assert store.finish_rebalance() is not None
        assert store._refresh().doc.down[victim]["promoted"]
    assert all(store.get(k) == Record(1, b"v") for k in keys)
    store._check()


def test_overlapping_failover_decisions_resolve_to_one_live_primary_per_range() -> None:
    """A's failover chose B for (0, 100]; B died before promoting and B's failover chose C for
    (0, 50] (the part C had already been pointed at B for): every range gets exactly one live
    primary, the newest decision's first, with every live survivor of either decision."""
    Orphan = takeout.Orphan
    a_decision = [Orphan(0, 100, "B", ("B", "C", "D")), Orphan(100, 200, "C", ("C", "B"))]
    b_decision = [Orphan(0, 50, "C", ("C",))]
    got = takeout.resolve([(5, a_decision), (7, b_decision)], dead={"A", "B"})
    assert got == [Orphan(0, 100, "C", ("C", "D")), Orphan(100, 200, "C", ("C",))]  # equal neighbours merged
    assert takeout.resolve([(5, a_decision)], dead={"A"}) == a_decision  # one decision: as it was
    assert takeout.resolve([(5, [Orphan(0, 9, "B", ("B",))])], dead={"A", "B"}) == []  # no copy left


def test_the_new_primary_dying_during_a_failover_loses_nothing(
    renv: BackendEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three copies: a primary stops answering, and the shard its failover chose as the new primary
    of its ranges stops too, after the decision was published and before the promotion. Every key
    still has a copy; the next failover takes both out and every key is served again."""
    store = renv.store(4, replicas=3, read_lease=0.2)
    keys = _keys(200)
    for k in keys:
        store.put(k, b"v")
    first = store.replicas_for(keys[0])[0]
    second = store.replicas_for(keys[0])[1]  # the first survivor: the new primary of keys[0]
    _unreachable(store.shards[first].backend)
    store._coordinator.repair_in_background = lambda: None  # type: ignore[method-assign]
    real_level = takeout.level
    calls = {"n": 0}

    def second_dies(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            _unreachable(store.shards[second].backend)
        return real_level(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(takeout, "level", second_dies)
    with pytest.raises(ShardUnavailable):
        store._coordinator.failover({first})
    doc = store._refresh().doc
    assert first in doc.down and not doc.down[first]["promoted"], "decided, not promoted"
    assert store.put(keys[0], b"w", expected_version=1) == 2  # its writes fail both over, then go on
    doc = store._refresh().doc
    assert {first, second} <= set(doc.down) and all(e["promoted"] for e in doc.down.values())
    assert all(store.get(k) is not None for k in keys)
    assert store.get(keys[0]) == Record(2, b"w")
    store.repair()
    store._check()


def test_a_primary_taken_out_while_paused_answers_nothing_stale(lmdb_env: BackendEnv) -> None:
    """Two handles of one store: the second sees the primary fail and takes it out; the first,
    still routing with the old epoch, reads through the old primary after it comes back.
    (Two handles of one store share a membership: LMDB here; Redis in test_replication_redis.py.)"""
    renv = lmdb_env
    directory = renv.fresh_dir("store")
    first = renv.track(DHTServerStore.open(directory, shards=3, replicas=2, read_lease=0.3))
    second = renv.track(DHTServerStore.open(directory))
    key = next(k for k in _keys(50) if first.replicas_for(k))
    first.put(key, b"old")
    assert first.get(key) == Record(1, b"old")
    victim = first.replicas_for(key)[0]
    _unreachable(second.shards[victim].backend)  # for the second handle only
    second._coordinator.repair_in_background = lambda: None  # type: ignore[method-assign]
    assert second.put(key, b"new", expected_version=1) == 2
    assert victim in second.rebalance_status().down
    # the first handle still routes to the old primary, which never learned it was taken out
    assert first._view.replicas(key)[0] == victim
    assert first.get(key) == Record(2, b"new"), "the old primary's lease ran out: no stale read"


def test_the_last_copy_of_a_range_is_never_taken_out() -> None:
    """Both shards of a two-copy store stop answering: one is taken out, never both; the
    failover waits for the other (the last copy) to answer, then finishes, losing nothing."""
    store = DHTServerStore(shards=2, replicas=2, read_lease=0.1)
    keys = _keys(50)
    for k in keys:
        store.put(k, b"x")
    for shard in store.shards.values():
        shard.backend.pause(0.8)
    store._coordinator.repair_in_background = lambda: None  # type: ignore[method-assign]
    with pytest.raises(ShardUnavailable):  # the last copy does not answer: nothing can be decided yet
        store._coordinator.failover({"shard-0", "shard-1"})
    assert not store._refresh().doc.down, "nothing was published"
    time.sleep(0.9)  # both answer again
    assert all(store.get(k) == Record(1, b"x") for k in keys)
    store._check()
    store.close()


def test_a_replicated_store_survives_reopening(tmp_path: Path) -> None:
    with DHTServerStore.open(tmp_path / "s", shards=3, replicas=2) as store:
        for i, k in enumerate(_keys(100)):
            store.put(k, b"%d" % i)
    with DHTServerStore.open(tmp_path / "s") as again:
        assert again.replicas == 2
        assert [again.get(k) for k in _keys(100)] == [Record(1, b"%d" % i) for i in range(100)]
        again._check()
        assert OWNED not in {
            st for s in again.shards.values() for _, _, st, _ in s.backend.ownership().segments.spans()
        }


# -- the protocol's decisions, step by step (no I/O) -------------------------------------------


def test_completion_step_by_step() -> None:
    from dhtcart.replication import protocol as proto

    write = Pending(7, 3, 4, b"v", "b1@2,b2@5")
    c = proto.Completion("p", write)
    assert c.next() == proto.Apply("p", ("b1", "b2")) and c.backup_born("b2") == 5
    c.applied({"b1": proto.OK, "b2": proto.UNREACHABLE})
    assert c.next() == proto.Failover(("b2",)), "a backup that does not answer is taken out"
    c.failed_over()
    assert c.next() == proto.Reread("p")
    c.reread(write._replace(backups="b1@2"))
    assert c.next() == proto.Refresh()
    c.refreshed(primary_is_member=True)
    assert c.next() == proto.Apply("p", ("b1",)), "again, to the backups the primary lists now"
    c.applied({"b1": proto.OK})
    assert c.next() == proto.Commit("p")
    c.committed()
    assert c.next() == proto.Done()


def test_completion_when_a_backup_refuses() -> None:
    from dhtcart.replication import protocol as proto

    write = Pending(7, 3, 4, b"v", "b1@2")
    moved_on = proto.Completion("p", write)
    moved_on.applied({"b1": proto.MOVED})
    moved_on.reread(None)  # the primary has no pending write left: a migration finished it
    moved_on.refreshed(primary_is_member=True)
    assert moved_on.next() == proto.Done()
    deposed = proto.Completion("p", write)
    deposed.applied({"b1": proto.MOVED})
    deposed.reread(write)
    deposed.refreshed(primary_is_member=False)  # the primary was taken out by a failover
    step = deposed.next()
    assert isinstance(step, proto.Unknown) and "taken out" in step.reason
    silent = proto.Completion("p", write)
    silent.applied({"b1": proto.OK})
    silent.commit_failed()
    assert isinstance(silent.next(), proto.Unknown)


def test_what_an_unreachable_shard_means() -> None:
    from dhtcart.replication.protocol import after_unreachable, renewal

    assert after_unreachable(replicated=True, write=True, unknown=True, member=True) == "raise"
    assert after_unreachable(replicated=True, write=True, unknown=False, member=True) == "failover"
    assert after_unreachable(replicated=True, write=False, unknown=True, member=True) == "failover"
    assert after_unreachable(replicated=False, write=False, unknown=False, member=True) == "raise"
    assert after_unreachable(replicated=False, write=False, unknown=False, member=False) == "route"
    assert renewal(shards={"a": 3}, down={}, name="a", born=3, started=100.0, lease=1.5) == 101.5
    assert renewal(shards={"a": 3}, down={"a": {}}, name="a", born=3, started=100.0, lease=1.5) is None
    assert renewal(shards={"a": 4}, down={}, name="a", born=3, started=100.0, lease=1.5) is None


def test_readyz_and_metrics_show_the_copies_and_a_repair(tmp_path: Path) -> None:
    """/readyz stays ready without a shard a failover took out, and says what is short of copies;
    /metrics carries the same (replicas, shards down, the key space under-replicated)."""
    from fastapi.testclient import TestClient

    from dhtcart import CartService
    from dhtcart.http import create_app

    store = DHTServerStore(shards=4, replicas=2, read_lease=0.2)
    service = CartService(store)
    with TestClient(create_app(service)) as client:
        service.add_item("alice", "sku-1", "1.00")
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready"
        assert ready["replication"] == {"replicas": 2, "down": [], "underReplicated": 0.0, "migrating": False}
        victim = store.replicas_for(hash_key("alice"))[0]
        _unreachable(store.shards[victim].backend)
        store._coordinator.repair_in_background = lambda: None  # type: ignore[method-assign]
        assert service.list_items("alice")[0].item_id == "sku-1"  # the read meets the dead primary: a failover
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert victim not in body["shards"] and body["replication"]["down"] == [victim]
        assert 0 < body["replication"]["underReplicated"] < 1
        text = client.get("/metrics").text
        assert "dhtcart_shards_down 1.0" in text and "dhtcart_replicas 2.0" in text
        store.repair()
        body = client.get("/readyz").json()
        assert body["replication"] == {"replicas": 2, "down": [], "underReplicated": 0.0, "migrating": False}
