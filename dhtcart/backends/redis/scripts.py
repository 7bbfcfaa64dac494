"""The Lua scripts of the Redis backend, each with what it takes and what it answers.

A script runs whole on the server, or not at all: every single-key write, an
ownership change and a migration's copy or drop is one script call, so no other
client ever sees half of one. A fenced read is not a script (the backend checks
the generation read right after the record), except in the cases where it falls
back to :data:`GET`. The backend registers every script of :data:`SCRIPTS`
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

__all__ = [
    "APPLY",
    "COMMIT",
    "DECIDE",
    "DELETE",
    "FENCE",
    "GET",
    "PENDING",
    "PUT",
    "RANGES",
    "RENEW",
    "REPAIR",
    "SCRIPTS",
    "SET_OWNERSHIP",
]

#: Not a script: the functions the scripts share. ``lookup(own, member)``: the state and peer
#: that the ownership set ``own`` records for ``member`` (``'-', ''``: nothing);
#: ``redirect(meta, state, peer)``: the redirect ``{-1, epoch, state, peer}``, the epoch from
#: the ownership hash ``meta``; ``version(key)``: the version of the record under ``key`` (0:
#: absent) and its first 8 bytes (``''``: absent).
_LIB = """
local function lookup(own, member)
  local seg = redis.call('ZRANGEBYLEX', own, '[' .. member, '+', 'LIMIT', 0, 1)[1]
  if seg then return string.sub(seg, 18, 18), string.sub(seg, 20) end
  return '-', ''
end
local function redirect(meta, state, peer)
  return {-1, tonumber(redis.call('HGET', meta, 'epoch') or '0'), state, peer}
end
local function version(key)
  local head = redis.call('GETRANGE', key, 0, 7)
  if head == '' then return 0, head end
  return (struct.unpack('>I8', head)), head
end
"""

#: Not a script: the ownership check and compare-and-set that :data:`PUT` and :data:`DELETE`
#: start with. ``KEYS[1]`` is the record, ``KEYS[3]`` the ownership set, ``KEYS[4]`` its hash,
#: ``KEYS[5]`` the key's pending replicated write.
#: ``refused(member, write)`` returns false when the operation may go on, else the redirect
#: (owned: reads and writes; frozen: reads only; a shard without a record owns nothing).
#: ``checked(member, expected, fenced)`` returns ``false, version, head`` when the write may go
#: on, else the reply: the redirect, ``{-3, pending}`` when a replicated write of the key is
#: pending (decided by a handle on the replicated view during a change of the number of copies:
#: the caller finishes it first), or ``{0, current version}`` when the compare-and-set failed.
FENCE = (
    _LIB
    + """
local function refused(member, write)
  local state, peer = lookup(KEYS[3], member)
  if state == 'o' or (state == 'f' and not write) then return false end
  return redirect(KEYS[4], state, peer)
end
local function checked(member, expected, fenced)
  if fenced == '1' then
    local r = refused(member, true)
    if r then return r end
    local waiting = redis.call('GET', KEYS[5])
    if waiting then return {-3, waiting} end
  end
  local current, head = version(KEYS[1])
  if expected ~= '' and tonumber(expected) ~= current then return {0, current} end
  return false, current, head
end
"""
)

#: A put or compare-and-set. ``KEYS[1]`` record, ``KEYS[2]`` index (fenced: ``KEYS[3]`` to
#: ``KEYS[5]`` as in :data:`FENCE`); ``ARGV[1]`` member, ``ARGV[2]`` value, ``ARGV[3]``
#: the expected version (``""``: unconditional; ``0``: must be absent), ``ARGV[4]`` ``"1"``
#: when fenced. Replies ``{1, new version}``; ``{0, current version}`` when the
#: compare-and-set failed (nothing changed); ``{-3, pending}``; or the redirect.
PUT = (
    FENCE
    + """
local r, current, head = checked(ARGV[1], ARGV[3], ARGV[4])
if r then return r end
local version = current + 1
redis.call('SET', KEYS[1], struct.pack('>I8', version) .. ARGV[2])
if head == '' then redis.call('ZADD', KEYS[2], 0, ARGV[1]) end
return {1, version}
"""
)

#: A delete, conditional or not. ``KEYS`` as for :data:`PUT`; ``ARGV[1]`` member,
#: ``ARGV[2]`` the expected version (``""``: unconditional), ``ARGV[3]`` ``"1"`` when
#: fenced. Replies ``{1, version}`` deleted, ``{2, 0}`` absent, ``{0, current version}``
#: when the condition failed (nothing changed), ``{-3, pending}``, or the redirect.
DELETE = (
    FENCE
    + """
