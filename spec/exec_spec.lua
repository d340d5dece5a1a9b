-- tether.exec: lookup, start failures, argument checks, exit statuses,
-- environments, pipelines and state errors.
-- Issue #2 acceptance points 1, 2, 3, 4, 5, 9, 14, 15.
local exec = require "tether.exec"
local errors = require "tether.errors"
local env = require "tether.env"
local util = require "helpers.util"

local unpack = table.unpack or unpack

local function child(mode, ...)
  return exec.command(unpack(util.child(mode, ...)))
end

local function sorted_lines(s)
  local t = {}
  for l in s:gmatch("[^\n]+") do t[#t + 1] = l end
  table.sort(t)
  return t
end

-- After each test: no unreaped child, no new fd.
local warm, mark, check = util.no_leaks()
setup(warm); before_each(mark); after_each(check)

describe("exec.command", function()
  it("resolves the name with look_path and keeps name and arguments in args", function()
    local cmd = exec.command("sh", "-c", "exit 0")
    local want = util.sh("command -v sh"):gsub("\n$", "")
    assert.are.equal(want, cmd.path)
    assert.are.same({ "sh", "-c", "exit 0" }, cmd.args)
    assert.is_nil(cmd.err)
    assert.is_nil(cmd.process)
    assert.is_nil(cmd.process_state)
  end)

  it("does not resolve a name that contains a slash", function()
    local cmd = exec.command("./tether-relative-name", "x")
    assert.are.equal("./tether-relative-name", cmd.path)
    assert.are.same({ "./tether-relative-name", "x" }, cmd.args)
    assert.is_nil(cmd.err)
  end)

  it("runs path with args as given (args[1] is argv[0])", function()
    local cmd = exec.command("sh", "-c", 'printf "%s|" "$0" "$@"', "zero", "one", "two words")
    assert.are.equal("zero|one|two words|", assert(cmd:output()))
  end)

  it("renders tostring(cmd) as the command line, quoted so that a shell reads the same argv", function()
    local cmd = exec.command("sh", "-c", "exit 0")
    assert.are.equal("sh -c 'exit 0'", tostring(cmd))
    local odd = { "it's", "", "a b", "$HOME", "x\ny", "--flag=a,b:c/d.e_f@g%h+i" }
    cmd = exec.command("/bin/printf", "%s|", odd[1], odd[2], odd[3], odd[4], odd[5], odd[6])
    assert.are.equal("/bin/printf '%s|' 'it'\\''s' '' 'a b' '$HOME' 'x\ny' --flag=a,b:c/d.e_f@g%h+i", tostring(cmd))
    -- pasted into a shell, the line gives the same arguments
    local out = util.sh(tostring(cmd))
    assert.are.equal("it's||a b|$HOME|x\ny|--flag=a,b:c/d.e_f@g%h+i|", out)
  end)
end)

-- Point 1.
describe("a missing binary", function()
  it("makes start() return an error that is ErrNotFound, with Go's message", function()
    local cmd = exec.command("tether-no-such-binary")
    assert.is_true(errors.is(cmd.err, errors.ErrNotFound))
    local ok, err = cmd:start()
    assert.is_nil(ok)
    assert.is_true(err:is(errors.ErrNotFound))
    assert.is_true(errors.is(err, errors.ErrNotFound))
    assert.is_false(err:is(errors.ErrDot))
    assert.are.equal('exec: "tether-no-such-binary": executable file not found in $PATH',
      tostring(err))
    assert.are.equal("lookup", err.step)
    assert.is_nil(cmd.process)
  end)

  for _, method in ipairs({ "run", "output", "combined_output" }) do
    it("makes " .. method .. "() return the same ErrNotFound", function()
      local cmd = exec.command("tether-no-such-binary")
      local ok, err = cmd[method](cmd)
      assert.is_nil(ok)
      assert.is_true(errors.is(err, errors.ErrNotFound))
    end)
  end

  it("is ErrNotFound from look_path", function()
    local path, err = exec.look_path("tether-no-such-binary")
    assert.is_nil(path)
    assert.is_true(errors.is(err, errors.ErrNotFound))
  end)

  it("given as an absolute path, fails start() with ENOENT at step exec", function()
    local cmd = exec.command("/nonexistent/tether-no-such-binary")
    local ok, err = cmd:start()
    assert.is_nil(ok)
    assert.are.equal("ENOENT", err.code)
    assert.are.equal(2, err.errno)
    assert.are.equal("exec", err.step)
    assert.is_true(err:is(errors.ErrNotExist))
    assert.is_false(err:is(errors.ErrNotFound))
    assert.is_nil(cmd.process)
  end)

  for _, name in ipairs({ "tether-no-such-binary", "/nonexistent/tether-no-such-binary" }) do
    it("1000 attempts with three pipes each leave the fd count unchanged (" .. name .. ")", function()
      local before = util.fd_count()
      for i = 1, util.scale(1000) do
        local cmd = exec.command(name)
        assert(cmd:stdin_pipe())
        assert(cmd:stdout_pipe())
        assert(cmd:stderr_pipe())
        local ok, err = cmd:start()
        if ok then
          cmd:wait()
          error("attempt " .. i .. " started a process")
        end
        assert(err.code == "ENOENT" or errors.is(err, errors.ErrNotFound), tostring(err))
      end
      assert.are.equal(before, util.fd_count())
      assert.are.equal(0, util.zombies_of())
    end)
  end
end)

-- Point 2.
describe("start() failing in the child", function()
  local dir
  before_each(function() dir = util.tmpdir() end)
  after_each(function() os.execute("rm -rf " .. util.shquote(dir)) end)

  local cases = {
    { "a file without execute permission gives EACCES at step exec",
      function()
        local p = dir .. "/not-executable"
        util.writefile(p, "#!/bin/sh\necho ran\n")
        os.execute("chmod 644 " .. util.shquote(p))
        return exec.command(p), p
      end, "EACCES", 13, "exec", errors.ErrPermission },
    { "a directory as the program gives EACCES at step exec",
      function() return exec.command(dir), dir end,
      "EACCES", 13, "exec", errors.ErrPermission },
    { "a missing dir gives ENOENT at step chdir",
      function()
        local c = exec.command("/bin/sh", "-c", "echo ran")
        c.dir = dir .. "/missing"
        return c, dir .. "/missing"
      end, "ENOENT", 2, "chdir", errors.ErrNotExist },
    { "a dir that is a file gives ENOTDIR at step chdir",
      function()
        local p = dir .. "/file"
        util.writefile(p, "")
        local c = exec.command("/bin/sh", "-c", "echo ran")
        c.dir = p
        return c, p
      end, "ENOTDIR", 20, "chdir", nil },
  }
  for _, case in ipairs(cases) do
    local name, make, code, errno, step, sentinel = unpack(case)
    it(name .. ", from start() itself", function()
      local cmd, path = make()
      local out = {}
      cmd.stdout = out
      local ok, err = cmd:start()
      assert.is_nil(ok)
      assert.is_nil(cmd.process)
      assert.are.equal(code, err.code)
      assert.are.equal(errno, err.errno)
      assert.are.equal(step, err.step)
      assert.are.equal(path, err.path)
      if sentinel then assert.is_true(err:is(sentinel)) end
      assert.are.equal("", table.concat(out))
      assert.are.equal(0, #util.children_of(util.pid()))
    end)
  end
end)

-- Point 3.
-- Issue 12, Build 5: nginx starts its workers without PATH.
describe("with PATH unset", function()
  local old_path
  before_each(function() old_path = env.get("PATH"); assert(env.unset("PATH")) end)
  after_each(function() env.set("PATH", old_path) end)

  it("look_path searches the execvp default /bin:/usr/bin", function()
    assert.is_nil(env.get("PATH"))
    local path, err = exec.look_path("sh")
    assert.is_nil(err)
    assert.is_truthy(path == "/bin/sh" or path == "/usr/bin/sh", path)
  end)

  it("command runs sh found on the default path", function()
    assert.are.equal("found\n", assert(exec.command("sh", "-c", "echo found"):output()))
  end)

  it("an empty PATH still searches nothing", function()
    env.set("PATH", "")
    local _, err = exec.look_path("sh")
    assert.is_true(errors.is(err, errors.ErrNotFound))
  end)
end)

describe("a match through a relative PATH entry", function()
  local dir, rel, old_path, old_cwd, lfs
  local prog = "tether-dot-prog"

  before_each(function()
    dir = util.tmpdir()
    os.execute("mkdir " .. util.shquote(dir .. "/bin"))
    util.writefile(dir .. "/bin/" .. prog, "#!/bin/sh\necho dot-ok\n")
    os.execute("chmod 755 " .. util.shquote(dir .. "/bin/" .. prog))
    local cwd = util.sh("pwd"):gsub("\n$", "")
    local _, depth = cwd:gsub("/[^/]+", "")
    rel = ("../"):rep(depth) .. dir:sub(2) .. "/bin"
    old_path = env.get("PATH")
    local ok, l = pcall(require, "lfs")
    lfs = ok and l or nil
    old_cwd = lfs and lfs.currentdir()
  end)
  after_each(function()
    env.set("PATH", old_path)
    if lfs then lfs.chdir(old_cwd) end
    os.execute("rm -rf " .. util.shquote(dir))
  end)

  it("is ErrDot from look_path", function()
    env.set("PATH", rel .. ":" .. old_path)
    local path, err = exec.look_path(prog)
    assert.is_true(errors.is(err, errors.ErrDot))
    assert.is_true(path == nil or path == rel .. "/" .. prog)
  end)

  it("is ErrDot from start(), and runs once cmd.err is cleared (as Go)", function()
    env.set("PATH", rel .. ":" .. old_path)
    local cmd = exec.command(prog)
    assert.is_true(errors.is(cmd.err, errors.ErrDot))
    local ok, err = cmd:start()
    assert.is_nil(ok)
    assert.is_true(errors.is(err, errors.ErrDot))
    assert.is_nil(cmd.process)
    local again = exec.command(prog)
    again.err = nil
    assert.are.equal(rel .. "/" .. prog, again.path)
    assert.are.equal("dot-ok\n", assert(again:output()))
  end)

  it("is not ErrDot through an absolute PATH entry", function()
    env.set("PATH", dir .. "/bin:" .. old_path)
    local path, err = exec.look_path(prog)
    assert.is_nil(err)
    assert.are.equal(dir .. "/bin/" .. prog, path)
    assert.are.equal("dot-ok\n", assert(exec.command(prog):output()))
  end)

  it("does not stop a relative path with a slash from running", function()
    local cmd = exec.command(rel .. "/" .. prog)
    assert.is_nil(cmd.err)
    assert.are.equal("dot-ok\n", assert(cmd:output()))
  end)

  for _, case in ipairs({ { "'.'", "." }, { "an empty entry", "" } }) do
    it("is ErrDot through " .. case[1] .. " in PATH", function()
      if not lfs then pending("needs lfs to chdir") return end
      assert(lfs.chdir(dir .. "/bin"))
      env.set("PATH", case[2] .. ":/usr/bin:/bin")
      local _, err = exec.look_path(prog)
      assert.is_true(errors.is(err, errors.ErrDot))
      local ok, err2 = exec.command(prog):start()
      assert.is_nil(ok)
      assert.is_true(errors.is(err2, errors.ErrDot))
    end)
  end

  it("lets ./prog run", function()
    if not lfs then pending("needs lfs to chdir") return end
    assert(lfs.chdir(dir .. "/bin"))
    local cmd = exec.command("./" .. prog)
    assert.is_nil(cmd.err)
    assert.are.equal("dot-ok\n", assert(cmd:output()))
  end)
end)

-- Point 4.
-- Inside nginx (exec._offload set by tether.ngx) a bare name's PATH search waits for the
-- first use of cmd.path / cmd.err, so a command run whole in nginx's thread pool is searched
-- there. Played here with an _offload that never takes the command.
describe("a command whose PATH search waits (as inside nginx)", function()
  local saved
  before_each(function() saved = exec._offload; exec._offload = function() return nil end end)
  after_each(function() exec._offload = saved end)

  it("gives the same path, error and command line as a search at construction", function()
    local lazy = exec.command("sh", "-c", "echo hi")
    exec._offload = saved
    local eager = exec.command("sh", "-c", "echo hi")
    exec._offload = function() return nil end
    assert.is_nil(rawget(lazy, "path"), "the search did not wait")
    assert.are.equal(eager.path, lazy.path)
    assert.is_nil(lazy.err)
    assert.are.equal(tostring(eager), tostring(lazy))
    assert.is_true(exec._is_cmd(lazy))
    assert.are.equal("hi\n", lazy:output())
    local missing = exec.command("tether-no-such-binary")
    assert.is_true(missing.err:is(errors.ErrNotFound))
    local ok, err = exec.command("tether-no-such-binary"):run()
    assert.is_nil(ok)
    assert.is_true(err:is(errors.ErrNotFound), tostring(err))
    assert.matches('"tether%-no%-such%-binary"', tostring(err))
  end)

  it("keeps the search's error when cmd.path is set before start, as Go", function()
    local cmd = exec.command("tether-no-such-binary")
    cmd.path = "/bin/echo"
    assert.are.equal("/bin/echo", cmd.path)
    local ok, err = cmd:run()
    assert.is_nil(ok)
    assert.is_true(err:is(errors.ErrNotFound), tostring(err))
  end)

  it("takes fields, pipelines and output_all like any Cmd", function()
    local a, b = exec.command("echo", "piped"), exec.command("cat")
    b.stdout = {}
    assert.truthy(exec.pipeline({ a, b }))
    assert.are.equal("piped\n", table.concat(b.stdout))
    local c = exec.command("sh", "-c", "pwd")
    c.dir = "/"
    assert.are.equal("/\n", c:output())
    local outs = exec.output_all({ exec.command("echo", "x") })
    assert.are.equal("x\n", outs[1])
  end)
end)

describe("an argument the OS cannot take", function()
  local marker
  before_each(function()
    marker = util.tmpname()
    os.remove(marker)
  end)
  after_each(function() os.remove(marker) end)

  local function touching(...)
    return exec.command("/bin/sh", "-c", "touch " .. util.shquote(marker), ...)
  end
  local cases = {
    { "a NUL in the program name", "name", function()
        return exec.command("/bin/sh\0x", "-c", "touch " .. util.shquote(marker)) end },
    { "a NUL in cmd.path", "path", function()
        local c = touching(); c.path = "/bin/sh\0x"; return c end },
    { "a NUL in an argument", "arg", function() return touching("x\0y") end },
    { "a NUL in cmd.args", "arg", function()
        local c = touching(); c.args[#c.args + 1] = "x\0y"; return c end },
    { "a NUL in an env key (list)", "env", function()
        local c = touching(); c.env = { "A\0B=1" }; return c end },
    { "a NUL in an env value (list)", "env", function()
        local c = touching(); c.env = { "A=1\0x" }; return c end },
    { "a NUL in an env key (map)", "env", function()
        local c = touching(); c.env = { ["A\0B"] = "1" }; return c end },
    { "a NUL in an env value (map)", "env", function()
        local c = touching(); c.env = { A = "1\0x" }; return c end },
    { "'=' in an env key (map)", "env", function()
        local c = touching(); c.env = { ["A=B"] = "1" }; return c end },
    { "a NUL in dir", "dir", function()
        local c = touching(); c.dir = "/tmp\0x"; return c end },
    { "an extra_files entry that is no fd (with pipes to make)", "extra_files", function()
        local c = touching(); c.stdin = "x"; c.stdout = {}; c.extra_files = { "bad" }; return c end },
    { "a negative fd as stdout", "stdout", function()
        local c = touching(); c.stdin = "x"; c.stdout = -1; return c end },
    -- Found by fuzz/cmd_fuzz.c: numbers that are not integers in range must not become
    -- another fd, uid 0, group 0 or the child's own process group.
    { "an infinite fd as stdout", "stdout", function()
        local c = touching(); c.stdout = math.huge; return c end },
    { "an infinite extra_files entry", "extra_files", function()
        local c = touching(); c.extra_files = { math.huge }; return c end },
    { "a fractional extra_files entry", "extra_files", function()
        local c = touching(); c.extra_files = { 1.5 }; return c end },
    { "an infinite uid", "uid", function()
        local c = touching(); c.uid = math.huge; return c end },
    { "a gid over 2^32-2", "gid", function()
        local c = touching(); c.gid = 2 ^ 32; return c end },
    { "a group that is not a number", "groups[1]", function()
        local c = touching(); c.groups = { "wheel" }; return c end },
    { "a fractional group", "groups[2]", function()
        local c = touching(); c.groups = { 0, 0.5 }; return c end },
    { "a fractional setpgid", "setpgid", function()
        local c = touching(); c.setpgid = 1.5; return c end },
    { "a negative setpgid", "setpgid", function()
        local c = touching(); c.setpgid = -3; return c end },
    -- (found by the fuzzer: any truthy setsid made a new session, while the kill that a
    -- timeout sends went to the process alone)
    { "a setsid that is not a boolean", "setsid", function()
        local c = touching(); c.setsid = function() end; return c end },
  }
  for _, case in ipairs(cases) do
    local what, word, make = case[1], case[2], case[3]
    it("raises naming the argument for " .. what .. ", before any process is created", function()
      local cmd
      local fds = util.fd_count()
      local ok, msg = pcall(function()
        cmd = make()
        return cmd:start()
      end)
      if ok and cmd and cmd.process then util.reap_later(cmd) end
      assert.is_false(ok, "no error was raised")
      msg = tostring(msg):lower()
      local words = word == "name" and { "name", "path", "#1" } or { word }
      local named = false
      for _, w in ipairs(words) do
        if msg:find(w, 1, true) then named = true end
      end
      assert.is_true(named, "message does not name '" .. word .. "': " .. msg)
      assert.is_nil(util.readfile(marker), "a process ran")
      assert.are.equal(fds, util.fd_count(), "fds left open (until GC) by the raise")
      assert.are.equal(0, #util.children_of(util.pid()))
    end)
  end

  it("raises for a name that is not a string", function()
    local ok, msg = pcall(exec.command, {})
    assert.is_false(ok)
    assert.matches("#1", tostring(msg), 1, true)
  end)

  it("raises for an argument that is not a string", function()
    local ok, msg = pcall(exec.command, "sh", "-c", {})
    assert.is_false(ok)
    assert.matches("#3", tostring(msg), 1, true)
  end)
end)

-- Point 5.
describe("exit statuses", function()
  it("round-trip every exit code 0..255", function()
    local wrong = {}
    for n = 0, 255 do
      local cmd = child("exit", n)
      local ok, err = cmd:run()
      local st = cmd.process_state
      local got = {
        ok = ok, err_code = err and err.exit_code, code = st and st:exit_code(),
        success = st and st:success(), exited = st and st:exited(),
        signaled = st and st:signaled(),
      }
      local want = {
        ok = n == 0 or nil, err_code = n ~= 0 and n or nil, code = n,
        success = n == 0, exited = true, signaled = false,
      }
      for k, v in pairs(want) do
        if got[k] ~= v then wrong[#wrong + 1] = ("exit %d: %s = %s"):format(n, k, tostring(got[k])) end
      end
    end
    assert.are.same({}, wrong)
  end)

  it("gives an ExitError shaped like Go's", function()
    local cmd = child("exit", 3)
    local ok, err = cmd:run()
    assert.is_nil(ok)
    assert.are.equal(('exec: "%s": exit status 3'):format(tostring(cmd)), tostring(err))
    assert.are.equal(3, err.exit_code)
    assert.is_nil(err.signal)
    assert.are.equal(cmd.process_state, err.state)
  end)

  local signals = {
    { "KILL", "SIGKILL", "signal: killed" },
    { "TERM", "SIGTERM", "signal: terminated" },
    { "HUP", "SIGHUP", "signal: hangup" },
    { "USR1", "SIGUSR1", "signal: user defined signal 1" },
  }
  for _, s in ipairs(signals) do
    it("reports a child killed by " .. s[2] .. " with err.signal and exit_code() == -1", function()
      local cmd = exec.command("sh", "-c", "kill -" .. s[1] .. " $$; sleep 5")
      local ok, err = cmd:run()
      assert.is_nil(ok)
      assert.are.equal(s[2], err.signal)
      assert.are.equal(-1, err.exit_code)
      assert.are.equal(('exec: "%s": %s'):format(tostring(cmd), s[3]), tostring(err))
      local st = cmd.process_state
      assert.are.equal(-1, st:exit_code())
      assert.is_true(st:signaled())
      assert.is_false(st:exited())
      assert.is_false(st:success())
      assert.are.equal(s[2], st:signal())
      assert.is_false(st:core_dumped())
    end)
  end
end)

-- Point 9.
describe("cmd.env", function()
  local cases = {
    { "a list replaces the environment", { "A=1", "B=two words" }, { "A=1", "B=two words" } },
    { "a map replaces the environment", { A = "1", B = "" }, { "A=1", "B=" } },
    { "duplicate keys in a list: the last wins", { "A=1", "B=2", "A=3" }, { "A=3", "B=2" } },
    { "a value may contain '='", { "A=b=c" }, { "A=b=c" } },
    { "an empty table gives an empty environment", {}, {} },
  }
  for _, case in ipairs(cases) do
    it(case[1] .. " for the child only", function()
      env.set("TETHER_SPEC_PARENT_ONLY", "1")
      local cmd = exec.command("env")
      cmd.env = case[2]
      local out = assert(cmd:output())
      env.unset("TETHER_SPEC_PARENT_ONLY")
      assert.are.same(case[3], sorted_lines(out))
      assert.is_nil(os.getenv("A"))
      assert.is_nil(os.getenv("B"))
    end)
  end

  it("nil inherits the parent's environment, as it is now", function()
    env.set("TETHER_SPEC_INHERIT", "yes")
    env.set("TETHER_SPEC_EMPTY", "")
    env.unset("TETHER_SPEC_UNSET")
    local out = assert(child("env", "TETHER_SPEC_INHERIT", "TETHER_SPEC_EMPTY", "TETHER_SPEC_UNSET"):output())
    env.unset("TETHER_SPEC_INHERIT")
    env.unset("TETHER_SPEC_EMPTY")
    assert.are.equal("TETHER_SPEC_INHERIT=yes\nTETHER_SPEC_EMPTY=\nTETHER_SPEC_UNSET unset\n", out)
  end)

  it("cmd:environ() shows what the child gets", function()
    local cmd = exec.command("env")
    cmd.env = { "A=1", "A=2", "B=3" }
    local list = cmd:environ()
    table.sort(list)
    assert.are.same({ "A=2", "B=3" }, list)
  end)

  it("env.lookup tells unset from empty", function()
    env.set("TETHER_SPEC_EMPTY", "")
    local v, present = env.lookup("TETHER_SPEC_EMPTY")
    assert.are.equal("", v)
    assert.is_true(present)
    env.unset("TETHER_SPEC_EMPTY")
    v, present = env.lookup("TETHER_SPEC_EMPTY")
    assert.is_nil(v)
    assert.is_false(present)
  end)
end)

-- Point 14.
describe("exec.pipeline", function()
  -- Stages that read are bounded by timeout(1), so a leaked pipe end fails
  -- the test instead of hanging it.
  local function bounded(...)
    return exec.command("timeout", "-s", "KILL", "20", ...)
  end

  it("runs the stages wired together and reports a state per stage", function()
    local out = {}
    local c1 = child("echo", "hello", "pipeline")
    local c2 = bounded("tr", "a-z", "A-Z")
    local c3 = bounded(unpack(util.child("cat")))
    c3.stdout = out
    local states, err = exec.pipeline({ c1, c2, c3 })
    assert.is_nil(err)
    assert.are.equal(3, #states)
    for i, st in ipairs(states) do
      assert.is_true(st:success(), "stage " .. i)
      assert.are.equal(0, st:exit_code())
    end
    assert.are.equal("HELLO PIPELINE\n", table.concat(out))
    assert.are.equal(states[1], c1.process_state)
    assert.are.equal(states[3], c3.process_state)
  end)

  it("connects neighbours by one pipe, fd to fd (no copy through Lua)", function()
    local e1, e2 = {}, {}
    local c1 = exec.command("sh", "-c", 't=$(readlink /proc/$$/fd/1); echo "$t" >&2; echo x')
    c1.stderr = e1
    local c2 = bounded("sh", "-c", 't=$(readlink /proc/$$/fd/0); echo "$t" >&2; cat >/dev/null')
    c2.stderr = e2
    local states, err = exec.pipeline({ c1, c2 })
    assert.is_nil(err)
    assert.are.equal(2, #states)
    local a, b = table.concat(e1), table.concat(e2)
    assert.matches("^pipe:%[%d+%]\n$", a)
    assert.are.equal(a, b)
  end)

  it("passes 8 MiB through intact", function()
    local out = {}
    local c1 = child("write", 8 * 1024 * 1024)
    local c2 = bounded(unpack(util.child("cat")))
    c2.stdout = out
    local states, err = exec.pipeline({ c1, c2 })
    assert.is_nil(err)
    assert.are.equal(2, #states)
    assert.is_true(table.concat(out) == util.pattern("o", 8 * 1024 * 1024))
  end)

  local failing = {
    { "the first stage fails", function() return { child("exit", 3), bounded("cat") } end,
      { 3, 0 }, 3 },
    { "the last stage fails", function() return { child("echo", "x"), bounded("sh", "-c", "cat >/dev/null; exit 5") } end,
      { 0, 5 }, 5 },
    { "two stages fail: the rightmost is reported", function()
        return { child("exit", 3), bounded("sh", "-c", "cat >/dev/null; exit 5"), bounded("cat") } end,
      { 3, 5, 0 }, 5 },
  }
  for _, case in ipairs(failing) do
    it("fails when " .. case[1] .. " (pipefail), after reaping every stage", function()
      local cmds = case[2]()
      local states, err = exec.pipeline(cmds)
      assert.is_nil(states)
      assert.are.equal(case[4], err.exit_code)
      for i, c in ipairs(cmds) do
        assert.is_not_nil(c.process_state, "stage " .. i .. " not waited")
        assert.are.equal(case[3][i], c.process_state:exit_code(), "stage " .. i)
      end
      assert.are.equal(0, util.zombies_of())
    end)
  end

  it("fails with SIGPIPE when a writer outlives its reader (SIGPIPE reset in the child)", function()
    local c1 = child("write", 4 * 1024 * 1024)
    local c2 = child("exit", 0)
    local states, err = exec.pipeline({ c1, c2 })
    assert.is_nil(states)
    assert.are.equal("SIGPIPE", err.signal)
    assert.are.equal("SIGPIPE", c1.process_state:signal())
    assert.is_true(c2.process_state:success())
  end)

  it("returns a start failure of any stage, and leaves nothing running", function()
    local c1 = child("write", 1024 * 1024)
    local c2 = exec.command("tether-no-such-binary")
    local states, err = exec.pipeline({ c1, c2 })
    assert.is_nil(states)
    assert.is_true(errors.is(err, errors.ErrNotFound))
    if c1.process then
      assert.is_true(util.wait_gone(c1.process.pid, 5))
    end
  end)
end)

-- Point 15.
describe("state errors", function()
  it("start() twice: 'exec: already started'", function()
    local cmd = util.reap_later(child("exit", 0))
    assert.is_true(cmd:start())
    local ok, err = cmd:start()
    assert.is_nil(ok)
    assert.are.equal("exec: already started", tostring(err))
    assert.is_true(cmd:wait())
  end)

  for _, method in ipairs({ "run", "output", "combined_output" }) do
    it(method .. "() after start(): 'exec: already started'", function()
      local cmd = util.reap_later(child("exit", 0))
      assert.is_true(cmd:start())
      local ok, err = cmd[method](cmd)
      assert.is_nil(ok)
      assert.is_truthy(tostring(err):find("already started", 1, true))
      assert.is_true(cmd:wait())
    end)
  end

  it("wait() before start(): 'exec: not started'", function()
    local cmd = child("exit", 0)
    local ok, err = cmd:wait()
    assert.is_nil(ok)
    assert.are.equal("exec: not started", tostring(err))
  end)

  it("wait() twice: 'exec: Wait was already called'", function()
    local cmd = child("exit", 0)
    assert.is_true(cmd:start())
    assert.is_true(cmd:wait())
    local ok, err = cmd:wait()
    assert.is_nil(ok)
    assert.are.equal("exec: Wait was already called", tostring(err))
  end)

  it("wait() after run(): 'exec: Wait was already called'", function()
    local cmd = child("exit", 0)
    assert.is_true(cmd:run())
    local ok, err = cmd:wait()
    assert.is_nil(ok)
    assert.are.equal("exec: Wait was already called", tostring(err))
  end)

  for _, p in ipairs({ { "stdin_pipe", "StdinPipe" }, { "stdout_pipe", "StdoutPipe" }, { "stderr_pipe", "StderrPipe" } }) do
    it(p[1] .. "() after start(): 'exec: " .. p[2] .. " after process started'", function()
      local cmd = util.reap_later(child("exit", 0))
      assert.is_true(cmd:start())
      local pipe, err = cmd[p[1]](cmd)
      assert.is_nil(pipe)
      assert.are.equal("exec: " .. p[2] .. " after process started", tostring(err))
      assert.is_true(cmd:wait())
    end)
  end

  it("output() with stdout already set: 'exec: Stdout already set'", function()
    local cmd = child("exit", 0)
    cmd.stdout = {}
    local out, err = cmd:output()
    assert.is_nil(out)
    assert.are.equal("exec: Stdout already set", tostring(err))
    assert.is_nil(cmd.process)
  end)
end)
