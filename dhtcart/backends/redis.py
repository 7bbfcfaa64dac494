"""Redis backend: one shard on one Redis (or Valkey) server or database.

Selected by ``redis://[user:password@]host:port/db`` or ``rediss://...`` (TLS).
Works with Redis 7+ and Valkey 8 through redis-py; this is the only dhtcart
module that imports ``redis`` (install the extra: ``pip install "dhtcart[redis]"``).

Layout, under a key prefix (``dhtcart:`` unless ``?prefix=`` says otherwise), so
other data in the same database is never touched:

``<prefix>v:<16 hex digits of the key>``
    a string: the record's version as 8 bytes big-endian, then the value bytes.
``<prefix>idx``
    a sorted set, every member scored 0, each member the key as 16 lowercase hex
    digits. Sorted-set scores are doubles and cannot hold 63-bit keys exactly;
    with equal scores members sort bytewise, and fixed-width big-endian hex sorts
    exactly like the integers, so ``ZRANGEBYLEX idx (lo [hi`` is the range scan
    ``lo < key <= hi``.

``<prefix>own`` and ``<prefix>own:meta``
    the shard's ownership record when a store fences it: a sorted set of one
    member per segment, ``<16 hex digits of its last key>:<state>:<peer>``
    (all scored 0, so ``ZRANGEBYLEX own [<key> + LIMIT 0 1`` finds the segment
    holding a key), and a hash of ``epoch``, ``token`` and ``gen`` (a counter
    bumped at every change).

Every single-key write (put, compare-and-set, delete, conditional delete) is one
Lua script call: one round trip, atomic on the server, record and index updated
together. On a fenced shard a read is a script too, and every script checks the
key's segment before it touches the record: the check and the operation are
one atomic step. A failed compare-and-set raises :class:`~dhtcart.errors.VersionConflict`
and changes nothing. Scripts are sent by SHA1 (``EVALSHA``) and reloaded when the
server answers ``NOSCRIPT`` (after a restart or ``SCRIPT FLUSH``); a ``NOSCRIPT``
reply means the script did not run, so the reload-and-retry is safe.

Failure: a connection refused, reset or timed out (``?timeout=`` seconds, 2 by
default, for connecting and for each reply) raises
:class:`~dhtcart.errors.ShardUnavailable` naming the shard and its address with
the password masked. redis-py's automatic retries are switched off: retrying a
write whose reply was lost could apply it twice. When a write times out after it
was sent, the server has either applied it completely or not at all (the script
is atomic) but the client cannot know which; the reason says so. When the server
comes back, the same backend object works again: the connection pool drops dead
connections and reconnects on the next call.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NoReturn, cast
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    ExecAbortError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from dhtcart.backends.base import BackendContext, Record
from dhtcart.backends.fencing import Change, FencedBackend, Pending, apply_changes
from dhtcart.backends.ownership import STATES, Ownership, Segments
from dhtcart.errors import InvalidInput, LeaseLost, Moved, ShardUnavailable, StoreClosed, VersionConflict

__all__ = ["DEFAULT_PREFIX", "DEFAULT_TIMEOUT", "PASSWORD_ENV", "RedisBackend"]

#: environment variable read for the password when the URL carries none
PASSWORD_ENV = "DHTCART_REDIS_PASSWORD"
#: seconds allowed to connect and for each reply, unless ``?timeout=`` says otherwise
DEFAULT_TIMEOUT = 2.0
#: prefix of every Redis key the backend owns, unless ``?prefix=`` says otherwise
DEFAULT_PREFIX = "dhtcart:"

_KEY_HEX = 16  # 2**63 - 1 is 7fffffffffffffff: 16 hex digits
_MAX_KEY = (1 << 63) - 1
_SCAN_BATCH = 1000  # members per ZRANGEBYLEX + MGET round trip
_DROP_BATCH = 1_000  # records per drop_ranges script call (as in _LUA_RANGES)
_IMPORT_BATCH = 1_000  # records per import script call
_IMPORT_BYTES = 4 << 20  # and about this many bytes: one request stays well inside a server's query buffer

# Server error prefixes meaning "this server cannot take the command now":
# they are reported as ShardUnavailable, and the command was not applied.
_UNAVAILABLE_REPLIES = (
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "READONLY",
    "MISCONF",
    "OOM",
    "NOREPLICAS",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "NOPERM",  # an ACL user without the rights the backend needs
)

_URL_OPTIONS = frozenset(
    {
        "timeout",
        "connect_timeout",
        "prefix",
        "max_connections",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_certfile",
        "ssl_keyfile",
    }
)

# Versions are 8-byte big-endian unsigned integers, packed and unpacked with the
# ``struct`` library that Redis and Valkey load into their Lua. Lua numbers are
# doubles, exact up to 2**53, which no version reaches by counting writes one by
# one. Scripts read only the 8 version bytes (GETRANGE), never copy the value.

# The ownership check shared by the single-key scripts: KEYS[3] is the
# ownership sorted set, KEYS[4] its hash. Returns false when the operation may
# go on, else the redirect {-1, epoch, state, peer}. A missing record owns nothing.
_LUA_FENCE = """
local function refused(member, write)
  local seg = redis.call('ZRANGEBYLEX', KEYS[3], '[' .. member, '+', 'LIMIT', 0, 1)[1]
  local state, peer = '-', ''
  if seg then
    state = string.sub(seg, 18, 18)
    peer = string.sub(seg, 20)
  end
  if state == 'o' or (state == 'f' and not write) then return false end
  return {-1, tonumber(redis.call('HGET', KEYS[4], 'epoch') or '0'), state, peer}
