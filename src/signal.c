/* signal.c - signal delivery for tether.signal: the process-wide dispositions tether owns,
 * and one signal state per lua_State (a userdata with __gc, kept in the registry).
 *
 * Per lua_State: a slot in a fixed table (slots[]) with the set of signals that state
 * watches, a counter per signal and a non-blocking self-pipe. The one sigaction handler
 * (on_signal) walks the table without locks: for each live slot that watches the signal it
 * bumps the slot's counter and writes a byte to the slot's pipe (async-signal-safe: atomics
 * and write). So every lua_State watching a signal receives it, and one state draining its
 * counts never steals another's. A handler the host installed before tether is chained
 * (called after counting).
 *
 * Per signal, process-wide (under sig_lock): the disposition found before tether first
 * touched it (restored when no state watches or ignores it any more), and the handler to
 * chain. The disposition follows the states: some state watches -> on_signal; else some
 * state ignores -> SIG_IGN; else the original again. Closing a lua_State (its signal
 * state's __gc) drops its watches and ignores, so every disposition it changed goes back,
 * then waits until no handler still uses its slot before closing its pipe.
 *
 * While on_signal is installed anywhere, this library must stay mapped: the first install
 * pins it (tether_pin_library, RTLD_NODELETE). A signal the system refuses (sigaction
 * EINVAL: valgrind and qemu-user reserve real-time signals) fails for that signal alone.
 * Only signals named by the Lua layer are ever touched. */
#include "tether.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_STATES 64 /* lua_States using tether.signal at once in one process */
#define SIGSTATE_MT "tether.signalstate"
#define NWORDS ((NSIG + 63) / 64)

struct slot {
  atomic_int live;               /* the handler may use this slot */
  _Atomic uint64_t watch[NWORDS]; /* bit s: this state watches signal s */
  atomic_uint counts[NSIG];
  atomic_int pending;            /* some count may be non-zero */
  atomic_int pipe_w;             /* the handler writes here */
  int pipe_r;
  unsigned char ignoring[NSIG];  /* under sig_lock: this state asked for SIG_IGN */
  int used;                      /* under sig_lock: owned by a state */
};

static struct slot slots[MAX_STATES];
/* 1 + the highest slot ever made live: the handler walks no further. It only grows (a slot
 * index is reused, never moved), so a handler that read an older, smaller value misses
 * only slots that were not live yet when the signal came. */
static atomic_int slots_hw;
static atomic_int in_handler; /* handlers inside the slot walk right now */
static pthread_mutex_t sig_lock = PTHREAD_MUTEX_INITIALIZER;

/* Process-wide, under sig_lock (chained is read by the handler: written only while
 * on_signal is not installed for that signal and no handler runs). */
static struct sigaction original[NSIG]; /* as found before tether touched the signal */
static unsigned char touched[NSIG];
static unsigned char installed[NSIG];  /* on_signal is the disposition */
static struct sigaction chained[NSIG]; /* the host's handler to call after ours */

/* The signal state userdata: which slot this lua_State owns (-1: none yet). */
struct sigstate { int slot; };
static const char state_key = 'S'; /* registry[&state_key] = this state's sigstate */

static int watches(struct slot *s, int sig) {
  return (int)((atomic_load(&s->watch[sig / 64]) >> (sig % 64)) & 1);
}

