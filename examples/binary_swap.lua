-- binary_swap.lua: replace a server process without refusing a single connection.
--
-- The parent opens a listening TCP socket on 127.0.0.1 once (luasocket: tether has no
-- sockets of its own; any integer fd will do) and hands it to each server process as fd 3
-- through cmd.extra_files. To swap versions, the parent sends the old server SIGTERM: it
-- stops accepting, finishes what it accepted, and exits; the parent then starts the new
-- one on the same socket. The socket never closes, so connections that arrive during the
-- swap wait in its backlog and are never refused. A client process makes connections the
-- whole time and counts who served each one; the parent counts the connections made before
-- the server that answered them was ready (they waited in the backlog through a swap).
--
--   lua5.4 examples/binary_swap.lua                      200 connections, swaps v1 -> v2 -> v3
--   TETHER_DEMO_CONNECTIONS=1000 lua5.4 examples/binary_swap.lua
-- (the same script runs as the server, "serve VERSION", and the client, "client PORT N")
local tether = require "tether"
local exec = require "tether.exec"
local signal = require "tether.signal"

local okmod, socket = pcall(require, "socket")
if not okmod then
  io.stderr:write("binary_swap.lua needs luasocket (Debian: lua-socket)\n")
  os.exit(1)
end

local LUA = os.getenv("TETHER_LUA") or arg[-1] or "lua5.4"
local SCRIPT = arg[0]

local function say(fmt, ...)
  io.stdout:write((fmt .. "\n"):format(...))
  io.stdout:flush()
end

-- The server: accepts on fd 3 until SIGTERM, answering each connection with its version.
local function serve(version)
  local ch = signal.notify(signal.channel(1), "TERM")
  local srv = socket.tcp()     -- no fd yet (luasocket 3 creates it lazily)
  srv:setfd(3)
  assert(srv:listen(128))      -- a server object on the inherited, already listening socket
  srv:settimeout(0)
  say("ready")
  local served = 0
  -- wait on the signal channel and the socket at once: anything with pollfd/events will do
  local listening = { pollfd = 3, events = "r" }
  while true do
    local i = tether.wait_any({ ch, listening })
    if i == 1 then break end
    local c = srv:accept()
    if c then
      c:settimeout(5)
      c:send(version .. "\n")
      c:close()
      served = served + 1
    end
  end
  srv:close() -- our copy only: the parent's stays open, and so does the socket
  say("drained %d", served)
end

-- The client: n connections one after another; prints progress and a tally.
local function client(port, n)
  local by, refused, failed = {}, 0, 0
  for i = 1, n do
    local t = tether.now() -- the monotonic clock is the same in every process
    local c, err = socket.connect("127.0.0.1", port)
    if not c then
      if err == "connection refused" then refused = refused + 1 else failed = failed + 1 end
    else
      c:settimeout(10)
      local line = c:receive("*l")
      c:close()
      if line then by[line] = (by[line] or 0) + 1 else failed = failed + 1 end
      say("progress %d %s %.6f", i, line or "-", t)
    end
  end
  local parts = {}
  for v, k in pairs(by) do parts[#parts + 1] = v .. "=" .. k end
  table.sort(parts)
  say("client: %d connections, %d refused, %d failed; served by %s", n, refused, failed, table.concat(parts, " "))
end

local function parent()
  local n = tonumber(os.getenv("TETHER_DEMO_CONNECTIONS") or "") or 200
  local listener = assert(socket.bind("127.0.0.1", 0, 128))
  local _, port = listener:getsockname()
  say("parent: listening on 127.0.0.1:%d", port)

  -- When each server became ready: a connection made before its server was ready
  -- waited in the socket's backlog through a swap.
  local ready_at, conns = {}, {}

  local function start_server(version)
    local cmd = exec.command(LUA, SCRIPT, "serve", version)
    cmd.extra_files = { listener:getfd() } -- fd 3 in the child
    cmd.pdeathsig = "TERM"                  -- should the parent die, the server drains and exits
    cmd.stderr = "inherit"
    local out = assert(cmd:stdout_pipe())
    assert(cmd:start())
    assert(out:read("l", 30) == "ready", "the server did not start")
    ready_at[version] = tether.now()
    say("parent: %s ready (pid %d)", version, cmd.process.pid)
    return { cmd = cmd, out = out, version = version }
  end

  local function stop_server(s)
    assert(s.cmd.process:signal("TERM"))
    local line = s.out:read("l", 30) or ""
    assert(s.cmd:wait(30))
    say("parent: %s exited after serving %s connection(s)", s.version, line:match("drained (%d+)") or "?")
  end

  local current = start_server("v1")
  local cl = exec.command(LUA, SCRIPT, "client", tostring(port), tostring(n))
  cl.pdeathsig = "TERM"
  cl.stderr = "inherit"
  local progress = assert(cl:stdout_pipe())
  assert(cl:start())

  local swaps = { [math.floor(n / 4)] = "v2", [math.floor(n * 3 / 5)] = "v3" }
  for line in progress:lines() do
    local i, v, t = line:match("^progress (%d+) (%S+) (%S+)")
    i = tonumber(i)
    if i then conns[#conns + 1] = { v, tonumber(t) } else say("%s", line) end
    local next_version = i and swaps[i]
    if next_version then
      say("parent: swapping %s -> %s after %d connections", current.version, next_version, i)
      stop_server(current)
      current = start_server(next_version)
    end
  end
  assert(cl:wait(60))
  local waited = 0
  for _, c in ipairs(conns) do
    if ready_at[c[1]] and c[2] < ready_at[c[1]] then waited = waited + 1 end
  end
  say("parent: %d connection(s) made before their server was ready, all served", waited)
  stop_server(current)
  listener:close()
  say("parent: done")
end

tether.main(function()
  local mode = arg[1]
  if mode == "serve" then serve(arg[2])
  elseif mode == "client" then client(tonumber(arg[2]), tonumber(arg[3]))
  else parent() end
end)
