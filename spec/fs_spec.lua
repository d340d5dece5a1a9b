-- tether.fs: the bounded file-I/O lane (read_files, read_file, write_file, stat) and its
-- threads, observed from outside (/proc/self/task, a second process, spawned children).
-- Issue #4 acceptance points 1, 2, 3, 4.
local tether = require "tether"
local fs = require "tether.fs"
local exec = require "tether.exec"
local context = require "tether.context"
local errors = require "tether.errors"
local core = require "tether.core"
local util = require "helpers.util"


-- Waits until the lane has no thread left (they exit after fs.IDLE_TIMEOUT), and the process
-- is back to `base` threads (a lane thread leaves the count just before it is gone).
local base_threads
local function lane_idle(base)
  base = base or base_threads
  local deadline = tether.now() + 10
  local function idle() return fs.lane_stats().threads == 0 and (not base or tether.threads() == base) end
  while not idle() and tether.now() < deadline do tether.sleep(0.02) end
  return idle()
end

-- Every test leaves no fd, zombie or lane thread behind.
local warm, mark, check = util.no_leaks()
setup(function()
  warm()
  assert(lane_idle())
  tether.sleep(0.05) -- a lane thread that has just left the count is gone by then
  base_threads = tether.threads()
end)
before_each(mark)
after_each(function()
  tether.set_waiter(nil)
  check()
  assert.is_true(lane_idle(), "lane threads left behind")
  assert.are.equal(base_threads, tether.threads(), "threads left behind")
end)

-- A directory of `n` files f1..fn with distinct contents (made once per size), on tmpfs
-- where there is one: creating 10,000 files on a busy disk takes seconds.
local dirs = {}
local function content(i) return ("%d:%s\n"):format(i, ("x"):rep(i % 97)) end
local function files(n)
  if not dirs[n] then
    local shm = util.sh("test -d /dev/shm && test -w /dev/shm && mktemp -d /dev/shm/tether-spec.XXXXXX")
    local dir = shm:match("^(/dev/shm/%S+)") or util.tmpdir()
    for i = 1, n do util.writefile(dir .. "/f" .. i, content(i)) end
    dirs[n] = dir
  end
  local paths = {}
  for i = 1, n do paths[i] = dirs[n] .. "/f" .. i end
  return paths, dirs[n]
end

teardown(function()
  for _, dir in pairs(dirs) do os.execute("rm -rf " .. util.shquote(dir)) end
end)

