/* reaper.c - reaper mode (tether.reaper) and the few process-wide knobs an init needs.
 *
 * Reaper mode reaps every child that exits, orphans included, with wait4(-1, WNOHANG)
 * (never __WALL: a tether child that has not reached execve is a clone child with exit
 * signal 0 and stays out of reach; orphans are always re-parented with SIGCHLD). It holds
 * the registry lock of children.c around the wait4 loop, and each pid it reaps is handed
 * to tether_child_stash: when it was one of tether's children its status and rusage wait
 * in the registry for its Process (try_wait), so no status is ever lost and no wait sees
 * ECHILD. The pidfd of such a process stays open and readable.
 *
 * How it learns of exits without blocking: SIGCHLD is watched by tether.signal (the Lua
 * layer), whose handler also calls tether_reaper_wake, which bumps an eventfd. That
 * eventfd is the reaper's pollable, and tether's own poll (tether_poll, sys.c) waits on it too,
 * so every tether wait reaps as soon as a child exits. The eventfd is created once and
 * kept for the life of the process (a handler may write to it at any time). */
#include "tether.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static atomic_int reaper_on;
static atomic_int wake_fd = -1;
static atomic_ulong n_reaped;   /* processes reaped that were not tether's */
static atomic_ulong n_stashed;  /* tether's children reaped here, status kept */

/* The pids of the last orphans reaped (not tether's children), oldest first, for an init's
 * per-pid log line (tether-init -w): under the registry lock. Older ones are dropped. */
#define RECENT_MAX 4096
static pid_t recent[RECENT_MAX];
static unsigned recent_first, recent_n;

int tether_reaper_on(void) {
  return atomic_load_explicit(&reaper_on, memory_order_relaxed);
}

void tether_reaper_wake(void) {
  int fd = atomic_load_explicit(&wake_fd, memory_order_relaxed);
  if (fd >= 0 && atomic_load_explicit(&reaper_on, memory_order_relaxed)) tether_efd_write(fd);
}

int tether_reaper_step(void) {
  int saved = errno, n = 0;
  int fd = atomic_load(&wake_fd);
  tether_efd_drain(fd); /* first: a SIGCHLD from now on makes it readable again */
  tether_children_lock();
  for (;;) {
    int st;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    pid_t pid = wait4(-1, &st, WNOHANG, &ru);
    if (pid > 0) {
      if (tether_child_stash(pid, st, &ru)) atomic_fetch_add(&n_stashed, 1);
      else {
        atomic_fetch_add(&n_reaped, 1);
        n++;
        recent[(recent_first + recent_n) % RECENT_MAX] = pid;
        if (recent_n < RECENT_MAX) recent_n++;
        else recent_first = (recent_first + 1) % RECENT_MAX;
      }
      continue;
    }
    if (pid < 0 && errno == EINTR) continue;
    break; /* 0: children left, none exited; ECHILD: no children at all */
  }
  tether_children_unlock();
  errno = saved;
  return n;
}

int tether_reaper_wake_fd(void) {
  int fd = atomic_load_explicit(&wake_fd, memory_order_relaxed);
  return fd >= 0 && tether_reaper_on() ? fd : -1;
}

/* reaper_start() -> true | nil, errno: reaper mode on (creating the wake-up eventfd once). */
static int reaper_start(lua_State *L) {
  if (atomic_load(&wake_fd) < 0) {
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0) return tether_fail(L, errno);
    int expected = -1;
    if (!atomic_compare_exchange_strong(&wake_fd, &expected, fd)) close(fd);
  }
  atomic_store(&reaper_on, 1);
  lua_pushboolean(L, 1);
  return 1;
}

/* reaper_stop(): reaper mode off. Statuses already kept for Process objects stay. */
static int reaper_stop(lua_State *L) {
  atomic_store(&reaper_on, 0);
  return 0;
}

/* reap() -> number of processes that were not tether's children reaped now (0 when
 * reaper mode is off: without it tether never waits for pid -1). Never blocks. */
static int reaper_reap(lua_State *L) {
  lua_pushinteger(L, tether_reaper_on() ? tether_reaper_step() : 0);
  return 1;
}

