"""``dhtcart verify``: run concurrent clients against a store and check their history, or check a file.

::

    dhtcart verify --data DIR | --store LOCATION [--clients N] [--keys K] [--seconds S] [--rate OPS] [--mix OP=W,...]
                   [--rebalance [--rebalance-backend URL]] [--kill-shard] [--replicas N] [--history FILE]
                   [--seed N] [--json]
    dhtcart verify --check FILE [--json]

Exit codes: 0 the history is linearizable; 1 it is not, or the search gave up
on some key (not shown linearizable); 2 bad usage (flags, a missing or
unreadable store or file, a malformed history, ``--kill-shard`` on a store
none of whose shards can be paused); 3 the run could not be carried out (no
client could start, a client failed, the store could not be reached); 4 the
store was busy (``--rebalance`` refused on every attempt, or the store could
not be opened).

``add_verify_parser`` and ``run_verify`` are what ``dhtcart.cli`` registers;
the work is in :mod:`dhtcart.verify.run` and :mod:`dhtcart.verify.checker`.
``rich`` renders the verdict when it is installed; plain text otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

from dhtcart._cli_common import HelpFormatter
from dhtcart.errors import (
    Conflict,
    DHTCartError,
    InvalidInput,
    MalformedHistory,
    StoreBusy,
    StoreNotFound,
    WorkloadFailed,
)
from dhtcart.verify.checker import Anomaly, CheckReport, check_file
from dhtcart.verify.run import VerifyRun, verify_store
from dhtcart.verify.workload import DEFAULT_RATE, MIX, OPERATIONS, parse_mix

__all__ = [
    "EXIT_BUSY",
    "EXIT_LINEARIZABLE",
    "EXIT_NOT_LINEARIZABLE",
    "EXIT_RUN_FAILED",
    "EXIT_USAGE",
    "add_verify_parser",
    "run_verify",
]

EXIT_LINEARIZABLE = 0
EXIT_NOT_LINEARIZABLE = 1
EXIT_USAGE = 2
EXIT_RUN_FAILED = 3
EXIT_BUSY = 4

SHOWN_ANOMALIES = 10  # anomalies printed in full (all are counted; --json has up to 100)

_DESCRIPTION = """\
Check that every key of a store behaves as one register with versions and
compare-and-set, whatever runs at once. N client processes (each opening the
store itself) run reads, writes, compare-and-sets and deletes on K keys of the
run's own (drawn from a fresh random id, checked absent first, deleted after),
optionally while this process adds and removes a temporary shard (--rebalance)
or makes shards unreachable for a while (--kill-shard; on a store keeping
copies, one of the three pauses outlasts the shard's timeout: the clients fail
it over, the repair takes it out of the ring, and it is added back, empty,
after the run). With --replicas N, a directory store that is not there yet
is created keeping N copies of each key. Every operation is
recorded with its start and end; the history is checked for linearizability,
and any anomaly is printed with the operations that show it.

With --check FILE, check a history file instead (any producer; the format is
in docs/verify.md).
"""

_EPILOG = """\
exit codes:
  0 linearizable   1 not linearizable (or not decided within the search bound)
  2 bad usage: flags, no store or file there, malformed history, --kill-shard
    on a store none of whose shards can be paused
  3 the run could not be carried out (a client process failed, the store
    could not be reached)
  4 the store was busy: --rebalance refused on every attempt, or it could not be opened
