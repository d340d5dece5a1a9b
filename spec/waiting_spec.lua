-- Waiting: tether.wait_any, tether.set_waiter, tether.waiters.cqueues and the
-- pollable protocol (pollfd/events/timeout) of tether's waitables.
local tether = require "tether"
local exec = require "tether.exec"
local errors = require "tether.errors"
local context = require "tether.context"
local signal = require "tether.signal"
local core = require "tether.core"
local util = require "helpers.util"

local function started(...)
  local c = exec.command(...)
  assert(c:start())
  return c
end

describe("tether.wait_any", function()
  it("returns the index and object of the first process to exit", function()
    local slow = started("sleep", "5")
    local fast = started("sleep", "0.05")
    local i, o = tether.wait_any({ slow.process, fast.process }, 10)
    assert.are.equal(2, i)
    assert.are.equal(fast.process, o)
    assert.is_true(fast:wait())
    slow.process:kill()
    slow:wait()
  end)

  it("returns an ErrTimeout error when nothing becomes ready in time", function()
    local slow = started("sleep", "5")
    local i, err = tether.wait_any({ slow.process }, 0.05)
    assert.is_nil(i)
    assert.is_true(err:is(errors.ErrTimeout))
    slow.process:kill()
    slow:wait()
  end)

  it("returns the context's error when the context is done first", function()
    local slow = started("sleep", "5")
    local ctx = context.with_timeout(context.background(), 0.05)
    local i, err = tether.wait_any({ slow.process }, ctx)
    assert.is_nil(i)
    assert.are.equal(context.DeadlineExceeded, err)
    slow.process:kill()
    slow:wait()
  end)

  it("wakes for a reader with data, a signal channel and a context", function()
    local c = exec.command("sh", "-c", "echo hi; sleep 5")
    local r = c:stdout_pipe()
    assert(c:start())
    local i = tether.wait_any({ c.process, r }, 10)
    assert.are.equal(2, i)
    assert.are.equal("hi", r:read("l"))

    local ch = signal.notify(signal.channel(1), "USR2")
    core.kill(core.pid(), core.signals.SIGUSR2)
    assert.are.equal(2, (tether.wait_any({ c.process, ch }, 10)))
    assert.are.equal("SIGUSR2", ch:try_recv())
    signal.stop(ch)

    local ctx, cancel = context.with_cancel(context.background())
    cancel()
    assert.are.equal(2, (tether.wait_any({ c.process, ctx }, 10)))
    c.process:kill()
    c:wait()
  end)

  it("raises naming the argument for a non-waitable", function()
    assert.has_error(function() tether.wait_any({ 42 }) end,
      "bad argument #1 to 'wait_any' (element 1 is not waitable)")
    assert.has_error(function() tether.wait_any("x") end,
      "bad argument #1 to 'wait_any' (list of waitables expected, got string)")
  end)
end)

