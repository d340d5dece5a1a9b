/* sys.c - clock, sleep, poll (tether_poll: every wait of tether goes through it, and it
 * reaps in reaper mode), process identity, errno names and signal numbers. */
#include "tether.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double mono_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Milliseconds left until deadline (seconds on the monotonic clock), for poll; -1 = no deadline. */
static int ms_until(double deadline) {
  if (deadline < 0) return -1;
  double left = deadline - mono_now();
  if (left <= 0) return 0;
  double ms = ceil(left * 1000.0);
  return ms > INT_MAX ? INT_MAX : (int)ms;
}

/* See tether.h: poll(2) that also wakes on the reaper's eventfd in reaper mode. */
int tether_poll(struct pollfd *pfd, unsigned long n, int ms) {
  int wfd = tether_reaper_wake_fd();
  if (wfd < 0) return poll(pfd, (nfds_t)n, ms);
  struct pollfd small[16], *all = small;
  if (n + 1 > sizeof small / sizeof small[0]) {
    all = malloc((n + 1) * sizeof *all);
    if (!all) return poll(pfd, (nfds_t)n, ms); /* no memory: reap at the next call */
  }
  if (n) memcpy(all, pfd, n * sizeof *all);
  all[n].fd = wfd;
  all[n].events = POLLIN;
  all[n].revents = 0;
  int r = poll(all, (nfds_t)n + 1, ms);
  int e = errno, woke = r > 0 && all[n].revents;
  for (unsigned long i = 0; i < n; i++) pfd[i].revents = all[i].revents;
  if (all != small) free(all);
  if (woke) {
    tether_reaper_step();
    if (--r == 0) { errno = EINTR; return -1; } /* only the reaper woke: the caller retries */
  }
  errno = e;
  return r;
}

/* poll(2) until an fd is ready (> 0) or the deadline passed (0), or -1 with errno. EINTR
 * restarts with the time left; poll's millisecond rounding never ends a wait early.
 * Reaps collected processes first, as every tether wait does; in reaper mode the wait
 * also wakes on SIGCHLD to reap (tether_poll). */
static int poll_until(struct pollfd *pfd, int n, double deadline) {
  for (;;) {
    tether_reap_orphans(); /* again after each EINTR: in reaper mode, a SIGCHLD */
    int r = tether_poll(pfd, (unsigned long)n, ms_until(deadline));
    if (r > 0) return r;
    if (r == 0 && (deadline < 0 || mono_now() >= deadline)) return 0;
    if (r < 0 && errno != EINTR) return -1;
  }
}

/* now() -> seconds on the monotonic clock. */
static int sys_now(lua_State *L) {
  lua_pushnumber(L, mono_now());
  return 1;
}

static short parse_events(lua_State *L, int idx) {
  const char *ev = luaL_optstring(L, idx, "r");
  short events = 0;
  for (; *ev; ev++) {
    if (*ev == 'r') events |= POLLIN;
    else if (*ev == 'w') events |= POLLOUT;
    else luaL_argerror(L, idx, "events must be made of 'r' and 'w'");
  }
  return events;
}

/* poll_many({fd1, ev1, fd2, ev2, ...}, deadline|nil) -> index of the first ready fd (1-based pair
 * index), or false at the deadline. fd < 0 entries are skipped. EINTR restarts with the time left. */
static int sys_poll_many(lua_State *L) {
  struct pollfd small[8], *pfd = small;
  luaL_checktype(L, 1, LUA_TTABLE);
  double deadline = luaL_optnumber(L, 2, -1);
  int n = (int)lua_rawlen(L, 1) / 2;
  if (n > 8) pfd = lua_newuserdatauv(L, sizeof *pfd * (size_t)n, 0);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 1, 2 * i + 1);
    lua_rawgeti(L, 1, 2 * i + 2);
    pfd[i].fd = (int)luaL_checkinteger(L, -2);
    pfd[i].events = parse_events(L, lua_gettop(L));
    pfd[i].revents = 0;
    lua_pop(L, 2);
  }
  int r = poll_until(pfd, n, deadline);
  if (r < 0) return tether_fail(L, errno);
  for (int i = 0; r > 0 && i < n; i++)
    if (pfd[i].revents) { lua_pushinteger(L, i + 1); return 1; }
  lua_pushboolean(L, 0);
  return 1;
}

