/* pooltask.c - tether.pool's tasks and the Lua objects around them: task functions
 * (tether.poolfn: bytecode or a "module.function" name, shared read-only and reference
 * counted), the task queues, a task's end and cancellation, and futures (tether.future).
 *
 * Eventfds: a future gets one only when the Lua thread has to wait for it (from a small
 * per-pool cache, drained and reused), or when pollfd() hands one out (never reused).
 * The worker reads task->efd only under the pool lock, and the Lua thread changes or closes
 * it only under the lock, so a worker never writes to an fd that was closed or reused. */
#include "pool.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* ---- task functions ---------------------------------------------------------------- */

static const char *const state_names[] = {"new", "queued", "running", "done", "failed", "cancelled"};

static atomic_llong fn_ids = 1;

void pool_fn_unref(fnblob *f) {
  if (f && atomic_fetch_sub(&f->refs, 1) == 1) free(f);
}

static fnblob *fn_new(const char *data, size_t len, int is_name) {
  fnblob *f = malloc(sizeof *f + len + 1);
  if (!f) return NULL;
  atomic_init(&f->refs, 1);
  f->id = (lua_Integer)atomic_fetch_add(&fn_ids, 1);
  f->is_name = is_name;
  f->len = len;
  memcpy(f->data, data, len);
  f->data[len] = 0;
  return f;
}

/* fn(f [, module]) -> a task function for f (a Lua function without upvalues but _ENV, or
 * a "module.function" name; with module true, a module name to require) | nil, message. */
int pool_fn(lua_State *L) {
  fnblob *f = NULL;
  if (lua_type(L, 1) == LUA_TSTRING) {
    int module = lua_toboolean(L, 2);
    size_t n;
    const char *s = lua_tolstring(L, 1, &n);
    const char *dot = strrchr(s, '.');
    if (n == 0 || strlen(s) != n || (!module && (!dot || dot == s || dot[1] == 0))) {
      lua_pushnil(L);
      lua_pushstring(L, module ? "a module name must be a non-empty string without NUL"
                               : "a name must be \"module.function\"");
      return 2;
    }
    f = fn_new(s, n, 1);
  } else if (lua_type(L, 1) == LUA_TFUNCTION) {
    copy_buf b;
    copy_init(&b);
    int bad;
    const char *err;
    lua_settop(L, 1);
    if (copy_encode(L, 1, 1, &b, &bad, &err) < 0) {
      copy_free(&b);
      lua_pushnil(L);
      lua_pushstring(L, err);
      return 2;
    }
    /* b: tag, 5-byte length, bytecode */
    f = fn_new(b.p + 6, b.len - 6, 0);
    copy_free(&b);
  } else {
    lua_pushnil(L);
    lua_pushfstring(L, "function or \"module.function\" expected, got %s", luaL_typename(L, 1));
    return 2;
  }
  if (!f) return luaL_error(L, "out of memory");
  fn_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->f = f;
  pool_setmt(L, UV_FN);
  return 1;
}

int pool_fn_gc(lua_State *L) {
  fn_ud *u = pool_checkud(L, 1, UV_FN, FN_MT);
  pool_fn_unref(u->f);
  u->f = NULL;
  return 0;
}

fnblob *pool_check_fn(lua_State *L, int idx) {
  return ((fn_ud *)pool_checkud(L, idx, UV_FN, FN_MT))->f;
}

/* ---- tasks and their queues (lock held to touch a queue) ----------------------------- */

void pool_q_push(tqueue *q, task *t) {
  t->next = NULL;
  t->prev = q->tail;
  if (q->tail) q->tail->next = t; else q->head = t;
  q->tail = t;
  t->q = q;
}

void pool_q_unlink(task *t) {
  tqueue *q = t->q;
  if (t->prev) t->prev->next = t->next; else q->head = t->next;
  if (t->next) t->next->prev = t->prev; else q->tail = t->prev;
  t->prev = t->next = NULL;
  t->q = NULL;
}

task *pool_q_pop(tqueue *q) {
  task *t = q->head;
  if (t) pool_q_unlink(t);
  return t;
}

void pool_task_unref(task *t) {
  if (atomic_fetch_sub(&t->refs, 1) != 1) return;
  copy_free(&t->args);
  copy_free(&t->res);
  pool_fn_unref(t->fn);
  int fd = atomic_load(&t->efd);
  if (fd >= 0) close(fd); /* only when its future is gone, which takes it back first */
  free(t);
}

