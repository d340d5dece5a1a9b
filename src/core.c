/* core.c - luaopen_tether_core: assembles the private C module tether.core from the
 * tether_open_* of each file, and gives each of its functions the entry that reaps
 * collected processes (tether_reap_pending). Nothing calls into this file: shared helpers
 * live in util.c. */
#include "tether.h"

/* The entry of every function of tether.core (upvalue 1: the function itself): orphans
 * whose Lua objects were collected are reaped first, so that no zombie outlives its object
 * by more than the next tether call of any kind. One atomic load when there are none. */
static int entry(lua_State *L) {
  tether_reap_pending();
  return lua_tocfunction(L, lua_upvalueindex(1))(L);
}

/* Wraps each C function without upvalues in the core table on top (those with upvalues
 * read them by index, and reap themselves where it matters). Methods of tether's userdata
 * are not wrapped: they are the hot paths (fd:read, fd:write), and each object was made by
 * a call that reaped. */
static void wrap_entries(lua_State *L) {
  int t = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (lua_iscfunction(L, -1)) {
      if (lua_getupvalue(L, -1, 1) != NULL) {
        lua_pop(L, 1); /* it has upvalues: left as it is */
      } else {
        lua_pushvalue(L, -2); /* key */
        lua_pushvalue(L, -2); /* the function */
        lua_pushcclosure(L, entry, 1);
        lua_rawset(L, t); /* assigning an existing key during lua_next is allowed */
      }
    }
    lua_pop(L, 1);
  }
}

/* kind(v) -> "fd", "buffer", "process" for tether's userdata, else nil. */
static int core_kind(lua_State *L) {
  static const struct { const char *mt, *name; } kinds[] = {
    {TETHER_FD_MT, "fd"}, {TETHER_BUFFER_MT, "buffer"}, {TETHER_PROC_MT, "process"},
  };
  if (lua_type(L, 1) == LUA_TUSERDATA)
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
      if (luaL_testudata(L, 1, kinds[i].mt)) { lua_pushstring(L, kinds[i].name); return 1; }
  lua_pushnil(L);
  return 1;
}

__attribute__((visibility("default"))) int luaopen_tether_core(lua_State *L) {
  tether_fork_init();
  lua_newtable(L);
  tether_open_sys(L);
  tether_open_fd(L);
  tether_open_buffer(L);
  tether_open_process(L);
  tether_open_relay(L);
  tether_open_env(L);
  tether_open_signal(L);
  tether_open_systemd(L);
  tether_open_pgroup(L);
  tether_open_reaper(L);
  tether_open_lane(L);
  tether_open_sync(L);
  tether_open_pool(L);
  tether_open_cpus(L);
  tether_open_copy(L);
  tether_open_hostflag(L);
  tether_open_fdkind(L);
  tether_open_pty(L);
  tether_open_cgroup(L);
  lua_pushcfunction(L, core_kind);
  lua_setfield(L, -2, "kind");
  wrap_entries(L);
  return 1;
}
