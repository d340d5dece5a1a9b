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

/* Dumping and loading function bytecode (tether.pool's copier). */
#if LUA_VERSION_NUM >= 503
#define tether_dump(L, w, d) lua_dump(L, w, d, 0)
#else
#define tether_dump(L, w, d) lua_dump(L, w, d)
#endif
#if LUA_VERSION_NUM >= 502 || defined(LUAJIT_VERSION_NUM) || defined(LUA_JITLIBNAME)
#define tether_loadbinary(L, p, n, name) luaL_loadbufferx(L, p, n, name, "b")
#else
#define tether_loadbinary(L, p, n, name) luaL_loadbuffer(L, p, n, name)
#endif

/* A message handler's traceback: luaL_traceback on 5.2+ and LuaJIT; on 5.1, debug.traceback. */
#if LUA_VERSION_NUM >= 502 || defined(LUA_JITLIBNAME)
#define tether_traceback(L, L1, msg, level) luaL_traceback(L, L1, msg, level)
#else
static inline void tether_traceback(lua_State *L, lua_State *L1, const char *msg, int level) {
  (void)L1;
  lua_getglobal(L, "debug");
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "traceback");
    lua_remove(L, -2);
    lua_pushstring(L, msg);
    lua_pushinteger(L, level + 1);
    if (lua_pcall(L, 2, 1, 0) == 0 && lua_isstring(L, -1)) return;
  }
  lua_pop(L, 1);
  lua_pushstring(L, msg ? msg : "");
}
#endif

/* The uservalue of a userdata (one value): 5.1 keeps it in the userdata's environment
 * table (field 1). */
#if LUA_VERSION_NUM >= 504
#define tether_setuv(L, idx) lua_setiuservalue(L, idx, 1)
#define tether_getuv(L, idx) ((void)lua_getiuservalue(L, idx, 1))
#elif LUA_VERSION_NUM == 503
#define tether_setuv(L, idx) lua_setuservalue(L, idx)
#define tether_getuv(L, idx) ((void)lua_getuservalue(L, idx))
#else
static inline void tether_setuv(lua_State *L, int idx) {
  idx = idx < 0 ? lua_gettop(L) + idx + 1 : idx;
  lua_createtable(L, 1, 0);
  lua_insert(L, -2);
  lua_rawseti(L, -2, 1);
  lua_setfenv(L, idx);
}
static inline void tether_getuv(lua_State *L, int idx) {
  lua_getfenv(L, idx);
  if (lua_istable(L, -1)) {
    lua_rawgeti(L, -1, 1);
    lua_remove(L, -2);
  }
}
#endif

#endif
