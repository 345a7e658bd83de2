-- Functions shared by the apply and read scripts (prepended to each of them).

-- A hash as a Lua table of its fields.
local function hash(key)
  local flat, t = redis.call('HGETALL', key), {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

-- book(g, aid): the account's book in generation key prefix g, flat: account id, version,
-- as_of, cash, realized, reserved cash, buying power, then eight fields per position (symbol,
-- quantity, average cost, realized, price, name, sector, reserved quantity); nil when the
-- account is unknown. A book stored before orders rested reserves nothing: its buying power is
-- its cash.
local function book(g, aid)
  local acct = g .. ':acct:' .. aid
  if redis.call('EXISTS', acct) == 0 then return nil end
  local a = redis.call('HMGET', acct, 'version', 'as_of', 'cash', 'realized', 'reserved',
    'buying_power')
  local cash = a[3] or '0'
  local out = {aid, a[1] or '0', a[2] or '0', cash, a[4] or '0', a[5] or '0', a[6] or cash}
  local q = redis.call('HGETALL', g .. ':posq:' .. aid)
  if #q == 0 then return out end
  local costs, realized = hash(g .. ':posc:' .. aid), hash(g .. ':posr:' .. aid)
  local reserved = hash(g .. ':posres:' .. aid)
  for i = 1, #q, 2 do
    local s = q[i]
    local m = redis.call('HMGET', g .. ':sym:' .. s, 'price', 'name', 'sector')
    for _, v in ipairs({s, q[i + 1], costs[s] or '0', realized[s] or '0', m[1] or '',
      m[2] or '', m[3] or '', reserved[s] or '0'}) do
      out[#out + 1] = v
    end
  end
  return out
end
