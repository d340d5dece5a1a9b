--- tether.trace (internal): reports every command tether starts and every command it
-- finishes waiting for, as execa's verbose mode does. On when TETHER_TRACE is set in the
-- environment (to anything but "" or "0"), or through tether.trace(fn). The engine calls
-- started(cmd) once a command is spawned and ended(cmd) once its wait is over.
--
-- A report is one line, to stderr by default:
--   tether: start pid 4242: /bin/sh -c 'echo hi'
--   tether: end pid 4242 after 0.004s: exit status 0: /bin/sh -c 'echo hi'
-- The command is tostring(cmd) (the argv, quoted like a shell where needed).
local core = require "tether.core"

local trace = {}

-- nil: follow TETHER_TRACE; false: off; a function: called with (line, info).
local setting = nil

local function to_stderr(line)
  io.stderr:write(line, "\n")
  io.stderr:flush()
end

-- The reporting function now in force, or nil when tracing is off.
local function sink()
  if setting ~= nil then return setting or nil end
  local v = os.getenv("TETHER_TRACE")
  if v and v ~= "" and v ~= "0" then return to_stderr end
  return nil
end

-- set(fn) -> the previous setting: fn a function (called with line, info), true (stderr),
-- false (off whatever TETHER_TRACE says) or nil (TETHER_TRACE decides).
function trace.set(fn)
  local prev = setting
  if fn == true then setting = to_stderr else setting = fn end
  if prev == to_stderr then prev = true end
  return prev
end

-- Calls the sink; an error in a user's trace function must not break the command.
local function report(fn, line, info)
  local ok, err = pcall(fn, line, info)
  if not ok then to_stderr("tether: trace function failed: " .. tostring(err)) end
end

-- started(cmd): cmd was spawned (cmd.process is set).
function trace.started(cmd)
  local fn = sink()
  if not fn then return end
  local run = cmd._run
  if run then run.trace_t0 = core.now() end
  local argv, pid = tostring(cmd), cmd.process and cmd.process.pid
  report(fn, ("tether: start pid %s: %s"):format(tostring(pid), argv),
    { event = "start", cmd = cmd, argv = argv, pid = pid })
end

-- ended(cmd, err): cmd's wait is over; err is what it returns (nil on success).
function trace.ended(cmd, err)
  local fn = sink()
  if not fn then return end
  local run = cmd._run
  local t0 = run and run.trace_t0
  local duration = t0 and core.now() - t0 or nil
  local argv, pid = tostring(cmd), cmd.process and cmd.process.pid
  local state = cmd.process_state
  local status = state and tostring(state) or (err and tostring(err)) or "done"
  report(fn, ("tether: end pid %s after %s: %s: %s"):format(tostring(pid),
      duration and ("%.3fs"):format(duration) or "?", status, argv),
    { event = "end", cmd = cmd, argv = argv, pid = pid, duration = duration, state = state,
      status = status, err = err })
end

return trace
