-- Case 3 (tether): exec.command("head", "-c", BYTES, "/dev/zero"):output().
-- args: BYTES N [output|combined|pipe]: combined_output(), or stdout_pipe():read("a") + wait(). prints MB/s (1 MB = 1e6 bytes) over N captures; to stderr, the peak RSS
-- (VmHWM) above the RSS before the first capture, in KiB and in multiples of BYTES.
package.path = arg[0]:match("(.*/)") .. "?.lua;" .. package.path
local C = require "tether_common"
local exec = require "tether.exec"
local bytes, n, how = arg[1] or "268435456", tonumber(arg[2]) or 3, arg[3] or "output"
local size = tonumber(bytes)
collectgarbage()
local base = C.status_kb("VmRSS")
local t0, total = C.now(), 0
for _ = 1, n do
  local cmd, out = exec.command("head", "-c", bytes, "/dev/zero"), nil
  if how == "combined" then
    out = assert(cmd:combined_output())
  elseif how == "pipe" then
    local r = assert(cmd:stdout_pipe())
    assert(cmd:start())
    out = assert(r:read("a"))
    assert(cmd:wait())
  else
    out = assert(cmd:output())
  end
  if #out ~= size then error("short: " .. #out) end
  total = total + #out
  out = nil
  collectgarbage()
end
local rate = total / (C.now() - t0) / 1e6
local hwm = C.status_kb("VmHWM")
io.stderr:write(string.format("tether-rss base_kb=%d hwm_kb=%d above_kb=%d above_x_output=%.2f\n",
  base, hwm, hwm - base, (hwm - base) * 1024 / size))
print(string.format("%.1f", rate))
