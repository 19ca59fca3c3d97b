--[[ split_group: a group job runs again because the worker running it died (or was stopped) before
every station of the group had an outcome: give each of those stations its own arq job, so that each
is re-run, counted and (if it keeps killing workers) given up on its own.  Stations that have an
outcome are not re-run.

KEYS[1]  meta hash      {T}:b:B
KEYS[2]  outcomes hash  {T}:b:B:out
KEYS[3]  arq queue zset {T}:queue (the shard's)
KEYS[4..3+k]  arq job key of each station, arq:job:{T}:B@I:STATION (same order as the stations in ARGV)

ARGV[1]  job_expire_ms   TTL of each new arq job key
ARGV[2]  score           queue score of the new jobs (the group's own: they keep its place and priority)
ARGV[3]  incarnation I   of the batch the group belongs to ("" = any: a group id without one)
ARGV[4 .. 3+2k]  per station: station id, its arq job JSON

Returns {"split", created, recorded}   created: station jobs queued now (a job that exists already is
                                       left alone); recorded: stations that had an outcome (not re-run)
     or {"closed", state}              the batch is no longer open (or gone): nothing is re-run
     or {"stale", incarnation}         the batch is open, but as another incarnation than the group's
                                       (Redis lost the group's batch, the dispatcher created it again
                                       with jobs of its own): nothing is re-run
Invariant: a station job is created at most once (NX) and only for a station without an outcome, so a
station is never run twice by a split, however often the split itself is repeated.
All keys carry {T}, the hash tag of the batch's shard (batchfleet/keys.py): one Cluster slot.
]]
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'open' then
  return {'closed', state or 'gone'}
end
local inc = redis.call('HGET', KEYS[1], 'inc')
if ARGV[3] ~= '' and inc ~= ARGV[3] then
  return {'stale', inc or ''}
end
local created, recorded = 0, 0
for i = 0, #KEYS - 4 do
  local station = ARGV[4 + 2 * i]
  if redis.call('HEXISTS', KEYS[2], station) == 1 then
    recorded = recorded + 1
  elseif redis.call('SET', KEYS[4 + i], ARGV[5 + 2 * i], 'PX', ARGV[1], 'NX') then
    redis.call('ZADD', KEYS[3], ARGV[2], string.sub(KEYS[4 + i], 9))
    created = created + 1
  end
end
return {'split', created, recorded}
