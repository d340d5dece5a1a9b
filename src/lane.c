/* lane.c - the bounded file-I/O lane: a process-wide set of C threads running disk syscalls
 * (fsops.c) for batches that the Lua layer submits, and the batch userdata (tether.lanebatch)
 * through which it collects results and waits.
 *
 * A batch is one call (fs.read_files, read_file, write_file, stat): n ops, a limit, an eventfd.
 * Lane threads take ops from the listed batches (round robin), never more than a batch's
 * limit at once, and record each completion in the batch's completion list. The Lua thread
 * never blocks on disk: it collects completions without blocking, and when there are none it
 * "arms" the batch for k more completions and waits on the eventfd through tether's waiter; the
 * lane thread that records the k-th writes the eventfd (one wake-up per wait, not per op).
 * A thread claims a few consecutive ops of a big batch at once (fewer lock round trips); it
 * still makes one syscall at a time, and a batch never has more than `limit` threads on it.
 *
 * Threads: created on demand, at most min(limit, n) - idle threads per batch (so a call never
 * adds more than limit threads), named tether-fs1..., started with every signal blocked
 * (pthread_sigmask around pthread_create), detached. A thread idle for LANE_IDLE_NS exits, so
 * back-to-back calls reuse threads and an idle program has none. Since threads may outlive a
 * lua_State, the first one pins this library (RTLD_NODELETE) against dlclose.
 *
 * A batch is refcounted (its userdata, plus each lane thread running one of its ops), so a
 * cancelled or collected batch is freed by whoever lets go last. */
#include "tether.h"
#include "lane.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define LANE_MAX 256                 /* most lane threads at once, and the largest limit */
#define LANE_IDLE_NS 200000000L      /* an idle lane thread exits after 0.2 s */
#define LANE_STACK ((size_t)256 << 10)
#define BATCH_MT "tether.lanebatch"
#define CLAIM_MAX 8                  /* most ops a thread claims from a batch at once */

enum { K_READ, K_STAT, K_WRITE };

struct batch {
  atomic_int refs;
  atomic_int cancel;       /* set by cancel(): long reads stop between chunks */
  int kind, limit, efd, follow;
  /* under lane.mu */
  int inflight, armed, listed; /* inflight: threads working on the batch */
  size_t n, next, ndone;   /* ops [next, n) are queued; order[0, ndone) completed */
  size_t wake_at;          /* armed: write the eventfd once ndone reaches this */
  struct batch *prev, *nextb;
  /* the Lua thread's */
  size_t ncollected;
  struct lane_op *ops;
  size_t *order;
  char *blob;              /* the paths (and a write's data) */
  struct stat *st;         /* K_STAT: the result */
  struct lane_wopts w;     /* K_WRITE */
};

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;        /* work listed, for idle threads */
  struct batch *head, *tail; /* batches with queued ops */
  int nthreads, nidle, nbusy;   /* nbusy: threads running an op */
  unsigned char slot[LANE_MAX]; /* name numbers in use */
} lane = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL, 0, 0, 0, {0} };

static void batch_free(struct batch *b) {
  if (b->ops && b->kind == K_READ)
    for (size_t i = 0; i < b->n; i++) lane_buf_free(b->ops[i].data, b->ops[i].slab);
  if (b->efd >= 0) close(b->efd);
  free(b->ops);
  free(b->order);
  free(b->blob);
  free(b->st);
  free(b);
}

static void batch_unref(struct batch *b) {
  if (atomic_fetch_sub(&b->refs, 1) == 1) batch_free(b);
}

/* List maintenance, under lane.mu. */
static void unlist(struct batch *b) {
  if (!b->listed) return;
  if (b->prev) b->prev->nextb = b->nextb; else lane.head = b->nextb;
  if (b->nextb) b->nextb->prev = b->prev; else lane.tail = b->prev;
  b->prev = b->nextb = NULL;
  b->listed = 0;
}

