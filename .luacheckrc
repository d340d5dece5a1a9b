-- luacheck config for `make lint` (Debian's lua-check) on lua/, spec/, examples/, scripts/.
std = "max"             -- the code runs on Lua 5.1 to 5.4 and LuaJIT
max_line_length = false -- line length is left to review
codes = true

-- nginx's Lua API: tether.waiters.ngx reads it.
read_globals = { "ngx" }

ignore = {
  "212/self",           -- unused self: methods keep the class's shape
  "212/_.*",            -- arguments named _x are unused on purpose
  "542",                -- empty if branch: used on purpose, with a comment saying why
}

files["spec/"] = { std = "+busted" }
-- handlers set ngx.status, ngx.header...
files["examples/openresty/"] = { globals = { "ngx" } }
-- bin/tether-init is sh and Lua at once: its sh preamble is the Lua string `_ = [[...]]`.
files["bin/tether-init"] = { globals = { "_" } }
