--[[ replay_batch: give a dead-lettered batch a fresh upload budget.

KEYS[1]  meta hash     {T}:b:B
KEYS[2]  due zset      {T}:due     (the shard's)
KEYS[3]  dead zset     {T}:dead    (the shard's)
KEYS[4]  stats hash    {T}:stats   (the shard's)

ARGV[1]  batch id B

Returns {"replayed"} or {"not_dead", state}
Invariant: only a dead batch is replayed; it keeps its frozen payload, so the re-upload carries the
same body and Idempotency-Key as every earlier attempt.
All keys carry {T}, the hash tag of the batch's shard (batchfleet/keys.py): one Cluster slot.
]]
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'dead' then
  return {'not_dead', state or 'missing'}
end
redis.call('HSET', KEYS[1], 'state', 'finalized', 'upload_failures', 0)
redis.call('HINCRBY', KEYS[1], 'replays', 1)
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('HINCRBY', KEYS[4], 'batches_replayed', 1)
return {'replayed'}