end
"""

# KEYS[1] record key, KEYS[2] ownership set (its hash is KEYS[2] .. ':meta'); ARGV[1]
# member. The raw record, nil when absent, or the redirect {-1, epoch, state, peer}.
# (The shortest script of all: a fenced get should cost little more than a GET.)
_LUA_GET = """
local seg = redis.call('ZRANGEBYLEX', KEYS[2], '[' .. ARGV[1], '+', 'LIMIT', 0, 1)[1]
local state, peer = '-', ''
if seg then
  state = string.sub(seg, 18, 18)
  if state == 'o' or state == 'f' then return redis.call('GET', KEYS[1]) end
  peer = string.sub(seg, 20)
end
return {-1, tonumber(redis.call('HGET', KEYS[2] .. ':meta', 'epoch') or '0'), state, peer}
"""

# KEYS[1] record key, KEYS[2] index; ARGV[1] index member, ARGV[2] value,
# ARGV[3] expected version ("" for an unconditional put), ARGV[4] "1" if fenced.
# Returns {1, new_version}, {0, current_version} when the CAS failed, or a redirect.
_LUA_PUT = (
    _LUA_FENCE
    + """
if ARGV[4] == '1' then
  local r = refused(ARGV[1], true)
  if r then return r end
end
local head = redis.call('GETRANGE', KEYS[1], 0, 7)
local current = 0
if head ~= '' then current = struct.unpack('>I8', head) end
if ARGV[3] ~= '' and tonumber(ARGV[3]) ~= current then
  return {0, current}
end
local version = current + 1
redis.call('SET', KEYS[1], struct.pack('>I8', version) .. ARGV[2])
if head == '' then redis.call('ZADD', KEYS[2], 0, ARGV[1]) end
return {1, version}
"""
)

# KEYS[1] record key, KEYS[2] index; ARGV[1] index member, ARGV[2] expected
# version ("" for unconditional), ARGV[3] "1" if fenced. Returns {1, v} deleted,
# {2, 0} absent, {0, current_version} when the condition failed, or a redirect.
_LUA_DELETE = (
    _LUA_FENCE
    + """
if ARGV[3] == '1' then
  local r = refused(ARGV[1], true)
  if r then return r end
end
local head = redis.call('GETRANGE', KEYS[1], 0, 7)
local current = 0
if head ~= '' then current = struct.unpack('>I8', head) end
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= current then
  return {0, current}
end
if head == '' then return {2, 0} end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return {1, current}
"""
)

# KEYS[1] ownership set, KEYS[2] its hash; ARGV[1] the generation the caller
# computed from ("" for a claim: any), ARGV[2] token, ARGV[3] epoch, ARGV[4] "1"
# to skip the token check (a store claiming shards it alone owns), ARGV[5] how
# many members to remove ("all": every member), then the members to remove, then
# the members to add. {1, gen} done, {0, gen} the record changed meanwhile
# (recompute), {-1, token} a newer token was seen: nothing changed.
_LUA_SET_OWNERSHIP = """
local meta = redis.call('HMGET', KEYS[2], 'gen', 'token')
local gen = tonumber(meta[1] or '0')
local token = tonumber(meta[2] or '0')
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= gen then return {0, gen} end
if ARGV[4] ~= '1' and tonumber(ARGV[2]) < token then return {-1, token} end
local first = 6
if ARGV[5] == 'all' then
  redis.call('DEL', KEYS[1])
