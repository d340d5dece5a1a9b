-- Fault injection: tether under exhausted limits and a hostile host.
-- Issue #7 (fault specs): RLIMIT_NOFILE nearly exhausted, RLIMIT_NPROC
-- reached, SIGCHLD set to SIG_IGN by the host, fds 0/1/2 of the parent
-- closed, an argv over ARG_MAX, a child that stops reading a 10 MB stdin.
--
-- Whatever changes a process-wide limit or disposition runs in a child Lua
-- process (a script file run by /bin/sh under `timeout`), which writes its
-- observations as "key value" lines to a result file given as arg[1]: that
-- works even when the child's stdout is closed.
local exec = require "tether.exec"
local util = require "helpers.util"

local unpack = table.unpack or unpack

-- Put at the top of every child script: the helpers it needs, a result
-- file, and a protected main so that a Lua error is recorded as "error".
local prelude = [[
local exec = require "tether.exec"
local errors = require "tether.errors"
local LUA, CHILD = %q, %q
local out = {}
local function put(k, v) out[#out + 1] = k .. " " .. tostring(v) end
local function child(mode, ...) return exec.command(LUA, CHILD, mode, ...) end
local function main()
]]
local postlude = [[
end
local ok, e = pcall(main)
if not ok then put("error", (tostring(e):gsub("\n", " "))) end
local f = assert(io.open(arg[1], "w"))
f:write(table.concat(out, "\n"), "\n")
f:close()
]]

-- Runs body (the inside of main()) as a child Lua script through the shell:
-- `sh -c "<before> exec timeout -s KILL <secs> <wrap> lua script result <after>"`.
-- opts.shared: script readable and result writable by any user (for setpriv).
-- Returns the results as a table (key -> value; a repeated key's values go
-- to a list at t[key .. "*"]), plus the child's stderr and exit code.
local function run_script(body, opts)
  opts = opts or {}
  local script, result, errf = util.tmpname(), util.tmpname(), util.tmpname()
  util.writefile(script, prelude:format(util.lua(), util.child_script) .. body .. postlude)
  util.writefile(result, "")
  if opts.shared then os.execute("chmod 644 " .. util.shquote(script) .. "; chmod 666 " .. util.shquote(result)) end
  local inner = string.format("%s exec timeout -s KILL %d %s %s %s %s %s",
    opts.before or "", opts.timeout or 30, opts.wrap or "",
    util.shquote(util.lua()), util.shquote(script), util.shquote(result), opts.after or "")
  local _, code = util.sh("sh -c " .. util.shquote(inner) .. " 2>" .. util.shquote(errf))
  local t = {}
  for k, v in (util.readfile(result) or ""):gmatch("(%S+) ([^\n]*)") do
    if t[k] == nil then t[k] = v end
    t[k .. "*"] = t[k .. "*"] or {}
    table.insert(t[k .. "*"], v)
  end
  local err = util.readfile(errf) or ""
  os.remove(script); os.remove(result); os.remove(errf)
  return t, err, code
end

local function describe_run(t, err, code)
  local keys = {}
  for k, v in pairs(t) do if type(v) == "string" then keys[#keys + 1] = k .. "=" .. v end end
  table.sort(keys)
  return ("exit %s; results: %s; stderr: %s"):format(tostring(code), table.concat(keys, ", "), err)
end

-- After each test: no unreaped child, no new fd.
local warm, mark, check = util.no_leaks()
setup(warm); before_each(mark); after_each(check)

describe("RLIMIT_NOFILE nearly exhausted", function()
  it("start() fails with a clear EMFILE error, leaks no fd, and works again once files are closed", function()
    -- For 0..7 free fds: output() either succeeds with the right data or
    -- fails with EMFILE, and the same number of fds is free afterwards.
    local t, err, code = run_script([[
      local function free_fds() -- how many more files can be opened now
        local fs = {}
        while true do
          local f = io.open("/dev/null")
          if not f then break end
          fs[#fs + 1] = f
        end
        for _, f in ipairs(fs) do f:close() end
        return #fs
      end
      assert(child("echo", "warm"):output() == "warm\n") -- /dev/null and friends opened once
      local held = {}
      while true do
        local f = io.open("/dev/null")
        if not f then break end
        held[#held + 1] = f
      end
      put("held", #held)
      for free = 0, 7 do
        if free > 0 then held[#held]:close(); held[#held] = nil end
        local o, e = child("echo", "hi"):output()
        if o then put("ok", free .. ":" .. o:gsub("\n", "\\n"))
        else put("fail", free .. ":" .. tostring(e.code) .. ":" .. tostring(e.op) .. ":" .. tostring(e)) end
        put("free", free .. ":" .. free_fds())
      end
      for _, f in ipairs(held) do f:close() end
      local o, e = child("echo", "recovered"):output()
      put("recovered", o and o:gsub("\n", "") or tostring(e))
    ]], { before = "ulimit -n 64;" })
    local msg = describe_run(t, err, code)
    assert.are.equal(0, code, msg)
    assert.is_nil(t.error, msg)
    assert.is_true(tonumber(t.held) > 0, msg)
    -- With 0 or 1 free fd no pipe can be made: EMFILE from start(), op "pipe".
    assert.are.equal("0:EMFILE:pipe:pipe: too many open files", t["fail*"][1], msg)
    assert.are.equal("1:EMFILE:pipe:pipe: too many open files", t["fail*"][2], msg)
    -- Every failure is EMFILE; every success has the right output.
    for _, f in ipairs(t["fail*"]) do assert.matches("^%d:EMFILE:", f, 1, false, msg) end
    assert.is_truthy(t["ok*"], msg)
    for _, o in ipairs(t["ok*"]) do assert.matches("^%d:hi\\n$", o, 1, false, msg) end
    assert.are.equal(8, #t["fail*"] + #t["ok*"], msg)
    -- No fd was leaked by a failed (or successful) start.
    for i, f in ipairs(t["free*"]) do assert.are.equal((i - 1) .. ":" .. (i - 1), f, msg) end
    assert.are.equal("recovered", t.recovered, msg)
  end)
end)

describe("RLIMIT_NPROC reached", function()
  it("start() fails with a clear EAGAIN error at step clone, and works again once children exit", function()
    -- Root ignores RLIMIT_NPROC: the child runs as nobody (setpriv), with a
    -- limit a few processes above what nobody already runs.
    local uid = tonumber((util.sh("id -u"):gsub("%s", "")))
    local wrap = ""
    if uid == 0 then
      if util.sh("command -v setpriv") == "" then
        pending("running as root without setpriv: RLIMIT_NPROC cannot be tested")
        return
      end
      wrap = "setpriv --reuid=65534 --regid=65534 --clear-groups"
    end
    local who = uid == 0 and 65534 or uid
    local t, err, code = run_script([[
      local started, cmds = 0, {}
      local failure
      for i = 1, 64 do
        local c = child("hang", "20")
        local w = assert(c:stdin_pipe())
        local ok, e = c:start()
        if not ok then w:close(); failure = e; break end
        started = started + 1
        cmds[#cmds + 1] = { c = c, w = w }
      end
      put("started", started)
      if failure then
        put("code", failure.code); put("op", failure.op); put("step", failure.step)
        put("msg", failure)
      end
      for _, x in ipairs(cmds) do x.w:close() end
      local waited = 0
      for _, x in ipairs(cmds) do -- reaped: success, or an exit status (not a wait error)
        local ok, e = x.c:wait()
        if ok or (e and e.exit_code) then waited = waited + 1 else put("wait_error", e) end
      end
      put("waited", waited)
      local o, e = child("echo", "recovered"):output()
      put("recovered", o and o:gsub("\n", "") or tostring(e))
    ]], { wrap = wrap, shared = true,
          before = ("n=$(ps -u %d -L --no-headers 2>/dev/null | wc -l); prlimit --nproc=$((n + 8)) --pid $$;"):format(who) })
    local msg = describe_run(t, err, code)
    assert.are.equal(0, code, msg)
    assert.is_nil(t.error, msg)
    assert.is_true(tonumber(t.started) < 64, msg)
    assert.are.equal("EAGAIN", t.code, msg)
    assert.are.equal("clone", t.op, msg)
    assert.are.equal("clone", t.step, msg)
    assert.are.equal(t.started, t.waited, msg)
    assert.are.equal("recovered", t.recovered, msg)
  end)
end)

describe("the host sets SIGCHLD to SIG_IGN", function()
  -- spawn mode "auto" relays there (issue 12): statuses are exact, never ECHILD
  it("wait returns the exact exit status, never ECHILD, and never hangs", function()
    local sigexec = os.getenv("TETHER_SIGEXEC") or (util.root .. "/build/5.4/sigexec")
    local t, err, code = run_script([[
      local function report(name, ok, e)
        if ok then put(name, "ok")
        elseif e.code then put(name, "errno:" .. e.code .. ":" .. tostring(e))
        else put(name, "exit:" .. tostring(e.exit_code)) end
      end
      report("run0", child("exit", "0"):run())
      report("run3", child("exit", "3"):run())
      local o, e = child("echo", "hi"):output()
      report("output", o, e)
      put("output_data", o and o:gsub("\n", "\\n"))
      local c = child("sleep", "0.2")
      assert(c:start())
      report("wait_running", c:wait(10))
      local c2 = child("exit", "0")
      assert(c2:start())
      require("tether").sleep(0.2) -- exited and auto-reaped before wait
      report("wait_reaped", c2:wait(10))
      report("second_wait", c2:wait(10))
    ]], { wrap = util.shquote(sigexec) .. " -i 17 --", timeout = 20 })
    local msg = describe_run(t, err, code)
    assert.are.equal(0, code, msg) -- 137 would mean timeout killed a hang
    assert.is_nil(t.error, msg)
    assert.are.equal("ok", t.run0, msg)
    assert.are.equal("exit:3", t.run3, msg)
    assert.are.equal("ok", t.output, msg)
    assert.are.equal("hi\\n", t.output_data, msg)
    assert.are.equal("ok", t.wait_running, msg)
    assert.are.equal("ok", t.wait_reaped, msg)
    -- A second wait returns at once too (the state error, or ECHILD again).
    assert.is_truthy(t.second_wait, msg)
  end)
end)

describe("fds 0, 1 and 2 of the parent closed", function()
  it("spawning with pipes still works and output() returns the right data", function()
    local t, err, code = run_script([[
      local o, e = child("echo", "one", "two"):output()
      put("echo", o and o:gsub("\n", "\\n") or tostring(e))
      local c = child("cat")
      c.stdin = "line 1\nline 2\n"
      o, e = c:output()
      put("cat", o and o:gsub("\n", "\\n") or tostring(e))
      o, e = exec.command(LUA, "-e", "io.stdout:write('out') io.stdout:flush() io.stderr:write('err')"):combined_output()
      put("combined", o or tostring(e))
      local err_t = {}
      local c3 = exec.command(LUA, "-e", "io.stdout:write('O') io.stderr:write('E') os.exit(4)")
      c3.stdout, c3.stderr = {}, err_t
      local ok
      ok, e = c3:run()
      put("split", table.concat(c3.stdout) .. "|" .. table.concat(err_t) .. "|" .. tostring(e and e.exit_code))
      -- The child sees exactly fds 0, 1, 2 (each a pipe or /dev/null).
      o, e = child("fds"):output()
      local fds = {}
      for fd, target in (o or ""):gmatch("(%d+) (%S+)") do fds[#fds + 1] = fd .. ":" .. target:gsub("%[%d+%]", "") end
      put("child_fds", table.concat(fds, ","))
    ]], { after = "<&- >&- 2>&-" })
    local msg = describe_run(t, err, code)
    assert.are.equal(0, code, msg)
    assert.is_nil(t.error, msg)
    assert.are.equal("one two\\n", t.echo, msg)
    assert.are.equal("line 1\\nline 2\\n", t.cat, msg)
    assert.are.equal("outerr", t.combined, msg)
    assert.are.equal("O|E|4", t.split, msg)
    assert.are.equal("0:/dev/null,1:pipe:,2:pipe:", t.child_fds, msg)
  end)
end)

describe("an argv over ARG_MAX", function()
  -- Under valgrind (make check-valgrind) the child is a memcheck that cannot survive
  -- a failed execve ("EXEC FAILED: I can't recover ...", exit 101): no E2BIG to see.
  local function skip_under_valgrind()
    if os.getenv("TETHER_VALGRIND") then
      pending("valgrind ends the child when execve fails with E2BIG")
      return true
    end
  end

  it("start() returns E2BIG at step exec and leaves no process behind", function()
    if skip_under_valgrind() then return end
    local arg_max = tonumber((util.sh("getconf ARG_MAX"):gsub("%s", ""))) or 2097152
    local piece = string.rep("x", 100000) -- under MAX_ARG_STRLEN (128 KiB) each
    local args = {}
    for i = 1, math.floor(arg_max / #piece) + 2 do args[i] = piece end
    local cmd = exec.command("true", unpack(args))
    local ok, err = cmd:start()
    assert.is_nil(ok)
    assert.are.equal("E2BIG", err.code)
    assert.are.equal("exec", err.step)
    assert.are.equal("fork/exec", err.op)
    assert.is_nil(cmd.process)
    -- The message names the path only: the arguments are not copied into it.
    assert.is_true(#tostring(err) < 200, "message too long: " .. #tostring(err) .. " bytes")
  end)

  it("a single argument over MAX_ARG_STRLEN gives E2BIG too", function()
    if skip_under_valgrind() then return end
    local ok, err = exec.command("true", string.rep("y", 200000)):start()
    assert.is_nil(ok)
    assert.are.equal("E2BIG", err.code)
    assert.are.equal("exec", err.step)
  end)
end)

describe("a child that stops reading a 10 MB stdin", function()
  local ten_mb = string.rep("0123456789abcdef", 10 * 65536)

  local cases = {
    { "closes stdin and stdout after 1000 bytes and exits 0",
      "io.read(1000) io.stdin:close() io.stdout:close() os.exit(0)", true },
    { "closes stdin at once, writes, and exits 0",
      "io.stdin:close() io.write('done') os.exit(0)", true, "done" },
    { "never reads stdin and exits 0",
      "os.exit(0)", true },
    { "closes stdin and stdout after 1000 bytes and exits 3",
      "io.read(1000) io.stdin:close() io.stdout:close() os.exit(3)", false },
  }
  for _, case in ipairs(cases) do
    local name, code, success, want = unpack(case)
    it("reports the exit status, not EPIPE, when it " .. name, function()
      local cmd = exec.command(util.lua(), "-e", code)
      cmd.stdin = ten_mb
      local t0 = os.time()
      local out, err = cmd:output()
      assert.is_true(os.time() - t0 < 20, "output() took too long")
      if success then
        assert.is_nil(err and tostring(err))
        assert.are.equal(want or "", out)
      else
        assert.is_nil(out)
        assert.are.equal(3, err.exit_code)
        assert.is_nil(err.errno)
      end
      assert.is_true(cmd.process_state ~= nil)
    end)
  end

  it("run() with a 10 MB stdin succeeds when the child exits 0 after closing stdin", function()
    local cmd = exec.command(util.lua(), "-e", "io.read(10) io.stdin:close() os.exit(0)")
    cmd.stdin = ten_mb
    assert.is_true(cmd:run())
    assert.are.equal(0, cmd.process_state:exit_code())
  end)
end)
