/* core.c - luaopen_tether_core: assembles the private C module tether.core from the
 * tether_open_* of each file. Nothing calls into this file: shared helpers live in util.c. */
#include "tether.h"

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
  lua_pushcfunction(L, core_kind);
  lua_setfield(L, -2, "kind");
  return 1;
}
