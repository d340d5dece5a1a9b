--- tether.pool: pinned worker pools, cgo-style.
--
-- A pool is `size` OS threads, each with its own lua_State prepared once by
-- `init` (so thread-affine C libraries keep their thread), fed by a bounded
-- queue. Tasks are functions without upvalues (sent as bytecode, rebuilt in
-- the worker with the worker's globals) or "module.function" names; their
-- arguments and results cross by copy (see docs/pool.md for what can cross).
--
-- Blocking (submit on a full queue, future:wait, map, close) goes through
-- tether's waiter, so it yields under cqueues and OpenResty like every other
-- tether call. Runs on Lua 5.1 to 5.4 and LuaJIT.
local core = require "tether.core"
local wait = require "tether.wait"
local errors = require "tether.errors"

local type, error, setmetatable, getmetatable, tostring = type, error, setmetatable, getmetatable, tostring
local floor = math.floor
local format = string.format
local now = core.now

local M = {}

local Pool = {}
Pool.__index = Pool
Pool.__name = "tether.pool"

-- Task functions, made once per function (string.dump is not repeated for
-- 100,000 submits of the same function): weak keys, so functions still go.
local fn_cache = setmetatable({}, { __mode = "k" })
local name_cache = {}

local function is_int(v)
  return type(v) == "number" and v == floor(v) and v > -math.huge and v < math.huge
end

-- fnblob(f, fname, argn) -> the C task function for f, or raises naming the argument.
local function fnblob(f, fname, argn)
  local b
  if type(f) == "function" then b = fn_cache[f] elseif f ~= nil then b = name_cache[f] end
  if b then return b end
  local msg
  b, msg = core.pool_fn(f)
  if not b then
    if type(f) == "string" then msg = "a name must be \"module.function\"" end
    error(format("pool.%s: argument #%d: %s", fname, argn,
      (type(f) == "function" or type(f) == "string") and msg
      or "function or \"module.function\" expected, got " .. type(f)), 3)
  end
  if type(f) == "function" then fn_cache[f] = b else name_cache[f] = b end
  return b
end

-- task_error(message, traceback, value) -> the err of a failed task.
local function task_error(msg, tb, value)
  return errors.new { msg = msg or "pool: task failed", traceback = tb, value = value }
end

local function check_pool(self, fname)
  if getmetatable(self) ~= Pool then
    error(format("pool.%s: bad self (use pool:%s(...))", fname, fname), 3)
  end
  return self._c
end

---------------------------------------------------------------------------
-- futures (userdata made in C; these methods join the C ones)

local Future = core.pool_future_methods()
local future_mt = core.pool_future_metatable()
future_mt.__name = "tether.future"
future_mt.__tostring = function(f) return "tether.future (" .. f:_state() .. ")" end

-- outcome(status, ...) of a task that did not succeed: 2 failed, 3 cancelled.
local function outcome(st, ...)
  if st == 2 then return nil, task_error(...) end
  return nil, errors.Canceled
end

local slow_wait

-- finish(self, limit, ok, ...): what _take gave (true, results | false, status, ... |
-- nothing while the task runs), else the waiting path.
local function finish(self, limit, ok, ...)
  if ok then return true, ... end
  if ok == false then return outcome(...) end
  return slow_wait(self, limit)
end

--- future:wait([ctx | timeout]) -> true, results... | nil, err.
-- Waits until the task ends. A task that raised gives err with the error
-- message (`tostring(err)`), `err.traceback` (the worker's traceback) and
-- `err.value` (the raised value, when it can be copied). A cancelled task
-- gives `context.Canceled`. With ctx: when ctx is done first, a task still
-- queued is cancelled (it never runs), a running one finishes in its worker
-- (a later wait() gets its results), and wait returns nil, ctx:err(). With a
-- timeout (seconds), nil, err with err:is(errors.ErrTimeout) when it runs
-- out; the task is left alone. Results are rebuilt at each call.
function Future:wait(limit)
  if limit ~= nil and (type(limit) ~= "number" or limit ~= limit) and not wait.is_context(limit) then
    error("future.wait: argument #1 must be a timeout in seconds or a context, got " .. type(limit), 2)
  end
  return finish(self, limit, self:_take())
end

-- The waiting path of wait(): through the waiter, on the task's eventfd (and ctx's fds).
slow_wait = function(self, limit)
  local deadline, ctx
  if limit ~= nil then deadline, ctx = wait.limit(limit) end
  while not self:_ended() do
    if ctx and ctx:done() then
      self:_cancel()
      if self:_ended() and self:_state() ~= "cancelled" then break end
      return nil, ctx:err()
    end
    if not ctx and deadline and now() >= deadline then
      return nil, errors.timeout("future.wait")
    end
    local fd = self:_efd()
    if fd then
      local ok, err
      if ctx then
        ok, err = wait.wait_many(wait.add_ctx({ fd, "r" }, ctx), deadline)
      else
        ok, err = wait.wait(fd, "r", deadline)
      end
      if ok == nil then return nil, err end
    elseif not self:_ended() then
      -- no fd could be made (out of fds): look again soon
      local d = now() + 0.01
      if deadline and deadline < d then d = deadline end
      core.sleep_until(d)
    end
  end
  return finish(self, nil, self:_take())
end

--- future:cancel() -> true when the task was cancelled (it had not started:
-- it never runs, and wait() gives context.Canceled), false when it is
-- running or has ended (a running task always finishes).
function Future:cancel()
  return self:_cancel()
end

--- future:done() -> true once the task has ended (done, failed or cancelled).
function Future:done()
  return self:_ended()
end

--- future:state() -> "queued", "running", "done", "failed" or "cancelled"
-- ("new" for a future try_submit found no room for).
function Future:state()
  return self:_state()
end

--- future:pollfd() -> an fd that becomes readable when the task ends (an
-- eventfd kept until the future is collected), for event loops (the cqueues
-- pollable protocol); -1 when none could be made (timeout() then asks to be
-- woken soon).
function Future:pollfd()
  local fd = self:_pollfd()
  return fd or -1
end

--- future:events() -> "r".
function Future:events()
  return "r"
end

--- future:timeout() -> 0 once the task has ended, else nil (no deadline).
function Future:timeout()
  if self:_ended() then return 0 end
  return nil
end

-- For tether.wait_any: ready once ended.
function Future:_ready()
  return self:_ended()
end

---------------------------------------------------------------------------
-- pools

local function check_size(v, what)
  if not is_int(v) or v < 1 or v > 1024 then
    error(format("pool.new: %s must be an integer from 1 to 1024", what), 3)
  end
end

-- affinity option -> a list (one per worker) of lists of CPU numbers, or nil.
local function affinity_lists(aff, size)
  if aff == nil then return nil end
  if type(aff) ~= "table" then
    error("pool.new: affinity must be a list of CPU numbers or a list of such lists (one per worker)", 3)
  end
  local function cpu_list(l, where)
    for i = 1, #l do
      if not is_int(l[i]) or l[i] < 0 or l[i] > 65535 then
        error(format("pool.new: affinity%s[%d] must be a CPU number (0 to 65535)", where, i), 4)
      end
    end
    if #l == 0 then error(format("pool.new: affinity%s is an empty list", where), 4) end
    return l
  end
  if type(aff[1]) == "table" then
    local out = {}
    for i = 1, #aff do
      if type(aff[i]) ~= "table" then
        error(format("pool.new: affinity[%d] must be a list of CPU numbers", i), 3)
      end
      if i > size then error("pool.new: affinity has more lists than workers", 3) end
      out[i] = cpu_list(aff[i], format("[%d]", i))
    end
    return out
  end
  cpu_list(aff, "")
  local out = {}
  for i = 1, size do out[i] = aff end
  return out
end

-- Waits (through the waiter) until every worker has exited, then joins them: true | nil,
-- err when the OS refused the wait (the workers are then left to the pool's finalizer).
local function join(c)
  while not c:exited() do
    local ok, err = wait.wait(c:ctl_fd(), "r")
    if ok == nil then return nil, err end
    c:drain_ctl()
  end
  c:join()
  return true
end

--- pool.new{size=, init=, queue=64, affinity=} -> pool | nil, err.
-- Starts `size` worker threads (default tether.cpus()), each with its own
-- lua_State (standard libraries; package.path and package.cpath as in the
-- calling state, so `require "tether..."` works). `init` prepares each
-- worker once: a function without upvalues, called as init(i, size) in
-- worker i, or a module name, required. Globals it sets stay for the tasks
-- of that worker. `queue` bounds the tasks waiting for a worker (submit then
-- waits, try_submit returns nil, "full"). `affinity` pins workers to CPUs: a
-- list of CPU numbers for every worker, or a list of such lists, one per
-- worker (workers without one are not pinned). Worker threads start with
-- every signal blocked (none is ever delivered to them) and are named
-- tether-w1, tether-w2, ... Returns after every init has run; an init that
-- raised (or a CPU that cannot be used) gives nil, err naming the worker,
-- and no thread is left behind. Raises for bad options.
function M.new(opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then
    error("pool.new: argument #1 must be a table of options, got " .. type(opts), 2)
  end
  local size = opts.size
  if size == nil then size = require("tether").cpus() end
  check_size(size, "size")
  local queue = opts.queue
  if queue == nil then queue = 64 end
  if not is_int(queue) or queue < 1 then error("pool.new: queue must be a positive integer", 2) end
  local init = opts.init
  local msg
  if init ~= nil then
    if type(init) == "function" then
      init, msg = core.pool_fn(init)
    elseif type(init) == "string" then
      init, msg = core.pool_fn(init, true)
    else
      msg = "function or module name expected, got " .. type(init)
      init = nil
    end
    if not init then error("pool.new: init: " .. msg, 2) end
  end
  local aff = affinity_lists(opts.affinity, size)
  local c, errno = core.pool_new(size, queue, package.path, package.cpath, init, aff)
  if not c then return nil, errors.from_errno("pool.new", nil, errno) end
  while true do
    local ready, failed, total, why = c:ready()
    if failed > 0 then
      c:close()
      join(c)
      return nil, errors.new { op = "pool.new", msg = "pool.new: " .. tostring(why) }
    end
    if ready == total then break end
    local ok, err = wait.wait(c:ctl_fd(), "r")
    if ok == nil then c:close(); return nil, err end -- collection detaches the workers
    c:drain_ctl()
  end
  return setmetatable({ _c = c, size = size }, Pool)
end

-- submitted(c, fut, queued, msg, fname, argbase) -> fut, or raises for a
-- refused argument or a closed pool; waits for room when queued is false (nil, err when
-- the OS refused that wait).
local function submitted(c, fut, queued, msg, fname, argbase, try)
  if fut == nil then
    if queued == "closed" then error(format("pool.%s: pool is closed", fname), 3) end
    error(format("pool.%s: argument #%d: %s", fname, queued + argbase, msg), 3)
  end
  while not queued do
    if try then return nil, "full" end
    local ok, err = wait.wait(c:space_fd(), "r")
    if ok == nil then return nil, err end
    queued = c:push(fut)
    if queued == nil then error(format("pool.%s: pool is closed", fname), 3) end
  end
  return fut
end

--- pool:submit(f, ...) -> future | nil, err (err only when the OS refused the wait).
-- Queues the call f(...) for any worker; waits (through the waiter) while
-- the queue is full. f: a function without upvalues (but _ENV: it sees the
-- worker's globals) or a "module.function" name, resolved with require in
-- the worker. The arguments are copied now (see docs/pool.md); one that
-- cannot be copied raises "pool.submit: argument #N: ...", as does a closed
-- pool.
function Pool:submit(f, ...)
  local c = check_pool(self, "submit")
  local fut, queued, msg = c:submit(fn_cache[f] or fnblob(f, "submit", 1), 0, ...)
  if queued == true then return fut end
  return submitted(c, fut, queued, msg, "submit", 1)
end

--- pool:try_submit(f, ...) -> future | nil, "full".
-- As submit, but never waits: nil, "full" when the queue is full.
function Pool:try_submit(f, ...)
  local c = check_pool(self, "try_submit")
  local fut, queued, msg = c:submit(fn_cache[f] or fnblob(f, "try_submit", 1), 0, ...)
  if queued == true then return fut end
  return submitted(c, fut, queued, msg, "try_submit", 1, true)
end

--- pool:submit_to(i, f, ...) -> future.
-- As submit, pinned to worker i (1 to size): tasks given to one worker run
-- there in the order they were submitted (FIFO), in the lua_State init
-- prepared, so state kept in its globals persists from task to task.
function Pool:submit_to(i, f, ...)
  local c = check_pool(self, "submit_to")
  if not is_int(i) or i < 1 or i > self.size then
    error(format("pool.submit_to: argument #1: worker must be an integer from 1 to %d", self.size), 2)
  end
  local fut, queued, msg = c:submit(fn_cache[f] or fnblob(f, "submit_to", 2), i, ...)
  if queued == true then return fut end
  return submitted(c, fut, queued, msg, "submit_to", 2)
end

--- pool:map(f, list [, opts]) -> results | nil, err.
-- Runs f(list[i]) for every element of list on the pool (as many tasks,
-- queued in slices as the queue has room) and waits for all of them.
-- results[i] is the first result of f(list[i]) (opts.ordered, the default),
-- or, with ordered = false, results are in the order the tasks ended. When a
-- task fails, nil, err for the first failed element in list order (err.index
-- is that index). opts.ctx: when it is done first, the tasks still queued
-- are cancelled, running ones finish, and map returns nil, ctx:err(). An
-- element that cannot be copied raises (queued tasks are cancelled first).
function Pool:map(f, list, opts)
  local c = check_pool(self, "map")
  local fn = fnblob(f, "map", 1)
  if type(list) ~= "table" then error("pool.map: argument #2 must be a list, got " .. type(list), 2) end
  if opts ~= nil and type(opts) ~= "table" then
    error("pool.map: argument #3 must be a table of options, got " .. type(opts), 2)
  end
  local ordered, ctx = true, nil
  if opts then
    if opts.ordered ~= nil then ordered = opts.ordered and true or false end
    ctx = opts.ctx
    if ctx ~= nil and not wait.is_context(ctx) then error("pool.map: opts.ctx must be a context", 2) end
  end
  local n = #list
  local b, errno = c:map_batch(n)
  if not b then return nil, errors.from_errno("pool.map", nil, errno) end
  local i = 1
  while i <= n do
    local nxt, idx, msg = b:push(fn, list, i)
    if nxt == nil then
      b:cancel()
      if idx == "closed" then error("pool.map: pool is closed", 2) end
      error(format("pool.map: argument #2: element %d: %s", idx, msg), 2)
    end
    i = nxt
    if i <= n then
      if ctx and ctx:done() then b:cancel(); return nil, ctx:err() end
      local ok, err
      if ctx then
        ok, err = wait.wait_many(wait.add_ctx({ c:space_fd(), "r" }, ctx), ctx:deadline())
      else
        ok, err = wait.wait(c:space_fd(), "r")
      end
      if ok == nil then b:cancel(); return nil, err end
    end
  end
  while not b:done() do
    if ctx and ctx:done() then b:cancel(); return nil, ctx:err() end
    local ok, err
    if ctx then
      ok, err = wait.wait_many(wait.add_ctx({ b:fd(), "r" }, ctx), ctx:deadline())
    else
      ok, err = wait.wait(b:fd(), "r")
    end
    if ok == nil then b:cancel(); return nil, err end
  end
  local res, idx, st, m, tb, value = b:results(ordered)
  if res then return res end
  if st == 3 then return nil, errors.Canceled end
  local err = task_error(m, tb, value)
  err.index = idx
  return nil, err
end

--- pool:stats() -> {size, queue, queued, running, submitted, done, failed,
-- cancelled, idle, closed}: queue is the bound, queued the tasks waiting for
-- a worker, running those being run, idle the workers waiting for work;
-- submitted, done, failed and cancelled count tasks since the pool started.
function Pool:stats()
  return check_pool(self, "stats"):stats()
end

--- pool:close() -> true | nil, err. Stops taking tasks, lets the queued ones run,
-- then waits (through the waiter) until every worker thread has ended and
-- joins them; their lua_States are closed. Idempotent. Lua 5.4's `<close>`
-- closes a pool too; garbage collection cancels what is still queued and
-- detaches the workers without waiting (a running task ends on its own).
function Pool:close()
  local c = check_pool(self, "close")
  c:close()
  return join(c)
end

Pool.__close = function(self) self:close() end
Pool.__tostring = function(self)
  local s = self._c:stats()
  return format("tether.pool (%d workers, %s)", s.size, s.closed and "closed" or "open")
end

--- pool.is_pool(v) -> true when v is a pool made by pool.new.
function M.is_pool(v)
  return getmetatable(v) == Pool
end

M.Future = Future

return M
