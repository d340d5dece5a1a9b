-- tether.systemd: sd_notify's datagram, socket activation fds, the watchdog interval.
-- Issue #5 acceptance point 4. The datagram is read back from a socket the spec binds:
-- with luasocket's socket.unix (an independent oracle) where Debian ships it, and with
-- systemd.listen for abstract addresses (luasocket cannot bind those).
local tether = require "tether"
local exec = require "tether.exec"
local env = require "tether.env"
local errors = require "tether.errors"
local systemd = require "tether.systemd"
local util = require "helpers.util"

local warm, mark, check = util.no_leaks()
setup(warm)
before_each(mark)
after_each(check)

local VARS = { "NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID" }
local saved
before_each(function()
  saved = {}
  for _, k in ipairs(VARS) do saved[k] = env.get(k); env.unset(k) end
end)
after_each(function()
  for _, k in ipairs(VARS) do
    if saved[k] then env.set(k, saved[k]) else env.unset(k) end
  end
end)

local has_luasocket_unix, unix = pcall(require, "socket.unix")

-- A fresh socket path in a fresh directory (removed after the test).
local function socket_path()
  local dir = util.tmpdir()
  util.defer(function() os.execute("rm -rf " .. util.shquote(dir)) end)
  return dir .. "/notify.sock"
end

-- Reads one datagram from a tether fd made by systemd.listen, waiting up to 10 s.
local function recv(fd)
  local deadline = tether.now() + 10
  while tether.now() < deadline do
    local data = fd:read(65536)
    if data then return data end
    tether.wait_any({ { pollfd = fd:getfd(), events = "r" } }, 1)
  end
  error("no datagram arrived")
end

