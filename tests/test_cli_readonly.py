"""A store this user may read but not write: inspecting it works, changing it is one line, exit 1.

The store's files and directories lose their write bits, and the command runs
in a process that obeys them even as root (``tests/cli_helpers.py``), as
another user's store or a read-only mount behaves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from dhtcart import CartService
from dhtcart.cli import EXIT_ERROR, EXIT_OK
from tests.cli_helpers import one_error_line, read_only, run_cli, tree

pytest.importorskip("rich")

CUSTOMERS = 40


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Path]:
    """A 3-shard LMDB store with CUSTOMERS carts, read-only for the commands run in the test."""
    data = tmp_path / "store"
    with CartService.open(data, shards=3) as carts:
        for i in range(CUSTOMERS):
            carts.add_item(f"c{i}", "sku", "1.50")
    with read_only(data):
        yield data


def test_stats_inspects_a_read_only_store(locked: Path) -> None:
    before = tree(locked)
    r = run_cli("stats", "--data", locked, read_only=True)
    assert r.returncode == EXIT_OK, r.stderr
    m = re.search(r"3 shards, ([\d,]+) keys", r.stdout)
    assert m and int(m.group(1)) == CUSTOMERS, r.stdout
    assert "membership epoch 1" in r.stdout
    r = run_cli("stats", "--json", "--data", locked, read_only=True)
    assert r.returncode == EXIT_OK, r.stderr
    assert sum(json.loads(r.stdout).values()) == CUSTOMERS
    r = run_cli("plan", "add-shard", "--data", locked, read_only=True)
    assert r.returncode == EXIT_OK, r.stderr
    assert "would move" in r.stdout
    assert tree(locked) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["init"],
        ["init", "--shards", "4"],
        ["add-shard"],
        ["add-shard", "extra", "--weight", "2"],
        ["remove-shard", "shard-0"],
        ["set-weight", "shard-1", "3"],
        ["finish"],
        ["serve", "--port", "0"],
    ],
)
def test_changing_a_read_only_store_is_one_line(locked: Path, argv: list[str]) -> None:
    before = tree(locked)
    r = run_cli(*argv, "--data", locked, read_only=True)
    assert r.returncode == EXIT_ERROR, r.stderr
    assert one_error_line(r) == (
        f"dhtcart: error: store {locked} is read-only for this user: `dhtcart {argv[0]}` would change it"
        " (`dhtcart stats` can inspect it)"
    )
    assert r.stdout == ""
    assert tree(locked) == before
