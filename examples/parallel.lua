#!/usr/bin/env lua
-- examples/parallel.lua: run many commands, at most a few at a time, with
-- exec.output_all: outputs come back in input order, a failure is false plus its
-- error (with the command's stderr), and TETHER_TRACE=1 shows each start and end.
--   lua examples/parallel.lua [LIMIT]
local tether = require "tether"
local exec = require "tether.exec"

tether.main(function()
  local limit = tonumber(arg and arg[1]) or 4
  local cmds = {}
  for i = 1, 12 do
    -- job 7 fails; each job sleeps a little so the limit shows
    local script = i == 7 and "echo 'job 7: disk full' >&2; exit 2" or ("sleep 0.05; echo job %d done"):format(i)
    cmds[i] = exec.command("sh", "-c", script)
  end
  local t0 = tether.now()
  local outs, errs = exec.output_all(cmds, { limit = limit })
  local failed = 0
  for i = 1, #cmds do
    if outs[i] then
      io.write(outs[i])
    else
      failed = failed + 1
      local stderr = (errs[i].stderr or ""):gsub("\n$", "")
      print(("job %d failed: exit code %s, stderr: %s"):format(i, tostring(errs[i].exit_code), stderr))
    end
  end
  print(("%d jobs, %d failed, limit %d, %.2f s"):format(#cmds, failed, limit, tether.now() - t0))
end)
