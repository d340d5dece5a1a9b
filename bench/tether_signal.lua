-- Case 5 (tether): signal.notify(ch, "SIGUSR1"); each round trip is core.kill(self, SIGUSR1)
-- then ch:recv(). args: N. prints median microseconds per round trip.
package.path = arg[0]:match("(.*/)") .. "?.lua;" .. package.path
local C = require "tether_common"
local tether = require "tether"
local signal = require "tether.signal"
local core = require "tether.core"
local n = tonumber(arg[1]) or 10000
local SIGUSR1 = 10 -- Linux (x86, arm, riscv)
local ch = signal.channel(1)
signal.notify(ch, "SIGUSR1")
local self, us, now, kill = tether.pid(), {}, C.now, core.kill
for i = 1, n do
  local t0 = now()
  kill(self, SIGUSR1)
  local s = ch:recv()
  us[i] = (now() - t0) * 1e6
  if s ~= "SIGUSR1" then error("got " .. tostring(s)) end
end
signal.stop(ch)
print(string.format("%.2f", C.median(us)))
