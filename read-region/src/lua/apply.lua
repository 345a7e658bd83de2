-- Applies one enriched event to a generation, atomically and idempotently: the one projection
-- rule. An aggregate's cursor (`version:part:parts` of the last event applied) admits exactly
-- its successor: the next part of the current set, or part 1 of the next version once the
-- set is complete. At or below the cursor is a duplicate (redelivery, replay); anything else
-- is a gap (its predecessor has not been applied yet) and changes nothing.
--
-- One call applies a batch of events in order (one round trip and one script run for many
-- events: the rebuild's and the projector's batches). ARGV is the events one after another,
-- each as its field count followed by its fields: prefix, generation ('' = the current one),
-- snapshot flag, aggregate type, aggregate id, version, part, parts, stream sequence,
-- occurred_at (ms), UTC day, kind, body... Returns one answer per event, in order:
-- {'applied', gen, book...} | {'duplicate', gen} | {'gap', gen, v, p, n} | {'nogen'}. The book
-- (see common.lua) follows only with the snapshot flag, after an account version completes.

-- Adds to a counter field. A sum beyond Redis's 64-bit integers (only figures far beyond the
-- write model's limits get there) must not fail the script, which would hold the region's
-- projection at this event for good: the field reads 'overflow' instead, and stays so (a later
-- HINCRBY on it fails the same way), so readers refuse the figure rather than show a wrong one.
local function add(key, field, by)
  local r = redis.pcall('HINCRBY', key, field, by)
  if type(r) == 'table' and r.err then redis.call('HSET', key, field, 'overflow') end
end

-- The helpers below take the generation's key prefix `g`: defined once per script run, not
-- once per event.
local function holders(g, symbol, before, after)
  if before <= 0 and after > 0 then
    add(g .. ':sym:' .. symbol, 'holders', 1)
    redis.call('SADD', g .. ':symbols', symbol)
  elseif before > 0 and after <= 0 then
    add(g .. ':sym:' .. symbol, 'holders', -1)
  end
end
local function set_position(g, acct, symbol, qty, cost)
  local before = tonumber(redis.call('HGET', g .. ':posq:' .. acct, symbol) or '0')
  holders(g, symbol, before, tonumber(qty))
  if tonumber(qty) == 0 then
    redis.call('HDEL', g .. ':posq:' .. acct, symbol)
    redis.call('HDEL', g .. ':posc:' .. acct, symbol)
  else
    redis.call('HSET', g .. ':posq:' .. acct, symbol, qty)
    redis.call('HSET', g .. ':posc:' .. acct, symbol, cost)
  end
end
local function reference(g, symbol, name, sector)
  local key = g .. ':sym:' .. symbol
  if name ~= '' then redis.call('HSETNX', key, 'name', name) end
  if sector ~= '' then redis.call('HSETNX', key, 'sector', sector) end
  redis.call('SADD', g .. ':symbols', symbol)
end
-- Counters for "today": a trade of a later day starts the day afresh, one of an earlier day
-- (possible across accounts) no longer counts for today.
local function count(key, day, qty, notional)
  local d = redis.call('HGET', key, 'day')
  if d ~= day then
    if d and tonumber(d) > tonumber(day) then return end
    redis.call('HSET', key, 'day', day, 'trades', 0, 'volume', 0, 'notional', 0)
  end
  add(key, 'trades', 1)
  add(key, 'volume', qty)
  add(key, 'notional', notional)
end

-- What one script run learns once and writes once: whether each generation exists, and the
-- highest stream sequence seen per generation (written to its meta after the last event).
local live, highest = {}, {}
local function seen(meta, seq)
  local s = tonumber(seq)
  if s > (highest[meta] or 0) then highest[meta] = s end
end

