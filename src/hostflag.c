/* hostflag.c - one-shot flags that a host's C cleanup callback sets (tether.core.hostflag).
 * Owns struct hostflag and hostflag_fire, the callback handed to the host.
 *
 * tether.ngx hands hostflag_fire and a flag to nginx's request cleanup list
 * (ngx_http_cleanup_add, through LuaJIT's FFI): when nginx frees a request, whatever the
 * reason (done, client abort, ngx.exit, an error), the flag is set, and tether's sweeper
 * cancels and reaps the commands the request left. The callback runs no Lua, allocates
 * nothing and only touches the flag. The flag's memory is shared by the Lua object and
 * the host (a reference count), so whichever lets go last frees it.
 *
 * Also owns hostflag_close, the host callback that closes an fd (host_closer): a command
 * tether.ngx runs whole in nginx's thread pool ties the write end of its abort pipe to
 * the request this way, so a dropped request wakes the pool thread without Lua. */
#include "tether.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HOSTFLAG_MT "tether.hostflag"

struct hostflag {
  atomic_int refs;  /* the Lua object, plus the host while armed */
  atomic_int set;
};

struct hostflag_ud {
  struct hostflag *f;
  int armed;        /* handed to a host (arm), not yet disarmed */
};

static void hostflag_drop(struct hostflag *f) {
  if (atomic_fetch_sub(&f->refs, 1) == 1) free(f);
}

/* The host's callback: void (*)(void *data). */
static void hostflag_fire(void *data) {
  struct hostflag *f = data;
  atomic_store(&f->set, 1);
  hostflag_drop(f);
}

static struct hostflag_ud *check(lua_State *L) {
  return luaL_checkudata(L, 1, HOSTFLAG_MT);
}

/* hostflag() -> flag, not set. */
static int hf_new(lua_State *L) {
  struct hostflag_ud *u = lua_newuserdata(L, sizeof *u);
  u->f = NULL;
  u->armed = 0;
  luaL_setmetatable(L, HOSTFLAG_MT);
  u->f = calloc(1, sizeof *u->f);
  if (!u->f) return luaL_error(L, "hostflag: out of memory");
  atomic_init(&u->f->refs, 1);
  atomic_init(&u->f->set, 0);
  return 1;
}

/* flag:arm() -> callback, data (light userdata): the host calls callback(data) once,
 * which sets the flag. Arms once; raises when armed already. */
static int hf_arm(lua_State *L) {
  struct hostflag_ud *u = check(L);
  if (u->armed) return luaL_error(L, "hostflag: armed already");
  atomic_fetch_add(&u->f->refs, 1);
  u->armed = 1;
  void (*fn)(void *) = hostflag_fire;
  void *p;
  memcpy(&p, &fn, sizeof p); /* a function pointer as a light userdata (POSIX: same size) */
  lua_pushlightuserdata(L, p);
  lua_pushlightuserdata(L, u->f);
  return 2;
}

/* flag:disarm(): the host will not call the callback after all (it refused it). */
static int hf_disarm(lua_State *L) {
  struct hostflag_ud *u = check(L);
  if (u->armed && !atomic_load(&u->f->set)) {
    u->armed = 0;
    hostflag_drop(u->f);
  }
  return 0;
}

/* flag:is_set() -> whether the host called the callback. */
static int hf_is_set(lua_State *L) {
  struct hostflag_ud *u = check(L);
  lua_pushboolean(L, atomic_load(&u->f->set));
  return 1;
}

static int hf_gc(lua_State *L) {
  struct hostflag_ud *u = check(L);
  if (u->f) hostflag_drop(u->f);
  u->f = NULL;
  return 0;
}

/* The host's callback that closes an fd: data is the fd number (an intptr_t). */
static void hostflag_close(void *data) {
  close((int)(intptr_t)data);
}

/* host_closer() -> callback (light userdata): the host calls callback(data) with data an
 * fd number cast to a pointer; the callback closes that fd. */
static int hf_closer(lua_State *L) {
  void (*fn)(void *) = hostflag_close;
  void *p;
  memcpy(&p, &fn, sizeof p);
  lua_pushlightuserdata(L, p);
  return 1;
}

static const luaL_Reg methods[] = {
  {"arm", hf_arm}, {"disarm", hf_disarm}, {"is_set", hf_is_set}, {NULL, NULL},
};

void tether_open_hostflag(lua_State *L) {
  if (luaL_newmetatable(L, HOSTFLAG_MT)) {
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, hf_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, hf_new);
  lua_setfield(L, -2, "hostflag");
  lua_pushcfunction(L, hf_closer);
  lua_setfield(L, -2, "host_closer");
}
