--[[ fail_upload: an upload attempt failed; schedule a retry or dead-letter the batch.

KEYS[1]  meta hash     {T}:b:B
KEYS[2]  due zset      {T}:due     (the shard's)
KEYS[3]  leases zset   {T}:leases  (the shard's)
KEYS[4]  dead zset     {T}:dead    (the shard's)
KEYS[5]  stats hash    {T}:stats   (the shard's)

ARGV[1]  batch id B
ARGV[2]  fencing token from claim_batch
ARGV[3]  retry_delay_ms   backoff before the next attempt (capped and jittered by the caller)
ARGV[4]  max_attempts     upload budget; reaching it dead-letters the batch
ARGV[5]  error text of this attempt

Returns {"retry", failures, retry_at_ms}
     or {"dead", failures}
     or {"fenced", current_token}
Invariant: retry state lives here, so it survives aggregator restarts; a dead batch keeps its keys
(no TTL) until it is replayed.
All keys carry {T}, the hash tag of the batch's shard (batchfleet/keys.py): one Cluster slot.
]]
local owner = redis.call('HGET', KEYS[1], 'owner_token')
if owner ~= ARGV[2] then
  return {'fenced', owner or ''}
end
local now_ms = redis_now_ms()
local failures = redis.call('HINCRBY', KEYS[1], 'upload_failures', 1)
redis.call('HSET', KEYS[1], 'last_error', ARGV[5])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[5], 'upload_failures', 1)
if failures >= tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'state', 'dead', 'dead_ms', now_ms)
  redis.call('ZADD', KEYS[4], now_ms, ARGV[1])
  redis.call('HINCRBY', KEYS[5], 'batches_dead_lettered', 1)
  return {'dead', failures}
end
local retry_at = now_ms + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], retry_at, ARGV[1])
return {'retry', failures, retry_at}