task *pool_task_new(pool *p, fnblob *fn, int pin) {
  task *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->p = p;
  t->fn = fn;
  atomic_fetch_add(&fn->refs, 1);
  atomic_init(&t->state, ST_NEW);
  atomic_init(&t->refs, 1);
  atomic_init(&t->efd, -1);
  t->pin = pin;
  copy_init(&t->args);
  copy_init(&t->res);
  return t;
}

/* The end of a task: moved to a final state by the caller (worker or canceller), which now
 * wakes its waiter and counts it in its batch. */
void pool_task_ended(task *t) {
  pool *p = t->p;
  if (atomic_load(&t->efd) >= 0) {
    pthread_mutex_lock(&p->mu);
    int fd = atomic_load(&t->efd);
    if (fd >= 0) tether_efd_write(fd);
    pthread_mutex_unlock(&p->mu);
  }
  batch *b = t->b;
  if (b) {
    t->seq = atomic_fetch_add(&b->seq, 1);
    if (atomic_fetch_sub(&b->remaining, 1) == 1) {
      pthread_mutex_lock(&p->mu);
      if (b->efd >= 0) tether_efd_write(b->efd);
      pthread_mutex_unlock(&p->mu);
    }
    pool_batch_unref(b);
  }
}

/* Moves a NEW or QUEUED task to CANCELLED; the caller holds the lock. Returns 1 when it did. */
int pool_cancel_locked(pool *p, task *t) {
  int was_queued = t->q != NULL;
  if (was_queued) {
    pool_q_unlink(t);
    p->queued--;
    pool_space_check(p);
  }
  int s = atomic_load(&t->state);
  while ((s == ST_NEW || s == ST_QUEUED) && !atomic_compare_exchange_weak(&t->state, &s, ST_CANCELLED)) {}
  if (s != ST_NEW && s != ST_QUEUED) return 0;
  atomic_fetch_add(&p->cancelled, 1);
  int fd = atomic_load(&t->efd);
  if (fd >= 0) tether_efd_write(fd);
  if (t->b && s == ST_QUEUED) { /* a batch task holds its batch once queued */
    batch *b = t->b;
    t->seq = atomic_fetch_add(&b->seq, 1);
    if (atomic_fetch_sub(&b->remaining, 1) == 1 && b->efd >= 0) tether_efd_write(b->efd);
    pool_batch_unref(b);
  }
  if (was_queued) pool_task_unref(t); /* the queue's reference (a taken task's is the worker's) */
  return 1;
}

/* ---- futures ----------------------------------------------------------------------- */

static task *check_future(lua_State *L, int idx) {
  future_ud *f = pool_checkud(L, idx, UV_FUTURE, FUTURE_MT);
  if (!f->t) luaL_argerror(L, idx, "not a future");
  return f->t;
}

/* Takes back a future's private eventfd once its task ended (drained, into the cache). */
static void reclaim_efd(future_ud *f) {
  task *t = f->t;
  pool *p = f->p;
  if (atomic_load(&t->efd) < 0) return;
  pthread_mutex_lock(&p->mu);
  int fd = atomic_exchange(&t->efd, -1);
  pthread_mutex_unlock(&p->mu);
  if (fd < 0) return;
  if (!t->efd_public && p->nefds < EFD_CACHE) {
    tether_efd_drain(fd);
    p->efds[p->nefds++] = fd;
  } else {
    close(fd);
  }
}

/* Pushes the outcome of an ended task: 1, results... | 2, message, traceback, value |
 * 3 (cancelled). */
int pool_push_outcome(lua_State *L, task *t, int s) {
  if (s == ST_CANCELLED) { lua_pushinteger(L, 3); return 1; }
  const char *err;
  lua_pushinteger(L, s == ST_DONE ? 1 : 2);
  int n = copy_decode(L, t->res.p, t->res.len, &t->res, &err);
  if (n < 0) return luaL_error(L, "pool: cannot rebuild the results: %s", err);
  return n + 1;
}

/* f:_take() -> nothing while the task has not ended; else true, results... (done) |
 * false, 2, message, traceback, value (failed; no message when the failure could not be
 * recorded) | false, 3 (cancelled). Results are rebuilt at each call. */
