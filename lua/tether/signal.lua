--- tether.signal: Go's os/signal for Lua.
--
-- A C handler counts each caught signal and wakes a self-pipe; nothing else
-- runs in the handler. Counts, pipe and watches belong to this lua_State: each
-- state watching a signal receives it, and closing the state puts back every
-- disposition it changed (src/signal.c). Pending signals are delivered to channels whenever
-- tether looks (recv, try_recv, a context check, a wait). A full channel drops
-- the signal, as in Go. Only signals named here are ever touched; when no
-- channel watches a signal any more, the disposition found before tether
-- touched it is restored. A handler the host installed before is chained.
local core = require "tether.core"
local errors = require "tether.errors"
local wait = require "tether.wait"

local type, pairs, ipairs, setmetatable, error, select =
  type, pairs, ipairs, setmetatable, error, select

local SIG = core.signals
local signame = require "tether.signame"
local M = {}

-- Signals tether refuses to touch: synchronous faults and the uncatchable ones.
local refused = { SIGSEGV = true, SIGBUS = true, SIGFPE = true, SIGILL = true,
  SIGKILL = true, SIGSTOP = true }

-- name(n) -> "SIGINT" (or "SIGRTMIN+3" / "SIG<n>"): tether.signame, the library's one parser.
local name_of = signame.name

-- number(sig, argn, fname) -> signal number; raises naming the argument.
local function number(sig, argn, fname, level)
  level = level or 3
  local n, why = signame.number(sig)
  if n == 0 then n, why = nil, "invalid signal number 0" end
  if not n then error(("bad argument #%d to '%s' (%s)"):format(argn, fname, why), level) end
  if refused[SIG[n] or ""] then
    error(("bad argument #%d to '%s' (%s cannot be handled by tether)"):format(argn, fname, SIG[n]), level)
  end
  return n
end

