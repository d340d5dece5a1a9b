/* process.c - spawn (clone with CLONE_VM|CLONE_VFORK|CLONE_PIDFD), pidfd-backed processes
 * (tether.process) and non-blocking reaping with wait4. Each child is recorded in the
 * registry of children.c (which also reaps those released without wait). Never
 * waitpid(-1) here.
 *
 * Children start as "clone children" (exit signal 0): until execve, which makes the
 * exit signal SIGCHLD again, a host's waitpid(-1) cannot take them and a failed exec
 * sends the host no SIGCHLD. tether waits with __WALL; the pidfd becomes readable at exit.
 *
 * The child guard (guard_children): a host whose SIGCHLD handler reaps with waitpid(-1)
 * (nginx's workers) would take the status of tether's children, whichever thread started
 * them. With the guard on, SIGCHLD stays blocked in the thread that turned it on (the
 * host's event loop; other threads of such hosts block it already), so the host's handler
 * never runs while it is on; tether reaps its own children through their pidfds.
 *
 * Relay mode (relay.c) runs the same child path (tether_child_main, spawn.h) under an
 * intermediate; the Process then holds a tether_relay instead of a pid table entry. */
#include "spawn.h"
#include "children.h"
#include "rlimit.h" /* cmd.rlimits and cmd.umask (rlimit.c) */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

extern char **environ;

/* ---- the process object ------------------------------------------------------------ */

typedef struct {
  pid_t pid;       /* -1 until spawned */
  int pidfd;       /* -1 when none (old kernel, reaped or released) */
  int owned;       /* spawned by tether: reaped in the background when collected */
  int reaped;      /* the status below is final */
  int released;    /* handed to the background reaper */
  int status;
  struct rusage ru;
  struct child_rec *rec; /* NULL once reaped or released, or when not our child */
  tether_relay *relay;   /* relay mode: the intermediate holding the command (relay.c) */
  int lost;              /* relay mode: the intermediate died first; lost_status is its status */
  int lost_status;
} tproc;

static tproc *check_proc(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, TETHER_PROC_MT);
}

static tproc *new_proc(lua_State *L) {
  tproc *p = lua_newuserdatauv(L, sizeof *p, 0);
  memset(p, 0, sizeof *p);
  p->pid = -1;
  p->pidfd = -1;
  luaL_setmetatable(L, TETHER_PROC_MT);
  return p;
}

/* ---- the child guard ------------------------------------------------------------------ */

/* Per thread, as signal masks are: nginx's event loop and its pool threads each have their
 * own. on: the guard is wanted in this thread. applied: the pid in which SIGCHLD was blocked
 * for it (a fork child, e.g. an nginx worker forked after init_by_lua, starts with a mask
 * nginx resets: the guard is applied again there). ours: SIGCHLD was unblocked before, so
 * turning the guard off may unblock it; a thread that had it blocked (nginx's pool threads)
 * keeps it blocked whatever happens. */
static _Thread_local struct { int on, ours; pid_t applied; } guard TETHER_TLS_IE;

static void guard_apply(void) {
  pid_t me = getpid();
  if (guard.applied == me) return;
  sigset_t chld, before;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  pthread_sigmask(SIG_BLOCK, &chld, &before);
  guard.ours = !sigismember(&before, SIGCHLD);
  guard.applied = me;
}

/* Called before every spawn: a guard wanted in this thread is in force (re-applied after
 * a fork). */
static void guard_refresh(void) {
  if (guard.on) guard_apply();
}

/* guard_children(on [, lazy]) -> previous setting (of this thread). See the file comment:
 * on blocks SIGCHLD in the calling thread (the host's event loop thread) until the guard is
 * turned off; lazy defers that to this thread's next spawn (set_waiter in nginx's
 * init_by_lua, which runs in the master: its workers get the guard, the master nothing).
 * Off unblocks SIGCHLD only if the guard blocked it, in this thread of this process. */
static int proc_guard_children(lua_State *L) {
  int on = lua_toboolean(L, 1), lazy = lua_toboolean(L, 2);
  lua_pushboolean(L, guard.on);
  if (on) {
    guard.on = 1;
    if (!lazy) guard_apply();
  } else if (guard.on) {
    if (guard.applied == getpid() && guard.ours) {
      sigset_t chld;
      sigemptyset(&chld);
      sigaddset(&chld, SIGCHLD);
      pthread_sigmask(SIG_UNBLOCK, &chld, NULL);
    }
    guard.on = guard.ours = 0;
    guard.applied = 0;
  }
  return 1;
}

/* ---- spawn --------------------------------------------------------------------------- */

static const char *const step_names[] = { "", "setsid", "setpgid", "pdeathsig", "chdir", "dup2",
                                          "close", "setgroups", "setgid", "setuid", "exec",
                                          "tcsetpgrp", "relay", "pty", "cgroup",
                                          "setrlimit" };

/* Whether clone(CLONE_VM) really shares memory. It does on Linux; emulators such as
 * valgrind turn it into a fork, and then the child's report needs a pipe. Probed once. */
