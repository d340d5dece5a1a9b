-- Case 4 (tether): 8 MiB on stdout and 8 MiB on stderr captured separately.
-- args: N [MODE]. MODE "output" (default): cmd.stderr = {} then cmd:output() (Go's
-- Output() with cmd.Stderr = &bytes.Buffer); "tables": cmd.stdout = {}, cmd.stderr = {},
-- cmd:run(), table.concat. prints median ms per capture.
package.path = arg[0]:match("(.*/)") .. "?.lua;" .. package.path
local C = require "tether_common"
local exec = require "tether.exec"
local n, mode = tonumber(arg[1]) or 20, arg[2] or "output"
local SCRIPT = "head -c 8388608 /dev/zero; head -c 8388608 /dev/zero >&2"
local ms = {}
for i = 1, n do
  local t0 = C.now()
  local cmd = exec.command("sh", "-c", SCRIPT)
  local out, err
  if mode == "tables" then
    local o, e = {}, {}
    cmd.stdout, cmd.stderr = o, e
    assert(cmd:run())
    out, err = table.concat(o), table.concat(e)
  else
    local e = {}
    cmd.stderr = e
    out = assert(cmd:output())
    err = table.concat(e)
  end
  if #out ~= 8388608 or #err ~= 8388608 then error("bad lengths " .. #out .. " " .. #err) end
  ms[i] = (C.now() - t0) * 1e3
end
print(string.format("%.2f", C.median(ms)))
