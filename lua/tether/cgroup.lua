--- tether.cgroup: containment, a cgroup v2 group of its own for a command.
--
-- With `cmd.cgroup = true` (or a table of limits) a command starts inside a
-- new group below the root (`tether.cgroup_root()`), named
-- `tether-<pid>-<n>` after the tether process that made it. Cancel and
-- timeout kill the whole group (cgroup.kill), so a grandchild that called
-- setsid or double-forked goes too; wait also waits until the group is
-- empty (cgroup.events "populated 0", waited for with poll POLLPRI on that
-- file, never polled in a loop) and then removes it. The C side (src/cgroup.c, spawn in
-- src/process.c) places the child: clone3(CLONE_INTO_CGROUP) where the
-- kernel has it, else the child writes cgroup.procs before execve.
-- See docs/containment.md.
local core = require "tether.core"
local errors = require "tether.errors"

local type, tostring, setmetatable, error = type, tostring, setmetatable, error
local format, find = string.format, string.find

local E = core.errno

local M = {}

-- The root set by tether.cgroup_root(path); nil = the default (discovered).
local chosen
-- Groups made so far by this process (the n in tether-<pid>-<n>).
local counter = 0
-- Groups not removed yet (group -> true), and who they belong to (group -> owner, weak):
-- a group whose owner (its Cmd) was collected without a wait is removed by the next
-- create once it is empty, as collected processes are reaped in the background.
local made = {}
local owners = setmetatable({}, { __mode = "v" })

-- Removes the groups of collected owners that are empty by now.
local function sweep()
  for g in pairs(made) do
    if owners[g] == nil and not g:populated() then g:remove() end
  end
end
--- Placement, for tests: "clone3" (default: clone3 where it works, else the
-- child writes cgroup.procs) or "procs" (the child always writes cgroup.procs).
M.placement = "clone3"