local r, current, head = checked(ARGV[1], ARGV[2], ARGV[3])
if r then return r end
if head == '' then return {2, 0} end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return {1, current}
"""
)

#: An ownership change. ``KEYS[1]`` ownership set, ``KEYS[2]`` its hash (``gen``,
#: ``token``, ``epoch``, ``id``); ``ARGV[1]`` the generation the caller computed from
#: (``""`` for a claim: any), ``ARGV[2]`` token, ``ARGV[3]`` epoch, ``ARGV[4]`` ``"1"`` to
#: skip the token check (a store claiming shards it alone owns), ``ARGV[5]`` ``"1"``/``"0"``
#: whether the record is leased (``""``: unchanged), ``ARGV[6]`` how many members to
#: remove (``"all"``: every member), ``ARGV[7]`` the id of the record the caller computed
#: from (``""``: none; checked with ``ARGV[1]``: a record destroyed and made again may
#: reach the same generation), ``ARGV[8]`` the new record's segments packed whole (the
#: backend's ``_pack_segments``; ``""``: none, readers then read the set), kept in the hash
#: as ``segs`` with the generation it was written at as ``segs_gen`` (a script that changes
#: the set without it leaves ``segs_gen`` behind, and readers read the set), then the members
#: to remove, then those to add.
#: A record made from nothing gets its ``id`` (the server's ``TIME`` when it was made): a
#: record destroyed and made again restarts its ``gen``, never its ``id``, so that a reader
#: that cached the old one tells them apart (see the backend's fenced read).
#: Replies ``{1, gen, id}`` done; ``{0, gen}`` the record changed meanwhile (recompute);
#: ``{-1, token}`` a newer token was seen. Only ``{1, gen, id}`` changed anything.
SET_OWNERSHIP = """
local meta = redis.call('HMGET', KEYS[2], 'gen', 'token', 'id')
local gen = tonumber(meta[1] or '0')
local token = tonumber(meta[2] or '0')
if ARGV[1] ~= '' and (tonumber(ARGV[1]) ~= gen or (meta[3] or '') ~= ARGV[7]) then return {0, gen} end
if ARGV[4] ~= '1' and tonumber(ARGV[2]) < token then return {-1, token} end
local first = 9
if ARGV[6] == 'all' then
  redis.call('DEL', KEYS[1])
else
  local n = tonumber(ARGV[6])
  for i = 9, 8 + n do redis.call('ZREM', KEYS[1], ARGV[i]) end
  first = 9 + n
end
for i = first, #ARGV do redis.call('ZADD', KEYS[1], 0, ARGV[i]) end
redis.call('HSET', KEYS[2], 'gen', gen + 1, 'token', ARGV[2], 'epoch', ARGV[3])
redis.call('HSET', KEYS[2], 'segs', ARGV[8], 'segs_gen', gen + 1)
if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], 'leased', ARGV[5]) end
local id = redis.call('HGET', KEYS[2], 'id')
if not id then
  local now = redis.call('TIME')
  id = now[1] .. '.' .. now[2]
  redis.call('HSET', KEYS[2], 'id', id)
end
return {1, gen + 1, id}
"""

#: Not a script: the functions of the replicated writes' scripts (after :data:`_LIB`).
#: ``mark(key)``: the mark (life, version) under ``key`` (``0, 0``: none;
#: :data:`~dhtcart.backends.fencing.Mark`); ``stamp(head, version, life, mark version)``: the
#: stamp held, as :func:`~dhtcart.backends.fencing.stamp_of`; ``stamp_less``: stamps compared;
#: ``hold(...)``: a write of stamp (life, version) held: its record and mark, or its grave (a
#: delete); its last two arguments are the key's mark now (only a mark that changes is
#: written). Kept apart so that the scripts of plain reads and writes stay as small as before.
_MARKS = """
local function mark(key)
  local raw = redis.call('GET', key)
  if not raw then return 0, 0 end
  local life, ver = struct.unpack('>I8>I8', raw)
  return life, ver
end
local function stamp(head, current, mlife, mver)
  if head == '' then
    if mver > 0 then return mlife, mver end
    return 0, 0
  end
  if mver > 0 then return mlife + 1, current end
  return mlife, current
end
local function stamp_less(l1, v1, l2, v2)
  return l1 < l2 or (l1 == l2 and v1 < v2)
