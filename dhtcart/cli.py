"""The ``dhtcart`` command: serve the HTTP API, inspect and rebalance a store.

::

    dhtcart serve [--host H] [--port P] [--data DIR] [--shards N] [--workers N]
    dhtcart stats [--data DIR] [--json]
    dhtcart add-shard [NAME] [--weight W] [--data DIR]
    dhtcart remove-shard NAME [--data DIR]
    dhtcart set-weight NAME WEIGHT [--data DIR]
    dhtcart plan {add-shard,remove-shard,set-weight} ...
    dhtcart --version

Only ``argparse`` and dhtcart's core are imported at module level; ``rich``,
``fastapi`` and ``uvicorn`` (the ``server`` extra) are imported by the
commands that need them, and a missing one is reported with the command that
installs it, not a traceback. See ``docs/cli.md``.

Exit codes: 0 success; 1 the command failed (no store there, unknown shard,
...); 2 bad usage; 3 the server could not start (port in use, application
start-up failed); 4 the store is busy (a server or another command
holds it; a rebalance needs it alone); 5 an optional dependency is missing.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from dhtcart import __version__
from dhtcart.errors import DHTCartError, ShardExists, ShardNotFound, StoreBusy
from dhtcart.store import MANIFEST, DHTServerStore
from dhtcart.verify import add_verify_parser

if TYPE_CHECKING:
    from rich.console import Console

    from dhtcart.rebalance import RebalancePlan, RebalanceReport

__all__ = [
    "EXIT_BUSY",
    "EXIT_ERROR",
    "EXIT_MISSING_EXTRA",
    "EXIT_OK",
    "EXIT_STARTUP_FAILED",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_STARTUP_FAILED = 3  # uvicorn's own code when the server cannot start (port in use, app startup)
EXIT_BUSY = 4
EXIT_MISSING_EXTRA = 5

INSTALL_HINT = 'pip install "dhtcart[server]"'
DEFAULT_DATA = "./dhtcart-data"
DEFAULT_SHARDS = 5
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


class CommandError(Exception):
    """A failure to report in one line, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


# -- the parser ------------------------------------------------------------------------


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


