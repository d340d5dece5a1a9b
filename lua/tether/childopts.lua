--- tether.childopts (internal): the Cmd fields that shape the child's environment and
-- limits beyond Go's: extra_env, rlimits, umask. Each function validates the field and
-- raises naming it ("exec: cmd.rlimits.nofile must be ..."), at the given error level,
-- and returns what the spawn spec takes.
local core = require "tether.core"

local type, pairs, ipairs, tostring, error = type, pairs, ipairs, tostring, error
local find, sort = string.find, table.sort

local childopts = {}

local function has_nul(s) return find(s, "\0", 1, true) ~= nil end

-- extra_env(env, extra, level) -> the child's environment as a list of "K=V", or env
-- unchanged when extra is nil. env: the list cmd.env gives (nil: the inherited
-- environment, read now). extra: a map K -> V (a string or number: set, replacing K
-- where env has it, else added in key order) or false (K removed).
function childopts.extra_env(env, extra, level)
  if extra == nil then return env end
  level = (level or 1) + 1
  if type(extra) ~= "table" then error("exec: cmd.extra_env must be a map of names to strings or false", level) end
  local keys = {}
  for k, v in pairs(extra) do
    if type(k) ~= "string" then error("exec: cmd.extra_env keys must be strings", level) end
    if k == "" or find(k, "=", 1, true) or has_nul(k) then
      error(("exec: cmd.extra_env has an invalid name %q"):format(k), level)
    end
    if type(v) == "number" then v = tostring(v) end
    if v ~= false and type(v) ~= "string" then
      error(("exec: cmd.extra_env[%q] must be a string or false"):format(k), level)
    end
    if v and has_nul(v) then error(("exec: cmd.extra_env[%q] value contains NUL"):format(k), level) end
    keys[#keys + 1] = k
  end
  sort(keys)
  local base = env or core.env_list()
  local out, seen = {}, {}
  for _, kv in ipairs(base) do
    local k = kv:match("^([^=]*)=") or kv
    local v = extra[k]
    if v == nil then out[#out + 1] = kv
    elseif v ~= false and not seen[k] then
      out[#out + 1] = k .. "=" .. tostring(v)
      seen[k] = true
    end
  end
  for _, k in ipairs(keys) do
    local v = extra[k]
    if v ~= false and not seen[k] then out[#out + 1] = k .. "=" .. tostring(v) end
  end
  return out
end

-- The limits tether sets (Linux RLIMIT_* names without the prefix, lower case).
local RESOURCES = { nofile = true, core = true, cpu = true, as = true, fsize = true,
  nproc = true, stack = true, memlock = true }

local function limit_value(v, what, level)
  if v == "unlimited" or v == "infinity" or v == math.huge then return math.huge end
  if type(v) ~= "number" or v < 0 or v ~= math.floor(v) or v >= 2 ^ 63 then
    error("exec: " .. what .. ' must be a non-negative integer, math.huge or "unlimited"', level + 1)
  end
  return v
end

-- rlimits(map, level) -> the spawn spec's list of {name, soft, hard}, sorted by name, or
-- nil. map: name -> a number (soft and hard limit both) or {soft, hard}; a limit is a
-- non-negative integer, math.huge or "unlimited".
function childopts.rlimits(map, level)
  if map == nil then return nil end
  level = (level or 1) + 1
  if type(map) ~= "table" then error("exec: cmd.rlimits must be a map of limit names to limits", level) end
  local names = {}
  for k in pairs(map) do
    if type(k) ~= "string" or not RESOURCES[k] then
      error(("exec: cmd.rlimits has an unknown limit %s (known: as, core, cpu, fsize, memlock, nofile, nproc, stack)")
        :format(type(k) == "string" and ("%q"):format(k) or tostring(k)), level)
    end
    names[#names + 1] = k
  end
  sort(names)
  local list = {}
  for _, k in ipairs(names) do
    local v, soft, hard = map[k]
    if type(v) == "table" then
      if #v ~= 2 then error(("exec: cmd.rlimits.%s must be a number or {soft, hard}"):format(k), level) end
      soft = limit_value(v[1], "cmd.rlimits." .. k .. "[1]", level)
      hard = limit_value(v[2], "cmd.rlimits." .. k .. "[2]", level)
      if soft > hard then error(("exec: cmd.rlimits.%s: the soft limit is above the hard limit"):format(k), level) end
    else
      soft = limit_value(v, "cmd.rlimits." .. k, level)
      hard = soft
    end
    list[#list + 1] = { k, soft, hard }
  end
  return list
end

-- umask(v, level) -> v, an integer in 0..0777 (e.g. 18 or tonumber("022", 8)), or nil.
function childopts.umask(v, level)
  if v == nil then return nil end
  if type(v) ~= "number" or v < 0 or v > 511 or v ~= math.floor(v) then
    error("exec: cmd.umask must be an integer from 0 to 0777 (511), e.g. tonumber(\"022\", 8)", (level or 1) + 1)
  end
  return v
end

return childopts
