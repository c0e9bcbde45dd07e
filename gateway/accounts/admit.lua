-- Admission of one request of one API key (gateway/accounts/limiter.py), atomically:
-- requests and tokens per minute over a sliding window, then the budget. Everything is
-- checked before anything is written, so a refused request changes nothing.
--
-- KEYS[1] the key's rate prefix  gw:rl:{<id>}   (counters :req:<minute> and :tok:<minute>)
-- KEYS[2] the budget period hash gw:budget:{<id>}:<period>   (fields spent, reserved)
-- ARGV[1] rpm (-1: none)   ARGV[2] tpm (-1: none)   ARGV[3] this request's tokens estimate
-- ARGV[4] budget limit in nusd (-1: none)   ARGV[5] nusd to reserve
-- ARGV[6] unix time at which the budget hash expires (period end + 7 days)
--
-- Sliding window: the count is this minute's plus the previous minute's weighted by the
-- share of it still inside the last 60 s. Time is Redis's own (TIME): one clock for every
-- replica. Returns {status, retry_ms, requests_left, requests_reset_ms, tokens_left,
-- tokens_reset_ms, spent_nusd, reserved_nusd}; status 0 admitted, 1 requests, 2 tokens,
-- 3 budget. Money is integer nano-USD.
if redis.replicate_commands then redis.replicate_commands() end

local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local minute = math.floor(t / 60)
local elapsed = (t - minute * 60) / 60
local rpm, tpm, want_tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local limit, want_nusd = tonumber(ARGV[4]), tonumber(ARGV[5])

local req_key = KEYS[1] .. ':req:' .. minute
local counts = redis.call('MGET', req_key, KEYS[1] .. ':req:' .. (minute - 1),
  KEYS[1] .. ':tok:' .. minute, KEYS[1] .. ':tok:' .. (minute - 1))
local rc, rp = tonumber(counts[1]) or 0, tonumber(counts[2]) or 0
local tc, tp = tonumber(counts[3]) or 0, tonumber(counts[4]) or 0

-- Seconds until a window (c this minute, p the previous) has room for n more under L.
-- n above L is taken as L: such a request waits for an empty window, not for ever.
local function wait_s(c, p, n, L)
  if n > L then n = L end
  if c + n <= L then
    if p <= 0 then return 0 end
    return math.max(0, 1 - (L - c - n) / p - elapsed) * 60
  end
  return (1 - elapsed) * 60 + math.max(0, 1 - (L - n) / c) * 60
end

-- Seconds until a window is empty again (what x-ratelimit-reset-* reports).
local function reset_s(c, p)
  if c > 0 then return (2 - elapsed) * 60 end
  if p > 0 then return (1 - elapsed) * 60 end
  return 0
end

local req_count = rp * (1 - elapsed) + rc
local tok_count = tp * (1 - elapsed) + tc
local status, retry = 0, 0
if rpm >= 0 and req_count + 1 > rpm then
  status, retry = 1, wait_s(rc, rp, 1, rpm)
elseif tpm >= 0 and tok_count + math.min(want_tokens, tpm) > tpm then
  status, retry = 2, wait_s(tc, tp, want_tokens, tpm)
end

local spent, reserved = 0, 0
if limit >= 0 then
  local budget = redis.call('HMGET', KEYS[2], 'spent', 'reserved')
  spent, reserved = tonumber(budget[1]) or 0, tonumber(budget[2]) or 0
  if status == 0 and spent + reserved >= limit then status = 3 end
end

if status == 0 then
  if rpm >= 0 then
    redis.call('INCR', req_key)
    redis.call('EXPIRE', req_key, 120)
    rc = rc + 1
    req_count = req_count + 1
  end
  if limit >= 0 and want_nusd > 0 then
    reserved = redis.call('HINCRBY', KEYS[2], 'reserved', want_nusd)
    redis.call('EXPIREAT', KEYS[2], ARGV[6])
  end
end

local requests_left, tokens_left = -1, -1
if rpm >= 0 then requests_left = math.max(0, math.floor(rpm - req_count)) end
if tpm >= 0 then tokens_left = math.max(0, math.floor(tpm - tok_count)) end
return {
  status, math.ceil(retry * 1000),
  requests_left, math.ceil(reset_s(rc, rp) * 1000),
  tokens_left, math.ceil(reset_s(tc, tp) * 1000),
  spent, reserved,
}
