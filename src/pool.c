/* pool.c - tether.pool's pool object: pinned worker threads, each with its own lua_State,
 * fed by a bounded queue (one mutex, a condition variable per worker), with completion
 * handed to the Lua thread by eventfd. Never blocks the Lua thread except in join, which
 * only waits for threads that have announced their exit (and in __gc, see pool_gc).
 *
 * Entry points: pool_new (core.pool_new), the pool methods (pool_methods below), pool_gc,
 * tether_open_pool. The other objects live in poolworker.c, pooltask.c and poolmap.c
 * (pool.h). Objects (userdata):
 *   tether.pool     a pool handle; the pool struct is reference counted (the handle and
 *                   every future hold one), so futures outlive a collected handle safely
 *   tether.future   one task; its uservalue is the pool handle (futures keep it alive)
 *   tether.poolfn   a task function: bytecode (string.dump) or a "module.function" name,
 *                   shared read-only by the tasks that run it (reference counted)
 *   tether.poolmap  a batch of tasks of one pool:map call
 *
 * A worker takes one task per lock and finishes it without the lock unless someone waits
 * on its eventfd. A wake-up for any worker is skipped while a woken worker has not yet
 * looked at the queue (that one wakes the next when it takes a task and more are left): a
 * fast producer does not pay a futex wake per task. */
#include "pool.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

void *pool_checkud(lua_State *L, int idx, int uv, const char *tname) {
  void *p = lua_touserdata(L, idx);
  if (p && lua_getmetatable(L, idx)) {
    int same = lua_rawequal(L, -1, lua_upvalueindex(uv));
    lua_pop(L, 1);
    if (same) return p;
  }
  luaL_argerror(L, idx, lua_pushfstring(L, "%s expected, got %s", tname, luaL_typename(L, idx)));
  return NULL;
}

void pool_setmt(lua_State *L, int uv) {
  lua_pushvalue(L, lua_upvalueindex(uv));
  lua_setmetatable(L, -2);
}

/* Under the lock: the space eventfd is a level, readable while the queue has room after a
 * waiter found it full (so every waiter sees it). It is drained when the queue is full, and
 * set again once a submit that found it full can go on (any room: a submit never waits while
 * there is room, even if the workers are stuck), or a map that found it full can queue a good
 * slice (down to half: fewer wake-ups), or the pool closes. */
void pool_space_check(pool *p) {
  if (p->queued >= p->cap && !p->closing) {
    if (p->space_readable) { tether_efd_drain(p->space_fd); p->space_readable = 0; }
  } else if (!p->space_readable &&
             (p->want_space || p->closing || (p->want_half && p->queued <= p->lowwater))) {
    tether_efd_write(p->space_fd);
    p->space_readable = 1;
    p->want_space = p->want_half = 0;
  }
}

static void pool_free(pool *p) {
  for (int i = 0; i < p->size; i++) {
    pthread_cond_destroy(&p->w[i].cv);
    free(p->w[i].cpus);
    free(p->w[i].err);
  }
  free(p->w);
  for (int i = 0; i < p->nefds; i++) close(p->efds[i]);
  if (p->space_fd >= 0) close(p->space_fd);
  if (p->ctl_fd >= 0) close(p->ctl_fd);
  free(p->path);
  free(p->cpath);
  pool_fn_unref(p->init);
  pthread_mutex_destroy(&p->mu);
  free(p);
}

void pool_unref(pool *p) {
  if (atomic_fetch_sub(&p->refs, 1) == 1) pool_free(p);
}

pool *pool_check(lua_State *L, int idx) {
  pool_ud *u = pool_checkud(L, idx, UV_POOL, POOL_MT);
  if (!u->p) luaL_argerror(L, idx, "pool is closed");
  return u->p;
}

/* Wakes one idle worker (w, or any when w is NULL); the lock is held. A wake for any worker
 * is skipped while another woken worker has not yet looked at the queue: that one takes a
 * task and wakes the next (so a fast producer does not pay a wake per task). */
