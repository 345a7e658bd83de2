-- The reads the API answers from, all from the generation <prefix>:current names.
-- ARGV: prefix, op, args... Every answer starts with 'ok', gen | 'nogen' | 'notfound'.
local prefix, op = ARGV[1], ARGV[2]
local gen = redis.call('GET', prefix .. ':current')
if not gen then return {'nogen'} end
local g = prefix .. ':g' .. gen
if op == 'portfolio' then
  local b = book(g, ARGV[3])
  if not b then return {'notfound'} end
  local out = {'ok', gen}
  for _, v in ipairs(b) do out[#out + 1] = v end
  return out
elseif op == 'trades' or op == 'alerts' then
  local aid = ARGV[3]
  if redis.call('EXISTS', g .. ':acct:' .. aid) == 0 then return {'notfound'} end
  local out = {'ok', gen}
  local items
  if op == 'trades' then
    items = redis.call('ZREVRANGEBYSCORE', g .. ':trades:' .. aid, ARGV[4], '-inf',
      'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[5]))
  else
    items = redis.call('LRANGE', g .. ':alerts:' .. aid, 0, -1)
  end
  for _, v in ipairs(items) do out[#out + 1] = v end
  return out
elseif op == 'dashboard' then
  local t = redis.call('HMGET', g .. ':totals', 'accounts', 'day', 'trades', 'volume', 'notional')
  local out = {'ok', gen}
  for i = 1, 5 do out[#out + 1] = t[i] or '0' end
  local symbols = redis.call('SMEMBERS', g .. ':symbols')
  table.sort(symbols)
  for _, s in ipairs(symbols) do
    local m = redis.call('HMGET', g .. ':sym:' .. s, 'name', 'sector', 'price', 'day', 'trades',
      'volume', 'notional', 'holders')
    out[#out + 1] = s
    for i = 1, 8 do out[#out + 1] = m[i] or '' end
  end
  return out
end
return redis.error_reply('unknown read op')