static atomic_int vm_shared = -1;

NO_ASAN static int probe_main(void *arg) {
  *(volatile int *)arg = 1;
  _exit(0);
}

static int memory_is_shared(void) {
  int v = atomic_load(&vm_shared);
  if (v >= 0) return v;
  static char stack[4096] __attribute__((aligned(64)));
  volatile int flag = 0;
  pid_t pid = clone(probe_main, stack + sizeof stack, CLONE_VM | CLONE_VFORK, (void *)&flag);
  if (pid > 0) {
    int st;
    while (waitpid(pid, &st, __WALL) < 0 && errno == EINTR) {}
  }
  v = flag == 1;
  atomic_store(&vm_shared, v);
  return v;
}

/* The child side, after the dup2s: fd `fd` must reach the program in blocking mode (tether
 * keeps its own pipe ends O_NONBLOCK, and a shared open file description would hand the
 * flag to the child). A pipe or FIFO is reopened through /proc/self/fd, which gives the
 * child an open file description of its own (opened O_NONBLOCK so that a pipe without a
 * writer cannot block the open, then made blocking); anything else, or without /proc,
 * has the flag cleared in place. Async-signal-safe: fcntl, fstat, open, dup2, close. */
NO_ASAN static void child_make_blocking(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || !(fl & O_NONBLOCK)) return;
  struct stat st;
  if (fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode)) {
    char path[32] = "/proc/self/fd/";
    char digits[12];
    int n = 0, len = 14;
    unsigned v = (unsigned)fd;
    do { digits[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) path[len++] = digits[--n];
    path[len] = 0;
    int nf = open(path, (fl & O_ACCMODE) | O_NONBLOCK | O_CLOEXEC);
    if (nf >= 0) {
      if (fcntl(nf, F_SETFL, fl & ~O_NONBLOCK) == 0 && dup2(nf, fd) == fd) { close(nf); return; }
      close(nf);
    }
  }
  fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
}

/* Every handled or ignored signal back to SIG_DFL: a handler of the parent must never
 * run on this shared memory, and the child starts with default dispositions. Also run by
 * relay mode's intermediate (relay.c). */
NO_ASAN void tether_child_reset_signals(const struct child_args *a) {
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  struct sigaction ign; /* inherit_signals: what the process was started with, as tini hands it */
  memset(&ign, 0, sizeof ign);
  ign.sa_handler = SIG_IGN;
  for (int s = 1; s < NSIG; s++) {
    struct sigaction old;
    if (s == SIGKILL || s == SIGSTOP) continue;
    if (a && a->inherit_sigs && s <= 64 && (a->ign >> (s - 1)) & 1) {
      if (sigaction(s, &ign, NULL) < 0 && errno == EINVAL) { /* glibc's 32, 33: the raw call */
        unsigned long k[4] = {(unsigned long)(uintptr_t)SIG_IGN, 0, 0, 0};
        syscall(SYS_rt_sigaction, s, k, NULL, (size_t)(NSIG / 8));
      }
    } else if (sigaction(s, NULL, &old) == 0) {
      /* SIGCHLD's SA_NOCLDWAIT too: the relay intermediate must see its command's status */
      if (old.sa_handler != SIG_DFL || (s == SIGCHLD && (old.sa_flags & SA_NOCLDWAIT))) sigaction(s, &dfl, NULL);
    } else if (errno == EINVAL) {
      /* glibc keeps 32 and 33 for itself and refuses them: set SIG_DFL with the raw
       * syscall (an all-zero kernel sigaction is SIG_DFL, no flags, empty mask). */
      unsigned long zero[4] = {0, 0, 0, 0};
      syscall(SYS_rt_sigaction, s, zero, NULL, (size_t)(NSIG / 8));
    }
  }
}

/* The child side, run by both spawn modes (relay.c runs it under its intermediate). Only
 * async-signal-safe calls; ids are set with raw syscalls so glibc does not try to
 * broadcast them to the parent's threads (which share this memory). */
