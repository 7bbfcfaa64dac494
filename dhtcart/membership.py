"""Who is in the ring: the shared membership document, its epoch, and the rebalance lease.

The members, their backend URLs, the ring and any migration in progress are one
:class:`MembershipDoc` whose ``epoch`` grows by one at every change. Every
handle of a store (in any process, on any host) routes with a cached copy and
reloads it when a shard's redirect says it is stale. Three places keep it,
behind one small interface, :class:`Membership`:

:class:`LocalMembership`
    in this process only (``DHTServerStore(shards=5)``);
:class:`DirectoryMembership`
    ``manifest.json`` in the store's directory (processes of one host). The
    lease is an exclusive ``flock`` on ``ADMIN``: the kernel drops it the
    moment its holder dies;
:class:`RedisMembership`
    keys in a Redis database (clients on any host start from its URL). The
    lease is a key with an expiry, renewed by its holder every third of its
    time to live; a holder that dies loses it within ``lease_ttl`` seconds.

Leases carry a **fencing token** that grows with every acquisition; shards
refuse ownership changes and copies from a token older than the newest they
have seen, so a rebalancer whose lease expired (paused, partitioned) can
change nothing once a successor has started.

A new document is published only by the lease holder and only on top of the
epoch it read (compare-and-set), so two writers never interleave.

>>> m = LocalMembership()
>>> m.load() is None
True
>>> doc = m.create(MembershipDoc(1, {"type": "partition"}, {"a": "memory://"}, {"a": 1}, "process"))
>>> lease = m.try_lease("me")
>>> m.publish(doc.next(shards={"a": "memory://", "b": "memory://"}), lease)
>>> m.load().epoch, sorted(m.load().shards)
(2, ['a', 'b'])
>>> m.try_lease("another") is None     # one rebalancer at a time
True
>>> lease.release()
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dhtcart.errors import InvalidInput, LeaseLost, ShardUnavailable, StoreBusy

if TYPE_CHECKING:
    from dhtcart.backends.redis import RedisBackend

__all__ = [
    "DEFAULT_LEASE_TTL",
    "FORMAT",
    "DirectoryMembership",
    "Lease",
    "LocalMembership",
    "Membership",
    "MembershipDoc",
    "RedisMembership",
    "is_url",
    "open_membership",
]

#: the membership document's format (1 was dhtcart 0.1's manifest)
FORMAT = 2
#: seconds a Redis lease lives without renewal
DEFAULT_LEASE_TTL = 5.0

MANIFEST = "manifest.json"
ADMIN = "ADMIN"
LEASE_FILE = "LEASE"
PROGRESS_FILE = "PROGRESS"


@dataclass(frozen=True)
class MembershipDoc:
    """One version of the membership (see the module doc).

    ``shards`` maps names to backend URLs; ``born`` gives the epoch at which
    each shard joined (a shard removed and added again under the same name is
    a new shard: handles reopen it); ``migration`` is ``None`` or
    ``{"ring": <the new ring>, "drop": [names], "since": epoch}``, during which
    ``shards`` lists old and new shards; ``retired`` are shards that left the
    ring and whose data is still to be destroyed.
    """

    epoch: int
    ring: dict[str, Any]
    shards: dict[str, str]
    born: dict[str, int]
    durability: str
    migration: dict[str, Any] | None = None
    retired: dict[str, str] = field(default_factory=dict)
    #: dhtcart 0.1's manifest, read but not yet upgraded (the store upgrades it)
    legacy: bool = False

    def next(self, **changes: Any) -> MembershipDoc:
        """The document of the next epoch, with ``changes``."""
        return replace(self, epoch=self.epoch + 1, legacy=False, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "epoch": self.epoch,
            "durability": self.durability,
            "ring": self.ring,
            "shards": self.shards,
            "born": self.born,
            "migration": self.migration,
            "retired": self.retired,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> MembershipDoc:
        fmt = data.get("format")
        if fmt == 1:  # dhtcart 0.1: no epoch, a journal instead of a migration
            if data.get("journal"):
                raise StoreBusy(
                    f"{where}: a rebalance of dhtcart 0.1 is unfinished; finish it with that version"
                    " (open the store once), then open it with this one"
                )
            shards = dict(data["shards"])
            return cls(
                0, dict(data["ring"]), shards, dict.fromkeys(shards, 0), data.get("durability", "process"), legacy=True
            )
        if fmt != FORMAT:
            raise InvalidInput("location", f"{where}: unsupported membership format {fmt!r}")
        return cls(
            epoch=int(data["epoch"]),
            ring=dict(data["ring"]),
            shards=dict(data["shards"]),
            born={k: int(v) for k, v in data["born"].items()},
            durability=data.get("durability", "process"),
            migration=data.get("migration"),
            retired=dict(data.get("retired") or {}),
        )


class Lease(ABC):
    """The right to change the membership and move data, with its fencing token."""

    token: int
    holder: str

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`~dhtcart.errors.LeaseLost` if the lease is no longer held."""

    @abstractmethod
    def release(self) -> None:
        """Give the lease up. Idempotent."""

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Membership(ABC):
    """Where a store's membership document and lease live."""

    #: where it is, for messages (a directory, a URL with any password masked)
    location: str
    #: the directory relative shard paths are taken in, if any
    base_dir: Path | None = None

    @abstractmethod
    def load(self) -> MembershipDoc | None:
        """The current document, or ``None`` if the store does not exist yet."""

    @abstractmethod
    def create(self, doc: MembershipDoc) -> MembershipDoc:
        """Store ``doc`` as the first document unless one exists; return the one stored."""

    @abstractmethod
    def publish(self, doc: MembershipDoc, lease: Lease) -> None:
        """Replace the document with ``doc`` (whose epoch must be the current one + 1).

        Only while ``lease`` is held; raises :class:`~dhtcart.errors.LeaseLost`
        otherwise, or if another document was published meanwhile.
        """

    @abstractmethod
    def try_lease(self, holder: str) -> Lease | None:
        """Take the rebalance lease now, or return ``None`` if another holds it."""

    def lease_holder(self) -> str | None:
        """Who holds the lease, when that can be told (for ``dhtcart stats``)."""
        return None

    @abstractmethod
    def report_progress(self, epoch: int, moved: int, planned: int) -> None:
        """Tell every handle how far the migration of ``epoch`` has gone (best effort: not durable)."""

    @abstractmethod
    def progress(self) -> tuple[int, int, int] | None:
        """``(epoch, keys moved, keys planned)`` of the last report, or ``None``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the membership holds open. Idempotent."""


