--- tether: Go's process model for Lua (os/exec, os/signal, context).
--
-- The top-level module: clock, identity, sleep, exit, main, and the waiter.
-- Sub-modules load on first use: tether.exec, tether.errors, tether.env, tether.signal,
-- tether.context, tether.fs, tether.sync.
local core = require "tether.core"
local wait = require "tether.wait"

local tether = { _VERSION = "tether scm" }
local unpack = table.unpack or unpack -- luacheck: ignore 143

--- now() -> seconds on tether's monotonic clock (CLOCK_MONOTONIC).
tether.now = core.now

--- sleep(seconds [, ctx]) -> true | nil, err: sleeps this long (math.huge: until ctx is
-- done, or for ever without ctx); signals do not cut it short. With ctx, returns nil,
-- ctx:err() as soon as ctx is done (nil, err too when the OS refused the wait).
-- With a custom waiter, the waiter does the sleeping (it may yield).
function tether.sleep(seconds, ctx)
  if type(seconds) ~= "number" or seconds ~= seconds then
    error("bad argument #1 to 'sleep' (number expected, got " .. type(seconds) .. ")", 2)
  end
  local deadline = core.now() + math.max(0, seconds)
  if ctx ~= nil then
    if not wait.is_context(ctx) then
      error("bad argument #2 to 'sleep' (context expected, got " .. type(ctx) .. ")", 2)
    end
    while not ctx:done() do
      local list = wait.add_ctx({}, ctx)
      local d = deadline
      local cd = ctx:deadline()
      if cd and cd < d then d = cd end
      if core.now() >= deadline then return true end
      if #list == 0 then
        core.sleep_until(d)
      else
        local ok, err = wait.wait_many(list, d)
        if ok == nil then return nil, err end
      end
    end
    return nil, ctx:err()
  end
  if wait.waiter then
    while core.now() < deadline do wait.waiter(-1, "r", deadline - core.now()) end
  else
    core.sleep_until(deadline)
  end
  return true
end

--- cgroup_root([path]) -> the cgroup v2 directory below which commands with
-- cmd.cgroup get their groups | nil, err when there is none. With path (absolute):
-- sets it; false: back to the default, the cgroup tether runs in. See
-- tether.cgroup and docs/containment.md.
function tether.cgroup_root(path)
  return require("tether.cgroup").root(path)
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

--- threads() -> the number of OS threads in this process, or nil, err when
-- /proc/self/task cannot be read.
function tether.threads()
  local n, errno = core.threads()
  if n then return n end
  return nil, require("tether.errors").from_errno("opendir", "/proc/self/task", errno)
end