/* reaper_taken() -> {pid, ...}: the orphans reaped since the last call (by reap() or by a
 * tether wait), oldest first; at most the last RECENT_MAX. */
static int reaper_taken(lua_State *L) {
  pid_t *copy = lua_newuserdatauv(L, sizeof(pid_t) * RECENT_MAX, 0); /* no allocation under the lock */
  tether_children_lock();
  unsigned n = recent_n;
  for (unsigned j = 0; j < n; j++) copy[j] = recent[(recent_first + j) % RECENT_MAX];
  recent_first = (recent_first + n) % RECENT_MAX;
  recent_n = 0;
  tether_children_unlock();
  lua_createtable(L, (int)n, 0);
  for (unsigned j = 0; j < n; j++) { lua_pushinteger(L, copy[j]); lua_rawseti(L, -2, (int)j + 1); }
  return 1;
}

/* reaper_fd() -> the wake-up eventfd (readable after a SIGCHLD in reaper mode), or -1. */
static int reaper_fd(lua_State *L) {
  lua_pushinteger(L, atomic_load(&wake_fd));
  return 1;
}

/* reaper_stats() -> {enabled=, reaped=, stashed=}. */
static int reaper_stats(lua_State *L) {
  lua_createtable(L, 0, 3);
  lua_pushboolean(L, tether_reaper_on());
  lua_setfield(L, -2, "enabled");
  lua_pushinteger(L, (lua_Integer)atomic_load(&n_reaped));
  lua_setfield(L, -2, "reaped");
  lua_pushinteger(L, (lua_Integer)atomic_load(&n_stashed));
  lua_setfield(L, -2, "stashed");
  return 1;
}

/* subreaper() -> whether this process is a child subreaper (PR_GET_CHILD_SUBREAPER), or
 * nil, errno. set_subreaper(on) -> true | nil, errno. */
static int get_subreaper(lua_State *L) {
  int v = 0;
  if (prctl(PR_GET_CHILD_SUBREAPER, (unsigned long)&v, 0, 0, 0) < 0) return tether_fail(L, errno);
  lua_pushboolean(L, v != 0);
  return 1;
}

static int set_subreaper(lua_State *L) {
  int on = lua_toboolean(L, 1);
  if (prctl(PR_SET_CHILD_SUBREAPER, (unsigned long)on, 0, 0, 0) < 0) return tether_fail(L, errno);
  lua_pushboolean(L, 1);
  return 1;
}

/* set_pdeathsig(signum) -> true | nil, errno: this process gets signum when its parent
 * (thread) exits (0 clears it). */
static int set_pdeathsig(lua_State *L) {
  lua_Integer sig = luaL_checkinteger(L, 1);
  luaL_argcheck(L, sig >= 0 && sig < NSIG, 1, "signal number out of range");
  if (prctl(PR_SET_PDEATHSIG, (unsigned long)sig, 0, 0, 0) < 0) return tether_fail(L, errno);
  lua_pushboolean(L, 1);
  return 1;
}

/* tcgetpgrp(fd) -> the foreground process group of the terminal on fd, or nil, errno
 * (ENOTTY when fd is not this process's controlling terminal). */
static int get_tcpgrp(lua_State *L) {
  int fd = tether_checkfd(L, 1);
  pid_t g = tcgetpgrp(fd);
  if (g < 0) return tether_fail(L, errno);
  lua_pushinteger(L, g);
  return 1;
}

static const luaL_Reg reaper_funcs[] = {
  {"reaper_start", reaper_start}, {"reaper_stop", reaper_stop}, {"reap", reaper_reap},
  {"reaper_fd", reaper_fd}, {"reaper_taken", reaper_taken}, {"reaper_stats", reaper_stats}, {"subreaper", get_subreaper},
  {"set_subreaper", set_subreaper}, {"set_pdeathsig", set_pdeathsig}, {"tcgetpgrp", get_tcpgrp},
  {NULL, NULL},
};

void tether_open_reaper(lua_State *L) {
  luaL_setfuncs(L, reaper_funcs, 0);
}
