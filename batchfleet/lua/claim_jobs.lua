--[[ claim_jobs: start up to `want` queued arq jobs for one worker in one step.  The same claim that
arq's Worker.start_jobs makes job by job (WATCH in-progress key, EXISTS, ZSCORE, MULTI PSETEX EXEC:
four round trips per job), so batchfleet workers and plain arq workers can share a queue.

KEYS[1]        arq queue zset   {T}:queue (the shard's)
KEYS[2..1+n]   in-progress key of each candidate, arq:in-progress:JOB_ID (same order as the ids in ARGV)

ARGV[1]        now_ms           the worker's clock (arq compares job scores with its own clock)
ARGV[2]        in_progress_ms   TTL of an in-progress key (arq: longest job timeout + 10 s)
ARGV[3]        want             claim at most this many (the worker's free job slots)
ARGV[4..3+n]   candidate job ids, in queue order

Returns {job_id, score, job_id, score, ...}: the jobs claimed, in queue order.
Invariant: a job is claimed only while it is queued, due (score <= now) and has no in-progress key;
claiming sets that key, so no other worker starts the job until it is finished or the key expires.
All keys carry {T}, the hash tag of the batch's shard (batchfleet/keys.py): one Cluster slot.
]]
local now = tonumber(ARGV[1])
local want = tonumber(ARGV[3])
local claimed = {}
local got = 0
for i = 1, #KEYS - 1 do
  if got >= want then break end
  local job_id = ARGV[3 + i]
  if redis.call('EXISTS', KEYS[1 + i]) == 0 then
    local score = redis.call('ZSCORE', KEYS[1], job_id)
    if score and tonumber(score) <= now then
      redis.call('SET', KEYS[1 + i], '1', 'PX', ARGV[2])
      claimed[#claimed + 1] = job_id
      claimed[#claimed + 1] = score
      got = got + 1
    end
  end
end
return claimed