describe("systemd.notify", function()
  it("sends the exact datagram to a socket path (read with luasocket)", function()
    if not has_luasocket_unix then pending("luasocket's socket.unix is not installed for " .. _VERSION) return end
    local path = socket_path()
    local sock = assert(unix.dgram())
    util.defer(function() sock:close() end)
    assert(sock:bind(path))
    sock:settimeout(10)
    env.set("NOTIFY_SOCKET", path)
    assert.is_true(systemd.notify("READY=1\nSTATUS=serving on :8080"))
    assert.are.equal("READY=1\nSTATUS=serving on :8080", sock:receive())
    assert.is_true(systemd.notify { STATUS = "draining", READY = 1, MAINPID = 4242, STOPPING = true })
    assert.are.equal("READY=1\nMAINPID=4242\nSTATUS=draining\nSTOPPING=1\n", sock:receive())
    assert.is_true(systemd.notify_watchdog())
    assert.are.equal("WATCHDOG=1", sock:receive())
  end)

  it("sends to an abstract address (@name)", function()
    local name = ("@tether-spec-%d-%d"):format(tether.pid(), math.random(1, 1e9))
    local fd = assert(systemd.listen(name))
    util.defer(function() fd:close() end)
    -- really abstract: no file appears for it
    assert.is_nil(util.readfile(name:sub(2)))
    env.set("NOTIFY_SOCKET", name)
    assert.is_true(systemd.notify { READY = true })
    assert.are.equal("READY=1\n", recv(fd))
    assert.is_true(systemd.notify("RELOADING=1"))
    assert.are.equal("RELOADING=1", recv(fd))
  end)

  it("receives on a path socket made by systemd.listen too", function()
    local path = socket_path()
    local fd = assert(systemd.listen(path))
    util.defer(function() fd:close() end)
    env.set("NOTIFY_SOCKET", path)
    assert.is_true(systemd.notify("READY=1"))
    assert.are.equal("READY=1", recv(fd))
  end)

  it("says plainly when not under systemd, and sends nothing", function()
    local ok, why = systemd.notify("READY=1")
    assert.is_false(ok)
    assert.are.equal("not under systemd", why)
    assert.are.equal(systemd.NOT_UNDER_SYSTEMD, why)
    assert.are.same({ false, "not under systemd" }, { systemd.notify_watchdog() })
  end)

  it("removes NOTIFY_SOCKET with unset_env, so children do not inherit it", function()
    local name = ("@tether-spec-unset-%d"):format(tether.pid())
    local fd = assert(systemd.listen(name))
    util.defer(function() fd:close() end)
    env.set("NOTIFY_SOCKET", name)
    assert.is_true(systemd.notify("READY=1", true))
    assert.are.equal("READY=1", recv(fd))
    assert.is_nil(env.get("NOTIFY_SOCKET"))
    assert.are.equal("NOTIFY_SOCKET unset\n", assert(exec.command(util.lua(), util.child_script, "env", "NOTIFY_SOCKET"):output()))
  end)

  it("returns an error for a socket nobody listens on", function()
    env.set("NOTIFY_SOCKET", socket_path())
    local ok, err = systemd.notify("READY=1")
    assert.is_nil(ok)
    assert.is_true(errors.is_error(err))
    assert.are.equal("ENOENT", err.code)
    assert.are.equal("notify", err.op)
  end)

  it("returns an error for an address it cannot use", function()
    for _, addr in ipairs { "relative/sock", "vsock:2:1234", "/" .. string.rep("x", 200) } do
      env.set("NOTIFY_SOCKET", addr)
      local ok, err = systemd.notify("READY=1")
      assert.is_nil(ok, addr)
      assert.is_truthy(err.errno, addr)
    end
  end)

  local bad = {
    { "nil", nil, "string or table expected, got nil" },
    { "an empty string", "", "state must not be empty" },
    { "an empty table", {}, "state must not be empty" },
    { "NUL in the string", "READY=1\0", "state contains NUL" },
    { "a key with =", { ["A=B"] = 1 }, "keys must be non-empty strings" },
    { "a value with a newline", { STATUS = "a\nb" }, "value of STATUS contains a newline" },
    { "a table value", { STATUS = {} }, "value of STATUS must be a string, number or boolean" },
  }
  for _, case in ipairs(bad) do
    it("raises naming the argument for " .. case[1], function()
      local ok, err = pcall(systemd.notify, case[2])
      assert.is_false(ok)
      assert.is_truthy(tostring(err):find("bad argument #1 to 'notify'", 1, true), tostring(err))
      assert.is_truthy(tostring(err):find(case[3], 1, true), tostring(err))
    end)
  end

  it("listen raises naming the argument for a non-string", function()
    local ok, err = pcall(systemd.listen, 5)
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find("bad argument #1 to 'listen' (string expected, got number)", 1, true))
  end)
end)

