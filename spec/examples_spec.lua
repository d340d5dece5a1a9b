-- The examples run as smoke tests: each is a child process with a bounded
-- time; it must exit 0 and print its key lines.
-- Issue #3 acceptance point 7 (and examples/tour.lua from the foundation).
local util = require "helpers.util"

-- Runs examples/<name> with env assignments (a shell prefix) under `timeout`;
-- returns stdout, stderr, exit code.
local function run_example(name, env, seconds)
  local errf = os.tmpname()
  local cmd = string.format("cd %s && %s timeout -s KILL %d %s %s 2>%s",
    util.shquote(util.root), env or "", seconds or 30, util.shquote(util.lua()),
    util.shquote("examples/" .. name), util.shquote(errf))
  local out, code = util.sh(cmd)
  local err = util.readfile(errf) or ""
  os.remove(errf)
  return out, err, code
end

-- Asserts that each pattern (plain text) occurs in out, in this order.
local function assert_lines_in_order(out, texts)
  local pos = 1
  for _, text in ipairs(texts) do
    local s, e = out:find(text, pos, true)
    assert(s, ("%q missing (or out of order) in the output:\n%s"):format(text, out))
    pos = e + 1
  end
end

after_each(function()
  assert.are.equal(0, util.zombies_of(), "zombie children left behind")
end)

