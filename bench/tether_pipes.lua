-- Case 8 (tether, issue 13): pipes and argv through the public API only.
-- args: MODE ...
--   reada BYTES N    exec.command("head", "-c", BYTES, "/dev/zero"):stdout_pipe():read("a"), N times: MB/s
--   output BYTES N   the same bytes through cmd:output() (the reference): MB/s
--   lines LINES N    exec.command("seq", LINES):stdout_pipe():lines(), N times: lines/s (median)
--   popen LINES N    io.popen("seq LINES"):lines() in the same interpreter (the reference): lines/s
--   argv ARGS N      exec.command("/bin/true", <ARGS arguments>):run(), N times: median seconds
--                    from building the Cmd to the end of run()
-- (tether's part only: the peers' rows of case 8 are Python's for argv.)
package.path = arg[0]:match("(.*/)") .. "?.lua;" .. package.path
local C = require "tether_common"
local exec = require "tether.exec"
local mode, a1, a2 = arg[1], arg[2], tonumber(arg[3]) or 3

if mode == "reada" or mode == "output" then
  local size = tonumber(a1)
  local t0, total = C.now(), 0
  for _ = 1, a2 do
    local out
    if mode == "output" then
      out = assert(exec.command("head", "-c", a1, "/dev/zero"):output())
    else
      local cmd = exec.command("head", "-c", a1, "/dev/zero")
      local r = assert(cmd:stdout_pipe())
      assert(cmd:start())
      out = assert(r:read("a"))
      assert(cmd:wait())
    end
    if #out ~= size then error("short: " .. #out) end
    total = total + #out
    out = nil -- luacheck: ignore
    collectgarbage()
  end
  print(string.format("%.1f", total / (C.now() - t0) / 1e6))
elseif mode == "lines" or mode == "popen" then
  local want = tonumber(a1)
  local rates = {}
  for i = 1, a2 do
    local t0, n = C.now(), 0
    if mode == "lines" then
      local cmd = exec.command("seq", a1)
      local r = assert(cmd:stdout_pipe())
      assert(cmd:start())
      for _ in r:lines() do n = n + 1 end
      assert(cmd:wait())
    else
      local p = assert(io.popen("seq " .. a1))
      for _ in p:lines() do n = n + 1 end
      p:close()
    end
    if n ~= want then error("got " .. n .. " lines") end
    rates[i] = n / (C.now() - t0)
  end
  print(string.format("%.0f", C.median(rates)))
elseif mode == "argv" then
  -- The vararg form where this Lua's unpack takes 100,000 values (5.3, 5.4), else the table
  -- form; the argument strings are made before the clock starts.
  local n = tonumber(a1)
  local unpack = table.unpack or unpack
  local args = {}
  for j = 1, n do args[j] = "x" .. j end
  local vararg = pcall(unpack, args, 1, n)
  local times = {}
  for i = 1, a2 do
    local t0 = C.now()
    local cmd
    if vararg then cmd = exec.command("/bin/true", unpack(args, 1, n))
    else
      local argv = { "/bin/true" }
      for j = 1, n do argv[j + 1] = args[j] end
      cmd = exec.command(argv)
    end
    assert(cmd:run())
    times[i] = C.now() - t0
  end
  io.stderr:write("tether-argv form=", vararg and "vararg" or "table", "\n")
  print(string.format("%.3f", C.median(times)))
else
  error("usage: tether_pipes.lua reada|output|lines|popen|argv ...")
end
