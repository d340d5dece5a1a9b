-- Case 7: 100,000 trivial tasks (x*2+1) on a tether.pool of 4 workers; each batch submits N
-- tasks and waits for every result. args: N BATCHES MODE [QUEUE]
--   MODE map     pool:map(f, list): the tasks of a batch queued in slices, one wake per slice
--        submit  pool:submit(f, i) per task (a future each), then future:wait() on each
-- Prints the median batch throughput in tasks/s (as the peers: ../shared/bench/peers/c_tasks.c,
-- luv_tasks.lua).
package.path = arg[0]:match("(.*/)") .. "?.lua;" .. package.path
local C = require "tether_common"
local pool = require "tether.pool"
local n, batches = tonumber(arg[1]) or 100000, tonumber(arg[2]) or 3
local mode, queue = arg[3] or "map", tonumber(arg[4]) or 1024
local p = assert(pool.new { size = 4, queue = queue })
local f = function(x) return x * 2 + 1 end
local list = {}
for i = 0, n - 1 do list[i + 1] = i end
local rates = {}
for b = 1, batches do
  local t0 = C.now()
  local sum = 0
  if mode == "map" then
    local res = assert(p:map(f, list))
    for i = 1, n do sum = sum + res[i] end
  else
    local futures = {}
    for i = 1, n do futures[i] = p:submit(f, list[i]) end
    for i = 1, n do
      local _, r = futures[i]:wait()
      sum = sum + r
    end
  end
  rates[b] = n / (C.now() - t0)
  assert(sum == n * n, "bad sum " .. sum)
end
local s = p:stats()
io.stderr:write(("tether-tasks mode=%s queue=%d done=%d\n"):format(mode, queue, s.done))
p:close()
print(string.format("%.1f", C.median(rates)))
