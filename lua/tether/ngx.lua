--- tether.ngx (internal): tether at home in nginx's Lua module (lua-nginx-module, OpenResty).
--
-- Owns three things (issue 12):
-- * Whole commands in the pool. Under waiters.ngx, cmd:run(), output() and combined_output()
--   of a command made of plain values run start to end in a pool thread's Lua VM
--   (run_plain); the request yields once and gets the result back as scalars. A request
--   watch (core.reqwatch) on the request's cleanup list lets the pool thread kill the
--   command if the request is dropped.
-- * Waiting on the event. waiters.ngx hands every wait to a thread of nginx's thread pool
--   (ngx.run_worker_thread): the pool thread blocks in poll(2) on the fds, and nginx resumes
--   the request when the thread is done, so the request wakes on the event itself, not on
--   a timer. Without a thread pool (or in a phase that cannot use it) it falls back to
--   checking the fds between ngx.sleep calls with a 1-50 ms backoff.
-- * Dropped requests. Each command started in a request is registered with that request;
--   nginx calls a C callback of tether's (tether.core.hostflag) when it frees the request,
--   whatever the reason (done, client abort, ngx.exit, an error). A per-worker timer (the
--   sweeper) then cancels the commands the request left running, as their cancel says,
--   reaps them and closes their pipes. No GC is involved.
local core = require "tether.core"

local M = {}

