--[[ create_batch: Kafka messages -> one open batch, its station jobs, and the partitions' next offsets.
One atomic step, so a crash leaves either nothing or the whole batch (exactly-once ingest).

KEYS[1]  meta hash           {T}:b:B
KEYS[2]  inputs hash         {T}:b:B:in       (the expected stations, each with an empty value)
KEYS[3]  due zset            {T}:due            (the shard's)
KEYS[4]  offsets hash        {T}:offsets        (the shard's)
KEYS[5]  arq queue zset      {T}:queue          (the shard's)
KEYS[6]  stats hash          {T}:stats          (the shard's)
KEYS[7]  batch index zset    {T}:batches        (the shard's; capped at 100,000 newest)
KEYS[8..7+n]  arq job key of each station, arq:job:{T}:B:STATION (same order as the stations in ARGV)

ARGV[1]  batch id B
ARGV[2]  timeout_ms         deadline = Redis server time + timeout_ms
ARGV[3]  job_expire_ms      TTL of each arq job key
ARGV[4]  queue_boost_ms     priority: the jobs are scored this much earlier, so arq picks them
                            before normal jobs enqueued less than this long before them
ARGV[5]  m                  number of extra meta field/value pairs that follow
ARGV[6 .. 5+2m]             meta field, value, ...
then     p                  number of partition entries that follow
then 4p:                    offsets field "TOPIC:PARTITION", expected stored next offset, first offset
                            in this batch, next offset.  "expected" is what the dispatcher believes
                            Redis holds for the partition: a number, "" = nothing stored, or "*" = no
                            fence (tools and tests that write batches directly, not a dispatcher)
then 2n: station id, arq job payload prefix; n = #KEYS - 7.  The prefix is the station's arq job
         JSON, whose last key is "a": [records, budget_ms, deadline_ms], cut before the deadline
         value: the script appends the deadline it computed and closes the list and the object.

Returns {"created", now_ms, deadline_ms}
     or {"fenced", field, stored_offset or false}  Redis holds another next offset than the dispatcher
                                          expected (writes lost in a failover or an AOF restart, or a
                                          stale dispatcher): nothing written but the stats counter
                                          ingest_fenced
     or {"stale", field, stored_offset}   offsets already ingested: nothing written
     or {"exists", created_ms}            batch already exists: nothing written
Invariant: a Kafka offset is ingested at most once; job keys are written with NX, so an arq job is
never overwritten or enqueued twice.
All keys carry {T}, the hash tag of the batch's shard (batchfleet/keys.py): one Cluster slot.
]]
local batch_id = ARGV[1]
local timeout_ms = tonumber(ARGV[2])
local job_expire_ms = tonumber(ARGV[3])
local boost_ms = tonumber(ARGV[4])
local m = tonumber(ARGV[5])
local i = 6 + 2 * m
local p = tonumber(ARGV[i])
local part_start = i + 1
local station_start = part_start + 4 * p

for j = 0, p - 1 do
  local field = ARGV[part_start + 4 * j]
  local expected = ARGV[part_start + 4 * j + 1]
  local stored = redis.call('HGET', KEYS[4], field)
  if expected ~= '*' and (stored or '') ~= expected then
    redis.call('HINCRBY', KEYS[6], 'ingest_fenced', 1)
    return {'fenced', field, stored}
  end
end

for j = 0, p - 1 do
  local field = ARGV[part_start + 4 * j]
  local first = tonumber(ARGV[part_start + 4 * j + 2])
  local stored = redis.call('HGET', KEYS[4], field)
  if stored and tonumber(stored) > first then
    return {'stale', field, stored}
  end
end

local existing = redis.call('HGET', KEYS[1], 'created_ms')
if existing then
  return {'exists', existing}
end

local now_ms = redis_now_ms()
local deadline_ms = now_ms + timeout_ms
local deadline_tail = string.format('%d', deadline_ms) .. ']}'
local n = #KEYS - 7

redis.call('HSET', KEYS[1], 'state', 'open', 'created_ms', now_ms, 'deadline_ms', deadline_ms,
  'expected', n, 'late', 0)
for j = 0, m - 1 do
  redis.call('HSET', KEYS[1], ARGV[6 + 2 * j], ARGV[7 + 2 * j])
end

for k = 0, n - 1 do
  local a = station_start + 2 * k
  -- the inputs hash is the set of expected stations; a station's records live in its arq job
  redis.call('HSET', KEYS[2], ARGV[a], '')
  local job_key = KEYS[8 + k]
  if redis.call('SET', job_key, ARGV[a + 1] .. deadline_tail, 'PX', job_expire_ms, 'NX') then
    -- the queue member is the job id: the job key without arq's "arq:job:" prefix.  The score is
    -- Redis time minus JOB_SCORE_SKEW_MS (see the prelude): order is kept, clock skew tolerated.
    redis.call('ZADD', KEYS[5], now_ms - JOB_SCORE_SKEW_MS - boost_ms, string.sub(job_key, 9))
  end
end

for j = 0, p - 1 do
  redis.call('HSET', KEYS[4], ARGV[part_start + 4 * j], ARGV[part_start + 4 * j + 3])
end

redis.call('ZADD', KEYS[3], deadline_ms, batch_id)
redis.call('ZADD', KEYS[7], now_ms, batch_id)
if redis.call('ZCARD', KEYS[7]) > BATCH_INDEX_MAX then redis.call('ZREMRANGEBYRANK', KEYS[7], 0, 0) end
redis.call('HINCRBY', KEYS[6], 'batches_created', 1)
redis.call('HINCRBY', KEYS[6], 'stations_dispatched', n)
return {'created', now_ms, deadline_ms}
