--- examples/openresty/handler.lua: tether inside an nginx request handler.
--
-- nginx.conf selects tether.waiters.ngx in init_by_lua_block: commands then run (or
-- are waited for) in nginx's thread pool "tether" and the request yields meanwhile,
-- so a request running a command does not block the worker's other requests. A
-- request the client drops takes its commands with it. See docs/openresty.md.
local tether = require "tether"
local exec = require "tether.exec"

local M = {}

-- GET /run: runs `sleep 1`, then `sh -c 'echo ...; exit 3'`, and reports both.
function M.run()
  local t0 = tether.now()
  local sleep = exec.command("sleep", "1")
  local ok, err = sleep:run()
  if not ok then
    ngx.status = 500
    ngx.say("sleep failed: ", tostring(err))
    return
  end
  ngx.say("sleep exit=", sleep.process_state:exit_code(),
    (" took=%.1f"):format(tether.now() - t0))

  -- A failing command: output() returns nil, an ExitError and what it printed.
  local out, cerr, partial = exec.command("sh", "-c", "echo hello from tether; exit 3"):output()
  if out then
    ngx.say("sh exit=0 output=", out)
  else
    ngx.say("sh exit=", tostring(cerr.exit_code), " output=", ((partial or ""):gsub("\n$", "")))
  end
end

-- Runs in a thread of nginx's thread pool (ngx.run_worker_thread): that thread has its
-- own Lua VM without ngx.sleep, so tether keeps its default waiter and blocks the
-- pool thread only, never the event loop. Returns plain values (they cross VMs by copy).
function M.in_thread(...)
  local out, err = exec.command(...):output()
  if not out then return nil, tostring(err) end
  return out
end

-- GET /thread: runs `echo from a worker thread` in the thread pool.
function M.thread()
  local ok, out, err = ngx.run_worker_thread("tether", "handler", "in_thread", "echo", "from a worker thread")
  if not ok then
    ngx.status = 500
    ngx.say("run_worker_thread failed: ", tostring(out))
  elseif not out then
    ngx.status = 500
    ngx.say("command failed: ", tostring(err))
  else
    ngx.print(out)
  end
end

-- GET /pty: answers a program's prompt through a pseudo-terminal (cmd:pty()); expect
-- waits through tether.waiters.ngx like every other tether wait.
function M.pty()
  tether.set_waiter(tether.waiters.ngx)
  local cmd = exec.command("sh", "-c", "printf 'name? '; read name; echo \"hello $name\"")
  local term = assert(cmd:pty())
  local ok, err = cmd:start()
  if ok then ok, err = term:expect("name%? ", 5) end
  if ok then ok, err = term:write("nginx\n") end
  local who
  if ok then who, err = term:expect("hello (%a+)", 5) end
  -- wait before closing: a shell that has not exited yet would get SIGHUP from the close
  local state = cmd.process and cmd:wait(5)
  term:close()
  if not who then
    ngx.status = 500
    ngx.say("pty failed: ", tostring(err))
    return
  end
  ngx.say("pty: hello ", who, state and "" or " (the shell did not exit cleanly)")
end

return M
