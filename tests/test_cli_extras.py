"""A missing extra is one line and exit 5 with the pip command, for every command and location that needs it.

The commands run where importing the extra's modules fails, as on a machine
where it was never installed (a meta-path blocker on the child's path:
``tests/cli_helpers.py``); nothing is changed or created before the check.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from dhtcart import CartService, DHTServerStore
from dhtcart.cli import EXIT_MISSING_EXTRA, EXIT_OK
from tests.cli_helpers import one_error_line, run_cli, tree
from tests.conftest import redis_binary
from tests.redis_server import RedisServer, running

pytest.importorskip("rich")

REDIS_HINT = 'pip install "dhtcart[redis]"'
SERVER_HINT = 'pip install "dhtcart[server]"'
NOWHERE = "redis://127.0.0.1:1/0"  # never reached: the check comes first


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    data = tmp_path / "store"
    with CartService.open(data, shards=2) as carts:
        carts.add_item("alice", "sku", "1.00")
    return data


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running(1, lambda i: tmp_path_factory.mktemp("extras-redis"), redis_binary()) as started:
        yield started[0]


def _assert_redis_missing(argv: list[str | Path]) -> str:
    r = run_cli(*argv, block=("redis",))
    assert r.returncode == EXIT_MISSING_EXTRA, r.stderr
    line = one_error_line(r)
    assert line == f"dhtcart: error: this command needs redis, from the redis extra: {REDIS_HINT}"
    return line


def test_a_redis_backend_for_a_new_shard(store_dir: Path) -> None:
    before = tree(store_dir)
    _assert_redis_missing(["add-shard", "r", "--backend", NOWHERE, "--data", store_dir])
    assert tree(store_dir) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["stats"],
        ["stats", "--json"],
        ["add-shard", "x", "--backend", NOWHERE],
        ["remove-shard", "a"],
        ["set-weight", "a", "2"],
        ["finish"],
        ["plan", "add-shard"],
        ["init", "--shard", f"a={NOWHERE}"],
        ["serve", "--port", "0", "--shard", f"a={NOWHERE}"],
    ],
)
def test_a_store_kept_in_redis(argv: list[str]) -> None:
    _assert_redis_missing([*argv, "--data", NOWHERE])


def test_redis_shards_of_a_new_directory_store(tmp_path: Path) -> None:
    target = tmp_path / "new"
    _assert_redis_missing(["init", "--data", target, "--shard", f"a={NOWHERE}", "--shard", "b=lmdb://b"])
    _assert_redis_missing(["serve", "--port", "0", "--data", target, "--shard", f"a={NOWHERE}"])
    assert not target.exists()


def test_a_directory_store_whose_shards_are_on_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    """Nothing in the command line says Redis: the store's membership does; the open says what is missing."""
    data = tmp_path / "store"
    url = f"redis://127.0.0.1:{redis_server.port}/0?prefix=cli-extras:"
    with DHTServerStore.open(data, shards={"r": url, "l": "lmdb://l"}) as store:
        store.put(7, b"x")
    before = tree(data)
    for argv in (["stats"], ["plan", "add-shard"], ["add-shard"], ["finish"], ["init"]):
        _assert_redis_missing([*argv, "--data", data])
    assert tree(data) == before
    r = run_cli("stats", "--json", "--data", data)  # with the extra: the same store, whole
    assert r.returncode == EXIT_OK and sum(json.loads(r.stdout).values()) == 1


@pytest.mark.parametrize(
    ("blocked", "argv"),
    [
        ("rich", ["stats"]),
        ("rich", ["plan", "add-shard"]),
        ("rich", ["add-shard"]),
        ("rich", ["finish"]),
        ("fastapi", ["serve", "--port", "0"]),
        ("uvicorn", ["serve", "--port", "0"]),
    ],
)
def test_the_server_extra(blocked: str, argv: list[str], store_dir: Path) -> None:
    before = tree(store_dir)
    r = run_cli(*argv, "--data", store_dir, block=(blocked,))
    assert r.returncode == EXIT_MISSING_EXTRA, r.stderr
    line = one_error_line(r)
    assert blocked in line and SERVER_HINT in line
    assert tree(store_dir) == before


def test_stats_json_needs_no_extra(store_dir: Path) -> None:
    r = run_cli("stats", "--json", "--data", store_dir, block=("rich", "fastapi", "uvicorn", "redis"))
    assert r.returncode == EXIT_OK, r.stderr
    assert sum(json.loads(r.stdout).values()) == 1
