-- Functions shared by the apply and read scripts (prepended to each of them, after the line
-- `local LAYOUT = '<n>'` that names the key layout of views.rs).

-- Whether generation key prefix g is one this code can read and write: its meta exists and
-- names this layout. A generation of an older layout counts as absent, so the projector
-- rebuilds it and nothing reads it meanwhile.
local function usable(g)
  return redis.call('HGET', g .. ':meta', 'layout') == LAYOUT
end

-- Runs `cmd key args...` over a list of any length, in slices (Lua's unpack has a limit; the
-- list's pairs stay whole): the answers of an HMGET in order, of a write nothing.
local function call_each(cmd, key, list)
  local out = {}
  for i = 1, #list, 2000 do
    local answer = redis.call(cmd, key, unpack(list, i, math.min(i + 1999, #list)))
    if type(answer) == 'table' then
      for _, v in ipairs(answer) do out[#out + 1] = v end
    end
  end
  return out
end

-- A position's fields in `g:pos:<id>` are its symbol behind a two-letter tag.
local QTY, COST, REALIZED, HELD = 'q:', 'c:', 'r:', 'h:'
-- A symbol's fields in `g:symref`: last price, name, sector.
local PRICE, NAME, SECTOR = 'p:', 'n:', 's:'

-- book(g, aid): the account's book in generation key prefix g, nil when the account is
-- unknown: the account id; its version, as_of, cash, realized, reserved cash and buying power;
-- its positions' hash as HGETALL gives it; and the price, name and sector of each position in
-- the order of its quantity field there (`views::parse_book` joins them). Three reads whatever
-- the number of positions, and no copying here: Lua's per-item work costs Redis more than the
-- reads.
local function book(g, aid)
  local a = redis.call('HMGET', g .. ':acct:' .. aid, 'version', 'as_of', 'cash', 'realized',
    'reserved', 'buying_power')
  -- Registration writes the version: an account without one is unknown.
  if not a[1] then return nil end
  local p = redis.call('HGETALL', g .. ':pos:' .. aid)
  local refs = {}
  for i = 1, #p, 2 do
    if string.sub(p[i], 1, 2) == QTY then
      local s = string.sub(p[i], 3)
      refs[#refs + 1], refs[#refs + 2], refs[#refs + 3] = PRICE .. s, NAME .. s, SECTOR .. s
    end
  end
  return {aid, a, p, call_each('HMGET', g .. ':symref', refs)}
end
