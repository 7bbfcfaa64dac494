"""HTTP benchmark: add, list and checkout beside a no-op route, through ``dhtcart serve``.

    python benchmarks/http_bench.py                      # 2,000 requests per cell, 1/8/32 connections
    python benchmarks/http_bench.py --requests 5000 --concurrency 1 8 32 64 --workers 2
    python benchmarks/http_bench.py --markdown docs/http-bench.md
    python benchmarks/http_bench.py --concurrency 8 --no-metrics  # the cost of counting, by difference

One ``dhtcart serve`` process (the command a user types, on a fresh LMDB store
in a temporary directory, on a free loopback port) answers every cell of the
run, so the cart routes and the no-op route (``GET /healthz``: FastAPI's floor,
no store access) are measured on the same server, same settings, same minute.

Cells, for each concurrency (open keep-alive connections):

``noop``      ``GET /healthz``
``add``       ``POST /item/{customer}/036000291459``: each request a new customer (a new cart)
``list``      ``GET /items/{customer}``: the carts ``add`` just made (one line each)
``checkout``  ``DELETE /items/{customer}``: one-line carts written beforehand through the library
``post``      ``POST /noop`` with the add's body, on a second server (below): a POST that reads its
              body and answers a response of an add's size and headers, doing nothing else

The ``post`` floor: issue 16 measures an add's server CPU against "a no-op POST
that reads its body". dhtcart has no such route (nor should it, for a
benchmark), so the harness starts a second server for it: this script run with
``--floor-server PORT``, which builds the uvicorn configuration ``dhtcart serve``
builds (:func:`dhtcart.serving.uvicorn_config`: the same HTTP protocol class
with its request timeout and connection limit, the same flags) around an app
that reads the body with the lane's own :func:`~dhtcart.http.binding.read_body`
and answers a fixed response. Only the ``post`` cell goes there; its CPU is
that process's.

Each cell stops after ``--requests`` responses or ``--cap`` seconds, whichever
comes first; it reports requests/s, p50 and p99 latency, and non-2xx answers
(which should be 0).

The client is ``wrk`` (C, event-driven; ``apt-get install wrk``) when it is on
PATH: on a 2-core machine the load generator shares the CPUs with the server,
and wrk costs the least of any client per request, so the server, not the
client, is what saturates. wrk runs a Lua script that stops each of its
threads after its share of the requests and prints a line; once every thread
has, the harness sends wrk SIGINT, so the duration wrk reports is the
duration of exactly those requests. Without wrk the harness falls back to a
small asyncio client (raw HTTP/1.1 over keep-alive sockets; uvloop if
installed), which is heavier: its figures understate the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ITEM = "036000291459"
ADD_BODY = b'{"offeredPrice": 9.99, "itemCount": 1}'
ROUTES = ("noop", "post", "add", "list", "checkout")
#: what the floor server answers: a line as an add answers it, with an add's headers
FLOOR_BODY = (
    b'{"itemId":"036000291459","offeredPrice":9.99,"itemCount":1,"specialSale":false,'
    b'"saleExpiration":null,"expired":false}'
)
GOAL = 0.70  #: add's requests/s against the no-op route's, at 8 connections (issue 10)
CPU_GOAL_US = 70.0  #: issue 16: an add's server CPU at most this, at 8 connections ...
CPU_GOAL_RATIO = 1.5  #: ... and at most this many times the no-op POST's (the post cell)

WRK_SCRIPT = r"""
local mode, quota, prefix, listn
local counter, seen = 0, 0
local next_id = 0
local headers = {["Content-Type"] = "application/json"}
local body = '__ADD_BODY__'

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

function init(args)
  mode, quota, prefix = args[1], tonumber(args[2]), args[3]
end

function request()
  counter = counter + 1
  if mode == "noop" then
    return wrk.format("GET", "/healthz")
  elseif mode == "post" then
    return wrk.format("POST", "/noop", headers, body)
  end
  local customer = prefix .. "-" .. id .. "-" .. counter
  if mode == "add" then
    return wrk.format("POST", "/item/" .. customer .. "/__ITEM__", headers, body)
  elseif mode == "list" then
    return wrk.format("GET", "/items/" .. prefix .. "-" .. id .. "-" .. ((counter - 1) % quota + 1))
  else
    return wrk.format("DELETE", "/items/" .. customer)
  end
