-- Hosts that reap tether's children: relay spawn mode (tether.set_spawn_mode), "auto"
-- relaying when SIGCHLD is ignored, and the status of a direct child that a host reaped
-- anyway, recovered from its pidfd. Issue #12 acceptance points 1, 2 and 3.
--
-- The host is spec/helpers/reaphost.c: a thread of this process looping waitpid(-1,
-- WNOHANG), as OpenResty's workers reap on every SIGCHLD, and a switch for SIGCHLD's
-- disposition. While its thread runs, nothing here may start a child outside tether
-- (io.popen, os.execute): the thread would reap it.
local tether = require "tether"
local exec = require "tether.exec"
local errors = require "tether.errors"
local context = require "tether.context"
local core = require "tether.core"
local util = require "helpers.util"

local unpack = table.unpack or unpack

local rh = assert(package.loadlib(assert(os.getenv("TETHER_REAPHOST"), "TETHER_REAPHOST unset (run through make test)"),
  "luaopen_reaphost"))()

local function child(mode, ...)
  return exec.command(unpack(util.child(mode, ...)))
end

local kernel = (util.sh("uname -r"):gsub("%s+$", ""))
local valgrind = os.getenv("TETHER_VALGRIND") ~= nil
-- under valgrind clone(CLONE_VM) is a fork: no intermediate can share tether's memory
local relay_it = valgrind and function(name) pending(name .. " (valgrind turns clone(CLONE_VM) into a fork: no relay)") end or it

-- runs n commands `exit i % 7` one after another; each must report its exact code
local function exact_codes(n)
  for i = 1, n do
    local code = i % 7
    local cmd = child("exit", code)
    local ok, err = cmd:run()
    if code == 0 then
      assert.is_true(ok, tostring(err))
    else
      assert.is_nil(ok)
      assert.are.equal(code, err.exit_code, tostring(err))
    end
    assert.are.equal(code, cmd.process_state:exit_code())
  end
end

-- output() of 20 commands of different sizes returns their exact bytes
local function exact_outputs()
  for i = 1, 20 do
    local n = 997 * i * i
    local out, err = child("write", n):output()
    assert.are.equal(util.pattern("o", n), out, tostring(err))
  end
end

-- a started `hang` command and its pipes; it says "ready" once running
local function start_hang(fields)
  local cmd = util.reap_later(child("hang"))
  for k, v in pairs(fields or {}) do cmd[k] = v end
  local w = assert(cmd:stdin_pipe())
  local r = assert(cmd:stdout_pipe())
  assert.is_true(cmd:start())
  assert.are.equal("ready", r:read("l"))
  return cmd, w, r
end

