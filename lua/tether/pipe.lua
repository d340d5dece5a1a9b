--- tether.pipe: Reader and Writer, the parent's ends of pipes (cmd:stdout_pipe(),
-- cmd:stdin_pipe(), ...), reached through tether.exec.
--
-- Every blocking step goes through tether.engine, which also runs the I/O of the
-- command that owns the pipe while the caller waits.
local core = require "tether.core"
local errors = require "tether.errors"
local wait = require "tether.wait"
local engine = require "tether.engine"

local type, tostring, setmetatable, error, select = type, tostring, setmetatable, error, select
local find = string.find

local CHUNK = 65536

local M = {}

local Reader = {}
Reader.__index = Reader
Reader.__name = "tether.Reader"

local Writer = {}
Writer.__index = Writer
Writer.__name = "tether.Writer"

local function io_error(op, errno) return errors.from_errno(op, nil, errno) end

-- Waits until fd is ready for ev; the engine services the other I/O of the command
-- that owns the pipe meanwhile (a caller reading stdout before wait() must not
-- deadlock on a child blocked writing stderr or reading stdin).
local function wait_pipe(pipe, fd, ev, deadline, ctx)
  return engine.wait_pipe(pipe._cmd, fd, ev, deadline, ctx)
end

local function closed_error() return errors.new { op = "read", msg = "read: file already closed" } end

-- Reads one chunk into self._pending (non-empty) or marks EOF; false at the deadline.
local function fill(self, deadline, ctx)
  while true do
    local fd = self._fd
    if not fd then return nil, closed_error() end
    local data, errno = fd:read(CHUNK)
    if data == "" then self._eof = true; return true end
    if data then
      self._pending = self._pending and self._pending .. data or data
      return true
    end
    if data == nil then return nil, io_error("read", errno) end
    if ctx and ctx:done() then return nil, ctx:err() end
    if not wait_pipe(self, fd:getfd(), "r", deadline, ctx) then
      if ctx and ctx:done() then return nil, ctx:err() end
      return false
    end
  end
end

--- reader:read([fmt [, timeout | ctx]]) -> data | nil at end of file | nil, err.
-- fmt: a number n (up to n bytes, as soon as any are available), "a" (all
-- until EOF, "" at EOF), "l" (a line without its newline), "L" (with it).
-- Default "l". A timeout that runs out gives err:is(errors.ErrTimeout), a done
-- ctx its error; what was read so far stays buffered for the next read.
function Reader:read(fmt, limit)
  fmt = fmt or "l"
  if type(fmt) == "string" then fmt = fmt:gsub("^%*", ""):sub(1, 1) end
  local deadline, ctx = wait.limit(limit)
  while true do
    local p = self._pending
    if fmt == "a" then
      if self._eof then self._pending = nil; return p or "" end
    elseif type(fmt) == "number" then
      if fmt <= 0 then return "" end
      if p then
        if #p <= fmt then self._pending = nil; return p end
        self._pending = p:sub(fmt + 1)
        return p:sub(1, fmt)
      end
      if self._eof then return nil end
    elseif fmt == "l" or fmt == "L" then
      local nl = p and find(p, "\n", 1, true)
      if nl then
        self._pending = nl < #p and p:sub(nl + 1) or nil
        return p:sub(1, fmt == "l" and nl - 1 or nl)
      end
      if self._eof then self._pending = nil; return p end
    else
      error("bad argument #1 to 'read' (invalid format)", 2)
    end
    local ok, err = fill(self, deadline, ctx)
    if ok == nil then return nil, err end
    if ok == false then return nil, errors.timeout("read", nil) end
  end
end

--- reader:lines([fmt]) -> iterator over lines (without newlines); stops at EOF, raises on error.
function Reader:lines(fmt)
  return function()
    local l, err = self:read(fmt or "l")
    if err then error(tostring(err), 2) end
    return l
  end
end

--- reader:close() -> true. Further reads fail; the child may get SIGPIPE/EPIPE on write.
function Reader:close()
  if self._fd then self._fd:close(); self._fd = nil end
  return true
end

--- reader:pollfd(), events() -> "r", timeout() -> nil: the cqueues pollable protocol.
function Reader:pollfd() return self._fd and self._fd:getfd() or -1 end
function Reader:_ready()
  return self._pending ~= nil or self._eof or not self._fd or core.poll(self._fd, "r", 0) == true
end
function Reader:events() return "r" end
function Reader:timeout() return nil end
Reader.__gc = Reader.close
Reader.__close = Reader.close

--- writer:write(...) -> true | nil, err. Writes every string argument fully,
-- waiting while the pipe is full. EPIPE (the reader is gone) is returned as an
-- error; the Lua process is never killed by SIGPIPE.
function Writer:write(...)
  for i = 1, select("#", ...) do
    local s = select(i, ...)
    if type(s) == "number" then s = tostring(s) end
    if type(s) ~= "string" then error("bad argument #" .. i .. " to 'write' (string expected)", 2) end
    local pos = 1
    while pos <= #s do
      local fd = self._fd
      if not fd then return nil, errors.new { op = "write", msg = "write: file already closed" } end
      local n, errno = fd:write(s, pos)
      if n then pos = pos + n
      elseif n == false then wait_pipe(self, fd:getfd(), "w", nil)
      else return nil, io_error("write", errno) end
    end
  end
  return true
end

--- writer:close() -> true: the child reads EOF.
function Writer:close()
  if self._fd then self._fd:close(); self._fd = nil end
  return true
end
function Writer:pollfd() return self._fd and self._fd:getfd() or -1 end
function Writer:events() return "w" end
function Writer:timeout() return nil end
Writer.__gc = Writer.close
Writer.__close = Writer.close

local function new_reader(fd) return setmetatable({ _fd = fd }, Reader) end
local function new_writer(fd) return setmetatable({ _fd = fd }, Writer) end

M.Reader, M.Writer = Reader, Writer
M._new_reader, M._new_writer = new_reader, new_writer

return M