def holder_name() -> str:
    """``pid@host``: who takes a lease, for messages."""
    return f"{os.getpid()}@{socket.gethostname()}"


# -- in this process -----------------------------------------------------------------------


class _LocalLease(Lease):
    def __init__(self, owner: LocalMembership, token: int, holder: str) -> None:
        self._owner = owner
        self.token = token
        self.holder = holder
        self._held = True

    def check(self) -> None:
        if not self._held:
            raise LeaseLost("the lease was released")

    def release(self) -> None:
        if self._held:
            self._held = False
            self._owner._lock.release()


class LocalMembership(Membership):
    """The document of a store that lives in one process."""

    def __init__(self) -> None:
        self.location = "memory"
        self._doc: MembershipDoc | None = None
        self._lock = threading.Lock()
        self._tokens = 0
        self._holder: str | None = None

    def load(self) -> MembershipDoc | None:
        return self._doc

    def create(self, doc: MembershipDoc) -> MembershipDoc:
        if self._doc is None:
            self._doc = doc
        return self._doc

    def publish(self, doc: MembershipDoc, lease: Lease) -> None:
        lease.check()
        current = self._doc
        if current is None or doc.epoch != current.epoch + 1:
            raise LeaseLost(f"membership epoch {doc.epoch} does not follow {current and current.epoch}")
        self._doc = doc

    def try_lease(self, holder: str) -> Lease | None:
        if not self._lock.acquire(blocking=False):
            return None
        self._tokens += 1
        self._holder = holder
        return _LocalLease(self, self._tokens, holder)

    def lease_holder(self) -> str | None:
        return self._holder if self._lock.locked() else None

    def report_progress(self, epoch: int, moved: int, planned: int) -> None:
        self._progress = (epoch, moved, planned)

    def progress(self) -> tuple[int, int, int] | None:
        return getattr(self, "_progress", None)