end

function response(status, hdrs, resp)
  seen = seen + 1
  if seen == quota then
    io.write("QUOTA\n")
    io.flush()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "us": %d, "p50": %d, "p99": %d, "non2xx": %d, "errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
""".replace("__ADD_BODY__", ADD_BODY.decode()).replace("__ITEM__", ITEM)


@dataclass
class Cell:
    route: str
    concurrency: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


# -- the server -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(
        self,
        data: Path,
        workers: int,
        access_log: bool,
        log: Path,
        thread_pool: bool = False,
        metrics: bool = True,
        kind: str = "dhtcart",
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = None
        if kind == "floor":  # the no-op POST: this script's --floor-server, on dhtcart serve's configuration
            cmd = [sys.executable, str(Path(__file__).resolve()), "--floor-server", str(self.port)]
            self.command = "http_bench.py --floor-server"
        elif kind == "granian":  # the same app (its factory reads DHTCART_*) under granian's own server
            env = dict(
                os.environ,
                DHTCART_DATA=str(data),
                DHTCART_ACCESS_LOG="true" if access_log else "false",
                DHTCART_THREAD_POOL="true" if thread_pool else "false",
                DHTCART_METRICS="true" if metrics else "false",
            )
            script = shutil.which("granian")
            if script is None:
                raise SystemExit("--server granian: granian is not installed (pip install granian)")
            cmd = [script, "--interface", "asgi", "--factory", "--host", "127.0.0.1", "--port", str(self.port)]
            cmd += ["--workers", str(workers), "--no-ws", "--access-log" if access_log else "--no-access-log"]
            cmd += ["--loop", "uvloop", "dhtcart.http:app_from_env"]
            self.command = " ".join(["granian", *cmd[1:]])
        else:
            script = shutil.which("dhtcart")
            cmd = [script] if script else [sys.executable, "-m", "dhtcart"]
            cmd += ["serve", "--port", str(self.port), "--data", str(data), "--workers", str(workers)]
            if not access_log:
                cmd.append("--no-access-log")
            if thread_pool:
                cmd.append("--thread-pool")
            if not metrics:
                cmd.append("--no-metrics")
            self.command = " ".join(["dhtcart", *cmd[cmd.index("serve") :]])
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"dhtcart serve exited: {log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise SystemExit("dhtcart serve did not become ready in 30 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


def serve_floor(port: int) -> int:
    """Serve ``POST /noop`` (read the body, answer :data:`FLOOR_BODY`) as ``dhtcart serve --workers 1`` serves.

    The uvicorn configuration is :func:`dhtcart.serving.uvicorn_config`'s for
    the same settings ``dhtcart serve --no-access-log`` would have; only the app
    differs. The body is read by the lane's own ``read_body``, and the response
    has an add's three headers (length, type, ``ETag``).
    """
    import uvicorn
    from starlette.types import Receive, Scope, Send

    from dhtcart.http.binding import read_body
    from dhtcart.serving import uvicorn_config
    from dhtcart.settings import Settings

    headers = [
        (b"content-length", b"%d" % len(FLOOR_BODY)),
        (b"content-type", b"application/json"),
        (b"etag", b'"1"'),
    ]

    async def floor(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rpartition(".")[2]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        await read_body(receive, 1 << 20)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": FLOOR_BODY})

    config = uvicorn_config(Settings(host="127.0.0.1", port=port, access_log=False))
    config.app, config.factory = floor, False
    uvicorn.Server(config).run()
    return 0


# -- clients ----------------------------------------------------------------------------------


def run_wrk(
    url: str, route: str, concurrency: int, requests: int, prefix: str, cap: float, script: Path
) -> tuple[Cell, int]:
    threads = min(concurrency, os.cpu_count() or 1, 2)
    quota = max(1, requests // threads)
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{max(1, int(cap))}s",
        "--latency",
        "-s",
        str(script),
    ]
    proc = subprocess.Popen([*cmd, url, "--", route, str(quota), prefix], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    finished = 0
    result: dict[str, int] = {}
    for line in proc.stdout:
        if line.startswith("QUOTA"):
            finished += 1
            if finished == threads:
                proc.send_signal(signal.SIGINT)  # every thread is done: stop the clock now
        elif line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
    proc.wait(30)
    if not result:
        raise SystemExit(f"wrk printed no result for {route} at {concurrency}")
    cell = Cell(
        route,
        concurrency,
        result["requests"],
        result["us"] / 1e6,
        result["p50"] / 1000,
        result["p99"] / 1000,
        result["non2xx"],
        result["errors"],
    )
    return cell, threads


async def _python_cell(
    port: int, route: str, concurrency: int, requests: int, prefix: str, cap: float
) -> tuple[Cell, int]:
    quota = max(1, requests // concurrency)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()

    def build(lane: int, n: int) -> bytes:
        host = b"Host: 127.0.0.1\r\n"
        if route == "noop":
            return b"GET /healthz HTTP/1.1\r\n" + host + b"\r\n"
        customer = f"{prefix}-{lane}-{n}"
        if route in ("add", "post"):
            target = "/noop" if route == "post" else f"/item/{customer}/{ITEM}"
            return (
                f"POST {target} HTTP/1.1\r\n".encode()
                + host
                + b"Content-Type: application/json\r\nContent-Length: "
                + str(len(ADD_BODY)).encode()
                + b"\r\n\r\n"
                + ADD_BODY
            )
        if route == "list":
            return f"GET /items/{prefix}-{lane}-{(n - 1) % quota + 1} HTTP/1.1\r\n".encode() + host + b"\r\n"
        return f"DELETE /items/{customer} HTTP/1.1\r\n".encode() + host + b"\r\n"

    async def lane(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for n in range(1, quota + 1):
                start = time.perf_counter()
                writer.write(build(i, n))
                status = int((await reader.readline()).split()[1])
                length = 0
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                latencies.append(time.perf_counter() - start)
                statuses[status] += 1
        finally:
            writer.close()

    start = time.perf_counter()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(lane(i) for i in range(concurrency))), cap)
    seconds = time.perf_counter() - start
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else 0.0

    non2xx = sum(n for s, n in statuses.items() if not 200 <= s < 300)
    return Cell(route, concurrency, len(latencies), seconds, pct(0.50), pct(0.99), non2xx, 0), concurrency


def run_python(port: int, route: str, concurrency: int, requests: int, prefix: str, cap: float) -> tuple[Cell, int]:
    try:
        import uvloop

        return uvloop.run(_python_cell(port, route, concurrency, requests, prefix, cap))  # type: ignore[no-any-return]
    except ImportError:
        return asyncio.run(_python_cell(port, route, concurrency, requests, prefix, cap))


# -- the run -------------------------------------------------------------------------------------


def populate_checkout_carts(data: Path, prefix: str, lanes: int, per_lane: int) -> None:
    """One-line carts for the checkout cell, written through the library beside the server."""
    from dhtcart import CartService

    with CartService.open(data) as carts:
        for lane in range(lanes):
            for n in range(1, per_lane + 1):
                carts.add_item(f"{prefix}-{lane}-{n}", ITEM, "9.99")


def cpu_seconds(root: int) -> float | None:
    """User + system CPU of ``root`` and its descendants (the uvicorn workers), from /proc."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        stats: dict[int, tuple[int, float]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    except (OSError, ValueError):
        return None
    family = {root}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in stats.items():
            if ppid in family and pid not in family:
                family.add(pid)
                grew = True
    return sum(stats[pid][1] for pid in family if pid in stats)


