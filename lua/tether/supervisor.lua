--- tether.supervisor: keep a set of commands running, with restart policies, backoff and an intensity limit.
--
-- supervisor.new{ {name=, command=function() return exec.command(...) end, restart=}, ...,
-- backoff=, intensity=, grace=, on_event= } describes the children; sup:run(ctx) starts them
-- all, restarts them by their policy with exponential backoff and jitter, and when ctx is
-- done stops each child's whole process group (SIGTERM, then SIGKILL after grace).
--
-- One loop drives every child: each pass advances each child's state, then waits through
-- tether's waiter (tether.wait) on the children's pidfds, their I/O pipes, ctx and the
-- nearest timer (a backoff, a grace). It never busy-waits; it works under a custom waiter
-- (cqueues, nginx) like every tether call.
--
-- A child's life: "start" -> "running" -> (its process exited) "draining" -> "backoff" ->
-- "running" ... or "done". While draining, what is left of the child's process group
-- (grandchildren) gets SIGTERM, then SIGKILL once grace has passed; the child counts as
-- exited once its group is empty, so a restarted child never meets its predecessor's
-- leftovers. Children start with setpgid (their pid is their group id) unless they use setsid.
local core = require "tether.core"
local errors = require "tether.errors"
local exec = require "tether.exec"
local wait = require "tether.wait"

local type, tostring, pairs, ipairs, setmetatable, getmetatable, error, pcall =
  type, tostring, pairs, ipairs, setmetatable, getmetatable, error, pcall
local format = string.format
local now = core.now
local SIG = core.signals

local M = {}

--- supervisor.ErrIntensity: what the error sup:run returns when the restart intensity
-- limit was passed matches (err:is(supervisor.ErrIntensity)).
M.ErrIntensity = errors.new { op = "supervisor", msg = "supervisor: restart intensity reached" }

local POLICIES = { always = true, ["on-failure"] = true, never = true }
local CHILD_KEYS = { name = true, command = true, restart = true }
local OPTIONS = { backoff = true, intensity = true, grace = true, on_event = true, cgroup = true }
local BACKOFF_KEYS = { initial = true, max = true, reset_after = true, jitter = true }

-- How often what is left of an exited child's process group is looked at (seconds,
-- doubling from the first to the second) until it is gone or grace has passed.
local GROUP_POLL_FIRST, GROUP_POLL_MAX = 0.01, 0.25
-- How often a child without a pidfd (kernels before 5.3) is looked at.
local NO_PIDFD_POLL = 0.05
-- How long what was SIGKILLed may take to disappear before the supervisor stops waiting.
local KILL_WAIT = 2

---------------------------------------------------------------------------
-- validation (raises naming the argument)

local function bad(msg) error("supervisor.new: " .. msg, 4) end

local function is_number(v) return type(v) == "number" and v == v and v ~= math.huge end

local function check_children(spec)
  local children, names = {}, {}
  for i = 1, #spec do
    local c = spec[i]
    local where = format("children[%d]", i)
    if type(c) ~= "table" then bad(where .. " must be a table, got " .. type(c)) end
    for k in pairs(c) do
      if not CHILD_KEYS[k] then bad(where .. " has an unknown field " .. format("%q", tostring(k))) end
    end
    if type(c.name) ~= "string" or c.name == "" then bad(where .. ".name must be a non-empty string") end
    if names[c.name] then bad(where .. ".name " .. format("%q", c.name) .. " is used twice") end
    names[c.name] = true
    if type(c.command) ~= "function" then
      bad(where .. ".command must be a function returning a Cmd, got " .. type(c.command))
    end
    local restart = c.restart
    if restart == nil then restart = "always" end
    if not POLICIES[restart] then
      bad(where .. '.restart must be "always", "on-failure" or "never", got ' .. format("%q", tostring(restart)))
    end
    children[i] = { name = c.name, command = c.command, restart = restart }
  end
  if #children == 0 then bad("at least one child expected") end
  return children
end

local function check_backoff(b)
  local out = { initial = 1, max = 60, reset_after = 30, jitter = 0.1 }
  if b == nil then return out end
  if type(b) ~= "table" then bad("backoff must be a table, got " .. type(b)) end
  for k, v in pairs(b) do
    if not BACKOFF_KEYS[k] then bad("backoff has an unknown field " .. format("%q", tostring(k))) end
    if not is_number(v) then bad("backoff." .. k .. " must be a number, got " .. type(v)) end
    out[k] = v
  end
  if out.initial <= 0 then bad("backoff.initial must be a positive number of seconds") end
  if out.max < out.initial then bad("backoff.max must be at least backoff.initial") end
  if out.reset_after < 0 then bad("backoff.reset_after must be a non-negative number of seconds") end
  if out.jitter < 0 or out.jitter > 1 then bad("backoff.jitter must be between 0 and 1") end
  return out
