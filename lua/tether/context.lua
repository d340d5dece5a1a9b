--- tether.context: Go's context package on tether's monotonic clock.
--
-- A context carries a cancellation signal, a deadline and values down a
-- tree: `background()` is the root; `with_cancel`, `with_cancel_cause`,
-- `with_timeout`, `with_deadline`, `with_value` and `without_cancel` derive
-- children. Cancelling a context cancels all its descendants at once (with
-- its err and cause), never its parent. Times are seconds on `tether.now()`
-- (CLOCK_MONOTONIC).
--
-- There are no goroutines and no timers: a deadline that passes is noticed
-- when someone looks (`done`, `err`, `wait`, `cause`, `after_func`, or
-- deriving a child); the context and its descendants are then cancelled
-- with DeadlineExceeded, as a Go timer would have done at the deadline.
-- Event loops that wait on a context through its pollable protocol
-- (`pollfd`, `events`, `timeout`) wake at the deadline by its `timeout()`
-- and then look.
--
-- Internal hooks (for tether.signal; not part of the public API):
--
--   context._checkers   a list of functions, each called with no argument
--                       before done(), err(), wait() and cause() answer (and
--                       again each time wait() wakes). tether.signal registers
--                       its pump there, which may cancel contexts. Re-entrant
--                       calls (a checker that looks at a context) skip them.
--   context._wait_fds   nil, or a function returning a flat list
--                       {fd1, ev1, fd2, ev2, ...} of extra fds ctx:wait() also
--                       waits on (tether.signal's self-pipe). Whatever makes
--                       them readable must be drained by a checker, or wait()
--                       spins. Pairs given as {fd, ev} tables and tether fd
--                       objects are accepted too.
--   ctx:_cancel(err, cause)  cancels ctx (one made by with_cancel & co.) and
--                       its descendants with err (default Canceled) and cause
--                       (default err); the cancel functions use it.
--   ctx._children       of a cancellable ctx: the table {[child] = true} of
--                       its live cancellable descendants (the nearest ones),
--                       emptied when ctx is cancelled; a child's cancel
--                       removes it.
--
-- Runs on Lua 5.1 to 5.4 and LuaJIT.
local core = require "tether.core"
local errors = require "tether.errors"
local wait = require "tether.wait"

local type, pairs, setmetatable, getmetatable, error, pcall =
  type, pairs, setmetatable, getmetatable, error, pcall
local format = string.format
local sort, concat = table.sort, table.concat
local now = core.now
local huge = math.huge

local M = {}

--- context.Canceled: the err of a context cancelled by its cancel function
-- (the same object as tether.errors.Canceled).
M.Canceled = errors.Canceled
--- context.DeadlineExceeded: the err of a context whose deadline passed (the
-- same object as tether.errors.DeadlineExceeded; it also counts as
-- errors.ErrTimeout).
M.DeadlineExceeded = errors.DeadlineExceeded

local Canceled, DeadlineExceeded = M.Canceled, M.DeadlineExceeded

-- Internal hooks, documented at the top.
M._checkers = {}
M._wait_fds = nil

-- When a context has no eventfd (the process ran out of fds), wait() and
-- timeout() fall back to looking this often (seconds).
local SLICE = 0.05

-- Methods of contexts.
local Context = {}

local mt = { __index = Context, __name = "tether.context" }

-- A context is a table with this metatable. Fields:
--   _name     "Background", "TODO", "WithCancel", "WithDeadline",
--             "WithValue", "WithoutCancel" (for tostring)
--   _parent   the context it was derived from (nil for the roots)
--   _c        the cancellable context that decides when this one is done:
--             itself for with_cancel & co., the parent's _c for with_value,
--             nil for the roots and without_cancel (never done)
--   _key, _val  of with_value
-- and, on cancellable contexts (_c == self):
--   _up       the parent's _c when this one was made (where it is registered)
--   _deadline absolute deadline, min(own, parent's), or nil
--   _err, _cause  nil until done
--   _children {[child] = true}: cancellable descendants registered here
--   _afters   {[token] = true}: after_func registrations (token = {f, seq})
--   _fd       the eventfd made by pollfd(), or nil
--   _nofd     true when the last try to make the eventfd failed

local function argerror(n, fname, msg)
  error(format("bad argument #%d to '%s' (%s)", n, fname, msg), 3)
end

local function is_context(v)
  return getmetatable(v) == mt
end

--- context.is_context(v) -> true when v is a tether context, else false.
function M.is_context(v)
  return is_context(v)
end

-- expected(what, v) -> "what expected, got <type>" for an argument error.
local function expected(what, v)
  return what .. " expected, got " .. type(v)
end

-- A number that is not NaN, or an argument error message.
local function number_problem(v)
  if type(v) ~= "number" then return expected("number", v) end
  if v ~= v then return "number expected, got NaN" end
  return nil
end

---------------------------------------------------------------------------
-- cancellation

-- Sequence number of after_func registrations: callbacks of one
-- cancellation run in the order they were registered.
local after_seq = 0

local function by_seq(a, b) return a.seq < b.seq end

-- Runs the after_func callbacks of one cancellation, all of them; the first
-- error raised by one is raised again once all have run.
local function run_afters(tokens)
  if #tokens > 1 then sort(tokens, by_seq) end
  local first
  for i = 1, #tokens do
    local ok, e = pcall(tokens[i].f)
    if not ok and first == nil then first = { e } end
  end
  if first then error(first[1], 0) end
end

-- cancel(c, err, cause, remove) -> true when this call cancelled c, false
-- when it was done already. Marks c and every descendant done with err and
-- cause (a descendant whose own deadline has passed gets DeadlineExceeded:
-- its timer would have fired first), notifies their eventfds, forgets their
-- children, then runs the after_func callbacks. With remove, c leaves its
-- parent's list of children.
local function cancel(c, err, cause, remove)
  if c._err ~= nil then return false end
  local t = now()
  local pending = {}
  local stack, n = { c }, 1
  while n > 0 do
    local x = stack[n]
    stack[n] = nil
    n = n - 1
    if x._err == nil then
      local e, k = err, cause
      local d = x._deadline
      if e ~= DeadlineExceeded and d and t >= d then
        e, k = DeadlineExceeded, x._dcause or DeadlineExceeded
      end
      x._err, x._cause = e, k
      if x._fd then x._fd:notify() end
      for token in pairs(x._afters) do pending[#pending + 1] = token end
      x._afters = {}
      for child in pairs(x._children) do
        n = n + 1
        stack[n] = child
      end
      x._children = {}
    end
  end
  if remove and c._up then c._up._children[c] = nil end
  if #pending > 0 then run_afters(pending) end
  return true
end

-- expire(c): when c's deadline has passed and c is not done yet, cancels it
-- with DeadlineExceeded; from the topmost ancestor whose deadline passed
-- too (a child's deadline is never later than its parent's), so that the
-- ancestors notice as well.
local function expire(c)
  local d = c._deadline
  if d == nil or c._err ~= nil then return end
  local t = now()
  if t < d then return end
  local top, up = c, c._up
  while up and up._err == nil and up._deadline and t >= up._deadline do
    top, up = up, up._up
  end
  cancel(top, DeadlineExceeded, top._dcause or DeadlineExceeded, true)
  if c._err == nil then cancel(c, DeadlineExceeded, c._dcause or DeadlineExceeded, true) end
end

-- Runs context._checkers (not re-entrantly).
local checking = false

local function run_list(list)
  for i = 1, #list do list[i]() end
end

local function run_checkers()
  local list = M._checkers
  if checking or list == nil or #list == 0 then return end
  checking = true
  local ok, e = pcall(run_list, list)
  checking = false
  if not ok then error(e, 0) end
end

-- look(ctx) -> ctx's cancellable context (nil when it can never be done),
-- after running the checkers and noticing a passed deadline.
local function look(ctx)
  run_checkers()
  local c = ctx._c
  if c then expire(c) end
  return c
end

-- c's eventfd, made on first use (notified at once when c is done), or nil
-- when no fd could be made (the next call tries again).
local function eventfd(c)
  local fd = c._fd
  if fd == nil then
    fd = core.eventfd()
    if not fd then
      c._nofd = true
      return nil
    end
    c._nofd = nil
    if c._err ~= nil then fd:notify() end
    c._fd = fd
  end
  return fd
end

---------------------------------------------------------------------------
-- constructors

local background = setmetatable({ _name = "Background" }, mt)
local todo = setmetatable({ _name = "TODO" }, mt)

--- context.background() -> the root context: never done (err() is nil),
-- no deadline (deadline() is nil), no values. Always the same object.
function M.background()
  return background
end

--- context.todo() -> a root context like background(), for code that has
-- not decided which context to use yet (Go's context.TODO). Always the
-- same object.
function M.todo()
  return todo
end

-- A new cancellable context under parent, with deadline (absolute, or nil)
-- if it is earlier than the parent's. Done at once when the parent is done
-- (with its err and cause) or the deadline has passed. dcause: the cause when its own
-- deadline passes (nil: DeadlineExceeded); a parent's earlier deadline brings the parent's.
local function new_cancellable(parent, name, deadline, dcause)
  local up = parent._c
  if up then expire(up) end
  local d = up and up._deadline
  local own = false
  if deadline and (d == nil or deadline < d) then d, own = deadline, true end
  local c = setmetatable({ _parent = parent, _name = name, _up = up,
    _deadline = d, _children = {}, _afters = {} }, mt)
  if own and dcause ~= nil then c._dcause = dcause end
  c._c = c
  if up then
    if up._err ~= nil then
      c._err, c._cause = up._err, up._cause
      return c
    end
    up._children[c] = true
  end
  if d and now() >= d then cancel(c, DeadlineExceeded, c._dcause or DeadlineExceeded, true) end
  return c
end

--- context.with_cancel(parent) -> ctx, cancel. ctx is done when cancel() is
-- called (err Canceled) or when parent is done (parent's err and cause),
-- whichever happens first. cancel() returns nothing; calling it again is
-- harmless. Call it once ctx's work is over: until then parent keeps a
-- reference to ctx. Raises when parent is not a context.
function M.with_cancel(parent)
  if not is_context(parent) then argerror(1, "with_cancel", expected("context", parent)) end
  local c = new_cancellable(parent, "WithCancel")
  return c, function() cancel(c, Canceled, Canceled, true) end
end

--- context.with_cancel_cause(parent) -> ctx, cancel(cause). Like
-- with_cancel, but cancel takes the cause that context.cause(ctx) reports
-- (any value; nil means Canceled). ctx:err() is Canceled all the same.
-- Raises when parent is not a context.
function M.with_cancel_cause(parent)
  if not is_context(parent) then argerror(1, "with_cancel_cause", expected("context", parent)) end
  local c = new_cancellable(parent, "WithCancel")
  return c, function(cause)
    if cause == nil then cause = Canceled end
    cancel(c, Canceled, cause, true)
  end
end

--- context.with_deadline(parent, t) -> ctx, cancel. Like with_cancel, and
-- ctx is also done (err DeadlineExceeded) once tether.now() reaches t
-- (absolute seconds on tether.now()); ctx:deadline() is the earlier of t
-- and the parent's deadline. A t already past gives a ctx done at once;
-- t = math.huge means no deadline of its own. Raises naming the argument
-- when parent is not a context or t is not a number.
function M.with_deadline(parent, t)
  if not is_context(parent) then argerror(1, "with_deadline", expected("context", parent)) end
  local bad = number_problem(t)
  if bad then argerror(2, "with_deadline", bad) end
  if t == huge then t = nil end
  local c = new_cancellable(parent, "WithDeadline", t)
  return c, function() cancel(c, Canceled, Canceled, true) end
end

--- context.with_timeout(parent, seconds) -> ctx, cancel: with_deadline(parent,
-- tether.now() + seconds). seconds <= 0 gives a ctx done at once;
-- math.huge means no deadline of its own. Raises naming the argument when
-- parent is not a context or seconds is not a number.
function M.with_timeout(parent, seconds)
  if not is_context(parent) then argerror(1, "with_timeout", expected("context", parent)) end
  local bad = number_problem(seconds)
  if bad then argerror(2, "with_timeout", bad) end
  local t = now() + seconds
  if t == huge then t = nil end
  local c = new_cancellable(parent, "WithDeadline", t)
  return c, function() cancel(c, Canceled, Canceled, true) end
end

--- context.with_deadline_cause(parent, t, cause) -> ctx, cancel: with_deadline,
-- and when the deadline passes, context.cause(ctx) is cause (ctx:err() is still
-- DeadlineExceeded), as Go's WithDeadlineCause. cancel() gives Canceled as cause; a
-- parent whose deadline is earlier brings its own cause.
function M.with_deadline_cause(parent, t, cause)
  if not is_context(parent) then argerror(1, "with_deadline_cause", expected("context", parent)) end
  local bad = number_problem(t)
  if bad then argerror(2, "with_deadline_cause", bad) end
  if t == huge then t = nil end
  local c = new_cancellable(parent, "WithDeadline", t, cause)
  return c, function() cancel(c, Canceled, Canceled, true) end
end

--- context.with_timeout_cause(parent, seconds, cause) -> ctx, cancel:
-- with_deadline_cause(parent, tether.now() + seconds, cause), as Go's WithTimeoutCause.
function M.with_timeout_cause(parent, seconds, cause)
  if not is_context(parent) then argerror(1, "with_timeout_cause", expected("context", parent)) end
  local bad = number_problem(seconds)
  if bad then argerror(2, "with_timeout_cause", bad) end
  local t = now() + seconds
  if t == huge then t = nil end
  local c = new_cancellable(parent, "WithDeadline", t, cause)
  return c, function() cancel(c, Canceled, Canceled, true) end
end

--- context.with_value(parent, key, value) -> ctx: a context like parent
-- (done, err, deadline and cause are parent's) whose ctx:value(key) is
-- value; other keys are looked up in parent. Raises naming the argument
-- when parent is not a context or key is nil or NaN.
function M.with_value(parent, key, value)
  if not is_context(parent) then argerror(1, "with_value", expected("context", parent)) end
  if key == nil then argerror(2, "with_value", "key must not be nil") end
  if key ~= key then argerror(2, "with_value", "key must not be NaN") end
  return setmetatable({ _parent = parent, _name = "WithValue", _c = parent._c,
    _key = key, _val = value }, mt)
end

--- context.without_cancel(parent) -> ctx: a context with parent's values that
-- is never done, even when parent is (err() and cause are nil), and has no
-- deadline. Raises when parent is not a context.
function M.without_cancel(parent)
  if not is_context(parent) then argerror(1, "without_cancel", expected("context", parent)) end
  return setmetatable({ _parent = parent, _name = "WithoutCancel" }, mt)
end

--- context.after_func(ctx, f) -> stop. Arranges for f() to be called once
-- when ctx is done: at the moment it is cancelled (by a cancel function or
-- a cancelled ancestor), or, for a deadline, when tether notices it has
-- passed (in done, err, wait, cause or after_func). When ctx is done
-- already, f is called before after_func returns. An error raised by f is
-- raised by whatever call cancelled ctx, after the cancellation is
-- complete and the other callbacks have run.
-- stop() -> true when it prevented f from running; false when f has been
-- called already or stop was called before. Raises naming the argument
-- when ctx is not a context or f is not a function.
function M.after_func(ctx, f)
  if not is_context(ctx) then argerror(1, "after_func", expected("context", ctx)) end
  if type(f) ~= "function" then argerror(2, "after_func", expected("function", f)) end
  local c = look(ctx)
  if c == nil then
    -- ctx can never be done: f never runs, stop stops it once.
    local stopped = false
    return function()
      if stopped then return false end
      stopped = true
      return true
    end
  end
  if c._err ~= nil then
    f()
    return function() return false end
  end
  after_seq = after_seq + 1
  local token = { f = f, seq = after_seq }
  c._afters[token] = true
  return function()
    local afters = c._afters
    if afters[token] then
      afters[token] = nil
      return true
    end
    return false
  end
end

--- context.cause(ctx) -> why ctx is done (Go's context.Cause): the cause
-- given to with_cancel_cause's cancel (for ctx or the ancestor whose
-- cancellation reached it), else ctx:err() (Canceled or
-- DeadlineExceeded). nil when ctx is not done. Raises when ctx is not a
-- context.
function M.cause(ctx)
  if not is_context(ctx) then argerror(1, "cause", expected("context", ctx)) end
  local c = look(ctx)
  if c == nil then return nil end
  return c._cause
end

---------------------------------------------------------------------------
-- methods

local function check_self(self, name)
  if not is_context(self) then
    error(format("bad argument #1 to '%s' (context expected, got %s)", name, type(self)), 3)
  end
end

--- ctx:err() -> nil while ctx is not done; context.Canceled when it was
-- cancelled; context.DeadlineExceeded when its deadline passed. The
-- sentinels themselves, so == and errors.is both work.
function Context:err()
  check_self(self, "err")
  local c = look(self)
  if c == nil then return nil end
  return c._err
end

--- ctx:done() -> true when ctx is done (cancelled or past its deadline),
-- else false. Never waits.
function Context:done()
  check_self(self, "done")
  local c = look(self)
  return c ~= nil and c._err ~= nil
end

--- ctx:deadline() -> the absolute time (seconds on tether.now()) at which
-- ctx will be done by itself, or nil when it has no deadline.
function Context:deadline()
  check_self(self, "deadline")
  local c = self._c
  if c == nil then return nil end
  return c._deadline
end

--- ctx:value(key) -> the value of the nearest with_value for key on the way
-- from ctx up to the root, or nil when there is none.
function Context:value(key)
  check_self(self, "value")
  if key == nil then return nil end
  local x = self
  while x do
    if x._key ~= nil and x._key == key then return x._val end
    x = x._parent
  end
  return nil
end

-- Appends the fds of context._wait_fds() to list (from index 3).
local function add_wait_fds(list)
  local f = M._wait_fds
  if f == nil then return end
  local extra = f()
  if type(extra) ~= "table" then return end
  local n = #list
  local i = 1
  while extra[i] ~= nil do
    local fd, ev = extra[i], extra[i + 1]
    if type(fd) == "table" then -- a {fd, ev} pair
      fd, ev = fd[1], fd[2]
      i = i + 1
    else
      i = i + 2
    end
    if type(fd) ~= "number" then fd = core.fileno(fd) end
    list[n + 1], list[n + 2] = fd, ev or "r"
    n = n + 2
  end
end

--- ctx:wait([timeout]) -> true when ctx is done, false when timeout seconds
-- ran out first. Without timeout (nil), waits until ctx is done (forever
-- for a context that can never be done). Blocks through tether's waiter;
-- signals do not cut it short. Raises naming the argument when timeout is
-- neither nil nor a number.
function Context:wait(timeout)
  check_self(self, "wait")
  local limit
  if timeout ~= nil then
    local bad = number_problem(timeout)
    if bad then argerror(1, "wait", bad) end
    if timeout < huge then
      if timeout < 0 then timeout = 0 end
      limit = now() + timeout
    end
  end
  local list = {}
  while true do
    local c = look(self)
    if c and c._err ~= nil then return true end
    local t = now()
    if limit and t >= limit then return false end
    local d = limit
    local fd = -1
    if c then
      local cd = c._deadline
      if cd and (d == nil or cd < d) then d = cd end
      local efd = eventfd(c)
      if efd then
        fd = efd:getfd()
      elseif d == nil or d > t + SLICE then
        d = t + SLICE -- no eventfd: look again soon
      end
    end
    for i = #list, 1, -1 do list[i] = nil end
    list[1], list[2] = fd, "r"
    add_wait_fds(list)
    wait.wait_many(list, d)
  end
end

--- ctx:pollfd() -> an fd that becomes readable when ctx is done (an eventfd
-- made on first call, shared by contexts that are done together), for
-- event loops (the cqueues pollable protocol). -1 for a context that can
-- never be done, and when no fd could be made (timeout() then asks to be
-- woken soon).
function Context:pollfd()
  check_self(self, "pollfd")
  local c = self._c
  if c == nil then return -1 end
  local fd = eventfd(c)
  if fd == nil then return -1 end
  return fd:getfd()
end

--- ctx:events() -> "r": pollfd() is to be waited on for reading.
-- For tether.wait_any: a context is ready once done.
function Context:_ready() return self:done() end

function Context:events()
  return "r"
end

--- ctx:timeout() -> seconds until ctx's deadline (0 when it has passed or ctx
-- is done), or nil when ctx has no deadline: how long an event loop may wait
-- on pollfd() before it must look again (with done() or err()).
function Context:timeout()
  check_self(self, "timeout")
  local c = self._c
  if c == nil then return nil end
  if c._err ~= nil then return 0 end
  local left
  if c._deadline then
    left = c._deadline - now()
    if left < 0 then left = 0 end
  end
  if c._nofd and (left == nil or left > SLICE) then
    left = SLICE -- pollfd() could not make an fd: poll instead
  end
  return left
end

--- ctx:_cancel([err [, cause]]) (internal) -> true when this call cancelled
-- ctx, false when it was done already. Cancels ctx, which must be made by
-- with_cancel, with_cancel_cause, with_timeout or with_deadline, and its
-- descendants with err (nil = Canceled) and cause (nil = err); ctx leaves
-- its parent's children.
function Context:_cancel(err, cause)
  check_self(self, "_cancel")
  if self._c ~= self then
    error("context: _cancel needs a context made by with_cancel, with_timeout or with_deadline", 2)
  end
  if err == nil then err = Canceled end
  if cause == nil then cause = err end
  return cancel(self, err, cause, true)
end

-- tostring(ctx) -> "context.Background.WithCancel.WithValue", as Go names
-- contexts (without the values).
mt.__tostring = function(ctx)
  local names = {}
  local x = ctx
  while x do
    names[#names + 1] = x._name
    x = x._parent
  end
  local n = #names
  for i = 1, math.floor(n / 2) do
    names[i], names[n + 1 - i] = names[n + 1 - i], names[i]
  end
  return "context." .. concat(names, ".")
end

return M
