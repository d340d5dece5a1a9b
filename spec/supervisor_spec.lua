-- tether.supervisor: restart policies, backoff, intensity, stopping whole process groups.
-- Issue #5 acceptance point 2. Starts are counted from outside (each start of a child
-- appends a line to a file); what is left of a group is looked up in /proc.
local tether = require "tether"
local exec = require "tether.exec"
local context = require "tether.context"
local errors = require "tether.errors"
local supervisor = require "tether.supervisor"
local util = require "helpers.util"

local warm, mark, check = util.no_leaks()
setup(warm)
before_each(mark)
-- LuaJIT traces keep the closures they were specialised on (an on_event closure, hence
-- its ctx and the ctx's eventfd) alive until flushed: flush them before the fd check.
after_each(function() if jit then jit.flush() end end)
after_each(check)

local function lines(path)
  local n = 0
  for _ in (util.readfile(path) or ""):gmatch("[^\n]*\n") do n = n + 1 end
  return n
end

-- Processes of group pgid that are alive (not zombies), from /proc, as "pid(comm)".
local function members(pgid)
  local list = {}
  for pid in util.sh("ls /proc"):gmatch("%d+") do
    local st = util.stat_of(pid)
    if st and st.pgrp == pgid and st.state ~= "Z" and st.state ~= "X" then
      list[#list + 1] = pid .. "(" .. (util.readfile("/proc/" .. pid .. "/comm") or "?"):gsub("\n", "") .. ")"
    end
  end
  return list
end

-- Kill group pgid whatever happens to the test.
local function kill_group_later(pgid)
  util.defer(function() os.execute("kill -KILL -- -" .. pgid .. " 2>/dev/null") end)
end

-- A recorder for on_event: events[i] = {name, event, info}; pids of started children.
local function recorder(extra)
  local rec = { events = {}, pids = {} }
  function rec.on_event(name, event, info)
    rec.events[#rec.events + 1] = { name, event, info }
    if event == "start" then
      rec.pids[#rec.pids + 1] = info.pid
      kill_group_later(info.pid)
    end
    if extra then extra(name, event, info) end
  end
  function rec.count(name, event)
    local n = 0
    for _, e in ipairs(rec.events) do if e[1] == name and e[2] == event then n = n + 1 end end
    return n
  end
  return rec
end

local function sh(script, arg1)
  if arg1 == nil then return function() return exec.command("sh", "-c", script) end end
  return function() return exec.command("sh", "-c", script, "sh", arg1) end
end

describe("supervisor.new", function()
  local ok_child = { name = "a", command = function() return exec.command("true") end }
  local cases = {
    { "a non-table", 42, "supervisor.new: table expected, got number" },
    { "no children", {}, "at least one child expected" },
    { "a child that is not a table", { "x" }, "children[1] must be a table" },
    { "a child without a name", { { command = ok_child.command } }, "children[1].name must be a non-empty string" },
    { "a child without a command", { { name = "a" } }, "children[1].command must be a function" },
    { "a duplicate name", { ok_child, ok_child }, 'children[2].name "a" is used twice' },
    { "an unknown restart policy", { { name = "a", command = ok_child.command, restart = "sometimes" } },
      'children[1].restart must be "always", "on-failure" or "never"' },
    { "an unknown child field", { { name = "a", command = ok_child.command, restrat = "never" } },
      'children[1] has an unknown field "restrat"' },
    { "an unknown option", { ok_child, gracee = 1 }, 'unknown option "gracee"' },
    { "a negative grace", { ok_child, grace = -1 }, "grace must be a non-negative number" },
    { "backoff.initial 0", { ok_child, backoff = { initial = 0 } }, "backoff.initial must be a positive number" },
    { "backoff.max below initial", { ok_child, backoff = { initial = 2, max = 1 } }, "backoff.max must be at least backoff.initial" },
    { "a string backoff field", { ok_child, backoff = { jitter = "x" } }, "backoff.jitter must be a number" },
    { "jitter above 1", { ok_child, backoff = { jitter = 2 } }, "backoff.jitter must be between 0 and 1" },
    { "an unknown backoff field", { ok_child, backoff = { inital = 1 } }, 'backoff has an unknown field "inital"' },
    { "intensity without window", { ok_child, intensity = { max = 1 } }, "intensity.window must be a positive number" },
    { "a fractional intensity.max", { ok_child, intensity = { max = 1.5, window = 1 } }, "intensity.max must be a non-negative integer" },
    { "on_event not a function", { ok_child, on_event = "x" }, "on_event must be a function" },
  }
  for _, case in ipairs(cases) do
    it("raises naming the argument for " .. case[1], function()
      local ok, err = pcall(supervisor.new, case[2])
      assert.is_false(ok)
      assert.is_truthy(tostring(err):find(case[3], 1, true), tostring(err))
      assert.is_truthy(tostring(err):find("supervisor.new", 1, true), tostring(err))
    end)
  end

  it("run raises for a ctx that is not a context", function()
    local s = supervisor.new { ok_child }
    local ok, err = pcall(s.run, s, 5)
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find("bad argument #1 to 'run' (context expected, got number)", 1, true), err)
  end)
end)

describe("supervisor:run", function()
  it("restarts a crash loop no faster than the backoff schedule allows", function()
    local file = util.tmpname()
    util.defer(function() os.remove(file) end)
    local initial, window = 0.02, 1.0
    local rec = recorder()
    local s = supervisor.new {
      { name = "crash", command = sh('echo start >> "$1"; exit 1', file) },
      backoff = { initial = initial, max = 60, jitter = 0 }, grace = 1, on_event = rec.on_event,
    }
    local ctx = context.with_timeout(context.background(), window)
    local summary = assert(s:run(ctx))
    -- Starts the schedule allows within the window: at 0, then after 0.02, 0.02+0.04, ...
    local allowed, at, delay = 1, initial, initial
    while at <= window do allowed = allowed + 1; delay = delay * 2; at = at + delay end
    local starts = lines(file)
    assert.is_true(starts <= allowed, ("%d starts, the backoff allows %d"):format(starts, allowed))
    -- and it did restart (generous lower bound: the machine may be slow)
    assert.is_true(starts >= 3, ("only %d starts"):format(starts))
    assert.are.equal(starts, summary.crash.starts)
    assert.are.equal(starts - 1, summary.crash.restarts)
    assert.are.equal("stopped", summary.crash.result)
    assert.are.equal(1, summary.crash.exit_code)
    -- the delays asked for double each time
    local d = initial
    for _, e in ipairs(rec.events) do
      if e[2] == "backoff" then
        assert.are.equal(d, e[3].delay)
        d = d * 2
      end
    end
  end)

  it("resets the backoff after a run longer than reset_after", function()
    local file = util.tmpname()
    util.defer(function() os.remove(file) end)
    local ctx, cancel = context.with_cancel(context.background())
    local delays = {}
    local s = supervisor.new {
      -- the 4th run lasts 0.5 s, longer than reset_after; every run fails
      { name = "flaky", restart = "on-failure",
        command = sh('echo start >> "$1"; [ "$(wc -l < "$1")" -eq 4 ] && sleep 0.5; exit 3', file) },
      backoff = { initial = 0.05, reset_after = 0.3, jitter = 0 }, grace = 1,
      on_event = function(_, event, info)
        if event == "backoff" then
          delays[#delays + 1] = info.delay
          if #delays == 5 then cancel() end
        end
      end,
    }
    local summary = assert(s:run(ctx))
    assert.are.same({ 0.05, 0.05 * 2, 0.05 * 4, 0.05, 0.05 * 2 }, delays)
    assert.are.equal(5, lines(file))
    assert.are.equal(5, summary.flaky.starts)
  end)

  -- The delays a crash loop asks for, until n of them were asked (then ctx is cancelled).
  local function crash_delays(backoff, n)
    local ctx, cancel = context.with_cancel(context.background())
    local delays = {}
    local s = supervisor.new {
      { name = "crash", command = sh("exit 1") },
      backoff = backoff, grace = 1,
      on_event = function(_, event, info)
        if event == "backoff" then
          delays[#delays + 1] = info.delay
          if #delays == n then cancel() end
        end
      end,
    }
    local summary = assert(s:run(ctx))
    assert.are.equal(n, summary.crash.restarts + (summary.crash.result == "stopped" and 1 or 0))
    return delays
  end

  it("caps the backoff at backoff.max", function()
    assert.are.same({ 0.01, 0.02, 0.04, 0.04, 0.04 },
      crash_delays({ initial = 0.01, max = 0.04, jitter = 0 }, 5))
  end)

  it("spreads each delay by the jitter factor, within [d * (1 - jitter), d * (1 + jitter)]", function()
    local jitter = 0.5
    local delays = crash_delays({ initial = 0.01, max = 0.04, jitter = jitter }, 8)
    local plain = 0
    for i, got in ipairs(delays) do
      local d = math.min(0.01 * 2 ^ (i - 1), 0.04)
      assert.is_true(got >= d * (1 - jitter) - 1e-12 and got <= d * (1 + jitter) + 1e-12,
        ("delay %d: %g outside %g +- %d%%"):format(i, got, d, jitter * 100))
      if got == d then plain = plain + 1 end
    end
    assert.is_true(plain < #delays, "no delay was jittered")
  end)

  it("counts only the restarts inside the intensity window", function()
    -- one restart allowed per 0.2 s; restarts come at least 0.3 s apart (the backoff)
    local ctx, cancel = context.with_cancel(context.background())
    local s = supervisor.new {
      { name = "slow", command = sh("exit 1") },
      backoff = { initial = 0.3, max = 0.3, jitter = 0 }, intensity = { max = 1, window = 0.2 }, grace = 1,
      on_event = function(_, event, info)
        if event == "restart" and info.restarts == 3 then cancel() end
      end,
    }
    local summary, err = s:run(ctx)
    assert.is_nil(err and tostring(err))
    assert.are.equal(3, summary.slow.restarts)
    assert.are.equal("stopped", summary.slow.result)
  end)

  it("returns an error naming the child when the intensity limit is passed, after stopping the others", function()
    local rec = recorder()
    local s = supervisor.new {
      { name = "steady", command = function() return exec.command("sleep", "60") end },
      { name = "crasher", command = sh("exit 7") },
      backoff = { initial = 0.01, jitter = 0 }, intensity = { max = 3, window = 30 }, grace = 5,
      on_event = rec.on_event,
    }
    local summary, err = s:run(context.with_timeout(context.background(), 30))
    assert.is_nil(summary)
    assert.is_true(errors.is_error(err))
    assert.is_true(err:is(supervisor.ErrIntensity))
    assert.are.equal("crasher", err.child)
    assert.is_truthy(tostring(err):find('child "crasher" restarted more than 3 times in 30 s', 1, true), tostring(err))
    assert.are.equal(4, err.summary.crasher.starts)
    assert.are.equal("failed", err.summary.crasher.result)
    assert.are.equal("stopped", err.summary.steady.result)
    assert.are.equal("SIGTERM", err.summary.steady.signal)
    assert.are.equal(1, rec.count("crasher", "giveup"))
    assert.are.equal(1, rec.count("steady", "stop"))
    for _, pid in ipairs(rec.pids) do
      assert.is_false(util.alive(pid), "pid " .. pid .. " still alive")
      assert.are.same({}, members(pid))
    end
  end)

  -- A child that waits for file to name a pid, then exits: cancels ctx through on_event.
  local function watcher(file)
    return { name = "watcher", restart = "never",
      command = sh('while [ ! -s "$1" ]; do sleep 0.01; done', file) }
  end

  local function grandchild_of(file)
    return tonumber((util.readfile(file) or ""):match("%d+"))
  end

  it("on context done stops the whole group, SIGKILL after grace when SIGTERM is ignored", function()
    local file = util.tmpname()
    util.defer(function() os.remove(file) end)
    local ctx, cancel = context.with_cancel(context.background())
    local rec = recorder(function(name, event)
      if name == "watcher" and event == "done" then cancel() end
    end)
    local s = supervisor.new {
      -- the child and its grandchild both ignore SIGTERM
      { name = "stubborn", command = sh('trap "" TERM; sleep 60 & echo $! > "$1"; wait', file) },
      watcher(file),
      grace = 0.3, on_event = rec.on_event,
    }
    local summary = assert(s:run(ctx))
    local grandchild = assert(grandchild_of(file))
    local pgid = rec.pids[1]
    assert.are.equal("stopped", summary.stubborn.result)
    assert.are.equal("SIGKILL", summary.stubborn.signal)
    assert.are.equal(1, rec.count("stubborn", "stop"))
    assert.are.equal(1, rec.count("stubborn", "kill"))
    assert.is_false(util.alive(grandchild), "the grandchild survived")
    assert.are.same({}, members(pgid))
  end)

  it("gives a grandchild that ignores SIGTERM the grace, then SIGKILL, after its parent died", function()
    local file = util.tmpname()
    util.defer(function() os.remove(file) end)
    local ctx, cancel = context.with_cancel(context.background())
    local rec = recorder(function(name, event)
      if name == "watcher" and event == "done" then cancel() end
    end)
    local s = supervisor.new {
      -- the child dies on SIGTERM; its grandchild ignores it (and says so only once it does)
      { name = "parent", command = sh([[sh -c 'trap "" TERM; echo $$ > "$1"; exec sleep 60' sh "$1" & wait]], file) },
      watcher(file),
      grace = 0.3, on_event = rec.on_event,
    }
    local summary = assert(s:run(ctx))
    local grandchild = assert(grandchild_of(file))
    assert.are.equal("SIGTERM", summary.parent.signal)
    assert.are.equal(1, rec.count("parent", "kill"))
    assert.is_false(util.alive(grandchild), "the grandchild survived")
    assert.are.same({}, members(rec.pids[1]))
  end)

  it("waits grace seconds between SIGTERM and SIGKILL, and sends no SIGKILL to a child that exits in time", function()
    local file = util.tmpname()
    util.defer(function() os.remove(file) end)
    local ctx, cancel = context.with_cancel(context.background())
    local at = {}
    local rec = recorder(function(name, event)
      at[name .. ":" .. event] = tether.now()
      if name == "watcher" and event == "done" then cancel() end
    end)
    local grace = 0.4
    util.defer(function() os.remove(file .. ".polite") end)
    local s = supervisor.new {
      -- "up" once both children have their traps set (the watcher then cancels)
      { name = "stubborn",
        command = sh('trap "" TERM; while [ ! -s "$1.polite" ]; do sleep 0.01; done; echo up > "$1"; sleep 60 & wait', file) },
      -- leaves on SIGTERM after a moment, well within the grace
      { name = "polite", command = sh('trap "sleep 0.05; exit 0" TERM; echo ok > "$1.polite"; sleep 60 & wait', file) },
      watcher(file),
      grace = grace, on_event = rec.on_event,
    }
    local summary = assert(s:run(ctx))
    assert.are.equal("SIGKILL", summary.stubborn.signal)
    assert.is_true(at["stubborn:kill"] - at["stubborn:stop"] >= grace,
      ("SIGKILL %.3f s after SIGTERM, grace %g s"):format(at["stubborn:kill"] - at["stubborn:stop"], grace))
    assert.are.equal(1, rec.count("polite", "stop"))
    assert.are.equal(0, rec.count("polite", "kill"))
    assert.are.equal("stopped", summary.polite.result)
    assert.are.equal(0, summary.polite.exit_code)
  end)

  it("stops what a child left in its group when it exits, and returns once all finished for good", function()
    local file = util.tmpname()
    util.defer(function() os.remove(file) end)
    local rec = recorder()
    local s = supervisor.new {
      { name = "leaver", restart = "never", command = sh('sleep 60 & echo $! > "$1"; exit 0', file) },
      { name = "fine", restart = "on-failure", command = sh("exit 0") },
      grace = 5, on_event = rec.on_event,
    }
    local summary = assert(s:run()) -- no ctx: until every child is done
    local grandchild = assert(grandchild_of(file))
    assert.is_false(util.alive(grandchild), "the grandchild survived")
    assert.are.same({}, members(rec.pids[1]))
    for _, name in ipairs { "leaver", "fine" } do
      assert.are.equal("exited", summary[name].result)
      assert.are.equal(0, summary[name].exit_code)
      assert.are.equal(1, summary[name].starts)
      assert.are.equal(0, summary[name].restarts)
      assert.are.equal(1, rec.count(name, "done"))
    end
  end)

  it("restarts an always child that exits 0, and not an on-failure one", function()
    local ctx, cancel = context.with_cancel(context.background())
    local s = supervisor.new {
      { name = "always", restart = "always", command = sh("exit 0") },
      { name = "onfail", restart = "on-failure", command = sh("exit 0") },
      backoff = { initial = 0.01, jitter = 0 },
      on_event = function(name, event, info)
        if name == "always" and event == "start" and info.starts == 3 then cancel() end
      end,
    }
    local summary = assert(s:run(ctx))
    assert.is_true(summary.always.starts >= 3)
    assert.are.equal(1, summary.onfail.starts)
    assert.are.equal("exited", summary.onfail.result)
  end)

  it("treats a command that fails to start as a failure and keeps its error", function()
    local tries = 0
    local s = supervisor.new {
      { name = "missing", restart = "on-failure",
        command = function()
          tries = tries + 1
          if tries == 1 then return nil, errors.new("no config yet") end
          if tries == 2 then return exec.command("/nonexistent/tether-missing") end
          return exec.command("true")
        end },
      backoff = { initial = 0.01, jitter = 0 },
    }
    local summary = assert(s:run())
    assert.are.equal(3, tries)
    assert.are.equal(1, summary.missing.starts) -- only the third one started
    assert.are.equal(2, summary.missing.restarts)
    assert.are.equal("exited", summary.missing.result)
    assert.is_nil(summary.missing.err)
  end)

  it("keeps the last start error of a never child", function()
    local s = supervisor.new {
      { name = "missing", restart = "never", command = function() return exec.command("/nonexistent/tether-missing") end },
    }
    local summary = assert(s:run())
    assert.are.equal(0, summary.missing.starts)
    assert.are.equal("ENOENT", summary.missing.err.code)
  end)

  it("holds a child's cmd.timeout: the child is killed when it runs out (issue 13)", function()
    local t0 = tether.now()
    local s = supervisor.new {
      { name = "slow", restart = "never",
        command = function() return exec.command { "sh", "-c", "sleep 20", timeout = 0.3 } end },
    }
    local summary = assert(s:run())
    assert.is_true(tether.now() - t0 < 10, "the timeout did not end the child")
    assert.is_true(errors.is(summary.slow.err, errors.ErrTimeout), tostring(summary.slow.err))
  end)

  it("raises an error from on_event again, after stopping every child", function()
    local rec = recorder(function(name, event)
      if name == "b" and event == "start" then error("boom from on_event") end
    end)
    local s = supervisor.new {
      { name = "a", command = function() return exec.command("sleep", "60") end },
      { name = "b", command = function() return exec.command("sleep", "60") end },
      grace = 5, on_event = rec.on_event,
    }
    local ok, err = pcall(s.run, s, context.background())
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find("boom from on_event", 1, true), tostring(err))
    assert.are.equal(2, #rec.pids)
    for _, pid in ipairs(rec.pids) do assert.is_false(util.alive(pid)) end
    -- and it can run again
    local again = supervisor.new { { name = "t", restart = "never", command = function() return exec.command("true") end } }
    assert(again:run())
  end)

  it("raises when command returns something that is not a Cmd", function()
    local s = supervisor.new { { name = "odd", command = function() return "sleep 1" end } }
    local ok, err = pcall(s.run, s)
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find('child "odd": command must return a Cmd, got string', 1, true), tostring(err))
  end)

  it("drains a child's output into a function sink while it runs", function()
    local n = 3 * 1024 * 1024 -- far more than a pipe holds
    local out, errs = {}, {}
    local s = supervisor.new {
      { name = "chatty", restart = "never", command = function()
        local c = exec.command(util.lua(), util.child_script, "write", tostring(n))
        c.stdout = function(chunk) out[#out + 1] = chunk end
        c.stderr = errs
        return c
      end },
    }
    local summary = assert(s:run(context.with_timeout(context.background(), 60)))
    assert.are.equal("exited", summary.chatty.result)
    assert.are.equal(0, summary.chatty.exit_code)
    assert.are.equal(util.pattern("o", n), table.concat(out))
    assert.are.equal(util.pattern("e", n), table.concat(errs))
  end)

  it("does not start children when ctx is done already", function()
    local ctx, cancel = context.with_cancel(context.background())
    cancel()
    local s = supervisor.new { { name = "x", command = function() return exec.command("sleep", "60") end } }
    local summary = assert(s:run(ctx))
    assert.are.equal(0, summary.x.starts)
    assert.are.equal("stopped", summary.x.result)
  end)
end)

describe("supervisor under cqueues", function()
  local ok, cqueues = pcall(require, "cqueues")
  after_each(function() tether.set_waiter(nil) end)

  it("lets other coroutines run while it waits", function()
    if not ok then pending("lua-cqueues is not installed for " .. _VERSION) return end
    tether.set_waiter(tether.waiters.cqueues)
    local cq = cqueues.new()
    local ticks, summary, finished = 0, nil, false
    local during = {} -- ticks counted at the first child's start and exit
    cq:wrap(function()
      local ctx, cancel = context.with_cancel(context.background())
      local s = supervisor.new {
        { name = "nap", restart = "on-failure", command = sh("sleep 0.3; exit 1") },
        backoff = { initial = 0.05, jitter = 0 },
        on_event = function(_, event, info)
          if event == "start" and info.starts == 1 then during.start = ticks end
          if event == "exit" and not during.exit then during.exit = ticks end
          if event == "start" and info.starts == 2 then cancel() end
        end,
      }
      summary = assert(s:run(ctx))
      finished = true
    end)
    cq:wrap(function()
      while not finished do cqueues.sleep(0.02); ticks = ticks + 1 end
    end)
    assert(cq:loop())
    -- a supervisor blocking the loop would let no tick happen while its child slept 0.3 s
    local n = during.exit - during.start
    assert.is_true(n >= 2, ("only %d ticks while the child ran: the supervisor blocked the loop"):format(n))
    assert.are.equal(2, summary.nap.starts)
  end)
end)
