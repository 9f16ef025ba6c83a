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
    "INDEX_ADD",
    "INDEX_COUNT",
    "INDEX_REMOVE",
    "INDEX_SCAN",
    "PAGE_MAX",
    "PRUNE",
    "PRUNE_EXPIRED",
    "PUT",
    "PUT_NX",
    "Script",
    "remembered",
]


# The paged layout of the range index (see _index.py): a directory sorted set ``{tag}:dir`` of page
# lower boundaries ("" always, once anything was added) and page sorted sets ``{tag}:p:<boundary>``
# of at most PAGE_MAX members each, so that every page stays a listpack (zset-max-listpack-entries
# 128). Every function takes the index key a script was given (KEYS[2] of the single-key scripts):
# a name ending in ":dir" is paged, any other (":lex") is the flat layout's one sorted set. Lua's
# ``<`` on strings follows the server's locale (strcoll), so members are compared by ``lt``
# (bytes, as ZRANGEBYLEX orders them). Members given to ``ix_add_sorted`` are sorted by the client.
PAGE_MAX: Final = 120

_LIB: Final = f"""
local PAGE_MAX = {PAGE_MAX}
local function lt(a, b)
  if a == b then return false end
  local n = math.min(#a, #b)
  local i = 1
  while i <= n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
    i = i + 1
  end
  return #a < #b
end
local function pg_prefix(dir) return string.sub(dir, 1, -4) .. 'p:' end
local function page_of(dir, m, create)
  local r = redis.call('ZREVRANGEBYLEX', dir, '[' .. m, '-', 'LIMIT', 0, 1)[1]
  if r then return r end
  if create then redis.call('ZADD', dir, 0, '') end
  return ''
end
-- ZADD ms[i..j] (sorted) in descending order: each lands at a listpack's head (no walk to its place).
local function zadd_all(key, ms, i, j)
  for s = j, i, -1000 do
    local args = {{}}
    for t = s, math.max(s - 999, i), -1 do args[#args + 1] = 0; args[#args + 1] = ms[t] end
    redis.call('ZADD', key, unpack(args))
  end
end
-- ms[i..j] (sorted, distinct) into the page of boundary b. Members all above the page's last
-- fill it and then new full pages. Otherwise a page that outgrows PAGE_MAX is split into
-- pages of about equal size written to fresh keys (a sorted set that once outgrew a listpack
-- stays a skiplist), each new page's boundary being its first member. Redis merges (ZADD), so
-- no member is compared in Lua.
local function pg_put(dir, pfx, b, ms, i, j)
  local pk = pfx .. b
  local c = redis.call('ZCARD', pk)
  if c + j - i + 1 <= PAGE_MAX then
    zadd_all(pk, ms, i, j)
    return
  end
  if c == 0 or lt(redis.call('ZRANGE', pk, -1, -1)[1], ms[i]) then
    -- An append (ascending keys, a bulk load): fill this page, then new full pages.
    local lo = i + math.max(0, PAGE_MAX - c)
    if lo > i then zadd_all(pk, ms, i, lo - 1) end
    for s = lo, j, PAGE_MAX do
      redis.call('ZADD', dir, 0, ms[s])
      zadd_all(pfx .. ms[s], ms, s, math.min(j, s + PAGE_MAX - 1))
    end
    return
  end
  zadd_all(pk, ms, i, j)
  local n = redis.call('ZCARD', pk)
  if n <= PAGE_MAX then return end
  local all = redis.call('ZRANGE', pk, 0, -1)
  local size = math.ceil(n / math.ceil(n / PAGE_MAX))
  redis.call('DEL', pk)
  for lo = 1, n, size do
    local key = pk
    if lo > 1 then
      key = pfx .. all[lo]
      redis.call('ZADD', dir, 0, all[lo])
    end
    zadd_all(key, all, lo, math.min(n, lo + size - 1))
  end
end
-- Sorted members ms[i..j], grouped by page in one pass over the directory. Scattered keys (one
-- member per page) cost one directory lookup each; a run of members in one page is delimited by
-- the next boundary and a galloping search (a few byte comparisons per page, not per member).
local function ix_add_sorted(key, ms, i, j)
  if string.sub(key, -4) ~= ':dir' then
    zadd_all(key, ms, i, j)
    return
  end
  local pfx = pg_prefix(key)
  local b = page_of(key, ms[i], true)
  while i <= j do
    local e, after = i, nil
    if i < j then
      after = page_of(key, ms[i + 1], false)
      if after == b then  -- a run: where does it end?
        after = nil
        local nxt = redis.call('ZRANGEBYLEX', key, '(' .. b, '+', 'LIMIT', 0, 1)[1]
        if not nxt or lt(ms[j], nxt) then
          e = j
        else
          local lo, step = i + 1, 1  -- ms[lo] < nxt <= ms[j]
          while lo + step < j and lt(ms[lo + step], nxt) do
            lo = lo + step
            step = step * 2
          end
          local hi = math.min(lo + step, j)  -- nxt <= ms[hi]
          while hi - lo > 1 do
            local mid = math.floor((lo + hi) / 2)
            if lt(ms[mid], nxt) then lo = mid else hi = mid end
          end
          e = lo
        end
      end
    end
    pg_put(key, pfx, b, ms, i, e)
    i = e + 1
    -- The next member's page: a split of page b only adds boundaries below it. After a run,
    -- look it up (the split may have put one just below it).
    if after then b = after
    elseif i <= j then b = page_of(key, ms[i], false) end
  end
end
local function ix_add(key, m)
  if string.sub(key, -4) ~= ':dir' then
    redis.call('ZADD', key, 0, m)
    return
  end
  pg_put(key, pg_prefix(key), page_of(key, m, true), {{m}}, 1, 1)
end
-- An emptied page leaves the directory (the "" page stays: every lookup lands somewhere).
local function ix_rem(key, m)
  if string.sub(key, -4) ~= ':dir' then
    redis.call('ZREM', key, m)
    return
  end
  local b = page_of(key, m, false)
  local pk = pg_prefix(key) .. b
  if redis.call('ZREM', pk, m) == 1 and b ~= '' and redis.call('EXISTS', pk) == 0 then
    redis.call('ZREM', key, b)
  end
end
"""


