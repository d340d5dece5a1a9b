-- Case 6: read DIR/f00000 .. f(COUNT-1) whole into memory (page-cached files made by the
-- peers' mkfiles.py), PASSES times in one process; prints the median pass in files/s.
-- MODE "lane" (default): tether.fs.read_files(paths, {limit = LIMIT}).
-- MODE "seq": plain sequential io.open(path, "rb"):read("*a") in this same interpreter, the
-- Lua baseline (timed with tether's clock).
-- args: DIR COUNT LIMIT PASSES [MODE]
package.path = arg[0]:match("(.*/)") .. "?.lua;" .. package.path
local C = require "tether_common"
local tether = require "tether"
local fs = require "tether.fs"

local dir, count = arg[1] or "/tmp/benchfiles", tonumber(arg[2]) or 10000
local limit, passes, mode = tonumber(arg[3]) or 4, tonumber(arg[4]) or 3, arg[5] or "lane"

local paths = {}
for i = 0, count - 1 do paths[i + 1] = string.format("%s/f%05d", dir, i) end

local function pass_lane()
  local datas, errs = fs.read_files(paths, { limit = limit })
  assert(datas, errs)
  return datas, errs
end

local function pass_seq()
  local datas = {}
  for i = 1, count do
    local f = assert(io.open(paths[i], "rb"))
    datas[i] = f:read("*a")
    f:close()
  end
  return datas, {}
end

local run = mode == "seq" and pass_seq or pass_lane
local rates, max_threads = {}, 0
local base = tether.threads()
for p = 1, passes do
  local t0 = C.now()
  local datas, errs = run()
  rates[p] = count / (C.now() - t0)
  local total = 0
  for i = 1, count do
    assert(datas[i], errs[i])
    total = total + #datas[i]
  end
  assert(total == count * 4096, "total " .. total)
  if tether.threads() - base > max_threads then max_threads = tether.threads() - base end
end
io.stderr:write(("tether-readfiles mode=%s limit=%d extra_threads_after_pass<=%d\n"):format(mode, limit, max_threads))
print(string.format("%.1f", C.median(rates)))
