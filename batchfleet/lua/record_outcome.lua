--[[ record_outcome: one station's outcome, recorded at most once (first wins).

KEYS[1]  meta hash      {T}:b:B
KEYS[2]  inputs hash    {T}:b:B:in     (the expected stations)
KEYS[3]  outcomes hash  {T}:b:B:out
KEYS[4]  late hash      {T}:b:B:late
KEYS[5]  due zset       {T}:due     (the shard's)
KEYS[6]  ready list     {T}:ready   (the shard's; wake-up signal for aggregators)
KEYS[7]  stats hash     {T}:stats   (the shard's)

ARGV[1]  batch id B
ARGV[2]  station id
ARGV[3]  status: "ok" | "empty" | "failed"
ARGV[4]  outcome JSON

Returns {"recorded", done, expected}   first outcome of this station, batch still open
     or {"complete", done, expected}   ... and it was the last expected station: due now, wake-up pushed
     or {"quorum", done, expected}     ... and it brought the batch to its quorum (meta quorum_needed):
                                       due at now + quorum_grace_ms (never later than the deadline)
     or {"duplicate", done, expected}  the station already had an outcome: nothing changed
     or {"late", done, expected}       the batch was finalized first: counted (and kept if late=record)
     or {"unknown", 0, 0}              no such batch (expired) or the station is not expected
Invariant: completion is HLEN(outcomes) == expected over distinct expected stations; a re-run of a
station can never count twice.
All keys carry {T}, the hash tag of the batch's shard (batchfleet/keys.py): one Cluster slot.
]]
local state = redis.call('HGET', KEYS[1], 'state')
if not state or redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0 then
  return {'unknown', 0, 0}
end
local expected = tonumber(redis.call('HGET', KEYS[1], 'expected'))
local done = redis.call('HLEN', KEYS[3])

if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[7], 'duplicate_results', 1)
  return {'duplicate', done, expected}
end

if state ~= 'open' then
  redis.call('HINCRBY', KEYS[1], 'late', 1)
  redis.call('HINCRBY', KEYS[7], 'late_results', 1)
  if redis.call('HGET', KEYS[1], 'late_policy') == 'record' then
    redis.call('HSETNX', KEYS[4], ARGV[2], ARGV[4])
    local ttl = redis.call('PTTL', KEYS[1])
    if ttl > 0 then redis.call('PEXPIRE', KEYS[4], ttl) end
  end
  return {'late', done, expected}
end

redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
redis.call('HINCRBY', KEYS[7], 'stations_' .. ARGV[3], 1)
done = done + 1
if done >= expected then
  redis.call('ZADD', KEYS[5], 'XX', 0, ARGV[1])
  redis.call('LPUSH', KEYS[6], ARGV[1])
  redis.call('LTRIM', KEYS[6], 0, LIST_LAST_INDEX)  -- only a wake-up signal: the due zset is the truth
  return {'complete', done, expected}
end
local needed = tonumber(redis.call('HGET', KEYS[1], 'quorum_needed') or '0')
if needed > 0 and done >= needed then
  local now_ms = redis_now_ms()
  if redis.call('HSETNX', KEYS[1], 'quorum_ms', now_ms) == 1 then
    local grace = tonumber(redis.call('HGET', KEYS[1], 'quorum_grace_ms') or '0')
    redis.call('ZADD', KEYS[5], 'XX', 'LT', now_ms + grace, ARGV[1])
    if grace == 0 then
      redis.call('LPUSH', KEYS[6], ARGV[1])
      redis.call('LTRIM', KEYS[6], 0, LIST_LAST_INDEX)
    end
    return {'quorum', done, expected}
  end
end
return {'recorded', done, expected}