-- One event; its fields are the function's ARGV, so the rule below reads as written for one.
local function apply(ARGV)
  local prefix, gen = ARGV[1], ARGV[2]
  if gen == '' then
    gen = redis.call('GET', prefix .. ':current')
    if not gen then return {'nogen'} end
  end
  local g = prefix .. ':g' .. gen
  local meta = g .. ':meta'
  if live[meta] == nil then live[meta] = redis.call('EXISTS', meta) == 1 end
  if not live[meta] then return {'nogen'} end
  local atype, aid = ARGV[4], ARGV[5]
  local version, part, parts = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
  local seq, occurred, day, kind = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
  local cfield = atype .. ':' .. aid
  local cv, cp, cn = 0, 0, 0
  local cur = redis.call('HGET', g .. ':cursor', cfield)
  if cur then
    local v, p, n = string.match(cur, '^(%d+):(%d+):(%d+)$')
    cv, cp, cn = tonumber(v), tonumber(p), tonumber(n)
  end
  if version < cv or (version == cv and part <= cp) then
    seen(meta, seq)
    return {'duplicate', gen}
  end
  local sv, sp = cv + 1, 1
  if cp < cn then sv, sp = cv, cp + 1 end
  if version ~= sv or part ~= sp then
    return {'gap', gen, tostring(cv), tostring(cp), tostring(cn)}
  end

  if kind == 'registered' then
    redis.call('HSET', g .. ':acct:' .. aid, 'owner', ARGV[13], 'currency', ARGV[14],
      'cash', '0', 'realized', '0', 'version', '0', 'as_of', occurred)
    add(g .. ':totals', 'accounts', 1)
  elseif kind == 'cash' then
    redis.call('HSET', g .. ':acct:' .. aid, 'cash', ARGV[13])
  elseif kind == 'trade' then
    local symbol, qty, notional, realized = ARGV[14], ARGV[15], ARGV[16], ARGV[17]
    redis.call('ZADD', g .. ':trades:' .. aid, version, ARGV[13])
    set_position(g, aid, symbol, ARGV[18], ARGV[19])
    add(g .. ':posr:' .. aid, symbol, realized)
    add(g .. ':acct:' .. aid, 'realized', realized)
    reference(g, symbol, ARGV[20], ARGV[21])
    count(g .. ':sym:' .. symbol, day, qty, notional)
    count(g .. ':totals', day, qty, notional)
  elseif kind == 'value' then
    local acct = g .. ':acct:' .. aid
    redis.call('HSET', acct, 'cash', ARGV[13], 'realized', ARGV[14])
    local listed = {}
    local n = tonumber(ARGV[15])
    for i = 0, n - 1 do
      local base = 16 + i * 6
      local symbol = ARGV[base]
      listed[symbol] = true
      set_position(g, aid, symbol, ARGV[base + 1], ARGV[base + 2])
      redis.call('HSET', g .. ':posr:' .. aid, symbol, ARGV[base + 3])
      reference(g, symbol, ARGV[base + 4], ARGV[base + 5])
    end
    -- The book is authoritative: a position it no longer lists is gone.
    for _, symbol in ipairs(redis.call('HKEYS', g .. ':posq:' .. aid)) do
      if not listed[symbol] then set_position(g, aid, symbol, '0', '0') end
    end
    for _, symbol in ipairs(redis.call('HKEYS', g .. ':posr:' .. aid)) do
      if not listed[symbol] then redis.call('HDEL', g .. ':posr:' .. aid, symbol) end
    end
  elseif kind == 'alert' then
    local account, alert_id = ARGV[13], ARGV[14]
    if redis.call('SADD', g .. ':alertids:' .. account, alert_id) == 1 then
      local at = version
      if atype ~= 'account' then
        at = redis.call('HGET', g .. ':acct:' .. account, 'version') or '0'
      end
      redis.call('RPUSH', g .. ':alerts:' .. account, tostring(at) .. ':' .. ARGV[15])
    end
  elseif kind == 'instrument' then
    local key = g .. ':sym:' .. aid
    redis.call('HSET', key, 'name', ARGV[13], 'sector', ARGV[14], 'asset_class', ARGV[15],
      'currency', ARGV[16])
    redis.call('SADD', g .. ':symbols', aid)
  elseif kind == 'price' then
    redis.call('HSET', g .. ':sym:' .. aid, 'price', ARGV[13])
    redis.call('SADD', g .. ':symbols', aid)
  end

  if atype == 'account' and part == parts then
    redis.call('HSET', g .. ':acct:' .. aid, 'version', tostring(version), 'as_of', occurred)
  end
  redis.call('HSET', g .. ':cursor', cfield, ARGV[6] .. ':' .. ARGV[7] .. ':' .. ARGV[8])
  seen(meta, seq)
  if ARGV[3] == '1' and atype == 'account' and part == parts then
    local b = book(g, aid)
    if b then
      local out = {'applied', gen}
      for _, v in ipairs(b) do out[#out + 1] = v end
      return out
    end
  end
  return {'applied', gen}
end

local answers = {}
local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local fields = {}
  for j = 1, n do fields[j] = ARGV[i + j] end
  answers[#answers + 1] = apply(fields)
  i = i + n + 1
end
for meta, s in pairs(highest) do
  if s > tonumber(redis.call('HGET', meta, 'seq') or '0') then
    redis.call('HSET', meta, 'seq', tostring(s))
  end
end
return answers
