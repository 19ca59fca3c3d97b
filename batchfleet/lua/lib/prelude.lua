--[[ Prelude: prepended by the store (batchfleet/store/scripts.py) to every script in batchfleet/lua/
before it is registered, after the constants it renders from Python (LUA_CONSTANTS in that module):

  JOB_SCORE_SKEW_MS  job scores are Redis time minus this (arq skips jobs scored after its own clock,
                     so a worker whose clock is up to this far behind still runs them, in order)
  BATCH_INDEX_MAX    the batch index keeps at most this many ids (oldest dropped first)
  LIST_LAST_INDEX    the wake-up and recent-uploads lists keep indexes 0..LIST_LAST_INDEX
  RATE_SLOT_MS       bf:rates (the web console's last-hour charts) counts uploads per slot of this many ms
  RATE_SLOTS         ... in a ring of this many slots

Scripts refer to these names and call redis_now_ms(); none repeats the TIME arithmetic.
]]
local function redis_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
