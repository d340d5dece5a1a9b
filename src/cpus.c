/* cpus.c - how many CPUs this process may run on: its affinity mask (tether.cpus() caps it
 * with the cgroup v2 quota in the Lua layer). */
#include "tether.h"

#include <errno.h>
#include <sched.h>

/* cpu_count() -> the number of CPUs in this thread's affinity mask (sched_getaffinity, with
 * a mask grown until the kernel's fits), or nil, errno. */
static int cpus_count(lua_State *L) {
  for (int n = 1024; n <= (1 << 22); n *= 2) {
    cpu_set_t *set = CPU_ALLOC(n);
    if (!set) return tether_fail(L, ENOMEM);
    size_t sz = CPU_ALLOC_SIZE(n);
    if (sched_getaffinity(0, sz, set) == 0) {
      int count = CPU_COUNT_S(sz, set);
      CPU_FREE(set);
      lua_pushinteger(L, count);
      return 1;
    }
    int e = errno;
    CPU_FREE(set);
    if (e != EINVAL) return tether_fail(L, e);
  }
  return tether_fail(L, EINVAL);
}

static const luaL_Reg funcs[] = {
  {"cpu_count", cpus_count}, {NULL, NULL},
};

void tether_open_cpus(lua_State *L) {
  luaL_setfuncs(L, funcs, 0);
}
