/* forkthread - a spec helper (the Lua C module "forkthread"): a host thread that forks. It
 * stands for a C program embedding Lua whose other threads call fork() at any time, while
 * the Lua thread goes on using tether.
 *
 *   local ft = package.loadlib(os.getenv("TETHER_FORKTHREAD"), "luaopen_forkthread")()
 *   local job = ft.start(n, code [, seconds])
 *       a new pthread forks n times, one child at a time; each child builds a fresh
 *       lua_State (standard libraries; package paths from LUA_PATH/LUA_CPATH), runs code
 *       in it, closes it and _exits; it counts as ok when code ran without error and
 *       returned true (it says so on a pipe: its exit status is valgrind's under valgrind). The thread waits for each child at most `seconds` (default 5),
 *       then kills it with SIGKILL, counts it as hung and forks no more.
 *   job:done() -> whether every fork has been waited for
 *   job:join() -> ok, failed, hung: children that exited 0, that exited otherwise, that
 *       were killed after the bound (waits for the thread)
 *
 * Built by the Makefile as build/$(LUA)/spec/forkthread.so (TETHER_FORKTHREAD). Only what
 * is async-signal-safe, or made safe by the C library's own fork handlers (malloc), runs in
 * a child before it loads tether. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

struct job {
  pthread_t t;
  char *code;
  int n, bound_ms;
  atomic_int done;
  int ok, failed, hung;
  int started, joined;
};

static int run_child(const char *code) {
  lua_State *L = luaL_newstate();
  if (!L) return 1;
  luaL_openlibs(L);
  int ok = luaL_loadstring(L, code) == 0 && lua_pcall(L, 0, 1, 0) == 0 && lua_toboolean(L, -1);
  if (!ok && lua_type(L, -1) == LUA_TSTRING) { /* why, for the spec's output */
    size_t n;
    const char *m = lua_tolstring(L, -1, &n);
    if (write(2, "forkthread child: ", 18) > 0 && write(2, m, n) > 0) (void)!write(2, "\n", 1);
  }
  lua_close(L);
  return ok ? 0 : 1;
}

/* Waits for pid at most ms; 0 when it exited, -1 when it hung (then killed). */
static int wait_child(pid_t pid, int ms) {
  int fd = (int)syscall(SYS_pidfd_open, pid, 0);
  int hung = 0;
  if (fd >= 0) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    int r;
    do r = poll(&p, 1, ms); while (r < 0 && errno == EINTR);
    hung = r == 0;
    close(fd);
  }
  if (hung && getenv("TETHER_FORKTHREAD_GDB")) { /* debugging aid: the hung child's stack */
    char cmd[128];
    snprintf(cmd, sizeof cmd, "gdb -batch -p %d -ex 'thread apply all bt' >&2 2>&1", (int)pid);
    (void)!system(cmd);
  }
  if (hung) kill(pid, SIGKILL);
  int st;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
  return hung ? -1 : 0;
}

static void *job_main(void *arg) {
  struct job *j = arg;
  for (int i = 0; i < j->n; i++) {
    /* The child says it succeeded with one byte on a pipe, not with its exit status (under
     * valgrind a forked child exits with valgrind's error code when it finds leaks). */
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0) { j->failed++; continue; }
    pid_t pid = fork();
    if (pid == 0) {
      close(fds[0]);
      if (run_child(j->code) == 0) (void)!write(fds[1], "k", 1);
      _exit(0);
    }
    close(fds[1]);
    if (pid < 0) { close(fds[0]); j->failed++; continue; }
    int r = wait_child(pid, j->bound_ms);
    char c = 0;
    int said_ok = r >= 0 && read(fds[0], &c, 1) == 1 && c == 'k';
    close(fds[0]);
    if (r < 0) { j->hung++; break; } /* one is enough: do not wait the bound for every other */
    if (said_ok) j->ok++;
    else j->failed++;
  }
  atomic_store(&j->done, 1);
  return NULL;
}

static struct job *check_job(lua_State *L) { return luaL_checkudata(L, 1, "forkthread.job"); }

static int job_done(lua_State *L) {
  lua_pushboolean(L, atomic_load(&check_job(L)->done));
  return 1;
}

static int job_join(lua_State *L) {
  struct job *j = check_job(L);
  if (j->started && !j->joined) {
    pthread_join(j->t, NULL);
    j->joined = 1;
  }
  lua_pushinteger(L, j->ok);
  lua_pushinteger(L, j->failed);
  lua_pushinteger(L, j->hung);
  return 3;
}

static int job_gc(lua_State *L) {
  struct job *j = check_job(L);
  job_join(L);
  free(j->code);
  j->code = NULL;
  return 0;
}

static int ft_start(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  size_t len;
  const char *code = luaL_checklstring(L, 2, &len);
  lua_Number secs = luaL_optnumber(L, 3, 5);
  luaL_argcheck(L, n >= 0 && n <= 100000, 1, "count out of range");
  luaL_argcheck(L, secs > 0 && secs < 3600, 3, "bound out of range");
  struct job *j = lua_newuserdata(L, sizeof *j);
  memset(j, 0, sizeof *j);
  if (luaL_newmetatable(L, "forkthread.job")) {
    lua_pushcfunction(L, job_gc);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    lua_pushcfunction(L, job_join);
    lua_setfield(L, -2, "join");
    lua_pushcfunction(L, job_done);
    lua_setfield(L, -2, "done");
    lua_setfield(L, -2, "__index");
  }
  lua_setmetatable(L, -2);
  j->code = malloc(len + 1);
  if (!j->code) return luaL_error(L, "out of memory");
  memcpy(j->code, code, len + 1);
  j->n = (int)n;
  j->bound_ms = (int)(secs * 1000);
  if (pthread_create(&j->t, NULL, job_main, j) != 0) return luaL_error(L, "pthread_create failed");
  j->started = 1;
  return 1;
}

__attribute__((visibility("default"))) int luaopen_forkthread(lua_State *L) {
  lua_newtable(L);
  lua_pushcfunction(L, ft_start);
  lua_setfield(L, -2, "start");
  return 1;
}
