--- tether.terminal: the parent's side of a pseudo-terminal, as cmd:pty() gives it.
--
-- A Terminal owns the pty master (O_CLOEXEC, non-blocking) and, until the command
-- starts, the slave that becomes the child's controlling terminal and stdio
-- (src/pty.c opens the pair; process.c's child path does setsid + TIOCSCTTY).
-- Output is buffered here: read, lines and expect consume it; expect searches
-- the unread output with a Lua pattern, as pexpect does with a regex.
--
-- Every blocking call is bounded by its own limit (seconds or a context) and by
-- the command's: its context (command_context) and its `timeout` (counted from
-- start), as reads of a command's pipes are. When the command's bound runs out
-- the command is canceled as wait would cancel it (its cancel function, by
-- default SIGKILL to its group).
local core = require "tether.core"
local errors = require "tether.errors"
local wait = require "tether.wait"
local engine = require "tether.engine"

local type, tostring, setmetatable, error, select = type, tostring, setmetatable, error, select
local find, sub = string.find, string.sub
local unpack = table.unpack or unpack -- luacheck: ignore (5.1)

local E = core.errno
local CHUNK = 65536

local M = {}

local Terminal = {}
Terminal.__index = Terminal
Terminal.__name = "tether.Terminal"

-- A window dimension: an integer in 1..65535; raises naming it.
local function check_dim(v, what, fname, n)
  if type(v) ~= "number" or v ~= math.floor(v) or v < 1 or v > 65535 then
    error(("bad argument #%d to '%s' (%s must be an integer in [1, 65535])"):format(n, fname, what), 3)
  end
  return v
end