else
  local n = tonumber(ARGV[5])
  for i = 6, 5 + n do redis.call('ZREM', KEYS[1], ARGV[i]) end
  first = 6 + n
end
for i = first, #ARGV do redis.call('ZADD', KEYS[1], 0, ARGV[i]) end
redis.call('HSET', KEYS[2], 'gen', gen + 1, 'token', ARGV[2], 'epoch', ARGV[3])
return {1, gen + 1}
"""

# KEYS[1] index, KEYS[2] ownership hash; ARGV[1] the generation the caller
# checked the ranges against, ARGV[2] its token, ARGV[3] record-key prefix,
# ARGV[4] "drop", "import" or "add", ARGV[5] how many ranges, then their
# ZRANGEBYLEX bounds (two each), then member, value pairs to write. "drop"
# deletes up to 1000 records of the ranges (call again while it returns 1000);
# "import" deletes all of them, then writes the pairs; "add" only writes them
# (the next part of an import). Returns {deleted, written}; {-1, 0} when the
# ownership changed since the caller's check (check again); {-2, token} when a
# newer rebalancer token was seen (nothing done).
_LUA_RANGES = """
local meta = redis.call('HMGET', KEYS[2], 'gen', 'token')
if tonumber(meta[1] or '0') ~= tonumber(ARGV[1]) then return {-1, 0} end
if tonumber(ARGV[2]) < tonumber(meta[2] or '0') then return {-2, tonumber(meta[2])} end
local nranges = tonumber(ARGV[5])
local mode = ARGV[4]
local drop = mode == 'drop'
local gone = 0
if mode ~= 'add' then
  for r = 0, nranges - 1 do
    local low, high = ARGV[6 + 2 * r], ARGV[7 + 2 * r]
    while true do
      local members = redis.call('ZRANGEBYLEX', KEYS[1], low, high, 'LIMIT', 0, 1000 - (drop and gone or 0))
      if #members == 0 then break end
      for i = 1, #members do
        redis.call('DEL', ARGV[3] .. members[i])
        redis.call('ZREM', KEYS[1], members[i])
      end
      gone = gone + #members
      if drop and gone >= 1000 then return {gone, 0} end
    end
  end
end
local written = 0
for i = 6 + 2 * nranges, #ARGV, 2 do
  redis.call('SET', ARGV[3] .. ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[1], 0, ARGV[i])
  written = written + 1
