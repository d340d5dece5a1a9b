/* sync.c - the weighted semaphore (tether.semaphore), Go's x/sync/semaphore in C.
 *
 * A tether_sem is process-wide, refcounted and behind its own mutex, so userdata for the same
 * semaphore may live in several lua_States on several threads (tether_sem_push). Blocked
 * acquires queue FIFO as waiter objects (tether.semwaiter), each with its own eventfd that is
 * written once when the waiter is granted: its lua_State waits on that fd through tether's
 * waiter (lua/tether/sync.lua), so a grant from any thread wakes exactly the right coroutine and
 * none is ever lost. Grants go strictly in queue order: a big waiter at the front holds back
 * smaller ones behind it (no starvation), as in Go.
 *
 * The semaphore's own pollfd (made on first use) is readable while try_acquire(1) would
 * succeed: capacity left and nobody queued. */
#include "tether.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define SEMW_MT "tether.semwaiter"

enum { W_QUEUED, W_GRANTED, W_DONE };

struct semw {
  tether_sem *s;
  lua_Integer w;
  int state;                 /* under s->mu */
  int efd;
  struct semw *prev, *next;
};

struct tether_sem {
  atomic_int refs;
  pthread_mutex_t mu;
  lua_Integer size, cur;
  struct semw *head, *tail;
  int efd, efd_set;          /* the pollfd (-1 until asked for) and whether it is readable */
};

static void sem_unref(tether_sem *s) {
  if (atomic_fetch_sub(&s->refs, 1) != 1) return;
  pthread_mutex_destroy(&s->mu);
  if (s->efd >= 0) close(s->efd);
  free(s);
}

void tether_sem_retain(tether_sem *s) { atomic_fetch_add(&s->refs, 1); }
void tether_sem_release(tether_sem *s) { sem_unref(s); }

/* Keeps the pollfd readable exactly while a try_acquire(1) would succeed. Under s->mu. */
static void update_pollfd(tether_sem *s) {
  if (s->efd < 0) return;
  int want = s->head == NULL && s->cur < s->size;
  if (want && !s->efd_set) {
    tether_efd_write(s->efd);
    s->efd_set = 1;
  } else if (!want && s->efd_set) {
    tether_efd_drain(s->efd);
    s->efd_set = 0;
  }
}

static void unlink_waiter(tether_sem *s, struct semw *q) {
  if (q->prev) q->prev->next = q->next; else s->head = q->next;
  if (q->next) q->next->prev = q->prev; else s->tail = q->prev;
  q->prev = q->next = NULL;
}

/* Grants waiters from the front while the front one fits. Under s->mu. */
static void notify(tether_sem *s) {
  struct semw *q;
  while ((q = s->head) != NULL && s->size - s->cur >= q->w) {
    s->cur += q->w;
    unlink_waiter(s, q);
    q->state = W_GRANTED;
    tether_efd_write(q->efd);
  }
  update_pollfd(s);
}

/* ---- userdata ------------------------------------------------------------------------- */

tether_sem *tether_sem_test(lua_State *L, int idx) {
  tether_sem **ud = luaL_testudata(L, idx, TETHER_SEM_MT);
  return ud ? *ud : NULL;
}

static tether_sem *check_sem(lua_State *L) {
  tether_sem **ud = luaL_checkudata(L, 1, TETHER_SEM_MT);
  return *ud;
}

/* A weight argument: nil means 1; else an integer >= 1 (an integral float is fine). */
static lua_Integer check_weight(lua_State *L, int idx, const char *fname) {
  if (lua_isnoneornil(L, idx)) return 1;
  if (lua_type(L, idx) != LUA_TNUMBER) luaL_error(L, "%s: weight must be a positive integer", fname);
  lua_Number d = lua_tonumber(L, idx);
  if (!(d >= 1 && d <= 9007199254740992.0) || floor(d) != d)
    luaL_error(L, "%s: weight must be a positive integer", fname);
  return (lua_Integer)d;
}

/* try_acquire([w]) -> true when w units were free and nobody waits (then they are held), else
 * false; never blocks. A weight above the size gives false. */
static int sem_try_acquire(lua_State *L) {
  tether_sem *s = check_sem(L);
  lua_Integer w = check_weight(L, 2, "semaphore.try_acquire");
  pthread_mutex_lock(&s->mu);
  int ok = s->head == NULL && s->size - s->cur >= w;
  if (ok) {
    s->cur += w;
    update_pollfd(s);
  }
  pthread_mutex_unlock(&s->mu);
  lua_pushboolean(L, ok);
  return 1;
}

/* release([w]): gives back w units, granting queued waiters in order. Raises when more is
 * released than is held. */
static int sem_release(lua_State *L) {
  tether_sem *s = check_sem(L);
  lua_Integer w = check_weight(L, 2, "semaphore.release");
  pthread_mutex_lock(&s->mu);
  if (w > s->cur) {
    pthread_mutex_unlock(&s->mu);
    return luaL_error(L, "semaphore.release: released more than held");
  }
  s->cur -= w;
  notify(s);
  pthread_mutex_unlock(&s->mu);
  return 0;
}