end
local function hold(record, index, mkey, midx, member, life, ver, value, delete, mlife, mver)
  if delete then
    redis.call('DEL', record)
    redis.call('ZREM', index, member)
    redis.call('SET', mkey, struct.pack('>I8>I8', life, ver))
    redis.call('ZADD', midx, 0, member)
  else
    redis.call('SET', record, struct.pack('>I8', ver) .. value)
    redis.call('ZADD', index, 0, member)
    if life > 0 then
      if mlife ~= life or mver ~= 0 then
        redis.call('SET', mkey, struct.pack('>I8>I8', life, 0))
        redis.call('ZADD', midx, 0, member)
      end
    elseif mlife ~= 0 or mver ~= 0 then
      redis.call('DEL', mkey)
      redis.call('ZREM', midx, member)
    end
  end
end
"""

#: A migration's copy or drop of whole ranges. ``KEYS[1]`` index, ``KEYS[2]``
#: ownership hash, ``KEYS[3]`` the pending-write index, ``KEYS[4]`` the mark index;
#: ``ARGV[1]`` the generation the caller checked the ranges against, ``ARGV[2]`` its token,
#: ``ARGV[3]`` the record-key prefix, ``ARGV[4]`` the mode, ``ARGV[5]`` how many ranges,
#: ``ARGV[6]`` the pending-write key prefix, ``ARGV[7]`` the id of the ownership record
#: checked (``""``: none), ``ARGV[8]`` the mark-key prefix, then the ranges' ``ZRANGEBYLEX``
#: bounds (two each), then member, value pairs to write. Modes: ``"drop"`` deletes up to
#: 1,000 records of the ranges (call again while it answers 1,000); ``"import"`` deletes all
#: of them, then writes the pairs as records; ``"add"`` only writes them (the next part of
#: one import); ``"marks"`` deletes the ranges' marks, then writes the pairs as marks (16
#: bytes each: life, version); ``"addmarks"`` only writes them as marks. A drop or import
#: also forgets the pending writes and marks of the ranges. At most 1,000 marks are deleted
#: per call: ``{deleted, 0, 1}`` says that more are left (call again). Replies ``{deleted,
#: written}``; ``{-1, 0}`` when the ownership changed since the caller's check (check again);
#: ``{-2, token}`` when a newer rebalancer token was seen. Both refusals change nothing.
RANGES = """
local meta = redis.call('HMGET', KEYS[2], 'gen', 'token', 'id')
if tonumber(meta[1] or '0') ~= tonumber(ARGV[1]) or (meta[3] or '') ~= ARGV[7] then return {-1, 0} end
if tonumber(ARGV[2]) < tonumber(meta[2] or '0') then return {-2, tonumber(meta[2])} end
local nranges = tonumber(ARGV[5])
local mode = ARGV[4]
local drop = mode == 'drop'
local gone = 0
if mode ~= 'add' and mode ~= 'addmarks' then
  for r = 0, nranges - 1 do
    local low, high = ARGV[9 + 2 * r], ARGV[10 + 2 * r]
    local marks = redis.call('ZRANGEBYLEX', KEYS[4], low, high, 'LIMIT', 0, 1000)
    for _, m in ipairs(marks) do
      redis.call('DEL', ARGV[8] .. m)
      redis.call('ZREM', KEYS[4], m)
    end
    if #marks == 1000 then return {gone, 0, 1} end
    if mode ~= 'marks' then
      for _, m in ipairs(redis.call('ZRANGEBYLEX', KEYS[3], low, high)) do
        redis.call('DEL', ARGV[6] .. m)
        redis.call('ZREM', KEYS[3], m)
      end
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
end
local written = 0
local prefix, index = ARGV[3], KEYS[1]
if mode == 'marks' or mode == 'addmarks' then prefix, index = ARGV[8], KEYS[4] end
for i = 9 + 2 * nranges, #ARGV, 2 do
  redis.call('SET', prefix .. ARGV[i], ARGV[i + 1])
  redis.call('ZADD', index, 0, ARGV[i])
  written = written + 1
