-- reaper_spec.lua: tether.reaper. With reaper mode on, orphans re-parented to this
-- process are reaped, while tether's own children still give their true statuses to
-- Process:wait (never ECHILD); nothing is left as a zombie; nothing is reaped while it
-- is off. Observed from outside through /proc (zombies, parents, the eventfd's count).
local util = require "helpers.util"
local tether = require "tether"
local exec = require "tether.exec"
local errors = require "tether.errors"
local reaper = require "tether.reaper"

local me = util.pid()

-- Our children that are not tether's still-running commands: orphans re-parented to us.
local function children() return util.children_of(me) end

-- Waits (bounded, through tether so the reaper runs) until this process has no child
-- left, then turns reaper mode off.
local function settle()
  if reaper.enabled() then
    local deadline = tether.now() + 30
    while #children() > 0 and tether.now() < deadline do tether.sleep(0.05) end
  end
  reaper.disable()
end

local function sigcgt_has(sig)
  local mask = tonumber(util.status_of(me).SigCgt, 16)
  return math.floor(mask / 2 ^ (sig - 1)) % 2 == 1
end

-- The eventfd count the reaper's pollfd holds (read from /proc, without draining it).
local function eventfd_count(fd)
  local s = util.readfile("/proc/" .. me .. "/fdinfo/" .. fd) or ""
  return tonumber(s:match("eventfd%-count:%s*(%x+)") or "", 16)
end

-- Runs sh -c script through tether and returns the pid it prints (an orphan-to-be).
local function orphan_pid(script)
  local out = assert(exec.command("sh", "-c", script):output())
  return tonumber(out:match("%d+"))
end

-- Waits without tether (so the reaper cannot run) until pid is a zombie.
local function wait_zombie(pid)
  local deadline = os.time() + 20
  while true do
    local st = util.stat_of(pid)
    if st and st.state == "Z" then return true end
    if not st or os.time() > deadline then return false end
    util.sleep(0.02)
  end
end

local warm, mark, check = util.no_leaks(function()
  assert(reaper.enable()); reaper.disable() -- the wake-up eventfd and the signal pipe stay open
end)
setup(warm)
before_each(mark)
after_each(function()
  settle()
  check()
end)

describe("tether.reaper", function()
  it("enable checks its argument", function()
    assert.has_error(function() reaper.enable("yes") end,
      "bad argument #1 to 'enable' (table or nil expected, got string)")
    assert.has_error(function() reaper.enable { subreaper = 1 } end,
      "reaper.enable: opts.subreaper must be a boolean")
    assert.is_false(reaper.enabled())
  end)

  it("is reachable as tether.reaper", function()
    assert.are.equal(reaper, tether.reaper)
  end)

  it("enable makes this process the subreaper and catches SIGCHLD; disable undoes both", function()
    local caught_before = sigcgt_has(17)
    assert.is_true(reaper.enable())
    assert.is_true(reaper.enable()) -- twice is harmless
    assert.is_true(reaper.enabled())
    assert.is_true(sigcgt_has(17))
    local st = reaper.stats()
    assert.is_true(st.enabled)
    assert.is_true(st.subreaper)
    local pid = orphan_pid("sleep 0.3 </dev/null >/dev/null 2>&1 & echo $!")
    assert.are.equal(me, util.stat_of(pid).ppid, "the orphan was re-parented to us")
    settle()
    assert.is_false(reaper.enabled())
    assert.are.equal(caught_before, sigcgt_has(17))
    assert.is_false(reaper.stats().subreaper)
    local pid2 = orphan_pid("sleep 0.3 </dev/null >/dev/null 2>&1 & echo $!")
    local st2 = util.stat_of(pid2)
    assert.are_not.equal(me, st2 and st2.ppid)
  end)

  it("enable{subreaper=false} leaves the subreaper flag alone", function()
    assert.is_true(reaper.enable { subreaper = false })
    assert.is_false(reaper.stats().subreaper)
    local pid = orphan_pid("sleep 0.2 </dev/null >/dev/null 2>&1 & echo $!")
    local st = util.stat_of(pid)
    assert.are_not.equal(me, st and st.ppid)
  end)

  it("keeps the status of a child it reaped for Process:wait (exit code, signal, rusage)", function()
    assert(reaper.enable())
    -- Both exit once the file exists: after both started (a spawn reaps too).
    local go = util.tmpname()
    os.remove(go)
    local gate = "while [ ! -e " .. util.shquote(go) .. " ]; do sleep 0.01; done; "
    local a = exec.command("sh", "-c", gate .. "exit 42")
    local b = exec.command("sh", "-c", gate .. "kill -TERM $$")
    assert(a:start()); assert(b:start())
    util.writefile(go, "")
    -- Both are zombies now, and no tether call ran: then the reaper takes them first.
    assert.is_true(wait_zombie(a.process.pid))
    assert.is_true(wait_zombie(b.process.pid))
    local stashed = reaper.stats().stashed
    assert.are.equal(0, reaper.reap(), "tether's own children are not counted as orphans")
    assert.are.equal(stashed + 2, reaper.stats().stashed)
    assert.is_nil(util.stat_of(a.process.pid), "reaped: gone from /proc")
    assert.is_nil(util.stat_of(b.process.pid))
    -- The pidfd stays pollable; the process is done for signals.
    assert.are.equal(1, (tether.wait_any({ a.process }, 5)))
    local ok, err = a.process:signal("TERM")
    assert.is_nil(ok)
    assert.is_true(errors.is(err, errors.ErrProcessDone))
    ok, err = a:wait()
    assert.is_nil(ok)
    assert.are.equal(42, err.exit_code)
    assert.are.equal("number", type(a.process_state:user_time()))
    ok, err = b:wait()
    assert.is_nil(ok)
    assert.are.equal("SIGTERM", err.signal)
    assert.are.equal(0, util.zombies_of())
    os.remove(go)
  end)

  it("gives tether's children started before and after enable their true statuses among many orphans", function()
    local before, after = {}, {}
    local function own(list, i)
      local script
      if i % 3 == 0 then script = "sleep 0.2; kill -USR1 $$"
      elseif i % 3 == 1 then script = "sleep 0.2 </dev/null >/dev/null 2>&1 & sleep 0.2; exit " .. (i % 256)
      else script = "(sleep 0.1 </dev/null >/dev/null 2>&1 &); exit " .. (i % 256) end
      local c = exec.command("sh", "-c", script)
      assert(c:start())
      util.reap_later(c)
      list[#list + 1] = { cmd = c, i = i }
    end
    for i = 1, 15 do own(before, i) end
    assert(reaper.enable())
    local reaped = reaper.stats().reaped
    local orphans = 0
    for i = 16, 45 do
      own(after, i)
      -- double-forkers: each leaves an orphan that dies a moment later
      assert(exec.command("sh", "-c", "sleep 0.1 </dev/null >/dev/null 2>&1 & exit 0"):run())
      orphans = orphans + 1
    end
    for i = 1, 20 do -- a command exiting at the same moment as its orphan (if sh did not
      -- reap it first), waited at once
      local ok, err = exec.command("sh", "-c", "sleep 0.05 </dev/null >/dev/null 2>&1 & sleep 0.05; exit 9"):run()
      assert.is_nil(ok, "run " .. i)
      assert.are.equal(9, err.exit_code, tostring(err))
    end
    for _, list in ipairs { before, after } do
      for _, e in ipairs(list) do
        local ok, err = e.cmd:wait()
        if e.i % 3 == 0 then
          assert.is_nil(ok)
          assert.are.equal("SIGUSR1", err.signal, "child " .. e.i .. ": " .. tostring(err))
        elseif e.i % 256 == 0 then
          assert.is_true(ok, tostring(err))
        else
          assert.is_nil(ok)
          assert.are.equal(e.i % 256, err.exit_code, "child " .. e.i .. ": " .. tostring(err))
        end
      end
    end
    local deadline = tether.now() + 30
    while #children() > 0 and tether.now() < deadline do tether.sleep(0.05) end
    local left = {}
    for _, c in ipairs(children()) do
      left[#left + 1] = c.pid .. " " .. c.state .. " " .. (util.readfile("/proc/" .. c.pid .. "/cmdline") or ""):gsub("%z", " ")
    end
    assert.are.same({}, left)
    assert.are.equal(0, util.zombies_of())
    assert.is_true(reaper.stats().reaped - reaped >= orphans, "every sure orphan was reaped by the reaper")
  end)

  it("reaps orphans while a plain cmd:wait() blocks", function()
    assert(reaper.enable())
    local pid = orphan_pid("sleep 0.2 </dev/null >/dev/null 2>&1 & echo $!")
    assert.are.equal(me, util.stat_of(pid).ppid)
    -- A command that ends only after the orphan died (or turned zombie), plus a margin.
    local waiter = exec.command("sh", "-c", ("while [ -e /proc/%d ] && ! grep -q '^[0-9]* ([^)]*) Z' /proc/%d/stat; " ..
      "do sleep 0.02; done; sleep 0.3"):format(pid, pid))
    assert(waiter:run())
    -- No tether call since: the reaping happened during the wait.
    assert.is_nil(util.stat_of(pid), "the orphan was reaped during the wait")
    assert.are.equal(0, util.zombies_of())
  end)

  it("reaps orphans while tether.sleep sleeps", function()
    assert(reaper.enable())
    local pid = orphan_pid("sleep 0.1 </dev/null >/dev/null 2>&1 & echo $!")
    local deadline = os.time() + 20
    while util.stat_of(pid) and os.time() < deadline do tether.sleep(0.2) end
    assert.is_nil(util.stat_of(pid))
    assert.are.equal(0, util.zombies_of())
  end)

  it("pollfd() becomes readable when an orphan exits, and reap() reaps it", function()
    assert(reaper.enable())
    local fd = reaper.pollfd()
    assert.is_true(fd >= 0)
    assert.are.equal("r", reaper.events())
    assert.is_nil(reaper.timeout())
    local go = util.tmpname()
    os.remove(go)
    -- the orphan (a subshell) exits once the file exists
    local pid = orphan_pid("(while [ ! -e " .. util.shquote(go) .. " ]; do sleep 0.01; done) " ..
      "</dev/null >/dev/null 2>&1 & echo $!")
    reaper.reap()
    assert.are.equal(0, eventfd_count(fd))
    util.writefile(go, "")
    assert.is_true(wait_zombie(pid))
    assert.is_true(eventfd_count(fd) >= 1, "readable after SIGCHLD")
    assert.are.equal(1, reaper.reap())
    assert.are.equal(0, eventfd_count(fd))
    assert.is_nil(util.stat_of(pid))
    os.remove(go)
  end)

  it("a wait_any on a process does not spin while orphans exit meanwhile", function()
    assert(reaper.enable())
    local core = require "tether.core"
    local calls = 0
    tether.set_waiter(function(fd, ev, timeout)
      calls = calls + 1
      core.poll(fd, ev, timeout and core.now() + timeout)
    end)
    local c = exec.command("sh", "-c", "for i in 1 2 3 4 5; do (sleep 0.05 </dev/null >/dev/null 2>&1 &); done; sleep 0.6")
    assert(c:start())
    util.reap_later(c)
    local ok, idx = pcall(tether.wait_any, { c.process }, 30)
    tether.set_waiter(nil)
    assert.is_true(ok, tostring(idx))
    assert.are.equal(1, idx)
    assert(c:wait())
    -- a few wake-ups per SIGCHLD at most; a pipe left readable would wake it without end
    assert.is_true(calls < 60, calls .. " wake-ups")
  end)

  it("never reaps a child that is not tether's while it is off", function()
    assert.is_false(reaper.enabled())
    local p = io.popen("exit 0")
    local pid
    for _, c in ipairs(children()) do pid = c.pid end
    assert.truthy(pid)
    local deadline = os.time() + 20
    while util.stat_of(pid).state ~= "Z" and os.time() < deadline do util.sleep(0.02) end
    assert.are.equal(0, reaper.reap())
    tether.sleep(0.01)
    assert.are.equal("Z", util.stat_of(pid).state, "still waiting for its own parent's wait")
    p:close()
    assert.is_nil(util.stat_of(pid))
  end)

  it("keeps the status of a child found with find_process", function()
    assert(reaper.enable())
    local f = io.popen("exit 3")
    local pid
    for _, c in ipairs(children()) do pid = c.pid end
    local proc = assert(exec.find_process(pid))
    assert.is_true(wait_zombie(pid))
    reaper.reap()
    assert.is_nil(util.stat_of(pid))
    local st = assert(proc:wait(5))
    assert.are.equal(3, st:exit_code())
    f:close() -- its own wait finds nothing left: no matter
  end)

  it("reaps processes whose Lua objects were collected", function()
    assert(reaper.enable())
    local pid
    do
      local c = exec.command("sh", "-c", "sleep 0.1")
      assert(c:start())
      pid = c.process.pid
    end
    collectgarbage(); collectgarbage()
    local deadline = os.time() + 20
    while util.stat_of(pid) and os.time() < deadline do tether.sleep(0.05) end
    assert.is_nil(util.stat_of(pid))
  end)
end)