/* _enqueue(w) -> true when w units were taken at once (nobody queued, enough free), else a
 * waiter queued at the back (granted(), cancel(), fd()), or nil, errno. w must be <= size. */
static int sem_enqueue(lua_State *L) {
  tether_sem *s = check_sem(L);
  lua_Integer w = check_weight(L, 2, "semaphore.acquire");
  luaL_argcheck(L, w <= s->size, 2, "weight exceeds the size");
  pthread_mutex_lock(&s->mu);
  if (s->head == NULL && s->size - s->cur >= w) {
    s->cur += w;
    update_pollfd(s);
    pthread_mutex_unlock(&s->mu);
    lua_pushboolean(L, 1);
    return 1;
  }
  pthread_mutex_unlock(&s->mu);
  struct semw *q = lua_newuserdatauv(L, sizeof *q, 0);
  q->s = NULL;
  q->state = W_DONE;
  q->prev = q->next = NULL;
  q->w = w;
  q->efd = -1;
  luaL_setmetatable(L, SEMW_MT);
  q->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (q->efd < 0) return tether_fail(L, errno);
  atomic_fetch_add(&s->refs, 1);
  q->s = s;
  pthread_mutex_lock(&s->mu);
  if (s->head == NULL && s->size - s->cur >= w) {
    s->cur += w;            /* freed up meanwhile: granted already */
    q->state = W_GRANTED;
    tether_efd_write(q->efd);
  } else {
    q->state = W_QUEUED;
    q->prev = s->tail;
    if (s->tail) s->tail->next = q; else s->head = q;
    s->tail = q;
  }
  update_pollfd(s);
  pthread_mutex_unlock(&s->mu);
  return 1;
}

/* size() -> the semaphore's size.  held() -> units held now.  waiters() -> queued acquires. */
static int sem_size(lua_State *L) {
  tether_sem *s = check_sem(L);
  lua_pushinteger(L, s->size);
  return 1;
}

static int sem_held(lua_State *L) {
  tether_sem *s = check_sem(L);
  pthread_mutex_lock(&s->mu);
  lua_Integer cur = s->cur;
  pthread_mutex_unlock(&s->mu);
  lua_pushinteger(L, cur);
  return 1;
}

static int sem_waiters(lua_State *L) {
  tether_sem *s = check_sem(L);
  int n = 0;
  pthread_mutex_lock(&s->mu);
  for (struct semw *q = s->head; q; q = q->next) n++;
  pthread_mutex_unlock(&s->mu);
  lua_pushinteger(L, n);
  return 1;
}

/* pollfd() -> an eventfd readable while try_acquire(1) would succeed (made on first call), or
 * -1 when none could be made.  events() -> "r".  timeout() -> nil (no deadline). */
static int sem_pollfd(lua_State *L) {
  tether_sem *s = check_sem(L);
  pthread_mutex_lock(&s->mu);
  if (s->efd < 0) {
    s->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    s->efd_set = 0;
    update_pollfd(s);
  }
  int fd = s->efd;
  pthread_mutex_unlock(&s->mu);
  lua_pushinteger(L, fd);
  return 1;
}

static int sem_events(lua_State *L) {
  check_sem(L);
  lua_pushliteral(L, "r");
  return 1;
}

static int sem_timeout(lua_State *L) {
  check_sem(L);
  lua_pushnil(L);
  return 1;
}

/* _ready() -> whether try_acquire(1) would succeed now (for tether.wait_any; takes nothing). */
static int sem_ready(lua_State *L) {
  tether_sem *s = check_sem(L);
  pthread_mutex_lock(&s->mu);
  int ok = s->head == NULL && s->cur < s->size;
  pthread_mutex_unlock(&s->mu);
  lua_pushboolean(L, ok);
  return 1;
}

static int sem_tostring(lua_State *L) {
  tether_sem *s = check_sem(L);
  pthread_mutex_lock(&s->mu);
  lua_Integer cur = s->cur;
  pthread_mutex_unlock(&s->mu);
  lua_pushfstring(L, "tether.semaphore (%d of %d held)", (int)cur, (int)s->size);
  return 1;
}

static int sem_gc(lua_State *L) {
  tether_sem **ud = luaL_checkudata(L, 1, TETHER_SEM_MT);
  if (*ud) {
    sem_unref(*ud);
    *ud = NULL;
  }
  return 0;
}

/* Methods missing from the table (acquire, written in Lua) come from lua/tether/sync.lua:
 * a state that got a semaphore from another thread loads it on first use. */
static int sem_lazy_index(lua_State *L) {
  lua_getglobal(L, "package");
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "loaded");
    if (lua_istable(L, -1)) {
      lua_getfield(L, -1, "tether.sync");
      int loaded = !lua_isnil(L, -1);
      lua_pop(L, 1);
      if (!loaded) {
        lua_getglobal(L, "require");
        lua_pushliteral(L, "tether.sync");
        lua_call(L, 1, 0);
      }
    }
  }
  lua_settop(L, 2);
  lua_rawget(L, 1);
  return 1;
}

