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
local childopts = require "tether.childopts" -- extra_env, rlimits, umask

local type, tostring, pairs, ipairs, setmetatable, error, select, rawget, rawset =
  type, tostring, pairs, ipairs, setmetatable, error, select, rawget, rawset
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

local function argerror(n, fname, msg, level)
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), level or 3)
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

-- Every Cmd field a user may set, also the keys the table form of command takes. Some
-- belong to other parts of tether (extra_env, rlimits, umask, cgroup): they are accepted
-- here and checked where they are used.
local FIELDS = {}
for name in ([[path args env dir stdin stdout stderr extra_files setpgid setsid pdeathsig
  uid gid groups cancel wait_delay timeout extra_env rlimits umask cgroup max_output
  foreground]]):gmatch("%S+") do FIELDS[name] = true end
exec._fields = FIELDS

-- resolve(cmd, name): the PATH search of command's bare name: cmd.path, cmd.err (kept for
-- start), cmd._looked_up.
local function resolve(cmd, name)
  local path, err = exec.look_path(name)
  cmd.path = path or (err.resolved or name)
  if not path then cmd.err = err end
  cmd._looked_up = cmd.path -- tostring prints argv[0] for a path found this way
end

-- Inside nginx (tether.ngx installed), command(name, ...) with a bare name leaves the PATH
-- search to the first use of cmd.path, cmd.err or cmd._looked_up (read or written; start
-- reads them): a plain command run whole in nginx's thread pool is searched there, off the
-- event loop, where a user's own ngx.run_worker_thread function would search it too.
-- cmd._lookup holds the name until then. Every other key reads and writes as in a Cmd.
local LazyCmd = {}
local SEARCHED = { path = true, err = true, _looked_up = true }
local function settle(cmd)
  local name = rawget(cmd, "_lookup")
  setmetatable(cmd, Cmd)
  cmd._lookup = nil
  resolve(cmd, name)
end
LazyCmd.__index = function(cmd, k)
  if SEARCHED[k] then settle(cmd); return rawget(cmd, k) end
  return Cmd[k]
end
LazyCmd.__newindex = function(cmd, k, v)
  if SEARCHED[k] then settle(cmd) end
  rawset(cmd, k, v)
end

--- exec._is_cmd(v) -> whether v is a Cmd (made by command or command_context).
function exec._is_cmd(v)
  local mt = getmetatable(v)
  return mt == Cmd or mt == LazyCmd
end

-- new_cmd(fname, argn0, args, n, fields) -> Cmd from argv args[1..n] (numbers become
-- strings; raises naming the argument: its number argn0 + i - 1, or argv[i] in the table
-- form), then the table form's fields. Linear in the number of arguments.
local function new_cmd(fname, argn0, args, n, fields)
  for i = 1, n do
    local a = args[i]
    if type(a) ~= "string" then
      if type(a) == "number" then a = tostring(a); args[i] = a
      else
        argerror(fields and argn0 or argn0 + i - 1, fname,
          (fields and ("argv[%d]: "):format(i) or "") .. "string expected, got " .. type(a), 4)
      end
    end
    if find(a, "\0", 1, true) then
      argerror(fields and argn0 or argn0 + i - 1, fname, (fields and ("argv[%d]: "):format(i) or "")
        .. (i == 1 and "name contains NUL" or "argument contains NUL"), 4)
    end
  end
  local name = args[1]
  if exec._offload and not fields and name ~= "" and not find(name, "/", 1, true) then
    return setmetatable({ args = args, _lookup = name }, LazyCmd) -- searched on first use
  end
  local cmd = setmetatable({ path = name, args = args }, Cmd)
  if fields then
    for k, v in pairs(fields) do
      if type(k) ~= "number" or k < 1 or k > n or k ~= math.floor(k) then
        if not FIELDS[k] then
          argerror(argn0, fname, ("unknown Cmd field %s"):format(type(k) == "string" and ("%q"):format(k) or tostring(k)), 4)
        end
        cmd[k] = v
      end
    end
  end
  if name == "" then
    cmd.err = errors.new { op = "exec", msg = "exec: no command" } -- as Go, for an empty name
  elseif cmd.path == name and not find(name, "/", 1, true) then
    resolve(cmd, name)
  end
  return cmd