end

local function check_intensity(t)
  if t == nil then return nil end
  if type(t) ~= "table" then bad("intensity must be a table, got " .. type(t)) end
  for k in pairs(t) do
    if k ~= "max" and k ~= "window" then bad("intensity has an unknown field " .. format("%q", tostring(k))) end
  end
  if not is_number(t.max) or t.max < 0 or t.max ~= math.floor(t.max) then
    bad("intensity.max must be a non-negative integer")
  end
  if not is_number(t.window) or t.window <= 0 then bad("intensity.window must be a positive number of seconds") end
  return { max = t.max, window = t.window }
end

---------------------------------------------------------------------------
-- Supervisor

local Supervisor = {}
Supervisor.__index = Supervisor
Supervisor.__name = "tether.Supervisor"

--- supervisor.new(spec) -> Supervisor. spec's list part holds the children, each a table:
--   name     a non-empty string, unique (events and the summary use it)
--   command  a function returning a fresh, unstarted Cmd for each start (exec.command...);
--            it may return nil, err, which counts as a failed start
--   restart  "always" (default: restart whatever the exit), "on-failure" (restart after
--            a non-zero exit, a signal or a failed start) or "never"
-- and its fields are the options (all optional):
--   backoff    {initial=1, max=60, reset_after=30, jitter=0.1}: the n-th restart in a row
--              waits initial * 2^(n-1) seconds, at most max, times a random factor in
--              [1 - jitter, 1 + jitter]; a child that ran reset_after seconds or more
--              before it exited starts over at initial
--   intensity  {max=N, window=T}: more than N restarts (of all children together) within
--              T seconds stop everything and make run return nil, err naming the child
--              (Erlang's restart intensity). nil: no limit
--   grace      seconds between SIGTERM and SIGKILL when stopping a child's group (10)
--   on_event   function(name, event, info) called as things happen (see sup:run)
--   cgroup     true or a table of limits: each child's Cmd gets this cmd.cgroup unless it
--              set its own (containment, see tether.cgroup): what a child leaves behind is
--              then its cgroup, which setsid and double forks cannot leave, and a restart
--              waits until that group is empty. nil: process groups only
-- Raises naming the field for anything else (an unknown field, a wrong type, a duplicate
-- name, no children).
function M.new(spec)
  if type(spec) ~= "table" then error("supervisor.new: table expected, got " .. type(spec), 2) end
  for k in pairs(spec) do
    if type(k) ~= "number" and not OPTIONS[k] then
      error("supervisor.new: unknown option " .. format("%q", tostring(k)), 2)
    end
  end
  local children = check_children(spec)
  local backoff = check_backoff(spec.backoff)
  local intensity = check_intensity(spec.intensity)
  local grace = spec.grace
  if grace == nil then grace = 10 end
  if not is_number(grace) or grace < 0 then error("supervisor.new: grace must be a non-negative number of seconds", 2) end
  if spec.on_event ~= nil and type(spec.on_event) ~= "function" then
    error("supervisor.new: on_event must be a function, got " .. type(spec.on_event), 2)
  end
  if spec.cgroup ~= nil then require("tether.cgroup").check(spec.cgroup, 2) end
  return setmetatable({ _children = children, _backoff = backoff, _intensity = intensity,
    _grace = grace, _on_event = spec.on_event, _cgroup = spec.cgroup }, Supervisor)
end

-- A random number in [0, 1). math.random, stirred with the clock and pid so that
-- supervisors on Lua 5.1 (the same seed in every process) do not restart in step.
local function random()
  local x = math.random() + (now() * 1000.618) % 1 + core.pid() * 0.6180339887
  return x % 1
end

local function backoff_delay(b, failures)
  local d = b.initial * 2 ^ (failures - 1)
  if d > b.max then d = b.max end
  if b.jitter > 0 then d = d * (1 + b.jitter * (2 * random() - 1)) end
  return d
end

-- r: the state of one run. r.kids[i]: one child's state:
--   spec, name, state ("start", "running", "draining", "backoff", "done"), result,
--   starts, restarts, failures (restarts in a row, for the backoff),
--   cmd, pid, started_at, exited_at, exited (the process exited), finished (reaped and
--   its I/O done), group_gone, term_sent, kill_at, killed, killed_at, poll_at, poll_step,
--   status (last ProcessState), err (last error), next_start.

local function emit(r, k, event, info)
  local f = r.sup._on_event
  if not f then return end
  info = info or {}
  local ok, e = pcall(f, k.name, event, info)
  if not ok and r.raise == nil then r.raise = { e } end
end

local function min(a, b)
  if a == nil then return b end
  if b == nil then return a end
  return a < b and a or b
end

-- Whether a process that is not a zombie is left in the process group pgid. Zombies do
-- not count: a PID 1 that never reaps (common in containers) would keep them forever.
-- Without /proc: kill(-pgid, 0), where EPERM means members we may not signal.
local function group_alive(pgid)
  local alive = core.pgroup_alive(pgid)
  if alive ~= nil then return alive end
  local ok, errno = core.kill(-pgid, 0)
  return ok == true or errno == core.errno.EPERM
end

-- Containment: the child's cgroup while it has one (cmd.cgroup; gone once its wait finished).
local function cgroup_of(k) return k.cmd and require("tether.engine").cgroup(k.cmd) end

-- Whether anything of the child is left: its cgroup, else its process group.
local function leftovers(k)
  local g = cgroup_of(k)
  if g then return g:populated() end
  return group_alive(k.pid)
end

-- Signals the child's group: with cmd.cgroup every process of its cgroup; else through the
-- Process while it is unreaped (its pid, hence the group id, cannot be recycled then), else
-- with kill(-pgid) while the group has members.
local function signal_group(k, sig)
  local g = cgroup_of(k)
  if g then return g:signal(sig) == true end
  local p = k.cmd and k.cmd.process
  if p and not k.exited then
    local ok = p:signal_group(sig)
    if ok then return true end
  end
  return core.kill(-k.pid, SIG[sig]) == true
end

-- The child's command has made progress (or not): services its I/O and reaps it without
-- blocking (cmd:wait(0)).
local function poll_cmd(k)
  local cmd = k.cmd
  local ok, err = cmd:wait(0)
  if cmd.process_state then
    k.finished, k.exited = true, true
    k.status = cmd.process_state
    k.err = (not ok) and err or nil
  elseif err and not errors.is(err, errors.ErrTimeout) then
    k.finished, k.exited = true, true -- waiting failed: nothing more to learn about it
    k.err = err
  elseif not k.exited and cmd.process:try_wait() then
    k.exited = true -- exited; I/O still open (wait_delay bounds it)
  end
end

local function start_kid(r, k)
  local sup = r.sup
  k.exited, k.finished, k.group_gone, k.term_sent, k.killed = false, false, false, false, false
  k.kill_at, k.pid, k.cmd, k.err, k.status = nil, nil, nil, nil, nil
  local t = now()
  k.started_at, k.exited_at = t, nil
  local ok, cmd, cerr = pcall(k.spec.command)
  if not ok then r.raise = r.raise or { cmd }; k.state, k.result = "done", "failed"; return end
  if cmd ~= nil and not exec._is_cmd(cmd) then
    r.raise = r.raise or { format('supervisor: child "%s": command must return a Cmd, got %s', k.name, type(cmd)) }
    k.state, k.result = "done", "failed"
    return
  end
  local serr = cerr
  if cmd ~= nil then
    if not cmd.setsid then cmd.setpgid = true end
    if cmd.wait_delay == nil then cmd.wait_delay = math.max(sup._grace, 1) end
    if cmd.cgroup == nil then cmd.cgroup = sup._cgroup end
    local sok, started, e = pcall(cmd.start, cmd)
    if not sok then r.raise = r.raise or { started }; k.state, k.result = "done", "failed"; return end
    if started then
      k.cmd, k.pid = cmd, cmd.process.pid
      k.starts = k.starts + 1
      k.state = "running"
      emit(r, k, "start", { pid = k.pid, starts = k.starts })
      return
    end
    serr = e
  end
  -- A failed start: as an exit without a status.
  k.err = serr or errors.new { op = "supervisor", msg = format('supervisor: child "%s": command returned nil', k.name) }
  k.exited, k.finished, k.group_gone = true, true, true
  k.exited_at = t
  k.state = "draining" -- over at once: the next pass decides what comes next
end

-- The child is over (process reaped, group empty): restart it, or not.
local function on_exit(r, k)
  local t = now()
  local sup = r.sup
  local st = k.status
  local ran = k.pid and (k.exited_at or t) - k.started_at or 0
  emit(r, k, "exit", { pid = k.pid, status = st, err = k.err, ran = ran,
    code = st and st:exit_code(), signal = st and st:signal() })
  k.cmd = nil
  if r.stopping then k.state, k.result = "done", "stopped"; return end
  local success = st ~= nil and st:success() and k.err == nil
  local policy = k.spec.restart
  if policy == "never" or (policy == "on-failure" and success) then
    k.state, k.result = "done", "exited"
    emit(r, k, "done", { status = st, err = k.err })
    return
  end
  if k.pid and ran >= sup._backoff.reset_after then k.failures = 0 end
  k.failures = k.failures + 1
  local lim = sup._intensity
  if lim then
    local log, kept = r.restart_log, {}
    log[#log + 1] = t
    for _, at in ipairs(log) do if at > t - lim.window then kept[#kept + 1] = at end end
    r.restart_log = kept
    if #kept > lim.max then
      local err = errors.new { op = "supervisor", err = M.ErrIntensity,
        msg = format('supervisor: child "%s" restarted more than %d times in %g s', k.name, lim.max, lim.window) }
      err.child = k.name
      r.fail = err
      k.state, k.result = "done", "failed"
      emit(r, k, "giveup", { restarts = #kept, window = lim.window, err = err })
      return
    end
  end
  local delay = backoff_delay(sup._backoff, k.failures)
  k.next_start = t + delay
  k.state = "backoff"
  emit(r, k, "backoff", { delay = delay, failures = k.failures })
end

-- Adds the fds to wait on for a started child: its pidfd until it exited, its pipes.
local function add_fds(k, list)
  local cmd = k.cmd
  local d
  if not k.exited then
    local fd = cmd.process:pollfd()
    if fd >= 0 then list[#list + 1], list[#list + 2] = fd, "r"
    else d = now() + NO_PIDFD_POLL end
  end
  local engine = require "tether.engine"
  d = min(d, engine.next_time(cmd)) -- cmd.timeout, wait_delay, its context: cmd:wait(0) acts on them
  for _, task in ipairs(engine.tasks(cmd)) do -- I/O serviced by cmd:wait (a string stdin, sinks)
    local fd = not task.done and task.fd:getfd() or -1
    if fd >= 0 then list[#list + 1], list[#list + 2] = fd, task.ev end
  end
  local g = cgroup_of(k) -- containment: cgroup.events changes when the group empties
  if g and g:pollfd() >= 0 then list[#list + 1], list[#list + 2] = g:pollfd(), g:events() end
  if k.exited and not k.finished and cmd.wait_delay then
    d = min(d, k.exited_at + cmd.wait_delay + 0.001) -- when wait_delay closes the I/O
  end
  return d
end

-- Advances one child; returns the time it next needs a look (nil: only fds) and whether
-- its state changed (then the loop looks again at once).
local function step(r, k, list)
  local sup = r.sup
  local t = now()
  -- A failure or error earlier in this pass: start nothing more, the stop comes next pass.
  local ending = r.stopping or r.fail ~= nil or r.raise ~= nil
  if k.state == "start" then
    if ending then k.state, k.result = "done", "stopped"; return nil, true end
    start_kid(r, k)
    return nil, true
  end
  if k.state == "backoff" then
    if ending then k.state, k.result = "done", "stopped"; return nil, true end
    if t < k.next_start then return k.next_start, false end
    k.restarts = k.restarts + 1
    emit(r, k, "restart", { restarts = k.restarts, failures = k.failures })
    start_kid(r, k)
    return nil, true
  end
  if k.state == "running" then
    if r.stopping and not k.term_sent then
      k.term_sent, k.kill_at = true, t + sup._grace
      emit(r, k, "stop", { pid = k.pid, signal = "SIGTERM", grace = sup._grace })
      signal_group(k, "SIGTERM")
    end
    poll_cmd(k)
    t = now()
    if k.exited then
      k.exited_at = t
      k.state = "draining"
      if not leftovers(k) then
        k.group_gone = true
      elseif not k.term_sent then -- its main process is gone: the rest of its group goes too
        k.term_sent, k.kill_at = true, t + sup._grace
        signal_group(k, "SIGTERM")
      end
      k.poll_step, k.poll_at = GROUP_POLL_FIRST, t + GROUP_POLL_FIRST
      return nil, true
    end
    if k.kill_at and not k.killed and t >= k.kill_at then
      k.killed, k.killed_at = true, t
      emit(r, k, "kill", { pid = k.pid, signal = "SIGKILL" })
      signal_group(k, "SIGKILL")
      return nil, true
    end
    return min(add_fds(k, list), not k.killed and k.kill_at or nil), false
  end
  if k.state == "draining" then
    if not k.finished then poll_cmd(k) end
    t = now()
    local d
    if not k.group_gone then
      if not leftovers(k) then
        k.group_gone = true
      elseif k.killed and t >= k.killed_at + KILL_WAIT then
        k.group_gone = true -- SIGKILLed long ago and still there (uninterruptible sleep): give up on them
      else
        if not k.killed and t >= k.kill_at then
          k.killed, k.killed_at = true, t
          emit(r, k, "kill", { pid = k.pid, signal = "SIGKILL" })
          signal_group(k, "SIGKILL")
        end
        if t >= k.poll_at then
          k.poll_step = math.min(k.poll_step * 2, GROUP_POLL_MAX)
          k.poll_at = t + k.poll_step
        end
        d = min(k.poll_at, k.killed and k.killed_at + KILL_WAIT or k.kill_at)
      end
    end
    if k.group_gone and k.finished then
      on_exit(r, k)
      return nil, true
    end
    if not k.finished then d = min(d, add_fds(k, list)) end
    return d, false
  end
  return nil, false -- done
end

local function begin_stop(r)
  r.stopping = true
end

local function summary(r)
  local s = {}
  for _, k in ipairs(r.kids) do
    local st = k.status
    s[k.name] = { name = k.name, starts = k.starts, restarts = k.restarts, result = k.result,
      status = st, exit_code = st and st:exit_code(), signal = st and st:signal(), err = k.err }
  end
  return s
end

--- sup:run([ctx]) -> summary | nil, err. Starts every child and keeps them going by
-- their restart policy until ctx is done (nil: context.background(), run until every
-- child finished for good), then stops the children still running: SIGTERM to each
-- child's process group, SIGKILL to what is left after grace. Returns once no child's
-- group has a process left.
-- summary[name] = {name, starts, restarts, result ("exited": finished by its policy,
-- "stopped": stopped by the supervisor, "failed"), status (the last ProcessState or nil),
-- exit_code, signal, err (the last failure: an ExitError, a start error)}.
-- More restarts than intensity allows: every other child is stopped the same way and
-- run returns nil, err with err.child the child's name, err.summary, and
-- err:is(supervisor.ErrIntensity).
-- on_event(name, event, info) is called with event: "start" {pid, starts}; "exit"
-- {pid, status, err, ran (seconds), code, signal} (a failed start has err and no pid);
-- "backoff" {delay, failures}; "restart" {restarts, failures}; "done" {status, err}
-- (finished for good by its policy); "stop" {pid, signal, grace}; "kill" {pid, signal};
-- "giveup" {restarts, window, err}. An error raised by on_event or by a command
-- function (or a Cmd field start rejects) stops every child and is raised again by run.
-- Raises when ctx is not a context, and when the supervisor is already running.
function Supervisor:run(ctx)
  if getmetatable(self) ~= Supervisor then error("bad argument #1 to 'run' (Supervisor expected)", 2) end
  if ctx == nil then ctx = require("tether.context").background()
  elseif not wait.is_context(ctx) then error("bad argument #1 to 'run' (context expected, got " .. type(ctx) .. ")", 2) end
  if self._running then error("supervisor: run is already running", 2) end
  self._running = true
  local r = { sup = self, kids = {}, restart_log = {}, stopping = false }
  for i, spec in ipairs(self._children) do
    r.kids[i] = { spec = spec, name = spec.name, state = "start", starts = 0, restarts = 0, failures = 0 }
  end
  while true do
    if not r.stopping and (r.raise or r.fail or ctx:done()) then begin_stop(r) end
    local list, deadline, changed, active = {}, nil, false, false
    for _, k in ipairs(r.kids) do
      local d, ch = step(r, k, list)
      deadline = min(deadline, d)
      changed = changed or ch
      if k.state ~= "done" then active = true end
      if not r.stopping and (r.raise or r.fail) then changed = true end
    end
    if not active then break end
    if not changed then
      if not r.stopping then
        wait.add_ctx(list, ctx)
        deadline = min(deadline, ctx:deadline())
      end
      if #list > 0 then
        local ok, err = wait.wait_many(list, deadline)
        if ok == nil then self._running = false; return nil, err end
      elseif deadline then
        require("tether").sleep(math.max(0, deadline - now()))
      else
        self._running = false
        error("supervisor: internal error: nothing to wait for")
      end
    end
  end
  self._running = false
  if r.raise then error(r.raise[1], 0) end
  local s = summary(r)
  if r.fail then
    r.fail.summary = s
    return nil, r.fail
  end
  return s
end

function Supervisor:__tostring()
  local names = {}
  for i, c in ipairs(self._children) do names[i] = c.name end
  return "tether.Supervisor(" .. table.concat(names, ", ") .. ")"
end

return M