NO_ASAN int tether_child_main(void *arg) {
  struct child_args *a = arg;
  int step;

  tether_child_reset_signals(a);
  /* containment: into its own cgroup first, so nothing the command does runs outside */
  if (a->cgroup_procs >= 0 && tether_cgroup_enter(a->cgroup_procs) < 0) { step = STEP_CGROUP; goto fail; }
  if (a->setsid && setsid() < 0) { step = STEP_SETSID; goto fail; }
  /* pty: the new session's controlling terminal, before the dup2s renumber fds */
  if (a->ctty >= 0 && ioctl(a->ctty, TIOCSCTTY, 0) < 0) { step = STEP_PTY; goto fail; }
  if (a->pgid >= 0 && setpgid(0, a->pgid) < 0) { step = STEP_SETPGID; goto fail; }
  if (a->dir && chdir(a->dir) < 0) { step = STEP_CHDIR; goto fail; }

  /* stdio and extra files. Pass 1 moves every source that a lower target would overwrite
   * above all sources and targets; pass 2 dup2s in order. Swaps (1<->2) survive. */
  int next = (a->max_src_fd + 1 > a->nfds) ? a->max_src_fd + 1 : a->nfds; /* (proc_spawn refused a source of INT_MAX) */
  if (a->errpipe >= 0 && a->errpipe < next) { /* keep it out of the way of the targets */
    int nf = fcntl(a->errpipe, F_DUPFD_CLOEXEC, next);
    if (nf < 0) { step = STEP_DUP2; goto fail; }
    a->errpipe = nf;
    next = nf + 1;
  }
  for (int i = 0; i < a->nfds; i++) {
    if (a->fds[i] >= 0 && a->fds[i] < i) {
      int nf = fcntl(a->fds[i], F_DUPFD_CLOEXEC, next);
      if (nf < 0) { step = STEP_DUP2; goto fail; }
      a->fds[i] = nf;
      next = nf + 1;
    }
  }
  for (int i = 0; i < a->nfds; i++) {
    if (a->fds[i] < 0) {
      close(i);
    } else if (a->fds[i] == i) {
      if (fcntl(i, F_SETFD, 0) < 0) { step = STEP_DUP2; goto fail; }
    } else if (dup2(a->fds[i], i) < 0) {
      step = STEP_DUP2; goto fail;
    }
  }
  for (int i = 0; i < a->nfds; i++) /* every handed fd in blocking mode (issue 13) */
    if (a->fds[i] >= 0) child_make_blocking(i);
  /* The terminal on the child's stdin gives its foreground to the child's group. All
   * signals are still blocked here, so SIGTTOU cannot stop a background caller. */
  if (a->foreground && tcsetpgrp(0, getpgrp()) < 0) { step = STEP_TCSETPGRP; goto fail; }
  /* Nothing else is inherited, whatever the host left without O_CLOEXEC. */
  if (syscall(SYS_close_range, (unsigned)a->nfds, ~0U, CLOSE_RANGE_CLOEXEC) < 0) {
    struct rlimit rl; /* kernel < 5.11: mark each possible fd */
    unsigned max_fd = (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 65536) ? (unsigned)rl.rlim_cur : 65536;
    for (unsigned fd = (unsigned)a->nfds; fd < max_fd; fd++) fcntl((int)fd, F_SETFD, FD_CLOEXEC);
  }

  /* cmd.rlimits and cmd.umask: after the fds are in place (a low nofile would refuse the
   * dup2s), before the ids change (root may still raise a hard limit). */
  if (tether_apply_child_limits(&a->limits) < 0) { step = STEP_SETRLIMIT; goto fail; }
  if (a->set_groups && syscall(SYS_setgroups, (size_t)a->ngroups, a->groups) < 0) { step = STEP_SETGROUPS; goto fail; }
  if (a->set_gid && syscall(SYS_setgid, a->gid) < 0) { step = STEP_SETGID; goto fail; }
  if (a->set_uid && syscall(SYS_setuid, a->uid) < 0) { step = STEP_SETUID; goto fail; }
  /* After the ids: changing them clears the parent-death signal. */
  if (a->pdeathsig) {
    if (prctl(PR_SET_PDEATHSIG, (unsigned long)a->pdeathsig) < 0) { step = STEP_PDEATHSIG; goto fail; }
    if (getppid() != a->parent_pid) kill(getpid(), a->pdeathsig); /* the parent already died */
  }

  sigset_t empty;
  sigemptyset(&empty);
  sigprocmask(SIG_SETMASK, a->inherit_sigs ? &a->mask : &empty, NULL);
  execve(a->path, a->argv, a->envp);
  step = STEP_EXEC;
fail:
  a->err = errno;
  a->step = step;
  if (a->errpipe >= 0) {
    int report[2] = { a->err, step };
    while (write(a->errpipe, report, sizeof report) < 0 && errno == EINTR) {}
  }
  _exit(127);
}

/* The relay-mode spawn: the same child_args, run by tether_child_main under relay.c's
 * intermediate. Returns what proc_spawn returns. */
static int spawn_relayed(lua_State *L, struct child_args *a) {
  tproc *p = new_proc(L); /* the object exists before the child does */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int inherit_env = a->envp == NULL;
  if (inherit_env) { tether_env_share(); a->envp = environ; } /* (env.c: reads go on) */
  tether_relay *r = NULL;
  int rc = tether_relay_spawn(a, &r);
  int e = errno;
  if (inherit_env) tether_env_unshare();
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc < 0) {
    lua_pushnil(L);
    if (a->err) {
      lua_pushinteger(L, a->err);
      lua_pushstring(L, step_names[a->step]);
    } else {
      lua_pushinteger(L, e);
      lua_pushstring(L, a->step == STEP_RELAY ? "relay" : "clone");
    }
    return 3;
  }
  p->pid = tether_relay_pid(r);
  p->owned = 1;
  p->relay = r;
  return 1;
}

/* The clone that starts a command (both modes: relay.c's intermediate calls it too):
 * tether_child_main(a) on stack_top, sharing memory, the caller suspended until execve or
 * _exit, exit signal 0, its pidfd written to *pidfd. Async-signal-safe. */
