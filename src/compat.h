/* compat.h - the one place where Lua 5.1/LuaJIT, 5.3 and 5.4 differences live. */
#ifndef TETHER_COMPAT_H
#define TETHER_COMPAT_H

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#if LUA_VERSION_NUM < 502
#ifndef luaL_newlib /* LuaJIT has it */
#define luaL_newlib(L, l) (lua_newtable(L), luaL_register(L, NULL, l))
#endif
#define lua_rawlen(L, i) lua_objlen(L, i)
#define luaL_setfuncs(L, l, n) luaL_register(L, NULL, l)
static inline void *tether_testudata(lua_State *L, int i, const char *tname) {
  void *p = lua_touserdata(L, i);
  if (p == NULL || !lua_getmetatable(L, i)) return NULL;
  luaL_getmetatable(L, tname);
  int same = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return same ? p : NULL;
}
#define luaL_testudata(L, i, t) tether_testudata(L, i, t)
#define luaL_setmetatable(L, t) (luaL_getmetatable(L, t), lua_setmetatable(L, -2))
/* A sized buffer: a userdata block on the stack, turned into a string at the end. */
static inline char *tether_buffinitsize(lua_State *L, luaL_Buffer *B, size_t sz) {
  B->L = L;
  return lua_newuserdata(L, sz);
}
#define luaL_buffinitsize(L, B, sz) tether_buffinitsize(L, B, sz)
#define luaL_pushresultsize(B, n) \
  (lua_pushlstring((B)->L, lua_touserdata((B)->L, -1), (n)), lua_remove((B)->L, -2))
#endif

#if LUA_VERSION_NUM < 503
#define lua_isinteger(L, i) (lua_type(L, i) == LUA_TNUMBER && \
  (lua_Number)(lua_Integer)lua_tonumber(L, i) == lua_tonumber(L, i))
#endif

#if LUA_VERSION_NUM < 504
#define lua_newuserdatauv(L, sz, nuv) lua_newuserdata(L, sz)
#endif

/* A Lua file handle: luaL_Stream in 5.2+, a FILE** in 5.1 (both start with FILE*). */
#if LUA_VERSION_NUM < 502
#define TETHER_FILEHANDLE "FILE*"
#else
#define TETHER_FILEHANDLE LUA_FILEHANDLE
#endif

#endif
