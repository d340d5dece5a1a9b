-- tether.exec's engine: timeouts that hold, pipes bounded by the command's context,
-- sink errors, blocking mode of handed fds, Go's behaviours, untouched sentinels,
-- messages that name the command; the table form of command. Issue 13 (and issue 15's
-- table form and tostring).
local exec = require "tether.exec"
local errors = require "tether.errors"
local context = require "tether.context"
local core = require "tether.core"
local tether = require "tether"
local util = require "helpers.util"

local unpack = table.unpack or unpack
local SIG = core.signals
local bg = context.background()
local O_NONBLOCK = tonumber("4000", 8)
-- Bounds on hangs (not timings): valgrind runs the interpreter, and so every spawn, slower.
local SLACK = os.getenv("TETHER_VALGRIND") and 4 or 1

-- The pids of live (not zombie) processes in process group pgid.
local function live_in_group(pgid)
  local out, code = util.sh("pgrep -g " .. pgid .. " -r R,S,D,T,t,I")
  local pids = {}
  for p in out:gmatch("%d+") do pids[#pids + 1] = tonumber(p) end
  return pids, code
end

-- Waits (bounded) until group pgid has no live member; returns the pids left.
local function group_gone(pgid)
  local pids, code
  for _ = 1, 250 do
    pids, code = live_in_group(pgid)
    if code == 1 then return {} end
    tether.sleep(0.02)
  end
  return pids
end

local function flags_of(pid, fd)
  local info = util.readfile("/proc/" .. pid .. "/fdinfo/" .. fd) or ""
  return tonumber(info:match("flags:%s*(%d+)") or "0", 8)
end

local function has_flag(flags, bit) return math.floor(flags / bit) % 2 == 1 end

local warm, mark, check = util.no_leaks()
setup(warm); before_each(mark); after_each(check)

-- Point 1.
describe("a command's context", function()
  it("stops a read of its stdout_pipe at the deadline, while a grandchild holds the pipe", function()
    local ctx, cancel = context.with_timeout(bg, 0.3)
    util.defer(cancel)
    -- sh prints its background sleep's pid on stderr; the sleep keeps stdout open
    local cmd = util.reap_later(exec.command_context(ctx, "sh", "-c",
      "sleep 5 2>/dev/null & echo $! >&2; wait; echo late"))
    local out = assert(cmd:stdout_pipe())
    local errp = assert(cmd:stderr_pipe())
    assert.is_true(cmd:start())
    local grandchild = tonumber(errp:read("l", 10))
    util.defer(function() core.kill(grandchild, SIG.SIGKILL) end)
    local t0 = tether.now()
    local data, err = out:read("a")
    local took = tether.now() - t0
    assert.is_nil(data)
    assert.is_true(errors.is(err, context.DeadlineExceeded), tostring(err))
    assert.is_true(took < 3 * SLACK, ("read returned after %.2f s (the sleep lasts 5 s)"):format(took))
    -- the child was killed at the deadline (a zombie until wait), and wait reaps it
    assert.is_true(util.wait_gone(cmd.process.pid, SLACK), "child still running")
    local ok, werr = cmd:wait()
    assert.is_nil(ok)
    assert.are.equal("SIGKILL", werr.signal)
  end)

  it("also stops a write to its stdin_pipe that the child never reads", function()
    local ctx, cancel = context.with_timeout(bg, 0.3)
    util.defer(cancel)
    local cmd = util.reap_later(exec.command_context(ctx, "sleep", "5"))
    local w = assert(cmd:stdin_pipe())
    assert.is_true(cmd:start())
    local ok, err = w:write(string.rep("x", 4 * 1024 * 1024))
    assert.is_nil(ok)
    assert.is_true(errors.is(err, context.DeadlineExceeded), tostring(err))
    cmd:wait()
  end)

  it("each pipe call takes its own ctx: a write bounded by a context", function()
    local cmd = util.reap_later(exec.command("sleep", "5"))
    local w = assert(cmd:stdin_pipe())
    assert.is_true(cmd:start())
    local ctx, cancel = context.with_timeout(bg, 0.2)
    util.defer(cancel)
    local ok, err = w:write(string.rep("x", 4 * 1024 * 1024), ctx)
    assert.is_nil(ok)
    assert.is_true(errors.is(err, context.DeadlineExceeded), tostring(err))
    cmd.process:kill()
    cmd:wait()
  end)
end)

-- Point 2.
describe("cmd.timeout", function()
  it("cannot hang: the whole tree is killed, the error names the command and the time", function()
    local cmd = util.reap_later(exec.command { "sh", "-c", "sleep 30 & sleep 30; echo x", timeout = 0.5 })
    local t0 = tether.now()
    local out, err = cmd:output()
    local took = tether.now() - t0
    assert.is_nil(out)
    assert.is_true(errors.is(err, errors.ErrTimeout), tostring(err))
    assert.is_truthy(tostring(err):find("sh -c 'sleep 30 & sleep 30; echo x'", 1, true), tostring(err))
    assert.is_truthy(tostring(err):find("0.5 s", 1, true), tostring(err))
    assert.is_true(took < 2.5 * SLACK, ("output() returned after %.2f s"):format(took))
    -- the child led its own group (set up for the timeout), and nothing of it lives on
    local pgid = cmd.process.pid
    util.defer(function() core.kill(-pgid, SIG.SIGKILL) end)
    assert.are.same({}, group_gone(pgid))
  end)

  it("a command that finishes in time is not touched", function()
    local out, err = exec.command { "sh", "-c", "echo fine", timeout = 30 }:output()
    assert.are.equal("fine\n", out, tostring(err))
  end)

  it("bounds a pipe read too when the user kept the child in tether's group (setpgid = false)", function()
    local cmd = util.reap_later(exec.command { "sh", "-c", "sleep 5 2>/dev/null & echo $! >&2; wait",
      timeout = 0.3, setpgid = false })
    local out = assert(cmd:stdout_pipe())
    local errp = assert(cmd:stderr_pipe())
    assert.is_true(cmd:start())
    local grandchild = tonumber(errp:read("l", 10))
    util.defer(function() core.kill(grandchild, SIG.SIGKILL) end)
    local t0 = tether.now()
    local data, err = out:read("a")
    assert.is_nil(data)
    assert.is_true(errors.is(err, errors.ErrTimeout), tostring(err))
    assert.is_true(tether.now() - t0 < 3 * SLACK)
    local ok, werr = cmd:wait()
    assert.is_nil(ok)
    assert.is_true(errors.is(werr, errors.ErrTimeout), tostring(werr))
  end)

  it("raises for a timeout that is not a positive number", function()
    for _, bad in ipairs { 0, -1, "1", 0 / 0 } do
      local cmd = exec.command("true")
      cmd.timeout = bad
      assert.has_error(function() cmd:start() end, "exec: cmd.timeout must be a positive number of seconds")
    end
  end)
end)

-- Point 3.
describe("a sink that raises", function()
  it("ends the command cleanly: run returns nil, err with the message, yes is reaped", function()
    local cmd = exec.command("yes")
    local calls = 0
    cmd.stdout = function() calls = calls + 1; error("sink boom") end
    local ok, err = cmd:run()
    assert.is_nil(ok)
    assert.are.equal(1, calls)
    assert.is_truthy(tostring(err):find("sink boom", 1, true), tostring(err))
    assert.is_truthy(tostring(err):find('"yes"', 1, true), tostring(err))
    assert.is_not_nil(cmd.process_state) -- reaped
    assert.is_false(util.alive(cmd.process.pid))
    local again, aerr = cmd:wait() -- a later wait reports, never raises
    assert.is_nil(again)
    assert.is_truthy(tostring(aerr):find("already called", 1, true))
  end)

  it("keeps an error object it raised reachable through is()", function()
    local mine = errors.new("my sink failed")
    local cmd = exec.command("yes")
    cmd.stderr = "null"
    cmd.stdout = function() error(mine) end
    local ok, err = cmd:run()
    assert.is_nil(ok)
    assert.is_true(errors.is(err, mine))
  end)
end)

-- Point 4.
describe("an fd handed to a child", function()
  it("arrives in blocking mode: a Reader as stdin (fdinfo, cat reads data 0.3 s late)", function()
    local producer = util.reap_later(exec.command("sh", "-c", "sleep 0.3; echo late"))
    local r = assert(producer:stdout_pipe())
    assert.is_true(producer:start())
    local consumer = exec.command("sh", "-c", "grep flags /proc/self/fdinfo/0; cat")
    consumer.stdin = r
    local out, err = consumer:output()
    assert.is_not_nil(out, tostring(err))
    local flags = tonumber(out:match("flags:%s*(%d+)"), 8)
    assert.is_false(has_flag(flags, O_NONBLOCK), out)
    assert.is_truthy(out:find("\nlate\n", 1, true), out)
    -- tether's own end stays non-blocking
    assert.is_true(has_flag(flags_of(util.pid(), r:pollfd()), O_NONBLOCK))
    r:close()
    assert.is_true(producer:wait())
  end)

  it("arrives in blocking mode: a Writer as stdout (head -c 1000000 /dev/zero succeeds)", function()
    local consumer = util.reap_later(exec.command("sh", "-c", "sleep 0.2; wc -c"))
    local w = assert(consumer:stdin_pipe())
    local counted = {}
    consumer.stdout = counted
    assert.is_true(consumer:start())
    local head = exec.command("head", "-c", "1000000", "/dev/zero")
    head.stdout = w
    local ok, err = head:run()
    assert.is_true(ok, tostring(err))
    assert.is_true(has_flag(flags_of(util.pid(), w:pollfd()), O_NONBLOCK))
    w:close()
    assert.is_true(consumer:wait())
    assert.are.equal("1000000", table.concat(counted):match("%d+"))
  end)
end)

-- Point 5.
describe("Go's behaviours", function()
  it('an empty name fails start with "exec: no command"', function()
    local cmd = exec.command("")
    local ok, err = cmd:start()
    assert.is_nil(ok)
    assert.are.equal("exec: no command", tostring(err))
    assert.is_nil(cmd.process)
  end)

  -- env(1) prints the environment it got (no shell in between to set PWD itself).
  local function pwd_of(cmd)
    local out, err = cmd:output()
    assert(out, tostring(err))
    return out:match("\nPWD=([^\n]*)") or out:match("^PWD=([^\n]*)")
  end

  it("PWD is the absolute dir when env is nil (dir ..)", function()
    local cwd = assert(core.getcwd())
    local parent = cwd:match("^(.*)/[^/]+$")
    if parent == "" then parent = "/" end
    local cmd = exec.command("env")
    cmd.dir = ".."
    assert.are.equal(parent, pwd_of(cmd))
    local found
    for _, kv in ipairs(cmd:environ()) do if kv:sub(1, 4) == "PWD=" then found = kv end end
    assert.are.equal("PWD=" .. parent, found)
  end)

  it("PWD is left alone when env is set", function()
    local cmd = exec.command("env")
    cmd.dir = ".."
    cmd.env = { "PATH=/usr/bin:/bin" }
    assert.is_nil(pwd_of(cmd))
  end)

  it("cancel = false: the context being done interrupts nothing; the command's own result", function()
    local ctx, cancel = context.with_timeout(bg, 0.1)
    util.defer(cancel)
    local cmd = exec.command_context(ctx, { "sh", "-c", "sleep 0.5; echo done", cancel = false })
    local out, err = cmd:output()
    assert.are.equal("done\n", out, tostring(err))
    assert.is_true(ctx:done())
  end)

  it("cancel = false with wait_delay: the process is killed once wait_delay has run out", function()
    local ctx, cancel = context.with_timeout(bg, 0.1)
    util.defer(cancel)
    local cmd = util.reap_later(exec.command_context(ctx, { "sleep", "10", cancel = false, wait_delay = 0.2 }))
    local t0 = tether.now()
    local ok, err = cmd:run()
    assert.is_nil(ok)
    assert.are.equal("SIGKILL", err.signal)
    assert.is_true(tether.now() - t0 < 5)
  end)

  it("cancel = false needs no command_context", function()
    local cmd = exec.command("true")
    cmd.cancel = false
    assert.is_true(cmd:run())
  end)

  it("with_timeout_cause and with_deadline_cause: cause once the deadline passes, err DeadlineExceeded", function()
    local why = errors.new("too slow")
    local ctx, cancel = context.with_timeout_cause(bg, 0.05, why)
    util.defer(cancel)
    assert.is_true(ctx:wait(10))
    assert.are.equal(context.DeadlineExceeded, ctx:err())
    assert.are.equal(why, context.cause(ctx))
    local ctx2, cancel2 = context.with_deadline_cause(bg, tether.now() + 0.05, "late")
    util.defer(cancel2)
    assert.is_true(ctx2:wait(10))
    assert.are.equal(context.DeadlineExceeded, ctx2:err())
    assert.are.equal("late", context.cause(ctx2))
    -- cancelled first: the cause is Canceled
    local ctx3, cancel3 = context.with_timeout_cause(bg, 30, why)
    cancel3()
    assert.are.equal(context.Canceled, context.cause(ctx3))
    -- a parent's earlier deadline brings the parent's cause
    local p, pc = context.with_timeout(bg, 0.05)
    util.defer(pc)
    local ctx4, cancel4 = context.with_timeout_cause(p, 30, why)
    util.defer(cancel4)
    assert.is_true(ctx4:wait(10))
    assert.are.equal(context.DeadlineExceeded, context.cause(ctx4))
    assert.has_error(function() context.with_timeout_cause(bg, "x") end)
    assert.has_error(function() context.with_deadline_cause(42, 1) end)
  end)
end)

-- Point 6.
describe("shared sentinels", function()
  local function clean(what, e)
    assert.is_nil(rawget(e, "index"), what .. " got an index")
    assert.is_nil(rawget(e, "states"), what .. " got states")
  end

  it("carry no index or states after failing and cancelled pipelines", function()
    -- a stage whose context is done before it starts
    local done, cancel = context.with_cancel(bg)
    cancel()
    local states, err = exec.pipeline { exec.command("true"), exec.command_context(done, "cat") }
    assert.is_nil(states)
    assert.is_true(errors.is(err, context.Canceled))
    assert.are.equal(2, err.index)
    local late = context.with_timeout(bg, 0)
    local _
    _, err = exec.pipeline { exec.command_context(late, "true") }
    assert.is_true(errors.is(err, context.DeadlineExceeded))
    assert.are.equal(1, err.index)
    -- a stage cut off by wait_delay (a grandchild holds its stdout)
    local last = exec.command("sh", "-c", "sleep 3 & echo hi")
    last.stdout, last.wait_delay, last.setpgid = {}, 0.1, true
    local _
    _, err = exec.pipeline { exec.command("true"), last }
    util.defer(function() core.kill(-last.process.pid, SIG.SIGKILL) end)
    assert.is_true(errors.is(err, errors.ErrWaitDelay), tostring(err))
    assert.are.equal(2, err.index)
    -- a stage cancelled while it runs
    local ctx, cancel2 = context.with_timeout(bg, 0.1)
    util.defer(cancel2)
    local _
    _, err = exec.pipeline { exec.command_context(ctx, "sleep", "10"), exec.command("cat") }
    assert.is_true(errors.is(err, context.DeadlineExceeded), tostring(err))
    clean("context.Canceled", context.Canceled)
    clean("context.DeadlineExceeded", context.DeadlineExceeded)
    clean("errors.ErrWaitDelay", errors.ErrWaitDelay)
  end)
end)

-- Point 7.
describe("error messages", function()
  it("name the command, the exit status and the first line of stderr", function()
    local cmd = exec.command("sh", "-c", "echo boom >&2; echo more >&2; exit 3")
    local out, err = cmd:output()
    assert.is_nil(out)
    local msg = tostring(err)
    assert.are.equal([[exec: "sh -c 'echo boom >&2; echo more >&2; exit 3'": exit status 3: boom]], msg)
    assert.are.equal(3, err.exit_code)
    -- a table sink for stderr gives its first line too
    local c2 = exec.command("sh", "-c", "echo boom >&2; exit 3")
    c2.stderr = {}
    local _, e2 = c2:run()
    assert.is_truthy(tostring(e2):find("exit status 3: boom", 1, true), tostring(e2))
  end)

  it("quote a table sink's leading strings, whatever else the table held before", function()
    -- (found by fuzz/cmd_fuzz.c: the message's concat raised on a boolean)
    local cmd = exec.command("sh", "-c", "echo boom >&2; exit 3")
    cmd.stderr = { "x", true, 3 }
    local ok, err = cmd:run()
    assert.is_nil(ok)
    assert.are.equal([[exec: "sh -c 'echo boom >&2; exit 3'": exit status 3: x]], tostring(err))
    assert.are.equal("boom\n", cmd.stderr[4])
  end)
end)

describe("the table form of command", function()
  it("takes the argv from the list part and Cmd fields from the other keys", function()
    local cmd = exec.command { "sh", "-c", "pwd; echo $0 $1", "zero", 1, dir = "/", stdin = "in" }
    assert.are.same({ "sh", "-c", "pwd; echo $0 $1", "zero", "1" }, cmd.args)
    assert.are.equal("/", cmd.dir)
    assert.are.equal("/\nzero 1\n", cmd:output())
  end)

  it("accepts every Cmd field of the design", function()
    for name in ([[path args env dir stdin stdout stderr extra_files setpgid setsid pdeathsig
        uid gid groups cancel wait_delay timeout extra_env rlimits umask cgroup max_output
        foreground]]):gmatch("%S+") do
      local t = { "true" }
      t[name] = false
      local ok, err = pcall(exec.command, t)
      assert.is_true(ok, name .. ": " .. tostring(err))
    end
  end)

  it("raises naming an unknown key, and for an empty argv", function()
    assert.has_error(function() exec.command { "true", tiemout = 3 } end,
      [[bad argument #1 to 'command' (unknown Cmd field "tiemout")]])
    assert.has_error(function() exec.command_context(bg, { "true", bogus = 1 }) end,
      [[bad argument #2 to 'command_context' (unknown Cmd field "bogus")]])
    assert.has_error(function() exec.command { dir = "/" } end,
      "bad argument #1 to 'command' (the table form needs the argv in its list part)")
    assert.has_error(function() exec.command { "true", {} } end,
      "bad argument #1 to 'command' (argv[2]: string expected, got table)")
  end)

  it("command_context takes it too", function()
    local cmd = exec.command_context(bg, { "echo", "hi", timeout = 5 })
    assert.are.equal(bg, cmd.ctx)
    assert.are.equal("hi\n", cmd:output())
  end)
end)

describe("argv", function()
  it("of " .. util.scale(100000) .. " arguments reaches the child whole", function()
    local n = util.scale(100000)
    local argv = { "sh", "-c", "echo $#", "sh" }
    for i = 1, n do argv[4 + i] = "x" end
    assert.are.equal(n .. "\n", exec.command(argv):output())
    -- the vararg form as far as this Lua's unpack goes (LuaJIT and 5.1 stop near 8000)
    local m = math.min(n, 7000)
    assert.are.equal(m .. "\n", exec.command("sh", "-c", "echo $#", "sh", unpack(argv, 5, 4 + m)):output())
  end)
end)

describe("signal names", function()
  it("process:signal takes RTMIN+n and RTMAX-n as signal.notify does", function()
    for _, name in ipairs { "RTMIN+1", "SIGRTMAX-2" } do
      local cmd = util.reap_later(exec.command("sleep", "10"))
      assert.is_true(cmd:start())
      assert.is_true(cmd.process:signal(name))
      local _, err = cmd:wait()
      local want = name == "RTMIN+1" and "SIGRTMIN+1" or "SIGRTMIN+" .. (SIG.SIGRTMAX - 2 - SIG.SIGRTMIN)
      assert.are.equal(want, err.signal)
      assert.has_error(function() cmd.process:signal("RTMIN+999") end, 'signal: unknown signal "RTMIN+999"')
    end
  end)
end)

describe("buffered pipes", function()
  -- A Reader over `cat` fed with s.
  local function reader_of(s)
    local cmd = util.reap_later(exec.command("cat"))
    cmd.stdin = s
    local r = assert(cmd:stdout_pipe())
    assert.is_true(cmd:start())
    return r, cmd
  end

  it("mixes lines(), read(n), read('l') and read('a') in order", function()
    local parts = {}
    for i = 1, 3000 do parts[i] = "line " .. i end
    local text = table.concat(parts, "\n") .. "\nlast without newline"
    local r, cmd = reader_of(text)
    local it = r:lines()
    assert.are.equal("line 1", it())
    assert.are.equal("line 2", it())
    assert.are.equal("lin", r:read(3))  -- the lines split ahead go back in front
    assert.are.equal("e 3", r:read("l"))
    assert.are.equal("line 4\n", r:read("L"))
    assert.are.equal("line 5", it())     -- the old iterator goes on where the reads stopped
    local n = 5
    for l in r:lines("L") do
      n = n + 1
      if n <= 3000 then assert.are.equal("line " .. n .. "\n", l) else assert.are.equal("last without newline", l) end
      if n == 2000 then break end
    end
    assert.are.equal("line 2001", r:read("l"))
    local rest = r:read("a")
    assert.are.equal(table.concat(parts, "\n", 2002) .. "\nlast without newline", rest)
    assert.are.equal("", r:read("a"))
    assert.is_nil(r:read("l"))
    assert.is_nil(r:read(5))
    assert.is_true(cmd:wait())
  end)

  it("lines() inside a coroutine under a custom waiter that yields", function()
    if _VERSION == "Lua 5.1" and not rawget(_G, "jit") then
      pending("Lua 5.1 cannot yield from inside a for loop's iterator")
      return
    end
    -- a waiter that yields to a tiny scheduler, which polls the fd for it
    tether.set_waiter(function(fd, ev, timeout) coroutine.yield(fd, ev, timeout) end)
    util.defer(function() tether.set_waiter(nil) end)
    local parts = {}
    for i = 1, 2000 do parts[i] = "row " .. i end
    local cmd = util.reap_later(exec.command("sh", "-c", "sleep 0.1; cat"))
    cmd.stdin = table.concat(parts, "\n") .. "\n"
    local r = assert(cmd:stdout_pipe())
    assert.is_true(cmd:start())
    local got = {}
    local co = coroutine.create(function()
      for l in r:lines() do got[#got + 1] = l end
      return "done"
    end)
    local yields = 0
    while true do
      local ok, fd, ev, timeout = coroutine.resume(co)
      assert.is_true(ok, tostring(fd))
      if coroutine.status(co) == "dead" then break end
      yields = yields + 1
      core.poll(fd, ev, timeout and core.now() + timeout or nil)
    end
    assert.is_true(yields > 0)
    assert.are.same(parts, got)
    tether.set_waiter(nil)
    assert.is_true(cmd:wait())
  end)

  it("reads a line longer than many chunks whole", function()
    local long = string.rep("abcdefgh", 100000) -- 800 KB, no newline inside
    local r, cmd = reader_of(long .. "\nnext\n" .. long)
    assert.are.equal(long, r:read("l"))
    local got = {}
    for l in r:lines() do got[#got + 1] = l end
    assert.are.equal(2, #got)
    assert.are.equal("next", got[1])
    assert.are.equal(long, got[2])
    assert.is_true(cmd:wait())
  end)

  it("keeps what a timed-out read had read for the next read", function()
    local cmd = util.reap_later(exec.command("sh", "-c", "printf 'abc'; sleep 0.5; printf 'def\\nx'"))
    local r = assert(cmd:stdout_pipe())
    assert.is_true(cmd:start())
    local l, err = r:read("l", 0.1)
    assert.is_nil(l)
    assert.is_true(errors.is(err, errors.ErrTimeout))
    local a, aerr = r:read("a", 0.05)
    assert.is_nil(a)
    assert.is_true(errors.is(aerr, errors.ErrTimeout))
    assert.are.equal("abcdef", r:read("l", 10))
    assert.are.equal("x", r:read("a", 10))
    assert.is_true(cmd:wait())
  end)

  it("lines() takes a timeout and raises when it runs out", function()
    local cmd = util.reap_later(exec.command("sh", "-c", "echo one; sleep 5"))
    local r = assert(cmd:stdout_pipe())
    assert.is_true(cmd:start())
    local it = r:lines("l", 0.3)
    assert.are.equal("one", it())
    local ok, err = pcall(it)
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find("timeout", 1, true), tostring(err))
    cmd.process:kill()
    cmd:wait()
  end)
end)