NO_ASAN pid_t tether_clone_child(struct child_args *a, char *stack_top, int *pidfd) {
  return clone(tether_child_main, stack_top, CLONE_VM | CLONE_VFORK | CLONE_PIDFD, a, pidfd);
}

/* A NULL-terminated char* array from the list at t[field] (strings only), in memory
 * owned by a userdata left on the stack. Raises naming the field on a bad element. */
static char **string_list(lua_State *L, int t, const char *field, int *count) {
  lua_getfield(L, t, field);
  if (lua_isnil(L, -1)) { lua_pop(L, 1); return NULL; }
  if (!lua_istable(L, -1)) luaL_error(L, "spawn: %s must be a list", field);
  int list = lua_gettop(L);
  if (lua_rawlen(L, list) >= (size_t)INT_MAX) luaL_error(L, "spawn: %s is too long", field);
  int n = (int)lua_rawlen(L, list);
  char **v = lua_newuserdatauv(L, sizeof *v * ((size_t)n + 1), 0);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, list, i + 1);
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    if (!s || lua_type(L, -1) != LUA_TSTRING || strlen(s) != len)
      luaL_error(L, "spawn: %s[%d] must be a string without NUL", field, i + 1);
    v[i] = (char *)s; /* kept alive by the list, which stays on the stack */
    lua_pop(L, 1);
  }
  v[n] = NULL;
  if (count) *count = n;
  return v; /* stack: ..., list, userdata */
}

/* t[field] as an integer in [lo, hi], def when nil; anything else raises naming the field. */
static lua_Integer opt_int_field(lua_State *L, int t, const char *field, lua_Integer def,
                                 lua_Number lo, lua_Number hi) {
  lua_getfield(L, t, field);
  if (lua_isnil(L, -1)) { lua_pop(L, 1); return def; }
  lua_Number d = lua_tonumber(L, -1);
  if (lua_type(L, -1) != LUA_TNUMBER || !(d >= lo && d <= hi) || d != (lua_Number)(lua_Integer)d)
    luaL_error(L, "spawn: %s must be an integer in [%.0f, %.0f]", field, lo, hi);
  lua_pop(L, 1);
  return (lua_Integer)d;
}

/* clone3 with CLONE_INTO_CGROUP works here until it failed as unsupported once. */
static atomic_int clone3_works = 1;

/* spawn(spec) -> process | nil, errno, step.
 * spec: path, argv (list), env (list of "K=V"; nil inherits), dir, fds (list: child fd i-1
 * <- fds[i], a parent fd), pgid (nil: keep, 0: own group, >0: join), setsid, pdeathsig
 * (number), inherit_signals (keep the dispositions ignored before tether and this thread's
 * mask), sigign (with inherit_signals: a list of more signal numbers the child starts with
 * ignored), uid, gid, groups (list of gids), ctty (a pty slave fd: the child's controlling
 * terminal in a new session), cgroup (fd of the cgroup v2 directory the child starts in, see
 * cgroup.c; cgroup_procs = true skips clone3 and has the child write cgroup.procs). The Lua
 * layer validates and names arguments; rlimits (list of {name, soft, hard}), umask.
 * here a bad spec raises a plain error. An exec failure is reported synchronously. */
