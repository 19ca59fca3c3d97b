--[[ ack_upload: the upload succeeded; mark the batch uploaded and let its keys expire.

KEYS[1..5]  the batch's keys: meta, inputs, outcomes, late, payload   ({T}:b:B...)
KEYS[6]     leases zset    {T}:leases  (the shard's)
KEYS[7]     recent list    {T}:recent  (the shard's)
KEYS[8]     stats hash     {T}:stats   (the shard's)
KEYS[9]     rates hash     {T}:rates   (the shard's; optional: the web console's last-hour chart)

ARGV[1]  batch id B
ARGV[2]  fencing token from claim_batch
ARGV[3]  retention_s    how long the finished batch stays inspectable
ARGV[4]  upload duration in ms (kept in meta for inspection)
ARGV[5]  who uploaded it (the aggregator's name, kept in meta as uploaded_by; optional)
ARGV[6..9]  the payload's ok, failed, empty, missing station counts (with KEYS[9])

The rates hash is a ring of RATE_SLOTS slots of RATE_SLOT_MS (one hour of 10 s) keyed by Redis time: POS:t holds
the slot number a position was last written for, POS:ok|failed|empty|missing|batches its counts; a
position is zeroed when a new slot reuses it.  One upload adds its counts once (a repeated ack
returns before counting), so the hash stays bounded and exact without a TTL.

Returns {"uploaded", uploaded_ms}
     or {"fenced", current_token}   our lease was taken over: the other owner acks
Invariant: only the current lease holder moves a batch to "uploaded"; every key of the batch gets
the same TTL.  Acking again (a retry after the reply to an ack that ran was lost, e.g. Redis was
killed right after writing it) changes nothing and returns the first ack's time.
All keys carry {T}, the hash tag of the batch's shard (batchfleet/keys.py): one Cluster slot.
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
if ARGV[5] and ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'uploaded_by', ARGV[5])
end
redis.call('ZREM', KEYS[6], ARGV[1])
for i = 1, 5 do
  redis.call('EXPIRE', KEYS[i], ARGV[3])
end
redis.call('LPUSH', KEYS[7], ARGV[1])
redis.call('LTRIM', KEYS[7], 0, LIST_LAST_INDEX)
redis.call('HINCRBY', KEYS[8], 'batches_uploaded', 1)
redis.call('HINCRBY', KEYS[8], 'batches_' .. reason, 1)
if KEYS[9] then
  local slot = math.floor(now_ms / RATE_SLOT_MS)
  local pos = tostring(slot % RATE_SLOTS)
  if redis.call('HGET', KEYS[9], pos .. ':t') ~= tostring(slot) then
    redis.call('HSET', KEYS[9], pos .. ':t', slot, pos .. ':ok', 0, pos .. ':failed', 0, pos .. ':empty', 0,
      pos .. ':missing', 0, pos .. ':batches', 0)
  end
  redis.call('HINCRBY', KEYS[9], pos .. ':batches', 1)
  local names = {'ok', 'failed', 'empty', 'missing'}
  for i = 1, 4 do
    local n = tonumber(ARGV[5 + i] or '0')
    if n > 0 then redis.call('HINCRBY', KEYS[9], pos .. ':' .. names[i], n) end
  end
end
return {'uploaded', now_ms}