--- terminal.open([{rows = 24, cols = 80, echo = true}]) -> Terminal | nil, err.
-- A new pty pair not yet attached to a command (cmd:pty() calls this). echo = false
-- turns the terminal's echo of what is written off (as pexpect's echo=False).
function M.open(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #1 to 'pty' (table or nil expected, got " .. type(opts) .. ")", 3)
  end
  opts = opts or {}
  local rows = opts.rows == nil and 24 or check_dim(opts.rows, "rows", "pty", 1)
  local cols = opts.cols == nil and 80 or check_dim(opts.cols, "cols", "pty", 1)
  if opts.echo ~= nil and type(opts.echo) ~= "boolean" then
    error("bad argument #1 to 'pty' (echo must be a boolean)", 3)
  end
  local master, slave = core.pty_open(rows, cols)
  if not master then return nil, errors.from_errno("open", "/dev/ptmx", slave, "pty") end
  if opts.echo == false then
    local ok, errno = core.pty_set_echo(slave, false)
    if not ok then
      master:close(); slave:close()
      return nil, errors.from_errno("tcsetattr", nil, errno, "pty")
    end
  end
  return setmetatable({ _fd = master, _slave = slave }, Terminal)
end

local function closed_error(op) return errors.new { op = op, msg = op .. ": terminal already closed" } end

-- The master fd, or nil once closed (by close(), or by output() at the end of its drain).
local function master(self)
  local fd = self._fd
  if fd and fd:getfd() >= 0 then return fd end
  self._fd = nil
end

-- Waits until the master is ready for ev: true, false at the deadline, or nil, err when
-- ctx or the command's own bound (its context, its timeout) ended the call. The engine
-- bounds it as it bounds the command's pipes, and services the command's other I/O (a
-- string fed to stdin, sinks) meanwhile.
local function wait_io(self, fd, ev, deadline, ctx)
  local ok, err = engine.wait_pipe(self._cmd, fd:getfd(), ev, deadline, ctx)
  if ok == nil then return nil, err end
  if ctx and ctx:done() then return nil, ctx:err() end
  return ok
end

-- Reads one chunk into self._pending, or marks EOF (the EIO Linux gives once every slave
-- fd is closed counts as EOF). Returns true, or nil, err when a bound ended the wait.
-- With parts (a list), the chunk is appended there instead (read("a"): linear).
local function fill(self, deadline, ctx, op, parts)
  while true do
    local fd = master(self)
    if not fd then return nil, closed_error(op) end
    local data, errno = fd:read(CHUNK)
    if data == "" or (data == nil and errno == E.EIO) then self._eof = true; return true end
    if data then
      if parts then parts[#parts + 1] = data; return true end
      local p = self._pending
      self._pending = p and p .. data or data
      return true
    end
    if data == nil then return nil, errors.from_errno(op, nil, errno) end
    local ok, err = wait_io(self, fd, "r", deadline, ctx)
    if ok == nil then return nil, err end
    if ok == false then return nil, errors.timeout(op, self._cmd and tostring(self._cmd) or nil) end
  end
end

-- Takes the first n bytes of the unread output.
local function take(self, n)
  local p = self._pending
  if n >= #p then self._pending = nil; return p end
  self._pending = sub(p, n + 1)
  return sub(p, 1, n)
end

--- terminal:read([fmt [, timeout | ctx]]) -> data | nil at end of output | nil, err.
-- fmt: a number n (up to n bytes, as soon as any are there), "a" (everything until
-- the child's end; "" then), "l" (a line without its "\r\n" or "\n"), "L" (with
-- it). Default "l". A limit that runs out gives err:is(errors.ErrTimeout) (a
-- done ctx: its error); what was read stays buffered for the next call.
function Terminal:read(fmt, limit)
  fmt = fmt or "l"
  if type(fmt) == "string" then fmt = fmt:gsub("^%*", ""):sub(1, 1) end
  if not (type(fmt) == "number" or fmt == "a" or fmt == "l" or fmt == "L") then
    error("bad argument #1 to 'read' (invalid format)", 2)
  end
  local deadline, ctx = wait.limit(limit)
  while true do
    local p = self._pending
    if type(fmt) == "number" then
      if fmt <= 0 then return "" end
      if p then return take(self, fmt) end
      if self._eof then return nil end
    elseif fmt == "a" then -- chunks gathered in a list, joined once
      local parts = { p }
      self._pending = nil
      while not self._eof do
        local ok, err = fill(self, deadline, ctx, "read", parts)
        if not ok then
          self._pending = table.concat(parts) -- nothing is lost: it stays unread
          if self._pending == "" then self._pending = nil end
          return nil, err
        end
      end
      return table.concat(parts)
    else
      local nl = p and find(p, "\n", 1, true)
      if nl then
        local line = take(self, nl)
        if fmt == "l" then line = sub(line, 1, (sub(line, -2, -2) == "\r") and -3 or -2) end
        return line
      end
      if self._eof then self._pending = nil; return p end
    end
    local ok, err = fill(self, deadline, ctx, "read")
    if not ok then return nil, err end
  end
end

--- terminal:lines() -> iterator over output lines (without "\r\n"); stops at the
-- end of output, raises on error.
function Terminal:lines()
  return function()
    local l, err = self:read("l")
    if err then error(tostring(err), 2) end
    return l
  end
end

--- terminal:expect(pattern [, timeout | ctx]) -> captures | nil, err.
-- Reads until the Lua pattern matches the unread output, consumes the output up to
-- the end of the match and returns the pattern's captures (the whole match when it
-- has none). terminal.before then holds the output before the match and
-- terminal.after (also terminal.match) the match, as in pexpect. A limit that runs out gives err:is(errors.ErrTimeout),
-- the end of output an error with err.eof = true; either way err.output holds the
-- unread output seen so far, which stays unread.
function Terminal:expect(pattern, limit)
  if type(pattern) ~= "string" then
    error("bad argument #1 to 'expect' (string expected, got " .. type(pattern) .. ")", 2)
  end
  local deadline, ctx = wait.limit(limit)
  while true do
    local p = self._pending
    if p then
      local r = { find(p, pattern) }
      if r[1] then
        local s, e = r[1], r[2]
        self.before, self.match = sub(p, 1, s - 1), sub(p, s, e)
        self.after = self.match
        take(self, e)
        if #r > 2 then return unpack(r, 3) end
        return self.match
      end
    end
    local err
    if self._eof then
      err = errors.new { op = "expect", msg = "expect: end of output before " .. ("%q"):format(pattern) }
      err.eof = true
    else
      local ok
      ok, err = fill(self, deadline, ctx, "expect")
      if ok then err = nil end
    end
    if err then
      -- a fresh object for the output: err may be shared (a context's sentinel error)
      if not err.eof then err = errors.wrap(err) end
      err.output = self._pending or ""
      return nil, err
    end
  end
end

--- terminal:write(...) -> true | nil, err. Writes every string fully, as typed at the
-- terminal: the line discipline echoes it and turns "\3" into SIGINT, "\26" into
-- SIGTSTP and "\4" at a line's start into end of file for the child.
function Terminal:write(...)
  for i = 1, select("#", ...) do
    local s = select(i, ...)
    if type(s) == "number" then s = tostring(s) end
    if type(s) ~= "string" then error("bad argument #" .. i .. " to 'write' (string expected)", 2) end
    local pos = 1
    while pos <= #s do
      local fd = master(self)
      if not fd then return nil, closed_error("write") end
      local n, errno = fd:write(s, pos)
      if n then pos = pos + n
      elseif n == nil then return nil, errors.from_errno("write", nil, errno)
      else
        local ok, err = wait_io(self, fd, "w", nil, nil)
        if ok == nil then return nil, err end
      end
    end
  end
  return true
end

--- terminal:resize(rows, cols) -> true | nil, err. Sets the window size; the child's
-- foreground process group gets SIGWINCH.
function Terminal:resize(rows, cols)
  check_dim(rows, "rows", "resize", 1)
  check_dim(cols, "cols", "resize", 2)
  local fd = master(self)
  if not fd then return nil, closed_error("resize") end
  local ok, errno = core.pty_resize(fd, rows, cols)
  if not ok then return nil, errors.from_errno("resize", nil, errno) end
  return true
end

--- terminal:size() -> rows, cols | nil, err.
function Terminal:size()
  local fd = master(self)
  if not fd then return nil, closed_error("size") end
  local rows, cols = core.pty_size(fd)
  if not rows then return nil, errors.from_errno("size", nil, cols) end
  return rows, cols
end

--- terminal:name() -> the path of the terminal's slave ("/dev/pts/3") | nil, err.
function Terminal:name()
  local fd = master(self)
  if not fd then return nil, closed_error("name") end
  local name, errno = core.pty_name(fd)
  if not name then return nil, errors.from_errno("name", nil, errno) end
  return name
end

--- terminal:close() -> true. Closes the master (and the slave if the command never
-- started): the child's terminal hangs up, so its session gets SIGHUP. Idempotent.
function Terminal:close()
  if self._fd then self._fd:close(); self._fd = nil end
  self:_close_slave()
  return true
end

-- The parent's copy of the slave: closed once the child has it (or never will), so the
-- child's exit reads as the end of output.
function Terminal:_close_slave()
  if self._slave then self._slave:close(); self._slave = nil end
end

--- terminal:pollfd() -> the master fd (-1 when closed); events() -> "r"; timeout() -> nil:
-- the pollable protocol (poll, cqueues, tether.wait_any).
function Terminal:pollfd()
  local fd = master(self)
  return fd and fd:getfd() or -1
end
function Terminal:_ready()
  return self._pending ~= nil or self._eof or not master(self) or core.poll(self._fd, "r", 0) == true
end
function Terminal:events() return "r" end
function Terminal:timeout() return nil end

function Terminal:__tostring()
  local fd = master(self)
  return fd and ("tether.Terminal (" .. fd:getfd() .. ")") or "tether.Terminal (closed)"
end
Terminal.__gc = Terminal.close
Terminal.__close = Terminal.close

M.Terminal = Terminal
return M