static int proc_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  struct child_args a;
  memset(&a, 0, sizeof a);
  tether_reap_orphans();

  lua_getfield(L, 1, "path");
  size_t plen;
  a.path = lua_tolstring(L, -1, &plen);
  if (!a.path || strlen(a.path) != plen) return luaL_error(L, "spawn: path must be a string without NUL");
  a.argv = string_list(L, 1, "argv", NULL);
  if (!a.argv) return luaL_error(L, "spawn: argv is required");
  a.envp = string_list(L, 1, "env", NULL);
  lua_getfield(L, 1, "dir");
  if (!lua_isnil(L, -1)) {
    size_t dlen;
    a.dir = lua_tolstring(L, -1, &dlen);
    if (!a.dir || strlen(a.dir) != dlen) return luaL_error(L, "spawn: dir must be a string without NUL");
  }

  lua_getfield(L, 1, "fds");
  if (!lua_istable(L, -1)) return luaL_error(L, "spawn: fds must be a list");
  int fdlist = lua_gettop(L);
  if (lua_rawlen(L, fdlist) >= (size_t)INT_MAX) return luaL_error(L, "spawn: fds is too long");
  a.nfds = (int)lua_rawlen(L, fdlist);
  a.fds = lua_newuserdatauv(L, sizeof(int) * ((size_t)a.nfds + 1), 0);
  a.max_src_fd = -1;
  for (int i = 0; i < a.nfds; i++) {
    lua_rawgeti(L, fdlist, i + 1);
    a.fds[i] = lua_isnil(L, -1) ? -1 : tether_checkfd(L, -1);
    /* A source far above any usual fd must be open here: the child places the others
     * above the highest source, which for a bogus 2^31 - 1 would not exist (an open fd is
     * below fs.nr_open's ceiling, 2^31 - 64). */
    if (a.fds[i] >= 65536 && fcntl(a.fds[i], F_GETFD) < 0) {
      lua_pushnil(L);
      lua_pushinteger(L, errno);
      lua_pushliteral(L, "dup2");
      return 3;
    }
    if (a.fds[i] > a.max_src_fd) a.max_src_fd = a.fds[i];
    lua_pop(L, 1);
  }

  a.pgid = (pid_t)opt_int_field(L, 1, "pgid", -1, 0, 2147483647.0);
  lua_getfield(L, 1, "setsid");
  a.setsid = lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, 1, "foreground");
  a.foreground = lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, 1, "inherit_signals");
  a.inherit_sigs = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (a.inherit_sigs) {
    a.ign = tether_signal_inherited();
    lua_getfield(L, 1, "sigign"); /* more signals ignored at start, known to the caller */
    if (lua_istable(L, -1)) {
      for (int i = 1; i <= (int)lua_rawlen(L, -1); i++) {
        lua_rawgeti(L, -1, i);
        lua_Integer sig = lua_tointeger(L, -1);
        if (sig > 0 && sig < NSIG && sig <= 64 && sig != SIGKILL && sig != SIGSTOP)
          a.ign |= (uint64_t)1 << (sig - 1);
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  }
  lua_getfield(L, 1, "ctty"); /* pty.c: the slave to make the controlling tty (implies setsid) */
  a.ctty = lua_isnil(L, -1) ? -1 : tether_checkfd(L, -1);
  if (a.ctty >= 0) a.setsid = 1;
  lua_pop(L, 1);
  a.pdeathsig = (int)opt_int_field(L, 1, "pdeathsig", 0, 0, 64);
  lua_Integer uid = opt_int_field(L, 1, "uid", -1, 0, 4294967294.0);
  lua_Integer gid = opt_int_field(L, 1, "gid", -1, 0, 4294967294.0);
  if (uid >= 0) { a.set_uid = 1; a.uid = (uid_t)uid; }
  if (gid >= 0) { a.set_gid = 1; a.gid = (gid_t)gid; }
  lua_getfield(L, 1, "groups");
  if (!lua_isnil(L, -1)) {
    int g = lua_gettop(L);
    if (!lua_istable(L, g)) return luaL_error(L, "spawn: groups must be a list");
    a.set_groups = 1;
    if (lua_rawlen(L, g) >= (size_t)INT_MAX) return luaL_error(L, "spawn: groups is too long");
    a.ngroups = (int)lua_rawlen(L, g);
    a.groups = lua_newuserdatauv(L, sizeof(gid_t) * ((size_t)a.ngroups + 1), 0);
    for (int i = 0; i < a.ngroups; i++) {
      lua_rawgeti(L, g, i + 1);
      lua_Number d = lua_tonumber(L, -1);
      if (lua_type(L, -1) != LUA_TNUMBER || !(d >= 0 && d <= 4294967294.0) || d != (lua_Number)(lua_Integer)d)
        luaL_error(L, "spawn: groups[%d] must be a gid", i + 1);
      a.groups[i] = (gid_t)d;
      lua_pop(L, 1);
    }
  }
  /* Dropping privileges as root also drops the supplementary groups (as Go does),
   * unless groups were given. */
  if ((a.set_uid || a.set_gid) && !a.set_groups && geteuid() == 0) {
    a.set_groups = 1;
    a.ngroups = 0;
  }
  if (a.pdeathsig) a.parent_pid = getpid();
  tether_child_limits(L, 1, &a.limits); /* rlimits, umask */
  /* Relay mode (relay.c): the command's parent is an intermediate no host can reap. */
  int relay = tether_relay_wanted();
  if (relay && !memory_is_shared()) {
    if (relay == 2) { lua_pushnil(L); lua_pushinteger(L, ENOSYS); lua_pushliteral(L, "relay"); return 3; }
    relay = 0; /* "auto" under an emulator (valgrind): spawn directly */
  }
  /* containment (cgroup.c): clone3 into the group, or the child writes cgroup.procs */
  int cgfd = -1, procs_fd = -1, use_clone3 = 0;
  a.cgroup_procs = -1;
  lua_getfield(L, 1, "cgroup");
  if (!lua_isnil(L, -1)) {
    cgfd = tether_checkfd(L, -1);
    lua_getfield(L, 1, "cgroup_procs");
    use_clone3 = !relay && !lua_toboolean(L, -1) && atomic_load(&clone3_works);
    procs_fd = openat(cgfd, "cgroup.procs", O_WRONLY | O_CLOEXEC);
    if (procs_fd < 0) {
      lua_pushnil(L);
      lua_pushinteger(L, errno);
      lua_pushliteral(L, "cgroup");
      return 3;
    }
  }
  if (relay) { /* the command, not the intermediate, writes itself into the group */
    a.cgroup_procs = procs_fd;
    int n = spawn_relayed(L, &a);
    if (procs_fd >= 0) close(procs_fd);
    return n;
  }
  guard_refresh(); /* issue 12: a direct spawn has the guard wanted in this thread in force */
  int errpipe[2] = { -1, -1 };
  a.errpipe = -1;
  if (!memory_is_shared() || use_clone3) { /* clone3 here copies memory: the report needs a pipe */
    if (pipe2(errpipe, O_CLOEXEC) < 0) {
      int e = errno;
      if (procs_fd >= 0) close(procs_fd);
      return tether_fail(L, e);
    }
    a.errpipe = errpipe[1];
  }

  /* The object exists before the child does: no Lua error can strand a child. */
  tproc *p = new_proc(L);
  struct child_rec *rec = calloc(1, sizeof *rec);
  if (!rec) {
    if (errpipe[0] >= 0) { close(errpipe[0]); close(errpipe[1]); }
    if (procs_fd >= 0) close(procs_fd);
    return tether_fail(L, ENOMEM);
  }

  /* The child runs on this buffer, on this thread's stack, while this thread is
   * suspended by CLONE_VFORK (as musl does): no allocation per spawn. */
  char stack[32768] __attribute__((aligned(64)));
  char *top = stack + sizeof stack;

  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  a.mask = old;
  int inherit_env = a.envp == NULL;
  if (inherit_env) { tether_env_share(); a.envp = environ; } /* (env.c: reads go on) */

  /* Held until the child is in the pid table: reaper mode's wait4(-1) cannot take it
   * before (after execve it is an ordinary SIGCHLD child and could exit at once). */
  tether_children_lock();
  int pidfd = -1;
  const char *fail_step = "clone";
  pid_t pid = -1;
  if (use_clone3) {
    pid = tether_cgroup_clone(cgfd, &pidfd);
    if (pid == 0) tether_child_main(&a); /* the child (a copy): execve or _exit, never returns */
    if (pid < 0 && (errno == ENOSYS || errno == E2BIG || errno == EINVAL)) {
      atomic_store(&clone3_works, 0); /* kernel < 5.7, seccomp, valgrind: the child writes */
      use_clone3 = 0;
      pidfd = -1;
    } else if (pid < 0) {
      fail_step = "cgroup"; /* the group refused the child (EBUSY, EACCES, ...) */
    }
  }
  if (!use_clone3) {
    a.cgroup_procs = procs_fd; /* -1 without a cgroup */
    pid = tether_clone_child(&a, top, &pidfd);
    if (pid < 0 && errno == EINVAL) { /* kernel without CLONE_PIDFD (< 5.2) */
      pidfd = -1;
      pid = clone(tether_child_main, top, CLONE_VM | CLONE_VFORK, &a);
      if (pid > 0) pidfd = (int)syscall(SYS_pidfd_open, pid, 0); /* may fail: polling fallback */
    }
  }
  int clone_err = errno;
  if (pid > 0) { rec->pid = pid; tether_child_add(rec); }
  tether_children_unlock();
  UNPOISON(stack, sizeof stack);

  if (inherit_env) tether_env_unshare();
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (procs_fd >= 0) close(procs_fd);
  if (errpipe[0] >= 0) { /* the child's report, or EOF once execve closed the pipe */
    close(errpipe[1]);
    int report[2];
    ssize_t n;
    do n = read(errpipe[0], report, sizeof report); while (n < 0 && errno == EINTR);
    if (pid > 0 && n == (ssize_t)sizeof report) { a.err = report[0]; a.step = report[1]; }
    close(errpipe[0]);
  }

  if (pid < 0) {
    free(rec);
    lua_pushnil(L);
    lua_pushinteger(L, clone_err);
    lua_pushstring(L, fail_step);
    return 3;
  }
  if (a.err) { /* the child reported a failure and exited: reap it now */
    tether_children_lock();
    tether_child_remove(rec); /* never exec'd: a clone child (exit signal 0) no wait4(-1) can take */
    tether_children_unlock();
    free(rec);
    int st;
    while (waitpid(pid, &st, __WALL) < 0 && errno == EINTR) {}
    if (pidfd >= 0) close(pidfd);
    lua_pushnil(L);
    lua_pushinteger(L, a.err);
    lua_pushstring(L, step_names[a.step]);
    return 3;
  }
  p->pid = pid;
  p->pidfd = pidfd;
  p->owned = 1;
  p->rec = rec;
  /* the process is on top of the stack */
  return 1;
}

/* ---- methods --------------------------------------------------------------------------- */

static void push_state(lua_State *L, tproc *p) {
  lua_createtable(L, 0, 10);
  lua_pushinteger(L, p->pid); lua_setfield(L, -2, "pid");
  lua_pushinteger(L, p->status); lua_setfield(L, -2, "status");
  lua_pushboolean(L, WIFEXITED(p->status)); lua_setfield(L, -2, "exited");
  lua_pushinteger(L, WIFEXITED(p->status) ? WEXITSTATUS(p->status) : -1);
  lua_setfield(L, -2, "code");
  if (WIFSIGNALED(p->status)) {
    lua_pushinteger(L, WTERMSIG(p->status)); lua_setfield(L, -2, "signal");
    lua_pushboolean(L, WCOREDUMP(p->status)); lua_setfield(L, -2, "core_dumped");
  }
  lua_pushnumber(L, (double)p->ru.ru_utime.tv_sec + (double)p->ru.ru_utime.tv_usec * 1e-6);
  lua_setfield(L, -2, "utime");
  lua_pushnumber(L, (double)p->ru.ru_stime.tv_sec + (double)p->ru.ru_stime.tv_usec * 1e-6);
  lua_setfield(L, -2, "stime");
  lua_pushinteger(L, p->ru.ru_maxrss);
  lua_setfield(L, -2, "maxrss");
}

static void drop_pidfd(tproc *p) {
  if (p->pidfd >= 0) { close(p->pidfd); p->pidfd = -1; }
}

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

/* wait4(pid, WNOHANG) for p, through its pidfd where there is one (waitid P_PIDFD, with the
 * raw syscall's rusage argument): should a host reap the child and its pid be reused by
 * another child of ours, a wait by pid would take that one's status. */
static pid_t reap(tproc *p, int *st) {
  static atomic_int no_pidfd_wait;
  if (p->pidfd >= 0 && !atomic_load_explicit(&no_pidfd_wait, memory_order_relaxed)) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (syscall(SYS_waitid, P_PIDFD, p->pidfd, &si, WEXITED | WNOHANG | __WALL, &p->ru) == 0) {
      if (si.si_pid == 0) return 0;
      if (si.si_code == CLD_EXITED) *st = (si.si_status & 0xff) << 8;
      else if (si.si_code == CLD_DUMPED) *st = (si.si_status & 0x7f) | 0x80;
      else *st = si.si_status & 0x7f; /* CLD_KILLED */
      return p->pid;
    }
    if (errno != EINVAL) return -1;
    atomic_store(&no_pidfd_wait, 1); /* Linux < 5.4: by pid */
  }
  return wait4(p->pid, st, WNOHANG | __WALL, &p->ru);
}

