-- tether in a C host's process (issue 14, acceptance 3 and 4): another thread of the host
-- forks while the Lua thread uses tether, and every child can use tether's locks; a pool
-- that is dropped is collected without waiting for its running task, and the host exits.
local tether = require "tether"
local exec = require "tether.exec"
local env = require "tether.env"
local fs = require "tether.fs"
local pool = require "tether.pool"
local util = require "helpers.util"

local warm, mark, check = util.no_leaks()
setup(warm)
before_each(mark)
after_each(check)

-- The host-thread-that-forks helper (spec/helpers/forkthread.c), built by the Makefile.
local function forkthread()
  local path = os.getenv("TETHER_FORKTHREAD")
    or (util.root .. "/build/" .. _VERSION:match("%d+%.%d+") .. "/spec/forkthread.so")
  local open, err = package.loadlib(path, "luaopen_forkthread")
  assert(open, "forkthread helper not built (make): " .. tostring(err))
  return open()
end

describe("fork() from another thread of the host", function()
  if os.getenv("TETHER_ASAN_LUA") then
    -- GCC 12's libasan has no fork handlers: a child forked while the Lua thread is inside
    -- the sanitizer's allocator hangs on its lock in luaL_newstate (gdb shows
    -- SizeClassAllocator64::GetFromAllocator). Every other run checks this.
    pending("skipped under ASan: the sanitizer's allocator is not fork-safe")
    return
  end
  it("gives children whose tether locks work: each builds a state, calls env.get, runs a command", function()
    local ft = forkthread()
    -- Each child: a fresh lua_State that loads tether, reads the environment through the
    -- env lock and spawns through the child registry (and the env lock again).
    local child = [[
      local env = require "tether.env"
      local exec = require "tether.exec"
      assert(env.get("TETHER_FORK_MARK"), "env.get: TETHER_FORK_MARK is not set")
      assert(exec.command("true"):run())
      return true
    ]]
    assert(env.set("TETHER_FORK_MARK", "0"))
    local p = pool.new { size = 1 }
    local n = util.scale(200)
    local job = ft.start(n, child, 5)
    -- Meanwhile the Lua thread holds every lock tether has, over and over: env, the child
    -- registry (spawn), a pool's mutex (submit, wait), the lane's (fs).
    local i = 0
    repeat
      i = i + 1
      assert(env.set("TETHER_FORK_MARK", tostring(i)))
      assert(env.get("TETHER_FORK_MARK"))
      assert(exec.command("true"):run())
      if i % 4 == 0 then
        assert(p:submit(function(x) return x + 1 end, i):wait())
        assert(fs.read_file("/proc/self/stat"))
      end
    until job:done()
    local ok, failed, hung = job:join()
    p:close()
    assert(env.unset("TETHER_FORK_MARK"))
    -- The lane's threads exit once idle: wait for them (bounded), so that the next spec
    -- counts the threads of a quiet process.
    local deadline = tether.now() + 30
    while fs.lane_stats().threads > 0 and tether.now() < deadline do tether.sleep(0.05) end
    assert.are.same({ n, 0, 0 }, { ok, failed, hung }, "children: ok, failed, hung (after " .. i .. " rounds)")
  end)
end)

describe("a dropped pool", function()
  it("is collected without waiting for its running task, and the host then exits", function()
    local fifo = util.mkfifo()
    -- The host: a Lua interpreter whose pool runs a task that never ends (it waits to open
    -- a FIFO no one writes), drops the pool, collects it and exits (lua_close included).
    local out, err, code = util.lua_run([[
      local tether = require "tether"
      local pool = require "tether.pool"
      local p = pool.new { size = 1 }
      local f = p:submit(function(path) local h = io.open(path, "r"); return h ~= nil end, ]]
      .. string.format("%q", fifo) .. [[)
      while f:state() ~= "running" do tether.sleep(0.005) end
      p, f = nil, nil
      local t0 = tether.now()
      collectgarbage(); collectgarbage()
      io.write(string.format("collected in %.3f s, threads %d\n", tether.now() - t0, tether.threads()))
    ]], { timeout = 60 })
    assert.are.equal(0, code, "host failed: " .. tostring(out) .. tostring(err))
    local secs = assert(tonumber(out:match("collected in ([%d.]+) s")), out)
    if not os.getenv("TETHER_VALGRIND") then
      assert.is_true(secs < 0.3, "collectgarbage took " .. secs .. " s")
    end
  end)
end)
