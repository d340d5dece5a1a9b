-- spec/helpers/pattern.lua: pattern(tag, n) -> n bytes of 16-byte records
-- "<tag><14-digit offset>\n", cut at n. Every byte says where it belongs, so a
-- spec can compare whole streams. Used by child.lua (which writes it) and by
-- util.lua (which compares against it); plain Lua, no tether.
return function(tag, n)
  local parts, size = {}, 0
  local i = 0
  while size < n do
    local rec = string.format("%s%014d\n", tag, i * 16)
    parts[#parts + 1] = rec
    size = size + #rec
    i = i + 1
  end
  return table.concat(parts):sub(1, n)
end
