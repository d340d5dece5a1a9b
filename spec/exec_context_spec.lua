-- tether.exec with contexts: command_context, cmd.cancel, cmd.wait_delay
-- (Go 1.20+ semantics); timed waits; no EINTR while signals rain.
-- Issue #3 acceptance points 5 and 6.
local exec = require "tether.exec"
local errors = require "tether.errors"
local context = require "tether.context"
local signal = require "tether.signal"
local core = require "tether.core"
local tether = require "tether"
local util = require "helpers.util"

local SIG = core.signals
local bg = context.background()

-- The pids of live (not zombie) processes in process group pgid, by pgrep.
-- Orphans of a killed group may stay zombies here (PID 1 may not reap them),
-- so zombies are left out: they are no descendants that still run.
local function live_in_group(pgid)
  local out, code = util.sh("pgrep -g " .. pgid .. " -r R,S,D,T,t,I")
  local pids = {}
  for p in out:gmatch("%d+") do pids[#pids + 1] = tonumber(p) end
  return pids, code
end

-- Kill whatever is left of group pgid after the test.
local function kill_group_later(pgid)
  util.defer(function() core.kill(-pgid, SIG.SIGKILL) end)
end

-- Start cmd whose stdout first says "ready"; returns the reader (cmd is reaped after the test).
local function start_ready(cmd)
  util.reap_later(cmd)
  local r = assert(cmd:stdout_pipe())
  assert.is_true(cmd:start())
  assert.are.equal("ready", r:read("l", 10))
  return r
end

-- After each test: no unreaped child, no new fd (the signal pipe opened first).
local warm, mark, check = util.no_leaks(function() assert(core.signal_fd() >= 0) end)
setup(warm); before_each(mark); after_each(check)

-- Point 5.
describe("command_context", function()
  it("kills the process by default when the context's deadline passes", function()
    local ctx, cancel = context.with_timeout(bg, 0.2)
    util.defer(cancel)
    local cmd = util.reap_later(exec.command_context(ctx, "sleep", "10"))
    local t0 = tether.now()
    assert.is_true(cmd:start())
    local ok, err = cmd:wait()
    local took = tether.now() - t0
    assert.is_nil(ok)
    assert.is_true(errors.is(err, context.DeadlineExceeded), tostring(err))
    assert.is_false(errors.is(err, context.Canceled))
    assert.are.equal("SIGKILL", err.signal)
    assert.are.equal("SIGKILL", cmd.process_state:signal())
    assert.is_true(took < 5, ("wait took %.2f s: the kill did not come soon after the deadline"):format(took))
  end)

  it("kills the process by default when the context is cancelled", function()
    local ctx, cancel = context.with_cancel(bg)
    util.defer(cancel)
    local cmd = exec.command_context(ctx, "sh", "-c", "echo ready; exec sleep 10")
    start_ready(cmd)
    local t0 = tether.now()
    cancel()
    local ok, err = cmd:wait()
    assert.is_nil(ok)
    assert.is_true(errors.is(err, context.Canceled), tostring(err))
    assert.are.equal("SIGKILL", err.signal)
    assert.is_true(tether.now() - t0 < 5)
  end)

  it("sends cancel's signal, then SIGKILL after wait_delay to a child that ignores it", function()
    local ctx, cancel = context.with_cancel(bg)
    util.defer(cancel)
    -- `exec` keeps TERM ignored in sleep: a single process that ignores SIGTERM.
    local cmd = exec.command_context(ctx, "sh", "-c", [[trap '' TERM; echo ready; exec sleep 10]])
    local cancelled = 0
    cmd.cancel = function(c)
      cancelled = cancelled + 1
      return c.process:signal("SIGTERM")
    end
    cmd.wait_delay = 0.5
    start_ready(cmd)
    local t0 = tether.now()
    cancel()
    local ok, err = cmd:wait()
    local took = tether.now() - t0
    assert.is_nil(ok)
    assert.are.equal(1, cancelled)
    assert.are.equal("SIGKILL", err.signal)
    assert.is_true(errors.is(err, context.Canceled), tostring(err))
    assert.is_true(took >= 0.45, ("killed %.2f s after the cancel: before wait_delay ran out"):format(took))
    assert.is_true(took < 5, ("wait took %.2f s"):format(took))
  end)

  it("returns the context's error when the child handles SIGTERM and exits 0", function()
    local ctx, cancel = context.with_cancel(bg)
    util.defer(cancel)
    local cmd = exec.command_context(ctx, "sh", "-c",
      [[trap 'exit 0' TERM; echo ready; while :; do sleep 0.05; done]])
    cmd.cancel = function(c) return c.process:signal("SIGTERM") end
    cmd.wait_delay = 5
    start_ready(cmd)
    cancel()
    local ok, err = cmd:wait()
    assert.is_nil(ok)
    assert.are.equal(context.Canceled, err)
    assert.is_true(errors.is(err, context.Canceled))
    assert.is_true(cmd.process_state:success(), tostring(cmd.process_state))
  end)

  it("returns ErrWaitDelay after wait_delay when a grandchild holds stdout", function()
    local cmd = exec.command_context(bg, "sh", "-c", "sleep 5 & echo hi")
    local out = {}
    cmd.stdout = out
    cmd.setpgid = true -- so the grandchild can be killed with its group
    cmd.wait_delay = 0.3
    util.reap_later(cmd)
    assert.is_true(cmd:start())
    kill_group_later(cmd.process.pid)
    local t0 = tether.now()
    local ok, err = cmd:wait()
    local took = tether.now() - t0
    assert.is_nil(ok)
    assert.are.equal(errors.ErrWaitDelay, err)
    assert.is_true(cmd.process_state:success())
    assert.are.equal("hi\n", table.concat(out))
    assert.is_true(took < 4, ("wait took %.2f s: it waited for the grandchild"):format(took))
    assert.are.equal(1, #live_in_group(cmd.process.pid), "the grandchild still runs (until the clean-up)")
  end)

  it("returns ErrWaitDelay after wait_delay for a plain command too (Go's WaitDelay without a context)", function()
    local cmd = exec.command("sh", "-c", "sleep 5 & echo hi")
    local out = {}
    cmd.stdout = out
    cmd.setpgid = true
    cmd.wait_delay = 0.3
    util.reap_later(cmd)
    assert.is_true(cmd:start())
    kill_group_later(cmd.process.pid)
    local t0 = tether.now()
    local ok, err = cmd:wait()
    assert.is_nil(ok)
    assert.are.equal(errors.ErrWaitDelay, err)
    assert.are.equal("hi\n", table.concat(out))
    assert.is_true(tether.now() - t0 < 4)
  end)

  it("with setpgid, the default cancel leaves no descendant running", function()
    local ctx, cancel = context.with_cancel(bg)
    util.defer(cancel)
    local cmd = exec.command_context(ctx, "sh", "-c",
      [[sleep 10 & sleep 10 & echo ready; wait]])
    cmd.setpgid = true
    start_ready(cmd)
    local pgid = cmd.process.pid
    kill_group_later(pgid)
    local before = live_in_group(pgid)
    assert.are.equal(3, #before, "precondition: sh and two sleeps in the group")
    cancel()
    local ok, err = cmd:wait(10)
    assert.is_nil(ok)
    assert.are.equal("SIGKILL", err.signal)
    assert.is_true(errors.is(err, context.Canceled), tostring(err))
    -- The sleeps die with the group; give the kernel a moment (bounded).
    local pids, code
    for _ = 1, 250 do
      pids, code = live_in_group(pgid)
      if code == 1 then break end
      tether.sleep(0.02)
    end
    assert.are.equal(1, code, "pgrep -g found: " .. table.concat(pids, " "))
    assert.are.same({}, pids)
  end)

  it("start on a done context fails with its error and creates no process", function()
    local children = #util.children_of(util.pid())
    local ctx, cancel = context.with_cancel(bg)
    cancel()
    local cmd = exec.command_context(ctx, "true")
    local r = assert(cmd:stdout_pipe())
    local ok, err = cmd:start()
    assert.is_nil(ok)
    assert.are.equal(context.Canceled, err)
    assert.is_nil(cmd.process)
    assert.are.equal(children, #util.children_of(util.pid()), "a process was created")
    r:close()

    local dctx = context.with_timeout(bg, 0)
    local cmd2 = exec.command_context(dctx, "true")
    local ok2, err2 = cmd2:run()
    assert.is_nil(ok2)
    assert.are.equal(context.DeadlineExceeded, err2)
    assert.is_nil(cmd2.process)
    assert.are.equal(children, #util.children_of(util.pid()))
  end)

  it("a context that is never done changes nothing", function()
    local cmd = exec.command_context(bg, "sh", "-c", "echo out; exit 4")
    local out, err = cmd:output()
    assert.is_nil(out)
    assert.are.equal(4, err.exit_code)
    assert.is_false(errors.is(err, context.Canceled))
    local ok = exec.command_context(context.with_cancel(bg), "true"):run()
    assert.is_true(ok)
  end)

  it("a context cancelled after wait returned calls no cancel", function()
    local ctx, cancel = context.with_cancel(bg)
    local cmd = exec.command_context(ctx, "true")
    local cancelled = 0
    cmd.cancel = function(c) cancelled = cancelled + 1; return c.process:kill() end
    assert.is_true(cmd:run())
    cancel()
    assert.are.equal(0, cancelled)
    assert.is_true(cmd.process_state:success())
  end)

  it("cmd.cancel without command_context makes start fail", function()
    local cmd = exec.command("true")
    cmd.cancel = function() return true end
    local ok, err = cmd:start()
    assert.is_nil(ok)
    assert.matches("CommandContext", tostring(err), 1, true)
    assert.is_nil(cmd.process)
  end)

  it("raises when given something that is not a context", function()
    local bads = { n = 5, nil, "ctx", 5, {}, { done = true } }
    for i = 1, bads.n do
      local ok, msg = pcall(exec.command_context, bads[i], "true")
      assert.is_false(ok)
      assert.matches("bad argument #1 to 'command_context'", tostring(msg), 1, true)
    end
    local ok, msg = pcall(exec.command_context, bg, 42)
    assert.is_false(ok)
    assert.matches("bad argument #2 to 'command_context'", tostring(msg), 1, true)
  end)

  it("raises when cancel is not a function or wait_delay not a number", function()
    local cmd = exec.command_context(bg, "true")
    cmd.cancel = "kill"
    assert.is_false(pcall(cmd.start, cmd))
    local cmd2 = exec.command_context(bg, "true")
    cmd2.wait_delay = "1s"
    assert.is_false(pcall(cmd2.start, cmd2))
  end)
end)

-- Point 6.
describe("timed waits", function()
  it("wait(timeout) that expires, then wait(), returns the real status", function()
    local cmd = util.reap_later(exec.command("sh", "-c", "sleep 0.5; exit 3"))
    assert.is_true(cmd:start())
    local ok, err = cmd:wait(0.1)
    assert.is_nil(ok)
    assert.is_true(errors.is(err, errors.ErrTimeout), tostring(err))
    assert.is_true(util.alive(cmd.process.pid), "a timed-out wait leaves the command running")
    assert.is_nil(cmd.process_state)
    ok, err = cmd:wait(0.05) -- a second timed wait works as well
    assert.is_nil(ok)
    assert.is_true(errors.is(err, errors.ErrTimeout), tostring(err))
    ok, err = cmd:wait()
    assert.is_nil(ok)
    assert.are.equal(3, err.exit_code)
    assert.are.equal(3, cmd.process_state:exit_code())
    local _, again = cmd:wait()
    assert.are.equal("exec: Wait was already called", tostring(again))
  end)

  it("a timed wait keeps collecting output", function()
    local cmd = util.reap_later(exec.command("sh", "-c", "echo one; sleep 0.3; echo two"))
    local out = {}
    cmd.stdout = out
    assert.is_true(cmd:start())
    local ok, err = cmd:wait(0.05)
    assert.is_nil(ok)
    assert.is_true(errors.is(err, errors.ErrTimeout), tostring(err))
    assert.is_true(cmd:wait(10))
    assert.are.equal("one\ntwo\n", table.concat(out))
  end)
end)

-- Point 6.
describe("signals arriving during blocking calls", function()
  local function xs(n) return string.rep("x", n) end
  -- 5,000,000 bytes of "x" over about 1 s.
  local producer = [[for i in 1 2 3 4 5; do head -c 1000000 /dev/zero | tr '\0' x; sleep 0.2; done]]

  it("never surface EINTR: output(), a Reader loop, waits and sleeps complete", function()
    local ch = signal.channel(1)
    signal.notify(ch, "USR1")
    util.defer(function() signal.stop(ch) end)
    -- A SIGUSR1 every 10 ms or so, until killed at the end (bounded: 60 s).
    local pelter = util.reap_later(exec.command("sh", "-c", ([[
      i=0; while [ $i -lt 6000 ]; do kill -USR1 %d || exit 1; sleep 0.01; i=$((i+1)); done]]):format(util.pid())))
    assert.is_true(pelter:start())
    assert.are.equal("SIGUSR1", ch:recv(10), "the signals arrive")

    local out, err = exec.command("sh", "-c", producer):output()
    assert.is_nil(err)
    assert.are.equal(5000000, #out)
    assert.is_true(out == xs(5000000), "output() data is intact")

    local cmd = util.reap_later(exec.command("sh", "-c", producer))
    local r = assert(cmd:stdout_pipe())
    assert.is_true(cmd:start())
    local parts, n = {}, 0
    while true do
      local data, rerr = r:read(65536)
      assert.is_nil(rerr)
      if data == nil then break end
      parts[#parts + 1] = data
      n = n + #data
    end
    assert.are.equal(5000000, n)
    assert.is_true(table.concat(parts) == xs(5000000), "Reader data is intact")
    assert.is_true(cmd:wait())

    assert.is_true(exec.command("sleep", "0.3"):run())
    local t0 = tether.now()
    tether.sleep(0.3)
    assert.is_true(tether.now() - t0 >= 0.29, "sleep was cut short")
    local ctx = context.with_timeout(bg, 0.3)
    assert.is_true(ctx:wait(10))
    assert.are.equal(context.DeadlineExceeded, ctx:err())

    assert.are.equal("SIGUSR1", ch:recv(10), "signals kept arriving throughout")
    local ok = pelter:wait(0)
    assert.is_nil(ok, "the signals were still coming at the end")
    assert.is_true(pelter.process:kill())
    local _, perr = pelter:wait(10)
    assert.are.equal("SIGKILL", perr.signal)
  end)
end)
