-- supervisor.lua: keep two children running; Ctrl-C or SIGTERM stops them all.
--
-- "worker" ticks steadily. "flaky" crashes a moment after each start: the supervisor
-- restarts it with exponential backoff (the delay doubles after each crash). On the first
-- SIGINT or SIGTERM the context from signal.notify_context is done and sup:run stops every
-- child's whole process group: SIGTERM, then SIGKILL after the grace.
--
--   lua5.4 examples/supervisor.lua                     press Ctrl-C to stop it
--   TETHER_DEMO_SIGNAL_AFTER=1 lua5.4 examples/supervisor.lua
--                                                      sends itself SIGTERM after 1 s
--   TETHER_DEMO_BACKOFF=0.05 ...                       first backoff delay (default 0.5 s)
local tether = require "tether"
local exec = require "tether.exec"
local signal = require "tether.signal"
local context = require "tether.context"
local supervisor = require "tether.supervisor"

local function say(fmt, ...)
  io.stdout:write((fmt .. "\n"):format(...))
  io.stdout:flush()
end

tether.main(function()
  local ctx, stop = signal.notify_context(context.background(), "INT", "TERM")

  local function sh(script)
    return function()
      local c = exec.command("sh", "-c", script)
      c.stdout, c.stderr = "inherit", "inherit"
      return c
    end
  end

  local sup = supervisor.new {
    { name = "worker", restart = "always",
      command = sh([[i=0; while :; do i=$((i+1)); echo "worker: tick $i"; sleep 0.2; done]]) },
    { name = "flaky", restart = "on-failure",
      command = sh([[echo "flaky: up, crashing soon"; sleep 0.05; exit 1]]) },
    backoff = { initial = tonumber(os.getenv("TETHER_DEMO_BACKOFF") or "") or 0.5, max = 8, reset_after = 10 },
    grace = 2,
    on_event = function(name, event, info)
      if event == "start" then say("supervisor: %s started (pid %d, start %d)", name, info.pid, info.starts)
      elseif event == "exit" then
        say("supervisor: %s exited: %s", name, info.status and tostring(info.status) or tostring(info.err))
      elseif event == "backoff" then
        say("supervisor: %s restarts in %.2f s (crash %d in a row)", name, info.delay, info.failures)
      elseif event == "stop" then say("supervisor: stopping %s: %s, grace %g s", name, info.signal, info.grace)
      elseif event == "kill" then say("supervisor: %s ignored SIGTERM: SIGKILL", name)
      end
    end,
  }
  say("main: pid %d; press Ctrl-C or send SIGTERM to stop", tether.pid())

  -- For demos and tests: signal ourselves after a while.
  local after = tonumber(os.getenv("TETHER_DEMO_SIGNAL_AFTER") or "")
  local self_signal
  if after then
    self_signal = exec.command("sh", "-c", 'sleep "$1"; kill -TERM "$2"', "sh", tostring(after), tostring(tether.pid()))
    assert(self_signal:start())
  end

  local summary, err = sup:run(ctx)
  stop()
  if self_signal then self_signal:wait() end
  if not summary then error(err) end
  say("main: %s: all children stopped", tostring(context.cause(ctx)))
  for _, name in ipairs { "worker", "flaky" } do
    local s = summary[name]
    say("summary: %s starts=%d restarts=%d result=%s last=%s", name, s.starts, s.restarts, s.result,
      s.status and tostring(s.status) or "-")
  end
  say("main: done")
end)