static const luaL_Reg sem_methods[] = {
  {"try_acquire", sem_try_acquire}, {"release", sem_release}, {"_enqueue", sem_enqueue},
  {"size", sem_size}, {"held", sem_held}, {"waiters", sem_waiters},
  {"pollfd", sem_pollfd}, {"events", sem_events}, {"timeout", sem_timeout},
  {"_ready", sem_ready}, {NULL, NULL},
};

/* Pushes this state's semaphore metatable, creating it on first use. */
static void sem_metatable(lua_State *L) {
  if (luaL_newmetatable(L, TETHER_SEM_MT)) {
    luaL_newlib(L, sem_methods);
    lua_newtable(L);
    lua_pushcfunction(L, sem_lazy_index);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, sem_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, sem_tostring);
    lua_setfield(L, -2, "__tostring");
  }
}

void tether_sem_push(lua_State *L, tether_sem *s) {
  tether_sem **ud = lua_newuserdatauv(L, sizeof *ud, 0);
  *ud = NULL;
  sem_metatable(L);
  lua_setmetatable(L, -2);
  atomic_fetch_add(&s->refs, 1);
  *ud = s;
}

/* sem_new(n) -> a new semaphore of size n (n >= 1, checked by the Lua layer). */
static int sync_sem_new(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 1, 1, "size must be a positive integer");
  tether_sem *s = calloc(1, sizeof *s);
  if (!s) return luaL_error(L, "not enough memory");
  atomic_init(&s->refs, 0);
  pthread_mutex_init(&s->mu, NULL);
  s->size = n;
  s->efd = -1;
  tether_sem_push(L, s);
  return 1;
}

/* sem_is(v) -> whether v is a semaphore userdata. */
static int sync_sem_is(lua_State *L) {
  lua_pushboolean(L, tether_sem_test(L, 1) != NULL);
  return 1;
}

/* sem_methods() -> this state's method table of semaphores (lua/tether/sync.lua adds to it). */
static int sync_sem_methods(lua_State *L) {
  sem_metatable(L);
  lua_getfield(L, -1, "__index");
  return 1;
}

/* ---- waiters -------------------------------------------------------------------------- */

static struct semw *check_waiter(lua_State *L) {
  struct semw *q = luaL_checkudata(L, 1, SEMW_MT);
  if (!q->s) luaL_argerror(L, 1, "attempt to use a closed waiter");
  return q;
}

/* waiter:granted() -> true once the units were granted (the caller holds them from then on). */
static int semw_granted(lua_State *L) {
  struct semw *q = check_waiter(L);
  pthread_mutex_lock(&q->s->mu);
  int g = q->state == W_GRANTED;
  if (g) q->state = W_DONE;
  pthread_mutex_unlock(&q->s->mu);
  lua_pushboolean(L, g);
  return 1;
}

/* Gives up a waiter: leaves the queue (waking those behind when it was the front), or gives
 * back units granted but not taken. Under nothing; takes s->mu. */
static void semw_cancel_(struct semw *q) {
  tether_sem *s = q->s;
  pthread_mutex_lock(&s->mu);
  if (q->state == W_QUEUED) {
    int front = s->head == q;
    unlink_waiter(s, q);
    if (front && s->size > s->cur) notify(s);
    else update_pollfd(s);
  } else if (q->state == W_GRANTED) {
    s->cur -= q->w;
    notify(s);
  }
  q->state = W_DONE;
  pthread_mutex_unlock(&s->mu);
}

/* waiter:cancel(): as Go's Acquire on a done context: the units are not taken. */
static int semw_cancel(lua_State *L) {
  semw_cancel_(check_waiter(L));
  return 0;
}

/* waiter:fd() -> the eventfd that becomes readable when the waiter is granted. */
static int semw_fd(lua_State *L) {
  lua_pushinteger(L, check_waiter(L)->efd);
  return 1;
}

/* waiter:close() (also __gc): cancels unless taken, closes the fd. Idempotent. */
static int semw_close(lua_State *L) {
  struct semw *q = luaL_checkudata(L, 1, SEMW_MT);
  if (q->s) {
    semw_cancel_(q);
    sem_unref(q->s);
    q->s = NULL;
  }
  if (q->efd >= 0) {
    close(q->efd);
    q->efd = -1;
  }
  return 0;
}

static const luaL_Reg semw_methods[] = {
  {"granted", semw_granted}, {"cancel", semw_cancel}, {"fd", semw_fd}, {"close", semw_close},
  {NULL, NULL},
};

static const luaL_Reg sync_funcs[] = {
  {"sem_new", sync_sem_new}, {"sem_methods", sync_sem_methods}, {"sem_is", sync_sem_is}, {NULL, NULL},
};

void tether_open_sync(lua_State *L) {
  sem_metatable(L);
  lua_pop(L, 1);
  if (luaL_newmetatable(L, SEMW_MT)) {
    luaL_newlib(L, semw_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, semw_close);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, sync_funcs, 0);
}
