"""A store kept in Redis, from the command line alone: created with ``--shard NAME=URL``, inspected,
rebalanced and served, and every message that recommends a command recommends one that works.

Real Redis servers on loopback (``tests/redis_server.py``): one holds the
membership, the others the shards.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dhtcart import CartService, DHTServerStore
from dhtcart.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from tests.cli_helpers import cli_env, one_error_line, run_cli
from tests.conftest import redis_binary
from tests.redis_server import RedisServer, running
from tests.serve_process import Server, clean_env

pytest.importorskip("rich")
pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    with running(4, lambda i: tmp_path_factory.mktemp(f"cli-redis{i}"), redis_binary()) as started:
        yield started


@pytest.fixture
def urls(servers: list[RedisServer]) -> Iterator[dict[str, str]]:
    """The membership's URL and three shard URLs, on emptied servers."""
    import redis

    for server in servers:
        client = redis.Redis(host="127.0.0.1", port=server.port)
        client.flushall()
        client.close()
    yield {
        "membership": f"redis://127.0.0.1:{servers[0].port}/0",
        "a": f"redis://127.0.0.1:{servers[1].port}/0",
        "b": f"redis://127.0.0.1:{servers[2].port}/0",
        "c": f"redis://127.0.0.1:{servers[3].port}/0",
    }


def _keys(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.dbsize())
    finally:
        client.close()


def _recommended(line: str) -> list[str]:
    """The command a message recommends (between ``create one with: `` or backquotes)."""
    m = re.search(r"`(dhtcart [^`]+)`", line) or re.search(r"(dhtcart init [^()]+?)(?:\)|$)", line)
    assert m, line
    return shlex.split(m.group(1))[1:]


def test_init_a_redis_kept_store_from_the_command_line(urls: dict[str, str]) -> None:
    data = urls["membership"]
    # nothing there yet: stats says which command makes it
    r = run_cli("stats", "--data", data)
    assert r.returncode == EXIT_ERROR
    line = one_error_line(r)
    assert f"no dhtcart store at {data}" in line
    hint = _recommended(line)
    assert hint == ["init", "--data", data, "--shard", "NAME=redis://HOST:PORT/DB", "[--shard", "NAME=URL", "...]"]

    # init without shards cannot make a database-kept store: it says so and writes nothing
    r = run_cli("init", "--data", data)
    assert r.returncode == EXIT_USAGE
    assert _recommended(one_error_line(r)) == hint
    assert _keys(data) == 0

    # the recommended command, with real shards in place of its placeholders
    r = run_cli(*hint[:4], f"a={urls['a']}", "--shard", f"b={urls['b']}")
    assert r.returncode == EXIT_OK, r.stderr
    assert r.stdout.strip() == f"dhtcart store {data}: created, 2 shards"

    with CartService.open(data) as carts:  # any client on any host opens it by the URL alone
        for i in range(60):
            carts.add_item(f"c{i}", "sku", "2.00")

    r = run_cli("stats", "--data", data)
    assert r.returncode == EXIT_OK, r.stderr
    assert "2 shards, 60 keys" in r.stdout
    assert f"membership kept in a Redis database (RedisMembership) at {data}" in r.stdout
    assert re.search(r"│ a\s.*│ ok\s+│", r.stdout) and re.search(r"│ b\s.*│ ok\s+│", r.stdout), r.stdout

    r = run_cli("init", "--data", data, "--shard", f"a={urls['a']}")
    assert r.returncode == EXIT_OK
    assert "already there, 2 shards; --shard ignored: the store exists" in r.stdout


def test_shards_from_the_environment(urls: dict[str, str]) -> None:
    env = cli_env(DHTCART_DATA=urls["membership"], DHTCART_SHARD_URLS=f"a={urls['a']},b={urls['b']}")
    r = run_cli("init", env=env)
    assert r.returncode == EXIT_OK, r.stderr
    with DHTServerStore.open(urls["membership"], create=False) as store:
        assert store.membership.load().shards == {"a": urls["a"], "b": urls["b"]}  # type: ignore[union-attr]
    r = run_cli("init", "--shards", "2", env=env)  # both forms at once: which one?
    assert r.returncode == EXIT_USAGE
    assert "give either a number of LMDB shards or each shard's NAME=URL" in one_error_line(r)


