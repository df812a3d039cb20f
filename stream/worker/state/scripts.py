"""The store's Lua scripts. Each declares every key it touches (in KEYS), so
Redis Cluster, and proxies that route by declared keys, can run it; a call
whose keys share one hash slot runs on one node (stream.worker.state.keys).

Scripts take their keys in blocks walked with a cursor: the client names every
key (stream.worker.state.store builds them from stream.worker.state.keys), the script never
builds a key name itself.
"""

from __future__ import annotations

# A batch's read. ARGV[1]: '1' to read the clock too (then KEYS[1], KEYS[2] =
# stream time, ptime). Then per user: ARGV (user id, erased digest, the
# revision of the record the worker holds in memory or '') and KEYS (bucket,
# erasure list). Reply: stream time (or nil), the flat HGETALL of ptime (empty
# without the clock), the erasure times (one per user without a record, '' if
# never erased, in order), then each user's record: nil if none, 1 if it is
# still at the revision held (stream.worker.state.record_cache), else the bytes.
# Only a user without a record can have been erased: the others cost nothing.
LOAD_LUA = """
local out, k = {false, {}, {}}, 0
if ARGV[1] == '1' then
  out = {redis.call('GET', KEYS[1]) or false, redis.call('HGETALL', KEYS[2]), {}}
  k = 2
end
for i = 2, #ARGV, 3 do
  local rec = redis.call('HGET', KEYS[k + 1], ARGV[i])
  if rec and ARGV[i + 2] ~= '' and string.sub(rec, 1, 4) == ARGV[i + 2] then rec = 1 end
  out[#out + 1] = rec
  if not rec then table.insert(out[3], redis.call('ZSCORE', KEYS[k + 2], ARGV[i + 1]) or '') end
  k = k + 2
end
return out
"""

# All-or-nothing commit of a group of users, and of the clock if given.
# Revisions are checked for every user before anything is written, so a
# refused call leaves Redis exactly as it was.
# ARGV: ttl_ms, users, stream time ('' = no clock part), n_offsets, n_ptimes,
#       (field, offset) * n_offsets, (topic:partition, time) * n_ptimes, then per
#       user (USER_ARGS each): user id, expected stored rev ('' = none),
#       record ('' = erase), old schedule day ('' = leave the old entry),
#       new due time ('' = add none), new schedule day, index moves ('+name'
#       or '-name', space-separated), number of index moves.
# KEYS: with the clock part, offsets, ptime, stream time first; then per user
#       (USER_KEYS each): bucket, counts, old schedule set, old day index, new
#       schedule set, new day index; then one member key per index move.
COMMIT_LUA = """
local ttl, users = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = ARGV[3] ~= ''
local n_off, n_pt = tonumber(ARGV[4]), tonumber(ARGV[5])
local a0, k0 = 5 + 2 * n_off + 2 * n_pt, 0
if clock then k0 = 3 end
local refused, gone = false, {}
local j, k = a0, k0
for u = 1, users do
  local cur = redis.call('HGET', KEYS[k + 1], ARGV[j + 1])
  local rev = ''
  if cur then rev = string.sub(cur, 1, 4) end
  if rev ~= ARGV[j + 2] then
    refused = true
    if not cur then table.insert(gone, ARGV[j + 1]) end
  end
  k = k + 6 + tonumber(ARGV[j + 8])
  j = j + 8
end
if refused then return {'conflict', cjson.encode(gone)} end
j, k = a0, k0
for u = 1, users do
  local uid, bucket, counts = ARGV[j + 1], KEYS[k + 1], KEYS[k + 2]
  if ARGV[j + 3] == '' then
    redis.call('HDEL', bucket, uid)
  else
    redis.call('HSET', bucket, uid, ARGV[j + 3])
    if ttl > 0 then redis.call('PEXPIRE', bucket, ttl) end
  end
  if ARGV[j + 4] ~= '' then
    redis.call('ZREM', KEYS[k + 3], uid)
    if redis.call('EXISTS', KEYS[k + 3]) == 0 then redis.call('ZREM', KEYS[k + 4], ARGV[j + 4]) end
  end
  if ARGV[j + 5] ~= '' then
    redis.call('ZADD', KEYS[k + 5], ARGV[j + 5], uid)
    redis.call('ZADD', KEYS[k + 6], ARGV[j + 6], ARGV[j + 6])
  end
  -- Counts move only with the member sets, so they stay the sets' sizes.
  local m = k + 6
  for sign, name in string.gmatch(ARGV[j + 7], '([+-])(%S+)') do
    m = m + 1
    if sign == '+' then
      if redis.call('ZADD', KEYS[m], 0, uid) == 1 then redis.call('HINCRBY', counts, name, 1) end
    elseif redis.call('ZREM', KEYS[m], uid) == 1 then
      redis.call('HINCRBY', counts, name, -1)
    end
  end
  k = m
  j = j + 8
end
if clock then
  for i = 0, n_off - 1 do
    local f, off = ARGV[6 + 2 * i], tonumber(ARGV[7 + 2 * i])
    local cur = redis.call('HGET', KEYS[1], f)
    if (not cur) or tonumber(cur) < off then redis.call('HSET', KEYS[1], f, off) end
  end
  for i = 0, n_pt - 1 do
    local f, t = ARGV[6 + 2 * n_off + 2 * i], tonumber(ARGV[7 + 2 * n_off + 2 * i])
    local cur = redis.call('HGET', KEYS[2], f)
    if (not cur) or tonumber(cur) < t then redis.call('HSET', KEYS[2], f, t) end
  end
  local st = tonumber(ARGV[3])
  local cur = tonumber(redis.call('GET', KEYS[3]) or '0')
  if st > cur then redis.call('SET', KEYS[3], ARGV[3]) end
end
return {'ok', ''}
"""
USER_ARGS = 8
USER_KEYS = 6

# A schedule entry whose user is gone (erased, or its bucket expired by the
# wall-clock backstop TTL): drop it, and the user's membership of every index
# named, fixing that index's count if the member was still counted.
# KEYS: bucket, counts, schedule set, day index, then one member key per name.
# ARGV: user id, day, then the index names.
REAP_LUA = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 0 then redis.call('ZREM', KEYS[4], ARGV[2]) end
for i = 3, #ARGV do
  if redis.call('ZREM', KEYS[i + 2], ARGV[1]) == 1 then
    redis.call('HINCRBY', KEYS[2], ARGV[i], -1)
  end
end
return 1
"""

# A stale schedule entry (the user moved): drop it, and its day from the index
# once the day is empty. KEYS: schedule set, day index. ARGV: user id, day.
UNSCHEDULE_LUA = """
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[2]) end
return 1
"""
