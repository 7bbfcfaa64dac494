"""A membership kept in a directory: ``manifest.json`` beside the shards, processes of one host.

The lease is an exclusive ``flock`` on ``ADMIN``: the kernel drops it the
moment its holder dies. ``LEASE`` keeps the last fencing token handed out
and its holder; ``PROGRESS`` the running migration's keys moved and planned.

The directory is made only by the methods that write (:meth:`~DirectoryMembership.create`,
:meth:`~DirectoryMembership.try_lease`): reading a location where there is no
store creates nothing. The medium's errors become dhtcart's in one place
(:func:`_mapped`): a location that is a file (or lies under one) is
:class:`~dhtcart.errors.InvalidInput`, a directory this process may read but
not write is :class:`~dhtcart.errors.StoreReadOnly`, a full disk
:class:`~dhtcart.errors.ShardFull`, anything else
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

from dhtcart.errors import (
    CorruptData,
    DHTCartError,
    InvalidInput,
    LeaseLost,
    ShardFull,
    ShardUnavailable,
    StoreReadOnly,
)
from dhtcart.membership.base import Lease, Membership, MembershipDoc
from dhtcart.settings import MANIFEST

__all__ = ["ADMIN", "LEASE_FILE", "PROGRESS_FILE", "DirectoryMembership"]

ADMIN = "ADMIN"
LEASE_FILE = "LEASE"
PROGRESS_FILE = "PROGRESS"


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


#: the errors of a medium that refuses to be written (permissions, a read-only file system)
_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)


def _not_a_directory(path: Path) -> InvalidInput | None:
    """The error for a location that is a file or lies under one, if it does."""
    for candidate in (path, *path.parents):
        try:
            if not candidate.exists():
                continue
        except OSError:
            return None  # not ours to tell: the caller's own access reports it
        if candidate.is_dir():
            return None
        where = "is a file" if candidate == path else f"lies under {candidate}, which is a file"
        return InvalidInput("location", f"{path} {where}: a store's location is a directory (made if missing)")
    return None


@contextlib.contextmanager
def _mapped(directory: Path, what: str = "read it") -> Iterator[None]:
    """The directory's errors as dhtcart's, while doing ``what`` (the one place this medium's are mapped)."""
    try:
        yield
    except DHTCartError:  # ShardUnavailable is an OSError too
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ShardFull("membership", str(directory), f"cannot {what}: no room left ({exc.strerror})") from exc
        if exc.errno in _READ_ONLY:
            raise StoreReadOnly(
                f"store {directory} is read-only for this process: cannot {what} ({exc.strerror})"
            ) from exc
        bad = _not_a_directory(directory) if exc.errno in (errno.EEXIST, errno.ENOTDIR) else None
        if bad is not None:
            raise bad from exc
        raise ShardUnavailable("membership", str(directory), f"cannot {what}: {exc}") from exc


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
        bad = _not_a_directory(self._dir)
        if bad is not None:
            raise bad
        self._path = self._dir / MANIFEST

    def _make_dir(self) -> None:
        with _mapped(self._dir, "make its directory"):
            self._dir.mkdir(parents=True, exist_ok=True)

    def load(self) -> MembershipDoc | None:
        with _mapped(self._dir, f"read its {MANIFEST}"):
            try:
                text = self._path.read_text(encoding="utf-8")
            except FileNotFoundError:
                return None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise CorruptData(f"{self._path} is not a membership document ({exc}); restore it from a backup") from exc
        return MembershipDoc.from_dict(data, str(self._path))

    def create(self, doc: MembershipDoc) -> MembershipDoc:
        current = self.load()
        if current is not None:
            return current
        self._make_dir()
        with _mapped(self._dir, f"write its {MANIFEST}"):
            _write_atomic(self._path, doc.to_json())
        return doc

    def publish(self, doc: MembershipDoc, lease: Lease) -> None:
        lease.check()
        current = self.load()
        if current is None or doc.epoch != current.epoch + 1:
            raise LeaseLost(f"{self._path}: epoch {doc.epoch} does not follow {current and current.epoch}")
        with _mapped(self._dir, f"write its {MANIFEST}"):
            _write_atomic(self._path, doc.to_json())

    def try_lease(self, holder: str) -> Lease | None:
        self._make_dir()
        with _mapped(self._dir, "take its rebalance lease"):
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
            with _mapped(self._dir, "take its rebalance lease"):
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
        with _mapped(self._dir, "see who holds its lease"):
            try:  # a shared flock needs only a descriptor open for reading: a read-only store too
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
