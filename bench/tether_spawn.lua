-- Case 1/2 (tether): exec.command("/bin/true"):run(). args: N HEAP_MB [SPAWN_MODE]. prints ops/sec
package.path = arg[0]:match("(.*/)") .. "?.lua;" .. package.path
local C = require "tether_common"
local exec = require "tether.exec"
local n, heap = tonumber(arg[1]) or 2000, C.heap(tonumber(arg[2]))
if arg[3] then require("tether").set_spawn_mode(arg[3]) end -- "relay": through the intermediate
local t0 = C.now()
for _ = 1, n do
  assert(exec.command("/bin/true"):run())
end
print(string.format("%.1f", n / (C.now() - t0)))
if heap then C.report_mem("tether-heap-after") end
