"""Where a fenced Redis write's server time goes: dhtcart's put script taken apart, step by step, in one run.

    python benchmarks/redis_write_cost.py                    # 1,000-byte values (YCSB's record), 5 rounds
    python benchmarks/redis_write_cost.py --value-size 100 --writes 5000 --rounds 7
    python benchmarks/redis_write_cost.py --servers 3 --keys 20000   # as YCSB's store spreads its writes

Every dhtcart write on Redis is one ``EVALSHA`` of the ``put`` script
(:data:`dhtcart.backends.redis.scripts.PUT`): the ownership check, the
version read, the record written with its new version in front. A plain
``SET`` is what raw redis-py sends. This script starts one server on a
loopback port and measures, with ``INFO commandstats`` (the server's own
microseconds per call, after a ``CONFIG RESETSTAT``), a ladder of scripts
that each add one step to the one before (rung 9 swaps one for another):

1. ``SET`` (no script): the floor;
2. ``EVALSHA`` of a script that returns at once, no arguments: the cost of a
   script call;
3. the same with the value passed as an argument (Lua gets its own copy);
4. plus ``SET`` of the argument from inside the script;
5. plus the version read (``GETRANGE 0 7`` and ``struct.unpack``);
6. plus the version packed in front of the value (a second copy of it);
7. dhtcart's put script, unfenced (what a shard outside a store runs);
8. dhtcart's put script, fenced (what every write of a store runs);
9. the put script with the ownership lookup (``ZRANGEBYLEX`` and two
   ``string.sub``) replaced by a check of the generation the client cached
   (``HMGET`` of ``gen`` and ``id``, compared with two arguments): what
   issue 16's "caching the script's arguments" would save at most. Not
   what dhtcart runs: it is here to size that option.

Each rung runs ``--writes`` writes over ``--keys`` existing keys (1,000), the rungs
interleaved round by round; the figure is the median over the rounds of the
server's µs per call. ``--servers N`` starts N servers holding every key and
sends each write to the next one in turn, as a store of N shards on one
machine spreads its writes (YCSB's has three): what the servers' taking turns
on the CPUs, and so on their caches, costs each rung. The client's time is not in it: on a machine where the
client and the server share two CPUs, the server's time adds to every write's
latency.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from dhtcart.backends.redis import scripts  # noqa: E402

KEYS = 1_000  #: existing keys the writes go round (--keys)

#: the put script with the ownership lookup swapped for a cached-generation check (rung 9)
CACHED_GEN_PUT = (
    scripts._LIB  # the put script's own helpers: lookup, redirect, version
    + """
local meta = redis.call('HMGET', KEYS[4], 'gen', 'id')
if meta[1] ~= ARGV[5] or meta[2] ~= ARGV[6] then
  local state, peer = lookup(KEYS[3], ARGV[1])
  if state ~= 'o' then return redirect(KEYS[4], state, peer) end
