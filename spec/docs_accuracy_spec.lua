-- The docs name what exists: every tether name in docs/go-to-tether.md's tables resolves in
-- the loaded API (a module field, a method, a field the code uses), no row marks an
-- existing name as missing, and every signature heading of the reference pages
-- (`## exec.command(name, ...)`) names a function with that many parameters
-- (spec/helpers/docnames.lua). Issue 15, acceptance 9.
local docnames = require "helpers.docnames"
local util = require "helpers.util"

local function page(name) return assert(util.readfile(util.root .. "/docs/" .. name)) end

local function unresolved(text)
  local bad = {}
  for _, n in ipairs(docnames.go_names(text)) do
    local ok, why = docnames.resolve(n.name)
    if not ok then bad[#bad + 1] = ("line %d: %s (%s)"):format(n.line, n.name, why) end
  end
  return bad
end

-- Signature lines whose parameters do not match the function's, and those naming nothing.
local function mismatches(text)
  local bad, checked = {}, 0
  for _, s in ipairs(docnames.signatures(text)) do
    if docnames.value_of(s.name) == nil then
      bad[#bad + 1] = ("line %d: %s names nothing"):format(s.line, s.name)
    else
      local np, va = docnames.arity(s.name)
      if np then
        checked = checked + 1
        if np ~= s.params or (va and true or false) ~= s.vararg then
          bad[#bad + 1] = ("line %d: %s: the docs show %d parameter(s)%s, the code takes %d%s"):format(s.line, s.name,
            s.params, s.vararg and " and ..." or "", np, va and " and ..." or "")
        end
      end
    end
  end
  return bad, checked
end

describe("docs/go-to-tether.md", function()
  it("names only what exists in tether's API", function()
    local text = page("go-to-tether.md")
    local names = docnames.go_names(text)
    assert.is_true(#names > 100, "found only " .. #names .. " names")
    assert.are.same({}, unresolved(text))
  end)

  -- A row "| `Go name` | ✗ `tether.name()` |" says tether.name does not exist yet.
  local function claimed_missing(text)
    local wrong, n = {}, 0
    for line in (text .. "\n"):gmatch("([^\n]*)\n") do
      n = n + 1
      local col = line:match("^|[^|]*|([^|]*)|")
      local span = col and col:match("✗%s*`([^`]*)`")
      if span then
        for _, name in ipairs(docnames.go_names("| x | `" .. span .. "` |")) do
          if docnames.resolve(name.name) then wrong[#wrong + 1] = ("line %d: %s exists"):format(n, name.name) end
        end
      end
    end
    return wrong
  end

  it("marks nothing that exists as missing (✗)", function()
    assert.are.same({}, claimed_missing(page("go-to-tether.md")))
    -- the row this page had before tether.cpus() was noticed
    assert.are.same({ "line 1: tether.cpus exists" }, claimed_missing("| `runtime.NumCPU` | ✗ `tether.cpus()` | |"))
  end)

  it("maps runtime.NumCPU to tether.cpus()", function()
    assert.is_truthy(page("go-to-tether.md"):find("| `runtime.NumCPU` | `tether.cpus()` |", 1, true))
  end)

  it("fails on an invented name, and names it", function()
    local text = page("go-to-tether.md") .. table.concat({
      "", "| Go | tether | notes |", "|---|---|---|",
      "| `exec.CommandRetry` | `exec.command_with_retries(cmd)` | |",
      "| `cmd.Timeout` | `cmd.timout` | |",
      "| `cmd.Frob()` | `cmd:frobnicate()` | |",
      "| `x.Y` | `gizmo.run()` | |",
      "| `os.Getpid` | `tether.pid()`, `bogus_helper()` | |",
    }, "\n")
    local bad = unresolved(text)
    local all = table.concat(bad, "\n")
    for _, name in ipairs({ "exec.command_with_retries", "cmd.timout", "cmd:frobnicate", "gizmo.run", "bogus_helper" }) do
      assert.is_truthy(all:find(name, 1, true), name .. " was not reported:\n" .. all)
    end
    assert.are.equal(5, #bad, all)
  end)
end)

describe("the reference pages' signature lines", function()
  if not debug.getinfo(print, "u").nparams then
    pending("debug.getinfo gives no parameter counts on " .. _VERSION .. " (checked on 5.2+)")
    return
  end

  it("match the arity of the functions they name", function()
    local p = assert(io.popen("ls " .. util.root .. "/docs/*.md"))
    local bad, checked = {}, 0
    for file in p:lines() do
      local b, c = mismatches(assert(util.readfile(file)))
      checked = checked + c
      for _, m in ipairs(b) do bad[#bad + 1] = file:match("[^/]*$") .. " " .. m end
    end
    p:close()
    assert.is_true(checked > 100, "checked only " .. checked .. " signatures")
    assert.are.same({}, bad)
  end)

  it("fail on a signature with a parameter the function does not take, or a function that does not exist", function()
    local bad = mismatches(table.concat({
      "## exec.look_path(name, extra)", "## tether.sleep(seconds [, ctx])",
      "### reader:read()", "## exec.run_all(cmds)", "```", "## exec.look_path(a, b, c)", "```",
    }, "\n"))
    assert.are.equal(3, #bad, table.concat(bad, "\n"))
    assert.matches("exec.look_path: the docs show 2 parameter", bad[1], 1, true)
    assert.matches("reader:read: the docs show 1 parameter", bad[2], 1, true)
    assert.matches("exec.run_all names nothing", bad[3], 1, true)
  end)
end)
