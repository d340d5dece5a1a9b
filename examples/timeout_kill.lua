-- timeout_kill.lua: a time limit on a command that ignores SIGTERM.
--
-- The command runs under a 1 s context. When the deadline passes, cmd.cancel
-- sends SIGTERM (the polite request); the child ignores it, so once
-- cmd.wait_delay (1 s of grace) has run out, tether sends SIGKILL.
--
--   lua5.4 examples/timeout_kill.lua
local tether = require "tether"
local exec = require "tether.exec"
local errors = require "tether.errors"
local context = require "tether.context"

tether.main(function()
  local t0 = tether.now()
  local function say(fmt, ...)
    io.stdout:write(("[%4.1f s] " .. fmt .. "\n"):format(tether.now() - t0, ...))
    io.stdout:flush()
  end

  local ctx, cancel = context.with_timeout(context.background(), 1)
  -- `exec` keeps SIGTERM ignored in sleep: one process that ignores SIGTERM.
  local cmd = exec.command_context(ctx, "sh", "-c",
    [[trap '' TERM; echo "child: started, ignoring SIGTERM"; exec sleep 30]])
  cmd.stdout = "inherit"
  cmd.cancel = function(c)
    say("deadline passed: sending SIGTERM")
    return c.process:signal("SIGTERM")
  end
  cmd.wait_delay = 1
  say("starting a child with a 1 s timeout and 1 s of grace")
  assert(cmd:start())

  local ok, err = cmd:wait()
  cancel()
  assert(not ok, "the child was expected to be stopped")
  say("child ended: %s", tostring(err))
  say("killed by: %s", tostring(err.signal))
  say("context: %s; err is DeadlineExceeded: %s", tostring(ctx:err()),
    tostring(errors.is(err, context.DeadlineExceeded)))
end)
