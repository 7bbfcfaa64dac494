"""What a fenced Redis read costs, done each of the ways issue 16 asked to compare (and one more), in one run.

    python benchmarks/redis_fence.py                 # 3,000 reads per way, 7 rounds
    python benchmarks/redis_fence.py --reads 10000 --rounds 9

A fenced read must check the shard's ownership of the key in the same atomic
step as the read (docs/redis.md). The ways measured, on one server the script
starts on a loopback port, one client thread, the same 3,000 keys of 100-byte
records, interleaved round by round:

* **raw GET** (redis-py ``client.get``): no fence at all, the floor;
* **script, redis-py**: the ``GET`` Lua script through redis-py's
  ``register_script`` (``EVALSHA``), as dhtcart read until 2026-12-06;
* **script, packed**: the same ``EVALSHA`` packed and read on a pool connection
  (:meth:`~dhtcart.backends.redis.connection.RedisConnection.run`), skipping
  redis-py's command layer;
* **MULTI, redis-py**: ``pipeline(transaction=True)`` of ``HMGET`` of the
  ownership hash and ``GET``;
* **MULTI, packed**: the same transaction packed by hand, what
  :meth:`RedisBackend.get <dhtcart.backends.redis.RedisBackend.get>` sent from
  2026-12-06 (the client then checks the key against its cached ownership of
  the generation it read), and still sends for a read under a lease;
* **GET then HMGET, packed**: the record, then the ownership record's
  generation and id, in one write without ``MULTI``: what
  :meth:`RedisBackend.get <dhtcart.backends.redis.RedisBackend.get>` sends
  since 2026-12-07 outside a lease (the generation checked after the read,
  docs/redis.md);
* **dhtcart fenced get**: ``RedisBackend.get`` on a fenced backend, all of it.

``WATCH`` is not among them: a read needs no optimistic lock (the transaction
already reads the generation with the record), and a write under ``WATCH``
takes two round trips (``WATCH`` and the read, then ``MULTI``/``SET``/``EXEC``)
where its script takes one.

For each: wall µs per read (median of the rounds), the client's CPU µs per read
(``time.process_time``), and the server's µs per read from ``INFO
commandstats`` (the sum over the commands one read sends, measured in a round
of its own after a ``CONFIG RESETSTAT``). On a machine where the client and the
server share the CPUs, client CPU plus server µs is what one read costs.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from dhtcart import DHTServerStore  # noqa: E402
from dhtcart.backends.redis import RedisBackend  # noqa: E402
from dhtcart.backends.redis.connection import pack_command  # noqa: E402

VALUE = b"v" * 100


def _ways(backend: RedisBackend) -> dict[str, Callable[[int], Any]]:
    connection = backend.connection
    client = connection.client
    script = backend._scripts["get"]
    own, meta, prefix = backend._own, backend._own_meta, backend._record_prefix

    def member(key: int) -> bytes:
        return b"%016x" % key

    def script_redis_py(key: int) -> Any:
        m = member(key)
        return script(keys=[prefix + m, own], args=[m])

    def script_packed(key: int) -> Any:
        m = member(key)
        return connection.run(script, (prefix + m, own), (m,), wrote=False)

    def multi_redis_py(key: int) -> Any:
        pipe = client.pipeline(transaction=True)
        pipe.hmget(meta, "gen", "lease", "epoch", "token")
        pipe.get(prefix + member(key))
        return pipe.execute()

    head = pack_command("MULTI") + pack_command("HMGET", meta, "gen", "lease", "epoch", "token")
    tail = pack_command("EXEC")

    def multi_packed(key: int) -> Any:
        packed = head + pack_command("GET", prefix + member(key)) + tail
        return connection.send_packed(packed, replies=4, wrote=False)()

    check = pack_command("HMGET", meta, "gen", "id")

    def pipelined(key: int) -> Any:
        packed = pack_command("GET", prefix + member(key)) + check
        return connection.send_packed(packed, replies=2, wrote=False, every=True)()

    return {
        "raw GET (no fence)": lambda key: client.get(prefix + member(key)),
        "script, redis-py": script_redis_py,
        "script, packed": script_packed,
        "MULTI, redis-py": multi_redis_py,
        "MULTI, packed": multi_packed,
        "GET then HMGET, packed (no MULTI)": pipelined,
        "dhtcart fenced get": backend.get,
    }


def _round(fn: Callable[[int], Any], keys: list[int]) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    for k in keys:
        fn(k)
    n = len(keys)
    return (time.perf_counter() - t0) / n * 1e6, (time.process_time() - c0) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=3000, help="reads per way per round (default 3,000)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds; medians (default 7)")
    args = parser.parse_args(argv)
    from tests.redis_server import RedisServer, find_server_binary

    binary = find_server_binary()
    if binary is None:
        print("no redis-server found (see tests/redis_server.py)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="dhtcart-fence-") as tmp:
        server = RedisServer(tmp, binary=binary).start()
        try:
            store = DHTServerStore({"r0": f"{server.url}?prefix=fence:"})
            backend = store.servers["r0"].backend
            assert isinstance(backend, RedisBackend) and backend.fenced
            rng = random.Random(1)
            keys = [rng.getrandbits(63) for _ in range(args.reads)]
            for k in keys:
                store.put(k, VALUE)
            ways = _ways(backend)
            for fn in ways.values():  # warm: scripts loaded, ownership cached, connections made
                fn(keys[0])
            wall: dict[str, list[float]] = {name: [] for name in ways}
            cpu: dict[str, list[float]] = {name: [] for name in ways}
            for _ in range(args.rounds):
                for name, fn in ways.items():
                    w, c = _round(fn, keys)
                    wall[name].append(w)
                    cpu[name].append(c)
            admin = redis.Redis(host="127.0.0.1", port=server.port)
            server_us: dict[str, float] = {}
            for name, fn in ways.items():
                admin.config_resetstat()
                _round(fn, keys)
                stats = admin.info("commandstats")
                total = sum(v["usec"] for k, v in stats.items() if not k.startswith(("cmdstat_config", "cmdstat_info")))
                server_us[name] = total / len(keys)
            admin.close()
            store.close()
        finally:
            server.stop()
    print(
        f"`python benchmarks/redis_fence.py --reads {args.reads} --rounds {args.rounds}`,"
        f" {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {binary}; Python"
        f" {platform.python_version()}, redis-py {redis.__version__}; one client thread, loopback"
    )
    print()
    print("| way | wall µs / read | client CPU µs / read | server µs / read | client CPU + server |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in ways:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"| {name} | {w:.1f} | {c:.1f} | {server_us[name]:.1f} | {c + server_us[name]:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
