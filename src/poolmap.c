/* poolmap.c - tether.pool's map batches (tether.poolmap): the tasks of one pool:map call,
 * queued in slices as the queue has room, counted down to one eventfd wake-up when the last
 * ends, and their results gathered in input or completion order. */
#include "pool.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

void pool_batch_unref(batch *b) {
  if (atomic_fetch_sub(&b->refs, 1) != 1) return;
  for (size_t i = 0; i < b->made; i++) pool_task_unref(b->tasks[i]);
  free(b->tasks);
  if (b->efd >= 0) close(b->efd);
  free(b);
}

static batch *check_batch(lua_State *L, int idx) {
  map_ud *u = pool_checkud(L, idx, UV_MAP, MAP_MT);
  if (!u->b) luaL_argerror(L, idx, "not a map batch");
  return u->b;
}

/* p:map_batch(n) -> a batch for n tasks | nil, errno. Its fd() is readable once all made
 * tasks have ended and every one was made. */
int pool_map_batch(lua_State *L) {
  pool *p = pool_check(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, n >= 0 && (uint64_t)n < SIZE_MAX / sizeof(task *), 2, "bad count");
  map_ud *u = lua_newuserdatauv(L, sizeof *u, 1);
  u->b = NULL;
  pool_setmt(L, UV_MAP);
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
    tether_efd_write(b->efd);
  }
  return 1;
}

/* b:push(fn, list, from) -> next index to push (n + 1 when all are queued) | nil, index,
 * message when list[index] cannot be copied | nil, "closed". Queues list[from], ... as
 * long as the queue has room. */
static int map_push(lua_State *L) {
  batch *b = check_batch(L, 1);
  fnblob *fn = pool_check_fn(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  lua_Integer from = luaL_checkinteger(L, 4);
  pool *p = b->p;
  luaL_argcheck(L, from >= 1 && (size_t)from == b->made + 1, 4, "out of order");
  /* Copy the arguments of a slice of tasks outside the lock, then queue them at once. */
  while (b->made < b->n) {
    pthread_mutex_lock(&p->mu);
    int closing = p->closing;
    size_t room = p->queued < p->cap ? p->cap - p->queued : 0;
    if (!room && !closing) { p->want_half = 1; pool_space_check(p); }
    pthread_mutex_unlock(&p->mu);
    if (closing) { lua_pushnil(L); lua_pushliteral(L, "closed"); return 2; }
    if (!room) break;
    size_t k = b->n - b->made;
    if (k > room) k = room;
    if (k > 256) k = 256;
    size_t first = b->made;
    for (size_t i = 0; i < k; i++) {
      task *t = pool_task_new(p, fn, -1);
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
      pool_q_push(&p->q, t);
      p->queued++;
    }
    atomic_fetch_add(&p->submitted, b->made - first);
    pool_space_check(p);
    pool_wake(p, NULL);
    pthread_mutex_unlock(&p->mu);
  }
  if (b->made == b->n && !b->sealed) {
    b->sealed = 1;
    if (atomic_fetch_sub(&b->remaining, 1) == 1) {
      pthread_mutex_lock(&p->mu);
      tether_efd_write(b->efd);
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
  for (size_t i = 0; i < b->made; i++) n += pool_cancel_locked(p, b->tasks[i]);
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
      int n = pool_push_outcome(L, b->tasks[i], s);
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

int pool_map_gc(lua_State *L) {
  map_ud *u = pool_checkud(L, 1, UV_MAP, MAP_MT);
  if (u->b) {
    batch *b = u->b;
    pool *p = b->p;
    u->b = NULL;
    pthread_mutex_lock(&p->mu);
    int fd = b->efd;
    b->efd = -1; /* unfinished tasks may still end: they must not write to it */
    pthread_mutex_unlock(&p->mu);
    if (fd >= 0) close(fd);
    pool_batch_unref(b);
    pool_unref(p);
  }
  return 0;
}

const luaL_Reg pool_map_reg[] = {
  {"push", map_push}, {"fd", map_fd}, {"done", map_done}, {"cancel", map_cancel},
  {"results", map_results}, {NULL, NULL},
};