/* nil, EOWNERDEAD, message: the relay intermediate died before the command's status was in
 * (its pdeathsig took the command down with it). */
static int relay_lost(lua_State *L, tproc *p) {
  lua_pushnil(L);
  lua_pushinteger(L, EOWNERDEAD);
  if (WIFSIGNALED(p->lost_status))
    lua_pushfstring(L, "the relay process holding it was killed by SIG%s; the command was killed with it",
                    sigabbrev_np(WTERMSIG(p->lost_status)) ? sigabbrev_np(WTERMSIG(p->lost_status)) : "?");
  else
    lua_pushliteral(L, "the relay process holding it died; the command was killed with it");
  return 3;
}

/* proc:try_wait() -> state table once the process has exited (reaping it with wait4, or
 * taking what relay mode's intermediate collected), false while it runs, or nil, errno
 * (ECHILD when it is not our child or was released; EOWNERDEAD and a message when its
 * relay intermediate died). */
static int proc_try_wait(lua_State *L) {
  tproc *p = check_proc(L, 1);
  if (p->reaped) { push_state(L, p); return 1; }
  if (p->lost) return relay_lost(L, p);
  if (p->released || p->pid < 0) return tether_fail(L, ECHILD);
  if (p->relay) {
    int st;
    int rc = tether_relay_try_wait(p->relay, &st, &p->ru);
    if (rc == 0) { lua_pushboolean(L, 0); return 1; }
    tether_relay_release(p->relay); /* its intermediate is reaped: freed now */
    p->relay = NULL;
    if (rc < 0) { p->lost = 1; p->lost_status = st; return relay_lost(L, p); }
    p->status = st;
    p->reaped = 1;
    push_state(L, p);
    return 1;
  }
  int st, e = 0;
  pid_t r;
  tether_children_lock();
  struct child_rec *rec = p->rec;
  if (rec && rec->stashed) { /* reaper mode reaped it first: its status waited here */
    r = p->pid;
    st = rec->status;
    p->ru = rec->ru;
  } else {
    do r = reap(p, &st); while (r < 0 && errno == EINTR);
    e = errno;
    if (rec && r != 0) tether_child_remove(rec); /* reaped, or ECHILD: no longer ours either way */
  }
  if (rec && r != 0) { free(rec); p->rec = NULL; }
  tether_children_unlock();
  if (r < 0 && e == ECHILD && p->pidfd >= 0) {
    /* A host reaped it (a thread looping waitpid(-1), SIGCHLD ignored): the kernel may
     * keep its status on the pidfd (Linux 6.15+). The rusage is gone with it. */
    int k = tether_pidfd_exit_status(p->pidfd, &st);
    if (k == 0) { lua_pushboolean(L, 0); return 1; } /* being reaped: not in yet */
    if (k > 0) { r = p->pid; memset(&p->ru, 0, sizeof p->ru); }
  }
  if (r == 0) { lua_pushboolean(L, 0); return 1; }
  if (r < 0) return tether_fail(L, e);
  p->status = st;
  p->reaped = 1;
  drop_pidfd(p);
  push_state(L, p);
  return 1;
}

