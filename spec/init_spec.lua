-- init_spec.lua: bin/tether-init behaves as tini does. Every scenario runs against
-- both tether-init and Debian's tini (the same table-driven cases), to show parity.
-- The PID 1 scenarios run the init as PID 1 of a new PID namespace (unshare --pid
-- --fork [--mount-proc]); they need root, and are pending otherwise. What the main
-- child sees and records comes from spec/helpers/initchild.sh (plain sh and /proc).
local util = require "helpers.util"
local exec = require "tether.exec"

local sq = util.shquote
local unpack = table.unpack or unpack
local CHILD = util.root .. "/spec/helpers/initchild.sh"

local function have(prog)
  local _, code = util.sh("command -v " .. prog .. " >/dev/null 2>&1")
  return code == 0
end

-- tether-init runs as a program (its sh preamble starts the Lua interpreter named by
-- TETHER_INIT_LUA), as in a container: so it learns the dispositions it was started with.
local inits = {
  { name = "tether-init", cmd = "env TETHER_INIT_LUA=" .. sq(util.lua()) .. " " .. sq(util.root .. "/bin/tether-init"),
    ok = true },
  { name = "tini", cmd = "tini", ok = have("tini") },
}
local SIGEXEC = os.getenv("TETHER_SIGEXEC") or (util.root .. "/build/" .. _VERSION:match("%d+%.%d+") .. "/sigexec")

local uid = util.sh("id -u"):gsub("%s+", "")
local unshare_ok, why_not = false, nil
if uid ~= "0" then
  why_not = "not root: PID namespaces (unshare --pid) need root"
elseif not have("unshare") then
  why_not = "unshare (util-linux) is missing"
else
  local out, code = util.sh("unshare --pid --fork --mount-proc true 2>&1")
  unshare_ok = code == 0
  if not unshare_ok then why_not = "unshare --pid --fork --mount-proc fails here: " .. out end
end

-- run(cmdline) -> stdout, stderr, exit code of a shell command line (bounded).
local function run(line, seconds)
  local errf = util.tmpname()
  local out, code = util.sh("timeout -s KILL " .. (seconds or 60) .. " " .. line .. " 2>" .. sq(errf))
  local err = util.readfile(errf) or ""
  os.remove(errf)
  return out, err, code
end

