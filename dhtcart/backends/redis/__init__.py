"""Redis shards: each shard on one Redis (or Valkey) server or database.

Selected by ``redis://[user:password@]host:port/db`` or ``rediss://...`` (TLS).
Works with Redis 7+ and Valkey 8 through redis-py; this package is the only
part of dhtcart that imports ``redis`` (install the extra:
``pip install "dhtcart[redis]"``), and ``import dhtcart`` does not import it.

One module per concern:

:mod:`~dhtcart.backends.redis.connection`
    reaching a database: the URL (:class:`~dhtcart.backends.redis.connection.RedisTarget`),
    the masked address, the password from ``DHTCART_REDIS_PASSWORD``, the
    connection pool with redis-py's retries off
    (:class:`~dhtcart.backends.redis.connection.RedisConnection`), and **the one
    place where redis-py's exceptions become dhtcart's**
    (:data:`~dhtcart.backends.redis.connection.ERROR_MAP`). The membership kept
    in Redis (:mod:`dhtcart.membership.redis`) uses it too.
:mod:`~dhtcart.backends.redis.scripts`
    the Lua scripts, each with its ``KEYS``, ``ARGV`` and replies, and
    :data:`~dhtcart.backends.redis.scripts.SCRIPTS`, the table the backend
    registers (redis-py's ``register_script``: ``EVALSHA``, reloaded on ``NOSCRIPT``).
:mod:`~dhtcart.backends.redis.backend`
    :class:`RedisBackend`: records, the sorted-set index, the ownership record
    and the migration protocol, over one connection.

>>> b = RedisBackend.from_url("redis://app:s3cret@db.example:6380/2?timeout=0.5", name="r1")
>>> b.name, b.url, b.address, b.prefix
('r1', 'redis://app:***@db.example:6380/2?timeout=0.5', 'redis://db.example:6380/2', 'dhtcart:')
>>> b.close()

Failure, in short (``docs/redis.md`` says more): a connection refused, reset or
timed out (``?timeout=`` seconds, 2 by default) raises
:class:`~dhtcart.errors.ShardUnavailable` naming the shard and its address; a
write whose reply was lost is ``unknown`` (applied completely or not at all:
each write is one atomic script); a server out of memory raises
:class:`~dhtcart.errors.ShardFull`; data under the prefix that dhtcart did not
write raises :class:`~dhtcart.errors.CorruptData`. When the server comes back,
the same backend object works again.
"""

from __future__ import annotations

from dhtcart.backends.redis.backend import RedisBackend
from dhtcart.backends.redis.connection import DEFAULT_PREFIX, DEFAULT_TIMEOUT, RedisConnection, RedisTarget
from dhtcart.settings import REDIS_PASSWORD_ENV as PASSWORD_ENV

__all__ = ["DEFAULT_PREFIX", "DEFAULT_TIMEOUT", "PASSWORD_ENV", "RedisBackend", "RedisConnection", "RedisTarget"]