_EPILOG = """\
environment:
  DHTCART_DATA      store directory for every command (default ./dhtcart-data)
  DHTCART_HOST, DHTCART_PORT, DHTCART_SHARDS, DHTCART_WORKERS, DHTCART_LOG_LEVEL,
  DHTCART_MAX_BODY_BYTES, DHTCART_THREAD_POOL
                    defaults for the `serve` options of the same names

exit codes:
  0 success      1 command failed   2 bad usage   3 server could not start (port in use...)
  4 store busy (a server or another command has it open)   5 optional extra missing
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dhtcart`` (defaults read from the environment)."""
    parser = argparse.ArgumentParser(
        prog="dhtcart",
        description="A shopping-cart service over a consistent-hashing DHT: "
        "serve its HTTP API, and inspect or rebalance its store.",
        epilog=_EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"dhtcart {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    def data_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data",
            metavar="DIR",
            default=_env("DHTCART_DATA", DEFAULT_DATA),
            help="the store's directory (env DHTCART_DATA; default %(default)s)",
        )

    # serve
    p = sub.add_parser(
        "serve",
        help="run the HTTP API (uvicorn) on the store in --data",
        description="Run the cart HTTP API under uvicorn on the LMDB store in --data, creating "
        "the store (with --shards shards) if it does not exist. Logs one line per request; "
        "SIGTERM or Ctrl-C shuts down gracefully (in-flight requests finish) and exits 0.",
        epilog=_EPILOG,
        formatter_class=_Formatter,
    )
    p.add_argument("--host", default=_env("DHTCART_HOST", "127.0.0.1"), help="interface (default %(default)s)")
    p.add_argument("--port", type=int, default=_env("DHTCART_PORT", "8000"), help="port (default %(default)s)")
    data_option(p)
    p.add_argument(
        "--shards",
        type=int,
        default=os.environ.get("DHTCART_SHARDS") or None,
        help="shards of a new store (ignored when the store exists; default 5)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=_env("DHTCART_WORKERS", "1"),
        help="worker processes sharing the store (default %(default)s)",
    )
    p.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=_env("DHTCART_LOG_LEVEL", "info").lower(),
        help="default %(default)s; 'warning' hides the per-request lines",
    )
    p.add_argument("--no-access-log", action="store_true", help="do not log one line per request")
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=_env("DHTCART_MAX_BODY_BYTES", "65536"),
        help="largest request body accepted, 413 beyond (default %(default)s)",
    )
    p.add_argument(
        "--thread-pool",
        action="store_true",
        default=os.environ.get("DHTCART_THREAD_POOL", "") not in ("", "0"),
        help="run every store call in the thread pool, even on fast local shards (env DHTCART_THREAD_POOL=1)",
    )
    p.add_argument(
        "--graceful-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on shutdown, wait this long for in-flight requests (default %(default)s)",
    )
    p.set_defaults(func=_serve)

    # stats
    p = sub.add_parser(
        "stats",
        help="keys per shard, with a bar each and max/mean",
        description="Show the store's shards: weight, share of the ring, keys (cart records), "
        "a bar per shard, and the max/mean balance. Works while a server runs.",
        formatter_class=_Formatter,
    )
    data_option(p)
    p.add_argument("--json", action="store_true", help="print {shard: keys} as JSON instead of a table")
    p.set_defaults(func=_stats)

    # add-shard / remove-shard / set-weight
    p = sub.add_parser(
        "add-shard",
        help="add a shard and move its keys to it (progress bar)",
        description="Add a shard and move to it the arcs it now owns, nothing else. The store must "
        "not be open elsewhere (stop the server first): otherwise exits 4.",
        formatter_class=_Formatter,
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="the new shard's name (default shard-N)")
    p.add_argument("--weight", type=int, default=1, help="relative weight (default %(default)s)")
    p.add_argument(
        "--backend",
        metavar="URL",
        help="the new shard's backend, e.g. redis://host:6379/0 (default: a new LMDB directory in the store)",
    )
    data_option(p)
    _batch_option(p)
    p.set_defaults(func=_add_shard)

    p = sub.add_parser(
        "remove-shard",
        help="move a shard's keys away, then drop it (progress bar)",
        description="Move a shard's keys to their new owners, then drop the shard and its data. "
        "The store must not be open elsewhere (stop the server first): otherwise exits 4.",
        formatter_class=_Formatter,
    )
    p.add_argument("name", metavar="NAME", help="the shard to remove")
    data_option(p)
    _batch_option(p)
    p.set_defaults(func=_remove_shard)

    p = sub.add_parser(
        "set-weight",
        help="change a shard's weight and move the keys that change owner",
        description="Change a shard's weight; moves only the arcs that change owner. The store "
        "must not be open elsewhere: otherwise exits 4.",
        formatter_class=_Formatter,
    )
    p.add_argument("name", metavar="NAME", help="the shard")
    p.add_argument("weight", type=int, metavar="WEIGHT", help="its new weight (>= 1)")
    data_option(p)
    _batch_option(p)
    p.set_defaults(func=_set_weight)

    # plan
    p = sub.add_parser(
        "plan",
        help="what a rebalance would move, without moving anything",
        description="Count what add-shard, remove-shard or set-weight would move (reads only the "
        "moving arcs; safe while a server runs).",
        formatter_class=_Formatter,
    )
    plan_sub = p.add_subparsers(dest="plan_command", metavar="OPERATION", title="operations")
    p.set_defaults(func=lambda args: _usage(p))
    q = plan_sub.add_parser("add-shard", help="plan adding a shard", formatter_class=_Formatter)
    q.add_argument("name", nargs="?", metavar="NAME", help="the new shard's name (default shard-N)")
    q.add_argument("--weight", type=int, default=1, help="relative weight (default %(default)s)")
    data_option(q)
    q.set_defaults(func=_plan_add)
    q = plan_sub.add_parser("remove-shard", help="plan removing a shard", formatter_class=_Formatter)
    q.add_argument("name", metavar="NAME", help="the shard to remove")
    data_option(q)
    q.set_defaults(func=_plan_remove)
    q = plan_sub.add_parser("set-weight", help="plan a weight change", formatter_class=_Formatter)
    q.add_argument("name", metavar="NAME", help="the shard")
    q.add_argument("weight", type=int, metavar="WEIGHT", help="its new weight (>= 1)")
    data_option(q)
    q.set_defaults(func=_plan_weight)
    add_verify_parser(sub)
    return parser


