-- One API key's share of a ledger flush (gateway/accounts/ledger.py), applied at most once.
--
-- KEYS[1] this writer's marker gw:ledger:{<id>}:<writer>   (the last batch applied)
-- KEYS[2] the key's rate prefix gw:rl:{<id>}
-- KEYS[3 .. 2+nb] budget period hashes gw:budget:{<id>}:<period>
-- KEYS[3+nb ..] usage hashes gw:usage:{<id>}:<YYYY-MM-DD>
-- ARGV[1] batch number (rises with every batch of this writer)   ARGV[2] tokens for the TPM
-- window   ARGV[3] nb   ARGV[4] nu   then per budget hash: spent_nusd, release_nusd,
-- expire_at; then per usage hash: field count n, then n field/increment pairs.
--
-- A batch whose reply was lost is sent again with the same number: the marker makes the
-- second one a no-op. Reserved money never goes below 0 (a reservation made before Redis
-- lost its data is released into a fresh hash). Returns 1 applied, 0 already applied.
if redis.replicate_commands then redis.replicate_commands() end

local seq = tonumber(ARGV[1])
if seq <= (tonumber(redis.call('GET', KEYS[1])) or 0) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', 86400)

local tokens = tonumber(ARGV[2])
if tokens > 0 then
  local now = redis.call('TIME')
  local key = KEYS[2] .. ':tok:' .. math.floor(tonumber(now[1]) / 60)
  redis.call('INCRBY', key, tokens)
  redis.call('EXPIRE', key, 120)
end

local nb, nu = tonumber(ARGV[3]), tonumber(ARGV[4])
local a, k = 5, 3
for _ = 1, nb do
  local spent, release = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  if spent ~= 0 then redis.call('HINCRBY', KEYS[k], 'spent', spent) end
  if release ~= 0 and redis.call('HINCRBY', KEYS[k], 'reserved', -release) < 0 then
    redis.call('HSET', KEYS[k], 'reserved', 0)
  end
  redis.call('EXPIREAT', KEYS[k], ARGV[a + 2])
  a, k = a + 3, k + 1
end
for _ = 1, nu do
  local n = tonumber(ARGV[a])
  a = a + 1
  for _ = 1, n do
    redis.call('HINCRBY', KEYS[k], ARGV[a], ARGV[a + 1])
    a = a + 2
  end
  redis.call('EXPIRE', KEYS[k], 34560000)
  k = k + 1
end
return 1
