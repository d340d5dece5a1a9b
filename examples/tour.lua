-- tour.lua: a few commands, captured output, an error as a user sees it, a pipeline.
-- Run with `make demo`.
local tether = require "tether"
local exec = require "tether.exec"
local errors = require "tether.errors"

tether.main(function()
  -- 1. Run a command and capture its output.
  local out = assert(exec.command("uname", "-sr"):output())
  io.write("kernel: ", out)

  -- 2. Feed stdin from a string, stream stdout line by line.
  local sort = exec.command("sort")
  sort.stdin = "pear\napple\nfig\n"
  local lines = sort:stdout_pipe()
  assert(sort:start())
  for line in lines:lines() do print("sorted: " .. line) end
  assert(sort:wait())

  -- 3. Errors are values: a missing program, a failing command, a bad dir.
  local _, err = exec.command("no-such-program-here"):run()
  print("missing program -> " .. tostring(err), "is ErrNotFound:", err:is(errors.ErrNotFound))

  local fail = exec.command("sh", "-c", "echo 'disk full' >&2; exit 3")
  local _, ferr = fail:output()
  print(("failing command -> %s (exit_code=%d, stderr=%q)"):format(tostring(ferr), ferr.exit_code, (ferr.stderr:gsub("%s+$", ""))))

  local cd = exec.command("true")
  cd.dir = "/does/not/exist"
  local _, derr = cd:run()
  print(("bad dir -> %s (step=%s, code=%s)"):format(tostring(derr), derr.step, derr.code))

  -- 4. A pipeline, wired child to child, with pipefail semantics.
  local wc = exec.command("wc", "-l")
  local counted = {}
  wc.stdout = counted
  local states = assert(exec.pipeline { exec.command("printf", "a\\nb\\nc\\n"), exec.command("grep", "-v", "b"), wc })
  print(("pipeline -> %s line(s), %d stages, all ok: %s"):format(
    table.concat(counted):match("%d+"), #states, tostring(states[1]:success() and states[3]:success())))

  -- 5. The process state carries rusage from wait4.
  local c = exec.command("sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done")
  assert(c:run())
  local st = c.process_state
  print(("busy loop -> exit %d, user %.3fs, sys %.3fs, max rss %d KiB"):format(
    st:exit_code(), st:user_time(), st:system_time(), st:max_rss()))
end)
