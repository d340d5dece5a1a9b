-- graceful_shutdown.lua: stop a worker cleanly on Ctrl-C or SIGTERM.
--
-- signal.notify_context gives a context that is done on the first SIGINT or
-- SIGTERM. The worker runs under exec.command_context: when the context is
-- done, cmd.cancel sends it SIGTERM, and cmd.wait_delay bounds the drain:
-- a worker still running 2 s later is killed with SIGKILL.
--
--   lua5.4 examples/graceful_shutdown.lua            press Ctrl-C to stop it
--   TETHER_DEMO_SIGNAL_AFTER=0.5 lua5.4 examples/graceful_shutdown.lua
--                                                    sends itself SIGTERM after 0.5 s
--   TETHER_DEMO_STUBBORN=1 ...                       the worker ignores SIGTERM
--                                                    (watch the grace run out)
local tether = require "tether"
local exec = require "tether.exec"
local signal = require "tether.signal"
local context = require "tether.context"

local GRACE = 2

local function say(fmt, ...)
  io.stdout:write(("main: " .. fmt .. "\n"):format(...))
  io.stdout:flush()
end

tether.main(function()
  local ctx, stop = signal.notify_context(context.background(), "INT", "TERM")

  -- The worker: prints a tick every 0.2 s; on SIGTERM it finishes its tick (sh runs a trap
  -- once the current command is over) and exits 0.
  local script = os.getenv("TETHER_DEMO_STUBBORN")
    and [[trap '' TERM; i=0; while :; do i=$((i+1)); echo "worker: tick $i"; sleep 0.2; done]]
    or [[trap 'echo "worker: got SIGTERM, finishing"; sleep 0.1; echo "worker: bye"; exit 0' TERM
         i=0; while :; do i=$((i+1)); echo "worker: tick $i"; sleep 0.2; done]]
  local worker = exec.command_context(ctx, "sh", "-c", script)
  worker.stdout = "inherit"
  worker.stderr = "inherit"
  -- Its own process group: a Ctrl-C in the terminal reaches only us, and we decide.
  worker.setpgid = true
  worker.cancel = function(cmd)
    say("sending SIGTERM to the worker, grace %d s", GRACE)
    return cmd.process:signal("SIGTERM")
  end
  worker.wait_delay = GRACE
  assert(worker:start())
  say("pid %d, worker pid %d; press Ctrl-C or send SIGTERM to stop", tether.pid(), worker.process.pid)

  -- For demos and tests: signal ourselves after a while.
  local after = tonumber(os.getenv("TETHER_DEMO_SIGNAL_AFTER") or "")
  local self_signal
  if after then
    self_signal = exec.command("sh", "-c", 'sleep "$1"; kill -TERM "$2"', "sh", tostring(after), tostring(tether.pid()))
    assert(self_signal:start())
  end

  ctx:wait() -- until the first signal
  say("%s: shutting down", tostring(context.cause(ctx)))

  -- The bounded drain: wait returns once the worker is gone, at most GRACE s after the cancel.
  local t0 = tether.now()
  local ok, err = worker:wait()
  local took = tether.now() - t0
  local st = worker.process_state
  if st:signaled() then
    say("worker killed by %s after %.1f s (the grace ran out)", st:signal(), took)
  elseif st:success() then
    say("worker exited cleanly (exit 0) after %.1f s", took)
  else
    say("worker exited with code %d after %.1f s", st:exit_code(), took)
  end
  say("wait returned %s", ok and "true" or tostring(err))

  stop() -- a second Ctrl-C now gets the default action
  if self_signal then self_signal:wait() end
  say("done")
end)
