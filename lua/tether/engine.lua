--- tether.engine (internal): the one place that decides how a command waits.
--
-- Exit waits, pipe reads and writes (tether.pipe), output, pipeline, the command's
-- context, timeout and wait_delay all block here. A started command carries one run
-- record, cmd._run, owned by this module:
--   tasks      I/O tasks: {fd=, kind="feed"|"sink", ev=, ...} serviced until done
--   state      the ProcessState once reaped
--   canceled   the context's cancel ran
--   ctx_err    the error the context (or wait_delay) gives the command
--   delay_at   when wait_delay runs out (monotonic seconds)
--   exit_seen  false while the pidfd has not said "exited" since the last look
--   io_err     an error of the I/O (ErrWaitDelay when it was cut off)
local core = require "tether.core"
local errors = require "tether.errors"
local wait = require "tether.wait"

local ipairs, tostring, type = ipairs, tostring, type

local E = core.errno
local CHUNK = 65536
local PIPE_SIZE = 1048576

local kind = core.kind
local function is_buffer(v) return kind(v) == "buffer" end
local function io_error(op, errno) return errors.from_errno(op, nil, errno) end

local engine = {}

-- begin(cmd, tasks): a command was spawned; its run record starts here.
function engine.begin(cmd, tasks)
  cmd._run = { tasks = tasks }
end

-- tasks(cmd) -> the command's I/O tasks still to service (a list, maybe empty).
function engine.tasks(cmd)
  local r = cmd._run
  return r and r.tasks or {}
end

