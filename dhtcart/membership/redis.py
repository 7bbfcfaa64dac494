"""A membership kept in a Redis database: clients on any host open the store from its URL.

The lease is a key with an expiry, renewed by its holder every third of its
time to live; a holder that dies loses it within ``lease_ttl`` seconds.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import TYPE_CHECKING, Any

from dhtcart.errors import InvalidInput, LeaseLost, ShardUnavailable
from dhtcart.membership.base import Lease, Membership, MembershipDoc
from dhtcart.settings import DEFAULT_LEASE_TTL

if TYPE_CHECKING:
    from dhtcart.backends.redis import RedisBackend

__all__ = ["RedisMembership"]


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
