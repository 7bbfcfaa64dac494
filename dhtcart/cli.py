"""The ``dhtcart`` command: serve the HTTP API, inspect and rebalance a store.

::

    dhtcart serve [--host H] [--port P] [--data LOCATION] [--shards N | --shard NAME=URL ...] [--workers N] ...
    dhtcart init [--data LOCATION] [--shards N | --shard NAME=URL ...]
    dhtcart stats [--data LOCATION] [--json]
    dhtcart finish [--data LOCATION]
    dhtcart add-shard [NAME] [--weight W] [--backend URL] [--data LOCATION]
    dhtcart remove-shard NAME [--data LOCATION]
    dhtcart set-weight NAME WEIGHT [--data LOCATION]
    dhtcart plan {add-shard,remove-shard,set-weight} ...
    dhtcart verify ...
    dhtcart --version

A location (``--data``, ``DHTCART_DATA``) is read by
:func:`dhtcart.membership.parse_location`, as the library reads it: a
directory path or ``lmdb://PATH``, ``redis://host:port/db`` (a store whose
membership is kept in that database), or ``memory://`` (for ``serve`` only:
a store that lives and dies with the server).

Inspection (``stats``, ``plan``) opens the store with ``finish=False`` and
changes nothing. The commands that change a store (``init``, ``serve``,
``finish``, the rebalances) refuse a directory this user cannot write, with
one line.

Imports are lazy: ``--version`` and a usage error load neither the store nor
a backend; ``rich``, ``fastapi``, ``uvicorn`` (the ``server`` extra) and
``redis`` (the ``redis`` extra) are imported by the commands and locations
that need them, and a missing one is reported with the command that installs
it (exit 5), not a traceback. Every option that the HTTP app reads too (and
its environment variable and default) is declared once, in
:mod:`dhtcart.settings`. See ``docs/cli.md``.

Exit codes: 0 success; 1 the command failed (no store there, unknown shard, a
read-only store, ...); 2 bad usage; 3 the server could not start (port in use,
host not of this machine, application start-up failed); 4 the store is busy
(another rebalance holds it); 5 an optional dependency is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from dhtcart._cli_common import (
    EXIT_BUSY,
    EXIT_ERROR,
    EXIT_MISSING_EXTRA,
    EXIT_OK,
    EXIT_STARTUP_FAILED,
    EXIT_USAGE,
    CommandError,
    HelpFormatter,
    error,
    extra_of,
    install_hint,
    require,
    scheme_extra,
)
from dhtcart._version import __version__
from dhtcart.checks import check_shard_name, check_weight
from dhtcart.errors import DHTCartError, InvalidInput, ShardUnavailable, StoreBusy, StoreNotFound, StoreReadOnly
from dhtcart.settings import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LOCK_TIMEOUT,
    OPTIONS,
    REDIS_PASSWORD_ENV,
    Settings,
    add_options,
)

if TYPE_CHECKING:
    from rich.console import Console

    from dhtcart.membership import Location
    from dhtcart.rebalance import RebalancePlan, RebalanceReport, RebalanceStatus
    from dhtcart.store import DHTServerStore

__all__ = [
    "EXIT_BUSY",
    "EXIT_ERROR",
    "EXIT_MISSING_EXTRA",
    "EXIT_OK",
    "EXIT_STARTUP_FAILED",
    "EXIT_USAGE",
    "INSTALL_HINT",
    "SERVE_OPTIONS",
    "build_parser",
    "main",
]

INSTALL_HINT = install_hint("server")
#: what ``serve`` imports from the server extra (rich is not needed to serve)
SERVE_MODULES = ("fastapi", "uvicorn", "httptools", "prometheus_client", "fastapi_offline")

#: the settings `dhtcart serve` takes, in the order its --help lists them
SERVE_OPTIONS = (
    "host",
    "port",
    "data",
    "shards",
    "shard_urls",
    "replicas",
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
#: the settings `dhtcart init` takes; every other command takes only "data"
INIT_OPTIONS = ("data", "shards", "shard_urls", "replicas")

#: how the stats line names each kind of membership (``type(store.membership)``)
_MEMBERSHIP_KINDS = {
    "LocalMembership": "this process",
    "DirectoryMembership": "a directory",
    "RedisMembership": "a Redis database",
    "EtcdMembership": "an etcd cluster",
}

#: the verify command's one-line help (its parser is built only when it runs: it imports the workload)
_VERIFY_HELP = "run concurrent clients on a store and check their history for linearizability"


# -- the parser ------------------------------------------------------------------------


def _epilog() -> str:
    """The environment and exit codes, written from :data:`~dhtcart.settings.OPTIONS`."""
    width = max(len(o.env) for o in OPTIONS) + 2

    def commands(name: str) -> str:
        if name == "data":
            return "every command"
        return "init, serve" if name in INIT_OPTIONS else "serve"

    lines = ["environment (each variable is the default of its option; the option wins):"]
    lines += [f"  {o.env:<{width}}{o.flag} ({commands(o.name)})" for o in OPTIONS]
    lines.append(f"  {REDIS_PASSWORD_ENV:<{width}}the password of a redis:// URL that gives none")
    lines += [
        "",
        "exit codes:",
        "  0 success      1 command failed   2 bad usage   3 server could not start (port in use...)",
        "  4 store busy (another rebalance is running)   5 optional extra missing",
    ]
    return "\n".join(lines) + "\n"


def _shard_name(text: str) -> str:
    try:
        return check_shard_name(text)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _weight(text: str) -> int:
    try:
        return check_weight(int(text))
    except (ValueError, InvalidInput):
        raise argparse.ArgumentTypeError(f"a weight is a positive integer, got {text!r}") from None


def _batch_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"a batch size is a positive integer, got {text!r}")
    return value


def _backend_url(text: str) -> str:
    if "://" not in text:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a backend URL (e.g. redis://host:6379/0, or lmdb:///path/to/dir)"
        )
    return text


@dataclass(frozen=True)
class _Operation:
    """A rebalance, as a command (``add-shard``) and as a plan (``plan add-shard``)."""

    command: str
    help: str
    description: str

    def arguments(self, parser: argparse.ArgumentParser, *, plan: bool) -> None:
        """Add this operation's arguments to ``parser`` (one declaration for both forms)."""
        if self.command == "add-shard":
            parser.add_argument(
                "name", nargs="?", type=_shard_name, metavar="NAME", help="the new shard's name (default shard-N)"
            )
            parser.add_argument("--weight", type=_weight, default=1, help="relative weight (default %(default)s)")
            if not plan:
                parser.add_argument(
                    "--backend",
                    metavar="URL",
                    type=_backend_url,
                    help="the new shard's backend, e.g. redis://host:6379/0 (default: a new LMDB directory in"
                    " the store's directory; a store kept in a database needs one)",
                )
        elif self.command == "remove-shard":
            parser.add_argument("name", type=_shard_name, metavar="NAME", help="the shard to remove")
        else:
            parser.add_argument("name", type=_shard_name, metavar="NAME", help="the shard")
            parser.add_argument("weight", type=_weight, metavar="WEIGHT", help="its new weight (>= 1)")
        add_options(parser, "data")
        if not plan:
            _batch_option(parser)
        parser.set_defaults(func=_plan if plan else _rebalance, operation=self)


