--- tether.env: the process environment, like Go's os.Getenv & co.
--
-- Every access goes through one lock in C (src/env.c), the same lock spawn
-- holds while a child inherits the environment, so worker threads may read
-- it safely while Lua changes it. Changes are real: setenv(3) and
-- unsetenv(3) change the environment children inherit.
--
-- Misuse raises naming the argument: a key that is not a string, is empty,
-- or contains '=' or NUL; a value that is not a string (or number) or
-- contains NUL. OS failures return nil, err (see tether.errors).
local core = require "tether.core"
local errors = require "tether.errors"

local M = {}

local type, tostring, setmetatable, error = type, tostring, setmetatable, error
local find, sub, upper, byte, format = string.find, string.sub, string.upper, string.byte, string.format
local concat = table.concat

-- Raises "bad argument #n to 'fname' (msg)" at the caller of fname;
-- level is 3 when called from fname itself, 4 from a helper of fname.
local function argerror(n, fname, msg, level)
  error(format("bad argument #%d to '%s' (%s)", n, fname, msg), level or 3)
end

-- Raises (at the caller of fname) unless k is a valid variable name.
local function checkkey(fname, k, n)
  n = n or 1
  if type(k) ~= "string" then
    argerror(n, fname, "string expected, got " .. type(k), 4)
  elseif k == "" then
    argerror(n, fname, "key must not be empty", 4)
  elseif find(k, "=", 1, true) then
    argerror(n, fname, "key must not contain '='", 4)
  elseif find(k, "\0", 1, true) then
    argerror(n, fname, "key must not contain NUL", 4)
  end
end

-- Raises unless v is a string or number without NUL; returns it as a string.
local function checkvalue(fname, v, n)
  local t = type(v)
  if t == "number" then return tostring(v) end
  if t ~= "string" then
    argerror(n, fname, "string expected, got " .. t, 4)
  elseif find(v, "\0", 1, true) then
    argerror(n, fname, "value must not contain NUL", 4)
  end
  return v
end

--- env.get(k [, default]) -> the value of k (a string, possibly empty).
-- When k is unset: default (nil when not given). An empty value is
-- returned as "", not replaced by default; use lookup to tell them apart.
function M.get(k, default)
  checkkey("get", k)
  local v = core.env_get(k)
  if v == nil then return default end
  return v
end

--- env.lookup(k) -> value, true when k is set (value may be ""), or
-- nil, false when it is unset (Go's os.LookupEnv).
function M.lookup(k)
  checkkey("lookup", k)
  local v = core.env_get(k)
  if v == nil then return nil, false end
  return v, true
end

--- env.set(k, v) -> true, or nil, err when setenv fails (err.op "setenv",
-- err.path k, err.errno e.g. ENOMEM). v may be a string or a number.
function M.set(k, v)
  checkkey("set", k)
  v = checkvalue("set", v, 2)
  local ok, errno = core.env_set(k, v)
  if not ok then return nil, errors.from_errno("setenv", k, errno) end
  return true
end

--- env.unset(k) -> true (also when k was not set), or nil, err when
-- unsetenv fails (err.op "unsetenv").
function M.unset(k)
  checkkey("unset", k)
  local ok, errno = core.env_unset(k)
  if not ok then return nil, errors.from_errno("unsetenv", k, errno) end
  return true
end

--- env.clear() -> true, or nil, err: removes every variable (Go's
-- os.Clearenv). Save env.environ() first to restore it.
function M.clear()
  local ok, errno = core.env_clear()
  if not ok then return nil, errors.from_errno("clearenv", nil, errno) end
  return true
end

-- Substrings (upper case) of names whose values environ{redact=true} hides.
local secret_words = { "TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY",
  "CREDENTIAL", "AUTH", "PRIVATE" }

--- env.looks_secret(name) -> true when name contains, in any case, one
-- of TOKEN, SECRET, PASSWORD, PASSWD, KEY, CREDENTIAL, AUTH, PRIVATE
-- (so GITHUB_TOKEN, db_password, SSH_AUTH_SOCK), else false.
function M.looks_secret(name)
  if type(name) ~= "string" then
    argerror(1, "looks_secret", "string expected, got " .. type(name))
  end
  local u = upper(name)
  for i = 1, #secret_words do
    if find(u, secret_words[i], 1, true) then return true end
  end
  return false
end

--- The placeholder shown instead of a secret value.
M.REDACTED = "<redacted>"

--- env.environ([opts]) -> {"K=V", ...}: a copy of the environment, in the
-- process's order (Go's os.Environ). opts.redact = true replaces the value
-- of every name that looks_secret by "<redacted>" ("GITHUB_TOKEN=<redacted>");
-- opts nil or redact nil/false = values as they are.
function M.environ(opts)
  if opts ~= nil and type(opts) ~= "table" then
    argerror(1, "environ", "table expected, got " .. type(opts))
  end
  local list = core.env_list()
  if opts and opts.redact then
    for i = 1, #list do
      local eq = find(list[i], "=", 1, true)
      if eq and M.looks_secret(sub(list[i], 1, eq - 1)) then
        list[i] = sub(list[i], 1, eq) .. M.REDACTED
      end
    end
  end
  return list