"""


def _positive_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 86_400:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 86400, got {text}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 10_000_000:
        raise argparse.ArgumentTypeError(f"must be between 0 (no limit) and 10000000, got {text}")
    return value


def _mix(text: str) -> dict[str, int]:
    try:
        return parse_mix(text)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def add_verify_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``verify`` command to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "verify",
        help="run concurrent clients on a store and check their history for linearizability",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--data", metavar="DIR", help="the store's directory")
    target.add_argument(
        "--store", metavar="LOCATION", help="the store: a directory, or the URL of its membership database"
    )
    target.add_argument("--check", metavar="FILE", help="check this history file instead of running clients")
    p.add_argument("--clients", type=_positive_int(1, 64), default=4, help="client processes (default %(default)s)")
    p.add_argument("--keys", type=_positive_int(1, 100_000), default=10, help="keys of the run (default %(default)s)")
    p.add_argument("--seconds", type=_seconds, default=10.0, help="how long the clients run (default %(default)s)")
    p.add_argument(
        "--rate",
        type=_rate,
        default=DEFAULT_RATE,
        metavar="OPS",
        help="operations per second of all clients together; 0: as fast as they go (default %(default)g)",
    )
    p.add_argument(
        "--mix",
        type=_mix,
        metavar="OP=W,...",
        help="the operations' weights, e.g. read=50,cas=30,write=20 (operations not named weigh 0;"
        f" operations: {', '.join(sorted(OPERATIONS))}; default {','.join(f'{k}={v}' for k, v in MIX.items())})",
    )
    p.add_argument(
        "--rebalance", action="store_true", help="meanwhile add and remove a temporary shard, again and again"
    )
    p.add_argument(
        "--rebalance-backend",
        metavar="URL",
        help="the temporary shard's backend (default: a new LMDB directory in the store)",
    )
    p.add_argument(
        "--kill-shard", action="store_true", help="meanwhile make shards unreachable for a while, three times"
    )
    p.add_argument(
        "--replicas",
        type=_positive_int(1, 7),
        metavar="N",
        help="copies of each key: a store created here (a directory) keeps N; an existing store must keep N",
    )
    p.add_argument("--history", metavar="FILE", help="write the history here (default: a temporary file, kept)")
    p.add_argument("--seed", type=int, help="seed of the clients' random choices")
    p.add_argument("--max-steps", type=_positive_int(1, 10**12), help="search bound per key (default: the checker's)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_verify)
    return p


def _usage(message: str) -> int:
    print(f"dhtcart verify: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def run_verify(args: argparse.Namespace) -> int:
    """Carry out ``dhtcart verify`` as parsed by :func:`add_verify_parser`; return the exit code."""
    if args.check is not None:
        given = [flag for flag, used in (("--rebalance", args.rebalance), ("--kill-shard", args.kill_shard)) if used]
        if args.history is not None:
            given.append("--history")
        if args.replicas is not None:
            given.append("--replicas")
        if args.mix is not None:
            given.append("--mix")
        if given:
            return _usage(f"{', '.join(given)} only apply to a run, not to --check")
        try:
            report = check_file(args.check, max_steps=args.max_steps)
        except MalformedHistory as exc:
            return _usage(f"{args.check}: {exc}")
        except OSError as exc:
            return _usage(f"cannot read {args.check}: {exc.strerror or exc}")
        if args.json:
            print(json.dumps({"history": args.check, "check": report.to_dict()}, indent=1))
        else:
            _render(sys.stdout, report, None, f"history {args.check}")
        return _exit_code(report, None)

    if args.rebalance_backend is not None and not args.rebalance:
        return _usage("--rebalance-backend needs --rebalance")
    location = args.data if args.data is not None else args.store
    if args.history is not None:
        try:
            with open(args.history, "a", encoding="utf-8"):
                pass
        except OSError as exc:
            return _usage(f"cannot write {args.history}: {exc.strerror or exc}")
    if args.replicas is not None:
        problem = _prepare(location, args.replicas)
        if problem is not None:
            return _usage(problem)
    status = _Status(quiet=args.json)
    try:
        run = verify_store(
            location,
            clients=args.clients,
            keys=args.keys,
            seconds=args.seconds,
            rate=args.rate or None,
            rebalance=args.rebalance,
            kill_shard=args.kill_shard,
            history=args.history,
            seed=args.seed,
            rebalance_backend=args.rebalance_backend,
            max_steps=args.max_steps,
            progress=status,
            mix=args.mix,
        )
    except InvalidInput as exc:
        return _usage(exc.message)
    except StoreBusy as exc:
        print(f"dhtcart verify: store busy: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except (WorkloadFailed, Conflict, DHTCartError, OSError) as exc:
        # never exit 1 for these: 1 says the history is not linearizable
        print(f"dhtcart verify: the run could not be carried out: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_RUN_FAILED
    finally:
        status.stop()
    if args.json:
        print(json.dumps({"store": os.fspath(location), **run.to_dict()}, indent=1))
    else:
        title = f"store {location}: {run.clients} clients, {run.keys} keys, {run.seconds:.1f} s"
        _render(sys.stdout, run.report, run, title)
    return _exit_code(run.report, run)


def _prepare(location: str, replicas: int) -> str | None:
    """``--replicas N``: create a directory store keeping N copies where there is none; check that
    an existing store keeps N. Returns what is wrong, or ``None``."""
    from dhtcart.membership import parse_location
    from dhtcart.store import DHTServerStore

    try:
        store = DHTServerStore.open(location, create=False)
    except StoreNotFound:
        if parse_location(location).kind != "directory":
            return (
                f"no dhtcart store at {location}; a store with its membership in a database is created"
                f" with its shards: dhtcart init --data {location} --replicas {replicas} --shard NAME=URL ..."
            )
        try:
            DHTServerStore.open(location, replicas=replicas).close()
        except DHTCartError as exc:
            return f"cannot create a store keeping {replicas} copies at {location}: {exc}"
        return None
    except DHTCartError as exc:
        return f"cannot open {location}: {exc}"
    try:
        if store.replicas != replicas:
            return (
                f"the store at {location} keeps {store.replicas} cop{'y' if store.replicas == 1 else 'ies'} of"
                f" each key, not {replicas}; change that first: dhtcart set-replicas --data {location} {replicas}"
            )
    finally:
        store.close()
    return None


def _exit_code(report: CheckReport, run: VerifyRun | None) -> int:
    if report.valid is not True:
        return EXIT_NOT_LINEARIZABLE
    if run is not None and run.rebalance_blocked:
        return EXIT_BUSY
    if run is not None and run.client_failures:
        return EXIT_RUN_FAILED
    return EXIT_LINEARIZABLE


class _Status:
    """Progress lines on stderr while a run goes (a rich spinner when available)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._status: Any = None
        if quiet or not sys.stderr.isatty():
            return
        try:
            from rich.console import Console
        except ImportError:
            return
        self._status = Console(stderr=True).status("dhtcart verify")
        self._status.start()

    def __call__(self, text: str) -> None:
        if self._status is not None:
            self._status.update(text)
        elif not self.quiet:
            print(f"dhtcart verify: {text}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


# -- rendering --------------------------------------------------------------------------


def _verdict(report: CheckReport) -> tuple[str, str]:
    if report.valid is True:
        return "LINEARIZABLE", "bold green"
    if report.valid is None:
        keys = ", ".join(str(k) for k in report.undecided[:5])
        return f"UNDECIDED: the search bound was reached on {len(report.undecided)} key(s) ({keys})", "bold yellow"
    total = sum(report.anomaly_counts.values())
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(report.anomaly_counts.items()))
    return f"NOT LINEARIZABLE: {total} anomal{'y' if total == 1 else 'ies'} ({kinds})", "bold red"


