-- spec/helpers/util.lua: observing processes from outside, for the specs.
--
-- Everything here reads /proc or runs a shell; nothing uses tether, so the
-- observations are independent of the code under test.
--
--   util.root                 absolute path of the repository
--   util.lua()                the interpreter for helper children ($TETHER_LUA)
--   util.child(mode, ...)     argv {lua, <root>/spec/helpers/child.lua, mode, ...}
--   util.pattern(tag, n)      the bytes child.lua's `write` mode produces
--   util.pid()                this process's pid (from /proc/self/stat)
--   util.child_script         absolute path of child.lua
--   util.fds_of([pid])        sorted list of open fd numbers (default: ours;
--                             the listing's own popen pipe left out)
--   util.fd_count([pid])      #util.fds_of(pid)
--   util.scale(n)             n, or n / TETHER_SCALE (a tenth under valgrind)
--   util.fd_summary([pid])    "fd:target ..." for failure messages
--   util.fd_target(pid, fd)   readlink of /proc/<pid>/fd/<fd>, or nil
--   util.fd_of(path)          the fd number of ours that points at path
--   util.zombies_of(ppid)     number of zombie children of ppid
--   util.children_of(ppid)    list of pids whose parent is ppid
--   util.stat_of(pid)         {pid, state, ppid, pgrp, session} or nil
--   util.status_of(pid)       /proc/<pid>/status fields as a table, or nil
--   util.alive(pid)           true while /proc/<pid> exists and is no zombie
--   util.wait_gone(pid, s)    poll up to s seconds until not alive
--   util.tmpname()            a fresh temporary file name (file created)
--   util.tmpdir()             a fresh temporary directory
--   util.mkfifo()             a fresh FIFO in a fresh directory (both removed at cleanup)
--   util.readfile(path)       whole content, or nil
--   util.writefile(path, s [, mode])
--   util.sh(cmd)              run cmd with /bin/sh, return stdout, exit code
--   util.lua_run(script, opts) run `timeout T lua -e script` through the
--                             shell: stdout, stderr, exit code
--   util.sleep(s)             sleep without tether (/bin/sleep)
--   util.shquote(s)           s quoted for /bin/sh
--   util.defer(fn), util.cleanup()  run registered clean-ups (after_each)
--   util.reap_later(cmd)      defer killing and waiting a started Cmd
local M = {}

local function shquote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.shquote = shquote

-- The repository root: this file is <root>/spec/helpers/util.lua.
local function find_root()
  local src = debug.getinfo(1, "S").source
  local path = src:sub(1, 1) == "@" and src:sub(2) or nil
  if path and path:sub(1, 1) ~= "/" then
    path = (os.getenv("PWD") or ".") .. "/" .. path
  end
  if path then
    local root = path:match("^(.*)/spec/helpers/util%.lua$")
    if root then return (root:gsub("/%./", "/")) end
  end
  return os.getenv("PWD")
end
M.root = find_root()

function M.lua()
  return os.getenv("TETHER_LUA") or "lua5.4"
end

M.child_script = M.root .. "/spec/helpers/child.lua"

function M.child(mode, ...)
  return { M.lua(), M.child_script, mode, ... }
end

-- Same as in child.lua (memoized: specs compare the same big strings often).
local patterns = {}
function M.pattern(tag, n)
  local key = tag .. n
  if not patterns[key] then patterns[key] = M.pattern_uncached(tag, n) end
  return patterns[key]
end

M.pattern_uncached = require "helpers.pattern"

function M.readfile(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

function M.writefile(path, s, mode)
  local f = assert(io.open(path, mode or "wb"))
  f:write(s)
  f:close()
end

local mypid
function M.pid()
  if not mypid then
    mypid = tonumber(M.readfile("/proc/self/stat"):match("^(%d+)"))
  end
  return mypid
end

function M.sh(cmd)
  -- The status travels in the output: Lua 5.1's close() does not give it.
  local p = assert(io.popen("(" .. cmd .. "\n); printf '\\n%d' $?", "r"))
  local out = p:read("*a")
  p:close()
  local body, code = out:match("^(.*)\n(%d+)$")
  if not body then return out, nil end
  return body, tonumber(code)
end

-- "FD TARGET" lines for pid's open fds, listed by one `ls -l` run with io.popen (one
-- process: the leak check runs around every test). Listing our own fds that way shows
-- the popen pipe, and (racily) its other end that glibc closes while ls starts: ls also
-- lists its own stdout (/proc/self/fd/1, that same pipe), and both are left out, so the
-- listing is exact.
local function fd_lines(pid)
  local p = assert(io.popen("exec ls -l /proc/" .. (pid or M.pid()) .. "/fd/ /proc/self/fd/1 2>/dev/null", "r"))
  local out = p:read("*a")
  p:close()
  local me = out:match("/proc/self/fd/1 %-> ([^\n]*)")
  local lines = {}
  for fd, target in out:gmatch("%s(%d+) %-> ([^\n]*)") do
    if target ~= me then lines[#lines + 1] = fd .. " " .. target end
  end
  return table.concat(lines, "\n")
end

function M.fds_of(pid)
  local list = {}
  for n in fd_lines(pid):gmatch("(%d+) [^\n]*") do list[#list + 1] = tonumber(n) end
  table.sort(list)
  return list
end

-- Loops that repeat a spawn or a task to catch a leak still repeat it, at 1/TETHER_SCALE of
-- the count: CI's extra runs (other Lua versions, ASan) set it so that the whole CI fits its
-- time; the main run keeps the full counts. Under valgrind every spawn forks a whole
-- memcheck: a tenth unless TETHER_SCALE says otherwise.
function M.scale(n)
  local div = tonumber(os.getenv("TETHER_SCALE") or "") or (os.getenv("TETHER_VALGRIND") and 10) or 1
  if div <= 1 then return n end
  return math.max(1, math.floor(n / div))
end

function M.fd_count(pid)
  return #M.fds_of(pid)
end

-- "fd:target fd:target ..." of pid (default: us), sorted, for messages.
function M.fd_summary(pid)
  local t = {}
  for fd, target in fd_lines(pid):gmatch("(%d+) ([^\n]*)") do t[#t + 1] = { tonumber(fd), target } end
  table.sort(t, function(a, b) return a[1] < b[1] end)
  for i, e in ipairs(t) do t[i] = e[1] .. ":" .. e[2] end
  return table.concat(t, " ")
end

function M.fd_target(pid, fd)
  local out = M.sh("readlink /proc/" .. pid .. "/fd/" .. fd .. " 2>/dev/null")
  out = out:gsub("\n$", "")
  if out == "" then return nil end
  return out
end

-- The fd of this process that points at path (the first one).
function M.fd_of(path)
  for fd, target in fd_lines():gmatch("(%d+) ([^\n]*)") do
    if target == path then return tonumber(fd) end
  end
  return nil
end

function M.stat_of(pid)
  local s = M.readfile("/proc/" .. pid .. "/stat")
  if not s then return nil end
  -- pid (comm) state ppid pgrp session ...
  local rest = s:match(".*%) (.*)$")
  local f = {}
  for w in rest:gmatch("%S+") do f[#f + 1] = w end
  return { pid = tonumber(pid), state = f[1], ppid = tonumber(f[2]),
           pgrp = tonumber(f[3]), session = tonumber(f[4]) }
end

function M.status_of(pid)
  local s = M.readfile("/proc/" .. pid .. "/status")
  if not s then return nil end
  local t = {}
  for k, v in s:gmatch("([%w_]+):%s*([^\n]*)") do t[k] = v end
  return t
end

function M.children_of(ppid)
  -- List /proc with a shell, then read each stat from Lua once the shell
  -- (itself our child) is gone.
  local p = assert(io.popen("exec ls /proc", "r"))
  local names = p:read("*a")
  p:close()
  local list = {}
  for pid in names:gmatch("%d+") do
    local st = M.stat_of(pid)
    if st and st.ppid == ppid then list[#list + 1] = { pid = st.pid, state = st.state } end
  end
  return list
end

function M.zombies_of(ppid)
  local n = 0
  for _, c in ipairs(M.children_of(ppid or M.pid())) do
    if c.state == "Z" then n = n + 1 end
  end
  return n
end

function M.alive(pid)
  local st = M.stat_of(pid)
  return st ~= nil and st.state ~= "Z" and st.state ~= "X"
end

function M.sleep(s)
  os.execute("sleep " .. tonumber(s))
end

function M.wait_gone(pid, seconds)
  local deadline = os.time() + (seconds or 5) + 1
  while M.alive(pid) do
    if os.time() > deadline then return false end
    M.sleep(0.02)
  end
  return true
end

function M.tmpname()
  return os.tmpname()
end

function M.tmpdir()
  local out = M.sh("mktemp -d /tmp/tether-spec.XXXXXX")
  return (out:gsub("%s+$", ""))
end

function M.mkfifo()
  local dir = M.tmpdir()
  local path = dir .. "/fifo"
  M.defer(function() os.remove(path); os.remove(dir) end)
  local _, code = M.sh("mkfifo " .. shquote(path))
  assert(code == 0, "mkfifo failed")
  return path
end

-- Run `lua -e script` (with LUA_PATH/LUA_CPATH inherited) under `timeout`,
-- through the shell. opts.prefix: a shell prefix (e.g. a wrapper program);
-- opts.timeout (seconds, default 20). Returns stdout, stderr, exit code.
function M.lua_run(script, opts)
  opts = opts or {}
  local errf = os.tmpname()
  local cmd = string.format("timeout -s KILL %d %s %s -e %s 2>%s",
    opts.timeout or 20, opts.prefix or "", shquote(M.lua()), shquote(script), shquote(errf))
  local out, code = M.sh(cmd)
  local err = M.readfile(errf)
  os.remove(errf)
  return out, err, code
end

local deferred = {}
function M.defer(fn)
  deferred[#deferred + 1] = fn
end

function M.cleanup()
  local list = deferred
  deferred = {}
  for i = #list, 1, -1 do pcall(list[i]) end
end

-- Stop a started Cmd whatever happens to the test: kill its process (through
-- tether, then with kill(1) as a fallback) and wait it.
function M.reap_later(cmd)
  M.defer(function()
    local p = cmd.process
    if p and p.pid and M.alive(p.pid) then
      pcall(p.kill, p)
      if M.alive(p.pid) then os.execute("kill -KILL " .. p.pid .. " 2>/dev/null") end
    end
    if p and not cmd.process_state then pcall(cmd.wait, cmd) end
  end)
  return cmd
end

-- The check that every test of a spec file leaves no zombie child and no new open
-- fd behind, as three hooks for busted (which gives setup/before_each/after_each to
-- spec files only):  local warm, mark, check = util.no_leaks()
--                    setup(warm); before_each(mark); after_each(check)
-- warm_up (optional) runs once first, to open what tether keeps open for the life
-- of the process (/dev/null, the signal pipe).
function M.no_leaks(warm_up)
  local tether, exec = require "tether", require "tether.exec"
  local check_that = require "luassert" -- busted's assert, outside a spec file's environment
  local base_fds
  local function warm()
    assert(exec.command("true"):run()) -- let tether open whatever it keeps open
    if warm_up then warm_up() end
  end
  local function mark()
    collectgarbage(); collectgarbage()
    base_fds = M.fd_summary()
  end
  local function check()
    M.cleanup()
    -- LuaJIT: a compiled trace can hold an object of the test as a constant (a context
    -- and its eventfd, seen in CI's LuaJIT run), which no collection frees until the trace
    -- goes: drop the traces first.
    if jit then jit.flush() end
    collectgarbage(); collectgarbage()
    tether.sleep(0.01)
    check_that.are.equal(0, M.zombies_of(), "zombie children left behind")
    local fds = M.fd_summary()
    for _ = 1, 10 do -- what tether closes in the background (a collected process's pidfd)
      if fds == base_fds then break end
      collectgarbage(); collectgarbage()
      tether.sleep(0.05)
      fds = M.fd_summary()
    end
    check_that.are.equal(base_fds, fds, "open fds changed")
  end
  return warm, mark, check
end

return M
