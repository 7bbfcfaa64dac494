"""The Redis backend: one shard on one Redis (or Valkey) server or database.

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
    holding a key: the scripts' check), and a hash of ``epoch``, ``token``,
    ``gen`` (a counter bumped at every change) and ``segs``, the same segments
    packed in one string for clients to read whole (:func:`_pack_segments`).

Every single-key write (put, compare-and-set, delete, conditional delete) is one
Lua script call (:mod:`~dhtcart.backends.redis.scripts`): one round trip, atomic
on the server, record and index updated together. On a fenced shard every write
script checks the key's segment before it touches the record: the check and the
write are one atomic step. A fenced read is the record's ``GET`` followed, in the
same round trip, by the ownership record's generation, and checked by the client
against its copy of that generation's record: as good as one step (the argument
is in :meth:`RedisBackend.get` and docs/redis.md). A failed compare-and-set
raises :class:`~dhtcart.errors.VersionConflict` and changes nothing.

Errors are mapped by the connection (:mod:`~dhtcart.backends.redis.connection`):
an unreachable, hung or refusing server is
:class:`~dhtcart.errors.ShardUnavailable`, a full one
:class:`~dhtcart.errors.ShardFull`, and what the backend cannot decode (a record
shorter than its version, an ownership segment it did not write, a key of
another type under its prefix) :class:`~dhtcart.errors.CorruptData`.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NoReturn, cast

from dhtcart.backends.base import BackendContext, Record, check_expected, stored_record
from dhtcart.backends.fencing import (
    Change,
    Entry,
    FencedBackend,
    Mark,
    Pending,
    apply_changes,
    decode_mark,
    encode_mark,
)
from dhtcart.backends.ownership import BACKUP, FROZEN, OWNED, PRIMARY, TABLE_SHIFT, Ownership, Segments
from dhtcart.backends.redis.connection import (
    DEFAULT_PREFIX,
    DEFAULT_TIMEOUT,
    RedisConnection,
    RedisTarget,
    pack_command,
)
from dhtcart.backends.redis.scripts import SCRIPTS
from dhtcart.checks import check_seconds
from dhtcart.errors import CorruptData, LeaseExpired, LeaseLost, Moved, ShardFull, StoreBusy, WriteInFlight

__all__ = ["RedisBackend"]

_KEY_HEX = 16  # 2**63 - 1 is 7fffffffffffffff: 16 hex digits
_MAX_KEY = (1 << 63) - 1
_SCAN_BATCH = 1000  # members per ZRANGEBYLEX + MGET round trip
_MAX_MARK_CALLS = 10_000  # a range's marks (graves) go 1,000 per script call: at most 10 million
_DROP_BATCH = 1_000  # records per drop_ranges script call (as in scripts.RANGES)
_IMPORT_BATCH = 1_000  # records per import script call
_MULTI = pack_command("MULTI")
_EXEC = pack_command("EXEC")
_TIME = pack_command("TIME")
#: fenced reads that find a newer ownership record than the cached one, in a row, before the
#: read falls back to the GET script (whose check reads the record on the server)
_READ_TRIES = 3
#: seconds that fenced reads use the GET script after the server refused their transaction (full)
_SCRIPTED_FOR = 1.0
_IMPORT_BYTES = 4 << 20  # and about this many bytes: one request stays well inside a server's query buffer
#: the ownership hash's fields that a read reads, after ``gen``, ``lease`` and ``id``, when it has no
#: record cached: the whole record (see RedisBackend._cache_whole)
_WHOLE_FIELDS = ("token", "epoch", "leased", "segs", "segs_gen")
_PACKED_HEAD = b"S1"  # the packed ownership segments (``segs`` of the ownership hash), format 1


def _member(key: int) -> bytes:
    """The index member of ``key``: 16 lowercase hex digits (sorts like the int)."""
    return b"%016x" % key


def _decode(shard: str, key: int, raw: bytes) -> Record:
    """The record stored as ``raw`` (8 bytes of version, then the value)."""
    if len(raw) < 8:
        raise CorruptData(f"shard {shard!r}: key {key}: a record of {len(raw)} bytes in Redis (8 at least)")
    return stored_record(raw)


def _segment_member(hi: int, state: str, peer: str) -> bytes:
    return b"%016x:%s:%s" % (hi, state.encode(), peer.encode())


def _members(segments: Segments) -> list[bytes]:
    return [_segment_member(h, s, p) for h, s, p in zip(segments.his, segments.states, segments.peers)]


def _parse_segments(shard: str, members: Sequence[bytes]) -> Segments:
    """The segments of an ownership set; :class:`CorruptData` for members dhtcart did not write.

    Column by column, with one decode and C loops: a client parses a shard's
    set (a few thousand members) at its first read of the shard and at each
    change of its ownership, and a member at a time cost about 1.5 µs each.
    """
    try:
        rows = [m.split(":", 2) for m in b"\n".join(members).decode().split("\n")] if members else []
        if len(rows) != len(members) or not set(map(len, rows)) <= {3}:  # a newline or colon missing
            bad = next((m for m in members if b"\n" in m or m.count(b":") < 2), members[0] if members else b"")
            raise ValueError(f"member {bad!r}")
        hexes, states, peers = (list(column) for column in zip(*rows)) if rows else ([], [], [])
        if not set(map(len, hexes)) <= {_KEY_HEX}:
            raise ValueError(f"member {next(m for m in members if len(m.split(b':', 1)[0]) != _KEY_HEX)!r}")
        return Segments.from_columns([int(h, 16) for h in hexes], states, peers)
    except ValueError as exc:  # also UnicodeDecodeError, and a CorruptData from the columns' checks
        raise CorruptData(f"shard {shard!r}: corrupt ownership record in Redis: {exc}") from None


def _pack_segments(segments: Segments) -> bytes:
    """``segments`` as one string; ``b""`` (readers then read the set) when a peer holds a newline,
    which a change's check refuses but a record built by hand may hold.

    ``S1``, the number of segments ``n`` (4 bytes big-endian), every last key
    (8 bytes big-endian each), every state (a letter each), then the peers
    joined by newlines. A client reads it in one ``HMGET`` and parses it in C
    loops: about 30 times less work than the set's members at a first read.
    """
    his, states, peers = segments.his, segments.states, segments.peers
    if any("\n" in p for p in peers if p):
        return b""
    n = len(his)
    return b"".join(
        (
            _PACKED_HEAD,
            n.to_bytes(4, "big"),
            struct.pack(f">{n}Q", *his),
            "".join(states).encode(),
            "\n".join(peers).encode(),
        )
    )


def _unpack_segments(shard: str, raw: bytes) -> Segments:
    """The segments :func:`_pack_segments` wrote; :class:`CorruptData` for a string it did not write."""
    try:
        if raw[:2] != _PACKED_HEAD or len(raw) < 6:
            raise ValueError(f"it starts {raw[:8]!r}")
        n = int.from_bytes(raw[2:6], "big")
        end = 6 + 9 * n
        if len(raw) < end:
            raise ValueError(f"{len(raw)} bytes for {n} segments")
        his = list(struct.unpack_from(f">{n}Q", raw, 6))
        states = list(raw[6 + 8 * n : end].decode("ascii"))
        tail = raw[end:]
        peers = [""] * n if len(tail) == n - 1 and not tail.strip(b"\n") else tail.decode().split("\n")
        if len(peers) != n:
            raise ValueError(f"{len(peers)} peers for {n} segments")
        return Segments.from_typed_columns(his, states, peers)
    except (ValueError, struct.error) as exc:  # also UnicodeDecodeError, and a CorruptData from the columns' checks
        raise CorruptData(f"shard {shard!r}: corrupt packed ownership record in Redis: {exc}") from None


def _lex_range(lo: int, hi: int) -> tuple[bytes, bytes]:
    """ZRANGEBYLEX bounds of the index members ``lo < key <= hi``."""
    return (b"-" if lo < 0 else b"(" + _member(lo)), b"[" + _member(hi)


def _conflict(key: int, expected_version: int | None, current: int) -> NoReturn:
    """A script refused a compare-and-set at ``current``: raise what every backend raises."""
    check_expected(key, expected_version, current)  # raises VersionConflict
    raise AssertionError(f"key {key}: a script refused version {expected_version} with {current}")


class RedisBackend(FencedBackend):
    """One shard on a Redis or Valkey server (one server or database per shard).

    Open it with :meth:`from_url` (or :func:`dhtcart.backends.open_backend`)::

        backend = RedisBackend.from_url("redis://10.0.0.5:6379/0", name="shard-a")

    Thread-safe: redis-py's connection pool hands each thread its own
    connection. Safe across ``fork()``: the pool notices and reconnects.
    """

    #: the shard's name, used in :class:`~dhtcart.errors.ShardUnavailable` messages
    name: str
    #: ``scheme://host:port/db``, without credentials
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
        target = RedisTarget(
            host=host,
            port=port,
            db=db,
            username=username,
            password=password,
            ssl=ssl,
            timeout=timeout,
            connect_timeout=connect_timeout,
            prefix=prefix,
            max_connections=max_connections,
            ssl_options=tuple(sorted((ssl_options or {}).items())),
            url=url or "",
        )
        self.url = target.url
        self.address = target.address
        self.name = name if name is not None else self.address
        self.prefix = target.prefix
        self.fenced = fenced
        self.timeout = target.timeout
        self.connect_timeout = target.connect_timeout or target.timeout
        #: the connection to the server: its client, its scripts, its error mapping
        self.connection = RedisConnection(target, self.name)
        self._scripts = self.connection.scripts(SCRIPTS)
        pfx = target.prefix.encode()
        self._record_prefix = pfx + b"v:"
        self._index = pfx + b"idx"
        self._own = pfx + b"own"
        self._own_meta = pfx + b"own:meta"
        self._pending_prefix = pfx + b"p:"  # a primary's pending replicated writes
        self._pidx = pfx + b"pidx"  # their members, for range scans
        self._mark_prefix = pfx + b"m:"  # lives and graves (a store with copies: fencing.Mark)
        self._midx = pfx + b"midx"  # their members, for range scans
        #: the ownership record last read: its generation, its id (see scripts.SET_OWNERSHIP), the record
        self._own_cache: tuple[int, bytes | None, Ownership] = (-1, None, Ownership.nothing())
        self._scripted_until = 0.0  # fenced reads by the script until then (see get)
        # a fenced read ends so, after its GET: the ownership record's generation and id (a
        # record destroyed and made again restarts its generation, not its id) ...
        self._read_check = pack_command("HMGET", self._own_meta, "gen", "id")
        # ... and a read under a lease is a transaction that starts so (with the lease) ...
        self._read_head = _MULTI + pack_command("HMGET", self._own_meta, "gen", "lease", "id")
        # ... and a read with no record cached, or one out of date, reads the record too
        self._whole_head = _MULTI + pack_command("HMGET", self._own_meta, "gen", "lease", "id", *_WHOLE_FIELDS)

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
        target = RedisTarget.parse(
            url, timeout=timeout, connect_timeout=connect_timeout, prefix=prefix, max_connections=max_connections
        )
        if context is not None and name is None:
            name = context.name
        return cls(
            host=target.host,
            port=target.port,
            db=target.db,
            username=target.username,
            password=target.password,
            ssl=target.ssl,
            name=name,
            timeout=target.timeout,
            connect_timeout=target.connect_timeout,
            prefix=target.prefix,
            max_connections=target.max_connections,
            ssl_options=dict(target.ssl_options),
            url=target.url,
            fenced=context is not None and context.fenced,
        )

    # -- plumbing ------------------------------------------------------------------

    def _script(self, name: str, keys: Sequence[bytes], args: Sequence[bytes | str], *, wrote: bool) -> Any:
        """Run the script ``name`` of :data:`~dhtcart.backends.redis.scripts.SCRIPTS` (one ``EVALSHA``)."""
        return self.connection.run(self._scripts[name], keys, args, wrote=wrote)

    def _moved(self, key: int, reply: Sequence[Any]) -> NoReturn:
        """Raise the redirect ``{-1, epoch, state, peer}`` a script answered."""
        try:
            _, epoch, state, peer = reply
            moved = Moved(key, int(epoch), state.decode(), peer.decode() or None)
        except (ValueError, TypeError, AttributeError):  # a script read an ownership record it did not write
            raise CorruptData(f"shard {self.name!r}: corrupt ownership record in Redis (reply {reply!r})") from None
        raise moved

    def _fence_keys(self, member: bytes) -> tuple[bytes, bytes, bytes, bytes, bytes]:
        return (self._record_prefix + member, self._index, self._own, self._own_meta, self._pending_prefix + member)

    # -- the Backend interface -------------------------------------------------------

    def get(self, key: int) -> Record | None:
        """Return the record under ``key`` (one ``GET``; fenced: ``GET`` then ``HMGET``), or ``None``.

        A fenced read sends two commands in one round trip: the record
        (``GET``), then the ownership record's generation and id (``HMGET``).
        The client checks the key against the ownership of the generation it
        has cached (read again when the generation moved), in the rules of the
        ``GET`` script (:data:`~dhtcart.backends.redis.scripts.GET`). Checked
        after the read, this is as good as one atomic step: the cache was read
        from the server before the ``GET`` ran, every ownership change adds 1
        to the generation (a record made again gets a new id), so the same
        generation and id after the ``GET`` mean the same ownership record
        when it ran (docs/redis.md, "A fenced read").

        A range whose reads need this shard's lease (a primary or frozen range
        with copies) is read in a ``MULTI``/``EXEC`` of ``HMGET``, ``TIME`` and
        ``GET`` instead: a lease is lengthened in place, so a lease seen running
        after the read does not say it ran when the read did. With no ownership
        record cached, or one found out of date, the read is that transaction
        with the whole record in its ``HMGET`` (its packed segments), checked
        against the record it read.
        """
        member = _member(key)
        if not self.fenced:
            raw = self.connection.send_packed(pack_command("GET", self._record_prefix + member), wrote=False)()
            return None if raw is None else _decode(self.name, key, raw)
        if self._scripted_until and time.monotonic() < self._scripted_until:
            return self._scripted_get(key, member)
        read = pack_command("GET", self._record_prefix + member)
        timed = False
        answers: Any = None
        for _ in range(_READ_TRIES):
            gen, own_id, own = self._own_cache
            whole = gen < 0  # no record cached, or one known out of date: read it with the GET
            timed = timed or own.leased or whole
            if timed:
                try:
                    answers = self.connection.send_packed(
                        (self._whole_head if whole else self._read_head) + _TIME + read + _EXEC, replies=5, wrote=False
                    )()
                except ShardFull:  # a server over maxmemory refuses MULTI, not scripts that only read
                    self._scripted_until = time.monotonic() + _SCRIPTED_FOR
                    return self._scripted_get(key, member)
                try:
                    (now_gen, lease, now_id, *rest), raw = answers[0], answers[-1]
                except (TypeError, ValueError):
                    raise CorruptData(f"shard {self.name!r}: unexpected answer to a read: {answers!r}") from None
                for answer in answers:
                    if isinstance(answer, Exception):  # a command of the transaction failed (a key of another type)
                        raise self.connection.error(answer, False) or answer
                if whole:  # the record the GET ran under, in the same transaction
                    gen, own_id, own = self._cache_whole(now_gen, now_id, *rest)
                    if gen < 0:  # a record without its packed segments: read its set, then read again
                        self._read_ownership(stale=True)
                        continue
            else:
                raw, head = self.connection.send_packed(read + self._read_check, replies=2, wrote=False, every=True)()
                try:
                    now_gen, now_id = head
                except (TypeError, ValueError):
                    raise CorruptData(f"shard {self.name!r}: unexpected answer to a read: {head!r}") from None
            if self._counter("gen", now_gen) != gen or now_id != own_id:  # changed, or made again
                self._own_cache = (-1, None, own)  # read it whole, with the next try's GET
                continue
            segments = own.segments
            if (segments.slices.get(key >> TABLE_SHIFT) or segments.slice_state(key >> TABLE_SHIFT)) == OWNED:
                state, peer = OWNED, ""  # the slice's table: no boundary in it, all owned
            else:
                state, peer = segments.lookup(key)
            if state == OWNED or (state in (FROZEN, PRIMARY) and peer == ""):
                return None if raw is None else _decode(self.name, key, raw)
            if state in (FROZEN, PRIMARY):  # a range with copies: this shard's lease must run
                if not timed:
                    timed = True
                    continue
                seconds, micros = answers[1]
                if int(seconds) * 1000 + int(micros) // 1000 < self._counter("lease", lease):
                    return None if raw is None else _decode(self.name, key, raw)
                raise LeaseExpired(key, own.epoch, state)
            raise Moved(key, own.epoch, state, peer or None)
        return self._scripted_get(key, member)  # the ownership kept changing: let the server check

    def _scripted_get(self, key: int, member: bytes) -> Record | None:
        """A fenced read by the GET script (the check made on the server, from its own record)."""
        reply = self._script("get", (self._record_prefix + member, self._own), (member,), wrote=False)
        if reply is None:
            return None
        if type(reply) is bytes:
            return _decode(self.name, key, reply)
        if reply[0] == -2:
            raise LeaseExpired(key, int(reply[1]), reply[2].decode())
        self._moved(key, reply)

    def put(self, key: int, value: bytes, expected_version: int | None = None) -> int:
        """Write ``value`` (one atomic script call); return the new version.

        With ``expected_version`` it is a compare-and-set (0: must be absent);
        a mismatch raises :class:`~dhtcart.errors.VersionConflict` and changes nothing.
        """
        member = _member(key)
        expected = "" if expected_version is None else str(int(expected_version))
        if self.fenced:
            reply = self._script("put", self._fence_keys(member), (member, value, expected, "1"), wrote=True)
        else:
            keys = (self._record_prefix + member, self._index)
            reply = self._script("put", keys, (member, value, expected, ""), wrote=True)
        if reply[0] == 1:
            return int(reply[1])
        if reply[0] == 0:
            _conflict(key, expected_version, int(reply[1]))
        if reply[0] == -3:  # a replicated write of the key is pending: the store finishes it first
            raise WriteInFlight(key, self._decode_pending(key, reply[1], ""))
        self._moved(key, reply)

    def delete(self, key: int, expected_version: int | None = None) -> bool:
        """Remove ``key`` (one atomic script call); return whether it existed.

        With ``expected_version`` the delete is conditional (0: must be absent,
        which deletes nothing and returns ``False``); a mismatch raises
        :class:`~dhtcart.errors.VersionConflict` and changes nothing.
        """
        member = _member(key)
        expected = "" if expected_version is None else str(int(expected_version))
        if self.fenced:
            reply = self._script("delete", self._fence_keys(member), (member, expected, "1"), wrote=True)
        else:
            keys = (self._record_prefix + member, self._index)
            reply = self._script("delete", keys, (member, expected, ""), wrote=True)
        status = reply[0]
        if status == 0:
            _conflict(key, expected_version, int(reply[1]))
        if status == -3:  # a replicated write of the key is pending: the store finishes it first
            raise WriteInFlight(key, self._decode_pending(key, reply[1], ""))
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
        call, client = self.connection.call, self.connection.client
        low = b"-" if lo < 0 else b"(" + _member(lo)
        high = b"+" if hi >= _MAX_KEY else b"[" + _member(hi)
        remaining = limit
        while remaining is None or remaining > 0:
            n = _SCAN_BATCH if remaining is None else min(_SCAN_BATCH, remaining)
            members: list[bytes] = call(client.zrangebylex, self._index, low, high, 0, n)
            if not members:
                return
            raws: list[bytes | None] = call(client.mget, [self._record_prefix + m for m in members])
            batch: list[tuple[int, Record]] = []
            for m, raw in zip(members, raws, strict=True):
                if raw is not None:
                    k = int(m, 16)
                    batch.append((k, _decode(self.name, k, raw)))
            if remaining is not None:
                batch = batch[:remaining]
                remaining -= len(batch)
            yield from batch
            if len(members) < n:
                return
            low = b"(" + members[-1]

    def count(self) -> int:
        """Return the number of keys stored (``ZCARD`` of the index)."""
        return int(self.connection.call(self.connection.client.zcard, self._index))

    # -- ownership ------------------------------------------------------------------

    def _read_ownership(self, *, stale: bool = False) -> tuple[int, bytes | None, Ownership]:
        """``(gen, id, record)``, as they were together on the server, and cached: one ``HMGET``
        when the cached record is current (its generation and id), else the record read whole
        (one ``HMGET`` of the packed segments; for a record without them, a transaction with the
        set). ``stale``: the caller saw the cache out of date, so it is read whole at once."""
        call, client = self.connection.call, self.connection.client
        if not stale:
            raw_gen, raw_id = call(client.hmget, self._own_meta, "gen", "id")
            gen = self._counter("gen", raw_gen)
            cached_gen, cached_id, cached = self._own_cache
            if gen == cached_gen and raw_id == cached_id:
                return gen, cached_id, cached
        g, token, epoch, leased, own_id, packed, packed_gen = call(
            client.hmget, self._own_meta, "gen", "token", "epoch", "leased", "id", "segs", "segs_gen"
        )
        if packed and packed_gen == g:  # one command: the hash as it was at once
            segments: Segments | None = _unpack_segments(self.name, packed)
        else:  # written by a script that kept the set only: read both in one transaction
            pipe = client.pipeline(transaction=True)
            pipe.hmget(self._own_meta, "gen", "token", "epoch", "leased", "id")
            pipe.zrange(self._own, 0, -1)
            (g, token, epoch, leased, own_id), members = call(pipe.execute)
            segments = _parse_segments(self.name, members) if members else None
        gen = self._counter("gen", g)
        if segments is not None:
            own = Ownership(self._counter("epoch", epoch), self._counter("token", token), segments, leased == b"1")
        else:
            own = Ownership.nothing()
        self._own_cache = (gen, own_id, own)
        return gen, own_id, own

    def _cache_whole(
        self, raw_gen: bytes | None, own_id: bytes | None, token: bytes | None, epoch: bytes | None, *rest: bytes | None
    ) -> tuple[int, bytes | None, Ownership]:
        """Cache the ownership record of a read's ``HMGET`` of :data:`_WHOLE_FIELDS` (after ``gen``,
        ``lease``, ``id``), and return it as :meth:`_read_ownership` does; a generation of -1 when
        the record has no packed segments of its generation (then read it from the set)."""
        leased, packed, packed_gen = rest
        if not packed or packed_gen != raw_gen:
            return -1, None, self._own_cache[2]
        gen = self._counter("gen", raw_gen)
        own = Ownership(
            self._counter("epoch", epoch),
            self._counter("token", token),
            _unpack_segments(self.name, packed),
            leased == b"1",
        )
        self._own_cache = (gen, own_id, own)
        return gen, own_id, own

    def _counter(self, field: str, raw: bytes | None) -> int:
        """A counter of the ownership hash (absent: 0); :class:`CorruptData` if it is not one."""
        if raw is None:
            return 0
        if not raw.isdigit():
            raise CorruptData(f"shard {self.name!r}: corrupt ownership record in Redis: {field} is {raw[:32]!r}")
        return int(raw)

    def ownership(self) -> Ownership:
        return self._read_ownership()[2]

    def _set_ownership(
        self,
        expected: tuple[int, bytes | None] | None,
        token: int,
        new: Ownership,
        old: Ownership | None,
        force: bool = False,
    ) -> Any:
        """The SET_OWNERSHIP script: ``new`` in place of ``old``, read at ``expected`` (its generation
        and id; ``None``: a claim, whatever is there)."""
        if old is None:
            removes: list[bytes | str] = ["all"]
            adds = _members(new.segments)
        else:
            before, after = set(_members(old.segments)), set(_members(new.segments))
            gone, added = sorted(before - after), sorted(after - before)
            removes = [str(len(gone)), *gone]
            adds = added
        args = [
            "" if expected is None else str(expected[0]),
            str(token),
            str(new.epoch),
            "1" if force else "",
            "1" if new.leased else "0",
            removes[0],
            b"" if expected is None or expected[1] is None else expected[1],
            _pack_segments(new.segments),
            *removes[1:],
            *adds,
        ]
        return self._script("set_ownership", (self._own, self._own_meta), args, wrote=True)

    def update_ownership(
        self,
        token: int,
        epoch: int,
        changes: Sequence[Change] = (),
        expect: str | None = None,
        *,
        leased: bool | None = None,
    ) -> Ownership:
        for _ in range(32):
            gen, own_id, current = self._read_ownership()
            new = apply_changes(current, token, epoch, changes, expect, leased)
            if new == current:
                return current
            status, value, *made = self._set_ownership((gen, own_id), new.token, new, current)
            if status == 1:
                self._own_cache = (int(value), made[0], new)
                return new
            if status == -1:
                raise LeaseLost(f"shard {self.name!r} has seen rebalancer token {value}, newer than {token}")
        raise LeaseLost(f"shard {self.name!r}: its ownership record kept changing under this rebalancer")

    def claim(self, ownership: Ownership, *, force: bool = False) -> None:
        status, value, *made = self._set_ownership(None, ownership.token, ownership, None, force)
        if status == -1:
            raise LeaseLost(f"shard {self.name!r} has seen rebalancer token {value}, newer than {ownership.token}")
        self._own_cache = (int(value), made[0], ownership)

    def _range_script(
        self, token: int, ranges: Sequence[tuple[int, int]], mode: str, pairs: Sequence[bytes]
    ) -> tuple[int, int]:
        bounds: list[bytes] = []
        for lo, hi in ranges:
            bounds += _lex_range(lo, hi)
        what = "drop" if mode == "drop" else "import"
        deleted = changed = rounds = 0
        while changed < 32 and rounds < _MAX_MARK_CALLS:
            gen, own_id, own = self._read_ownership()
            own.check_token(token)
            for lo, hi in ranges:
                own.check_unserved(lo, hi, what)
            args: list[bytes | str] = [str(gen), str(token), self._record_prefix, mode, str(len(ranges))]
            args += [self._pending_prefix, own_id or b"", self._mark_prefix]
            args += bounds
            args += pairs
            reply = self._script("ranges", (self._index, self._own_meta, self._pidx, self._midx), args, wrote=True)
            if reply[0] == -2:  # checked in the server too: the cached record may be older than the shard
                raise LeaseLost(f"shard {self.name!r} has seen rebalancer token {reply[1]}, newer than {token}")
            if reply[0] == -1:  # the ownership record changed since the check: check again
                changed += 1
            elif len(reply) > 2:  # marks left to delete first: again (at most 1,000 per call)
                deleted += int(reply[0])
                rounds += 1
            else:
                return deleted + int(reply[0]), int(reply[1])
        if rounds >= _MAX_MARK_CALLS:  # never while this rebalancer holds the lease: nothing else writes there
            raise StoreBusy(f"shard {self.name!r}: the ranges' marks kept coming ({rounds:,} rounds of 1,000 cleared)")
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
        call, client = self.connection.call, self.connection.client
        low, high = _lex_range(lo, hi)
        found = call(client.zrangebylex, self._index, low, high, n - 1, 1)
        if found:
            return int(found[0], 16), n
        return hi, int(call(client.zlexcount, self._index, low, high))

    # -- replicated writes and leases (docs/replication.md) -------------------------------

    def _pending_keys(self, member: bytes) -> tuple[bytes, bytes]:
        return self._pending_prefix + member, self._pidx

    def decide(self, key: int, value: bytes | None, expected_version: int | None = None) -> Pending:
        """Decide a replicated write on this primary: one script, atomic with the ownership check."""
        member = _member(key)
        expected = "" if expected_version is None else str(int(expected_version))
        keys = (
            self._record_prefix + member,
            self._own,
            self._own_meta,
            *self._pending_keys(member),
            self._mark_prefix + member,
        )
        args = (member, value if value is not None else b"", expected, "1" if value is None else "")
        reply = self._script("decide", keys, args, wrote=True)
        status = reply[0]
        if status == 1:
            return Pending(key, int(reply[1]), int(reply[2]), value, reply[3].decode(), int(reply[4]))
        if status == 2:
            return Pending(key, 0, 0, None, reply[3].decode())
        if status == 0:
            _conflict(key, expected_version, int(reply[1]))
        if status == -3:
            raise WriteInFlight(key, self._decode_pending(key, reply[1], reply[2]))
        self._moved(key, reply)

    def _decode_pending(self, key: int, raw: bytes, backups: bytes | str) -> Pending:
        try:
            return Pending.decode(key, raw, backups.decode() if isinstance(backups, bytes) else backups)
        except CorruptData as exc:
            raise CorruptData(f"shard {self.name!r}: {exc}") from None

    def pending(self, key: int) -> Pending | None:
        member = _member(key)
        raw, backups = self._script("pending", (self._own, self._pending_prefix + member), (member,), wrote=False)
        return None if not raw else self._decode_pending(key, raw, backups)

    def scan_pending(self, lo: int, hi: int) -> list[Pending]:
        call, client = self.connection.call, self.connection.client
        low, high = _lex_range(lo, hi)
        members: list[bytes] = call(client.zrangebylex, self._pidx, low, high)
        if not members:
            return []
        raws: list[bytes | None] = call(client.mget, [self._pending_prefix + m for m in members])
        own = self.ownership()
        out = []
        for member, raw in zip(members, raws, strict=True):
            if raw is None:
                continue  # committed meanwhile
            key = int(member, 16)
            state, peer = own.segments.lookup(key)
            out.append(self._decode_pending(key, raw, "" if state == BACKUP else peer))
        return out

    def commit(self, key: int, version: int, life: int) -> bool:
        member = _member(key)
        keys = (
            self._record_prefix + member,
            self._index,
            *self._pending_keys(member),
            self._mark_prefix + member,
            self._midx,
        )
        return bool(self._script("commit", keys, (member, str(version), str(life)), wrote=True) == 1)

    def _apply_call(self, primary: str, pending: Pending) -> tuple[tuple[bytes, ...], tuple[bytes | str, ...]]:
        member = _member(pending.key)
        keys = (
            self._record_prefix + member,
            self._index,
            self._own,
            self._own_meta,
            self._mark_prefix + member,
            self._midx,
        )
        delete = pending.value is None
        args = (
            member,
            primary,
            str(pending.prev),
            str(pending.version),
            pending.value or b"",
            "1" if delete else "",
            str(pending.life),
        )
        return keys, args

    def apply(self, primary: str, pending: Pending) -> None:
        reply = self._script("apply", *self._apply_call(primary, pending), wrote=True)
        if reply != 1:
            self._moved(pending.key, reply)

    def send_apply(self, primary: str, pending: Pending) -> Callable[[], None]:
        """Send the apply now (one ``EVALSHA`` written, its reply not yet read); the function reads it."""
        read = self.connection.send(self._scripts["apply"], *self._apply_call(primary, pending))

        def outcome() -> None:
            reply = read()
            if reply != 1:
                self._moved(pending.key, reply)

        return outcome

    def repair_entries(self, token: int, entries: Sequence[Entry]) -> int:
        written = 0
        for start in range(0, len(entries), _IMPORT_BATCH):
            args: list[bytes | str] = [str(token), self._record_prefix, self._mark_prefix]
            for key, life, version, value in entries[start : start + _IMPORT_BATCH]:
                grave = value is None
                args += (_member(key), str(int(life)), str(int(version)), "1" if grave else "", bytes(value or b""))
            reply = self._script("repair", (self._index, self._own_meta, self._midx), args, wrote=True)
            if isinstance(reply, list):
                raise LeaseLost(f"shard {self.name!r} has seen rebalancer token {reply[1]}, newer than {token}")
            written += int(reply)
        return written

    def marks(self, ranges: Sequence[tuple[int, int]]) -> dict[int, Mark]:
        """The marks of the ``ranges``: the first :data:`_SCAN_BATCH` members of every range in one
        round trip, further pages range by range, values :data:`_SCAN_BATCH` per ``MGET``."""
        call, client = self.connection.call, self.connection.client
        bounds = [_lex_range(lo, hi) for lo, hi in ranges]
        pipe = client.pipeline(transaction=False)
        for low, high in bounds:
            pipe.zrangebylex(self._midx, low, high, 0, _SCAN_BATCH)
        pages: list[list[bytes]] = call(pipe.execute) if bounds else []
        members: list[bytes] = []
        for (_, high), page in zip(bounds, pages, strict=True):
            members += page
            while len(page) == _SCAN_BATCH:  # graves are many: page on
                page = call(client.zrangebylex, self._midx, b"(" + page[-1], high, 0, _SCAN_BATCH)
                members += page
        out: dict[int, Mark] = {}
        for start in range(0, len(members), _SCAN_BATCH):
            chunk = members[start : start + _SCAN_BATCH]
            raws: list[bytes | None] = call(client.mget, [self._mark_prefix + m for m in chunk])
            for member, raw in zip(chunk, raws, strict=True):
                if raw is None:
                    continue
                try:
                    out[int(member, 16)] = decode_mark(raw)
                except CorruptData as exc:
                    raise CorruptData(f"shard {self.name!r}: {exc}") from None
        return out

    def import_marks(self, token: int, ranges: Sequence[tuple[int, int]], marks: dict[int, Mark]) -> None:
        """The ranges' marks deleted (1,000 per script call), then ``marks`` written, at most
        :data:`_IMPORT_BATCH` per call: no call holds the server for long."""
        self._range_script(token, ranges, "marks", ())
        items = sorted(marks.items())
        for start in range(0, len(items), _IMPORT_BATCH):
            pairs: list[bytes] = []
            for key, mark in items[start : start + _IMPORT_BATCH]:
                pairs += (_member(key), encode_mark(*mark))
            self._range_script(token, ranges, "addmarks", pairs)

    def renew_lease(self, epoch: int, until: float) -> float:
        reply = self._script("renew", (self._own_meta,), (str(epoch), str(int(until * 1000))), wrote=True)
        return int(reply) / 1000

    def lease(self) -> float:
        raw = self.connection.call(self.connection.client.hget, self._own_meta, "lease")
        return self._counter("lease", raw) / 1000

    def pause(self, seconds: float) -> None:
        """Pause every client of the server for ``seconds`` (``CLIENT PAUSE ... ALL``).

        Commands sent meanwhile wait in the server and run when the pause ends;
        a client whose reply takes longer than its timeout gets
        :class:`~dhtcart.errors.ShardUnavailable` (the command may still run later).
        Affects every user of that server, not only this shard.
        """
        ms = int(check_seconds("seconds", seconds) * 1000)
        self.connection.call(self.connection.client.execute_command, "CLIENT", "PAUSE", max(ms, 1), "ALL")

    def close(self) -> None:
        """Drop the connections. Idempotent; later calls raise :class:`~dhtcart.errors.StoreClosed`."""
        if not self.connection.closed:
            self.connection.close()

    def destroy(self) -> None:
        """Delete every Redis key this backend owns (under its prefix), then close.

        Other keys in the database are untouched. Works on a closed backend too.
        """
        try:
            with self.connection.errors(wrote=True):
                self._destroy()
        finally:
            self.connection.close()

    def _destroy(self) -> None:
        client = self.connection.client
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
        for prefix in (self._pending_prefix, self._mark_prefix):
            for chunk in _chunks(client.scan_iter(match=_glob_escape(prefix) + b"*", count=1000), 1000):
                client.delete(*chunk)
        client.delete(self._index, self._own, self._own_meta, self._pidx, self._midx)
        self._own_cache = (-1, None, Ownership.nothing())

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
