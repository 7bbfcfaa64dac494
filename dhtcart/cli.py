"""The ``dhtcart`` command: serve the HTTP API, inspect and rebalance a store.

::

    dhtcart serve [--host H] [--port P] [--data DIR] [--shards N] [--workers N] [--compat seed] ...
    dhtcart init [--data DIR] [--shards N]
    dhtcart stats [--data DIR] [--json]
    dhtcart add-shard [NAME] [--weight W] [--data DIR]
    dhtcart remove-shard NAME [--data DIR]
    dhtcart set-weight NAME WEIGHT [--data DIR]
    dhtcart plan {add-shard,remove-shard,set-weight} ...
    dhtcart --version

Only ``argparse`` and dhtcart's core are imported at module level; ``rich``,
``fastapi`` and ``uvicorn`` (the ``server`` extra) are imported by the
commands that need them, and a missing one is reported with the command that
installs it, not a traceback. Every option that the HTTP app reads too (and
its environment variable and default) is declared once, in
:mod:`dhtcart.settings`. See ``docs/cli.md``.

Exit codes: 0 success; 1 the command failed (no store there, unknown shard,
...); 2 bad usage; 3 the server could not start (port in use, application
start-up failed); 4 the store is busy (a server or another command
holds it; a rebalance needs it alone); 5 an optional dependency is missing.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from dhtcart import __version__
from dhtcart.errors import DHTCartError, InvalidInput, ShardExists, ShardNotFound, StoreBusy
from dhtcart.membership import is_url, open_membership
from dhtcart.settings import MANIFEST, Settings, add_options
from dhtcart.store import DHTServerStore
from dhtcart.verify import add_verify_parser

if TYPE_CHECKING:
    from rich.console import Console

    from dhtcart.rebalance import RebalancePlan, RebalanceReport
    from dhtcart.store import RebalanceStatus

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
DEFAULT_DATA = Settings().data
SERVE_EXTRA = ("fastapi", "uvicorn", "httptools", "prometheus_client", "fastapi_offline")

#: the settings `dhtcart serve` takes, in the order its --help lists them
SERVE_OPTIONS = (
    "host",
    "port",
    "data",
    "shards",
    "workers",
    "compat",
    "log_level",
    "access_log",
    "metrics",
    "max_body_bytes",
    "request_timeout",
    "keep_alive_timeout",
    "max_connections",
    "backlog",
    "thread_pool",
    "graceful_timeout",
)


class CommandError(Exception):
    """A failure to report in one line, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


# -- the parser ------------------------------------------------------------------------


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


