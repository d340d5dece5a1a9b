-- The child guard (tether.guard_children, turned on by set_waiter(waiters.ngx)) is per
-- thread and never unblocks SIGCHLD where it did not block it (issue 12, Build 2).
-- Each test runs in its own interpreter: the busted process's signal mask stays as it is.
-- What a thread blocks is read from /proc/thread-self/status (SigBlk, SIGCHLD = bit 16).
local util = require "helpers.util"

-- The script's stdout lines: "<label> <0|1>" for SIGCHLD blocked in the main thread.
local PRELUDE = [[
local tether = require "tether"
local exec = require "tether.exec"
local function blocked()
  local f = assert(io.open("/proc/thread-self/status"))
  local s = f:read("*a"); f:close()
  local hex = s:match("SigBlk:%s*(%x+)")
  local nib = tonumber(hex:sub(-5, -5), 16) -- bits 16..19
  return nib % 2 == 1 and 1 or 0
end
local function say(label) io.write(label, " ", blocked(), "\n") end
]]

local function run(script)
  local out, err, code = util.lua_run(PRELUDE .. script)
  assert.are.equal(0, code, "script failed: " .. tostring(err))
  local seen = {}
  for label, v in out:gmatch("(%S+) (%d)\n") do seen[label] = v == "1" end
  return seen, out
end

describe("the child guard", function()
  it("set_waiter(waiters.ngx) blocks SIGCHLD from the thread's next spawn on, set_waiter(nil) unblocks it", function()
    local seen, out = run([[
      say("before")
      tether.set_waiter(tether.waiters.ngx)
      say("armed")
      local cmd = exec.command("true")
      assert(cmd:start())
      say("spawned")
      tether.set_waiter(nil)
      say("off")
      assert(cmd:wait())
    ]])
    assert.is_false(seen.before, out)
    assert.is_false(seen.armed, "set_waiter blocked SIGCHLD before any spawn: " .. out)
    assert.is_true(seen.spawned, out)
    assert.is_false(seen.off, out)
  end)

  it("turned off in a thread that had SIGCHLD blocked already, leaves it blocked", function()
    -- Started with SIGCHLD blocked (sigexec), as an nginx pool thread has it.
    local sigexec = assert(os.getenv("TETHER_SIGEXEC"), "TETHER_SIGEXEC not set (make test sets it)")
    local out, err, code = util.lua_run(PRELUDE .. [[
      say("inherited")
      tether.guard_children(true)
      tether.set_waiter(nil)
      say("after")
      tether.set_waiter(tether.waiters.ngx)
      local cmd = exec.command("true")
      assert(cmd:start()) -- applies the guard (no wait here: there is no ngx.sleep)
      tether.set_waiter(nil)
      assert(cmd:wait())
      say("again")
    ]], { prefix = util.shquote(sigexec) .. " -b 17 --" })
    assert.are.equal(0, code, tostring(err))
    assert.are.equal("inherited 1\nafter 1\nagain 1\n", out,
      "the guard unblocked a SIGCHLD it had not blocked")
  end)

  it("reports the previous setting of this thread", function()
    local _, out = run([[
      io.write(tostring(tether.guard_children(true)), " ", tostring(tether.guard_children(false)), " ",
        tostring(tether.guard_children(false)), "\n")
    ]])
    assert.are.equal("false true false\n", out)
  end)
end)