-- The cpu.max files that bound this process: its cgroup v2 directory and each parent up to
-- the cgroup2 mount (tether.cgroup finds both from /proc/self/cgroup and mountinfo). In a
-- cgroup namespace (a container) the mount's own directory is the container's cgroup, with
-- its cpu.max; the host's root cgroup has none.
local function cpu_max_files()
  local cgroup = require "tether.cgroup"
  local mnt = cgroup.mount()
  local dir = mnt and cgroup.default_root()
  if not dir then return {} end
  local files = {}
  while #dir > #mnt do
    files[#files + 1] = dir .. "/cpu.max"
    dir = dir:match("^(.*)/[^/]*$")
  end
  files[#files + 1] = mnt .. "/cpu.max"
  return files
end

-- The CPU cap of one cpu.max file ("QUOTA PERIOD" or "max PERIOD"): ceil(quota / period),
-- at least 1; nil for no cap, a missing file or one that cannot be parsed.
local function quota_cap(path)
  local lines = require("tether.cgroup")._read_lines(path)
  local q, p = (lines and lines[1] or ""):match("^%s*(%S+)%s+(%d+)%s*$")
  if not q or q == "max" or not q:match("^%d+$") or tonumber(p) == 0 then return nil end
  return math.max(1, math.ceil(tonumber(q) / tonumber(p)))
end

--- cpus([opts]) -> the number of CPUs this process may use: the CPUs of its
-- affinity mask (sched_getaffinity; taskset and cpusets change it), capped
-- by the cgroup v2 CPU quota (`cpu.max` of this process's cgroup and its
-- parents: ceil(quota / period), at least 1; "max" is no cap). At least 1.
-- opts.cpu_max: the path of a cpu.max file to read instead of the cgroup's
-- (for tests and unusual mounts). The default size of tether.pool.
function tether.cpus(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #1 to 'cpus' (table or nil expected, got " .. type(opts) .. ")", 2)
  end
  local path = opts and opts.cpu_max
  if path ~= nil and type(path) ~= "string" then
    error("bad argument #1 to 'cpus' (field 'cpu_max' must be a path)", 2)
  end
  local n = core.cpu_count() or 1
  for _, f in ipairs(path and { path } or cpu_max_files()) do
    local cap = quota_cap(f)
    if cap and cap < n then n = cap end
  end
  return math.max(1, n)
end

--- exit(code): exits the process with code (default 0; true = 0, false = 1),
-- closing the Lua state first so finalizers run (where the Lua version can).
function tether.exit(code)
  if code == nil or code == true then code = 0 elseif code == false then code = 1 end
  if _VERSION == "Lua 5.1" then os.exit(code) end
  os.exit(code, true)
end

-- The place an error came from: "source:line" of the first Lua function on the stack
-- above the message handler (error and assert are C functions: their caller), or nil.
local function error_place(level)
  while true do
    local info = debug.getinfo(level, "Sl")
    if not info then return nil end
    if info.what ~= "C" and (info.currentline or -1) > 0 then
      return info.short_src .. ":" .. info.currentline
    end
    level = level + 1
  end
end

-- main's message handler: the message, prefixed with the place it came from unless it
-- already starts with one (error("text") adds it, error(err_object) and assert(nil, err)
-- do not), and the traceback up to main's own frames.
local function main_handler(e, wrapper)
  local ok, msg = pcall(tostring, e)
  if not ok or type(msg) ~= "string" then msg = "(error object is a " .. type(e) .. " value)" end
  if not msg:match("^[^\n]-:%d+: ") then
    local place = error_place(4)
    if place then msg = place .. ": " .. msg end
  end
  local tb = debug.traceback("", 3):gsub("^\n", "")
  local w = debug.getinfo(wrapper, "S")
  local at = tb:find("<" .. w.short_src .. ":" .. w.linedefined .. ">", 1, true)
  local cut = at and (tb:sub(1, at):match(".*()\n")) -- the start of the wrapper's line
  if cut then tb = tb:sub(1, cut - 1) end
  return msg .. "\n" .. tb
end

--- main(fn, ...): runs fn(...); an uncaught error prints its message, prefixed with the
-- place it came from ("script.lua:12: exec: ..."; a tether error object is printed with
-- tostring), and a traceback to stderr, and exits 1 (to-be-closed variables of fn have
-- run by then); otherwise exits with fn's result when it is a number, else 0. Finalizers
-- run before exit (Lua 5.2+).
function tether.main(fn, ...)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'main' (function expected, got " .. type(fn) .. ")", 2)
  end
  local args, n = { ... }, select("#", ...)
  local function wrapper()
    local r = { fn(unpack(args, 1, n)) } -- not a tail call: fn's caller stays in the traceback
    return r[1]
  end
  local res = { xpcall(wrapper, function(e)
    local m = main_handler(e, wrapper)
    return m -- not a tail call: the levels main_handler counts stay put
  end) }
  if not res[1] then
    io.stdout:flush()
    io.stderr:write(res[2], "\n")
    io.stderr:flush()
    tether.exit(1)
  end
  io.stdout:flush()
  tether.exit(type(res[2]) == "number" and res[2] or 0)
end

--- trace([fn]) -> the previous setting. Reports every command tether starts and every
-- command whose wait ends, one line each (the argv as tostring(cmd) quotes it, the pid,
-- for the end the time since the start and the status):
--   tether: start pid 4242: /bin/sh -c 'echo hi'
--   tether: end pid 4242 after 0.004s: exit status 0: /bin/sh -c 'echo hi'
-- fn: a function, called as fn(line, info) (info: event "start"|"end", cmd, argv, pid,
-- and for "end" duration, state, status, err); true: the lines go to stderr; false: off,
-- whatever TETHER_TRACE says; nil: the default, TETHER_TRACE decides (set to anything
-- but "" or "0" in the environment: lines to stderr). An error in fn is reported on
-- stderr and does not affect the command.
function tether.trace(fn)
  if fn ~= nil and type(fn) ~= "function" and type(fn) ~= "boolean" then
    error("bad argument #1 to 'trace' (function, boolean or nil expected, got " .. type(fn) .. ")", 2)
  end
  return require("tether.trace").set(fn)
end

--- set_waiter(fn): makes every blocking call in tether wait through
-- fn(fd, events, timeout) (fd an integer, events "r"/"w"/"rw", timeout
-- seconds or nil; fd -1 means "just sleep"), e.g. to yield in a coroutine
-- scheduler. nil restores the default: poll(2) in this thread.
-- on_close(fd), when given, is called before tether closes an fd it gave the
-- waiter (the waiter is only ever given private epoll fds); for waiters.cqueues
-- it is cqueues.cancel.
function tether.set_waiter(fn, on_close)
  if fn ~= nil and type(fn) ~= "function" then
    error("bad argument #1 to 'set_waiter' (function or nil expected)", 2)
  end
  if on_close ~= nil and type(on_close) ~= "function" then
    error("bad argument #2 to 'set_waiter' (function or nil expected)", 2)
  end
  if fn ~= nil and fn == tether.waiters.cqueues and on_close == nil then
    on_close = function(fd) require("cqueues").cancel(fd) end
  end
  wait.waiter = fn
  wait.on_close = fn and on_close or nil
  wait.waiter_many = fn ~= nil and fn == tether.waiters.ngx and require("tether.ngx").wait_many or nil
  -- nginx workers reap every child in their SIGCHLD handler: guard tether's, in this
  -- thread, from its next spawn on (so init_by_lua, in the master, arms it for the workers).
  core.guard_children(fn ~= nil and fn == tether.waiters.ngx, true)
end

--- set_spawn_mode(mode) -> previous mode. mode "auto" (the default),
-- "direct" or "relay" (raises on anything else). In relay mode each command
-- runs under a small intermediate that tether owns and that a host's
-- waitpid(-1) cannot see; it collects the command's status and rusage.
-- "auto" relays when SIGCHLD is ignored or has SA_NOCLDWAIT at spawn time,
-- and inside nginx (tether.in_nginx()). Process-wide.
function tether.set_spawn_mode(mode)
  if type(mode) ~= "string" then
    error("bad argument #1 to 'set_spawn_mode' (\"auto\", \"direct\" or \"relay\" expected, got " .. type(mode) .. ")", 2)
  end
  if mode ~= "auto" and mode ~= "direct" and mode ~= "relay" then
    error("bad argument #1 to 'set_spawn_mode' (\"auto\", \"direct\" or \"relay\" expected, got \"" .. mode .. "\")", 2)
  end
  return core.set_spawn_mode(mode)
end

--- spawn_mode() -> "auto" | "direct" | "relay": the mode set_spawn_mode set.
function tether.spawn_mode() return core.spawn_mode() end

--- in_nginx() -> true when tether runs inside nginx (lua-nginx-module or
-- OpenResty): there "auto" spawns through the relay.
function tether.in_nginx() return require("tether.host").in_nginx() end

--- guard_children(on) -> previous setting. With the guard on, SIGCHLD stays
-- blocked in this thread (the host's event-loop thread) until the guard is
-- turned off, so a host whose SIGCHLD handler reaps with waitpid(-1) (nginx
-- workers, some C hosts) cannot take the exit status of tether's children,
-- whichever thread started them; tether reaps them through their pidfds. The
-- host's own SIGCHLD handler does not run meanwhile. The setting is per
-- thread; off unblocks SIGCHLD only where the guard blocked it (never in a
-- thread that had it blocked already, such as nginx's pool threads).
-- set_waiter(waiters.ngx) turns it on from the thread's next spawn on.
-- Off by default: only named signals are touched.
function tether.guard_children(on)
  return core.guard_children(on and true or false)
end

-- get(o, k) -> o:k() when a method, else the field (the cqueues pollable protocol allows both).
local function get(o, k)
  local v = o[k]
  if type(v) == "function" then return v(o) end
  return v
end

-- ready(o) -> whether o can be taken now without blocking.
local function ready(o)
  if type(o._ready) == "function" then return o:_ready() end
  local t = get(o, "timeout")
  if t and t <= 0 then return true end
  local fd = get(o, "pollfd")
  return type(fd) == "number" and fd >= 0 and core.poll(fd, get(o, "events") or "r", 0) == true
end

--- wait_any(list [, timeout | ctx]) -> index, object | nil, err.
-- Waits until one of the waitables in list (Process, Reader, Writer, signal
-- channel, Context, or anything with pollfd/events/timeout) is ready and
-- returns the first ready one. A timeout that runs out gives
-- err:is(errors.ErrTimeout); a done context gives its error.
function tether.wait_any(list, limit)
  if type(list) ~= "table" then
    error("bad argument #1 to 'wait_any' (list of waitables expected, got " .. type(list) .. ")", 2)
  end
  for i, o in ipairs(list) do
    if (type(o) ~= "table" and type(o) ~= "userdata") or o.pollfd == nil then
      error(("bad argument #1 to 'wait_any' (element %d is not waitable)"):format(i), 2)
    end
  end
  local deadline, ctx = wait.limit(limit)
  while true do
    for i, o in ipairs(list) do
      if ready(o) then return i, o end
    end
    if ctx and ctx:done() then return nil, ctx:err() end
    if deadline and core.now() >= deadline then
      return nil, require("tether.errors").timeout("wait_any")
    end
    local pairs_, d = {}, deadline
    local function add(fd, ev)
      if type(fd) == "number" and fd >= 0 then pairs_[#pairs_ + 1] = fd; pairs_[#pairs_ + 1] = ev or "r" end
    end
    for _, o in ipairs(list) do
      add(get(o, "pollfd"), get(o, "events"))
      local t = get(o, "timeout")
      if t then t = core.now() + t; if not d or t < d then d = t end end
    end
    if ctx then add(ctx:pollfd(), "r") end
    wait.add_context_fds(pairs_) -- a context in the list may be cancelled by a signal
    if #pairs_ == 0 then
      if not d then error("wait_any: nothing to wait for", 2) end
      tether.sleep(math.max(0, d - core.now()))
    else
      local ok, err = wait.wait_many(pairs_, d)
      if ok == nil then return nil, err end
    end
  end
end

--- waiters: ready-made waiters for set_waiter.
-- waiters.cqueues yields to the cqueues controller when called inside a
-- cqueues coroutine (and blocks in poll(2) otherwise).
tether.waiters = {}

function tether.waiters.cqueues(fd, events, timeout)
  local cqueues = require "cqueues"
  if not cqueues.running() then
    if fd >= 0 then core.poll(fd, events, timeout and core.now() + timeout)
    elseif timeout then core.sleep_until(core.now() + timeout) end
    return
  end
  if fd < 0 then
    if timeout then cqueues.sleep(timeout) else cqueues.poll() end
    return
  end
  cqueues.poll({ pollfd = fd, events = events, timeout = timeout })
end

--- waiters.ngx(fd, events, timeout): waits inside nginx (lua-nginx-module /
-- OpenResty) without blocking the worker. The wait runs in a thread of nginx's
-- thread pool "tether" (`thread_pool tether threads=N;`, see
-- tether.ngx_thread_pool) through ngx.run_worker_thread, so the request
-- resumes on the event itself; without that pool it checks fd between
-- ngx.sleep calls with a backoff from 1 ms to 50 ms. fd -1 just sleeps for
-- timeout. Use it where ngx.sleep may yield (content, access, rewrite,
-- ngx.timer phases); inside ngx.run_worker_thread keep the default.
function tether.waiters.ngx(fd, events, timeout)
  return require("tether.ngx").wait(fd, events, timeout)
end

--- ngx_thread_pool([name]) -> previous name: the nginx thread pool that
-- waiters.ngx waits in (default "tether"); false makes it poll with a
-- backoff instead. Without an argument, only returns the current name.
function tether.ngx_thread_pool(name)
  if name ~= nil and name ~= false and type(name) ~= "string" then
    error("bad argument #1 to 'ngx_thread_pool' (string or false expected)", 2)
  end
  local m = require "tether.ngx"
  local prev = m.thread_pool
  if name ~= nil then m.thread_pool = name end
  return prev
end

local submodules = { exec = true, errors = true, env = true, signal = true, context = true,
  supervisor = true, systemd = true, reaper = true, fs = true, sync = true, pool = true }

return setmetatable(tether, {
  __index = function(t, k)
    if submodules[k] then
      local m = require("tether." .. k)
      rawset(t, k, m)
      return m
    end
  end,
})
