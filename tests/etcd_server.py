"""Real etcd clusters for tests and benchmarks (not a test module).

``find_etcd_binary()`` looks for ``$DHTCART_ETCD_SERVER``, then ``etcd`` on
``PATH`` (Debian's package ``etcd-server``). ``EtcdCluster`` starts ``size``
members (three by default) on free ports of 127.0.0.1, each in a directory of
the caller's (usually a pytest ``tmp_path``), waits until they have elected a
leader, and lets a test kill (SIGKILL), pause (SIGSTOP), resume and restart
any member; every process it starts is killed when the interpreter exits::

    with EtcdCluster(tmp_path) as cluster:
        store = DHTServerStore.open(cluster.url("carts"), shards={...})
        cluster.leader().kill()

It talks to the members through the gRPC gateway's JSON API with the standard
library only, so it needs no client library.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.redis_server import _die_with_parent, _pdeathsig_safe, free_port

__all__ = ["EtcdCluster", "EtcdError", "EtcdMember", "find_etcd_binary"]

ENV_VAR = "DHTCART_ETCD_SERVER"
START_TIMEOUT = 30.0  # seconds for a cluster to elect its first leader (a loaded machine)


class EtcdError(RuntimeError):
    """The etcd binary is missing, or a member did not start or answer in time."""


def find_etcd_binary() -> str | None:
    """The path of an ``etcd`` binary, or ``None``. ``DHTCART_ETCD_SERVER`` wins; one that names no
    executable is an error (a misconfiguration should not silently test another server)."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        found = configured if os.access(configured, os.X_OK) else shutil.which(configured)
        if not found:
            raise EtcdError(f"{ENV_VAR}={configured!r} is not an executable file")
        return found
    return shutil.which("etcd")


_LIVE: set[EtcdMember] = set()


@atexit.register
def _kill_all() -> None:
    for member in list(_LIVE):
        member.kill()


