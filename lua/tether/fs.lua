--- tether.fs: the bounded file-I/O lane.
--
-- File syscalls block the thread that makes them (there is no readiness to poll for on a
-- regular file), so tether runs them on a small pool of C threads, the *lane*, and never on
-- the Lua thread. A call submits its work to the lane, then waits for completions on an
-- eventfd through tether's waiter: the same call blocks in poll(2) in a plain script and
-- yields inside cqueues, OpenResty or any scheduler given to tether.set_waiter.
--
-- Each call has a limit (default 4): at most that many of its disk syscalls run at once,
-- and it adds at most that many threads to the process. Lane threads block every signal,
-- are named tether-fs1, tether-fs2, ..., open every file O_CLOEXEC, and exit after
-- 0.2 s without work (see docs/fs.md).
--
-- Runs on Lua 5.1 to 5.4 and LuaJIT.
local core = require "tether.core"
local errors = require "tether.errors"
local wait = require "tether.wait"

local type, error, format = type, error, string.format
local floor, min = math.floor, math.min

local M = {}

local LANE_MAX, LANE_IDLE = core.lane_max, core.lane_idle

--- fs.DEFAULT_LIMIT: the limit of a call that gives none.
M.DEFAULT_LIMIT = 4
--- fs.MAX_LIMIT: the largest limit a call may give.
M.MAX_LIMIT = LANE_MAX

local function is_context(v)
  return wait.is_context(v)
end

-- opts(fname, o, allowed) -> o or {}: raises naming a field that is unknown.
local function check_opts(fname, o, allowed)
  if o == nil then return {} end
  if type(o) ~= "table" then
    error(format("fs.%s: options must be a table, got %s", fname, type(o)), 3)
  end
  for k in pairs(o) do
    if not allowed[k] then error(format("fs.%s: unknown option %s", fname, tostring(k)), 3) end
  end
  if o.ctx ~= nil and not is_context(o.ctx) then
    error(format("fs.%s: ctx must be a context", fname), 3)
  end
  return o
end

local function check_path(fname, path)
  if type(path) ~= "string" then
    error(format("fs.%s: path must be a string, got %s", fname, type(path)), 3)
  end
  if path:find("\0", 1, true) then
    error(format("fs.%s: path must not contain a NUL byte", fname), 3)
  end
end

-- drive(b, n, ctx, datas, fails, write, batch) -> true when all n ops of batch b completed
-- (results collected into datas and fails), false when ctx was done first (b is then
-- cancelled; ops not collected have a nil datas entry). A write that has started is waited
-- for whatever ctx says: its outcome must be known. batch: wake up after this many
-- completions (nil = each one). nil, err when the OS refused the wait (b is cancelled).
local function drive(b, n, ctx, datas, fails, write, batch)
  local fd = b:fd()
  while true do
    local got = b:collect(datas, fails)
    if got >= n then break end
    if ctx and ctx:done() then
      local started = b:cancel()
      if not write or started == 0 then return false end
      ctx = nil
    elseif b:arm(batch and min(n - got, batch) or 1) then
      local ok, err
      if ctx then
        ok, err = wait.wait_many(wait.add_ctx({ fd, "r" }, ctx), ctx:deadline())
      else
        ok, err = wait.wait(fd, "r")
      end
      if ok == nil then b:cancel(); return nil, err end -- the OS refused the wait
      b:drain()
    end
  end
  return true
end

local read_opts = { limit = true, ctx = true }

-- read_files waits for this many completions per thread before it wakes to collect them
-- (fewer wake-ups; the Lua thread turns them into strings while the lane reads on).
local WAKE_EVERY = 16

-- canceled(op, path, cerr) -> the error of an op that a done context stopped: wraps cerr.
local function canceled(op, path, cerr)
  return errors.new { op = op, path = path, err = cerr }
end

-- Raises for paths[i]: not a string (why = its type) or with a NUL byte (why = nil).
local function bad_path(i, why)
  if why then error(format("fs.read_files: paths[%d] must be a string, got %s", i, why), 3) end
  error(format("fs.read_files: paths[%d] must not contain a NUL byte", i), 3)
end

--- fs.read_files(paths [, opts]) -> datas, errs | nil, err.
-- Reads every file of the list paths through the lane. datas[i] is the content of
-- paths[i] (a string) or false; errs[i] is nil, or an error object (err.op "open" or
-- "read", err.path, err.errno, err.code such as "ENOENT"). Results are in input order.
-- opts.limit: at most this many reads at once (default 4, at most fs.MAX_LIMIT);
-- opts.ctx: a context; once it is done the call returns at once, and every file not read
-- by then has datas[i] = false and an errs[i] wrapping ctx:err() (errs[i]:is(ctx:err())).
-- nil, err only when the lane cannot start (no thread could be created, no eventfd).
-- Raises naming the argument for a non-table paths, a non-string or NUL-containing path,
-- a bad limit, an unknown option or a ctx that is not a context.
function M.read_files(paths, opts)
  if type(paths) ~= "table" then
    error("fs.read_files: paths must be a list of strings, got " .. type(paths), 2)
  end
  opts = check_opts("read_files", opts, read_opts)
  local limit = opts.limit
  if limit == nil then
    limit = M.DEFAULT_LIMIT
  elseif type(limit) ~= "number" or limit ~= floor(limit) or limit < 1 or limit > M.MAX_LIMIT then
    error(format("fs.read_files: limit must be an integer from 1 to %d", M.MAX_LIMIT), 2)
  end
  local ctx = opts.ctx
  if ctx and ctx:done() then
    -- Start nothing: every path gets ctx's error (after the same argument checks).
    local datas, errs, cerr = {}, {}, ctx:err()
    for i = 1, #paths do
      local p = paths[i]
      if type(p) ~= "string" then bad_path(i, type(p)) end
      if p:find("\0", 1, true) then bad_path(i) end
      datas[i], errs[i] = false, canceled("read", p, cerr)
    end
    return datas, errs
  end
  local b, datas, n = core.lane_read(paths, limit)
  if b == false then bad_path(datas, n) end
  if b == nil then return nil, errors.from_errno("read_files", nil, datas) end
  local fails, errs = {}, {}
  local complete, werr = true, nil
  if n > 0 then complete, werr = drive(b, n, ctx, datas, fails, false, WAKE_EVERY * limit) end
  if not complete then b:collect(datas, fails) end
  b:close()
  if complete == nil then return nil, werr end
  for k = 1, #fails, 3 do
    local i = fails[k]
    errs[i] = errors.from_errno(fails[k + 2], paths[i], fails[k + 1])
  end
  if not complete then
    local cerr = ctx:err()
    for i = 1, n do
      if datas[i] == nil then datas[i], errs[i] = false, canceled("read", paths[i], cerr) end
    end
  end
  return datas, errs
