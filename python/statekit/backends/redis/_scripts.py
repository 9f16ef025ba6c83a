"""The Lua scripts of the Redis backend.

Index arguments: a script that keeps the range index up to date takes the index shard's two
sorted sets as ``KEYS[2]`` (lex) and ``KEYS[3]`` (expiries), the member (the key without the key
prefix) and the expiry score as arguments. The score is an absolute unix time in ms computed by
the client, as in batches, so one clock scores the whole index; it only orders and counts the
expiry index (Redis's own ``PX`` decides when a key expires). A flag argument "1" means "update
the index here"; "0" (range_index=False, or an index in another cluster slot) leaves it alone.

The operations that are not idempotent are wrapped by :func:`remembered`: they run at most once
per request id (see there).
"""

from __future__ import annotations

import hashlib
from typing import Final

__all__ = [
    "CAS",
    "DELETE",
    "DELETE_MANY",
    "EXPIRY",
    "FENCED",
    "GETDEL",
    "INCR",
    "PRUNE",
    "PRUNE_EXPIRED",
    "PUT",
    "PUT_NX",
    "Script",
    "remembered",
]


def _lua_set(value: str, ttl_ms: str, extra: str = "", into: str = "") -> str:
    """Lua: ``SET KEYS[1] value [extra] [PX ttl_ms]`` (ttl "0": no expiry), reply assigned to ``into``."""
    assign = f"{into} = " if into else ""
    return (
        f"if {ttl_ms} == '0' then {assign}redis.call('SET', KEYS[1], {value}{extra}) "
        f"else {assign}redis.call('SET', KEYS[1], {value}{extra}, 'PX', {ttl_ms}) end"
    )


def _lua_index(ttl_ms: str, member: str, at_ms: str) -> str:
    """Lua: add ``member`` to the lex index (KEYS[2]) and set (score ``at_ms``) or clear its expiry."""
    return f"""redis.call('ZADD', KEYS[2], 0, {member})
if {ttl_ms} == '0' then redis.call('ZREM', KEYS[3], {member})
else redis.call('ZADD', KEYS[3], {at_ms}, {member}) end"""


def remembered(body: str) -> str:
    """Lua: run ``body`` (which ends in ``return``) at most once per request id.

    A call that is not idempotent (``incr_by``, ``compare_and_set``, ...) may reach the server
    and lose its reply; re-sending it would apply it twice. So each call carries a random request
    id: KEYS[#KEYS] is its record key, ARGV[#ARGV] the record's TTL in ms. The first execution
    stores its result there; a retry of the same call finds the record and gets the same result
    without applying anything again. Results are nil, an integer or a string ("n", "i<int>",
    "s<bytes>" in the record).
    """
    return f"""
local seen = redis.call('GET', KEYS[#KEYS])
if seen then
  local kind = string.sub(seen, 1, 1)
  if kind == 'n' then return false end
  if kind == 'i' then return tonumber(string.sub(seen, 2)) end
  return string.sub(seen, 2)
end
local function apply()
{body}
end
local result = apply()
local saved
if not result then saved = 'n'
elseif type(result) == 'number' then saved = 'i' .. result
else saved = 's' .. result end
redis.call('SET', KEYS[#KEYS], saved, 'PX', ARGV[#ARGV])
return result
"""


class Script:
    """A Lua script sent by EVALSHA (EVAL when the server does not have it yet)."""

    __slots__ = ("body", "sha")

    def __init__(self, body: str) -> None:
        self.body = body
        self.sha = hashlib.sha1(body.encode(), usedforsecurity=False).hexdigest()


# SET plus index, in one call. KEYS: key, lex, exp. ARGV: value, ttl ms ("0": none), member, score.
PUT: Final = Script(f"""
{_lua_set("ARGV[1]", "ARGV[2]")}
{_lua_index("ARGV[2]", "ARGV[3]", "ARGV[4]")}
return 1
""")

