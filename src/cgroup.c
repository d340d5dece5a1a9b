/* cgroup.c - containment (cgroup v2) for tether.cgroup: making and removing a child's
 * group, reading and writing its control files, killing everything in it (cgroup.kill,
 * or freeze and kill every pid before Linux 5.14), watching cgroup.events (poll POLLPRI),
 * and the two ways a spawned child lands in its group:
 *   - clone3(CLONE_INTO_CGROUP) (Linux 5.7+): the child is created inside the group, so
 *     no migration (and none of its cost) ever happens. tether's ordinary spawn shares
 *     memory (CLONE_VM|CLONE_VFORK); clone3 with CLONE_VM would need a per-architecture
 *     assembly stub to switch stacks, so this path is a vfork-style copy instead (the
 *     parent is still suspended until execve; the child reports over a pipe).
 *   - otherwise the child writes "0" to an open cgroup.procs before execve
 *     (tether_cgroup_enter: async-signal-safe, for every child-setup function, the relay's
 *     too), so the command never runs outside its group either. */
#include "tether.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef CLONE_VFORK
#define CLONE_VFORK 0x00004000
#endif
#define TETHER_CLONE_INTO_CGROUP 0x200000000ULL
#ifndef SYS_clone3
#define SYS_clone3 435
#endif

/* struct clone_args, version 2 (with cgroup): 88 bytes. */
struct cg_clone_args {
  uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls,
           set_tid, set_tid_size, cgroup;
};

pid_t tether_cgroup_clone(int cgroup_fd, int *pidfd) {
  struct cg_clone_args ca;
  memset(&ca, 0, sizeof ca);
  ca.flags = CLONE_PIDFD | CLONE_VFORK | TETHER_CLONE_INTO_CGROUP;
  ca.pidfd = (uint64_t)(uintptr_t)pidfd;
  ca.exit_signal = 0; /* a clone child until execve, as spawn's other path */
  ca.cgroup = (uint64_t)cgroup_fd;
  return (pid_t)syscall(SYS_clone3, &ca, sizeof ca);
}

int tether_cgroup_enter(int procs_fd) {
  ssize_t n;
  do n = write(procs_fd, "0", 1); while (n < 0 && errno == EINTR);
  return n == 1 ? 0 : -1;
}

/* ---- file helpers --------------------------------------------------------------------- */