def _batch_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--batch-size",
        type=int,
        default=1000,
        metavar="N",
        help="keys copied per step; other threads wait at most one step (default %(default)s)",
    )


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (``python -m dhtcart`` and ``dhtcart``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CommandError as exc:
        _error(str(exc))
        return exc.code
    except StoreBusy as exc:
        _error(f"store busy: {exc}")
        return EXIT_BUSY
    except (ShardExists, ShardNotFound) as exc:
        _error(str(exc))
        return EXIT_ERROR
    except (DHTCartError, ValueError) as exc:
        _error(str(exc))
        return EXIT_ERROR
    except OSError as exc:
        _error(f"{type(exc).__name__}: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


def _error(message: str) -> None:
    print(f"dhtcart: error: {message}", file=sys.stderr)


def _missing(*modules: str) -> list[str]:
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def _require(*modules: str) -> None:
    missing = _missing(*modules)
    if missing:
        raise CommandError(
            f"this command needs {', '.join(missing)}, from the server extra: {INSTALL_HINT}",
            EXIT_MISSING_EXTRA,
        )


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _open_store(data: str) -> DHTServerStore:
    """Open an existing store (never create one: that is ``serve``'s job)."""
    root = Path(data)
    if not (root / MANIFEST).is_file():
        raise CommandError(f"no dhtcart store in {root} (create one with: dhtcart serve --data {root})")
    return DHTServerStore.open(root, lock_timeout=5.0)


# -- serve -----------------------------------------------------------------------------


def _log_config(level: str, access_log: bool) -> dict[str, Any]:
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)-7s [%(process)d] %(name)s: %(message)s"},
        },
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": upper, "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "dhtcart": {"handlers": ["stderr"], "level": upper, "propagate": False},
            "dhtcart.access": {"level": upper if access_log else "WARNING"},
        },
    }


def _graceful_exit(signum: int, frame: FrameType | None) -> None:
    # Before uvicorn takes over the signals this stops start-up; after its
    # graceful shutdown, uvicorn re-raises the signal it caught, which lands
    # here: either way the process exits 0 instead of dying by the signal.
    raise SystemExit(EXIT_OK)


def _serve(args: argparse.Namespace) -> int:
    shards = DEFAULT_SHARDS if args.shards is None else args.shards
    for name, value, low, high in (
        ("--port", args.port, 0, 65535),
        ("--workers", args.workers, 1, 512),
        ("--shards", shards, 1, 4096),
        ("--max-body-bytes", args.max_body_bytes, 0, 1 << 30),
        ("--graceful-timeout", args.graceful_timeout, 0, 3600),
    ):
        if not low <= value <= high:
            raise CommandError(f"{name} must be between {low} and {high}, got {value}", EXIT_USAGE)
    _require("fastapi", "uvicorn")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _graceful_exit)
    data = os.path.abspath(args.data)
    # Create (or recover) the store once, before any worker starts, so every
    # worker opens the same store; each worker then opens its own LMDB handles.
    with DHTServerStore.open(data, shards=shards) as store:
        existing = len(store.servers)
    os.environ.update(
        DHTCART_DATA=data,
        DHTCART_SHARDS=str(shards),
        DHTCART_MAX_BODY_BYTES=str(args.max_body_bytes),
        DHTCART_THREAD_POOL="1" if args.thread_pool else "0",
    )
    import uvicorn

    note = ""
    if args.shards is not None and existing != args.shards:
        note = f"; --shards {args.shards} ignored: the store exists"
    print(
        f"dhtcart {__version__}: store {data} ({existing} shards{note}); "
        f"http://{args.host}:{args.port} (docs at /docs), {args.workers} worker(s)",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        "dhtcart.http:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=_log_config(args.log_level, not args.no_access_log),
        log_level=args.log_level,
        access_log=False,  # dhtcart.access logs each request, with its latency
        timeout_graceful_shutdown=args.graceful_timeout,
        server_header=False,
    )
    return EXIT_OK


# -- stats -----------------------------------------------------------------------------


def _stats(args: argparse.Namespace) -> int:
    with _open_store(args.data) as store:
        counts = store.stats()
        weights = store.ring.nodes
        shares = {n: store.ring.share(n) for n in counts}
    if args.json:
        print(json.dumps(counts, indent=1))
        return EXIT_OK
    _require("rich")
    from rich.bar import Bar
    from rich.table import Table

    total = sum(counts.values())
    most = max(counts.values(), default=0)
    mean = total / len(counts) if counts else 0.0
    table = Table(title=f"dhtcart store {args.data}", title_justify="left")
    table.add_column("shard", no_wrap=True)
    table.add_column("weight", justify="right")
    table.add_column("ring", justify="right")
    table.add_column("keys", justify="right")
    table.add_column("share", justify="right")
    table.add_column("load", width=22, no_wrap=True)
    for name, n in counts.items():
        table.add_row(
            name,
            str(weights.get(name, "?")),
            f"{shares[name]:.1%}",
            f"{n:,}",
            f"{n / total:.1%}" if total else "-",
            Bar(size=most or 1, begin=0, end=n, width=20),
        )
    console = _console()
    console.print(table)
    balance = f"{most / mean:.3f}" if mean else "-"
    console.print(
        f"{len(counts)} shards, {total:,} keys; max {most:,}, mean {mean:,.1f}, max/mean {balance}",
        soft_wrap=True,
    )
    return EXIT_OK


