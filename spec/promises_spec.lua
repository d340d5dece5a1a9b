-- Promises kept at the edges (issue 14, acceptance 5): sleep(math.huge, ctx), size
-- arguments that raise, DESIGN's zombie promise (the next tether call of any kind reaps a
-- collected Process), and fs.read_file on a FIFO whose writer comes late (Go's os.ReadFile).
local tether = require "tether"
local context = require "tether.context"
local core = require "tether.core"
local env = require "tether.env"
local exec = require "tether.exec"
local fs = require "tether.fs"
local util = require "helpers.util"

local unpack = table.unpack or unpack

local warm, mark, check = util.no_leaks()
setup(warm)
before_each(mark)
after_each(check)
teardown(function() -- the lane's threads exit once idle: leave a quiet process to the next spec
  local deadline = tether.now() + 30
  while fs.lane_stats().threads > 0 and tether.now() < deadline do tether.sleep(0.05) end
end)

describe("tether.sleep(math.huge, ctx)", function()
  it("sleeps until the context times out, then returns nil, the context's error", function()
    local ctx = context.with_timeout(context.background(), 0.2)
    local ok, err = tether.sleep(math.huge, ctx)
    assert.is_nil(ok)
    assert.are.equal(ctx:err(), err)
    assert.is_true(ctx:done())
  end)

  it("sleeps until a cancelled context is done", function()
    local ctx, cancel = context.with_cancel(context.background())
    cancel()
    assert.is_nil((tether.sleep(math.huge, ctx)))
  end)

  it("without a context never returns (a child that sleeps for ever is still asleep)", function()
    local out, _, code = util.lua_run([[
      require("tether").sleep(math.huge)
      print("returned")
    ]], { prefix = "timeout -s KILL 1", timeout = 20 })
    assert.are_not.equal(0, code)
    assert.is_nil(out:match("returned"))
  end)
end)

describe("size arguments", function()
  it("buffer:read_from(fd, max) raises for max < 1 or > 2^30", function()
    local r, w = core.pipe()
    local b = core.buffer()
    for _, bad in ipairs { -1, 0, 2 ^ 31 } do
      local ok, err = pcall(b.read_from, b, r, bad)
      assert.is_false(ok)
      assert.truthy(tostring(err):match("max"), tostring(err))
    end
    assert(w:write("abc"))
    assert.are.equal(3, b:read_from(r, 16))
    assert.are.equal("abc", b:result())
    r:close()
    w:close()
  end)

  it("fd:read(max) raises for a max beyond 2^30 instead of allocating it", function()
    local r, w = core.pipe()
    assert.is_false((pcall(r.read, r, 2 ^ 40)))
    r:close()
    w:close()
  end)
end)

describe("a Process collected without wait", function()
  it("is reaped by the next tether call of any kind: env.get after collectgarbage", function()
    local r, w = core.pipe() -- the child's stdin: it runs until we close w
    local cmd = exec.command(unpack(util.child("hang", 60)))
    cmd.stdin = r
    cmd.stdout = "null"
    assert(cmd:start())
    local pid = cmd.process.pid
    r:close()
    cmd = nil -- luacheck: ignore 311
    collectgarbage(); collectgarbage()
    assert.is_true(util.alive(pid), "the child should still run after collection")
    w:close() -- EOF: the child exits and, unreaped, is a zombie
    local deadline = os.time() + 30
    repeat
      local st = util.stat_of(pid)
    until (st and st.state == "Z") or os.time() > deadline -- no tether call while waiting
    assert.are.equal("Z", util.stat_of(pid).state)
    assert(env.get("PATH"))
    assert.is_nil(util.stat_of(pid), "the zombie outlived env.get")
  end)
end)

describe("fs.read_file on a FIFO", function()
  it("waits for a writer that opens it 0.3 s later and returns its data, as Go's os.ReadFile", function()
    local fifo = util.mkfifo()
    local writer = exec.command("sh", "-c", "sleep 0.3; printf 'late data' > " .. util.shquote(fifo))
    assert(writer:start())
    local data, err = fs.read_file(fifo)
    assert(writer:wait())
    assert.are.equal("late data", data, tostring(err))
  end)

  it("stops waiting for a writer when the context is done", function()
    local fifo = util.mkfifo()
    local ctx = context.with_timeout(context.background(), 0.2)
    local data, err = fs.read_file(fifo, { ctx = ctx })
    assert.is_nil(data)
    assert.truthy(err)
    -- The lane thread sees the cancellation within its next poll slice and lets go of the
    -- FIFO (bounded wait; the leak check after the test sees the rest).
    local function open_here() return util.fd_summary():find(fifo, 1, true) ~= nil end
    local deadline = tether.now() + 10
    while open_here() and tether.now() < deadline do util.sleep(0.02) end
    assert.is_false(open_here(), "a lane thread still has the FIFO open")
  end)
end)

describe("a wait the OS refuses", function()
  it("returns nil, err from tether.wait (poll: EINVAL, more fds than RLIMIT_NOFILE)", function()
    local out, err, code = util.lua_run([[
      local core = require "tether.core"
      local wait = require "tether.wait"
      local list = {}
      for _ = 1, 64 do list[#list + 1] = -1; list[#list + 1] = "r" end
      local i, e = wait.wait_many(list, core.now() + 0.01)
      io.write(tostring(i), " ", tostring(e and e.code), "\n")
    ]], { prefix = [[sh -c 'ulimit -n 32; exec "$0" "$@"']] })
    assert.are.equal(0, code, tostring(err))
    local first = out:match("^[^\n]*")
    assert.are.equal("nil EINVAL", first)
  end)

  it("returns nil, err through a custom waiter when its epoll fd cannot be made (EMFILE)", function()
    local out, err, code = util.lua_run([[
      local tether = require "tether"
      local core = require "tether.core"
      local wait = require "tether.wait"
      tether.set_waiter(function() end)
      local files = {}
      repeat local f = io.open("/dev/null") ; files[#files + 1] = f until not f
      local ok, e = wait.wait(0, "r", core.now() + 1)
      io.write(tostring(ok), " ", tostring(e and e.code), "\n")
    ]], { prefix = [[sh -c 'ulimit -n 64; exec "$0" "$@"']] })
    assert.are.equal(0, code, tostring(err))
    assert.are.equal("nil EMFILE", out:match("^[^\n]*"))
  end)
end)
