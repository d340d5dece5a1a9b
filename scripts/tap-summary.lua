-- tap-summary.lua FILE [RC]
--
-- Reads busted's TAP output (busted -o TAP) from FILE and prints, as its
-- very last line, "N passed, N failed". RC is busted's exit status.
-- Exits 0 only when at least one test passed, none failed, the TAP plan
-- matches the results and busted itself exited 0; exits 1 otherwise.
--
-- Before the summary it lists the failed tests and the skipped (pending)
-- ones, so a CI log shows them next to the closing line.
--
-- Robust against stray output: a child process that inherits the test
-- runner's stdout may write lines looking like TAP, so only results that
-- carry the next expected test number are counted (busted numbers its
-- results 1, 2, 3, ... in order), and only the last plan line counts.
-- Runs on Lua 5.1 to 5.4 and LuaJIT.

local path, rc = arg[1], tonumber(arg[2] or "0") or 1

if not path then
  io.stderr:write("usage: tap-summary.lua FILE [RC]\n")
  os.exit(2)
end

local passed, failed, skipped = 0, 0, 0
local planned
local expect = 1
local failures, skips, problems = {}, {}, {}

local f = io.open(path, "r")
if f then
  for line in f:lines() do
    line = line:gsub("\r$", "")
    local notok, n, rest = "", line:match("^ok (%d+)(.*)$")
    if not n then
      notok, n, rest = "not ", line:match("^not ok (%d+)(.*)$")
    end
    if n and tonumber(n) == expect then
      expect = expect + 1
      local desc = rest:gsub("^%s*%-?%s*", "")
      if notok == "not " then
        failed = failed + 1
        failures[#failures + 1] = desc
      elseif desc:match("^# SKIP") or desc:match("^# skip") then
        skipped = skipped + 1
        skips[#skips + 1] = (desc:gsub("^# [Ss][Kk][Ii][Pp]%s*", ""))
      else
        passed = passed + 1
      end
    else
      local p = line:match("^1%.%.(%d+)%s*$")
      if p then planned = tonumber(p) end
    end
  end
  f:close()
else
  problems[#problems + 1] = "no TAP output at " .. path .. " (busted did not run?)"
end

local seen = passed + failed + skipped
if f and not planned then
  problems[#problems + 1] = ("TAP plan missing after %d results (busted crashed or was killed?)"):format(seen)
elseif f and planned ~= seen then
  problems[#problems + 1] = ("TAP plan says %d tests, %d results found"):format(planned, seen)
end
if f and seen == 0 and planned then
  problems[#problems + 1] = "no tests ran"
end
if rc ~= 0 and failed == 0 then
  problems[#problems + 1] = ("busted exited with status %d"):format(rc)
end
-- A broken run counts as one failure, so the summary never says
-- "0 failed" while the exit status says otherwise.
if #problems > 0 and failed == 0 then failed = 1 end

for _, name in ipairs(failures) do print("FAILED: " .. name) end
for _, name in ipairs(skips) do print("skipped: " .. name) end
for _, msg in ipairs(problems) do print("tap-summary: " .. msg) end
if skipped > 0 then print(("%d skipped"):format(skipped)) end
io.stdout:write(("%d passed, %d failed\n"):format(passed, failed))
io.stdout:flush()

os.exit((failed == 0 and rc == 0 and passed > 0 and #problems == 0) and 0 or 1)
