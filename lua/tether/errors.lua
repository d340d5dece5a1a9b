--- tether.errors: error objects shaped like Go's errors.
--
-- Runtime failures in tether return `nil, err` where `err` is an error
-- object: a table whose `tostring(err)` and `..` concatenation (on either
-- side) give its message, with the fields
--
--   err.op     the operation ("chdir", "exec", "setenv"), or nil
--   err.path   the file, command or name it was applied to, or nil
--   err.errno  the errno (a number), or nil when the failure is not an OS error
--   err.code   the errno's name ("ENOENT"), or nil
--   err.step   which step of a spawn failed ("chdir", "exec", ...), or nil
--   err.err    the wrapped error (Go's Unwrap), or nil
--
-- `err:is(target)` and `errors.is(err, target)` follow the `err` chain
-- like Go's errors.Is.
--
-- This module needs only tether.core, and loads it lazily (for strerror and
-- errno names); it runs on Lua 5.1 to 5.4 and LuaJIT.
local M = {}

local type, tostring, setmetatable, getmetatable, rawget, pairs, error =
  type, tostring, setmetatable, getmetatable, rawget, pairs, error
local format, gsub, byte, find, sub, lower =
  string.format, string.gsub, string.byte, string.find, string.sub, string.lower

local core_mod -- tether.core, loaded on first use; false when it cannot load

local function core()
  if core_mod == nil then
    local ok, c = pcall(require, "tether.core")
    core_mod = ok and c or false
  end
  return core_mod
end

-- Methods of error objects.
local Error = {}

-- The metatable shared by every tether error. __index falls back to Error.
local mt = { __index = Error, __name = "tether.error" }

-- Targets an error also counts as, besides itself (Go's Is method):
-- matches[err] = { [target] = true }. Weak keys: it does not keep errors alive.
local matches = setmetatable({}, { __mode = "k" })

-- Quote s like Go's strconv.Quote, for exec errors: `"name"`.
local quote_escapes = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n",
  ["\r"] = "\\r", ["\t"] = "\\t", ["\a"] = "\\a", ["\b"] = "\\b",
  ["\f"] = "\\f", ["\v"] = "\\v" }

local function quote(s)
  s = gsub(tostring(s), '[%c"\\]', function(c)
    return quote_escapes[c] or format("\\x%02x", byte(c))
  end)
  return '"' .. s .. '"'
end
M._quote = quote -- (internal) exec's messages quote the command the same way

-- strerror(errno) -> the C library's message for errno, in Go's lower
-- case ("no such file or directory"; a leading capital is lowered when the
-- next letter is lower case, so acronyms stay). "errno <n>" when
-- tether.core is not available.
local function strerror(errno)
  local c = core()
  if not c then return "errno " .. tostring(errno) end
  local m = c.strerror(errno)
  if find(m, "^%u%l") then m = lower(sub(m, 1, 1)) .. sub(m, 2) end
  return m
end

-- The message of an error object (see errors.new for the rules).
local function message(e)
  local msg = rawget(e, "msg")
  if msg ~= nil then return tostring(msg) end
  local inner
  local wrapped = rawget(e, "err")
  if wrapped ~= nil then
    inner = tostring(wrapped)
  elseif rawget(e, "errno") ~= nil then
    inner = strerror(e.errno)
  else
    inner = tostring(rawget(e, "code") or "unknown error")
  end
  local op, path = rawget(e, "op"), rawget(e, "path")
  if op ~= nil and path ~= nil then
    if op == "exec" then
      return format("%s: %s: %s", tostring(op), quote(path), inner)
    end
    return format("%s %s: %s", tostring(op), tostring(path), inner)
  elseif op ~= nil then
    return format("%s: %s", tostring(op), inner)
  elseif path ~= nil then
    return format("%s: %s", tostring(path), inner)
  end
  return inner
end

mt.__tostring = message

-- Either operand may be the error (or both); the other is made a string
-- by tostring, so `"failed: " .. err` and `err .. "!"` both work.
mt.__concat = function(a, b)
  return tostring(a) .. tostring(b)
end

--- errors.is_error(v) -> true when v is a tether error object, else false.
function M.is_error(v)
  return type(v) == "table" and getmetatable(v) == mt
end

local function argerror(n, fname, msg)
  error(format("bad argument #%d to '%s' (%s)", n, fname, msg), 3)
end

--- errors.new(fields | message) -> a new error object.
--
-- `fields` is a table; every field is copied to the new error. The known
-- ones:
--   msg      the whole message; when nil the message is built from the
--            fields below
--   op       the operation; nil = none
--   path     what op was applied to; nil = none
--   errno    an errno number; nil = not an OS error
--   code     the errno's name; nil = derived from errno (core.errname)
--   step     the spawn step that failed; nil = not a spawn failure
--   err      the wrapped error (any value; tether errors are followed by is)
--   matches  a list of other errors this one also counts as in is()
--            (like a Go Is method), e.g. DeadlineExceeded matches ErrTimeout
-- A string argument is the same as {msg = message} (Go's errors.New).
--
-- Without msg, the message is `op path: cause`, where cause is the
-- wrapped error's message, else strerror(errno), else code, else
-- "unknown error"; with op "exec" the path is quoted
-- (`exec: "nope": executable file not found in $PATH`); without path it
-- is `op: cause`, without op `path: cause`, without both `cause`.
-- Raises when fields is neither a table nor a string, or errno is not a number.
function M.new(fields)
  if type(fields) == "string" then
    fields = { msg = fields }
  elseif type(fields) ~= "table" then
    argerror(1, "new", "table or string expected, got " .. type(fields))
  end
  local e = {}
  for k, v in pairs(fields) do e[k] = v end
  if e.errno ~= nil then
    if type(e.errno) ~= "number" then
      argerror(1, "new", "field 'errno' must be a number")
    end
    if e.code == nil then
      local c = core()
      if c then e.code = c.errname(e.errno) end
    end
  end
  local also = e.matches
  if also ~= nil then
    e.matches = nil
    if type(also) ~= "table" then
      argerror(1, "new", "field 'matches' must be a list of errors")
    end
    local set = {}
    for i = 1, #also do set[also[i]] = true end
    matches[e] = set
  end
  return setmetatable(e, mt)
end

--- errors.from_errno(op, path, errno [, step]) -> an error object for a
-- failed system call, in Go's PathError style: message
-- `op path: strerror(errno)` (e.g. `chdir /nope: no such file or
-- directory`), or `op: strerror(errno)` when path is nil; fields op, path,
-- errno, code (e.g. "ENOENT") and step (nil when not given).
-- Raises when errno is not a number.
--- timeout(op [, path]) -> an error for a wait that ran out of time:
-- message `op: i/o timeout` (Go's wording), errno ETIMEDOUT, so that
-- err:is(errors.ErrTimeout) holds.
function M.timeout(op, path)
  local e = M.from_errno(op, path, core().errno.ETIMEDOUT)
  e.err = M.ErrTimeout
  return e
end

function M.from_errno(op, path, errno, step)
  if type(errno) ~= "number" then
    argerror(3, "from_errno", "number expected, got " .. type(errno))
  end
  return M.new { op = op, path = path, errno = errno, step = step }
end

--- errors.wrap(err, msg) -> a new error whose message is `msg: <err's
-- message>` and which wraps err (so is() sees through it), like Go's
-- fmt.Errorf("msg: %w", err). Returns nil when err is nil, so
-- `return nil, errors.wrap(err, "loading config")` is safe.
function M.wrap(err, msg)
  if err == nil then return nil end
  if msg == nil then
    return M.new { msg = tostring(err), err = err }
  end
  return M.new { msg = tostring(msg) .. ": " .. tostring(err), err = err }
end

--- errors.unwrap(err) -> the error err wraps (its `err` field), or nil
-- (also for values that are not tether errors), like Go's errors.Unwrap.
function M.unwrap(err)
  if M.is_error(err) then return rawget(err, "err") end
  return nil
end

-- Errno-class sentinels: target -> list of errno names it matches.
local errno_class = {}

-- True when error e (a tether error) carries one of the errno names.
local function has_errno(e, names)
  local code, errno = rawget(e, "code"), rawget(e, "errno")
  if code == nil and errno == nil then return false end
  local c = core()
  local nums = c and c.errno
  for i = 1, #names do
    if code == names[i] then return true end
    if errno ~= nil and nums and nums[names[i]] == errno then return true end
  end
  return false
end

--- errors.is(err, target) -> true when some error in err's chain (err,
-- err.err, err.err.err, ...) is target itself, counts as target (see
-- `matches` in new), or, when target is an errno-class sentinel
-- (ErrPermission, ErrNotExist, ErrExist, ErrTimeout), carries an errno of
-- that class. Otherwise false. is(nil, nil) is true, as in Go.
function M.is(err, target)
  if err == nil or target == nil then return err == target end
  local names = errno_class[target]
  local depth = 0
  while err ~= nil and depth < 100 do
    if err == target then return true end
    if not M.is_error(err) then return false end
    local set = matches[err]
    if set and set[target] then return true end
    if names and has_errno(err, names) then return true end
    err = rawget(err, "err")
    depth = depth + 1
  end
  return false
end

--- err:is(target) -> errors.is(err, target).
function Error:is(target)
  return M.is(self, target)
end

--- err:unwrap() -> errors.unwrap(err).
function Error:unwrap()
  return M.unwrap(self)
end

-- Sentinels: compare with errors.is (or ==). Their messages are Go's.

--- The errno-class sentinels.
M.ErrPermission = M.new("permission denied")  -- EPERM, EACCES
M.ErrNotExist = M.new("file does not exist")  -- ENOENT
M.ErrExist = M.new("file already exists")     -- EEXIST
M.ErrTimeout = M.new("i/o timeout")           -- ETIMEDOUT
errno_class[M.ErrPermission] = { "EPERM", "EACCES" }
errno_class[M.ErrNotExist] = { "ENOENT" }
errno_class[M.ErrExist] = { "EEXIST" }
errno_class[M.ErrTimeout] = { "ETIMEDOUT" }

--- exec.look_path found nothing.
M.ErrNotFound = M.new("executable file not found in $PATH")
--- exec.look_path found the name only through a relative PATH entry.
M.ErrDot = M.new("cannot run executable found relative to current directory")
--- A Process was signalled after it was reaped.
M.ErrProcessDone = M.new("os: process already finished")
--- Cmd.wait gave up on I/O after wait_delay.
M.ErrWaitDelay = M.new("exec: WaitDelay expired before I/O complete")
--- A context was cancelled (re-exported as tether.context.Canceled).
M.Canceled = M.new("context canceled")
--- A context's deadline passed (tether.context.DeadlineExceeded); it
-- also counts as ErrTimeout.
M.DeadlineExceeded = M.new { msg = "context deadline exceeded", matches = { M.ErrTimeout } }

return M
