-- Applies one enriched event to a generation, atomically and idempotently: the one projection
-- rule. An aggregate's cursor (`version:part:parts` of the last event applied) admits exactly
-- its successor: the next part of the current set, or part 1 of the next version once the
-- set is complete. At or below the cursor is a duplicate (redelivery, replay); anything else
-- is a gap (its predecessor has not been applied yet) and changes nothing.
--
-- One call applies a batch of events in order (one round trip and one script run for many
-- events: the rebuild's and the projector's batches). ARGV is a header (key prefix, generation
-- ('' = the one served), snapshot flag), then the events one after another, each as its field
-- count followed by its fields: aggregate type, aggregate id, version, part, parts, stream
-- sequence, occurred_at (ms), UTC day, kind, body... Returns one answer per event, in order:
-- 'applied' | {'applied', book...} | 'duplicate' | {'gap', v, p, n} | 'nogen'. The book (see
-- common.lua) follows only with the snapshot flag, after an account version completes. The
-- common answers are bare strings: no table for Lua to build, Redis to convert and the region
-- to decode per event.

-- A hash as a Lua table of its fields.
local function hash(key)
  local flat, t = redis.call('HGETALL', key), {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

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
-- Sets a position's quantity and average cost (a zero quantity removes both); `held` is the
-- quantity stored now when the caller has read it already.
local function set_position(g, acct, symbol, qty, cost, held)
  local key = g .. ':pos:' .. acct
  local before = tonumber(held or redis.call('HGET', key, QTY .. symbol) or '0')
  holders(g, symbol, before, tonumber(qty))
  if tonumber(qty) == 0 then
    redis.call('HDEL', key, QTY .. symbol, COST .. symbol)
  else
    redis.call('HSET', key, QTY .. symbol, qty, COST .. symbol, cost)
  end
end
-- A symbol's reference fields, set by its first trade; a batch holds many trades of few
-- symbols, so once both are known in this run the writes are not repeated.
local referenced = {}
local function reference(g, symbol, name, sector)
  if referenced[symbol] then return end
  local key = g .. ':symref'
  if name ~= '' then redis.call('HSETNX', key, NAME .. symbol, name) end
  if sector ~= '' then redis.call('HSETNX', key, SECTOR .. symbol, sector) end
  redis.call('SADD', g .. ':symbols', symbol)
  referenced[symbol] = name ~= '' and sector ~= ''
end
-- Counters for "today": a trade of a later day starts the day afresh, one of an earlier day
-- (possible across accounts) no longer counts for today. Every trade of a batch counts on its
-- symbol and on the totals, so a run keeps each counter's day and sums its increments, and
-- writes the sums once at its end (`flush_counts`). Sums stay below 2^52, where Lua's numbers
-- (doubles) hold integers exactly; a larger figure is written at once, as it was given.
local EXACT = 2 ^ 52
local counters = {}
local function pend(c, key, field, by)
  local n = tonumber(by)
  local sum = c[field] + n
  if math.abs(n) >= EXACT or math.abs(sum) >= EXACT then
    if c[field] ~= 0 then add(key, field, string.format('%.0f', c[field])) end
    add(key, field, by)
    c[field] = 0
  else
    c[field] = sum
  end
end
local function count(key, day, qty, notional)
  local c = counters[key]
  if not c then
    c = {day = redis.call('HGET', key, 'day'), trades = 0, volume = 0, notional = 0}
    counters[key] = c
  end
  if c.day ~= day then
    if c.day and tonumber(c.day) > tonumber(day) then return end
    -- What was summed for the old day is dropped with it.
    redis.call('HSET', key, 'day', day, 'trades', 0, 'volume', 0, 'notional', 0)
    c.day, c.trades, c.volume, c.notional = day, 0, 0, 0
  end
  pend(c, key, 'trades', 1)
  pend(c, key, 'volume', qty)
  pend(c, key, 'notional', notional)
end
local function flush_counts()
  for key, c in pairs(counters) do
    for _, field in ipairs({'trades', 'volume', 'notional'}) do
      if c[field] ~= 0 then add(key, field, string.format('%.0f', c[field])) end
    end
  end
end

-- A local (an upvalue of the functions below), not a global looked up at every use.
local ARGV = ARGV
-- The run's header: key prefix, generation ('' = the one served), snapshot flag. A run applies
-- to one generation; `g` is its key prefix, nil when it does not exist.
local prefix, gen, snapshot = ARGV[1], ARGV[2], ARGV[3]
if gen == '' then gen = redis.call('GET', prefix .. ':current') end
local g
if gen and usable(prefix .. ':g' .. gen) then g = prefix .. ':g' .. gen end

-- What a run writes once, at its end: the highest stream sequence it saw (to the generation's
-- meta), and every cursor it moved (one HSET).
local highest = 0
local function seen(seq)
  local s = tonumber(seq)
  if s > highest then highest = s end
end
-- Each aggregate's cursor, read and parsed once per run (an account's trade, order and book
-- come one after the other), as the numbers it holds; and for each one moved, the offset of
-- the event that moved it last, whose fields spell the new cursor.
local cvs, cps, cns, moved_by, moved = {}, {}, {}, {}, {}
local function cursor(field)
  local cv = cvs[field]
  if cv then return cv, cps[field], cns[field] end
  local cp, cn = 0, 0
  cv = 0
  local cur = redis.call('HGET', g .. ':cursor', field)
  if cur then
    local v, p, n = string.match(cur, '^(%d+):(%d+):(%d+)$')
    cv, cp, cn = tonumber(v), tonumber(p), tonumber(n)
  end
  cvs[field], cps[field], cns[field] = cv, cp, cn
  return cv, cp, cn