def _lua_set(value: str, ttl_ms: str, extra: str = "", into: str = "") -> str:
    """Lua: ``SET KEYS[1] value [extra] [PX ttl_ms]`` (ttl "0": no expiry), reply assigned to ``into``."""
    assign = f"{into} = " if into else ""
    return (
        f"if {ttl_ms} == '0' then {assign}redis.call('SET', KEYS[1], {value}{extra}) "
        f"else {assign}redis.call('SET', KEYS[1], {value}{extra}, 'PX', {ttl_ms}) end"
    )


def _lua_index(ttl_ms: str, member: str, at_ms: str) -> str:
    """Lua (needs _LIB): add ``member`` to the index (KEYS[2], lex or dir) and set (score ``at_ms``)
    or clear its expiry."""
    return f"""ix_add(KEYS[2], {member})
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
    return f"""{_LIB}
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
PUT: Final = Script(f"""{_LIB}
{_lua_set("ARGV[1]", "ARGV[2]")}
{_lua_index("ARGV[2]", "ARGV[3]", "ARGV[4]")}
return 1
""")

# KEYS: key, lex, exp. ARGV: member. Returns the number of keys deleted.
DELETE: Final = Script(f"""{_LIB}
local n = redis.call('DEL', KEYS[1])
ix_rem(KEYS[2], ARGV[1])
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
  ix_rem(KEYS[2], ARGV[1])
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
    if string.sub(KEYS[n + 2 * j - 1], -4) == ':dir' then
      for t = i, last do ix_rem(KEYS[n + 2 * j - 1], ARGV[t]) end
    else
      redis.call('ZREM', KEYS[n + 2 * j - 1], unpack(ARGV, i, last))
    end
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

# KEYS: lex (or dir), exp, key of every member. ARGV: members. Drop members whose key does not exist.
PRUNE: Final = Script(f"""{_LIB}
local removed = 0
for i, member in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[i + 2]) == 0 then
    ix_rem(KEYS[1], member)
    redis.call('ZREM', KEYS[2], member)
    removed = removed + 1
  end
