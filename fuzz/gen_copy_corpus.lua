-- fuzz/gen_copy_corpus.lua: writes the seed corpus of fuzz/copy_fuzz.c (fuzz/corpus/copy/),
-- valid serialisations of varied values made by tether's own copier (core.copy_encode).
-- Run from the repository root after `make`:
--   LUA_CPATH='build/5.4/?.so;;' lua5.4 fuzz/gen_copy_corpus.lua
local core = require "tether.core"
local dir = arg[1] or "fuzz/corpus/copy"

local deep = {}
do
  local t = deep
  for _ = 1, 20 do t.next = {}; t = t.next end
end
local shared = { "shared" }

local seeds = {
  nil_and_booleans = { nil, true, false },
  integers = { 0, 1, -1, 127, 128, -129, 2 ^ 31, math.maxinteger or 2 ^ 53, math.mininteger or -2 ^ 53 },
  floats = { 0.5, -0.0, 1 / 0, -1 / 0, 0 / 0, 1e308, 5e-324 },
  strings = { "", "a", "with\0nul", string.rep("x", 300) },
  array = { { 1, 2, 3, "four", 5.5 } },
  map = { { a = 1, b = "two", [true] = false, [2.5] = "float key" } },
  mixed = { { 10, 20, 30, x = { y = { z = "deep" } }, [100] = "sparse" } },
  nested = { deep },
  table_keys = { { [{ 1 }] = "table key", [{ k = "v" }] = { 2 } } },
  shared_subtables = { { shared, shared, s = shared } },
  many_values = { 1, "2", 3.5, { 4 }, true, false, 7, 8, 9, 10 },
  empty_table = { {} },
}

local names = {}
for name in pairs(seeds) do names[#names + 1] = name end
table.sort(names)
for _, name in ipairs(names) do
  local v = seeds[name]
  local n = table.maxn and table.maxn(v) or #v
  if name == "nil_and_booleans" then n = 3 end
  local bytes = assert(core.copy_encode((table.unpack or unpack)(v, 1, n)))
  local f = assert(io.open(dir .. "/" .. name, "wb"))
  f:write(bytes)
  f:close()
  print(name, #bytes)
end
