"""Where a store is, from the command line: locations, paths, hosts and shard names.

Each test runs the real ``dhtcart`` command in a fresh process (``tests/cli_helpers.py``),
in a working directory of its own, and checks what the user sees (one line, the
exit code) and what is left on disk.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from dhtcart import CartService, DHTServerStore
from dhtcart.cli import EXIT_ERROR, EXIT_OK, EXIT_STARTUP_FAILED, EXIT_USAGE
from dhtcart.membership import LOCATION_FORMS
from tests.cli_helpers import cli_env, manifest_epoch, one_error_line, read_only, run_cli, tree
from tests.serve_process import command, free_port

pytest.importorskip("rich")


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    """An empty working directory for the command: whatever it creates shows up here."""
    path = tmp_path / "cwd"
    path.mkdir()
    return path


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """A 3-shard LMDB store with 50 carts."""
    data = tmp_path / "store"
    with CartService.open(data, shards=3) as carts:
        for i in range(50):
            carts.add_item(f"c{i}", "sku", "1.50")
    return data


# -- lmdb://PATH, memory:// and the other forms -----------------------------------------------


def test_lmdb_absolute_location_names_that_directory(cwd: Path, tmp_path: Path) -> None:
    target = tmp_path / "srv" / "carts"
    r = run_cli("init", "--data", f"lmdb://{target}", "--shards", "2", cwd=cwd)
    assert r.returncode == EXIT_OK, r.stderr
    assert r.stdout.strip() == f"dhtcart store {target}: created, 2 shards"
    assert list(cwd.iterdir()) == []  # not ./lmdb:/...
    assert (target / "manifest.json").is_file()
    # the same store, by its plain path and through DHTCART_DATA
    r = run_cli("stats", "--json", "--data", str(target), cwd=cwd)
    assert r.returncode == EXIT_OK and set(json.loads(r.stdout)) == {"shard-0", "shard-1"}, r.stderr
    r = run_cli("stats", "--json", env=cli_env(DHTCART_DATA=f"lmdb://{target}"), cwd=cwd)
    assert r.returncode == EXIT_OK, r.stderr


def test_lmdb_relative_location_is_taken_in_the_working_directory(cwd: Path) -> None:
    r = run_cli("init", "--data", "lmdb://carts?durability=power", "--shards", "2", cwd=cwd)
    assert r.returncode == EXIT_OK, r.stderr
    assert [p.name for p in cwd.iterdir()] == ["carts"]
    assert r.stdout.startswith(f"dhtcart store lmdb://{cwd / 'carts'}?durability=power: created, 2 shards")
    with DHTServerStore.open(cwd / "carts", create=False) as store:
        assert store.membership.load().durability == "power"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "argv",
    [["init"], ["stats"], ["finish"], ["add-shard"], ["remove-shard", "shard-0"], ["set-weight", "shard-0", "2"],
     ["plan", "add-shard"]],
)  # fmt: skip
def test_memory_location_is_refused_where_no_store_can_be(argv: list[str], cwd: Path) -> None:
    r = run_cli(*argv, "--data", "memory://", cwd=cwd)
    assert r.returncode == EXIT_USAGE
    line = one_error_line(r)
    assert "memory://" in line and "dhtcart serve" in line and "lmdb://PATH" in line
    assert list(cwd.iterdir()) == []  # no ./memory: directory


@pytest.mark.parametrize(
    "argv", [["init"], ["stats"], ["serve"], ["add-shard"], ["finish"], ["plan", "remove-shard", "shard-0"]]
)
def test_another_scheme_is_a_usage_error_naming_the_forms(argv: list[str], cwd: Path) -> None:
    r = run_cli(*argv, "--data", "http://example.com/carts", cwd=cwd)
    assert r.returncode == EXIT_USAGE
    assert "Traceback" not in r.stderr
    assert (
        f"argument --data: unknown scheme 'http' in 'http://example.com/carts'; a store's location is {LOCATION_FORMS}"
        in r.stderr
    )
    assert list(cwd.iterdir()) == []
    # the same location from the environment names the variable
    r = run_cli(*argv, env=cli_env(DHTCART_DATA="http://example.com/carts"), cwd=cwd)
    assert r.returncode == EXIT_USAGE
    assert one_error_line(r).startswith("dhtcart: error: DHTCART_DATA: unknown scheme 'http'")
    assert list(cwd.iterdir()) == []


def test_serve_memory_runs_one_worker_and_refuses_more(cwd: Path, tmp_path: Path) -> None:
    r = run_cli("serve", "--data", "memory://", "--workers", "2", "--port", str(free_port()), cwd=cwd)
    assert r.returncode == EXIT_USAGE
    line = one_error_line(r)
    assert "memory://" in line and "--workers 2" in line and "--workers 1" in line

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*command(), "serve", "--data", "memory://", "--port", str(port), "--shards", "3"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=cli_env(),
            cwd=cwd,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            added = httpx.post(url + "/item/alice/sku-1", json={"offeredPrice": 2.5, "itemCount": 2}, timeout=5)
            assert added.status_code in (200, 201), added.text
            assert httpx.get(url + "/items/alice", timeout=5).json()["items"][0]["itemCount"] == 2
            assert len(httpx.get(url + "/readyz", timeout=5).json()["shards"]) == 3
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
    assert code == EXIT_OK, log.read_text()
    assert "store memory:// (3 shards; in this process only: its carts are gone when the server stops)" in (
        log.read_text()
    )
    assert list(cwd.iterdir()) == []  # a memory store leaves nothing behind


# -- paths: a file, under a file, missing, not ours to write ---------------------------------


def test_a_file_as_the_location_says_a_directory_is_expected(tmp_path: Path) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("hello")
    for argv in (["init"], ["stats"], ["add-shard"]):
        r = run_cli(*argv, "--data", str(file))
        assert r.returncode == EXIT_USAGE, r.stderr
        assert one_error_line(r) == (
            f"dhtcart: error: --data (or DHTCART_DATA): {file} is a file: a store's location is a directory"
            " (made if missing)"
        )
        r = run_cli(*argv, "--data", str(file / "store"))
        assert r.returncode == EXIT_USAGE, r.stderr
        assert f"{file / 'store'} lies under {file}, which is a file" in one_error_line(r)
    assert file.read_text() == "hello"


def test_inspecting_a_missing_path_creates_nothing_and_init_makes_the_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "store"
    for argv in (["stats"], ["plan", "add-shard"], ["add-shard"], ["finish"]):
        r = run_cli(*argv, "--data", str(target))
        assert r.returncode == EXIT_ERROR
        assert one_error_line(r) == (
            f"dhtcart: error: no dhtcart store at {target} (create one with: dhtcart init --data {target})"
        )
        assert not (tmp_path / "a").exists()
    r = run_cli("init", "--data", str(target))  # what the message recommends, as printed
    assert r.returncode == EXIT_OK, r.stderr
    assert (target / "manifest.json").is_file()


def test_no_permission_to_create_the_store_is_one_line(tmp_path: Path) -> None:
    parent = tmp_path / "locked"
    parent.mkdir()
    with read_only(parent):
        r = run_cli("init", "--data", str(parent / "store"), read_only=True)
        assert r.returncode == EXIT_ERROR
        line = one_error_line(r)
        assert f"store {parent / 'store'} is read-only for this process: cannot make its directory" in line
        assert "Permission denied" in line
        assert list(parent.iterdir()) == []


# -- hosts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["999.1.1.1", "no-such-host.invalid"])
def test_a_host_that_is_no_address_is_named(host: str, tmp_path: Path) -> None:
    r = run_cli("serve", "--host", host, "--data", str(tmp_path / "d"))
    assert r.returncode == EXIT_STARTUP_FAILED
    line = one_error_line(r)
    assert f"--host {host} (or DHTCART_HOST) is not an address of this machine" in line
    assert "--port" not in line
    assert not (tmp_path / "d").exists()  # checked before the store is touched


# -- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["add-shard", ""],
        ["add-shard", "bad name!"],
        ["add-shard", "-x"],
        ["remove-shard", ""],
        ["set-weight", "", "2"],
        ["plan", "add-shard", ""],
        ["plan", "set-weight", "shard-0", "0"],
        ["add-shard", "new", "--weight", "0"],
        ["add-shard", "new", "--batch-size", "0"],
        ["set-weight", "shard-0", "two"],
    ],
)
def test_bad_names_and_numbers_are_usage_errors_that_change_nothing(argv: list[str], store_dir: Path) -> None:
    before = tree(store_dir)
    r = run_cli(*argv, "--data", str(store_dir))
    assert r.returncode == EXIT_USAGE, r.stderr
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert re.search(r"error: (argument|unrecognized)", last), last
    if argv[-1] in ("", "bad name!"):
        assert "a shard name must be 1-64 characters" in last
    assert tree(store_dir) == before
    assert manifest_epoch(store_dir) == 1


def test_add_shard_without_a_name_takes_the_next_free_one(store_dir: Path) -> None:
    r = run_cli("add-shard", "--data", str(store_dir))
    assert r.returncode == EXIT_OK, r.stderr
    with DHTServerStore.open(store_dir, create=False) as store:
        assert sorted(store.shards) == ["shard-0", "shard-1", "shard-2", "shard-3"]


def test_every_command_reads_dhtcart_data(store_dir: Path, tmp_path: Path) -> None:
    env = cli_env(DHTCART_DATA=str(store_dir))
    assert run_cli("stats", env=env).returncode == EXIT_OK
    assert run_cli("plan", "add-shard", "x", env=env).returncode == EXIT_OK
    assert run_cli("add-shard", "x", env=env).returncode == EXIT_OK
    r = run_cli("stats", "--json", env=env)
    assert "x" in r.stdout
    assert os.listdir(tmp_path) == ["store"]  # nothing anywhere else, not ./dhtcart-data
