--[[ ack_upload: the upload succeeded; mark the batch uploaded and let its keys expire.

KEYS[1..5]  the batch's keys: meta, inputs, outcomes, late, payload   (bf:b:{B}...)
KEYS[6]     leases zset    bf:leases  (global)
KEYS[7]     recent list    bf:recent  (global)
KEYS[8]     stats hash     bf:stats   (global)

ARGV[1]  batch id B
ARGV[2]  fencing token from claim_batch
ARGV[3]  retention_s    how long the finished batch stays inspectable
ARGV[4]  upload duration in ms (kept in meta for inspection)

Returns {"uploaded", uploaded_ms}
     or {"fenced", current_token}   our lease was taken over: the other owner acks
Invariant: only the current lease holder moves a batch to "uploaded"; every key of the batch gets
the same TTL.  Acking again (a retry after the reply to an ack that ran was lost, e.g. Redis was
killed right after writing it) changes nothing and returns the first ack's time.
]]
local owner = redis.call('HGET', KEYS[1], 'owner_token')
if owner ~= ARGV[2] then
  return {'fenced', owner or ''}
end
if redis.call('HGET', KEYS[1], 'state') == 'uploaded' then
  return {'uploaded', tonumber(redis.call('HGET', KEYS[1], 'uploaded_ms'))}
end
local now_ms = redis_now_ms()
local reason = redis.call('HGET', KEYS[1], 'reason') or 'deadline'
redis.call('HSET', KEYS[1], 'state', 'uploaded', 'uploaded_ms', now_ms, 'upload_ms', ARGV[4])
redis.call('ZREM', KEYS[6], ARGV[1])
for i = 1, 5 do
  redis.call('EXPIRE', KEYS[i], ARGV[3])
end
redis.call('LPUSH', KEYS[7], ARGV[1])
redis.call('LTRIM', KEYS[7], 0, LIST_LAST_INDEX)
redis.call('HINCRBY', KEYS[8], 'batches_uploaded', 1)
redis.call('HINCRBY', KEYS[8], 'batches_' .. reason, 1)
return {'uploaded', now_ms}
