--- tether.wait (internal): the one place where tether blocks.
--
-- Every blocking call in tether is a loop "try the non-blocking step; if not
-- ready, wait on (fd, events, deadline)". The wait goes through here, so a
-- replaced waiter (tether.set_waiter) changes how all of tether blocks.
-- Deadlines are absolute seconds on tether.now()'s monotonic clock; nil
-- means no deadline.
local core = require "tether.core"

local M = {}

--- The current waiter: nil means poll(2) in this thread.
M.waiter = nil

--- wait(fd, events, deadline) -> true when fd is ready, false at the deadline.
-- fd is an integer (or anything tether takes as an fd); events "r", "w" or "rw".
function M.wait(fd, events, deadline)
  local w = M.waiter
  if w then
    local timeout = deadline and math.max(0, deadline - core.now()) or nil
    w(fd, events, timeout)
    -- The caller retries its step anyway; only report the deadline.
    return not deadline or core.now() < deadline or core.poll(fd, events, 0) == true
  end
  local ok, err = core.poll(fd, events, deadline)
  if ok == nil then error("tether: poll failed: errno " .. tostring(err)) end
  return ok
end

--- wait_many(list, deadline) -> index of a ready pair, or false at the deadline.
-- list is {fd1, ev1, fd2, ev2, ...}; the index counts pairs from 1.
function M.wait_many(list, deadline)
  if M.waiter and #list == 2 then
    return M.wait(list[1], list[2], deadline) and 1 or false
  end
  -- A custom waiter that takes one fd at a time cannot wait on several;
  -- poll(2) serves until tether.waiters learn an epoll set (the signals issue).
  local i, err = core.poll_many(list, deadline)
  if i == nil then error("tether: poll failed: errno " .. tostring(err)) end
  return i
end

--- deadline(timeout) -> absolute deadline for a timeout in seconds (nil stays nil).
function M.deadline(timeout)
  if timeout == nil then return nil end
  if type(timeout) ~= "number" or timeout ~= timeout then
    error("timeout must be a number of seconds", 3)
  end
  return core.now() + math.max(0, timeout)
end

return M