def test_add_shard_to_a_redis_kept_store_needs_and_names_its_backend(urls: dict[str, str]) -> None:
    data = urls["membership"]
    assert run_cli("init", "--data", data, "--shard", f"a={urls['a']}", "--shard", f"b={urls['b']}").returncode == 0
    with CartService.open(data) as carts:
        for i in range(60):
            carts.add_item(f"c{i}", "sku", "2.00")

    r = run_cli("add-shard", "--data", data)
    assert r.returncode == EXIT_USAGE
    hint = _recommended(one_error_line(r))
    assert hint[0] == "add-shard" and "--backend" in hint
    argv = [urls["c"] if a == "redis://HOST:PORT/DB" else a for a in hint]
    r = run_cli(*argv)  # the recommended command, with a real server for its placeholder
    assert r.returncode == EXIT_OK, r.stderr
    assert "moved" in r.stdout

    r = run_cli("remove-shard", "a", "--data", data)
    assert r.returncode == EXIT_OK, r.stderr
    with DHTServerStore.open(data, create=False) as store:
        store._check()
        assert sorted(store.shards) == ["b", hint[1]]
        assert store.count() == 60


def test_serve_creates_and_serves_a_redis_kept_store(urls: dict[str, str], tmp_path: Path) -> None:
    data = urls["membership"]
    server = Server(data, tmp_path / "serve.log", "--shard", f"a={urls['a']}", "--shard", f"b={urls['b']}")  # type: ignore[arg-type]
    try:
        added = httpx.post(f"{server.url}/item/alice/sku-1", json={"offeredPrice": 3, "itemCount": 2}, timeout=5)
        assert added.status_code in (200, 201), added.text
        ready: Any = httpx.get(f"{server.url}/readyz", timeout=5).json()
        assert sorted(ready["shards"]) == ["a", "b"]
    finally:
        assert server.terminate() == EXIT_OK, server.log()
        server.stop()
    with CartService.open(data) as carts:
        assert [i.item_count for i in carts.list_items("alice")] == [2]


def test_serve_without_a_store_or_shards_says_what_to_run(urls: dict[str, str]) -> None:
    r = run_cli("serve", "--port", "0", env=clean_env(DHTCART_DATA=urls["membership"]))
    assert r.returncode == EXIT_USAGE
    hint = _recommended(one_error_line(r))
    assert hint[:3] == ["init", "--data", urls["membership"]]
    assert _keys(urls["membership"]) == 0


def test_stats_names_a_shard_that_does_not_answer(urls: dict[str, str], tmp_path: Path) -> None:
    with running(1, lambda i: tmp_path / "lost", redis_binary()) as (lost,):
        lost_url = f"redis://127.0.0.1:{lost.port}/0"
        data = urls["membership"]
        assert (
            run_cli("init", "--data", data, "--shard", f"a={urls['a']}", "--shard", f"lost={lost_url}").returncode == 0
        )
        with CartService.open(data) as carts:
            for i in range(40):
                carts.add_item(f"c{i}", "sku", "2.00")
        with DHTServerStore.open(data, create=False) as store:
            on_a = store.stats()["a"]
        lost.kill()
        r = run_cli("stats", "--data", data)
        assert r.returncode == EXIT_ERROR
        assert re.search(rf"│ a\s.*│\s+{on_a} │.*│ ok\s+│", r.stdout), r.stdout
        assert re.search(r"│ lost\s.*│\s+\? │.*│ down\s+│", r.stdout), r.stdout
        assert f"2 shards (1 down), {on_a} keys on the others" in r.stdout
        assert one_error_line(r).startswith(f"dhtcart: error: shard 'lost' at {lost_url} is unavailable")
        r = run_cli("stats", "--json", "--data", data)
        assert r.returncode == EXIT_ERROR
        assert json.loads(r.stdout) == {"a": on_a, "lost": None}
