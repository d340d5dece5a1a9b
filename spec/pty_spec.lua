-- tether.exec: cmd:pty() and tether.terminal. Issue #17 acceptance points 1-8.
local exec = require "tether.exec"
local errors = require "tether.errors"
local context = require "tether.context"
local tether = require "tether"
local core = require "tether.core"
local util = require "helpers.util"

local unpack = table.unpack or unpack
local PY = "/usr/bin/python3"
local have_python = util.sh("test -x " .. PY .. "; echo $?"):match("^0") ~= nil
local T = 10 -- seconds: a bound on hangs only, never a timing assertion

-- cmd, terminal for a command run under a pty of the given size.
local function pty_cmd(size, ...)
  local cmd = exec.command(...)
  local term = assert(cmd:pty(size))
  return cmd, term
end

-- Fields of /proc/<pid>/stat after the command name: state ppid pgrp session tty_nr tpgid ...
local function stat_fields(pid)
  local line = util.readfile("/proc/" .. pid .. "/stat")
  local rest = line and line:match("%) (.*)$")
  local f = {}
  for w in (rest or ""):gmatch("%S+") do f[#f + 1] = tonumber(w) or w end
  return f
end

-- The fds of ours that point at a terminal (the pty master or a slave).
local function tty_fds()
  local out = {}
  for _, fd in ipairs(util.fds_of()) do
    local target = util.fd_target(util.pid(), fd) or ""
    if target:match("^/dev/pts/") or target:match("^/dev/ptmx") then out[#out + 1] = fd .. ":" .. target end
  end
  return table.concat(out, " ")
end

local warm, mark, check = util.no_leaks()
setup(warm); before_each(mark); after_each(check)

describe("cmd:pty()", function()
  -- Point 1.
  it("gives the child a terminal as stdin and stdout, and /dev/tty opens", function()
    if not have_python then pending("python3 is missing") return end
    local cmd = exec.command(PY, "-c",
      "import sys; print(sys.stdin.isatty(), sys.stdout.isatty()); open('/dev/tty').close(); print('tty-ok')")
    assert(cmd:pty())
    local out = assert(cmd:output())
    assert.are.equal("True True\r\ntty-ok\r\n", out)
  end)

  -- Point 2.
  it("answers a program's prompt with expect and write", function()
    if not have_python then pending("python3 is missing") return end
    local cmd, term = pty_cmd(nil, PY, "-c", "x = input('name? '); print('hello ' + x)")
    assert(cmd:start())
    assert.are.equal("name? ", term:expect("name%? ", T))
    assert(term:write("ada\n"))
    assert.are.equal("ada", term:expect("hello (%a+)", T))
    assert(cmd:wait())
    assert(term:close())
  end)

  -- Point 3.
  it("interrupts the child with \\3 through the line discipline", function()
    local cmd, term = pty_cmd(nil, "sh", "-c",
      "trap 'echo trapped; exit 7' INT; echo ready; while :; do sleep 1; done")
    assert(cmd:start())
    util.reap_later(cmd)
    assert(term:expect("ready\r\n", T))
    assert(term:write("\3"))
    assert.are.equal("trapped", term:expect("trapped", T))
    local ok, err = cmd:wait(T)
    assert.is_nil(ok)
    assert.are.equal(7, err.exit_code)
    term:close()
  end)

  -- Point 4.
  it("sets the window size it was given", function()
    local cmd = exec.command("stty", "size")
    assert(cmd:pty { rows = 33, cols = 101 })
    assert.are.equal("33 101\r\n", assert(cmd:output()))
  end)

  it("resizes the window of a running child", function()
    local cmd, term = pty_cmd(nil, "sh", "-c", "echo ready; read x; stty size")
    assert(cmd:start())
    util.reap_later(cmd)
    assert(term:expect("ready\r\n", T))
    assert(term:resize(40, 120))
    assert.are.same({ 40, 120 }, { term:size() })
    assert(term:write("\n"))
    assert.are.equal("40 120", term:expect("(%d+ %d+)", T))
    assert(cmd:wait(T))
    term:close()
  end)

  it("sends SIGWINCH to the child on resize", function()
    local cmd, term = pty_cmd(nil, "sh", "-c",
      "trap 'echo winch; exit 0' WINCH; echo ready; while :; do sleep 1; done")
    assert(cmd:start())
    util.reap_later(cmd)
    assert(term:expect("ready\r\n", T))
    assert(term:resize(30, 90))
    assert.are.equal("winch", term:expect("winch", T))
    assert(cmd:wait(T))
    term:close()
  end)

  -- Point 5.
  it("gives ErrTimeout with the output seen so far when the pattern never comes", function()
    local cmd, term = pty_cmd(nil, "sh", "-c", "echo partial; read x")
    assert(cmd:start())
    util.reap_later(cmd)
    assert(term:expect("partial\r\n", T)) -- then nothing more comes
    assert(term:write("typed"))           -- echoed by the terminal, never a line
    local caps, err = term:expect("never", 0.3)
    assert.is_nil(caps)
    assert.is_true(errors.is(err, errors.ErrTimeout))
    assert.are.equal("typed", err.output)
    assert.are.equal("typed", term:read(5, T), "what expect saw stays unread")
    term:close() -- the terminal hangs up: the child gets SIGHUP
    local ok, werr = cmd:wait(T)
    assert.is_nil(ok)
    assert.is_true(werr.exit_code ~= 0)
  end)

  -- Point 6.
  it("makes the child a session leader whose controlling tty is the pty", function()
    local cmd, term = pty_cmd(nil, "sh", "-c", "echo ready; read x")
    assert(cmd:start())
    util.reap_later(cmd)
    assert(term:expect("ready\r\n", T))
    local pid = cmd.process.pid
    local f = stat_fields(pid) -- state ppid pgrp session tty_nr tpgid
    assert.are.equal(pid, f[4], "session leader")
    assert.are.equal(pid, f[3], "leads its own process group")
    assert.are.equal(pid, f[6], "its group is the terminal's foreground group")
    local name = assert(term:name())
    -- the device numbers of the slave, seen by stat(1): major and minor in hex
    local maj, min = util.sh("stat -c '%t %T' " .. name):match("(%x+) (%x+)")
    local tty_nr = f[5]
    local major = math.floor(tty_nr / 256) % 4096
    local minor = tty_nr % 256 + math.floor(tty_nr / 1048576) * 256
    assert.are.same({ tonumber(maj, 16), tonumber(min, 16) }, { major, minor })
    assert(term:write("\n"))
    assert(cmd:wait(T))
    term:close()
  end)

  -- Point 7.
  it("leaves no fd and no /dev/pts open after 100 pty commands", function()
    local before = util.fd_summary()
    for i = 1, util.scale(100) do
      local cmd, term = pty_cmd({ rows = 10, cols = 20 }, "sh", "-c", "echo x" .. i)
      if i % 2 == 0 then
        assert.are.equal("x" .. i .. "\r\n", assert(cmd:output()))
      else
        assert(cmd:start())
        assert.are.equal("x" .. i, term:read("l", T))
        assert.is_nil(term:read(1, T), "the child's exit reads as the end of output")
        assert(cmd:wait(T))
        term:close()
      end
    end
    collectgarbage(); collectgarbage()
    assert.are.equal("", tty_fds())
    assert.are.equal(before, util.fd_summary())
  end)

  it("opens the master with O_CLOEXEC and gives the child only its stdio", function()
    local cmd, term = pty_cmd(nil, unpack(util.child("fds")))
    local info = util.readfile("/proc/self/fdinfo/" .. term:pollfd()) or ""
    local flags = tonumber(info:match("flags:%s*(%d+)") or "0", 8)
    assert.are.equal(tonumber("2000000", 8), flags % tonumber("4000000", 8) - flags % tonumber("2000000", 8))
    local out = assert(cmd:output())
    local fds = {}
    for fd, target in out:gmatch("(%d+) (%S+)") do fds[#fds + 1] = fd .. " " .. target:gsub("%d+$", "N") end
    assert.are.same({ "0 /dev/pts/N", "1 /dev/pts/N", "2 /dev/pts/N" }, fds)
  end)

  it("reads the child's exit as the end of output (EIO is EOF)", function()
    local cmd, term = pty_cmd(nil, "sh", "-c", "echo one; echo two")
    assert(cmd:start())
    assert(cmd:wait(T)) -- the child is gone before anything is read
    assert.are.equal("one\r\ntwo\r\n", term:read("a", T))
    assert.is_nil(term:read(1, T))
    assert.are.equal("", term:read("a", T))
    term:close()
  end)

  it("reads a big output whole with read(\"a\")", function()
    local cmd, term = pty_cmd(nil, "sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x")
    assert(cmd:start())
    local all = assert(term:read("a", T))
    assert.are.equal(300000, #all)
    assert.is_nil(all:find("[^x]"))
    assert(cmd:wait(T))
    term:close()
  end)

  it("keeps what read(\"a\") saw when its limit runs out", function()
    local cmd, term = pty_cmd(nil, "sh", "-c", "echo part; read x")
    assert(cmd:start())
    util.reap_later(cmd)
    assert(term:expect("^", T)) -- nothing consumed
    local data, err = term:read("a", 0.3)
    assert.is_nil(data)
    assert.is_true(errors.is(err, errors.ErrTimeout))
    assert.are.equal("part", term:read("l", T))
    term:close()
    cmd:wait(T)
  end)

  it("returns the terminal's output from combined_output, stderr included", function()
    local cmd = exec.command("sh", "-c", "echo out; echo err >&2; exit 3")
    assert(cmd:pty())
    local out, err, partial = cmd:combined_output()
    assert.is_nil(out)
    assert.are.equal(3, err.exit_code)
    assert.are.equal("out\r\nerr\r\n", partial)
  end)

  it("leaves stdio the caller set alone", function()
    local got = {}
    local cmd, term = pty_cmd(nil, "sh", "-c", "echo piped; test -t 1 || echo 'stdout is no tty' >&2")
    cmd.stdout = got
    assert(cmd:start())
    assert.are.equal("stdout is no tty", term:read("l", T))
    assert(cmd:wait(T))
    assert.are.equal("piped\n", table.concat(got))
    term:close()
  end)

  it("does not echo what is written with echo = false", function()
    local cmd, term = pty_cmd({ echo = false }, "sh", "-c", "read x; echo got-$x")
    assert(cmd:start())
    assert(term:write("secret\n"))
    assert.are.equal("secret", term:expect("got%-(%a+)", T))
    assert.are.equal("", term.before, "the input was not echoed")
    assert.are.equal("got-secret", term.after)
    assert(cmd:wait(T))
    term:close()
  end)

  it("echoes what is written by default", function()
    local cmd, term = pty_cmd(nil, "sh", "-c", "read x; echo got-$x")
    assert(cmd:start())
    assert(term:write("secret\n"))
    assert.are.equal("secret", term:expect("got%-(%a+)", T))
    assert.are.equal("secret\r\n", term.before)
    assert(cmd:wait(T))
    term:close()
  end)

  it("feeds a stdin string while the terminal is read", function()
    local cmd, term = pty_cmd(nil, "sh", "-c", "wc -c; echo done")
    cmd.stdin = ("x"):rep(200000) -- more than a pipe holds
    assert(cmd:start())
    util.reap_later(cmd)
    assert.are.equal("200000", term:expect("(%d+)\r\n", T))
    assert(term:expect("done", T))
    assert(cmd:wait(T))
    term:close()
  end)

  it("lists lines without their \\r\\n", function()
    local cmd, term = pty_cmd(nil, "printf", "a\\nb\\nc")
    assert(cmd:start())
    local lines = {}
    for l in term:lines() do lines[#lines + 1] = l end
    assert.are.same({ "a", "b", "c" }, lines)
    assert(cmd:wait(T))
    term:close()
  end)

  it("says the output ended when expect hits the end", function()
    local cmd, term = pty_cmd(nil, "echo", "bye")
    assert(cmd:start())
    local caps, err = term:expect("never", T)
    assert.is_nil(caps)
    assert.is_true(err.eof)
    assert.are.equal("bye\r\n", err.output)
    assert(cmd:wait(T))
    term:close()
  end)

  it("bounds expect by the command's context and kills the child", function()
    local ctx, cancel = context.with_timeout(context.background(), 0.3)
    local cmd = exec.command_context(ctx, "sh", "-c", "echo ready; read x")
    local term = assert(cmd:pty())
    assert(cmd:start())
    util.reap_later(cmd)
    local caps, err = term:expect("never", T)
    assert.is_nil(caps)
    assert.is_true(errors.is(err, context.DeadlineExceeded), tostring(err))
    assert.truthy(err.output:find("ready", 1, true))
    local ok, werr = cmd:wait(T)
    assert.is_nil(ok)
    assert.are.equal("SIGKILL", werr.signal)
    cancel()
    term:close()
  end)

  it("bounds a read by the command's timeout and kills the child", function()
    local cmd, term = pty_cmd(nil, "sh", "-c", "read x")
    cmd.timeout = 0.3
    assert(cmd:start())
    util.reap_later(cmd)
    local data, err = term:read("l")
    assert.is_nil(data)
    assert.is_true(errors.is(err, errors.ErrTimeout), tostring(err))
    local ok, werr = cmd:wait(T)
    assert.is_nil(ok)
    assert.are.equal("SIGKILL", werr.signal)
    term:close()
  end)

  it("runs a pty command that has a timeout (its session is its group)", function()
    local cmd = exec.command { "sh", "-c", "echo hi", timeout = 5 }
    assert(cmd:pty())
    assert.are.equal("hi\r\n", assert(cmd:output()))
  end)

  it("is pollable: wait_any returns it once output is there", function()
    local cmd, term = pty_cmd(nil, "sh", "-c", "read x; echo got")
    assert(cmd:start())
    util.reap_later(cmd)
    assert.is_number(term:pollfd())
    assert.are.equal("r", term:events())
    assert(term:write("go\n"))
    assert(term:expect("go\r\n", T)) -- the echo
    local i, obj = tether.wait_any({ term }, T)
    assert.are.equal(1, i)
    assert.are.equal(term, obj)
    assert.are.equal("got", term:expect("got", T))
    assert(cmd:wait(T))
    term:close()
  end)

  it("gives tether-init's child the terminal's foreground", function()
    local cmd = exec.command(util.lua(), util.root .. "/bin/tether-init", "-s", "--",
      "sh", util.root .. "/spec/helpers/initchild.sh", "stat")
    assert(cmd:pty())
    local out = assert(cmd:output())
    local pid, rest = out:match("(%d+) %(sh%) (.*)")
    assert.truthy(pid, out)
    local f = {}
    for w in rest:gmatch("%S+") do f[#f + 1] = w end
    assert.are.equal(pid, f[3], "the child leads its own process group")
    assert.are.equal(f[3], f[6], "the child's group is the terminal's foreground group")
  end)

  it("reports a controlling terminal that cannot be taken with step \"pty\"", function()
    local null = assert(core.open_null())
    local p, errno, step = core.spawn { path = "/bin/true", argv = { "true" }, fds = {}, ctty = null }
    null:close()
    assert.is_nil(p)
    assert.are.equal("pty", step)
    assert.are.equal("ENOTTY", errors.from_errno("spawn", nil, errno).code)
  end)

  describe("misuse", function()
    it("refuses a pty after start", function()
      local cmd = exec.command("true")
      assert(cmd:run())
      local t, err = cmd:pty()
      assert.is_nil(t)
      assert.are.equal("exec: pty after process started", tostring(err))
    end)

    it("refuses a second pty", function()
      local cmd = exec.command("true")
      local term = assert(cmd:pty())
      local t, err = cmd:pty()
      assert.is_nil(t)
      assert.are.equal("exec: pty already set", tostring(err))
      term:close()
    end)

    it("raises naming a bad size", function()
      local cmd = exec.command("true")
      assert.has_error(function() cmd:pty { rows = 0 } end,
        "bad argument #1 to 'pty' (rows must be an integer in [1, 65535])")
      assert.has_error(function() cmd:pty(5) end, "bad argument #1 to 'pty' (table or nil expected, got number)")
      local term = assert(cmd:pty())
      assert.has_error(function() term:resize(10, 1.5) end,
        "bad argument #2 to 'resize' (cols must be an integer in [1, 65535])")
      assert.has_error(function() term:expect(nil) end, "bad argument #1 to 'expect' (string expected, got nil)")
      term:close()
    end)

    it("raises when setpgid names another group", function()
      local cmd = exec.command("true")
      local term = assert(cmd:pty())
      cmd.setpgid = 1
      assert.has_error(function() cmd:start() end,
        "exec: cmd.setpgid cannot name a group with a pty (the child leads its own session)")
      term:close()
    end)

    it("fails reads after close", function()
      local cmd = exec.command("true")
      local term = assert(cmd:pty())
      term:close()
      assert(term:close(), "close twice is harmless")
      local data, err = term:read(1)
      assert.is_nil(data)
      assert.are.equal("read: terminal already closed", tostring(err))
      local ok, serr = cmd:start()
      assert.is_nil(ok)
      assert.are.equal("exec: pty already closed", tostring(serr))
    end)
  end)
end)

-- Point 8.
describe("cmd:pty() under cqueues", function()
  local ok, cqueues = pcall(require, "cqueues")
  after_each(function() tether.set_waiter(nil) end)

  it("lets two pty sessions make progress concurrently", function()
    if not ok then pending("lua-cqueues is not installed for " .. _VERSION) return end
    tether.set_waiter(tether.waiters.cqueues)
    local cq = cqueues.new()
    local dir = util.tmpdir()
    -- Each session marks its start, then waits for the other's mark (at most 10 s), then
    -- asks for a line: served one after the other, the first would give up.
    local script = [[
      : > "$1/started$2"; i=0
      while [ ! -e "$1/started$3" ]; do
        i=$((i+1)); [ $i -gt 1000 ] && { echo "gave up waiting for $3"; exit 1; }
        sleep 0.01
      done
      printf 'name? '; read x; echo "done$2 $x"]]
    local got = {}
    for k = 1, 2 do
      cq:wrap(function()
        local cmd, term = pty_cmd(nil, "sh", "-c", script, "sh", dir, k, 3 - k)
        assert(cmd:start())
        assert(term:expect("name%? ", 20))
        assert(term:write("s" .. k .. "\n"))
        got[k] = term:expect("(done%d s%d)", 20)
        assert(cmd:wait(20))
        term:close()
      end)
    end
    local looped, lerr = cq:loop()
    os.execute("rm -rf " .. util.shquote(dir))
    assert(looped, lerr)
    assert.are.same({ "done1 s1", "done2 s2" }, got)
  end)
end)