local function lines(path)
  local t = {}
  for l in (util.readfile(path) or ""):gmatch("[^\n]+") do t[#t + 1] = l end
  return t
end

-- Waits (bounded) until path has content.
local function wait_file(path, seconds)
  local deadline = os.time() + (seconds or 20)
  while not (util.readfile(path) or ""):find("%S") do
    if os.time() > deadline then return false end
    util.sleep(0.02)
  end
  return true
end

-- Starts `unshare ... init [opts] -- sh initchild.sh mode file` in the background; returns
-- the started Cmd and the init's pid as seen from here, once the child wrote FILE.ready.
local function start_in_namespace(init, opts, mode, file, envs)
  local line = "exec " .. (envs and ("env " .. envs .. " ") or "") .. "unshare --pid --fork --mount-proc " .. init.cmd .. " " .. opts .. " -- sh " ..
    sq(CHILD) .. " " .. mode .. " " .. sq(file)
  local cmd = exec.command("sh", "-c", line)
  cmd.stderr = {}
  assert(cmd:start())
  util.reap_later(cmd)
  assert(wait_file(file .. ".ready"), "the child never got ready")
  local kids = util.children_of(cmd.process.pid)
  assert.are.equal(1, #kids, "unshare has one child, the init")
  return cmd, kids[1].pid
end

local warm, mark, check = util.no_leaks()
setup(warm)
before_each(mark)
after_each(check)

for _, init in ipairs(inits) do
  describe(init.name, function()
    if not init.ok then
      pending(init.name .. " is not installed (Debian package " .. init.name .. "; make deps installs it)")
      return
    end

    describe("as PID 1 of a PID namespace", function()
      if not unshare_ok then
        pending("skipped: " .. why_not)
        return
      end

      -- Every code; in CI's shortened runs (TETHER_SCALE) every tenth and the edges.
      local codes = {}
      local every = math.floor(256 / util.scale(256))
      for c = 0, 255 do
        if c % every == 0 or c <= 2 or (c >= 125 and c <= 129) or c >= 254 then codes[#codes + 1] = c end
      end
      local which = #codes == 256 and "every exit code 0..255" or #codes .. " exit codes in 0..255"
      it("passes " .. which .. " through, each run as PID 1", function()
        -- One namespace per code (a process exits once), all from one shell loop.
        local out, err, code = run("sh -c " .. sq("for c in " .. table.concat(codes, " ") .. "; do unshare --pid --fork " ..
          init.cmd .. " -- sh " .. sq(CHILD) .. " exit $c; echo \"$c $?\"; done"), 600)
        assert.are.equal(0, code, err)
        local n = 0
        for c, got in out:gmatch("(%d+) (%d+)\n") do
          n = n + 1
          assert.are.equal(codes[n], tonumber(c))
          assert.are.equal(c, got, "exit code " .. c)
        end
        assert.are.equal(#codes, n)
        assert.is_nil(err:find("not PID 1", 1, true), err)
      end)

      it("exits with 128+n when signal n killed the child", function()
        -- Not SIGPIPE: busted's process may ignore it, and tini (unlike tether-init, whose
        -- children start with default dispositions) passes an ignored signal on.
        for _, n in ipairs { 1, 2, 3, 9, 10, 12, 14, 15 } do
          local _, err, code = run("unshare --pid --fork " .. init.cmd .. " -- sh -c " .. sq("kill -" .. n .. " $$"))
          assert.are.equal(128 + n, code, "signal " .. n .. ": " .. err)
        end
      end)

      it("reaps 100 orphans re-parented to it (no zombie left in the namespace)", function()
        local file = util.tmpname()
        local _, err, code = run("unshare --pid --fork --mount-proc " .. init.cmd .. " -- sh " .. sq(CHILD) ..
          " orphans 100 " .. sq(file))
        local got = lines(file)
        os.remove(file)
        assert.are.equal(0, code, err)
        assert.are.same({ "adopted 100", "zombies 0" }, got)
      end)

      -- initchild.sh's record mode traps these and exits once each came.
      local FORWARDED = { "TERM", "HUP", "USR1", "USR2", "INT", "QUIT", "WINCH", "ALRM", "CONT" }
      it("forwards TERM, HUP, USR1, USR2 and the other catchable signals (INT, QUIT, WINCH, ALRM, CONT) to the child", function()
        local file = util.tmpname()
        local cmd, pid = start_in_namespace(init, "", "record", file)
        for _, s in ipairs(FORWARDED) do
          os.execute("kill -" .. s .. " " .. pid)
          util.sleep(0.05)
        end
        local ok, err = cmd:wait(30)
        local got = lines(file)
        table.sort(got)
        os.remove(file); os.remove(file .. ".ready")
        assert.is_true(ok, tostring(err) .. " " .. table.concat(cmd.stderr))
        local want = { unpack(FORWARDED) }
        table.sort(want)
        assert.are.same(want, got)
      end)

      it("with -g signals the child's whole group: a grandchild that does not trap dies", function()
        local file = util.tmpname()
        local cmd, pid = start_in_namespace(init, "-g", "group", file)
        os.execute("kill -TERM " .. pid)
        local ok, err = cmd:wait(30)
        local got = lines(file)
        os.remove(file); os.remove(file .. ".ready")
        assert.is_nil(ok)
        assert.are.equal(7, err.exit_code, table.concat(cmd.stderr))
        assert.are.equal("TERM", got[1])
        assert.are.equal("gone", got[#got])
      end)

      it("with TINI_KILL_PROCESS_GROUP set (no -g) signals the child's whole group", function()
        local file = util.tmpname()
        local cmd, pid = start_in_namespace(init, "", "group", file, "TINI_KILL_PROCESS_GROUP=1")
        os.execute("kill -TERM " .. pid)
        local ok, err = cmd:wait(30)
        local got = lines(file)
        os.remove(file); os.remove(file .. ".ready")
        assert.is_nil(ok)
        assert.are.equal(7, err.exit_code, table.concat(cmd.stderr))
        assert.are.equal("TERM", got[1])
        assert.are.equal("gone", got[#got])
      end)

      it("without -g signals the child only: its grandchild lives on", function()
        local file = util.tmpname()
        local cmd, pid = start_in_namespace(init, "", "group", file)
        os.execute("kill -TERM " .. pid)
        assert.is_true(wait_file(file))
        local deadline = os.time() + 20
        while #lines(file) < 2 and os.time() < deadline do util.sleep(0.02) end
        local got = lines(file)
        os.execute("kill -KILL " .. pid) -- PID 1 gone: the kernel kills the whole namespace
        cmd:wait(30)
        os.remove(file); os.remove(file .. ".ready")
        assert.are.same({ "TERM", "alive" }, got)
      end)
    end)

    describe("not as PID 1", function()
      it("-e CODE remaps that exit code to 0 (repeatable)", function()
        local base = init.cmd .. " -s -e 3 -e 5 -e 143 -- sh -c "
        for c, want in pairs { [3] = 0, [5] = 0, [4] = 4, [0] = 0 } do
          local _, err, code = run(base .. sq("exit " .. c))
          assert.are.equal(want, code, "exit " .. c .. ": " .. err)
        end
        local _, err, code = run(base .. sq("kill -TERM $$"))
        assert.are.equal(0, code, err)
      end)

      it("-s makes it a child subreaper: orphans are re-parented to it and reaped", function()
        local file = util.tmpname()
        local _, err, code = run(init.cmd .. " -s -- sh " .. sq(CHILD) .. " orphans 20 " .. sq(file))
        local got = lines(file)
        os.remove(file)
        assert.are.equal(0, code, err)
        assert.are.same({ "adopted 20", "zombies 0" }, got)
        assert.is_nil(err:find("subreaper", 1, true), err)
      end)

      it("TINI_SUBREAPER set (no -s) makes it a child subreaper", function()
        local file = util.tmpname()
        local _, err, code = run("env TINI_SUBREAPER=1 " .. init.cmd .. " -- sh " .. sq(CHILD) .. " orphans 20 " .. sq(file))
        local got = lines(file)
        os.remove(file)
        assert.are.equal(0, code, err)
        assert.are.same({ "adopted 20", "zombies 0" }, got)
        assert.is_nil(err:find("subreaper", 1, true), err)
      end)

      it("-w prints tini's warning line for each orphan it reaps, with its pid", function()
        local file = util.tmpname()
        local _, err, code = run(init.cmd .. " -s -w -- sh " .. sq(CHILD) .. " orphans 20 " .. sq(file))
        local got = lines(file)
        os.remove(file)
        assert.are.equal(0, code, err)
        assert.are.same({ "adopted 20", "zombies 0" }, got)
        local pids = {}
        for l in err:gmatch("[^\n]+") do
          local pid = l:match("^%[WARN  [%w-]+ %(%d+%)%] Reaped zombie process with pid=(%d+)$")
          assert.truthy(pid, "unexpected line: " .. l)
          pids[pid] = true
        end
        local n = 0
        for _ in pairs(pids) do n = n + 1 end
        assert.is_true(n >= 20, n .. " pids in:\n" .. err)
      end)

      it("TINI_VERBOSITY=3 prints tini's debug lines: SIGCHLD received, the child reaped by pid", function()
        local out, err, code = run("env TINI_VERBOSITY=3 " .. init.cmd .. " -s -- sh -c " .. sq("exit 3"))
        assert.are.equal(3, code, err)
        local pid = out:match("%[INFO  [%w-]+ %(%d+%)%] Spawned child process 'sh' with pid '(%d+)'\n")
        assert.truthy(pid, out)
        assert.truthy(out:find("%[DEBUG [%w-]+ %(%d+%)%] Received SIGCHLD\n"), out)
        assert.truthy(out:find("] Reaped child with pid: '" .. pid .. "'\n", 1, true), out)
        assert.truthy(out:find("] Main child exited normally (with status '3')\n", 1, true), out)
        assert.are.equal("", err)
      end)

      it("TINI_VERBOSITY=3 names each signal it passes on as strsignal does, and the signal that ended the child", function()
        local out, err, code = run("env TINI_VERBOSITY=3 " .. init.cmd .. " -s -- sh -c " ..
          sq("kill -HUP $PPID; exec sleep 30"))
        assert.are.equal(129, code, err)
        assert.truthy(out:find("%[DEBUG [%w-]+ %(%d+%)%] Passing signal: 'Hangup'\n"), out)
        assert.truthy(out:find("] Main child exited with signal (with signal 'Hangup')\n", 1, true), out)
      end)

      it("hands the child the dispositions and mask it was started with: SigIgn 0x1003 for INT, HUP, PIPE ignored", function()
        local started = sq(SIGEXEC) .. " -i 1 -i 2 -i 13 -b 10 -- "
        local show = "grep -E '^Sig(Ign|Blk):' /proc/self/status"
        local base = run(started .. show) -- what the init itself is started with
        local out, err, code = run(started .. init.cmd .. " -s -- " .. show)
        assert.are.equal(0, code, err)
        -- Signals 1..31 (glibc's popen may add its own 32 and 33, which both inits pass on too)
        local ign = tonumber(out:match("SigIgn:%s+%x*(%x%x%x%x%x%x%x%x)\n"), 16)
        assert.are.equal(0x1003, ign % 0x80000000, out)
        assert.truthy(out:find("SigBlk:%s+0*200\n"), out)
        assert.are.equal(base, out, "the child's dispositions and mask are the init's at its start")
        -- Started as any process started from here is, the child gets just that.
        assert.are.equal(run(show), run(init.cmd .. " -s -- " .. show))
      end)

      local vg_lua = not os.getenv("TETHER_ASAN_LUA") and util.lua() or nil
      if not have("valgrind") then
        pending("valgrind is missing (Debian package valgrind; make deps installs it)")
      elseif not vg_lua then
        pending("skipped under ASan: valgrind cannot run the ASan build of tether.core")
      else
        it("starts and runs a child under valgrind --tool=none (which refuses a real-time signal)", function()
          local prog = init.name == "tini" and "tini" or
            (sq(vg_lua) .. " " .. sq(util.root .. "/bin/tether-init")) -- valgrind runs the interpreter
          local out, err, code = run("valgrind -q --tool=none " .. prog .. " -s -- sh -c " .. sq("echo ran; exit 4"), 120)
          assert.are.equal(4, code, err)
          assert.are.equal("ran\n", out)
        end)
      end

      it("warns on stderr when it is neither PID 1 nor a subreaper", function()
        local _, err, code = run(init.cmd .. " -- true")
        assert.are.equal(0, code)
        assert.truthy(err:find("not running as PID 1", 1, true), err)
        assert.truthy(err:find("subreaper", 1, true), err)
      end)

      it("-v says more (as tini, INFO and DEBUG on stdout): -v -v reports the child's start and exit status", function()
        local quiet, qerr, code = run(init.cmd .. " -s -- sh -c " .. sq("exit 3"))
        assert.are.equal(3, code, qerr)
        assert.are.equal("", quiet .. qerr)
        local out, err, vcode = run(init.cmd .. " -s -v -v -- sh -c " .. sq("exit 3"))
        assert.are.equal(3, vcode, err)
        assert.truthy(out:find("%[INFO  [%w-]+ %(%d+%)%] Spawned child process 'sh' with pid '%d+'"), out)
        assert.truthy(out:find("Main child exited normally (with status '3')", 1, true), out)
        assert.are.equal("", err)
      end)

      it("exits 127 when the program is missing, 126 when it cannot be executed", function()
        local _, err, code = run(init.cmd .. " -s -- /nonexistent/program")
        assert.are.equal(127, code, err)
        assert.truthy(err:find("exec /nonexistent/program failed", 1, true), err)
        local file = util.tmpname() -- mode 0600: not executable
        local _, err2, code2 = run(init.cmd .. " -s -- " .. sq(file))
        os.remove(file)
        assert.are.equal(126, code2, err2)
      end)

      it("rejects bad usage with exit code 1 and a message", function()
        local cases = {
          { "", "Usage:" },
          { "-s", "Usage:" },
          { "-x -- true", "invalid option" },
          { "-e 256 -- true", "Not a valid option for -e: 256" },
          { "-e abc -- true", "Not a valid option for -e: abc" },
          { "-e", "requires an argument" },
          { "-p SIGNOPE -- true", "Not a valid option for -p: SIGNOPE" },
        }
        for _, c in ipairs(cases) do
          local _, err, code = run(init.cmd .. " " .. c[1])
          assert.are.equal(1, code, c[1] .. ": " .. err)
          assert.truthy(err:find(c[2], 1, true), c[1] .. ": " .. err)
        end
        local out, _, code = run(init.cmd .. " -h")
        assert.are.equal(0, code)
        assert.truthy(out:find("Usage:", 1, true))
        local v, _, vcode = run(init.cmd .. " --version")
        assert.are.equal(0, vcode)
        assert.truthy(v:match("^[%w-]+ version %S+\n$"), v) -- tini's form: "tini version 0.19.0"
        local l, _, lcode = run(init.cmd .. " -l")
        assert.are.equal(0, lcode)
        assert.truthy(l:find("MIT License", 1, true), l)
      end)

      it("-p SIG: the parent's death signals the init, which passes it on", function()
        local line = init.cmd .. " -s -p SIGTERM -- sleep 100 </dev/null >/dev/null 2>&1 & wait"
        local sh = exec.command("sh", "-c", line)
        assert(sh:start())
        util.reap_later(sh)
        local deadline, kids = os.time() + 20, {}
        while os.time() < deadline do
          kids = util.children_of(sh.process.pid)
          if #kids == 1 and #util.children_of(kids[1].pid) == 1 then break end
          util.sleep(0.02)
        end
        assert.are.equal(1, #kids)
        local initpid = kids[1].pid
        local sleeper = util.children_of(initpid)[1].pid
        assert(sh.process:kill()) -- the init's parent dies: the init gets SIGTERM
        local gone = util.wait_gone(initpid, 20) and util.wait_gone(sleeper, 20)
        if not gone then os.execute("kill -KILL " .. initpid .. " " .. sleeper .. " 2>/dev/null") end
        sh:wait()
        assert.is_true(gone, "the init and its child outlived the init's parent")
      end)

      if have("script") then
        it("gives the terminal's foreground to the child's own process group", function()
          local out, err, code = run("script -qec " .. sq(init.cmd .. " -s -- sh " .. sq(CHILD) .. " stat") ..
            " /dev/null </dev/null")
          assert.are.equal(0, code, err)
          local pid, rest = out:match("(%d+) %(sh%) (.*)")
          assert.truthy(pid, out)
          local f = {}
          for w in rest:gmatch("%S+") do f[#f + 1] = w end
          -- state ppid pgrp session tty_nr tpgid
          assert.are.equal(pid, f[3], "the child leads its own process group")
          assert.are.equal(f[3], f[6], "the child's group is the terminal's foreground group")
        end)
      else
        pending("script (util-linux) is missing: the terminal hand-over is not checked")
      end
    end)
  end)
end