describe("tether.set_spawn_mode", function()
  local warm, mark, check = util.no_leaks()
  setup(warm)
  before_each(mark)
  after_each(function()
    rh.stop()
    rh.sigchld("default")
    tether.set_spawn_mode("auto")
    check()
  end)

  it("takes auto, direct and relay, returns the previous mode, and raises on anything else", function()
    assert.are.equal("auto", tether.spawn_mode())
    assert.are.equal("auto", tether.set_spawn_mode("relay"))
    assert.are.equal("relay", tether.set_spawn_mode("direct"))
    assert.are.equal("direct", tether.spawn_mode())
    assert.has_error(function() tether.set_spawn_mode("fork") end,
      'bad argument #1 to \'set_spawn_mode\' ("auto", "direct" or "relay" expected, got "fork")')
    assert.has_error(function() tether.set_spawn_mode() end)
    assert.is_false(tether.in_nginx())
  end)

  relay_it("relay mode: 300 commands under a host thread looping waitpid(-1) report their exact exit codes", function()
    tether.set_spawn_mode("relay")
    rh.start()
    exact_codes(util.scale(300))
    assert.are.equal(0, rh.stop()) -- the host never saw one of them
  end)

  relay_it("relay mode: output() of 20 commands under a host thread that reaps returns their exact bytes", function()
    tether.set_spawn_mode("relay")
    rh.start()
    exact_outputs()
    assert.are.equal(0, rh.stop())
  end)

  local keeps = core.pidfd_keeps_status()
  local auto_it = keeps and it or pending
  auto_it(("auto mode: 300 commands a host thread reaps report their exact exit codes from their pidfds (kernel %s%s)")
    :format(kernel, keeps and ", which keeps exit statuses on pidfds" or ", which keeps none: skipped"), function()
    rh.start()
    exact_codes(util.scale(300))
    exact_outputs()
    assert.is_true(rh.stop() > 0, "the host thread reaped none of them: the test did not test") -- it stole, tether recovered
  end)

  it("direct mode in a host that does not reap: exact exit codes, and the command is tether's own child", function()
    tether.set_spawn_mode("direct")
    exact_codes(14)
    local cmd, w, r = start_hang()
    assert.are.equal(util.pid(), util.stat_of(cmd.process.pid).ppid)
    w:close()
    assert.are.equal("", r:read("a"))
    assert.is_true(cmd:wait())
  end)

  relay_it("relay mode: the command's parent is an intermediate whose parent is tether, gone once it is waited", function()
    tether.set_spawn_mode("relay")
    local cmd, w, r = start_hang()
    local relay = util.stat_of(cmd.process.pid).ppid
    assert.are_not.equal(util.pid(), relay)
    assert.are.equal(util.pid(), util.stat_of(relay).ppid)
    assert.are.equal(0, util.fd_count(relay)) -- it holds none of the host's fds
    w:close()
    assert.are.equal("", r:read("a"))
    assert.is_true(cmd:wait())
    assert.is_nil(util.stat_of(relay)) -- reaped
    assert.is_true(cmd.process_state:max_rss() > 0) -- the rusage came through
  end)

  for _, how in ipairs { "ignore", "nocldwait" } do
    relay_it(("auto mode with SIGCHLD %s in the host: exact exit statuses and output, never ECHILD"):format(
      how == "ignore" and "ignored" or "set to SA_NOCLDWAIT"), function()
      assert.are.equal("default", rh.sigchld(how))
      exact_codes(util.scale(70))
      exact_outputs()
      local cmd, w, r = start_hang()
      assert.are_not.equal(util.pid(), util.stat_of(cmd.process.pid).ppid) -- auto relayed
      w:close()
      assert.are.equal("", r:read("a"))
      assert.is_true(cmd:wait())
      local ok, err = child("stderr", "bye", 3):run()
      assert.is_nil(ok)
      assert.are.equal(3, err.exit_code, tostring(err))
    end)
  end

  relay_it("relay mode: SIGKILL to the intermediate kills the command and wait says so", function()
    tether.set_spawn_mode("relay")
    local cmd, w, r = start_hang()
    local pid = cmd.process.pid
    local relay = util.stat_of(pid).ppid
    util.sh("kill -KILL " .. relay)
    local ok, err = cmd:wait()
    assert.is_nil(ok)
    assert.are.equal("EOWNERDEAD", err.code, tostring(err))
    assert.matches("wait " .. pid .. ": the relay process holding it was killed by SIGKILL", tostring(err), 1, true)
    assert.is_true(util.wait_gone(pid, 10), "the command still runs")
    assert.is_nil(util.stat_of(relay))
    -- the Process stays in that state: no signal reaches a pid that may be reused
    local ok2, err2 = cmd.process:signal("TERM")
    assert.is_nil(ok2)
    assert.is_true(errors.is(err2, errors.ErrProcessDone))
    w:close()
    r:close()
  end)

  for _, case in ipairs { { "SIGTERM", true }, { nil, false } } do
    local sig, dies = case[1], case[2]
    relay_it(("relay mode: pdeathsig = %s: the command %s when the thread that started it exits"):format(
      tostring(sig), dies and "dies" or "lives on"), function()
      local script = ([[
        local tether = require "tether"
        local exec = require "tether.exec"
        tether.set_spawn_mode("relay")
        local c = exec.command("sleep", "30")
        c.pdeathsig = %s
        assert(c:start())
        io.write(c.process.pid, "\n")
        io.stdout:flush()
        os.exit(0)
      ]]):format(sig and ("%q"):format(sig) or "nil")
      local out, err, code = util.lua_run(script)
      assert.are.equal(0, code, err)
      local pid = assert(tonumber(out), "command pid: " .. out)
      util.defer(function() util.sh("kill -KILL " .. pid .. " 2>/dev/null") end)
      if dies then
        assert.is_true(util.wait_gone(pid, 5), "still alive after 5 s")
      else
        util.sleep(0.3)
        assert.is_true(util.alive(pid))
        local relay = util.stat_of(pid).ppid
        assert.are.equal(0, util.fd_count(relay)) -- the intermediate lives on with it, holding no fd
        util.sh("kill -KILL " .. pid)
        assert.is_true(util.wait_gone(relay, 5), "the intermediate outlived its command")
      end
    end)
  end

  relay_it("relay mode: a dropped Cmd's intermediate is reaped at a tether call once its command exits", function()
    tether.set_spawn_mode("relay")
    local gate = util.tmpname()
    os.remove(gate)
    util.defer(function() os.remove(gate) end)
    local pid, relay
    do
      local cmd = exec.command("sh", "-c", 'i=0; while [ ! -e "$1" ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done',
        "sh", gate)
      assert.is_true(cmd:start())
      pid = cmd.process.pid
      relay = util.stat_of(pid).ppid
    end
    collectgarbage(); collectgarbage()
    assert.is_true(util.alive(pid))
    util.writefile(gate, "")
    for _ = 1, 500 do -- until the intermediate exited (a zombie of ours); no tether call meanwhile
      local st = util.stat_of(relay)
      if not st or st.state == "Z" then break end
      util.sleep(0.01)
    end
    assert.are.equal("Z", util.stat_of(relay).state)
    tether.sleep(0.01)
    assert.is_nil(util.stat_of(relay), "intermediate " .. relay .. " not reaped")
    assert.are.equal(0, util.zombies_of())
  end)

  -- Every Cmd field behaves the same in both modes (spec files like exec_spec.lua also run
  -- whole under relay mode: see docs/internals.md).
  for _, mode in ipairs { "direct", "relay" } do
    local mode_it = mode == "relay" and relay_it or it
    mode_it(mode .. " mode: dir, extra_files, env, setpgid, setsid, uid/gid and failed steps", function()
      tether.set_spawn_mode(mode)
      local dir = util.tmpdir()
      util.defer(function() os.remove(dir) end) -- runs last (deferred first)
      local function cmd_of(t)
        local c = exec.command(unpack(t))
        for k, v in pairs(t) do if type(k) == "string" then c[k] = v end end
        return c
      end
      assert.are.equal(dir .. "\n", assert(cmd_of { "pwd", dir = dir }:output()))
      local f = assert(io.open(dir .. "/out", "w"))
      util.defer(function() os.remove(dir .. "/out") end)
      local cmd = cmd_of { "sh", "-c", "echo $X >&3", extra_files = { f }, env = { X = "three" } }
      assert.is_true(cmd:run())
      f:close()
      assert.are.equal("three\n", util.readfile(dir .. "/out"))
      assert.are.equal("65534 65534\n", assert(cmd_of { "sh", "-c", 'echo "$(id -u) $(id -g)"',
        uid = 65534, gid = 65534 }:output()))
      local c1, w1, r1 = start_hang { setpgid = true }
      local st = util.stat_of(c1.process.pid)
      assert.are.equal(c1.process.pid, st.pgrp)
      local c2, w2, r2 = start_hang { setsid = true }
      assert.are.equal(c2.process.pid, util.stat_of(c2.process.pid).session)
      for _, p in ipairs { { c1, w1, r1 }, { c2, w2, r2 } } do
        p[2]:close()
        assert.are.equal("", p[3]:read("a"))
        assert.is_true(p[1]:wait())
      end
      local ok, err = cmd_of { "true", dir = dir .. "/nope" }:run()
      assert.is_nil(ok)
      assert.are.equal("chdir", err.step)
      assert.are.equal("ENOENT", err.code)
      ok, err = exec.command(dir .. "/nope"):run()
      assert.is_nil(ok)
      assert.are.equal("exec", err.step)
      ok, err = cmd_of { "true", uid = 65534, groups = { 0 }, dir = "/" }:run()
      assert.is_true(ok, tostring(err))
    end)

    mode_it(mode .. " mode: command_context cancels, and wait_delay bounds a grandchild holding the pipe", function()
      tether.set_spawn_mode(mode)
      local ctx, cancel = context.with_cancel(context.background())
      local cmd = exec.command_context(ctx, unpack(util.child("hang")))
      local r = assert(cmd:stdout_pipe())
      local w = assert(cmd:stdin_pipe())
      assert.is_true(cmd:start())
      assert.are.equal("ready", r:read("l"))
      cancel()
      local ok, err = cmd:wait()
      assert.is_nil(ok)
      assert.is_true(errors.is(err, context.Canceled), tostring(err))
      assert.are.equal("SIGKILL", cmd.process_state:signal())
      w:close()
      -- the grandchild (sleep) keeps stdout open after sh exited: wait_delay cuts it off
      local c2 = exec.command("sh", "-c", "sleep 30 & echo $!")
      c2.wait_delay = 0.2
      local out = ""
      c2.stdout = function(chunk) out = out .. chunk end
      local ok2, err2 = c2:run()
      local grandchild = tonumber(out:match("%d+"))
      if grandchild then util.sh("kill -KILL " .. grandchild) end
      assert.is_nil(ok2)
      assert.is_true(errors.is(err2, errors.ErrWaitDelay), tostring(err2))
      assert.are.equal(0, c2.process_state:exit_code())
    end)
  end
end)
