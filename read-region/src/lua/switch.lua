-- Switches the served generation. ARGV: prefix, new generation. Switches only if the new
-- generation has seen at least every stream position the current one applied, so nothing
-- the live view shows is lost. Returns {'switched', previous or ''} | {'behind', seq} | {'nogen'}.
local prefix, new = ARGV[1], ARGV[2]
if redis.call('EXISTS', prefix .. ':g' .. new .. ':meta') == 0 then return {'nogen'} end
local cur = redis.call('GET', prefix .. ':current')
if cur and cur ~= new then
  local cs = tonumber(redis.call('HGET', prefix .. ':g' .. cur .. ':meta', 'seq') or '0')
  local ns = tonumber(redis.call('HGET', prefix .. ':g' .. new .. ':meta', 'seq') or '0')
  if cs > ns then return {'behind', tostring(cs)} end
end
redis.call('SET', prefix .. ':current', new)
return {'switched', cur or ''}
