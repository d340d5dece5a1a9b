-- tether.cpus(): the affinity mask (set with taskset on a child Lua process)
-- capped by a cgroup v2 cpu.max quota (an injected file).
-- Issue #4 acceptance point 6.
local tether = require "tether"
local core = require "tether.core"
local util = require "helpers.util"

-- Runs `taskset -c LIST lua -e 'print(tether.cpus(...))'`; the number printed.
local function cpus_under_taskset(list, opts_src)
  local out, err, code = util.lua_run(
    "io.write(require('tether').cpus(" .. (opts_src or "") .. "))",
    { prefix = "taskset -c " .. list })
  assert.are.equal(0, code, err)
  return tonumber(out)
end

local function nproc()
  local out = util.sh("nproc")
  return tonumber(out:match("%d+"))
end

local function cpu_max_file(content)
  local path = util.tmpname()
  util.writefile(path, content)
  util.defer(function() os.remove(path) end)
  return path
end

after_each(util.cleanup)

describe("tether.cpus()", function()
  it("is a positive integer no larger than the CPUs nproc sees", function()
    local n = tether.cpus()
    assert.are.equal("number", type(n))
    assert.are.equal(math.floor(n), n)
    assert.is_true(n >= 1 and n <= nproc(), "cpus() = " .. n .. ", nproc = " .. nproc())
  end)

  it("follows the affinity mask of a child started with taskset -c 0", function()
    assert.are.equal(1, cpus_under_taskset("0"))
    assert.are.equal(1, cpus_under_taskset("0", "{ cpu_max = '/nonexistent' }"))
  end)

  it("counts every CPU of a wider mask (taskset -c 0-N)", function()
    local all = core.cpu_count()
    local n = cpus_under_taskset("0-" .. (all - 1), "{ cpu_max = '/nonexistent' }")
    assert.are.equal(all, n)
  end)

  local cases = {
    { "max 100000", "no cap", function(aff) return aff end },
    { "150000 100000", "2 (1.5 rounded up)", function(aff) return math.min(aff, 2) end },
    { "50000 100000", "1 (0.5 rounded up)", function() return 1 end },
    { "100000 100000\n", "1", function() return 1 end },
    { "1 1000000", "1 (at least one)", function() return 1 end },
    { "800000 100000", "8, capped by affinity", function(aff) return math.min(aff, 8) end },
    { "garbage", "no cap (malformed)", function(aff) return aff end },
    { "", "no cap (empty)", function(aff) return aff end },
    { "-5 100000", "no cap (negative)", function(aff) return aff end },
    { "100000 0", "no cap (zero period)", function(aff) return aff end },
  }
  for _, c in ipairs(cases) do
    it(("reads a cpu.max of \"%s\" as %s"):format(c[1]:gsub("\n", "\\n"), c[2]), function()
      local aff = core.cpu_count()
      assert.are.equal(c[3](aff), tether.cpus { cpu_max = cpu_max_file(c[1]) })
    end)
  end

  it("caps by the quota and the mask together (taskset -c 0, quota 2)", function()
    local path = cpu_max_file("200000 100000")
    assert.are.equal(1, cpus_under_taskset("0", "{ cpu_max = " .. string.format("%q", path) .. " }"))
  end)

  it("ignores a cpu.max file that does not exist", function()
    assert.are.equal(core.cpu_count(), tether.cpus { cpu_max = "/nonexistent/cpu.max" })
  end)

  it("raises for bad arguments, naming them", function()
    assert.has_error(function() tether.cpus(5) end, "bad argument #1 to 'cpus' (table or nil expected, got number)")
    assert.has_error(function() tether.cpus { cpu_max = 5 } end, "bad argument #1 to 'cpus' (field 'cpu_max' must be a path)")
  end)

  it("is the default size of a pool", function()
    local p = assert(require("tether.pool").new())
    assert.are.equal(tether.cpus(), p.size)
    p:close()
  end)
end)
