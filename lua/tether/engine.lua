--- tether.engine (internal): the one place that decides how a command waits.
--
-- Exit waits, pipe reads and writes (tether.pipe), output, pipeline, the command's
-- context, timeout and wait_delay all block here. A started command carries one run
-- record, cmd._run, owned by this module:
--   tasks      I/O tasks: {fd=, kind="feed"|"sink", ev=, ...} serviced until done
--   state      the ProcessState once reaped
--   group      the child leads its own process group (kill the group, not the process)
--   canceled   the context's cancel ran (or cancel = false: it was skipped)
--   ctx_err    the error the context (or wait_delay) gives the command
--   timeout_at when cmd.timeout runs out (monotonic seconds); timed_out once it has
--   timeout_err the error of a command that ran out of time
--   delay_at   when wait_delay runs out (monotonic seconds)
--   exit_seen  false while the pidfd has not said "exited" since the last look
--   io_err     an error of the I/O (ErrWaitDelay when it was cut off)
--   sink_err   the error a stdout/stderr sink raised (the command's I/O was stopped)
--   cgroup     the command's cgroup (cmd.cgroup, a tether.cgroup Group) until finish removes
--              it; cgroup_empty once it was seen empty
local core = require "tether.core"
local errors = require "tether.errors"
local wait = require "tether.wait"
local trace = require "tether.trace" -- TETHER_TRACE / tether.trace: a line per start and end

local ipairs, tostring, type, pcall, huge = ipairs, tostring, type, pcall, math.huge
local find, sub = string.find, string.sub

local E = core.errno
local SIG = core.signals
local CHUNK = 65536
local PIPE_SIZE = 1048576
-- wait_delay when the command has a timeout and no wait_delay of its own (seconds).
local DEFAULT_TIMEOUT_DELAY = 1

local kind = core.kind
local function is_buffer(v) return kind(v) == "buffer" end
local function io_error(op, errno) return errors.from_errno(op, nil, errno) end
local function min(a, b) if a == nil then return b end if b == nil or a < b then return a end return b end

local engine = {}

-- The wait_delay in force for c: its own, or 1 s when it has a timeout.
local function delay_of(c)
  local d = c.wait_delay
  if d == nil and c.timeout then d = DEFAULT_TIMEOUT_DELAY end
  return d
end

-- begin(cmd, tasks, group): a command was spawned; its run record starts here. group:
-- the child leads its own process group.
function engine.begin(cmd, tasks, group)
  local r = { tasks = tasks, group = group }
  if cmd.timeout then r.timeout_at = core.now() + cmd.timeout end
  -- A child just started has rarely exited yet: its pidfd says when, so the first look is a
  -- poll, not a wait4 that would find nothing (one syscall less per spawn). Without a
  -- pidfd, every pass tries wait4.
  if cmd.process and cmd.process:pollfd() >= 0 then r.exit_seen = false end
  cmd._run = r
  trace.started(cmd)
end

-- contain(cmd, group): the command runs in a cgroup of its own (tether.cgroup; nil: it
-- does not). Cancel and timeout then kill the whole group (kill_tree), and wait also
-- waits until the group is empty (drive), then removes it (finish).
function engine.contain(cmd, group)
  cmd._run.cgroup = group
end

-- cgroup(cmd) -> the command's cgroup (a tether.cgroup Group) until its wait ends, or nil.
function engine.cgroup(cmd)
  return cmd._run and cmd._run.cgroup
end

-- uncontain(cmd): kills what is left in the command's cgroup, waits until it is empty
-- and removes it (a Cmd closed without wait).
function engine.uncontain(cmd)
  local g = engine.cgroup(cmd)
  if not g then return end
  cmd._run.cgroup = nil
  g:kill()
  while g:populated() do wait.wait(g:pollfd(), g:events(), core.now() + 1) end
  g:remove()
end

-- tasks(cmd) -> the command's I/O tasks still to service (a list, maybe empty).
function engine.tasks(cmd)
  local r = cmd._run
  return r and r.tasks or {}
end

-- The quoted command, for messages: `"sh -c 'exit 3'"`.
local function named(c) return errors._quote(tostring(c)) end

---------------------------------------------------------------------------
-- I/O tasks

-- Services one I/O task without blocking; returns true when the task is finished.
-- A sink that raises ends the task: its fd is closed (the child sees EPIPE) and
-- task.fatal holds the error.
local function service(task)
  local fd = task.fd
  if task.kind == "feed" then
    local data = task.data
    while task.pos <= #data do
      local n, errno = fd:write(data, task.pos)
      if n == false then return false end
      if n == nil then
        -- The child stopped reading: like Go, a closed stdin is not an error of the command.
        if errno ~= E.EPIPE then task.err = io_error("write", errno) end
        break
      end
      task.pos = task.pos + n
    end
    fd:close()
    return true
  end
  local sink = task.sink
  for _ = 1, 16 do -- bounded, so one busy stream cannot starve the others
    if is_buffer(sink) then
      local n, errno = sink:read_from(fd, PIPE_SIZE) -- straight into the buffer, a pipeful at a time
      if n == nil and errno == E.EIO and task.eio_eof then n = 0 end -- pty master: the child is gone
      if n == 0 then fd:close(); return true end
      if n == false then return false end
      if n == nil then task.err = io_error("read", errno); fd:close(); return true end
    else
      local data, errno = fd:read(CHUNK)
      if data == nil and errno == E.EIO and task.eio_eof then data = "" end -- pty master: the child is gone
      if data == "" then fd:close(); return true end
      if data == false then return false end
      if data == nil then task.err = io_error("read", errno); fd:close(); return true end
      if type(sink) == "function" then
        local ok, e = pcall(sink, data)
        if not ok then
          fd:close()
          task.fatal = e
          return true
        end
      else sink[#sink + 1] = data end
    end
  end
  return false
end

-- A sink raised: the command's I/O stops there. The error names the command and carries
-- the raised value (err.err when it is an error object, so is() sees through it). A child
-- that outlives its closed pipe is killed after wait_delay (1 s by default).
local function sink_failed(c, task)
  local r = c._run
  if r.sink_err then return end
  local e = task.fatal
  r.sink_err = errors.new { op = "exec", path = tostring(c), err = errors.is_error(e) and e or nil,
    msg = ("exec: %s: %s sink: %s"):format(named(c), task.name or "output", tostring(e)) }
  if not r.delay_at then r.delay_at = core.now() + (delay_of(c) or DEFAULT_TIMEOUT_DELAY) end
end

-- run_task(c, t) -> true when t is finished (marks it done).
local function run_task(c, t)
  if service(t) then
    t.done = true
    if t.fatal then sink_failed(c, t) end
    return true
  end
  return false
end

---------------------------------------------------------------------------
-- cancel, timeout, wait_delay

-- kill_tree(c) -> true | nil, err: SIGKILL to everything the command started that
-- tether can reach: its cgroup (cmd.cgroup: cgroup.kill, setsid and double-forked
-- grandchildren too), else its process group when it leads one, else the process.
local function kill_tree(c)
  local r = c._run
  if r.cgroup then return r.cgroup:kill() end
  if r.group then
    if not r.state then
      local ok, err = c.process:signal_group("SIGKILL")
      if ok or not errors.is(err, errors.ErrProcessDone) then return ok, err end
    end
    -- The leader was reaped (or just exited): its group lives while a member does, and
    -- holds the pid, which no new process can take meanwhile.
    core.kill(-c.process.pid, SIG.SIGKILL)
    if not r.state then return c.process:kill() end
    return true
  end
  return c.process:kill()
end

-- The default cmd.cancel: SIGKILL to the process, or to its whole group when it leads one
-- (setpgid = true, or the group a timeout set up).
local function default_cancel(cmd)
  if cmd.setpgid == true or (cmd._run and (cmd._run.group or cmd._run.cgroup)) then return kill_tree(cmd) end
  return cmd.process:kill()
end
engine.default_cancel = default_cancel

-- The command's context is done: run cmd.cancel once and start the wait_delay clock (Go
-- 1.20). cancel = false (Go's nil Cancel): nothing is sent; the command runs on, bounded by
-- wait_delay when there is one.
local function on_context_done(c)
  local r = c._run
  r.canceled = true
  local delay = delay_of(c)
  if c.cancel ~= false then
    local ok, cerr = (c.cancel or default_cancel)(c)
    if ok then r.ctx_err = c.ctx:err()
    elseif cerr and errors.is(cerr, errors.ErrProcessDone) then -- it had exited already
    else r.ctx_err = errors.wrap(cerr or errors.new { msg = "cancel failed" }, "exec: canceling Cmd") end
  end
  if delay and not r.delay_at then r.delay_at = core.now() + delay end
end

-- cmd.timeout ran out: kill the whole tree, and cut the I/O left off after wait_delay.
local function on_timeout(c)
  local r = c._run
  r.timed_out = true
  r.timeout_err = errors.new { op = "exec", path = tostring(c), err = errors.ErrTimeout,
    errno = E.ETIMEDOUT, msg = ("exec: %s: timed out after %g s"):format(named(c), c.timeout) }
  kill_tree(c)
  local delay = delay_of(c)
  local at = core.now() + delay
  if not r.delay_at or at < r.delay_at then r.delay_at = at end
end

-- wait_delay ran out: kill a process still running, stop waiting for its I/O.
local function on_delay_expired(c)
  local r = c._run
  r.delay_at = huge
  if r.cgroup then r.cgroup:kill() end -- containment: the whole group, grandchildren too
  if not r.state then
    local ok = c.process:kill()
    if ok and not r.ctx_err then r.ctx_err = errors.ErrWaitDelay end
  end
  for _, t in ipairs(r.tasks) do
    if not t.done then
      t.done = true
      t.fd:close()
      r.io_err = errors.ErrWaitDelay
    end
  end
end

-- poke(c): runs what is due for c now (cancel, timeout, wait_delay).
local function poke(c)
  local r = c._run
  local ctx = c.ctx
  if ctx and not r.canceled and not r.state and ctx:done() then on_context_done(c) end
  if r.timeout_at and not r.timed_out and not r.finished and core.now() >= r.timeout_at then on_timeout(c) end
  if r.delay_at and core.now() >= r.delay_at then on_delay_expired(c) end
end

-- next_time(c) -> when c next needs a poke (nil: only when an fd says so).
local function next_time(c)
  local r = c._run
  local d
  if r.timeout_at and not r.timed_out then d = r.timeout_at end
  if r.delay_at and r.delay_at ~= huge then d = min(d, r.delay_at) end
  if c.ctx and not r.canceled and not r.state then d = min(d, c.ctx:deadline()) end
  return d
end

-- engine.next_time(cmd) -> when a started command next needs its wait to look (its
-- timeout, wait_delay or context deadline), or nil: for loops that poll commands
-- themselves with cmd:wait(0) (the supervisor).
function engine.next_time(cmd)
  local r = cmd._run
  if not r or r.finished then return nil end
  return next_time(cmd)
end

-- bound_err(c) -> the error that ends every read and write on c's pipes: its timeout
-- ran out, or its context is done (unless cancel = false); nil otherwise.
local function bound_err(c)
  local r = c._run
  if r.timed_out then return r.timeout_err end
  if r.canceled and c.cancel ~= false then return r.ctx_err or c.ctx:err() end
  if r.sink_err then return r.sink_err end
  return nil
end

---------------------------------------------------------------------------
-- pipes

-- wait_pipe(cmd, fd, ev, deadline, ctx) -> true when fd may be ready for ev, false at the
-- deadline, nil, err when the command's own bound (its context, its timeout) ended the
-- call or the OS refused the wait. cmd is the command owning the pipe (nil: a plain wait); meanwhile its other I/O
-- is serviced, so a caller reading stdout before wait() cannot deadlock on a child
-- blocked writing stderr or reading stdin, and its cancel and timeout run on time.
function engine.wait_pipe(cmd, fd, ev, deadline, ctx)
  local r = cmd and cmd._run
  if not r or r.finished then
    if not ctx then return wait.wait(fd, ev, deadline) end
    local i, werr = wait.wait_many(wait.add_ctx({ fd, ev }, ctx), deadline)
    if i == nil then return nil, werr end -- the OS refused the wait
    return i ~= false
  end
  poke(cmd)
  local berr = bound_err(cmd)
  if berr then return nil, berr end
  local list = wait.add_ctx({ fd, ev }, ctx)
  for _, t in ipairs(r.tasks or {}) do
    if not t.done and not run_task(cmd, t) then list[#list + 1], list[#list + 2] = t.fd:getfd(), t.ev end
  end
  if cmd.ctx and not r.canceled and not r.state then wait.add_ctx(list, cmd.ctx) end
  local own = next_time(cmd)
  local i, werr = wait.wait_many(list, min(deadline, own))
  if i == nil then return nil, werr end -- the OS refused the wait
  if i == false and deadline and core.now() >= deadline then return false end
  return true -- ready, or the command's timer: the caller tries again, we poke again
end

---------------------------------------------------------------------------
-- exit status, drive, finish

-- The first line of captured stderr (a string), at most 200 bytes, or nil.
local function first_line(s)
  if type(s) ~= "string" then return nil end
  local a = find(s, "%S")
  if not a then return nil end
  local nl = find(s, "\n", a, true)
  local line = sub(s, a, (nl or #s + 1) - 1):gsub("%s+$", "")
  if #line > 200 then line = sub(line, 1, 200) .. "..." end
  return line
end
engine.first_line = first_line

-- exit_error(c, state, stderr) -> the ExitError of a command that did not succeed: its
-- message names the command (`exec: "sh -c 'exit 3'": exit status 3: <stderr line>`).
local function exit_error(c, state, stderr)
  local r = c._run or {} -- (none for a command tether.ngx ran whole in nginx's thread pool)
  local msg
  if r.timed_out then
    msg = ("%s (%s)"):format(tostring(r.timeout_err), tostring(state))
  else
    msg = ("exec: %s: %s"):format(named(c), tostring(state))
    local line = first_line(stderr)
    if line then msg = msg .. ": " .. line end
    if r.ctx_err then msg = msg .. " (" .. tostring(r.ctx_err) .. ")" end
  end
  local err = errors.new { msg = msg }
  err.exit_code = state:exit_code()
  err.signal = state:signal()
  err.state = state
  -- a cancelled command's ExitError also is(context.Canceled); a timed-out one is(ErrTimeout)
  err.err = r.timed_out and r.timeout_err or r.ctx_err
  return err
end
engine.exit_error = exit_error

-- The stderr a failed command left where tether can see it: output()'s capture buffer,
-- or a table sink (its first pieces), else nil.
local function stderr_text(c)
  if c._errbuf then return c._errbuf:result() end
  local s = c.stderr
  if type(s) == "table" and not is_buffer(s) and type(s[1]) == "string" then
    local parts = {}
    for i = 1, 8 do -- the strings it starts with (a user's table may hold anything)
      local piece = s[i]
      if type(piece) ~= "string" then break end
      parts[i] = piece
      if find(piece, "\n", 1, true) then break end
    end
    return table.concat(parts)
  end
  return nil
end

-- drive(cmds, deadline) -> true | nil, err: services the I/O tasks of every cmd and
-- reaps every process, until all processes exited and all I/O reached its end. One loop
-- for all, so a pipeline's stages never wait on each other through Lua. A command's
-- context, timeout and wait_delay are watched here too. With `any` (exec.output_all),
-- returns true, c as soon as one command c has exited and its I/O has ended.
local function drive(cmds, deadline, wctx, any)
  local last_pass = false -- the deadline passed as an fd turned ready: one more pass takes it
  while true do
    if wctx and wctx:done() then return nil, wctx:err() end
    -- The pidfds go first in the wait list: wait_many reports the first ready pair, so an
    -- exit is always seen, and wait4 runs only when a pidfd said so (not on every pass).
    local ios, pids, nopidfd, d = {}, {}, false, deadline
    for _, c in ipairs(cmds) do
      local r = c._run
      local ctx = c.ctx
      poke(c)
      local busy = false
      for _, t in ipairs(r.tasks) do
        if not t.done and not run_task(c, t) then
          ios[#ios + 1], ios[#ios + 2] = t.fd:getfd(), t.ev
          busy = true
        end
      end
      if not r.state then
        local st, err = false, nil
        -- wait4 once a pidfd said so, or when the Process was reaped through another handle
        -- (process:try_wait(), as the supervisor does)
        if r.exit_seen ~= false or c.process._state then st, err = c.process:try_wait() end
        if st == nil then return nil, err end
        if st then
          r.state = st
          -- wait_delay also bounds the I/O left once the process has exited
          local delay = delay_of(c)
          if delay and not r.delay_at then r.delay_at = core.now() + delay end
        else
          busy = true
          local pidfd = c.process:pollfd()
          if pidfd >= 0 then pids[#pids + 1] = c; r.exit_seen = false
          else nopidfd = true end
          if ctx and not r.canceled then wait.add_ctx(ios, ctx) end
        end
      end
      -- containment (tether.cgroup): once the process exited, wait until its group is empty
      -- (poll POLLPRI on cgroup.events); a done context or a timeout kills what is left
      local g = r.cgroup
      if r.state and g and not r.cgroup_empty then
        if not g.killed and (r.timed_out or (ctx and ctx:done() and c.cancel ~= false)) then g:kill() end
        if not g:populated() then r.cgroup_empty = true
        else
          if g.killed then g:kill() end -- again: before 5.14 a fork could slip past a pass
          busy = true
          ios[#ios + 1], ios[#ios + 2] = g:pollfd(), g:events()
          if ctx and not ctx:done() then
            wait.add_ctx(ios, ctx)
            d = min(d, ctx:deadline())
          end
        end
      end
      if busy then d = min(d, next_time(c)) end
      if any and not busy then return true, c end
    end
    local list = {}
    for i, c in ipairs(pids) do list[2 * i - 1], list[2 * i] = c.process:pollfd(), "r" end
    for j = 1, #ios do list[#list + 1] = ios[j] end
    if #list == 0 and not nopidfd then return true end
    wait.add_ctx(list, wctx)
    if nopidfd then -- no pidfd (old kernel): look at the process again soon
      d = min(d, core.now() + 0.005)
    end
    local ready = false
    if #list > 0 then
      local i, werr = wait.wait_many(list, d)
      if i == nil then return nil, werr end
      if i and pids[i] then pids[i]._run.exit_seen = true end
      ready = i and i ~= 0
    else require("tether").sleep(d - core.now()) end
    if deadline and core.now() >= deadline then
      if wctx and wctx:done() then return nil, wctx:err() end
      if not ready or last_pass then return nil, errors.timeout("wait", nil) end
      last_pass = true
    end
  end
end

-- Ends a wait: closes pipes, records the state, returns the command's result, in Go's
-- order: a sink's error (it stopped the I/O), the exit status, then the timeout, the
-- context's error (or ErrWaitDelay), then I/O errors.
local function finish_wait(self)
  local r = self._run
  self._waited = true
  if engine.on_finish then engine.on_finish(self) end -- tether.ngx: unties it from its request (issue 12)
  r.finished = true
  local tasks = r.tasks
  r.tasks = nil
  self:_close_pipes()
  local state = r.state
  self.process_state = state
  local g = r.cgroup
  if g then -- containment: the group is empty; what it used, then it goes
    r.cgroup = nil
    state._cgroup_usage = g:usage()
    g:remove()
  end
  if r.sink_err then return nil, r.sink_err end
  if not state:success() then return nil, exit_error(self, state, stderr_text(self)) end
  if r.timed_out then return nil, r.timeout_err end
  if r.ctx_err then return nil, r.ctx_err end
  if r.io_err then return nil, r.io_err end
  for _, t in ipairs(tasks) do
    if t.err then return nil, t.err end
  end
  return true
end

-- finish, and trace's end line for the command.
local function finish(self)
  local ok, err = finish_wait(self)
  trace.ended(self, err)
  return ok, err
end

-- wait(cmd, deadline, ctx) -> true | nil, err: cmd:wait's engine side.
function engine.wait(cmd, deadline, ctx)
  local ok, err = drive({ cmd }, deadline, ctx)
  if not ok then return nil, err end
  return finish(cmd)
end

engine.drive, engine.finish = drive, finish

return engine
