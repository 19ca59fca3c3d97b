--[[ freeze_payload: store a batch's upload body once, for the current lease holder only.

KEYS[1]  meta hash   {T}:b:B
KEYS[2]  payload     {T}:b:B:payload

ARGV[1]  fencing token from claim_batch
ARGV[2]  the payload JSON built from the batch's recorded state

Returns {"frozen", body}   the body every attempt must send (the stored one if it existed)
     or {"fenced"}         our lease was taken over: do not upload
Writes meta.frozen_token = ARGV[1] on every "frozen" reply, even when the body existed: a WAIT sent
right after on the same connection then covers the body and everything written before it (a WAIT
after a script that wrote nothing would count replicas that never saw the body).
Invariant: every upload of a batch sends the same bytes; a stalled former owner can neither upload
nor re-create the payload key after the batch expired.
All keys carry {T}, the hash tag of the batch's shard (batchfleet/keys.py): one Cluster slot.
]]
if redis.call('HGET', KEYS[1], 'owner_token') ~= ARGV[1] then
  return {'fenced'}
end
redis.call('HSET', KEYS[1], 'frozen_token', ARGV[1])
local existing = redis.call('GET', KEYS[2])
if existing then
  return {'frozen', existing}
end
redis.call('SET', KEYS[2], ARGV[2])
return {'frozen', ARGV[2]}
