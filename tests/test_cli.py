"""The ``dhtcart`` command: version, help, stats, rebalancing, a busy store, missing extras."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dhtcart import CartService, DHTServerStore, __version__
from dhtcart.cli import (
    EXIT_BUSY,
    EXIT_ERROR,
    EXIT_MISSING_EXTRA,
    EXIT_OK,
    EXIT_USAGE,
    INSTALL_HINT,
    build_parser,
    main,
)
from dhtcart.settings import DEFAULT_BATCH_SIZE, DEFAULT_LOCK_TIMEOUT, OPTIONS, REDIS_PASSWORD_ENV
from tests.helpers import child_env

pytest.importorskip("rich")

CUSTOMERS = 300


def _python(code: str, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, **kwargs)  # type: ignore[call-overload, no-any-return]


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """A 4-shard LMDB store holding CUSTOMERS carts."""
    data = tmp_path / "store"
    with CartService.open(data, shards=4) as carts:
        for i in range(CUSTOMERS):
            carts.add_item(f"customer-{i}", f"{i:012d}", f"{i}.25", item_count=i % 7 + 1)
    return data


def _carts(data: Path) -> dict[str, list[tuple[str, str, int]]]:
    with CartService.open(data) as carts:
        return {
            f"customer-{i}": [
                (it.item_id, str(it.offered_price), it.item_count) for it in carts.list_items(f"customer-{i}")
            ]
            for i in range(CUSTOMERS)
        }


# -- version and help -----------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"dhtcart {__version__}"


def test_python_m_dhtcart_without_arguments_prints_help() -> None:
    r = subprocess.run([sys.executable, "-m", "dhtcart"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for command in ("serve", "init", "stats", "finish", "add-shard", "remove-shard", "set-weight", "plan", "verify"):
        assert command in r.stdout
    assert "exit codes" in r.stdout and "DHTCART_DATA" in r.stdout


def test_help_lists_every_variable_from_the_settings() -> None:
    """The environment section is written from dhtcart.settings.OPTIONS, not by hand."""
    r = subprocess.run([sys.executable, "-m", "dhtcart", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    listed = dict(re.findall(r"^  (DHTCART_\w+)\s+(.+)$", r.stdout, re.MULTILINE))
    assert set(listed) == {o.env for o in OPTIONS} | {REDIS_PASSWORD_ENV}
    for option in OPTIONS:
        assert listed[option.env].startswith(f"{option.flag} ("), listed[option.env]
    assert listed["DHTCART_DATA"].endswith("(every command)")
    assert listed["DHTCART_SHARDS"].endswith("(init, serve)")


_HEAVY = ("dhtcart.store", "dhtcart.backends", "dhtcart.rebalance", "dhtcart.cart", "dhtcart.workload",
          "dhtcart.verify", "lmdb", "sortedcontainers", "redis", "rich", "fastapi", "uvicorn")  # fmt: skip


@pytest.mark.parametrize(
    "argv",
    [["--version"], ["--help"], ["frobnicate"], ["serve", "--port", "eighty"], ["add-shard", ""], ["stats", "--nope"]],
)
def test_version_help_and_usage_errors_import_no_store(argv: list[str], tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "dhtcart", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in child_env().items() if not k.startswith("DHTCART_")},
        cwd=tmp_path,
    )
    assert r.returncode == (0 if argv[0].startswith("--") else EXIT_USAGE), r.stderr
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "dhtcart.cli" in imported  # the measure works
    heavy = sorted(m for m in imported if m.startswith(_HEAVY))
    assert heavy == [], f"dhtcart {' '.join(argv)} imported {heavy}"


@pytest.mark.parametrize(
    "argv",
    [
        ["serve"],
        ["init"],
        ["stats"],
        ["add-shard"],
        ["remove-shard"],
        ["set-weight"],
        ["plan"],
        ["plan", "add-shard"],
        ["plan", "remove-shard"],
        ["plan", "set-weight"],
        ["finish"],
        ["verify"],
    ],
)
def test_every_command_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: dhtcart {' '.join(argv)}")
    assert "--data" in out or argv == ["plan"]


def test_serve_help_names_options_and_environment(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--data", "--shards", "--workers", "--log-level", "SIGTERM"):
        assert option in out
    for var in ("DHTCART_HOST", "DHTCART_PORT", "DHTCART_SHARDS", "DHTCART_WORKERS"):
        assert var in out


def test_environment_sets_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "DHTCART_HOST": "0.0.0.0",
        "DHTCART_PORT": "9001",
        "DHTCART_DATA": "/srv/carts",
        "DHTCART_SHARDS": "7",
        "DHTCART_WORKERS": "3",
        "DHTCART_LOG_LEVEL": "WARNING",
    }.items():
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.data, args.shards, args.workers, args.log_level) == (
        "0.0.0.0",
        9001,
        "/srv/carts",
        7,
        3,
        "warning",
    )
    assert build_parser().parse_args(["serve", "--port", "80"]).port == 80  # options beat the environment
    assert build_parser().parse_args(["stats"]).data == "/srv/carts"


@pytest.mark.parametrize("argv", [["serve", "--workers", "0"], ["serve", "--port", "70000"]])
def test_serve_rejects_bad_numbers(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--data", str(tmp_path / "d")]) == EXIT_USAGE
    assert "must be between" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--port", "eighty"])
    assert exc.value.code == EXIT_USAGE
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == EXIT_USAGE


# -- stats ----------------------------------------------------------------------------------------


_SLOW_REBALANCE = """
import sys, time
from dhtcart import DHTServerStore
store = DHTServerStore.open(sys.argv[1])
def slow(done, total):
    print("progress", flush=True)
    time.sleep(0.05)
