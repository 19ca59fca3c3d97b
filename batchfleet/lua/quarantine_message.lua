--[[ quarantine_message: keep a message that cannot become a batch, with its reason and coordinates.

KEYS[1]  quarantine entry hash   bf:q:{TOPIC:P:OFFSET}
KEYS[2]  quarantine index zset   bf:quarantine   (global)
KEYS[3]  offsets hash            bf:offsets      (global)
KEYS[4]  stats hash              bf:stats        (global)

ARGV[1]  message id "TOPIC:P:OFFSET"
ARGV[2]  offsets field "TOPIC:PARTITION"
ARGV[3]  the message's offset
ARGV[4]  advance: "1" = also store offset+1 as the partition's next offset (the message is not
         covered by a batch created in the same dispatch), "0" = leave offsets to create_batch
ARGV[5]  retention_s of the entry
ARGV[6]  max entries kept in the index (oldest index entries are trimmed beyond it)
ARGV[7..] field/value pairs of the entry (reason, topic, partition, offset, size, value, ...)

Returns {"quarantined", now_ms} or {"exists"} (same message quarantined before: nothing counted twice)
     or {"stale", stored_offset} (offset already ingested: nothing written)
]]
local stored = redis.call('HGET', KEYS[3], ARGV[2])
if stored and tonumber(stored) > tonumber(ARGV[3]) then
  return {'stale', stored}
end
local now_ms = redis_now_ms()
local result = 'quarantined'
if redis.call('EXISTS', KEYS[1]) == 1 then
  result = 'exists'
else
  for i = 7, #ARGV, 2 do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
  redis.call('HSET', KEYS[1], 'quarantined_ms', now_ms)
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  redis.call('ZADD', KEYS[2], now_ms, ARGV[1])
  local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[6])
  if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1) end
  redis.call('HINCRBY', KEYS[4], 'messages_quarantined', 1)
end
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[3], ARGV[2], tonumber(ARGV[3]) + 1)
end
return {result, now_ms}
