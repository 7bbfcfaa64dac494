"""Reaching one Redis database: its URL, its client, and the one place where redis-py's errors become dhtcart's.

Everything in dhtcart that talks to Redis goes through a :class:`RedisConnection`:
the shards (:class:`~dhtcart.backends.redis.RedisBackend`) and the membership
kept in a Redis database (:class:`~dhtcart.membership.redis.RedisMembership`).
It holds one redis-py connection pool with **automatic retries off** (a write
whose reply was lost must not be sent again: it may have been applied), runs
Lua scripts registered with redis-py's ``register_script``, and turns every
exception redis-py raises into one of :mod:`dhtcart.errors`, through one table,
:data:`ERROR_MAP`, so that no ``redis.*`` exception leaves dhtcart.

URLs
----

``redis://[user[:password]@]host[:port][/db][?option=value&...]``, or ``rediss://``
for TLS; port 6379 and database 0 by default. :meth:`RedisTarget.parse` reads one:

>>> t = RedisTarget.parse("redis://app:s3cret@db.example:6380/2?timeout=0.5&prefix=carts:")
>>> t.url, t.address, t.timeout, t.prefix
('redis://app:***@db.example:6380/2?timeout=0.5&prefix=carts:', 'redis://db.example:6380/2', 0.5, 'carts:')
>>> RedisTarget.parse("redis://h/0?colour=red")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
dhtcart.errors.InvalidInput: url: unknown Redis URL option(s) ['colour']; known: [...]

A password is never shown: :attr:`RedisTarget.url` masks it and
:attr:`RedisTarget.address` (used in every error) has no credentials. When the
URL carries none, the password is read from the environment variable named by
:data:`dhtcart.settings.REDIS_PASSWORD_ENV` (``DHTCART_REDIS_PASSWORD``).

Errors
------

=====================================================  ====================================================
redis-py raises (server error code)                    the caller gets
=====================================================  ====================================================
``TimeoutError`` (no reply within ``timeout``)         :class:`~dhtcart.errors.ShardUnavailable`; for a
                                                       write that was sent, ``unknown=True`` and the reason
                                                       says it applied completely or not at all
``ConnectionError``: refused, reset, closed            :class:`~dhtcart.errors.ShardUnavailable` (unknown
                                                       as above when it broke after the write was sent)
``AuthenticationError`` (``NOAUTH``, ``WRONGPASS``),   :class:`~dhtcart.errors.ShardUnavailable`: the
``BusyLoadingError`` (``LOADING``), a full pool        command did not run
``OutOfMemoryError`` (``OOM``: ``maxmemory`` reached   :class:`~dhtcart.errors.ShardFull`: the write did
under ``noeviction``)                                  not run; reads and deletes go on
``READONLY``, ``NOPERM``, ``BUSY``, ``MISCONF``,       :class:`~dhtcart.errors.ShardUnavailable`: the
``MASTERDOWN``, ``NOREPLICAS``, ``NOSCRIPT``, ...      server refused the command, which did not run
``WRONGTYPE``; an error raised inside a script         :class:`~dhtcart.errors.CorruptData`: a key under
                                                       the prefix holds what dhtcart did not write there
any other ``ResponseError`` (a command the server      :class:`~dhtcart.errors.ShardUnavailable`: the
lacks or forbids) or ``RedisError``                    server cannot serve as a shard
=====================================================  ====================================================

Every message names the shard (or ``membership``) and its address, and quotes
the server's own words. The first row of :data:`ERROR_MAP` that matches an
exception decides; :meth:`RedisConnection.call` and :meth:`RedisConnection.errors`
apply it, nothing else catches redis-py's exceptions.

A ``NOSCRIPT`` answer never reaches the table in normal operation: redis-py's
``Script`` loads the script and sends it again, which is safe because
``NOSCRIPT`` means it did not run (only a second ``NOSCRIPT`` in a row, a
``SCRIPT FLUSH`` racing the reload, is reported, as ``ShardUnavailable``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ExecAbortError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from dhtcart.checks import check_seconds
from dhtcart.errors import CorruptData, DHTCartError, InvalidInput, ShardFull, ShardUnavailable, StoreClosed
from dhtcart.settings import REDIS_PASSWORD_ENV

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_PREFIX",
    "DEFAULT_TIMEOUT",
    "ERROR_MAP",
    "URL_OPTIONS",
    "RedisConnection",
    "RedisTarget",
    "map_error",
    "pack_command",
]

#: seconds allowed to connect and for each reply, unless ``?timeout=`` says otherwise
DEFAULT_TIMEOUT = 2.0
#: prefix of every Redis key dhtcart owns in a database, unless ``?prefix=`` says otherwise
DEFAULT_PREFIX = "dhtcart:"
DEFAULT_PORT = 6379
#: the query options a Redis URL may carry; any other is refused
URL_OPTIONS = frozenset(
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
_CERT_REQS = ("required", "optional", "none")


# -- the URL ------------------------------------------------------------------------------------


def _netloc(username: str | None, has_password: bool, host: str, port: int) -> str:
    """``[user[:***]@]host:port``, an IPv6 host in brackets; a password is never written."""
    host_part = f"[{host}]" if ":" in host else host
    if username:
        auth = quote(username, safe="") + (":***" if has_password else "") + "@"
    elif has_password:
        auth = ":***@"
    else:
        auth = ""
    return f"{auth}{host_part}:{port}"


@dataclass(frozen=True)
class RedisTarget:
    """Where a Redis database is and how to reach it: a ``redis://`` or ``rediss://`` URL, read.

    Build one with :meth:`parse`; the constructor checks what it is given the
    same way. ``url`` is the display form (any password masked); it is made
    from the other fields when not given.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    db: int = 0
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    ssl: bool = False
    #: seconds allowed to connect and for each reply
    timeout: float = DEFAULT_TIMEOUT
    #: seconds allowed to connect (``None``: :attr:`timeout`)
    connect_timeout: float | None = None
    #: prefix of every key dhtcart owns in the database
    prefix: str = DEFAULT_PREFIX
    #: size of the connection pool (``None``: unlimited)
    max_connections: int | None = None
    #: ``rediss://`` only: ``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``
    ssl_options: tuple[tuple[str, str], ...] = ()
    #: the URL as shown in messages and ``repr``: any password masked
    url: str = ""

    def __post_init__(self) -> None:
        set_field = object.__setattr__  # how a frozen dataclass sets its own fields
        set_field(self, "timeout", check_seconds("timeout", self.timeout))
        if self.connect_timeout is not None:
            set_field(self, "connect_timeout", check_seconds("connect_timeout", self.connect_timeout))
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise InvalidInput("url", f"Redis port must be an int in 1..65535, got {self.port!r}")
        if isinstance(self.db, bool) or not isinstance(self.db, int) or self.db < 0:
            raise InvalidInput("url", f"Redis database must be a number >= 0, got {self.db!r}")
        if not isinstance(self.prefix, str):
            raise InvalidInput("prefix", f"must be a str, not {type(self.prefix).__name__}")
        if self.max_connections is not None and (
            isinstance(self.max_connections, bool)
            or not isinstance(self.max_connections, int)
            or self.max_connections < 1
        ):
            raise InvalidInput("max_connections", f"must be a positive integer, got {self.max_connections!r}")
        options = dict(self.ssl_options)
        if options and not self.ssl:
            raise InvalidInput("url", f"{sorted(options)} only apply to rediss:// URLs")
        unknown = sorted(set(options) - {o for o in URL_OPTIONS if o.startswith("ssl_")})
        if unknown:
            raise InvalidInput("url", f"unknown TLS option(s) {unknown}")
        if options.get("ssl_cert_reqs", "required") not in _CERT_REQS:
            raise InvalidInput("url", f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}")
        if not self.url:
            netloc = _netloc(self.username, self.password is not None, self.host, self.port)
            set_field(self, "url", f"{self.scheme}://{netloc}/{self.db}")

    @property
    def scheme(self) -> Literal["redis", "rediss"]:
        """``rediss`` over TLS, else ``redis``."""
        return "rediss" if self.ssl else "redis"

    @property
    def address(self) -> str:
        """``scheme://host:port/db``: where the database is, without credentials (for errors)."""
        return f"{self.scheme}://{_netloc(None, False, self.host, self.port)}/{self.db}"

    @classmethod
    def parse(
        cls,
        url: str,
        *,
        timeout: float | None = None,
        connect_timeout: float | None = None,
        prefix: str | None = None,
        max_connections: int | None = None,
    ) -> RedisTarget:
        """Read ``url``; keyword arguments that are not ``None`` win over its query options.

        A malformed URL, an unknown option or a bad value raises
        :class:`~dhtcart.errors.InvalidInput`. Nothing is connected.
        """
        if not isinstance(url, str):
            raise InvalidInput("url", f"a Redis URL must be a str, not {type(url).__name__}")
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise InvalidInput("url", f"not a redis:// or rediss:// URL: scheme {parts.scheme!r}")
        try:
            host = parts.hostname or "127.0.0.1"
            port = parts.port or DEFAULT_PORT
        except ValueError as exc:
            raise InvalidInput("url", f"bad host or port in Redis URL: {exc}") from None
        path = unquote(parts.path).strip("/")
        if path and not path.isdigit():
            raise InvalidInput("url", f"Redis database must be a number, got {path!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        unknown = sorted(set(query) - URL_OPTIONS)
        if unknown:
            raise InvalidInput("url", f"unknown Redis URL option(s) {unknown}; known: {sorted(URL_OPTIONS)}")
        password = unquote(parts.password) if parts.password is not None else None
        if password is None:
            password = os.environ.get(REDIS_PASSWORD_ENV) or None
        if timeout is None and "timeout" in query:
            timeout = check_seconds("timeout", query["timeout"])
        if connect_timeout is None and "connect_timeout" in query:
            connect_timeout = check_seconds("connect_timeout", query["connect_timeout"])
        if max_connections is None and "max_connections" in query:
            try:
                max_connections = int(query["max_connections"])
            except ValueError:
                raise InvalidInput("url", "max_connections must be an integer") from None
        username = unquote(parts.username) if parts.username else None
        shown = f"{parts.scheme}://{_netloc(username, parts.password is not None, host, port)}/{int(path or 0)}"
        return cls(
            host=host,
            port=port,
            db=int(path or 0),
            username=username,
            password=password,
            ssl=parts.scheme == "rediss",
            timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
            connect_timeout=connect_timeout,
            prefix=query.get("prefix", DEFAULT_PREFIX) if prefix is None else prefix,
            max_connections=max_connections,
            ssl_options=tuple(sorted((k, v) for k, v in query.items() if k.startswith("ssl_"))),
            url=shown + (f"?{parts.query}" if parts.query else ""),
        )


# -- the error map ------------------------------------------------------------------------------

#: a row's codes when any server error code matches
ANY: frozenset[str] = frozenset()
#: the code :func:`error_code` gives an error raised inside a Lua script, by the script itself
#: (``ERR``) or by a command it called on a key of another type (``WRONGTYPE``): a script stops
#: there, keeping what it wrote before, so its outcome is not "nothing"
SCRIPT_ERROR = "ERR in a script"
_SCRIPT_CODES = ("ERR", "WRONGTYPE")
#: what a row says of a command that failed: it did not run, or it may have (when it was sent)
NOT_RUN: Literal["not run"] = "not run"
MAYBE_RUN: Literal["maybe run"] = "maybe run"

# redis-py 6 added a class for a full pool; older versions raise a plain ConnectionError
_PoolExhausted: tuple[type[RedisError], ...] = tuple(
    c for c in (getattr(redis.exceptions, "MaxConnectionsError", None),) if isinstance(c, type)
)


class ErrorRule(NamedTuple):
    """One row of :data:`ERROR_MAP`."""

    #: what redis-py raises (a class, or a tuple of classes)
    raised: type[BaseException] | tuple[type[BaseException], ...]
    #: the server's error codes the row is for (:data:`ANY`: every one)
    codes: frozenset[str]
    #: what dhtcart raises instead
    becomes: type[DHTCartError]
    #: what it means, for the message (``{timeout}`` is the connection's timeout)
    meaning: str
    #: whether the command may have run: :data:`NOT_RUN`, or :data:`MAYBE_RUN` when it was sent
    outcome: Literal["not run", "maybe run"]


#: How redis-py's exceptions become dhtcart's: the first row that matches decides.
ERROR_MAP: tuple[ErrorRule, ...] = (
    ErrorRule(RedisTimeoutError, ANY, ShardUnavailable, "no reply within {timeout:g} s", MAYBE_RUN),
    ErrorRule(AuthenticationError, ANY, ShardUnavailable, "the server refused the credentials", NOT_RUN),
    ErrorRule(BusyLoadingError, ANY, ShardUnavailable, "the server is still loading its data", NOT_RUN),
    ErrorRule(_PoolExhausted, ANY, ShardUnavailable, "no free connection (max_connections)", NOT_RUN),
    ErrorRule(RedisConnectionError, ANY, ShardUnavailable, "connection failed", MAYBE_RUN),
    ErrorRule(OutOfMemoryError, ANY, ShardFull, "the server is out of memory (maxmemory)", NOT_RUN),
    ErrorRule(ResponseError, frozenset({"OOM"}), ShardFull, "the server is out of memory (maxmemory)", NOT_RUN),
    ErrorRule(
        (ReadOnlyError, NoPermissionError, ExecAbortError, NoScriptError),
        ANY,
        ShardUnavailable,
        "the server refused the command",
        NOT_RUN,
    ),
    ErrorRule(
        ResponseError,
        frozenset({"READONLY", "NOPERM", "BUSY", "MISCONF", "MASTERDOWN", "NOREPLICAS", "LOADING", "NOAUTH"})
        | frozenset({"WRONGPASS", "EXECABORT", "NOSCRIPT", "CLUSTERDOWN", "TRYAGAIN", "UNBLOCKED"}),
        ShardUnavailable,
        "the server refused the command",
        NOT_RUN,
    ),
    ErrorRule(
        ResponseError,
        frozenset({"WRONGTYPE"}),
        CorruptData,
        "a key under the prefix holds another type than dhtcart writes there",
        NOT_RUN,
    ),
    ErrorRule(
        ResponseError,
        frozenset({SCRIPT_ERROR}),
        CorruptData,
        "a script failed on data that dhtcart did not write (what it wrote before failing stays)",
        MAYBE_RUN,
    ),
    ErrorRule(ResponseError, ANY, ShardUnavailable, "the server cannot run a command dhtcart needs", NOT_RUN),
    ErrorRule(RedisError, ANY, ShardUnavailable, "unexpected answer from the server", MAYBE_RUN),
)


def error_code(exc: BaseException) -> str:
    """The server's error code of ``exc`` (``"WRONGTYPE"``, ``"OOM"``...), :data:`SCRIPT_ERROR` for
    an error raised inside a Lua script, ``""`` for an error that is not the server's answer."""
    if not isinstance(exc, ResponseError):
        return ""
    text = str(exc)
    code = str(getattr(exc, "status_code", None) or text.split(" ", 1)[0])
    if code in _SCRIPT_CODES and "user_script" in text:  # Redis 7 and Valkey name the script so
        return SCRIPT_ERROR
    return code


def _before_sending(exc: BaseException) -> bool:
    """Whether a connection error happened while connecting, before any command was sent."""
    return "connecting" in str(exc)  # redis-py: "Error 111 connecting to ...", "Timeout connecting to server"


def map_error(exc: BaseException, *, name: str, address: str, timeout: float, wrote: bool) -> DHTCartError | None:
    """The dhtcart error that :data:`ERROR_MAP` makes of ``exc`` (``None``: not redis-py's).

    ``name`` and ``address`` say who failed (a shard, the membership);
    ``wrote`` whether the command could change something, so that a lost reply
    is reported as an unknown outcome.

    >>> from redis.exceptions import OutOfMemoryError
    >>> err = map_error(OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
    ...                 name="r1", address="redis://h:6379/0", timeout=2, wrote=True)
    >>> type(err).__name__, err.shard, err.unknown
    ('ShardFull', 'r1', False)
    """
    if not isinstance(exc, RedisError):
        return None
    code = error_code(exc)
    for rule in ERROR_MAP:
        if isinstance(exc, rule.raised) and (not rule.codes or code in rule.codes):
            break
    else:  # the last row takes every RedisError
        raise AssertionError(f"ERROR_MAP has no row for {exc!r}")
    meaning = rule.meaning.format(timeout=timeout)
    said = str(exc) or type(exc).__name__
    if not issubclass(rule.becomes, ShardUnavailable):
        return rule.becomes(f"shard {name!r} at {address}: {meaning}: {said}")
    unknown = wrote and rule.outcome == MAYBE_RUN and not _before_sending(exc)
    reason = f"{meaning} ({said})"
    if unknown:
        reason += "; the write was applied completely or not at all, re-read to know which"
    return rule.becomes(name, address, reason, unknown=unknown)


# -- the connection -----------------------------------------------------------------------------


def _drain(conn: Any, replies: int) -> None:
    """Read and drop ``replies`` answers (errors included) so that ``conn`` is in step again,
    or drop the connection when they do not come (the error being handled is the answer:
    a failure here is not raised)."""
    try:
        for _ in range(replies):
            with contextlib.suppress(ResponseError):
                conn.read_response()
    except Exception:
        conn.disconnect()
    except BaseException:
        conn.disconnect()
        raise


def pack_command(*args: bytes | str) -> bytes:
    """One command in the Redis protocol (RESP): what :meth:`RedisConnection.send_packed` writes.

    >>> pack_command("GET", b"k")
    b'*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n'
    """
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


class _Mapped:
    """The context manager of :meth:`RedisConnection.errors` (a class: cheaper than a generator)."""

    __slots__ = ("_connection", "_wrote")

    def __init__(self, connection: RedisConnection, wrote: bool) -> None:
        self._connection = connection
        self._wrote = wrote

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        if exc is not None:
            mapped = self._connection.error(exc, self._wrote)
            if mapped is not None:
                raise mapped from exc
        return False


class RedisConnection:
    """A connection pool to one Redis database, for one user (a shard, the membership).

    Thread-safe: the pool hands each calling thread a connection of its own.
    Safe across ``fork()``: the pool notices and reconnects in the child.
    Connecting is lazy: a server that is down is reported by the first call.
    A connection that failed or timed out is dropped, never reused, so a late
    reply is never read as the answer to a later command.
    """

    #: who uses the connection, for messages (a shard's name, ``"membership"``)
    name: str
    #: the database and how it is reached
    target: RedisTarget

    def __init__(self, target: RedisTarget, name: str) -> None:
        self.target = target
        self.name = name
        self.address = target.address
        kwargs: dict[str, Any] = {
            "host": target.host,
            "port": target.port,
            "db": target.db,
            "username": target.username,
            "password": target.password,
            "socket_timeout": target.timeout,
            "socket_connect_timeout": target.connect_timeout or target.timeout,
            "socket_keepalive": True,
            # No automatic retries: a write whose reply was lost must not be sent
            # again (it may have been applied). The pool still replaces dead
            # connections before handing them out.
            "retry": Retry(NoBackoff(), 0),
            "protocol": 2,
        }
        if target.max_connections is not None:
            kwargs["max_connections"] = target.max_connections
        if target.ssl:
            kwargs["connection_class"] = redis.SSLConnection
            kwargs.update(target.ssl_options)
        self._pool = redis.ConnectionPool(**kwargs)
        self._client = redis.Redis(connection_pool=self._pool)
        self._closed = False

    @property
    def client(self) -> redis.Redis:
        """The redis-py client. Call it through :meth:`call` or inside :meth:`errors`."""
        return self._client

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def scripts(self, table: Mapping[str, str]) -> dict[str, Script]:
        """Register every Lua source of ``table`` (name to source) with this connection's client.

        Each returned ``Script`` is called as ``call(script, keys, args)``: one
        ``EVALSHA``; on ``NOSCRIPT`` redis-py loads the script and sends it once more.
        """
        return {name: self._client.register_script(source) for name, source in table.items()}

    def call(self, fn: Callable[..., Any], *args: Any, wrote: bool = False) -> Any:
        """``fn(*args)``, a call on :attr:`client` (or a registered script), with its errors mapped.

        ``wrote``: whether ``fn`` may change something (a lost reply is then an
        unknown outcome). Raises :class:`~dhtcart.errors.StoreClosed` after :meth:`close`.
        """
        if self._closed:
            raise StoreClosed(f"{self.name!r} ({self.target.url}) is closed")
        try:
            return fn(*args)
        except RedisError as exc:
            mapped = self.error(exc, wrote)
            assert mapped is not None
            raise mapped from exc

    def run(self, script: Script, keys: Sequence[bytes], args: Sequence[bytes | str], *, wrote: bool) -> Any:
        """One ``EVALSHA`` of ``script``: :meth:`call` of a registered script, without redis-py's
        command layer.

        The command is packed here and written on a connection of the pool,
        and its reply read from it: what ``script(keys, args)`` does, less
        about a third of its client time (a fenced read's whole cost on the
        client: ``benchmarks/redis_bench.py``). On ``NOSCRIPT`` the script is
        loaded and sent once more, as redis-py's ``Script`` does; errors are
        mapped as by :meth:`call`; a connection whose reply failed or timed
        out is dropped, never reused.
        """
        return self.send(script, keys, args, wrote=wrote)()

    def send(
        self, script: Script, keys: Sequence[bytes], args: Sequence[bytes | str], *, wrote: bool = True
    ) -> Callable[[], Any]:
        """Send one ``EVALSHA`` of ``script`` now; return a function that reads its reply.

        The two halves of :meth:`run`, so that a caller can have several
        servers work at the same time (a replicated write's backups). The
        connection is this call's own until its reply is read; call the
        returned function exactly once.
        """
        return self.send_packed(
            pack_command("EVALSHA", script.sha, str(len(keys)), *keys, *args), script=script, wrote=wrote
        )

    def send_packed(
        self,
        packed: bytes,
        *,
        replies: int = 1,
        script: Script | None = None,
        wrote: bool = True,
        every: bool = False,
    ) -> Callable[[], Any]:
        """Write ``packed`` (commands packed by :func:`pack_command`) now; return a function that
        reads ``replies`` answers and returns the last (a ``MULTI`` ... ``EXEC`` of n commands:
        ``n + 2`` answers, the ``EXEC``'s last), or with ``every`` the list of them all.

        ``script``: the script that a single ``EVALSHA`` calls, loaded and sent
        once more on ``NOSCRIPT``. ``wrote``: whether the commands may change
        something (see :meth:`call`).
        """
        if self._closed:
            raise StoreClosed(f"{self.name!r} ({self.target.url}) is closed")
        pool = self._pool
        try:  # a new connection's handshake may time out: mapped as the command's own failure (as redis-py's)
            conn: Any = pool.get_connection()  # redis-py leaves its connections untyped
        except RedisError as exc:
            raise self._mapped(exc, wrote=wrote) from exc
        try:
            conn.send_packed_command((packed,), check_health=False)
        except BaseException as exc:
            conn.disconnect()
            pool.release(conn)
            if isinstance(exc, RedisError):
                raise self._mapped(exc, wrote=wrote) from exc
            raise

        def reply() -> Any:
            left = replies
            try:
                try:
                    if every:
                        answers = []
                        while left:
                            answers.append(conn.read_response())
                            left -= 1
                        return answers
                    while left > 1:
                        conn.read_response()
                        left -= 1
                    answer = conn.read_response()
                    left = 0
                    return answer
                except NoScriptError:  # the script never ran: load it, then send the call again
                    if script is None or replies != 1:
                        raise
                    conn.send_command("SCRIPT", "LOAD", script.script)
                    conn.read_response()
                    conn.send_packed_command((packed,), check_health=False)
                    answer = conn.read_response()
                    left = 0
                    return answer
            except ResponseError as exc:  # an error reply, read whole
                _drain(conn, left - 1)  # the later answers (a refused MULTI's commands, then EXEC's error)
                raise self._mapped(exc, wrote=wrote) from exc
            except BaseException as exc:  # anything else may leave a reply unread: never reused
                conn.disconnect()
                if isinstance(exc, RedisError):
                    raise self._mapped(exc, wrote=wrote) from exc
                raise
            finally:
                pool.release(conn)

        return reply

    def _mapped(self, exc: RedisError, *, wrote: bool) -> DHTCartError:
        mapped = self.error(exc, wrote)
        assert mapped is not None
        return mapped

    def errors(self, *, wrote: bool) -> _Mapped:
        """A ``with`` block whose redis-py errors are mapped, for work of several commands.

        It does not check :attr:`closed` (:meth:`RedisBackend.destroy` works on a
        closed backend: the pool reconnects when used again).
        """
        return _Mapped(self, wrote)

    def error(self, exc: BaseException, wrote: bool) -> DHTCartError | None:
        """The dhtcart error for ``exc`` raised by this connection (:func:`map_error`)."""
        return map_error(exc, name=self.name, address=self.address, timeout=self.target.timeout, wrote=wrote)

    def close(self) -> None:
        """Drop every connection; later :meth:`call` raises :class:`~dhtcart.errors.StoreClosed`. Idempotent."""
        self._closed = True
        self._pool.disconnect()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.target.url}>"
