/*
 * src/bus/redis_lua.c: the Lua scripts the Redis bus runs with EVALSHA
 * (redis.h, DX__REDIS_LUA_*; docs/gateway.md "The Redis bus"). Each is one
 * atomic step in Redis: a publish (sequence, append, trim, publish), a read
 * (offset, epoch, resume or history, then a barrier), presence, user counts.
 */
#include "bus/redis.h"

/* KEYS o e s; ARGV kind data max_count max_age_ms new_epoch channel ttl_ms
 * deadline_ms (Redis's clock; 0: none) sharded ("s": SPUBLISH on channel, in
 * the keys' slot, and PUBLISH on pattern_channel; else PUBLISH on channel)
 * pattern_channel.
 * Returns {offset, epoch, ms}; error "ELIMIT" at 2^53-1, "ELATE" when run
 * after its deadline (nothing done: the node may already have answered 503). */
static const char pub_lua[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local dl = tonumber(ARGV[8])\n"
    "if dl > 0 and now > dl then return redis.error_reply('ELATE publish arrived after its deadline') end\n"
    "local ep = redis.call('GET', KEYS[2])\n"
    "if redis.call('EXISTS', KEYS[1]) == 0 or not ep then\n"
    "  ep = ARGV[5]\n"
    "  redis.call('SET', KEYS[2], ep)\n"
    "  redis.call('DEL', KEYS[3])\n"
    "  redis.call('SET', KEYS[1], 0)\n"
    "end\n"
    "if tonumber(redis.call('GET', KEYS[1])) >= 9007199254740991 then\n"
    "  return redis.error_reply('ELIMIT offsets exhausted')\n"
    "end\n"
    "local off = redis.call('INCR', KEYS[1])\n"
    "local cnt = tonumber(ARGV[3])\n"
    "local age = tonumber(ARGV[4])\n"
    "local ttl = tonumber(ARGV[7])\n"
    "local so = string.format('%.0f', off)\n"
    "local sn = string.format('%.0f', now)\n"
    "if cnt > 0 then\n"
    "  redis.call('XADD', KEYS[3], 'MAXLEN', cnt, '*', 'o', so, 'k', ARGV[1], 't', sn, 'd', ARGV[2])\n"
    "  if age > 0 then redis.call('XTRIM', KEYS[3], 'MINID', string.format('%.0f', now - age)) end\n"
    "  if ttl > 0 then redis.call('PEXPIRE', KEYS[3], ttl) end\n"
    "end\n"
    "if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl); redis.call('PEXPIRE', KEYS[2], ttl) end\n"
    "local msg = so .. ' ' .. ARGV[1] .. ' ' .. sn .. ' ' .. ep .. '\\n' .. ARGV[2]\n"
    "if ARGV[9] == 's' then\n"
    "  redis.call('SPUBLISH', ARGV[6], msg)\n"
    "  redis.call('PUBLISH', ARGV[10], msg)\n"
    "else\n"
    "  redis.call('PUBLISH', ARGV[6], msg)\n"
    "end\n"
    "return {off, ep, now}\n";

/* KEYS o e s; ARGV mode(r resume, c current, h history) since limit new_epoch
 * max_age_ms max_count client_epoch("*": the current one) ttl_ms barrier_channel token
 * sharded ("s": SPUBLISH, the channel in the keys' slot; else PUBLISH).
 * Returns {offset, epoch, recovered, o1, k1, t1, d1, ...}; then, unless
 * barrier_channel is "", publishes token on it: once the pub/sub connection
 * carrying the topic's messages (the owner worker's) receives it, every
 * live entry sequenced before the read has arrived there too (Redis
 * delivers a client's messages in the order they were published), so the
 * read's answer can go out without a live entry it covers arriving after it. */
static const char read_lua[] =
    "local function body()\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local off = redis.call('GET', KEYS[1])\n"
    "local ep = redis.call('GET', KEYS[2])\n"
    "local mode = ARGV[1]\n"
    "if not off or not ep then\n"
    "  if mode == 'h' then return {0, '', 0} end\n"
    "  ep = ARGV[4]\n"
    "  redis.call('SET', KEYS[1], 0)\n"
    "  redis.call('SET', KEYS[2], ep)\n"
    "  redis.call('DEL', KEYS[3])\n"
    "  off = 0\n"
    "else\n"
    "  off = tonumber(off)\n"
    "end\n"
    "local ttl = tonumber(ARGV[8])\n"
    "if ttl > 0 and mode ~= 'h' then\n"
    "  redis.call('PEXPIRE', KEYS[1], ttl); redis.call('PEXPIRE', KEYS[2], ttl); redis.call('PEXPIRE', KEYS[3], ttl)\n"
    "end\n"
    "local age = tonumber(ARGV[5])\n"
    "if age > 0 then redis.call('XTRIM', KEYS[3], 'MINID', string.format('%.0f', now - age)) end\n"
    "local since = tonumber(ARGV[2])\n"
    "local res = {off, ep, 0}\n"
    "if mode == 'c' then return res end\n"
    "if mode == 'r' then\n"
    "  if (ARGV[7] ~= '*' and ARGV[7] ~= ep) or since > off then return res end\n"
    "  if since == off then res[3] = 1; return res end\n"
    "  local n = off - since\n"
    "  if n > tonumber(ARGV[6]) then return res end\n"
    "  local r = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', n)\n"
    "  if #r ~= n or tonumber(r[#r][2][2]) ~= since + 1 then return res end\n"
    "  res[3] = 1\n"
    "  for i = #r, 1, -1 do local f = r[i][2]; table.insert(res, f[2]); table.insert(res, f[4]); "
    "table.insert(res, f[6]); table.insert(res, f[8]) end\n"
    "  return res\n"
    "end\n"
    "if since >= off then res[3] = 1; return res end\n"
    "local n = off - since\n"
    "local len = redis.call('XLEN', KEYS[3])\n"
    "if n > len then n = len end\n"
    "if n <= 0 then return res end\n"
    "local r = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', n)\n"
    "if #r > 0 and tonumber(r[#r][2][2]) == since + 1 then res[3] = 1 end\n"
    "local lim = tonumber(ARGV[3])\n"
    "local k = 0\n"
    "for i = #r, 1, -1 do\n"
    "  if k >= lim then break end\n"
    "  local f = r[i][2]; table.insert(res, f[2]); table.insert(res, f[4]); table.insert(res, f[6]); "
    "table.insert(res, f[8])\n"
    "  k = k + 1\n"
    "end\n"
    "return res\n"
    "end\n"
    "local res = body()\n"
    "if ARGV[9] ~= '' then redis.call(ARGV[11] == 's' and 'SPUBLISH' or 'PUBLISH', ARGV[9], ARGV[10]) end\n"
    "return res\n";

/* KEYS p pz o e s; ARGV op(s set, g get) member value ttl_ms topic_ttl_ms.
 * set: value "" removes the member. get: drops expired members, returns the values. */
static const char pres_lua[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "if ARGV[1] == 's' then\n"
    "  if ARGV[3] == '' then\n"
    "    redis.call('HDEL', KEYS[1], ARGV[2]); redis.call('ZREM', KEYS[2], ARGV[2])\n"
    "  else\n"
    "    local ttl = tonumber(ARGV[4])\n"
    "    redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])\n"
    "    redis.call('ZADD', KEYS[2], now + ttl, ARGV[2])\n"
    "    redis.call('PEXPIRE', KEYS[1], 2 * ttl); redis.call('PEXPIRE', KEYS[2], 2 * ttl)\n"
    "    local tt = tonumber(ARGV[5])\n"
    "    if tt > 0 then for i = 3, 5 do redis.call('PEXPIRE', KEYS[i], tt) end end\n"
    "  end\n"
    "  return 0\n"
    "end\n"
    "local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)\n"
    "for _, m in ipairs(dead) do redis.call('HDEL', KEYS[1], m) end\n"
    "if #dead > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end\n"
    "return redis.call('HVALS', KEYS[1])\n";

/* KEYS uc; ARGV member mode(d delta, s set) value limit alive_prefix alive_ttl_ms.
 * The hash holds one count per worker (member "<node>.<worker>"); a member
 * whose alive key is gone (its node died: no refresh within the presence
 * TTL) is dropped and not counted. The asking worker is alive: its key is
 * refreshed first. d: adds value; a value > 0 with limit > 0 is added only
 * if the live sum after it is at most limit (the check and the add are one
 * step). s: sets this member's count to value (a worker re-stating its
 * counts after a lost connection, or Redis lost its data).
 * alive_prefix "" (a Redis Cluster, where the alive keys are in other
 * slots): no liveness check, no alive key written.
 * Returns {admitted (1/0), live sum after}. */
static const char uc_lua[] =
    "local me = ARGV[1]\n"
    "if ARGV[5] ~= '' then redis.call('SET', ARGV[5] .. me, '1', 'PX', ARGV[6]) end\n"
    "local all = redis.call('HGETALL', KEYS[1])\n"
    "local own, others = 0, 0\n"
    "for i = 1, #all, 2 do\n"
    "  if all[i] == me then own = tonumber(all[i + 1])\n"
    "  elseif ARGV[5] == '' or redis.call('EXISTS', ARGV[5] .. all[i]) == 1 then others = others + tonumber(all[i + 1])\n"
    "  else redis.call('HDEL', KEYS[1], all[i]) end\n"
    "end\n"
    "local v = tonumber(ARGV[3])\n"
    "local lim = tonumber(ARGV[4])\n"
    "if ARGV[2] == 's' then own = v\n"
    "else\n"
    "  if v > 0 and lim > 0 and others + own + v > lim then return {0, others + own} end\n"
    "  own = own + v\n"
    "end\n"
    "if own > 0 then redis.call('HSET', KEYS[1], me, own) else own = 0; redis.call('HDEL', KEYS[1], me) end\n"
    "return {1, others + own}\n";

const char *const dx__redis_lua[DX__REDIS_LUA_N] = {pub_lua, read_lua, pres_lua, uc_lua};
