-- tether.sync: the weighted semaphore (weights, FIFO order, try_acquire, contexts and
-- timeouts, release checks, the pollable protocol, coroutines under cqueues, and a
-- semaphore shared with another lua_State on another thread).
-- Issue #4 acceptance point 5.
local tether = require "tether"
local sync = require "tether.sync"
local context = require "tether.context"
local errors = require "tether.errors"
local core = require "tether.core"
local util = require "helpers.util"

local has_cqueues, cqueues = pcall(require, "cqueues")

local warm, mark, check = util.no_leaks()
setup(warm)
before_each(mark)
after_each(function()
  tether.set_waiter(nil)
  check()
end)

-- Steps the cqueues controller until cond() holds (at most ~10 s); returns cond().
local function step_until(cq, cond)
  for _ = 1, 1000 do
    if cond() then return true end
    assert(cq:step(0.01))
  end
  return cond()
end

-- Steps the controller a few times without waiting (lets every runnable coroutine run).
local function settle(cq)
  for _ = 1, 5 do assert(cq:step(0)) end
end

-- The semthread helper (spec/helpers/semthread.c), built by the Makefile.
local function semthread()
  local path = os.getenv("TETHER_SEMTHREAD")
    or (util.root .. "/build/" .. _VERSION:match("%d+%.%d+") .. "/spec/semthread.so")
  local open, err = package.loadlib(path, "luaopen_semthread")
  assert(open, "cannot load " .. path .. " (make builds it): " .. tostring(err))
  return open()
end

describe("sync.semaphore", function()
  it("takes and gives back weighted units", function()
    local s = sync.semaphore(5)
    assert.is_true(sync.is_semaphore(s))
    assert.are.equal(5, s:size())
    assert.is_true(s:try_acquire(3))
    assert.are.equal(3, s:held())
    assert.is_false(s:try_acquire(3))
    assert.is_true(s:try_acquire(2))
    assert.is_false(s:try_acquire())
    assert.are.equal(5, s:held())
    s:release(4)
    assert.is_true(s:acquire(2))
    assert.is_true(s:acquire())
    assert.are.equal(4, s:held())
    s:release(4)
    assert.are.equal(0, s:held())
    assert.are.equal("tether.semaphore (0 of 5 held)", tostring(s))
  end)

  it("raises when more is released than held", function()
    local s = sync.semaphore(3)
    assert.has_error(function() s:release() end, "semaphore.release: released more than held")
    assert(s:acquire(2))
    assert.has_error(function() s:release(3) end, "semaphore.release: released more than held")
    assert.are.equal(2, s:held())
    s:release(2)
  end)

  it("raises naming the argument for bad input", function()
    for _, n in ipairs { 0, -1, 1.5, "3", true } do
      assert.has_error(function() sync.semaphore(n) end, "sync.semaphore: size must be a positive integer")
    end
    assert.has_error(function() sync.semaphore() end, "sync.semaphore: size must be a positive integer")
    local s = sync.semaphore(3)
    for _, w in ipairs { 0, -2, 1.5, "1" } do
      assert.has_error(function() s:acquire(w) end, "semaphore.acquire: weight must be a positive integer")
      assert.has_error(function() s:try_acquire(w) end, "semaphore.try_acquire: weight must be a positive integer")
      assert.has_error(function() s:release(w) end, "semaphore.release: weight must be a positive integer")
    end
    assert.has_error(function() s:acquire(4) end, "semaphore.acquire: weight 4 exceeds the semaphore's size 3")
    assert.has_error(function() s:acquire(1, "soon") end,
      "semaphore.acquire: ctx must be a context or a timeout in seconds")
    assert.is_false(s:try_acquire(4)) -- Go's TryAcquire: false, not an error
    assert.are.equal(0, s:held())
  end)

  it("gives up at a timeout with ErrTimeout, taking nothing", function()
    local s = sync.semaphore(1)
    assert(s:acquire())
    local ok, err = s:acquire(1, 0.05)
    assert.is_nil(ok)
    assert.is_true(errors.is(err, errors.ErrTimeout))
    assert.are.equal(1, s:held())
    assert.are.equal(0, s:waiters())
    s:release()
  end)

  it("returns the error of a context done before the call, even with units free", function()
    local s = sync.semaphore(2)
    local ctx, cancel = context.with_cancel(context.background())
    cancel()
    local ok, err = s:acquire(1, ctx)
    assert.is_nil(ok)
    assert.are.equal(context.Canceled, err)
    assert.are.equal(0, s:held())
    assert.is_nil(s:acquire(ctx)) -- the weight may be left out
  end)

  it("answers the pollable protocol: pollfd readable exactly while try_acquire(1) would succeed", function()
    local s = sync.semaphore(2)
    local fd = s:pollfd()
    assert.is_true(fd >= 0)
    assert.are.equal("r", s:events())
    assert.is_nil(s:timeout())
    assert.is_true(core.poll(fd, "r", 0))
    assert(s:try_acquire(2))
    assert.is_false(core.poll(fd, "r", 0))
    s:release(1)
    assert.is_true(core.poll(fd, "r", 0))
    local i, o = tether.wait_any({ s }, 1)
    assert.are.equal(1, i)
    assert.are.equal(s, o)
    s:release(1)
  end)
end)

