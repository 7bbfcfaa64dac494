"""A real ``dhtcart serve`` process for the end-to-end tests (not a test module itself).

The server is started with the command a user types (``dhtcart serve --port P
--data DIR``; ``python -m dhtcart`` when the script is not on PATH), in a
process group of its own, waited for (at most :data:`READY_TIMEOUT` seconds),
and always stopped in teardown: SIGTERM, then SIGKILL to its whole process
group if it lingers. Every address is on the loopback interface.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from dhtcart.settings import PROMETHEUS_DIR_ENV
from tests.helpers import child_env

READY_TIMEOUT = 20.0


def command() -> list[str]:
    """How to run ``dhtcart``: the installed script, or ``python -m dhtcart``."""
    script = shutil.which("dhtcart")
    return [script] if script else [sys.executable, "-m", "dhtcart"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any ``DHTCART_*`` or Prometheus variable, plus ``extra``."""
    env = {
        k: v
        for k, v in child_env().items()
        if not k.startswith("DHTCART_") and k not in (PROMETHEUS_DIR_ENV, PROMETHEUS_DIR_ENV.lower())
    }
    env.update(extra)
    return env


class Server:
    """One ``dhtcart serve`` process (and its workers, in their own process group)."""

    def __init__(
        self, data: Path, log: Path, *extra: str, env: dict[str, str] | None = None, wait: bool = True
    ) -> None:
        self.data = data
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*command(), "serve", "--port", str(self.port), "--data", str(data), *extra],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env if env is not None else clean_env(),
            start_new_session=True,  # its own process group: teardown can reach the workers too
        )
        if wait:
            self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dhtcart serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"dhtcart serve not ready after {READY_TIMEOUT} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, as a process manager sends it; return the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.terminate(10.0)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # leftover workers, if any
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            self._log.close()


def body(r: Any) -> Any:
    """The response's JSON with numbers read exactly."""
    return json.loads(r.content, parse_float=Decimal)


def assert_error(r: Any, status: int, code: str) -> dict[str, Any]:
    """The one error shape over the wire: ``{"error": {"code", "message", "details"}}``."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message", "details"}, doc
    assert doc["error"]["code"] == code, doc
    return doc["error"]  # type: ignore[no-any-return]
