-- Big captures: the memory behind output(), observed from /proc/self/smaps and
-- /proc/self/pagemap while the capture runs (a custom waiter looks each time output() waits).
local util = require "helpers.util"
local tether = require "tether"
local core = require "tether.core"
local exec = require "tether.exec"

local MiB = 1048576
local unpack = table.unpack or unpack

-- The anonymous mappings advised for huge pages ("hg" in VmFlags): {start, size} each.
local function hg_mappings()
  local list, cur = {}, nil
  for line in io.lines("/proc/self/smaps") do
    local a, b, rest = line:match("^(%x+)%-(%x+) (.*)$")
    if a then
      cur = { start = tonumber(a, 16), size = tonumber(b, 16) - tonumber(a, 16), anon = not rest:match("/") }
    elseif cur and line:match("^VmFlags:") and line:match(" hg") and cur.anon then
      list[#list + 1] = cur
    end
  end
  return list
end

-- The physical frame of the page at addr (0 when not present or hidden without CAP_SYS_ADMIN).
local function pfn(addr)
  local f = assert(io.open("/proc/self/pagemap", "rb"))
  f:seek("set", math.floor(addr / 4096) * 8)
  local s = f:read(8)
  f:close()
  local v, present = 0, s:byte(8) >= 128
  for i = 7, 1, -1 do v = v * 256 + s:byte(i) end
  v = v % 2 ^ 55
  return present and v or 0
end

local function is_pow2(n)
  while n > 1 and n % 2 == 0 do n = n / 2 end
  return n == 1
end

describe("a big capture", function()
  after_each(function() tether.set_waiter(nil) end)

  it("grows in one mapping advised whole for huge pages, moving its pages instead of copying them", function()
    local chunks = util.scale(24) >= 8 and 24 or 8
    local seen = {}
    tether.set_waiter(function(fd, _, timeout)
      for _, m in ipairs(hg_mappings()) do
        if m.size >= 2 * MiB then seen[#seen + 1] = { start = m.start, size = m.size, pfn = pfn(m.start) } end
      end
      core.poll(fd, "r", timeout and core.now() + timeout or nil)
    end)
    -- 1 MiB at a time with pauses, so that output() waits between chunks and the waiter looks.
    local out = assert(exec.command("sh", "-c",
      "i=0; while [ $i -lt " .. chunks .. " ]; do head -c 1048576 /dev/zero; sleep 0.01; i=$((i+1)); done"):output())
    tether.set_waiter(nil)
    assert.are.equal(chunks * MiB, #out)
    assert.is_true(#seen >= 3, "the waiter saw the capture's mapping " .. #seen .. " times")
    local sizes = {}
    for _, m in ipairs(seen) do
      -- A sub-range advice splits the mapping: the advised part is then not the whole power of two.
      assert.is_true(is_pow2(m.size), ("advised mapping of %d bytes is not whole"):format(m.size))
      sizes[m.size] = true
    end
    local grew = 0
    for _ in pairs(sizes) do grew = grew + 1 end
    assert.is_true(grew >= 2, "the mapping grew while the waiter watched")
    if os.getenv("TETHER_VALGRIND") then
      pending("valgrind emulates mremap by copying: the no-copy half is checked in the other runs")
      return
    end
    if seen[1].pfn == 0 then
      pending("page frames are hidden here (needs CAP_SYS_ADMIN): the no-copy half is not checked")
      return
    end
    for _, m in ipairs(seen) do
      -- mremap moves page tables: the first page keeps its frame through every growth.
      assert.are.equal(seen[1].pfn, m.pfn, "the first page was copied to a new frame")
    end
  end)

  it("returns every byte across chunk boundaries (sizes around the 2 MiB copy granule)", function()
    for _, n in ipairs { 2 * MiB - 1, 2 * MiB, 2 * MiB + 1, 5 * MiB + 123 } do
      local cmd = exec.command(unpack(util.child("write", n)))
      cmd.stderr = {}
      local out = assert(cmd:output())
      assert.are.equal(n, #out)
      assert.is_true(out == util.pattern("o", n), "capture of " .. n .. " bytes differs")
    end
  end)
end)