static void list_tail(struct batch *b) {
  b->prev = lane.tail;
  b->nextb = NULL;
  if (lane.tail) lane.tail->nextb = b; else lane.head = b;
  lane.tail = b;
  b->listed = 1;
}

/* Takes the next ops a thread may run, [*ip, *ip + *np) (round robin over batches under their
 * limit), under lane.mu; the thread holds a reference to the batch until they are recorded.
 * It claims up to CLAIM_MAX ops while the batch has plenty left for its other threads. */
static int pick(struct batch **bp, size_t *ip, size_t *np) {
  for (struct batch *b = lane.head; b; b = b->nextb) {
    if (b->inflight >= b->limit) continue;
    size_t k = (b->n - b->next) / (4 * (size_t)b->limit);
    if (k < 1) k = 1;
    if (k > CLAIM_MAX) k = CLAIM_MAX;
    *ip = b->next;
    *np = k;
    b->next += k;
    b->inflight++;
    lane.nbusy++;
    atomic_fetch_add(&b->refs, 1);
    unlist(b);
    if (b->next < b->n) list_tail(b);
    *bp = b;
    return 1;
  }
  return 0;
}

static int has_work(void) {
  for (struct batch *b = lane.head; b; b = b->nextb)
    if (b->inflight < b->limit) return 1;
  return 0;
}

static void run_op(struct batch *b, size_t i) {
  struct lane_op *op = &b->ops[i];
  switch (b->kind) {
  case K_READ: fsop_read(op, &b->cancel); break;
  case K_STAT: fsop_stat(op, b->st, b->follow); break;
  default: fsop_write(op, &b->w); break;
  }
}

static void *lane_main(void *arg) {
  int slot = (int)(intptr_t)arg;
  char name[16]; /* the kernel keeps 15 characters: "tether-fs256" fits */
  snprintf(name, sizeof name, "tether-fs%u", (unsigned)(slot + 1) % 1000u);
  pthread_setname_np(pthread_self(), name);
  pthread_mutex_lock(&lane.mu);
  for (;;) {
    struct batch *b;
    size_t i, k, ran = 0;
    if (pick(&b, &i, &k)) {
      pthread_mutex_unlock(&lane.mu);
      /* A cancelled batch's claimed ops are left undone (the Lua side marks them). */
      while (ran < k && (ran == 0 || !atomic_load_explicit(&b->cancel, memory_order_relaxed)))
        run_op(b, i + ran++);
      pthread_mutex_lock(&lane.mu);
      b->inflight--;
      lane.nbusy--;
      for (size_t j = 0; j < ran; j++) b->order[b->ndone++] = i + j;
      if (b->armed && b->ndone >= b->wake_at) {
        b->armed = 0;
        pthread_mutex_unlock(&lane.mu);
        tether_efd_write(b->efd);
        pthread_mutex_lock(&lane.mu);
      }
      batch_unref(b);
      continue;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_nsec += LANE_IDLE_NS;
    if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
    int r = 0;
    lane.nidle++;
    while (r != ETIMEDOUT && !has_work())
      r = pthread_cond_clockwait(&lane.cv, &lane.mu, CLOCK_MONOTONIC, &ts);
    lane.nidle--;
    if (r == ETIMEDOUT && !has_work()) break;
  }
  lane.slot[slot] = 0;
  lane.nthreads--;
  pthread_mutex_unlock(&lane.mu);
  lane_buf_thread_exit();
  return NULL;
}

/* A forked child has none of the parent's threads: start the lane afresh there. */
static void fork_prepare(void) { pthread_mutex_lock(&lane.mu); }
static void fork_parent(void) { pthread_mutex_unlock(&lane.mu); }
static void fork_child(void) {
  pthread_mutex_init(&lane.mu, NULL);
  pthread_cond_init(&lane.cv, NULL);
  lane.head = lane.tail = NULL;
  lane.nthreads = lane.nidle = lane.nbusy = 0;
  memset(lane.slot, 0, sizeof lane.slot);
}

static pthread_once_t lane_once = PTHREAD_ONCE_INIT;
static void lane_init(void) {
  tether_pin_library(); /* lane threads may outlive the lua_State that loaded this library */
  pthread_atfork(fork_prepare, fork_parent, fork_child);
}

/* Lists b and makes sure threads will run it: wakes idle threads, creates up to
 * min(limit, n) - free new ones, where free threads are those not running an op (idle, or
 * about to look for the next op: they will find b). So a call adds at most limit threads.
 * Returns 0, or an errno when the lane has no thread at all. */
static int lane_start(struct batch *b) {
  pthread_once(&lane_once, lane_init);
  int slots[LANE_MAX], ncreate = 0;
  pthread_mutex_lock(&lane.mu);
  list_tail(b);
  int want = b->n < (size_t)b->limit ? (int)b->n : b->limit;
  int wake = want < lane.nidle ? want : lane.nidle;
  int free_ = lane.nthreads - lane.nbusy;
  for (int k = 0; k < wake; k++) pthread_cond_signal(&lane.cv);
  for (int s = 0; s < LANE_MAX && ncreate < want - free_; s++) {
    if (lane.slot[s]) continue;
    lane.slot[s] = 1;
    slots[ncreate++] = s;
  }
  lane.nthreads += ncreate;
  pthread_mutex_unlock(&lane.mu);
  if (ncreate == 0) return 0;

  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, LANE_STACK);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old); /* the new threads inherit this mask */
  int err = 0, failed = 0;
  for (int k = 0; k < ncreate; k++) {
    pthread_t t;
    int rc = pthread_create(&t, &attr, lane_main, (void *)(intptr_t)slots[k]);
    if (rc) {
      err = rc;
      pthread_mutex_lock(&lane.mu);
      lane.slot[slots[k]] = 0;
      lane.nthreads--;
      pthread_mutex_unlock(&lane.mu);
      failed++;
    }
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  if (!failed) return 0;
  pthread_mutex_lock(&lane.mu);
  int none = lane.nthreads == 0;
  if (none) unlist(b);
  pthread_mutex_unlock(&lane.mu);
  return none ? err : 0;
}

