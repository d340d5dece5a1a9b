/* relay.c - relay spawn mode: children no host can steal, and the spawn mode switch
 * (tether.set_spawn_mode). Also recovers the status of a direct child that a host reaped,
 * from its pidfd (PIDFD_INFO_EXIT).
 *
 * A host that reaps with waitpid(-1) (OpenResty's workers, a thread looping on it, SIGCHLD
 * set to SIG_IGN or SA_NOCLDWAIT) takes the exit status of any child of its process. In
 * relay mode the command's parent is instead an intermediate, I, that tether owns:
 *
 *   - I is a clone child with exit signal 0: waitpid(-1) without __WALL/__WCLONE never
 *     sees it, its exit sends the host no SIGCHLD, and SIG_IGN/SA_NOCLDWAIT do not reap it
 *     (the kernel autoreaps only children whose exit signal is SIGCHLD).
 *   - It shares tether's memory (CLONE_VM) and, until the command is started, its fd table
 *     (CLONE_FILES), and runs only async-signal-safe code on its own stack (a block of the
 *     heap, freed once I is reaped). All signals stay blocked in it and every disposition
 *     is reset, so no host handler runs there and SIGCHLD is not ignored.
 *   - I starts the command with the same child path as direct mode (tether_child_main,
 *     CLONE_VM|CLONE_VFORK|CLONE_PIDFD). The command's pidfd lands in the shared table, so
 *     tether signals the command race-free through it. I then drops its fd table
 *     (close_range CLOSE_RANGE_UNSHARE: it holds no fd of the host from then on), wakes
 *     the spawning thread (a futex), and blocks in wait4 for the command. Its status and
 *     rusage go into shared memory, and I exits: I's pidfd (tether's pollfd for the
 *     Process) turns readable, and tether reaps I with __WALL.
 *   - If I dies first (SIGKILL), the command dies too: it runs with a parent-death signal
 *     (the command's pdeathsig, SIGKILL when it has none). I runs with PR_SET_PDEATHSIG
 *     SIGKILL only when the command asked for a pdeathsig, so that the command's signal
 *     still fires when the spawning thread dies, as in direct mode. CLONE_CHILD_CLEARTID
 *     wakes a spawning thread whose I died before the command started.
 *
 * Why not a spawner process per worker: it needs a protocol to ship argv, env and fds
 * (SCM_RIGHTS) for every spawn, its own lifetime management across fork, and it copies
 * the host at start; the clone needs none of that and costs one extra clone (no page
 * tables copied: CLONE_VM) per command. docs/internals.md has the numbers. */
#include "spawn.h"

#include <dlfcn.h>
#include <errno.h>
#include <linux/futex.h>
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
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
#endif

/* ---- the spawn mode ------------------------------------------------------------------ */

enum { MODE_AUTO, MODE_DIRECT, MODE_RELAY };
static const char *const mode_names[] = { "auto", "direct", "relay" };
static atomic_int spawn_mode = MODE_AUTO;
static atomic_int host_nginx; /* the Lua layer saw nginx (tether.host) */

int tether_relay_wanted(void) {
  int m = atomic_load_explicit(&spawn_mode, memory_order_relaxed);
  if (m == MODE_RELAY) return 2;
  if (m == MODE_DIRECT) return 0;
  if (atomic_load_explicit(&host_nginx, memory_order_relaxed)) return 1;
  struct sigaction sa;
  if (sigaction(SIGCHLD, NULL, &sa) == 0 &&
      (sa.sa_handler == SIG_IGN || (sa.sa_flags & SA_NOCLDWAIT)))
    return 1;
  return 0;
}

/* set_spawn_mode(name) -> previous name. Raises on an unknown name. */
static int relay_set_mode(lua_State *L) {
  static const char *const opts[] = { "auto", "direct", "relay", NULL };
  int m = luaL_checkoption(L, 1, NULL, opts);
  lua_pushstring(L, mode_names[atomic_exchange(&spawn_mode, m)]);
  return 1;
}

/* spawn_mode() -> "auto" | "direct" | "relay". */
static int relay_get_mode(lua_State *L) {
  lua_pushstring(L, mode_names[atomic_load(&spawn_mode)]);
  return 1;
}

