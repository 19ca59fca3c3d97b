--[[ claim_batch: finalize a due batch (if still open) and lease its upload to one aggregator.

KEYS[1]  meta hash      {T}:b:B
KEYS[2]  outcomes hash  {T}:b:B:out
KEYS[3]  payload        {T}:b:B:payload
KEYS[4]  due zset       {T}:due     (the shard's)
KEYS[5]  leases zset    {T}:leases  (the shard's)
KEYS[6]  fence counter  {T}:fence   (the shard's)

ARGV[1]  batch id B
ARGV[2]  lease_ms       how long the claimer may take before another aggregator may take over
ARGV[3]  nonce          random, made by the claimer for this claim: the token is "COUNTER-NONCE",
                        so a fence counter that went backwards (a failover or an AOF restart lost
                        writes) never hands out a token twice

A batch is claimable when its due score (deadline, 0 once complete, or retry time) has passed, or
when its lease has run out (the previous claimer died).  On the first claim the batch is finalized:
reason "complete" if every expected station reported, "quorum" if it reached its quorum and the
deadline has not passed, else "deadline"; later results are late.

Returns {"claimed", token (a string, compared as such), now_ms, meta (flat field/value list), outcomes (flat list), payload|false}
     or {"not_due"}   someone else claimed it, or it is not due yet
     or {"gone"}      the batch no longer exists or is already uploaded / dead (index cleaned)
Invariant: at any time at most one unexpired lease; every claim gets a fencing token no other
claim ever got (the counter orders them, the nonce keeps them unique when the counter is rolled back).
All keys carry {T}, the hash tag of the batch's shard (batchfleet/keys.py): one Cluster slot.
]]
local now_ms = redis_now_ms()
local due = redis.call('ZSCORE', KEYS[4], ARGV[1])
local lease = redis.call('ZSCORE', KEYS[5], ARGV[1])
local claimable = (due and tonumber(due) <= now_ms) or (lease and tonumber(lease) <= now_ms)
if not claimable then
  return {'not_due'}
end

local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'uploaded' or state == 'dead' then
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('ZREM', KEYS[5], ARGV[1])
  return {'gone'}
end

if state == 'open' then
  local expected = tonumber(redis.call('HGET', KEYS[1], 'expected'))
  local done = redis.call('HLEN', KEYS[2])
  local reason = 'deadline'
  if done >= expected then
    reason = 'complete'
  elseif redis.call('HEXISTS', KEYS[1], 'quorum_ms') == 1
      and now_ms < tonumber(redis.call('HGET', KEYS[1], 'deadline_ms')) then
    reason = 'quorum'
  end
  redis.call('HSET', KEYS[1], 'state', 'finalized', 'reason', reason, 'finalized_ms', now_ms, 'done', done)
end

local token = redis.call('INCR', KEYS[6]) .. '-' .. ARGV[3]
redis.call('HSET', KEYS[1], 'owner_token', token)
redis.call('HINCRBY', KEYS[1], 'claims', 1)
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[5], now_ms + tonumber(ARGV[2]), ARGV[1])
local payload = redis.call('GET', KEYS[3])
return {'claimed', token, now_ms, redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]), payload}
