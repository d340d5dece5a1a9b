-- bounded_read.lua: read many files through tether's bounded file-I/O lane.
--
-- fs.read_files hands the reads to a few C threads (at most `limit` of them for this call)
-- and waits for their completions without blocking on disk itself. The results come back
-- in input order; a file that cannot be read gives false and an error. The thread count of
-- the process is printed before, during (sampled by a waiter each time read_files waits, and
-- as it returns) and after: the lane's threads exit on their own once idle (fs.IDLE_TIMEOUT).
--
--   lua5.4 examples/bounded_read.lua [NFILES] [LIMIT]
local tether = require "tether"
local fs = require "tether.fs"
local core = require "tether.core"

local nfiles, limit = tonumber(arg and arg[1]) or 500, tonumber(arg and arg[2]) or 4

tether.main(function()
  -- Some files to read, each saying which it is (temporary files: os.tmpname creates them).
  local paths = {}
  for i = 1, nfiles do
    paths[i] = os.tmpname()
    assert(fs.write_file(paths[i], ("file %d\n"):format(i)))
  end
  local missing = os.tmpname()
  os.remove(missing)
  paths[#paths + 1] = missing -- one that does not exist

  -- Let the threads that wrote the files idle out, so that "before" is the program alone.
  while fs.lane_stats().threads > 0 do tether.sleep(0.05) end
  tether.sleep(0.05)
  local before = tether.threads()
  print(("before: %d thread(s)"):format(before))

  -- A waiter that samples the thread count whenever read_files waits for the lane.
  local during = before
  tether.set_waiter(function(fd, events, timeout)
    local n = tether.threads()
    if n > during then during = n end
    core.poll(fd, events, timeout and core.now() + timeout)
  end)
  local datas, errs = fs.read_files(paths, { limit = limit })
  tether.set_waiter(nil)
  -- The lane's threads outlive the call briefly: count them as it returns too (on a busy
  -- machine the lane may finish before read_files ever had to wait).
  local as_returned = tether.threads()
  if as_returned > during then during = as_returned end
  print(("during: at most %d thread(s) (limit %d, so at most %d)"):format(during, limit, before + limit))

  local ordered, bytes = true, 0
  for i = 1, nfiles do
    if datas[i] ~= ("file %d\n"):format(i) then ordered = false end
    bytes = bytes + #(datas[i] or "")
  end
  print(("read %d files, %d bytes; order kept: %s"):format(nfiles, bytes, tostring(ordered)))
  local last = #paths
  print(("missing file -> %s, %s (%s)"):format(tostring(datas[last]), tostring(errs[last]), errs[last].code))

  print(("after: %d thread(s) right away (lane threads idle out after %g s)"):format(tether.threads(), fs.IDLE_TIMEOUT))
  local deadline = tether.now() + 10
  while (fs.lane_stats().threads > 0 or tether.threads() > before) and tether.now() < deadline do
    tether.sleep(0.05)
  end
  print(("after idle: %d thread(s); back to the start: %s"):format(tether.threads(), tostring(tether.threads() == before)))
  for i = 1, nfiles do os.remove(paths[i]) end

end)
