-- tether.pool: worker threads with their own lua_State, a bounded queue,
-- futures, map, cancel, close; the value copier seen through it; worker
-- threads observed in /proc/self/task (names, blocked signals, affinity).
-- Issue #4 acceptance points 3, 4, 5 and 7.
local pool = require "tether.pool"
local tether = require "tether"
local context = require "tether.context"
local errors = require "tether.errors"
local exec = require "tether.exec"
local core = require "tether.core"
local util = require "helpers.util"

local unpack = table.unpack or unpack
local is53 = math.type ~= nil

local warm, mark, check = util.no_leaks()
local base_threads

-- tether.threads() once the kernel has dropped joined threads from the count: pthread_join
-- returns when a thread's tid is cleared, a moment before the kernel stops counting it
-- (bounded wait: threads that were not joined stay and fail the comparison).
local function settled_threads(base)
  base = base or base_threads
  local deadline = tether.now() + 5
  while tether.threads() > base and tether.now() < deadline do tether.sleep(0.002) end
  return tether.threads()
end
setup(function()
  warm()
  base_threads = tether.threads()
end)
before_each(mark)
after_each(function()
  check() -- collects garbage first: a pool left open is joined by its finalizer
  assert.are.equal(base_threads, settled_threads(), "worker threads left behind")
end)

-- A gate: tasks given gate.fd block in their worker until gate:open().
local function new_gate()
  local r, w = assert(core.pipe())
  local g = { fd = r:getfd() }
  function g.open() if w then w:write("x"); w:close(); w = nil end end
  function g.close() g.open(); r:close() end
  util.defer(g.close)
  return g
end

-- The blocking task: waits until the gate opens (poll on the pipe), returns "released".
local function blocker(fd)
  local c = require "tether.core"
  c.poll(fd, "r")
  return "released"
end

