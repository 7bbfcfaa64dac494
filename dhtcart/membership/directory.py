"""A membership kept in a directory: ``manifest.json`` beside the shards, processes of one host.

The lease is an exclusive ``flock`` on ``ADMIN``: the kernel drops it the
moment its holder dies. ``LEASE`` keeps the last fencing token handed out
and its holder; ``PROGRESS`` the running migration's keys moved and planned.
The directory's errors are dhtcart's (:func:`_mapped`): a full disk is
:class:`~dhtcart.errors.ShardFull`, a read-only one
:class:`~dhtcart.errors.StoreReadOnly`, anything else
:class:`~dhtcart.errors.ShardUnavailable`, each naming ``membership``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from dhtcart.errors import DHTCartError, LeaseLost, ShardFull, ShardUnavailable, StoreReadOnly
from dhtcart.membership.base import Lease, Membership, MembershipDoc
from dhtcart.settings import MANIFEST

__all__ = ["ADMIN", "LEASE_FILE", "PROGRESS_FILE", "DirectoryMembership"]

ADMIN = "ADMIN"
LEASE_FILE = "LEASE"
PROGRESS_FILE = "PROGRESS"


@contextlib.contextmanager
def _mapped(directory: Path) -> Iterator[None]:
    """The directory's errors as dhtcart's (the one place this medium's are mapped)."""
    try:
        yield
    except DHTCartError:  # ShardUnavailable is an OSError too
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ShardFull("membership", str(directory), f"no room left ({exc}); nothing was changed") from exc
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise StoreReadOnly(
                f"the store's directory {directory} is read-only ({exc}): it can be read, not changed"
            ) from exc
        raise ShardUnavailable("membership", str(directory), str(exc)) from exc


def _write_atomic(path: Path, text: str) -> None:
    """Write ``path`` so that a crash leaves either the old or the new file, whole (0600)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk, say: leave no half-written file behind
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class _FileLease(Lease):
    def __init__(self, fd: int, token: int, holder: str) -> None:
        self._fd: int | None = fd
        self.token = token
        self.holder = holder

    def check(self) -> None:
        if self._fd is None:
            raise LeaseLost("the lease was released")

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # releases the flock


class DirectoryMembership(Membership):
    """``manifest.json`` in ``directory``; the lease is an exclusive flock on ``ADMIN``.

    The manifest is replaced atomically (write, fsync, rename, fsync the
    directory), so a reader sees one whole version. ``LEASE`` keeps the last
    token handed out and its holder.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._dir = Path(directory)
        self.base_dir = self._dir
        self.location = str(self._dir)
        with _mapped(self._dir):
            self._dir.mkdir(parents=True, exist_ok=True)
        self._path = self._dir / MANIFEST

    def load(self) -> MembershipDoc | None:
        with _mapped(self._dir):
            try:
                text = self._path.read_text(encoding="utf-8")
            except FileNotFoundError:
                return None
        return MembershipDoc.from_dict(json.loads(text), str(self._path))

    def create(self, doc: MembershipDoc) -> MembershipDoc:
        current = self.load()
        if current is not None:
            return current
        with _mapped(self._dir):
            _write_atomic(self._path, doc.to_json())
        return doc

    def publish(self, doc: MembershipDoc, lease: Lease) -> None:
        lease.check()
        current = self.load()
        if current is None or doc.epoch != current.epoch + 1:
            raise LeaseLost(f"{self._path}: epoch {doc.epoch} does not follow {current and current.epoch}")
        with _mapped(self._dir):
            _write_atomic(self._path, doc.to_json())

    def try_lease(self, holder: str) -> Lease | None:
        with _mapped(self._dir):
            return self._try_lease(holder)

    def _try_lease(self, holder: str) -> Lease | None:
        fd = os.open(self._dir / ADMIN, os.O_RDWR | os.O_CREAT, 0o600)
        for attempt in range(5):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # lease_holder() probes with a shared lock for a moment: only a refusal that
                # lasts means another rebalancer
                if attempt == 4:
                    os.close(fd)
                    return None
                time.sleep(0.005)
        try:
            token = self._last_token() + 1
            _write_atomic(self._dir / LEASE_FILE, json.dumps({"token": token, "holder": holder}))
        except BaseException:
            os.close(fd)
            raise
        return _FileLease(fd, token, holder)

    def _last_token(self) -> int:
        try:
            return int(json.loads((self._dir / LEASE_FILE).read_text())["token"])
        except FileNotFoundError:
            return 0

    def report_progress(self, epoch: int, moved: int, planned: int) -> None:
        tmp = self._dir / f"{PROGRESS_FILE}.{os.getpid()}.tmp"
        with contextlib.suppress(OSError):  # progress is advice: never fail a rebalance for it
            tmp.write_text(json.dumps([epoch, moved, planned]))
            os.replace(tmp, self._dir / PROGRESS_FILE)

    def progress(self) -> tuple[int, int, int] | None:
        try:
            epoch, moved, planned = json.loads((self._dir / PROGRESS_FILE).read_text())
        except (OSError, ValueError, TypeError):
            return None
        return int(epoch), int(moved), int(planned)

    def lease_holder(self) -> str | None:
        with _mapped(self._dir):
            try:  # a shared lock needs no write access: a read-only store is inspected too
                fd = os.open(self._dir / ADMIN, os.O_RDONLY)
            except FileNotFoundError:
                return None  # no lease was ever taken
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
                    return str(json.loads((self._dir / LEASE_FILE).read_text())["holder"])
                return "another process"
            return None
        finally:
            os.close(fd)
