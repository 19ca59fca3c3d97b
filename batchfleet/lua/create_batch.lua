--[[ create_batch: Kafka messages -> one open batch, its arq jobs, and the partitions' next offsets.
One atomic step, so a crash leaves either nothing or the whole batch (exactly-once ingest).

KEYS[1]  meta hash           {T}:b:B
KEYS[2]  inputs hash         {T}:b:B:in       (the expected stations, each with an empty value)
KEYS[3]  due zset            {T}:due            (the shard's)
KEYS[4]  offsets hash        {T}:offsets        (the shard's)
KEYS[5]  arq queue zset      {T}:queue          (the shard's)
KEYS[6]  stats hash          {T}:stats          (the shard's)
KEYS[7]  batch index zset    {T}:batches        (the shard's; capped at BATCH_INDEX_MAX newest)
KEYS[8..7+j]  arq job key of each job: arq:job:{T}:B#N (a group of stations) or arq:job:{T}:B:STATION

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
then     n                  number of expected stations that follow
then n:  station ids (the inputs hash; n is the batch's "expected")
then j:  arq job payload prefix of each job, j = #KEYS - 7, in the order of the job keys.  A prefix is
         the job's arq JSON, whose last key is "a": [..., budget_ms, deadline_ms], cut before the
         deadline value: the script appends the deadline it computed and closes the list and object.

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
local n_at = part_start + 4 * p
local n = tonumber(ARGV[n_at])
local station_start = n_at + 1
local job_start = station_start + n
local jobs = #KEYS - 7

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

redis.call('HSET', KEYS[1], 'state', 'open', 'created_ms', now_ms, 'deadline_ms', deadline_ms,
  'expected', n, 'late', 0, 'jobs', jobs)
for j = 0, m - 1 do
  redis.call('HSET', KEYS[1], ARGV[6 + 2 * j], ARGV[7 + 2 * j])
end

-- the inputs hash is the set of expected stations (their records live in the arq jobs): one HSET
-- per 500 stations instead of one per station
local fields = {}
for k = 0, n - 1 do
  fields[#fields + 1] = ARGV[station_start + k]
  fields[#fields + 1] = ''
  if #fields >= 1000 or k == n - 1 then
    redis.call('HSET', KEYS[2], unpack(fields))
    fields = {}
  end
end

-- the queue member is the job id: the job key without arq's "arq:job:" prefix.  The score is Redis
-- time minus JOB_SCORE_SKEW_MS (see the prelude): order is kept, clock skew tolerated.
local score = now_ms - JOB_SCORE_SKEW_MS - boost_ms
for k = 0, jobs - 1 do
  local job_key = KEYS[8 + k]
  if redis.call('SET', job_key, ARGV[job_start + k] .. deadline_tail, 'PX', job_expire_ms, 'NX') then
    redis.call('ZADD', KEYS[5], score, string.sub(job_key, 9))
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
redis.call('HINCRBY', KEYS[6], 'jobs_dispatched', jobs)
return {'created', now_ms, deadline_ms}
