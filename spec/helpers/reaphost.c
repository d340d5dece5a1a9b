/* reaphost - a spec helper: stands for a host that reaps every child of its process
 * (OpenResty's workers call waitpid(-1, WNOHANG) on each SIGCHLD; some hosts ignore
 * SIGCHLD). A host zoo member: reused by any spec that needs such a host.
 *
 *   local rh = package.loadlib(os.getenv("TETHER_REAPHOST"), "luaopen_reaphost")()
 *   rh.start()            a thread (all signals blocked) loops waitpid(-1, WNOHANG),
 *                         pausing 20 us between empty calls
 *   rh.stop() -> n        stops and joins it; n = children it reaped
 *   rh.sigchld(how) -> previous   SIGCHLD disposition: "ignore" (SIG_IGN), "nocldwait"
 *                         (SIG_DFL with SA_NOCLDWAIT) or "default"
 *
 * Built by the Makefile as build/$(LUA)/spec/reaphost.so (TETHER_REAPHOST). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>

static pthread_t thread;
static atomic_int running, reaped;

static void *reap_loop(void *arg) {
  (void)arg;
  while (atomic_load(&running)) {
    int st;
    pid_t pid = waitpid(-1, &st, WNOHANG);
    if (pid > 0) { atomic_fetch_add(&reaped, 1); continue; }
    struct timespec ts = { 0, 20000 };
    nanosleep(&ts, NULL);
  }
  return NULL;
}

static int rh_start(lua_State *L) {
  if (atomic_load(&running)) return luaL_error(L, "reaphost: already started");
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  atomic_store(&reaped, 0);
  atomic_store(&running, 1);
  int e = pthread_create(&thread, NULL, reap_loop, NULL);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (e) { atomic_store(&running, 0); return luaL_error(L, "reaphost: pthread_create: %s", strerror(e)); }
  return 0;
}

static int rh_stop(lua_State *L) {
  if (atomic_exchange(&running, 0)) pthread_join(thread, NULL);
  lua_pushinteger(L, atomic_load(&reaped));
  return 1;
}

static int rh_sigchld(lua_State *L) {
  static const char *const hows[] = { "ignore", "nocldwait", "default", NULL };
  int how = luaL_checkoption(L, 1, NULL, hows);
  struct sigaction sa, old;
  memset(&sa, 0, sizeof sa);
  sigemptyset(&sa.sa_mask);
  sa.sa_handler = how == 0 ? SIG_IGN : SIG_DFL;
  sa.sa_flags = how == 1 ? SA_NOCLDWAIT : 0;
  if (sigaction(SIGCHLD, &sa, &old) < 0) return luaL_error(L, "sigaction: %s", strerror(errno));
  lua_pushstring(L, old.sa_handler == SIG_IGN ? "ignore" : (old.sa_flags & SA_NOCLDWAIT) ? "nocldwait"
                    : old.sa_handler == SIG_DFL ? "default" : "handler");
  return 1;
}

int luaopen_reaphost(lua_State *L) {
  lua_newtable(L);
  lua_pushcfunction(L, rh_start); lua_setfield(L, -2, "start");
  lua_pushcfunction(L, rh_stop); lua_setfield(L, -2, "stop");
  lua_pushcfunction(L, rh_sigchld); lua_setfield(L, -2, "sigchld");
  return 1;
}
