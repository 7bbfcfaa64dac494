"""Running the HTTP app under uvicorn: what ``dhtcart serve`` does once its settings are read.

:func:`serve` takes a :class:`~dhtcart.settings.Settings` and returns the
process's exit code:

* the port is checked first: in use, or not ours to take, the message says
  which option to change, and the code is :data:`EXIT_STARTUP_FAILED`;
* with several workers, ``PROMETHEUS_MULTIPROC_DIR``
  (:data:`~dhtcart.settings.PROMETHEUS_DIR_ENV`) is pointed at a fresh
  temporary directory for this run (removed at exit), so their metrics add up;
* uvicorn runs :func:`worker_app` in each worker, with
  :class:`GuardedHttpToolsProtocol` as its HTTP protocol: a client must send a
  whole request within ``request_timeout`` seconds of starting it (or of
  connecting), and a worker holds at most ``max_connections`` connections;
* with several workers, :class:`Supervisor` (uvicorn's, plus two things)
  stops with a non-zero code when a worker cannot start, instead of the
  clean-looking exit uvicorn's own supervisor makes, and drops a dead
  worker's live metrics.

Exit codes: 0 after SIGTERM or Ctrl-C (graceful), :data:`EXIT_STARTUP_FAILED`
(3, uvicorn's own) when the server or its workers could not start.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

try:
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.supervisors.multiprocess import Multiprocess
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f'dhtcart.serving needs the server extra ({exc.name} is missing): pip install "dhtcart[server]"'
    ) from exc

from dhtcart.errors import PortUnavailable
from dhtcart.settings import PROMETHEUS_DIR_ENV, Settings

__all__ = [
    "EXIT_STARTUP_FAILED",
    "GuardedHttpToolsProtocol",
    "PortUnavailable",
    "Supervisor",
    "check_port",
    "serve",
    "worker_app",
]

EXIT_STARTUP_FAILED = STARTUP_FAILURE  # 3: what uvicorn itself exits with when it cannot start

logger = logging.getLogger("dhtcart.serve")


def check_port(host: str, port: int) -> None:
    """Bind and release ``host:port`` as uvicorn will, or raise :class:`PortUnavailable` saying what to do."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                why = f"port {port} on {host} is already in use"
            elif exc.errno in (errno.EACCES, errno.EPERM):
                why = f"port {port} on {host} needs privileges this process lacks"
            elif exc.errno == errno.EADDRNOTAVAIL:
                raise PortUnavailable(
                    f"cannot listen on {host}: no such local address ({exc.strerror}); "
                    "choose another with --host (or DHTCART_HOST)"
                ) from None
            else:
                why = f"cannot listen on {host}:{port} ({exc.strerror})"
            raise PortUnavailable(f"{why}: choose another with --port (or DHTCART_PORT)") from None


# -- the worker's side ------------------------------------------------------------------------


def worker_app() -> Any:
    """The app factory each worker runs: :func:`dhtcart.http.app_from_env`, but a failure to
    build it ends the worker with :data:`EXIT_STARTUP_FAILED` (logged), which the supervisor
    reads as "cannot start" rather than as a crash to restart forever."""
    try:
        from dhtcart.http import app_from_env

        return app_from_env()
    except Exception as exc:
        logging.getLogger("dhtcart.serve").error("the worker cannot build the app: %s", exc, exc_info=exc)
        sys.exit(EXIT_STARTUP_FAILED)


_TOO_MANY = (
    b'{"error":{"code":"too_many_connections","message":"this worker holds its limit of open connections; '
    b'try again","details":null}}'
)
_TIMEOUT = (
    b'{"error":{"code":"request_timeout","message":"the request did not arrive in time; the connection is closed",'
    b'"details":null}}'
)