static void on_signal(int sig, siginfo_t *info, void *uctx) {
  int saved = errno;
  atomic_fetch_add(&in_handler, 1); /* seq_cst: pairs with state_gc and quiesce */
  int hw = atomic_load(&slots_hw);
  for (int i = 0; i < hw; i++) {
    struct slot *s = &slots[i];
    if (!atomic_load(&s->live) || !watches(s, sig)) continue;
    atomic_fetch_add_explicit(&s->counts[sig], 1, memory_order_relaxed);
    atomic_store_explicit(&s->pending, 1, memory_order_release);
    int w = atomic_load_explicit(&s->pipe_w, memory_order_acquire);
    if (w >= 0) {
      unsigned char b = (unsigned char)sig;
      ssize_t r = write(w, &b, 1); /* a full pipe already wakes the reader */
      (void)r;
    }
  }
  /* Read inside the counted window: apply() changes chained[sig] only after quiesce. The
   * chained handler runs outside it, so one that never returns (siglongjmp) holds nothing. */
  struct sigaction c = chained[sig];
  atomic_fetch_sub(&in_handler, 1);
  if (sig == SIGCHLD) tether_reaper_wake(); /* reaper mode (reaper.c) */
  if (c.sa_flags & SA_SIGINFO) {
    if (c.sa_sigaction) c.sa_sigaction(sig, info, uctx);
  } else if (c.sa_handler != SIG_DFL && c.sa_handler != SIG_IGN && c.sa_handler != NULL) {
    c.sa_handler(sig);
  }
  errno = saved;
}

/* Waits until no handler is inside the slot walk: a slot or bit cleared before this call
 * is not used by any handler after it. Handlers are short and never block. */
static void quiesce(void) {
  while (atomic_load(&in_handler) > 0) sched_yield();
}

/* fork from any thread: the child gets a usable lock, no handler of another thread counted as
 * running (that thread does not exist in the child: quiesce would wait for ever), and its own
 * self-pipes, at the same fd numbers: sharing the parent's, the child would take the parent's
 * wake-ups. Counts caught for the parent are not the child's. */
static void fork_prepare(void) { pthread_mutex_lock(&sig_lock); }
static void fork_parent(void) { pthread_mutex_unlock(&sig_lock); }
static void fork_child(void) {
  pthread_mutex_init(&sig_lock, NULL);
  atomic_store(&in_handler, 0);
  for (int i = 0; i < MAX_STATES; i++) {
    struct slot *s = &slots[i];
    if (!s->used) continue;
    for (int k = 0; k < NSIG; k++) atomic_store(&s->counts[k], 0);
    atomic_store(&s->pending, 0);
    int p[2], w = atomic_load(&s->pipe_w);
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) continue; /* keeps the shared one: spurious wake-ups only */
    dup3(p[0], s->pipe_r, O_CLOEXEC);
    dup3(p[1], w, O_CLOEXEC);
    close(p[0]);
    close(p[1]);
  }
}
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void atfork_init(void) { pthread_atfork(fork_prepare, fork_parent, fork_child); }

static void lock(void) {
  pthread_once(&atfork_once, atfork_init);
  pthread_mutex_lock(&sig_lock);
}
static void unlock(void) { pthread_mutex_unlock(&sig_lock); }

/* Whether handler h lives in the standalone Lua interpreter (lua5.x, luajit): its SIGINT
 * handler only turns Ctrl-C into an "interrupted!" error, the default action of a script,
 * so it is not chained. Handlers of other hosts (nginx, C programs) are. */
static int in_interpreter(void (*h)(void)) {
  uintptr_t addr = (uintptr_t)h;
  FILE *f = fopen("/proc/self/maps", "re");
  if (!f) return 0;
  char line[4096];
  int found = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned long lo, hi;
    if (sscanf(line, "%lx-%lx", &lo, &hi) != 2 || addr < lo || addr >= hi) continue;
    const char *path = strchr(line, '/');
    if (path) {
      const char *base = strrchr(path, '/') + 1;
      found = strncmp(base, "lua", 3) == 0 && strstr(base, ".so") == NULL;
    }
    break;
  }
  fclose(f);
  return found;
}

static int is_function(const struct sigaction *sa) {
  if (sa->sa_flags & SA_SIGINFO) return sa->sa_sigaction != NULL;
  return sa->sa_handler != SIG_DFL && sa->sa_handler != SIG_IGN && sa->sa_handler != NULL;
}

static int is_ours(const struct sigaction *sa) {
  return (sa->sa_flags & SA_SIGINFO) && sa->sa_sigaction == on_signal;
}

/* Makes sig's disposition follow the states (lock held): some slot watches it -> on_signal;
 * else some slot ignores it -> SIG_IGN; else the original again. Returns 0 or an errno. */
