"""The Lua scripts of the shared request budget, run atomically by Redis on its own clock.

A token bucket of the same shape as `agent.uplink.ratelimit.TokenBucket` (never more than the
configured requests in any 60 s, a burst of `capacity`), the shared "blocked until" of a 429,
the agents seen (for the fallback share) and their claims (who gets the next free request).
Numbers go back as strings: Redis truncates Lua floats to integers in replies.
"""

from __future__ import annotations

PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens, stamp = tonumber(b[1]), tonumber(b[2])
if tokens == nil or stamp == nil then tokens, stamp = 1, now end
tokens = math.min(cap, tokens + math.max(0, now - stamp) * rate)
local function save()
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
  redis.call('EXPIRE', KEYS[1], 3600)
end
"""

# KEYS: bucket, blocked, agents, weights, claims; ARGV: rate/s, capacity, spare (0/1/keepalive), agent,
# weight, seen_for, age (seconds its call has been due, weighted; '' for none), requests a minute.
# Returns {granted, wait, blocked, agents, total weight, requests a minute another agent configured
# ('' if none differs)} (numbers as strings: Redis truncates floats).
TAKE = PRELUDE + """
local seen_for = tonumber(ARGV[6])
redis.call('ZADD', KEYS[3], now, ARGV[4])
redis.call('HSET', KEYS[4], ARGV[4], ARGV[5])
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - seen_for)
if #gone > 0 then
  redis.call('ZREM', KEYS[3], unpack(gone))
  redis.call('HDEL', KEYS[4], unpack(gone))
end
redis.call('EXPIRE', KEYS[3], math.ceil(seen_for * 2))
redis.call('EXPIRE', KEYS[4], math.ceil(seen_for * 2))
local total = 0
for _, w in ipairs(redis.call('HVALS', KEYS[4])) do total = total + tonumber(w) end
local agents = redis.call('ZCARD', KEYS[3])
local other = redis.call('HGET', KEYS[1], 'per_minute')
if not other or other == ARGV[8] then other = '' end
redis.call('HSET', KEYS[1], 'per_minute', ARGV[8])
if ARGV[3] == 'keepalive' then return {0, '0', 0, agents, tostring(total), other} end
local blocked = tonumber(redis.call('GET', KEYS[2]) or '0')
if blocked > now then return {0, tostring(blocked - now), 1, agents, tostring(total), other} end
local need = 1
if ARGV[3] == '1' then need = cap end
local due = tonumber(ARGV[7])
if due ~= nil then due = now - due end  -- on Redis's clock: the PCs' clocks need not agree
local claims = redis.call('HGETALL', KEYS[5])
local fresh = 2 / rate + 0.25
local ahead = false
for i = 1, #claims, 2 do
  local other, at, when = claims[i], 0, 0
  local sep = string.find(claims[i + 1], ':', 1, true)
  when, at = tonumber(string.sub(claims[i + 1], 1, sep - 1)), tonumber(string.sub(claims[i + 1], sep + 1))
  if at < now - fresh then
    redis.call('HDEL', KEYS[5], other)
  elseif other ~= ARGV[4] and (ARGV[3] == '1' or (due ~= nil and when < due)) then
    ahead = true  -- an older claim; or any claim, when asking for spare budget (parameters)
  end
end
if tokens >= need and not ahead then
  tokens = tokens - 1
  save()
  redis.call('HDEL', KEYS[5], ARGV[4])
  return {1, '0', 0, agents, tostring(total), other}
end
if due ~= nil then
  redis.call('HSET', KEYS[5], ARGV[4], tostring(due) .. ':' .. tostring(now))
  redis.call('EXPIRE', KEYS[5], 60)
end
save()
local wait = (need - tokens) / rate
if tokens >= need then wait = math.min(1 / rate, 0.25) end
return {0, tostring(wait), 0, agents, tostring(total), other}
"""

# KEYS: bucket; ARGV: rate/s, capacity.
REFUND = PRELUDE + """
tokens = math.min(cap, tokens + 1)
save()
return 1
"""

# KEYS: bucket, blocked; ARGV: rate/s, capacity, seconds.
BLOCK = PRELUDE + """
local seconds = tonumber(ARGV[3])
local blocked = tonumber(redis.call('GET', KEYS[2]) or '0')
if now + seconds > blocked then
  redis.call('SET', KEYS[2], tostring(now + seconds), 'EX', math.ceil(seconds) + 1)
end
tokens = math.min(tokens, 0)
save()
return 1
"""
