/* tether.h - shared internals of the C core (tether.core). Not a public API. */
#ifndef TETHER_H
#define TETHER_H

#define _GNU_SOURCE
#include "compat.h"

#include <sys/types.h>

/* Thread-locals of the core use the initial-exec model: a plain offset from the thread
 * pointer, no __tls_get_addr call (core.so is dlopen'ed: the default for it is dynamic TLS),
 * so nothing allocates or records TLS lazily, in a spawn's vfork child either. The few
 * bytes come from the static TLS surplus glibc and musl keep for dlopen'ed modules.
 * (Under ASan, LeakSanitizer's exit-time scan crashed on a dynamic-TLS record of core.so:
 * "Tracer caught signal 11", examples/supervisor.lua.) */
#if defined(__GNUC__)
#define TETHER_TLS_IE __attribute__((tls_model("initial-exec")))
#else
#define TETHER_TLS_IE
#endif

/* Each C file registers its functions into the core table on top of the stack. */
void tether_open_sys(lua_State *L);
void tether_open_fd(lua_State *L);
void tether_open_buffer(lua_State *L);
void tether_open_process(lua_State *L);
void tether_open_relay(lua_State *L);
void tether_open_env(lua_State *L);
void tether_open_signal(lua_State *L);
void tether_open_systemd(lua_State *L);
void tether_open_pgroup(lua_State *L);
void tether_open_reaper(lua_State *L);
void tether_open_lane(lua_State *L);
void tether_open_sync(lua_State *L);
void tether_open_pool(lua_State *L);
void tether_open_cpus(lua_State *L);
void tether_open_copy(lua_State *L);
void tether_open_hostflag(lua_State *L); /* issue 12 */
void tether_open_fdkind(lua_State *L);
void tether_open_pty(lua_State *L);      /* pty.c: pseudo-terminals */
void tether_open_cgroup(lua_State *L);

/* Pushes len bytes at map, the start of a private mapping of maplen bytes that the caller
 * gives up, as a Lua string; the mapping is unmapped as it is copied (bigstr.c). */
void tether_push_mapping(lua_State *L, char *map, size_t len, size_t maplen);

/* Push nil, errno and return 2: the Lua layer turns errno into an error object.
 * The caller must have saved errno before any Lua API call (util.c). */
int tether_fail(lua_State *L, int err);

/* Eventfd wake-ups (util.c): write adds 1 (EINTR-safe, async-signal-safe, keeps errno);
 * drain resets a non-blocking eventfd. Both ignore fd < 0. */
void tether_efd_write(int fd);
void tether_efd_drain(int fd);

/* fork() from any thread leaves every tether lock usable in the child (fork.c): one
 * pthread_atfork registration, made by luaopen_tether_core, takes the locks below in this
 * order (the order tether nests them) before a fork and releases them after, in both. */
void tether_fork_init(void);
void tether_relay_lock(void);    /* relay.c's orphan list */
void tether_relay_unlock(void);
void tether_pool_fork(int phase); /* pool.c: every pool's lock; phase 0 prepare, 1 parent, 2 child */
void tether_sync_fork(int phase); /* sync.c: every semaphore's lock (same phases) */

/* The one lock around the process environment (env.c); spawn holds it while
 * a child inherits environ. */
void tether_env_lock(void);
void tether_env_unlock(void);
void tether_env_share(void);        /* a spawn's child inherits environ: no writer meanwhile */
void tether_env_unshare(void);
void tether_env_child_unlock(void); /* fork.c's child side of tether_env_lock */

/* Reap processes whose Lua objects were collected without wait (children.c).
 * Cheap when there are none; called from the common entry points. tether_reap_pending
 * reaps only those (no reaper step): one atomic load when there are none, called on entry
 * to every function of tether.core (core.c). */
void tether_reap_orphans(void);
void tether_reap_pending(void);

/* Reaper mode (reaper.c). The registry of tether's live children (children.c, children.h):
 * the lock guards it; tether_child_stash (lock held) keeps a reaped child's status for its
 * Process and says whether the pid was one of tether's children. */
struct rusage;
struct pollfd;
void tether_children_lock(void);
void tether_children_unlock(void);
int tether_child_stash(pid_t pid, int status, const struct rusage *ru);
int tether_reaper_on(void);            /* reaper mode is on (an atomic load) */
int tether_reaper_step(void);          /* reaps what has exited; returns orphans reaped */
void tether_reaper_wake(void);         /* async-signal-safe: SIGCHLD arrived (signal.c) */
int tether_reaper_wake_fd(void);       /* the wake-up eventfd while reaper mode is on, else -1 */
/* poll(2), plus the reaper's wake-up fd while reaper mode is on: a SIGCHLD during the
 * wait reaps (and the call returns -1/EINTR when nothing else became ready) (sys.c). */
int tether_poll(struct pollfd *pfd, unsigned long n, int ms);

/* Keeps this library mapped for the rest of the process (pin.c): call before handing a
 * signal handler or a thread code that may outlive the lua_State. Idempotent. */
void tether_pin_library(void);

/* The signals whose disposition was SIG_IGN before tether touched them (or is now, for those
 * tether never touched), bit s-1 for signal s (glibc's own 32 and 33 included): what an
 * init hands its child, as tini does (signal.c). */
#include <stdint.h>
uint64_t tether_signal_inherited(void);

/* Integer fd from an argument: a number, a Lua file, or a tether fd userdata.
 * Raises naming the argument when it is none of these (fd.c). */
int tether_checkfd(lua_State *L, int idx);

/* Pushes a new tether fd, created closed (-1), and returns where to store the fd it
 * owns; fill it after the syscall succeeds (fd.c). */
int *tether_newfd(lua_State *L);

/* Containment (cgroup.c). tether_cgroup_clone: clone3(CLONE_INTO_CGROUP | CLONE_PIDFD |
 * CLONE_VFORK), without CLONE_VM: returns the pid (0 in the child, a copy), or -1 with
 * errno (ENOSYS, E2BIG or EINVAL: not supported here). tether_cgroup_enter: for a child
 * about to exec (async-signal-safe): writes "0" to an open cgroup.procs, moving itself
 * into that group; 0, or -1 with errno. A relay's child setup calls it the same way. */
pid_t tether_cgroup_clone(int cgroup_fd, int *pidfd);
int tether_cgroup_enter(int procs_fd);

#define TETHER_FD_MT "tether.fd"
#define TETHER_PROC_MT "tether.process"
#define TETHER_BUFFER_MT "tether.buffer"

/* The weighted semaphore (sync.c), shareable between lua_States on different threads: push
 * it into another state with tether_sem_push; the userdata there has the same methods (that
 * state loads tether.sync on first use of a Lua-written method). */
typedef struct tether_sem tether_sem;
#define TETHER_SEM_MT "tether.semaphore"
tether_sem *tether_sem_test(lua_State *L, int idx); /* the sem if the value at idx is a semaphore userdata, else NULL */
void tether_sem_push(lua_State *L, tether_sem *s);  /* push a new userdata for s (takes a reference; refcounted, freed at last unref) */
void tether_sem_retain(tether_sem *s);              /* one more reference (a copy buffer holding s) */
void tether_sem_release(tether_sem *s);             /* drop a reference; frees s at the last one */
#define TETHER_HAVE_SEM 1

#endif