-- The lines of a file, or nil (also tether.cpus' reader of cpu.max).
local function read_lines(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local lines = {}
  for l in f:lines() do lines[#lines + 1] = l end
  f:close()
  return lines
end
M._read_lines = read_lines

--- mount() -> the path where the cgroup v2 hierarchy is mounted (from
-- /proc/self/mountinfo; "/sys/fs/cgroup" on a unified host,
-- "/sys/fs/cgroup/unified" in a hybrid layout), and the mount's own root
-- within the hierarchy; nil when there is no cgroup v2 mount.
function M.mount()
  for _, l in ipairs(read_lines("/proc/self/mountinfo") or {}) do
    local r, m, fstype = l:match("^%S+ %S+ %S+ (%S+) (%S+) .- %- (%S+)")
    if fstype == "cgroup2" then return (m:gsub("\\040", " ")), r end
  end
  return nil
end

--- default_root() -> the directory of the cgroup v2 group this process runs
-- in ("0::/path" in /proc/self/cgroup, below the v2 mount) | nil, reason.
function M.default_root()
  local mnt, mroot = M.mount()
  if not mnt then return nil, "no cgroup v2 hierarchy is mounted (see /proc/self/mountinfo)" end
  local cg
  for _, l in ipairs(read_lines("/proc/self/cgroup") or {}) do
    cg = cg or l:match("^0::(/.*)$")
  end
  if not cg then return nil, "this process is in no cgroup v2 group (/proc/self/cgroup has no 0:: line)" end
  if mroot and mroot ~= "/" and cg:sub(1, #mroot) == mroot then cg = cg:sub(#mroot + 1) end
  cg = cg:gsub("/+$", "")
  return mnt .. cg
end

--- tether.cgroup_root([path]) -> the root in use | nil, err.
-- With path (an absolute directory of a cgroup v2 hierarchy): commands with
-- cmd.cgroup get their groups below it from now on; false goes back to the
-- default. Without: the root in use, the one set or else the default (the
-- cgroup tether runs in); nil, err when there is no cgroup v2 group to use.
-- Whether tether may write there is found out when a command starts (a
-- failure there has err.step == "cgroup").
function M.root(path)
  if path ~= nil then
    if path == false then chosen = nil
    elseif type(path) ~= "string" or path:sub(1, 1) ~= "/" or find(path, "\0", 1, true) then
      error("bad argument #1 to 'cgroup_root' (absolute path or false expected)", 2)
    else chosen = (path:gsub("(.)/+$", "%1")) end
  end
  if chosen then return chosen end
  local r, why = M.default_root()
  if r then return r end
  return nil, errors.new { op = "cgroup", msg = "cgroup: " .. why, step = "cgroup" }
end

-- Limits: cmd.cgroup field -> control file and controller.
local LIMITS = {
  { field = "memory_max", file = "memory.max", controller = "memory" },
  { field = "pids_max", file = "pids.max", controller = "pids" },
  { field = "cpu_max", file = "cpu.max", controller = "cpu" },
}

local function int(v) return type(v) == "number" and v >= 0 and v == math.floor(v) and v < 2^53 end

-- The control file's text for a limit; raises naming the field when v is no valid limit.
local function limit_text(field, v, level)
  if v == "max" then return "max" end
  if field == "memory_max" then
    if int(v) then return format("%d", v) end
    if type(v) == "string" and v:match("^%d+[KMGTkmgt]?$") then return v end
    error("exec: cmd.cgroup.memory_max must be bytes (an integer, \"512M\") or \"max\"", level)
  elseif field == "pids_max" then
    if int(v) and v > 0 then return format("%d", v) end
    error("exec: cmd.cgroup.pids_max must be a positive integer or \"max\"", level)
  end
  -- cpu_max: a number of CPUs (0.5 = half of one), or cpu.max's own "QUOTA PERIOD"
  if type(v) == "number" and v > 0 and v < 1e6 then
    return format("%d 100000", math.max(1000, math.floor(v * 100000 + 0.5)))
  end
  if type(v) == "string" and (v:match("^%d+ %d+$") or v:match("^max %d+$")) then return v end
  error("exec: cmd.cgroup.cpu_max must be a number of CPUs, \"QUOTA PERIOD\" or \"max\"", level)
end

--- check(v [, level]) -> the limits as {file, controller, text} entries (an empty
-- list for true); raises (at level, default 2) naming the field when cmd.cgroup is
-- anything else.
function M.check(v, level)
  level = (level or 2) + 1
  if v == true then return {} end
  if type(v) ~= "table" then error("exec: cmd.cgroup must be true or a table of limits", level) end
  for k in pairs(v) do
    local known = false
    for _, l in ipairs(LIMITS) do known = known or l.field == k end
    if not known then error("exec: cmd.cgroup has an unknown key " .. format("%q", tostring(k)), level) end
  end
  local out = {}
  for _, l in ipairs(LIMITS) do
    if v[l.field] ~= nil then
      out[#out + 1] = { field = l.field, file = l.file, controller = l.controller, text = limit_text(l.field, v[l.field], level + 1) }
    end
  end
  return out
end

---------------------------------------------------------------------------
-- Group: one command's cgroup

local Group = {}
Group.__index = Group
Group.__name = "tether.cgroup.Group"

-- An error for start: step "cgroup", a message naming the command and saying why.
local function fail(what, why, errno, path)
  return errors.new { op = "cgroup", path = path, errno = errno, step = "cgroup",
    msg = format("exec: %s: cgroup: %s", what, why) }
end

local function strerror(errno) return core.strerror(errno):gsub("^%u%l", string.lower) end

--- create(spec, what [, owner]) -> Group | nil, err: makes a new group below the root
-- with the limits of spec (cmd.cgroup); what names the command in messages. When owner
-- (the Cmd) is collected before the group was removed, a later create removes the group
-- once it is empty.
function M.create(spec, what, owner)
  local limits = M.check(spec, 2)
  sweep()
  local root, rerr = M.root()
  if not root then return nil, fail(what, tostring(rerr):gsub("^cgroup: ", ""), nil, nil) end
  local rfd, errno = core.cgroup_open(root)
  if not rfd then
    return nil, fail(what, format("cannot open the root %s: %s", root, strerror(errno)), errno, root)
  end
  -- A limit needs its controller enabled for the root's children.
  local sub = core.cgroup_read(rfd, "cgroup.subtree_control")
  rfd:close()
  if not sub then
    return nil, fail(what, format("%s is not a cgroup v2 group (no cgroup.subtree_control)", root), E.ENOTDIR, root)
  end
  for _, l in ipairs(limits) do
    if not find(" " .. sub .. " ", "%s" .. l.controller .. "%s") then
      return nil, fail(what, format("%s needs the %s controller, which %s/cgroup.subtree_control does not enable%s",
        l.field, l.controller, root, sub:match("%S") and " (it has: " .. sub:gsub("%s+$", "") .. ")" or " (it is empty)"),
        E.EOPNOTSUPP, root)
    end
  end
  counter = counter + 1
  local path = format("%s/tether-%d-%d", root, core.pid(), counter)
  local ok
  ok, errno = core.cgroup_mkdir(path)
  if not ok then
    local why = format("cannot make a group below %s: %s", root, strerror(errno))
    if errno == E.EACCES or errno == E.EPERM or errno == E.EROFS then
      why = why .. " (tether needs a delegated cgroup v2 subtree: see docs/containment.md)"
    end
    return nil, fail(what, why, errno, path)
  end
  local g = setmetatable({ path = path }, Group)
  made[g], owners[g] = true, owner
  g.fd, errno = core.cgroup_open(path)
  if g.fd then
    for _, l in ipairs(limits) do
      ok, errno = core.cgroup_write(g.fd, l.file, l.text)
      if not ok then
        g:remove()
        return nil, fail(what, format("cannot set %s (%s = %q): %s", l.field, l.file, l.text, strerror(errno)), errno, path)
      end
    end
    g.watch, errno = core.cgroup_events(g.fd)
  end
  if not g.watch then
    g:remove()
    return nil, fail(what, format("cannot open %s/cgroup.events: %s", path, strerror(errno)), errno, path)
  end
  return g
end

--- group:spawn_fields(spec) -> spec with the fields core.spawn needs to place the child.
function Group:spawn_fields(spec)
  spec.cgroup = self.fd
  spec.cgroup_procs = M.placement == "procs" or nil
  return spec
end

--- group:spawn_error(what, errno) -> the error for a child that could not be placed in
-- the group (spawn's step "cgroup").
function Group:spawn_error(what, errno)
  return fail(what, format("cannot place the child in %s: %s", self.path, strerror(errno)), errno, self.path)
end

--- group:pollfd() -> the group's open cgroup.events, ready for events() ("p",
-- POLLPRI) once it changed after the last populated().
function Group:pollfd() return self.watch and self.watch:getfd() or -1 end
--- group:events() -> "p": wait for priority data (POLLPRI), not for "r".
function Group:events() return "p" end

--- group:populated() -> whether a process is still in the group. Reads
-- cgroup.events through the fd pollfd() gives, so a change after this read
-- wakes the next wait.
function Group:populated()
  if not self.watch then return false end
  local p = core.cgroup_populated(self.watch)
  return p == true -- nil: removed under us, nothing can be in it
end

--- group:kill() -> true | nil, err: SIGKILL to every process in the group
-- (cgroup.kill; before Linux 5.14, freeze and kill every pid).
function Group:kill()
  if not self.fd then return nil, errors.ErrProcessDone end
  self.killed = true
  local ok, errno = core.cgroup_kill(self.fd, M.legacy_kill)
  if ok then return true end
  return nil, errors.from_errno("cgroup.kill", self.path, errno)
end

--- group:signal(sig) -> true | nil, err: sends signal number or name sig to every
-- process in the group (SIGKILL goes through kill()).
function Group:signal(sig)
  local n = sig
  if type(sig) == "string" then
    local name = sig:upper()
    n = core.signals[name:sub(1, 3) == "SIG" and name or "SIG" .. name]
  end
  if type(n) ~= "number" then error("bad argument #1 to 'signal' (signal name or number expected)", 2) end
  if n == core.signals.SIGKILL then return self:kill() end
  if not self.fd then return nil, errors.ErrProcessDone end
  local procs, errno = core.cgroup_read(self.fd, "cgroup.procs")
  if not procs then return nil, errors.from_errno("signal", self.path, errno) end
  for pid in procs:gmatch("%d+") do core.kill(tonumber(pid), n) end
  return true
end

--- group:usage() -> {cpu =, user =, system = (seconds, cpu.stat), memory_peak =
-- (bytes, memory.peak; nil without the memory controller)}.
function Group:usage()
  local u = {}
  local stat = self.fd and core.cgroup_read(self.fd, "cpu.stat") or ""
  u.cpu = (tonumber(stat:match("usage_usec (%d+)")) or 0) / 1e6
  u.user = (tonumber(stat:match("user_usec (%d+)")) or 0) / 1e6
  u.system = (tonumber(stat:match("system_usec (%d+)")) or 0) / 1e6
  local peak = self.fd and core.cgroup_read(self.fd, "memory.peak")
  u.memory_peak = peak and tonumber(peak:match("%d+")) or nil
  return u
end

--- group:remove() -> true | nil, err: closes the group's fds and removes its
-- directory (EBUSY while a process is still in it). Idempotent.
function Group:remove()
  if self.watch then self.watch:close(); self.watch = nil end
  if self.fd then self.fd:close(); self.fd = nil end
  if self.removed then return true end
  local ok, errno = core.cgroup_rmdir(self.path)
  if ok or errno == E.ENOENT then self.removed = true; made[self] = nil; return true end
  return nil, errors.from_errno("rmdir", self.path, errno)
end

function Group:__tostring() return "tether.cgroup(" .. self.path .. ")" end

M.Group = Group

return M
