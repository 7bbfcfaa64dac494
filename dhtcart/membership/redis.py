"""A membership kept in a Redis database: clients on any host open the store from its URL.

The database is reached through :mod:`dhtcart.backends.redis.connection`, as
the shards are: the same URL rules, the same connection pool with retries
off, and the same mapping of redis-py's errors (a database that cannot be
reached is :class:`~dhtcart.errors.ShardUnavailable` naming ``membership``).
redis-py is imported when a membership is opened, never by ``import dhtcart``.

The lease is a key with an expiry, renewed by its holder every third of its
time to live; a holder that dies loses it within ``lease_ttl`` seconds.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dhtcart.checks import check_seconds
from dhtcart.errors import CorruptData, DHTCartError, LeaseLost, ShardUnavailable
from dhtcart.membership.base import Lease, Membership, MembershipDoc
from dhtcart.settings import DEFAULT_LEASE_TTL

if TYPE_CHECKING:
    from dhtcart.backends.redis.connection import RedisConnection

__all__ = ["RedisMembership"]


# KEYS[1] document, KEYS[2] epoch; ARGV[1] document, ARGV[2] epoch. SET both if
# absent. Replies the document already there, or nil when this one was written.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('GET', KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
return false
"""

# KEYS[1] document, KEYS[2] epoch, KEYS[3] lease; ARGV[1] document, ARGV[2] its
# epoch, ARGV[3] the lease value. {1} published; {0, why} refused (nothing changed).
_PUBLISH = """
if redis.call('GET', KEYS[3]) ~= ARGV[3] then return {0, 'lease'} end
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current + 1 ~= tonumber(ARGV[2]) then return {0, 'epoch ' .. current} end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
return {1}
"""

# KEYS[1] lease; ARGV[1] value, ARGV[2] ttl in ms. Extend it if still ours: 1, else 0.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] lease; ARGV[1] value. Delete it if still ours: 1, else 0.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: every script of the membership, registered once per connection
_SCRIPTS: Mapping[str, str] = {"create": _CREATE, "publish": _PUBLISH, "renew": _RENEW, "release": _RELEASE}


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
        ms = str(max(int(self._ttl * 1000), 1))
        while not self._stop.wait(self._ttl / 3):
            try:
                ok = self._owner._script("renew", (self._owner._lease_key,), (self.value, ms), wrote=True)
            except ShardUnavailable:
                ok = None
            except DHTCartError as exc:  # the lease key holds what dhtcart did not write
                self._lost = f"it cannot be renewed: {exc}"
                return
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
        with contextlib.suppress(DHTCartError):  # an expiring lease releases itself
            self._owner._script("release", (self._owner._lease_key,), (self.value,), wrote=True)


class RedisMembership(Membership):
    """The document in a Redis database: ``redis://host:port/db?prefix=...`` (default prefix ``dhtcart:``).

    Keys (under the URL's prefix): ``membership`` (the JSON document),
    ``membership:epoch``, ``lease`` (``"<token> <holder>"`` with an expiry),
    ``lease:token`` (the last token handed out) and ``progress`` (the running
    migration's keys moved and planned). When the database cannot be
    reached, loading or publishing raises
    :class:`~dhtcart.errors.ShardUnavailable` naming it; handles keep routing
    with the document they have. A document that does not decode raises
    :class:`~dhtcart.errors.CorruptData`.
    """

    def __init__(self, url: str, *, lease_ttl: float = DEFAULT_LEASE_TTL, timeout: float | None = None) -> None:
        # the [redis] extra, imported when a membership is opened
        from dhtcart.backends.redis.connection import RedisConnection, RedisTarget

        self.lease_ttl = check_seconds("lease_ttl", lease_ttl)
        target = RedisTarget.parse(url, timeout=timeout)
        self._connection: RedisConnection = RedisConnection(target, "membership")
        self._scripts = self._connection.scripts(_SCRIPTS)
        self.location = target.url
        pfx = target.prefix
        self._doc_key = f"{pfx}membership"
        self._epoch_key = f"{pfx}membership:epoch"
        self._lease_key = f"{pfx}lease"
        self._token_key = f"{pfx}lease:token"
        self._progress_key = f"{pfx}progress"

    def _call(self, method: str, *args: Any, wrote: bool = False) -> Any:
        """The client's ``method(*args)``, its errors mapped by the connection."""
        return self._connection.call(getattr(self._connection.client, method), *args, wrote=wrote)

    def _script(self, name: str, keys: tuple[str, ...], args: tuple[str, ...], *, wrote: bool) -> Any:
        """Run the script ``name`` of this module's table (one ``EVALSHA``)."""
        return self._connection.call(self._scripts[name], keys, args, wrote=wrote)

    def _document(self, raw: bytes) -> MembershipDoc:
        """The document stored as ``raw``; :class:`CorruptData` if it does not decode."""
        try:
            data = json.loads(raw)
        except ValueError as exc:  # also UnicodeDecodeError
            raise CorruptData(f"{self.location}: the membership document is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise CorruptData(f"{self.location}: the membership document is not a JSON object")
        try:
            return MembershipDoc.from_dict(data, self.location)
        except DHTCartError:  # an unsupported format, an unfinished 0.1 rebalance: said by from_dict
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptData(f"{self.location}: the membership document is damaged: {exc!r}") from None

    def load(self) -> MembershipDoc | None:
        raw = self._call("get", self._doc_key)
        return None if raw is None else self._document(raw)

    def create(self, doc: MembershipDoc) -> MembershipDoc:
        keys = (self._doc_key, self._epoch_key)
        existing = self._script("create", keys, (doc.to_json(), str(doc.epoch)), wrote=True)
        return doc if existing is None else self._document(existing)

    def publish(self, doc: MembershipDoc, lease: Lease) -> None:
        lease.check()
        assert isinstance(lease, _RedisLease)
        keys = (self._doc_key, self._epoch_key, self._lease_key)
        reply = self._script("publish", keys, (doc.to_json(), str(doc.epoch), lease.value), wrote=True)
        if reply[0] != 1:
            why = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
            raise LeaseLost(f"{self.location}: cannot publish epoch {doc.epoch} ({why})")

    def try_lease(self, holder: str) -> Lease | None:
        if self._call("exists", self._lease_key):
            return None
        token = int(self._call("incr", self._token_key, wrote=True))
        value = f"{token} {holder}"
        ms = max(int(self.lease_ttl * 1000), 1)
        if not self._connection.call(
            lambda: self._connection.client.set(self._lease_key, value, px=ms, nx=True), wrote=True
        ):
            return None
        return _RedisLease(self, token, holder, self.lease_ttl)

    def lease_holder(self) -> str | None:
        raw = self._call("get", self._lease_key)
        return None if raw is None else raw.decode(errors="replace").partition(" ")[2]

    def report_progress(self, epoch: int, moved: int, planned: int) -> None:
        value = json.dumps([epoch, moved, planned])
        with contextlib.suppress(DHTCartError):  # progress is advice: never fail a rebalance for it
            self._connection.call(lambda: self._connection.client.set(self._progress_key, value, ex=3600), wrote=True)

    def progress(self) -> tuple[int, int, int] | None:
        raw = self._call("get", self._progress_key)
        if raw is None:
            return None
        try:
            epoch, moved, planned = json.loads(raw)
            return int(epoch), int(moved), int(planned)
        except (ValueError, TypeError) as exc:
            raise CorruptData(f"{self.location}: the progress record is damaged: {exc}") from None

    def close(self) -> None:
        self._connection.close()
