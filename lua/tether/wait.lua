--- tether.wait (internal): the one place where tether blocks.
--
-- Every blocking call in tether is a loop "try the non-blocking step; if not
-- ready, wait on (fd, events, deadline)". The wait goes through here, so a
-- replaced waiter (tether.set_waiter) changes how all of tether blocks.
-- Deadlines are absolute seconds on tether.now()'s monotonic clock; nil
-- means no deadline. A waiter returning early is harmless: callers retry.
local core = require "tether.core"
local errors = require "tether.errors"

local M = {}

--- The current waiter: nil means poll(2) in this thread.
M.waiter = nil
--- Called with an fd the waiter was given, just before tether closes it (cqueues.cancel).
M.on_close = nil
--- Set with waiters.ngx: waiter_many(list, deadline) waits on the whole list {fd, ev, ...}
-- itself (no private epoll fd a dropped request could leave behind).
M.waiter_many = nil

-- Waits through the custom waiter on a private epoll fd watching every pair in list:
-- the waiter never sees an fd whose life tether does not control. true | nil, err (the
-- epoll fd could not be made: EMFILE, ENOMEM).
local function custom_wait(list, deadline)
  local ep, errno = core.epoll_set(list)
  if not ep then return nil, errors.from_errno("epoll", nil, errno) end
  local fd = ep:getfd()
  -- No pcall around the waiter: it may yield, and Lua 5.1 cannot yield across pcall.
  -- Should it raise, the epoll fd is closed by its finalizer.
  M.waiter(fd, "r", deadline and math.max(0, deadline - core.now()) or nil)
  if M.on_close then M.on_close(fd) end
  ep:close()
  return true
end

--- wait(fd, events, deadline) -> true when fd is (or may be) ready, false at the deadline,
-- nil, err when the OS refused the wait (poll or epoll failed: every caller passes it on).
-- fd is an integer; events "r", "w" or "rw" ("p": priority data, POLLPRI, which is how a
-- cgroup.events file says it changed; internal to tether.cgroup).
function M.wait(fd, events, deadline)
  if M.waiter_many then -- a waiter that takes the whole list (waiters.ngx): no epoll fd
    M.waiter_many({ fd, events }, deadline)
    return not deadline or core.now() < deadline or core.poll(fd, events, 0) == true
  end
  if M.waiter then
    local ok, err = custom_wait({ fd, events }, deadline)
    if not ok then return nil, err end
    return not deadline or core.now() < deadline or core.poll(fd, events, 0) == true
  end
  local ok, errno = core.poll(fd, events, deadline)
  if ok == nil then return nil, errors.from_errno("poll", nil, errno) end
  return ok
end

--- wait_many(list, deadline) -> index of a ready pair (counting pairs from 1), 0 when a
-- custom waiter woke without a ready fd, false at the deadline, or nil, err when the OS
-- refused the wait.
-- list is {fd1, ev1, fd2, ev2, ...}. A custom waiter takes one fd: it is given an
-- epoll fd watching them all.
function M.wait_many(list, deadline)
  local w = M.waiter
  if not w then
    local i, errno = core.poll_many(list, deadline)
    if i == nil then return nil, errors.from_errno("poll", nil, errno) end
    return i
  end
  if M.waiter_many then
    M.waiter_many(list, deadline)
  else
    local ok, err = custom_wait(list, deadline)
    if not ok then return nil, err end
  end
  local i = core.poll_many(list, 0)
  if i then return i end
  if deadline and core.now() >= deadline then return false end
  return 0
end

--- is_context(v) -> whether v looks like a tether context (done, err, pollfd, deadline).
function M.is_context(v)
  return type(v) == "table" and type(v.done) == "function" and type(v.err) == "function"
    and type(v.pollfd) == "function" and type(v.deadline) == "function"
end

--- limit(x) -> deadline, ctx: a blocking call's last argument, either a timeout in
-- seconds or a context (then its deadline, if any). nil gives no limit.
function M.limit(x)
  if M.is_context(x) then return x:deadline(), x end
  return M.deadline(x), nil
end

--- add_context_fds(list) -> list: adds the fds whose readiness may cancel some
-- context (the signal self-pipe, registered by tether.signal as context._wait_fds).
function M.add_context_fds(list)
  local context = package.loaded["tether.context"]
  if context and context._wait_fds then
    local more = context._wait_fds()
    for j = 1, #more do list[#list + 1] = more[j] end
  end
  return list
end

--- add_ctx(list, ctx) -> list: adds the fds that wake a wait for ctx (its eventfd,
-- signals); nothing when ctx is nil.
function M.add_ctx(list, ctx)
  if not ctx then return list end
  local fd = ctx:pollfd()
  if fd >= 0 then list[#list + 1] = fd; list[#list + 1] = "r" end
  return M.add_context_fds(list)
end

--- is_seconds(x) -> whether x is a timeout deadline() takes: a number, not NaN.
function M.is_seconds(x) return type(x) == "number" and x == x end

--- deadline(timeout) -> absolute deadline for a timeout in seconds (nil stays nil).
function M.deadline(timeout)
  if timeout == nil then return nil end
  if not M.is_seconds(timeout) then
    error("timeout must be a number of seconds or a context", 3)
  end
  return core.now() + math.max(0, timeout)
end

return M