-- Our threads from /proc/self/task: list of {tid=, name=, status=}.
local function tasks()
  local list = {}
  local out = util.sh("ls /proc/" .. util.pid() .. "/task")
  for tid in out:gmatch("%d+") do
    local st = util.status_of(util.pid() .. "/task/" .. tid)
    if st then list[#list + 1] = { tid = tonumber(tid), name = st.Name, status = st } end
  end
  return list
end

local function workers()
  local list = {}
  for _, t in ipairs(tasks()) do
    if t.name:match("^tether%-w%d+$") then list[#list + 1] = t end
  end
  table.sort(list, function(a, b) return a.name < b.name end)
  return list
end

describe("pool.new", function()
  it("starts size named threads, and close() joins them all", function()
    local p = assert(pool.new { size = 3 })
    assert.are.equal(base_threads + 3, tether.threads())
    local names = {}
    for _, t in ipairs(workers()) do names[#names + 1] = t.name end
    assert.are.same({ "tether-w1", "tether-w2", "tether-w3" }, names)
    assert.is_true(p:close())
    assert.are.equal(base_threads, settled_threads())
    assert.is_true(p:close()) -- idempotent
  end)

  it("defaults size to tether.cpus()", function()
    local p = assert(pool.new())
    assert.are.equal(tether.cpus(), p.size)
    assert.are.equal(tether.cpus(), p:stats().size)
    p:close()
  end)

  it("runs init(i, size) in each worker; its globals stay for that worker's tasks", function()
    local p = assert(pool.new { size = 2, init = function(i, n) my_index, my_size = i, n end }) -- luacheck: ignore
    for i = 1, 2 do
      assert.are.same({ true, i, 2 }, { p:submit_to(i, function() return my_index, my_size end):wait() }) -- luacheck: ignore
    end
    p:close()
  end)

  it("requires an init module by name in each worker", function()
    local p = assert(pool.new { size = 2, init = "helpers.poolmod" })
    local ok, v = p:submit(function() return package.loaded["helpers.poolmod"].loaded_in end):wait()
    assert.is_true(ok)
    assert.are.equal("worker", v)
    p:close()
  end)

  it("returns nil, err naming the worker when init raises, and leaves no thread", function()
    local p, err = pool.new { size = 2, init = function(i) if i == 2 then error("no device", 0) end end }
    assert.is_nil(p)
    assert.is_true(errors.is_error(err))
    assert.matches("worker 2: no device", tostring(err), 1, true)
    assert.are.equal(base_threads, settled_threads())
    local p2, err2 = pool.new { size = 1, init = "no.such.module.anywhere" }
    assert.is_nil(p2)
    assert.matches("no.such.module.anywhere", tostring(err2), 1, true)
  end)

  it("gives workers the creating state's package.path (require works in tasks)", function()
    local p = assert(pool.new { size = 1 })
    local ok, v = p:submit(function() return require("tether.errors").new("x"):is(nil) end):wait()
    assert.is_true(ok, tostring(v))
    assert.is_false(v)
    p:close()
  end)

  local bad = {
    { "a non-table", 42, "argument #1 must be a table" },
    { "size 0", { size = 0 }, "size must be an integer from 1 to 1024" },
    { "a fractional size", { size = 1.5 }, "size must be an integer" },
    { "a string size", { size = "4" }, "size must be an integer" },
    { "queue 0", { size = 1, queue = 0 }, "queue must be a positive integer" },
    { "an init that is a number", { size = 1, init = 42 }, "init: function or module name expected" },
    { "an init with upvalues", { size = 1, init = function() return pool end }, "init: cannot copy a function with upvalues" },
    { "affinity with a bad CPU", { size = 1, affinity = { -1 } }, "affinity[1] must be a CPU number" },
    { "affinity not a list", { size = 1, affinity = "0" }, "affinity must be a list" },
    { "affinity with more lists than workers", { size = 1, affinity = { { 0 }, { 0 } } }, "affinity has more lists than workers" },
  }
  for _, case in ipairs(bad) do
    it("raises for " .. case[1], function()
      local ok, msg = pcall(pool.new, case[2])
      assert.is_false(ok)
      assert.matches("pool.new: " .. case[3], tostring(msg), 1, true)
      assert.are.equal(base_threads, settled_threads())
    end)
  end
end)

describe("pool:submit", function()
  local p
  before_each(function() p = assert(pool.new { size = 2, queue = 64 }) end)
  after_each(function() p:close(); p = nil end)

  it("runs 100,000 tasks and returns every result", function()
    local futures = {}
    local f = function(x) return x * 2 + 1 end
    local n = util.scale(100000)
    for i = 1, n do futures[i] = p:submit(f, i) end
    for i = 1, n do
      local ok, v = futures[i]:wait()
      if not ok or v ~= i * 2 + 1 then
        error(("task %d gave %s, %s"):format(i, tostring(ok), tostring(v)))
      end
    end
    local s = p:stats()
    assert.are.equal(n, s.done)
    assert.are.equal(0, s.failed)
    assert.are.equal(0, s.queued)
  end)

  it("copies nested tables, strings with NUL, integers and floats both ways", function()
    local arg = { 1, 2.5, "a\0b", { deep = { deeper = { true, false } } }, [10] = "sparse", [true] = "bool key",
      [2.5] = "float key" }
    local ok, back, ty = p:submit(function(t)
      return t, math.type and { math.type(t[1]), math.type(t[2]) } or "n/a"
    end, arg):wait()
    assert.is_true(ok)
    assert.are.same(arg, back)
    if is53 then assert.are.same({ "integer", "float" }, ty) end
    local ok2, a, b, c, d = p:submit(function(...) return ... end, nil, 3, nil, "x"):wait()
    assert.is_true(ok2)
    assert.are.same({ nil, 3, nil, "x" }, { a, b, c, d })
  end)

  it("copies a table shared twice as two copies, and tables as keys", function()
    local shared = { "s" }
    local ok, back = p:submit(function(t) return t end, { shared, shared, [{ k = 1 }] = "v" }):wait()
    assert.is_true(ok)
    assert.are.same({ "s" }, back[1])
    assert.are.same({ "s" }, back[2])
    local key = next(back, 2) -- the only non-array key
    assert.are.same({ k = 1 }, key)
  end)

  it("accepts a function whose only upvalue is _ENV: it sees the worker's globals", function()
    mark_of_the_main_state = true -- luacheck: ignore
    local ok, v = p:submit(function() return mark_of_the_main_state end):wait() -- luacheck: ignore
    mark_of_the_main_state = nil -- luacheck: ignore
    assert.is_true(ok)
    assert.is_nil(v)
  end)

  it("copies functions inside arguments and results", function()
    local ok, g = p:submit(function(h) return h(20), function(x) return x + 1 end end,
      function(x) return x * 2 end):wait()
    assert.is_true(ok)
    assert.are.equal(40, g)
  end)

  it("runs \"module.function\" tasks", function()
    local ok, v = p:submit("helpers.poolmod.double", 21):wait()
    assert.is_true(ok)
    assert.are.equal(42, v)
  end)

  it("returns nil, err with the message and traceback of a task that raised; the worker lives on", function()
    local one = assert(pool.new { size = 1, init = function() runs = 0 end }) -- luacheck: ignore
    local ok, err = one:submit(function() runs = runs + 1; error("boom") end):wait() -- luacheck: ignore
    assert.is_nil(ok)
    assert.is_true(errors.is_error(err))
    assert.matches("boom", tostring(err), 1, true)
    assert.matches("stack traceback", err.traceback, 1, true)
    local ok2, runs = one:submit(function() runs = runs + 1; return runs end):wait() -- luacheck: ignore
    assert.is_true(ok2)
    assert.are.equal(2, runs) -- same worker, same state
    local ok3, err3 = one:submit(function() error({ code = 7 }) end):wait()
    assert.is_nil(ok3)
    assert.are.same({ code = 7 }, err3.value)
    local ok4, err4 = one:submit("helpers.poolmod.fail", "from a module"):wait()
    assert.is_nil(ok4)
    assert.are.equal("from a module", tostring(err4))
    local ok5, err5 = one:submit("helpers.poolmod.nope"):wait()
    assert.is_nil(ok5)
    assert.matches("'helpers.poolmod.nope' is not a function", tostring(err5), 1, true)
    assert.are.equal(4, one:stats().failed)
    one:close()
  end)

  it("fails a task whose result cannot be copied, naming the result", function()
    local ok, err = p:submit(function() return 1, io.stdout end):wait()
    assert.is_nil(ok)
    assert.matches("pool: result #2: cannot copy a userdata", tostring(err), 1, true)
  end)

  local refused = {
    { "a userdata", function() return io.stdout end, "argument #2: cannot copy a userdata" },
    { "a table cycle", function() local t = {}; t.self = t; return t end, "argument #2: table cycle" },
    { "a deeper cycle", function() local t = { { {} } }; t[1][1].up = t; return t end, "argument #2: table cycle" },
    { "a coroutine", function() return coroutine.create(function() end) end, "argument #2: cannot copy a coroutine" },
    { "a C function", function() return print end, "argument #2: cannot copy a C function" },
    { "a function with upvalues", function() local x = 1; return function() return x end end,
      "argument #2: cannot copy a function with upvalues" },
    { "tables nested too deep", function()
      local t = {}
      for _ = 1, 200 do t = { t } end
      return t
    end, "argument #2: tables nested too deep" },
  }
  for _, case in ipairs(refused) do
    it("raises at submit for " .. case[1] .. ", naming the argument", function()
      local ok, msg = pcall(p.submit, p, function() end, case[2]())
      assert.is_false(ok)
      assert.matches("pool.submit: " .. case[3], tostring(msg), 1, true)
      local ok2, msg2 = pcall(p.submit, p, function() end, 1, "two", case[2]())
      assert.is_false(ok2)
      assert.matches("pool.submit: argument #4", tostring(msg2), 1, true)
    end)
  end

  it("raises for a bad task function, naming the argument", function()
    local cases = {
      { 42, "argument #1: function or \"module.function\" expected, got number" },
      { "nodot", "argument #1: a name must be \"module.function\"" },
      { print, "argument #1: cannot copy a C function" },
      { function() return p end, "argument #1: cannot copy a function with upvalues" },
    }
    for _, c in ipairs(cases) do
      local ok, msg = pcall(p.submit, p, c[1])
      assert.is_false(ok)
      assert.matches("pool.submit: " .. c[2], tostring(msg), 1, true)
    end
    local ok, msg = pcall(p.submit_to, p, 3, function() end)
    assert.is_false(ok)
    assert.matches("pool.submit_to: argument #1: worker must be an integer from 1 to 2", msg, 1, true)
    ok, msg = pcall(p.submit_to, p, 1, function() end, io.stdout)
    assert.is_false(ok)
    assert.matches("pool.submit_to: argument #3: cannot copy a userdata", msg, 1, true)
  end)

  it("raises after close", function()
    local q = assert(pool.new { size = 1 })
    q:close()
    local ok, msg = pcall(q.submit, q, function() end)
    assert.is_false(ok)
    assert.matches("pool.submit: pool is closed", msg, 1, true)
  end)
end)

describe("pool:submit_to", function()
  it("keeps a worker's state across calls, in submission order", function()
    local p = assert(pool.new { size = 2, init = function(i) log = {}; me = i end }) -- luacheck: ignore
    local futures = {}
    for k = 1, 50 do
      futures[#futures + 1] = p:submit_to(1 + k % 2, function(v) log[#log + 1] = v; return me end, k) -- luacheck: ignore
    end
    for k, f in ipairs(futures) do
      local ok, who = f:wait()
      assert.is_true(ok)
      assert.are.equal(1 + k % 2, who)
    end
    for i = 1, 2 do
      local ok, log = p:submit_to(i, function() return log end):wait() -- luacheck: ignore
      assert.is_true(ok)
      local want = {}
      for k = 1, 50 do if 1 + k % 2 == i then want[#want + 1] = k end end
      assert.are.same(want, log)
    end
    p:close()
  end)
end)

describe("backpressure and cancel", function()
  after_each(function() tether.set_waiter(nil) end)

  it("try_submit returns nil, \"full\" when the queue is full, and submit waits for room", function()
    local gate = new_gate()
    local p = assert(pool.new { size = 1, queue = 8 })
    local running = p:submit(blocker, gate.fd)
    -- the worker takes the blocker; then 8 more fill the queue
    while running:state() ~= "running" do tether.sleep(0.001) end
    local queued = {}
    for i = 1, 8 do queued[i] = assert(p:try_submit(function(x) return x end, i)) end
    assert.are.equal(8, p:stats().queued)
    local f, why = p:try_submit(function() end)
    assert.is_nil(f)
    assert.are.equal("full", why)
    -- submit must wait: the waiter sees it, and opens the gate
    local waited = 0
    tether.set_waiter(function(fd, events, timeout)
      waited = waited + 1
      gate.open()
      core.poll(fd, events, timeout and core.now() + timeout)
    end)
    local last = p:submit(function() return "last" end)
    tether.set_waiter(nil)
    assert.is_true(waited >= 1)
    assert.are.same({ true, "released" }, { running:wait() })
    for i = 1, 8 do assert.are.same({ true, i }, { queued[i]:wait() }) end
    assert.are.same({ true, "last" }, { last:wait() })
    p:close()
  end)

  it("submit does not wait while the queue has room, even when the workers are stuck", function()
    local gate = new_gate()
    local p = assert(pool.new { size = 1, queue = 4 })
    local running = p:submit(blocker, gate.fd)
    while running:state() ~= "running" do tether.sleep(0.001) end
    local queued = {}
    for i = 1, 4 do queued[i] = assert(p:try_submit(function(x) return x end, i)) end
    assert.are.same({ nil, "full" }, { p:try_submit(function() end) })
    -- a submit that finds the queue full waits; cancelling a queued task makes room for it
    tether.set_waiter(function(fd, events)
      tether.set_waiter(function() error("submit waited again though the queue had room") end)
      assert.is_true(queued[4]:cancel())
      assert(core.poll(fd, events, core.now() + 10), "no room signalled after a cancel")
    end)
    local f = p:submit(function() return "in" end)
    tether.set_waiter(nil)
    assert.are.equal(4, p:stats().queued)
    -- with 3 queued of 4 (the worker stuck), submit goes on at once
    assert.is_true(queued[3]:cancel())
    tether.set_waiter(function() error("submit waited though the queue had room") end)
    local g = p:submit(function() return "also in" end)
    tether.set_waiter(nil)
    gate.open()
    assert.are.same({ true, "in" }, { f:wait() })
    assert.are.same({ true, "also in" }, { g:wait() })
    p:close()
  end)

  it("cancelling a context fails queued tasks with Canceled while the running one finishes", function()
    local gate = new_gate()
    local p = assert(pool.new { size = 1, queue = 8, init = function() ran = 0 end }) -- luacheck: ignore
    local running = p:submit(blocker, gate.fd)
    while running:state() ~= "running" do tether.sleep(0.001) end
    local queued = {}
    for i = 1, 5 do queued[i] = p:submit(function() ran = ran + 1 end) end -- luacheck: ignore
    local ctx, cancel = context.with_cancel(context.background())
    cancel()
    for i = 1, 5 do
      local ok, err = queued[i]:wait(ctx)
      assert.is_nil(ok)
      assert.are.equal(context.Canceled, err)
      assert.are.equal("cancelled", queued[i]:state())
    end
    local ok, err = running:wait(ctx) -- running: it finishes, the wait stops
    assert.is_nil(ok)
    assert.are.equal(context.Canceled, err)
    assert.are.equal("running", running:state())
    gate.open()
    assert.are.same({ true, "released" }, { running:wait() })
    assert.are.same({ true, 0 }, { p:submit(function() return ran end):wait() }) -- luacheck: ignore
    local s = p:stats()
    assert.are.equal(5, s.cancelled)
    assert.are.equal(2, s.done)
    p:close()
  end)

  it("a context that times out ends wait(ctx) with DeadlineExceeded", function()
    local gate = new_gate()
    local p = assert(pool.new { size = 1 })
    local f = p:submit(blocker, gate.fd)
    local ctx = context.with_timeout(context.background(), 0.1)
    local ok, err = f:wait(ctx)
    assert.is_nil(ok)
    assert.are.equal(context.DeadlineExceeded, err)
    local ok2, err2 = f:wait(0.05)
    assert.is_nil(ok2)
    assert.is_true(err2:is(errors.ErrTimeout))
    gate.open()
    assert.are.same({ true, "released" }, { f:wait() })
    p:close()
  end)

  it("future:cancel() cancels a queued task, not a running or finished one", function()
    local gate = new_gate()
    local p = assert(pool.new { size = 1 })
    local running = p:submit(blocker, gate.fd)
    while running:state() ~= "running" do tether.sleep(0.001) end
    local queued = p:submit(function() return 1 end)
    assert.is_true(queued:cancel())
    assert.is_false(queued:cancel())
    assert.is_false(running:cancel())
    assert.are.same({ nil, context.Canceled }, { queued:wait() })
    gate.open()
    assert.are.same({ true, "released" }, { running:wait() })
    assert.is_false(running:cancel())
    p:close()
  end)

  it("close() lets queued tasks run, then joins every thread", function()
    local gate = new_gate()
    local p = assert(pool.new { size = 2, queue = 16 })
    local running = p:submit(blocker, gate.fd)
    local futures = {}
    for i = 1, 10 do futures[i] = p:submit(function(x) return x * x end, i) end
    tether.set_waiter(function(fd, events, timeout)
      gate.open()
      core.poll(fd, events, timeout and core.now() + timeout)
    end)
    p:close()
    tether.set_waiter(nil)
    assert.are.equal(base_threads, settled_threads())
    assert.are.same({ true, "released" }, { running:wait() })
    for i = 1, 10 do assert.are.same({ true, i * i }, { futures[i]:wait() }) end
    assert.is_true(p:stats().closed)
  end)

  it("a collected pool cancels what is queued and joins its threads", function()
    local p = assert(pool.new { size = 2 })
    for _ = 1, 100 do p:submit(function() return 1 end) end
    p = nil -- luacheck: ignore
    collectgarbage(); collectgarbage()
    assert.are.equal(base_threads, settled_threads())
  end)

  if _VERSION == "Lua 5.4" then
    it("closes at the end of a <close> scope", function()
      local run = assert(load([[
        local pool, tether = ...
        local kept
        do
          local p <close> = assert(pool.new { size = 2 })
          assert(tether.threads() > select(3, ...))
          kept = p -- still referenced: only the scope's end can have closed it
        end
        return kept
      ]]))
      local p = run(pool, tether, base_threads)
      assert.is_true(p:stats().closed)
      assert.are.equal(base_threads, settled_threads())
    end)
  end
end)

describe("futures are waitable", function()
  it("by tether.wait_any and through pollfd()", function()
    local gate = new_gate()
    local p = assert(pool.new { size = 2 })
    local slow = p:submit(blocker, gate.fd)
    local fast = p:submit(function() return "fast" end)
    local i, o = tether.wait_any({ slow, fast }, 10)
    assert.are.equal(2, i)
    assert.are.equal(fast, o)
    local fd = slow:pollfd()
    assert.is_true(fd >= 0)
    assert.is_false(core.poll(fd, "r", 0))
    assert.are.equal("r", slow:events())
    assert.is_nil(slow:timeout())
    gate.open()
    assert.is_true(core.poll(fd, "r", core.now() + 10))
    assert.is_true(slow:done())
    assert.are.equal(0, slow:timeout())
    assert.are.same({ true, "released" }, { slow:wait() })
    p:close()
  end)
end)

describe("pool:map", function()
  local p
  before_each(function() p = assert(pool.new { size = 2, queue = 16 }) end)
  after_each(function() p:close(); p = nil end)

  it("returns results in input order, for more elements than the queue holds", function()
    local list = {}
    for i = 1, 1000 do list[i] = i end
    local res = assert(p:map(function(x) return x * 3 end, list))
    assert.are.equal(1000, #res)
    for i = 1, 1000 do assert.are.equal(i * 3, res[i]) end
  end)

  it("with ordered = false returns every result in completion order", function()
    -- element 1 waits on a gate that element 200's task opens: it completes (nearly) last
    local r, w = assert(core.pipe())
    util.defer(function() r:close(); if w then w:close() end end)
    local list = { { gate = r:getfd() } }
    for i = 2, 199 do list[i] = i end
    list[200] = { open = w:getfd() }
    local res = assert(p:map(function(x)
      local c = require "tether.core"
      if type(x) == "table" and x.gate then c.poll(x.gate, "r"); return 1 end
      if type(x) == "table" then
        local f = assert(io.open("/proc/self/fd/" .. x.open, "w")) -- the same pipe, opened anew
        f:write("x"); f:close()
        return 200
      end
      return x
    end, list, { ordered = false }))
    -- 1 completes after every element but the one that opened its gate (those two race)
    assert.is_true(res[#res] == 1 or res[#res - 1] == 1, "1 came at " .. table.concat(res, ","):sub(1, 40))
    local sorted = { unpack(res) }
    table.sort(sorted)
    for i = 1, 200 do assert.are.equal(i, sorted[i]) end
  end)

  it("returns nil, err with the index of the first failed element", function()
    local ok, err = p:map(function(x) if x % 7 == 0 then error("seven " .. x, 0) end return x end, { 1, 2, 7, 14 })
    assert.is_nil(ok)
    assert.are.equal("seven 7", tostring(err))
    assert.are.equal(3, err.index)
  end)

  it("returns an empty list for an empty list", function()
    assert.are.same({}, p:map(function(x) return x end, {}))
  end)

  it("stops at a cancelled context: queued tasks are cancelled", function()
    local gate = new_gate()
    local one = assert(pool.new { size = 1, queue = 4 })
    local running = one:submit(blocker, gate.fd)
    while running:state() ~= "running" do tether.sleep(0.001) end
    local ctx = context.with_timeout(context.background(), 0.1)
    local list = {}
    for i = 1, 20 do list[i] = i end
    local ok, err = one:map(function(x) return x end, list, { ctx = ctx })
    assert.is_nil(ok)
    assert.are.equal(context.DeadlineExceeded, err)
    assert.are.equal(4, one:stats().cancelled)
    gate.open()
    assert.are.same({ true, "released" }, { running:wait() })
    one:close()
  end)

  it("raises for bad arguments and uncopyable elements", function()
    assert.has_error(function() p:map(function() end, "x") end, "pool.map: argument #2 must be a list, got string")
    assert.has_error(function() p:map(function() end, { 1 }, 5) end, "pool.map: argument #3 must be a table of options, got number")
    local ok, msg = pcall(p.map, p, function(x) return x end, { 1, 2, io.stdout })
    assert.is_false(ok)
    assert.matches("pool.map: argument #2: element 3: cannot copy a userdata", msg, 1, true)
  end)
end)

describe("pool:stats", function()
  it("counts tasks and reports the bound", function()
    local p = assert(pool.new { size = 1, queue = 5 })
    p:submit(function() end):wait()
    p:submit(function() error("x") end):wait()
    local s = p:stats()
    assert.are.equal(1, s.size)
    assert.are.equal(5, s.queue)
    assert.are.equal(2, s.submitted)
    assert.are.equal(1, s.done)
    assert.are.equal(1, s.failed)
    assert.are.equal(0, s.cancelled)
    assert.are.equal(0, s.queued)
    assert.are.equal(0, s.running)
    assert.is_false(s.closed)
    p:close()
  end)
end)

describe("worker threads", function()
  -- Bits of a /proc status hex mask: signal n is bit n-1.
  local function blocked(hex)
    local set = {}
    hex = hex:gsub("^0*", "")
    local n = #hex
    for i = 1, n do
      local digit = tonumber(hex:sub(n - i + 1, n - i + 1), 16)
      for b = 0, 3 do
        if math.floor(digit / 2 ^ b) % 2 == 1 then set[(i - 1) * 4 + b + 1] = true end
      end
    end
    return set
  end

  it("block every signal (but KILL, STOP and glibc's 32 and 33) and are named tether-wN", function()
    local p = assert(pool.new { size = 4 })
    local ws = workers()
    assert.are.equal(4, #ws)
    for i, w in ipairs(ws) do
      assert.are.equal("tether-w" .. i, w.name)
      local set = blocked(w.status.SigBlk)
      for sig = 1, 64 do
        local expect = not (sig == 9 or sig == 19 or sig == 32 or sig == 33
          or (sig == 64 and os.getenv("TETHER_VALGRIND"))) -- valgrind keeps 64 for itself
        assert(set[sig] == expect or (not expect and not set[sig]),
          ("%s: signal %d blocked=%s (SigBlk %s)"):format(w.name, sig, tostring(set[sig]), w.status.SigBlk))
      end
    end
    -- and the creating thread's mask is as before
    assert.are.equal(util.status_of("self").SigBlk, util.status_of(util.pid() .. "/task/" .. util.pid()).SigBlk)
    p:close()
  end)

  it("run on the CPUs given by affinity", function()
    local p = assert(pool.new { size = 2, affinity = { { 0 }, { 0 } } })
    for i = 1, 2 do
      local ok, cpus = p:submit_to(i, function()
        local f = io.open("/proc/thread-self/status")
        local s = f:read("*a")
        f:close()
        return s:match("Cpus_allowed_list:%s*(%S+)")
      end):wait()
      assert.is_true(ok)
      assert.are.equal("0", cpus)
    end
    p:close()
  end)

  it("opens every fd of its own close-on-exec: a child of io.popen (which closes nothing) sees none", function()
    local function popen_fds()
      local f = assert(io.popen("exec ls -l /proc/self/fd/"))
      local out = f:read("*a")
      f:close()
      local t = {}
      for fd, target in out:gmatch("%s(%d+) %-> ([^\n]*)") do
        if tonumber(fd) > 2 and not target:find("^/proc/%d+/fd$") then t[#t + 1] = fd .. ":" .. target end
      end
      table.sort(t)
      return table.concat(t, " ")
    end
    local before = popen_fds() -- what the test runner itself leaves inheritable
    local gate = new_gate()
    local p = assert(pool.new { size = 2, queue = 4 })
    local running = p:submit(blocker, gate.fd)
    local queued = { p:submit(blocker, gate.fd), p:submit(blocker, gate.fd) }
    assert.is_true(running:pollfd() >= 0)
    assert.are.equal(before, popen_fds())
    gate.open()
    for _, f in ipairs { running, queued[1], queued[2] } do assert.are.same({ true, "released" }, { f:wait() }) end
    p:close()
  end)

  it("a spawned child sees only fds 0-2 while 4 workers open and close files (1000 spawns)", function()
    local gate = new_gate()
    local p = assert(pool.new { size = 4 })
    local path = util.tmpname()
    util.defer(function() os.remove(path) end)
    local loops = {}
    for i = 1, 4 do
      loops[i] = p:submit_to(i, function(fd, file)
        local c = require "tether.core"
        local n = 0
        repeat -- 20 opens, then a millisecond's rest (2 cores are shared with the spawns)
          for _ = 1, 20 do
            local f = assert(io.open(file, "r"))
            f:close()
            n = n + 1
          end
        until c.poll(fd, "r", c.now() + 0.001)
        return n
      end, gate.fd, path)
    end
    for k = 1, util.scale(1000) do
      local out = assert(exec.command("/bin/sh", "-c", "ls /proc/$$/fd; :"):output())
      if out ~= "0\n1\n2\n" then
        gate.open()
        error(("spawn %d: the child had fds %q"):format(k, out))
      end
    end
    gate.open()
    for i = 1, 4 do
      local ok, n = loops[i]:wait()
      assert.is_true(ok, tostring(n))
      assert.is_true(n > 0)
    end
    p:close()
  end)
end)

describe("the copier (core.copy_encode / copy_decode)", function()
  it("round-trips values of every kind", function()
    local values = { nil, true, false, 0, -1, 2 ^ 53, 1.5, -0.0, 1 / 0, "", "a\0b", { 1, { 2, { 3 } }, k = "v" } }
    local n = 12
    local bytes = assert(core.copy_encode(unpack(values, 1, n)))
    local back = { core.copy_decode(bytes) }
    assert.is_true(back[1])
    for i = 1, n do assert.are.same(values[i], back[i + 1]) end
    if is53 then
      local _, i, f = core.copy_decode(core.copy_encode(3, 3.0))
      assert.are.equal("integer", math.type(i))
      assert.are.equal("float", math.type(f))
    end
  end)

  it("refuses malformed bytes and function values of unknown origin", function()
    local cases = {
      { "\6", "truncated input" },
      { "\5\200", "truncated input" },
      { "\5\10abc", "length beyond the end of the input" },
      { "\99", "bad tag" },
      { "\6\0\0\2\9", "nil table key" },
      { "\4\0\0", "truncated input" },
    }
    for _, c in ipairs(cases) do
      local ok, msg = core.copy_decode(c[1])
      assert.is_nil(ok)
      assert.are.equal(c[2], msg)
    end
    local fbytes = assert(core.copy_encode(function() return 1 end))
    local ok, msg = core.copy_decode(fbytes)
    assert.is_nil(ok)
    assert.are.equal("a function value in bytes of unknown origin", msg)
    -- random bytes never crash
    math.randomseed(4)
    for _ = 1, 2000 do
      local t = {}
      for j = 1, math.random(0, 24) do t[j] = string.char(math.random(0, 10)) end
      core.copy_decode(table.concat(t))
    end
  end)
end)

describe("pool under cqueues (waiters.cqueues)", function()
  local has_cq, cqueues = pcall(require, "cqueues")
  after_each(function() tether.set_waiter(nil) end)

  it("future:wait, a full submit and close yield to other coroutines", function()
    if not has_cq then pending("lua-cqueues is not installed for " .. _VERSION) return end
    local gate = new_gate()
    local p = assert(pool.new { size = 1, queue = 2 })
    tether.set_waiter(tether.waiters.cqueues)
    local cq = cqueues.new()
    local order = {}
    cq:wrap(function()
      local f = p:submit(blocker, gate.fd)
      p:submit(function() return 1 end)
      p:submit(function() return 2 end) -- the queue (2) may be full now: then this waits
      local last = p:submit(function() return "last" end) -- full for sure: waits, yielding
      order[#order + 1] = "submitted"
      assert.are.same({ true, "released" }, { f:wait() })
      assert.are.same({ true, "last" }, { last:wait() })
      order[#order + 1] = "waited"
      p:close()
      order[#order + 1] = "closed"
    end)
    cq:wrap(function()
      tether.sleep(0.05) -- yields: the first coroutine is blocked in submit meanwhile
      order[#order + 1] = "opening"
      gate.open()
    end)
    assert(cq:loop())
    assert.are.same({ "opening", "submitted", "waited", "closed" }, order)
    assert.are.equal(base_threads, settled_threads())
  end)
end)

describe("a tether.sync semaphore crosses into workers", function()
  it("is the same semaphore there: a worker's acquire waits for the Lua thread's release", function()
    local sync = require "tether.sync"
    local sem = sync.semaphore(1)
    assert.is_true(sem:acquire(1))
    local p = assert(pool.new { size = 1 })
    local f = p:submit(function(s)
      assert(s:acquire(1)) -- blocks this worker until the Lua thread releases
      local held = s:held()
      s:release(1)
      return held
    end, sem)
    local ok, err = f:wait(0.2)
    assert.is_nil(ok, "the worker acquired a unit the Lua thread holds")
    assert.is_true(err:is(errors.ErrTimeout))
    sem:release(1)
    assert.are.same({ true, 1 }, { f:wait() })
    assert.are.equal(0, sem:held())
    p:close()
  end)
end)