-- The list of signal numbers named by ..., starting at argument argn; none = all catchable.
local function numbers(argn, fname, ...)
  local list = {}
  local count = select("#", ...)
  if count == 0 then
    for n = 1, 31 do
      if SIG[n] and not refused[SIG[n]] then list[#list + 1] = n end
    end
    for n = SIG.SIGRTMIN, SIG.SIGRTMAX do list[#list + 1] = n end
    return list
  end
  for i = 1, count do list[i] = number((select(i, ...)), argn + i - 1, fname, 4) end
  return list
end

-- watchers[signum] = { [channel] = true }
local watchers = {}
local nwatched = 0 -- signals with at least one watcher

---------------------------------------------------------------------------
-- channels

local Channel = {}
Channel.__index = Channel
Channel.__name = "tether.signal.channel"

--- channel([capacity]) -> a signal channel holding up to capacity (default 1)
-- undelivered signals; more are dropped, as in Go.
function M.channel(capacity)
  if capacity == nil then capacity = 1 end
  if type(capacity) ~= "number" or capacity < 1 or capacity ~= math.floor(capacity) then
    error("bad argument #1 to 'channel' (capacity must be a positive integer)", 2)
  end
  return setmetatable({ cap = capacity, q = {}, first = 1, last = 0 }, Channel)
end

local function push(ch, name)
  if ch.last - ch.first + 1 >= ch.cap then return false end
  ch.last = ch.last + 1
  ch.q[ch.last] = name
  if ch.on_signal then ch.on_signal(name) end
  return true
end

local function pop(ch)
  local first, last = ch.first, ch.last
  if first > last then return nil end
  local q = ch.q
  local v = q[first]
  q[first] = nil
  -- Emptied: start again at 1, so the queue's indices stay small (ever-growing keys make
  -- the table rehash again and again).
  if first == last then ch.first, ch.last = 1, 0 else ch.first = first + 1 end
  return v
end

--- pump(): delivers the signals caught since the last look to the watching
-- channels. Cheap when none are pending (no syscall). Called by every wait.
local take_buf = {} -- signal_take fills it: signum, count, signum, count, ...
local function pump()
  local buf = take_buf
  if not buf then buf = {} end -- a pump inside a delivery (an on_signal callback)
  local k = core.signal_take(buf)
  if not k then return end
  take_buf = nil
  for i = 1, 2 * k, 2 do
    local n, count = buf[i], buf[i + 1]
    local ws = watchers[n]
    if ws then
      local name = name_of(n)
      for ch in pairs(ws) do
        for _ = 1, count do
          if not push(ch, name) then break end
        end
      end
    end
  end
  take_buf = buf
end
M._pump = pump

--- ch:try_recv() -> "SIGINT" | nil: a pending signal's name, without waiting.
function Channel:try_recv()
  pump()
  return pop(self)
end

--- ch:recv([timeout | ctx]) -> "SIGINT" | nil, err. Waits for a signal. A
-- timeout (seconds) that runs out gives err:is(errors.ErrTimeout); a context
-- that is done gives its error (context.Canceled or DeadlineExceeded).
function Channel:recv(limit)
  local deadline, ctx
  if limit ~= nil and not wait.is_seconds(limit) then
    deadline, ctx = wait.limit(limit) -- a context; a bad limit raises before a signal is taken
  end
  pump()
  local v = pop(self)
  if v then return v end -- already here: no wait, no clock read
  if limit ~= nil and not ctx then deadline = wait.deadline(limit) end
  while true do
    pump()
    v = pop(self)
    if v then return v end
    if ctx and ctx:done() then return nil, ctx:err() end
    local fd, errno = core.signal_fd()
    if not fd then return nil, errors.from_errno("recv", nil, errno) end
    local ready, werr = wait.wait_many(wait.add_ctx({ fd, "r" }, ctx), deadline)
    if ready == nil then return nil, werr end -- the OS refused the wait
    if ready == false then
      pump()
      v = pop(self)
      if v then return v end
      if ctx and ctx:done() then return nil, ctx:err() end
      return nil, errors.timeout("recv", nil)
    end
  end
end

--- ch:pollfd() -> the signal self-pipe's fd; events() -> "r"; timeout() -> nil.
function Channel:pollfd() return core.signal_fd() end
function Channel:_ready() pump(); return self.first <= self.last end
function Channel:events() return "r" end
function Channel:timeout() if self.first <= self.last then return 0 end return nil end

---------------------------------------------------------------------------
-- notify, stop, ignore, reset

-- An OS failure of sigaction for signal n as an error object (err.signal names it).
local function sigerror(n, errno)
  local err = errors.from_errno("sigaction " .. name_of(n), nil, errno)
  err.signal = name_of(n)
  return err
end

--- notify(ch, sig...) -> ch | nil, err: relays the named signals ("INT",
-- "SIGINT" or numbers) to ch; with no names, every catchable signal. Raises on
-- unknown names and on SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGKILL, SIGSTOP. A
-- signal the system refuses (EINVAL: a real-time signal valgrind or qemu keep)
-- fails for itself alone: the others named are registered, and notify returns
-- nil, err naming it (err.signal; err.skipped lists every one refused). With no
-- names, the refused ones are skipped: notify returns ch, err.
function M.notify(ch, ...)
  if getmetatable(ch) ~= Channel then error("bad argument #1 to 'notify' (signal channel expected)", 2) end
  local all = select("#", ...) == 0
  local list = numbers(2, "notify", ...)
  local first, skipped
  for _, n in ipairs(list) do
    local ws = watchers[n]
    if not ws then
      local ok, errno = core.signal_watch(n)
      if ok then
        ws = {}
        watchers[n] = ws
        nwatched = nwatched + 1
      else
        first = first or sigerror(n, errno)
        skipped = skipped or {}
        skipped[#skipped + 1] = name_of(n)
      end
    end
    if ws then ws[ch] = true end
  end
  if first then first.skipped = skipped end
  if all then return ch, first end
  if first then return nil, first end
  return ch
end

local function unwatch(n)
  if watchers[n] then
    watchers[n] = nil
    nwatched = nwatched - 1
  end
end

--- stop(ch) -> true | nil, err: ch receives no more signals. A signal no
-- channel watches any more gets back the disposition it had before tether
-- touched it (err: sigaction refused that).
function M.stop(ch)
  if getmetatable(ch) ~= Channel then error("bad argument #1 to 'stop' (signal channel expected)", 2) end
  pump() -- what was caught before stop still reaches ch
  local first
  for n, ws in pairs(watchers) do
    if ws[ch] then
      ws[ch] = nil
      if next(ws) == nil then
        unwatch(n)
        local ok, errno = core.signal_unwatch(n)
        if not ok then first = first or sigerror(n, errno) end
      end
    end
  end
  if first then return nil, first end
  return true
end

--- ignore(sig...) -> true | nil, err: the named signals (none = all catchable)
-- are ignored (SIG_IGN) and no longer delivered to channels. One the system
-- refuses is reported (err.signal) and the others are still ignored.
function M.ignore(...)
  local first
  for _, n in ipairs(numbers(1, "ignore", ...)) do
    unwatch(n)
    local ok, errno = core.signal_ignore(n)
    if not ok and not first then first = sigerror(n, errno) end
  end
  if first and select("#", ...) > 0 then return nil, first end
  return true
end

--- ignored(sig) -> true when sig is currently ignored (SIG_IGN).
function M.ignored(sig)
  return core.signal_ignored(number(sig, 1, "ignored"))
end

--- reset(sig...) -> true | nil, err: undoes notify and ignore for the named
-- signals (none = all): each gets back the disposition found before tether
-- touched it.
function M.reset(...)
  local first
  for _, n in ipairs(numbers(1, "reset", ...)) do
    unwatch(n)
    local ok, errno = core.signal_reset(n)
    if not ok and not first then first = sigerror(n, errno) end
  end
  if first then return nil, first end
  return true
end

--- notify_context(parent, sig...) -> ctx, stop | nil, err. ctx is cancelled when one of
-- the signals arrives (context.cause(ctx) names it: "received signal SIGINT").
-- stop() unregisters the signals (a second SIGINT then gets the default action)
-- and cancels ctx.
function M.notify_context(parent, ...)
  local context = require "tether.context"
  local ctx, cancel = context.with_cancel_cause(parent)
  local ch = M.channel(1)
  ch.on_signal = function(name)
    local cause = errors.new { msg = "received signal " .. name }
    cause.signal = name
    cancel(cause)
  end
  local ok, err = M.notify(ch, ...)
  if not ok then
    M.stop(ch)
    cancel()
    return nil, err
  end
  local stopped = false
  local function stop()
    if not stopped then
      stopped = true
      M.stop(ch)
    end
    cancel()
  end
  return ctx, stop
end

-- Contexts pump signals before answering, and wait on the self-pipe too.
do
  local ok, context = pcall(require, "tether.context")
  if ok and context._checkers then
    context._checkers[#context._checkers + 1] = pump
    local prev = context._wait_fds
    context._wait_fds = function()
      local list = prev and prev() or {}
      -- pump first: a pipe left readable by signals already counted would wake the wait
      -- at once, again and again (a wait_any with no channel or context in its list)
      local fd = nwatched > 0 and core.signal_fd()
      if fd then pump(); list[#list + 1] = fd; list[#list + 1] = "r" end
      return list
    end
  end
end

M.Channel = Channel
return M