/* ---- the batch userdata --------------------------------------------------------------- */

static struct batch *check_batch(lua_State *L) {
  struct batch **ud = luaL_checkudata(L, 1, BATCH_MT);
  if (!*ud) luaL_argerror(L, 1, "attempt to use a closed batch");
  return *ud;
}

/* Pushes a closed batch userdata, then allocates a batch of n ops with blob bytes of storage
 * and an eventfd. Returns NULL with errno set on failure (the userdata stays closed). */
static struct batch *batch_new(lua_State *L, int kind, size_t n, size_t blob) {
  struct batch **ud = lua_newuserdatauv(L, sizeof *ud, 0);
  *ud = NULL;
  luaL_setmetatable(L, BATCH_MT);
  struct batch *b = calloc(1, sizeof *b);
  if (!b) { errno = ENOMEM; return NULL; }
  atomic_init(&b->refs, 1);
  atomic_init(&b->cancel, 0);
  b->kind = kind;
  b->n = n;
  b->limit = 1;
  b->efd = -1;
  b->ops = calloc(n ? n : 1, sizeof *b->ops);
  b->order = malloc((n ? n : 1) * sizeof *b->order);
  b->blob = malloc(blob ? blob : 1);
  if (kind == K_STAT) b->st = calloc(1, sizeof *b->st);
  if (!b->ops || !b->order || !b->blob || (kind == K_STAT && !b->st)) {
    batch_free(b);
    errno = ENOMEM;
    return NULL;
  }
  b->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (b->efd < 0) {
    int e = errno;
    batch_free(b);
    errno = e;
    return NULL;
  }
  *ud = b;
  return b;
}

/* Starts a filled batch (at the top of the stack, under `extra` more values) or fails it. */
static int start_or_fail(lua_State *L, struct batch *b) {
  int err = lane_start(b);
  if (err) return tether_fail(L, err);
  return 0;
}