store.add_shard("half", batch_size=5, progress=slow)
print("done", flush=True)
"""


def test_stats_shows_the_epoch_and_a_migration_in_progress(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--data", str(store_dir)]) == EXIT_OK
    assert "membership epoch 1" in capsys.readouterr().out
    rebalancer = subprocess.Popen(
        [sys.executable, "-c", _SLOW_REBALANCE, str(store_dir)], stdout=subprocess.PIPE, text=True, env=child_env()
    )
    try:
        assert rebalancer.stdout is not None and rebalancer.stdout.readline().strip() == "progress"
        assert main(["stats", "--data", str(store_dir)]) == EXIT_OK  # while it runs
        out = capsys.readouterr().out
        m = re.search(r"membership epoch 2; rebalance in progress \(adding half\): ([\d.]+)% of the moving", out)
        assert m and 0 < float(m.group(1)) < 100, out
        assert f"lease held by {rebalancer.pid}@" in out
    finally:
        rebalancer.kill()
        rebalancer.wait(30)
    assert main(["stats", "--data", str(store_dir)]) == EXIT_OK  # inspection leaves the dead one's work alone
    out = " ".join(capsys.readouterr().out.split())
    assert "membership epoch 2; rebalance interrupted (adding half)" in out
    assert f"`dhtcart finish --data {store_dir}` finishes it" in out
    assert main(["finish", "--data", str(store_dir)]) == EXIT_OK
    capsys.readouterr()
    assert main(["stats", "--data", str(store_dir)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "membership epoch 3" in out and "in progress" not in out and "interrupted" not in out and "half" in out


def test_stats_table(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--data", str(store_dir)]) == EXIT_OK
    out = capsys.readouterr().out
    for i in range(4):
        assert f"shard-{i}" in out
    assert "━" in out or "█" in out  # the bars
    m = re.search(r"4 shards, ([\d,]+) keys; max ([\d,]+), mean ([\d.,]+), max/mean ([\d.]+)", out)
    assert m, out
    assert int(m.group(1).replace(",", "")) == CUSTOMERS


def test_stats_json_and_environment(
    store_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DHTCART_DATA", str(store_dir))
    assert main(["stats", "--json"]) == EXIT_OK
    counts = json.loads(capsys.readouterr().out)
    with DHTServerStore.open(store_dir) as store:
        assert counts == store.stats()
    assert sum(counts.values()) == CUSTOMERS


def test_stats_without_a_store_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--data", str(tmp_path / "nothing")]) == EXIT_ERROR
    assert "no dhtcart store" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()


def test_init_creates_a_store_without_serving(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "new"
    assert main(["init", "--data", str(data), "--shards", "3"]) == EXIT_OK
    assert f"dhtcart store {data}: created, 3 shards" in capsys.readouterr().out
    with DHTServerStore.open(data) as store:  # closed again: a rebalance may take it
        assert sorted(store.servers) == ["shard-0", "shard-1", "shard-2"]
    assert main(["init", "--data", str(data), "--shards", "4"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "already there, 3 shards; --shards 4 ignored" in out
    assert main(["stats", "--data", str(tmp_path / "none")]) == EXIT_ERROR
    assert "create one with: dhtcart init --data" in capsys.readouterr().err
    assert main(["init", "--data", str(tmp_path / "bad"), "--shards", "0"]) == EXIT_USAGE
    assert "--shards (or DHTCART_SHARDS): must be between 1 and 4096" in capsys.readouterr().err


# -- add-shard / remove-shard / set-weight / plan ------------------------------------------------


def test_add_and_remove_shard_keep_every_cart(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _carts(store_dir)

    assert main(["plan", "add-shard", "--data", str(store_dir)]) == EXIT_OK
    out = capsys.readouterr().out
    planned = int(re.search(r"would move ([\d,]+) of", out).group(1).replace(",", ""))  # type: ignore[union-attr]

    assert main(["add-shard", "--data", str(store_dir), "--batch-size", "10"]) == EXIT_OK
    out = capsys.readouterr().out
    moved = int(re.search(r"moved ([\d,]+) keys", out).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert moved == planned and 0 < moved < CUSTOMERS
    assert re.search(rf"adding shard-4 .*{moved}/{moved} keys", out), out  # the progress bar, finished
    assert "shard-4" in out and "keys per shard" in out
    assert _carts(store_dir) == before

    assert main(["add-shard", "big", "--weight", "2", "--data", str(store_dir)]) == EXIT_OK
    capsys.readouterr()
    assert main(["set-weight", "big", "1", "--data", str(store_dir)]) == EXIT_OK
    assert "moved" in capsys.readouterr().out

    assert main(["plan", "remove-shard", "shard-0", "--data", str(store_dir)]) == EXIT_OK
    assert "keys by route" in capsys.readouterr().out
    assert main(["remove-shard", "shard-0", "--data", str(store_dir)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "removing shard-0" in out and "removed" in out
    assert _carts(store_dir) == before
    with DHTServerStore.open(store_dir) as store:
        assert sorted(store.servers) == ["big", "shard-1", "shard-2", "shard-3", "shard-4"]
        store._check()


def test_rebalance_errors(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["add-shard", "shard-1", "--data", str(store_dir)]) == EXIT_ERROR
    assert "already" in capsys.readouterr().err
    assert main(["remove-shard", "nope", "--data", str(store_dir)]) == EXIT_ERROR
    assert "no shard named 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # a name no shard can have is bad usage, refused by argparse
        main(["add-shard", "bad name!", "--data", str(store_dir)])
    assert exc.value.code == EXIT_USAGE
    assert "a shard name must be" in capsys.readouterr().err
    with DHTServerStore.open(store_dir, create=False) as store:
        assert len(store.shards) == 4 and store.epoch == 1


def test_rebalances_and_plans_share_one_declaration() -> None:
    parser = build_parser()
    for op, argv in (("add-shard", ["x", "--weight", "3"]), ("remove-shard", ["x"]), ("set-weight", ["x", "3"])):
        done = parser.parse_args([op, *argv])
        planned = parser.parse_args(["plan", op, *argv])
        assert done.operation is planned.operation
        assert (done.name, getattr(done, "weight", None)) == (planned.name, getattr(planned, "weight", None))
        assert done.batch_size == DEFAULT_BATCH_SIZE and not hasattr(planned, "batch_size")
    assert parser.parse_args(["finish"]).batch_size == DEFAULT_BATCH_SIZE


_CREATOR = """
import sys, time
from dhtcart.membership import open_membership
lease = open_membership(sys.argv[1]).try_lease("the test's creator")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
lease.release()
"""


def test_init_waits_the_one_lock_timeout_for_another_creator(tmp_path: Path) -> None:
    """A process that holds a new store's lock for longer than the CLI's old 5 s does not fail init."""
    data = tmp_path / "new"
    held = DEFAULT_LOCK_TIMEOUT / 2 + 0.5
    creator = subprocess.Popen(
        [sys.executable, "-c", _CREATOR, str(data), str(held)], stdout=subprocess.PIPE, text=True, env=child_env()
    )
    try:
        assert creator.stdout is not None and creator.stdout.readline().strip() == "held"
        r = subprocess.run(
            [sys.executable, "-m", "dhtcart", "init", "--data", str(data), "--shards", "2"],
            capture_output=True,
            text=True,
            timeout=60,
            env=child_env(),
        )
    finally:
        creator.wait(30)
    assert r.returncode == EXIT_OK, r.stderr
    assert "created, 2 shards" in r.stdout


_HOLDER = """
import sys, time
from dhtcart import DHTServerStore
from dhtcart.membership import open_membership
store = DHTServerStore.open(sys.argv[1])
lease = open_membership(sys.argv[1]).try_lease("the test's rebalancer") if sys.argv[2] == "lease" else None
print("open", flush=True)
sys.stdin.read()
"""


def _holder(store_dir: Path, what: str) -> Iterator[Path]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(store_dir), what],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        yield store_dir
    finally:
        holder.kill()
        holder.wait(10)


@pytest.fixture
def held(store_dir: Path) -> Iterator[Path]:
    """Another process holding the rebalance lease, as a running rebalance does."""
    yield from _holder(store_dir, "lease")


@pytest.fixture
def opened(store_dir: Path) -> Iterator[Path]:
    """Another process holding the store open, as a running server does."""
    yield from _holder(store_dir, "open")


@pytest.mark.parametrize("argv", [["add-shard"], ["remove-shard", "shard-0"], ["set-weight", "shard-0", "2"]])
def test_rebalance_while_another_process_has_the_store_open(opened: Path, argv: list[str]) -> None:
    assert main([*argv, "--data", str(opened)]) == EXIT_OK
    with DHTServerStore.open(opened) as store:
        store._check()


@pytest.mark.parametrize("argv", [["add-shard"], ["remove-shard", "shard-0"], ["set-weight", "shard-0", "2"]])
def test_busy_store_is_reported_with_exit_4(held: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--data", str(held)]) == EXIT_BUSY
    captured = capsys.readouterr()
    assert "store busy" in captured.err and "another rebalance is running" in captured.err
    assert "the test's rebalancer" in captured.err
    assert "Traceback" not in captured.err and "moved" not in captured.out
    # stats and plans only read: they work while the store is held
    assert main(["stats", "--data", str(held)]) == EXIT_OK
    with DHTServerStore.open(held) as store:
        assert len(store.servers) == 4


def test_busy_store_from_the_real_command(held: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "dhtcart", "add-shard", "--data", str(held)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == EXIT_BUSY
    assert r.stderr.startswith("dhtcart: error: store busy:")


# -- optional dependencies ------------------------------------------------------------------------


def test_import_dhtcart_imports_no_server_extra() -> None:
    r = _python(
        "import sys, dhtcart, dhtcart.cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'uvicorn', 'rich', 'starlette'}))"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.parametrize(("blocked", "argv"), [("fastapi", ["serve"]), ("uvicorn", ["serve"]), ("rich", ["stats"])])
def test_missing_extra_prints_install_hint(blocked: str, argv: list[str], store_dir: Path) -> None:
    r = _python(
        f"import sys; sys.modules[{blocked!r}] = None\nfrom dhtcart.cli import main\nsys.exit(main(sys.argv[1:]))",
        *argv,
        "--data",
        str(store_dir),
        env={k: v for k, v in os.environ.items() if not k.startswith("DHTCART_")},
    )
    assert r.returncode == EXIT_MISSING_EXTRA, r.stderr
    assert INSTALL_HINT in r.stderr and blocked in r.stderr
    assert "Traceback" not in r.stderr


def test_http_module_without_fastapi_says_how_to_install() -> None:
    r = _python("import sys; sys.modules['fastapi'] = None\nimport dhtcart.http")
    assert r.returncode != 0
    assert INSTALL_HINT in r.stderr