static int apply(int sig) {
  int nwatch = 0, nign = 0;
  for (int i = 0; i < MAX_STATES; i++) {
    if (!slots[i].used) continue;
    if (watches(&slots[i], sig)) nwatch++;
    else if (slots[i].ignoring[sig]) nign++;
  }
  int fresh = !touched[sig];
  if (fresh && (nwatch || nign)) {
    if (sigaction(sig, NULL, &original[sig]) < 0) return errno;
    touched[sig] = 1;
  }
  if (nwatch) {
    if (installed[sig]) return 0;
    struct sigaction cur, sa;
    if (sigaction(sig, NULL, &cur) < 0) goto fail;
    quiesce(); /* a late handler of an earlier install may still be reading chained[sig] */
    memset(&chained[sig], 0, sizeof chained[sig]);
    if (is_function(&cur) && !is_ours(&cur) &&
        !in_interpreter((cur.sa_flags & SA_SIGINFO) ? (void (*)(void))cur.sa_sigaction
                                                    : (void (*)(void))cur.sa_handler))
      chained[sig] = cur;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    stack_t ss; /* run on the alternate stack only where the host set one up */
    if (sigaltstack(NULL, &ss) == 0 && !(ss.ss_flags & SS_DISABLE)) sa.sa_flags |= SA_ONSTACK;
    sigfillset(&sa.sa_mask);
    tether_pin_library(); /* a handler points into this library from now on */
    if (sigaction(sig, &sa, NULL) < 0) goto fail;
    installed[sig] = 1;
    return 0;
  }
  if (nign) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    if (sigaction(sig, &sa, NULL) < 0) return errno;
    installed[sig] = 0;
    return 0;
  }
  if (!touched[sig]) return 0;
  if (sigaction(sig, &original[sig], NULL) < 0) return errno;
  /* Let go entirely: what the host installs from now on is the next "original". */
  touched[sig] = 0;
  if (installed[sig]) {
    installed[sig] = 0;
    quiesce(); /* no handler reads chained[sig] any more */
    memset(&chained[sig], 0, sizeof chained[sig]);
  }
  return 0;
fail:;
  int err = errno;
  if (fresh) touched[sig] = 0; /* nothing changed: forget it */
  return err;
}

/* This lua_State's slot (lock held), claimed with its pipe on first use; NULL with errno. */
static struct slot *slot_of(struct sigstate *st) {
  if (st->slot >= 0) return &slots[st->slot];
  for (int i = 0; i < MAX_STATES; i++) {
    struct slot *s = &slots[i];
    if (s->used) continue;
    int p[2];
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) return NULL;
    memset(s->ignoring, 0, sizeof s->ignoring);
    for (int w = 0; w < NWORDS; w++) atomic_store(&s->watch[w], 0);
    for (int k = 0; k < NSIG; k++) atomic_store(&s->counts[k], 0);
    atomic_store(&s->pending, 0);
    s->pipe_r = p[0];
    atomic_store(&s->pipe_w, p[1]);
    s->used = 1;
    if (atomic_load(&slots_hw) < i + 1) atomic_store(&slots_hw, i + 1); /* under sig_lock */
    atomic_store(&s->live, 1);
    st->slot = i;
    return s;
  }
  errno = EMFILE; /* more lua_States than MAX_STATES use signals at once */
  return NULL;
}

static void set_watch(struct slot *s, int sig, int on) {
  uint64_t bit = (uint64_t)1 << (sig % 64);
  if (on) atomic_fetch_or(&s->watch[sig / 64], bit);
  else atomic_fetch_and(&s->watch[sig / 64], ~bit);
}

