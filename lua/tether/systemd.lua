--- tether.systemd: readiness notification, socket activation and the watchdog, without libsystemd.
--
-- notify speaks sd_notify's wire protocol: one datagram of "KEY=VALUE\n" lines to the
-- AF_UNIX socket named by $NOTIFY_SOCKET (a path, or "@name" in the abstract namespace).
-- listen_fds follows sd_listen_fds: fds 3, 4, ... passed by the service manager when
-- $LISTEN_PID is our pid. watchdog_interval reads $WATCHDOG_USEC / $WATCHDOG_PID.
-- Not under systemd (the variables unset), each says so plainly instead of failing.
local core = require "tether.core"
local errors = require "tether.errors"

local type, tostring, tonumber, pairs, ipairs, select, error = type, tostring, tonumber, pairs, ipairs, select, error
local find, format = string.find, string.format
local sort, concat = table.sort, table.concat

local M = {}

--- The message notify returns as its second value when $NOTIFY_SOCKET is unset.
M.NOT_UNDER_SYSTEMD = "not under systemd"

local function argerror(n, fname, msg)
  error(format("bad argument #%d to '%s' (%s)", n, fname, msg), 3)
end

-- A value of a notify table as text: strings as they are, integers without ".0",
-- true/false as 1/0.
local function value_text(k, v)
  local t = type(v)
  if t == "string" then return v end
  if t == "boolean" then return v and "1" or "0" end
  if t == "number" then
    if v == math.floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then return format("%d", v) end
    return tostring(v)
  end
  argerror(1, "notify", format("value of %s must be a string, number or boolean, got %s", k, t))
end

