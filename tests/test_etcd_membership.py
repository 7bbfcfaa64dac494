"""The etcd membership against a real three-member etcd cluster: locations, the lease and its fencing
tokens, publication by compare-and-set, the watch (its order, a compaction, a dead member), credentials,
TLS, the ``dhtcart`` command on an etcd location, and what an unreachable etcd gives.

The cluster (``tests/etcd_server.py``) is started once for the module; each test uses a key prefix of
its own. Multi-process behaviour under failures is in ``tests/test_etcd_distributed.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dhtcart import DHTServerStore, InvalidInput, LeaseLost, Record, ShardUnavailable, hash_key
from dhtcart.membership import LOCATION_FORMS, MembershipDoc, open_membership, parse_location
from tests.conftest import redis_binary, skip_or_fail
from tests.etcd_server import EtcdCluster, EtcdError, find_etcd_binary, wait_until
from tests.helpers import ROOT, child_env

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(120)]


def etcd_binary() -> str:
    """The etcd binary and the client library, or skip (fail under ``CI=true``)."""
    try:
        import etcd3gw  # noqa: F401
    except ImportError as exc:
        skip_or_fail(f"the etcd extra is not installed: {exc}")
    try:
        binary = find_etcd_binary()
    except EtcdError as exc:
        skip_or_fail(str(exc))
    if binary is None:
        skip_or_fail("no etcd binary (apt-get install etcd-server, or DHTCART_ETCD_SERVER)")
    assert binary is not None
    return binary


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with EtcdCluster(tmp_path_factory.mktemp("etcd"), binary=etcd_binary()) as started:
        yield started


@pytest.fixture(scope="module")
def redis_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Any]]:
    from tests.redis_server import running

    with running(3, lambda i: tmp_path_factory.mktemp(f"etcd-redis{i}"), redis_binary()) as servers:
        yield servers


_PREFIXES = iter(range(10**6))


def _prefix() -> str:
    return f"t{next(_PREFIXES)}-{os.getpid()}"


def _doc(epoch: int = 1, **shards: str) -> MembershipDoc:
    shards = shards or {"a": "redis://127.0.0.1:1/0"}
    return MembershipDoc(epoch, {"type": "partition"}, dict(shards), dict.fromkeys(shards, 1), "process")


# -- locations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("etcd://", "no endpoint"),
        ("etcd:///carts", "no endpoint"),
        ("etcd://h:0/carts", "port 0"),
        ("etcd://h:x/carts", "endpoint 'h:x'"),
        ("etcd://h1,,h2/carts", "endpoint ''"),
        ("etcd://me:secret@h/carts", "DHTCART_ETCD_PASSWORD"),
        ("etcd://h/carts?prefix=x", "unknown option 'prefix'"),
        ("etcd://h/carts?timeout=0", "timeout must be"),
        ("etcd://h/carts?timeout=soon", "timeout must be a number"),
        ("etcd://h/ca rts", "prefix"),
        ("etcd://h/a//b", "prefix"),
    ],
)
def test_a_malformed_etcd_location_is_refused_naming_the_accepted_forms(url: str, why: str) -> None:
    with pytest.raises(InvalidInput, match="etcd location is etcd://host:port") as info:
        parse_location(url)
    assert why in str(info.value)
    with pytest.raises(InvalidInput):  # every entry point reads the location the same way
        DHTServerStore.open(url)


def test_etcd_locations_parse_to_their_endpoints_and_prefix() -> None:
    from dhtcart.membership.etcd import parse_etcd_url

    assert "etcd://host:port[,host:port...]/prefix" in LOCATION_FORMS
    url = parse_etcd_url("etcds://dhtcart@10.0.0.1,[::1]:2380,host.example:2379/shop/carts/?timeout=0.5")
    assert url.endpoints == (("10.0.0.1", 2379), ("::1", 2380), ("host.example", 2379))
    assert (url.prefix, url.tls, url.user, url.timeout) == ("/shop/carts", True, "dhtcart", 0.5)
    assert url.display == "etcds://dhtcart@10.0.0.1:2379,[::1]:2380,host.example:2379/shop/carts?timeout=0.5"
    assert parse_etcd_url("etcd://h").prefix == "/dhtcart"
    location = parse_location("ETCD://h1:2379,h2:2379/carts")
    assert (location.kind, location.is_database, location.shared) == ("etcd", True, True)


def test_importing_dhtcart_and_reading_an_etcd_location_import_no_client_library() -> None:
    code = (
        "import sys, dhtcart\n"
        "from dhtcart.membership import parse_location\n"
        "parse_location('etcd://10.0.0.1:2379/carts')\n"
        "print(sorted(m for m in ('etcd3gw', 'requests') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- the lease, its tokens, publication ---------------------------------------------------------


def test_one_holder_at_a_time_and_every_token_is_larger_than_the_last(cluster: EtcdCluster) -> None:
    url = cluster.url(_prefix())
    a, b = open_membership(url), open_membership(url)
    try:
        first = a.try_lease("a@host")
        assert first is not None
        assert b.try_lease("b@host") is None  # one rebalancer at a time, across handles
        assert b.lease_holder() == "a@host"
        tokens = [first.token]
        first.release()
        first.release()  # idempotent
        with pytest.raises(LeaseLost, match="released"):
            first.check()
        assert b.lease_holder() is None  # revoking the lease deleted its key: nobody waits for a TTL
        for holder in (b, a, b):
            lease = holder.try_lease("next")
            assert lease is not None
            lease.check()
            tokens.append(lease.token)
            lease.release()
        assert tokens == sorted(set(tokens)), f"tokens must grow with every acquisition: {tokens}"
    finally:
        a.close()
        b.close()


def test_publish_compares_the_revision_of_the_epoch_it_follows(cluster: EtcdCluster) -> None:
    url = cluster.url(_prefix())
    a, b = open_membership(url), open_membership(url)
    try:
        assert a.load() is None
        one = a.create(_doc(1))
        assert b.create(_doc(1, other="redis://127.0.0.1:2/0")) == one  # the first document stays
        assert b.load() == one  # b has read epoch 1
        lease = a.try_lease("a")
        assert lease is not None
        with lease:
            a.publish(one.next(), lease)
            with pytest.raises(LeaseLost, match="does not follow"):
                a.publish(one.next().next().next(), lease)  # epoch 4 does not follow 2
        lease_b = b.try_lease("b")
        assert lease_b is not None
        with lease_b:
            with pytest.raises(LeaseLost):  # b computed epoch 2 from epoch 1, which is gone
                b.publish(one.next(durability="power"), lease_b)
            two = b.load()
            assert two is not None and two.epoch == 2 and two.durability == "process"
            b.publish(two.next(), lease_b)  # on top of what it read, it may
        assert a.load() is not None and a.load().epoch == 3  # type: ignore[union-attr]
        with pytest.raises(LeaseLost, match="released"):
            b.publish(two.next().next(), lease_b)  # a released lease publishes nothing
    finally:
        a.close()
        b.close()


def test_a_lease_that_etcd_expired_publishes_nothing(cluster: EtcdCluster) -> None:
    """The holder's own view of its lease aside, etcd's transaction refuses a lease key it deleted."""
    url = cluster.url(_prefix())
    a = open_membership(url, lease_ttl=1.0)
    b = open_membership(url, lease_ttl=1.0)
    try:
        doc = a.create(_doc(1))
        lease = a.try_lease("a")
        assert lease is not None
        from dhtcart.membership.etcd import _EtcdLease

        assert isinstance(lease, _EtcdLease)
        lease._stop.set()  # its renewals stop, as if its holder were paused; etcd expires it
        taken = wait_until(lambda: b.try_lease("b"), 15, "b takes the expired lease")
        assert taken.token > lease.token
        lease._stop.clear()
        lease._renewed = time.monotonic()  # pretend the holder still believes in it
        with pytest.raises(LeaseLost, match="expired in etcd"):
            a.publish(doc.next(), lease)
        assert b.load() == doc
        taken.release()
    finally:
        a.close()
        b.close()


# -- the watch -----------------------------------------------------------------------------


def _collector() -> tuple[list[int], threading.Event, Any]:
    seen: list[int] = []
    event = threading.Event()

    def callback(doc: MembershipDoc) -> None:
        seen.append(doc.epoch)
        event.set()

    return seen, event, callback


def test_the_watch_pushes_every_epoch_in_order(cluster: EtcdCluster) -> None:
    url = cluster.url(_prefix())
    publisher, watcher = open_membership(url), open_membership(url)
    try:
        doc = publisher.create(_doc(1))
        assert watcher.watching is None  # not asked to watch yet
        assert watcher.load() == doc
        seen, _, callback = _collector()
        assert watcher.watch(callback) is True
        assert watcher.watching is True
        with publisher.try_lease("p") as lease:  # type: ignore[union-attr]
            for _ in range(20):
                doc = doc.next()
                publisher.publish(doc, lease)
        wait_until(lambda: seen and seen[-1] == 21, 10, "the last epoch reaches the watcher")
        assert seen == list(range(2, 22))
    finally:
        publisher.close()
        watcher.close()
    assert watcher.watching is False


def test_a_watch_behind_a_compaction_reads_the_document_afresh(cluster: EtcdCluster) -> None:
    url = cluster.url(_prefix())
    publisher, watcher = open_membership(url), open_membership(url)
    try:
        doc = publisher.create(_doc(1))
        watcher.load()  # the watcher will start from this revision...
        with publisher.try_lease("p") as lease:  # type: ignore[union-attr]
            for _ in range(5):
                doc = doc.next()
                publisher.publish(doc, lease)
        revision = int(cluster.members[0].call("kv/range", {"key": "eA=="})["header"]["revision"])
        cluster.members[0].call("kv/compaction", {"revision": revision, "physical": True})  # ...now gone
        seen, _, callback = _collector()
        watcher.watch(callback)
        wait_until(lambda: 6 in seen, 10, "the newest epoch reaches the watcher")
        assert seen == [6], "the epochs compacted away are skipped, the newest one delivered"
        assert watcher.watching is True
    finally:
        publisher.close()
        watcher.close()


def test_the_watch_moves_to_another_member_when_its_member_dies(cluster: EtcdCluster) -> None:
    victim = cluster.members[2]
    others = [m for m in cluster.members if m is not victim]
    prefix = _prefix()
    # the watcher lists the victim first, so its watch starts there
    watcher = open_membership(f"etcd://{victim.endpoint},{others[0].endpoint},{others[1].endpoint}/{prefix}")
    publisher = open_membership(f"etcd://{others[0].endpoint},{others[1].endpoint}/{prefix}")
    try:
        doc = publisher.create(_doc(1))
        watcher.load()
        seen, _, callback = _collector()
        watcher.watch(callback)
        assert watcher.watching is True
        victim.kill()
        with publisher.try_lease("p") as lease:  # type: ignore[union-attr]  # through an election, if it led
            publisher.publish(doc.next(), lease)
        wait_until(lambda: 2 in seen, 15, "the epoch reaches the watcher through another member")
        wait_until(lambda: watcher.watching, 10, "the watch is live again")
    finally:
        publisher.close()
        watcher.close()
        victim.restart()
        cluster.wait_leader()


def test_a_watch_on_a_hung_member_is_reopened_on_another_after_its_idle_time(cluster: EtcdCluster) -> None:
    from dhtcart.membership.etcd import EtcdMembership

    victim = cluster.leader()  # so that the lease below is taken through an election, every run
    others = [m for m in cluster.members if m is not victim]
    prefix = _prefix()
    watcher = EtcdMembership(
        f"etcd://{victim.endpoint},{others[0].endpoint},{others[1].endpoint}/{prefix}?timeout=0.5", watch_idle=1.0
    )
    publisher = open_membership(f"etcd://{others[0].endpoint},{others[1].endpoint}/{prefix}")
    try:
        doc = publisher.create(_doc(1))
        watcher.load()
        seen, _, callback = _collector()
        watcher.watch(callback)
        assert watcher.watching is True
        victim.pause()  # its sockets stay open; it answers nothing, not even a reset
        with publisher.try_lease("p") as lease:  # type: ignore[union-attr]
            publisher.publish(doc.next(), lease)
        wait_until(lambda: 2 in seen, 20, "the epoch reaches the watcher through another member")
        assert watcher.watching is True
    finally:
        victim.resume()
        publisher.close()
        watcher.close()
        cluster.wait_leader()


def test_a_lease_taken_through_an_election_is_not_lost_on_arrival(cluster: EtcdCluster) -> None:
    """The leader paused: a grant sent while the others elect a new one may go unanswered for the
    URL's timeout before one is answered. The lease's time runs from the grant that was answered,
    so a lease shorter than that wait still publishes (counted from the first attempt, it was
    lost when try_lease returned it)."""
    from dhtcart.membership.etcd import EtcdMembership

    victim = cluster.leader()
    others = [m for m in cluster.members if m is not victim]
    prefix = _prefix()
    url = f"etcd://{others[0].endpoint},{others[1].endpoint}/{prefix}"
    publisher = EtcdMembership(url, lease_ttl=2.0)
    try:
        doc = publisher.create(_doc(1))
        victim.pause()
        t0 = time.monotonic()
        lease = publisher.try_lease("p")
        took = time.monotonic() - t0
        assert lease is not None, "nobody else holds it"
        with lease:
            lease.check()  # not lost on arrival, however long the election took (here: took s)
            publisher.publish(doc.next(), lease)
        assert publisher.load() == doc.next()
        # bounded by one retry budget (10 s), then at most one more pass over the two members (2 s
        # each) for the grant and one for the key: a bound, not a measure of speed
        assert took < 10 + 2 * 2 * 2, took
    finally:
        victim.resume()
        publisher.close()
        cluster.wait_leader()


def test_a_document_of_an_unknown_format_is_refused_as_for_every_kind(cluster: EtcdCluster) -> None:
    import base64

    prefix = _prefix()

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    cluster.leader().call("kv/put", {"key": b64(f"/{prefix}/membership"), "value": b64(json.dumps({"format": 99}))})
    membership = open_membership(cluster.url(prefix))
    try:
        with pytest.raises(InvalidInput, match="unsupported membership format 99"):
            membership.load()
    finally:
        membership.close()


# -- stores on etcd ----------------------------------------------------------------------------


def _shards(servers: list[Any], prefix: str, n: int = 2) -> dict[str, str]:
    return {f"r{i}": f"{servers[i].url}?prefix={prefix}-r{i}:" for i in range(n)}


def test_a_store_opens_from_its_etcd_url_alone_and_switches_at_publication(
    cluster: EtcdCluster, redis_servers: list[Any]
) -> None:
    prefix = _prefix()
    url = cluster.url(prefix)
    with DHTServerStore.open(url, shards=_shards(redis_servers, prefix)) as store:
        assert store.location == url and store.directory is None
        keys = [hash_key(f"k{i}") for i in range(300)]
        for key in keys:
            store.put(key, b"v")
        with DHTServerStore.open(url, shards={"ignored": "redis://nowhere:1/0"}) as other:
            assert other.membership.watching is True
            assert sorted(other.servers) == ["r0", "r1"]
            store.add_shard("r2", backend=f"{redis_servers[2].url}?prefix={prefix}-r2:")
            wait_until(lambda: other.epoch == store.epoch, 10, "the other handle switches by itself")
            assert all(other.get(k) == Record(1, b"v") for k in keys)
            assert other.routing_stats()["redirects"] == 0, "it switched before touching a moved key"
        with pytest.raises(InvalidInput, match="backend= URL"):
            store.add_shard("r3")  # a store kept in etcd has no directory for an LMDB shard


def test_the_dhtcart_command_works_on_an_etcd_location(
    cluster: EtcdCluster, redis_servers: list[Any], tmp_path: Path
) -> None:
    prefix = _prefix()
    url = cluster.url(prefix)
    with DHTServerStore.open(url, shards=_shards(redis_servers, prefix)) as store:
        for i in range(200):
            store.put(hash_key(f"c{i}"), b"cart")

    def dhtcart(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dhtcart", *args],
            capture_output=True,
            text=True,
            timeout=90,
            env=child_env(**env),
            cwd=ROOT,
        )

    out = dhtcart("init", "--data", url)
    assert out.returncode == 0 and "already there" in out.stdout, out.stderr
    out = dhtcart("stats", "--data", url, "--json")
    assert out.returncode == 0, out.stderr
    assert sum(json.loads(out.stdout).values()) == 200
    new = f"{redis_servers[2].url}?prefix={prefix}-r2:"
    for args in (("plan", "add-shard", "r2"), ("add-shard", "r2", "--backend", new), ("set-weight", "r2", "2")):
        out = dhtcart(*args, "--data", url)
        assert out.returncode == 0, (args, out.stdout, out.stderr)
    out = dhtcart("remove-shard", "r0", DHTCART_DATA=url)  # the location from the environment
    assert out.returncode == 0, out.stderr
    with DHTServerStore.open(url) as store:
        assert sorted(store.servers) == ["r1", "r2"] and store.count() == 200
        store._check()


def test_an_unreachable_etcd_is_shard_unavailable_naming_the_membership(redis_servers: list[Any]) -> None:
    from tests.redis_server import free_port

    url = f"etcd://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/nothing?timeout=0.5"
    t0 = time.monotonic()
    with pytest.raises(ShardUnavailable, match="membership") as info:
        DHTServerStore.open(url, shards=_shards(redis_servers, "never"))
    assert time.monotonic() - t0 < 30  # bounded: a few passes over the endpoints within the retry budget
    assert info.value.shard == "membership" and url.split("?")[0] in info.value.address


# -- credentials and TLS -----------------------------------------------------------------------


def test_credentials_come_from_the_environment(tmp_path: Path, redis_servers: list[Any]) -> None:
    with EtcdCluster(tmp_path / "auth", size=1, binary=etcd_binary()) as single:
        member = single.members[0]
        member.call("auth/role/add", {"name": "root"})
        member.call("auth/user/add", {"name": "root", "password": "s3cret-pw"})
        member.call("auth/user/grant", {"user": "root", "role": "root"})
        member.call("auth/enable", {})
        url = single.url("guarded")
        shards = _shards(redis_servers, "guarded")
        with pytest.raises(ShardUnavailable, match="etcd refused"):  # no user: etcd says so
            DHTServerStore.open(url, shards=shards)
        from dhtcart.membership.etcd import EtcdMembership
        from dhtcart.settings import EtcdSettings

        wrong = EtcdMembership(url, settings=EtcdSettings(user="root", password="not-it"))
        with pytest.raises(ShardUnavailable, match="authentication failed") as info:
            wrong.load()
        assert "not-it" not in str(info.value)
        wrong.close()
        env = {"DHTCART_ETCD_USER": "root", "DHTCART_ETCD_PASSWORD": "s3cret-pw"}
        code = f"""
