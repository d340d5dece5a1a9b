-- The C house (issue 14, acceptance 7): src/ has one home per behaviour, each file says
-- what it owns in its opening comment, and nothing runs in a circle through core.c.
-- Read from the sources as text (io.popen for the listing; no build needed).

local util = require "helpers.util"

local function read(path) return assert(util.readfile(path), path) end

local function src_files()
  local p = assert(io.popen("ls src"))
  local t = {}
  for name in p:lines() do
    if name:match("%.[ch]$") then t[#t + 1] = name end
  end
  p:close()
  table.sort(t)
  return t
end

-- Functions a C file defines with external linkage (a line starting a definition, not static).
local function exported(text)
  local t = {}
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    if not line:match("^static") and not line:match("^%s") and not line:match("^#")
      and not line:match("^typedef") and line:match("%)%s*{") then
      local name = line:gsub("__attribute__%s*%b()", ""):match("([%w_]+)%s*%(")
      if name then t[#t + 1] = name end
    end
  end
  return t
end

-- Whether the text (without comments) calls or names the function.
local function strip_comments(text)
  return (text:gsub("/%*.-%*/", ""))
end

describe("the C house (src/)", function()
  it("has one home for each shared behaviour: util.c, sys.c's poll, children.c, pool.c split by object", function()
    local want = {
      ["util.c"] = { "tether_fail", "tether_efd_write" },
      ["sys.c"] = { "tether_poll" },
      ["children.c"] = { "tether_children_lock", "tether_child_stash", "tether_reap_orphans" },
      ["pool.c"] = { "pool_wake", "tether_open_pool" },
      ["poolworker.c"] = { "pool_worker_main" },
      ["pooltask.c"] = { "pool_task_new", "pool_future_gc" },
      ["poolmap.c"] = { "pool_map_batch" },
    }
    local defined_in = {}
    for _, name in ipairs(src_files()) do
      if name:match("%.c$") then
        for _, fn in ipairs(exported(read("src/" .. name))) do
          assert.is_nil(defined_in[fn], fn .. " is defined in " .. tostring(defined_in[fn]) .. " and " .. name)
          defined_in[fn] = name
        end
      end
    end
    for file, fns in pairs(want) do
      for _, fn in ipairs(fns) do
        assert.are.equal(file, defined_in[fn], fn .. " should live in " .. file)
      end
    end
    assert.truthy(read("src/pool.h"):match("pool.h %- "))
  end)

  it("writes to an eventfd in one place only (util.c)", function()
    for _, name in ipairs(src_files()) do
      local code = strip_comments(read("src/" .. name))
      if name ~= "util.c" then
        assert.is_nil(code:match("write%([^;]-sizeof one%)"), name .. " writes an eventfd itself")
        assert.is_nil(code:match("efd_write%s*%([%w%s]*%)%s*{"), name .. " defines its own efd_write")
      end
    end
  end)

  it("opens every file with a comment naming the file and what it owns", function()
    for _, name in ipairs(src_files()) do
      local text = read("src/" .. name)
      local first = text:match("^/%* ([%w_%.]+) %- ")
      assert.are.equal(name, first, "src/" .. name .. " does not open with '/* " .. name .. " - ...'")
    end
  end)

  it("has no circle through core.c: core.c only assembles, and headers include no cycle", function()
    -- core.c exports nothing but luaopen_tether_core, so no other file can call into it.
    local core = read("src/core.c")
    assert.are.same({ "luaopen_tether_core" }, exported(core))
    for inc in core:gmatch('#include "([^"]+)"') do
      assert.are.equal("tether.h", inc)
    end
    -- The include graph between src files is acyclic (depth-first search).
    local edges = {}
    for _, name in ipairs(src_files()) do
      edges[name] = {}
      for inc in read("src/" .. name):gmatch('#include "([^"]+)"') do
        table.insert(edges[name], inc)
      end
    end
    local state = {}
    local function visit(n, path)
      if state[n] == "done" then return end
      assert.are_not.equal("open", state[n], "include circle: " .. table.concat(path, " -> "))
      state[n] = "open"
      for _, m in ipairs(edges[n] or {}) do
        path[#path + 1] = m
        visit(m, path)
        path[#path] = nil
      end
      state[n] = "done"
    end
    for n in pairs(edges) do visit(n, { n }) end
    -- No file but core.c names another file's registrar (tether_open_*).
    for _, name in ipairs(src_files()) do
      if name ~= "core.c" and name:match("%.c$") then
        local code = strip_comments(read("src/" .. name))
        for call in code:gmatch("(tether_open_[%w_]+)%s*%(L%)%s*;") do
          error(name .. " calls " .. call .. ", which only core.c should")
        end
      end
    end
  end)
end)