_EPILOG = """\
environment:
  DHTCART_DATA      store directory for every command (default ./dhtcart-data)
  DHTCART_HOST, DHTCART_PORT, DHTCART_SHARDS, DHTCART_WORKERS, DHTCART_COMPAT, DHTCART_LOG_LEVEL,
  DHTCART_MAX_BODY_BYTES, DHTCART_REQUEST_TIMEOUT, DHTCART_MAX_CONNECTIONS, DHTCART_THREAD_POOL, ...
                    defaults for the `serve` options of the same names (see `dhtcart serve --help`)

exit codes:
  0 success      1 command failed   2 bad usage   3 server could not start (port in use...)
  4 store busy (another rebalance is running)   5 optional extra missing
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
        add_options(p, "data")

    # serve
    p = sub.add_parser(
        "serve",
        help="run the HTTP API (uvicorn) on the store in --data",
        description="Run the cart HTTP API under uvicorn on the LMDB store in --data, creating "
        "the store (with --shards shards) if it does not exist. Logs one line per request; "
        "SIGTERM or Ctrl-C shuts down gracefully (in-flight requests finish) and exits 0. "
        "Exits 3 if the port is taken or the workers cannot start.",
        epilog=_EPILOG,
        formatter_class=_Formatter,
    )
    add_options(p, *SERVE_OPTIONS)
    p.set_defaults(func=_serve)

    # init
    p = sub.add_parser(
        "init",
        help="create a store in --data, without serving it",
        description="Create the LMDB store in --data with --shards shards (or open it, finishing a "
        "rebalance a killed process left half done, if it exists), then close it.",
        formatter_class=_Formatter,
    )
    add_options(p, "data", "shards")
    p.set_defaults(func=_init)

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
        description="Add a shard and move to it the arcs it now owns, nothing else, while servers and "
        "other processes keep using the store. Exits 4 if another rebalance is running.",
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
        description="Move a shard's keys to their new owners, then drop the shard and its data, "
        "while servers keep serving. Exits 4 if another rebalance is running.",
        formatter_class=_Formatter,
    )
    p.add_argument("name", metavar="NAME", help="the shard to remove")
    data_option(p)
    _batch_option(p)
    p.set_defaults(func=_remove_shard)

    p = sub.add_parser(
        "set-weight",
        help="change a shard's weight and move the keys that change owner",
        description="Change a shard's weight; moves only the arcs that change owner, while servers "
        "keep serving. Exits 4 if another rebalance is running.",
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
    """The modules that cannot be imported, found without importing them (prometheus_client must
    not be imported before ``serve`` sets ``PROMETHEUS_MULTIPROC_DIR``)."""
    missing = []
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):  # a parent package is missing, or the module was blocked
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


def _exists(data: str) -> bool:
    """Whether a store lives at ``data`` (a directory, or a membership URL)."""
    if not is_url(data):
        return (Path(data) / MANIFEST).is_file()
    membership = open_membership(data)
    try:
        return membership.load() is not None
    finally:
        membership.close()


def _open_store(data: str) -> DHTServerStore:
    """Open an existing store (never create one: that is ``init``'s and ``serve``'s job)."""
    if not _exists(data):
        raise CommandError(f"no dhtcart store at {data} (create one with: dhtcart init --data {data})")
    return DHTServerStore.open(data, lock_timeout=5.0)


def _settings(args: argparse.Namespace) -> Settings:
    """The settings the options and the environment give; a bad value is bad usage (exit 2)."""
    try:
        return Settings.from_namespace(args)
    except InvalidInput as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None


def _create(settings: Settings) -> tuple[str, int, bool, str]:
    """Create (or open, recovering) the store in ``settings.data``: its path, its shards,
    whether it existed, and a note for the user."""
    data = settings.data if is_url(settings.data) else os.path.abspath(settings.data)
    existed = _exists(data)
    with DHTServerStore.open(data, shards=settings.new_store_shards) as store:
        count = len(store.servers)
    note = ""
    if existed and settings.shards is not None and count != settings.shards:
        note = f"; --shards {settings.shards} ignored: the store exists"
    return data, count, existed, note


# -- init ------------------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    data, count, existed, note = _create(_settings(args))
    print(f"dhtcart store {data}: {'already there' if existed else 'created'}, {count} shards{note}")
    return EXIT_OK


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
    settings = _settings(args)
    _require(*SERVE_EXTRA)
    from dhtcart.serving import PortUnavailable, check_port, serve

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _graceful_exit)
    try:
        check_port(settings.host, settings.port)  # before touching the store: say what to change, exit 3
    except PortUnavailable as exc:
        raise CommandError(str(exc), EXIT_STARTUP_FAILED) from None
    # Create (or recover) the store once, before any worker starts, so every
    # worker opens the same store; each worker then opens its own LMDB handles.
    data, count, _, note = _create(settings)
    settings = settings.replace(data=data)
    os.environ.update(settings.to_env())  # what each worker reads back (Settings.from_env)
    print(
        f"dhtcart {__version__}: store {data} ({count} shards{note}); "
        f"http://{settings.host}:{settings.port} (docs at /docs, metrics at /metrics), "
        f"{settings.workers} worker(s), {settings.compat} profile",
        file=sys.stderr,
        flush=True,
    )
    try:
        return serve(settings, _log_config(settings.log_level, settings.access_log))
    except PortUnavailable as exc:
        raise CommandError(str(exc), EXIT_STARTUP_FAILED) from None


# -- stats -----------------------------------------------------------------------------


def _stats(args: argparse.Namespace) -> int:
    with _open_store(args.data) as store:
        counts = store.stats()
        weights = store.ring.nodes
        shares = {n: store.ring.share(n) for n in counts}
        status = store.rebalance_status()
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
    console.print(_status_line(status), soft_wrap=True)
    return EXIT_OK


def _status_line(status: RebalanceStatus) -> str:
    """The membership epoch, and a migration's progress, in one line."""
    line = f"membership epoch {status.epoch}"
    if status.migrating:
        change = (
            ", ".join([*(f"adding {n}" for n in status.adding), *(f"removing {n}" for n in status.removing)])
            or "reweighting"
        )
        line += (
            f"; rebalance in progress ({change}): {status.fraction_done:.1%} of the moving key space handed"
            f" over, {status.arcs_done}/{status.arcs} arcs"
        )
        if status.keys_planned:
            line += f", {status.keys_moved:,} of ~{status.keys_planned:,} keys moved"
        if status.unreachable:
            line += f" (unreachable: {', '.join(status.unreachable)})"
        line += (
            f"; lease held by {status.holder}"
            if status.holder
            else "; no rebalancer running (finish it with any rebalance, or by reopening)"
        )
    elif status.holder:
        line += f"; lease held by {status.holder}"
    return line


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