end
return removed
""")

# KEYS: lex, exp. ARGV: key prefix, now (ms). Drops expired members whose key is gone (only where
# the data keys may be read from the script: one server).
PRUNE_EXPIRED: Final = Script(f"""{_LIB}
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, 10000)
for _, member in ipairs(dead) do
  if redis.call('EXISTS', ARGV[1] .. member) == 0 then
    ix_rem(KEYS[1], member)
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
      ix_rem(KEYS[pos], member)
      redis.call('ZREM', KEYS[pos + 1], member)
    end
  else
    if ARGV[5] == '0' then redis.call('SET', key, ARGV[7 + 4 * i])
    else redis.call('SET', key, ARGV[7 + 4 * i], 'PX', ARGV[5]) end
    if pos > 0 then
      ix_add(KEYS[pos], member)
      if ARGV[5] == '0' then redis.call('ZREM', KEYS[pos + 1], member)
      else redis.call('ZADD', KEYS[pos + 1], ARGV[6], member) end
    end
  end
end
if op == 'd' then return removed end
return 1
""")
)

# The paged index's own commands (flat indexes use plain ZADD/ZREM/ZRANGEBYLEX/ZLEXCOUNT).

# Add members to one shard. KEYS: dir, exp. ARGV: mode ("k" keep their expiry entries, "c" clear
# them, "s" set them all to the score ARGV[2], "v" a score per member after the members), the
# score, the member count n, n members sorted by the client (bytes order), [n scores].
INDEX_ADD: Final = Script(f"""{_LIB}
local mode = ARGV[1]
local n = tonumber(ARGV[3])
ix_add_sorted(KEYS[1], ARGV, 4, 3 + n)
if mode == 'k' then return n end
for i = 4, 3 + n, 1000 do
  local last = math.min(i + 999, 3 + n)
  if mode == 'c' then
    redis.call('ZREM', KEYS[2], unpack(ARGV, i, last))
  else
    local args = {{}}
    for t = i, last do
      if mode == 's' then args[#args + 1] = ARGV[2] else args[#args + 1] = ARGV[t + n] end
      args[#args + 1] = ARGV[t]
    end
    redis.call('ZADD', KEYS[2], unpack(args))
  end
end
return n
""")

# Remove members from one shard. KEYS: dir, exp. ARGV: members.
INDEX_REMOVE: Final = Script(f"""{_LIB}
for _, m in ipairs(ARGV) do ix_rem(KEYS[1], m) end
for i = 1, #ARGV, 1000 do
  redis.call('ZREM', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return #ARGV
""")

# Up to ARGV[3] members from ARGV[1] ("[start" or "(after") to ARGV[2] ("+" or "(upper"), walking
# the pages in order from the one that holds the start. KEYS: dir.
INDEX_SCAN: Final = Script(f"""{_LIB}
local dir, low, high, want = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local pfx = pg_prefix(dir)
local b = page_of(dir, string.sub(low, 2), false)
local out = {{}}
while b do
  local got = redis.call('ZRANGEBYLEX', pfx .. b, low, high, 'LIMIT', 0, want - #out)
  for _, m in ipairs(got) do out[#out + 1] = m end
  if #out >= want then break end
  b = redis.call('ZRANGEBYLEX', dir, '(' .. b, high, 'LIMIT', 0, 1)[1]
end
return out
""")

# How many members from ARGV[1] ("[start") to ARGV[2] ("+" or "(upper"). KEYS: dir. A page
# followed by another boundary below the upper bound lies wholly inside the range: ZCARD.
INDEX_COUNT: Final = Script(f"""{_LIB}
local dir, low, high = KEYS[1], ARGV[1], ARGV[2]
local pfx = pg_prefix(dir)
local b = page_of(dir, string.sub(low, 2), false)
local total = redis.call('ZLEXCOUNT', pfx .. b, low, high)
local rest = redis.call('ZRANGEBYLEX', dir, '(' .. b, high)
for i, nb in ipairs(rest) do
  if i < #rest then total = total + redis.call('ZCARD', pfx .. nb)
  else total = total + redis.call('ZLEXCOUNT', pfx .. nb, low, high) end
end
return total
""")
