-- tether.core.hostflag: the one-shot flag a host's C cleanup callback sets (nginx's request
-- cleanup, through tether.ngx). The host is played by LuaJIT's FFI calling the callback as
-- nginx does, callback(data); other Luas check what needs no FFI.
local core = require "tether.core"

local ffi_ok, ffi = pcall(require, "ffi")

describe("core.hostflag", function()
  it("is not set until the host calls the callback it was armed with", function()
    local flag = core.hostflag()
    assert.is_false(flag:is_set())
    local fn, data = flag:arm()
    assert.are.equal("userdata", type(fn))
    assert.are.equal("userdata", type(data))
    assert.is_false(flag:is_set())
    if not ffi_ok then flag:disarm() return end
    ffi.cast("void (*)(void *)", fn)(data)
    assert.is_true(flag:is_set())
  end)

  it("refuses to be armed twice", function()
    local flag = core.hostflag()
    flag:arm()
    assert.has_error(function() flag:arm() end, "hostflag: armed already")
    flag:disarm()
  end)

  it("lets the host call the callback after the Lua object is collected", function()
    if not ffi_ok then pending("needs LuaJIT's FFI to play the host") return end
    local fn, data
    do
      local flag = core.hostflag()
      fn, data = flag:arm()
    end
    collectgarbage()
    collectgarbage()
    ffi.cast("void (*)(void *)", fn)(data) -- the memory is the host's until this call
  end)
end)

-- tether.ngx ties a command it runs whole in nginx's thread pool to its request this way:
-- nginx's cleanup calls callback(data) when it frees the request; the pool thread waits
-- on the fd reqwatch_open gave it.
describe("core.reqwatch", function()
  local function is_open(fd)
    local f = io.open("/proc/self/fdinfo/" .. fd)
    if f then f:close() end
    return f ~= nil
  end
  local function ready(fd) return core.poll_many({ fd, "r" }, core.now()) == 1 end

  it("wakes the task's fd when the host calls the callback", function()
    if not ffi_ok then pending("needs LuaJIT's FFI to play the host") return end
    local fn, data, id = core.reqwatch()
    assert.are.equal("userdata", type(fn))
    assert.are.equal("userdata", type(data))
    assert.is_number(id)
    local fd = core.reqwatch_open(id)
    assert.is_number(fd)
    assert.is_false(ready(fd))
    ffi.cast("void (*)(void *)", fn)(data)
    assert.is_true(ready(fd))
    core.reqwatch_close(id, fd)
    assert.is_false(is_open(fd))
  end)

  it("tells a task that starts after the host called the callback that the request is gone", function()
    if not ffi_ok then pending("needs LuaJIT's FFI to play the host") return end
    local fn, data, id = core.reqwatch()
    ffi.cast("void (*)(void *)", fn)(data)
    assert.is_false(core.reqwatch_open(id))
    core.reqwatch_close(id)
  end)

  it("gives the task a close-on-exec fd that stays quiet once the host is disarmed", function()
    local _, _, id = core.reqwatch()
    core.reqwatch_disarm(id)
    local fd = core.reqwatch_open(id)
    assert.is_number(fd)
    local f = assert(io.open("/proc/self/fdinfo/" .. fd))
    local flags = tonumber(f:read("*a"):match("flags:%s*(%d+)"), 8)
    f:close()
    assert.are.equal(1, math.floor(flags / 2 ^ 19) % 2, "fd " .. fd .. " lacks O_CLOEXEC (02000000)")
    assert.is_false(ready(fd))
    core.reqwatch_close(id, fd)
    assert.is_false(is_open(fd))
  end)

  it("raises on an id that is not a watch", function()
    assert.has_error(function() core.reqwatch_open(0) end)
  end)

  it("ties nothing outside nginx (no ngx_http_cleanup_add in the process)", function()
    assert.are.equal(0, select("#", core.reqwatch_tie(12345)))
    assert.are.equal(0, select("#", core.reqwatch_tie(nil)))
    assert.are.equal(0, select("#", core.reqwatch_tie("request")))
  end)
end)