/* Checks a path argument: a string without NUL. Returns NULL (and sets *why) otherwise. */
static const char *path_of(lua_State *L, int idx, size_t *len, const char **why) {
  if (lua_type(L, idx) != LUA_TSTRING) {
    *why = lua_typename(L, lua_type(L, idx));
    return NULL;
  }
  const char *s = lua_tolstring(L, idx, len);
  if (memchr(s, 0, *len)) { *why = NULL; return NULL; }
  return s;
}

/* lane_read(paths, limit) -> batch, datas (a table sized for n), n | nil, errno |
 * false, index, problem when paths[index] is not a string ("number") or has a NUL (nil).
 * Copies the paths: the lane never reads Lua memory. */
static int lane_read(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer limit = luaL_checkinteger(L, 2);
  luaL_argcheck(L, limit >= 1 && limit <= LANE_MAX, 2, "limit out of range");
  size_t n = lua_rawlen(L, 1), total = 0;
  if (n > (size_t)INT32_MAX) return luaL_argerror(L, 1, "too many paths");
  for (size_t i = 0; i < n; i++) {
    size_t len;
    const char *why = NULL;
    lua_rawgeti(L, 1, (lua_Integer)i + 1);
    if (!path_of(L, -1, &len, &why)) {
      lua_pushboolean(L, 0);
      lua_pushinteger(L, (lua_Integer)i + 1);
      if (why) lua_pushstring(L, why); else lua_pushnil(L);
      return 3;
    }
    total += len + 1;
    lua_pop(L, 1);
  }
  struct batch *b = batch_new(L, K_READ, n, total);
  if (!b) return tether_fail(L, errno);
  b->limit = (int)limit;
  char *p = b->blob;
  for (size_t i = 0; i < n; i++) {
    size_t len;
    lua_rawgeti(L, 1, (lua_Integer)i + 1);
    const char *s = lua_tolstring(L, -1, &len);
    memcpy(p, s, len + 1);
    b->ops[i].path = p;
    p += len + 1;
    lua_pop(L, 1);
  }
  lua_createtable(L, (int)n, 0);
  lua_pushinteger(L, (lua_Integer)n);
  if (n > 0 && start_or_fail(L, b)) return 2;
  return 3;
}

/* Copies one path argument into a new batch of one op (blob: path, then `extra` bytes). */
static struct batch *single(lua_State *L, int kind, size_t extra, const char **bad) {
  size_t len;
  const char *why = NULL;
  const char *s = path_of(L, 1, &len, &why);
  if (!s) {
    *bad = why ? why : "contains a NUL byte";
    return NULL;
  }
  if (len + 1 + extra < extra) { *bad = "too long"; return NULL; }
  struct batch *b = batch_new(L, kind, 1, len + 1 + extra);
  if (!b) return NULL;
  memcpy(b->blob, s, len + 1);
  b->ops[0].path = b->blob;
  return b;
}

/* lane_stat(path, follow) -> batch | nil, errno. */
static int lane_stat(lua_State *L) {
  const char *bad = NULL;
  int follow = lua_toboolean(L, 2);
  struct batch *b = single(L, K_STAT, 0, &bad);
  if (bad) return luaL_argerror(L, 1, bad);
  if (!b) return tether_fail(L, errno);
  b->follow = follow;
  if (start_or_fail(L, b)) return 2;
  return 1;
}

