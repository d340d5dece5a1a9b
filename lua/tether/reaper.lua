--- tether.reaper: reaper mode, for a process that adopts orphans (PID 1 or a
-- child subreaper) and must reap them.
--
-- With reaper mode on, every child that exits is reaped (wait4 on any pid),
-- orphans included, while the statuses of tether's own children still reach
-- their Process objects: the C core keeps a registry of tether's live
-- children, and when the reaper takes one of them its exit status and rusage
-- are kept for Process:wait (never ECHILD, never a lost status).
--
-- When reaping happens: at every tether wait, sleep and spawn, and during a
-- wait as soon as a child exits (SIGCHLD is watched and wakes tether's poll).
-- A loop that waits outside tether (cqueues, a custom waiter) adds the reaper
-- as a pollable and calls reaper.reap() when it is readable.
local core = require "tether.core"
local errors = require "tether.errors"

local type, error = type, error

local M = {}

local state = {
  on = false,
  ch = nil,            -- the signal channel that keeps SIGCHLD watched
  set_subreaper = false, -- enable() made this process a subreaper (disable() undoes it)
}

local function fail(op, errno)
  return nil, errors.from_errno(op, nil, errno)
end

--- enable([opts]) -> true | nil, err: turns reaper mode on. Unless this
-- process is PID 1, it also becomes a child subreaper (PR_SET_CHILD_SUBREAPER),
-- so orphans of its descendants are re-parented to it; opts.subreaper = false
-- skips that (only this process's own children are reaped then). Enabling
-- twice is harmless.
function M.enable(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #1 to 'enable' (table or nil expected, got " .. type(opts) .. ")", 2)
  end
  opts = opts or {}
  if opts.subreaper ~= nil and type(opts.subreaper) ~= "boolean" then
    error("reaper.enable: opts.subreaper must be a boolean", 2)
  end
  if state.on then return true end
  if opts.subreaper ~= false and core.pid() ~= 1 then
    local is, errno = core.subreaper()
    if is == nil then return fail("prctl PR_GET_CHILD_SUBREAPER", errno) end
    if not is then
      local ok, err = core.set_subreaper(true)
      if not ok then return fail("prctl PR_SET_CHILD_SUBREAPER", err) end
      state.set_subreaper = true
    end
  end
  local ok, errno = core.reaper_start()
  if not ok then
    if state.set_subreaper then core.set_subreaper(false); state.set_subreaper = false end
    return fail("eventfd", errno)
  end
  -- SIGCHLD through tether.signal: its handler wakes the reaper, and it keeps count of
  -- who watches the signal (a user's channel on SIGCHLD shares the handler).
  local signal = require "tether.signal"
  local ch = signal.channel(1)
  local nok, nerr = signal.notify(ch, "CHLD")
  if not nok then
    core.reaper_stop()
    if state.set_subreaper then core.set_subreaper(false); state.set_subreaper = false end
    return nil, errors.wrap(nerr, "reaper.enable")
  end
  state.ch, state.on = ch, true
  core.reap() -- whatever exited before the handler was in place
  return true
end

--- disable() -> true: turns reaper mode off. SIGCHLD gets back the disposition
-- it had (unless a signal channel still watches it), and the subreaper flag
-- set by enable() is cleared. Statuses already kept for Process objects stay.
function M.disable()
  if not state.on then return true end
  core.reap()
  core.reaper_stop()
  state.on = false
  require("tether.signal").stop(state.ch)
  state.ch = nil
  if state.set_subreaper then
    core.set_subreaper(false)
    state.set_subreaper = false
  end
  return true
end

--- enabled() -> whether reaper mode is on.
function M.enabled() return state.on end

--- reap() -> n: reaps, without blocking, every child that has exited; n counts
-- those that were not tether's children (orphans, children of the host).
-- tether's own children reaped here keep their status for Process:wait.
-- Returns 0 when reaper mode is off.
function M.reap()
  if not state.on then return 0 end
  if state.ch then state.ch:try_recv() end -- drains the signal pipe (a SIGCHLD is no news)
  return core.reap()
end

--- reaped() -> {pid, ...}: the processes that were not tether's children
-- (orphans) reaped since the last call, by reap() or by any tether wait,
-- oldest first (at most the last 4096). An init logs them (tether-init -w).
function M.reaped()
  return core.reaper_taken()
end

--- stats() -> {enabled=, subreaper=, reaped=, stashed=}: whether reaper mode is
-- on, whether this process is a child subreaper, how many processes that were
-- not tether's it reaped so far, and how many of tether's own children it
-- reaped before their Process asked (their statuses were kept).
function M.stats()
  local t = core.reaper_stats()
  t.subreaper = core.subreaper() == true
  return t
end

--- pollfd() -> an fd readable after a child exited while reaper mode is on
-- (then call reap()); events() -> "r"; timeout() -> nil. The module itself
-- is the pollable: tether.wait_any({reaper, ...}) or cqueues.poll(reaper).
function M.pollfd() return core.reaper_fd() end
function M.events() return "r" end
function M.timeout() return nil end

return M
