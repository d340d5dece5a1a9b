-- Case 8 (tether): N concurrent children. Starts N `sh -c 'sleep 0.3'` commands with
-- cmd:start(), then waits for each with cmd:wait(), ROUNDS times.
-- args: N ROUNDS MODE. MODE "cpu" prints this process's CPU seconds (user + system, from
-- /proc/self/stat) over all rounds; "wall" prints the median wall seconds of a round.
package.path = arg[0]:match("(.*/)") .. "?.lua;" .. package.path
local C = require "tether_common"
local exec = require "tether.exec"
local n, rounds, mode = tonumber(arg[1]) or 1000, tonumber(arg[2]) or 3, arg[3] or "cpu"

local function cpu_seconds()
  local f = assert(io.open("/proc/self/stat"))
  local s = f:read("*a")
  f:close()
  local fields = {}
  for x in s:match("%) (.*)"):gmatch("%S+") do fields[#fields + 1] = x end
  return (tonumber(fields[12]) + tonumber(fields[13])) / 100 -- utime, stime (fields 14, 15)
end

local cpu0, walls = cpu_seconds(), {}
for r = 1, rounds do
  local t0, cmds = C.now(), {}
  for i = 1, n do
    cmds[i] = exec.command("sh", "-c", "sleep 0.3")
    assert(cmds[i]:start())
  end
  for i = 1, n do assert(cmds[i]:wait()) end
  walls[r] = C.now() - t0
end
local cpu = cpu_seconds() - cpu0
io.stderr:write(string.format("tether-many cpu_s=%.2f wall_median_s=%.3f\n", cpu, C.median(walls)))
print(string.format("%.3f", mode == "wall" and C.median(walls) or cpu))