void pool_wake(pool *p, worker *w) {
  if (!w) {
    if (p->nidle == 0 || p->nwaking > 0) return;
    for (int i = 0; i < p->size; i++)
      if (p->w[i].idle) { w = &p->w[i]; break; }
    if (!w) return;
  } else if (!w->idle) {
    return;
  }
  w->idle = 0;
  p->nidle--;
  if (!w->waking) { w->waking = 1; p->nwaking++; }
  pthread_cond_signal(&w->cv);
}

/* Starts closing: no new tasks; idle workers wake and exit once their queues are empty. */
static void close_locked(pool *p) {
  p->closing = 1;
  for (int i = 0; i < p->size; i++) pool_wake(p, &p->w[i]);
  pool_space_check(p); /* wakes every waiter for room: they see the pool closing */
}

/* Cancels every queued task; the lock is held. Returns how many. */
static int cancel_all_locked(pool *p) {
  int n = 0;
  task *t;
  for (int i = 0; i <= p->size; i++) {
    tqueue *q = i < p->size ? &p->w[i].q : &p->q;
    while ((t = q->head) != NULL) n += pool_cancel_locked(p, t);
  }
  return n;
}

/* Joins every worker and closes the cached eventfds. space_fd and ctl_fd stay open until the
 * pool is freed: a coroutine may still be waiting on them (it wakes, sees the pool closed). */
static void join_all(pool *p) {
  for (int i = 0; i < p->size; i++)
    if (p->w[i].started) {
      pthread_join(p->w[i].th, NULL);
      p->w[i].started = 0;
    }
  p->joined = 1;
  for (int i = 0; i < p->nefds; i++) close(p->efds[i]);
  p->nefds = 0;
}

/* pool_new(size, cap, path, cpath, init fn|nil, affinity|nil) -> pool | nil, errno.
 * affinity: a list (one per worker) of lists of CPU numbers, or nil. Starts the threads
 * with every signal blocked (the mask is set before pthread_create); they run init and
 * announce themselves on ctl_fd (see ready()). */
static int pool_new(lua_State *L) {
  lua_Integer size = luaL_checkinteger(L, 1);
  lua_Integer cap = luaL_checkinteger(L, 2);
  luaL_argcheck(L, size >= 1 && size <= 1024, 1, "size must be an integer from 1 to 1024");
  luaL_argcheck(L, cap >= 1, 2, "queue must be a positive integer");
  const char *path = luaL_optstring(L, 3, NULL), *cpath = luaL_optstring(L, 4, NULL);
  fn_ud *init = lua_isnil(L, 5) ? NULL : pool_checkud(L, 5, UV_FN, FN_MT);
  int has_aff = !lua_isnoneornil(L, 6);
  if (has_aff) luaL_checktype(L, 6, LUA_TTABLE);

  pool_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->p = NULL;
  pool_setmt(L, UV_POOL);
  pool *p = calloc(1, sizeof *p);
  if (!p) return tether_fail(L, ENOMEM);
  pthread_mutexattr_t ma;
  pthread_mutexattr_init(&ma);
  pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP); /* spins a little before sleeping */
  pthread_mutex_init(&p->mu, &ma);
  pthread_mutexattr_destroy(&ma);
  atomic_init(&p->refs, 1);
  p->space_fd = p->ctl_fd = -1;
  u->p = p; /* from here, __gc frees whatever is made */
  p->size = (int)size;
  p->cap = (size_t)cap;
  p->lowwater = p->cap / 2;
  p->w = calloc((size_t)size, sizeof *p->w);
  if (!p->w) { p->size = 0; return tether_fail(L, ENOMEM); }
  for (int i = 0; i < p->size; i++) {
    p->w[i].p = p;
    p->w[i].index = i;
    pthread_cond_init(&p->w[i].cv, NULL);
  }
  if ((path && !(p->path = strdup(path))) || (cpath && !(p->cpath = strdup(cpath))))
    return tether_fail(L, ENOMEM);
  if (init) { p->init = init->f; atomic_fetch_add(&init->f->refs, 1); }
  if (has_aff) {
    for (int i = 0; i < p->size; i++) {
      lua_rawgeti(L, 6, i + 1);
      if (lua_istable(L, -1)) {
        int max = 0;
        for (int j = 1;; j++) {
          lua_rawgeti(L, -1, j);
          if (lua_isnil(L, -1)) { lua_pop(L, 1); break; }
          lua_Integer c = lua_tointeger(L, -1);
          lua_pop(L, 1);
          if (c < 0 || c >= 65536) return luaL_argerror(L, 6, "CPU numbers must be from 0 to 65535");
          if (c > max) max = (int)c;
        }
        worker *w = &p->w[i];
        w->cpus = CPU_ALLOC(max + 1);
        if (!w->cpus) return tether_fail(L, ENOMEM);
        w->cpusize = CPU_ALLOC_SIZE(max + 1);
        CPU_ZERO_S(w->cpusize, w->cpus);
        for (int j = 1;; j++) {
          lua_rawgeti(L, -1, j);
          if (lua_isnil(L, -1)) { lua_pop(L, 1); break; }
          CPU_SET_S((size_t)lua_tointeger(L, -1), w->cpusize, w->cpus);
          lua_pop(L, 1);
        }
      }
      lua_pop(L, 1);
    }
  }
  p->space_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (p->space_fd < 0) return tether_fail(L, errno);
  p->ctl_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (p->ctl_fd < 0) return tether_fail(L, errno);

  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int err = 0;
  for (int i = 0; i < p->size; i++) {
    err = pthread_create(&p->w[i].th, NULL, pool_worker_main, &p->w[i]);
    if (err) break;
    p->w[i].started = 1;
    p->started++;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (err) {
    /* Those started stop at once; nothing was queued. */
    pthread_mutex_lock(&p->mu);
    close_locked(p);
    pthread_mutex_unlock(&p->mu);
    join_all(p);
    return tether_fail(L, err);
  }
  return 1;
}

