/* env.c - the process environment, behind one lock.
 *
 * Every read and write of environ made by tether goes through env_mu, so
 * worker threads may read the environment while the Lua thread changes it.
 * A spawn shares the environment (tether_env_share) while its child
 * inherits environ, which lasts until the child has exec'd: shared holders
 * only keep writers (setenv, unsetenv, clearenv, a fork) out, so reads such
 * as look_path's PATH never wait for other threads' spawns (in nginx the
 * event loop reads PATH while pool threads spawn).
 *
 * Nothing here raises a Lua error while holding the lock: arguments are
 * checked first, and results are copied out under the lock into memory
 * that is already allocated (a stack buffer or a Lua userdata made while
 * the lock was free), then pushed after it is released.
 */
#include "tether.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static pthread_mutex_t env_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t env_cv = PTHREAD_COND_INITIALIZER; /* env_shared or env_writers changed */
static int env_shared;  /* spawns sharing environ (tether_env_share), under env_mu */
static int env_writers; /* writers waiting for the shares to end: new shares wait for them */

/* Takes env_mu for a read of environ: waits for writers only. */
static void env_read_lock(void) {
  pthread_mutex_lock(&env_mu);
}

/* tether_env_lock() - take the environment lock to change environ (or to
 * fork): waits until no spawn shares it. Not recursive: a holder must not
 * call any env_* function below. */
void tether_env_lock(void) {
  pthread_mutex_lock(&env_mu);
  if (env_shared > 0) {
    env_writers++;
    while (env_shared > 0) pthread_cond_wait(&env_cv, &env_mu);
    /* shares waiting for writers recheck once this one unlocks */
    if (--env_writers == 0) pthread_cond_broadcast(&env_cv);
  }
}

/* tether_env_unlock() - release the environment lock (either kind). */
void tether_env_unlock(void) {
  pthread_mutex_unlock(&env_mu);
}

/* tether_env_share() - environ stays as it is (no writer) until the
 * matching tether_env_unshare; other reads and shares go on meanwhile. */
void tether_env_share(void) {
  pthread_mutex_lock(&env_mu);
  while (env_writers > 0) pthread_cond_wait(&env_cv, &env_mu); /* writers first */
  env_shared++;
  pthread_mutex_unlock(&env_mu);
}

/* tether_env_unshare() - ends a tether_env_share. */
void tether_env_unshare(void) {
  pthread_mutex_lock(&env_mu);
  if (--env_shared == 0) pthread_cond_broadcast(&env_cv);
  pthread_mutex_unlock(&env_mu);
}

/* tether_env_child_unlock() - in a fork's child (one thread, the lock taken
 * by tether_env_lock in the parent): releases it, with a fresh condition
 * variable (the parent's may count waiters that do not exist here). */
void tether_env_child_unlock(void) {
  env_shared = 0;
  env_writers = 0;
  pthread_cond_init(&env_cv, NULL);
  pthread_mutex_unlock(&env_mu);
}

/* Checks that argument arg is a valid variable name: a string, not empty,
 * with neither '=' nor NUL. Raises naming the argument otherwise. */
static const char *checkkey(lua_State *L, int arg) {
  size_t len;
  const char *k = luaL_checklstring(L, arg, &len);
  luaL_argcheck(L, len > 0, arg, "key must not be empty");
  luaL_argcheck(L, memchr(k, '=', len) == NULL, arg, "key must not contain '='");
  luaL_argcheck(L, strlen(k) == len, arg, "key must not contain NUL");
  return k;
}

/* Checks that argument arg is a string (or number) without NUL. */
static const char *checkvalue(lua_State *L, int arg) {
  size_t len;
  const char *v = luaL_checklstring(L, arg, &len);
  luaL_argcheck(L, strlen(v) == len, arg, "value must not contain NUL");
  return v;
}

/* env_get(k) -> the value of k (a string, maybe empty), or nil when k is
 * unset. Raises when k is not a valid name. */