/* poll(fd, events, deadline|nil) -> true when ready, false at the deadline. */
static int sys_poll(lua_State *L) {
  struct pollfd p = { .fd = tether_checkfd(L, 1), .events = parse_events(L, 2) };
  double deadline = luaL_optnumber(L, 3, -1);
  int r = poll_until(&p, 1, deadline);
  if (r < 0) return tether_fail(L, errno);
  lua_pushboolean(L, r > 0);
  return 1;
}

/* sleep_until(deadline): sleeps on the monotonic clock; signals do not cut it short. */
static int sys_sleep_until(lua_State *L) {
  double deadline = luaL_checknumber(L, 1);
  struct timespec ts;
  ts.tv_sec = (time_t)deadline;
  ts.tv_nsec = (long)((deadline - (double)ts.tv_sec) * 1e9);
  if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
  if (ts.tv_nsec < 0) ts.tv_nsec = 0;
  if (tether_reaper_on()) { /* reaper mode: a sleep is a wait that reaps (no fds) */
    poll_until(NULL, 0, deadline);
    return 0;
  }
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {}
  tether_reap_orphans();
  return 0;
}

static int sys_pid(lua_State *L) { lua_pushinteger(L, getpid()); return 1; }
static int sys_ppid(lua_State *L) { lua_pushinteger(L, getppid()); return 1; }

/* executable() -> the path of /proc/self/exe, or nil, errno. */
static int sys_executable(lua_State *L) {
  char buf[PATH_MAX + 1];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n < 0) return tether_fail(L, errno);
  lua_pushlstring(L, buf, (size_t)n);
  return 1;
}

/* threads() -> the number of OS threads of this process (/proc/self/task). */
static int sys_threads(lua_State *L) {
  DIR *d = opendir("/proc/self/task");
  if (!d) return tether_fail(L, errno);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.') n++;
  closedir(d);
  lua_pushinteger(L, n);
  return 1;
}

/* strerror(errno) -> message; errname(errno) -> "ENOENT" (or "E<n>" when unknown). */
static int sys_strerror(lua_State *L) {
  char buf[256];
  int e = (int)luaL_checkinteger(L, 1);
  lua_pushstring(L, strerror_r(e, buf, sizeof buf));
  return 1;
}

static int sys_errname(lua_State *L) {
  int e = (int)luaL_checkinteger(L, 1);
  const char *name = strerrorname_np(e);
  if (name) lua_pushstring(L, name);
  else lua_pushfstring(L, "E%d", e);
  return 1;
}

/* strsignal(signum) -> "killed", "terminated", ... (Go's lower-case style). */
static int sys_strsignal(lua_State *L) {
  int sig = (int)luaL_checkinteger(L, 1);
  const char *d = sigdescr_np(sig);
  if (!d) { lua_pushfstring(L, "signal %d", sig); return 1; }
  char buf[64];
  size_t n = strlen(d);
  if (n >= sizeof buf) n = sizeof buf - 1;
  memcpy(buf, d, n);
  buf[n] = 0;
  if (buf[0] >= 'A' && buf[0] <= 'Z' && buf[1] >= 'a' && buf[1] <= 'z') buf[0] += 'a' - 'A';
  lua_pushstring(L, buf);
  return 1;
}

/* find_executable(path) -> true | nil, errno: a regular file this process may execute
 * (EACCES for a directory or a file without execute permission). */
static int sys_find_executable(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  struct stat st;
  if (stat(path, &st) < 0) return tether_fail(L, errno);
  if (S_ISDIR(st.st_mode)) return tether_fail(L, EACCES);
  if (faccessat(AT_FDCWD, path, X_OK, AT_EACCESS) < 0) return tether_fail(L, errno);
  lua_pushboolean(L, 1);
  return 1;
}

