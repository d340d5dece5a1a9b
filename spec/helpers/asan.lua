-- spec/helpers/asan.lua: busted --helper for `make check-asan`.
--
-- The busted interpreter was started by spec/helpers/asan-lua with libasan
-- in LD_PRELOAD. Remove it from the environment now, before any spec runs a
-- program: only Lua children (started through $TETHER_LUA, the same wrapper)
-- get the sanitizer runtime back.
local env = require "tether.env"
assert(env.unset("LD_PRELOAD"))