end
return {gone, written}
"""


def _refused(exc: ResponseError) -> bool:
    """Whether a server error means "cannot take commands now" (nothing was applied)."""
    if isinstance(exc, OutOfMemoryError | ReadOnlyError | NoPermissionError | ExecAbortError):
        return True
    # redis-py strips the error code it maps to a class; older versions keep it
    code = getattr(exc, "status_code", None) or str(exc).split(" ", 1)[0]
    return code in _UNAVAILABLE_REPLIES


def _member(key: int) -> bytes:
    """The index member of ``key``: 16 lowercase hex digits (sorts like the int)."""
    return b"%016x" % key


def _decode(key: int, raw: bytes) -> Record:
    if len(raw) < 8:
        raise RuntimeError(f"key {key}: corrupt record in Redis ({len(raw)} bytes, expected >= 8)")
    return Record(int.from_bytes(raw[:8], "big"), raw[8:])


def _mask_netloc(username: str | None, has_password: bool, host: str, port: int) -> str:
    host_part = f"[{host}]" if ":" in host else host
    if username:
        auth = quote(username, safe="") + (":***" if has_password else "") + "@"
    elif has_password:
        auth = ":***@"
    else:
        auth = ""
    return f"{auth}{host_part}:{port}"


def _positive_float(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(name, f"must be a number of seconds, got {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise InvalidInput(name, f"must be a positive number of seconds, got {value!r}")
    return number


def _segment_member(hi: int, state: str, peer: str) -> bytes:
    return b"%016x:%s:%s" % (hi, state.encode(), peer.encode())


def _members(segments: Segments) -> list[bytes]:
    return [_segment_member(h, s, p) for h, s, p in zip(segments.his, segments.states, segments.peers)]


def _parse_segments(members: Sequence[bytes]) -> Segments:
    rows = []
    for m in members:
        hi, state, peer = m.decode().split(":", 2)
        if state not in STATES:
            raise RuntimeError(f"corrupt ownership segment in Redis: {m!r}")
        rows.append([int(hi, 16), state, peer])
    return Segments.from_list(rows)


def _lex_range(lo: int, hi: int) -> tuple[bytes, bytes]:
    """ZRANGEBYLEX bounds of the index members ``lo < key <= hi``."""
    return (b"-" if lo < 0 else b"(" + _member(lo)), b"[" + _member(hi)


class RedisBackend(FencedBackend):
    """One shard on a Redis or Valkey server (one server or database per shard).

    Open it with :meth:`from_url` (or :func:`dhtcart.backends.open_backend`)::

        backend = RedisBackend.from_url("redis://10.0.0.5:6379/0", name="shard-a")

    Thread-safe: redis-py's connection pool hands each thread its own
    connection. Safe across ``fork()``: the pool notices and reconnects.
    """

    #: the shard's name, used in :class:`ShardUnavailable` messages
    name: str
    #: ``scheme://host:port/db`` with any password masked
    address: str
    #: prefix of every Redis key this backend owns
    prefix: str
    #: seconds allowed to connect and for each reply
    timeout: float
    #: seconds allowed to connect
    connect_timeout: float

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        ssl: bool = False,
        name: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float | None = None,
        prefix: str = DEFAULT_PREFIX,
        max_connections: int | None = None,
        ssl_options: dict[str, str] | None = None,
        url: str | None = None,
        fenced: bool = False,
    ) -> None:
        """Connect lazily to ``host:port`` database ``db``; see :meth:`from_url`.

        ``url`` is only the display form (passwords must already be masked);
        it defaults to one built from the other arguments.
        """
        scheme = "rediss" if ssl else "redis"
        netloc = _mask_netloc(username, password is not None, host, port)
        self.address = f"{scheme}://{_mask_netloc(None, False, host, port)}/{db}"
        self.url = url if url is not None else f"{scheme}://{netloc}/{db}"
        self.name = name if name is not None else self.address
        self.prefix = prefix
        self.fenced = fenced
        self.timeout = _positive_float("timeout", timeout)
        self.connect_timeout = (
            self.timeout if connect_timeout is None else _positive_float("connect_timeout", connect_timeout)
        )
        pool_kwargs: dict[str, Any] = {
            "host": host,
            "port": port,
            "db": db,
            "username": username,
            "password": password,
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.connect_timeout,
            "socket_keepalive": True,
            # No automatic retries: a write whose reply was lost must not be
            # sent again (it may have been applied). The pool still replaces
            # dead connections before handing them out.
            "retry": Retry(NoBackoff(), 0),
            "protocol": 2,
        }
        if max_connections is not None:
            pool_kwargs["max_connections"] = max_connections
        if ssl:
            pool_kwargs["connection_class"] = redis.SSLConnection
            pool_kwargs.update(ssl_options or {})
        self._pool = redis.ConnectionPool(**pool_kwargs)
        self._client = redis.Redis(connection_pool=self._pool)
        pfx = prefix.encode()
        self._record_prefix = pfx + b"v:"
        self._index = pfx + b"idx"
        self._own = pfx + b"own"
        self._own_meta = pfx + b"own:meta"
        self._own_cache: tuple[int, Ownership] = (-1, Ownership.nothing())
        self._scripts: dict[str, str] = {}
        self._script_source = {
            "get": _LUA_GET,
            "put": _LUA_PUT,
            "delete": _LUA_DELETE,
            "set_ownership": _LUA_SET_OWNERSHIP,
            "range": _LUA_RANGES,
        }
        self._script_lock = threading.Lock()
        self._closed = False

    # -- opening -----------------------------------------------------------------

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        context: BackendContext | None = None,
        name: str | None = None,
        timeout: float | None = None,
        connect_timeout: float | None = None,
        prefix: str | None = None,
        max_connections: int | None = None,
    ) -> RedisBackend:
        """Open the shard that ``url`` names.

        ``redis://[user[:password]@]host[:port][/db][?option=value&...]``, or
        ``rediss://`` for TLS. Port 6379 and db 0 by default. When the URL has
        no password, the environment variable ``DHTCART_REDIS_PASSWORD`` is used
        if set. Query options: ``timeout`` (seconds, default 2),
        ``connect_timeout`` (default: ``timeout``), ``prefix`` (default
        ``dhtcart:``), ``max_connections``, and for ``rediss://``
        ``ssl_cert_reqs`` (``required``/``optional``/``none``), ``ssl_ca_certs``,
        ``ssl_certfile``, ``ssl_keyfile``. Keyword arguments override the query.

        ``context`` (from a store) gives the shard's name and fences it.
        Connecting is lazy: a server that is down is reported by the first
        operation, as :class:`~dhtcart.errors.ShardUnavailable`. A malformed URL
        raises :class:`~dhtcart.errors.InvalidInput`.

        >>> b = RedisBackend.from_url("redis://app:s3cret@db.example:6380/2?timeout=0.5")
        >>> b.url, b.timeout
        ('redis://app:***@db.example:6380/2?timeout=0.5', 0.5)
        """
        if not isinstance(url, str):
            raise InvalidInput("url", f"a backend URL must be a str, not {type(url).__name__}")
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise InvalidInput("url", f"not a redis:// or rediss:// URL: scheme {parts.scheme!r}")
        try:
            host = parts.hostname or "127.0.0.1"
            port = parts.port or 6379
        except ValueError as exc:
            raise InvalidInput("url", f"bad host or port in Redis URL: {exc}") from None
        path = unquote(parts.path).strip("/")
        if path:
            if not path.isdigit():
                raise InvalidInput("url", f"Redis database must be a number, got {path!r}")
            db = int(path)
        else:
            db = 0
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        unknown = sorted(set(query) - _URL_OPTIONS)
        if unknown:
            raise InvalidInput("url", f"unknown Redis URL option(s) {unknown}; known: {sorted(_URL_OPTIONS)}")
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if password is None:
            password = os.environ.get(PASSWORD_ENV) or None
        if timeout is None and "timeout" in query:
            timeout = _positive_float("timeout", query["timeout"])
        if connect_timeout is None and "connect_timeout" in query:
            connect_timeout = _positive_float("connect_timeout", query["connect_timeout"])
        if prefix is None:
            prefix = query.get("prefix", DEFAULT_PREFIX)
        if max_connections is None and "max_connections" in query:
            try:
                max_connections = int(query["max_connections"])
            except ValueError:
                raise InvalidInput("url", "max_connections must be an integer") from None
        ssl = parts.scheme == "rediss"
        ssl_options = {k: v for k, v in query.items() if k.startswith("ssl_")}
        if ssl_options and not ssl:
            raise InvalidInput("url", f"{sorted(ssl_options)} only apply to rediss:// URLs")
        if context is not None and name is None:
            name = context.name
        netloc = _mask_netloc(username, parts.password is not None, host, port)
        shown = f"{parts.scheme}://{netloc}/{db}" + (f"?{parts.query}" if parts.query else "")
        return cls(
            host=host,
            port=port,
            db=db,
            username=username,
            password=password,
            ssl=ssl,
            name=name,
            timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
            connect_timeout=connect_timeout,
            prefix=prefix,
            max_connections=max_connections,
            ssl_options=ssl_options,
            url=shown,
            fenced=context is not None and context.fenced,
        )

    # -- plumbing ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"{self!r} is closed")

    def _unavailable(self, exc: BaseException, wrote: bool) -> ShardUnavailable:
        if isinstance(exc, RedisTimeoutError):
            reason = f"no reply within {self.timeout:g} s ({exc})"
            if wrote:
                reason += "; the write was applied completely or not at all, re-read to know which"
        elif isinstance(exc, RedisConnectionError):
            reason = str(exc) or type(exc).__name__
        else:
            reason = f"server refused the command: {exc}"
        return ShardUnavailable(self.name, self.address, reason)

    def _run(self, wrote: bool, fn: Any, *args: Any) -> Any:
        """Call ``fn(*args)``, turning connection failures into ShardUnavailable."""
        self._check_open()
        try:
            return fn(*args)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise self._unavailable(exc, wrote) from exc
        except ResponseError as exc:
            if _refused(exc):
                raise self._unavailable(exc, wrote) from exc
            raise

    def _eval(self, script: str, keys: Sequence[bytes], args: Sequence[bytes | str]) -> Any:
        """EVALSHA ``script``; on NOSCRIPT (script cache empty) load it and run again."""
        sha = self._scripts.get(script)
        if sha is not None:
            try:
                return self._client.evalsha(sha, len(keys), *keys, *args)
            except NoScriptError:
                pass  # the script did not run: load it and try again
        with self._script_lock:
            sha = self._client.script_load(self._script_source[script])
            self._scripts[script] = sha
        return self._client.evalsha(sha, len(keys), *keys, *args)

    # -- the Backend interface -------------------------------------------------------

    def execute(self, fn: Callable[..., Any], *args: Any, wrote: bool = False) -> Any:
        """Call ``fn(*args)`` (a redis-py call on :attr:`client`), reporting outages as ShardUnavailable.

        For dhtcart's own modules that keep state beside the shards (the
        membership document); ``wrote`` says whether ``fn`` may have changed
        something, for the message of a timeout.
        """
        return self._run(wrote, fn, *args)

    @property
    def client(self) -> redis.Redis:
        """The redis-py client (no automatic retries; one connection pool per backend)."""
        return self._client

    def _moved(self, key: int, reply: Sequence[Any]) -> NoReturn:
        _, epoch, state, peer = reply
        raise Moved(key, int(epoch), state.decode(), peer.decode() or None)

    def _fence_keys(self, member: bytes) -> tuple[bytes, bytes, bytes, bytes]:
        return (self._record_prefix + member, self._index, self._own, self._own_meta)

    def get(self, key: int) -> Record | None:
        """Return the record under ``key`` (one ``GET``; fenced: one script call), or ``None``."""
        member = _member(key)
        if not self.fenced:
            raw = self._run(False, self._client.get, self._record_prefix + member)
            return None if raw is None else _decode(key, raw)
        reply = self._run(False, self._eval, "get", (self._record_prefix + member, self._own), (member,))
        if reply is None:
            return None
        if type(reply) is bytes:
            return _decode(key, reply)
        self._moved(key, reply)

    def put(self, key: int, value: bytes, expected_version: int | None = None) -> int:
        """Write ``value`` (one atomic script call); return the new version.

        With ``expected_version`` it is a compare-and-set (0: must be absent);
        a mismatch raises :class:`VersionConflict` and changes nothing.
        """
        member = _member(key)
        expected = "" if expected_version is None else str(int(expected_version))
        if self.fenced:
            reply = self._run(True, self._eval, "put", self._fence_keys(member), (member, value, expected, "1"))
        else:
            reply = self._run(
                True, self._eval, "put", (self._record_prefix + member, self._index), (member, value, expected, "")
            )
        if reply[0] == 1:
            return int(reply[1])
        if reply[0] == 0:
            assert expected_version is not None
            raise VersionConflict(key, expected_version, int(reply[1]))
        self._moved(key, reply)

    def delete(self, key: int, expected_version: int | None = None) -> bool:
        """Remove ``key`` (one atomic script call); return whether it existed.

        With ``expected_version`` the delete is conditional (0: must be absent,
        which deletes nothing and returns ``False``); a mismatch raises
        :class:`VersionConflict` and changes nothing.
        """
        member = _member(key)
        expected = "" if expected_version is None else str(int(expected_version))
        if self.fenced:
            reply = self._run(True, self._eval, "delete", self._fence_keys(member), (member, expected, "1"))
        else:
            reply = self._run(
                True, self._eval, "delete", (self._record_prefix + member, self._index), (member, expected, "")
            )
        status = reply[0]
        if status == 0:
            assert expected_version is not None
            raise VersionConflict(key, expected_version, int(reply[1]))
        if status < 0:
            self._moved(key, reply)
        return bool(status == 1)

    def scan(self, lo: int, hi: int, limit: int | None = None) -> Iterator[tuple[int, Record]]:
        """Yield ``(key, record)`` for ``lo < key <= hi`` in key order, at most ``limit``.

        Reads batches of 1,000 with ``ZRANGEBYLEX`` then ``MGET`` (two round trips
        per batch). A key deleted between the two is skipped; each batch sees the
        records as they are when it is read.
        """
        if hi < 0 or lo >= hi or lo >= _MAX_KEY or (limit is not None and limit <= 0):
            return
        low = b"-" if lo < 0 else b"(" + _member(lo)
        high = b"+" if hi >= _MAX_KEY else b"[" + _member(hi)
        remaining = limit
        while remaining is None or remaining > 0:
            n = _SCAN_BATCH if remaining is None else min(_SCAN_BATCH, remaining)
            members: list[bytes] = self._run(False, self._client.zrangebylex, self._index, low, high, 0, n)
            if not members:
                return
            raws: list[bytes | None] = self._run(False, self._client.mget, [self._record_prefix + m for m in members])
            batch: list[tuple[int, Record]] = []
            for m, raw in zip(members, raws, strict=True):
                if raw is not None:
                    k = int(m, 16)
                    batch.append((k, _decode(k, raw)))
            if remaining is not None:
                batch = batch[:remaining]
                remaining -= len(batch)
            yield from batch
            if len(members) < n:
                return
            low = b"(" + members[-1]

    def count(self) -> int:
        """Return the number of keys stored (``ZCARD`` of the index)."""
        return int(self._run(False, self._client.zcard, self._index))

    # -- ownership ------------------------------------------------------------------

    def _read_ownership(self) -> tuple[int, Ownership]:
        """``(gen, record)``: one ``HGET`` when the cached record is current, else a transaction."""
        gen_raw = self._run(False, self._client.hget, self._own_meta, "gen")
        gen = int(gen_raw or 0)
        cached_gen, cached = self._own_cache
        if gen == cached_gen:
            return gen, cached
        pipe = self._client.pipeline(transaction=True)
        pipe.hmget(self._own_meta, "gen", "token", "epoch")
        pipe.zrange(self._own, 0, -1)
        (g, token, epoch), members = self._run(False, pipe.execute)
        gen = int(g or 0)
        own = Ownership(int(epoch or 0), int(token or 0), _parse_segments(members)) if members else Ownership.nothing()
        self._own_cache = (gen, own)
        return gen, own

    def ownership(self) -> Ownership:
        return self._read_ownership()[1]

    def _set_ownership(
        self, expected_gen: int | None, token: int, new: Ownership, old: Ownership | None, force: bool = False
    ) -> Any:
        if old is None:
            removes: list[bytes | str] = ["all"]
            adds = _members(new.segments)
        else:
            before, after = set(_members(old.segments)), set(_members(new.segments))
            gone, added = sorted(before - after), sorted(after - before)
            removes = [str(len(gone)), *gone]
            adds = added
        args = [
            "" if expected_gen is None else str(expected_gen),
            str(token),
            str(new.epoch),
            "1" if force else "",
            *removes,
            *adds,
        ]
        return self._run(True, self._eval, "set_ownership", (self._own, self._own_meta), args)

    def update_ownership(
        self,
        token: int,
        epoch: int,
        changes: Sequence[Change] = (),
        expect: str | None = None,
        *,
        leased: bool | None = None,
    ) -> Ownership:
        if leased:
            raise NotImplementedError("replicated stores on Redis shards are not built yet")
        for _ in range(32):
            gen, current = self._read_ownership()
            new = apply_changes(current, token, epoch, changes, expect, leased)
            if new == current:
                return current
            status, value = self._set_ownership(gen, new.token, new, current)
            if status == 1:
                self._own_cache = (int(value), new)
                return new
            if status == -1:
                raise LeaseLost(f"shard {self.name!r} has seen rebalancer token {value}, newer than {token}")
        raise LeaseLost(f"shard {self.name!r}: its ownership record kept changing under this rebalancer")

    def claim(self, ownership: Ownership, *, force: bool = False) -> None:
        status, value = self._set_ownership(None, ownership.token, ownership, None, force)
        if status == -1:
            raise LeaseLost(f"shard {self.name!r} has seen rebalancer token {value}, newer than {ownership.token}")
        self._own_cache = (int(value), ownership)

    def _range_script(
        self, token: int, ranges: Sequence[tuple[int, int]], mode: str, pairs: Sequence[bytes]
    ) -> tuple[int, int]:
        bounds: list[bytes] = []
        for lo, hi in ranges:
            bounds += _lex_range(lo, hi)
        what = "drop" if mode == "drop" else "import"
        for _ in range(32):
            gen, own = self._read_ownership()
            own.check_token(token)
            for lo, hi in ranges:
                own.check_unserved(lo, hi, what)
            args = (str(gen), str(token), self._record_prefix, mode, str(len(ranges)), *bounds, *pairs)
            reply = self._run(True, self._eval, "range", (self._index, self._own_meta), args)
            if reply[0] == -2:  # checked in the server too: the cached record may be older than the shard
                raise LeaseLost(f"shard {self.name!r} has seen rebalancer token {reply[1]}, newer than {token}")
            if reply[0] != -1:
                return int(reply[0]), int(reply[1])
        raise LeaseLost(f"shard {self.name!r}: its ownership record kept changing under this rebalancer")

    def import_ranges(
        self, token: int, ranges: Sequence[tuple[int, int]], records: Sequence[tuple[int, Record]]
    ) -> int:
        """Copy ``records`` in script calls of at most 1,000 records and about 4 MB each (a
        server's query buffer is limited); the first also deletes what was there."""
        written = 0
        mode = "import"
        start = 0
        while True:
            pairs: list[bytes] = []
            size = 0
            end = start
            while end < len(records) and end - start < _IMPORT_BATCH and size < _IMPORT_BYTES:
                key, rec = records[end]
                raw = int(rec.version).to_bytes(8, "big") + bytes(rec.value)
                pairs += (_member(key), raw)
                size += len(raw)
                end += 1
            written += self._range_script(token, ranges, mode, pairs)[1]
            mode = "add"
            start = end
            if start >= len(records):
                return written

    def drop_ranges(self, token: int, ranges: Sequence[tuple[int, int]]) -> int:
        total = 0
        while True:
            gone, _ = self._range_script(token, ranges, "drop", ())
            total += gone
            if gone < _DROP_BATCH:
                return total

    def boundary(self, lo: int, hi: int, n: int) -> tuple[int, int]:
        low, high = _lex_range(lo, hi)
        found = self._run(False, self._client.zrangebylex, self._index, low, high, n - 1, 1)
        if found:
            return int(found[0], 16), n
        return hi, int(self._run(False, self._client.zlexcount, self._index, low, high))

    # -- replicated writes: not yet on Redis (issue 13, in progress) --------------------

    def decide(self, key: int, value: bytes | None, expected_version: int | None = None) -> Pending:
        raise NotImplementedError("replicated writes on Redis shards are not built yet")

    def pending(self, key: int) -> Pending | None:
        raise NotImplementedError("replicated writes on Redis shards are not built yet")

    def scan_pending(self, lo: int, hi: int) -> list[Pending]:
        return []

    def commit(self, key: int, version: int) -> bool:
        raise NotImplementedError("replicated writes on Redis shards are not built yet")

    def apply(self, primary: str, pending: Pending) -> None:
        raise NotImplementedError("replicated writes on Redis shards are not built yet")

    def repair_records(self, token: int, records: Sequence[tuple[int, Record]]) -> int:
        raise NotImplementedError("replicated writes on Redis shards are not built yet")

    def renew_lease(self, epoch: int, until: float) -> float:
        return 0.0

    def lease(self) -> float:
        return 0.0

    def pause(self, seconds: float) -> None:
        """Pause every client of the server for ``seconds`` (``CLIENT PAUSE ... ALL``).

        Commands sent meanwhile wait in the server and run when the pause ends;
        a client whose reply takes longer than its timeout gets
        :class:`ShardUnavailable` (the command may still run later). Affects
        every user of that server, not only this shard.
        """
        ms = int(_positive_float("seconds", seconds) * 1000)
        self._run(False, self._client.execute_command, "CLIENT", "PAUSE", max(ms, 1), "ALL")

    def close(self) -> None:
        """Drop the connections. Idempotent; later calls raise :class:`StoreClosed`."""
        if self._closed:
            return
        self._closed = True
        self._pool.disconnect()

    def destroy(self) -> None:
        """Delete every Redis key this backend owns (under its prefix), then close.

        Other keys in the database are untouched. Works on a closed backend too.
        """
        was_closed = self._closed
        self._closed = False
        try:
            self._run(True, self._destroy)
        finally:
            self._closed = was_closed
            self.close()

    def _destroy(self) -> None:
        client = self._client
        # Records named by the index first, in batches, then any stragglers.
        while True:
            members = cast(list[bytes], client.zrange(self._index, 0, _SCAN_BATCH - 1))
            if not members:
                break
            pipe = client.pipeline(transaction=True)
            pipe.delete(*(self._record_prefix + m for m in members))
            pipe.zrem(self._index, *members)
            pipe.execute()
        pattern = _glob_escape(self._record_prefix) + b"*"
        for chunk in _chunks(client.scan_iter(match=pattern, count=1000), 1000):
            client.delete(*chunk)
        client.delete(self._index, self._own, self._own_meta)
        self._own_cache = (-1, Ownership.nothing())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.url}>"


def _glob_escape(raw: bytes) -> bytes:
    """Escape Redis glob metacharacters so ``raw`` matches only itself."""
    out = bytearray()
    for byte in raw:
        if byte in b"*?[]\\":
            out += b"\\"
        out.append(byte)
    return bytes(out)


def _chunks(it: Iterable[bytes], n: int) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    for x in it:
        chunk.append(x)
        if len(chunk) >= n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
