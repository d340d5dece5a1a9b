-- Case 5 (tether): signal.notify(ch, "SIGUSR1"); each round trip is
-- exec.find_process(self):signal("USR1") then ch:recv(1), all public API.
-- args: N [find]. prints median microseconds per round trip. With "find", every round trip
-- also looks the process up (exec.find_process(pid) inside the loop).
package.path = arg[0]:match("(.*/)") .. "?.lua;" .. package.path
local C = require "tether_common"
local tether = require "tether"
local signal = require "tether.signal"
local exec = require "tether.exec"
local n = tonumber(arg[1]) or 10000
local find_each = arg[2] == "find"
local ch = signal.channel(1)
signal.notify(ch, "SIGUSR1")
local pid = tether.pid()
local me = assert(exec.find_process(pid))
local us, now = {}, C.now
for i = 1, n do
  local t0 = now()
  local p = find_each and exec.find_process(pid) or me
  assert(p:signal("USR1"))
  local s = ch:recv(1)
  us[i] = (now() - t0) * 1e6
  if s ~= "SIGUSR1" then error("got " .. tostring(s)) end
  if find_each then p:release() end
end
signal.stop(ch)
me:release()
print(string.format("%.2f", C.median(us)))
