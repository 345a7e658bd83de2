-- Raises the served generation's `acked` (never lowers it), only on the Redis process the
-- caller last checked: a restarted one may have lost applies that the ack floor covers.
-- ARGV: prefix, sequence, run_id. Returns 1 when recorded.
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
if run ~= ARGV[3] then return 0 end
local gen = redis.call('GET', ARGV[1] .. ':current')
if not gen then return 0 end
local meta = ARGV[1] .. ':g' .. gen .. ':meta'
if redis.call('EXISTS', meta) == 0 then return 0 end
if tonumber(ARGV[2]) > tonumber(redis.call('HGET', meta, 'acked') or '0') then
  redis.call('HSET', meta, 'acked', ARGV[2])
end
return 1
