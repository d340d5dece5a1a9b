/* core.c - luaopen_tether_core: assembles the private C module tether.core. */
#include "tether.h"

#include <errno.h>

int tether_fail(lua_State *L, int err) {
  lua_pushnil(L);
  lua_pushinteger(L, err);
  return 2;
}

__attribute__((visibility("default"))) int luaopen_tether_core(lua_State *L) {
  lua_newtable(L);
  tether_open_sys(L);
  tether_open_fd(L);
  tether_open_buffer(L);
  tether_open_process(L);
  tether_open_env(L);
  return 1;
}