static int env_get(lua_State *L) {
  const char *k = checkkey(L, 1);
  char small[256];
  char *buf = small;
  size_t cap = sizeof small;
  for (;;) {
    const char *v;
    size_t len = 0;
    env_read_lock();
    v = getenv(k);
    if (v != NULL) {
      len = strlen(v);
      if (len < cap) memcpy(buf, v, len);
    }
    tether_env_unlock();
    if (v == NULL) {
      lua_pushnil(L);
      return 1;
    }
    if (len < cap) {
      lua_pushlstring(L, buf, len);
      return 1;
    }
    /* Too big for the buffer: allocate (lock free) and read again, since
     * another thread may have changed the value meanwhile. */
    cap = len + len / 4 + 1;
    buf = (char *)lua_newuserdatauv(L, cap, 0);
  }
}

/* env_set(k, v) -> true, or nil, errno when setenv fails (ENOMEM).
 * Raises when k is not a valid name or v contains NUL. */
static int env_set(lua_State *L) {
  const char *k = checkkey(L, 1);
  const char *v = checkvalue(L, 2);
  int r, err;
  tether_env_lock();
  r = setenv(k, v, 1);
  err = errno;
  tether_env_unlock();
  if (r != 0) return tether_fail(L, err);
  lua_pushboolean(L, 1);
  return 1;
}

/* env_unset(k) -> true (also when k was not set), or nil, errno.
 * Raises when k is not a valid name. */
static int env_unset(lua_State *L) {
  const char *k = checkkey(L, 1);
  int r, err;
  tether_env_lock();
  r = unsetenv(k);
  err = errno;
  tether_env_unlock();
  if (r != 0) return tether_fail(L, err);
  lua_pushboolean(L, 1);
  return 1;
}

/* env_clear() -> true, or nil, errno: removes every variable. */
static int env_clear(lua_State *L) {
  int r, err;
  tether_env_lock();
  r = clearenv();
  err = errno;
  tether_env_unlock();
  if (r != 0) return tether_fail(L, err);
  lua_pushboolean(L, 1);
  return 1;
}

/* env_list() -> {"K=V", ...}: a snapshot of environ, in environ's order.
 * The whole snapshot is taken under one lock hold, so it is consistent. */
static int env_list(lua_State *L) {
  char *buf = NULL;
  size_t cap = 0, need, n;
  for (;;) {
    char **e;
    need = 0;
    n = 0;
    env_read_lock();
    for (e = environ; e != NULL && *e != NULL; e++) {
      need += strlen(*e) + 1;
      n++;
    }
    if (need <= cap) {
      char *p = buf;
      for (e = environ; e != NULL && *e != NULL; e++) {
        size_t len = strlen(*e) + 1;
        memcpy(p, *e, len);
        p += len;
      }
    }
    tether_env_unlock();
    if (need <= cap) break;
    /* Allocate with the lock free, then take the snapshot again. */
    if (buf != NULL) lua_pop(L, 1);
    cap = need + need / 4 + 64;
    buf = (char *)lua_newuserdatauv(L, cap, 0);
  }
  lua_createtable(L, (int)n, 0);
  {
    const char *p = buf;
    size_t i;
    for (i = 1; i <= n; i++) {
      size_t len = strlen(p);
      lua_pushlstring(L, p, len);
      lua_rawseti(L, -2, (int)i);
      p += len + 1;
    }
  }
  return 1;
}

static const luaL_Reg env_funcs[] = {
  {"env_get", env_get},
  {"env_set", env_set},
  {"env_unset", env_unset},
  {"env_clear", env_clear},
  {"env_list", env_list},
  {NULL, NULL}
};

/* tether_open_env(L) - registers the env_* functions into the core table
 * on top of the stack. */
void tether_open_env(lua_State *L) {
  luaL_setfuncs(L, env_funcs, 0);
}