static const struct { const char *name; int num; } signals[] = {
  {"SIGHUP", SIGHUP}, {"SIGINT", SIGINT}, {"SIGQUIT", SIGQUIT}, {"SIGILL", SIGILL},
  {"SIGTRAP", SIGTRAP}, {"SIGABRT", SIGABRT}, {"SIGBUS", SIGBUS}, {"SIGFPE", SIGFPE},
  {"SIGKILL", SIGKILL}, {"SIGUSR1", SIGUSR1}, {"SIGSEGV", SIGSEGV}, {"SIGUSR2", SIGUSR2},
  {"SIGPIPE", SIGPIPE}, {"SIGALRM", SIGALRM}, {"SIGTERM", SIGTERM}, {"SIGSTKFLT", SIGSTKFLT},
  {"SIGCHLD", SIGCHLD}, {"SIGCONT", SIGCONT}, {"SIGSTOP", SIGSTOP}, {"SIGTSTP", SIGTSTP},
  {"SIGTTIN", SIGTTIN}, {"SIGTTOU", SIGTTOU}, {"SIGURG", SIGURG}, {"SIGXCPU", SIGXCPU},
  {"SIGXFSZ", SIGXFSZ}, {"SIGVTALRM", SIGVTALRM}, {"SIGPROF", SIGPROF}, {"SIGWINCH", SIGWINCH},
  {"SIGIO", SIGIO}, {"SIGPWR", SIGPWR}, {"SIGSYS", SIGSYS},
};

static const luaL_Reg sys_funcs[] = {
  {"now", sys_now}, {"poll", sys_poll}, {"poll_many", sys_poll_many},
  {"sleep_until", sys_sleep_until}, {"pid", sys_pid}, {"ppid", sys_ppid},
  {"executable", sys_executable}, {"threads", sys_threads},
  {"strerror", sys_strerror}, {"errname", sys_errname}, {"strsignal", sys_strsignal},
  {"find_executable", sys_find_executable}, {NULL, NULL},
};

void tether_open_sys(lua_State *L) {
  luaL_setfuncs(L, sys_funcs, 0);
  /* signals: name -> number and number -> name, plus SIGRTMIN/SIGRTMAX. */
  lua_newtable(L);
  for (size_t i = 0; i < sizeof signals / sizeof signals[0]; i++) {
    lua_pushinteger(L, signals[i].num);
    lua_setfield(L, -2, signals[i].name);
    lua_pushstring(L, signals[i].name);
    lua_rawseti(L, -2, signals[i].num);
  }
  lua_pushinteger(L, SIGRTMIN); lua_setfield(L, -2, "SIGRTMIN");
  lua_pushinteger(L, SIGRTMAX); lua_setfield(L, -2, "SIGRTMAX");
  lua_setfield(L, -2, "signals");
  /* errno numbers the Lua layer compares against. */
  lua_newtable(L);
  static const struct { const char *n; int v; } errs[] = {
    {"EPERM", EPERM}, {"ENOENT", ENOENT}, {"ESRCH", ESRCH}, {"EINTR", EINTR}, {"EIO", EIO},
    {"EBADF", EBADF}, {"ECHILD", ECHILD}, {"EAGAIN", EAGAIN}, {"ENOMEM", ENOMEM},
    {"EACCES", EACCES}, {"EEXIST", EEXIST}, {"ENOTDIR", ENOTDIR}, {"EISDIR", EISDIR},
    {"EINVAL", EINVAL}, {"EMFILE", EMFILE}, {"EPIPE", EPIPE}, {"E2BIG", E2BIG},
    {"ETIMEDOUT", ETIMEDOUT}, {"ECANCELED", ECANCELED}, {"ENOSYS", ENOSYS},
  };
  for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++) {
    lua_pushinteger(L, errs[i].v);
    lua_setfield(L, -2, errs[i].n);
  }
  lua_setfield(L, -2, "errno");
}
