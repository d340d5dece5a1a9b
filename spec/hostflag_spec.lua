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
