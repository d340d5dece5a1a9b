-- spec/helpers/poolmod.lua: a module the pool specs name as tasks ("helpers.poolmod.double")
-- and as init (`init = "helpers.poolmod"`), loaded inside worker threads.
local M = {}

M.loaded_in = "worker"
M.calls = 0

function M.double(x)
  M.calls = M.calls + 1
  return x * 2
end

function M.count()
  return M.calls
end

function M.fail(msg)
  error(msg, 0)
end

return M
