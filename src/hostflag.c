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
 * Also owns request watches (reqwatch): a command tether.ngx runs whole in nginx's thread
 * pool is tied to its request by one. The watch's callback goes on the request's cleanup
 * list like a flag's, put there by reqwatch_tie itself (nginx's ngx_http_cleanup_add, found
 * with dlsym: one C call in the event loop, no FFI); the pool thread that runs the command
 * waits on an eventfd of its own that the callback signals, so a dropped request wakes it
 * with no Lua and no syscall in the event loop. A mutex orders the callback against the pool thread opening and closing
 * that eventfd; a reference count (the host's, the pool thread's) frees the watch. */
#include "tether.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
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

struct reqwatch {
  atomic_int refs;      /* the host (until it fires or is disarmed) and the pool thread's task */
  pthread_mutex_t mu;   /* guards fired and wake */
  int fired;
  int wake;             /* the task's eventfd while it watches, else -1 */
};

static void reqwatch_drop(struct reqwatch *w) {
  if (atomic_fetch_sub(&w->refs, 1) == 1) {
    pthread_mutex_destroy(&w->mu);
    free(w);
  }
}

/* The host's callback: the request is gone. */
static void reqwatch_fire(void *data) {
  struct reqwatch *w = data;
  pthread_mutex_lock(&w->mu);
  w->fired = 1;
  if (w->wake >= 0) tether_efd_write(w->wake);
  pthread_mutex_unlock(&w->mu);
  reqwatch_drop(w);
}

static struct reqwatch *reqwatch_arg(lua_State *L, int idx) {
  lua_Integer id = luaL_checkinteger(L, idx);
  if (id == 0) luaL_argerror(L, idx, "not a request watch");
  return (struct reqwatch *)(uintptr_t)id;
}

/* A new watch with its two references (host, task), or NULL without memory. */
static struct reqwatch *reqwatch_alloc(void) {
  struct reqwatch *w = calloc(1, sizeof *w);
  if (!w) return NULL;
  if (pthread_mutex_init(&w->mu, NULL) != 0) { free(w); return NULL; }
  atomic_init(&w->refs, 2);
  w->wake = -1;
  return w;
}

/* reqwatch() -> callback, data (light userdata), id (integer) | nil, errno: a watch with
 * two references: the host's (callback(data) drops it, or reqwatch_disarm) and the task's
 * (reqwatch_close). id names it in any Lua VM of the process. */
static int rw_new(lua_State *L) {
  struct reqwatch *w = reqwatch_alloc();
  if (!w) return tether_fail(L, ENOMEM);
  void (*fn)(void *) = reqwatch_fire;
  void *p;
  memcpy(&p, &fn, sizeof p);
  lua_pushlightuserdata(L, p);
  lua_pushlightuserdata(L, w);
  lua_pushinteger(L, (lua_Integer)(uintptr_t)w);
  return 3;
}

/* reqwatch_disarm(id): the host will not call the callback (it was never handed over, or
 * taken back); drops the host's reference. */
static int rw_disarm(lua_State *L) {
  reqwatch_drop(reqwatch_arg(L, 1));
  return 0;
}

/* reqwatch_open(id) -> fd | false: the task's side. An eventfd (O_CLOEXEC, non-blocking)
 * that becomes readable when the host fires; false when it has fired already; nil, errno. */
static int rw_open(lua_State *L) {
  struct reqwatch *w = reqwatch_arg(L, 1);
  int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) return tether_fail(L, errno);
  pthread_mutex_lock(&w->mu);
  int fired = w->fired;
  if (!fired) w->wake = fd;
  pthread_mutex_unlock(&w->mu);
  if (fired) {
    close(fd);
    lua_pushboolean(L, 0);
  } else {
    lua_pushinteger(L, fd);
  }
  return 1;
}

/* reqwatch_close(id, fd): the task is done: stops watching, closes fd (from reqwatch_open;
 * -1 or false: none) and drops the task's reference. Once per watch. */
static int rw_close(lua_State *L) {
  struct reqwatch *w = reqwatch_arg(L, 1);
  int fd = lua_isnumber(L, 2) ? (int)lua_tointeger(L, 2) : -1;
  pthread_mutex_lock(&w->mu);
  w->wake = -1;
  pthread_mutex_unlock(&w->mu);
  if (fd >= 0) close(fd);
  reqwatch_drop(w);
  return 0;
}

/* nginx's ngx_http_cleanup_t: what ngx_http_cleanup_add returns (ngx_http_request.h). */
struct ngx_cleanup {
  void (*handler)(void *data);
  void *data;
  struct ngx_cleanup *next;
};
typedef struct ngx_cleanup *(*cleanup_add_fn)(void *request, size_t size);
typedef int (*get_phase_fn)(void *request, char **err);

