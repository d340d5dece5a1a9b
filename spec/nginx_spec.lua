-- tether inside real nginx (Debian's nginx + libnginx-mod-http-lua, LuaJIT):
-- examples/openresty/nginx.conf and handler.lua, tether.waiters.ngx.
--
-- Starts nginx on a free loopback port with a config in a temp dir, runs a
-- handler that runs `sleep 1` through tether while another location keeps
-- answering, and checks that tether left the worker's signal dispositions
-- (SigCgt) and nginx's own processes alone. Pends when nginx, its Lua module
-- or curl is missing. Builds tether.core for LuaJIT first (make LUA=luajit).

local NGINX = "/usr/sbin/nginx"
local LUA_MODULE = "/usr/lib/nginx/modules/ngx_http_lua_module.so"

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() return true end
  return false
end

local readfile = require("helpers.util").readfile

local function writefile(path, data)
  local f = assert(io.open(path, "wb"))
  assert(f:write(data))
  f:close()
end

-- sh(cmd) -> true when cmd exits 0 (os.execute's result differs between 5.1 and 5.2+).
local function sh(cmd)
  local r = os.execute(cmd)
  return r == true or r == 0
end

local function capture(cmd)
  local p = assert(io.popen(cmd, "r"))
  local s = p:read("*a")
  p:close()
  return s
end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function sleep(s) sh("sleep " .. s) end

-- alive(pid): the process exists and is not a zombie.
local function alive(pid)
  local s = pid and readfile("/proc/" .. pid .. "/status")
  return s ~= nil and not s:match("State:%s*Z")
end

-- The pids of pid's children, sorted, as one string.
local function children(pid)
  local list = {}
  for p in capture("pgrep -P " .. pid .. " 2>/dev/null"):gmatch("%d+") do list[#list + 1] = tonumber(p) end
  table.sort(list)
  return table.concat(list, " ")
end

local function sigcgt(pid)
  local s = readfile("/proc/" .. pid .. "/status") or ""
  return s:match("SigCgt:%s*(%x+)")
end

local function free_port()
  local ok, socket = pcall(require, "socket")
  if ok then
    local srv = socket.bind("127.0.0.1", 0)
    if srv then
      local _, port = srv:getsockname()
      srv:close()
      if tonumber(port) then return tonumber(port) end
    end
  end
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 100000)
  return math.random(20000, 60000)
end

local function missing()
  if not exists(NGINX) then return "nginx is not installed (Debian: nginx)" end
  if not exists(LUA_MODULE) then return "nginx's Lua module is not installed (Debian: libnginx-mod-http-lua)" end
  if not sh("command -v curl >/dev/null 2>&1") then return "curl is not installed" end
  if not sh("command -v luajit >/dev/null 2>&1") then return "luajit is not installed (nginx's Lua is LuaJIT)" end
  return nil
end

local REPO = (capture("pwd"):gsub("%s+$", ""))

describe("tether in nginx (waiters.ngx)", function()
  local why = missing()
  if why then
    it("runs commands inside an nginx worker", function() pending(why) end)
    return
  end

  local tmp, master, port, url

  setup(function()
    -- nginx's Lua is LuaJIT: build tether.core for it (quietly: busted's TAP is on stdout).
    local log = os.tmpname()
    local ok = sh("env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -C " .. q(REPO)
      .. " LUA=luajit >" .. q(log) .. " 2>&1")
    local out = readfile(log) or ""
    os.remove(log)
    assert(ok, "make LUA=luajit failed:\n" .. out)
    assert(exists(REPO .. "/build/luajit/tether/core.so"), "no build/luajit/tether/core.so")

    tmp = (capture("mktemp -d /tmp/tether-nginx.XXXXXX"):gsub("%s+$", ""))
    assert(tmp ~= "", "mktemp failed")
    sh("chmod 755 " .. q(tmp)) -- the worker (user nobody when started as root) writes temp files there
    port = free_port()
    url = "http://127.0.0.1:" .. port
    local conf = assert(readfile(REPO .. "/examples/openresty/nginx.conf"))
    conf = conf:gsub("@PREFIX@", tmp):gsub("@PORT@", tostring(port)):gsub("@REPO@", REPO)
    writefile(tmp .. "/nginx.conf", conf)

    -- nginx daemonizes; the master's pid is in the pid file. No LUA_PATH/LUA_CPATH
    -- from the test run: the config says where tether is.
    local started = sh("env -u LUA_PATH -u LUA_CPATH " .. NGINX .. " -p " .. q(tmp) .. " -c " .. q(tmp .. "/nginx.conf")
      .. " -e " .. q(tmp .. "/error.log")
      .. " -g " .. q("error_log " .. tmp .. "/error.log;") .. " >" .. q(tmp .. "/start.log") .. " 2>&1")
    assert(started, "nginx did not start:\n" .. (readfile(tmp .. "/start.log") or "")
      .. (readfile(tmp .. "/error.log") or ""))
    for _ = 1, 50 do -- up to 5 s for the pid file and the port
      master = tonumber((readfile(tmp .. "/nginx.pid") or ""):match("%d+"))
      if master and sh("curl -s -m 1 -o /dev/null " .. q(url .. "/ping")) then break end
      sleep(0.1)
    end
    assert(master, "nginx wrote no pid file:\n" .. (readfile(tmp .. "/error.log") or ""))
    assert(sh("curl -s -m 2 -o /dev/null " .. q(url .. "/ping")),
      "nginx does not answer on " .. url .. ":\n" .. (readfile(tmp .. "/error.log") or ""))
  end)

  teardown(function()
    if master and alive(master) then
      sh("kill -QUIT " .. master .. " 2>/dev/null")
      for _ = 1, 50 do
        if not alive(master) then break end
        sleep(0.1)
      end
      if alive(master) then sh("kill -KILL " .. master .. " 2>/dev/null") end
    end
    if tmp and tmp:match("^/tmp/tether%-nginx%.") then sh("rm -rf " .. q(tmp)) end
  end)

  -- What the run below saw: filled in by the second setup, checked by the its.
  local seen

  setup(function()
    local workers = children(master)
    assert(workers:match("^%d+$"), "expected one worker, got: " .. workers)
    local worker = tonumber(workers)
    seen = { workers = workers, worker = worker, cgt_before = sigcgt(worker) }
    assert(seen.cgt_before, "no SigCgt for the worker " .. worker)

    -- /run in the background; three pings while its `sleep 1` runs, each timed by curl.
    local script = table.concat({
      "curl -sS -m 10 -o " .. q(tmp .. "/run.body") .. " -w '%{http_code} %{time_total}' "
        .. q(url .. "/run") .. " >" .. q(tmp .. "/run.meta") .. " 2>&1 &",
      "r=$!",
      "for i in 1 2 3; do sleep 0.25;",
      "  curl -sS -m 5 -o " .. q(tmp .. "/ping.body") .. " -w '%{http_code} %{time_total}\\n' "
        .. q(url .. "/ping") .. " >>" .. q(tmp .. "/ping.meta") .. " 2>&1;",
      "done",
      "wait $r",
    }, "\n")
    assert(sh("timeout 20 sh -c " .. q(script)), "the curl script failed or timed out")
    seen.run_meta = readfile(tmp .. "/run.meta") or ""
    seen.run_body = readfile(tmp .. "/run.body") or ""
    seen.ping_meta = readfile(tmp .. "/ping.meta") or ""
    seen.ping_body = readfile(tmp .. "/ping.body") or ""
    seen.cgt_after = sigcgt(worker)
    seen.alive_after = alive(worker)
    seen.workers_after = children(master)
    seen.worker_children = children(worker)
    seen.errlog = readfile(tmp .. "/error.log") or ""
  end)

  it("answers another location within 100 ms while a handler runs sleep 1", function()
    local pings = 0
    for code, t in seen.ping_meta:gmatch("(%d+) ([%d.]+)") do
      pings = pings + 1
      assert.are.equal("200", code)
      assert.is_true(tonumber(t) < 0.1, "ping took " .. t .. " s while /run was running")
    end
    assert.are.equal(3, pings, seen.ping_meta)
    assert.are.equal("pong\n", seen.ping_body)
    -- The pings ran at 0.25, 0.5, 0.75 s: inside /run, which took at least its `sleep 1`.
    local total = tonumber(seen.run_meta:match("^%d+ ([%d.]+)"))
    assert.is_true(total ~= nil and total >= 0.9, "run: " .. seen.run_meta)
  end)

  it("returns the commands' output and exit codes from the handler", function()
    local code = seen.run_meta:match("^(%d+)")
    assert.are.equal("200", code, "run: " .. seen.run_meta .. "\n" .. seen.run_body .. "\n" .. seen.errlog)
    assert.is_truthy(seen.run_body:match("sleep exit=0 "), seen.run_body)
    assert.is_truthy(seen.run_body:match("sh exit=3 output=hello from tether\n"), seen.run_body)
  end)

  it("runs a command in nginx's thread pool (ngx.run_worker_thread, default waiter)", function()
    -- Ten times: a host's SIGCHLD handler racing tether for the child's status loses
    -- only some of the time.
    for i = 1, 10 do
      local body = capture("curl -sS -m 10 " .. q(url .. "/thread") .. " 2>&1")
      assert.are.equal("from a worker thread\n", body, "request " .. i)
    end
  end)

  it("answers a program's prompt through a pty inside the worker (tether.waiters.ngx)", function()
    local body = capture("curl -sS -m 15 " .. q(url .. "/pty") .. " 2>&1")
    assert.are.equal("pty: hello nginx\n", body, readfile(tmp .. "/error.log") or "")
  end)

  it("leaves the worker's SigCgt and nginx's own processes alone", function()
    assert.is_truthy(seen.alive_after, "the worker died")
    assert.are.equal(seen.workers, seen.workers_after, "the master's children changed")
    assert.are.equal(seen.cgt_before, seen.cgt_after, "the worker's SigCgt changed")
    -- tether's children are gone (no zombies left), and nginx logged no crash.
    assert.are.equal("", seen.worker_children)
    assert.is_falsy(seen.errlog:match("exited on signal"), seen.errlog)
    assert.is_falsy(seen.errlog:match("%[alert%]"), seen.errlog)
  end)
end)
