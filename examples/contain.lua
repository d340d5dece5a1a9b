-- contain.lua: a command that daemonizes a grandchild, killed whole through its cgroup.
--
-- The command starts a "daemon" with setsid (it leaves the process group, so a
-- process-group kill would miss it) and then serves. At the 1 s timeout tether writes
-- the command's cgroup.kill: the daemon goes too, and run returns once the group is
-- empty. Needs root (or a delegated cgroup v2 subtree, see docs/containment.md);
-- without one it says why and exits 0.
--
--   lua5.4 examples/contain.lua
local tether = require "tether"
local exec = require "tether.exec"
local errors = require "tether.errors"

tether.main(function()
  local t0 = tether.now()
  local function say(fmt, ...)
    io.stdout:write(("[%4.1f s] " .. fmt .. "\n"):format(tether.now() - t0, ...))
    io.stdout:flush()
  end

  local root, rerr = tether.cgroup_root()
  if not root then say("no containment here: %s", tostring(rerr)); return end
  say("groups go below %s", root)

  -- The daemon writes its pid to a file, so we can look for it afterwards.
  local pidfile = os.tmpname()
  local cmd = exec.command("sh", "-c", ([[
    setsid sh -c 'echo $$ > %s; exec sleep 60' &
    echo "server: started a daemon, now serving"
    exec sleep 60]]):format(pidfile))
  cmd.stdout = "inherit"
  cmd.cgroup = true
  cmd.timeout = 1

  local ok, err = cmd:run()
  if not ok and err.step == "cgroup" then
    say("cannot contain here: %s", tostring(err))
    os.remove(pidfile)
    return
  end
  say("run returned: %s (timeout: %s)", err.state and tostring(err.state) or tostring(err),
    tostring(errors.is(err, errors.ErrTimeout)))

  local f = io.open(pidfile)
  local daemon = f and tonumber(f:read("*a"))
  if f then f:close() end
  os.remove(pidfile)
  local stat = daemon and io.open("/proc/" .. daemon .. "/stat")
  local alive = false
  if stat then
    alive = not stat:read("*a"):match("^%d+ %b() [ZX]")
    stat:close()
  end
  say("daemon %s still alive: %s", tostring(daemon), tostring(alive))
  local usage = cmd.process_state:cgroup_usage()
  say("the group used %.3f s of CPU", usage.cpu)
end)
