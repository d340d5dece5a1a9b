-- scripts/doc-coverage.lua [--docs DIR] [--lua DIR] [--src DIR] [--list]: fails when a public
-- function is undocumented.
--
-- Public functions: in lua/tether/*.lua (modules whose header says "(internal)" are
-- skipped), every function assigned to the module table (function M.x, M.x = ...,
-- also nested like tether.waiters.x) and every method of a class (function Cmd:x);
-- in src/*.c, every name in a luaL_Reg array and every lua_setfield'ed C function.
-- Names starting with "_" are private. A Lua name is documented when a line of some
-- DIR/*.md introduces it, qualified, as a call: `x.name(`, `x:name(` or `x.name{` (x any
-- identifier: `exec.look_path(`, `cmd:wait(`), in a heading (`## exec.look_path(name)`),
-- the first cell of a table row, a list item's leading code span, or a line that starts
-- with a code span. A bare `name(` in running text, or in a code block, does not count.
-- A C core name is documented when DIR/internals.md says `name(` or lists it as `name`
-- (in backquotes).
--
-- Prints the missing names and exits 1, or prints "doc coverage: N of N documented".
-- Runs on Lua 5.1 to 5.4 and LuaJIT; needs only `ls`.

local dirs = { docs = "docs", lua = "lua/tether", src = "src" }
local list_only = false -- --list: print every public name and where it is defined, then exit
do
  local i = 1
  while arg[i] do
    local k = arg[i]:match("^%-%-(%a+)$")
    if k == "list" then
      list_only = true
      i = i + 1
    else
      if not k or not dirs[k] or not arg[i + 1] then
        io.stderr:write("usage: doc-coverage.lua [--docs DIR] [--lua DIR] [--src DIR] [--list]\n")
        os.exit(2)
      end
      dirs[k] = arg[i + 1]
      i = i + 2
    end
  end
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function list(dir, ext)
  local p = assert(io.popen("ls " .. q(dir) .. " 2>/dev/null"))
  local files = {}
  for name in p:lines() do
    if name:sub(-#ext) == ext then files[#files + 1] = dir .. "/" .. name end
  end
  p:close()
  table.sort(files)
  return files
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function escape(s) return (s:gsub("%p", "%%%0")) end

-- ---- the public names ----------------------------------------------------------------

local lua_names, lua_where = {}, {} -- name -> first place it was found
local function add(into, where, name, place)
  if name:sub(1, 1) == "_" or where[name] then return end
  into[#into + 1] = name
  where[name] = place
end

local lua_files = list(dirs.lua, ".lua")
for _, path in ipairs(lua_files) do
  local text = assert(read(path))
  local header = text:match("^[^\n]*") or ""
  if not header:find("(internal)", 1, true) then
    -- The module table: what the file returns.
    local mod = text:match("\nreturn%s+setmetatable%(%s*([%a_][%w_]*)") or text:match("\nreturn%s+([%a_][%w_]*)%s*$")
      or text:match("\nreturn%s+([%a_][%w_]*)%s*\n")
    local locals = {}
    for name in text:gmatch("\nlocal%s+function%s+([%a_][%w_]*)") do locals[name] = true end
    local n = 0
    for line in (text .. "\n"):gmatch("([^\n]*)\n") do
      n = n + 1
      local place = path .. ":" .. n
      -- function mod.x(  /  function mod.sub.x(
      local t, name = line:match("^function%s+([%a_][%w_%.]*)%.([%a_][%w_]*)%s*%(")
      if t and mod and (t == mod or t:match("^" .. escape(mod) .. "%.")) then add(lua_names, lua_where, name, place) end
      -- function Class:x(
      local class, method = line:match("^function%s+([%u][%w_]*):([%a_][%w_]*)%s*%(")
      if class then add(lua_names, lua_where, method, place) end
      -- mod.x = function / core.x / a local function
      local t2, name2, rhs = line:match("^([%a_][%w_%.]*)%.([%a_][%w_]*)%s*=%s*([%a_][%w_%.]*)")
      if t2 and mod and (t2 == mod or t2:match("^" .. escape(mod) .. "%.")) then
        if rhs == "function" or rhs:match("^core%.[%a_][%w_]*$") or locals[rhs] then
          add(lua_names, lua_where, name2, place)
        end
      end
    end
  end
end

local c_names, c_where = {}, {}
for _, path in ipairs(list(dirs.src, ".c")) do
  local text = assert(read(path))
  for body in text:gmatch("luaL_Reg%s+[%w_]+%s*%[%s*%]%s*=%s*(%b{})") do
    for name in body:gmatch('{%s*"([%a_][%w_]*)"%s*,') do add(c_names, c_where, name, path) end
  end
  for name in text:gmatch('lua_pushcfunction%s*%(%s*L%s*,%s*[%w_]+%s*%)%s*;%s*lua_setfield%s*%(%s*L%s*,%s*%-?%d+%s*,%s*"([%a_][%w_]*)"%s*%)') do
    add(c_names, c_where, name, path)
  end
end

if list_only then
  for _, name in ipairs(lua_names) do print(name, lua_where[name]) end
  for _, name in ipairs(c_names) do print(name, c_where[name] .. " (C core)") end
  os.exit(0)
end

-- ---- the docs ----------------------------------------------------------------------

local docs = {}
for _, path in ipairs(list(dirs.docs, ".md")) do docs[#docs + 1] = assert(read(path)) end
local all_docs = table.concat(docs, "\n")
local internals = read(dirs.docs .. "/internals.md") or ""

local function documented(text, name)
  -- `name(` not preceded by a letter, digit or underscore: `:name(` and `.name(` count too.
  local s = "\n" .. text
  return s:find("[^%w_]" .. escape(name) .. "%(") ~= nil
end

-- The lines of the docs that introduce names: headings, the first cell of table rows,
-- list items' leading code spans, lines that start with a code span (outside ``` blocks).
local introducing = {}
for _, text in ipairs(docs) do
  local in_code = false
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    if line:match("^%s*```") then in_code = not in_code
    elseif not in_code then
      local intro = line:match("^#+%s+(.*)$") or line:match("^%s*|([^|]*)|")
        or line:match("^%s*[-*]%s+(`[^`]*`)") or line:match("^(`[^`]*`)")
      if intro then introducing[#introducing + 1] = intro end
    end
  end
end
local intro_text = "\n" .. table.concat(introducing, "\n")

-- A Lua name is introduced qualified: x.name( / x:name( / x.name{ (see the header).
local function introduced(name)
  return intro_text:find("[%w_][.:]" .. escape(name) .. "[({]") ~= nil
end

local missing = {}
for _, name in ipairs(lua_names) do
  if not introduced(name) then
    missing[#missing + 1] = ("%s (%s)%s"):format(name, lua_where[name], documented(all_docs, name)
      and ": only mentioned in passing, never introduced as x.name(...) in a heading, table row or signature line"
      or "")
  end
end
for _, name in ipairs(c_names) do
  -- internals.md lists the core's names in tables: `name` counts there as well as `name(`.
  if not documented(internals, name) and not internals:find("`" .. name .. "`", 1, true) then
    missing[#missing + 1] = ("%s (C core, %s; not in %s/internals.md)"):format(name, c_where[name], dirs.docs)
  end
end

local total = #lua_names + #c_names
if #lua_files == 0 or total == 0 then
  io.stderr:write("doc coverage: no public functions found under " .. dirs.lua .. " and " .. dirs.src .. "\n")
  os.exit(2)
end
if #missing > 0 then
  print(("doc coverage: %d of %d public functions undocumented:"):format(#missing, total))
  for _, m in ipairs(missing) do print("  " .. m) end
  os.exit(1)
end
print(("doc coverage: %d of %d documented"):format(total, total))