static struct sigstate *get_state(lua_State *L) {
  lua_pushlightuserdata(L, (void *)&state_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  struct sigstate *st = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (!st) luaL_error(L, "tether.signal: this lua_State has no signal state");
  return st;
}

static int check_sig(lua_State *L, int idx) {
  lua_Integer s = luaL_checkinteger(L, idx);
  luaL_argcheck(L, s > 0 && s < NSIG, idx, "signal number out of range");
  return (int)s;
}

/* What each call does to this state's marks for sig (lock held). */
enum op { OP_WATCH, OP_UNWATCH, OP_IGNORE, OP_RESET };

static int change(lua_State *L, enum op op) {
  int sig = check_sig(L, 1);
  struct sigstate *st = get_state(L);
  lock();
  int err = 0;
  struct slot *s = slot_of(st);
  if (!s) err = errno;
  else {
    int was_watch = watches(s, sig), was_ign = s->ignoring[sig];
    set_watch(s, sig, op == OP_WATCH);
    if (op != OP_UNWATCH) s->ignoring[sig] = op == OP_IGNORE;
    err = apply(sig);
    if (err) { /* put the marks back as they were */
      set_watch(s, sig, was_watch);
      s->ignoring[sig] = (unsigned char)was_ign;
      (void)apply(sig);
    } else if (op != OP_WATCH && was_watch) {
      quiesce(); /* a handler that saw the bit is done counting: drop what it counted */
      atomic_store(&s->counts[sig], 0);
    }
  }
  unlock();
  if (err) return tether_fail(L, err);
  lua_pushboolean(L, 1);
  return 1;
}

/* signal_watch(sig) -> true | nil, errno: this lua_State receives sig from now on (the
 * process-wide handler is installed when no state had it; a function the host had
 * installed is chained). EINVAL: the system refuses to let sig be caught. */
static int sig_watch(lua_State *L) { return change(L, OP_WATCH); }

/* signal_unwatch(sig) -> true | nil, errno: this state stops watching sig; when no state
 * watches or ignores it any more, the disposition found before tether is restored. */
static int sig_unwatch(lua_State *L) { return change(L, OP_UNWATCH); }

/* signal_reset(sig) -> true | nil, errno: undoes this state's watch and ignore of sig. */
static int sig_reset(lua_State *L) { return change(L, OP_RESET); }

/* signal_ignore(sig) -> true | nil, errno: this state stops watching sig and asks for
 * SIG_IGN (in effect while no state watches sig). */
static int sig_ignore(lua_State *L) { return change(L, OP_IGNORE); }

/* signal_ignored(sig) -> whether sig's disposition is SIG_IGN now. */
static int sig_ignored(lua_State *L) {
  int sig = check_sig(L, 1);
  struct sigaction cur;
  lua_pushboolean(L, sigaction(sig, NULL, &cur) == 0 && !(cur.sa_flags & SA_SIGINFO) &&
                       cur.sa_handler == SIG_IGN);
  return 1;
}

/* signal_take([t]) -> what this lua_State caught since the last take, or nil when nothing:
 * with a table t, t[1], t[2] = signum, count; t[3], t[4] = ... (the table reused by each
 * pump, no garbage per signal) and the number of pairs; without, {[signum] = count}. */
static int sig_take(lua_State *L) {
  struct sigstate *st = get_state(L);
  if (st->slot < 0) { lua_pushnil(L); return 1; }
  struct slot *s = &slots[st->slot];
  if (!atomic_exchange_explicit(&s->pending, 0, memory_order_acq_rel)) {
    lua_pushnil(L);
    return 1;
  }
  unsigned char buf[256];
  while (read(s->pipe_r, buf, sizeof buf) == (ssize_t)sizeof buf) {} /* a short read drained it */
  int into = lua_istable(L, 1);
  if (!into) lua_newtable(L);
  int t = into ? 1 : lua_gettop(L), k = 0;
  /* Only the signals this state watches can have counts: visit the set bits. A count left
   * by a signal the state stopped watching is dropped with it (stop() forgets it anyway). */
  for (int w = 0; w < NWORDS; w++) {
    uint64_t bits = atomic_load_explicit(&s->watch[w], memory_order_acquire);
    while (bits) {
      int sig = w * 64 + __builtin_ctzll(bits);
      bits &= bits - 1;
      if (sig <= 0 || sig >= NSIG) continue;
      unsigned n = atomic_exchange_explicit(&s->counts[sig], 0, memory_order_acq_rel);
      if (!n) continue;
      if (into) {
        lua_pushinteger(L, sig);
        lua_rawseti(L, t, 2 * k + 1);
        lua_pushinteger(L, n);
        lua_rawseti(L, t, 2 * k + 2);
      } else {
        lua_pushinteger(L, n);
        lua_rawseti(L, t, sig);
      }
      k++;
    }
  }
  if (!k) { lua_pushnil(L); return 1; }
  if (into) lua_pushinteger(L, k);
  return 1;
}

/* signal_fd() -> this lua_State's self-pipe read end (readable when a signal it watches was
 * caught) | nil, errno. */
static int sig_fd(lua_State *L) {
  struct sigstate *st = get_state(L);
  lock();
  struct slot *s = slot_of(st);
  int err = s ? 0 : errno;
  unlock();
  if (err) return tether_fail(L, err);
  lua_pushinteger(L, s->pipe_r);
  return 1;
}

/* The state's __gc (lua_close, or the registry entry replaced): every disposition this state
 * changed goes back, then its slot and pipe are freed once no handler uses them. */
static int state_gc(lua_State *L) {
  struct sigstate *st = luaL_checkudata(L, 1, SIGSTATE_MT);
  if (st->slot < 0) return 0;
  lock();
  struct slot *s = &slots[st->slot];
  for (int sig = 1; sig < NSIG; sig++) {
    if (!watches(s, sig) && !s->ignoring[sig]) continue;
    set_watch(s, sig, 0);
    s->ignoring[sig] = 0;
    (void)apply(sig); /* an error leaves the handler counting for nobody: harmless */
  }
  atomic_store(&s->live, 0);
  quiesce();
  int w = atomic_exchange(&s->pipe_w, -1);
  close(w);
  close(s->pipe_r);
  s->pipe_r = -1;
  s->used = 0;
  st->slot = -1;
  unlock();
  return 0;
}

uint64_t tether_signal_inherited(void) {
  uint64_t ignored = 0;
  lock();
  for (int sig = 1; sig < NSIG && sig <= 64; sig++) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    int ign;
    if (touched[sig]) {
      ign = !(original[sig].sa_flags & SA_SIGINFO) && original[sig].sa_handler == SIG_IGN;
    } else {
      struct sigaction cur;
      if (sigaction(sig, NULL, &cur) == 0) {
        ign = !(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == SIG_IGN;
      } else {
        /* glibc hides 32 and 33 (its own): ask the kernel. A process started by glibc's
         * posix_spawn (popen, system) may have them ignored, and tini passes that on. */
        unsigned long k[4] = {0, 0, 0, 0}; /* handler, flags, restorer, mask */
        ign = syscall(SYS_rt_sigaction, sig, NULL, k, (size_t)(NSIG / 8)) == 0 &&
              k[0] == (unsigned long)(uintptr_t)SIG_IGN;
      }
    }
    if (ign) ignored |= (uint64_t)1 << (sig - 1);
  }
  unlock();
  return ignored;
}

static const luaL_Reg sig_funcs[] = {
  {"signal_watch", sig_watch}, {"signal_unwatch", sig_unwatch}, {"signal_reset", sig_reset},
  {"signal_ignore", sig_ignore}, {"signal_ignored", sig_ignored}, {"signal_take", sig_take},
  {"signal_fd", sig_fd}, {NULL, NULL},
};

void tether_open_signal(lua_State *L) {
  /* One signal state per lua_State: a second luaopen of this library keeps the first. */
  lua_pushlightuserdata(L, (void *)&state_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  int have = lua_touserdata(L, -1) != NULL;
  lua_pop(L, 1);
  if (!have) {
    lua_pushlightuserdata(L, (void *)&state_key);
    struct sigstate *st = lua_newuserdatauv(L, sizeof *st, 0);
    st->slot = -1;
    if (luaL_newmetatable(L, SIGSTATE_MT)) {
      lua_pushcfunction(L, state_gc);
      lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
  }
  luaL_setfuncs(L, sig_funcs, 0);
}
