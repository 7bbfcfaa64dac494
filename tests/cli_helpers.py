"""Running the real ``dhtcart`` command for the CLI tests (not a test module itself).

``run_cli(*args)`` runs ``python -m dhtcart *args`` in a fresh interpreter, with
this tree's ``dhtcart`` and no ``DHTCART_*`` variable of the test's own
environment. Two conditions a user meets and a test cannot fake in-process:

``block=("redis",)``
    the child cannot import those modules, as if their extra were not
    installed: a ``sitecustomize`` on its ``PYTHONPATH`` installs a meta-path
    finder that refuses them (``importlib.util.find_spec`` included);
``read_only=True``
    the child cannot write what the file modes forbid, even when the tests run
    as root: it drops ``CAP_DAC_OVERRIDE``, ``CAP_DAC_READ_SEARCH`` and
    ``CAP_FOWNER`` from its capability bounding set before it executes Python,
    so root obeys the modes like any user (``make_read_only`` sets them).
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.helpers import ROOT, child_env

_BLOCKER = '''\
"""Refuse the modules named in DHTCART_TEST_BLOCK, as if they were not installed."""
import os
import sys

_BLOCKED = {m for m in os.environ.get("DHTCART_TEST_BLOCK", "").split(",") if m}


class _Blocker:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, _Blocker())
'''

_blocker_dir: Path | None = None

# prctl(PR_CAPBSET_DROP, cap): after it, no program this process executes has the capability
_PR_CAPBSET_DROP = 24
_CAPS_THAT_IGNORE_MODES = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER


def _blocker() -> Path:
    """A directory holding the blocking ``sitecustomize`` (made once per test process)."""
    global _blocker_dir
    if _blocker_dir is None:
        _blocker_dir = Path(tempfile.mkdtemp(prefix="dhtcart-blocker-"))
        (_blocker_dir / "sitecustomize.py").write_text(_BLOCKER)
        atexit.register(shutil.rmtree, _blocker_dir, True)
    return _blocker_dir


def _obey_file_modes() -> None:  # pragma: no cover - runs in the child, between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in _CAPS_THAT_IGNORE_MODES:
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def cli_env(**extra: str) -> dict[str, str]:
    """The test's environment without its ``DHTCART_*`` variables, this tree first on the path, plus ``extra``."""
    env = {k: v for k, v in child_env().items() if not k.startswith("DHTCART_")}
    env.update(extra)
    return env


def run_cli(
    *args: str | os.PathLike[str],
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    block: tuple[str, ...] = (),
    read_only: bool = False,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m dhtcart *args`` and return what it did (exit code, stdout, stderr)."""
    environ = dict(env) if env is not None else cli_env()
    if block:
        environ["DHTCART_TEST_BLOCK"] = ",".join(block)
        environ["PYTHONPATH"] = os.pathsep.join([str(_blocker()), environ.get("PYTHONPATH", "")])
    preexec = _obey_file_modes if read_only and os.geteuid() == 0 else None
    return subprocess.run(
        [sys.executable, "-m", "dhtcart", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environ,
        cwd=cwd if cwd is not None else ROOT,
        preexec_fn=preexec,  # the capability drop happens between fork and exec
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``dhtcart: error: ...`` line the command printed (asserting there is nothing else)."""
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("dhtcart: error: "), result.stderr
    return lines[0]


@contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """Every file and directory under ``path`` without write permission, restored afterwards."""
    modes: dict[Path, int] = {}
    for item in [path, *path.rglob("*")]:
        mode = item.stat().st_mode
        modes[item] = mode
        item.chmod(stat.S_IMODE(mode) & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        yield path
    finally:
        for item, mode in modes.items():
            item.chmod(stat.S_IMODE(mode))


def tree(path: Path) -> dict[str, Any]:
    """What a directory holds: every file's bytes and mode (to show that a command changed nothing)."""
    return {
        str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None, p.stat().st_mode)
        for p in sorted(path.rglob("*"))
        if p.name != "lock.mdb"  # LMDB's reader table: a reader registers in it, as readers must
    }


def manifest_epoch(directory: Path) -> int:
    """The epoch of the membership document in ``directory``."""
    return int(json.loads((directory / "manifest.json").read_text())["epoch"])
