-- tether.exec: process attributes seen from outside, reaping, signal state
-- of children, Process and ProcessState.
-- Issue #2 acceptance points 10, 11, 12, 13.
local exec = require "tether.exec"
local errors = require "tether.errors"
local tether = require "tether"
local util = require "helpers.util"

local unpack = table.unpack or unpack

local function child(mode, ...)
  return exec.command(unpack(util.child(mode, ...)))
end

-- Start a `hang` child with cmd fields from opts; returns cmd, stdin writer,
-- stdout reader once it said "ready". Killed and waited after the test.
local function start_hang(opts)
  local cmd = util.reap_later(child("hang"))
  for k, v in pairs(opts or {}) do cmd[k] = v end
  local w = assert(cmd:stdin_pipe())
  local r = assert(cmd:stdout_pipe())
  assert.is_true(cmd:start())
  assert.are.equal("ready", r:read("l"))
  return cmd, w, r
end

local function finish_hang(cmd, w, r)
  assert.is_truthy(w:close())
  assert.are.equal("", r:read("a"))
  assert.is_true(cmd:wait())
end

-- Bit n (1-based signal number) of a /proc/<pid>/status hex mask.
local function has_signal(hexmask, signo)
  local n = tonumber(hexmask, 16)
  return math.floor(n / 2 ^ (signo - 1)) % 2 == 1
end

-- After each test: no unreaped child, no new fd.
local warm, mark, check = util.no_leaks()
setup(warm); before_each(mark); after_each(check)

-- Point 10.
describe("process attributes", function()
  local me = util.stat_of(util.pid())

  it("dir: the child runs in cmd.dir", function()
    local dir = util.tmpdir()
    util.defer(function() os.execute("rm -rf " .. util.shquote(dir)) end)
    local cmd = exec.command("sh", "-c", "pwd")
    cmd.dir = dir
    assert.are.equal(dir .. "\n", assert(cmd:output()))
  end)

  it("dir: nil runs the child in the parent's directory", function()
    local want = util.sh("pwd")
    assert.are.equal(want, assert(exec.command("sh", "-c", "pwd"):output()))
  end)

  it("without setpgid or setsid the child shares our group and session", function()
    local cmd, w, r = start_hang()
    local st = util.stat_of(cmd.process.pid)
    assert.are.equal(me.pgrp, st.pgrp)
    assert.are.equal(me.session, st.session)
    assert.are.equal(util.pid(), st.ppid)
    finish_hang(cmd, w, r)
  end)

  it("setpgid = true: the child's pgid equals its pid", function()
    local cmd, w, r = start_hang({ setpgid = true })
    local st = util.stat_of(cmd.process.pid)
    assert.are.equal(cmd.process.pid, st.pgrp)
    assert.are.equal(me.session, st.session)
    finish_hang(cmd, w, r)
  end)

  it("setpgid = pgid: the child joins that group", function()
    local leader, w1, r1 = start_hang({ setpgid = true })
    local member, w2, r2 = start_hang({ setpgid = leader.process.pid })
    local st = util.stat_of(member.process.pid)
    assert.are.equal(leader.process.pid, st.pgrp)
    assert.are_not.equal(member.process.pid, st.pgrp)
    finish_hang(member, w2, r2)
    finish_hang(leader, w1, r1)
  end)

  it("setsid = true: the child leads a new session and group", function()
    local cmd, w, r = start_hang({ setsid = true })
    local st = util.stat_of(cmd.process.pid)
    assert.are.equal(cmd.process.pid, st.session)
    assert.are.equal(cmd.process.pid, st.pgrp)
    finish_hang(cmd, w, r)
  end)

  local deaths = {
    { "SIGKILL", true }, { "SIGTERM", true }, { nil, false },
  }
  for _, case in ipairs(deaths) do
    local sig, dies = case[1], case[2]
    it("pdeathsig = " .. tostring(sig) .. ": the child " .. (dies and "dies" or "lives on") ..
       " when its parent exits", function()
      local script = ([[
        local exec = require "tether.exec"
        local c = exec.command("sleep", "30")
        c.pdeathsig = %s
        assert(c:start())
        io.write(c.process.pid, "\n")
        io.stdout:flush()
        os.exit(0)
      ]]):format(sig and ("%q"):format(sig) or "nil")
      local out, err, code = util.lua_run(script)
      assert.are.equal(0, code, err)
      local pid = assert(tonumber(out), "grandchild pid: " .. out)
      util.defer(function() os.execute("kill -KILL " .. pid .. " 2>/dev/null") end)
      if dies then
        assert.is_true(util.wait_gone(pid, 5), "still alive after 5 s")
      else
        util.sleep(0.3)
        assert.is_true(util.alive(pid))
      end
    end)
  end
end)

