/* pool.c - tether.pool's C side: pinned worker threads, each with its own lua_State, fed
 * by a bounded queue (one mutex, a condition variable per worker), with completion handed
 * to the Lua thread by eventfd. Never blocks the Lua thread except in join, which only
 * waits for threads that have announced their exit (and in __gc, see pool_gc).
 *
 * Objects (userdata):
 *   tether.pool     a pool handle; the pool struct is reference counted (the handle and
 *                   every future hold one), so futures outlive a collected handle safely
 *   tether.future   one task; its uservalue is the pool handle (futures keep it alive)
 *   tether.poolfn   a task function: bytecode (string.dump) or a "module.function" name,
 *                   shared read-only by the tasks that run it (reference counted)
 *   tether.poolmap  a batch of tasks of one pool:map call
 *
 * Task states move QUEUED -> RUNNING -> DONE | FAILED, or NEW | QUEUED -> CANCELLED, by
 * atomic compare-and-swap: whoever moves a task to a final state does its bookkeeping
 * (eventfd, batch count). A worker takes one task per lock and finishes it without the
 * lock unless someone waits on its eventfd. A wake-up for any worker is skipped while a
 * woken worker has not yet looked at the queue (that one wakes the next when it takes a
 * task and more are left): a fast producer does not pay a futex wake per task.
 *
 * Eventfds: a future gets one only when the Lua thread has to wait for it (from a small
 * per-pool cache, drained and reused), or when pollfd() hands one out (never reused).
 * The worker reads task->efd only under the pool lock, and the Lua thread changes or closes
 * it only under the lock, so a worker never writes to an fd that was closed or reused. */
#include "copy.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define POOL_MT "tether.pool"
#define FUTURE_MT "tether.future"
#define FN_MT "tether.poolfn"
#define MAP_MT "tether.poolmap"

#define EFD_CACHE 32
#define FNCACHE_MAX 512

enum { ST_NEW, ST_QUEUED, ST_RUNNING, ST_DONE, ST_FAILED, ST_CANCELLED };
static const char *const state_names[] = {"new", "queued", "running", "done", "failed", "cancelled"};
#define FINAL(s) ((s) >= ST_DONE)

/* ---- task functions ---------------------------------------------------------------- */

typedef struct fnblob {
  atomic_int refs;
  lua_Integer id;  /* unique for the life of the process: the workers' cache key */
  int is_name;     /* data is "module.function" */
  size_t len;
  char data[];
} fnblob;

static atomic_llong fn_ids = 1;