/* lane_write(path, data, atomic, sync, mode|nil) -> batch | nil, errno. The data is copied. */
static int lane_write(lua_State *L) {
  size_t dlen;
  const char *data = luaL_checklstring(L, 2, &dlen);
  int atomic = lua_toboolean(L, 3), sync = lua_toboolean(L, 4);
  int has_mode = !lua_isnoneornil(L, 5);
  lua_Integer mode = has_mode ? luaL_checkinteger(L, 5) : 0;
  luaL_argcheck(L, mode >= 0 && mode <= 07777, 5, "mode out of range");
  const char *bad = NULL;
  struct batch *b = single(L, K_WRITE, dlen, &bad);
  if (bad) return luaL_argerror(L, 1, bad);
  if (!b) return tether_fail(L, errno);
  char *copy = b->blob + strlen(b->blob) + 1;
  memcpy(copy, data, dlen);
  b->ops[0].data = copy;
  b->ops[0].len = dlen;
  b->w.atomic = atomic;
  b->w.sync = sync;
  b->w.has_mode = has_mode;
  b->w.mode = (mode_t)mode;
  if (start_or_fail(L, b)) return 2;
  return 1;
}

static const char *type_name(mode_t m) {
  if (S_ISREG(m)) return "file";
  if (S_ISDIR(m)) return "dir";
  if (S_ISLNK(m)) return "link";
  if (S_ISFIFO(m)) return "fifo";
  if (S_ISSOCK(m)) return "socket";
  if (S_ISCHR(m)) return "char";
  if (S_ISBLK(m)) return "block";
  return "unknown";
}

static void set_int(lua_State *L, const char *k, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, k);
}

static void set_time(lua_State *L, const char *k, struct timespec ts) {
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec * 1e-9);
  lua_setfield(L, -2, k);
}

static void push_stat(lua_State *L, const struct stat *st) {
  lua_createtable(L, 0, 15);
  lua_pushstring(L, type_name(st->st_mode));
  lua_setfield(L, -2, "type");
  set_int(L, "size", (lua_Integer)st->st_size);
  set_int(L, "mode", (lua_Integer)(st->st_mode & 07777));
  set_time(L, "mtime", st->st_mtim);
  set_time(L, "atime", st->st_atim);
  set_time(L, "ctime", st->st_ctim);
  set_int(L, "uid", (lua_Integer)st->st_uid);
  set_int(L, "gid", (lua_Integer)st->st_gid);
  set_int(L, "nlink", (lua_Integer)st->st_nlink);
  set_int(L, "ino", (lua_Integer)st->st_ino);
  set_int(L, "dev", (lua_Integer)st->st_dev);
  set_int(L, "rdev", (lua_Integer)st->st_rdev);
  set_int(L, "blocks", (lua_Integer)st->st_blocks);
  set_int(L, "blksize", (lua_Integer)st->st_blksize);
}

/* batch:collect(datas, fails) -> number of ops collected so far (all of them when it equals
 * the batch's size). Moves new completions into datas (read: datas[i] = the bytes or false;
 * stat: datas[1] = the stat table; write: datas[1] = true) and appends i, errno, step to the
 * list fails for each failed op. Never blocks. */
static int batch_collect(lua_State *L) {
  struct batch *b = check_batch(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TTABLE);
  pthread_mutex_lock(&lane.mu);
  size_t from = b->ncollected, to = b->ndone;
  pthread_mutex_unlock(&lane.mu);
  lua_Integer nf = (lua_Integer)lua_rawlen(L, 3);
  for (size_t k = from; k < to; k++) {
    size_t i = b->order[k];
    struct lane_op *op = &b->ops[i];
    if (op->err) {
      lua_pushboolean(L, 0);
      lua_rawseti(L, 2, (lua_Integer)i + 1);
      lua_pushinteger(L, (lua_Integer)i + 1);
      lua_rawseti(L, 3, ++nf);
      lua_pushinteger(L, op->err);
      lua_rawseti(L, 3, ++nf);
      lua_pushstring(L, op->errop);
      lua_rawseti(L, 3, ++nf);
    } else if (b->kind == K_READ) {
      lua_pushlstring(L, op->data ? op->data : "", op->len);
      lane_buf_free(op->data, op->slab);
      op->data = NULL;
      lua_rawseti(L, 2, (lua_Integer)i + 1);
    } else if (b->kind == K_STAT) {
      push_stat(L, b->st);
      lua_rawseti(L, 2, 1);
    } else {
      lua_pushboolean(L, 1);
      lua_rawseti(L, 2, 1);
    }
    b->ncollected = k + 1;
  }
  lua_pushinteger(L, (lua_Integer)b->ncollected);
  return 1;
}

