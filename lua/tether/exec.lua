--- tether.exec: run external commands, shaped like Go's os/exec.
--
-- exec.command(name, ...) builds a Cmd; fields set before start say what the
-- child gets; start/wait/run/output/combined_output run it. The C core spawns
-- with clone(CLONE_VM|CLONE_VFORK) and reports exec failures synchronously;
-- every child is backed by a pidfd and reaped with wait4. All waiting goes
-- through tether's waiter (see tether.set_waiter).
local core = require "tether.core"
local errors = require "tether.errors"
local wait = require "tether.wait"
local process = require "tether.process"
local pipes = require "tether.pipe"
local engine = require "tether.engine"
require "tether.host" -- inside nginx, tells the core that "auto" spawns relay

local type, tostring, pairs, ipairs, setmetatable, error, select =
  type, tostring, pairs, ipairs, setmetatable, error, select
local concat, sort, insert = table.concat, table.sort, table.insert
local find = string.find


local exec = {}

-- Bytes of stderr kept for ExitError.stderr when output() captures it (Go keeps 32 KiB).
local STDERR_KEEP = 32768
local PIPE_SIZE = 1048576

local Process, ProcessState = process.Process, process.ProcessState
local new_process = process._new
local Reader, Writer = pipes.Reader, pipes.Writer
local new_reader, new_writer = pipes._new_reader, pipes._new_writer
local drive, finish = engine.drive, engine.finish

--- find_process(pid) -> Process | nil, err (tether.process).
exec.find_process = process.find_process

---------------------------------------------------------------------------
-- helpers

local function argerror(n, fname, msg)
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), 3)
end

local function has_nul(s) return find(s, "\0", 1, true) ~= nil end


local function state_error(msg)
  return errors.new { msg = msg }
end

local signum = process._signum
exec._signum = signum

-- A value tether can pass to a child as an fd: integer, Lua file, tether fd.
local function is_file(v) return io.type(v) == "file" end
local kind = core.kind
local function is_tfd(v) return kind(v) == "fd" end
local function is_buffer(v) return kind(v) == "buffer" end
-- A uid or gid: an integer in 0..2^32-2 (-1 is "no change" to the kernel).
local function is_id(v) return type(v) == "number" and v >= 0 and v <= 0xfffffffe and v == math.floor(v) end
-- An fd given as a number: an integer in 0..2^31-1 (not inf, NaN or 1.5).
local function is_fdnum(v) return type(v) == "number" and v >= 0 and v <= 0x7fffffff and v == math.floor(v) end

local null_fd -- one /dev/null for every child, opened on first use (O_CLOEXEC)
local function devnull()
  if not null_fd then
    local fd, errno = core.open_null()
    if not fd then return nil, errno end
    null_fd = fd
  end
  return null_fd
end

---------------------------------------------------------------------------
-- look_path

--- look_path(name) -> path | nil, err.
-- A name with a slash is checked as is. Otherwise each $PATH entry is tried
-- (an empty entry means "."; PATH unset searches /bin:/usr/bin, as execvp). Not found: err:is(errors.ErrNotFound). A match
-- through a relative entry is refused with err:is(errors.ErrDot) and
-- err.resolved holding the path (as Go 1.19+).
function exec.look_path(name)
  if type(name) ~= "string" then argerror(1, "look_path", "string expected, got " .. type(name)) end
  if has_nul(name) then argerror(1, "look_path", "name contains NUL") end
  if find(name, "/", 1, true) then
    local ok, errno = core.find_executable(name)
    if ok then return name end
    return nil, errors.new { op = "exec", path = name, err = errors.from_errno(nil, nil, errno), step = "lookup" }
  end
  -- PATH unset (nginx workers): the C library's execvp default; an empty PATH searches nothing (as Go)
  local path = core.env_get("PATH") or "/bin:/usr/bin"
  if name ~= "" and path ~= "" then
    for dir in (path .. ":"):gmatch("([^:]*):") do
      if dir == "" then dir = "." end
      local candidate = dir .. "/" .. name
      if core.find_executable(candidate) then
        if dir:sub(1, 1) ~= "/" then
          local err = errors.new { op = "exec", path = name, err = errors.ErrDot, step = "lookup" }
          err.resolved = candidate
          return nil, err
        end
        return candidate
      end
    end
  end
  return nil, errors.new { op = "exec", path = name, err = errors.ErrNotFound, step = "lookup" }