static int future_take(lua_State *L) {
  task *t = check_future(L, 1);
  int s = atomic_load(&t->state);
  if (!FINAL(s)) return 0;
  reclaim_efd(lua_touserdata(L, 1));
  if (s != ST_DONE) {
    lua_pushboolean(L, 0);
    return 1 + pool_push_outcome(L, t, s);
  }
  const char *err;
  lua_pushboolean(L, 1);
  int n = copy_decode(L, t->res.p, t->res.len, &t->res, &err);
  if (n < 0) return luaL_error(L, "pool: cannot rebuild the results: %s", err);
  return n + 1;
}

/* f:_efd() -> an fd readable once the task ends (from the pool's cache), or nil when it has
 * ended already, or nil, errno. */
static int future_efd(lua_State *L) {
  future_ud *f = pool_checkud(L, 1, UV_FUTURE, FUTURE_MT);
  task *t = check_future(L, 1);
  int fd = atomic_load(&t->efd);
  if (FINAL(atomic_load(&t->state))) return 0;
  if (fd < 0) {
    pool *p = f->p;
    fd = p->nefds ? p->efds[--p->nefds] : eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0) return tether_fail(L, errno);
    pthread_mutex_lock(&p->mu);
    atomic_store(&t->efd, fd); /* seq_cst: a worker that ends it now sees fd, or we see it ended */
    pthread_mutex_unlock(&p->mu);
  }
  if (FINAL(atomic_load(&t->state))) return 0;
  lua_pushinteger(L, fd);
  return 1;
}

/* f:_pollfd() -> an eventfd readable once the task ended (kept until the future is
 * collected), or nil, errno. */
static int future_pollfd(lua_State *L) {
  future_ud *f = pool_checkud(L, 1, UV_FUTURE, FUTURE_MT);
  task *t = check_future(L, 1);
  int fd = atomic_load(&t->efd);
  if (fd < 0) {
    fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0) return tether_fail(L, errno);
    pthread_mutex_lock(&f->p->mu);
    atomic_store(&t->efd, fd);
    pthread_mutex_unlock(&f->p->mu);
  }
  t->efd_public = 1;
  if (FINAL(atomic_load(&t->state))) { /* it may have ended before the fd was there */
    pthread_mutex_lock(&f->p->mu);
    tether_efd_write(fd);
    pthread_mutex_unlock(&f->p->mu);
  }
  lua_pushinteger(L, fd);
  return 1;
}

/* f:_ended() -> true once the task is done, failed or cancelled. */
static int future_ended(lua_State *L) {
  lua_pushboolean(L, FINAL(atomic_load(&check_future(L, 1)->state)));
  return 1;
}

/* f:_state() -> "new", "queued", "running", "done", "failed" or "cancelled". */
static int future_state(lua_State *L) {
  task *t = check_future(L, 1);
  lua_pushstring(L, state_names[atomic_load(&t->state)]);
  return 1;
}

/* f:_cancel() -> true when the task was cancelled (it had not started), else false. */
static int future_cancel(lua_State *L) {
  future_ud *f = pool_checkud(L, 1, UV_FUTURE, FUTURE_MT);
  task *t = check_future(L, 1);
  pthread_mutex_lock(&f->p->mu);
  int ok = pool_cancel_locked(f->p, t);
  pthread_mutex_unlock(&f->p->mu);
  lua_pushboolean(L, ok);
  return 1;
}

int pool_future_gc(lua_State *L) {
  future_ud *f = pool_checkud(L, 1, UV_FUTURE, FUTURE_MT);
  if (f->t) {
    task *t = f->t;
    if (atomic_load(&t->efd) >= 0) {
      pthread_mutex_lock(&f->p->mu);
      int fd = atomic_exchange(&t->efd, -1);
      pthread_mutex_unlock(&f->p->mu);
      if (fd >= 0) close(fd);
    }
    if (atomic_load(&t->state) == ST_NEW) atomic_store(&t->state, ST_CANCELLED); /* never queued */
    pool_task_unref(t);
    f->t = NULL;
  }
  if (f->p) { pool_unref(f->p); f->p = NULL; }
  return 0;
}

const luaL_Reg pool_future_reg[] = {
  {"_take", future_take}, {"_efd", future_efd}, {"_pollfd", future_pollfd},
  {"_state", future_state}, {"_cancel", future_cancel}, {"_ended", future_ended}, {NULL, NULL},
};