end
return {gone, written}
"""

# -- replication (docs/replication.md) --------------------------------------------------------

#: The lease check of a fenced read, for a range with copies (a primary, or a frozen primary
#: with backups): ``KEYS[2] .. ':meta'`` holds ``lease`` (milliseconds since the Unix epoch).
#: The server's own clock (``TIME``) is the one compared. Replies nil when the lease runs.
_LEASED = """
local function expired()
  local lease = tonumber(redis.call('HGET', KEYS[2] .. ':meta', 'lease') or '0')
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) >= lease
end
"""

#: A fenced read checked on the server, replicated stores included: the backend's fallback
#: when the ownership generation kept moving under its reads, or when a server over
#: ``maxmemory`` refused a leased read's ``MULTI`` (see :meth:`RedisBackend.get
#: <dhtcart.backends.redis.RedisBackend.get>`). ``KEYS[1]`` the record, ``KEYS[2]`` the
#: ownership set (its hash is ``KEYS[2] .. ':meta'``); ``ARGV[1]`` the member.
#: Replies the raw record (nil when absent); the redirect ``{-1, epoch, state, peer}``;
#: or ``{-2, epoch, state}`` when the range has copies and this shard's lease to serve
#: reads does not run (the backend raises :class:`~dhtcart.errors.LeaseExpired`).
GET = (
    _LIB
    + _LEASED
    + """
local state, peer = lookup(KEYS[2], ARGV[1])
if state == 'o' or ((state == 'f' or state == 'p') and (peer == '' or not expired())) then
  return redis.call('GET', KEYS[1])
end
if state == 'p' or state == 'f' then
  return {-2, tonumber(redis.call('HGET', KEYS[2] .. ':meta', 'epoch') or '0'), state}
end
return redirect(KEYS[2] .. ':meta', state, peer)
"""
)

#: A primary decides a replicated write. ``KEYS[1]`` record, ``KEYS[2]`` ownership set,
#: ``KEYS[3]`` its hash, ``KEYS[4]`` the pending write's key, ``KEYS[5]`` the pending index,
#: ``KEYS[6]`` the key's mark; ``ARGV[1]`` member, ``ARGV[2]`` value, ``ARGV[3]`` expected
#: version (``""``: unconditional), ``ARGV[4]`` ``"1"`` for a delete. Replies ``{1, prev,
#: version, backups, life}`` (recorded pending as :meth:`Pending.encode
#: <dhtcart.backends.fencing.Pending.encode>` writes it); ``{2, 0, 0, backups}`` a delete of
#: an absent key (nothing recorded); ``{0, current}`` the compare-and-set failed; ``{-3, raw,
#: backups}`` a write of the key is already pending (nothing changed); or the redirect.
DECIDE = (
    _LIB
    + _MARKS
    + """
local state, peer = lookup(KEYS[2], ARGV[1])
if state ~= 'o' and state ~= 'p' then return redirect(KEYS[3], state, peer) end
local backups = ''
if state == 'p' then backups = peer end
local waiting = redis.call('GET', KEYS[4])
if waiting then return {-3, waiting, backups} end
local current, head = version(KEYS[1])
if ARGV[3] ~= '' and tonumber(ARGV[3]) ~= current then return {0, current} end
if ARGV[4] == '1' and head == '' then return {2, 0, 0, backups} end
local mlife, mver = mark(KEYS[6])
local life = mlife
if mver > 0 then life = mlife + 1 end
if head == '' and mver == 0 then life = 0 end
local flag = '\\1'
local value = ARGV[2]
if ARGV[4] == '1' then
  flag = '\\0'
  value = ''
end
local lifebytes = ''
if life > 0 then
  lifebytes = struct.pack('>I8', life)
  if flag == '\\1' then flag = '\\3' else flag = '\\2' end
end
redis.call('SET', KEYS[4], struct.pack('>I8', current) .. struct.pack('>I8', current + 1) .. flag .. lifebytes .. value)
redis.call('ZADD', KEYS[5], 0, ARGV[1])
return {1, current, current + 1, backups, life}
"""
)

#: The pending write of a key, with the backups the primary's record lists now. ``KEYS[1]``
#: ownership set, ``KEYS[2]`` the pending write's key; ``ARGV[1]`` member. Replies
#: ``{raw or false, backups}``.
PENDING = (
    _LIB
    + """
local state, peer = lookup(KEYS[1], ARGV[1])
local backups = ''
if state ~= 'b' then backups = peer end
return {redis.call('GET', KEYS[2]) or false, backups}
"""
)

#: A primary commits its pending write. ``KEYS[1]`` record, ``KEYS[2]`` index, ``KEYS[3]`` the
#: pending write's key, ``KEYS[4]`` the pending index, ``KEYS[5]`` the key's mark, ``KEYS[6]``
#: the mark index; ``ARGV[1]`` member, ``ARGV[2]`` version, ``ARGV[3]`` life. Replies 1 when it
#: was pending at that stamp (now the record, or a grave), 0 when it was not.
COMMIT = (
    _LIB
    + _MARKS
    + """