class EtcdMember:
    """One etcd process of a cluster (see :class:`EtcdCluster`)."""

    def __init__(self, cluster: EtcdCluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.name = f"m{index}"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.directory = cluster.directory / self.name
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{'https' if self.cluster.tls else 'http'}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.cluster.directory / f"{self.name}.log"

    def _args(self, state: str) -> list[str]:
        cluster = self.cluster
        args = [
            cluster.binary,
            "--name", self.name,
            "--data-dir", str(self.directory),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", ",".join(f"{m.name}={m.peer_url}" for m in cluster.members),
            "--initial-cluster-token", cluster.token,
            "--initial-cluster-state", state,
            "--heartbeat-interval", str(cluster.heartbeat_ms),
            "--election-timeout", str(cluster.election_ms),
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]  # fmt: skip
        if cluster.tls is not None:
            cert, key = cluster.tls
            args += ["--cert-file", str(cert), "--key-file", str(key)]
        return args + cluster.extra_args

    def start(self, state: str = "new") -> EtcdMember:
        """Start the process (``state``: ``new`` the first time, ``existing`` after)."""
        if self.running:
            return self
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self._args(state),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent if _pdeathsig_safe() else None,
            )
        self.paused = False
        _LIVE.add(self)
        return self

    def kill(self) -> None:
        """SIGKILL the member, as a crash would. Idempotent."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        self.process = None
        self.paused = False
        _LIVE.discard(self)

    def pause(self) -> None:
        """SIGSTOP: the member keeps its sockets but answers nothing."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
            self.paused = False

    def restart(self) -> EtcdMember:
        """Start the member again on its ports and data (after :meth:`kill`)."""
        self.kill()
        return self.start("existing")

    def call(self, path: str, body: dict[str, Any] | None = None, timeout: float = 2.0) -> dict[str, Any]:
        """POST to the member's gateway (``/v3/<path>``); the JSON reply."""
        request = urllib.request.Request(
            f"{self.client_url}/v3/{path}",
            data=json.dumps(body or {}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout, context=self.cluster.ssl_context()) as reply:
            result: dict[str, Any] = json.loads(reply.read())
            return result

    def status(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """The member's status (``leader``, ``header.member_id``...), or ``None`` if it does not answer."""
        if not self.running or self.paused:
            return None
        try:
            return self.call("maintenance/status", timeout=timeout)
        except (OSError, ValueError):
            return None

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "stopped"
        return f"<EtcdMember {self.name} {self.endpoint} {state}>"


class EtcdCluster:
    """``size`` etcd members on loopback ports, in ``directory`` (see the module doc).

    ``heartbeat_ms`` and ``election_ms`` are etcd's ``--heartbeat-interval``
    and ``--election-timeout`` (etcd's defaults, 100 and 1000 ms: the tests
    run on a loaded two-core machine, where shorter ones elect for nothing).
    ``tls=(cert, key)`` serves clients over TLS with that certificate.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        size: int = 3,
        *,
        binary: str | None = None,
        heartbeat_ms: int = 100,
        election_ms: int = 1000,
        tls: tuple[Path, Path] | None = None,
        ca_cert: Path | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        found = binary or find_etcd_binary()
        if not found:
            raise EtcdError(f"no etcd binary: install etcd-server (apt-get install etcd-server) or set {ENV_VAR}")
        self.binary = found
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.tls = tls
        self.ca_cert = ca_cert
        self.extra_args = list(extra_args or [])
        self.token = f"dhtcart-test-{uuid.uuid4().hex[:12]}"
        self.members: list[EtcdMember] = []
        self.members = [EtcdMember(self, i) for i in range(size)]

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        return ssl.create_default_context(cafile=str(self.ca_cert) if self.ca_cert else None)

    @property
    def endpoints(self) -> str:
        """``127.0.0.1:p1,127.0.0.1:p2,...``: every member's client endpoint."""
        return ",".join(m.endpoint for m in self.members)

    def url(self, prefix: str = "dhtcart", **query: str) -> str:
        """The membership location ``etcd://<every member>/<prefix>`` (``etcds://`` with TLS)."""
        tail = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
        return f"{'etcds' if self.tls else 'etcd'}://{self.endpoints}/{prefix}{tail}"

    def start(self, timeout: float = START_TIMEOUT) -> EtcdCluster:
        """Start every member and wait until they have a leader."""
        for member in self.members:
            member.start("new")
        try:
            self.wait_leader(timeout)
        except EtcdError:
            self.stop()
            raise
        return self

    def leader(self, timeout: float = START_TIMEOUT) -> EtcdMember:
        """The member that leads now (waiting, at most ``timeout`` s, for an election to end)."""
        return self.wait_leader(timeout)

    def wait_leader(self, timeout: float = START_TIMEOUT, among: list[EtcdMember] | None = None) -> EtcdMember:
        """Wait until the live members agree on a live leader; return it."""
        deadline = time.monotonic() + timeout
        candidates = among if among is not None else self.members
        while True:
            by_id: dict[str, EtcdMember] = {}
            leaders = set()
            for member in candidates:
                status = member.status(timeout=1.0)
                if status is None:
                    continue
                by_id[str(status["header"]["member_id"])] = member
                leaders.add(str(status.get("leader", "0")))
            if len(leaders) == 1:
                leader_id = leaders.pop()
                if leader_id in by_id:
                    return by_id[leader_id]
            if time.monotonic() > deadline:
                raise EtcdError(f"no leader among {candidates} within {timeout:g} s: {self._diagnostics()}")
            time.sleep(0.05)

    def followers(self) -> list[EtcdMember]:
        leader = self.leader()
        return [m for m in self.members if m is not leader and m.running]

    def _diagnostics(self) -> str:
        text = ""
        for member in self.members:
            with contextlib.suppress(OSError):
                text += f"\n--- {member.name}:\n" + member.log_path.read_text(errors="replace")[-1500:]
        return text

    def stop(self) -> None:
        """Kill every member (SIGCONT first for a paused one). Idempotent."""
        for member in self.members:
            if member.paused:
                member.resume()
            member.kill()

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<EtcdCluster {self.members}>"


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``predicate()`` until it is truthy (return it) or ``timeout`` s pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)
