"""The Lua scripts of the Redis backend, each with what it takes and what it answers.

A script runs whole on the server, or not at all: every single-key write, a
fenced read (the ownership check and the read in one step), an ownership
change and a migration's copy or drop is one script call, so no other client
ever sees half of one. The backend registers every script of :data:`SCRIPTS`
once per connection (:meth:`~dhtcart.backends.redis.connection.RedisConnection.scripts`,
redis-py's ``register_script``): each call is one ``EVALSHA``, and a server
that answers ``NOSCRIPT`` (restarted, or after ``SCRIPT FLUSH``) is sent the
script and asked again, which is safe because ``NOSCRIPT`` means it did not run.

To add a script: write its source here with a comment saying its ``KEYS``,
``ARGV`` and replies, add it to :data:`SCRIPTS`, and call it by name from the
backend (``self._script("name", keys, args, wrote=...)``). Its errors are
mapped with every other command's (:mod:`dhtcart.backends.redis.connection`).

Conventions shared by every script:

* a record is a string, its version as 8 bytes big-endian then the value
  bytes; scripts read the version with ``GETRANGE 0 7`` (never the value) and
  write it with ``struct.pack('>I8', v)``. Lua numbers are doubles, exact up
  to ``2**53``: no version counted one write at a time gets near it;
* a member of the index (and of the ownership set) is a key as 16 lowercase
  hex digits, every score 0, so ``ZRANGEBYLEX`` orders them like the integers;
* an ownership segment is the member ``<16 hex digits of its last key>:<state>:<peer>``:
  the state is the character at position 18, the peer starts at 20;
* a refusal because the shard does not own the key is the reply
  ``{-1, epoch, state, peer}`` (the backend raises :class:`~dhtcart.errors.Moved`).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["DELETE", "FENCE", "GET", "PUT", "RANGES", "SCRIPTS", "SET_OWNERSHIP"]

#: Not a script: the ownership check that :data:`PUT` and :data:`DELETE` start with.
#: ``KEYS[3]`` is the ownership set, ``KEYS[4]`` its hash. ``refused(member, write)``
#: returns false when the operation may go on, else the redirect ``{-1, epoch, state, peer}``
#: (owned: reads and writes; frozen: reads only; a shard without a record owns nothing).
FENCE = """
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

#: A fenced read. ``KEYS[1]`` record, ``KEYS[2]`` ownership set (its hash is
#: ``KEYS[2] .. ':meta'``); ``ARGV[1]`` the key's member. Replies the raw record,
#: nil when absent, or the redirect. (The shortest script of all: a fenced get
#: should cost little more than a ``GET``.)
GET = """
local seg = redis.call('ZRANGEBYLEX', KEYS[2], '[' .. ARGV[1], '+', 'LIMIT', 0, 1)[1]
local state, peer = '-', ''
if seg then
  state = string.sub(seg, 18, 18)
  if state == 'o' or state == 'f' then return redis.call('GET', KEYS[1]) end
  peer = string.sub(seg, 20)
end
return {-1, tonumber(redis.call('HGET', KEYS[2] .. ':meta', 'epoch') or '0'), state, peer}
"""

#: A put or compare-and-set. ``KEYS[1]`` record, ``KEYS[2]`` index (fenced: ``KEYS[3]``,
#: ``KEYS[4]`` as in :data:`FENCE`); ``ARGV[1]`` member, ``ARGV[2]`` value, ``ARGV[3]``
#: the expected version (``""``: unconditional; ``0``: must be absent), ``ARGV[4]`` ``"1"``
#: when fenced. Replies ``{1, new version}``; ``{0, current version}`` when the
#: compare-and-set failed (nothing changed); or the redirect.
PUT = (
    FENCE
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

#: A delete, conditional or not. ``KEYS`` as for :data:`PUT`; ``ARGV[1]`` member,
#: ``ARGV[2]`` the expected version (``""``: unconditional), ``ARGV[3]`` ``"1"`` when
#: fenced. Replies ``{1, version}`` deleted, ``{2, 0}`` absent, ``{0, current version}``
#: when the condition failed (nothing changed), or the redirect.
DELETE = (
    FENCE
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

#: An ownership change. ``KEYS[1]`` ownership set, ``KEYS[2]`` its hash (``gen``,
#: ``token``, ``epoch``); ``ARGV[1]`` the generation the caller computed from (``""``
#: for a claim: any), ``ARGV[2]`` token, ``ARGV[3]`` epoch, ``ARGV[4]`` ``"1"`` to skip
#: the token check (a store claiming shards it alone owns), ``ARGV[5]`` how many members
#: to remove (``"all"``: every member), then the members to remove, then those to add.
#: Replies ``{1, gen}`` done; ``{0, gen}`` the record changed meanwhile (recompute);
#: ``{-1, token}`` a newer token was seen. Only ``{1, gen}`` changed anything.
SET_OWNERSHIP = """
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

#: A migration's copy or drop of whole ranges. ``KEYS[1]`` index, ``KEYS[2]``
#: ownership hash; ``ARGV[1]`` the generation the caller checked the ranges against,
#: ``ARGV[2]`` its token, ``ARGV[3]`` the record-key prefix, ``ARGV[4]`` ``"drop"``,
#: ``"import"`` or ``"add"``, ``ARGV[5]`` how many ranges, then their ``ZRANGEBYLEX``
#: bounds (two each), then member, record pairs to write. ``"drop"`` deletes up to
#: 1,000 records of the ranges (call again while it answers 1,000); ``"import"``
#: deletes all of them, then writes the pairs; ``"add"`` only writes them (the next
#: part of one import). Replies ``{deleted, written}``; ``{-1, 0}`` when the ownership
#: changed since the caller's check (check again); ``{-2, token}`` when a newer
#: rebalancer token was seen. Both refusals change nothing.
RANGES = """
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

#: Every script of the backend, by the name the backend calls it by. Registered
#: once per connection; nothing else sends Lua to a shard.
SCRIPTS: Mapping[str, str] = MappingProxyType(
    {
        "get": GET,
        "put": PUT,
        "delete": DELETE,
        "set_ownership": SET_OWNERSHIP,
        "ranges": RANGES,
    }
)
