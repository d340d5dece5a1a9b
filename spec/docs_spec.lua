-- scripts/doc-coverage.lua: passes on the repository's docs/, and fails when a public
-- function loses its documentation (on a copy of docs/ in a temp dir).

local LUA = os.getenv("TETHER_LUA") or "lua"

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- run(args) -> exit status, output (stdout and stderr).
local function run(args)
  local out = os.tmpname()
  local r1, _, r3 = os.execute(LUA .. " scripts/doc-coverage.lua " .. args .. " >" .. q(out) .. " 2>&1")
  local f = assert(io.open(out, "rb"))
  local text = f:read("*a")
  f:close()
  os.remove(out)
  local status = type(r1) == "number" and r1 / 256 or r3 -- Lua 5.1: wait status; 5.2+: true|nil, "exit", code
  return status, text
end

local function lines_of(path)
  local f = assert(io.open(path, "rb"))
  local t = {}
  for l in f:lines() do t[#t + 1] = l end
  f:close()
  return t
end

describe("scripts/doc-coverage.lua", function()
  local tmp

  before_each(function()
    local p = assert(io.popen("mktemp -d /tmp/tether-docs.XXXXXX"))
    tmp = p:read("*l")
    p:close()
    assert(tmp and tmp:match("^/tmp/tether%-docs%."))
    assert(os.execute("cp docs/*.md " .. q(tmp) .. "/"))
  end)

  after_each(function()
    if tmp and tmp:match("^/tmp/tether%-docs%.") then os.execute("rm -rf " .. q(tmp)) end
  end)

  it("passes on the repository: every public function is documented", function()
    local status, out = run("")
    assert.are.equal(0, status, out)
    local n, m = out:match("doc coverage: (%d+) of (%d+) documented")
    assert.is_truthy(n, out)
    assert.are.equal(n, m)
    assert.is_true(tonumber(n) > 50, out)
  end)

  -- Drops every line of the copied docs that documents name (`name(`), as if its doc were deleted.
  local function undocument(name, pattern)
    local p = assert(io.popen("ls " .. q(tmp)))
    local removed = 0
    for file in p:lines() do
      local path = tmp .. "/" .. file
      local kept = {}
      for _, l in ipairs(lines_of(path)) do
        if l:find(pattern) then removed = removed + 1 else kept[#kept + 1] = l end
      end
      local f = assert(io.open(path, "wb"))
      f:write(table.concat(kept, "\n"), "\n")
      f:close()
    end
    p:close()
    assert.is_true(removed > 0, "no doc line mentions " .. name)
  end

  it("fails when a public Lua function loses its doc, and names it", function()
    local _, before = run("--docs " .. q(tmp))
    assert.is_falsy(before:find("look_path", 1, true), before) -- documented in the copy
    undocument("look_path", "[^%w_]look_path%(")
    local status, out = run("--docs " .. q(tmp))
    assert.are.equal(1, status, out)
    assert.is_truthy(out:find("look_path", 1, true), out)
    assert.is_truthy(out:find("undocumented", 1, true), out)
  end)

  it("does not count a name that docs only mention in passing (not a heading, table row or signature)", function()
    undocument("look_path", "look_path%(")
    local f = assert(io.open(tmp .. "/exec.md", "ab"))
    f:write("\nRunning text that calls exec.look_path(name) in passing.\n\n```lua\nexec.look_path(\"x\")\n```\n")
    f:close()
    local status, out = run("--docs " .. q(tmp))
    assert.are.equal(1, status, out)
    assert.is_truthy(out:find("look_path (", 1, true), out)
    assert.is_truthy(out:find("only mentioned in passing", 1, true), out)
    -- The same name as a heading is documented again.
    f = assert(io.open(tmp .. "/exec.md", "ab"))
    f:write("\n## exec.look_path(name)\n")
    f:close()
    status, out = run("--docs " .. q(tmp))
    assert.are.equal(0, status, out)
  end)

  it("fails when a method of a class loses its doc", function()
    undocument("combined_output", "combined_output%(")
    local status, out = run("--docs " .. q(tmp))
    assert.are.equal(1, status, out)
    assert.is_truthy(out:find("combined_output (", 1, true), out)
  end)

  it("fails when a function of the C core is missing from internals.md", function()
    undocument("poll_many", "poll_many")
    local status, out = run("--docs " .. q(tmp))
    assert.are.equal(1, status, out)
    assert.is_truthy(out:find("poll_many (C core", 1, true), out)
  end)

  it("lists the public names it checks (--list)", function()
    local status, out = run("--list")
    assert.are.equal(0, status, out)
    for _, name in ipairs({ "command", "look_path", "combined_output", "set_waiter", "ngx", "spawn", "poll" }) do
      assert.is_truthy(out:find("\n" .. name .. "\t", 1, true) or out:find("^" .. name .. "\t"), name)
    end
    assert.is_falsy(out:find("\n_", 1, true), "a private name was listed")
  end)
end)
