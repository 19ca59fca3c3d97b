--[[ quarantine_message: keep a message that cannot become a batch, with its reason and coordinates.

KEYS[1]  quarantine entry hash   {T}:q:TOPIC:P:OFFSET
KEYS[2]  quarantine index zset   {T}:quarantine   (the shard's)
KEYS[3]  offsets hash            {T}:offsets      (the shard's)
KEYS[4]  stats hash              {T}:stats        (the shard's)

ARGV[1]  message id "TOPIC:P:OFFSET"
ARGV[2]  offsets field "TOPIC:PARTITION"
ARGV[3]  the message's offset
ARGV[4]  advance: "1" = also store offset+1 as the partition's next offset (the message is not
         covered by a batch created in the same dispatch), "0" = leave offsets to create_batch
ARGV[5]  expected: the next offset the dispatcher believes Redis holds for the partition, "" =
         nothing stored, "*" = no fence (tools and tests, not a dispatcher)
ARGV[6]  retention_s of the entry
ARGV[7]  max entries kept in the index (oldest index entries are trimmed beyond it)
ARGV[8..] field/value pairs of the entry (reason, topic, partition, offset, size, value, ...)

Returns {"quarantined", now_ms} or {"exists", now_ms} (same message quarantined before: nothing counted twice)
     or {"fenced", stored_offset or false} (Redis holds another next offset than expected: writes
        lost in a failover or an AOF restart, or a stale dispatcher; nothing written but the stats
        counter ingest_fenced)
     or {"stale", stored_offset} (offset already ingested: nothing written)
All keys carry {T}, the hash tag of the batch's shard (batchfleet/keys.py): one Cluster slot.
]]
local stored = redis.call('HGET', KEYS[3], ARGV[2])
if ARGV[5] ~= '*' and (stored or '') ~= ARGV[5] then
  redis.call('HINCRBY', KEYS[4], 'ingest_fenced', 1)
  return {'fenced', stored}
end
if stored and tonumber(stored) > tonumber(ARGV[3]) then
  return {'stale', stored}
end
local now_ms = redis_now_ms()
local result = 'quarantined'
if redis.call('EXISTS', KEYS[1]) == 1 then
  result = 'exists'
else
  for i = 8, #ARGV, 2 do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
  redis.call('HSET', KEYS[1], 'quarantined_ms', now_ms)
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('ZADD', KEYS[2], now_ms, ARGV[1])
  local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[7])
  if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1) end
  redis.call('HINCRBY', KEYS[4], 'messages_quarantined', 1)
end
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[3], ARGV[2], tonumber(ARGV[3]) + 1)
end
return {result, now_ms}
