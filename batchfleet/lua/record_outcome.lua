--[[ record_outcome: the outcomes of one or more stations of one batch, each recorded at most once
(first wins).  A worker records every station of a job that finished in the same event-loop step with
one call; a station that finishes alone is recorded alone, so the last station of a batch is never
held back by the rest of its job.

KEYS[1]  meta hash      {T}:b:B
KEYS[2]  inputs hash    {T}:b:B:in     (the expected stations)
KEYS[3]  outcomes hash  {T}:b:B:out
KEYS[4]  late hash      {T}:b:B:late
KEYS[5]  due zset       {T}:due     (the shard's)
KEYS[6]  ready list     {T}:ready   (the shard's; wake-up signal for aggregators)
KEYS[7]  stats hash     {T}:stats   (the shard's)

ARGV[1]  batch id B
ARGV[2]  incarnation of the batch the outcomes were computed for (the meta's "inc", from the job id);
         "" = any (a job of an earlier release, whose ids carry no incarnation)
ARGV[3 .. 2+3k]  per station: station id, status ("ok" | "empty" | "failed"), outcome JSON

Returns {"complete", done, expected, codes}   this call recorded the last expected station: due now,
                                              wake-up pushed
     or {"quorum", done, expected, codes}     this call brought the batch to its quorum (meta
                                              quorum_needed): due at now + quorum_grace_ms (never
                                              later than the deadline), wake-up pushed
     or {"recorded", done, expected, codes}   this call recorded at least one station, and neither of
                                              the above
     or {"unchanged", done, expected, codes}  this call recorded no station (each one's code says why)
  done, expected: outcomes recorded so far / stations expected (0, 0 for an unknown batch)
  codes: one letter per station, in ARGV order: "r" recorded (first outcome of the station, batch
  open), "d" duplicate (it already had an outcome: nothing changed), "l" late (the batch was
  finalized first: counted, and kept if its late policy is "record"), "u" unknown (no such batch,
  e.g. expired, or the station is not expected), "s" stale (the outcome belongs to an earlier
  incarnation of the batch, which Redis lost before the dispatcher created it again: not recorded,
  counted as stale_results; the new incarnation runs the station itself, on its own input)
Invariant: completion is HLEN(outcomes) == expected over distinct expected stations; a re-run of a
station can never count twice.
All keys carry {T}, the hash tag of the batch's shard (batchfleet/keys.py): one Cluster slot.
]]
local state = redis.call('HGET', KEYS[1], 'state')
local k = (#ARGV - 2) / 3
if not state then
  return {'unchanged', 0, 0, string.rep('u', k)}
end
local expected = tonumber(redis.call('HGET', KEYS[1], 'expected'))
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'inc') ~= ARGV[2] then
  redis.call('HINCRBY', KEYS[7], 'stale_results', k)
  return {'unchanged', redis.call('HLEN', KEYS[3]), expected, string.rep('s', k)}
end
local before = redis.call('HLEN', KEYS[3])
local codes = {}
local counts = {}
local recorded, duplicates, late = 0, 0, 0
local keep_late = state ~= 'open' and redis.call('HGET', KEYS[1], 'late_policy') == 'record'

for i = 0, k - 1 do
  local station, status, outcome = ARGV[3 + 3 * i], ARGV[4 + 3 * i], ARGV[5 + 3 * i]
  local code
  if redis.call('HEXISTS', KEYS[2], station) == 0 then
    code = 'u'
  elseif state == 'open' then
    if redis.call('HSETNX', KEYS[3], station, outcome) == 1 then
      code = 'r'
      recorded = recorded + 1
      counts[status] = (counts[status] or 0) + 1
    else
      code = 'd'
      duplicates = duplicates + 1
    end
  elseif redis.call('HEXISTS', KEYS[3], station) == 1 then
    code = 'd'
    duplicates = duplicates + 1
  else
    code = 'l'
    late = late + 1
    if keep_late then redis.call('HSETNX', KEYS[4], station, outcome) end
  end
  codes[#codes + 1] = code
end
codes = table.concat(codes)

for status, count in pairs(counts) do
  redis.call('HINCRBY', KEYS[7], 'stations_' .. status, count)
end
if duplicates > 0 then redis.call('HINCRBY', KEYS[7], 'duplicate_results', duplicates) end
if late > 0 then
  redis.call('HINCRBY', KEYS[1], 'late', late)
  redis.call('HINCRBY', KEYS[7], 'late_results', late)
  if keep_late then
    local ttl = redis.call('PTTL', KEYS[1])
    if ttl > 0 then redis.call('PEXPIRE', KEYS[4], ttl) end
  end
end

local done = before + recorded
if recorded == 0 then
  return {'unchanged', done, expected, codes}
end
if done >= expected then
  redis.call('ZADD', KEYS[5], 'XX', 0, ARGV[1])
  redis.call('LPUSH', KEYS[6], ARGV[1])
  redis.call('LTRIM', KEYS[6], 0, LIST_LAST_INDEX)  -- only a wake-up signal: the due zset is the truth
  return {'complete', done, expected, codes}
end
local needed = tonumber(redis.call('HGET', KEYS[1], 'quorum_needed') or '0')
if needed > 0 and done >= needed then
  local now_ms = redis_now_ms()
  if redis.call('HSETNX', KEYS[1], 'quorum_ms', now_ms) == 1 then
    local grace = tonumber(redis.call('HGET', KEYS[1], 'quorum_grace_ms') or '0')
    redis.call('ZADD', KEYS[5], 'XX', 'LT', now_ms + grace, ARGV[1])
    -- the wake-up also when a grace runs first: the batch is now due earlier than an aggregator may
    -- be sleeping, and the woken one sleeps until the new due time (its claim finds it not due yet)
    redis.call('LPUSH', KEYS[6], ARGV[1])
    redis.call('LTRIM', KEYS[6], 0, LIST_LAST_INDEX)
    return {'quorum', done, expected, codes}
  end
end
return {'recorded', done, expected, codes}