# -- a directory ---------------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    """Write ``path`` so that a crash leaves either the old or the new file, whole (0600)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
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
        self._dir.mkdir(parents=True, exist_ok=True)
        self._path = self._dir / MANIFEST

    def load(self) -> MembershipDoc | None:
        try:
            text = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        return MembershipDoc.from_dict(json.loads(text), str(self._path))

    def create(self, doc: MembershipDoc) -> MembershipDoc:
        current = self.load()
        if current is not None:
            return current
        _write_atomic(self._path, doc.to_json())
        return doc

    def publish(self, doc: MembershipDoc, lease: Lease) -> None:
        lease.check()
        current = self.load()
        if current is None or doc.epoch != current.epoch + 1:
            raise LeaseLost(f"{self._path}: epoch {doc.epoch} does not follow {current and current.epoch}")
        _write_atomic(self._path, doc.to_json())

    def try_lease(self, holder: str) -> Lease | None:
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
        fd = os.open(self._dir / ADMIN, os.O_RDWR | os.O_CREAT, 0o600)
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


# -- a Redis database ----------------------------------------------------------------------

# KEYS[1] document, KEYS[2] epoch; ARGV[1] document, ARGV[2] epoch. SET both if absent.
_LUA_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('GET', KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
return false
"""

# KEYS[1] document, KEYS[2] epoch, KEYS[3] lease; ARGV[1] document, ARGV[2] its
# epoch, ARGV[3] the lease value. {1} done, {0, why} refused.
_LUA_PUBLISH = """
if redis.call('GET', KEYS[3]) ~= ARGV[3] then return {0, 'lease'} end
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current + 1 ~= tonumber(ARGV[2]) then return {0, 'epoch ' .. current} end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
return {1}
"""

# KEYS[1] lease; ARGV[1] value, ARGV[2] ttl in ms. Extend if still ours.
_LUA_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] lease; ARGV[1] value. Delete if still ours.
_LUA_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class _RedisLease(Lease):
    def __init__(self, owner: RedisMembership, token: int, holder: str, ttl: float) -> None:
        self._owner = owner
        self.token = token
        self.holder = holder
        self.value = f"{token} {holder}"
        self._ttl = ttl
        self._lost: str | None = None
        self._stop = threading.Event()
        self._renewed = time.monotonic()
        self._thread = threading.Thread(target=self._renew, name=f"dhtcart-lease-{token}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        backend = self._owner._backend
        ms = str(max(int(self._ttl * 1000), 1))
        while not self._stop.wait(self._ttl / 3):
            try:
                ok = backend.execute(backend.client.eval, _LUA_RENEW, 1, self._owner._lease_key, self.value, ms)
            except ShardUnavailable:
                ok = None
            now = time.monotonic()
            if ok == 1:
                self._renewed = now
            elif ok == 0:
                self._lost = "another rebalancer holds it now"
                return
            elif now - self._renewed > self._ttl:
                self._lost = f"it could not be renewed for {self._ttl:g} s (the membership database is unreachable)"
                return

    def check(self) -> None:
        if self._lost is not None:
            raise LeaseLost(f"lease {self.token} lost: {self._lost}")
        if time.monotonic() - self._renewed > self._ttl:
            raise LeaseLost(f"lease {self.token} lost: not renewed for {self._ttl:g} s")
        if self._stop.is_set():
            raise LeaseLost("the lease was released")

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=self._ttl)
        backend = self._owner._backend
        with contextlib.suppress(ShardUnavailable):
            backend.execute(backend.client.eval, _LUA_RELEASE, 1, self._owner._lease_key, self.value, wrote=True)


class RedisMembership(Membership):
    """The document in a Redis database: ``redis://host:port/db?prefix=...`` (default prefix ``dhtcart:``).

    Keys (under the URL's prefix): ``membership`` (the JSON document),
    ``membership:epoch``, ``lease`` (``"<token> <holder>"`` with an expiry),
    ``lease:token`` (the last token handed out) and ``progress`` (the running
    migration's keys moved and planned). When the database cannot be
    reached, loading or publishing raises
    :class:`~dhtcart.errors.ShardUnavailable` naming it; handles keep routing
    with the document they have.
    """

    def __init__(self, url: str, *, lease_ttl: float = DEFAULT_LEASE_TTL, timeout: float | None = None) -> None:
        from dhtcart.backends.redis import RedisBackend  # the [redis] extra; it parses the URL

        if not lease_ttl > 0:
            raise InvalidInput("lease_ttl", f"must be a positive number of seconds, got {lease_ttl!r}")
        self._backend: RedisBackend = RedisBackend.from_url(url, name="membership", timeout=timeout)
        self.location = self._backend.url
        self.lease_ttl = float(lease_ttl)
        pfx = self._backend.prefix
        self._doc_key = f"{pfx}membership"
        self._epoch_key = f"{pfx}membership:epoch"
        self._lease_key = f"{pfx}lease"
        self._token_key = f"{pfx}lease:token"
        self._progress_key = f"{pfx}progress"

    def _call(self, fn: Any, *args: Any, wrote: bool = False) -> Any:
        return self._backend.execute(fn, *args, wrote=wrote)

    def load(self) -> MembershipDoc | None:
        raw = self._call(self._backend.client.get, self._doc_key)
        return None if raw is None else MembershipDoc.from_dict(json.loads(raw), self.location)

    def create(self, doc: MembershipDoc) -> MembershipDoc:
        client = self._backend.client
        existing = self._call(
            client.eval, _LUA_CREATE, 2, self._doc_key, self._epoch_key, doc.to_json(), str(doc.epoch), wrote=True
        )
        return doc if existing is None else MembershipDoc.from_dict(json.loads(existing), self.location)

    def publish(self, doc: MembershipDoc, lease: Lease) -> None:
        lease.check()
        assert isinstance(lease, _RedisLease)
        client = self._backend.client
        reply = self._call(
            client.eval,
            _LUA_PUBLISH,
            3,
            self._doc_key,
            self._epoch_key,
            self._lease_key,
            doc.to_json(),
            str(doc.epoch),
            lease.value,
            wrote=True,
        )
        if reply[0] != 1:
            why = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
            raise LeaseLost(f"{self.location}: cannot publish epoch {doc.epoch} ({why})")

    def try_lease(self, holder: str) -> Lease | None:
        client = self._backend.client
        if self._call(client.exists, self._lease_key):
            return None
        token = int(self._call(client.incr, self._token_key, wrote=True))
        value = f"{token} {holder}"
        ms = max(int(self.lease_ttl * 1000), 1)
        if not self._call(lambda: client.set(self._lease_key, value, px=ms, nx=True), wrote=True):
            return None
        return _RedisLease(self, token, holder, self.lease_ttl)

    def lease_holder(self) -> str | None:
        raw = self._call(self._backend.client.get, self._lease_key)
        return None if raw is None else raw.decode().partition(" ")[2]

    def report_progress(self, epoch: int, moved: int, planned: int) -> None:
        client = self._backend.client
        value = json.dumps([epoch, moved, planned])
        with contextlib.suppress(ShardUnavailable):  # progress is advice: never fail a rebalance for it
            self._call(lambda: client.set(self._progress_key, value, ex=3600), wrote=True)

    def progress(self) -> tuple[int, int, int] | None:
        raw = self._call(self._backend.client.get, self._progress_key)
        if raw is None:
            return None
        epoch, moved, planned = json.loads(raw)
        return int(epoch), int(moved), int(planned)

    def close(self) -> None:
        self._backend.close()


def is_url(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names a membership database (``redis://``, ``rediss://``), not a directory."""
    text = os.fspath(location)
    return isinstance(text, str) and text.startswith(("redis://", "rediss://"))


def open_membership(location: str | os.PathLike[str], *, lease_ttl: float = DEFAULT_LEASE_TTL) -> Membership:
    """The membership at ``location``: a ``redis://``/``rediss://`` URL, or a directory."""
    if is_url(location):
        return RedisMembership(str(os.fspath(location)), lease_ttl=lease_ttl)
    return DirectoryMembership(location)