from dhtcart import DHTServerStore
with DHTServerStore.open({url!r}, shards={shards!r}) as store:
    store.put(5, b"five")
    report = store.add_shard("r2", backend={redis_servers[2].url + "?prefix=guarded-r2:"!r})
    print(store.membership.watching, report.keys_moved >= 0)
with DHTServerStore.open({url!r}) as store:
    print(store.get(5).value.decode(), sorted(store.servers))
"""
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=child_env(**env), cwd=ROOT
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["True", "True", "five", "['r0',", "'r1',", "'r2']"]


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl), for one test."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for args in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=dhtcart test CA"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2",
         "-extfile", ext],
    ):  # fmt: skip
        done = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    return ca, cert, key


def test_etcds_locations_speak_tls_verified_by_the_configured_ca(tmp_path: Path, redis_servers: list[Any]) -> None:
    import shutil

    if shutil.which("openssl") is None:
        skip_or_fail("no openssl to make the test's certificates")
    ca, cert, key = _certificates(tmp_path / "pki")
    with EtcdCluster(tmp_path / "tls", size=1, binary=etcd_binary(), tls=(cert, key), ca_cert=ca) as single:
        url = single.url("secure")
        assert url.startswith("etcds://")
        code = f"""
from dhtcart import DHTServerStore
with DHTServerStore.open({url!r}, shards={_shards(redis_servers, "secure")!r}) as store:
    store.put(9, b"nine")
    print(store.membership.watching, store.get(9).value.decode())
"""
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            env=child_env(DHTCART_ETCD_CA_CERT=str(ca)),
            cwd=ROOT,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["True", "nine"]
        unverified = open_membership(url)  # the system's CAs do not know the test CA
        with pytest.raises(ShardUnavailable, match="membership"):
            unverified.load()
        unverified.close()
        with pytest.raises(InvalidInput, match="not a file"):
            from dhtcart.membership.etcd import EtcdMembership
            from dhtcart.settings import EtcdSettings

            EtcdMembership(url, settings=EtcdSettings(ca_cert=str(tmp_path / "missing.pem")))
