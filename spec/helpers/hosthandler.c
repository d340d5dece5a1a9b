/* hosthandler - a spec helper: stands for a host program (nginx, a C program embedding
 * Lua) that installed its own signal handler before tether was loaded.
 *
 *   local hh = package.loadlib(os.getenv("TETHER_HOSTHANDLER"), "luaopen_hosthandler")()
 *   hh.install(signum [, "siginfo"])  a counting handler (sa_handler, or sa_sigaction
 *                                     with SA_SIGINFO when asked), SA_RESTART
 *   hh.count(signum) -> times the handler ran for signum since install
 *   hh.reset(signum)                  SIG_DFL again, count back to 0
 *
 * Built by the Makefile as build/$(LUA)/spec/hosthandler.so (TETHER_HOSTHANDLER). */
#include <signal.h>
#include <stdatomic.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

static atomic_uint counts[NSIG];

static void on_plain(int sig) { atomic_fetch_add(&counts[sig], 1); }

static void on_info(int sig, siginfo_t *info, void *uctx) {
  (void)info;
  (void)uctx;
  atomic_fetch_add(&counts[sig], 1);
}

static int checksig(lua_State *L) {
  lua_Integer s = luaL_checkinteger(L, 1);
  luaL_argcheck(L, s > 0 && s < NSIG, 1, "signal number out of range");
  return (int)s;
}

static int hh_install(lua_State *L) {
  int sig = checksig(L);
  const char *kind = luaL_optstring(L, 2, "plain");
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sigemptyset(&sa.sa_mask);
  if (strcmp(kind, "siginfo") == 0) {
    sa.sa_sigaction = on_info;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
  } else {
    luaL_argcheck(L, strcmp(kind, "plain") == 0, 2, "\"plain\" or \"siginfo\" expected");
    sa.sa_handler = on_plain;
    sa.sa_flags = SA_RESTART;
  }
  atomic_store(&counts[sig], 0);
  if (sigaction(sig, &sa, NULL) < 0) return luaL_error(L, "sigaction failed");
  return 0;
}

static int hh_count(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)atomic_load(&counts[checksig(L)]));
  return 1;
}

static int hh_reset(lua_State *L) {
  int sig = checksig(L);
  signal(sig, SIG_DFL);
  atomic_store(&counts[sig], 0);
  return 0;
}

static const luaL_Reg funcs[] = {
  {"install", hh_install}, {"count", hh_count}, {"reset", hh_reset}, {NULL, NULL},
};

int luaopen_hosthandler(lua_State *L) {
#if LUA_VERSION_NUM >= 502
  luaL_newlib(L, funcs);
#else
  lua_newtable(L);
  luaL_register(L, NULL, funcs);
#endif
  return 1;
}