-- The datagram for notify's argument; raises naming the argument.
local function message(state)
  if type(state) == "string" then
    if state == "" then argerror(1, "notify", "state must not be empty") end
    if find(state, "\0", 1, true) then argerror(1, "notify", "state contains NUL") end
    return state
  end
  if type(state) ~= "table" then
    argerror(1, "notify", "string or table expected, got " .. type(state))
  end
  local keys = {}
  for k in pairs(state) do
    if type(k) ~= "string" or k == "" or find(k, "[=\n%z]") then
      argerror(1, "notify", "keys must be non-empty strings without '=', newline or NUL")
    end
    keys[#keys + 1] = k
  end
  if #keys == 0 then argerror(1, "notify", "state must not be empty") end
  -- READY=1 first (as systemd's own tools send it), the rest in name order.
  sort(keys, function(a, b)
    if (a == "READY") ~= (b == "READY") then return a == "READY" end
    return a < b
  end)
  local lines = {}
  for i, k in ipairs(keys) do
    local v = value_text(k, state[k])
    if find(v, "[\n%z]") then argerror(1, "notify", "value of " .. k .. " contains a newline or NUL") end
    lines[i] = k .. "=" .. v
  end
  return concat(lines, "\n") .. "\n"
end

local function unset(...)
  for i = 1, select("#", ...) do core.env_unset((select(i, ...))) end
end

--- systemd.notify(state [, unset_env]) -> true | false, "not under systemd" | nil, err.
-- Sends state to the service manager (sd_notify). state is a string of
-- newline-separated assignments ("READY=1", "STATUS=loading\nREADY=1") sent as is,
-- or a table {READY=1, STATUS="..."} (values: strings, numbers, booleans as 1/0;
-- READY first, then the rest by name). When $NOTIFY_SOCKET is unset it returns
-- false, systemd.NOT_UNDER_SYSTEMD and sends nothing: a program run by hand
-- needs no special case. An unusable address (EINVAL: relative, vsock:, too long)
-- or a failed send gives nil, err
-- (err.op "notify", err.path the address, err.errno). unset_env = true removes
-- $NOTIFY_SOCKET afterwards, so children do not inherit it.
-- Raises naming the argument for an empty state, NUL, or a bad table.
function M.notify(state, unset_env)
  local msg = message(state)
  local addr = core.env_get("NOTIFY_SOCKET")
  if unset_env then unset("NOTIFY_SOCKET") end
  if addr == nil or addr == "" then return false, M.NOT_UNDER_SYSTEMD end
  if addr:sub(1, 1) ~= "/" and addr:sub(1, 1) ~= "@" then
    -- vsock: and other families are not supported
    return nil, errors.from_errno("notify", addr, core.errno.EINVAL)
  end
  local ok, errno = core.notify_send(addr, msg)
  if not ok then return nil, errors.from_errno("notify", addr, errno) end
  return true
end

--- systemd.notify_watchdog() -> as notify: sends "WATCHDOG=1" (call it more often
-- than watchdog_interval() says).
function M.notify_watchdog()
  return M.notify("WATCHDOG=1")
end

-- A variable holding a non-negative decimal integer: the number, nil when unset,
-- false when set but malformed.
local function env_int(name)
  local v = core.env_get(name)
  if v == nil then return nil end
  if not v:match("^%d+$") then return false end
  return tonumber(v)
end

--- systemd.listen_fds([unset_env]) -> list of {fd=, name=} | nil, err.
-- The fds the service manager passed (socket activation, sd_listen_fds): when
-- $LISTEN_PID equals our pid, $LISTEN_FDS fds starting at 3, each marked
-- FD_CLOEXEC so commands we run do not inherit them, named from the
-- colon-separated $LISTEN_FDNAMES ("unknown" when it is unset, as systemd).
-- An empty list when none were passed to this process ($LISTEN_PID unset or
-- another pid's). Malformed variables or an fd that is not open give nil, err
-- (err.op "listen_fds", errno EINVAL or EBADF). unset_env = true removes
-- $LISTEN_PID, $LISTEN_FDS and $LISTEN_FDNAMES in every case.
function M.listen_fds(unset_env)
  local pid, n = env_int("LISTEN_PID"), env_int("LISTEN_FDS")
  local names = core.env_get("LISTEN_FDNAMES")
  if unset_env then unset("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES") end
  if pid == nil then return {} end
  local function invalid(what)
    return nil, errors.new { op = "listen_fds", path = what, errno = core.errno.EINVAL }
  end
  if pid == false then return invalid("LISTEN_PID") end
  if pid ~= core.pid() then return {} end
  if n == nil then return {} end
  if n == false or n > 65536 then return invalid("LISTEN_FDS") end
  local list = {}
  local given = {}
  if names ~= nil then
    for name in (names .. ":"):gmatch("([^:]*):") do given[#given + 1] = name end
    if #given ~= n then return invalid("LISTEN_FDNAMES") end
  end
  for i = 1, n do
    local fd = 2 + i
    local ok, errno = core.set_cloexec(fd)
    if not ok then return nil, errors.from_errno("listen_fds", "fd " .. fd, errno) end
    list[i] = { fd = fd, name = given[i] or "unknown" }
  end
  return list
end

--- systemd.watchdog_interval() -> seconds | nil | nil, err.
-- The interval the service manager expects WATCHDOG=1 within ($WATCHDOG_USEC,
-- in seconds), when the watchdog is on for this process ($WATCHDOG_PID unset
-- or our pid). nil when it is off. Malformed variables give nil, err (EINVAL).
-- Send notify_watchdog() at about half this interval.
function M.watchdog_interval()
  local usec, pid = env_int("WATCHDOG_USEC"), env_int("WATCHDOG_PID")
  local function invalid(what)
    return nil, errors.new { op = "watchdog_interval", path = what, errno = core.errno.EINVAL }
  end
  if usec == nil then return nil end
  if not usec or usec == 0 then return invalid("WATCHDOG_USEC") end
  if pid == false or pid == 0 then return invalid("WATCHDOG_PID") end
  if pid and pid ~= core.pid() then return nil end
  return usec / 1e6
end

--- systemd.listen(addr) -> a tether fd | nil, err: a datagram socket bound to addr
-- ("/path" or "@abstract"), O_CLOEXEC and non-blocking, receiving what notify
-- sends there: fd:read(4096) returns one datagram (false when none is waiting),
-- fd:getfd() the fd to wait on, fd:close() closes it. For tests and for programs
-- that act as a service manager (set NOTIFY_SOCKET for a child to addr).
-- Raises naming the argument when addr is not a string.
function M.listen(addr)
  if type(addr) ~= "string" then argerror(1, "listen", "string expected, got " .. type(addr)) end
  local fd, errno = core.notify_listen(addr)
  if not fd then return nil, errors.from_errno("listen", addr, errno) end
  return fd
end

return M
