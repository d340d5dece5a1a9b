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

-- tether.ngx ties the write end of a pooled command's abort pipe to its request this way:
-- nginx's cleanup calls closer(fd) when it frees the request.
describe("core.host_closer", function()
  local function open_fd(fd)
    local f = io.open("/proc/self/fdinfo/" .. fd)
    if f then f:close() end
    return f ~= nil
  end

  it("gives the host a callback that closes the fd its data names", function()
    local r, w = core.pipe_int()
    assert.is_number(r)
    assert.is_number(w)
    local fn = core.host_closer()
    assert.are.equal("userdata", type(fn))
    assert.is_true(open_fd(w))
    if ffi_ok then
      ffi.cast("void (*)(void *)", fn)(ffi.cast("void *", w))
      assert.is_false(open_fd(w))
      -- the read end sees the pipe's end (what the pool thread waits for)
      assert.are.equal(1, core.poll_many({ r, "r" }, core.now() + 5))
    else
      core.close_int(w)
    end
    core.close_int(r)
  end)

  it("makes pipes of bare fds that are close-on-exec", function()
    local r, w = core.pipe_int()
    for _, fd in ipairs({ r, w }) do
      local f = assert(io.open("/proc/self/fdinfo/" .. fd))
      local flags = tonumber(f:read("*a"):match("flags:%s*(%d+)"), 8)
      f:close()
      assert.are.equal(1, math.floor(flags / 2 ^ 19) % 2, "fd " .. fd .. " lacks O_CLOEXEC (02000000)")
    end
    core.close_int(r)
    core.close_int(w)
  end)
end)