@dataclass
class Row:
    """One route at one concurrency: the median of its rounds."""

    route: str
    concurrency: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float | None  #: server CPU per request
    bad: int


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="responses per cell (default %(default)s)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="connections per cell")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every cell; medians reported (default 3)")
    parser.add_argument("--cap", type=float, default=20.0, help="seconds per cell at most (default %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="dhtcart serve --workers (default %(default)s)")
    parser.add_argument("--access-log", action="store_true", help="keep the per-request log line (off by default)")
    parser.add_argument(
        "--thread-pool", action="store_true", help="dhtcart serve --thread-pool: every store call in a thread"
    )
    parser.add_argument("--no-metrics", action="store_true", help="dhtcart serve --no-metrics (on by default)")
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument(
        "--server",
        choices=["dhtcart", "granian"],
        default="dhtcart",
        help="dhtcart serve (uvicorn, the default), or the same app under granian (its own HTTP server in Rust;"
        " dhtcart serve's request timeouts and connection limits are uvicorn's, so they are not there)",
    )
    parser.add_argument("--markdown", type=Path, help="also write the markdown snippet to this file")
    parser.add_argument("--floor-server", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the post cell's server
    args = parser.parse_args(argv)
    if args.floor_server:
        return serve_floor(args.floor_server)

    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    if client == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not on PATH (apt-get install wrk), or use --client python")

    rows: list[Row] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dhtcart-bench-") as tmp:
        data = Path(tmp) / "data"
        script = Path(tmp) / "bench.lua"
        script.write_text(WRK_SCRIPT)
        server = Server(
            data,
            args.workers,
            args.access_log,
            Path(tmp) / "server.log",
            args.thread_pool,
            not args.no_metrics,
            kind=args.server,
        )
        floor = Server(data, 1, False, Path(tmp) / "floor.log", kind="floor")
        try:

            def cell(route: str, c: int, prefix: str, requests: int) -> tuple[Cell, float | None]:
                to = floor if route == "post" else server
                before = cpu_seconds(to.proc.pid)
                if client == "wrk":
                    result, _ = run_wrk(to.url, route, c, requests, prefix, args.cap, script)
                else:
                    result, _ = run_python(to.port, route, c, requests, prefix, args.cap)
                after = cpu_seconds(to.proc.pid)
                cpu = None if before is None or after is None else (after - before) / max(1, result.requests)
                return result, cpu

            for route in ("noop", "post", "add", "list"):  # warm up: imports, first LMDB pages
                cell(route, 8, "warm", 400)
            for c in args.concurrency:
                lanes = min(c, os.cpu_count() or 1, 2) if client == "wrk" else c
                runs: dict[str, list[tuple[Cell, float | None]]] = {r: [] for r in ROUTES}
                for rnd in range(args.rounds):  # interleaved, so background load hits every route alike
                    populate_checkout_carts(data, f"co{c}r{rnd}", lanes, args.requests // lanes + c + 10)
                    for route in ROUTES:
                        prefix = f"add{c}r{rnd}" if route in ("add", "list") else f"co{c}r{rnd}"
                        result, cpu = cell(route, c, prefix, args.requests)
                        runs[route].append((result, cpu))
                        print(
                            f"  c={c:<3} round {rnd + 1} {route:<9} {result.requests:>6} req "
                            f"{result.rps:>8.0f} req/s  p50 {result.p50_ms:6.2f} ms"
                            f"  p99 {result.p99_ms:7.2f} ms"
                            + (f"  server cpu {cpu * 1e6:5.0f} us/req" if cpu is not None else ""),
                            file=sys.stderr,
                            flush=True,
                        )
                for route in ROUTES:
                    results = [r for r, _ in runs[route]]
                    cpus = [u for _, u in runs[route] if u is not None]
                    rows.append(
                        Row(
                            route,
                            c,
                            sum(r.requests for r in results),
                            statistics.median(r.rps for r in results),
                            statistics.median(r.p50_ms for r in results),
                            statistics.median(r.p99_ms for r in results),
                            statistics.median(cpus) * 1e6 if cpus else None,
                            sum(r.non2xx + r.errors for r in results),
                        )
                    )
        finally:
            server.stop()
            floor.stop()

    load_after = os.getloadavg()
    header = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after",
        "python": platform.python_version(),
        "client": f"wrk {_wrk_version()}" if client == "wrk" else "asyncio (raw HTTP/1.1)",
        "server": server.command
        if args.server != "dhtcart"
        else f"dhtcart serve --workers {args.workers}"
        + ("" if args.access_log else " --no-access-log")
        + (" --thread-pool" if args.thread_pool else "")
        + (" --no-metrics" if args.no_metrics else ""),
        "rounds": str(args.rounds),
    }
    print(render_text(rows, header))
    md = render_markdown(rows, header, argv if argv is not None else sys.argv[1:])
    print(md)
    if args.markdown:
        args.markdown.write_text(md)
    return 0


def _wrk_version() -> str:
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    return out.split(" [")[0].replace("wrk ", "").strip() or "?"


def _ratio(rows: list[Row], row: Row) -> float:
    noop = next(r for r in rows if r.route == "noop" and r.concurrency == row.concurrency)
    return row.rps / noop.rps if noop.rps else 0.0


def _cpu(row: Row) -> str:
    return "-" if row.cpu_us is None else f"{row.cpu_us:.0f}"


def render_text(rows: list[Row], header: dict[str, str]) -> str:
    lines = [f"{k}: {v}" for k, v in header.items()]
    lines.append(
        f"{'conns':>5} {'route':<9} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'vs no-op':>8} {'cpu us':>7} {'non-2xx':>7}"
    )
    for r in rows:
        lines.append(
            f"{r.concurrency:>5} {r.route:<9} {r.requests:>8} {r.rps:>8.0f} {r.p50_ms:>8.2f} "
            f"{r.p99_ms:>8.2f} {_ratio(rows, r):>8.0%} {_cpu(r):>7} {r.bad:>7}"
        )
    goal = cpu_goal(rows)
    return "\n".join(lines) + (goal if goal else "")


def render_markdown(rows: list[Row], header: dict[str, str], argv: list[str]) -> str:
    out = [
        f"HTTP benchmark, {header['date']}: {header['machine']}; Python {header['python']}; "
        f"client {header['client']}; server `{header['server']}`; median of {header['rounds']} "
        "interleaved rounds per cell.",
        "",
        f"Command: `{' '.join(['python benchmarks/http_bench.py', *argv])}`.",
        "",
        "| connections | route | requests | req/s | p50 ms | p99 ms | vs no-op | server CPU µs/req | non-2xx |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        out.append(
            f"| {r.concurrency} | {r.route} | {r.requests:,} | {r.rps:,.0f} | {r.p50_ms:.2f} "
            f"| {r.p99_ms:.2f} | {_ratio(rows, r):.0%} | {_cpu(r)} | {r.bad} |"
        )
    adds = {r.concurrency: _ratio(rows, r) for r in rows if r.route == "add"}
    verdict = ", ".join(f"{ratio:.0%} at {n}" for n, ratio in adds.items())
    if 8 in adds:
        met = "met" if adds[8] >= GOAL else "NOT met"
        out += ["", f"Goal (add >= {GOAL:.0%} of the no-op route's req/s at 8 connections): {met} ({verdict})."]
    out += [cpu_goal(rows)] if cpu_goal(rows) else []
    return "\n".join(out) + "\n"


def cpu_goal(rows: list[Row]) -> str:
    """Issue 16's goal for an add's server CPU at 8 connections, met or not, with the figures."""
    at8 = {r.route: r.cpu_us for r in rows if r.concurrency == 8}
    add, post = at8.get("add"), at8.get("post")
    if add is None or not post:
        return ""
    met = add <= CPU_GOAL_US and add <= CPU_GOAL_RATIO * post
    return (
        f"\nGoal (an add's server CPU <= {CPU_GOAL_US:.0f} µs and <= {CPU_GOAL_RATIO}x the no-op POST's, at 8"
        f" connections): {'met' if met else 'NOT met'} ({add:.0f} µs, {add / post:.2f}x the POST's {post:.0f} µs)."
    )


if __name__ == "__main__":
    sys.exit(main())