-- Services one I/O task without blocking; returns true when the task is finished.
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
      if n == 0 then fd:close(); return true end
      if n == false then return false end
      if n == nil then task.err = io_error("read", errno); fd:close(); return true end
    else
      local data, errno = fd:read(CHUNK)
      if data == "" then fd:close(); return true end
      if data == false then return false end
      if data == nil then task.err = io_error("read", errno); fd:close(); return true end
      if type(sink) == "function" then sink(data) else sink[#sink + 1] = data end
    end
  end
  return false
end


-- wait_pipe(cmd, fd, ev, deadline, ctx) -> true when fd is ready for ev, false at the
-- deadline. Meanwhile services the other I/O of cmd, the command owning the pipe (nil:
-- a plain wait): a caller reading stdout before wait() must not deadlock on a child
-- blocked writing stderr or reading stdin.
function engine.wait_pipe(cmd, fd, ev, deadline, ctx)
  local tasks = cmd and cmd._run and cmd._run.tasks
  if not tasks and not ctx then return wait.wait(fd, ev, deadline) end
  local list = wait.add_ctx({ fd, ev }, ctx)
  for _, t in ipairs(tasks or {}) do
    if not t.done then
      if service(t) then t.done = true
      else list[#list + 1], list[#list + 2] = t.fd:getfd(), t.ev end
    end
  end
  if #list == 2 then return wait.wait(fd, ev, deadline) end
  return wait.wait_many(list, deadline) ~= false
end

local function exit_error(state)
  local err = errors.new { msg = tostring(state) }
  err.exit_code = state:exit_code()
  err.signal = state:signal()
  err.state = state
  return err
end

-- The default cmd.cancel: SIGKILL to the process, or to its whole group with setpgid = true.
local function default_cancel(cmd)
  if cmd.setpgid == true then return cmd.process:signal_group("SIGKILL") end
  return cmd.process:kill()
end

-- The command's context is done: run cmd.cancel once and start the wait_delay clock (Go 1.20).
local function on_context_done(c)
  c._run.canceled = true
  local ok, cerr = (c.cancel or default_cancel)(c)
  if ok then c._run.ctx_err = c.ctx:err()
  elseif cerr and errors.is(cerr, errors.ErrProcessDone) then -- it had exited already
  else c._run.ctx_err = errors.wrap(cerr or errors.new { msg = "cancel failed" }, "exec: canceling Cmd") end
  if c.wait_delay and not c._run.delay_at then c._run.delay_at = core.now() + c.wait_delay end
end

-- wait_delay ran out: kill a process still running, stop waiting for its I/O.
local function on_delay_expired(c)
  c._run.delay_at = math.huge
  if not c._run.state then
    local ok = c.process:kill()
    if ok and not c._run.ctx_err then c._run.ctx_err = errors.ErrWaitDelay end
  end
  for _, t in ipairs(c._run.tasks) do
    if not t.done then
      t.done = true
      t.fd:close()
      c._run.io_err = errors.ErrWaitDelay
    end
  end
end

-- drive(cmds, deadline) -> true | nil, err: services the I/O tasks of every cmd and
-- reaps every process, until all processes exited and all I/O reached its end. One loop
-- for all, so a pipeline's stages never wait on each other through Lua. A command's
-- context and wait_delay are watched here too.
local function drive(cmds, deadline, wctx)
  local last_pass = false -- the deadline passed as an fd turned ready: one more pass takes it
  while true do
    if wctx and wctx:done() then return nil, wctx:err() end
    -- The pidfds go first in the wait list: wait_many reports the first ready pair, so an
    -- exit is always seen, and wait4 runs only when a pidfd said so (not on every pass).
    local ios, pids, nopidfd, d = {}, {}, false, deadline
    local now = core.now()
    for _, c in ipairs(cmds) do
      local ctx = c.ctx
      if ctx and not c._run.canceled and not c._run.state and ctx:done() then on_context_done(c) end
      if c._run.delay_at and now >= c._run.delay_at then on_delay_expired(c) end
      local busy = false
      for _, t in ipairs(c._run.tasks) do
        if not t.done then
          if service(t) then t.done = true
          else ios[#ios + 1], ios[#ios + 2] = t.fd:getfd(), t.ev; busy = true end
        end
      end
      if not c._run.state then
        local st, err = false, nil
        -- wait4 once a pidfd said so, or when the Process was reaped through another handle
        -- (process:try_wait(), as the supervisor does)
        if c._run.exit_seen ~= false or c.process._state then st, err = c.process:try_wait() end
        if st == nil then return nil, err end
        if st then
          c._run.state = st
          -- wait_delay also bounds the I/O left once the process has exited
          if c.wait_delay and not c._run.delay_at then c._run.delay_at = core.now() + c.wait_delay end
        else
          busy = true
          local pidfd = c.process:pollfd()
          if pidfd >= 0 then pids[#pids + 1] = c; c._run.exit_seen = false
          else nopidfd = true end
          if ctx and not c._run.canceled then
            wait.add_ctx(ios, ctx)
            local cd = ctx:deadline()
            if cd and (not d or cd < d) then d = cd end
          end
        end
      end
      if busy and c._run.delay_at and (not d or c._run.delay_at < d) then d = c._run.delay_at end
    end
    local list = {}
    for i, c in ipairs(pids) do list[2 * i - 1], list[2 * i] = c.process:pollfd(), "r" end
    for j = 1, #ios do list[#list + 1] = ios[j] end
    if #list == 0 and not nopidfd then return true end
    wait.add_ctx(list, wctx)
    if nopidfd then -- no pidfd (old kernel): look at the process again soon
      local soon = core.now() + 0.005
      if not d or soon < d then d = soon end
    end
    local ready = false
    if #list > 0 then
      local i = wait.wait_many(list, d)
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
-- order: the exit status, then the context's error (or ErrWaitDelay), then I/O errors.
local function finish(self)
  self._waited = true
  if engine.on_finish then engine.on_finish(self) end -- tether.ngx: unties it from its request (issue 12)
  local tasks = self._run.tasks
  self._run.tasks = nil
  self:_close_pipes()
  local state = self._run.state
  self.process_state = state
  if not state:success() then
    local err = exit_error(state)
    err.err = self._run.ctx_err -- a cancelled command's ExitError also is(context.Canceled)
    return nil, err
  end
  if self._run.ctx_err then return nil, self._run.ctx_err end
  if self._run.io_err then return nil, self._run.io_err end
  for _, t in ipairs(tasks) do
    if t.err then return nil, t.err end
  end
  return true
end

engine.drive, engine.finish, engine.exit_error = drive, finish, exit_error

return engine
