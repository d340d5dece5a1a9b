/* spawn.h - what the two spawn paths share (process.c spawns directly, relay.c through an
 * intermediate): the arguments of the child-setup function and that function itself, so
 * that both modes run one child path (whatever later steps, cgroups, ptys or rlimits, it
 * gains). Private to the C core. */
#ifndef TETHER_SPAWN_H
#define TETHER_SPAWN_H

#include "tether.h"

#include <signal.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/types.h>

/* The child runs on a borrowed stack in the parent's memory: keep ASan's stack poisoning
 * out of it, and wipe what it left on that buffer once the parent runs again. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define NO_ASAN __attribute__((no_sanitize_address))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define NO_ASAN
#define UNPOISON(p, n) ((void)0)
#endif

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

/* Which step of the child setup failed (err.step in Lua: step_names in process.c). */
enum step { STEP_NONE, STEP_SETSID, STEP_SETPGID, STEP_PDEATHSIG, STEP_CHDIR, STEP_DUP2,
            STEP_CLOSE, STEP_SETGROUPS, STEP_SETGID, STEP_SETUID, STEP_EXEC, STEP_TCSETPGRP,
            STEP_RELAY };

/* Everything the child needs, prepared by the parent: the child only reads it (and fds,
 * which it rewrites in place) and reports a failure in err/step. CLONE_VM shares this
 * memory; CLONE_VFORK keeps the parent thread suspended until execve or _exit. */
struct child_args {
  const char *path;
  char *const *argv;
  char *const *envp;
  const char *dir;
  int *fds;              /* child fd i <- fds[i] (a parent fd) */
  int nfds;
  int max_src_fd;
  pid_t pgid;            /* -1: keep; 0: own group; > 0: join that group */
  int setsid;
  int foreground;        /* make the child's group the foreground group of the tty on fd 0 */
  int pdeathsig;         /* 0: none */
  pid_t parent_pid;      /* the parent's pid, to see whether it died before pdeathsig was set */
  int set_uid, set_gid, set_groups;
  uid_t uid;
  gid_t gid;
  gid_t *groups;
  int ngroups;
  int errpipe;           /* -1, or the write end of a CLOEXEC pipe when memory is not shared */
  int inherit_sigs;      /* issue 14, tini parity: keep inherited SIG_IGN and the mask */
  uint64_t ign;          /* with inherit_sigs: bit s-1: signal s stays (or becomes again) SIG_IGN */
  sigset_t mask;         /* with inherit_sigs: the spawning thread's mask, for the child */
  volatile int err;
  volatile int step;
};

/* The child side of a spawn (process.c): async-signal-safe only; execve or _exit(127). */
int tether_child_main(void *arg);
/* Clones the command with tether_child_main (process.c): both modes start it here. */
pid_t tether_clone_child(struct child_args *a, char *stack_top, int *pidfd);
/* Every handled or ignored signal back to SIG_DFL, except what a->inherit_sigs keeps
 * (async-signal-safe; process.c). a may be NULL: everything back to SIG_DFL. */
void tether_child_reset_signals(const struct child_args *a);

/* Relay mode (relay.c). */
typedef struct tether_relay tether_relay;
/* Whether a spawn now goes through an intermediate (the spawn mode, and in "auto" the
 * host: SIGCHLD ignored or SA_NOCLDWAIT, or nginx). */
int tether_relay_wanted(void);
/* Spawns a's command under a new intermediate. Call with every signal blocked. 0 and *out
 * on success; -1 with errno set when the intermediate could not start (or died before the
 * command did: a->step = STEP_RELAY); a failure of the command's own setup is -1 with
 * a->err and a->step set, nothing left running. */
int tether_relay_spawn(struct child_args *a, tether_relay **out);
pid_t tether_relay_pid(const tether_relay *r);         /* the command's pid */
int tether_relay_pollfd(const tether_relay *r);        /* readable once the status is in */
int tether_relay_signal(tether_relay *r, int sig);     /* 0 | -1, errno (ESRCH once reaped) */
/* 1 with the command's wait status and rusage once it is in, 0 while it runs, -1 with
 * errno EOWNERDEAD when the intermediate died first (*status is then its wait status). */
int tether_relay_try_wait(tether_relay *r, int *status, struct rusage *ru);
void tether_relay_release(tether_relay *r);            /* frees now or once it has exited */
void tether_relay_reap_orphans(void);                  /* frees released ones that exited */
/* A reaped child's wait status from its pidfd (PIDFD_INFO_EXIT, Linux 6.15+): 1 and
 * *status, 0 when it is being reaped (ask again), -1 when the kernel cannot tell. */
int tether_pidfd_exit_status(int pidfd, int *status);

#endif
