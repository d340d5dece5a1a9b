-- tether.exec: the child's stdio, captured output and the fds it inherits.
-- Issue #2 acceptance points 6, 7, 8.
local exec = require "tether.exec"
local tether = require "tether"
local util = require "helpers.util"

local unpack = table.unpack or unpack
local MiB = 1024 * 1024

local function child(mode, ...)
  return exec.command(unpack(util.child(mode, ...)))
end

-- Compare big strings without printing them.
local function same_bytes(want, got, what)
  assert.are.equal(#want, #(got or ""), what .. ": length")
  if want ~= got then
    local i = 1
    while want:sub(i, i) == got:sub(i, i) do i = i + 1 end
    error(what .. ": first difference at byte " .. i, 2)
  end
end

-- The chunks child.lua's write mode sends, in the order it sends them.
local function interleaved(n, chunk)
  local out, err, parts = util.pattern("o", n), util.pattern("e", n), {}
  for i = 1, n, chunk do
    parts[#parts + 1] = out:sub(i, i + chunk - 1)
    parts[#parts + 1] = err:sub(i, i + chunk - 1)
  end
  return table.concat(parts)
end

local function fd_flags(pid, fd)
  local info = util.readfile("/proc/" .. pid .. "/fdinfo/" .. fd) or ""
  return tonumber(info:match("flags:%s*(%d+)") or "0", 8)
end
local O_CLOEXEC = tonumber("2000000", 8)

-- After each test: no unreaped child, no new fd.
local warm, mark, check = util.no_leaks()
setup(warm); before_each(mark); after_each(check)

-- Point 6.
describe("output()", function()
  -- 16 MiB (4 MiB in CI's shortened runs: still four times what a pipe can hold).
  local M = math.max(4, util.scale(16))
  local N = M * MiB

  it(("drains %d MiB on stdout and %d MiB on stderr (a table) without deadlock"):format(M, M), function()
    local cmd = child("write", N)
    local errbuf = {}
    cmd.stderr = errbuf
    local out, err = cmd:output()
    assert.is_nil(err)
    same_bytes(util.pattern("o", N), out, "stdout")
    same_bytes(util.pattern("e", N), table.concat(errbuf), "stderr")
  end)

  it(("drains %d MiB on stdout while stderr (nil) gets %d MiB too"):format(M, M), function()
    local out, err = child("write", N):output()
    assert.is_nil(err)
    same_bytes(util.pattern("o", N), out, "stdout")
  end)

  it(("combined_output() keeps %d MiB in the order written"):format(2 * M), function()
    local out, err = child("write", N, 65536):combined_output()
    assert.is_nil(err)
    same_bytes(interleaved(N, 65536), out, "combined")
  end)

  it("puts the stderr of a failed command in ExitError.stderr", function()
    local out, err = child("stderr", "boom: it broke\n", 3):output()
    assert.is_nil(out)
    assert.are.equal(3, err.exit_code)
    assert.are.equal("boom: it broke\n", err.stderr)
    assert.is_not_nil(err.state)
    assert.are.equal(3, err.state:exit_code())
  end)

  it("bounds ExitError.stderr, keeping its head and tail", function()
    local sh = ("%s %s write %d; exit 4"):format(util.shquote(util.lua()),
      util.shquote(util.child_script), MiB)
    local out, err = exec.command("sh", "-c", sh):output()
    assert.is_nil(out)
    assert.are.equal(4, err.exit_code)
    local pat = util.pattern("e", MiB)
    assert.is_true(#err.stderr > 0 and #err.stderr < MiB, "size " .. #err.stderr)
    assert.are.equal(pat:sub(1, 1000), err.stderr:sub(1, 1000))
    assert.are.equal(pat:sub(-1000), err.stderr:sub(-1000))
  end)

  local limits = {
    { "keeps head and tail and sets truncated past max_output", 100000, 1000, true },
    { "keeps everything under max_output", 500, 1000, false },
    { "keeps everything at exactly max_output", 1000, 1000, false },
  }
  for _, case in ipairs(limits) do
    local label, n, max, truncated = unpack(case)
    it(label .. " (" .. n .. " bytes, max " .. max .. ")", function()
      local cmd = child("write", n)
      cmd.max_output = max
      local out, err = cmd:output()
      assert.is_nil(err)
      local pat = util.pattern("o", n)
      if truncated then
        assert.is_true(cmd.truncated)
        assert.is_true(#out < n)
        assert.is_true(#out <= max + 100, "kept " .. #out .. " bytes")
        assert.are.equal(pat:sub(1, 100), out:sub(1, 100))
        assert.are.equal(pat:sub(-100), out:sub(-100))
      else
        assert.is_falsy(cmd.truncated)
        same_bytes(pat, out, "stdout")
      end
    end)
  end
end)

-- Point 7.
describe("stdio", function()
  local names = { [0] = "stdin", "stdout", "stderr" }
  local kinds = {
    { "nil", nil, "/dev/null" },
    { '"null"', "null", "/dev/null" },
    { '"inherit"', "inherit", nil }, -- nil: the parent's own fd
  }
  for fd = 0, 2 do
    for _, kind in ipairs(kinds) do
      local label, value, target = kind[1], kind[2], kind[3] -- kind has a hole: no unpack
      it(names[fd] .. " = " .. label .. " gives the child " .. (target or "the parent's fd " .. fd), function()
        local report = fd == 1 and 2 or 1 -- the fd the child reports on
        -- $(...) forks, so $$ stays the shell whose fds are the child's.
        local cmd = exec.command("sh", "-c", ('t=$(readlink /proc/$$/fd/%d); echo "$t" >&%d'):format(fd, report))
        cmd[names[fd]] = value
        local buf = {}
        cmd[names[report]] = buf
        assert.is_true(cmd:run())
        local want = target or util.fd_target(util.pid(), fd)
        assert.are.equal(want .. "\n", table.concat(buf))
      end)
    end
  end

  for _, name in ipairs({ "stdout", "stderr" }) do
    it("passes a Lua file as " .. name .. " by fd: the child writes to the same open file description", function()
      local path = util.tmpname()
      util.defer(function() os.remove(path) end)
      local f = assert(io.open(path, "w")) -- not O_APPEND: offsets tell
      f:write("A")
      f:flush()
      local fd = name == "stdout" and 1 or 2
      local other = name == "stdout" and "stderr" or "stdout"
      local cmd = exec.command("sh", "-c",
        ('printf B >&%d; t=$(readlink /proc/$$/fd/%d); echo "$t" >&%d'):format(fd, fd, 3 - fd))
      cmd[name] = f
      local buf = {}
      cmd[other] = buf
      assert.is_true(cmd:run())
      f:write("C")
      f:close()
      assert.are.equal(path .. "\n", table.concat(buf))
      assert.are.equal("ABC", util.readfile(path))
    end)
  end

  it("passes a Lua file as stdin by fd", function()
    local path = util.tmpname()
    util.defer(function() os.remove(path) end)
    util.writefile(path, "from a file\n")
    local f = assert(io.open(path, "r"))
    util.defer(function() f:close() end)
    local cmd = exec.command("sh", "-c", "readlink /proc/$$/fd/0; cat")
    cmd.stdin = f
    assert.are.equal(path .. "\nfrom a file\n", assert(cmd:output()))
  end)

  it("passes an integer fd as stdout", function()
    local path = util.tmpname()
    util.defer(function() os.remove(path) end)
    local f = assert(io.open(path, "w"))
    util.defer(function() f:close() end)
    local fd = assert(util.fd_of(path), "fd of the temp file")
    local cmd = exec.command("sh", "-c", 'printf B; t=$(readlink /proc/$$/fd/1); echo "$t" >&2')
    cmd.stdout = fd
    local buf = {}
    cmd.stderr = buf
    assert.is_true(cmd:run())
    assert.are.equal(path .. "\n", table.concat(buf))
    assert.are.equal("B", util.readfile(path))
  end)

  it("passes a luaposix fd as stdout", function()
    local ok, fcntl = pcall(require, "posix.fcntl")
    if not ok then pending("luaposix is not installed for " .. _VERSION) return end
    local unistd = require "posix.unistd"
    local path = util.tmpname()
    util.defer(function() os.remove(path) end)
    local fd = assert(fcntl.open(path, fcntl.O_WRONLY))
    util.defer(function() unistd.close(fd) end)
    local cmd = exec.command("sh", "-c", "printf B")
    cmd.stdout = fd
    assert.is_true(cmd:run())
    assert.are.equal("B", util.readfile(path))
  end)

  local swaps = {
    { "stdout and stderr swapped (integer fds)", "c.stdout = 2; c.stderr = 1", "to-err", "to-out" },
    { "stdout and stderr swapped (Lua files)", "c.stdout = io.stderr; c.stderr = io.stdout", "to-err", "to-out" },
    { "stdout and stderr both the parent's stdout", "c.stdout = 1; c.stderr = 1", "to-outto-err", "" },
    { "stdout the parent's stderr, stderr inherited", "c.stdout = 2; c.stderr = 'inherit'", "", "to-outto-err" },
  }
  for _, case in ipairs(swaps) do
    it("survives " .. case[1], function()
      local script = ([[
        local exec = require "tether.exec"
        local c = exec.command("sh", "-c", "printf to-out; printf to-err >&2")
        %s
        assert(c:run())
      ]]):format(case[2])
      local out, err, code = util.lua_run(script)
      assert.are.equal(0, code, err)
      assert.are.equal(case[3], out)
      assert.are.equal(case[4], err)
    end)
  end

  local strings = {
    { "a short string", "hello\nworld" },
    { "an empty string", "" },
    { "4 MiB (more than any pipe holds)", util.pattern("i", 4 * MiB) },
  }
  for _, case in ipairs(strings) do
    it("feeds " .. case[1] .. " to stdin", function()
      local cmd = child("cat")
      cmd.stdin = case[2]
      same_bytes(case[2], assert(cmd:output()), "stdout")
    end)
  end

  local sinks = {
    { "a function", function()
        local t = {}
        return function(chunk) if chunk then t[#t + 1] = chunk end end,
          function() return table.concat(t) end
      end },
    { "a table", function()
        local t = {}
        return t, function() return table.concat(t) end
      end },
  }
  for _, sink in ipairs(sinks) do
    it("takes " .. sink[1] .. " as stdout and stderr sinks", function()
      local out_sink, out_get = sink[2]()
      local err_sink, err_get = sink[2]()
      local cmd = child("write", MiB, 1000)
      cmd.stdout = out_sink
      cmd.stderr = err_sink
      assert.is_true(cmd:run())
      same_bytes(util.pattern("o", MiB), out_get(), "stdout")
      same_bytes(util.pattern("e", MiB), err_get(), "stderr")
    end)
  end

  it("streams stdout_pipe():lines() while the child runs, and closing stdin_pipe() gives it EOF", function()
    local cmd = util.reap_later(child("hang"))
    local w = assert(cmd:stdin_pipe())
    local r = assert(cmd:stdout_pipe())
    assert.is_true(cmd:start())
    local next_line = r:lines()
    assert.are.equal("ready", next_line())
    assert.is_true(util.alive(cmd.process.pid))
    assert.is_truthy(w:write("ignored\n"))
    assert.is_truthy(w:close())
    assert.is_nil(next_line())
    assert.is_true(cmd:wait())
    assert.are.equal(0, cmd.process_state:exit_code())
  end)

  it("reads a pipe by line, by count and to the end, as Lua files do", function()
    local cmd = util.reap_later(child("cat"))
    local w = assert(cmd:stdin_pipe())
    local r = assert(cmd:stdout_pipe())
    assert.is_true(cmd:start())
    w:write("one\n")
    assert.are.equal("one", r:read("l"))
    w:write("abcdef\n")
    assert.are.equal("abc", r:read(3))
    assert.are.equal("def", r:read("l"))
    w:write("x", "y", "\n", "last")
    w:close()
    assert.are.equal("xy\nlast", r:read("a"))
    assert.are.equal("", r:read("a"))
    assert.is_nil(r:read("l"))
    assert.is_true(cmd:wait())
  end)

  it("gives an EPIPE error for writing to an exited child's stdin, and the Lua process lives", function()
    local script = ([[
      local exec = require "tether.exec"
      local function sigs()
        local s = io.open("/proc/self/status"):read("*a")
        return s:match("SigBlk:%%s*(%%x+)") .. " " .. s:match("SigIgn:%%s*(%%x+)")
      end
      local before = sigs()
      local cmd = exec.command(%q, %q, "exit", "0")
      local w = assert(cmd:stdin_pipe())
      assert(cmd:start())
      local pid = cmd.process.pid
      for _ = 1, 1000 do -- until the child has exited (zombie or reaped)
        local f = io.open("/proc/" .. pid .. "/stat")
        local s = f and f:read("*a")
        if f then f:close() end
        if not s or s:match("^%%d+ %%b() (%%a)") == "Z" then break end
        os.execute("sleep 0.01")
      end
      local ok, err = w:write(string.rep("x", 200000))
      io.write(tostring(ok), " ", tostring(err and err.code), " ", tostring(err and err.errno), "\n")
      io.stdout:flush()
      w:close()
      io.write("alive ", tostring(cmd:wait()), "\n")
      io.write(before == sigs() and "signal state unchanged\n" or ("signal state " .. before .. " -> " .. sigs() .. "\n"))
    ]]):format(util.lua(), util.child_script)
    local out, err, code = util.lua_run(script)
    assert.are.equal("", err)
    assert.are.equal("nil EPIPE 32\nalive true\nsignal state unchanged\n", out)
    assert.are.equal(0, code)
  end)
end)

-- Point 8.
describe("the fds a child inherits", function()
  local function parse(out)
    local fds, targets = {}, {}
    for fd, target in out:gmatch("(%d+) ([^\n]*)") do
      fds[#fds + 1] = tonumber(fd)
      targets[tonumber(fd)] = target
    end
    return fds, targets
  end

  -- Run cmd (child.lua fds) with stdout captured, stdin and stderr nil
  -- (/dev/null); output() would capture stderr for ExitError, as Go does.
  local function list_fds(cmd)
    local buf = {}
    cmd.stdout = buf
    assert.is_true(cmd:run())
    return parse(table.concat(buf))
  end

  -- Open inheritable things (none O_CLOEXEC): a file, an io.popen pipe, a
  -- socket when luasocket is there. Returns the paths and a closer.
  local function hold_open()
    local path = util.tmpname()
    local f = assert(io.open(path, "w"))
    local p = assert(io.popen("true", "r"))
    local ok, socket = pcall(require, "socket")
    local sock = ok and assert(socket.bind("127.0.0.1", 0)) or nil
    local closer = function()
      f:close(); p:close()
      if sock then sock:close() end
      os.remove(path)
    end
    util.defer(closer)
    -- Make sure the file really is inheritable, or the test proves nothing.
    local fd = assert(util.fd_of(path))
    assert.are.equal(0, math.floor(fd_flags(util.pid(), fd) / O_CLOEXEC) % 2, "precondition: no O_CLOEXEC")
    return path, sock
  end

  it("are only 0, 1 and 2 while the parent holds files, pipes and sockets", function()
    hold_open()
    local fds, targets = list_fds(child("fds"))
    assert.are.same({ 0, 1, 2 }, fds)
    assert.are.equal("/dev/null", targets[0])
    assert.matches("^pipe:%[%d+%]$", targets[1])
    assert.are.equal("/dev/null", targets[2])
  end)

  it("are 0, 1, 2 and extra_files as 3, 4 (a Lua file, an integer fd)", function()
    hold_open()
    local p1, p2 = util.tmpname(), util.tmpname()
    local f1 = assert(io.open(p1, "r"))
    local f2 = assert(io.open(p2, "r"))
    util.defer(function() f1:close(); f2:close(); os.remove(p1); os.remove(p2) end)
    local cmd = child("fds")
    cmd.extra_files = { f1, assert(util.fd_of(p2)) }
    local fds, targets = list_fds(cmd)
    assert.are.same({ 0, 1, 2, 3, 4 }, fds)
    assert.are.equal(p1, targets[3])
    assert.are.equal(p2, targets[4])
  end)

  it("never include an fd that is not open: extra_files = { 2^31 - 1 } fails the dup2 step with EBADF", function()
    -- (found by fuzz/cmd_fuzz.c: the child's fd arithmetic overflowed at INT_MAX, which
    -- check-asan's UBSan reports)
    for _, mode in ipairs({ "direct", "relay" }) do
      local prev = tether.set_spawn_mode(mode)
      local cmd = exec.command("true")
      cmd.extra_files = { 2147483647 }
      local ok, err = cmd:run()
      tether.set_spawn_mode(prev)
      assert.is_nil(ok, mode)
      assert.are.equal("dup2", err.step, mode)
      assert.are.equal(9, err.errno, mode .. ": EBADF, got " .. tostring(err))
    end
  end)

  it("include a luasocket socket passed by its getfd()", function()
    local ok, socket = pcall(require, "socket")
    if not ok then pending("luasocket is not installed for " .. _VERSION) return end
    local sock = assert(socket.bind("127.0.0.1", 0))
    util.defer(function() sock:close() end)
    local cmd = child("fds")
    cmd.extra_files = { sock:getfd() } -- a float (3.0) under Lua 5.4
    local fds, targets = list_fds(cmd)
    assert.are.same({ 0, 1, 2, 3 }, fds)
    assert.matches("^socket:%[%d+%]$", targets[3])
  end)

  it("include an extra file whose parent fd is one of 0..4", function()
    local p1 = util.tmpname()
    local f1 = assert(io.open(p1, "r"))
    util.defer(function() f1:close(); os.remove(p1) end)
    local cmd = child("fds")
    -- the parent's stdin/stderr as fd 3/4, then a file as fd 5
    cmd.extra_files = { 0, 2, f1 }
    local fds, targets = list_fds(cmd)
    assert.are.same({ 0, 1, 2, 3, 4, 5 }, fds)
    assert.are.equal(util.fd_target(util.pid(), 0), targets[3])
    assert.are.equal(util.fd_target(util.pid(), 2), targets[4])
    assert.are.equal(p1, targets[5])
  end)

  it("are checked from outside too: a running child has only 0, 1, 2", function()
    hold_open()
    local cmd = util.reap_later(child("hang"))
    local w = assert(cmd:stdin_pipe())
    local r = assert(cmd:stdout_pipe())
    assert.is_true(cmd:start())
    assert.are.equal("ready", r:read("l"))
    assert.are.same({ 0, 1, 2 }, util.fds_of(cmd.process.pid))
    w:close()
    assert.are.equal("", r:read("a"))
    assert.is_true(cmd:wait())
  end)
end)
