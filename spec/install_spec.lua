-- install_spec.lua: rockspec/tether-scm-1.rockspec installs the C core and
-- every Lua module, and a fresh interpreter that sees only that tree can
-- require tether from it.
--
-- The build runs in a temporary copy of rockspec/, src/ and lua/ (LuaRocks'
-- builtin backend writes src/*.o and tether/core.so into its working
-- directory, which must not happen in the checkout), into a temporary tree
-- that is removed afterwards. The interpreter is $TETHER_LUA (set by
-- `make test`), else lua5.4; LuaRocks is asked for the same Lua version.

local LUA = os.getenv("TETHER_LUA") or "lua5.4"
local ROCKSPEC = "rockspec/tether-scm-1.rockspec"
local RELEASE = "0.2.0-1"
local RELEASE_ROCKSPEC = "rockspec/tether-" .. RELEASE .. ".rockspec"

local function shquote(s)
  return "'" .. tostring(s):gsub("'", [['\'']]) .. "'"
end

-- Runs a shell command; returns its exit status (a number) and its combined
-- stdout and stderr. Works on Lua 5.1 too (no status from io.popen there).
local function sh(cmd)
  local p = assert(io.popen("( " .. cmd .. " ) 2>&1 </dev/null; echo \"__status=$?\""))
  local out = p:read("*a")
  p:close()
  local status = tonumber(out:match("__status=(%d+)%s*$"))
  out = out:gsub("__status=%d+%s*$", "")
  return status, out
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

-- The repository root: this file is <root>/spec/install_spec.lua.
local ROOT do
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  local dir = src:match("^(.*)/[^/]*$") or "."
  local status, out = sh("cd " .. shquote(dir .. "/..") .. " && pwd -P")
  assert(status == 0, out)
  ROOT = out:gsub("%s+$", "")
end

-- "5.4", "5.3", "5.1" (LuaJIT says 5.1), from the interpreter itself.
local function lua_version()
  local status, out = sh(LUA .. " -e " .. shquote("io.write((_VERSION:match('%d+%.%d+')))"))
  if status == 0 and out:match("^%d+%.%d+$") then return out end
  return "5.4"
end

-- The rockspec, evaluated as LuaRocks does (a chunk of assignments).
local function load_rockspec(path)
  local env = {}
  local chunk, err
  if setfenv then
    chunk, err = loadfile(path)
    if chunk then setfenv(chunk, env) end
  else
    chunk, err = loadfile(path, "t", env)
  end
  assert(chunk, err)
  chunk()
  return env
end

local function lines_of(cmd)
  local status, out = sh(cmd)
  assert(status == 0, out)
  local t = {}
  for line in out:gmatch("[^\n]+") do t[#t + 1] = line end
  table.sort(t)
  return t
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

-- Both rockspecs build the same modules from the same files.
for _, rs in ipairs({ { file = ROCKSPEC, version = "scm-1" }, { file = RELEASE_ROCKSPEC, version = RELEASE } }) do
  describe(rs.file, function()
    it("lists every C file in src/ as a source of tether.core", function()
      local spec = load_rockspec(ROOT .. "/" .. rs.file)
      local core = spec.build.modules["tether.core"]
      local listed = {}
      for _, s in ipairs(core.sources) do listed[#listed + 1] = s end
      table.sort(listed)
      assert.are.same(lines_of("cd " .. shquote(ROOT) .. " && ls src/*.c"), listed)
    end)

    it("maps every Lua file under lua/tether/ to its module name", function()
      local spec = load_rockspec(ROOT .. "/" .. rs.file)
      local want = {}
      for _, file in ipairs(lines_of("cd " .. shquote(ROOT) .. " && find lua/tether -name '*.lua'")) do
        local name = file:gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/", "."):gsub("%.init$", "")
        want[name] = file
      end
      local got = {}
      for name, v in pairs(spec.build.modules) do
        if type(v) == "string" then got[name] = v end
      end
      assert.are.same(want, got)
    end)

    it("declares the package, version, license and Lua dependency", function()
      local spec = load_rockspec(ROOT .. "/" .. rs.file)
      assert.are.equal("tether", spec.package)
      assert.are.equal(rs.version, spec.version)
      assert.are.equal("MIT", spec.description.license)
      assert.are.equal("builtin", spec.build.type)
      assert.are.same({ "lua >= 5.1" }, spec.dependencies)
    end)

    it("has a description that describes what exists (nothing 'to come') and no example.invalid URL", function()
      local spec = load_rockspec(ROOT .. "/" .. rs.file)
      local text = spec.description.summary .. "\n" .. spec.description.detailed
      assert.is_nil(text:find("to come", 1, true), text)
      assert.is_nil(text:find("not yet", 1, true), text)
      for _, m in ipairs({ "exec", "signal", "context", "fs", "sync", "pool", "supervisor", "reaper" }) do
        assert.is_truthy(text:find("tether." .. m, 1, true), "the description does not name tether." .. m)
      end
      for _, url in ipairs({ spec.source.url, spec.description.homepage, spec.description.issues_url }) do
        assert.is_nil(url:find("example.invalid", 1, true), url)
        assert.is_truthy(url:match("^[%w+]+://[%w.-]+/"), url)
      end
    end)
  end)
end

describe("rockspec/tether-scm-1.rockspec", function()
  if sh("command -v luarocks >/dev/null") ~= 0 then
    pending("luarocks is not installed (apt-get install luarocks): `luarocks make --tree` not checked")
    return
  end

  describe("installed with `luarocks make --tree DIR`", function()
    local version = lua_version()
    local tmp, tree, build_status, build_log

    lazy_setup(function()
      local status, out = sh("mktemp -d \"${TMPDIR:-/tmp}/tether-install.XXXXXX\"")
      assert(status == 0, out)
      out = out:gsub("%s+$", "")
      status, tmp = sh("cd " .. shquote(out) .. " && pwd -P")
      assert(status == 0, tmp)
      tmp = tmp:gsub("%s+$", "")
      tree = tmp .. "/tree"
      -- A copy of what the rockspec builds from, so no build product lands
      -- in the checkout.
      status, out = sh("mkdir " .. shquote(tmp .. "/src-copy") ..
        " && cd " .. shquote(ROOT) ..
        " && cp -R rockspec src lua bin " .. shquote(tmp .. "/src-copy/"))
      assert(status == 0, out)
      -- LuaRocks is itself a Lua program: keep make test's LUA_PATH (which
      -- points into the checkout) away from it and from the build.
      build_status, build_log = sh(
        "cd " .. shquote(tmp .. "/src-copy") ..
        " && env -u LUA_PATH -u LUA_CPATH -u LUA_INIT" ..
        " -u LUA_PATH_5_2 -u LUA_CPATH_5_2 -u LUA_PATH_5_3 -u LUA_CPATH_5_3" ..
        " -u LUA_PATH_5_4 -u LUA_CPATH_5_4" ..
        " luarocks --lua-version=" .. version .. " make " .. ROCKSPEC ..
        " --tree " .. shquote(tree))
    end)

    lazy_teardown(function()
      if tmp and tmp:match("/tether%-install%.[%w]+$") then
        sh("rm -rf " .. shquote(tmp))
      end
    end)

    it("builds and installs without an error", function()
      assert(build_status == 0, "luarocks make failed:\n" .. tostring(build_log))
    end)

    it("installs bin/tether-init as a command that runs with the tree's modules", function()
      assert(build_status == 0, "luarocks make failed:\n" .. tostring(build_log))
      local status, out = sh("env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_" .. version:gsub("%.", "_") ..
        " -u LUA_CPATH_" .. version:gsub("%.", "_") .. " " .. shquote(tree .. "/bin/tether-init") ..
        " -s -e 3 -- sh -c 'exit 3'")
      assert(status == 0, "tree/bin/tether-init failed (" .. tostring(status) .. "):\n" .. out)
    end)

    it("puts tether.core and every Lua module in the tree", function()
      assert(build_status == 0, "luarocks make failed:\n" .. tostring(build_log))
      local spec = load_rockspec(ROOT .. "/" .. ROCKSPEC)
      local missing = {}
      for _, name in ipairs(sorted_keys(spec.build.modules)) do
        local rel = name:gsub("%.", "/")
        local file
        if type(spec.build.modules[name]) == "string" then
          local init = spec.build.modules[name]:match("/init%.lua$")
          file = tree .. "/share/lua/" .. version .. "/" .. rel .. (init and "/init.lua" or ".lua")
        else
          file = tree .. "/lib/lua/" .. version .. "/" .. rel .. ".so"
        end
        if not exists(file) then missing[#missing + 1] = file end
      end
      assert.are.same({}, missing)
    end)

    it("lets an interpreter whose paths name only the tree require tether and tether.exec", function()
      assert(build_status == 0, "luarocks make failed:\n" .. tostring(build_log))
      local script = tmp .. "/check.lua"
      local f = assert(io.open(script, "w"))
      f:write([=[
local t = require "tether"
local exec = require "tether.exec"
assert(type(t) == "table", "require 'tether' gave " .. type(t))
assert(type(exec.command) == "function", "tether.exec has no command()")
assert(package.loaded["tether.core"], "tether.core was not loaded by the Lua layer")
local searchpath = package.searchpath or function(name, path)
  name = name:gsub("%.", "/")
  for pattern in path:gmatch("[^;]+") do
    local file = pattern:gsub("%?", name)
    local fh = io.open(file, "rb")
    if fh then fh:close() return file end
  end
end
print("core " .. tostring(searchpath("tether.core", package.cpath)))
print("tether " .. tostring(searchpath("tether", package.path)))
print("tether.exec " .. tostring(searchpath("tether.exec", package.path)))
print("exec.command " .. (debug.getinfo(exec.command, "S").source:gsub("^@", "")))
-- The shared object actually mapped into this process.
for line in io.lines("/proc/self/maps") do
  local file = line:match("%s(/%S*tether/core%.so)$")
  if file then print("mapped " .. file) end
end
local out, err = exec.command("sh", "-c", "echo installed"):output()
print("output " .. tostring(out and out:gsub("\n", "") or err))
]=])
      f:close()

      local share = tree .. "/share/lua/" .. version
      local lib = tree .. "/lib/lua/" .. version
      local status, out = sh(
        "cd " .. shquote(tmp) ..
        " && env -u LUA_INIT -u LUA_INIT_5_2 -u LUA_INIT_5_3 -u LUA_INIT_5_4" ..
        " -u LUA_PATH_5_2 -u LUA_CPATH_5_2 -u LUA_PATH_5_3 -u LUA_CPATH_5_3" ..
        " -u LUA_PATH_5_4 -u LUA_CPATH_5_4" ..
        " LUA_PATH=" .. shquote(share .. "/?.lua;" .. share .. "/?/init.lua") ..
        " LUA_CPATH=" .. shquote(lib .. "/?.so") ..
        " " .. LUA .. " " .. shquote(script))
      assert(status == 0, "the installed tether failed to load:\n" .. out)

      local seen = {}
      for line in out:gmatch("[^\n]+") do
        local key, value = line:match("^([%w.]+) (.*)$")
        if key then
          seen[key] = seen[key] or {}
          table.insert(seen[key], value)
        end
      end
      assert.are.same({ lib .. "/tether/core.so" }, seen.core)
      assert.are.same({ share .. "/tether/init.lua" }, seen.tether)
      assert.are.same({ share .. "/tether/exec.lua" }, seen["tether.exec"])
      -- exec.command is Lua from the tree, or C from the tree's core.
      local src = seen["exec.command"][1]
      assert(src == "=[C]" or src:sub(1, #share + 1) == share .. "/",
        "exec.command comes from " .. src)
      assert.is_table(seen.mapped, "tether/core.so is not mapped into the child:\n" .. out)
      for _, file in ipairs(seen.mapped) do
        assert.are.equal(lib .. "/tether/core.so", file)
      end
      assert.are.same({ "installed" }, seen.output)
      assert.is_nil(out:find(ROOT .. "/build/", 1, true), "loaded from the checkout's build/:\n" .. out)
      assert.is_nil(out:find(ROOT .. "/lua/", 1, true), "loaded from the checkout's lua/:\n" .. out)
    end)
  end)
end)

-- `make rock` and an offline `luarocks install` of the .src.rock it builds, for Lua 5.4 and
-- 5.1, each into its own tree; an interpreter of that version that sees only its tree then
-- requires tether and runs a command. The install runs without a network (a new network
-- namespace, when unshare works here) to show that nothing is downloaded. Builds tether.core
-- twice (about 15 s): it runs once, in the main run, not in CI's shortened extra runs.
describe("make rock", function()
  if os.getenv("TETHER_SCALE") or os.getenv("TETHER_VALGRIND") then
    pending("runs once, in the main run (TETHER_SCALE/TETHER_VALGRIND set: a shortened extra run)")
    return
  end
  if sh("command -v luarocks >/dev/null && command -v zip >/dev/null") ~= 0 then
    pending("luarocks or zip is not installed (make deps installs them)")
    return
  end
  local tmp, rock, make_status, make_log
  local offline = sh("unshare -n true") == 0 and "unshare -n " or ""

  lazy_setup(function()
    local status, out = sh("mktemp -d \"${TMPDIR:-/tmp}/tether-rock.XXXXXX\"")
    assert(status == 0, out)
    tmp = out:gsub("%s+$", "")
    make_status, make_log = sh("cd " .. shquote(ROOT) .. " && make --no-print-directory rock ROCK_DIR=" ..
      shquote(tmp .. "/out"))
    rock = tmp .. "/out/tether-" .. RELEASE .. ".src.rock"
  end)

  lazy_teardown(function()
    if tmp and tmp:match("/tether%-rock%.[%w]+$") then sh("rm -rf " .. shquote(tmp)) end
  end)

  it("builds tether-" .. RELEASE .. ".src.rock holding the rockspec and the sources, without build products", function()
    assert(make_status == 0, "make rock failed:\n" .. tostring(make_log))
    assert.is_true(exists(rock), make_log)
    local status, out = sh("unzip -Z1 " .. shquote(rock))
    assert(status == 0, out)
    local names = {}
    for l in out:gmatch("[^\n]+") do names[l] = true end
    assert.is_true(names["tether-" .. RELEASE .. ".rockspec"], out)
    assert.is_true(names["tether/src/process.c"], out)
    assert.is_true(names["tether/lua/tether/exec.lua"], out)
    assert.is_true(names["tether/bin/tether-init"], out)
    for name in pairs(names) do
      assert.is_nil(name:match("%.o$") or name:match("%.so$") or name:match("^tether/build/"), name)
    end
  end)

  for _, v in ipairs({ { lua = "5.4", bin = "lua5.4" }, { lua = "5.1", bin = "lua5.1" } }) do
    it("installs offline with luarocks --lua-version=" .. v.lua .. " into a tree that " .. v.bin ..
      " requires tether from", function()
      assert(make_status == 0, "make rock failed:\n" .. tostring(make_log))
      local tree = tmp .. "/tree-" .. v.lua
      local status, out = sh("cd " .. shquote(tmp) .. " && env -u LUA_PATH -u LUA_CPATH -u LUA_INIT" ..
        " -u LUA_PATH_5_4 -u LUA_CPATH_5_4 " .. offline .. "luarocks --lua-version=" .. v.lua ..
        " install " .. shquote(rock) .. " --tree " .. shquote(tree))
      assert(status == 0, "luarocks install failed:\n" .. out)
      local share, lib = tree .. "/share/lua/" .. v.lua, tree .. "/lib/lua/" .. v.lua
      local script = tmp .. "/check-" .. v.lua .. ".lua"
      local f = assert(io.open(script, "w"))
      f:write([=[
local tether = require "tether"
local exec = require "tether.exec"
print("version " .. _VERSION)
print("cpus " .. tostring(tether.cpus() >= 1))
for line in io.lines("/proc/self/maps") do
  local file = line:match("%s(/%S*tether/core%.so)$")
  if file then print("mapped " .. file) end
end
print("tether " .. (debug.getinfo(tether.sleep, "S").source:gsub("^@", "")))
print("output " .. assert(exec.command("sh", "-c", "echo from-the-tree"):output()):gsub("\n", ""))
]=])
      f:close()
      status, out = sh("cd " .. shquote(tmp) .. " && env -u LUA_INIT -u LUA_PATH_5_4 -u LUA_CPATH_5_4" ..
        " LUA_PATH=" .. shquote(share .. "/?.lua;" .. share .. "/?/init.lua") ..
        " LUA_CPATH=" .. shquote(lib .. "/?.so") .. " " .. v.bin .. " " .. shquote(script))
      assert(status == 0, v.bin .. " could not use the installed tether:\n" .. out)
      assert.is_truthy(out:find("version Lua " .. v.lua, 1, true), out)
      assert.is_truthy(out:find("mapped " .. lib .. "/tether/core.so", 1, true), out)
      assert.is_truthy(out:find("tether " .. share .. "/tether/init.lua", 1, true), out)
      assert.is_truthy(out:find("output from-the-tree", 1, true), out)
      assert.is_truthy(out:find("cpus true", 1, true), out)
    end)
  end
end)

describe("the rockspecs and the README's luarocks commands", function()
  it("pass `luarocks lint`", function()
    if sh("command -v luarocks >/dev/null") ~= 0 then
      pending("luarocks is not installed")
      return
    end
    for _, file in ipairs({ ROCKSPEC, RELEASE_ROCKSPEC }) do
      local status, out = sh("cd " .. shquote(ROOT) .. " && luarocks lint " .. file)
      assert(status == 0, file .. ": " .. out)
      assert.are.equal("", out)
    end
  end)

  it("name the Lua version in every luarocks command of README.md", function()
    local f = assert(io.open(ROOT .. "/README.md"))
    local text = f:read("*a")
    f:close()
    local n = 0
    for line in text:gmatch("[^\n]+") do
      if line:match("^%s*luarocks ") then
        n = n + 1
        assert.is_truthy(line:find("--lua-version=", 1, true), line)
      end
    end
    assert.is_true(n >= 2, "README.md shows no luarocks command")
  end)
end)