def _facts(report: CheckReport, run: VerifyRun | None) -> list[tuple[str, str]]:
    facts = [
        ("operations", f"{report.operations:,} on {report.keys} keys"),
        ("outcomes", f"{report.ok:,} ok, {report.fail:,} fail, {report.info:,} info ({report.open:,} never completed)"),
        ("checked in", f"{report.seconds:.2f} s"),
    ]
    if run is not None:
        rate = report.operations / run.seconds if run.seconds else 0.0
        facts.insert(1, ("clients", f"{run.clients} processes, {rate:,.0f} operations/s"))
        if run.rebalances or run.rebalance_refusals or run.rebalance_errors:
            facts.append(("rebalances", f"{run.rebalances} done, {run.rebalance_refusals} refused (store busy)"))
        if run.pauses or run.pause_errors:
            pauses = f"{run.pauses}"
            if run.kills:
                taken = ", ".join(run.restored) or "none"
                pauses += f" ({run.kills} long enough to fail the shard over; taken out and added back: {taken})"
            facts.append(("shard pauses", pauses))
        facts.append(("history", str(run.history)))
        facts.append(("keys removed", f"{run.keys_removed} of {run.keys}"))
    return facts


def _notes(run: VerifyRun | None) -> list[str]:
    if run is None:
        return []
    notes = []
    if run.rebalance_blocked:
        notes.append(
            "--rebalance did not happen: the store refused every rebalance as busy while the clients had it"
            " open. This store cannot rebalance while other processes use it."
        )
    notes += [f"rebalance: {e}" for e in run.rebalance_errors[:5]]
    notes += [f"pause: {e}" for e in run.pause_errors[:5]]
    notes += [f"client failure: {f}" for f in run.client_failures[:5]]
    return notes


def _render(out: TextIO, report: CheckReport, run: VerifyRun | None, title: str) -> None:
    try:
        from rich.console import Console
    except ImportError:
        _render_plain(out, report, run, title)
        return
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console = Console(file=out, highlight=False)
    table = Table(title=f"dhtcart verify: {title}", title_justify="left", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for name, value in _facts(report, run):
        table.add_row(name, value)
    console.print(table)
    verdict, style = _verdict(report)
    console.print(Text(verdict, style=style))
    for anomaly in report.anomalies[:SHOWN_ANOMALIES]:
        body = Text(anomaly.explanation + "\n")
        for op in anomaly.operations:
            body.append(f"\n  {op}")
        console.print(Panel(body, title=f"{anomaly.kind} on key {anomaly.key}", title_align="left", style="red"))
    hidden = sum(report.anomaly_counts.values()) - min(len(report.anomalies), SHOWN_ANOMALIES)
    if hidden > 0:
        console.print(f"... and {hidden} more (--json lists up to {len(report.anomalies)})")
    for note in _notes(run):
        console.print(Text(note, style="yellow"))


def _render_plain(out: TextIO, report: CheckReport, run: VerifyRun | None, title: str) -> None:
    print(f"dhtcart verify: {title}", file=out)
    for name, value in _facts(report, run):
        print(f"  {name:13} {value}", file=out)
    print(_verdict(report)[0], file=out)
    for anomaly in report.anomalies[:SHOWN_ANOMALIES]:
        _print_anomaly(out, anomaly)
    for note in _notes(run):
        print(note, file=out)


def _print_anomaly(out: TextIO, anomaly: Anomaly) -> None:
    print(f"\n{anomaly.kind} on key {anomaly.key}: {anomaly.explanation}", file=out)
    for op in anomaly.operations:
        print(f"  {op}", file=out)
