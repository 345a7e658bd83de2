-- The reads the API answers from, all from the generation <prefix>:current names.
-- ARGV: prefix, op, args... Every answer starts with 'ok', gen | 'nogen' | 'notfound'.
local prefix, op = ARGV[1], ARGV[2]
local gen = redis.call('GET', prefix .. ':current')
if not gen then return {'nogen'} end
local g = prefix .. ':g' .. gen
-- An older layout's generation is rebuilt before anything reads it.
if not usable(g) then return {'nogen'} end

-- Whether a sorts before b byte by byte, as Redis orders the members of a sorted set that
-- share a score. Lua's own `<` compares by the server's collation locale, which need not.
local function byte_order(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

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
elseif op == 'orders' then
  -- ARGV: account, the client order id the page starts after ('' = the first page), how many,
  -- then the statuses listed. Each status's set is already in id order: a page is the first
  -- `limit` ids of their merge.
  local aid, after, limit = ARGV[3], ARGV[4], tonumber(ARGV[5])
  if redis.call('EXISTS', g .. ':acct:' .. aid) == 0 then return {'notfound'} end
  local from = after == '' and '-' or '(' .. after
  local lists = {}
  for i = 6, #ARGV do
    local ids = redis.call('ZRANGEBYLEX', g .. ':orderids:' .. ARGV[i] .. ':' .. aid, from, '+',
      'LIMIT', 0, limit)
    if #ids > 0 then lists[#lists + 1] = {ids = ids, at = 1} end
  end
  local page = {}
  while #page < limit do
    local first
    for _, list in ipairs(lists) do
      local id = list.ids[list.at]
      if id and (not first or byte_order(id, first.ids[first.at])) then first = list end
    end
    if not first then break end
    page[#page + 1] = first.ids[first.at]
    first.at = first.at + 1
  end
  local out = {'ok', gen}
  if #page > 0 then
    for _, v in ipairs(redis.call('HMGET', g .. ':orders:' .. aid, unpack(page))) do
      out[#out + 1] = v
    end
  end
  return out
elseif op == 'open_orders' or op == 'order_changes' then
  -- The account's version, then every order in the statuses ARGV[4...] (the open ones), or
  -- the orders changed after version ARGV[4] in version order: read together, so a watcher
  -- knows what it has seen.
  local aid = ARGV[3]
  local acct = g .. ':acct:' .. aid
  if redis.call('EXISTS', acct) == 0 then return {'notfound'} end
  local ids = {}
  if op == 'open_orders' then
    for i = 4, #ARGV do
      local key = g .. ':orderids:' .. ARGV[i] .. ':' .. aid
      for _, id in ipairs(redis.call('ZRANGE', key, 0, -1)) do ids[#ids + 1] = id end
    end
  else
    ids = redis.call('ZRANGEBYSCORE', g .. ':orderversions:' .. aid, '(' .. ARGV[4], '+inf')
  end
  local out = {'ok', gen, redis.call('HGET', acct, 'version') or '0'}
  if #ids > 0 then
    for _, v in ipairs(redis.call('HMGET', g .. ':orders:' .. aid, unpack(ids))) do
      out[#out + 1] = v
    end
  end
  return out
elseif op == 'dashboard' then
  local t = redis.call('HMGET', g .. ':totals', 'accounts', 'day', 'trades', 'volume', 'notional')
  local out = {'ok', gen}
  for i = 1, 5 do out[#out + 1] = t[i] or '0' end
  local symbols = redis.call('SMEMBERS', g .. ':symbols')
  table.sort(symbols)
  local refs = {}
  for _, s in ipairs(symbols) do
    refs[#refs + 1], refs[#refs + 2], refs[#refs + 3] = NAME .. s, SECTOR .. s, PRICE .. s
  end
  local ref = call_each('HMGET', g .. ':symref', refs)
  for i, s in ipairs(symbols) do
    local m = redis.call('HMGET', g .. ':sym:' .. s, 'day', 'trades', 'volume', 'notional',
      'holders')
    out[#out + 1] = s
    for j = i * 3 - 2, i * 3 do out[#out + 1] = ref[j] or '' end
    for j = 1, 5 do out[#out + 1] = m[j] or '' end
  end
  return out
end
return redis.error_reply('unknown read op')