end


---------------------------------------------------------------------------
-- Cmd

local Cmd = {}
Cmd.__index = Cmd
Cmd.__name = "tether.Cmd"

--- command(name, ...) -> Cmd. Never fails: a name without a slash is resolved
-- with look_path now, and a failure waits in cmd.err for start() to return.
-- cmd.args[1] is name (argv[0]); cmd.path the resolved program.
function exec.command(name, ...)
  if type(name) ~= "string" then argerror(1, "command", "string expected, got " .. type(name)) end
  if has_nul(name) then argerror(1, "command", "name contains NUL") end
  local args = { name }
  for i = 1, select("#", ...) do
    local a = select(i, ...)
    if type(a) == "number" then a = tostring(a) end
    if type(a) ~= "string" then argerror(i + 1, "command", "string expected, got " .. type(a)) end
    if has_nul(a) then argerror(i + 1, "command", "argument contains NUL") end
    args[i + 1] = a
  end
  local cmd = setmetatable({ path = name, args = args }, Cmd)
  if not find(name, "/", 1, true) then
    local path, err = exec.look_path(name)
    if path then cmd.path = path
    else
      cmd.err = err
      if err.resolved then cmd.path = err.resolved end
    end
  end
  return cmd
end

--- command_context(ctx, name, ...) -> Cmd bound to ctx: start fails with ctx's
-- error when ctx is already done; when ctx becomes done while the command runs,
-- cmd.cancel(cmd) is called (default: SIGKILL to the process, or to its group
-- with setpgid = true) and wait returns an error that is ctx's error. With
-- cmd.wait_delay (seconds), a process still running that long after the cancel
-- is killed, and I/O still open that long after the process exited is closed
-- (wait then returns errors.ErrWaitDelay), as Go 1.20+.
function exec.command_context(ctx, name, ...)
  if not wait.is_context(ctx) then argerror(1, "command_context", "context expected, got " .. type(ctx)) end
  if type(name) ~= "string" then argerror(2, "command_context", "string expected, got " .. type(name)) end
  local cmd = exec.command(name, ...)
  cmd.ctx = ctx
  return cmd
end