describe("systemd.listen_fds", function()
  -- Runs a Lua child that reports systemd.listen_fds(true), with fds passed as extra_files
  -- and LISTEN_PID set to its own pid by a shell that then execs Lua (exec keeps the pid).
  local script = [[
    local systemd = require "tether.systemd"
    local fds, err = systemd.listen_fds(true)
    if not fds then print("error " .. tostring(err) .. " " .. tostring(err.code)) return end
    print("count " .. #fds)
    for _, f in ipairs(fds) do
      local flags = io.open("/proc/self/fdinfo/" .. f.fd):read("*a"):match("flags:%s*(%d+)")
      local cloexec = math.floor(tonumber(flags, 8) / 524288) % 2 == 1 -- O_CLOEXEC is 02000000
      local target = io.popen("readlink /proc/" .. require("tether").pid() .. "/fd/" .. f.fd):read("*l")
      print(("fd %d %s %s %s"):format(f.fd, f.name, target, cloexec and "cloexec" or "inherited"))
    end
    print("LISTEN_PID " .. tostring(os.getenv("LISTEN_PID")) .. " LISTEN_FDS " .. tostring(os.getenv("LISTEN_FDS")))
  ]]

  local function run_child(extra_files, vars, pid_expr)
    local list = env.environ()
    for k, v in pairs(vars) do list[#list + 1] = k .. "=" .. v end
    local c = exec.command("sh", "-c", "LISTEN_PID=" .. (pid_expr or "$$") .. ' exec "$0" -e "$1"', util.lua(), script)
    c.env = list
    c.extra_files = extra_files
    c.stderr = "inherit"
    return assert(c:output())
  end

  it("returns the fds a parent passed, named, marked close-on-exec, and unsets the variables", function()
    local tmp = util.tmpname()
    local r, w = assert(io.open("/dev/null", "r")), assert(io.open(tmp, "w"))
    util.defer(function() r:close(); w:close(); os.remove(tmp) end)
    local out = run_child({ r, w }, { LISTEN_FDS = "2", LISTEN_FDNAMES = "http:admin" })
    assert.are.equal("count 2\n" ..
      "fd 3 http /dev/null cloexec\n" ..
      "fd 4 admin " .. tmp .. " cloexec\n" ..
      "LISTEN_PID nil LISTEN_FDS nil\n", out)
  end)

  it("names the fds unknown without LISTEN_FDNAMES", function()
    local r = assert(io.open("/dev/null", "r"))
    util.defer(function() r:close() end)
    local out = run_child({ r }, { LISTEN_FDS = "1" })
    assert.is_truthy(out:find("count 1\nfd 3 unknown /dev/null cloexec\n", 1, true), out)
  end)

  it("returns an empty list when LISTEN_PID is another process's", function()
    local r = assert(io.open("/dev/null", "r"))
    util.defer(function() r:close() end)
    local out = run_child({ r }, { LISTEN_FDS = "1" }, "1")
    assert.is_truthy(out:find("^count 0\n"), out)
  end)

  it("returns an error for an fd that is not open", function()
    local r = assert(io.open("/dev/null", "r"))
    util.defer(function() r:close() end)
    local out = run_child({ r }, { LISTEN_FDS = "2" })
    assert.is_truthy(out:find("^error listen_fds fd 4: .* EBADF\n"), out)
  end)

  it("returns EINVAL for malformed variables", function()
    local r = assert(io.open("/dev/null", "r"))
    util.defer(function() r:close() end)
    local out = run_child({ r }, { LISTEN_FDS = "1", LISTEN_FDNAMES = "a:b" })
    assert.is_truthy(out:find("^error listen_fds LISTEN_FDNAMES: .* EINVAL\n"), out)
    out = run_child({ r }, { LISTEN_FDS = "one" })
    assert.is_truthy(out:find("^error listen_fds LISTEN_FDS: .* EINVAL\n"), out)
  end)

  it("returns an empty list when nothing was passed", function()
    assert.are.same({}, systemd.listen_fds())
    env.set("LISTEN_PID", tostring(tether.pid()))
    env.set("LISTEN_FDS", "0")
    assert.are.same({}, systemd.listen_fds(true))
    assert.is_nil(env.get("LISTEN_PID"))
    assert.is_nil(env.get("LISTEN_FDS"))
  end)
end)

describe("systemd.watchdog_interval", function()
  it("is nil when the watchdog is off", function()
    assert.is_nil(systemd.watchdog_interval())
  end)

  it("gives WATCHDOG_USEC in seconds for this process", function()
    env.set("WATCHDOG_USEC", "1500000")
    assert.are.equal(1.5, systemd.watchdog_interval())
    env.set("WATCHDOG_PID", tostring(tether.pid()))
    assert.are.equal(1.5, systemd.watchdog_interval())
  end)

  it("is nil when WATCHDOG_PID names another process", function()
    env.set("WATCHDOG_USEC", "1500000")
    env.set("WATCHDOG_PID", "1")
    assert.is_nil(systemd.watchdog_interval())
  end)

  it("returns EINVAL for malformed values", function()
    for _, v in ipairs { "soon", "0", "-5" } do
      env.set("WATCHDOG_USEC", v)
      local n, err = systemd.watchdog_interval()
      assert.is_nil(n, v)
      assert.are.equal("EINVAL", err.code, v)
    end
  end)
end)