describe("examples", function()
  it("tour.lua runs and shows each part", function()
    local out, err, code = run_example("tour.lua", nil, 30)
    assert.are.equal(0, code, err)
    assert_lines_in_order(out, {
      "kernel: Linux",
      "sorted: apple", "sorted: fig", "sorted: pear",
      "missing program -> ", "is ErrNotFound:\ttrue",
      "failing command -> ", "exit_code=3", "disk full",
      "bad dir -> ", "step=chdir, code=ENOENT",
      "pipeline -> 2 line(s), 3 stages, all ok: true",
      "busy loop -> exit 0",
    })
  end)

  it("graceful_shutdown.lua stops its worker cleanly on SIGTERM", function()
    local out, err, code = run_example("graceful_shutdown.lua", "TETHER_DEMO_SIGNAL_AFTER=0.5", 30)
    assert.are.equal(0, code, err)
    assert.are.equal("", err)
    assert_lines_in_order(out, {
      "worker: tick 1",
      "main: received signal SIGTERM: shutting down",
      "main: sending SIGTERM to the worker, grace 2 s",
      "worker: got SIGTERM, finishing",
      "worker: bye",
      "main: worker exited cleanly (exit 0)",
      "main: wait returned context canceled",
      "main: done",
    })
  end)

  it("graceful_shutdown.lua kills a worker that ignores SIGTERM once the grace ran out", function()
    local out, err, code = run_example("graceful_shutdown.lua",
      "TETHER_DEMO_SIGNAL_AFTER=0.5 TETHER_DEMO_STUBBORN=1", 30)
    assert.are.equal(0, code, err)
    assert_lines_in_order(out, {
      "main: received signal SIGTERM: shutting down",
      "main: sending SIGTERM to the worker, grace 2 s",
      "main: worker killed by SIGKILL after",
      'main: wait returned exec: "sh -c ', "signal: killed (context canceled)",
      "main: done",
    })
    assert.is_nil(out:find("worker: bye", 1, true))
  end)

  it("timeout_kill.lua sends SIGTERM at the deadline and SIGKILL after the grace", function()
    local out, err, code = run_example("timeout_kill.lua", nil, 30)
    assert.are.equal(0, code, err)
    assert.are.equal("", err)
    assert_lines_in_order(out, {
      "starting a child with a 1 s timeout and 1 s of grace",
      "child: started, ignoring SIGTERM",
      "deadline passed: sending SIGTERM",
      'child ended: exec: "sh -c ', "signal: killed (context deadline exceeded)",
      "killed by: SIGKILL",
      "context: context deadline exceeded; err is DeadlineExceeded: true",
    })
  end)

  it("contain.lua kills a daemonized grandchild through the command's cgroup", function()
    local out, err, code = run_example("contain.lua", nil, 30)
    assert.are.equal(0, code, err)
    assert.are.equal("", err)
    if out:find("no containment here", 1, true) or out:find("cannot contain here", 1, true) then
      pending("no writable cgroup v2 root: " .. out)
      return
    end
    assert_lines_in_order(out, {
      "groups go below /",
      "server: started a daemon, now serving",
      "run returned: signal: killed (timeout: true)",
      "still alive: false",
      "the group used ",
    })
    -- the example's group is gone: no group of a tether process that has exited is left
    local root = out:match("groups go below (%S+)")
    for name in util.sh("ls " .. util.shquote(root)):gmatch("%S+") do
      local pid = name:match("^tether%-(%d+)%-%d+$")
      assert.is_true(pid == nil or util.alive(pid), "a group left behind: " .. name)
    end
  end)

  it("supervisor.lua restarts the crashing child with backoff and stops both on SIGTERM", function()
    local out, err, code = run_example("supervisor.lua", "TETHER_DEMO_SIGNAL_AFTER=1 TETHER_DEMO_BACKOFF=0.05", 30)
    assert.are.equal(0, code, err)
    assert.are.equal("", err)
    assert_lines_in_order(out, {
      "supervisor: flaky exited: exit status 1",
      "supervisor: flaky restarts in 0.", "(crash 1 in a row)",
      "supervisor: flaky restarts in 0.", "(crash 2 in a row)",
      "main: received signal SIGTERM: all children stopped",
      "summary: worker starts=1 restarts=0 result=stopped",
      "summary: flaky starts=",
      "main: done",
    })
    assert.is_truthy(out:find("supervisor: stopping worker: SIGTERM, grace 2 s", 1, true), out)
  end)

  it("binary_swap.lua swaps servers on one listening socket without refusing a connection", function()
    if not pcall(require, "socket") then pending("luasocket is not installed for " .. _VERSION) return end
    local out, err, code = run_example("binary_swap.lua", "TETHER_DEMO_CONNECTIONS=200", 60)
    assert.are.equal(0, code, err)
    assert.are.equal("", err)
    assert_lines_in_order(out, {
      "parent: listening on 127.0.0.1:",
      "parent: v1 ready",
      "parent: swapping v1 -> v2 after 50 connections",
      "parent: v1 exited after serving",
      "parent: v2 ready",
      "parent: swapping v2 -> v3 after 120 connections",
      "parent: v3 ready",
      "client: 200 connections, 0 refused, 0 failed; served by v1=",
      "connection(s) made before their server was ready, all served",
      "parent: done",
    })
    -- every version served, and the counts add up to 200; each server drained what the
    -- client says it served
    local v1, v2, v3 = out:match("served by v1=(%d+) v2=(%d+) v3=(%d+)")
    assert.is_truthy(v1, out)
    assert.are.equal(200, tonumber(v1) + tonumber(v2) + tonumber(v3))
    assert.is_true(tonumber(v2) > 0 and tonumber(v3) > 0)
    local drained = {}
    for v, k in out:gmatch("parent: (v%d) exited after serving (%d+) connection") do drained[v] = k end
    assert.are.same({ v1 = v1, v2 = v2, v3 = v3 }, drained)
    -- connections made during a swap waited for the next server, and none was refused
    local gap = tonumber(out:match("parent: (%d+) connection%(s%) made before their server was ready"))
    assert.is_true(gap ~= nil and gap >= 1, out)
  end)

  it("env_secrets.lua hands the secret to one child and never prints it", function()
    local secret = "tether-spec-secret-" .. util.pid()
    local out, err, code = run_example("env_secrets.lua", "DEMO_API_TOKEN=" .. secret, 30)
    assert.are.equal(0, code, err)
    assert.is_nil(out:find(secret, 1, true), "the secret leaked into stdout")
    assert.is_nil(err:find(secret, 1, true), "the secret leaked into stderr")
    assert_lines_in_order(out, {
      "token: <redacted>",
      "log: calling the API with token <redacted>",
      "env: DEMO_API_TOKEN=<redacted>",
      "child: got a token of " .. #secret .. " characters",
      "other child: API_TOKEN=unset DEMO_API_TOKEN=unset",
      "bad env -> exec: cmd.env[1] has no '=' or an empty key",
      [[failing child -> exec: "sh -c 'echo \"upstream rejected the request\" >&2; exit 3'": exit status 3: upstream rejected the request]],
      "done",
    })
  end)

  it("parallel.lua runs 12 jobs with output_all, in input order, one failure with its stderr", function()
    local out, err, code = run_example("parallel.lua", "TETHER_TRACE=1", 30)
    assert.are.equal(0, code, err)
    local want = {}
    for i = 1, 12 do
      want[#want + 1] = i == 7 and "job 7 failed: exit code 2, stderr: job 7: disk full" or ("job %d done"):format(i)
    end
    want[#want + 1] = "12 jobs, 1 failed, limit 4, "
    assert_lines_in_order(out, want)
    local starts, ends = 0, 0
    for _ in err:gmatch("tether: start pid") do starts = starts + 1 end
    for _ in err:gmatch("tether: end pid") do ends = ends + 1 end
    assert.are.equal(12, starts, err)
    assert.are.equal(12, ends, err)
  end)

  it("bounded_read.lua reads files through the lane in order and prints the thread counts", function()
    local out, err, code = run_example("bounded_read.lua", nil, 60)
    assert.are.equal(0, code, err)
    assert.are.equal("", err)
    assert_lines_in_order(out, {
      "before: ", "during: at most ",
      "read 500 files, 4392 bytes; order kept: true",
      "missing file -> false, open ", ": no such file or directory (ENOENT)",
      "after: ", "after idle: ", "; back to the start: true",
    })
    local before = tonumber(out:match("before: (%d+) thread"))
    local during, limit = out:match("during: at most (%d+) thread%(s%) %(limit (%d+)")
    assert.is_true(tonumber(during) <= before + tonumber(limit), out)
  end)

  it("worker_pool.lua keeps pinned state, applies backpressure and cancels queued tasks", function()
    local out, err, code = run_example("worker_pool.lua", nil, 60)
    assert.are.equal(0, code, err)
    assert.are.equal("", err)
    assert_lines_in_order(out, {
      "pool: 2 workers, queue of 4, 2 threads more than before",
      "worker 1 on thread tether-w1: request 1",
      "worker 2 on thread tether-w2: request 1",
      "worker 1 on thread tether-w1: request 3",
      "worker 2 on thread tether-w2: request 3",
      "try_submit: full after 4 queued tasks",
      "submit waited",
      "backpressure: all 7 tasks done",
      "context cancelled: 4 queued tasks cancelled, 2 running tasks finished",
      "stats: submitted 19, done 15, cancelled 4, failed 0",
      "closed: 0 extra threads left",
    })
  end)

  it("interactive.lua answers a program's prompts through a pty", function()
    local out, err, code = run_example("interactive.lua", nil, 30)
    assert.are.equal(0, code, err)
    assert.are.equal("", err)
    assert_lines_in_order(out, {
      'prompt "Your name? ": answering Ada',
      'no "Continue?" prompt -> ErrTimeout: true; seen so far: Ada\\r\\nInstall for Ada? [y/N] ',
      "confirmation prompt for Ada: answering y",
      "installer says: installed for Ada",
      "exit status: exit status 0",
      "after the exit, expect -> end of output: true",
    })
  end)
end)