-- env_list(env) -> list of "K=V" (map sorted by key; duplicate keys: last wins), or nil.
local function env_list(env)
  if env == nil then return nil end
  if type(env) ~= "table" then error("exec: cmd.env must be a table or nil", 4) end
  local out, index = {}, {}
  local function add(k, v, where)
    if type(k) ~= "string" or type(v) ~= "string" then
      error("exec: " .. where .. " must be a string", 5)
    end
    if k == "" or find(k, "=", 1, true) then error("exec: " .. where .. " has an invalid key " .. ("%q"):format(k), 5) end
    if has_nul(k) then error("exec: " .. where .. " key contains NUL", 5) end
    if has_nul(v) then error("exec: " .. where .. " value contains NUL", 5) end
    local kv = k .. "=" .. v
    if index[k] then out[index[k]] = kv else out[#out + 1] = kv; index[k] = #out end
  end
  local n = #env
  if n > 0 then
    for i = 1, n do
      local e = env[i]
      if type(e) ~= "string" then error(("exec: cmd.env[%d] must be a string"):format(i), 4) end
      local eq = find(e, "=", 2, true)
      if not eq then
        if has_nul(e) then error(("exec: cmd.env[%d] key contains NUL"):format(i), 4) end
        error(("exec: cmd.env[%d] has no '=' or an empty key"):format(i), 4) -- never echo a value
      end
      add(e:sub(1, eq - 1), e:sub(eq + 1), ("cmd.env[%d]"):format(i))
    end
  else
    local keys = {}
    for k in pairs(env) do
      if type(k) ~= "string" then error("exec: cmd.env keys must be strings", 4) end
      keys[#keys + 1] = k
    end
    sort(keys)
    for _, k in ipairs(keys) do add(k, env[k], ("cmd.env[%q]"):format(k)) end
  end
  return out
end

--- cmd:environ() -> the environment the child gets, as a list {"K=V", ...}.
function Cmd:environ()
  local l = env_list(self.env)
  if l then return l end
  return core.env_list()
end

function Cmd:__tostring()
  local parts = { self.path }
  for i = 2, #(self.args or {}) do parts[#parts + 1] = self.args[i] end
  return concat(parts, " ")
end

-- Validates every field before any process is created; raises naming the field.
local function validate(self)
  if type(self.path) ~= "string" then error("exec: cmd.path must be a string", 3) end
  if has_nul(self.path) then error("exec: cmd.path contains NUL", 3) end
  if type(self.args) ~= "table" or #self.args == 0 then error("exec: cmd.args must be a non-empty list", 3) end
  for i, a in ipairs(self.args) do
    if type(a) ~= "string" then error(("exec: cmd.args[%d] must be a string"):format(i), 3) end
    if has_nul(a) then error(("exec: cmd.args[%d] contains NUL"):format(i), 3) end
  end
  if self.dir ~= nil then
    if type(self.dir) ~= "string" then error("exec: cmd.dir must be a string", 3) end
    if has_nul(self.dir) then error("exec: cmd.dir contains NUL", 3) end
  end
  local env = env_list(self.env)
  local pgid
  if self.setpgid == true then pgid = 0
  elseif is_fdnum(self.setpgid) then pgid = self.setpgid
  elseif self.setpgid ~= nil and self.setpgid ~= false then error("exec: cmd.setpgid must be a boolean or a pgid", 3) end
  if self.foreground ~= nil and type(self.foreground) ~= "boolean" then error("exec: cmd.foreground must be a boolean", 3) end
  if self.foreground and pgid == nil then pgid = 0 end -- implies its own group (as Go's Foreground)
  -- issue 14 (tini parity): the child keeps inherited SIG_IGN dispositions and the mask
  local inherit, sigign = self.inherit_signals, nil
  if type(inherit) == "table" then -- the signals also ignored at start, beyond those tether saw
    sigign = {}
    for i, sig in ipairs(inherit) do sigign[i] = signum(sig, "exec: cmd.inherit_signals[" .. i .. "]") end
    inherit = true
  elseif inherit ~= nil and type(inherit) ~= "boolean" then
    error("exec: cmd.inherit_signals must be a boolean or a list of signals", 3)
  end
  local pdeathsig = self.pdeathsig and signum(self.pdeathsig, "exec: cmd.pdeathsig") or nil
  for _, f in ipairs { "uid", "gid" } do
    local v = self[f]
    if v ~= nil and not is_id(v) then error("exec: cmd." .. f .. " must be a non-negative integer", 3) end
  end
  if self.groups ~= nil and type(self.groups) ~= "table" then error("exec: cmd.groups must be a list", 3) end
  for i = 1, self.groups and #self.groups or 0 do
    if not is_id(self.groups[i]) then error(("exec: cmd.groups[%d] must be a non-negative integer"):format(i), 3) end
  end
  if self.extra_files ~= nil and type(self.extra_files) ~= "table" then error("exec: cmd.extra_files must be a list", 3) end
  for i, f in ipairs(self.extra_files or {}) do
    if not (is_fdnum(f) or is_file(f) or is_tfd(f) or getmetatable(f) == Reader or getmetatable(f) == Writer) then
      error(("exec: cmd.extra_files[%d] must be an fd, a Lua file or a tether fd"):format(i), 3)
    end
  end
  for i, name in ipairs { "stdin", "stdout", "stderr" } do
    local v = self[name]
    local t = type(v)
    local ok = v == nil or v == "null" or v == "inherit" or is_fdnum(v)
      or is_file(v) or is_tfd(v) or getmetatable(v) == Reader or getmetatable(v) == Writer
      or (i == 1 and t == "string") or (i > 1 and (t == "function" or t == "table" or is_buffer(v)))
    if not ok then
      error(("exec: cmd.%s must be nil, \"null\", \"inherit\", %s, a file or an fd"):format(name,
        i == 1 and "a string" or "a function, a table"), 3)
    end
  end
  if self.wait_delay ~= nil and (type(self.wait_delay) ~= "number" or self.wait_delay < 0) then
    error("exec: cmd.wait_delay must be a number of seconds", 3)
  end
  if self.cancel ~= nil and type(self.cancel) ~= "function" then error("exec: cmd.cancel must be a function", 3) end
  if self.max_output ~= nil and (type(self.max_output) ~= "number" or self.max_output < 0) then
    error("exec: cmd.max_output must be a number of bytes", 3)
  end
  return env, pgid, pdeathsig, inherit, sigign
end

-- A started command keeps its I/O tasks: each is {fd=, kind=, ...} serviced by wait().
--   kind "feed":  write task.data to fd, then close (a string given as stdin)
--   kind "sink":  read fd into task.sink (a function, a table or a tether buffer) until EOF

-- Resolves one stdio field to the fd the child gets. Returns child_fd, and adds to
-- `close_after` fds to close in the parent after the spawn and to `tasks` I/O work.
local function stdio_fd(self, i, v, close_after, tasks, shared)
  local name = ({ "stdin", "stdout", "stderr" })[i]
  if v == nil or v == "null" then
    local fd, errno = devnull()
    if not fd then return nil, errors.from_errno("open", "/dev/null", errno) end
    return fd
  end
  if v == "inherit" then return i - 1 end
  if type(v) == "number" then
    if v < 0 or v ~= math.floor(v) then error("exec: cmd." .. name .. " is not a valid fd", 4) end
    return v
  end
  if is_file(v) or is_tfd(v) then return core.fileno(v) end
  if getmetatable(v) == Reader or getmetatable(v) == Writer then
    if not v._fd then error("exec: cmd." .. name .. " is a closed pipe", 4) end
    return v._fd
  end
  if i == 1 then
    if type(v) ~= "string" then
      error("exec: cmd.stdin must be nil, \"null\", \"inherit\", a string, a file or an fd", 4)
    end
    local r, w = core.pipe()
    if not r then return nil, errors.from_errno("pipe", nil, w) end
    w:set_nonblock(true)
    close_after[#close_after + 1] = r
    tasks[#tasks + 1] = { fd = w, kind = "feed", data = v, pos = 1, ev = "w" }
    return r
  end
  if type(v) ~= "function" and type(v) ~= "table" and not is_buffer(v) then
    error("exec: cmd." .. name .. " must be nil, \"null\", \"inherit\", a function, a table, a file or an fd", 4)
  end
  if shared[v] then return shared[v] end -- stdout and stderr to one sink share one pipe
  local r, w = core.pipe()
  if not r then return nil, errors.from_errno("pipe", nil, w) end
  r:set_nonblock(true)
  r:set_pipe_size(PIPE_SIZE)
  close_after[#close_after + 1] = w
  tasks[#tasks + 1] = { fd = r, kind = "sink", sink = v, ev = "r" }
  shared[v] = w
  return w
end

local function close_all(list)
  for _, fd in ipairs(list) do fd:close() end
end

--- cmd:start() -> true | nil, err. Starts the command without waiting for it.
-- A failure says which step failed in err.step ("lookup", "chdir", "dup2",
-- "setgid", "setuid", "exec", ...), with err.errno and err.code; no process
-- is left behind. State errors: "exec: already started".
function Cmd:start()
  if self._started then return nil, state_error("exec: already started") end
  local env, pgid, pdeathsig, inherit, sigign = validate(self)
  if self.cancel ~= nil and not self.ctx then
    return nil, state_error("exec: command with a non-nil Cancel was not created with CommandContext")
  end
  if self.ctx and self.ctx:done() then
    close_all(self._child_ends or {})
    self._child_ends = nil
    self:_close_pipes()
    return nil, self.ctx:err()
  end
  if self.err then -- lookup failed at construction: release the pipes handed out (as Go)
    close_all(self._child_ends or {})
    self._child_ends = nil
    self:_close_pipes()
    return nil, self.err
  end
  self._started = true
  local close_after, tasks, shared = {}, {}, {}
  local fds = {}
  local stdio = { self.stdin, self.stdout, self.stderr }
  for i = 1, 3 do
    local fd, err = stdio_fd(self, i, stdio[i], close_after, tasks, shared)
    if not fd then
      close_all(close_after); for _, t in ipairs(tasks) do t.fd:close() end
      return nil, err
    end
    fds[i] = fd
  end
  -- Parent ends handed out by stdin_pipe/stdout_pipe/stderr_pipe: the child ends go.
  for _, fd in ipairs(self._child_ends or {}) do close_after[#close_after + 1] = fd end
  for i, f in ipairs(self.extra_files or {}) do
    if type(f) == "number" or is_file(f) or is_tfd(f) then fds[3 + i] = f
    elseif getmetatable(f) == Reader or getmetatable(f) == Writer then fds[3 + i] = f._fd
    else error(("exec: cmd.extra_files[%d] must be an fd, a Lua file or a tether fd"):format(i), 2) end
  end
  local p, errno, step = core.spawn {
    path = self.path, argv = self.args, env = env, dir = self.dir, fds = fds,
    pgid = pgid, setsid = self.setsid and true or nil, pdeathsig = pdeathsig, foreground = self.foreground,
    uid = self.uid, gid = self.gid, groups = self.groups,
    inherit_signals = inherit, sigign = sigign, -- issue 14: tini's child signal state
  }
  close_all(close_after)
  self._child_ends = nil
  if not p then
    for _, t in ipairs(tasks) do t.fd:close() end
    self:_close_pipes()
    local op, path = "fork/exec", self.path
    if step == "chdir" then op, path = "chdir", self.dir
    elseif step ~= "exec" then op = step end
    return nil, errors.from_errno(op, path, errno, step)
  end
  self.process = new_process(p)
  engine.begin(self, tasks)
  if exec._on_start then exec._on_start(self) end -- tether.ngx: ties it to its request (issue 12)
  return true
end

-- Parent ends of pipes handed out by *_pipe(): closed by wait (as Go does).
function Cmd:_close_pipes()
  for _, pipe in ipairs(self._pipes or {}) do pipe:close() end
  self._pipes = nil
end


local function check_waitable(self)
  if not self._started or not self.process then return state_error("exec: not started") end
  if self._waited then return state_error("exec: Wait was already called") end
end

--- cmd:wait([timeout | ctx]) -> true | nil, err. Waits for the command to exit and
-- for its I/O (stdin string, function/table sinks) to finish, then closes the
-- pipes. A non-zero exit or a signal gives an ExitError: err.exit_code,
-- err.signal ("SIGKILL" or nil), err.state; cmd.process_state is set either way.
-- A timeout that runs out returns nil, err:is(errors.ErrTimeout) (a done ctx: its
-- error) and leaves the command running: a later wait still returns its real status.
-- State errors: "exec: not started", "exec: Wait was already called".
function Cmd:wait(limit)
  local serr = check_waitable(self)
  if serr then return nil, serr end
  local ok, err = drive({ self }, wait.limit(limit))
  if not ok then return nil, err end
  return finish(self)
end

-- tether.ngx (issue 12) may run a whole run/output/combined_output in nginx's thread pool:
-- exec._offload(cmd, how) returns its result table, or nil (then it runs here). This turns
-- that table back into what the call returns, as if it had run here.
local function offloaded(self, res)
  self._started, self._waited = true, true
  self.process_state = process._new_state(res.state)
  self.truncated = res.truncated
  if res.ok then return res.out or true end
  local err = engine.exit_error(self.process_state)
  err.stderr = res.stderr
  return nil, err, res.out
end

local function run_or_offload(self, how, fn, arg)
  local res = exec._offload and exec._offload(self, how)
  if res then return offloaded(self, res) end
  return fn(self, arg)
end

--- cmd:run() -> true | nil, err: start then wait.
function Cmd:run()
  local res = exec._offload and exec._offload(self, "run")
  if res then return offloaded(self, res) end
  local ok, err = self:start()
  if not ok then return nil, err end
  return self:wait()
end

-- Captures stdout (and stderr into `combined`) into tether buffers and runs.
local function capture(self, combined)
  if self.stdout ~= nil then return nil, state_error("exec: Stdout already set") end
  if combined and self.stderr ~= nil then return nil, state_error("exec: Stderr already set") end
  local out = core.buffer(self.max_output)
  self.stdout = out
  local errbuf
  if combined then self.stderr = out
  elseif self.stderr == nil then
    errbuf = core.buffer(STDERR_KEEP)
    self.stderr = errbuf
  end
  local ok, err = self:run()
  local data = out:take() -- the buffer gives its memory up as the string is made
  self.truncated = out:truncated()
  out:free()
  if errbuf then
    if err and err.state then err.stderr = errbuf:result() end
    errbuf:free()
  end
  if not ok then return nil, err, data end
  return data
end

--- cmd:output() -> stdout as a string | nil, err [, partial output].
-- stdout and stderr are drained concurrently, so no size deadlocks. When
-- cmd.stderr is nil, a failing command's ExitError carries err.stderr (the last
-- first and last 16 KiB kept). cmd.max_output bounds what is kept (head and tail halves) and
-- sets cmd.truncated.
function Cmd:output() return run_or_offload(self, "output", capture, false) end

--- cmd:combined_output() -> stdout and stderr interleaved, as one string | nil, err [, output].
function Cmd:combined_output() return run_or_offload(self, "combined_output", capture, true) end

local function make_pipe(self, which)
  local go_name = which:gsub("^%l", string.upper) -- Go's names in the messages
  if self._started then return nil, state_error("exec: " .. go_name .. "Pipe after process started") end
  local field = which
  if self[field] ~= nil then return nil, state_error("exec: " .. go_name .. " already set") end
  local r, w = core.pipe()
  if not r then return nil, errors.from_errno("pipe", nil, w) end
  local parent, child
  if which == "stdin" then parent, child = new_writer(w), r else parent, child = new_reader(r), w end
  parent._fd:set_nonblock(true)
  parent._cmd = self
  self[field] = child
  self._child_ends = self._child_ends or {}
  insert(self._child_ends, child)
  self._pipes = self._pipes or {}
  insert(self._pipes, parent)
  return parent
end

--- cmd:stdin_pipe() -> Writer | nil, err: a pipe to the child's stdin; close it to send EOF.
function Cmd:stdin_pipe() return make_pipe(self, "stdin") end
--- cmd:stdout_pipe() -> Reader | nil, err: read it before wait (wait closes it).
function Cmd:stdout_pipe() return make_pipe(self, "stdout") end
--- cmd:stderr_pipe() -> Reader | nil, err: read it before wait (wait closes it).
function Cmd:stderr_pipe() return make_pipe(self, "stderr") end

--- <close> (Lua 5.4): a started child still running at scope exit is killed and reaped.
function Cmd:__close()
  if self._started and self.process and not self._waited then
    self.process:kill()
    self.process:wait()
    self._waited = true
    self:_close_pipes()
  end
end

---------------------------------------------------------------------------
-- pipeline

--- pipeline({cmd1, cmd2, ...}) -> list of ProcessStates | nil, err.
-- Wires cmd[i]'s stdout to cmd[i+1]'s stdin fd to fd (no copying through Lua),
-- starts every stage, waits for all. pipefail: when any stage fails, err is the
-- last failing stage's error, with err.states (all states) and err.index.
function exec.pipeline(cmds)
  if type(cmds) ~= "table" or #cmds == 0 then argerror(1, "pipeline", "non-empty list of commands expected") end
  for i, c in ipairs(cmds) do
    if getmetatable(c) ~= Cmd then argerror(1, "pipeline", ("element %d is not a Cmd"):format(i)) end
    if i > 1 and c.stdin ~= nil then argerror(1, "pipeline", ("cmd %d has stdin set"):format(i)) end
    if i < #cmds and c.stdout ~= nil then argerror(1, "pipeline", ("cmd %d has stdout set"):format(i)) end
  end
  local ends = {}
  for i = 1, #cmds - 1 do
    local r, w = core.pipe()
    if not r then close_all(ends); return nil, errors.from_errno("pipe", nil, w) end
    ends[#ends + 1], ends[#ends + 2] = r, w
    cmds[i].stdout, cmds[i + 1].stdin = w, r
  end
  for i, c in ipairs(cmds) do
    local ok, err = c:start()
    if not ok then
      close_all(ends)
      for j = 1, i - 1 do cmds[j].process:kill(); cmds[j]:wait() end
      err.index = i
      return nil, err
    end
  end
  close_all(ends)
  local ok, err = drive(cmds, nil)
  if not ok then return nil, err end
  local states, failed = {}, nil
  for i, c in ipairs(cmds) do
    local fine, e = finish(c)
    states[i] = c.process_state
    if not fine then failed = e; failed.index = i end
  end
  if failed then failed.states = states; return nil, failed end
  return states
end

exec.Cmd, exec.Process, exec.ProcessState, exec.Reader, exec.Writer = Cmd, Process, ProcessState, Reader, Writer

-- Inside nginx's Lua module, a request's commands are tied to it (tether.ngx, issue 12).
if rawget(_G, "ngx") and type(ngx.get_phase) == "function" then require("tether.ngx").install(exec) end

return exec

