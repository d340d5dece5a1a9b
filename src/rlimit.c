/* rlimit.c - owns a child's resource limits and umask (cmd.rlimits, cmd.umask): the parent
 * turns the spawn spec into a fixed array (tether_child_limits), and the child applies it
 * with raw syscalls just before exec (tether_apply_child_limits, async-signal-safe). A
 * failure in the child is reported by process.c as step "setrlimit". */
#include "rlimit.h"

#include <math.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static const struct { const char *name; int resource; } resources[TETHER_NRLIMITS] = {
  { "nofile", RLIMIT_NOFILE }, { "core", RLIMIT_CORE }, { "cpu", RLIMIT_CPU },
  { "as", RLIMIT_AS }, { "fsize", RLIMIT_FSIZE }, { "nproc", RLIMIT_NPROC },
  { "stack", RLIMIT_STACK }, { "memlock", RLIMIT_MEMLOCK },
};

/* The value at the top of the stack as a limit: a non-negative integer, or math.huge. */
static uint64_t limit_value(lua_State *L, const char *name) {
  if (lua_type(L, -1) != LUA_TNUMBER) luaL_error(L, "spawn: rlimits.%s must be numbers", name);
  lua_Number d = lua_tonumber(L, -1);
  if (d == (lua_Number)HUGE_VAL) return ~(uint64_t)0; /* RLIM64_INFINITY */
  if (!(d >= 0 && d < 18446744073709551615.0) || d != (lua_Number)(uint64_t)d)
    luaL_error(L, "spawn: rlimits.%s must be a non-negative integer or math.huge", name);
  return (uint64_t)d;
}

void tether_child_limits(lua_State *L, int idx, struct tether_child_limits *out) {
  memset(out, 0, sizeof *out);
  out->umask = -1;
  lua_getfield(L, idx, "umask");
  if (!lua_isnil(L, -1)) {
    lua_Number d = lua_tonumber(L, -1);
    if (lua_type(L, -1) != LUA_TNUMBER || !(d >= 0 && d <= 0777) || d != (lua_Number)(int)d)
      luaL_error(L, "spawn: umask must be an integer in [0, 0777]");
    out->umask = (int)d;
  }
  lua_pop(L, 1);
  lua_getfield(L, idx, "rlimits");
  if (lua_isnil(L, -1)) { lua_pop(L, 1); return; }
  if (!lua_istable(L, -1)) luaL_error(L, "spawn: rlimits must be a list");
  int list = lua_gettop(L);
  int n = (int)lua_rawlen(L, list);
  if (n > TETHER_NRLIMITS) luaL_error(L, "spawn: too many rlimits");
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, list, i + 1);
    if (!lua_istable(L, -1)) luaL_error(L, "spawn: rlimits[%d] must be {name, soft, hard}", i + 1);
    lua_rawgeti(L, -1, 1);
    const char *name = lua_tostring(L, -1);
    int found = -1;
    for (int r = 0; name && r < TETHER_NRLIMITS; r++)
      if (strcmp(name, resources[r].name) == 0) found = r;
    if (found < 0) luaL_error(L, "spawn: rlimits[%d] names no known limit", i + 1);
    struct tether_rlimit *l = &out->lim[out->n++];
    l->resource = resources[found].resource;
    lua_rawgeti(L, -2, 2);
    l->cur = limit_value(L, resources[found].name);
    lua_rawgeti(L, -3, 3);
    l->max = limit_value(L, resources[found].name);
    if (l->cur > l->max) luaL_error(L, "spawn: rlimits.%s: soft limit above hard limit", resources[found].name);
    lua_pop(L, 4);
  }
  lua_pop(L, 1);
}

/* Runs in the child, on a stack borrowed from the parent: no ASan stack instrumentation
 * (as process.c's child_main). */
#if defined(__SANITIZE_ADDRESS__)
__attribute__((no_sanitize_address))
#endif
int tether_apply_child_limits(const struct tether_child_limits *l) {
  for (int i = 0; i < l->n; i++) {
    uint64_t lim[2] = { l->lim[i].cur, l->lim[i].max }; /* struct rlimit64 */
    if (syscall(SYS_prlimit64, 0, l->lim[i].resource, lim, NULL) < 0) return -1;
  }
  if (l->umask >= 0) umask((mode_t)l->umask);
  return 0;
}