/* proc:signal(signum) -> true | nil, errno (ESRCH once the process is done).
 * Goes through the pidfd, so a recycled pid is never signalled. */
static int proc_signal(lua_State *L) {
  tproc *p = check_proc(L, 1);
  int sig = (int)luaL_checkinteger(L, 2);
  if (p->reaped || p->released || p->lost || p->pid < 0) return tether_fail(L, ESRCH);
  if (p->relay) {
    if (tether_relay_signal(p->relay, sig) < 0) return tether_fail(L, errno);
    lua_pushboolean(L, 1);
    return 1;
  }
  if (p->rec) { /* our child: reaped by the reaper, its pid may be reused */
    tether_children_lock();
    int stashed = p->rec->stashed;
    tether_children_unlock();
    if (stashed) return tether_fail(L, ESRCH);
  }
  int r = p->pidfd >= 0 ? (int)syscall(SYS_pidfd_send_signal, p->pidfd, sig, NULL, 0) : -1;
  if (p->pidfd < 0 || (r < 0 && errno == ENOSYS))
    r = kill(p->pid, sig); /* unreaped: the pid cannot be recycled */
  if (r < 0) return tether_fail(L, errno);
  lua_pushboolean(L, 1);
  return 1;
}

/* proc:pid() -> pid; proc:pidfd() -> fd to poll for exit, or -1; proc:done() -> reaped? */
static int proc_pid(lua_State *L) { lua_pushinteger(L, check_proc(L, 1)->pid); return 1; }
static int proc_pidfd(lua_State *L) {
  tproc *p = check_proc(L, 1);
  lua_pushinteger(L, p->relay ? tether_relay_pollfd(p->relay) : p->pidfd);
  return 1;
}

