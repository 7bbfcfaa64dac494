"""Real faulty media for the fault tests (not a test module itself).

Each helper makes a real medium with a real fault, never a mock: a small
``tmpfs`` that a filler file makes full, a read-only bind mount of a
directory, a small ext4 filesystem in a loop-mounted image (whose inodes come
back soon after they are freed), and a child process that keeps the user id
root but drops every capability (root bypasses permission bits only through
``CAP_DAC_OVERRIDE`` and friends; without them the owner's bits apply, while
the interpreter and its packages, owned by root, stay readable even in a
private ``0700`` directory, which a switch to ``nobody`` could not read). Mounting needs root with
``CAP_SYS_ADMIN`` (what ``.ci/run`` has on a clean Debian machine); without it
the tests that need these skip, which fails under ``CI=true``
(:func:`tests.conftest.skip_or_fail`). Every mount is undone when its ``with``
block ends, lazily if something still holds it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import skip_or_fail
from tests.helpers import child_env

#: the bound on filling a filesystem, in seconds
FILL_TIMEOUT = 60.0


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def _need_root_tools(*tools: str) -> None:
    """Skip (fail under CI) unless this process may mount and has the tools."""
    if os.geteuid() != 0:
        skip_or_fail("mounting a real faulty medium needs root (CI runs as root)")
    for tool in tools:
        if shutil.which(tool) is None:
            skip_or_fail(f"{tool} is not installed (util-linux / e2fsprogs)")


def _mount(*argv: str) -> None:
    done = _run("mount", *argv)
    if done.returncode != 0:
        skip_or_fail(f"mount {' '.join(argv)} failed: {done.stderr.strip()} (needs CAP_SYS_ADMIN)")


def _umount(path: Path) -> None:
    if _run("umount", str(path)).returncode != 0:
        _run("umount", "-l", str(path))  # still held (a process we killed, a late close): detach it


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "8m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (made if needed), unmounted afterwards."""
    _need_root_tools("mount", "umount")
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    try:
        yield path
    finally:
        _umount(path)


@contextlib.contextmanager
def read_only_view(source: Path, view: Path) -> Iterator[Path]:
    """``source`` seen through a read-only bind mount at ``view``: every write there is ``EROFS``,
    for root too."""
    _need_root_tools("mount", "umount")
    view.mkdir(parents=True, exist_ok=True)
    _mount("--bind", str(source), str(view))
    try:
        done = _run("mount", "-o", "remount,ro,bind", str(view))
        if done.returncode != 0:
            skip_or_fail(f"cannot make a read-only bind mount: {done.stderr.strip()}")
        yield view
    finally:
        _umount(view)


@contextlib.contextmanager
def ext4_image(path: Path, size_mb: int = 16, inodes: int = 128) -> Iterator[Path]:
    """A small ext4 filesystem (``inodes`` inodes) in an image file, loop-mounted at ``path``.

    ext4 hands a freed inode to the next file or directory made, so inode
    numbers come back at once (tmpfs numbers only grow).
    """
    _need_root_tools("mount", "umount", "mkfs.ext4")
    image = path.with_name(path.name + ".img")
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    made = _run("mkfs.ext4", "-q", "-F", "-N", str(inodes), str(image))
    if made.returncode != 0:
        skip_or_fail(f"mkfs.ext4 failed: {made.stderr.strip()}")
    path.mkdir(parents=True, exist_ok=True)
    _mount("-o", "loop", str(image), str(path))
    try:
        yield path
    finally:
        _umount(path)
        image.unlink()


def fill(directory: Path, name: str = "filler", *, leave: int = 0) -> Path:
    """Write a file in ``directory`` until its filesystem has no more than ``leave`` bytes of room
    left (none by default); return the file.

    Bounded by the filesystem's size and :data:`FILL_TIMEOUT`; deleting the
    file gives the room back.
    """
    filler = directory / name
    st = os.statvfs(directory)
    bound = st.f_blocks * st.f_frsize // 512 + 16
    deadline = time.monotonic() + FILL_TIMEOUT
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(bound):
            if time.monotonic() > deadline:
                raise AssertionError(f"filling {directory} took more than {FILL_TIMEOUT} s")
            room = free_bytes(directory) - leave
            if room <= 0:
                break
            try:
                os.write(fd, b"\0" * max(512, min(room, 1 << 20)))
            except OSError as exc:
                if exc.errno != errno.ENOSPC or leave:
                    raise
                break
        else:
            raise AssertionError(f"{directory} did not fill up after {bound} writes")
    finally:
        os.close(fd)
    assert free_bytes(directory) <= max(leave, 64 << 10), f"{directory} is not as full as asked"
    return filler


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def run_unprivileged(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code args...`` as root without any capability: permission bits then
    apply (the owner's, root owning the files), as they do to any service account."""
    _need_root_tools("setpriv")
    env = child_env()
    env["HOME"] = "/"
    return subprocess.run(
        [
            "setpriv",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
            sys.executable,
            "-c",
            code,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd="/",
    )