/* Writes s to dirfd/name (O_WRONLY, no O_TRUNC: control files). 0, or -1 with errno. */
static int write_file(int dirfd, const char *name, const char *s, size_t len) {
  int fd = openat(dirfd, name, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n;
  do n = write(fd, s, len); while (n < 0 && errno == EINTR);
  int e = errno;
  close(fd);
  if (n < 0) { errno = e; return -1; }
  return 0;
}

static const char *dirpath(lua_State *L, int idx) {
  size_t len;
  const char *p = luaL_checklstring(L, idx, &len);
  luaL_argcheck(L, strlen(p) == len, idx, "path contains NUL");
  return p;
}

static const char *filename(lua_State *L, int idx) {
  size_t len;
  const char *p = luaL_checklstring(L, idx, &len);
  luaL_argcheck(L, strlen(p) == len && !strchr(p, '/') && len > 0, idx, "a control file name expected");
  return p;
}

/* ---- functions ------------------------------------------------------------------------ */

/* cgroup_mkdir(path) -> true | nil, errno: makes a group (mode 0755). */
static int cg_mkdir(lua_State *L) {
  if (mkdir(dirpath(L, 1), 0755) < 0) return tether_fail(L, errno);
  lua_pushboolean(L, 1);
  return 1;
}

/* cgroup_rmdir(path) -> true | nil, errno (EBUSY while a process is in it). */
static int cg_rmdir(lua_State *L) {
  if (rmdir(dirpath(L, 1)) < 0) return tether_fail(L, errno);
  lua_pushboolean(L, 1);
  return 1;
}

/* cgroup_open(path) -> fd of the group's directory (O_CLOEXEC) | nil, errno. */
static int cg_open(lua_State *L) {
  const char *path = dirpath(L, 1);
  int *fd = tether_newfd(L);
  *fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (*fd < 0) return tether_fail(L, errno);
  return 1;
}

/* cgroup_read(dirfd, name) -> the whole control file | nil, errno. */
static int cg_read(lua_State *L) {
  int dirfd = tether_checkfd(L, 1);
  const char *name = filename(L, 2);
  int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return tether_fail(L, errno);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (;;) {
    char *p = luaL_prepbuffer(&b);
    ssize_t n;
    do n = read(fd, p, LUAL_BUFFERSIZE); while (n < 0 && errno == EINTR);
    if (n < 0) { int e = errno; close(fd); return tether_fail(L, e); }
    if (n == 0) break;
    luaL_addsize(&b, (size_t)n);
  }
  close(fd);
  luaL_pushresult(&b);
  return 1;
}

/* cgroup_write(dirfd, name, value) -> true | nil, errno: one write of value (a string). */
static int cg_write(lua_State *L) {
  int dirfd = tether_checkfd(L, 1);
  const char *name = filename(L, 2);
  size_t len;
  const char *s = luaL_checklstring(L, 3, &len);
  if (write_file(dirfd, name, s, len) < 0) return tether_fail(L, errno);
  lua_pushboolean(L, 1);
  return 1;
}

/* SIGKILL to every pid listed in dirfd/cgroup.procs. Returns how many it signalled that
 * were not already in done (pids signalled before; up to cap of them are remembered),
 * or -1 with errno. */
static int kill_listed(int dirfd, pid_t *done, int *ndone, int cap) {
  int fd = openat(dirfd, "cgroup.procs", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char buf[4096];
  long cur = -1; /* the number being read; it may continue in the next chunk */
  int fresh = 0;
  for (;;) {
    ssize_t n;
    do n = read(fd, buf, sizeof buf); while (n < 0 && errno == EINTR);
    if (n < 0) { int e = errno; close(fd); errno = e; return -1; }
    for (ssize_t i = 0; i <= n; i++) {
      int digit = i < n && buf[i] >= '0' && buf[i] <= '9';
      if (digit) { cur = (cur < 0 ? 0 : cur * 10) + (buf[i] - '0'); continue; }
      if (i == n && n > 0) break; /* end of this chunk, not of the file */
      if (cur > 0) {
        int seen = 0;
        for (int k = 0; k < *ndone && !seen; k++) seen = done[k] == (pid_t)cur;
        if (!seen) {
          kill((pid_t)cur, SIGKILL);
          fresh++;
          if (*ndone < cap) done[(*ndone)++] = (pid_t)cur;
        }
      }
      cur = -1;
    }
    if (n == 0) break;
  }
  close(fd);
  return fresh;
}

/* cgroup_kill(dirfd [, legacy]) -> true | nil, errno: SIGKILL to every process in the
 * group and its descendants. cgroup.kill (Linux 5.14+) does it atomically; without it
 * (or with legacy true, for tests) the group is frozen so nothing in it can fork, and
 * every listed pid is killed until a pass finds no new one (frozen processes still die
 * of SIGKILL). */
static int cg_kill(lua_State *L) {
  int dirfd = tether_checkfd(L, 1);
  int legacy = lua_toboolean(L, 2);
  if (!legacy) {
    if (write_file(dirfd, "cgroup.kill", "1", 1) == 0) { lua_pushboolean(L, 1); return 1; }
    if (errno != ENOENT) return tether_fail(L, errno);
  }
  /* no cgroup.freeze (< 5.2): kill all the same, several passes */
  if (write_file(dirfd, "cgroup.freeze", "1", 1) < 0 && errno != ENOENT) return tether_fail(L, errno);
  pid_t done[1024];
  int ndone = 0;
  for (int pass = 0; pass < 64; pass++) {
    int fresh = kill_listed(dirfd, done, &ndone, (int)(sizeof done / sizeof done[0]));
    if (fresh < 0) return tether_fail(L, errno);
    if (fresh == 0) break;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* cgroup_events(dirfd) -> the group's cgroup.events, open (O_CLOEXEC) | nil, errno. Poll
 * it for "p" (POLLPRI): it turns ready when the file changed since it was last read (the
 * kernel's file-modified event; inotify would work too, but closing an inotify instance
 * waits for an SRCU grace period, milliseconds per command). */
static int cg_events(lua_State *L) {
  int dirfd = tether_checkfd(L, 1);
  int *fd = tether_newfd(L);
  *fd = openat(dirfd, "cgroup.events", O_RDONLY | O_CLOEXEC);
  if (*fd < 0) return tether_fail(L, errno);
  return 1;
}

/* cgroup_populated(eventsfd) -> whether a process is in the group (and its descendants),
 * from "populated 0|1" | nil, errno. Reading re-arms the fd's POLLPRI. */
static int cg_populated(lua_State *L) {
  int fd = tether_checkfd(L, 1);
  char buf[256];
  ssize_t n;
  if (lseek(fd, 0, SEEK_SET) < 0) return tether_fail(L, errno);
  do n = read(fd, buf, sizeof buf - 1); while (n < 0 && errno == EINTR);
  if (n < 0) return tether_fail(L, errno);
  buf[n] = '\0';
  const char *p = strstr(buf, "populated ");
  if (!p) return tether_fail(L, EPROTO);
  lua_pushboolean(L, p[10] != '0');
  return 1;
}

static const luaL_Reg cg_funcs[] = {
  {"cgroup_mkdir", cg_mkdir}, {"cgroup_rmdir", cg_rmdir}, {"cgroup_open", cg_open},
  {"cgroup_read", cg_read}, {"cgroup_write", cg_write}, {"cgroup_kill", cg_kill},
  {"cgroup_events", cg_events}, {"cgroup_populated", cg_populated}, {NULL, NULL},
};

void tether_open_cgroup(lua_State *L) {
  luaL_setfuncs(L, cg_funcs, 0);
}