end

-- expand: Go's os.Expand, byte for byte.

-- Shell special parameters: $*, $#, $$, $@, $!, $?, $-, $0..$9.
local function is_special(c)
  return c == "*" or c == "#" or c == "$" or c == "@" or c == "!" or
    c == "?" or c == "-" or (c >= "0" and c <= "9")
end

-- Go's getShellName: the name after a '$' at s[i], and how many bytes
-- the name's syntax used. name "" with w > 0 is bad syntax (eaten);
-- name "" with w == 0 means no name (the '$' is kept).
local function shell_name(s, i)
  local c = sub(s, i, i)
  if c == "{" then
    local c1 = sub(s, i + 1, i + 1)
    if #s - i + 1 > 2 and is_special(c1) and sub(s, i + 2, i + 2) == "}" then
      return c1, 3
    end
    local close = find(s, "}", i + 1, true)
    if close == nil then return "", 1 end         -- "${" unclosed: eat "${"
    if close == i + 1 then return "", 2 end       -- "${}": eat it
    return sub(s, i + 1, close - 1), close - i + 1
  elseif is_special(c) then
    return c, 1
  end
  local _, e = find(s, "^[%w_]*", i)
  return sub(s, i, e), e - i + 1
end

-- The default mapping: the environment; names that cannot be set are unset.
local function getenv_or_empty(name)
  if find(name, "=", 1, true) or find(name, "\0", 1, true) then return "" end
  return core.env_get(name) or ""
end

--- env.expand(s [, mapping]) -> s with $VAR and ${VAR} replaced, as Go's
-- os.Expand (mapping given) or os.ExpandEnv (mapping nil: the environment).
-- mapping is a function(name) -> value or a table {name = value}; a nil
-- value (unset) gives "", other values go through tostring.
-- Names are [A-Za-z0-9_]+ or one of the shell specials * # $ @ ! ? - 0-9
-- (so "$$" asks the mapping for "$", and is "" from the environment); a '$'
-- not followed by a name is kept ("5$" stays "5$"); bad syntax ("${}" or an
-- unclosed "${") is dropped, as Go does.
-- Raises when s is not a string (or number) or mapping is neither nil, a
-- function nor a table.
function M.expand(s, mapping)
  local ts = type(s)
  if ts == "number" then
    s = tostring(s)
  elseif ts ~= "string" then
    argerror(1, "expand", "string expected, got " .. ts)
  end
  local lookup
  local tm = type(mapping)
  if mapping == nil then
    lookup = getenv_or_empty
  elseif tm == "function" then
    lookup = mapping
  elseif tm == "table" then
    lookup = function(name) return mapping[name] end
  else
    argerror(2, "expand", "function or table expected, got " .. tm)
  end
  if not find(s, "$", 1, true) then return s end
  local out, n = {}, 0
  local i, j, len = 1, 1, #s   -- i: start of the text not yet copied
  while j <= len do
    if byte(s, j) == 36 and j < len then   -- '$' with something after it
      n = n + 1; out[n] = sub(s, i, j - 1)
      local name, w = shell_name(s, j + 1)
      if name == "" and w > 0 then
        -- bad syntax: eat it
      elseif name == "" then
        n = n + 1; out[n] = "$"
      else
        local v = lookup(name)
        if v ~= nil then n = n + 1; out[n] = tostring(v) end
      end
      j = j + w
      i = j + 1
    end
    j = j + 1
  end
  n = n + 1; out[n] = sub(s, i)
  return concat(out)
end

-- Secrets: values kept out of tostring, concatenation and pairs.
local secret_values = setmetatable({}, { __mode = "k" })

local Secret = {}
local secret_mt = {
  __index = Secret,
  __name = "tether.Secret",
  __tostring = function() return M.REDACTED end,
  -- tostring of a Secret is "<redacted>", whichever side it is on.
  __concat = function(a, b) return tostring(a) .. tostring(b) end,
  __metatable = "tether.Secret",
}

--- secret:reveal() -> the value, a string.
function Secret:reveal()
  return secret_values[self]
end

--- env.secret(k) -> a Secret holding k's value, or nil when k is unset.
-- tostring(secret) and concatenation give "<redacted>", so it can be
-- logged by mistake without leaking; secret:reveal() gives the value and
-- secret.name the variable's name.
function M.secret(k)
  checkkey("secret", k)
  local v = core.env_get(k)
  if v == nil then return nil end
  local s = setmetatable({ name = k }, secret_mt)
  secret_values[s] = v
  return s
end

--- env.is_secret(v) -> true when v is a Secret made by env.secret.
function M.is_secret(v)
  return type(v) == "table" and secret_values[v] ~= nil
end

return M