/* proc:release(): gives up the process; if it still runs it is reaped in the background
 * at a later tether call. Also __gc. */
static int proc_release(lua_State *L) {
  tproc *p = check_proc(L, 1);
  if (p->relay) { tether_relay_release(p->relay); p->relay = NULL; }
  struct child_rec *rec = p->rec;
  if (rec) {
    tether_children_lock();
    int keep = 0;
    if (!rec->stashed) {
      if (p->owned) {
        int st;
        keep = waitpid(p->pid, &st, WNOHANG | __WALL) == 0 && tether_child_orphan(rec);
      }
      if (!keep) tether_child_remove(rec); /* reaped now, not ours, or no memory to track it */
    }
    if (!keep) free(rec);
    p->rec = NULL;
    tether_children_unlock();
  }
  p->released = 1;
  drop_pidfd(p);
  return 0;
}

/* find_process(pid) -> process backed by pidfd_open | nil, errno (ESRCH when there is none). */
static int proc_find(lua_State *L) {
  lua_Integer pid = luaL_checkinteger(L, 1);
  luaL_argcheck(L, pid > 0, 1, "pid must be positive");
  tproc *p = new_proc(L);
  int fd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
  if (fd < 0 && errno != ENOSYS) return tether_fail(L, errno);
  p->pid = (pid_t)pid;
  p->pidfd = fd;
  /* Our own child (started outside tether): registered, so reaper mode keeps its status. */
  struct child_rec *rec = calloc(1, sizeof *rec);
  if (rec) {
    siginfo_t si;
    tether_children_lock();
    si.si_pid = 0;
    if (!tether_child_find((pid_t)pid) &&
        waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT | __WALL) == 0) {
      rec->pid = (pid_t)pid;
      tether_child_add(rec);
      p->rec = rec;
      rec = NULL;
    }
    tether_children_unlock();
    free(rec);
  }
  return 1;
}

/* kill(pid, signum) -> true | nil, errno. For process groups (pid < 0). */
static int proc_kill(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  int sig = (int)luaL_checkinteger(L, 2);
  if (kill(pid, sig) < 0) return tether_fail(L, errno);
  lua_pushboolean(L, 1);
  return 1;
}

static int proc_tostring(lua_State *L) {
  tproc *p = check_proc(L, 1);
  lua_pushfstring(L, "tether.process (%d%s)", (int)p->pid, p->reaped ? ", done" : "");
  return 1;
}

static const luaL_Reg proc_methods[] = {
  {"try_wait", proc_try_wait}, {"signal", proc_signal}, {"pid", proc_pid},
  {"pidfd", proc_pidfd}, {"release", proc_release}, {NULL, NULL},
};

static const luaL_Reg proc_funcs[] = {
  {"spawn", proc_spawn}, {"find_process", proc_find}, {"kill", proc_kill},
  {"guard_children", proc_guard_children}, {NULL, NULL},
};

void tether_open_process(lua_State *L) {
  luaL_newmetatable(L, TETHER_PROC_MT);
  lua_newtable(L);
  luaL_setfuncs(L, proc_methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, proc_release);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, proc_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  luaL_setfuncs(L, proc_funcs, 0);
}