/* p:ready() -> ready, failed, total, message: workers that finished init, failed (message
 * of the first failure, "worker N: ..."), and how many were started. */
static int pool_ready(lua_State *L) {
  pool *p = pool_check(L, 1);
  pthread_mutex_lock(&p->mu);
  int ready = p->ready, failed = p->failed;
  pthread_mutex_unlock(&p->mu);
  lua_pushinteger(L, ready);
  lua_pushinteger(L, failed);
  lua_pushinteger(L, p->started);
  if (failed) {
    for (int i = 0; i < p->size; i++) {
      /* err is written before the worker counts itself failed under the lock */
      if (p->w[i].err) { lua_pushfstring(L, "worker %d: %s", i + 1, p->w[i].err); return 4; }
    }
  }
  return 3;
}

/* p:ctl_fd() -> the eventfd the workers write when they are ready and when they exit.
 * p:space_fd() -> the eventfd readable while a full queue has room again. */
static int pool_ctl_fd(lua_State *L) { lua_pushinteger(L, pool_check(L, 1)->ctl_fd); return 1; }
static int pool_space_fd(lua_State *L) { lua_pushinteger(L, pool_check(L, 1)->space_fd); return 1; }

/* p:drain_ctl(): reads ctl_fd (the caller looks at the state again afterwards). */
static int pool_drain_ctl(lua_State *L) {
  tether_efd_drain(pool_check(L, 1)->ctl_fd);
  return 0;
}

/* Enqueues t (made for p) when there is room; the lock is held. 1 = queued, 0 = full. */
static int push_locked(pool *p, task *t) {
  if (p->queued >= p->cap) {
    p->want_space = 1;
    pool_space_check(p);
    return 0;
  }
  atomic_store(&t->state, ST_QUEUED);
  atomic_fetch_add(&t->refs, 1); /* the queue's */
  if (t->pin >= 0) pool_q_push(&p->w[t->pin].q, t); else pool_q_push(&p->q, t);
  p->queued++;
  pool_space_check(p);
  atomic_fetch_add(&p->submitted, 1);
  pool_wake(p, t->pin >= 0 ? &p->w[t->pin] : NULL);
  return 1;
}

/* p:submit(fn, pin, ...) -> future, queued | nil, "closed" | nil, argindex, message.
 * Copies the arguments (offset from 1 in argindex when one cannot be copied), makes the
 * future, and queues it when there is room (queued false when full: push it later). pin is
 * a worker number (1-based) or 0 for any. */