/* batch:arm([k]) -> true when there is nothing to collect: fd() becomes readable once k more
 * ops (default 1; fewer when fewer are left) have completed, so the caller may wait on it;
 * false when collect() has something (or all done). */
static int batch_arm(lua_State *L) {
  struct batch *b = check_batch(L);
  lua_Integer k = luaL_optinteger(L, 2, 1);
  if (k < 1) k = 1;
  pthread_mutex_lock(&lane.mu);
  int wait = b->ndone == b->ncollected && b->ndone < b->n;
  if (wait) {
    b->armed = 1;
    b->wake_at = b->ndone + ((size_t)k < b->n - b->ndone ? (size_t)k : b->n - b->ndone);
  }
  pthread_mutex_unlock(&lane.mu);
  lua_pushboolean(L, wait);
  return 1;
}

/* batch:fd() -> the batch's eventfd, to wait on for reading after arm(). */
static int batch_fd(lua_State *L) {
  lua_pushinteger(L, check_batch(L)->efd);
  return 1;
}

/* batch:drain(): resets the eventfd after a wait. */
static int batch_drain(lua_State *L) {
  tether_efd_drain(check_batch(L)->efd);
  return 0;
}

/* Stops handing b's queued ops to threads; returns how many were ever handed out. */
static size_t cancel(struct batch *b) {
  atomic_store(&b->cancel, 1);
  pthread_mutex_lock(&lane.mu);
  unlist(b);
  size_t started = b->next;
  b->next = b->n;
  b->armed = 0;
  pthread_mutex_unlock(&lane.mu);
  return started;
}

/* batch:cancel() -> number of ops that had started: queued ops never run (their results stay
 * nil), long reads in progress stop; ops in progress may still complete and be collected. */
static int batch_cancel(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)cancel(check_batch(L)));
  return 1;
}

/* batch:close() (also __gc): cancels what has not started and lets the batch go; lane threads
 * still running one of its ops free it when they finish. Idempotent. */
static int batch_close(lua_State *L) {
  struct batch **ud = luaL_checkudata(L, 1, BATCH_MT);
  struct batch *b = *ud;
  if (b) {
    *ud = NULL;
    cancel(b);
    batch_unref(b);
  }
  return 0;
}

/* lane_stats() -> threads, idle: the lane's threads now, and how many of them wait for work. */
static int lane_stats(lua_State *L) {
  pthread_mutex_lock(&lane.mu);
  int n = lane.nthreads, idle = lane.nidle;
  pthread_mutex_unlock(&lane.mu);
  lua_pushinteger(L, n);
  lua_pushinteger(L, idle);
  return 2;
}

static const luaL_Reg batch_methods[] = {
  {"collect", batch_collect}, {"arm", batch_arm}, {"fd", batch_fd}, {"drain", batch_drain},
  {"cancel", batch_cancel}, {"close", batch_close}, {NULL, NULL},
};

static const luaL_Reg lane_funcs[] = {
  {"lane_read", lane_read}, {"lane_stat", lane_stat}, {"lane_write", lane_write},
  {"lane_stats", lane_stats}, {NULL, NULL},
};

void tether_open_lane(lua_State *L) {
  if (luaL_newmetatable(L, BATCH_MT)) {
    luaL_newlib(L, batch_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, batch_close);
    lua_setfield(L, -2, "__gc");
#if LUA_VERSION_NUM >= 504
    lua_pushcfunction(L, batch_close);
    lua_setfield(L, -2, "__close");
#endif
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, lane_funcs, 0);
  lua_pushinteger(L, LANE_MAX);
  lua_setfield(L, -2, "lane_max");
  lua_pushnumber(L, (lua_Number)LANE_IDLE_NS * 1e-9);
  lua_setfield(L, -2, "lane_idle");
}