# KEYS: key, lex, exp. ARGV: member. Returns the number of keys deleted.
DELETE: Final = Script("""
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return n
""")

# SET NX. KEYS: key (, lex, exp), record. ARGV: value, ttl ms, member, "1" to update the index,
# score, record TTL.
PUT_NX: Final = Script(
    remembered(f"""
local ok
{_lua_set("ARGV[1]", "ARGV[2]", extra=", 'NX'", into="ok")}
if not ok then return 0 end
if ARGV[4] == '1' then
{_lua_index("ARGV[2]", "ARGV[3]", "ARGV[5]")}
end
return 1
""")
)

# Compare-and-set. KEYS: key (, lex, exp), record. ARGV: expected, "1" when the key must be
# absent, value, ttl ms, member, "1" to update the index, score, record TTL.
CAS: Final = Script(
    remembered(f"""
local cur = redis.call('GET', KEYS[1])
if ARGV[2] == '1' then
  if cur then return 0 end
elseif cur ~= ARGV[1] then
  return 0
end
{_lua_set("ARGV[3]", "ARGV[4]")}
if ARGV[6] == '1' then
{_lua_index("ARGV[4]", "ARGV[5]", "ARGV[7]")}
end
return 1
""")
)

# KEYS: key (, lex, exp), record. ARGV: member, "1" to update the index, record TTL.
GETDEL: Final = Script(
    remembered("""
local v = redis.call('GETDEL', KEYS[1])
if ARGV[2] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
end
return v
""")
)

# KEYS: n data keys, then the lex and exp key of each of s index shards, then the record.
# ARGV: s, then for each shard its member count and members, then the record TTL. Returns how many
# keys existed. DEL/ZREM take at most 1000 arguments each (Lua's unpack has a stack limit).
DELETE_MANY: Final = Script(
    remembered("""
local s = tonumber(ARGV[1])
local n = #KEYS - 1 - 2 * s
local removed = 0
for i = 1, n, 1000 do
  removed = removed + redis.call('DEL', unpack(KEYS, i, math.min(i + 999, n)))
end
local pos = 2
for j = 1, s do
  local count = tonumber(ARGV[pos])
  pos = pos + 1
  for i = pos, pos + count - 1, 1000 do
    local last = math.min(i + 999, pos + count - 1)
    redis.call('ZREM', KEYS[n + 2 * j - 1], unpack(ARGV, i, last))
    redis.call('ZREM', KEYS[n + 2 * j], unpack(ARGV, i, last))
  end
  pos = pos + count
end
return removed
""")
)

# KEYS: key (, lex, exp), record. ARGV: amount, ttl ms, member, "1" to update the index, score,
# record TTL. A counter is canonical ASCII decimal (base.COUNTER_PATTERN), as on every backend;
# INCRBY keeps the key's TTL and refuses to overflow 64 bits. "new:" marks a created key; nil
# means the value is not a counter (a reply, not an error: nothing to parse). The result is read
# back with GET: Lua numbers are doubles, and tostring() would round them.
INCR: Final = Script(
    remembered(f"""
local v = redis.call('GET', KEYS[1])
if not v then
  {_lua_set("ARGV[1]", "ARGV[2]")}
  if ARGV[4] == '1' then
{_lua_index("ARGV[2]", "ARGV[3]", "ARGV[5]")}
  end
  return 'new:' .. ARGV[1]
end
if #v > 20 or not (v == '0' or string.match(v, '^%-?[1-9]%d*$')) then
  return false
end
redis.call('INCRBY', KEYS[1], ARGV[1])
return redis.call('GET', KEYS[1])
""")
)

# KEYS: lex, exp, key of every member. ARGV: members. Drop members whose key does not exist.
PRUNE: Final = Script("""
local removed = 0
for i, member in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[i + 2]) == 0 then
    redis.call('ZREM', KEYS[1], member)
    redis.call('ZREM', KEYS[2], member)
    removed = removed + 1
  end
end
return removed
""")

