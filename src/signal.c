/* signal.c - signal delivery for tether.signal. One sigaction handler bumps an atomic
 * counter per signal and writes a byte to a non-blocking self-pipe; the Lua layer drains
 * the counts and delivers to channels. A handler the host installed before tether is
 * chained (called after counting). The disposition found before tether first touched a
 * signal is kept and restored when tether lets go of it. Only signals named by the Lua
 * layer are ever touched. */
#include "tether.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static atomic_uint counts[NSIG];
static atomic_int pending_any;
static int pipe_r = -1, pipe_w = -1;
static pthread_mutex_t sig_lock = PTHREAD_MUTEX_INITIALIZER;
/* fork.c takes and releases this lock around fork() (tether.h). */
void tether_signal_lock(void) { pthread_mutex_lock(&sig_lock); }
void tether_signal_unlock(void) { pthread_mutex_unlock(&sig_lock); }

static struct sigaction original[NSIG]; /* as found before tether touched the signal */
static unsigned char touched[NSIG];
static unsigned char watching[NSIG];
static struct sigaction chained[NSIG];  /* the host's handler to call after ours */

static void on_signal(int sig, siginfo_t *info, void *uctx) {
  int saved = errno;
  atomic_fetch_add_explicit(&counts[sig], 1, memory_order_relaxed);
  if (sig == SIGCHLD) tether_reaper_wake(); /* reaper mode (reaper.c) */
  atomic_store_explicit(&pending_any, 1, memory_order_release);
  if (pipe_w >= 0) {
    unsigned char b = (unsigned char)sig;
    ssize_t r = write(pipe_w, &b, 1); /* a full pipe already wakes the reader */
    (void)r;
  }
  const struct sigaction *c = &chained[sig];
  if (c->sa_flags & SA_SIGINFO) {
    if (c->sa_sigaction) c->sa_sigaction(sig, info, uctx);
  } else if (c->sa_handler != SIG_DFL && c->sa_handler != SIG_IGN && c->sa_handler != NULL) {
    c->sa_handler(sig);
  }
  errno = saved;
}

static int check_sig(lua_State *L, int idx) {
  lua_Integer s = luaL_checkinteger(L, idx);
  luaL_argcheck(L, s > 0 && s < NSIG, idx, "signal number out of range");
  return (int)s;
}

static void touch(int sig) {
  if (!touched[sig]) {
    sigaction(sig, NULL, &original[sig]);
    touched[sig] = 1;
  }
}

static int ensure_pipe(void) {
  if (pipe_r >= 0) return 0;
  int p[2];
  if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) return -1;
  pipe_r = p[0];
  pipe_w = p[1];
  return 0;
}

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

/* signal_watch(sig) -> true | nil, errno: tether's handler catches sig from now on; the
 * handler in place before (if a function) is chained. */