end
local function move_cursor(field, o, version, part, parts)
  cvs[field], cps[field], cns[field] = version, part, parts
  if not moved_by[field] then moved[#moved + 1] = field end
  moved_by[field] = o
end

-- One event: its fields are ARGV[o + 1] onwards (read in place, not copied).
local NONE = {}
local function apply(o)
  -- The account figures a book sets, if this is one (most events set none: no table for them).
  local account_fields = NONE
  local atype, aid = ARGV[o + 1], ARGV[o + 2]
  local version, part = tonumber(ARGV[o + 3]), tonumber(ARGV[o + 4])
  local parts = tonumber(ARGV[o + 5])
  local seq, occurred, day, kind = ARGV[o + 6], ARGV[o + 7], ARGV[o + 8], ARGV[o + 9]
  local cfield = atype .. ':' .. aid
  local cv, cp, cn = cursor(cfield)
  if version < cv or (version == cv and part <= cp) then
    seen(seq)
    return 'duplicate'
  end
  local sv, sp = cv + 1, 1
  if cp < cn then sv, sp = cv, cp + 1 end
  if version ~= sv or part ~= sp then
    return {'gap', tostring(cv), tostring(cp), tostring(cn)}
  end

  if kind == 'registered' then
    redis.call('HSET', g .. ':acct:' .. aid, 'owner', ARGV[o + 10], 'currency', ARGV[o + 11],
      'cash', '0', 'realized', '0', 'version', '0', 'as_of', occurred)
    add(g .. ':totals', 'accounts', 1)
  elseif kind == 'cash' then
    redis.call('HSET', g .. ':acct:' .. aid, 'cash', ARGV[o + 10])
  elseif kind == 'trade' then
    local symbol, qty = ARGV[o + 11], ARGV[o + 12]
    local notional, realized = ARGV[o + 13], ARGV[o + 14]
    redis.call('ZADD', g .. ':trades:' .. aid, ARGV[o + 3], ARGV[o + 10])
    set_position(g, aid, symbol, ARGV[o + 15], ARGV[o + 16])
    -- A buy realizes nothing: adding zero would change nothing.
    if tonumber(realized) ~= 0 then
      add(g .. ':pos:' .. aid, REALIZED .. symbol, realized)
      add(g .. ':acct:' .. aid, 'realized', realized)
    end
    reference(g, symbol, ARGV[o + 17], ARGV[o + 18])
    count(g .. ':sym:' .. symbol, day, qty, notional)
    count(g .. ':totals', day, qty, notional)
  elseif kind == 'value' then
    -- Cash, realized, reserved cash and buying power go with the account's version, below.
    account_fields = {'cash', ARGV[o + 10], 'realized', ARGV[o + 11], 'reserved', ARGV[o + 12],
      'buying_power', ARGV[o + 13]}
    -- The book repeats every position, most of them unchanged (the trade before it already
    -- moved the one it traded): read the positions once and write only what differs, in one
    -- HSET and one HDEL.
    local key = g .. ':pos:' .. aid
    -- The fields stored now. Each one the book names is taken out of `p` as it is compared,
    -- so what is left at the end is what the book no longer names (prepare.rs refuses a book
    -- that names a symbol twice).
    local p = hash(key)
    local sets, dels = {}, {}
    local n = tonumber(ARGV[o + 14])
    for i = 0, n - 1 do
      local base = o + 15 + i * 7
      local symbol, qty, cost, r = ARGV[base], ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
      local q, c, h, rf = QTY .. symbol, COST .. symbol, HELD .. symbol, REALIZED .. symbol
      local pq, pc, ph, pr = p[q], p[c], p[h], p[rf]
      -- Only present keys are cleared: assigning nil to an absent one would add it.
      if pq then p[q] = nil end
      if pc then p[c] = nil end
      if ph then p[h] = nil end
      if pr then p[rf] = nil end
      local zero = tonumber(qty) == 0
      if not ((pq == qty and pc == cost) or (zero and pq == nil and pc == nil)) then
        holders(g, symbol, tonumber(pq or '0'), tonumber(qty))
        if zero then
          dels[#dels + 1], dels[#dels + 2] = q, c
        else
          sets[#sets + 1], sets[#sets + 2], sets[#sets + 3], sets[#sets + 4] = q, qty, c, cost
        end
      end
      if pr ~= r then sets[#sets + 1], sets[#sets + 2] = rf, r end
      reference(g, symbol, ARGV[base + 4], ARGV[base + 5])
      -- Most positions reserve nothing: only what resting sells hold back is stored.
      local res = ARGV[base + 6]
      if tonumber(res) == 0 then
        if ph then dels[#dels + 1] = h end
      elseif ph ~= res then
        sets[#sets + 1], sets[#sets + 2] = h, res
      end
    end
    -- The book is authoritative: a position it no longer lists is gone, every field of it.
    for field, value in pairs(p) do
      if string.sub(field, 1, 2) == QTY then
        holders(g, string.sub(field, 3), tonumber(value), 0)
      end
      dels[#dels + 1] = field
    end
    if #sets > 0 then call_each('HSET', key, sets) end
    if #dels > 0 then call_each('HDEL', key, dels) end
  elseif kind == 'order' then
    -- The order's latest state, `<status>:<encoded Order>`; its id in the sorted set of its
    -- status (listed by id, so a page is a range) and scored by this version in the set of
    -- changes (what a watcher has not seen yet is a range too).
    local id, status = ARGV[o + 11], ARGV[o + 12]
    local okey = g .. ':orders:' .. aid
    local was = string.match(redis.call('HGET', okey, id) or '', '^([^:]*):')
    if was ~= status then
      if was then redis.call('ZREM', g .. ':orderids:' .. was .. ':' .. aid, id) end
      redis.call('ZADD', g .. ':orderids:' .. status .. ':' .. aid, 0, id)
    end
    redis.call('HSET', okey, id, status .. ':' .. ARGV[o + 10])
    redis.call('ZADD', g .. ':orderversions:' .. aid, ARGV[o + 3], id)
  elseif kind == 'alert' then
    local account, alert_id = ARGV[o + 10], ARGV[o + 11]
    if redis.call('SADD', g .. ':alertids:' .. account, alert_id) == 1 then
      local at = version
      if atype ~= 'account' then
        at = redis.call('HGET', g .. ':acct:' .. account, 'version') or '0'
      end
      redis.call('RPUSH', g .. ':alerts:' .. account, tostring(at) .. ':' .. ARGV[o + 12])
    end
  elseif kind == 'instrument' then
    redis.call('HSET', g .. ':sym:' .. aid, 'asset_class', ARGV[o + 12], 'currency', ARGV[o + 13])
    redis.call('HSET', g .. ':symref', NAME .. aid, ARGV[o + 10], SECTOR .. aid, ARGV[o + 11])
    redis.call('SADD', g .. ':symbols', aid)
  elseif kind == 'price' then
    redis.call('HSET', g .. ':symref', PRICE .. aid, ARGV[o + 10])
    redis.call('SADD', g .. ':symbols', aid)
  end

  if atype == 'account' and part == parts then
    redis.call('HSET', g .. ':acct:' .. aid, 'version', ARGV[o + 3], 'as_of', occurred,
      unpack(account_fields))
  elseif account_fields ~= NONE then
    redis.call('HSET', g .. ':acct:' .. aid, unpack(account_fields))
  end
  move_cursor(cfield, o, version, part, parts)
  seen(seq)
  if snapshot == '1' and atype == 'account' and part == parts then
    local b = book(g, aid)
    if b then
      table.insert(b, 1, 'applied')
      return b
    end
  end
  return 'applied'
end

local answers = {}
local i = 4
while i <= #ARGV do
  answers[#answers + 1] = g and apply(i) or 'nogen'
  i = i + tonumber(ARGV[i]) + 1
end
if g then
  flush_counts()
  -- A cursor moved several times in the run (the parts of a version) is written once.
  if #moved > 0 then
    local fields = {}
    for _, field in ipairs(moved) do
      local o = moved_by[field]
      fields[#fields + 1] = field
      fields[#fields + 1] = ARGV[o + 3] .. ':' .. ARGV[o + 4] .. ':' .. ARGV[o + 5]
    end
    call_each('HSET', g .. ':cursor', fields)
  end
  if highest > tonumber(redis.call('HGET', g .. ':meta', 'seq') or '0') then
    redis.call('HSET', g .. ':meta', 'seq', tostring(highest))
  end
end
return answers
