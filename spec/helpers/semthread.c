/* semthread.c - a spec helper (the Lua C module "semthread"), built by the Makefile together
 * with src/sync.c and src/util.c: runs Lua code in a fresh lua_State on a new pthread, with a tether
 * semaphore pushed into that state through tether_sem_push, as tether.pool's workers get one.
 * The other state loads tether (and tether.sync) from package.path like any program.
 *
 *   local job = semthread.start(sem, code)  -- code is a chunk called with the semaphore
 *   local ok, result = job:join()           -- ok: whether it ran without error; result:
 *                                           -- tostring of its first result or its error
 */
#include "../../src/tether.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct job {
  pthread_t t;
  tether_sem *s;
  char *code;
  char *result;
  int ok, started, joined, ref;
};

static void *job_main(void *arg) {
  struct job *j = arg;
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  if (luaL_loadstring(L, j->code) == 0) {
    tether_sem_push(L, j->s);
    j->ok = lua_pcall(L, 1, 1, 0) == 0;
  }
  const char *r = lua_tostring(L, -1);
  j->result = strdup(r ? r : lua_typename(L, lua_type(L, -1)));
  lua_close(L);
  return NULL;
}

static int job_join(lua_State *L) {
  struct job *j = luaL_checkudata(L, 1, "semthread.job");
  if (j->started && !j->joined) {
    pthread_join(j->t, NULL);
    j->joined = 1;
    luaL_unref(L, LUA_REGISTRYINDEX, j->ref);
  }
  lua_pushboolean(L, j->ok);
  lua_pushstring(L, j->result ? j->result : "");
  return 2;
}

static int job_gc(lua_State *L) {
  struct job *j = luaL_checkudata(L, 1, "semthread.job");
  job_join(L);
  free(j->code);
  free(j->result);
  j->code = j->result = NULL;
  return 0;
}

static int st_start(lua_State *L) {
  tether_sem *s = tether_sem_test(L, 1);
  luaL_argcheck(L, s != NULL, 1, "semaphore expected");
  size_t len;
  const char *code = luaL_checklstring(L, 2, &len);
  struct job *j = lua_newuserdata(L, sizeof *j);
  memset(j, 0, sizeof *j);
  if (luaL_newmetatable(L, "semthread.job")) {
    lua_pushcfunction(L, job_gc);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    lua_pushcfunction(L, job_join);
    lua_setfield(L, -2, "join");
    lua_setfield(L, -2, "__index");
  }
  lua_setmetatable(L, -2);
  j->code = malloc(len + 1);
  memcpy(j->code, code, len + 1);
  j->s = s;
  lua_pushvalue(L, 1); /* keeps the semaphore alive until join */
  j->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (pthread_create(&j->t, NULL, job_main, j) != 0) return luaL_error(L, "pthread_create failed");
  j->started = 1;
  return 1;
}

__attribute__((visibility("default"))) int luaopen_semthread(lua_State *L) {
  lua_newtable(L);
  lua_pushcfunction(L, st_start);
  lua_setfield(L, -2, "start");
  return 1;
}