async def _too_many_connections(scope: Any, receive: Any, send: Any) -> None:
    """The app a connection over the limit gets: 503 in dhtcart's error shape, then close."""
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(_TOO_MANY)).encode()),
                (b"retry-after", b"1"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _TOO_MANY})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with two guards dhtcart's settings configure.

    *Stalled clients.* From the moment a connection opens, and from the first
    byte of each request, the client has ``request_timeout`` seconds to send
    the request whole (headers and body). Otherwise it gets ``408`` (when no
    response has started) and the connection is closed; a handler waiting
    for the body sees the client disconnect. Between requests on a
    keep-alive connection, uvicorn's own ``timeout_keep_alive`` applies.

    *Connections.* A worker holds at most ``max_connections``; a connection
    beyond it is answered ``503 too_many_connections`` (``Retry-After: 1``)
    and closed.

    The settings arrive on uvicorn's config (``config.dhtcart``), which
    travels to each worker process with it.
    """

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: Any = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings: Settings = getattr(config, "dhtcart", None) or Settings()
        self._request_timeout = settings.request_timeout
        self._max_connections = settings.max_connections
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            self.app = _too_many_connections
            self.logger.warning(
                "connection refused: %d open, the limit is %d", len(self.connections) - 1, self._max_connections
            )
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self._request_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        self.logger.info(
            "%s - no whole request within %s s: 408, connection closed",
            f"{self.client[0]}:{self.client[1]}" if self.client else "-",
            self._request_timeout,
        )
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TIMEOUT), _TIMEOUT)
            )
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the handler's receive() now says the client is gone
            cycle.message_event.set()
        self.transport.close()


# -- the supervisor's side --------------------------------------------------------------------


class Supervisor(Multiprocess):
    """uvicorn's multi-worker supervisor, which knows why it stopped.

    uvicorn's own returns normally when a worker cannot start (so the
    command exited 0, as after SIGTERM); this one records the signals it was
    asked to stop by, and :attr:`exit_code` is 0 only then. It also drops the
    live metrics of every worker that exits
    (:func:`dhtcart.metrics.forget_dead_workers`: prometheus_client's
    ``mark_process_dead``, as its documentation asks of a supervisor).
    """

    def __init__(self, config: Any, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        self.stopped_by_signal = False

    def handle_int(self) -> None:
        self.stopped_by_signal = True
        super().handle_int()

    def handle_term(self) -> None:
        self.stopped_by_signal = True
        super().handle_term()

    def keep_subprocess_alive(self) -> None:
        before = {p.pid for p in self.processes}
        super().keep_subprocess_alive()
        if before - {p.pid for p in self.processes}:  # some were replaced: they died
            from dhtcart.metrics import forget_dead_workers  # prometheus_client: only once the directory is set

            forget_dead_workers()

    @property
    def exit_code(self) -> int:
        """0 after SIGINT/SIGTERM; :data:`EXIT_STARTUP_FAILED` when it stopped because a worker could not start."""
        return 0 if self.stopped_by_signal else EXIT_STARTUP_FAILED


# -- the run ----------------------------------------------------------------------------------


@contextmanager
def metrics_directory(settings: Settings) -> Iterator[str | None]:
    """A fresh :data:`~dhtcart.settings.PROMETHEUS_DIR_ENV` directory for this run, removed after.

    Only with several workers: one worker counts in its own memory (cheaper
    than prometheus_client's files), and a previous run's directory, or one
    from the caller's environment, is never reused (its counts would carry over).
    """
    if not settings.metrics or settings.workers == 1:
        os.environ.pop(PROMETHEUS_DIR_ENV, None)
        yield None
        return
    path = tempfile.mkdtemp(prefix="dhtcart-metrics-")
    os.environ[PROMETHEUS_DIR_ENV] = path
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def uvicorn_config(settings: Settings, log_config: dict[str, Any] | None = None) -> uvicorn.Config:
    """The uvicorn configuration for these settings (the app is :func:`worker_app`)."""
    config = uvicorn.Config(
        "dhtcart.serving:worker_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        http=GuardedHttpToolsProtocol,
        log_config=log_config,
        log_level=settings.log_level,
        access_log=False,  # dhtcart.access logs each request, with its latency
        timeout_graceful_shutdown=settings.graceful_timeout,  # type: ignore[arg-type]  # uvicorn waits a float fine
        timeout_keep_alive=settings.keep_alive_timeout,
        backlog=settings.backlog,
        server_header=False,
    )
    config.dhtcart = settings  # type: ignore[attr-defined]  # read by GuardedHttpToolsProtocol, in every worker
    return config


def serve(settings: Settings, log_config: dict[str, Any] | None = None) -> int:
    """Run the server until a signal stops it; return the exit code (see the module's docstring).

    The caller has created the store, and put ``settings.to_env()`` in the
    environment for the workers to read.
    """
    check_port(settings.host, settings.port)
    with metrics_directory(settings):
        config = uvicorn_config(settings, log_config)
        if settings.workers == 1:
            server = uvicorn.Server(config)
            server.run()  # a start-up failure raises SystemExit(3) itself
            return 0 if server.started else EXIT_STARTUP_FAILED
        sock = config.bind_socket()
        try:
            supervisor = Supervisor(config, sockets=[sock])
            supervisor.run()
        finally:
            sock.close()
        if supervisor.exit_code:
            logger.error("dhtcart serve: the workers could not start (see above); exiting %d", supervisor.exit_code)
        return supervisor.exit_code