-- The threads of this process: {tid, name, sigblk} from /proc/self/task/<tid>/status.
local function tasks()
  local list = {}
  for tid in util.sh("ls /proc/" .. util.pid() .. "/task"):gmatch("%d+") do
    local st = util.status_of(util.pid() .. "/task/" .. tid)
    if st then list[#list + 1] = { tid = tonumber(tid), name = st.Name, sigblk = st.SigBlk } end
  end
  return list
end

-- A FIFO that this process holds open for writing (O_RDWR), so that a lane thread reading it
-- blocks until release() writes to it and closes it: a lane thread held busy at will.
local function held_fifo()
  local dir = util.tmpdir()
  local path = dir .. "/fifo"
  assert(os.execute("mkfifo " .. util.shquote(path)))
  local w = assert(io.open(path, "r+"))
  local fifo = { path = path }
  -- Whether a lane thread has the FIFO open too (ours and its fd in fds, util.fd_summary()).
  function fifo.opened(fds)
    local _, count = (fds or util.fd_summary()):gsub(":" .. path:gsub("%p", "%%%0"), "")
    return count >= 2
  end
  -- Waits (up to 10 s) until a lane thread has the FIFO open too: releasing it before would
  -- let the lane open it after the data was gone.
  function fifo.wait_opened()
    local deadline = tether.now() + 10
    repeat
      if fifo.opened() then return true end
      util.sleep(0.01)
    until tether.now() > deadline
    return false
  end
  function fifo.release()
    if w then
      w:write("fifo data")
      w:close()
      w = nil
    end
  end
  util.defer(function()
    fifo.release()
    os.execute("rm -rf " .. util.shquote(dir))
  end)
  return fifo
end

-- Point 1.
describe("fs.read_files", function()
  it("reads 10,000 files in input order, gives false + ENOENT for a missing one, and never runs more than limit extra threads", function()
    local paths, dir = files(10000)
    local missing = { [1] = true, [4321] = true, [10000] = true }
    for i in pairs(missing) do paths[i] = dir .. "/missing" .. i end
    local n = 3
    local base = tether.threads()
    -- Observer 1: a second process sampling our Threads: line as fast as it can.
    local out, stop = util.tmpname(), util.tmpname()
    os.remove(stop)
    local sampler = exec.command("sh", "-c", ([[
      while [ ! -e %s ]; do
        while read -r k v; do [ "$k" = Threads: ] && echo "$v" && break; done < /proc/%d/status
      done > %s]]):format(util.shquote(stop), util.pid(), util.shquote(out)))
    util.reap_later(sampler)
    assert(sampler:start())
    while #(util.readfile(out) or "") == 0 do util.sleep(0.01) end
    -- Observer 2: our own waiter, called whenever read_files waits for completions.
    local seen = 0
    tether.set_waiter(function(fd, events, timeout)
      local t = tether.threads()
      if t > seen then seen = t end
      core.poll(fd, events, timeout and core.now() + timeout)
    end)
    local datas, errs = fs.read_files(paths, { limit = n })
    tether.set_waiter(nil)
    -- Lane threads stay for fs.IDLE_TIMEOUT: count them as it returns too (on a busy machine
    -- the Lua thread may seldom have to wait).
    if tether.threads() > seen then seen = tether.threads() end
    util.writefile(stop, "")
    assert(sampler:wait())
    local sampled = 0
    for v in util.readfile(out):gmatch("%d+") do
      if tonumber(v) > sampled then sampled = tonumber(v) end
    end
    os.remove(out); os.remove(stop)

    assert.are.equal(10000, #datas)
    for i = 1, 10000 do
      if missing[i] then
        assert.are.equal(false, datas[i])
        assert.are.equal("ENOENT", errs[i].code)
        assert.are.equal(paths[i], errs[i].path)
        assert.are.equal("open", errs[i].op)
        assert.is_true(errors.is(errs[i], errors.ErrNotExist))
      else
        assert.are.equal(content(i), datas[i])
        assert.is_nil(errs[i])
      end
    end
    assert.is_true(seen > base, "no lane thread was ever seen")
    assert.is_true(seen <= base + n, ("waiter saw %d threads, base %d, limit %d"):format(seen, base, n))
    assert.is_true(sampled <= base + n, ("second process saw %d threads, base %d, limit %d"):format(sampled, base, n))
  end)

  it("returns empty lists for an empty list", function()
    local datas, errs = fs.read_files({})
    assert.are.same({}, datas)
    assert.are.same({}, errs)
  end)

  it("reads /proc files (size 0 in stat), files larger than one read chunk, and empty files", function()
    local dir = util.tmpdir()
    util.defer(function() os.execute("rm -rf " .. util.shquote(dir)) end)
    local big = ("0123456789abcdef"):rep(20 * 65536 + 7) -- 20 MiB + 112 bytes
    util.writefile(dir .. "/big", big)
    util.writefile(dir .. "/empty", "")
    local datas, errs = fs.read_files({ "/proc/self/status", dir .. "/big", dir .. "/empty", "/proc/self/maps" })
    assert.are.same({}, errs)
    assert.is_truthy(datas[1]:find("^Name:"))
    assert.is_truthy(datas[1]:find("\nThreads:"))
    assert.are.equal(#big, #datas[2])
    assert.is_true(big == datas[2])
    assert.are.equal("", datas[3])
    assert.is_true(#datas[4] > 0)
  end)

  it("gives EISDIR (op read) for a directory", function()
    local datas, errs = fs.read_files({ "/" })
    assert.are.equal(false, datas[1])
    assert.are.equal("EISDIR", errs[1].code)
    assert.are.equal("read", errs[1].op)
    assert.are.equal("read /: is a directory", tostring(errs[1]))
  end)

  it("returns at once when its context is cancelled mid-way, the rest marked with ctx:err()", function()
    local paths = files(10)
    local fifo = held_fifo()
    table.insert(paths, 3, fifo.path) -- with limit 1, the lane blocks on the FIFO
    local ctx, cancel = context.with_cancel(context.background())
    local waits = 0
    tether.set_waiter(function(fd, events, timeout)
      waits = waits + 1
      assert(fifo.wait_opened()) -- the lane thread now waits on the FIFO
      cancel()
      core.poll(fd, events, timeout and core.now() + timeout)
    end)
    local datas, errs = fs.read_files(paths, { limit = 1, ctx = ctx })
    tether.set_waiter(nil)
    -- It returned while the lane thread still waits on the FIFO.
    assert.are.equal(1, fs.lane_stats().threads - fs.lane_stats().idle)
    assert.is_true(waits > 0)
    for i = 1, #paths do
      if i >= 3 or datas[i] == false then
        assert.are.equal(false, datas[i])
        assert.is_true(errs[i]:is(context.Canceled), tostring(errs[i]))
        assert.are.equal(paths[i], errs[i].path)
      else
        assert.are.equal(content(i), datas[i])
      end
    end
    fifo.release()
  end)

  it("runs at most 4 reads at once on at most 4 extra threads when no limit is given", function()
    local fifos, paths = {}, {}
    for i = 1, 6 do fifos[i] = held_fifo(); paths[i] = fifos[i].path end
    local base = tether.threads()
    -- FIFOs a lane thread has open now.
    local function opened()
      local list, fds = {}, util.fd_summary()
      for _, f in ipairs(fifos) do
        if f.opened(fds) then list[#list + 1] = f end
      end
      return list
    end
    local most_open, most_threads, first = 0, 0, true
    -- (the waiter sleeps with core.sleep_until: tether.sleep would call the waiter again)
    tether.set_waiter(function(fd, events)
      most_threads = math.max(most_threads, tether.threads() - base)
      if first then -- the first wait: four reads block on their FIFOs, and no fifth starts
        first = false
        local deadline = tether.now() + 10
        while #opened() < 4 and tether.now() < deadline do core.sleep_until(core.now() + 0.01) end
        core.sleep_until(core.now() + 0.1)
        most_threads = math.max(most_threads, tether.threads() - base)
      end
      local now_open = opened()
      most_open = math.max(most_open, #now_open)
      for _, f in ipairs(now_open) do f.release() end
      if fd >= 0 then core.poll(fd, events, core.now() + 0.01) else core.sleep_until(core.now() + 0.01) end
    end)
    local datas, errs = fs.read_files(paths)
    tether.set_waiter(nil)
    assert.are.same({}, errs)
    for i = 1, 6 do assert.are.equal("fifo data", datas[i]) end
    assert.are.equal(4, most_open)
    assert.is_true(most_threads <= 4, most_threads .. " extra threads")
  end)

  it("marks every file with the error of a context done before the call, reading none", function()
    local ctx, cancel = context.with_cancel(context.background())
    cancel()
    local datas, errs = fs.read_files(files(5), { ctx = ctx })
    for i = 1, 5 do
      assert.are.equal(false, datas[i])
      assert.is_true(errors.is(errs[i], context.Canceled))
    end
  end)

  it("stops at a context's deadline with DeadlineExceeded", function()
    local fifo = held_fifo()
    local ctx = context.with_timeout(context.background(), 0.1)
    local datas, errs = fs.read_files({ fifo.path }, { ctx = ctx })
    assert.are.equal(false, datas[1])
    assert.is_true(errs[1]:is(context.DeadlineExceeded))
    fifo.release()
  end)

  it("reads the FIFO once a writer writes and closes", function()
    local fifo = held_fifo()
    tether.set_waiter(function(fd, events, timeout)
      assert(fifo.wait_opened())
      fifo.release()
      core.poll(fd, events, timeout and core.now() + timeout)
    end)
    assert.are.equal("fifo data", fs.read_file(fifo.path))
  end)

  it("runs in two cqueues coroutines at once", function()
    local ok, cqueues = pcall(require, "cqueues")
    if not ok then pending("lua-cqueues is not installed for " .. _VERSION) return end
    tether.set_waiter(tether.waiters.cqueues)
    local paths = files(500)
    local cq = cqueues.new()
    local got = {}
    for k = 1, 2 do
      cq:wrap(function()
        local datas, errs = fs.read_files(paths, { limit = 2 })
        got[k] = { datas, errs }
      end)
    end
    assert(cq:loop())
    for k = 1, 2 do
      assert.are.same({}, got[k][2])
      for i = 1, 500 do assert.are.equal(content(i), got[k][1][i]) end
    end
  end)

  it("raises naming the argument for bad input", function()
    local cases = {
      { { nil }, "fs.read_files: paths must be a list of strings, got nil" },
      { { "x" }, "fs.read_files: paths must be a list of strings, got string" },
      { { { "a", 42 } }, "fs.read_files: paths[2] must be a string, got number" },
      { { { "a\0b" } }, "fs.read_files: paths[1] must not contain a NUL byte" },
      { { {}, 5 }, "fs.read_files: options must be a table, got number" },
      { { {}, { limit = 0 } }, "fs.read_files: limit must be an integer from 1 to 256" },
      { { {}, { limit = 1.5 } }, "fs.read_files: limit must be an integer from 1 to 256" },
      { { {}, { limit = "4" } }, "fs.read_files: limit must be an integer from 1 to 256" },
      { { {}, { limit = 257 } }, "fs.read_files: limit must be an integer from 1 to 256" },
      { { {}, { ctx = {} } }, "fs.read_files: ctx must be a context" },
      { { {}, { limt = 3 } }, "fs.read_files: unknown option limt" },
    }
    for _, c in ipairs(cases) do
      local args = c[1]
      assert.has_error(function() fs.read_files(args[1], args[2]) end, c[2])
    end
  end)
end)

describe("fs.read_file", function()
  it("returns the content, or nil and an error with op, path and code", function()
    local paths = files(3)
    assert.are.equal(content(2), fs.read_file(paths[2]))
    local data, err = fs.read_file("/nonexistent/tether")
    assert.is_nil(data)
    assert.are.equal("open /nonexistent/tether: no such file or directory", tostring(err))
    assert.are.equal("ENOENT", err.code)
    assert.are.equal("/nonexistent/tether", err.path)
  end)

  it("raises for a bad path", function()
    assert.has_error(function() fs.read_file(42) end, "fs.read_file: path must be a string, got number")
    assert.has_error(function() fs.read_file("a\0b") end, "fs.read_file: path must not contain a NUL byte")
  end)
end)

describe("fs.stat", function()
  it("describes files, directories and symlinks", function()
    local dir = util.tmpdir()
    util.defer(function() os.execute("rm -rf " .. util.shquote(dir)) end)
    util.writefile(dir .. "/f", "12345")
    os.execute("chmod 640 " .. util.shquote(dir .. "/f") .. " && ln -s f " .. util.shquote(dir .. "/l"))
    local st = assert(fs.stat(dir .. "/f"))
    assert.are.equal("file", st.type)
    assert.are.equal(5, st.size)
    assert.are.equal(tonumber("640", 8), st.mode)
    assert.are.equal(1, st.nlink)
    assert.is_true(math.abs(st.mtime - os.time()) < 600)
    assert.are.equal("dir", assert(fs.stat(dir)).type)
    assert.are.equal("file", assert(fs.stat(dir .. "/l")).type)
    assert.are.equal("link", assert(fs.stat(dir .. "/l", { follow = false })).type)
    assert.are.equal("char", assert(fs.stat("/dev/null")).type)
  end)

  it("returns nil and an error for a missing file", function()
    local st, err = fs.stat("/nonexistent/tether")
    assert.is_nil(st)
    assert.are.equal("stat /nonexistent/tether: no such file or directory", tostring(err))
    assert.are.equal("ENOENT", err.code)
    local _, lerr = fs.stat("/nonexistent/tether", { follow = false })
    assert.are.equal("lstat", lerr.op)
  end)

  it("raises for bad input", function()
    assert.has_error(function() fs.stat(nil) end, "fs.stat: path must be a string, got nil")
    assert.has_error(function() fs.stat("/", { folow = false }) end, "fs.stat: unknown option folow")
  end)
end)

-- Point 2.
describe("fs.write_file", function()
  local dir
  before_each(function()
    dir = util.tmpdir()
    util.defer(function() os.execute("rm -rf " .. util.shquote(dir)) end)
  end)

  local function listing()
    local names = {}
    for name in util.sh("ls -A " .. util.shquote(dir)):gmatch("[^\n]+") do names[#names + 1] = name end
    table.sort(names)
    return names
  end

  it("writes, truncates, and creates with the given mode", function()
    local p = dir .. "/plain"
    assert.is_true(fs.write_file(p, "long content here"))
    assert.is_true(fs.write_file(p, "short"))
    assert.are.equal("short", util.readfile(p))
    assert.is_true(fs.write_file(dir .. "/m", "x", { mode = tonumber("600", 8), sync = true }))
    assert.are.equal(tonumber("600", 8), assert(fs.stat(dir .. "/m")).mode)
  end)

  it("atomic: a reader in another process never sees a partial file", function()
    local p = dir .. "/target"
    local size = 1024 * 1024
    local v1, v2 = ("A"):rep(size), ("B"):rep(size + 4096)
    assert(fs.write_file(p, v1, { atomic = true }))
    local stop, out, both = dir .. "/stop", dir .. "/reader.out", dir .. "/both"
    -- The reader reads the file over and over; once it has seen both versions 5 times
    -- each it says so in `both` (the writer goes on until then: the reads overlap writes).
    local reader = exec.command(util.lua(), "-e", ([[
      local p, stop, both, size = %q, %q, %q, %d
      local reads, bad, seen = 0, 0, { A = 0, B = 0 }
      local function exists(f) local h = io.open(f) if h then h:close() return true end end
      while not exists(stop) do
        local f = io.open(p, "rb")
        local s = f and f:read("*a")
        if f then f:close() end
        reads = reads + 1
        if s == string.rep("A", size) then seen.A = seen.A + 1
        elseif s == string.rep("B", size + 4096) then seen.B = seen.B + 1
        else bad = bad + 1 end
        if seen.A >= 5 and seen.B >= 5 and not exists(both) then io.open(both, "w"):close() end
      end
      print(reads, bad, seen.A, seen.B)]]):format(p, stop, both, size))
    local outf = assert(io.open(out, "w"))
    reader.stdout = outf
    util.reap_later(reader)
    assert(reader:start())
    outf:close()
    local k, deadline = 0, tether.now() + 60
    repeat
      k = k + 1
      assert.is_true(fs.write_file(p, k % 2 == 0 and v1 or v2, { atomic = true }))
    until (k % 50 == 0 and util.readfile(both)) or tether.now() > deadline
    util.writefile(stop, "")
    assert(reader:wait())
    local reads, bad, a, b = util.readfile(out):match("(%d+)%s+(%d+)%s+(%d+)%s+(%d+)")
    assert.is_truthy(reads, util.readfile(out))
    assert.are.equal("0", bad, "the reader saw a partial file")
    assert.is_true(tonumber(a) >= 5 and tonumber(b) >= 5, ("the reader saw A %s times, B %s times"):format(a, b))
    assert.are.same({ "both", "reader.out", "stop", "target" }, listing()) -- no temporary file left
  end)

  it("atomic: keeps the replaced file's permission bits, honours mode, and syncs", function()
    local p = dir .. "/secret"
    util.writefile(p, "old")
    os.execute("chmod 600 " .. util.shquote(p))
    assert.is_true(fs.write_file(p, "new", { atomic = true, sync = true }))
    assert.are.equal("new", util.readfile(p))
    assert.are.equal(tonumber("600", 8), assert(fs.stat(p)).mode)
    assert.is_true(fs.write_file(p, "newer", { atomic = true, mode = tonumber("640", 8) }))
    assert.are.equal(tonumber("640", 8), assert(fs.stat(p)).mode)
    assert.are.same({ "secret" }, listing())
  end)

  it("atomic: leaves no temporary file behind when the rename fails", function()
    os.execute("mkdir " .. util.shquote(dir .. "/sub") .. " && touch " .. util.shquote(dir .. "/sub/x"))
    local ok, err = fs.write_file(dir .. "/sub", "data", { atomic = true })
    assert.is_nil(ok)
    assert.are.equal("rename", err.op)
    assert.are.equal(dir .. "/sub", err.path)
    assert.is_truthy(err.code == "EISDIR" or err.code == "ENOTEMPTY" or err.code == "EEXIST", err.code)
    assert.are.same({ "sub" }, listing())
  end)

  it("returns an error for a missing directory", function()
    for _, atomic in ipairs { false, true } do
      local ok, err = fs.write_file(dir .. "/no/such", "x", { atomic = atomic })
      assert.is_nil(ok)
      assert.are.equal("ENOENT", err.code)
      assert.are.equal("open", err.op)
    end
  end)

  it("does not start once its context is done", function()
    local ctx, cancel = context.with_cancel(context.background())
    cancel()
    local ok, err = fs.write_file(dir .. "/never", "x", { ctx = ctx })
    assert.is_nil(ok)
    assert.is_true(err:is(context.Canceled))
    assert.are.same({}, listing())
  end)

  it("raises for bad input", function()
    assert.has_error(function() fs.write_file(1, "x") end, "fs.write_file: path must be a string, got number")
    assert.has_error(function() fs.write_file("/tmp/x", nil) end, "fs.write_file: data must be a string, got nil")
    assert.has_error(function() fs.write_file("/tmp/x", "x", { mode = -1 }) end,
      "fs.write_file: mode must be an integer from 0 to 4095 (octal 07777)")
    assert.has_error(function() fs.write_file("/tmp/x", "x", { atomc = true }) end,
      "fs.write_file: unknown option atomc")
  end)
end)

describe("lane threads", function()
  -- Point 3.
  it("block every blockable signal and are named tether-fsN", function()
    local fifo = held_fifo()
    local main_before = util.status_of(util.pid()).SigBlk
    local seen
    tether.set_waiter(function(fd, events, timeout)
      if not seen then
        -- One lane thread blocks on the FIFO, the other may read the files.
        assert(fifo.wait_opened())
        seen = tasks()
        fifo.release()
      end
      core.poll(fd, events, timeout and core.now() + timeout)
    end)
    local paths = files(10)
    paths[#paths + 1] = fifo.path
    local datas, errs = fs.read_files(paths, { limit = 2 })
    tether.set_waiter(nil)
    assert.are.same({}, errs)
    assert.are.equal("fifo data", datas[#paths])
    local lane = {}
    for _, t in ipairs(seen) do
      if t.name:find("^tether%-fs") then lane[#lane + 1] = t end
    end
    assert.is_true(#lane >= 1 and #lane <= 2, "lane threads: " .. #lane)
    for _, t in ipairs(lane) do
      assert.is_truthy(t.name:find("^tether%-fs%d+$"), t.name)
      -- All of 1-64 but SIGKILL (9), SIGSTOP (19), and glibc's SIGCANCEL (32) and SIGSETXID
      -- (33), which pthread_sigmask never blocks (setuid() needs SIGSETXID in every thread).
      -- valgrind keeps signal 64 for itself: a client cannot block it.
      local want = os.getenv("TETHER_VALGRIND") and "7ffffffe7ffbfeff" or "fffffffe7ffbfeff"
      assert.are.equal(want, t.sigblk, t.name)
    end
    -- The Lua thread's own mask is as before.
    assert.are.equal(main_before, util.status_of(util.pid()).SigBlk)
  end)

  it("exit after the idle timeout", function()
    local base = tether.threads()
    assert(fs.read_files(files(50), { limit = 3 }))
    assert.is_true(fs.lane_stats().threads >= 1)
    assert.is_true(lane_idle(base))
    assert.are.equal(base, tether.threads())
  end)

  -- Point 4.
  local SPAWNS = util.scale(1000)
  it("never leak an fd into a child spawned while they open and close files (1000 spawns)", function()
    local paths, dir = files(1000)
    -- `ls -l /proc/self/fd/` in the child: fds 0-2, and the one ls lists the directory with.
    local function leaked(out)
      for fd, target in out:gmatch("(%d+) %-> ([^\n]*)") do
        if tonumber(fd) > 2 and not target:find("^/proc/%d+/fd$") then return out end
      end
    end
    local spawned, popened, bad = 0, 0, {}
    local inside = false
    local function check_child()
      inside = true
      local out = assert(exec.command("ls", "-l", "/proc/self/fd/"):output())
      assert(out:find("0 -> ", 1, true), out)
      bad[#bad + 1] = leaked(out)
      spawned = spawned + 1
      if spawned % 10 == 0 then
        -- A spawner that closes nothing (popen, via sh): no file of the lane may show up there.
        local p = assert(io.popen("ls -l /proc/self/fd/"))
        local pout = p:read("*a")
        p:close()
        if pout:find(dir, 1, true) then bad[#bad + 1] = pout end
        popened = popened + 1
      end
      inside = false
    end
    tether.set_waiter(function(fd, events, timeout)
      if not inside and spawned < SPAWNS then check_child() end
      core.poll(fd, events, timeout and core.now() + timeout)
    end)
    local rounds = 0
    while spawned < SPAWNS do
      local _, errs = fs.read_files(paths, { limit = 4 })
      assert.are.same({}, errs)
      rounds = rounds + 1
    end
    tether.set_waiter(nil)
    assert.are.equal(0, #bad, bad[1])
    assert.are.equal(SPAWNS, spawned)
    assert.are.equal(math.floor(SPAWNS / 10), popened)
    assert.is_true(rounds >= 2)
  end)
end)