describe("sync.semaphore under cqueues", function()
  before_each(function()
    if has_cqueues then tether.set_waiter(tether.waiters.cqueues) end
  end)

  it("serves waiters first come, first served: small ones do not overtake a big one", function()
    if not has_cqueues then pending("lua-cqueues is not installed for " .. _VERSION) return end
    local s = sync.semaphore(4)
    assert(s:acquire(4))
    local cq, done = cqueues.new(), {}
    cq:wrap(function() assert(s:acquire(3)); done[#done + 1] = "big" end)
    assert.is_true(step_until(cq, function() return s:waiters() == 1 end))
    cq:wrap(function() assert(s:acquire(1)); done[#done + 1] = "small" end)
    assert.is_true(step_until(cq, function() return s:waiters() == 2 end))
    s:release(1) -- 1 free: enough for "small", but "big" is first in line
    settle(cq)
    assert.are.same({}, done)
    assert.is_false(s:try_acquire(1)) -- nor does try_acquire jump the queue
    s:release(2) -- 3 free: "big" goes
    assert.is_true(step_until(cq, function() return #done == 1 end))
    assert.are.same({ "big" }, done)
    assert.are.equal(4, s:held())
    s:release(3) -- now "small"
    assert.is_true(step_until(cq, function() return #done == 2 end))
    assert.are.same({ "big", "small" }, done)
    assert.are.equal(2, s:held())
    assert(cq:loop())
    s:release(2)
  end)

  it("a cancelled acquire returns the context's error and leaves the count right", function()
    if not has_cqueues then pending("lua-cqueues is not installed for " .. _VERSION) return end
    local s = sync.semaphore(2)
    assert(s:acquire(2))
    local ctx, cancel = context.with_cancel(context.background())
    local cq, res = cqueues.new(), nil
    cq:wrap(function() res = { s:acquire(1, ctx) } end)
    assert.is_true(step_until(cq, function() return s:waiters() == 1 end))
    cancel()
    assert.is_true(step_until(cq, function() return res ~= nil end))
    assert.is_nil(res[1])
    assert.are.equal(context.Canceled, res[2])
    assert.are.equal(2, s:held())
    assert.are.equal(0, s:waiters())
    s:release(2)
    assert.is_true(s:try_acquire(2))
    s:release(2)
  end)

  it("gives back units granted to a waiter whose context ended before it ran", function()
    if not has_cqueues then pending("lua-cqueues is not installed for " .. _VERSION) return end
    local s = sync.semaphore(1)
    assert(s:acquire())
    local ctx, cancel = context.with_cancel(context.background())
    local cq, res = cqueues.new(), nil
    cq:wrap(function() res = { s:acquire(1, ctx) } end)
    assert.is_true(step_until(cq, function() return s:waiters() == 1 end))
    s:release() -- granted to the waiter at once ...
    assert.are.equal(1, s:held())
    cancel()    -- ... which sees its context done first: as in Go, it gives them back
    assert.is_true(step_until(cq, function() return res ~= nil end))
    assert.is_nil(res[1])
    assert.are.equal(context.Canceled, res[2])
    assert.are.equal(0, s:held())
  end)

  it("bounds how many coroutines run at once", function()
    if not has_cqueues then pending("lua-cqueues is not installed for " .. _VERSION) return end
    local s = sync.semaphore(3)
    local cq = cqueues.new()
    local running, max, finished = 0, 0, 0
    for _ = 1, 10 do
      cq:wrap(function()
        assert(s:acquire())
        running = running + 1
        if running > max then max = running end
        cqueues.sleep(0.01)
        running = running - 1
        s:release()
        finished = finished + 1
      end)
    end
    assert(cq:loop())
    assert.are.equal(10, finished)
    assert.are.equal(3, max)
    assert.are.equal(0, s:held())
  end)
end)

describe("a semaphore shared with another thread's lua_State", function()
  it("has the same methods there and the same count", function()
    local st = semthread()
    local s = sync.semaphore(3)
    assert(s:acquire(2))
    local job = st.start(s, [[
      local sem = ...
      return tostring(sem.acquire ~= nil) .. " " .. sem:held() .. " " .. tostring(sem:try_acquire(1)) .. " " .. sem:held()]])
    local ok, res = job:join()
    assert.is_true(ok, res)
    assert.are.equal("true 2 true 3", res)
    assert.are.equal(3, s:held())
    s:release(3)
  end)

  it("wakes a waiter in the other thread when this one releases, and the other way round", function()
    local st = semthread()
    local s = sync.semaphore(2)
    assert(s:acquire(2))
    -- The other thread blocks in acquire (poll on its waiter's eventfd) until we release.
    local job = st.start(s, [[
      local sem = ...
      assert(sem:acquire(2, 30))
      sem:release(1)
      return "got 2"]])
    local deadline = tether.now() + 30
    while s:waiters() == 0 and tether.now() < deadline do tether.sleep(0.005) end
    assert.are.equal(1, s:waiters())
    s:release(2)
    local ok, res = job:join()
    assert.is_true(ok, res)
    assert.are.equal("got 2", res)
    assert.are.equal(1, s:held()) -- it kept one unit
    -- Now we wait (counting our waits: no busy loop) until the other thread releases.
    local job2 = st.start(s, [[
      local sem = ...
      os.execute("sleep 0.2")
      sem:release(1)
      return "released"]])
    local waits = 0
    tether.set_waiter(function(fd, events, timeout)
      waits = waits + 1
      core.poll(fd, events, timeout and core.now() + timeout)
    end)
    assert.is_true(s:acquire(2, 30))
    tether.set_waiter(nil)
    ok, res = job2:join()
    assert.is_true(ok, res)
    assert.is_true(waits >= 1 and waits <= 3, "waits: " .. waits)
    assert.are.equal(2, s:held())
    s:release(2)
  end)
end)
