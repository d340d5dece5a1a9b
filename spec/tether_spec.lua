-- tether (top level): now, sleep, pid, ppid, executable, threads, exit, main.
-- Issue #2 acceptance point 16, and the top-level surface.
local tether = require "tether"
local util = require "helpers.util"

local is54 = _VERSION == "Lua 5.4"

describe("tether.now()", function()
  it("is a number in seconds that follows the wall of time", function()
    local t1 = tether.now()
    util.sleep(0.2) -- /bin/sleep: no tether involved
    local t2 = tether.now()
    assert.are.equal("number", type(t1))
    assert.is_true(t2 - t1 >= 0.19 and t2 - t1 < 1.5, "elapsed " .. (t2 - t1))
  end)

  it("never goes backwards", function()
    local last = tether.now()
    for _ = 1, 10000 do
      local t = tether.now()
      assert(t >= last, "now() went backwards")
      last = t
    end
  end)
end)

describe("tether.sleep()", function()
  local cases = { 0.05, 0.2 }
  for _, s in ipairs(cases) do
    it("sleeps " .. s .. " s without burning CPU", function()
      local t0, c0 = tether.now(), os.clock()
      tether.sleep(s)
      local dt, dc = tether.now() - t0, os.clock() - c0
      assert.is_true(dt >= s and dt < s + 0.5, "slept " .. dt)
      assert.is_true(dc < 0.05, "used " .. dc .. " s of CPU")
    end)
  end

  for _, s in ipairs({ 0, -1 }) do
    it("returns at once for " .. s, function()
      local t0 = tether.now()
      tether.sleep(s)
      assert.is_true(tether.now() - t0 < 0.05)
    end)
  end

  it("raises naming the argument for a non-number", function()
    local ok, msg = pcall(tether.sleep, "soon")
    assert.is_false(ok)
    assert.matches("#1", tostring(msg), 1, true)
  end)
end)

describe("process identity", function()
  local me = util.stat_of(util.pid())

  it("pid() is this process's pid", function()
    assert.are.equal(util.pid(), tether.pid())
  end)

  it("ppid() is this process's parent", function()
    assert.are.equal(me.ppid, tether.ppid())
  end)

  it("executable() is /proc/self/exe", function()
    if os.getenv("TETHER_VALGRIND") then
      pending("under valgrind /proc/<pid>/exe seen from outside is valgrind's tool")
      return
    end
    local want = util.sh("readlink /proc/" .. util.pid() .. "/exe"):gsub("\n$", "")
    assert.are.equal(want, tether.executable())
  end)

  it("threads() counts this process's OS threads", function()
    local want = #util.sh("ls /proc/" .. util.pid() .. "/task"):gsub("[^\n]", "")
    assert.are.equal(want, tether.threads())
  end)
end)

describe("tether.exit()", function()
  it("exits with the code, flushing io buffers", function()
    local out, err, code = util.lua_run([[
      io.write("before exit")
      require("tether").exit(3)
      io.write("not reached")
    ]])
    assert.are.equal("before exit", out)
    assert.are.equal("", err)
    assert.are.equal(3, code)
  end)
end)

-- Point 16.
describe("tether.main(fn)", function()
  -- A finalizer writing a marker: main must run finalizers before exiting.
  local gc_marker = [[
    setmetatable(_G, { __gc = function() io.stdout:write("finalized\n") io.stdout:flush() end })
  ]]

  it("prints the error on stderr and exits 1, after <close> variables ran", function()
    if not is54 then pending("to-be-closed variables need Lua 5.4") return end
    local out, err, code = util.lua_run([[
      local tether = require "tether"
      tether.main(function()
        local guard <close> = setmetatable({}, { __close = function(_, e)
          io.stdout:write("closed\n")
          io.stdout:flush()
        end })
        io.stdout:write("running\n")
        error("boom: it failed")
      end)
      io.stdout:write("not reached\n")
    ]])
    assert.are.equal("running\nclosed\n", out)
    assert.matches("boom: it failed", err, 1, true)
    assert.are.equal(1, code)
  end)

  it("runs finalizers before exiting on error", function()
    if _VERSION == "Lua 5.1" then pending("tables have no __gc in Lua 5.1") return end
    local out, err, code = util.lua_run(gc_marker .. [[
      require("tether").main(function() error("boom") end)
      io.stdout:write("not reached\n")
    ]])
    assert.are.equal("finalized\n", out)
    assert.matches("boom", err, 1, true)
    assert.are.equal(1, code)
  end)

  it("exits 0 when fn returns, after <close> variables and finalizers ran", function()
    if not is54 then pending("to-be-closed variables need Lua 5.4") return end
    local out, err, code = util.lua_run(gc_marker .. [[
      require("tether").main(function()
        local guard <close> = setmetatable({}, { __close = function() io.stdout:write("closed\n") end })
        io.stdout:write("ran\n")
      end)
    ]])
    assert.are.equal("ran\nclosed\nfinalized\n", out)
    assert.are.equal("", err)
    assert.are.equal(0, code)
  end)

  it("prints a tether error object as its message", function()
    local out, err, code = util.lua_run([[
      local tether, exec = require "tether", require "tether.exec"
      tether.main(function()
        local ok, e = exec.command("tether-no-such-binary"):start()
        error(e)
      end)
    ]])
    assert.are.equal("", out)
    assert.matches('exec: "tether-no-such-binary": executable file not found in $PATH', err, 1, true)
    assert.are.equal(1, code)
  end)

  it("prefixes an error object with the place it came from, and prints a traceback", function()
    local out, err, code = util.lua_run([[
      local tether, exec = require "tether", require "tether.exec"
      local function start_it()
        local ok, e = exec.command("tether-no-such-binary"):start()
        error(e)
      end
      tether.main(function()
        start_it()
      end)
    ]])
    assert.are.equal("", out)
    local first = err:match("^[^\n]*")
    assert.are.equal('(command line):4: exec: "tether-no-such-binary": executable file not found in $PATH', first)
    assert.matches("\nstack traceback:\n", err, 1, true)
    assert.matches("(command line):4: in ", err, 1, true) -- start_it
    assert.matches("(command line):7: in ", err, 1, true) -- fn, which called it
    assert.is_nil(err:find("tether/init.lua", 1, true), err) -- main's own frames are left out
    assert.are.equal(1, code)
  end)

  it("keeps the place a string error already names, and names the line of a runtime error", function()
    local _, err, code = util.lua_run([[
      require("tether").main(function()
        local t
        return t.x
      end)
    ]])
    assert.matches("^%(command line%):3: attempt to index", err)
    assert.are.equal(1, code)
    _, err, code = util.lua_run([[
      require("tether").main(function()
        error("boom")
      end)
    ]])
    assert.matches("^%(command line%):2: boom\n", err)
    assert.are.equal(1, code)
  end)

  it("exits 1 with a message for an error value that is not a string", function()
    local out, err, code = util.lua_run([[
      require("tether").main(function() error({}) end)
    ]])
    assert.are.equal("", out)
    assert.is_true(#err > 0)
    assert.are.equal(1, code)
  end)
end)