describe("tether.set_waiter", function()
  after_each(function() tether.set_waiter(nil) end)

  it("routes every wait through the waiter, given one private fd at a time", function()
    local calls, fds = 0, {}
    tether.set_waiter(function(fd, events, timeout)
      calls = calls + 1
      fds[#fds + 1] = fd
      core.poll(fd, events, timeout and core.now() + timeout)
    end)
    local out = assert(exec.command("sh", "-c", "sleep 0.05; echo waited"):output())
    assert.are.equal("waited\n", out)
    assert.is_true(calls > 0)
    -- the fds given were tether's private epoll fds, closed again since
    for _, fd in ipairs(fds) do
      assert.is_nil(io.open("/proc/self/fd/" .. fd, "r") and nil)
    end
  end)

  it("raises for a non-function", function()
    assert.has_error(function() tether.set_waiter(42) end,
      "bad argument #1 to 'set_waiter' (function or nil expected)")
  end)
end)

describe("tether.waiters.cqueues", function()
  local ok, cqueues = pcall(require, "cqueues")

  after_each(function() tether.set_waiter(nil) end)

  it("runs two commands in one cqueues loop concurrently", function()
    if not ok then pending("lua-cqueues is not installed for " .. _VERSION) return end
    tether.set_waiter(tether.waiters.cqueues)
    local cq = cqueues.new()
    local dir = util.tmpdir()
    -- Each command marks its start, then waits for the other's mark (for at most 10 s):
    -- one after the other, the first would give up waiting and fail.
    local script = [[
      : > "$1/started$2"; i=0
      while [ ! -e "$1/started$3" ]; do
        i=$((i+1)); [ $i -gt 1000 ] && { echo "gave up waiting for $3"; exit 1; }
        sleep 0.01
      done
      echo "done$2"]]
    local outs = {}
    for k = 1, 2 do
      cq:wrap(function()
        outs[k] = assert(exec.command("sh", "-c", script, "sh", dir, k, 3 - k):output())
      end)
    end
    local looped, lerr = cq:loop()
    os.execute("rm -rf " .. util.shquote(dir))
    assert(looped, lerr)
    assert.are.same({ "done1\n", "done2\n" }, outs)
  end)

  it("lets a process wait, a sleep and a signal recv share the loop", function()
    if not ok then pending("lua-cqueues is not installed for " .. _VERSION) return end
    tether.set_waiter(tether.waiters.cqueues)
    local cq = cqueues.new()
    local done = {}
    local ch = signal.notify(signal.channel(1), "USR1")
    cq:wrap(function()
      local c = started("sleep", "0.1")
      assert(c.process:wait())
      done[#done + 1] = "wait"
      core.kill(core.pid(), core.signals.SIGUSR1)
    end)
    cq:wrap(function() tether.sleep(0.05); done[#done + 1] = "sleep" end)
    cq:wrap(function()
      local name = assert(ch:recv(5)) -- index taken after the wait, not before
      done[#done + 1] = name
    end)
    assert(cq:loop())
    signal.stop(ch)
    assert.are.same({ "sleep", "wait", "SIGUSR1" }, done)
  end)

  it("blocks in poll outside a cqueues coroutine", function()
    if not ok then pending("lua-cqueues is not installed for " .. _VERSION) return end
    tether.set_waiter(tether.waiters.cqueues)
    assert.are.equal("plain\n", assert(exec.command("echo", "plain"):output()))
  end)
end)

describe("pollable protocol", function()
  it("is answered by every waitable", function()
    local c = exec.command("cat")
    local w = c:stdin_pipe()
    local r = c:stdout_pipe()
    assert(c:start())
    local ctx = context.with_timeout(context.background(), 100)
    local ch = signal.channel(1)
    for _, o in ipairs { c.process, r, w, ctx, ch } do
      assert.is_number(o:pollfd())
      assert.is_string(o:events())
    end
    assert.are.equal("r", r:events())
    assert.are.equal("w", w:events())
    assert.is_true(ctx:timeout() > 50)
    assert.is_nil(r:timeout())
    w:close()
    assert.is_true(c:wait())
  end)
end)

describe("every blocking call takes a context", function()
  local function expiring()
    return (context.with_timeout(context.background(), 0.05))
  end

  it("tether.sleep returns the context's error when it is done first", function()
    local ok, err = tether.sleep(30, expiring())
    assert.is_nil(ok)
    assert.are.equal(context.DeadlineExceeded, err)
    assert.is_true(tether.sleep(0.01, context.background()))
  end)

  it("tether.sleep wakes when the context is cancelled by a signal", function()
    local ctx, stop = signal.notify_context(context.background(), "USR1")
    local c = exec.command("sh", "-c", "sleep 0.05; kill -USR1 " .. tether.pid())
    assert(c:start())
    local ok, err = tether.sleep(30, ctx)
    stop()
    assert.is_nil(ok)
    assert.are.equal(context.Canceled, err)
    assert.are.equal("received signal SIGUSR1", tostring(context.cause(ctx)))
    assert.is_true(c:wait())
  end)

  it("process:wait, cmd:wait and reader:read return it and leave the child running", function()
    local c = exec.command("sh", "-c", "sleep 5")
    local r = c:stdout_pipe()
    assert(c:start())
    local st, err = c.process:wait(expiring())
    assert.is_nil(st)
    assert.are.equal(context.DeadlineExceeded, err)
    local ok, werr = c:wait(expiring())
    assert.is_nil(ok)
    assert.are.equal(context.DeadlineExceeded, werr)
    local data, rerr = r:read("l", expiring())
    assert.is_nil(data)
    assert.are.equal(context.DeadlineExceeded, rerr)
    assert.is_false(c.process:try_wait())
    c.process:kill()
    local _, kerr = c:wait()
    assert.are.equal("SIGKILL", kerr.signal)
  end)

  it("raises naming the argument for a bad context", function()
    assert.has_error(function() tether.sleep(1, 42) end,
      "bad argument #2 to 'sleep' (context expected, got number)")
  end)
end)