end

--- fs.read_file(path [, opts]) -> data | nil, err.
-- The content of the file path, read on the lane (opts.ctx: a context; when it is done
-- first, err wraps ctx:err()). err has op ("open", "read"), path, errno and code.
-- Raises naming the argument for a non-string path, a NUL byte in it or bad options.
function M.read_file(path, opts)
  check_path("read_file", path)
  opts = check_opts("read_file", opts, read_opts)
  local datas, errs = M.read_files({ path }, { limit = 1, ctx = opts.ctx })
  if not datas then return nil, errs end
  if errs[1] then return nil, errs[1] end
  return datas[1]
end

-- one(b, ctx, path, write, op) -> result | nil, err: drives a batch of one op.
local function one(b, ctx, path, write, op)
  local datas, fails = {}, {}
  local complete, werr = drive(b, 1, ctx, datas, fails, write)
  b:close()
  if complete == nil then return nil, werr end
  if fails[1] then return nil, errors.from_errno(fails[3], path, fails[2]) end
  if not complete then return nil, canceled(op, path, ctx:err()) end
  return datas[1]
end

local write_opts = { atomic = true, sync = true, mode = true, ctx = true }

--- fs.write_file(path, data [, opts]) -> true | nil, err.
-- Writes the string data to the file path on the lane. Options (nil = false):
-- opts.atomic: write a temporary file in the same directory (.NAME.tmpXXXXXX), then
-- rename it over path, so that a reader sees the old content or the new, never a part;
-- on failure the temporary file is removed. The replaced file's permission bits are
-- kept (unless opts.mode is given); a symlink at path is replaced, not followed.
-- opts.sync: fsync the file before it counts as written (and, with atomic, the
-- directory after the rename). opts.mode: permission bits for a created file (default
-- 0666; the umask applies). opts.ctx: a context; it can stop a write that has not
-- started yet (nil, err wrapping ctx:err()), never one in progress.
-- Without atomic it is Go's os.WriteFile: create or truncate, then write.
-- err has op ("open", "write", "sync", "close", "rename", "chmod"), path, errno, code.
-- Raises naming the argument for a non-string path or data, NUL in path or bad options.
function M.write_file(path, data, opts)
  check_path("write_file", path)
  if type(data) ~= "string" then
    error("fs.write_file: data must be a string, got " .. type(data), 2)
  end
  opts = check_opts("write_file", opts, write_opts)
  local mode = opts.mode
  if mode ~= nil and (type(mode) ~= "number" or mode ~= floor(mode) or mode < 0 or mode > 4095) then
    error("fs.write_file: mode must be an integer from 0 to 4095 (octal 07777)", 2)
  end
  if opts.ctx and opts.ctx:done() then
    return nil, canceled("write", path, opts.ctx:err())
  end
  local b, e = core.lane_write(path, data, opts.atomic and true or false, opts.sync and true or false, mode)
  if not b then return nil, errors.from_errno("write_file", path, e) end
  return one(b, opts.ctx, path, true, "write")
end

local stat_opts = { follow = true, ctx = true }

--- fs.stat(path [, opts]) -> info | nil, err.
-- Information about the file path, from stat(2) on the lane: a table with
-- type ("file", "dir", "link", "fifo", "socket", "char", "block"), size (bytes),
-- mode (permission bits, incl. setuid/setgid/sticky), mtime, atime, ctime (seconds
-- since the epoch, with fractions), uid, gid, nlink, ino, dev, rdev, blocks, blksize.
-- opts.follow = false looks at a symlink itself (lstat; type "link"); opts.ctx: a context.
-- err has op "stat" (or "lstat"), path, errno and code (e.g. "ENOENT").
function M.stat(path, opts)
  check_path("stat", path)
  opts = check_opts("stat", opts, stat_opts)
  local op = opts.follow == false and "lstat" or "stat"
  if opts.ctx and opts.ctx:done() then
    return nil, canceled(op, path, opts.ctx:err())
  end
  local b, e = core.lane_stat(path, opts.follow ~= false)
  if not b then return nil, errors.from_errno("stat", path, e) end
  return one(b, opts.ctx, path, false, op)
end

--- fs.lane_stats() -> {threads = n, idle = n}: the lane's threads now (in the whole
-- process, for all calls), and how many of them wait for work (they exit after
-- fs.IDLE_TIMEOUT seconds without any).
function M.lane_stats()
  local n, idle = core.lane_stats()
  return { threads = n, idle = idle }
end

--- fs.IDLE_TIMEOUT: seconds an idle lane thread waits for work before it exits.
M.IDLE_TIMEOUT = LANE_IDLE

return M
