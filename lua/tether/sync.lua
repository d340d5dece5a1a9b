--- tether.sync: a weighted semaphore, as Go's golang.org/x/sync/semaphore.
--
-- sync.semaphore(n) has n units. acquire(w) takes w of them, waiting while they are not
-- free; release(w) gives them back. Waiters are served strictly first come, first served:
-- a big acquire at the front of the queue is not overtaken by small ones behind it.
-- Waiting goes through tether's waiter (poll(2), cqueues, OpenResty, ...), so coroutines
-- share a semaphore; and since it lives in C behind a mutex, a semaphore handed to pool
-- worker threads (each with its own lua_State) is the same semaphore there.
--
-- Runs on Lua 5.1 to 5.4 and LuaJIT.
local core = require "tether.core"
local errors = require "tether.errors"
local wait = require "tether.wait"

local type, error, floor = type, error, math.floor

local M = {}

-- The methods of semaphores in this lua_State: try_acquire, release, size, held, waiters,
-- pollfd, events, timeout come from C (src/sync.c); acquire is added here.
local Semaphore = core.sem_methods()

--- sync.semaphore(n) -> a semaphore of size n (an integer >= 1), none held.
-- Raises "sync.semaphore: size must be a positive integer" otherwise.
function M.semaphore(n)
  if type(n) ~= "number" or n ~= floor(n) or n < 1 or n > 2 ^ 53 then
    error("sync.semaphore: size must be a positive integer", 2)
  end
  return core.sem_new(n)
end

--- sync.is_semaphore(v) -> true when v is a tether semaphore.
function M.is_semaphore(v)
  return core.sem_is(v)
end

--- sem:acquire([w] [, ctx | timeout]) -> true | nil, err.
-- Takes w units (default 1), waiting (through tether's waiter) until they are free and
-- every earlier waiter has been served. With a context, returns nil, ctx:err() once it is
-- done (also when it is done already); with a timeout in seconds, nil and an error with
-- err:is(errors.ErrTimeout). Either way nothing is taken then, even if the units were
-- granted at the last moment. Raises when w is not a positive integer, w exceeds the size
-- (it could never be granted), or the last argument is neither a context nor a number.
function Semaphore:acquire(w, limit)
  if limit == nil and type(w) == "table" then w, limit = nil, w end
  if w ~= nil and (type(w) ~= "number" or w ~= floor(w) or w < 1) then
    error("semaphore.acquire: weight must be a positive integer", 2)
  end
  w = w or 1
  if w > self:size() then
    error(("semaphore.acquire: weight %d exceeds the semaphore's size %d"):format(w, self:size()), 2)
  end
  local deadline, ctx
  if limit ~= nil then
    if wait.is_context(limit) then
      deadline, ctx = limit:deadline(), limit
    elseif type(limit) == "number" and limit == limit then
      deadline = wait.deadline(limit)
    else
      error("semaphore.acquire: ctx must be a context or a timeout in seconds", 2)
    end
  end
  if ctx and ctx:done() then return nil, ctx:err() end
  local q, e = self:_enqueue(w)
  if q == true then return true end
  if not q then return nil, errors.from_errno("semaphore.acquire", nil, e) end
  local fd = q:fd()
  while true do
    if ctx and ctx:done() then
      q:close() -- gives back what may have been granted meanwhile
      return nil, ctx:err()
    end
    if q:granted() then
      q:close()
      return true
    end
    if deadline and core.now() >= deadline then
      q:close()
      return nil, errors.timeout("semaphore.acquire")
    end
    local ok, err
    if ctx then
      ok, err = wait.wait_many(wait.add_ctx({ fd, "r" }, ctx), deadline)
    else
      ok, err = wait.wait(fd, "r", deadline)
    end
    if ok == nil then q:close(); return nil, err end
  end
end

return M
