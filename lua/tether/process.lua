--- tether.process: Process and ProcessState, the parent's view of a child
-- (reached through tether.exec: cmd.process, cmd.process_state, exec.find_process).
--
-- Every Process is backed by a pidfd and reaped with wait4; all waiting goes
-- through tether's waiter (see tether.set_waiter).
local core = require "tether.core"
local errors = require "tether.errors"
local wait = require "tether.wait"
local signame = require "tether.signame"

local type, tostring, setmetatable, error = type, tostring, setmetatable, error

local E = core.errno
local SIG = core.signals

local M = {}

-- signum(sig, what) -> signal number for "TERM", "SIGTERM", "RTMIN+1" or 15; raises naming `what`.
local known_signals = signame.known -- names parsed before: no parser call (signal's hot path)
local function signum(sig, what)
  local n = known_signals[sig]
  if n then return n end
  local why
  n, why = signame.number(sig)
  if not n then error(what .. ": " .. why, 3) end
  return n
end
M._signum = signum
---------------------------------------------------------------------------
-- ProcessState

local ProcessState = {}
ProcessState.__index = ProcessState
ProcessState.__name = "tether.ProcessState"

local function new_state(t) return setmetatable({ _s = t }, ProcessState) end

--- state:exit_code() -> the exit code, or -1 when the process was killed by a signal.
function ProcessState:exit_code() return self._s.code end
--- state:success() -> true when the process exited with code 0.
function ProcessState:success() return self._s.exited and self._s.code == 0 end
--- state:exited() -> true when the process exited (was not killed by a signal).
function ProcessState:exited() return self._s.exited end
--- state:signaled() -> true when a signal ended the process.
function ProcessState:signaled() return self._s.signal ~= nil end
--- state:signal() -> the name of the signal that ended it ("SIGKILL", "SIGRTMIN+1"), or nil.
function ProcessState:signal() local s = self._s.signal; return s and signame.name(s) or nil end
--- state:core_dumped() -> true when it dumped core.
function ProcessState:core_dumped() return self._s.core_dumped == true end
--- state:pid() -> the process id it had.
function ProcessState:pid() return self._s.pid end
--- state:user_time(), state:system_time() -> CPU seconds (wait4 rusage).
function ProcessState:user_time() return self._s.utime end
function ProcessState:system_time() return self._s.stime end
--- state:max_rss() -> peak resident set size in KiB.
function ProcessState:max_rss() return self._s.maxrss end
--- state:sys() -> the raw wait status.
function ProcessState:sys() return self._s.status end
--- state:cgroup_usage() -> for a command run with cmd.cgroup, what its whole group
-- used: {cpu =, user =, system = (seconds, from cpu.stat), memory_peak = (bytes,
-- from memory.peak; nil where the memory controller is off)}; nil without cmd.cgroup.
function ProcessState:cgroup_usage() return self._cgroup_usage end

function ProcessState:__tostring()
  local s = self._s
  if s.signal then
    return "signal: " .. core.strsignal(s.signal) .. (s.core_dumped and " (core dumped)" or "")
  end
  return "exit status " .. tostring(s.code)
end

---------------------------------------------------------------------------
-- Process

local Process = {}
Process.__index = Process
Process.__name = "tether.Process"

local function new_process(p)
  return setmetatable({ pid = p:pid(), _p = p }, Process)
end

local function done_or(errno, op, pid)
  if errno == E.ESRCH then return errors.ErrProcessDone end
  return errors.from_errno(op, tostring(pid), errno)
end

--- process:signal(sig) -> true | nil, err. sig: "TERM", "SIGTERM" or a number.
-- Once the process has finished: nil, errors.ErrProcessDone.
function Process:signal(sig)
  local n = signum(sig, "signal")
  local ok, errno = self._p:signal(n)
  if ok then return true end
  return nil, done_or(errno, "signal", self.pid)
end

--- process:kill() -> true | nil, err: sends SIGKILL.
function Process:kill() return self:signal(SIG.SIGKILL) end

--- process:signal_group(sig) -> true | nil, err: signals the process group whose
-- id is this process's pid (a child started with setpgid = true).
function Process:signal_group(sig)
  local n = signum(sig, "signal_group")
  -- Once reaped, the group id may be recycled: never signal it then.
  if self._state then return nil, errors.ErrProcessDone end
  local ok, errno = core.kill(-self.pid, n)
  if ok then return true end
  return nil, done_or(errno, "signal_group", self.pid)
end

--- process:try_wait() -> ProcessState once exited | false while running | nil, err.
function Process:try_wait()
  if self._state then return self._state end
  local st, errno, why = self._p:try_wait()
  if st then self._state = new_state(st); return self._state end
  if st == false then return false end
  local err = errors.from_errno("wait", tostring(self.pid), errno)
  if why then err.msg = "wait " .. tostring(self.pid) .. ": " .. why end -- relay mode: the intermediate died
  return nil, err
end

--- process:wait([timeout | ctx]) -> ProcessState | nil, err. Waits for the process
-- to exit and reaps it. A timeout that runs out gives err:is(errors.ErrTimeout), a
-- done ctx its error; the process is left running and a later wait still returns
-- its status.
function Process:wait(limit)
  local deadline, ctx = wait.limit(limit)
  local backoff = 0.001
  while true do
    local st, err = self:try_wait()
    if st then return st end
    if st == nil then return nil, err end
    if ctx and ctx:done() then return nil, ctx:err() end
    local fd = self._p:pidfd()
    if deadline and core.now() >= deadline then
      return nil, errors.timeout("wait", tostring(self.pid))
    end
    if fd >= 0 then
      local ok, werr = wait.wait_many(wait.add_ctx({ fd, "r" }, ctx), deadline)
      if ok == nil then return nil, werr end
    else -- no pidfd (old kernel): poll with backoff
      require("tether").sleep(backoff)
      backoff = math.min(backoff * 2, 0.05)
    end
  end
end

--- process:release(): gives the process up; it is reaped in the background.
function Process:release() self._p:release() end

--- process:pollfd() -> the pidfd (readable once the process exited); events() -> "r"; timeout() -> nil.
function Process:pollfd() return self._p:pidfd() end
function Process:_ready() return self:try_wait() ~= false end
function Process:events() return "r" end
function Process:timeout() return nil end

function Process:__tostring() return "tether.Process(" .. tostring(self.pid) .. ")" end

--- find_process(pid) -> Process | nil, err. Backed by a pidfd, so a later
-- signal never reaches a recycled pid; wait works for this process's children.
function M.find_process(pid)
  if type(pid) ~= "number" or pid <= 0 or pid ~= math.floor(pid) then
    error("bad argument #1 to 'find_process' (positive integer pid expected)", 2)
  end
  local p, errno = core.find_process(pid)
  if not p then return nil, done_or(errno, "find_process", pid) end
  return new_process(p)
end

M.Process, M.ProcessState = Process, ProcessState
M._new, M._new_state = new_process, new_state

return M