-- Point 11.
describe("reaping", function()
  it("1000 spawn+wait cycles leave no zombie and no new fd", function()
    local fds = util.fd_count()
    for i = 1, util.scale(1000) do
      local ok, err = exec.command("/bin/true"):run()
      if not ok then error("cycle " .. i .. ": " .. tostring(err)) end
    end
    assert.are.equal(0, util.zombies_of())
    assert.are.equal(fds, util.fd_count())
  end)

  it("200 cycles with three pipes each leave no zombie and no new fd", function()
    local fds = util.fd_count()
    for i = 1, util.scale(200) do
      local cmd = exec.command("sh", "-c", "cat; echo err >&2")
      cmd.stdin = "in"
      local errbuf = {}
      cmd.stderr = errbuf
      local out, err = cmd:output()
      if out ~= "in" or table.concat(errbuf) ~= "err\n" then
        error("cycle " .. i .. ": " .. tostring(out) .. " " .. tostring(err))
      end
    end
    assert.are.equal(0, util.zombies_of())
    assert.are.equal(fds, util.fd_count())
  end)

  -- Start a child and drop every reference to its Cmd; return its pid.
  local function start_and_drop(...)
    local cmd = exec.command(...)
    assert(cmd:start())
    return cmd.process.pid
  end

  it("reaps a child that exited before its Cmd was dropped, after collectgarbage() and the next tether call", function()
    local pid = start_and_drop("true")
    for _ = 1, 500 do -- until it is a zombie
      local st = util.stat_of(pid)
      if not st or st.state == "Z" then break end
      util.sleep(0.01)
    end
    assert.are.equal("Z", util.stat_of(pid).state)
    collectgarbage(); collectgarbage()
    tether.sleep(0.05)
    assert.is_nil(util.stat_of(pid), "pid " .. pid .. " not reaped")
    assert.are.equal(0, util.zombies_of())
  end)

  it("reaps a child that exits after its Cmd was dropped, at the next tether call", function()
    local gate = util.tmpname()
    os.remove(gate)
    util.defer(function() os.remove(gate) end)
    -- runs until the gate file exists (bounded: 30 s)
    local pid = start_and_drop("sh", "-c", 'i=0; while [ ! -e "$1" ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done',
      "sh", gate)
    collectgarbage(); collectgarbage()
    assert.is_true(util.alive(pid))
    util.writefile(gate, "")
    for _ = 1, 500 do -- until it exited; no tether call meanwhile
      local st = util.stat_of(pid)
      if not st or st.state == "Z" then break end
      util.sleep(0.01)
    end
    tether.sleep(0.05)
    assert.is_nil(util.stat_of(pid), "pid " .. pid .. " not reaped")
    assert.are.equal(0, util.zombies_of())
  end)

  it("kills and reaps a running child at the end of a <close> scope (Lua 5.4)", function()
    if _VERSION ~= "Lua 5.4" then pending("to-be-closed variables need Lua 5.4") return end
    local chunk = assert(load([[
      local exec = ...
      local pid
      do
        local c <close> = exec.command("sleep", "30")
        assert(c:start())
        pid = c.process.pid
      end
      return pid
    ]]))
    local pid = chunk(exec)
    assert.is_nil(util.stat_of(pid), "pid " .. tostring(pid) .. " still there")
  end)

  it("never reaps a child it did not start (no waitpid(-1))", function()
    local p = assert(io.popen("exit 7", "r"))
    for _ = 1, 500 do -- until the shell is a zombie
      if util.zombies_of() > 0 then break end
      util.sleep(0.01)
    end
    assert.are.equal(1, util.zombies_of(), "precondition: a zombie that is not tether's")
    for _ = 1, 20 do assert(exec.command("true"):run()) end
    local pid = start_and_drop("true")
    collectgarbage(); collectgarbage()
    tether.sleep(0.1)
    assert.is_nil(util.stat_of(pid))
    local ok, how, code = p:close()
    if how == nil then
      -- Lua 5.1 and LuaJIT only say whether pclose(3) could reap the shell: it could,
      -- so tether did not take it.
      assert.is_true(ok)
    else
      assert.is_nil(ok)
      assert.are.equal("exit", how)
      assert.are.equal(7, code)
    end
  end)
end)