# -- rebalancing -----------------------------------------------------------------------


def _rebalance(args: argparse.Namespace, verb: str, run: Callable[..., RebalanceReport]) -> int:
    _require("rich")
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = _console()
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("keys"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    task = progress.add_task(verb, total=None)
    shown = False

    def on_progress(done: int, total: int) -> None:
        # the bar appears with the first moved batch: a busy store or a
        # failed check raises before that and leaves no half-drawn bar
        nonlocal shown
        if not shown:
            progress.start()
            shown = True
        progress.update(task, completed=done, total=max(total, done))

    try:
        report = run(progress=on_progress, batch_size=args.batch_size)
        progress.update(task, completed=report.keys_moved, total=report.keys_moved)
    finally:
        if shown:
            progress.stop()
    _print_report(console, report)
    return EXIT_OK


def _print_report(console: Console, report: RebalanceReport) -> None:
    from rich.table import Table

    console.print(
        f"moved {report.keys_moved:,} keys ({report.bytes_moved:,} bytes, {report.arcs} arcs) "
        f"in {report.seconds:.2f} s ({report.keys_per_second:,.0f} keys/s); "
        f"max/mean load {report.max_mean_load:.3f}",
        soft_wrap=True,
    )
    table = Table(title="keys per shard", title_justify="left")
    table.add_column("shard")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for name in sorted(set(report.keys_before) | set(report.keys_after)):
        before = report.keys_before.get(name)
        after = report.keys_after.get(name)
        table.add_row(name, "-" if before is None else f"{before:,}", "removed" if after is None else f"{after:,}")
    console.print(table)


def _add_shard(args: argparse.Namespace) -> int:
    with _open_store(args.data) as store:
        name = args.name or _next_name(store)
        return _rebalance(
            args,
            f"adding {name}",
            lambda **kw: store.add_shard(name, weight=args.weight, backend=args.backend, **kw),
        )


def _remove_shard(args: argparse.Namespace) -> int:
    with _open_store(args.data) as store:
        return _rebalance(args, f"removing {args.name}", lambda **kw: store.remove_shard(args.name, **kw))


def _set_weight(args: argparse.Namespace) -> int:
    with _open_store(args.data) as store:
        return _rebalance(
            args,
            f"weight of {args.name} -> {args.weight}",
            lambda **kw: store.set_weight(args.name, args.weight, **kw),
        )


def _next_name(store: DHTServerStore) -> str:
    """The name ``add_shard()`` gives a new shard by default."""
    names = store.servers
    i = len(names)
    while f"shard-{i}" in names:
        i += 1
    return f"shard-{i}"


# -- plan ------------------------------------------------------------------------------


def _print_plan(title: str, plan: RebalancePlan) -> int:
    _require("rich")
    from rich.table import Table

    console = _console()
    console.print(
        f"{title}: would move {plan.keys:,} of {plan.total_keys:,} keys ({plan.fraction:.1%}), "
        f"{plan.bytes:,} bytes, in {len(plan.moves)} arcs",
        soft_wrap=True,
    )
    routes = plan.by_route()
    if routes:
        table = Table(title="keys by route", title_justify="left")
        table.add_column("from")
        table.add_column("to")
        table.add_column("keys", justify="right")
        for (source, target), n in sorted(routes.items()):
            table.add_row(source, target, f"{n:,}")
        console.print(table)
    return EXIT_OK


def _plan_add(args: argparse.Namespace) -> int:
    with _open_store(args.data) as store:
        name = args.name or _next_name(store)
        return _print_plan(f"add-shard {name}", store.plan_add_shard(name, args.weight))


def _plan_remove(args: argparse.Namespace) -> int:
    with _open_store(args.data) as store:
        return _print_plan(f"remove-shard {args.name}", store.plan_remove_shard(args.name))


def _plan_weight(args: argparse.Namespace) -> int:
    with _open_store(args.data) as store:
        return _print_plan(f"set-weight {args.name} {args.weight}", store.plan_set_weight(args.name, args.weight))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
