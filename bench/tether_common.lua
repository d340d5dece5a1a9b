-- Shared helpers for the tether bench scripts (the peers' lua_common.lua, with tether's clock).
-- Protocol (as ../shared/bench/peers): a script runs N operations in one process and prints ONE
-- number on its last stdout line (a rate, or a per-op median); details go to stderr.
local tether = require "tether"
local M = {}
M.now = tether.now

-- "Rss:" / "AnonHugePages:" of this process to stderr, like the peers' report_mem.
function M.report_mem(who)
  local f = io.open("/proc/self/smaps_rollup")
  if not f then return end
  for l in f:lines() do
    if l:match("^Rss:") or l:match("^AnonHugePages:") then io.stderr:write(who, " ", l, "\n") end
  end
  f:close()
end

-- A field of /proc/self/status in KiB ("VmRSS", "VmHWM").
function M.status_kb(field)
  for l in io.lines("/proc/self/status") do
    local v = l:match("^" .. field .. ":%s*(%d+)")
    if v then return tonumber(v) end
  end
end

-- A resident Lua heap of `mb` MiB: a table of distinct 64 KiB strings (each one written when
-- it is made, so every page is resident). nil when mb <= 0.
function M.heap(mb)
  if not mb or mb <= 0 then return nil end
  local t, chunk = {}, string.rep("x", 65536 - 16)
  for i = 1, mb * 16 do t[i] = chunk .. string.format("%016d", i) end
  collectgarbage()
  M.report_mem("tether-heap")
  return t
end

function M.median(t)
  table.sort(t)
  local n = #t
  local h = math.floor(n / 2)
  if n % 2 == 1 then return t[h + 1] end
  return (t[h] + t[h + 1]) / 2
end

return M
