-- spec/helpers/child.lua MODE ARGS... : the helper child the exec specs spawn.
--
-- Plain Lua (5.1 to 5.4), never loads tether: it is the thing under
-- observation, not the thing under test. Run it as
--   $TETHER_LUA spec/helpers/child.lua MODE ARGS...
-- (spec/helpers/util.lua's util.child(mode, ...) builds that argv).
--
-- Modes:
--   echo ARGS...     print ARGS joined by one space, then "\n"
--   cat              copy stdin to stdout line by line, flushing each line,
--                    until EOF (so a reader sees each line as it is written);
--                    killed by a watchdog after 60 s
--   exit N           exit with status N
--   hang [SECONDS]   print "ready\n", flush, then read stdin until EOF and
--                    exit 0. A watchdog kills it with SIGKILL after SECONDS
--                    (default 30) so a broken test cannot hang forever.
--   sleep S          sleep S seconds (through /bin/sleep), then exit 0
--   spin S           burn S seconds of CPU time, then exit 0
--   alloc MIB        touch a MIB MiB string (max RSS grows), then exit 0
--   write N [CHUNK]  write N bytes to stdout and N bytes to stderr,
--                    alternating CHUNK-byte pieces (default 65536),
--                    stdout first, each flushed; the bytes are
--                    pattern("o", N) and pattern("e", N) (see below);
--                    killed by a watchdog after 60 s
--   stderr MSG EXIT  write MSG (no newline) to stderr, exit with EXIT
--   env NAME...      print "NAME=value" for each set NAME, "NAME unset"
--                    for each unset one
--   fds              print "FD TARGET" for each open fd of this process
--                    (its /proc/<pid>/fd, listed from a shell so the
--                    listing itself opens no fd here), one per line
--
-- Nothing here can set signal dispositions; specs use sh's `trap` for that.

-- pattern(tag, n): the bytes `write` produces (spec/helpers/pattern.lua, loaded
-- from this script's own folder, whatever LUA_PATH says).
local pattern = dofile(((arg and arg[0] or ""):match("^(.*/)") or "./") .. "pattern.lua")

local function mypid()
  local f = assert(io.open("/proc/self/stat", "r"))
  local pid = f:read("*n")
  f:close()
  return pid
end

-- Kill this process with SIGKILL after `seconds`, so that a parent that
-- never closes our stdin or never drains our output fails a test instead of
-- hanging it. A background shell holding none of our fds but /dev/null.
local function watchdog(seconds)
  local pid = mypid()
  os.execute(string.format(
    "(for fd in 3 4 5 6 7 8 9; do eval \"exec $fd>&-\"; done; sleep %d; " ..
    "grep -q child.lua /proc/%d/cmdline 2>/dev/null && kill -KILL %d) " ..
    "</dev/null >/dev/null 2>&1 &", seconds, pid, pid))
end

local mode = arg[1]
local modes = {}

function modes.echo(...)
  io.write(table.concat({ ... }, " "), "\n")
end

function modes.cat()
  watchdog(60)
  -- "*L" keeps the newline (5.2+, LuaJIT). Plain 5.1 has no "*L" and a block read
  -- waits for a full block, so it copies byte by byte, flushing at each newline.
  if _VERSION ~= "Lua 5.1" or jit then
    while true do
      local s = io.read("*L")
      if not s then break end
      io.write(s)
      io.stdout:flush()
    end
    return
  end
  while true do
    local c = io.read(1)
    if not c then break end
    io.write(c)
    if c == "\n" then io.stdout:flush() end
  end
  io.stdout:flush()
end

function modes.exit(n)
  os.exit(tonumber(n))
end

function modes.hang(seconds)
  watchdog(tonumber(seconds) or 30)
  io.write("ready\n")
  io.stdout:flush()
  while io.read(4096) do end
  os.exit(0)
end

function modes.sleep(s)
  os.execute("exec sleep " .. tonumber(s) .. " </dev/null >/dev/null 2>&1")
end

function modes.spin(s)
  local stop = os.clock() + tonumber(s)
  local x = 0
  while os.clock() < stop do x = x + 1 end
end

function modes.alloc(mib)
  local s = string.rep("x", tonumber(mib) * 1024 * 1024)
  io.write(#s, "\n")
end

function modes.write(n, chunk)
  n, chunk = tonumber(n), tonumber(chunk) or 65536
  watchdog(60)
  local out, err = pattern("o", n), pattern("e", n)
  for i = 1, n, chunk do
    io.stdout:write(out:sub(i, i + chunk - 1))
    io.stdout:flush()
    io.stderr:write(err:sub(i, i + chunk - 1))
    io.stderr:flush()
  end
end

function modes.stderr(msg, code)
  io.stderr:write(msg)
  io.stderr:flush()
  os.exit(tonumber(code))
end

function modes.env(...)
  for _, name in ipairs({ ... }) do
    local v = os.getenv(name)
    if v then io.write(name, "=", v, "\n") else io.write(name, " unset\n") end
  end
end

function modes.fds()
  io.stdout:flush()
  -- system() spawns sh without opening an fd in this process; sh lists ours.
  os.execute(string.format(
    "cd /proc/%d/fd && for f in *; do printf '%%s %%s\\n' \"$f\" \"$(readlink $f)\"; done | sort -n",
    mypid()))
end

local f = modes[mode]
if not f then
  io.stderr:write("child.lua: unknown mode ", tostring(mode), "\n")
  os.exit(2)
end
f(select(2, ...))
io.stdout:flush()
os.exit(0)
