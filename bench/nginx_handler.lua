--- bench/nginx_handler.lua: the locations of bench case "nginx" (bench/nginx.sh).
-- Each runs the same command, `sh -c 'sleep $S; echo ok'`, a different way.
local tether = require "tether"
local exec = require "tether.exec"

local M = {}

local function argv()
  return "sh", "-c", "sleep " .. (ngx.var.arg_s or "0.05") .. "; echo ok"
end

-- tether.waiters.ngx (set in init_by_lua): waits in nginx's thread pool "tether".
function M.ngx()
  local out, err = exec.command(argv()):output()
  ngx.print(out or ("ERR " .. tostring(err)))
end

-- The same, with the thread pool off: checks the fds between ngx.sleep calls (backoff).
-- The setting is the worker's: it stays off (concurrent requests restoring what they saw
-- would leave it in either state) until /pool_on (the bench runs this path after ngx's).
function M.backoff()
  tether.ngx_thread_pool(false)
  local out, err = exec.command(argv()):output()
  ngx.print(out or ("ERR " .. tostring(err)))
end

function M.pool_on()
  tether.ngx_thread_pool("tether")
  ngx.print("ok")
end

-- In a pool thread's own Lua VM (tether's default, blocking waiter there).
function M.in_thread(...)
  tether.set_waiter(nil)
  local out, err = exec.command(...):output()
  if not out then return "ERR " .. tostring(err) end
  return out
end

function M.thread()
  local ok, out = ngx.run_worker_thread("tether", "nginx_handler", "in_thread", argv())
  ngx.print(ok and out or ("ERR " .. tostring(out)))
end

-- The floor of waiters.ngx's event-loop CPU (NGINX_FLOOR=1 bench/nginx.sh): the thread
-- path, plus building the Cmd in the request as waiters.ngx's callers do (its argv goes
-- over; inside nginx the PATH search waits, and in_thread searches).
function M.thread_cmd()
  local cmd = exec.command(argv())
  local ok, out = ngx.run_worker_thread("tether", "nginx_handler", "in_thread", (table.unpack or unpack)(cmd.args))
  ngx.print(ok and out or ("ERR " .. tostring(out)))
end

-- io.popen: blocks the event loop for the whole command.
function M.popen()
  local _, _, s = argv()
  local p = io.popen("sh -c '" .. s .. "'")
  local out = p:read("*a")
  p:close()
  ngx.print(out)
end

function M.nop() return true end

return M
