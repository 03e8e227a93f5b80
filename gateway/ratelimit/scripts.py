"""The Lua scripts behind RateLimiter: one EVALSHA checks and counts every limit of a request atomically."""

# KEYS: n counters. ARGV[1]: "limit,window_ms,amount" for each counter, all joined by commas.
# Returns one comma-joined string (one bulk reply parses much faster in redis-py than a 17-integer array):
#   allowed (1/0), index of the refusing counter (1-based, 0 if none), then 4 per counter:
#   used (weighted count after this request when allowed, before it when refused), reset_ms, retry_ms,
#   window index.
CHECK_LUA = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS
local a = {}
for v in string.gmatch(ARGV[1], '[^,]+') do a[#a + 1] = tonumber(v) end
local state = {}
local refused = 0
for i = 1, n do
  local limit = a[3 * i - 2]
  local period = a[3 * i - 1]
  local amount = a[3 * i]
  local win = math.floor(now / period)
  local elapsed = now - win * period
  local h = redis.call('HMGET', KEYS[i], 'w', 'c', 'p')
  local w = tonumber(h[1]) or -1
  local c = tonumber(h[2]) or 0
  local p = tonumber(h[3]) or 0
  local fresh = w ~= win
  if fresh then
    if w == win - 1 then p = c else p = 0 end
    c = 0
  end
  local left = period - elapsed
  local used = math.ceil(p * left / period) + c
  local retry = 0
  if amount > limit then
    retry = period
    if refused == 0 then refused = i end
  elseif used + amount > limit then
    -- when does ceil(p * left / period) + c + amount <= limit hold again?
    if c + amount <= limit then
      local need = limit - amount - c
      retry = left - math.floor(need * period / p)
    else
      retry = left + period - math.floor((limit - amount) * period / c)
    end
    if retry < 1 then retry = 1 end
    if refused == 0 then refused = i end
  end
  state[i] = {limit, period, amount, win, c, p, used, left, retry, fresh}
end
local out = {refused == 0 and 1 or 0, refused}
for i = 1, n do
  local s = state[i]
  local c = s[5]
  local used = s[7]
  if refused == 0 then
    c = c + s[3]
    used = used + s[3]
    if s[10] then
      -- a new window (or a new key): write it whole; it is of no use after the end of the next window
      redis.call('HSET', KEYS[i], 'w', s[4], 'c', c, 'p', s[6])
      redis.call('PEXPIREAT', KEYS[i], (s[4] + 2) * s[2])
    else
      redis.call('HINCRBY', KEYS[i], 'c', s[3])
    end
  end
  local reset = 0
  if c > 0 then reset = s[8] + s[2] elseif s[6] > 0 then reset = s[8] end
  out[#out + 1] = used
  out[#out + 1] = reset
  out[#out + 1] = s[9]
  out[#out + 1] = s[4]
end
return table.concat(out, ',')
"""

# KEYS: n tokens counters (one key's, so one hash tag: a Redis Cluster slot; a counter may repeat, once per window
# charged). ARGV: window_ms, delta, window index of the charge (-1: the current one), for each key in turn.
# Returns how many corrections were written.
SETTLE_LUA = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local written = 0
for i = 1, #KEYS do
  local period = tonumber(ARGV[3 * i - 2])
  local delta = tonumber(ARGV[3 * i - 1])
  local charged = tonumber(ARGV[3 * i])
  local win = math.floor(now / period)
  if charged < 0 then charged = win end
  local h = redis.call('HMGET', KEYS[i], 'w', 'c', 'p')
  if h[1] or delta > 0 then
    local w = tonumber(h[1]) or win
    local c = tonumber(h[2]) or 0
    local p = tonumber(h[3]) or 0
    if w ~= win then
      if w == win - 1 then p = c else p = 0 end
      c = 0
    end
    local apply = true
    if charged == win then
      c = math.max(0, c + delta)
    elseif charged == win - 1 then
      p = math.max(0, p + delta)
    elseif delta > 0 then
      c = c + delta
    else
      apply = false
    end
    if apply then
      redis.call('HSET', KEYS[i], 'w', win, 'c', c, 'p', p)
      redis.call('PEXPIREAT', KEYS[i], (win + 2) * period)
      written = written + 1
    end
  end
end
return written
"""