static int sig_watch(lua_State *L) {
  int sig = check_sig(L, 1);
  pthread_mutex_lock(&sig_lock);
  int err = 0;
  if (!watching[sig]) {
    touch(sig);
    struct sigaction cur, sa;
    if (ensure_pipe() < 0 || sigaction(sig, NULL, &cur) < 0) err = errno;
    else {
      memset(&chained[sig], 0, sizeof chained[sig]);
      if (is_function(&cur) && !((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_signal) &&
          !in_interpreter((cur.sa_flags & SA_SIGINFO) ? (void (*)(void))cur.sa_sigaction
                                                      : (void (*)(void))cur.sa_handler))
        chained[sig] = cur;
      memset(&sa, 0, sizeof sa);
      sa.sa_sigaction = on_signal;
      sa.sa_flags = SA_SIGINFO | SA_RESTART;
      stack_t ss; /* run on the alternate stack only where the host set one up */
      if (sigaltstack(NULL, &ss) == 0 && !(ss.ss_flags & SS_DISABLE)) sa.sa_flags |= SA_ONSTACK;
      sigfillset(&sa.sa_mask);
      if (sigaction(sig, &sa, NULL) < 0) err = errno;
      else watching[sig] = 1;
    }
  }
  pthread_mutex_unlock(&sig_lock);
  if (err) return tether_fail(L, err);
  lua_pushboolean(L, 1);
  return 1;
}

/* Puts back the disposition found before tether touched sig. */
static int restore(int sig) {
  if (!touched[sig]) return 0;
  if (sigaction(sig, &original[sig], NULL) < 0) return errno;
  /* Let go entirely: what the host installs from now on is the next "original". */
  touched[sig] = 0;
  watching[sig] = 0;
  memset(&chained[sig], 0, sizeof chained[sig]);
  return 0;
}

/* signal_unwatch(sig) / signal_reset(sig) -> true | nil, errno: restores the disposition
 * found before tether first touched sig (a no-op for an untouched signal). */
static int sig_restore(lua_State *L) {
  int sig = check_sig(L, 1);
  pthread_mutex_lock(&sig_lock);
  int err = restore(sig);
  pthread_mutex_unlock(&sig_lock);
  if (err) return tether_fail(L, err);
  lua_pushboolean(L, 1);
  return 1;
}

/* signal_ignore(sig) -> true | nil, errno: sets SIG_IGN (remembering the original). */
static int sig_ignore(lua_State *L) {
  int sig = check_sig(L, 1);
  pthread_mutex_lock(&sig_lock);
  touch(sig);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_IGN;
  int err = sigaction(sig, &sa, NULL) < 0 ? errno : 0;
  if (!err) { watching[sig] = 0; memset(&chained[sig], 0, sizeof chained[sig]); }
  pthread_mutex_unlock(&sig_lock);
  if (err) return tether_fail(L, err);
  lua_pushboolean(L, 1);
  return 1;
}

/* signal_ignored(sig) -> whether sig's disposition is SIG_IGN now. */
static int sig_ignored(lua_State *L) {
  int sig = check_sig(L, 1);
  struct sigaction cur;
  lua_pushboolean(L, sigaction(sig, NULL, &cur) == 0 && !(cur.sa_flags & SA_SIGINFO) &&
                       cur.sa_handler == SIG_IGN);
  return 1;
}

/* signal_take() -> {[signum] = count, ...} of signals caught since the last call, or nil
 * when none (no syscall in that case). Drains the self-pipe. */
static int sig_take(lua_State *L) {
  if (!atomic_exchange_explicit(&pending_any, 0, memory_order_acq_rel)) {
    lua_pushnil(L);
    return 1;
  }
  unsigned char buf[256];
  while (read(pipe_r, buf, sizeof buf) == (ssize_t)sizeof buf) {} /* a short read drained it */
  lua_newtable(L);
  int any = 0;
  for (int s = 1; s < NSIG; s++) {
    unsigned n = atomic_exchange_explicit(&counts[s], 0, memory_order_acq_rel);
    if (n) { lua_pushinteger(L, n); lua_rawseti(L, -2, s); any = 1; }
  }
  if (!any) { lua_pop(L, 1); lua_pushnil(L); }
  return 1;
}

/* signal_fd() -> the self-pipe's read end (readable when a signal was caught), or -1. */
static int sig_fd(lua_State *L) {
  pthread_mutex_lock(&sig_lock);
  int err = ensure_pipe() < 0 ? errno : 0;
  pthread_mutex_unlock(&sig_lock);
  if (err) return tether_fail(L, err);
  lua_pushinteger(L, pipe_r);
  return 1;
}

static const luaL_Reg sig_funcs[] = {
  {"signal_watch", sig_watch}, {"signal_unwatch", sig_restore}, {"signal_reset", sig_restore},
  {"signal_ignore", sig_ignore}, {"signal_ignored", sig_ignored}, {"signal_take", sig_take},
  {"signal_fd", sig_fd}, {NULL, NULL},
};

void tether_open_signal(lua_State *L) {
  luaL_setfuncs(L, sig_funcs, 0);
}