_OPERATIONS = (
    _Operation(
        "add-shard",
        "add a shard and move its keys to it (progress bar)",
        "Add a shard and move to it the arcs it now owns, nothing else, while servers and "
        "other processes keep using the store. Exits 4 if another rebalance is running.",
    ),
    _Operation(
        "remove-shard",
        "move a shard's keys away, then drop it (progress bar)",
        "Move a shard's keys to their new owners, then drop the shard and its data, "
        "while servers keep serving. Exits 4 if another rebalance is running.",
    ),
    _Operation(
        "set-weight",
        "change a shard's weight and move the keys that change owner",
        "Change a shard's weight; moves only the arcs that change owner, while servers "
        "keep serving. Exits 4 if another rebalance is running.",
    ),
)


def _batch_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--batch-size",
        type=_batch_size,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help="keys copied per step; other threads wait at most one step (default %(default)s)",
    )


def build_parser(*, verify: bool = True) -> argparse.ArgumentParser:
    """The argument parser of ``dhtcart`` (defaults read from the environment).

    ``verify=False`` lists the ``verify`` command without building its parser
    (which imports the workload and the store): what :func:`main` does unless
    the command line names it.
    """
    epilog = _epilog()
    parser = argparse.ArgumentParser(
        prog="dhtcart",
        description="A shopping-cart service over a consistent-hashing DHT: "
        "serve its HTTP API, and inspect or rebalance its store.",
        epilog=epilog,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dhtcart {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    p = sub.add_parser(
        "serve",
        help="run the HTTP API (uvicorn) on the store in --data",
        description="Run the cart HTTP API under uvicorn on the store in --data, creating it (with --shards "
        "LMDB shards, or the --shard NAME=URL given) if it does not exist; memory:// serves a store that lives "
        "in the one worker. Logs one line per request; SIGTERM or Ctrl-C shuts down gracefully (in-flight "
        "requests finish) and exits 0. Exits 3 if the host or port cannot be listened on or the workers "
        "cannot start.",
        epilog=epilog,
        formatter_class=HelpFormatter,
    )
    add_options(p, *SERVE_OPTIONS)
    p.set_defaults(func=_serve)

    p = sub.add_parser(
        "init",
        help="create a store in --data, without serving it",
        description="Create the store in --data, with --shards LMDB shards in its directory, or with the "
        "shards named by --shard NAME=URL (a store kept in a Redis database needs them), then close it. An "
        "existing store is opened instead (finishing a rebalance a killed process left half done).",
        epilog=epilog,
        formatter_class=HelpFormatter,
    )
    add_options(p, *INIT_OPTIONS)
    p.set_defaults(func=_init)

    p = sub.add_parser(
        "stats",
        help="keys per shard, with a bar each and max/mean",
        description="Show the store's shards: weight, share of the ring, keys (cart records), a bar per "
        "shard, the max/mean balance and whether each shard answers; where the membership lives, its "
        "epoch, and a rebalance in progress or interrupted. Changes nothing; works while a server runs "
        "and on a store this user can only read.",
        formatter_class=HelpFormatter,
    )
    add_options(p, "data")
    p.add_argument("--json", action="store_true", help="print {shard: keys} as JSON instead of a table")
    p.set_defaults(func=_stats)

    p = sub.add_parser(
        "finish",
        help="finish a rebalance that was interrupted (progress bar)",
        description="Finish the rebalance a killed or failed process left half done, where the shards' "
        "records say it stopped, while servers keep serving. Does nothing if none was interrupted; exits 4 "
        "if a rebalancer is still running.",
        formatter_class=HelpFormatter,
    )
    add_options(p, "data")
    _batch_option(p)
    p.set_defaults(func=_finish)

    for operation in _OPERATIONS:
        p = sub.add_parser(
            operation.command, help=operation.help, description=operation.description, formatter_class=HelpFormatter
        )
        operation.arguments(p, plan=False)

    p = sub.add_parser(
        "set-replicas",
        help="keep N copies of every key: make or drop copies (progress bar)",
        description="Keep N copies of every key from now on, on distinct shards in distinct failure domains "
        "where there are that many: the copies are made (or dropped) live, with the hand-over protocol, "
        "while servers keep serving. Exits 4 if another rebalance is running.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("replicas", type=_replicas, metavar="N", help="copies of every key (1-7)")
    add_options(p, "data")
    _batch_option(p)
    p.set_defaults(func=_set_replicas)

    p = sub.add_parser(
        "repair",
        help="restore the copies a failover took out (progress bar)",
        description="Remove from the ring the shards a failover took out, restoring the missing copies of "
        "their keys on the next shards of each key's preference list, while servers keep serving. A "
        "failover starts this by itself in the background; this runs it now. Exits 4 if another rebalance "
        "is running.",
        formatter_class=HelpFormatter,
    )
    add_options(p, "data")
    _batch_option(p)
    p.set_defaults(func=_repair)

    p = sub.add_parser(
        "plan",
        help="what a rebalance would move, without moving anything",
        description="Count what add-shard, remove-shard or set-weight would move (reads only the "
        "moving arcs; changes nothing; safe while a server runs).",
        formatter_class=HelpFormatter,
    )
    plan_sub = p.add_subparsers(dest="plan_command", metavar="OPERATION", title="operations")
    p.set_defaults(func=lambda args, p=p: _usage(p))
    for operation in _OPERATIONS:
        q = plan_sub.add_parser(
            operation.command,
            help=f"plan: {operation.help.split(' (')[0]}",
            description=f"What `dhtcart {operation.command}` would move, moving nothing.",
            formatter_class=HelpFormatter,
        )
        operation.arguments(q, plan=True)

    if verify:
        from dhtcart.verify import add_verify_parser

        add_verify_parser(sub)
    else:
        sub.add_parser("verify", help=_VERIFY_HELP, add_help=False)
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


# -- running a command -----------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (``python -m dhtcart`` and ``dhtcart``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(verify="verify" in argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CommandError as exc:
        error(str(exc))
        return exc.code
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except Exception as exc:
        explained = _explain(exc)
        if explained is None:
            raise  # a bug: its traceback is what a report needs
        code, message = explained
        error(message)
        return code


def _explain(exc: Exception) -> tuple[int, str] | None:
    """The exit code and one line for an error the library raised, or ``None`` for a bug."""
    if isinstance(exc, StoreBusy):
        return EXIT_BUSY, f"store busy: {exc}"
    if isinstance(exc, InvalidInput) and exc.field == "location":
        return EXIT_USAGE, f"--data (or DHTCART_DATA): {exc.message}"
    if isinstance(exc, DHTCartError | ValueError):  # StoreReadOnly, ShardUnavailable, a refused name...
        return EXIT_ERROR, str(exc)
    if isinstance(exc, ImportError):
        module = _missing_module(exc)
        extra = extra_of(module)
        if extra is None:
            return None
        return EXIT_MISSING_EXTRA, f"this command needs {module}, from the {extra} extra: {install_hint(extra)}"
    if isinstance(exc, OSError):
        if exc.filename and exc.strerror:
            return EXIT_ERROR, f"{exc.filename}: {exc.strerror}"
        return EXIT_ERROR, f"{type(exc).__name__}: {exc}"
    return None


def _missing_module(exc: BaseException) -> str | None:
    """The module whose import failed, from ``exc`` or the errors it was raised from."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ImportError) and seen.name:
            return seen.name
        seen = seen.__cause__ or seen.__context__
    return None


def _settings(args: argparse.Namespace) -> Settings:
    """The settings the options and the environment give; a bad value is bad usage (exit 2)."""
    try:
        return Settings.from_namespace(args)
    except InvalidInput as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


# -- locations -------------------------------------------------------------------------


def _location(text: str) -> Location:
    from dhtcart.membership import parse_location

    return parse_location(text)


def _shown(text: str) -> str:
    """A location as a message may show it: a URL's password masked, quoted for a shell."""
    parts = urlsplit(text) if "://" in text else None
    if parts is not None and parts.password:
        user = parts.username or ""
        text = urlunsplit(parts._replace(netloc=f"{user}:***@{parts.hostname}{f':{parts.port}' if parts.port else ''}"))
    return shlex.quote(text)


def _resolved(text: str, loc: Location) -> str:
    """The location with a directory made absolute (what the workers and the messages get)."""
    if loc.kind != "directory":
        return text
    path = os.path.abspath(loc.target)
    return f"lmdb://{path}?{urlencode(loc.options)}" if loc.options else path


def _where(store: DHTServerStore) -> str:
    """Where a store's membership lives, for messages: its absolute directory, or its URL (password masked)."""
    return store.location if store.directory is None else os.path.abspath(store.location)


def _existing_location(text: str, command: str) -> Location:
    """The location of a store that ``command`` works on (memory:// holds none to work on)."""
    loc = _location(text)
    if loc.kind == "memory":
        raise CommandError(
            f"--data memory://: a memory:// store lives inside one process and is new each time it is opened,"
            f" so `dhtcart {command}` has none to work on (it is for `dhtcart serve` and the library); give a"
            " directory, lmdb://PATH or redis://host:port/db",
            EXIT_USAGE,
        )
    return loc


def _init_hint(text: str, loc: Location) -> str:
    """The command that creates a store at this location (a database-kept one is made of the shards given)."""
    if loc.is_database:
        return f"dhtcart init --data {_shown(text)} --shard NAME=redis://HOST:PORT/DB [--shard NAME=URL ...]"
    return f"dhtcart init --data {_shown(text)}"


def _require_for(*urls: str) -> None:
    """Exit 5, before anything is opened, if a URL's backend needs an extra that is missing."""
    for url in urls:
        extra = scheme_extra(url)
        if extra is not None:
            require(extra)


def _check_writable(loc: Location, command: str) -> None:
    """Refuse, in one line, a command that changes a store whose directory this user cannot write."""
    if loc.kind != "directory":
        return
    path = Path(loc.target)
    if path.is_dir() and not os.access(path, os.W_OK):
        raise StoreReadOnly(
            f"store {os.path.abspath(path)} is read-only for this user: `dhtcart {command}` would change it"
            " (`dhtcart stats` can inspect it)"
        )


def _open(args: argparse.Namespace, *, finish: bool, changes: bool) -> DHTServerStore:
    """Open the existing store in ``--data``: for inspection (``finish=False``, nothing changes), or
    for a command that changes it (refused at once on a read-only directory)."""
    text = _settings(args).data
    loc = _existing_location(text, args.command)
    if changes:
        _check_writable(loc, args.command)
    _require_for(loc.target)
    from dhtcart.store import DHTServerStore

    try:
        return DHTServerStore.open(text, create=False, finish=finish, lock_timeout=DEFAULT_LOCK_TIMEOUT)
    except StoreNotFound:
        raise CommandError(
            f"no dhtcart store at {_shown(_resolved(text, loc))} (create one with: {_init_hint(text, loc)})"
        ) from None


def _create(settings: Settings, command: str) -> tuple[str, int, bool, str]:
    """Open the store in ``settings.data``, creating it if there is none (and finishing a rebalance a
    killed process left half done): its location, its shards, whether it existed, a note for the user."""
    loc = _existing_location(settings.data, command)
    data = _resolved(settings.data, loc)
    _require_for(loc.target, *(url for _, url in settings.shard_urls))
    _check_writable(loc, command)
    from dhtcart.store import DHTServerStore

    existed = True
    try:
        store = DHTServerStore.open(data, create=False, lock_timeout=DEFAULT_LOCK_TIMEOUT)
    except StoreNotFound:
        if loc.is_database and not settings.shard_urls:
            raise CommandError(
                f"no dhtcart store at {_shown(data)} yet, and a store kept in a database is created with the"
                f" shards it is given: {_init_hint(settings.data, loc)}",
                EXIT_USAGE,
            ) from None
        existed = False
        store = DHTServerStore.open(
            data, shards=settings.new_store_shards, replicas=settings.replicas, lock_timeout=DEFAULT_LOCK_TIMEOUT
        )
    with store:
        count = len(store.shards)
        replicas = store.replicas
        where = data if loc.kind == "directory" else store.location
    note = f", {replicas} copies of every key" if replicas > 1 else ""
    if existed and settings.replicas != 1 and settings.replicas != replicas:
        note += f"; --replicas {settings.replicas} ignored: the store exists (change it with `dhtcart set-replicas`)"
    if existed and settings.shards is not None and count != settings.shards:
        note += f"; --shards {settings.shards} ignored: the store exists"
    elif existed and settings.shard_urls:
        note += "; --shard ignored: the store exists (add shards with `dhtcart add-shard NAME --backend URL`)"
    return where, count, existed, note


# -- init ------------------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    data, count, existed, note = _create(_settings(args), "init")
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


def _check_host(host: str, port: int) -> None:
    """Exit 3 with one line if ``host`` names no address (check_port then tells one of another machine)."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CommandError(
            f"--host {host} (or DHTCART_HOST) is not an address of this machine ({exc.strerror}): give one of"
            " its addresses, e.g. 127.0.0.1, or 0.0.0.0 for all",
            EXIT_STARTUP_FAILED,
        ) from None


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    loc = _location(settings.data)
    if loc.kind == "memory" and settings.workers > 1:
        raise CommandError(
            f"--data memory:// keeps the store inside one process: it cannot be shared by --workers "
            f"{settings.workers}; use --workers 1, or a directory or lmdb://PATH for several workers",
            EXIT_USAGE,
        )
    require("server", *SERVE_MODULES)
    _require_for(loc.target, *(url for _, url in settings.shard_urls))
    from dhtcart.errors import PortUnavailable
    from dhtcart.serving import check_port, serve

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _graceful_exit)
    _check_host(settings.host, settings.port)
    try:
        check_port(settings.host, settings.port)  # before touching the store: say what to change, exit 3
    except PortUnavailable as exc:
        raise CommandError(str(exc), EXIT_STARTUP_FAILED) from None
    if loc.kind == "memory":
        shards = settings.new_store_shards
        data, count = "memory://", shards if isinstance(shards, int) else len(shards)
        note = "; in this process only: its carts are gone when the server stops"
    else:
        # Create (or recover) the store once, before any worker starts, so every
        # worker opens the same store; each worker then opens its own handles.
        data, count, _, note = _create(settings, "serve")
        settings = settings.replace(data=_resolved(settings.data, loc))
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
    if not args.json:
        require("server", "rich")
    with _open(args, finish=False, changes=False) as store:
        status = store.rebalance_status()
        health = store.health()
        counts: dict[str, int | None] = {}
        for name, server in sorted(store.shards.items()):
            counts[name] = None
            if health.get(name) is None:
                try:
                    counts[name] = server.count()
                except ShardUnavailable as exc:
                    health[name] = str(exc)
        weights = store.ring.nodes
        shares = {n: store.ring.share(n) if n in weights else 0.0 for n in counts}
        roles = _roles(store)
        membership = type(store.membership).__name__
        watching = store.membership.watching
        location = _where(store)
    down = {n: why for n, why in health.items() if why is not None}
    if args.json:
        print(json.dumps(counts, indent=1))
        for why in down.values():
            error(why)
        return EXIT_ERROR if down else EXIT_OK
    from rich.bar import Bar
    from rich.table import Table

    known = [n for n in counts.values() if n is not None]
    total = sum(known)
    most = max(known, default=0)
    mean = total / len(known) if known else 0.0
    table = Table(title=f"dhtcart store {location}", title_justify="left")
    table.add_column("shard", no_wrap=True)
    table.add_column("weight", justify="right")
    table.add_column("ring", justify="right")
    table.add_column("keys", justify="right")
    table.add_column("share", justify="right")
    table.add_column("load", width=22, no_wrap=True)
    if status.replicas > 1:
        table.add_column("primary of", justify="right")
        table.add_column("backup of", justify="right")
    table.add_column("health", no_wrap=True)
    for name, n in counts.items():
        cells: list[Any] = [
            name,
            str(weights.get(name, "-")),
            f"{shares[name]:.1%}",
            "?" if n is None else f"{n:,}",
            "-" if n is None or down or not total else f"{n / total:.1%}",
            Bar(size=most or 1, begin=0, end=n or 0, width=20),
        ]
        if status.replicas > 1:
            primary, backup = roles.get(name, (0.0, 0.0))
            cells += [f"{primary:.1%}", f"{backup:.1%}"]
        taken = name in status.down
        table.add_row(*cells, "taken out" if taken else "down" if name in down else "ok")
    console = _console()
    console.print(table)
    balance = f"{most / mean:.3f}" if mean else "-"
    unit = f"records ({status.replicas} copies of each key)" if status.replicas > 1 else "keys"
    where = f" ({len(down)} down), {total:,} {unit} on the others" if down else f", {total:,} {unit}"
    console.print(
        f"{len(counts)} shards{where}; max {most:,}, mean {mean:,.1f}, max/mean {balance}",
        soft_wrap=True,
    )
    kind = _MEMBERSHIP_KINDS.get(membership, membership)
    watch = "" if watching is None else ("; its watch is live" if watching else "; its watch is down (redirects serve)")
    console.print(f"membership kept in {kind} ({membership}) at {location}{watch}", soft_wrap=True)
    console.print(_status_line(status, args.data), soft_wrap=True)
    if status.replicas > 1 or status.down:
        console.print(_replication_line(status, args.data), soft_wrap=True)
    live_down = {n: why for n, why in down.items() if n not in status.down}
    for why in live_down.values():
        error(why)
    return EXIT_ERROR if live_down else EXIT_OK


def _roles(store: DHTServerStore) -> dict[str, tuple[float, float]]:
    """Each shard's share of the key space as a primary and as a backup, from the replica lists."""
    out: dict[str, list[float]] = {}
    total = float(1 << 63)
    for lo, hi, names in store._view.placement.lists():
        for i, name in enumerate(names):
            out.setdefault(name, [0.0, 0.0])[0 if i == 0 else 1] += (hi - lo) / total
    return {n: (p, b) for n, (p, b) in out.items()}


def _replication_line(status: RebalanceStatus, data: str) -> str:
    """How many copies, which shards a failover took out, and what is short of copies."""
    line = f"{status.replicas} copies of every key"
    if status.down:
        line += f"; taken out by a failover: {', '.join(status.down)}"
    if status.under_replicated:
        line += f"; {status.under_replicated:.1%} of the key space has fewer copies"
        if not status.migrating:
            line += f" (`dhtcart repair --data {_shown(data)}` restores them; a failover starts it by itself)"
        else:
            line += " (being restored)"
    else:
        line += "; every key has all its copies"
    return line


def _status_line(status: RebalanceStatus, data: str) -> str:
    """The membership epoch, and a migration's progress and who will finish it, in one line."""
    line = f"membership epoch {status.epoch}"
    if status.migrating:
        change = (
            ", ".join([*(f"adding {n}" for n in status.adding), *(f"removing {n}" for n in status.removing)])
            or "reweighting"
        )
        state = "in progress" if status.holder else "interrupted"
        line += (
            f"; rebalance {state} ({change}): {status.fraction_done:.1%} of the moving key space handed"
            f" over, {status.arcs_done}/{status.arcs} arcs"
        )
        if status.keys_planned:
            line += f", {status.keys_moved:,} of ~{status.keys_planned:,} keys moved"
        if status.unreachable:
            line += f" (unreachable: {', '.join(status.unreachable)})"
        if status.holder:
            line += f"; lease held by {status.holder}"
        else:
            line += (
                f"; no rebalancer holds the lease: `dhtcart finish --data {_shown(data)}` finishes it, as do the"
                " next rebalance and the next process that opens the store to write (a server starting,"
                " `dhtcart init`); meanwhile a writer that meets a half-moved batch finishes that batch"
            )
    elif status.holder:
        line += f"; lease held by {status.holder}"
    return line


# -- rebalancing -----------------------------------------------------------------------


def _with_progress(verb: str, run: Callable[..., RebalanceReport | None], batch_size: int) -> RebalanceReport | None:
    """Run a rebalance with a progress bar (keys moved against keys planned)."""
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
        report = run(progress=on_progress, batch_size=batch_size)
        if report is not None:
            progress.update(task, completed=report.keys_moved, total=report.keys_moved)
    finally:
        if shown:
            progress.stop()
    if report is not None:
        _print_report(console, report)
    return report


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


def _rebalance(args: argparse.Namespace) -> int:
    """``add-shard``, ``remove-shard`` or ``set-weight``."""
    require("server", "rich")
    if getattr(args, "backend", None):
        _require_for(args.backend)
    with _open(args, finish=False, changes=True) as store:
        command = args.operation.command
        run: Callable[..., RebalanceReport]
        if command == "add-shard":
            name = args.name if args.name is not None else store.new_shard_name()
            if args.backend is None and store.directory is None:
                raise CommandError(
                    f"store {store.location} keeps its membership in a database and has no directory for a new"
                    f" LMDB shard: give the new shard's medium, e.g. `dhtcart add-shard {name} --backend"
                    f" redis://HOST:PORT/DB --data {_shown(args.data)}`",
                    EXIT_USAGE,
                )
            verb = f"adding {name}"

            def run(**kw: Any) -> RebalanceReport:
                return store.add_shard(name, weight=args.weight, backend=args.backend, **kw)

        elif command == "remove-shard":
            verb = f"removing {args.name}"

            def run(**kw: Any) -> RebalanceReport:
                return store.remove_shard(args.name, **kw)

        else:
            verb = f"weight of {args.name} -> {args.weight}"

            def run(**kw: Any) -> RebalanceReport:
                return store.set_weight(args.name, args.weight, **kw)

        _with_progress(verb, run, args.batch_size)
    return EXIT_OK


def _replicas(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of copies, got {text!r}") from None
    if not 1 <= n <= 7:
        raise argparse.ArgumentTypeError(f"must be between 1 and 7, got {n}")
    return n


def _set_replicas(args: argparse.Namespace) -> int:
    require("server", "rich")
    with _open(args, finish=False, changes=True) as store:
        before = store.replicas

        def run(**kw: Any) -> RebalanceReport:
            return store.set_replicas(args.replicas, **kw)

        _with_progress(f"copies {before} -> {args.replicas}", run, args.batch_size)
    return EXIT_OK


def _repair(args: argparse.Namespace) -> int:
    require("server", "rich")
    with _open(args, finish=False, changes=True) as store:
        down = store.rebalance_status().down
        if not down:
            print(f"nothing to repair: no shard is down (every key has {store.replicas} copies where it can)")
            return EXIT_OK
        removed = store.repair()
        print(f"repaired: removed {', '.join(removed) or 'nothing'} from the ring; every key has its copies again")
    return EXIT_OK


def _finish(args: argparse.Namespace) -> int:
    require("server", "rich")
    with _open(args, finish=False, changes=True) as store:
        report = _with_progress("finishing the interrupted rebalance", store.finish_rebalance, args.batch_size)
        if report is None:
            print(f"nothing to finish: no rebalance was interrupted (membership epoch {store.epoch})")
    return EXIT_OK


# -- plan ------------------------------------------------------------------------------


def _plan(args: argparse.Namespace) -> int:
    require("server", "rich")
    with _open(args, finish=False, changes=False) as store:
        status = store.rebalance_status()
        if status.migrating:
            state = f"in progress (lease held by {status.holder})" if status.holder else "interrupted"
            raise CommandError(
                f"store {_where(store)}: a rebalance is {state}; plan once it has finished"
                + ("" if status.holder else f" (`dhtcart finish --data {_shown(args.data)}` finishes it)"),
                EXIT_BUSY,
            )
        command = args.operation.command
        if command == "add-shard":
            name = args.name if args.name is not None else store.new_shard_name()
            title, plan = f"add-shard {name}", store.plan_add_shard(name, args.weight)
        elif command == "remove-shard":
            title, plan = f"remove-shard {args.name}", store.plan_remove_shard(args.name)
        else:
            title, plan = f"set-weight {args.name} {args.weight}", store.plan_set_weight(args.name, args.weight)
    _print_plan(title, plan)
    return EXIT_OK


def _print_plan(title: str, plan: RebalancePlan) -> None:
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
