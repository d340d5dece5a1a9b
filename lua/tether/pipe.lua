--- tether.pipe: Reader and Writer, the parent's ends of pipes (cmd:stdout_pipe(),
-- cmd:stdin_pipe(), ...), reached through tether.exec.
--
-- Reads are buffered: one buffer string and an offset into it, so read("l") and
-- lines() scan in place and every read is linear in the bytes read; read("a")
-- collects into a tether buffer as output() does. Every blocking step goes through
-- tether.engine, which also runs the I/O of the command that owns the pipe while the
-- caller waits, and ends the call when that command's context or timeout does.
local core = require "tether.core"
local errors = require "tether.errors"
local wait = require "tether.wait"
local engine = require "tether.engine"

local type, tostring, setmetatable, error, select = type, tostring, setmetatable, error, select
local find, sub, concat = string.find, string.sub, table.concat
local split_lines, line_iter = core.split_lines, core.line_iter
-- LuaJIT compiles the Lua iterator; PUC Lua runs the C one faster (see lines()).
local is_luajit = rawget(_G, "jit") ~= nil

local CHUNK = 65536      -- bytes per read(2) for line and count reads
local PIPE_SIZE = 1048576 -- bytes per read(2) for read("a")
-- Lines lines() splits ahead per C call: few, so that they die young (a long table of
-- live lines makes every garbage-collector cycle traverse them).
local BATCH = 64

local M = {}

local Reader = {}
Reader.__index = Reader
Reader.__name = "tether.Reader"

local Writer = {}
Writer.__index = Writer
Writer.__name = "tether.Writer"

local function io_error(op, errno) return errors.from_errno(op, nil, errno) end
local function closed_error(op) return errors.new { op = op, msg = op .. ": file already closed" } end

-- Waits until fd is ready for ev: true, false at the deadline, or nil, err when a
-- ctx or the owning command's context or timeout ended the call.
local function wait_pipe(pipe, fd, ev, deadline, ctx)
  local ok, err = engine.wait_pipe(pipe._cmd, fd, ev, deadline, ctx)
  if ok == nil then return nil, err end
  if ctx and ctx:done() then return nil, ctx:err() end
  return ok
end

-- The buffer: self._buf (a string or nil when empty) and self._pos, the first unread
-- byte in it; self._eof once read(2) said end of file. An iterator of lines() splits
-- the buffer's complete lines ahead into a table of its own; self._flush (set while it
-- holds some) puts them back in front of the buffer before any other read.

-- fill(self, deadline, ctx) -> true once self._buf holds new bytes or EOF was seen;
-- false at the deadline; nil, err. Called only with the buffer empty.
local function fill(self, deadline, ctx)
  while true do
    local fd = self._fd
    if not fd then return nil, closed_error("read") end
    local data, errno = fd:read(CHUNK)
    if data == "" then self._eof = true; return true end
    if data then self._buf, self._pos = data, 1; return true end
    if data == nil then return nil, io_error("read", errno) end
    local ok, err = wait_pipe(self, fd:getfd(), "r", deadline, ctx)
    if ok == nil then return nil, err end
    if ok == false then return false end
  end
end

-- The error of a fill that did not fill.
local function fill_error(ok, err)
  if ok == false then return errors.timeout("read", nil) end
  return err
end

-- read_line(self, keep_nl, deadline, ctx) -> a line | nil at EOF | nil, err (the
-- partial line stays buffered). Scans only bytes it has not looked at before.
local function read_line(self, keep_nl, deadline, ctx)
  local parts, n = nil, 0
  while true do
    local buf = self._buf
    if buf then
      local pos = self._pos
      local nl = find(buf, "\n", pos, true)
      if nl then
        local line = sub(buf, pos, keep_nl and nl or nl - 1)
        if nl == #buf then self._buf = nil else self._pos = nl + 1 end
        if parts then n = n + 1; parts[n] = line; return concat(parts, "", 1, n) end
        return line
      end
      parts = parts or {}
      n = n + 1
      parts[n] = pos == 1 and buf or sub(buf, pos)
      self._buf = nil
    end
    if self._eof then
      if parts then return concat(parts, "", 1, n) end
      return nil
    end
    local ok, err = fill(self, deadline, ctx)
    if not ok then
      if parts then self._buf, self._pos = concat(parts, "", 1, n), 1 end
      return nil, fill_error(ok, err)
    end
  end
end

-- read_all(self, deadline, ctx) -> everything until EOF ("" at EOF) | nil, err (what
-- was read stays buffered). Straight into a tether buffer, a pipeful per read(2).
local function read_all(self, deadline, ctx)
  local head = self._buf and sub(self._buf, self._pos) or nil
  self._buf = nil
  if self._eof then return head or "" end
  local b = core.buffer()
  if head then b:append(head) end
  local err
  while true do
    local fd = self._fd
    if not fd then err = closed_error("read"); break end
    local n, errno = b:read_from(fd, PIPE_SIZE)
    if n == 0 then self._eof = true; break end
    if n == nil then err = io_error("read", errno); break end
    if n == false then
      local ok, werr = wait_pipe(self, fd:getfd(), "r", deadline, ctx)
      if not ok then err = fill_error(ok, werr); break end
    end
  end
  local s = b:take() -- the buffer gives its memory up as the string is made
  b:free()
  if err then
    if s ~= "" then self._buf, self._pos = s, 1 end
    return nil, err
  end
  return s
end

