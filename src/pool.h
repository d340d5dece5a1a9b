/* pool.h - tether.pool's private C types, shared by its four files, one per object:
 *   pool.c        the pool (tether.pool): queue, wake-ups, close/join/__gc, registration
 *   poolworker.c  the worker thread and its lua_State
 *   pooltask.c    tasks, their futures (tether.future) and task functions (tether.poolfn)
 *   poolmap.c     map batches (tether.poolmap)
 *
 * Task states move QUEUED -> RUNNING -> DONE | FAILED, or NEW | QUEUED -> CANCELLED, by
 * atomic compare-and-swap: whoever moves a task to a final state does its bookkeeping
 * (eventfd, batch count). "lock" below is the pool's mutex (pool->mu). */
#ifndef TETHER_POOL_H
#define TETHER_POOL_H

#include "copy.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>

#define POOL_MT "tether.pool"
#define FUTURE_MT "tether.future"
#define FN_MT "tether.poolfn"
#define MAP_MT "tether.poolmap"

#define EFD_CACHE 32 /* a pool's cache of drained future eventfds */

enum { ST_NEW, ST_QUEUED, ST_RUNNING, ST_DONE, ST_FAILED, ST_CANCELLED };
#define FINAL(s) ((s) >= ST_DONE)

typedef struct fnblob {
  atomic_int refs;
  lua_Integer id;  /* unique for the life of the process: the workers' cache key */
  int is_name;     /* data is "module.function" */
  size_t len;
  char data[];
} fnblob;

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

/* Every Lua function of the pool files has the four metatables as upvalues: checking and
 * setting a type costs no registry lookup by name (the hot path of submit and wait). */
enum { UV_POOL = 1, UV_FUTURE, UV_FN, UV_MAP };

/* pool.c */
void *pool_checkud(lua_State *L, int idx, int uv, const char *tname); /* raises naming idx */
void pool_setmt(lua_State *L, int uv);       /* the metatable at upvalue uv onto the top value */
pool *pool_check(lua_State *L, int idx);     /* the pool of a handle; raises when closed */
void pool_unref(pool *p);                    /* frees p at the last reference */
void pool_space_check(pool *p);              /* lock held: keeps space_fd's level right */
void pool_wake(pool *p, worker *w);          /* lock held: wakes w, or any idle worker (NULL) */

/* poolworker.c */
void *pool_worker_main(void *w);             /* a worker thread (pthread_create) */

/* pooltask.c */
void pool_fn_unref(fnblob *f);
fnblob *pool_check_fn(lua_State *L, int idx);
int pool_fn(lua_State *L);                   /* core.pool_fn */
int pool_fn_gc(lua_State *L);
void pool_q_push(tqueue *q, task *t);        /* lock held, as for the two below */
void pool_q_unlink(task *t);
task *pool_q_pop(tqueue *q);
task *pool_task_new(pool *p, fnblob *fn, int pin);
void pool_task_unref(task *t);
void pool_task_ended(task *t);               /* after a worker or canceller ended it */
int pool_cancel_locked(pool *p, task *t);    /* lock held: 1 when it cancelled t */
int pool_push_outcome(lua_State *L, task *t, int s);
int pool_future_gc(lua_State *L);
extern const luaL_Reg pool_future_reg[];     /* the future methods */

/* poolmap.c */
void pool_batch_unref(batch *b);
int pool_map_batch(lua_State *L);            /* p:map_batch */
int pool_map_gc(lua_State *L);
extern const luaL_Reg pool_map_reg[];        /* the batch methods */

#endif