static int pool_submit(lua_State *L) {
  pool *p = pool_check(L, 1);
  fnblob *fn = pool_check_fn(L, 2);
  lua_Integer pin = luaL_checkinteger(L, 3);
  luaL_argcheck(L, pin >= 0 && pin <= p->size, 3, "no such worker");
  int nargs = lua_gettop(L) - 3;
  if (p->closing) { lua_pushnil(L); lua_pushliteral(L, "closed"); return 2; }
  future_ud *f = lua_newuserdatauv(L, sizeof *f, 1);
  f->t = NULL;
  f->p = p;
  atomic_fetch_add(&p->refs, 1);
  pool_setmt(L, UV_FUTURE);
  lua_pushvalue(L, 1);
  tether_setuv(L, -2);
  task *t = pool_task_new(p, fn, (int)pin - 1);
  if (!t) return luaL_error(L, "pool.submit: out of memory");
  f->t = t;
  int bad;
  const char *err;
  if (copy_encode(L, 4, nargs, &t->args, &bad, &err) < 0) {
    lua_pushnil(L);
    lua_pushinteger(L, bad + 1);
    lua_pushstring(L, err);
    return 3;
  }
  pthread_mutex_lock(&p->mu);
  int queued = push_locked(p, t);
  pthread_mutex_unlock(&p->mu);
  lua_pushboolean(L, queued);
  return 2;
}

/* p:push(future) -> true when queued, false when still full, nil, "closed" when closing. */
static int pool_push(lua_State *L) {
  pool *p = pool_check(L, 1);
  future_ud *f = pool_checkud(L, 2, UV_FUTURE, FUTURE_MT);
  luaL_argcheck(L, f->p == p && f->t && atomic_load(&f->t->state) == ST_NEW, 2, "not a new future of this pool");
  pthread_mutex_lock(&p->mu);
  int closing = p->closing, queued = closing ? 0 : push_locked(p, f->t);
  pthread_mutex_unlock(&p->mu);
  if (closing) { lua_pushnil(L); lua_pushliteral(L, "closed"); return 2; }
  lua_pushboolean(L, queued);
  return 1;
}

/* p:stats() -> {size, queue, queued, running, submitted, done, failed, cancelled, idle}. */
static int pool_stats(lua_State *L) {
  pool *p = pool_check(L, 1);
  pthread_mutex_lock(&p->mu);
  size_t queued = p->queued;
  int idle = p->nidle, closing = p->closing;
  pthread_mutex_unlock(&p->mu);
  lua_createtable(L, 0, 10);
  lua_pushinteger(L, p->size); lua_setfield(L, -2, "size");
  lua_pushinteger(L, (lua_Integer)p->cap); lua_setfield(L, -2, "queue");
  lua_pushinteger(L, (lua_Integer)queued); lua_setfield(L, -2, "queued");
  lua_pushinteger(L, atomic_load(&p->running)); lua_setfield(L, -2, "running");
  lua_pushinteger(L, (lua_Integer)atomic_load(&p->submitted)); lua_setfield(L, -2, "submitted");
  lua_pushinteger(L, (lua_Integer)atomic_load(&p->done)); lua_setfield(L, -2, "done");
  lua_pushinteger(L, (lua_Integer)atomic_load(&p->nfailed)); lua_setfield(L, -2, "failed");
  lua_pushinteger(L, (lua_Integer)atomic_load(&p->cancelled)); lua_setfield(L, -2, "cancelled");
  lua_pushinteger(L, idle); lua_setfield(L, -2, "idle");
  lua_pushboolean(L, closing); lua_setfield(L, -2, "closed");
  return 1;
}

/* p:close() -> starts closing (idempotent): no new tasks; queued ones still run.
 * p:cancel_all() -> number of queued tasks cancelled. */
static int pool_close(lua_State *L) {
  pool *p = pool_check(L, 1);
  pthread_mutex_lock(&p->mu);
  close_locked(p);
  pthread_mutex_unlock(&p->mu);
  return 0;
}

static int pool_cancel_all(lua_State *L) {
  pool *p = pool_check(L, 1);
  pthread_mutex_lock(&p->mu);
  int n = cancel_all_locked(p);
  pthread_mutex_unlock(&p->mu);
  lua_pushinteger(L, n);
  return 1;
}

/* p:exited() -> true once every started worker has exited (ctl_fd then stays readable, so
 * every waiter sees it). */