/* spawn_host_nginx(on): "auto" relays every spawn of this process from now on (nginx). */
static int relay_host_nginx(lua_State *L) {
  atomic_store(&host_nginx, lua_toboolean(L, 1));
  return 0;
}

/* ---- the intermediate ------------------------------------------------------------------ */

#define CHILD_STACK 32768 /* the command's setup runs here (as on the stack in direct mode) */
#define RELAY_STACK 16384 /* the intermediate's own frames */

struct tether_relay {
  /* set by tether before the clone */
  struct child_args *args;
  pid_t parent;           /* tether's pid, to see whether it died before I's pdeathsig */
  int die_with_parent;    /* the command asked for a pdeathsig: I follows the spawning thread */
  /* the futex: 1 while I starts the command, 2 once it reported, 0 once I exited (the
   * kernel clears it: CLONE_CHILD_CLEARTID), whether it reported first or not */
  _Atomic int word;
  _Atomic int reported;   /* I reported (set before word turns 2) */
  /* set by I */
  pid_t cpid;             /* the command, or -1 */
  int cpidfd;
  int clone_err;          /* the clone of the command failed with this errno */
  int status;             /* the command's wait status, once done */
  struct rusage ru;
  _Atomic int done;
  /* tether's side */
  pid_t ipid;
  int ipidfd;
  int ireaped;            /* I was reaped; istatus is its wait status */
  int istatus;
  struct tether_relay *next; /* released, waiting for I to exit */
  _Alignas(64) char stacks[CHILD_STACK + RELAY_STACK];
};

static long futex(_Atomic int *w, int op, int val) {
  return syscall(SYS_futex, (int *)w, op, val, NULL, NULL, 0);
}

/* The raw exit: no libc or sanitizer exit hook runs in the intermediate. */
NO_ASAN static void relay_exit(int code) {
  for (;;) syscall(SYS_exit, code);
}

/* The intermediate. Async-signal-safe calls only: it shares tether's memory while tether
 * runs on (and its errno: hence no call that may fail once tether has been woken, but
 * wait4, retried on EINTR, which cannot happen with every signal blocked). */
NO_ASAN static int relay_main(void *arg) {
  struct tether_relay *r = arg;
  struct child_args *a = r->args;
  tether_child_reset_signals(NULL); /* every signal stays blocked (tether blocked them) */
  if (r->die_with_parent) {
    prctl(PR_SET_PDEATHSIG, (unsigned long)SIGKILL);
    if (getppid() != r->parent) relay_exit(0); /* tether already gone: start nothing */
  }
  a->parent_pid = getpid();
  /* the kernel writes the command's pidfd straight into r: tether closes it even if I dies */
  pid_t c = tether_clone_child(a, r->stacks + CHILD_STACK, &r->cpidfd);
  if (c < 0) r->clone_err = errno;
  r->cpid = c;
  int status = 0;
  struct rusage ru;
  memset(&ru, 0, sizeof ru);
  if (c > 0 && a->err) { /* the setup failed and the command exited: reap it, report */
    while (syscall(SYS_wait4, c, &status, __WALL, NULL) < 0 && errno == EINTR) {}
    c = -1;
  }
  /* From here on I holds no fd of the host (the command's pidfd stays in tether's table). */
  syscall(SYS_close_range, 0U, ~0U, CLOSE_RANGE_UNSHARE);
  atomic_store(&r->reported, 1);
  atomic_store(&r->word, 2);
  futex(&r->word, FUTEX_WAKE, 1);
  if (c < 0) relay_exit(0);
  while (syscall(SYS_wait4, c, &status, __WALL, &ru) < 0)
    if (errno != EINTR) relay_exit(1);
  r->status = status;
  r->ru = ru;
  atomic_store(&r->done, 1);
  relay_exit(0);
  return 0;
}

/* Pins this library against dlclose: an intermediate may outlive the lua_State that
 * started it, and runs code from here. */
