-- examples/worker_pool.lua: a pinned worker pool (tether.pool), cgo-style.
--
-- 1. Pinned state: `init` runs once in each worker thread and builds state that
--    stays there (here a stand-in for a thread-affine C library handle);
--    submit_to(i, ...) sends work to the worker that owns it.
-- 2. Backpressure: the queue is bounded; try_submit says "full", submit waits.
-- 3. Context cancel: cancelling a context fails the tasks still queued (they
--    never run) while the running ones finish.
--
-- Run: lua5.4 examples/worker_pool.lua   (from the repository root after make)
local tether = require "tether"
local pool = require "tether.pool"
local context = require "tether.context"

-- A task: sleeps s seconds in its worker (tether loads there too), returns s.
local function slow(s)
  require("tether").sleep(s)
  return s
end

-- A task that holds its worker until the file `gate` exists (standing for a long C call).
local function held(gate)
  local t = require "tether"
  while true do
    local f = io.open(gate)
    if f then f:close(); return "released" end
    t.sleep(0.01)
  end
end

tether.main(function()
  local base = tether.threads()
  local p = assert(pool.new {
    size = 2,
    queue = 4,
    init = function(i)
      -- Runs in worker i's own lua_State, on its own thread: open the handle here.
      local f = assert(io.open("/proc/thread-self/comm"))
      thread_name = f:read("*l") -- luacheck: ignore (a global of the worker's state)
      f:close()
      handle = { worker = i, requests = 0 } -- luacheck: ignore
    end,
  })
  print(("pool: %d workers, queue of 4, %d threads more than before"):format(p.size, tether.threads() - base))

  -- 1. Pinned state: each worker counts its own requests.
  for _ = 1, 3 do
    for i = 1, 2 do
      local ok, name, n = p:submit_to(i, function()
        handle.requests = handle.requests + 1 -- luacheck: ignore
        return thread_name, handle.requests -- luacheck: ignore
      end):wait()
      assert(ok, name)
      print(("worker %d on thread %s: request %d"):format(i, name, n))
    end
  end

  -- 2. Backpressure: both workers busy, fill the queue without waiting, then
  --    submit waits (through tether's waiter) until the workers make room.
  local futures = { p:submit(slow, 0.2), p:submit(slow, 0.2) }
  while futures[1]:state() ~= "running" or futures[2]:state() ~= "running" do tether.sleep(0.01) end
  while true do
    local f, why = p:try_submit(slow, 0.2)
    if not f then
      print("try_submit: " .. why .. " after " .. #futures - 2 .. " queued tasks")
      break
    end
    futures[#futures + 1] = f
  end
  local t0 = tether.now()
  futures[#futures + 1] = p:submit(slow, 0)
  print(("submit waited %.1f s for room in the queue"):format(tether.now() - t0))
  for _, f in ipairs(futures) do assert(f:wait()) end
  print("backpressure: all " .. #futures .. " tasks done")

  -- 3. Context cancel: 2 tasks running, 4 queued, then the context is cancelled.
  local gate = os.tmpname()
  os.remove(gate)
  local ctx, cancel = context.with_cancel(context.background())
  local tasks = {}
  for i = 1, 6 do tasks[i] = p:submit(held, gate) end
  local function running()
    local n = 0
    for _, f in ipairs(tasks) do if f:state() == "running" then n = n + 1 end end
    return n
  end
  while running() < 2 do tether.sleep(0.01) end
  cancel()
  -- wait(ctx) on a done context cancels a task still queued and returns at once.
  local cancelled, running_ones = 0, {}
  for _, f in ipairs(tasks) do
    local ok, err = f:wait(ctx)
    assert(not ok and err == context.Canceled)
    if f:state() == "cancelled" then cancelled = cancelled + 1 else running_ones[#running_ones + 1] = f end
  end
  local finished = 0
  assert(io.open(gate, "w")):close() -- let the running tasks finish
  for _, f in ipairs(running_ones) do
    if f:wait() then finished = finished + 1 end -- a running task finishes
  end
  os.remove(gate)
  print(("context cancelled: %d queued tasks cancelled, %d running tasks finished"):format(cancelled, finished))

  local s = p:stats()
  print(("stats: submitted %d, done %d, cancelled %d, failed %d"):format(s.submitted, s.done, s.cancelled, s.failed))
  p:close()
  print(("closed: %d extra threads left"):format(tether.threads() - base))
end)