end

-- The argv of the table form: its list part, copied (the table keeps its other keys).
local function table_argv(t, fname, argn)
  local n = #t
  if n == 0 then argerror(argn, fname, "the table form needs the argv in its list part", 4) end
  local args = {}
  for i = 1, n do args[i] = t[i] end
  return args, n
end

--- command(name, ...) -> Cmd; command{name, args..., field = value, ...} -> Cmd.
-- Never fails: a name without a slash is resolved with look_path now, and a
-- failure waits in cmd.err for start() to return ("exec: no command" for "").
-- cmd.args[1] is name (argv[0]); cmd.path the resolved program. In the table
-- form the list part is the argv and every other key a Cmd field (`dir`,
-- `timeout`, `stdin`, ...); an unknown key raises naming it.
function exec.command(name, ...)
  if type(name) == "table" and getmetatable(name) == nil and select("#", ...) == 0 then
    local args, n = table_argv(name, "command", 1)
    return new_cmd("command", 1, args, n, name)
  end
  if type(name) ~= "string" then argerror(1, "command", "string expected, got " .. type(name)) end
  local n = select("#", ...) + 1
  return new_cmd("command", 1, { name, ... }, n, nil)
end

--- command_context(ctx, name, ...) -> Cmd bound to ctx (also command_context(ctx,
-- {name, args..., field = value})): start fails with ctx's
-- error when ctx is already done; when ctx becomes done while the command runs,
-- cmd.cancel(cmd) is called (default: SIGKILL to the process, or to its group
-- with setpgid = true; cancel = false: nothing) and wait returns an error that is
-- ctx's error. With
-- cmd.wait_delay (seconds), a process still running that long after the cancel
-- is killed, and I/O still open that long after the process exited is closed
-- (wait then returns errors.ErrWaitDelay), as Go 1.20+. The context also bounds
-- every read and write on the command's pipes.
function exec.command_context(ctx, name, ...)
  if not wait.is_context(ctx) then argerror(1, "command_context", "context expected, got " .. type(ctx)) end
  local cmd
  if type(name) == "table" and getmetatable(name) == nil and select("#", ...) == 0 then
    local args, n = table_argv(name, "command_context", 2)
    cmd = new_cmd("command_context", 2, args, n, name)
  else
    if type(name) ~= "string" then argerror(2, "command_context", "string expected, got " .. type(name)) end
    cmd = new_cmd("command_context", 2, { name, ... }, select("#", ...) + 1, nil)
  end
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

-- clean(p) -> the absolute path p without ".", ".." and repeated slashes (Go's
-- filepath.Clean, lexical: symbolic links are not followed).
local function clean(p)
  local out, n = {}, 0
  for part in p:gmatch("[^/]+") do
    if part == ".." then if n > 0 then out[n] = nil; n = n - 1 end
    elseif part ~= "." then n = n + 1; out[n] = part end
  end
  return "/" .. concat(out, "/")
end

