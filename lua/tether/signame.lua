--- tether.signame (internal): the one signal-name parser of the library.
--
-- number(sig) accepts a number (an integer 0..SIGRTMAX), a name with or without
-- "SIG" in any case ("TERM", "sigterm"), and the real-time forms "RTMIN",
-- "RTMIN+n", "RTMAX", "RTMAX-n" (n within SIGRTMIN..SIGRTMAX). name(n) is its
-- inverse ("SIGTERM", "SIGRTMIN+3"). exec (Process, pdeathsig) and signal use it.
local core = require "tether.core"

local SIG = core.signals
local type, tostring, tonumber, floor = type, tostring, tonumber, math.floor

local M = {}

local known = {} -- name as given -> number, for the names already parsed (a few dozen at most)
M.known = known -- (read-only for callers on a hot path: process:signal looks here first)

-- number(sig) -> n | nil, reason: reason reads "unknown signal \"FOO\"",
-- "invalid signal number 1.5" or "signal name or number expected, got table".
function M.number(sig)
  local hit = known[sig]
  if hit then return hit end
  local rtmin, rtmax = SIG.SIGRTMIN, SIG.SIGRTMAX
  if type(sig) == "number" then
    if sig ~= floor(sig) or sig < 0 or sig > rtmax then
      return nil, "invalid signal number " .. tostring(sig)
    end
    return sig
  end
  if type(sig) ~= "string" then return nil, "signal name or number expected, got " .. type(sig) end
  local s = sig:upper()
  if s:sub(1, 3) ~= "SIG" then s = "SIG" .. s end
  local n = SIG[s]
  if type(n) ~= "number" then
    local base, sign, off = s:match("^SIG(RTM[AI][XN])([%+%-])(%d+)$")
    off = tonumber(off)
    if base == "RTMIN" and sign == "+" then n = rtmin + off
    elseif base == "RTMAX" and sign == "-" then n = rtmax - off
    else n = nil end
  end
  if not n or n < 1 or n > rtmax then return nil, ("unknown signal %q"):format(sig) end
  known[sig] = n
  return n
end

-- name(n) -> "SIGINT" (or "SIGRTMIN+3" / "SIG<n>").
function M.name(n)
  local s = SIG[n]
  if type(s) == "string" then return s end
  local rtmin, rtmax = SIG.SIGRTMIN, SIG.SIGRTMAX
  if n >= rtmin and n <= rtmax then
    return n == rtmin and "SIGRTMIN" or ("SIGRTMIN+" .. (n - rtmin))
  end
  return "SIG" .. n
end

return M