end
local current, head = version(KEYS[1])
if ARGV[3] ~= '' and tonumber(ARGV[3]) ~= current then return {0, current} end
local version = current + 1
redis.call('SET', KEYS[1], struct.pack('>I8', version) .. ARGV[2])
if head == '' then redis.call('ZADD', KEYS[2], 0, ARGV[1]) end
return {1, version}
"""
)

#: rung -> (script source or None for a plain SET, whether it is given the fence's keys and arguments)
LADDER: dict[str, tuple[str | None, str]] = {
    "1. SET (raw redis-py's write)": (None, "set"),
    "2. EVALSHA, empty script, no argument": ("return 1", "none"),
    "3. + the value as an argument": ("return 1", "value"),
    "4. + SET of it inside the script": ("redis.call('SET', KEYS[1], ARGV[1]) return 1", "value"),
    "5. + the version read (GETRANGE, unpack)": (
        "local h = redis.call('GETRANGE', KEYS[1], 0, 7) local v = 0"
        " if h ~= '' then v = struct.unpack('>I8', h) end"
        " redis.call('SET', KEYS[1], ARGV[1]) return v",
        "value",
    ),
    "6. + the version packed in front (a copy)": (
        "local h = redis.call('GETRANGE', KEYS[1], 0, 7) local v = 0"
        " if h ~= '' then v = struct.unpack('>I8', h) end"
        " redis.call('SET', KEYS[1], struct.pack('>I8', v + 1) .. ARGV[1]) return v",
        "value",
    ),
    "7. dhtcart put script, unfenced": (scripts.PUT, "put"),
    "8. dhtcart put script, fenced (a store's write)": (scripts.PUT, "fenced"),
    "9. put with a cached-generation check (not dhtcart's)": (CACHED_GEN_PUT, "cached"),
}


def _member(i: int) -> bytes:
    return b"%016x" % (i * 0x9E3779B97F4A7C15 % (1 << 63))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=3000, help="writes per rung per round (default 3,000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians (default 5)")
    parser.add_argument("--value-size", type=int, default=1000, help="bytes per value (default 1,000: YCSB's)")
    parser.add_argument("--keys", type=int, default=KEYS, help="existing keys the writes go round (default 1,000)")
    parser.add_argument(
        "--servers", type=int, default=1, help="servers the writes take turns on (default 1; YCSB's store has 3)"
    )
    args = parser.parse_args(argv)
    keys = args.keys
    from tests.redis_server import RedisServer, find_server_binary

    binary = find_server_binary()
    if binary is None:
        print("no redis-server found (see tests/redis_server.py)", file=sys.stderr)
        return 2
    value = os.urandom(args.value_size)
    per_call: dict[str, list[float]] = {name: [] for name in LADDER}
    with tempfile.TemporaryDirectory(prefix="dhtcart-writes-") as tmp:
        servers = [RedisServer(Path(tmp) / f"s{n}", binary=binary).start() for n in range(args.servers)]
        try:
            clients = [redis.Redis(host="127.0.0.1", port=server.port) for server in servers]
            own, meta, index = b"w:own", b"w:own:meta", b"w:idx"
            members = [_member(i) for i in range(keys)]
            records = [b"w:r:" + m for m in members]
            for client in clients:  # every server holds every key: a write goes to one of them in turn
                client.zadd(own, {b"7fffffffffffffff:o:": 0})  # one segment: the shard owns every key
                client.hset(meta, mapping={"gen": 7, "id": "1.2", "epoch": 3, "token": 1})
                for rec, m in zip(records, members):
                    client.set(rec, (1).to_bytes(8, "big") + value)
                    client.zadd(index, {m: 0})
            for client in clients:  # the same source, the same SHA on every server
                shas = {name: client.script_load(src) for name, (src, _) in LADDER.items() if src is not None}

            def one(name: str, i: int) -> None:
                src, kind = LADDER[name]
                j = i * 7919 % keys  # spread over every key, in the same order on every rung
                rec, m = records[j], members[j]
                client = clients[i % len(clients)]
                if src is None:
                    client.set(rec, value)
                elif kind == "none":
                    client.evalsha(shas[name], 0)
                elif kind == "value":
                    client.evalsha(shas[name], 1, rec, value)
                elif kind == "put":
                    client.evalsha(shas[name], 2, rec, index, m, value, "", "")
                elif kind == "fenced":  # the fifth key: the key's pending replicated write (none here)
                    client.evalsha(shas[name], 5, rec, index, own, meta, b"w:p:" + m, m, value, "", "1")
                else:
                    client.evalsha(shas[name], 4, rec, index, own, meta, m, value, "", "1", "7", "1.2")

            command = {"set": "cmdstat_set"}
            for name in LADDER:  # warm, and check each rung answers what it should
                one(name, 0)
            for _ in range(args.rounds):
                for name, (_, kind) in LADDER.items():
                    for client in clients:
                        client.config_resetstat()
                    for i in range(args.writes):
                        one(name, i)
                    stats = [client.info("commandstats")[command.get(kind, "cmdstat_evalsha")] for client in clients]
                    per_call[name].append(sum(x["usec"] for x in stats) / sum(x["calls"] for x in stats))
            for client in clients:
                client.close()
        finally:
            for server in servers:
                server.stop()
    command_line = (
        f"python benchmarks/redis_write_cost.py --writes {args.writes} --rounds {args.rounds}"
        f" --value-size {args.value_size} --keys {keys} --servers {args.servers}"
    )
    print(
        f"`{command_line}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {binary};"
        f" Python {platform.python_version()}, redis-py {redis.__version__}; load average {os.getloadavg()[0]:.1f}"
    )
    print()
    print("| rung | server µs / write (median) | against the rung before | against SET |")
    print("| --- | ---: | ---: | ---: |")
    floor = statistics.median(per_call[next(iter(LADDER))])
    before: float | None = None
    for name in LADDER:
        us = statistics.median(per_call[name])
        step = "" if before is None else f"{us - before:+.2f}"
        print(f"| {name} | {us:.2f} | {step} | {us / floor:.1f}x |")
        before = us
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