/* lua-nginx-module's request contexts (ngx_http_lua_common.h, NGX_HTTP_LUA_CONTEXT_*) in
 * which a command may be tied to its request: rewrite, access, content. */
#define NGX_LUA_REQUEST_CONTEXTS (0x0002 | 0x0004 | 0x0008)

/* A function of the nginx process by name (dlsym), looked up once; NULL outside nginx. */
struct host_fn {
  const char *name;
  _Atomic(void *) fn;
  atomic_int looked;
};
static struct host_fn cleanup_add = { "ngx_http_cleanup_add", NULL, 0 };
static struct host_fn get_phase = { "ngx_http_lua_ffi_get_phase", NULL, 0 };

static void *host_fn(struct host_fn *h) {
  void *f = atomic_load(&h->fn);
  if (f || atomic_load(&h->looked)) return f;
  f = dlsym(RTLD_DEFAULT, h->name);
  atomic_store(&h->fn, f);
  atomic_store(&h->looked, 1);
  return f;
}

/* The request pointer at idx: a light userdata, an integer address, or (LuaJIT) a pointer
 * cdata, whose payload lua_topointer points at; NULL for anything else. */
static void *request_arg(lua_State *L, int idx) {
  switch (lua_type(L, idx)) {
  case LUA_TLIGHTUSERDATA: return lua_touserdata(L, idx);
  case LUA_TNUMBER: return (void *)(uintptr_t)lua_tointeger(L, idx);
#ifdef LUA_JITLIBNAME
  case 10: { /* LUA_TCDATA */
    const void *payload = lua_topointer(L, idx);
    void *r = NULL;
    if (payload) memcpy(&r, payload, sizeof r);
    return r;
  }
#endif
  default: return NULL;
  }
}

/* reqwatch_tie(r) -> context [, id, entry]: for nginx request r (what lua-resty-core's
 * get_request returns), lua-nginx-module's context bit (NGX_HTTP_LUA_CONTEXT_*: 8 is
 * content, 0x80 a timer) and, in rewrite, access and content, a new request watch whose
 * callback is already on r's cleanup list, with that cleanup entry (light userdata): one C
 * call in the event loop, no FFI. Nothing when this is not nginx or r is not a request. */
static int rw_tie(lua_State *L) {
  void *r = request_arg(L, 1);
  cleanup_add_fn add;
  get_phase_fn phase;
  void *f = r ? host_fn(&cleanup_add) : NULL;
  void *g = f ? host_fn(&get_phase) : NULL;
  if (!g) return 0;
  memcpy(&add, &f, sizeof add);
  memcpy(&phase, &g, sizeof phase);
  char *err = NULL;
  int context = phase(r, &err);
  if (context <= 0) return 0; /* NGX_ERROR, or no request context */
  lua_pushinteger(L, context);
  if (!(context & NGX_LUA_REQUEST_CONTEXTS)) return 1;
  struct reqwatch *w = reqwatch_alloc();
  if (!w) return 1;
  struct ngx_cleanup *c = add(r, 0);
  if (!c) { pthread_mutex_destroy(&w->mu); free(w); return 1; }
  c->data = w;
  c->handler = reqwatch_fire;
  lua_pushinteger(L, (lua_Integer)(uintptr_t)w);
  lua_pushlightuserdata(L, c);
  return 3;
}

/* reqwatch_untie(id, entry): the request goes on: takes the callback off entry (nginx skips
 * an entry without a handler) and drops the host's reference, as reqwatch_disarm. */
static int rw_untie(lua_State *L) {
  struct reqwatch *w = reqwatch_arg(L, 1);
  struct ngx_cleanup *c = lua_touserdata(L, 2);
  if (!c || c->data != w) return luaL_argerror(L, 2, "not this watch's cleanup entry");
  c->handler = NULL;
  reqwatch_drop(w);
  return 0;
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
  lua_pushcfunction(L, rw_new);
  lua_setfield(L, -2, "reqwatch");
  lua_pushcfunction(L, rw_disarm);
  lua_setfield(L, -2, "reqwatch_disarm");
  lua_pushcfunction(L, rw_open);
  lua_setfield(L, -2, "reqwatch_open");
  lua_pushcfunction(L, rw_close);
  lua_setfield(L, -2, "reqwatch_close");
  lua_pushcfunction(L, rw_tie);
  lua_setfield(L, -2, "reqwatch_tie");
  lua_pushcfunction(L, rw_untie);
  lua_setfield(L, -2, "reqwatch_untie");
}
