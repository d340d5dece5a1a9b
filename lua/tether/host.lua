--- tether.host (internal): what tether knows about the program it runs in.
--
-- One place that says whether tether runs inside nginx (lua-nginx-module or
-- OpenResty), so the spawn mode ("auto" relays there: OpenResty's workers
-- reap every child with waitpid(-1)) and the nginx waiter agree. Loading this
-- module inside nginx tells the C core, once per process.
local core = require "tether.core"

local M = {}

local nginx -- nil until looked at

-- The process's command name (/proc/self/comm), "" when unreadable.
local function comm()
  local f = io.open("/proc/self/comm", "r")
  if not f then return "" end
  local name = f:read("*l") or ""
  f:close()
  return name
end

--- in_nginx() -> true when tether runs inside an nginx worker or master: the
-- lua-nginx-module API (the `ngx` global with ngx.config) is there, or the
-- process is named nginx or openresty (a run_worker_thread state has a reduced
-- `ngx`). Looked at once.
function M.in_nginx()
  if nginx == nil then
    local ngx_ = rawget(_G, "ngx")
    nginx = (type(ngx_) == "table" and type(ngx_.config) == "table" and ngx_.config.ngx_lua_version ~= nil)
      or comm() == "nginx" or comm() == "openresty"
  end
  return nginx
end

if M.in_nginx() then core.spawn_host_nginx(true) end

return M