-- with_pwd(self, list) -> list | nil, err: the inherited environment `list` with PWD set
-- to the absolute cmd.dir, as Go 1.19+ does when cmd.env is nil (the last PWD wins).
local function with_pwd(self, list)
  local dir = self.dir
  if dir == nil or dir == "" then return list end
  if dir:sub(1, 1) ~= "/" then
    local cwd, errno = core.getcwd()
    if not cwd then return nil, errors.from_errno("getwd", nil, errno) end
    dir = cwd .. "/" .. dir
  end
  local kv = "PWD=" .. clean(dir)
  for i = 1, #list do
    if list[i]:sub(1, 4) == "PWD=" then list[i] = kv; return list end
  end
  list[#list + 1] = kv
  return list
end

--- cmd:environ() -> the environment the child gets, as a list {"K=V", ...}
-- (cmd.env, or the inherited one with PWD set to cmd.dir when dir is set).
function Cmd:environ()
  local l = env_list(self.env)
  if not l then l = with_pwd(self, core.env_list()) or core.env_list() end
  return childopts.extra_env(l, self.extra_env, 2) -- cmd.extra_env on top
end

-- A word as a POSIX shell reads it back: as is when it is made of safe characters,
-- else single-quoted ('' for the empty word).
local function shell_word(w)
  w = tostring(w)
  if w ~= "" and not find(w, "[^%w@%%+=:,./_-]") then return w end
  return "'" .. w:gsub("'", [['\'']]) .. "'"
end

--- tostring(cmd) -> the command line, quoted like a shell would need it (a log
-- line can be pasted into a shell): argv[0] when the name was found in PATH,
-- else cmd.path, then the arguments.
function Cmd:__tostring()
  local args = self.args or {}
  local first = self.path
  if self._looked_up ~= nil and self._looked_up == self.path and args[1] then first = args[1] end
  local parts = { shell_word(first) }
  for i = 2, #args do parts[i] = shell_word(args[i]) end
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
  childopts.extra_env({}, self.extra_env, 3) -- raise now for a bad extra_env; start applies it
  local pgid
  if self.setpgid == true then pgid = 0
  elseif is_fdnum(self.setpgid) then pgid = self.setpgid
  elseif self.setpgid ~= nil and self.setpgid ~= false then error("exec: cmd.setpgid must be a boolean or a pgid", 3) end
  if self.foreground ~= nil and type(self.foreground) ~= "boolean" then error("exec: cmd.foreground must be a boolean", 3) end
  if self.setsid ~= nil and type(self.setsid) ~= "boolean" then error("exec: cmd.setsid must be a boolean", 3) end
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
  if self._terminal then -- pty: the child leads a new session, whose group is the pty's foreground group
    if self.setpgid ~= nil and self.setpgid ~= false and self.setpgid ~= true then
      error("exec: cmd.setpgid cannot name a group with a pty (the child leads its own session)", 3)
    end
    pgid = nil
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
  if self.cancel ~= nil and self.cancel ~= false and type(self.cancel) ~= "function" then
    error("exec: cmd.cancel must be a function or false", 3)
  end
  if self.timeout ~= nil and (type(self.timeout) ~= "number" or self.timeout ~= self.timeout or self.timeout <= 0) then
    error("exec: cmd.timeout must be a positive number of seconds", 3)
  end
  if self.max_output ~= nil and (type(self.max_output) ~= "number" or self.max_output < 0) then
    error("exec: cmd.max_output must be a number of bytes", 3)
  end
  -- containment (tether.cgroup): the limits are checked here, the group is made at start
  if self.cgroup ~= nil and self.cgroup ~= false then require("tether.cgroup").check(self.cgroup, 3) end
  childopts.rlimits(self.rlimits, 3) -- raise now, before any fd or process exists
  childopts.umask(self.umask, 3)
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
    return v._fd -- the child gets it in blocking mode (process.c reopens it on the child's side)
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
  tasks[#tasks + 1] = { fd = r, kind = "sink", sink = v, ev = "r", name = name }
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
  if self.cancel ~= nil and self.cancel ~= false and not self.ctx then
    return nil, state_error("exec: command with a non-nil Cancel was not created with CommandContext")
  end
  if self.ctx and self.ctx:done() then
    close_all(self._child_ends or {})
    self._child_ends = nil
    self:_close_pipes()
    if self._terminal then self._terminal:close() end
    return nil, self.ctx:err()
  end
  if self.err then -- lookup failed at construction: release the pipes handed out (as Go)
    close_all(self._child_ends or {})
    self._child_ends = nil
    self:_close_pipes()
    if self._terminal then self._terminal:close() end
    return nil, self.err
  end
  if env == nil and self.dir ~= nil then -- Go 1.19: PWD follows dir when env is inherited
    local perr
    env, perr = with_pwd(self, core.env_list())
    if not env then
      close_all(self._child_ends or {})
      self._child_ends = nil
      self:_close_pipes()
      return nil, perr
    end
  end
  -- A timeout kills the whole tree: the child leads a process group of its own unless the
  -- user chose its group (setpgid, setsid, foreground).
  if self.timeout and self.setpgid == nil and not self.setsid and not self.foreground
    and not self._terminal then pgid = 0 end -- (a pty child leads a session, so its own group)
  self._started = true
  local close_after, tasks, shared = {}, {}, {}
  local fds = {}
  local stdio = { self.stdin, self.stdout, self.stderr }
  local term = self._terminal -- pty: unset stdio goes to its slave
  if term then
    if not term._slave then return nil, state_error("exec: pty already closed") end
    for i = 1, 3 do if stdio[i] == nil then stdio[i] = term._slave end end
  end
  for i = 1, 3 do
    local fd, err = stdio_fd(self, i, stdio[i], close_after, tasks, shared)
    if not fd then
      close_all(close_after); for _, t in ipairs(tasks) do t.fd:close() end
      if term then term:close() end
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
  env = childopts.extra_env(env, self.extra_env) -- on top of env or the inherited environment
  local spec = {
    path = self.path, argv = self.args, env = env, dir = self.dir, fds = fds,
    pgid = pgid, setsid = self.setsid and true or nil, pdeathsig = pdeathsig,
    foreground = self.foreground and not term, -- a pty's session leader has its foreground already
    uid = self.uid, gid = self.gid, groups = self.groups,
    inherit_signals = inherit, sigign = sigign, -- issue 14: tini's child signal state
    ctty = term and term._slave, -- pty: setsid + TIOCSCTTY in the child
    rlimits = childopts.rlimits(self.rlimits, 2), umask = childopts.umask(self.umask, 2),
  }
  -- containment (tether.cgroup): the child starts in a new group of its own
  local group, gerr
  if self.cgroup then
    group, gerr = require("tether.cgroup").create(self.cgroup, tostring(self), self)
    if group then group:spawn_fields(spec) end
  end
  local p, errno, step
  if not gerr then p, errno, step = core.spawn(spec) end
  close_all(close_after)
  self._child_ends = nil
  if term then term:_close_slave() end -- the child's exit must read as EOF on the master
  if not p then
    for _, t in ipairs(tasks) do t.fd:close() end
    self:_close_pipes()
    if term then term:close() end
    if gerr then return nil, gerr end
    if group then
      group:remove()
      if step == "cgroup" then return nil, group:spawn_error(tostring(self), errno) end
    end
    local op, path = "fork/exec", self.path
    if step == "chdir" then op, path = "chdir", self.dir
    elseif step ~= "exec" then op = step end
    return nil, errors.from_errno(op, path, errno, step)
  end
  self.process = new_process(p)
  if term and self._pty_sink then -- pty: output() drains the terminal as a sink (EIO is EOF)
    tasks[#tasks + 1] = { fd = term._fd, kind = "sink", sink = self._pty_sink, ev = "r", eio_eof = true }
  end
  engine.begin(self, tasks, pgid == 0 or self.setsid == true or term ~= nil) -- a pty child leads its session
  engine.contain(self, group)
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
  local deadline, ctx = wait.limit(limit)
  return engine.wait(self, deadline, ctx)
end

-- tether.ngx (issue 12) may run a whole run/output/combined_output in nginx's thread pool:
-- exec._offload(cmd, how) returns true and its results, or nil (then it runs here).
-- offloaded turns those back into what the call returns, as if it had run here.
local function offloaded(self, done, ok, out, stderr, truncated, state)
  if not done then return false end
  -- (rawset: a Cmd whose PATH search waits would take each through its __newindex)
  rawset(self, "_started", true)
  rawset(self, "_waited", true)
  rawset(self, "process_state", process._new_state(state))
  rawset(self, "truncated", truncated)
  if ok then return true, out or true end
  local err = engine.exit_error(self, self.process_state, stderr)
  err.stderr = stderr
  return true, nil, err, out
end

-- run_or_offload(self, how, fn, arg): cmd[how]() whole in the pool when tether.ngx takes it,
-- else fn(self, arg); the same values either way (run: true | nil, err).
local function run_or_offload(self, how, fn, arg)
  local offload = exec._offload
  if offload then
    local done, a, b, c = offloaded(self, offload(self, how))
    if done then
      if a ~= nil then return a end
      if how == "run" then return a, b end
      return a, b, c
    end
  end
  return fn(self, arg)
end

local function start_and_wait(self)
  local ok, err = self:start()
  if not ok then return nil, err end
  return self:wait()
end

--- cmd:run() -> true | nil, err: start then wait.
function Cmd:run() return run_or_offload(self, "run", start_and_wait) end

-- A pty command's output() / combined_output(): the terminal's output, read by wait as a
-- sink (what was read already first); nil when the command has no pty or set stdout.
local function capture_pty(self, combined)
  if not (self._terminal and self.stdout == nil and (not combined or self.stderr == nil)) then
    return nil
  end
  do
    local term = self._terminal
    local out = core.buffer(self.max_output)
    if term._pending then out:append(term._pending); term._pending = nil end
    self._pty_sink = out
    local ok, err = self:run()
    self._pty_sink = nil
    term:close()
    local data = out:result()
    self.truncated = out:truncated()
    out:free()
    if not ok then return nil, err, data end
    return data
  end
end

-- Sets stdout (and stderr into `combined`) to tether buffers, before start; returns
-- what capture_end takes, or nil, err. (output, combined_output, output_all)
local function capture_begin(self, combined)
  if self.stdout ~= nil then return nil, state_error("exec: Stdout already set") end
  if combined and self.stderr ~= nil then return nil, state_error("exec: Stderr already set") end
  local out = core.buffer(self.max_output)
  self.stdout = out
  local errbuf
  if combined then self.stderr = out
  elseif self.stderr == nil then
    errbuf = core.buffer(STDERR_KEEP)
    self.stderr = errbuf
    self._errbuf = errbuf -- the ExitError's message quotes its first line
  end
  return { out = out, errbuf = errbuf }
end

-- After the run (ok, err as run returns them): frees the buffers; returns the output
-- as output() does.
local function capture_end(self, cap, ok, err)
  self._errbuf = nil
  local data = cap.out:take() -- the buffer gives its memory up as the string is made
  self.truncated = cap.out:truncated()
  cap.out:free()
  if cap.errbuf then
    if err and err.state then err.stderr = cap.errbuf:result() end
    cap.errbuf:free()
  end
  if not ok then return nil, err, data end
  return data
end

-- Captures stdout (and stderr into `combined`) into tether buffers and runs.
local function capture(self, combined)
  local pty_data, pty_err, pty_partial = capture_pty(self, combined)
  if pty_data ~= nil or pty_err ~= nil then return pty_data, pty_err, pty_partial end
  local cap, cerr = capture_begin(self, combined)
  if not cap then return nil, cerr end
  return capture_end(self, cap, self:run())
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
  if which == "stdin" then parent, child = new_writer(w), r
  else
    parent, child = new_reader(r), w
    r:set_pipe_size(PIPE_SIZE) -- fewer, larger reads (as output()'s pipes)
  end
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

--- cmd:pty([{rows = 24, cols = 80, echo = true}]) -> Terminal | nil, err. Before start:
-- the child will run in a new session with a new pseudo-terminal as its controlling
-- terminal, and as its stdin, stdout and stderr where those are nil (echo = false: the
-- terminal does not echo what is written). See tether.terminal for the
-- Terminal (read, write, expect, resize, close). output() and combined_output() then
-- return what the terminal showed. State errors: "exec: pty after process started",
-- "exec: pty already set".
function Cmd:pty(opts)
  if self._started then return nil, state_error("exec: pty after process started") end
  if self._terminal then return nil, state_error("exec: pty already set") end
  local t, err = require("tether.terminal").open(opts)
  if not t then return nil, err end
  t._cmd = self
  self._terminal = t
  return t
end

--- <close> (Lua 5.4): a started child still running at scope exit is killed and reaped.
function Cmd:__close()
  if self._terminal then self._terminal:close() end
  if self._started and self.process and not self._waited then
    self.process:kill()
    self.process:wait()
    self._waited = true
    self:_close_pipes()
    engine.uncontain(self) -- containment: kill, wait for and remove the whole cgroup
  end
end

---------------------------------------------------------------------------
-- pipeline

-- stage_error(e, i) -> a new error wrapping stage i's error e, with its fields, for
-- pipeline to mark with index and states: e may be a shared sentinel (context.Canceled,
-- ErrWaitDelay), which must never be modified.
local STAGE_FIELDS = { "exit_code", "signal", "state", "stderr", "op", "path", "errno", "code", "step", "resolved" }
local function stage_error(e, i)
  local w = errors.new { msg = tostring(e), err = e }
  if errors.is_error(e) then
    for _, k in ipairs(STAGE_FIELDS) do w[k] = rawget(e, k) end
  end
  w.index = i
  return w
end

--- pipeline({cmd1, cmd2, ...}) -> list of ProcessStates | nil, err.
-- Wires cmd[i]'s stdout to cmd[i+1]'s stdin fd to fd (no copying through Lua),
-- starts every stage, waits for all. pipefail: when any stage fails, err is the
-- last failing stage's error, with err.states (all states) and err.index.
function exec.pipeline(cmds)
  if type(cmds) ~= "table" or #cmds == 0 then argerror(1, "pipeline", "non-empty list of commands expected") end
  for i, c in ipairs(cmds) do
    if not exec._is_cmd(c) then argerror(1, "pipeline", ("element %d is not a Cmd"):format(i)) end
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
      for j = 1, i - 1 do (engine.cgroup(cmds[j]) or cmds[j].process):kill(); cmds[j]:wait() end
      return nil, stage_error(err, i)
    end
  end
  close_all(ends)
  local ok, err = drive(cmds, nil)
  if not ok then return nil, err end
  local states, failed = {}, nil
  for i, c in ipairs(cmds) do
    local fine, e = finish(c)
    states[i] = c.process_state
    if not fine then failed = stage_error(e, i) end
  end
  if failed then failed.states = states; return nil, failed end
  return states
end

---------------------------------------------------------------------------
-- output_all, pipe

--- output_all(cmds [, opts]) -> outs, errs. Runs the Cmds (not started, stdout not
-- set) with at most opts.limit of them alive at once (default tether.cpus()), each as
-- cmd:output() would: outs[i] is cmd i's stdout (a string) or false, errs[i] nil or its
-- error (an ExitError carries err.stderr when cmd.stderr was nil), both in input order.
-- The next command starts as soon as one ends, whichever it is. opts.ctx: a context;
-- once it is done no further command starts (outs[i] false, errs[i] ctx's error), and
-- the running ones get it as their command context (killed, as command_context does)
-- unless they have a context of their own. Misuse (not a list of Cmds, a bad limit,
-- an unknown option) raises.
function exec.output_all(cmds, opts)
  if type(cmds) ~= "table" then argerror(1, "output_all", "list of commands expected, got " .. type(cmds)) end
  local n = #cmds
  for i = 1, n do
    if not exec._is_cmd(cmds[i]) then argerror(1, "output_all", ("element %d is not a Cmd"):format(i)) end
  end
  if opts ~= nil and type(opts) ~= "table" then argerror(2, "output_all", "table expected, got " .. type(opts)) end
  opts = opts or {}
  for k in pairs(opts) do
    if k ~= "limit" and k ~= "ctx" then argerror(2, "output_all", "unknown option " .. tostring(k)) end
  end
  local limit, ctx = opts.limit, opts.ctx
  if limit == nil then limit = require("tether").cpus()
  elseif type(limit) ~= "number" or limit < 1 or limit ~= math.floor(limit) then
    argerror(2, "output_all", "limit must be a positive integer")
  end
  if ctx ~= nil and not wait.is_context(ctx) then argerror(2, "output_all", "ctx must be a context") end
  local outs, errs, running, nexti = {}, {}, {}, 1
  local function done(r, ok, err)
    local data, e = capture_end(r.cmd, r.cap, ok, err)
    outs[r.i], errs[r.i] = data or false, e
  end
  -- Kills and reaps every running command (a misuse raised, or the wait itself failed).
  local function stop_all(err)
    for _, r in ipairs(running) do
      r.cmd.process:kill()
      r.cmd.process:wait()
      r.cmd._waited = true
      r.cmd:_close_pipes()
      done(r, nil, err)
    end
    running = {}
  end
  while true do
    while #running < limit and nexti <= n do
      local i, c = nexti, cmds[nexti]
      nexti = nexti + 1
      if ctx and ctx:done() then
        outs[i], errs[i] = false, ctx:err()
      else
        local cap, err = capture_begin(c, false)
        if not cap then outs[i], errs[i] = false, err
        else
          if ctx and not c.ctx then c.ctx = ctx end
          local raised, ok, serr = pcall(c.start, c)
          if not raised then -- misuse (a bad Cmd field): nothing may be left running
            capture_end(c, cap, nil, nil)
            stop_all(ok)
            error(ok, 0)
          end
          if ok then running[#running + 1] = { i = i, cmd = c, cap = cap }
          else done({ i = i, cmd = c, cap = cap }, nil, serr) end
        end
      end
    end
    if #running == 0 then break end
    local list = {}
    for j, r in ipairs(running) do list[j] = r.cmd end
    local ok, c = drive(list, nil, nil, true)
    if not ok then -- the wait itself failed (not a command): stop them all, report it
      stop_all(c)
    else
      for j, r in ipairs(running) do
        if r.cmd == c then
          table.remove(running, j)
          done(r, finish(c))
          break
        end
      end
    end
  end
  for i = 1, n do if outs[i] == nil then outs[i] = false end end
  return outs, errs
end

--- pipe() -> Reader, Writer | nil, err: a new pipe (Go's os.Pipe), for wiring children
-- by hand: either end may be a Cmd's stdin/stdout/stderr or an entry of extra_files
-- (an end handed to a child reaches it in blocking mode), and the Lua side reads the
-- Reader or writes the Writer as any other pipe. Close the ends the parent does not use
-- once the children have started, or a reader never sees EOF.
function exec.pipe()
  local r, w = core.pipe()
  if not r then return nil, errors.from_errno("pipe", nil, w) end
  r:set_nonblock(true)
  w:set_nonblock(true)
  return new_reader(r), new_writer(w)
end

exec.Cmd, exec.Process, exec.ProcessState, exec.Reader, exec.Writer = Cmd, Process, ProcessState, Reader, Writer
for k, v in pairs(Cmd) do -- a Cmd whose search waits (LazyCmd) has Cmd's metamethods
  if type(k) == "string" and k:sub(1, 2) == "__" and LazyCmd[k] == nil then LazyCmd[k] = v end
end

-- Inside nginx's Lua module, a request's commands are tied to it (tether.ngx, issue 12).
if rawget(_G, "ngx") and type(ngx.get_phase) == "function" then require("tether.ngx").install(exec) end

return exec