-- Point 12.
describe("the signal state a child starts with", function()
  -- perl sets what plain Lua cannot, then execs the Lua parent: SIGPIPE and
  -- SIGINT ignored, SIGTERM blocked (both survive exec).
  local wrapper = [[perl -MPOSIX -e 'sigprocmask(SIG_BLOCK, POSIX::SigSet->new(SIGTERM)) or die; ]] ..
    [[$SIG{PIPE} = "IGNORE"; $SIG{INT} = "IGNORE"; exec @ARGV or die' --]]
  local script = [[
    local exec = require "tether.exec"
    local s = io.open("/proc/self/status"):read("*a")
    io.write("parent ", s:match("SigIgn:%s*(%x+)"), " ", s:match("SigBlk:%s*(%x+)"), "\n")
    io.write(assert(exec.command("cat", "/proc/self/status"):output()))
  ]]

  -- Check a child's /proc/self/status text: nothing ignored, blocked or
  -- caught. Standard signals (1..31) first, so the message says which part.
  local function assert_clean(status)
    for _, field in ipairs({ "SigIgn", "SigBlk", "SigCgt" }) do
      local hex = assert(status:match("\n" .. field .. ":%s*(%x+)"), field)
      assert.are.equal(0, tonumber(hex, 16) % 2 ^ 31, field .. " " .. hex .. " has standard signals")
      assert.are.equal("0000000000000000", hex, field .. " " .. hex ..
        " has real-time signals (32/33 come SIG_IGN from glibc's posix_spawn/popen)")
    end
  end

  it("has no ignored and no blocked signal even when the parent ignores and blocks some", function()
    if not os.execute("perl -MPOSIX -e 1 2>/dev/null") then pending("needs perl") return end
    local out, err, code = util.lua_run(script, { prefix = wrapper })
    assert.are.equal(0, code, err)
    local pign, pblk = out:match("^parent (%x+) (%x+)\n")
    assert(pign and pblk, "unexpected output: " .. out)
    -- The preconditions: lua.c replaces SIGINT's disposition with its own
    -- handler while it runs a script, so only SIGPIPE stays ignored.
    assert.is_true(has_signal(pign, 13), "parent ignores SIGPIPE")
    assert.is_true(has_signal(pblk, 15), "parent blocks SIGTERM")
    assert_clean(out)
  end)

  it("has no ignored and no blocked signal in a plain parent", function()
    assert_clean(assert(exec.command("cat", "/proc/self/status"):output()))
  end)
end)

-- Point 13.
describe("Process", function()
  it("signal() after the process was reaped returns ErrProcessDone", function()
    local cmd = child("exit", 0)
    assert.is_true(cmd:run())
    for _, call in ipairs({
      function(p) return p:signal("SIGTERM") end,
      function(p) return p:signal("TERM") end,
      function(p) return p:signal(15) end,
      function(p) return p:kill() end,
    }) do
      local ok, err = call(cmd.process)
      assert.is_nil(ok)
      assert.is_true(err:is(errors.ErrProcessDone))
      assert.are.equal("os: process already finished", tostring(err))
    end
  end)

  it("signal() delivers to a running child", function()
    local cmd = util.reap_later(child("hang"))
    local r = assert(cmd:stdout_pipe())
    local w = assert(cmd:stdin_pipe())
    assert.is_true(cmd:start())
    assert.are.equal("ready", r:read("l"))
    assert.is_true(cmd.process:signal("SIGTERM"))
    assert.are.equal("", r:read("a"))
    local ok, err = cmd:wait()
    assert.is_nil(ok)
    assert.are.equal("SIGTERM", err.signal)
    w:close()
  end)

  it("signal() raises for an unknown signal name", function()
    local cmd = child("exit", 0)
    assert.is_true(cmd:run())
    local ok, msg = pcall(cmd.process.signal, cmd.process, "SIGNOPE")
    assert.is_false(ok)
    assert.matches("SIGNOPE", tostring(msg), 1, true)
  end)

  it("process:wait() returns the ProcessState", function()
    local cmd = child("exit", 5)
    assert.is_true(cmd:start())
    local st = assert(cmd.process:wait())
    assert.are.equal(5, st:exit_code())
    assert.are.equal(cmd.process.pid, st:pid())
  end)

  it("cmd:wait(0) returns the status at once after process:wait() reaped a child it saw running", function()
    local cmd, w, r = start_hang()
    local ok, err = cmd:wait(0) -- running: a timeout, and the pidfd is now the one to watch
    assert.is_nil(ok)
    assert.is_true(errors.is(err, errors.ErrTimeout))
    assert.is_truthy(w:close())
    assert.are.equal("", r:read("a"))
    assert.are.equal(0, assert(cmd.process:wait()):exit_code())
    assert.is_true(cmd:wait(0)) -- the state reached through the Process counts
    assert.are.equal(0, cmd.process_state:exit_code())
  end)

  it("exec.find_process() gives a Process that can signal our child", function()
    local cmd = util.reap_later(child("hang"))
    local r = assert(cmd:stdout_pipe())
    local w = assert(cmd:stdin_pipe())
    util.defer(function() w:close() end)
    assert.is_true(cmd:start())
    assert.are.equal("ready", r:read("l"))
    local p = assert(exec.find_process(cmd.process.pid))
    assert.are.equal(cmd.process.pid, p.pid)
    assert.is_true(p:signal("SIGKILL"))
    local ok, err = cmd:wait()
    assert.is_nil(ok)
    assert.are.equal("SIGKILL", err.signal)
  end)
end)

describe("ProcessState", function()
  it("gives exit code, success, pid and Go's string", function()
    local cmd = child("exit", 7)
    assert.is_nil(cmd:run())
    local st = cmd.process_state
    assert.are.equal(7, st:exit_code())
    assert.is_false(st:success())
    assert.is_true(st:exited())
    assert.is_false(st:signaled())
    assert.is_nil(st:signal())
    assert.is_false(st:core_dumped())
    assert.are.equal(cmd.process.pid, st:pid())
    assert.are.equal("exit status 7", tostring(st))
  end)

  it("gives user and system time in seconds", function()
    local cmd = child("spin", 0.3)
    assert.is_true(cmd:run())
    local st = cmd.process_state
    local u, s = st:user_time(), st:system_time()
    assert.are.equal("number", type(u))
    assert.are.equal("number", type(s))
    assert.is_true(u >= 0 and s >= 0)
    assert.is_true(u + s >= 0.25, ("user %g + system %g < 0.25"):format(u, s))
    assert.is_true(u + s < 5, ("user %g + system %g: not seconds?"):format(u, s))
  end)

  it("gives max RSS in KiB", function()
    -- Measured from a small parent: a child spawned with CLONE_VM shares the
    -- parent's memory until execve, and Linux counts that in its max RSS, so
    -- in this (big) busted process any child shows at least our own RSS.
    local out, err, code = util.lua_run(([[
      local exec = require "tether.exec"
      local cmd = exec.command(%q, %q, "alloc", "64")
      assert(cmd:output() == tostring(64 * 1024 * 1024) .. "\n")
      io.write(string.format("%%.17g", cmd.process_state:max_rss()))
    ]]):format(util.lua(), util.child_script))
    assert.are.equal(0, code, err)
    local rss = assert(tonumber(out:match("^%d+$")), "not a whole number: " .. out)
    assert.is_true(rss >= 64 * 1024, "max_rss " .. rss .. " < 64 MiB in KiB")
    assert.is_true(rss < 4 * 64 * 1024, "max_rss " .. rss .. ": not KiB?")
  end)
end)