static void fn_unref(fnblob *f) {
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

/* ---- structures -------------------------------------------------------------------- */

typedef struct task task;
typedef struct pool pool;
typedef struct batch batch;

typedef struct tqueue { task *head, *tail; } tqueue;

struct task {
  task *prev, *next;
  tqueue *q;          /* the queue holding it (pool lock), or NULL */
  pool *p;
  batch *b;           /* its map batch, or NULL */
  fnblob *fn;
  atomic_int state;
  atomic_int refs;    /* its future or batch, and the pool while queued or running */
  atomic_int efd;     /* written when the task ends; changed under the pool lock */
  int efd_public;     /* handed out by pollfd(): closed, never reused */
  int pin;            /* worker index, or -1 */
  size_t index;       /* position in its batch */
  size_t seq;         /* completion order in its batch */
  copy_buf args, res; /* res: the results, or message, traceback, value when FAILED */
};

typedef struct worker {
  pool *p;
  int index;
  pthread_t th;
  int started;
  pthread_cond_t cv;
  int idle;           /* waiting on cv (pool lock); cleared by whoever wakes it */
  int waking;         /* woken, and has not looked at the queues yet (pool lock) */
  tqueue q;           /* tasks pinned to it */
  cpu_set_t *cpus;
  size_t cpusize;
  char *err;          /* why it could not start (malloc), or NULL */
  int nfns;           /* entries in its function cache */
} worker;

struct pool {
  pthread_mutex_t mu;
  atomic_int refs;
  int size;
  worker *w;
  tqueue q;
  size_t queued, cap, lowwater;
  int closing, ready, failed, exited, joined, started;
  int want_space, want_half, space_readable; /* see space_check */
  int space_fd, ctl_fd;
  int nidle, nwaking;
  atomic_int running;
  atomic_ullong submitted, done, nfailed, cancelled;
  int efds[EFD_CACHE], nefds; /* Lua thread only */
  char *path, *cpath;
  fnblob *init;
};

struct batch {
  atomic_int refs;       /* the Lua handle, and each unfinished task */
  atomic_size_t remaining;
  atomic_size_t seq;
  int efd;               /* written and closed under the pool lock */
  size_t n, made;
  int sealed;            /* every task made: the +1 in remaining was dropped */
  task **tasks;
  pool *p;
};

typedef struct { pool *p; } pool_ud;
typedef struct { task *t; pool *p; } future_ud;
typedef struct { fnblob *f; } fn_ud;
typedef struct { batch *b; } map_ud;

/* ---- small helpers ----------------------------------------------------------------- */

/* Every function of this file has the four metatables as upvalues: checking and setting a
 * type costs no registry lookup by name (the hot path of submit and wait). */
enum { UV_POOL = 1, UV_FUTURE, UV_FN, UV_MAP };

static void *checkud(lua_State *L, int idx, int uv, const char *tname) {
  void *p = lua_touserdata(L, idx);
  if (p && lua_getmetatable(L, idx)) {
    int same = lua_rawequal(L, -1, lua_upvalueindex(uv));
    lua_pop(L, 1);
    if (same) return p;
  }
  luaL_argerror(L, idx, lua_pushfstring(L, "%s expected, got %s", tname, luaL_typename(L, idx)));
  return NULL;
}

static void setmt(lua_State *L, int uv) {
  lua_pushvalue(L, lua_upvalueindex(uv));
  lua_setmetatable(L, -2);
}


static void efd_write(int fd) {
  uint64_t one = 1;
  if (fd < 0) return;
  ssize_t r = write(fd, &one, sizeof one);
  (void)r; /* an eventfd only fails to count past 2^64-2 */
}

static void efd_drain(int fd) {
  uint64_t v;
  if (fd < 0) return;
  ssize_t r = read(fd, &v, sizeof v);
  (void)r; /* EAGAIN: it was not readable */
}

static void q_push(tqueue *q, task *t) {
  t->next = NULL;
  t->prev = q->tail;
  if (q->tail) q->tail->next = t; else q->head = t;
  q->tail = t;
  t->q = q;
}

static void q_unlink(task *t) {
  tqueue *q = t->q;
  if (t->prev) t->prev->next = t->next; else q->head = t->next;
  if (t->next) t->next->prev = t->prev; else q->tail = t->prev;
  t->prev = t->next = NULL;
  t->q = NULL;
}

static task *q_pop(tqueue *q) {
  task *t = q->head;
  if (t) q_unlink(t);
  return t;
}

static void pool_unref(pool *p);
static void batch_unref(batch *b);

static void task_unref(task *t) {
  if (atomic_fetch_sub(&t->refs, 1) != 1) return;
  copy_free(&t->args);
  copy_free(&t->res);
  fn_unref(t->fn);
  int fd = atomic_load(&t->efd);
  if (fd >= 0) close(fd); /* only when its future is gone, which takes it back first */
  free(t);
}

static task *task_new(pool *p, fnblob *fn, int pin) {
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

/* Under the lock: the space eventfd is a level, readable while the queue has room after a
 * waiter found it full (so every waiter sees it). It is drained when the queue is full, and
 * set again once a submit that found it full can go on (any room: a submit never waits while
 * there is room, even if the workers are stuck), or a map that found it full can queue a good
 * slice (down to half: fewer wake-ups), or the pool closes. */
static void space_check(pool *p) {
  if (p->queued >= p->cap && !p->closing) {
    if (p->space_readable) { efd_drain(p->space_fd); p->space_readable = 0; }
  } else if (!p->space_readable &&
             (p->want_space || p->closing || (p->want_half && p->queued <= p->lowwater))) {
    efd_write(p->space_fd);
    p->space_readable = 1;
    p->want_space = p->want_half = 0;
  }
}

/* The end of a task: moved to a final state by the caller (worker or canceller), which now
 * wakes its waiter and counts it in its batch. */
static void task_ended(task *t) {
  pool *p = t->p;
  if (atomic_load(&t->efd) >= 0) {
    pthread_mutex_lock(&p->mu);
    int fd = atomic_load(&t->efd);
    if (fd >= 0) efd_write(fd);
    pthread_mutex_unlock(&p->mu);
  }
  batch *b = t->b;
  if (b) {
    t->seq = atomic_fetch_add(&b->seq, 1);
    if (atomic_fetch_sub(&b->remaining, 1) == 1) {
      pthread_mutex_lock(&p->mu);
      if (b->efd >= 0) efd_write(b->efd);
      pthread_mutex_unlock(&p->mu);
    }
    batch_unref(b);
  }
}

/* Moves a NEW or QUEUED task to CANCELLED; the caller holds the lock. Returns 1 when it did. */
static int cancel_locked(pool *p, task *t) {
  int was_queued = t->q != NULL;
  if (was_queued) {
    q_unlink(t);
    p->queued--;
    space_check(p);
  }
  int s = atomic_load(&t->state);
  while ((s == ST_NEW || s == ST_QUEUED) && !atomic_compare_exchange_weak(&t->state, &s, ST_CANCELLED)) {}
  if (s != ST_NEW && s != ST_QUEUED) return 0;
  atomic_fetch_add(&p->cancelled, 1);
  int fd = atomic_load(&t->efd);
  if (fd >= 0) efd_write(fd);
  if (t->b && s == ST_QUEUED) { /* a batch task holds its batch once queued */
    batch *b = t->b;
    t->seq = atomic_fetch_add(&b->seq, 1);
    if (atomic_fetch_sub(&b->remaining, 1) == 1 && b->efd >= 0) efd_write(b->efd);
    batch_unref(b);
  }
  if (was_queued) task_unref(t); /* the queue's reference (a taken task's is the worker's) */
  return 1;
}

/* ---- the worker thread ------------------------------------------------------------- */

/* Pushes the function of fn (from the cache table at upvalue 1, else loaded and cached). */
static void push_fn(lua_State *L, worker *w, fnblob *fn) {
  lua_rawgeti(L, lua_upvalueindex(1), fn->id);
  if (!lua_isnil(L, -1)) return;
  lua_pop(L, 1);
  if (fn->is_name) {
    const char *dot = strrchr(fn->data, '.');
    lua_getglobal(L, "require");
    lua_pushlstring(L, fn->data, (size_t)(dot - fn->data));
    lua_call(L, 1, 1);
    if (!lua_istable(L, -1)) luaL_error(L, "pool: module '%s' is not a table", lua_tostring(L, -2));
    lua_getfield(L, -1, dot + 1);
    if (lua_type(L, -1) != LUA_TFUNCTION)
      luaL_error(L, "pool: '%s' is not a function", fn->data);
    lua_remove(L, -2);
  } else if (tether_loadbinary(L, fn->data, fn->len, "=(pool task)") != 0) {
    lua_error(L);
  }
  if (++w->nfns > FNCACHE_MAX) { /* bounded: start over */
    lua_newtable(L);
    lua_replace(L, lua_upvalueindex(1));
    w->nfns = 1;
  }
  lua_pushvalue(L, -1);
  lua_rawseti(L, lua_upvalueindex(1), fn->id);
}

/* run(worker, task): in protected mode, the task's call; its results go to task->res. */
static int worker_run(lua_State *L) {
  worker *w = lua_touserdata(L, 1);
  task *t = lua_touserdata(L, 2);
  lua_settop(L, 0);
  push_fn(L, w, t->fn);
  const char *err;
  int n = copy_decode(L, t->args.p, t->args.len, &t->args, &err);
  if (n < 0) return luaL_error(L, "pool: arguments: %s", err);
  lua_call(L, n, LUA_MULTRET);
  int bad;
  if (copy_encode(L, 1, lua_gettop(L), &t->res, &bad, &err) < 0)
    return luaL_error(L, "pool: result #%d: %s", bad + 1, err);
  return 0;
}

/* The message handler: {message, traceback, value}. */
static int worker_msgh(lua_State *L) {
  const char *msg;
  if (lua_type(L, 1) == LUA_TSTRING || lua_type(L, 1) == LUA_TNUMBER) {
    msg = lua_tostring(L, 1);
  } else if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) {
    msg = lua_tostring(L, -1);
  } else {
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  lua_createtable(L, 3, 0);
  lua_pushstring(L, msg);
  lua_rawseti(L, -2, 1);
  tether_traceback(L, L, msg, 1);
  lua_rawseti(L, -2, 2);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 3);
  return 1;
}

/* fail(task, {message, traceback, value}): in protected mode, a failed task's res. */
static int worker_fail(lua_State *L) {
  task *t = lua_touserdata(L, 1);
  copy_free(&t->res);
  if (!lua_istable(L, 2)) { lua_pushstring(L, "pool: task failed"); lua_pushnil(L); lua_pushnil(L); }
  else { lua_rawgeti(L, 2, 1); lua_rawgeti(L, 2, 2); lua_rawgeti(L, 2, 3); }
  int bad;
  const char *err;
  if (copy_encode(L, -3, 2, &t->res, &bad, &err) < 0) return luaL_error(L, "%s", err);
  size_t len = t->res.len;
  if (copy_encode(L, -1, 1, &t->res, &bad, &err) < 0) { /* an error value that cannot cross */
    copy_truncate(&t->res, len);
    lua_pushnil(L);
    if (copy_encode(L, -1, 1, &t->res, &bad, &err) < 0) return luaL_error(L, "%s", err);
  }
  return 0;
}

/* setup(worker): in protected mode, the worker's state: libraries, package paths, its
 * task runner (with the function cache) and message handler at stack slots 1 and 2, init. */
static int worker_setup(lua_State *L) {
  worker *w = lua_touserdata(L, 1);
  pool *p = w->p;
  lua_settop(L, 0);
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  if (lua_istable(L, -1)) {
    if (p->path) { lua_pushstring(L, p->path); lua_setfield(L, -2, "path"); }
    if (p->cpath) { lua_pushstring(L, p->cpath); lua_setfield(L, -2, "cpath"); }
  }
  lua_pop(L, 1);
  if (p->init) {
    if (p->init->is_name) {
      lua_getglobal(L, "require");
      lua_pushstring(L, p->init->data);
      lua_call(L, 1, 0);
    } else {
      if (tether_loadbinary(L, p->init->data, p->init->len, "=(pool init)") != 0) lua_error(L);
      lua_pushinteger(L, w->index + 1);
      lua_pushinteger(L, p->size);
      lua_call(L, 2, 0);
    }
  }
  lua_settop(L, 0);
  lua_newtable(L);
  lua_pushcclosure(L, worker_run, 1);
  lua_pushcfunction(L, worker_msgh);
  return 2;
}

static char *dupstr(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

/* Runs one task in L (runner at slot 1, handler at 2); its final state. */
static int run_task(lua_State *L, worker *w, task *t) {
  lua_pushvalue(L, 1);
  lua_pushlightuserdata(L, w);
  lua_pushlightuserdata(L, t);
  if (lua_pcall(L, 2, 0, 2) == 0) return ST_DONE;
  /* the error table (or a memory error's string) is on top */
  lua_pushcfunction(L, worker_fail);
  lua_insert(L, -2);
  lua_pushlightuserdata(L, t);
  lua_insert(L, -2);
  if (lua_pcall(L, 2, 0, 0) != 0) {
    lua_pop(L, 1);
    copy_free(&t->res); /* the Lua side reports a failure without a message */
  }
  lua_settop(L, 2);
  return ST_FAILED;
}

static void wake(pool *p, worker *w);

/* Takes the next task for w (its own queue first), or NULL; the lock is held. One task at
 * a time: a task is only ever held by a worker that runs it, so none waits behind a long
 * one while another worker is free, and `queued` is exact for backpressure and cancel. When
 * tasks are left for others, wakes one more worker. */
static task *take(pool *p, worker *w) {
  if (w->waking) { w->waking = 0; p->nwaking--; }
  task *t = q_pop(&w->q);
  if (!t) t = q_pop(&p->q);
  if (t) {
    p->queued--;
    space_check(p);
    if (p->q.head) wake(p, NULL);
  }
  return t;
}

static void *worker_main(void *arg) {
  worker *w = arg;
  pool *p = w->p;
  char name[32];
  snprintf(name, sizeof name, "tether-w%d", w->index + 1);
  name[15] = 0; /* the kernel's limit */
  pthread_setname_np(pthread_self(), name);
  lua_State *L = NULL;
  if (w->cpus) {
    int e = pthread_setaffinity_np(pthread_self(), w->cpusize, w->cpus);
    if (e != 0) {
      char buf[128];
      snprintf(buf, sizeof buf, "affinity: %s", strerror(e));
      w->err = dupstr(buf);
    }
  }
  if (!w->err) {
    L = luaL_newstate();
    if (!L) w->err = dupstr("out of memory");
  }
  if (L) {
    lua_pushcfunction(L, worker_setup);
    lua_pushlightuserdata(L, w);
    if (lua_pcall(L, 1, 2, 0) != 0) {
      const char *m = lua_tostring(L, -1);
      w->err = dupstr(m ? m : "init failed (error object is not a string)");
    }
  }
  pthread_mutex_lock(&p->mu);
  if (w->err) p->failed++; else p->ready++;
  efd_write(p->ctl_fd);
  pthread_mutex_unlock(&p->mu);

  if (!w->err) {
    pthread_mutex_lock(&p->mu);
    for (;;) {
      task *t = take(p, w);
      if (!t) {
        if (p->closing) break;
        w->idle = 1;
        p->nidle++;
        while (w->idle) pthread_cond_wait(&w->cv, &p->mu);
        continue;
      }
      pthread_mutex_unlock(&p->mu);
      int s = ST_QUEUED;
      if (atomic_compare_exchange_strong(&t->state, &s, ST_RUNNING)) {
        atomic_fetch_add(&p->running, 1);
        int st = run_task(L, w, t);
        atomic_store(&t->state, st);
        atomic_fetch_sub(&p->running, 1);
        atomic_fetch_add(st == ST_DONE ? &p->done : &p->nfailed, 1);
        task_ended(t);
      } /* else cancelled after it was taken: the canceller did the rest */
      task_unref(t);
      pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
  }
  if (L) lua_close(L);
  pthread_mutex_lock(&p->mu);
  p->exited++;
  efd_write(p->ctl_fd);
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

/* ---- the pool ---------------------------------------------------------------------- */

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
  fn_unref(p->init);
  pthread_mutex_destroy(&p->mu);
  free(p);
}

static void pool_unref(pool *p) {
  if (atomic_fetch_sub(&p->refs, 1) == 1) pool_free(p);
}

static pool *check_pool(lua_State *L, int idx) {
  pool_ud *u = checkud(L, idx, UV_POOL, POOL_MT);
  if (!u->p) luaL_argerror(L, idx, "pool is closed");
  return u->p;
}

/* Wakes one idle worker (w, or any when w is NULL); the lock is held. A wake for any worker
 * is skipped while another woken worker has not yet looked at the queue: that one takes a
 * task and wakes the next (so a fast producer does not pay a wake per task). */
static void wake(pool *p, worker *w) {
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
  for (int i = 0; i < p->size; i++) wake(p, &p->w[i]);
  space_check(p); /* wakes every waiter for room: they see the pool closing */
}

/* Cancels every queued task; the lock is held. Returns how many. */
static int cancel_all_locked(pool *p) {
  int n = 0;
  task *t;
  for (int i = 0; i <= p->size; i++) {
    tqueue *q = i < p->size ? &p->w[i].q : &p->q;
    while ((t = q->head) != NULL) n += cancel_locked(p, t);
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
  fn_ud *init = lua_isnil(L, 5) ? NULL : checkud(L, 5, UV_FN, FN_MT);
  int has_aff = !lua_isnoneornil(L, 6);
  if (has_aff) luaL_checktype(L, 6, LUA_TTABLE);

  pool_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->p = NULL;
  setmt(L, UV_POOL);
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
  if ((path && !(p->path = dupstr(path))) || (cpath && !(p->cpath = dupstr(cpath))))
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
    err = pthread_create(&p->w[i].th, NULL, worker_main, &p->w[i]);
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
  pool *p = check_pool(L, 1);
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
static int pool_ctl_fd(lua_State *L) { lua_pushinteger(L, check_pool(L, 1)->ctl_fd); return 1; }
static int pool_space_fd(lua_State *L) { lua_pushinteger(L, check_pool(L, 1)->space_fd); return 1; }

/* p:drain_ctl(): reads ctl_fd (the caller looks at the state again afterwards). */
static int pool_drain_ctl(lua_State *L) {
  efd_drain(check_pool(L, 1)->ctl_fd);
  return 0;
}

static fnblob *check_fn(lua_State *L, int idx) {
  return ((fn_ud *)checkud(L, idx, UV_FN, FN_MT))->f;
}

/* Enqueues t (made for p) when there is room; the lock is held. 1 = queued, 0 = full. */
static int push_locked(pool *p, task *t) {
  if (p->queued >= p->cap) {
    p->want_space = 1;
    space_check(p);
    return 0;
  }
  atomic_store(&t->state, ST_QUEUED);
  atomic_fetch_add(&t->refs, 1); /* the queue's */
  if (t->pin >= 0) q_push(&p->w[t->pin].q, t); else q_push(&p->q, t);
  p->queued++;
  space_check(p);
  atomic_fetch_add(&p->submitted, 1);
  wake(p, t->pin >= 0 ? &p->w[t->pin] : NULL);
  return 1;
}

/* p:submit(fn, pin, ...) -> future, queued | nil, "closed" | nil, argindex, message.
 * Copies the arguments (offset from 1 in argindex when one cannot be copied), makes the
 * future, and queues it when there is room (queued false when full: push it later). pin is
 * a worker number (1-based) or 0 for any. */
static int pool_submit(lua_State *L) {
  pool *p = check_pool(L, 1);
  fnblob *fn = check_fn(L, 2);
  lua_Integer pin = luaL_checkinteger(L, 3);
  luaL_argcheck(L, pin >= 0 && pin <= p->size, 3, "no such worker");
  int nargs = lua_gettop(L) - 3;
  if (p->closing) { lua_pushnil(L); lua_pushliteral(L, "closed"); return 2; }
  future_ud *f = lua_newuserdatauv(L, sizeof *f, 1);
  f->t = NULL;
  f->p = p;
  atomic_fetch_add(&p->refs, 1);
  setmt(L, UV_FUTURE);
  lua_pushvalue(L, 1);
  tether_setuv(L, -2);
  task *t = task_new(p, fn, (int)pin - 1);
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
  pool *p = check_pool(L, 1);
  future_ud *f = checkud(L, 2, UV_FUTURE, FUTURE_MT);
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
  pool *p = check_pool(L, 1);
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
  pool *p = check_pool(L, 1);
  pthread_mutex_lock(&p->mu);
  close_locked(p);
  pthread_mutex_unlock(&p->mu);
  return 0;
}

static int pool_cancel_all(lua_State *L) {
  pool *p = check_pool(L, 1);
  pthread_mutex_lock(&p->mu);
  int n = cancel_all_locked(p);
  pthread_mutex_unlock(&p->mu);
  lua_pushinteger(L, n);
  return 1;
}

/* p:exited() -> true once every started worker has exited (ctl_fd then stays readable, so
 * every waiter sees it). */
static int pool_exited(lua_State *L) {
  pool *p = check_pool(L, 1);
  pthread_mutex_lock(&p->mu);
  int all = p->exited == p->started;
  if (all) efd_write(p->ctl_fd);
  pthread_mutex_unlock(&p->mu);
  lua_pushboolean(L, all);
  return 1;
}

/* p:join(): joins the threads (which have exited, see exited()); stats() still answers.
 * Idempotent. */
static int pool_join(lua_State *L) {
  pool *p = check_pool(L, 1);
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
  pool_ud *u = checkud(L, 1, UV_POOL, POOL_MT);
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

/* ---- functions --------------------------------------------------------------------- */

/* fn(f [, module]) -> a task function for f (a Lua function without upvalues but _ENV, or
 * a "module.function" name; with module true, a module name to require) | nil, message. */
static int pool_fn(lua_State *L) {
  fnblob *f = NULL;
  if (lua_type(L, 1) == LUA_TSTRING && lua_toboolean(L, 2)) {
    size_t n;
    const char *s = lua_tolstring(L, 1, &n);
    if (n == 0 || strlen(s) != n) {
      lua_pushnil(L);
      lua_pushliteral(L, "a module name must be a non-empty string without NUL");
      return 2;
    }
    f = fn_new(s, n, 1);
  } else if (lua_type(L, 1) == LUA_TSTRING) {
    size_t n;
    const char *s = lua_tolstring(L, 1, &n);
    const char *dot = strrchr(s, '.');
    if (n == 0 || strlen(s) != n || !dot || dot == s || dot[1] == 0) {
      lua_pushnil(L);
      lua_pushliteral(L, "a name must be \"module.function\"");
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
  setmt(L, UV_FN);
  return 1;
}

static int fn_gc(lua_State *L) {
  fn_ud *u = checkud(L, 1, UV_FN, FN_MT);
  fn_unref(u->f);
  u->f = NULL;
  return 0;
}

/* ---- futures ----------------------------------------------------------------------- */

static task *check_future(lua_State *L, int idx) {
  future_ud *f = checkud(L, idx, UV_FUTURE, FUTURE_MT);
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
    efd_drain(fd);
    p->efds[p->nefds++] = fd;
  } else {
    close(fd);
  }
}

/* Pushes the outcome of an ended task: 1, results... | 2, message, traceback, value |
 * 3 (cancelled). */
static int push_outcome(lua_State *L, task *t, int s) {
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
    return 1 + push_outcome(L, t, s);
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
  future_ud *f = checkud(L, 1, UV_FUTURE, FUTURE_MT);
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
  future_ud *f = checkud(L, 1, UV_FUTURE, FUTURE_MT);
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
    efd_write(fd);
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
  future_ud *f = checkud(L, 1, UV_FUTURE, FUTURE_MT);
  task *t = check_future(L, 1);
  pthread_mutex_lock(&f->p->mu);
  int ok = cancel_locked(f->p, t);
  pthread_mutex_unlock(&f->p->mu);
  lua_pushboolean(L, ok);
  return 1;
}

static int future_gc(lua_State *L) {
  future_ud *f = checkud(L, 1, UV_FUTURE, FUTURE_MT);
  if (f->t) {
    task *t = f->t;
    if (atomic_load(&t->efd) >= 0) {
      pthread_mutex_lock(&f->p->mu);
      int fd = atomic_exchange(&t->efd, -1);
      pthread_mutex_unlock(&f->p->mu);
      if (fd >= 0) close(fd);
    }
    if (atomic_load(&t->state) == ST_NEW) atomic_store(&t->state, ST_CANCELLED); /* never queued */
    task_unref(t);
    f->t = NULL;
  }
  if (f->p) { pool_unref(f->p); f->p = NULL; }
  return 0;
}

/* ---- map batches ------------------------------------------------------------------- */

static void batch_unref(batch *b) {
  if (atomic_fetch_sub(&b->refs, 1) != 1) return;
  for (size_t i = 0; i < b->made; i++) task_unref(b->tasks[i]);
  free(b->tasks);
  if (b->efd >= 0) close(b->efd);
  free(b);
}

static batch *check_batch(lua_State *L, int idx) {
  map_ud *u = checkud(L, idx, UV_MAP, MAP_MT);
  if (!u->b) luaL_argerror(L, idx, "not a map batch");
  return u->b;
}

/* p:map_batch(n) -> a batch for n tasks | nil, errno. Its fd() is readable once all made
 * tasks have ended and every one was made. */
static int pool_map_batch(lua_State *L) {
  pool *p = check_pool(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, n >= 0 && (uint64_t)n < SIZE_MAX / sizeof(task *), 2, "bad count");
  map_ud *u = lua_newuserdatauv(L, sizeof *u, 1);
  u->b = NULL;
  setmt(L, UV_MAP);
  lua_pushvalue(L, 1);
  tether_setuv(L, -2);
  batch *b = calloc(1, sizeof *b);
  if (!b) return tether_fail(L, ENOMEM);
  b->tasks = malloc(((size_t)n ? (size_t)n : 1) * sizeof *b->tasks);
  if (!b->tasks) { free(b); return tether_fail(L, ENOMEM); }
  b->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (b->efd < 0) { int e = errno; free(b->tasks); free(b); return tether_fail(L, e); }
  atomic_init(&b->refs, 1);
  atomic_init(&b->remaining, (size_t)n + 1); /* +1 until every task is made: see done() */
  b->n = (size_t)n;
  b->p = p;
  atomic_fetch_add(&p->refs, 1); /* released in map_gc */
  u->b = b;
  if (n == 0) {
    b->sealed = 1;
    atomic_store(&b->remaining, 0);
    efd_write(b->efd);
  }
  return 1;
}

/* b:push(fn, list, from) -> next index to push (n + 1 when all are queued) | nil, index,
 * message when list[index] cannot be copied | nil, "closed". Queues list[from], ... as
 * long as the queue has room. */
static int map_push(lua_State *L) {
  batch *b = check_batch(L, 1);
  fnblob *fn = check_fn(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  lua_Integer from = luaL_checkinteger(L, 4);
  pool *p = b->p;
  luaL_argcheck(L, from >= 1 && (size_t)from == b->made + 1, 4, "out of order");
  /* Copy the arguments of a slice of tasks outside the lock, then queue them at once. */
  while (b->made < b->n) {
    pthread_mutex_lock(&p->mu);
    int closing = p->closing;
    size_t room = p->queued < p->cap ? p->cap - p->queued : 0;
    if (!room && !closing) { p->want_half = 1; space_check(p); }
    pthread_mutex_unlock(&p->mu);
    if (closing) { lua_pushnil(L); lua_pushliteral(L, "closed"); return 2; }
    if (!room) break;
    size_t k = b->n - b->made;
    if (k > room) k = room;
    if (k > 256) k = 256;
    size_t first = b->made;
    for (size_t i = 0; i < k; i++) {
      task *t = task_new(p, fn, -1);
      if (!t) return luaL_error(L, "pool.map: out of memory");
      t->b = b;
      t->index = first + i;
      b->tasks[b->made++] = t; /* owned by the batch from here */
      lua_rawgeti(L, 3, (lua_Integer)(first + i + 1));
      int bad;
      const char *err;
      if (copy_encode(L, lua_gettop(L), 1, &t->args, &bad, &err) < 0) {
        /* none of this slice was queued: the batch is never done (the caller gives up) */
        for (size_t j = first; j < b->made; j++) atomic_store(&b->tasks[j]->state, ST_CANCELLED);
        lua_pushnil(L);
        lua_pushinteger(L, (lua_Integer)(first + i + 1));
        lua_pushstring(L, err);
        return 3;
      }
      lua_pop(L, 1);
    }
    pthread_mutex_lock(&p->mu);
    for (size_t i = first; i < b->made; i++) {
      task *t = b->tasks[i];
      atomic_fetch_add(&b->refs, 1); /* each unfinished task holds the batch */
      atomic_store(&t->state, ST_QUEUED);
      atomic_fetch_add(&t->refs, 1);
      q_push(&p->q, t);
      p->queued++;
    }
    atomic_fetch_add(&p->submitted, b->made - first);
    space_check(p);
    wake(p, NULL);
    pthread_mutex_unlock(&p->mu);
  }
  if (b->made == b->n && !b->sealed) {
    b->sealed = 1;
    if (atomic_fetch_sub(&b->remaining, 1) == 1) {
      pthread_mutex_lock(&p->mu);
      efd_write(b->efd);
      pthread_mutex_unlock(&p->mu);
    }
  }
  lua_pushinteger(L, (lua_Integer)b->made + 1);
  return 1;
}

/* b:fd() -> the batch's eventfd.  b:done() -> true once every task has ended. */
static int map_fd(lua_State *L) { lua_pushinteger(L, check_batch(L, 1)->efd); return 1; }
static int map_done(lua_State *L) {
  batch *b = check_batch(L, 1);
  lua_pushboolean(L, b->made == b->n && atomic_load(&b->remaining) == 0);
  return 1;
}

/* b:cancel() -> how many queued tasks of the batch were cancelled. */
static int map_cancel(lua_State *L) {
  batch *b = check_batch(L, 1);
  pool *p = b->p;
  int n = 0;
  pthread_mutex_lock(&p->mu);
  for (size_t i = 0; i < b->made; i++) n += cancel_locked(p, b->tasks[i]);
  pthread_mutex_unlock(&p->mu);
  lua_pushinteger(L, n);
  return 1;
}

/* b:results(ordered) -> list of every task's first result (list[i] for the i-th input when
 * ordered, else in the order they ended) | nil, index, status, message, traceback, value
 * for the first task (in input order) that failed (status 2) or was cancelled (3). */
static int map_results(lua_State *L) {
  batch *b = check_batch(L, 1);
  int ordered = lua_toboolean(L, 2);
  for (size_t i = 0; i < b->made; i++) {
    int s = atomic_load(&b->tasks[i]->state);
    if (s != ST_DONE) {
      lua_pushnil(L);
      lua_pushinteger(L, (lua_Integer)i + 1);
      if (!FINAL(s)) { lua_pushinteger(L, 0); return 3; }
      int n = push_outcome(L, b->tasks[i], s);
      return 2 + n;
    }
  }
  lua_createtable(L, (int)b->made, 0);
  int t = lua_gettop(L);
  for (size_t i = 0; i < b->made; i++) {
    task *k = b->tasks[i];
    const char *err;
    int n = copy_decode(L, k->res.p, k->res.len, &k->res, &err);
    if (n < 0) return luaL_error(L, "pool: cannot rebuild the results: %s", err);
    if (n == 0) lua_pushnil(L);
    else if (n > 1) lua_pop(L, n - 1);
    lua_rawseti(L, t, (lua_Integer)(ordered ? i + 1 : k->seq + 1));
  }
  return 1;
}

static int map_gc(lua_State *L) {
  map_ud *u = checkud(L, 1, UV_MAP, MAP_MT);
  if (u->b) {
    batch *b = u->b;
    pool *p = b->p;
    u->b = NULL;
    pthread_mutex_lock(&p->mu);
    int fd = b->efd;
    b->efd = -1; /* unfinished tasks may still end: they must not write to it */
    pthread_mutex_unlock(&p->mu);
    if (fd >= 0) close(fd);
    batch_unref(b);
    pool_unref(p);
  }
  return 0;
}

/* ---- registration ------------------------------------------------------------------ */

static const luaL_Reg pool_methods[] = {
  {"ready", pool_ready}, {"ctl_fd", pool_ctl_fd}, {"space_fd", pool_space_fd},
  {"drain_ctl", pool_drain_ctl}, {"submit", pool_submit}, {"push", pool_push},
  {"stats", pool_stats}, {"close", pool_close}, {"cancel_all", pool_cancel_all},
  {"exited", pool_exited}, {"join", pool_join}, {"map_batch", pool_map_batch}, {NULL, NULL},
};

static const luaL_Reg future_methods[] = {
  {"_take", future_take}, {"_efd", future_efd}, {"_pollfd", future_pollfd},
  {"_state", future_state}, {"_cancel", future_cancel}, {"_ended", future_ended}, {NULL, NULL},
};

static const luaL_Reg map_methods[] = {
  {"push", map_push}, {"fd", map_fd}, {"done", map_done}, {"cancel", map_cancel},
  {"results", map_results}, {NULL, NULL},
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
  finish_type(L, base, base + 1, future_methods, future_gc);
  finish_type(L, base, base + 2, NULL, fn_gc);
  finish_type(L, base, base + 3, map_methods, map_gc);
  lua_pushvalue(L, core);
  setfuncs_uv(L, base, funcs);
  lua_settop(L, core);
}