local raw = redis.call('GET', KEYS[3])
if not raw then return 0 end
local ver = struct.unpack('>I8', string.sub(raw, 9, 16))
local flag = string.sub(raw, 17, 17)
local life, value = 0, string.sub(raw, 18)
if flag == '\\2' or flag == '\\3' then
  life = struct.unpack('>I8', string.sub(raw, 18, 25))
  value = string.sub(raw, 26)
end
if ver ~= tonumber(ARGV[2]) or life ~= tonumber(ARGV[3]) then return 0 end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
local mlife, mver = mark(KEYS[5])
hold(KEYS[1], KEYS[2], KEYS[5], KEYS[6], ARGV[1], life, ver, value, flag == '\\0' or flag == '\\2', mlife, mver)
return 1
"""
)

#: A backup applies a write its primary decided. ``KEYS[1]`` record, ``KEYS[2]`` index,
#: ``KEYS[3]`` ownership set, ``KEYS[4]`` its hash, ``KEYS[5]`` the key's mark, ``KEYS[6]`` the
#: mark index; ``ARGV[1]`` member, ``ARGV[2]`` the deciding primary (``name@born``), ``ARGV[3]``
#: prev, ``ARGV[4]`` version, ``ARGV[5]`` value, ``ARGV[6]`` ``"1"`` for a delete, ``ARGV[7]``
#: life. Applied only where this shard keeps the key as a backup of that very primary (else
#: the redirect), and only if its stamp is newer than what the shard holds (record or
#: grave). Replies 1.
APPLY = (
    _LIB
    + _MARKS
    + """
local state, peer = lookup(KEYS[3], ARGV[1])
if state ~= 'b' or peer ~= ARGV[2] then return redirect(KEYS[4], state, peer) end
local current, head = version(KEYS[1])
local mlife, mver = mark(KEYS[5])
local clife, cver = stamp(head, current, mlife, mver)
local life, ver = tonumber(ARGV[7]), tonumber(ARGV[4])
if stamp_less(clife, cver, life, ver) then
  hold(KEYS[1], KEYS[2], KEYS[5], KEYS[6], ARGV[1], life, ver, ARGV[5], ARGV[6] == '1', mlife, mver)
end
return 1
"""
)

#: Writes (records, or graves) made unless the shard holds that stamp or a newer one
#: (survivors levelled before a promotion). ``KEYS[1]`` index, ``KEYS[2]`` ownership hash,
#: ``KEYS[3]`` mark index; ``ARGV[1]`` token, ``ARGV[2]`` record-key prefix, ``ARGV[3]`` mark-key
#: prefix, then member, life, version, ``"1"`` for a grave (else ``""``), value quintuples.
#: Replies how many were written, or ``{-2, token}`` when a newer rebalancer token was seen
#: (nothing written).
REPAIR = (
    _LIB
    + _MARKS
    + """
local token = tonumber(redis.call('HGET', KEYS[2], 'token') or '0')
if tonumber(ARGV[1]) < token then return {-2, token} end
local written = 0
for i = 4, #ARGV, 5 do
  local member = ARGV[i]
  local key, mkey = ARGV[2] .. member, ARGV[3] .. member
  local current, head = version(key)
  local mlife, mver = mark(mkey)
  local clife, cver = stamp(head, current, mlife, mver)
  local life, ver = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  if stamp_less(clife, cver, life, ver) then
    hold(key, KEYS[1], mkey, KEYS[3], member, life, ver, ARGV[i + 4], ARGV[i + 3] == '1', mlife, mver)
    written = written + 1
  end
end
return written
"""
)

#: A lease renewal. ``KEYS[1]`` ownership hash; ``ARGV[1]`` the epoch of the membership the
#: renewer read, ``ARGV[2]`` the lease's end (ms). Granted only if that epoch is not older than
#: the record's, and only ever lengthens the lease. Replies the lease's end now (ms).
RENEW = """
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'lease')
local lease = tonumber(meta[2] or '0')
if tonumber(ARGV[1]) >= tonumber(meta[1] or '0') and tonumber(ARGV[2]) > lease then
  lease = tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], 'lease', ARGV[2])
end
return lease
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
        "decide": DECIDE,
        "pending": PENDING,
        "commit": COMMIT,
        "apply": APPLY,
        "repair": REPAIR,
        "renew": RENEW,
    }
)