# KEYS: lex, exp. ARGV: key prefix, now (ms). Drops expired members whose key is gone (only where
# the data keys may be read from the script: one server).
PRUNE_EXPIRED: Final = Script("""
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, 10000)
for _, member in ipairs(dead) do
  if redis.call('EXISTS', ARGV[1] .. member) == 0 then
    redis.call('ZREM', KEYS[1], member)
    redis.call('ZREM', KEYS[2], member)
  end
end
return #dead
""")

# Set or clear an expiry, with the index's expiry entry. KEYS: key (, lex, exp). ARGV: ttl ms ("0":
# clear it, PERSIST), member, "1" to update the index, score. Returns {exists, changed}: changed is
# PEXPIRE's or PERSIST's reply. Nothing is written for a missing key.
EXPIRY: Final = Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end
local changed
if ARGV[1] == '0' then
  changed = redis.call('PERSIST', KEYS[1])
  if ARGV[3] == '1' then redis.call('ZREM', KEYS[3], ARGV[2]) end
else
  changed = redis.call('PEXPIRE', KEYS[1], ARGV[1])
  if ARGV[3] == '1' then redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2]) end
end
return {1, changed}
""")

# A fenced write (see RedisStateBackend.fenced_put): check, record and write in one call.
# KEYS: the slot's fence hash, the lock's fence counter (the fence hash again when it must not be
# read: a cluster), the n data keys, then the lex and exp key of each index shard used here,
# then the record. ARGV: op ("p" put, "d" delete, "c" compare-and-set), token, "1" to read the
# counter, n, ttl ms ("0": none), score, expected, "1" when the key must be absent (cas), then
# for each data key: its hash field, its index member, its value ("" for a delete) and the
# position in KEYS of its index shard's lex key ("0": no index here), then the record TTL.
# Refused: "stale:<i>:<newer token>" (i = 0: the counter; else the i-th data key) and nothing is
# written. Otherwise every field is set to the token, then: "p" sets every key (returns 1), "d"
# deletes them (returns how many existed), "c" compares and sets the one key (returns 1 or 0;
# the fence is recorded either way, as on the other backends). Tokens compare as Lua numbers
# (exact up to 2^53).
FENCED: Final = Script(
    remembered("""
local op = ARGV[1]
local tok = tonumber(ARGV[2])
local n = tonumber(ARGV[4])
if ARGV[3] == '1' then
  local issued = redis.call('GET', KEYS[2])
  if issued and tonumber(issued) > tok then return 'stale:0:' .. issued end
end
for i = 1, n do
  local seen = redis.call('HGET', KEYS[1], ARGV[5 + 4 * i])
  if seen and tonumber(seen) > tok then return 'stale:' .. i .. ':' .. seen end
end
for i = 1, n do
  redis.call('HSET', KEYS[1], ARGV[5 + 4 * i], ARGV[2])
end
if op == 'c' then
  local cur = redis.call('GET', KEYS[3])
  if ARGV[8] == '1' then
    if cur then return 0 end
  elseif cur ~= ARGV[7] then
    return 0
  end
end
local removed = 0
for i = 1, n do
  local key = KEYS[2 + i]
  local member = ARGV[6 + 4 * i]
  local pos = tonumber(ARGV[8 + 4 * i])
  if op == 'd' then
    removed = removed + redis.call('DEL', key)
    if pos > 0 then
      redis.call('ZREM', KEYS[pos], member)
      redis.call('ZREM', KEYS[pos + 1], member)
    end
  else
    if ARGV[5] == '0' then redis.call('SET', key, ARGV[7 + 4 * i])
    else redis.call('SET', key, ARGV[7 + 4 * i], 'PX', ARGV[5]) end
    if pos > 0 then
      redis.call('ZADD', KEYS[pos], 0, member)
      if ARGV[5] == '0' then redis.call('ZREM', KEYS[pos + 1], member)
      else redis.call('ZADD', KEYS[pos + 1], ARGV[6], member) end
    end
  end
end
if op == 'd' then return removed end
return 1
""")
)