--- reader:read([fmt [, timeout | ctx]]) -> data | nil at end of file | nil, err.
-- fmt: a number n (up to n bytes, as soon as any are available), "a" (all
-- until EOF, "" at EOF), "l" (a line without its newline), "L" (with it).
-- Default "l". A timeout that runs out gives err:is(errors.ErrTimeout), a done
-- ctx its error; so does the context or timeout of the command the pipe belongs
-- to. What was read so far stays buffered for the next read.
function Reader:read(fmt, limit)
  fmt = fmt or "l"
  if type(fmt) == "string" and fmt ~= "l" and fmt ~= "a" then fmt = fmt:gsub("^%*", ""):sub(1, 1) end
  local deadline, ctx = wait.limit(limit)
  if self._flush then self._flush() end
  if fmt == "l" or fmt == "L" then return read_line(self, fmt == "L", deadline, ctx) end
  if fmt == "a" then return read_all(self, deadline, ctx) end
  if type(fmt) ~= "number" then error("bad argument #1 to 'read' (invalid format)", 2) end
  if fmt <= 0 then return "" end
  while true do
    local buf = self._buf
    if buf then
      local pos = self._pos
      local last = pos + fmt - 1
      if last >= #buf then
        self._buf = nil
        return pos == 1 and buf or sub(buf, pos)
      end
      self._pos = last + 1
      return sub(buf, pos, last)
    end
    if self._eof then return nil end
    local ok, err = fill(self, deadline, ctx)
    if not ok then return nil, fill_error(ok, err) end
  end
end

--- reader:lines([fmt [, timeout | ctx]]) -> iterator over lines (without newlines;
-- "L" keeps them); stops at EOF, raises on error.
function Reader:lines(fmt, limit)
  if fmt ~= nil and fmt ~= "l" and fmt ~= "L" and fmt ~= "*l" and fmt ~= "*L" then
    local f = fmt
    return function()
      local l, err = self:read(f, limit)
      if err then error(tostring(err), 2) end
      return l
    end
  end
  local keep = fmt == "L" or fmt == "*L"
  local deadline, ctx = wait.limit(limit)
  local lines, li, ln = {}, 1, 0 -- lines[li .. ln]: split ahead, not handed out yet
  local function flush()
    if li <= ln then
      local sep = keep and "" or "\n"
      local s = concat(lines, sep, li, ln) .. sep
      local buf = self._buf
      if buf then s = s .. sub(buf, self._pos) end
      self._buf, self._pos, li, ln = s, 1, 1, 0
    end
    if self._flush == flush then self._flush = nil end
  end
  if self._flush then self._flush() end
  -- PUC Lua with tether's own waiter (poll(2): nothing yields): a C iterator that the for
  -- loop calls directly, falling back to `slow` (Lua) to wait and refill. With a custom
  -- waiter (cqueues, nginx) a wait may yield, which a C function cannot carry: the Lua
  -- iterator below. The C iterator owns the buffer between reads; flush gives it back.
  if not is_luajit and wait.waiter == nil then
    local iter, token
    local function cflush()
      local rest = iter(token)
      if rest and rest ~= "" then
        local buf = self._buf
        self._buf = buf and rest .. sub(buf, self._pos) or rest
        self._pos = 1
      end
      if self._flush == cflush then self._flush = nil end
    end
    local function slow()
      if self._flush and self._flush ~= cflush then self._flush() end
      local l, err = read_line(self, keep, deadline, ctx)
      if err then error(tostring(err), 2) end
      local buf = self._buf
      if l ~= nil and buf then
        self._buf = nil
        self._flush = cflush
        return l, buf, self._pos
      end
      return l
    end
    iter, token = line_iter(self, slow, keep)
    self._flush = cflush
    return iter
  end
  -- The next line when none is split ahead: split the buffer's complete lines, else
  -- read one the general way (long lines, EOF, waiting).
  local function more()
    if self._flush ~= flush and self._flush then self._flush() end
    local buf = self._buf
    if buf then
      local n, nxt = split_lines(buf, self._pos, lines, keep, BATCH)
      if n > 0 then
        if nxt > #buf then self._buf = nil else self._pos = nxt end
        li, ln = 2, n
        self._flush = flush
        return lines[1]
      end
    end
    local l, err = read_line(self, keep, deadline, ctx)
    if err then error(tostring(err), 3) end
    return l
  end
  return function()
    if li <= ln then
      local l = lines[li]
      li = li + 1
      return l
    end
    return more()
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
  if self._flush then self._flush() end
  return self._buf ~= nil or self._eof or not self._fd or core.poll(self._fd, "r", 0) == true
end
function Reader:events() return "r" end
function Reader:timeout() return nil end
Reader.__gc = Reader.close
Reader.__close = Reader.close

--- writer:write(... [, ctx]) -> true | nil, err. Writes every string argument
-- fully, waiting while the pipe is full. A context as the last argument bounds
-- the call (its error when it is done), as do the context and timeout of the
-- command the pipe belongs to. EPIPE (the reader is gone) is returned as an
-- error; the Lua process is never killed by SIGPIPE.
function Writer:write(...)
  local args = { ... }
  local nargs = select("#", ...)
  local ctx
  if nargs > 0 and wait.is_context(args[nargs]) then ctx = args[nargs]; nargs = nargs - 1 end
  for i = 1, nargs do
    local s = args[i]
    if type(s) == "number" then s = tostring(s) end
    if type(s) ~= "string" then error("bad argument #" .. i .. " to 'write' (string expected)", 2) end
    local pos = 1
    while pos <= #s do
      local fd = self._fd
      if not fd then return nil, closed_error("write") end
      local n, errno = fd:write(s, pos)
      if n then pos = pos + n
      elseif n == false then
        local ok, err = wait_pipe(self, fd:getfd(), "w", nil, ctx)
        if ok == nil then return nil, err end
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