static void pin_library(void) {
  static atomic_int pinned;
  if (atomic_exchange(&pinned, 1)) return;
  Dl_info info;
  if (dladdr((void *)&relay_main, &info) && info.dli_fname)
    (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

static void reap_intermediate(struct tether_relay *r) {
  if (r->ireaped) return;
  int st;
  while (waitpid(r->ipid, &st, __WALL) < 0 && errno == EINTR) {}
  r->ireaped = 1;
  r->istatus = st;
}

static void relay_free(struct tether_relay *r) {
  if (r->ipidfd >= 0) close(r->ipidfd);
  if (r->cpidfd >= 0) close(r->cpidfd);
  free(r);
}

int tether_relay_spawn(struct child_args *a, tether_relay **out) {
  pin_library();
  struct tether_relay *r;
  if (posix_memalign((void **)&r, 64, sizeof *r) != 0) { errno = ENOMEM; return -1; }
  memset(r, 0, offsetof(struct tether_relay, stacks));
  r->args = a;
  r->parent = getpid();
  r->die_with_parent = a->pdeathsig != 0;
  if (!a->pdeathsig) a->pdeathsig = SIGKILL; /* the command dies with I */
  r->cpid = -1;
  r->cpidfd = -1;
  r->ipidfd = -1;
  atomic_store(&r->word, 1);
  /* exit signal 0: a clone child, out of reach of waitpid(-1) and SIGCHLD */
  pid_t ipid = clone(relay_main, r->stacks + sizeof r->stacks,
                     CLONE_VM | CLONE_FILES | CLONE_PIDFD | CLONE_CHILD_CLEARTID, r,
                     &r->ipidfd, NULL, (pid_t *)&r->word);
  if (ipid < 0) {
    int e = errno;
    free(r);
    errno = e == EINVAL ? ENOSYS : e; /* no CLONE_PIDFD (Linux < 5.2) */
    return -1;
  }
  r->ipid = ipid;
  while (atomic_load(&r->word) == 1) futex(&r->word, FUTEX_WAIT, 1);
  int w = atomic_load(&r->reported) ? 2 : 0;
  UNPOISON(r->stacks, sizeof r->stacks);
  if (w == 2 && r->cpid > 0 && !a->err) { *out = r; return 0; }
  /* failed: I exits (or has exited) without a command left behind */
  int e = w != 2 ? EOWNERDEAD : r->clone_err;
  if (w != 2) a->step = STEP_RELAY;
  if (r->cpidfd >= 0 && w != 2) {
    /* I died between the command's start and its report: the command has I's pdeathsig */
    syscall(SYS_pidfd_send_signal, r->cpidfd, SIGKILL, NULL, 0);
  }
  reap_intermediate(r);
  relay_free(r);
  errno = e;
  return -1;
}

pid_t tether_relay_pid(const tether_relay *r) { return r->cpid; }
int tether_relay_pollfd(const tether_relay *r) { return r->ireaped ? -1 : r->ipidfd; }

int tether_relay_signal(tether_relay *r, int sig) {
  if (r->ireaped || atomic_load(&r->done)) { errno = ESRCH; return -1; } /* reaped by I */
  return (int)syscall(SYS_pidfd_send_signal, r->cpidfd, sig, NULL, 0) < 0 ? -1 : 0;
}

int tether_relay_try_wait(tether_relay *r, int *status, struct rusage *ru) {
  if (!r->ireaped) {
    int st;
    pid_t w;
    do w = waitpid(r->ipid, &st, WNOHANG | __WALL); while (w < 0 && errno == EINTR);
    if (w == 0) {
      if (!atomic_load(&r->done)) return 0;
      reap_intermediate(r); /* the status is in and I is on its way out */
    } else {
      r->ireaped = 1;
      r->istatus = w > 0 ? st : 0;
    }
  }
  if (atomic_load(&r->done)) {
    *status = r->status;
    *ru = r->ru;
    return 1;
  }
  *status = r->istatus;
  errno = EOWNERDEAD;
  return -1;
}

/* Released relays whose intermediate still runs; the lock guards the list. */
static pthread_mutex_t orphans_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tether_relay *orphans;
static atomic_int orphan_count;

void tether_relay_release(tether_relay *r) {
  if (!r->ireaped) {
    int st;
    pid_t w;
    do w = waitpid(r->ipid, &st, WNOHANG | __WALL); while (w < 0 && errno == EINTR);
    if (w == 0) { /* still running: reaped at a later tether call */
      pthread_mutex_lock(&orphans_lock);
      r->next = orphans;
      orphans = r;
      atomic_fetch_add(&orphan_count, 1);
      pthread_mutex_unlock(&orphans_lock);
      return;
    }
  }
  relay_free(r);
}

void tether_relay_reap_orphans(void) {
  if (atomic_load_explicit(&orphan_count, memory_order_relaxed) == 0) return;
  int saved = errno;
  pthread_mutex_lock(&orphans_lock);
  for (struct tether_relay **pp = &orphans; *pp;) {
    struct tether_relay *r = *pp;
    int st;
    pid_t w = waitpid(r->ipid, &st, WNOHANG | __WALL);
    if (w == 0 || (w < 0 && errno == EINTR)) { pp = &r->next; continue; }
    *pp = r->next;
    atomic_fetch_sub(&orphan_count, 1);
    relay_free(r);
  }
  pthread_mutex_unlock(&orphans_lock);
  errno = saved;
}

/* ---- the status of a child a host reaped ------------------------------------------------ */

/* struct pidfd_info as of Linux 6.15 (PIDFD_INFO_SIZE_VER0 = 64 bytes), defined here for
 * headers that lack it. */
struct t_pidfd_info {
  uint64_t mask, cgroupid;
  uint32_t pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid;
  int32_t exit_code;
};
#define T_PIDFD_GET_INFO _IOWR(0xFF, 11, struct t_pidfd_info)
#define T_PIDFD_INFO_PID (1ULL << 0)
#define T_PIDFD_INFO_EXIT (1ULL << 3)

int tether_pidfd_exit_status(int pidfd, int *status) {
  /* The kernel stores the status (pidfs_exit) before it detaches the pid: "no status and
   * no task" (or ESRCH) right after another look found neither means the task was released
   * between the two reads; look again. */
  for (int tries = 0; tries < 3; tries++) {
    struct t_pidfd_info info;
    memset(&info, 0, sizeof info);
    info.mask = T_PIDFD_INFO_EXIT;
    if (ioctl(pidfd, T_PIDFD_GET_INFO, &info) < 0) {
      if (errno != ESRCH) return -1; /* < 6.13: ENOTTY; no such ioctl */
      continue;
    }
    if (info.mask & T_PIDFD_INFO_EXIT) { *status = info.exit_code; return 1; }
    if ((info.mask & T_PIDFD_INFO_PID) && info.pid != 0) return 0; /* still a task: being reaped */
  }
  return -1; /* a kernel that keeps no status (< 6.15) */
}

NO_ASAN static int status_probe_main(void *arg) {
  (void)arg;
  syscall(SYS_exit, 7);
  return 0;
}

/* pidfd_keeps_status() -> whether the kernel keeps the status of a reaped child on its
 * pidfd (Linux 6.15+): probed once with a child that exits 7. */
static int relay_pidfd_keeps_status(lua_State *L) {
  static atomic_int known = -1;
  int v = atomic_load(&known);
  if (v < 0) {
    static char stack[4096] __attribute__((aligned(64)));
    int pidfd = -1, st = 0;
    v = 0;
    pid_t pid = clone(status_probe_main, stack + sizeof stack, CLONE_VM | CLONE_VFORK | CLONE_PIDFD, NULL, &pidfd);
    if (pid > 0) {
      while (waitpid(pid, &st, __WALL) < 0 && errno == EINTR) {}
      v = pidfd >= 0 && tether_pidfd_exit_status(pidfd, &st) == 1 && WIFEXITED(st) && WEXITSTATUS(st) == 7;
    }
    if (pidfd >= 0) close(pidfd);
    atomic_store(&known, v);
  }
  lua_pushboolean(L, v);
  return 1;
}

static const luaL_Reg relay_funcs[] = {
  {"set_spawn_mode", relay_set_mode}, {"spawn_mode", relay_get_mode},
  {"spawn_host_nginx", relay_host_nginx}, {"pidfd_keeps_status", relay_pidfd_keeps_status},
  {NULL, NULL},
};

void tether_open_relay(lua_State *L) { luaL_setfuncs(L, relay_funcs, 0); }
