--- tether: Go's process model for Lua (os/exec, os/signal, context).
--
-- The top-level module: clock, identity, sleep, exit, main, and the waiter.
-- Sub-modules load on first use: tether.exec, tether.errors, tether.env.
local core = require "tether.core"
local wait = require "tether.wait"

local tether = { _VERSION = "tether scm" }

--- now() -> seconds on tether's monotonic clock (CLOCK_MONOTONIC).
tether.now = core.now

--- sleep(seconds): sleeps this long; signals do not cut it short.
-- With a custom waiter, the waiter does the sleeping (it may yield).
function tether.sleep(seconds)
  if type(seconds) ~= "number" or seconds ~= seconds then
    error("bad argument #1 to 'sleep' (number expected, got " .. type(seconds) .. ")", 2)
  end
  local deadline = core.now() + math.max(0, seconds)
  if wait.waiter then
    while core.now() < deadline do wait.waiter(-1, "r", deadline - core.now()) end
  else
    core.sleep_until(deadline)
  end
end

--- pid() -> this process's id.  ppid() -> its parent's id.
tether.pid = core.pid
tether.ppid = core.ppid

--- executable() -> the path of the running program (/proc/self/exe), or nil, err.
function tether.executable()
  local path, errno = core.executable()
  if path then return path end
  return nil, require("tether.errors").from_errno("readlink", "/proc/self/exe", errno)
end

--- threads() -> the number of OS threads in this process.
function tether.threads()
  return (assert(core.threads()))
end

--- exit(code): exits the process with code (default 0; true = 0, false = 1),
-- closing the Lua state first so finalizers run (where the Lua version can).
function tether.exit(code)
  if code == nil or code == true then code = 0 elseif code == false then code = 1 end
  if _VERSION == "Lua 5.1" then os.exit(code) end
  os.exit(code, true)
end

--- main(fn, ...): runs fn(...); an error prints its message to stderr and
-- exits 1 (to-be-closed variables of fn have run by then); otherwise exits
-- with fn's result when it is a number, else 0. Finalizers run before exit.
function tether.main(fn, ...)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'main' (function expected, got " .. type(fn) .. ")", 2)
  end
  local res = { pcall(fn, ...) }
  if not res[1] then
    local msg = res[2]
    io.stderr:write(tostring(msg), "\n")
    io.stderr:flush()
    tether.exit(1)
  end
  io.stdout:flush()
  tether.exit(type(res[2]) == "number" and res[2] or 0)
end

--- set_waiter(fn): makes every blocking call in tether wait through
-- fn(fd, events, timeout) (fd an integer, events "r"/"w"/"rw", timeout
-- seconds or nil; fd -1 means "just sleep"), e.g. to yield in a coroutine
-- scheduler. nil restores the default: poll(2) in this thread.
function tether.set_waiter(fn)
  if fn ~= nil and type(fn) ~= "function" then
    error("bad argument #1 to 'set_waiter' (function or nil expected)", 2)
  end
  wait.waiter = fn
end

local submodules = { exec = true, errors = true, env = true, signal = true, context = true }

return setmetatable(tether, {
  __index = function(t, k)
    if submodules[k] then
      local m = require("tether." .. k)
      rawset(t, k, m)
      return m
    end
  end,
})
