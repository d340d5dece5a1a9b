-- spec/helpers/docnames.lua: checks the tether names docs mention against the loaded API.
--
--   docnames.go_names(text) -> list of {name=, line=}: the tether names of
--       docs/go-to-tether.md's tables (the second column's code spans): qualified names
--       (`exec.command(...)`, `cmd:wait(...)`, `cmd.args`, `errors.ErrNotFound`) and bare
--       calls (`stdout_pipe()`); string literals and Lua keywords are left out.
--   docnames.resolve(name) -> true | nil, why: whether the name exists: a module's field,
--       a method of an object (cmd, process, state, reader, writer, ch, ctx, err, sem,
--       future, pool, sup), a field of such an object that the Lua layer uses, or a
--       function some module or object has (bare calls).
--   docnames.signatures(text) -> list of {name=, params=, vararg=, line=}: the signature
--       lines of a reference page: headings such as `## exec.command(name, ...)` or
--       `### reader:read([fmt [, timeout | ctx]])`. params counts the named parameters
--       (optional ones too; `timeout | ctx` is one; a method's self included).
--   docnames.arity(name) -> nparams, isvararg | nil when it cannot be known (a C
--       function, or Lua 5.1 where debug.getinfo has no "u" counts).
local M = {}

local KEYWORDS = {
  ["and"] = true, ["break"] = true, ["do"] = true, ["else"] = true, ["elseif"] = true, ["end"] = true,
  ["false"] = true, ["for"] = true, ["function"] = true, ["goto"] = true, ["if"] = true, ["in"] = true,
  ["local"] = true, ["nil"] = true, ["not"] = true, ["or"] = true, ["repeat"] = true, ["return"] = true,
  ["then"] = true, ["true"] = true, ["until"] = true, ["while"] = true,
}
local BUILTINS = { tostring = true, type = true, pairs = true, ipairs = true, require = true, error = true,
  assert = true, pcall = true, print = true, setmetatable = true, getmetatable = true, select = true }

local MODULES = { "exec", "errors", "env", "context", "signal", "fs", "sync", "pool", "supervisor",
  "systemd", "reaper", "terminal", "cgroup" }

-- Objects the docs name by a variable, and how to get one (created once, on demand).
local objects
local function make_objects()
  local exec = require "tether.exec"
  local signal = require "tether.signal"
  local context = require "tether.context"
  local errors = require "tether.errors"
  local sync = require "tether.sync"
  local pool = require "tether.pool"
  local supervisor = require "tether.supervisor"
  local o = {
    cmd = exec.Cmd, process = exec.Process, state = exec.ProcessState,
    reader = exec.Reader, writer = exec.Writer,
    terminal = require("tether.terminal").Terminal,
    ch = signal.channel(1),
    ctx = context.background(),
    err = errors.new { msg = "x" },
    sem = sync.semaphore(1),
    future = pool.Future,
    sup = supervisor.new { { name = "x", command = function() return exec.command("true") end } },
  }
  local p = pool.new { size = 1 }
  o.pool = getmetatable(p).__index
  if type(o.pool) ~= "table" then o.pool = p end
  p:close()
  return o
end

-- The Lua layer's source, for fields (`cmd.args`, `err.exit_code`): a field exists when
-- the code reads or sets it (`.name` or `name =`).
local source
local function lua_source()
  if source then return source end
  local root = require("helpers.util").root
  local parts = {}
  local p = assert(io.popen("ls " .. root .. "/lua/tether/*.lua"))
  for file in p:lines() do
    local f = assert(io.open(file, "rb"))
    parts[#parts + 1] = f:read("*a")
    f:close()
  end
  p:close()
  source = table.concat(parts, "\n")
  return source
end

local function module(name)
  if name == "tether" then return require "tether" end
  for _, m in ipairs(MODULES) do
    if m == name then return require("tether." .. m) end
  end
end

local function object(name)
  objects = objects or make_objects()
  return objects[name]
end

local function index(v, k)
  local ok, r = pcall(function() return v[k] end)
  if ok then return r end
end

-- Every function name of every module and object, for bare calls.
local function any_function(name)
  for _, m in ipairs(MODULES) do
    if type(index(module(m), name)) == "function" then return true end
  end
  if type(index(require "tether", name)) == "function" then return true end
  objects = objects or make_objects()
  for _, o in pairs(objects) do
    if type(index(o, name)) == "function" then return true end
  end
  return false
end

-- resolve(name) -> true | nil, why.
function M.resolve(name)
  local head, rest = name:match("^([%a_][%w_]*)(.*)$")
  if not head then return nil, "not a name" end
  if rest == "" then -- a bare call
    if BUILTINS[head] or any_function(head) then return true end
    return nil, "no module or object has a function " .. head
  end
  local v = module(head)
  local is_object = false
  if v == nil or (object(head) and index(v, rest:match("^[.:]([%a_][%w_]*)")) == nil) then
    v = object(head) -- a variable that names an object ("pool:map": a Pool, not the module)
    is_object = true
  end
  if v == nil then return nil, "unknown module or object " .. head end
  local path = head
  for sep, key in rest:gmatch("([.:])([%a_][%w_]*)") do
    local nv = index(v, key)
    path = path .. sep .. key
    if nv == nil then
      -- A data field of an object (set by the user or by tether): the code must use it.
      if sep == "." and is_object and path == head .. "." .. key then
        local src = lua_source()
        if src:find("[%w_%]%)]%." .. key .. "[^%w_]") or src:find("[{,%s]" .. key .. "%s*=") then return true end
      end
      return nil, path .. " does not exist"
    end
    if sep == ":" and type(nv) ~= "function" then return nil, path .. " is not a method" end
    v = nv
  end
  return true
end

-- Strips string literals from a code span.
local function strip_strings(s)
  return (s:gsub('"[^"]*"', '""'):gsub("'[^']*'", "''"))
end

-- go_names(text) -> list of {name=, line=}.
function M.go_names(text)
  local out, n = {}, 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    local cells = {}
    if line:match("^|") then
      for cell in line:gmatch("|([^|]*)") do cells[#cells + 1] = cell end
    end
    local col = cells[2]
    if col and not col:match("^%-+$") and not col:match("^%s*tether%s*$") then
      for span in col:gmatch("`([^`]*)`") do
        span = strip_strings(span)
        -- qualified names: a.b, a:b, a.b.c
        for name in span:gmatch("[%a_][%w_]*[.:][%a_][%w_.:]*") do
          name = name:gsub("[.:]$", "")
          local head = name:match("^[%a_][%w_]*")
          if not KEYWORDS[head] then out[#out + 1] = { name = name, line = n } end
        end
        -- bare calls: name( not preceded by . or : or a word character
        for _, name in ("\0" .. span):gmatch("([^%w_.:])([%a_][%w_]*)%s*%(") do
          if not KEYWORDS[name] then out[#out + 1] = { name = name, line = n } end
        end
      end
    end
  end
  return out
end

-- The number of parameters of a signature's parameter text ("a, b [, c]", "...").
local function count_params(params)
  params = params:gsub("%b{}", "t"):gsub("[%[%]]", " ")
  local n, vararg = 0, false
  for p in params:gmatch("[^,]+") do
    p = p:gsub("^%s+", ""):gsub("%s+$", "")
    if p:match("%.%.%.$") then vararg = true -- "..." or Go's "sig..."
    elseif p ~= "" then n = n + 1 end
  end
  return n, vararg
end

-- signatures(text) -> list of {name=, params=, vararg=, line=}.
function M.signatures(text)
  local out, n, in_code = {}, 0, false
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if line:match("^%s*```") then in_code = not in_code
    elseif not in_code and line:match("^#+%s") then
      local h = line:gsub("`", "")
      for name, open, rest in h:gmatch("([%a_][%w_]*[.:][%a_][%w_.:]*)([({])(.*)") do
        local params
        if open == "{" then params = "t"
        else
          -- the balanced parameter text after the name
          local depth, i = 1, 1
          while i <= #rest and depth > 0 do
            local c = rest:sub(i, i)
            if c == "(" then depth = depth + 1 elseif c == ")" then depth = depth - 1 end
            i = i + 1
          end
          params = rest:sub(1, i - 2)
        end
        local count, vararg = count_params(params)
        if name:find(":", 1, true) then count = count + 1 end -- self
        out[#out + 1] = { name = name, params = count, vararg = vararg, line = n }
      end
      -- further signatures on the same heading ("tether.pid(), tether.ppid()")
      for more in h:gmatch(",%s*([%a_][%w_]*[.:][%a_][%w_]*)%(%)") do
        local dup = false
        for _, o in ipairs(out) do if o.line == n and o.name == more then dup = true end end
        if not dup then
          out[#out + 1] = { name = more, params = more:find(":", 1, true) and 1 or 0, vararg = false, line = n }
        end
      end
    end
  end
  return out
end

-- The value a qualified name denotes, or nil.
local function value_of(name)
  local head, rest = name:match("^([%a_][%w_]*)(.*)$")
  for _, v in ipairs({ module(head) or false, object(head) or false }) do -- "pool": module, or a Pool
    for _, key in rest:gmatch("([.:])([%a_][%w_]*)") do
      if not v then break end
      v = index(v, key) or false
    end
    if v then return v end
  end
  return nil
end
M.value_of = value_of

-- arity(name) -> nparams, isvararg | nil.
function M.arity(name)
  local f = value_of(name)
  if type(f) ~= "function" then return nil end
  local info = debug.getinfo(f, "Su")
  if info.what == "C" or info.nparams == nil then return nil end
  return info.nparams, info.isvararg
end

return M