--- The thread pool (nginx's `thread_pool NAME ...;`) waits go through; false: never.
M.thread_pool = "tether"

-- How long one wait in a pool thread may block (seconds): a wait left by a dropped request
-- frees its pool thread at least this often.
local SLICE = 1.0
-- How long a pool thread waits for a command's exit once its output is ready (seconds).
local LINGER = 0.002
-- How often the sweeper looks for dropped requests while commands run (seconds).
local SWEEP = 0.05

local missing = {} -- pool name -> true: run_worker_thread said this worker has no such pool
local yield_phases = { rewrite = true, access = true, content = true, timer = true,
  ssl_cert = true, ssl_session_fetch = true }
local request_phases = { rewrite = true, access = true, content = true }

--- poll_many(list, deadline) -> index | false: runs in a pool thread's Lua VM
-- (ngx.run_worker_thread); waits for the first ready pair of list, at most SLICE.
-- A command's output usually comes just before its exit: when another pair is ready
-- first and pair 1 is a pidfd (a command's wait puts them first), this thread waits up
-- to LINGER for the exit too, so that one round trip to the event loop sees both.
function M.poll_many(list, deadline)
  local d = core.now() + SLICE
  if deadline and deadline < d then d = deadline end
  local i = core.poll_many(list, d)
  if i and i > 1 and core.is_pidfd(list[1]) then
    local l = core.now() + LINGER
    if deadline and deadline < l then l = deadline end
    if core.poll(list[1], "r", l) == true then return 1 end
  end
  return i
end

-- no_pool(err) -> whether run_worker_thread failed because nginx has no such thread pool
-- (lua-nginx-module says "thread pool NAME not found").
local function no_pool(err)
  return type(err) == "string" and err:find("thread pool", 1, true) ~= nil and err:find("not found", 1, true) ~= nil
end

-- The backoff fallback: checks the fds, sleeps 1 ms, 2 ms ... 50 ms between checks.
local function backoff_wait(list, deadline)
  local sleep, backoff = ngx.sleep, 0.001
  while true do
    local i = core.poll_many(list, core.now())
    if i ~= false then return end -- ready, or a poll error the caller will see
    local left = deadline and deadline - core.now()
    if left and left <= 0 then return end
    sleep(left and math.min(backoff, left) or backoff)
    backoff = math.min(backoff * 2, 0.05)
  end
end

--- wait_many(list, deadline): waits for one pair of list {fd1, ev1, ...} to be ready or the
-- (absolute, tether.now) deadline, yielding the request meanwhile. May return early.
function M.wait_many(list, deadline)
  local pool = M.thread_pool
  if pool and not missing[pool] and yield_phases[ngx.get_phase()] then
    local ok, res = ngx.run_worker_thread(pool, "tether.ngx", "poll_many", list, deadline)
    if ok then return end
    -- Not run (no such pool, no Lua VM free, the queue full...): this wait polls instead.
    if no_pool(res) then missing[pool] = true end
    ngx.log(ngx.NOTICE, "tether: ngx.run_worker_thread(\"", pool, "\") failed (", tostring(res),
      "): waits poll with a backoff")
  end
  backoff_wait(list, deadline)
end

--- wait(fd, events, timeout): the waiter interface (tether.waiters.ngx).
function M.wait(fd, events, timeout)
  if fd < 0 then
    ngx.sleep(timeout or 0.05)
    return
  end
  M.wait_many({ fd, events }, timeout and core.now() + timeout)
end

---------------------------------------------------------------------------
-- nginx's C side (LuaJIT's FFI, lua-resty-core)

local ffi, get_request, C
local uintptr_t, cleanup_ptr -- ctypes, parsed once (a string costs a parse per cast)

-- setup() -> whether commands can be tied to their requests here (LuaJIT's FFI,
-- lua-resty-core's get_request and nginx's ngx_http_cleanup_add). Once.
local ready
local function setup()
  if ready ~= nil then return ready end
  ready = false
  local ok
  ok, ffi = pcall(require, "ffi")
  if not ok then return false end
  local okb, base = pcall(require, "resty.core.base")
  if not okb or type(base.get_request) ~= "function" then return false end
  get_request = base.get_request
  ok = pcall(ffi.cdef, [[
    typedef struct tether_ngx_cleanup_s {
      void *handler; void *data; struct tether_ngx_cleanup_s *next;
    } tether_ngx_cleanup_t;
    void *ngx_http_cleanup_add(void *r, size_t size);
  ]])
  if not ok then return false end
  C = ffi.C
  uintptr_t, cleanup_ptr = ffi.typeof("uintptr_t"), ffi.typeof("tether_ngx_cleanup_t *")
  ok = pcall(function() return C.ngx_http_cleanup_add end)
  ready = ok
  return ready
end

---------------------------------------------------------------------------
-- Whole commands in the thread pool

-- The Cmd fields a command may have to run in a pool thread: plain values that copy
-- across Lua VMs and mean the same there. Anything else (sinks, pipes, contexts, extra
-- files, cancel, wait_delay, hooks) keeps the command in the request.
local PLAIN = { path = "string", args = "table", env = "table", dir = "string", stdin = "string",
  setpgid = "boolean", setsid = "boolean", pdeathsig = "string", uid = "number", gid = "number",
  groups = "table", max_output = "number",
  _looked_up = "string", -- exec.command's note that path came from a PATH search (messages)
  _lookup = "string" } -- a bare name exec.command left for the pool thread to search
-- The keys of a command that is its argv alone (offload passes those flat).
local ARGV_KEYS = { path = true, args = true, _looked_up = true, _lookup = true }
local TASK_ERR = "tether.ngx task: " -- starts the errors of run_plain (it closed its fd)
local MAX_FLAT_ARGS = 32 -- a longer argv goes in the spec table
local unpack = unpack or table.unpack -- luacheck: ignore (LuaJIT, 5.1)
local offload_phases = { rewrite = true, access = true, content = true, timer = true }

local function plain_list(t)
  for k, v in pairs(t) do
    if type(k) ~= "number" and type(k) ~= "string" then return false end
    if type(v) ~= "string" and type(v) ~= "number" then return false end
  end
  return true
end

local tie -- defined below: puts a C callback on the request's cleanup list
local wait_mod -- tether.wait, once loaded

-- offloaded(ok, out, stderr, truncated, pid, ...) -> true, ok, out, stderr, truncated, state:
-- what offload returns, from run_plain's values (one table: the ProcessState's fields).
local function offloaded(ok_, out, stderr, truncated, pid, status, exited, code, signal, core_dumped,
                         utime, stime, maxrss)
  -- (seven keys fit the smallest hash part that holds them; a signal's two as the C side adds them)
  local st = { pid = pid, status = status, exited = exited, code = code, utime = utime, stime = stime,
    maxrss = maxrss }
  if signal ~= nil then st.signal, st.core_dumped = signal, core_dumped end
  return true, ok_, out, stderr, truncated, st
end

-- hand_over(pool, cmd, how, watch, argv_only) -> pcall's results of run_worker_thread for
-- run_plain (pcall: LuaJIT yields across it; run_worker_thread raises on misuse, not queued
-- then). A bare argv goes as strings: nginx copies them into the pool thread's VM more
-- cheaply than a table, and that copy runs in the event loop. Otherwise a copy of cmd's
-- fields (all plain: see offload) goes as one table.
local function hand_over(pool, cmd, how, watch, argv_only)
  if argv_only then
    local args, lookup = cmd.args, rawget(cmd, "_lookup")
    return pcall(ngx.run_worker_thread, pool, "tether.ngx", "run_argv", how, watch, rawget(cmd, "path") or false,
      lookup or rawget(cmd, "_looked_up") or false, lookup ~= nil, unpack(args, 1, #args))
  end
  local spec = {}
  for k, v in pairs(cmd) do spec[k] = v end
  return pcall(ngx.run_worker_thread, pool, "tether.ngx", "run_plain", spec, how, watch)
end

-- lua-nginx-module's context bits (NGX_HTTP_LUA_CONTEXT_*) in which offload runs a command
-- in the pool: rewrite, access, content, a timer (the phases where it may yield).
local OFFLOAD_CONTEXTS = { [0x0002] = true, [0x0004] = true, [0x0008] = true, [0x0080] = true }

-- watch_request() -> offloadable, id, entry: whether this phase may hand a command to the
-- pool and, if so, a request watch (core.reqwatch) whose callback is on the current
-- request's cleanup list (nginx calls it when it frees the request, whatever the reason),
-- with the cleanup entry; id, nil: no request to watch here (the watch is never fired);
-- id nil: no watch at all. One C call in a request (core.reqwatch_tie also reads the
-- phase); the FFI steps elsewhere.
local function watch_request()
  local context, id, entry
  if setup() then context, id, entry = core.reqwatch_tie(get_request()) end
  local phase
  if context then
    if not OFFLOAD_CONTEXTS[context] then
      if id then core.reqwatch_untie(id, entry); core.reqwatch_close(id) end
      return false
    end
    if id then return true, id, entry end
    if context ~= 0x0080 then return true, nil end -- a request not tied (no memory): not here
  else
    phase = ngx.get_phase()
    if not offload_phases[phase] then return false end
  end
  local fire, data, watch = core.reqwatch()
  if not fire then return true, nil end
  local cln = phase and request_phases[phase] and tie(fire, data)
  if not cln then core.reqwatch_disarm(watch); return true, watch, nil end
  return true, watch, cln
end

-- unwatch_request(id, entry): the request goes on: nginx must not call the callback now.
local function unwatch_request(id, entry)
  if type(entry) == "userdata" then core.reqwatch_untie(id, entry); return end
  entry.handler = nil
  core.reqwatch_disarm(id)
end

--- offload(cmd, how) -> true, ok, out, stderr, truncated, state | nil: runs cmd:run(), output()
-- or combined_output() (how) in a thread of the pool, when cmd is made of plain values
-- only (ok: it succeeded; out: its output; state: its ProcessState's fields); nil otherwise.
function M.offload(cmd, how)
  local pool = M.thread_pool
  if not pool or missing[pool] or not M.offload_commands or rawget(cmd, "_started") or rawget(cmd, "err") then
    return nil
  end
  wait_mod = wait_mod or require("tether.wait")
  if not wait_mod.waiter_many then return nil end
  local argv_only = true
  for k, v in pairs(cmd) do
    local want = PLAIN[k]
    if k == "pdeathsig" and type(v) == "number" then want = "number" end
    if type(v) ~= want then return nil end
    if want == "table" and not plain_list(v) then return nil end
    if not ARGV_KEYS[k] then argv_only = false end
  end
  local args = rawget(cmd, "args")
  if argv_only and (type(args) ~= "table" or #args > MAX_FLAT_ARGS) then argv_only = false end
  -- The request watch: if nginx drops the request, nginx's cleanup calls a C callback of
  -- tether's (no Lua runs) that wakes the pool thread, which cancels the command (SIGKILL)
  -- and reaps it. The task owns a reference and drops it when done, even if this request
  -- is long gone by then (a task nginx has queued always runs).
  local offloadable, watch, entry = watch_request()
  if not offloadable or not watch then return nil end
  -- Spawned directly in a pool thread, the child could be reaped by nginx's SIGCHLD handler
  -- in this (the event loop's) thread: the guard set_waiter armed is put in force here.
  if core.spawn_mode() == "direct" then core.guard_children(true) end
  local called, ok, res, out, stderr, truncated, pid, status, exited, code, signal, core_dumped, utime, stime,
    maxrss = hand_over(pool, cmd, how, watch, argv_only)
  if entry then unwatch_request(watch, entry) end
  if not called or (not ok and not (type(res) == "string" and res:find(TASK_ERR, 1, true))) then
    core.reqwatch_close(watch) -- run_plain never ran (not queued, or its module did not load)
  end
  if not called then error(ok, 0) end
  if not ok then
    if type(res) == "string" and res:find(TASK_ERR, 1, true) then
      error("tether: " .. res, 0) -- the command's run raised in the pool thread
    end
    if no_pool(res) then missing[pool] = true end
    return nil -- not run in the pool: it runs in the request
  end
  if pid == nil then return nil end -- it did not start: run here, for the exact error
  return offloaded(res, out, stderr, truncated, pid, status, exited, code, signal, core_dumped,
    utime, stime, maxrss)
end

--- run_plain(spec, how, watch) -> result | false: the pool-thread side of offload; watch is
-- the request's (core.reqwatch), which this task closes whatever happens.
function M.run_plain(spec, how, watch)
  local okr, tether = pcall(require, "tether")
  if not okr then core.reqwatch_close(watch); error(TASK_ERR .. tostring(tether), 0) end
  local abort_fd, werr = core.reqwatch_open(watch)
  if abort_fd == false then -- the request was dropped before this task ran: nothing to run
    core.reqwatch_close(watch)
    return false
  end
  if not abort_fd then core.reqwatch_close(watch); error(TASK_ERR .. "eventfd: errno " .. tostring(werr), 0) end
  local exec = require "tether.exec"
  -- A bare name the request left unsearched (spec._lookup) is searched here; a failure
  -- stays in cmd.err (no process: the request runs it again for its own error).
  local cmd = exec.command(spec._lookup or "/") -- ("/": no search; spec.path replaces it)
  for k, v in pairs(spec) do
    if k ~= "_lookup" then cmd[k] = v end
  end
  if not spec._lookup then cmd.err = nil end
  -- While the command runs, the request's watch is polled too: once the request is
  -- dropped, the command is killed (its group with setpgid), as a cancelled context does.
  local list, killed = { -1, "r", abort_fd, "r" }, false
  tether.set_waiter(function(fd, events, timeout)
    list[1], list[2] = fd, events
    local i = core.poll_many(list, timeout and core.now() + timeout)
    if i == 2 and not killed and cmd.process then
      killed = true
      if cmd.setpgid == true then cmd.process:signal_group("SIGKILL") end
      cmd.process:kill()
    end
    if killed then list[3] = -1 end -- seen: poll the command's fds alone from now on
  end)
  local ok, a, b, c = pcall(cmd[how], cmd)
  tether.set_waiter(nil)
  core.reqwatch_close(watch, abort_fd)
  if not ok then error(TASK_ERR .. tostring(a), 0) end
  local state = cmd.process_state
  if not state then return false end -- start failed (no pid: see offload)
  -- Scalars only (cheaper for nginx to copy back than tables): see offloaded.
  local st, ok_, out = state._s, false, nil
  if how == "run" then ok_ = a == true
  elseif a then ok_, out = true, a
  else out = c end
  return ok_, out, not ok_ and b and b.stderr or nil, cmd.truncated,
    st.pid, st.status, st.exited, st.code, st.signal, st.core_dumped, st.utime, st.stime, st.maxrss
end

--- run_argv(how, watch, path, looked_up, search, argv...) -> what run_plain returns: run_plain
-- for a command that is its path and argv only (offload passes those flat); with search,
-- looked_up is the bare name still to search in PATH (path is false then).
function M.run_argv(how, watch, path, looked_up, search, ...)
  if search then return M.run_plain({ args = { ... }, _lookup = looked_up }, how, watch) end
  return M.run_plain({ path = path, args = { ... }, _looked_up = looked_up or nil }, how, watch)
end

--- Whether run/output/combined_output of plain commands go to the thread pool.
M.offload_commands = true

---------------------------------------------------------------------------
-- Requests' commands

local scopes = {}      -- request address -> { flag = hostflag, cmds = { [cmd] = true } }
local sweeping = false -- the sweeper timer is scheduled


-- Cancels a command its request left: its cancel (default SIGKILL, to the group with
-- setpgid), then waits; wait_delay bounds the wait before SIGKILL, as with a context.
local function drop(cmd)
  if cmd._waited or not cmd.process then return end
  local run = cmd._run or {}
  if not run.canceled and not run.state then
    run.canceled = true -- (engine.lua's run record: its context cancel is not run again)
    local cancel = cmd.cancel or function(c)
      if c.setpgid == true then return c.process:signal_group("SIGKILL") end
      return c.process:kill()
    end
    pcall(cancel, cmd)
  end
  local ok, err = cmd:wait(cmd.wait_delay)
  if not ok and err and err.is and err:is(require("tether.errors").ErrTimeout) then
    if cmd.setpgid == true then cmd.process:signal_group("SIGKILL") end
    cmd.process:kill()
    cmd:wait()
  end
end

local schedule

-- The sweeper: finds the requests nginx has freed and drops what they left.
local function sweep(premature)
  sweeping = false
  local left = {}
  for key, s in pairs(scopes) do
    if s.flag:is_set() then
      scopes[key] = nil
      for cmd in pairs(s.cmds) do left[#left + 1] = cmd end
    end
  end
  if premature then -- the worker is exiting: no waiting, kill what is left
    for _, s in pairs(scopes) do for cmd in pairs(s.cmds) do left[#left + 1] = cmd end end
    for _, cmd in ipairs(left) do
      if cmd.process and not cmd._waited then pcall(cmd.process.kill, cmd.process) end
    end
    return
  end
  if next(scopes) then schedule() end
  local threads = {}
  for _, cmd in ipairs(left) do
    cmd._ngx_scope = nil
    threads[#threads + 1] = ngx.thread.spawn(drop, cmd)
  end
  for _, t in ipairs(threads) do ngx.thread.wait(t) end
end

schedule = function()
  if sweeping then return end
  local ok = ngx.timer.at(SWEEP, sweep)
  sweeping = ok and true or false
end

-- scope() -> the current request's record (made on first use), or nil outside a request.
local function scope()
  if not request_phases[ngx.get_phase()] or not setup() then return nil end
  local r = get_request()
  if not r then return end
  local key = tonumber(ffi.cast(uintptr_t, r))
  local s = scopes[key]
  if s and s.flag:is_set() then -- a freed request's address, reused: that one is gone
    scopes[key] = nil
    if next(s.cmds) then
      scopes[{}] = s -- kept for the sweeper under a key of its own
    end
    s = nil
  end
  if not s then
    local flag = core.hostflag()
    local cln = C.ngx_http_cleanup_add(r, 0)
    if cln == nil then return end
    cln = ffi.cast(cleanup_ptr, cln)
    local fn, data = flag:arm()
    cln.handler, cln.data = fn, data
    s = { flag = flag, cmds = {} }
    scopes[key] = s
  end
  schedule()
  return s
end

--- track(cmd): called by Cmd:start. In a request phase, ties cmd to the request.
function M.track(cmd)
  local s = scope()
  if not s then return end
  s.cmds[cmd] = true
  cmd._ngx_scope = s
end

-- tie(fn, data) -> the cleanup entry | nil: puts the C callback fn(data) on the current
-- request's cleanup list (nginx calls it when it frees the request). The caller clears
-- entry.handler if it takes the callback back (nginx skips an entry without a handler).
tie = function(fn, data)
  if not setup() then return nil end
  local r = get_request()
  if not r then return nil end
  local cln = C.ngx_http_cleanup_add(r, 0)
  if cln == nil then return nil end
  cln = ffi.cast(cleanup_ptr, cln)
  cln.handler, cln.data = fn, data
  return cln
end

--- untrack(cmd): called when cmd's wait is done.
function M.untrack(cmd)
  local s = cmd._ngx_scope
  if s then
    s.cmds[cmd] = nil
    cmd._ngx_scope = nil
  end
end

--- install(exec): hooks track, untrack and offload into tether.exec and tether.engine
-- (inside nginx only).
function M.install(exec)
  exec._on_start, exec._offload = M.track, M.offload
  require("tether.engine").on_finish = M.untrack
end

return M