static int pool_exited(lua_State *L) {
  pool *p = pool_check(L, 1);
  pthread_mutex_lock(&p->mu);
  int all = p->exited == p->started;
  if (all) tether_efd_write(p->ctl_fd);
  pthread_mutex_unlock(&p->mu);
  lua_pushboolean(L, all);
  return 1;
}

/* p:join(): joins the threads (which have exited, see exited()); stats() still answers.
 * Idempotent. */
static int pool_join(lua_State *L) {
  pool *p = pool_check(L, 1);
  if (p->joined) return 0;
  pthread_mutex_lock(&p->mu);
  close_locked(p);
  pthread_mutex_unlock(&p->mu);
  join_all(p);
  return 0;
}

/* __gc: cancels what is queued, stops the workers and joins them. Blocks until running
 * tasks end (a __gc cannot yield); close() first to wait through the waiter instead. */
static int pool_gc(lua_State *L) {
  pool_ud *u = pool_checkud(L, 1, UV_POOL, POOL_MT);
  pool *p = u->p;
  if (!p) return 0;
  if (!p->joined) {
    pthread_mutex_lock(&p->mu);
    cancel_all_locked(p);
    close_locked(p);
    pthread_mutex_unlock(&p->mu);
    join_all(p);
  }
  u->p = NULL;
  pool_unref(p);
  return 0;
}

/* ---- registration ------------------------------------------------------------------ */

static const luaL_Reg pool_methods[] = {
  {"ready", pool_ready}, {"ctl_fd", pool_ctl_fd}, {"space_fd", pool_space_fd},
  {"drain_ctl", pool_drain_ctl}, {"submit", pool_submit}, {"push", pool_push},
  {"stats", pool_stats}, {"close", pool_close}, {"cancel_all", pool_cancel_all},
  {"exited", pool_exited}, {"join", pool_join}, {"map_batch", pool_map_batch}, {NULL, NULL},
};

/* Sets the functions of l into the table on top, each with the 4 metatables (at base..base+3)
 * as upvalues (luaL_setfuncs with upvalues is not in 5.1). */
static void setfuncs_uv(lua_State *L, int base, const luaL_Reg *l) {
  for (; l->name; l++) {
    for (int i = 0; i < 4; i++) lua_pushvalue(L, base + i);
    lua_pushcclosure(L, l->func, 4);
    lua_setfield(L, -2, l->name);
  }
}

static void finish_type(lua_State *L, int base, int mt, const luaL_Reg *methods, lua_CFunction gc) {
  luaL_Reg g[] = { {"__gc", gc}, {NULL, NULL} };
  lua_pushvalue(L, mt);
  setfuncs_uv(L, base, g);
  if (methods) {
    lua_newtable(L);
    setfuncs_uv(L, base, methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
}

/* future_methods() -> the table behind futures' __index (tether.pool adds its methods). */
static int pool_future_methods(lua_State *L) {
  lua_getfield(L, lua_upvalueindex(UV_FUTURE), "__index");
  return 1;
}

/* future_metatable() -> the futures' metatable (tether.pool sets __name/__tostring, __close). */
static int pool_future_metatable(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(UV_FUTURE));
  return 1;
}

static const luaL_Reg funcs[] = {
  {"pool_new", pool_new}, {"pool_fn", pool_fn},
  {"pool_future_methods", pool_future_methods}, {"pool_future_metatable", pool_future_metatable},
  {NULL, NULL},
};

void tether_open_pool(lua_State *L) {
  int core = lua_gettop(L);
  luaL_newmetatable(L, POOL_MT);
  luaL_newmetatable(L, FUTURE_MT);
  luaL_newmetatable(L, FN_MT);
  luaL_newmetatable(L, MAP_MT);
  int base = core + 1;
  finish_type(L, base, base, pool_methods, pool_gc);
  finish_type(L, base, base + 1, pool_future_reg, pool_future_gc);
  finish_type(L, base, base + 2, NULL, pool_fn_gc);
  finish_type(L, base, base + 3, pool_map_reg, pool_map_gc);
  lua_pushvalue(L, core);
  setfuncs_uv(L, base, funcs);
  lua_settop(L, core);
}
