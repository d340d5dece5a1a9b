-- embedding_spec.lua: tether inside a C program that embeds Lua (issue 14, acceptance 1
-- and 2). spec/helpers/embedhost.c is the host: it opens, runs and closes lua_States and
-- installs, inspects and raises signals itself, step by step as its arguments say.
-- What a C programmer expects: loading tether changes nothing they did not ask for,
-- closing the state undoes what tether did, and each lua_State gets its own signals.
local util = require "helpers.util"

local sq = util.shquote
local USR1, USR2 = 10, 12

local function host_path()
  return os.getenv("TETHER_EMBEDHOST")
    or (util.root .. "/build/" .. _VERSION:match("%d+%.%d+") .. "/spec/embedhost")
end

-- host(step, ...) -> stdout, exit code of embedhost run with these steps (bounded).
local function host(...)
  local args = {}
  for i = 1, select("#", ...) do args[i] = sq(tostring((select(i, ...)))) end
  local errf = util.tmpname()
  local out, code = util.sh("timeout -s KILL 60 " .. sq(host_path()) .. " " .. table.concat(args, " ") ..
    " 2>" .. sq(errf))
  local err = util.readfile(errf) or ""
  os.remove(errf)
  return out, code, err
end

-- Lua run in a state: a channel `ch` that tether.signal notifies of SIGUSR1.
local WATCH = 'signal = require "tether.signal"; ch = signal.channel(64); assert(signal.notify(ch, "USR1"))'
local GOT = 'assert(ch:recv(10) == "SIGUSR1", "no SIGUSR1"); got = (got or 0) + 1'

local warm, mark, check = util.no_leaks()
setup(function()
  warm()
  local f = io.open(host_path(), "r")
  assert(f, host_path() .. " is missing (the Makefile builds it)")
  f:close()
end)
before_each(mark)
after_each(check)

describe("a C host embedding Lua", function()
  it("keeps its own SIGUSR1 handler after lua_close: raised then, it runs and the host lives", function()
    local out, code, err = host("handler", USR1, "open", "run", 1, WATCH,
      "raise", USR1, "run", 1, GOT, "count", USR1, -- tether chains the host's handler
      "close", 1, "show", USR1, "raise", USR1, "count", USR1)
    assert.are.equal(0, code, err)
    assert.are.equal(table.concat({ "count 10 1", "10 host", "count 10 2", "done" }, "\n") .. "\n", out)
  end)

  it("finds SIG_DFL after lua_close when SIGUSR1 was SIG_DFL before notify", function()
    local out, code, err = host("dfl", USR1, "open", "run", 1, WATCH, "show", USR1, "close", 1, "show", USR1)
    assert.are.equal(0, code, err)
    assert.are.equal("10 other\n10 dfl\ndone\n", out)
  end)

  it("finds every disposition and fd as before once the state that ignored and watched is closed", function()
    local out, code, err = host("dfl", USR1, "handler", USR2, "fds", "open",
      "run", 1, WATCH .. '; assert(signal.ignore("USR2")); assert(signal.ignored("USR2"))',
      "show", USR1, "show", USR2, "close", 1, "show", USR1, "show", USR2, "fds")
    assert.are.equal(0, code, err)
    local fds_before, fds_after = out:match("^fds (%d+)\n.*\nfds (%d+)\n")
    assert.are.equal(fds_before, fds_after, out)
    assert.truthy(out:find("10 other\n12 ign\n10 dfl\n12 host\n", 1, true), out)
  end)

  it("delivers one SIGUSR1 to both of two lua_States' channels, 50 times in a row", function()
    local out, code, err = host("open", "open", "run", 1, WATCH, "run", 2, WATCH,
      "loop", 50, "raise", USR1, "run", 1, GOT, "run", 2, GOT, "end",
      "run", 1, "print(got)", "run", 2, "print(got)")
    assert.are.equal(0, code, err)
    assert.are.equal("50\n50\ndone\n", out)
  end)

  it("closing one of two states leaves the other watching; closing both restores SIG_DFL", function()
    local out, code, err = host("dfl", USR1, "open", "open", "run", 1, WATCH, "run", 2, WATCH,
      "close", 1, "show", USR1, "raise", USR1, "run", 2, GOT .. "; print(got)", "close", 2, "show", USR1)
    assert.are.equal(0, code, err)
    assert.are.equal("10 other\n1\n10 dfl\ndone\n", out)
  end)

  it("a forked child (no exec) has its own self-pipe and counts: each process gets its own signal", function()
    local PIPE = 'local p = io.popen("readlink /proc/" .. require("tether.core").pid() .. "/fd/" .. ' ..
      'require("tether.core").signal_fd()); print(p:read("*l")); p:close()'
    local RAISE = 'local core = require "tether.core"; assert(core.kill(core.pid(), core.signals.SIGUSR1))'
    local out, code, err = host("handler", USR1, "open", "run", 1, WATCH, "run", 1, PIPE,
      "fork", 1, PIPE .. "; " .. RAISE .. "; " .. GOT .. "; assert(ch:try_recv() == nil); print(got)",
      "raise", USR1, "run", 1, GOT .. "; assert(ch:try_recv() == nil); print(got)")
    assert.are.equal(0, code, err)
    local parent_pipe, child_pipe, child_got, forked, parent_got = out:match("^(%S+)\n(%S+)\n(%d+)\nforked (%d+)\n(%d+)\ndone\n$")
    assert.truthy(parent_pipe, out)
    assert.matches("^pipe:", parent_pipe)
    assert.are_not.equal(parent_pipe, child_pipe, "the child's self-pipe is its own")
    assert.are.same({ "1", "0", "1" }, { child_got, forked, parent_got })
  end)

  it("a state that does not watch a signal does not receive it", function()
    local out, code, err = host("handler", USR1, "open", "open", "run", 1, WATCH,
      "run", 2, 'signal = require "tether.signal"; ch = signal.channel(4); assert(signal.notify(ch, "USR2"))',
      "raise", USR1, "run", 1, GOT, "run", 2, 'assert(ch:try_recv() == nil); print "none"')
    assert.are.equal(0, code, err)
    assert.are.equal("none\ndone\n", out)
  end)
end)
