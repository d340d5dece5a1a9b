/* fd.c - owned file descriptors (tether.fd): pipes, /dev/null, non-blocking read and write.
 * A tether.fd is created closed (fd = -1) before the syscall that fills it, so an error
 * leaves a consistent object; close is idempotent and shared by __gc and __close. */
#include "tether.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/epoll.h>

typedef struct { int fd; } tfd;

static tfd *new_fd(lua_State *L) {
  tfd *f = lua_newuserdatauv(L, sizeof *f, 0);
  f->fd = -1;
  luaL_setmetatable(L, TETHER_FD_MT);
  return f;
}

int *tether_newfd(lua_State *L) {
  return &new_fd(L)->fd;
}

static tfd *check_open(lua_State *L, int idx) {
  tfd *f = luaL_checkudata(L, idx, TETHER_FD_MT);
  if (f->fd < 0) luaL_argerror(L, idx, "attempt to use a closed fd");
  return f;
}

int tether_checkfd(lua_State *L, int idx) {
  if (lua_type(L, idx) == LUA_TNUMBER) {
    lua_Number d = lua_tonumber(L, idx); /* an integral float (luasocket's getfd) is fine */
    if (!(d >= 0 && d <= 0x7fffffff) || d != (lua_Number)(int)d) /* range first: no UB on inf/NaN */
      luaL_argerror(L, idx, "fd must be a non-negative integer");
    return (int)d;
  }
  tfd *f = luaL_testudata(L, idx, TETHER_FD_MT);
  if (f) {
    if (f->fd < 0) luaL_argerror(L, idx, "attempt to use a closed fd");
    return f->fd;
  }
  FILE **fp = luaL_testudata(L, idx, TETHER_FILEHANDLE);
  if (fp) {
    if (*fp == NULL) luaL_argerror(L, idx, "attempt to use a closed file");
#if LUA_VERSION_NUM >= 502
    if (((luaL_Stream *)fp)->closef == NULL) luaL_argerror(L, idx, "attempt to use a closed file");
#endif
    return fileno(*fp);
  }
  return luaL_argerror(L, idx, "expected an fd (integer, Lua file or tether fd)");
}

/* fileno(x) -> the integer fd of a number, Lua file or tether fd (raises for anything else). */
static int fd_fileno(lua_State *L) {
  lua_pushinteger(L, tether_checkfd(L, 1));
  return 1;
}

/* pipe() -> r, w: a pipe, both ends O_CLOEXEC and blocking; or nil, errno. */
static int fd_pipe(lua_State *L) {
  tfd *r = new_fd(L), *w = new_fd(L);
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) return tether_fail(L, errno);
  r->fd = p[0];
  w->fd = p[1];
  return 2;
}

/* open_null() -> fd of /dev/null opened O_RDWR|O_CLOEXEC, or nil, errno. */
static int fd_open_null(lua_State *L) {
  tfd *f = new_fd(L);
  f->fd = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (f->fd < 0) return tether_fail(L, errno);
  return 1;
}

/* eventfd() -> a non-blocking O_CLOEXEC eventfd (readable once fd:notify() was called),
 * or nil, errno. */
static int fd_eventfd(lua_State *L) {
  tfd *f = new_fd(L);
  f->fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (f->fd < 0) return tether_fail(L, errno);
  return 1;
}

/* fd:notify() -> true: adds 1 to an eventfd, making it readable (and keeping it so). */
static int fd_notify(lua_State *L) {
  tfd *f = check_open(L, 1);
  tether_efd_write(f->fd);
  lua_pushboolean(L, 1);
  return 1;
}

/* epoll_set({fd1, ev1, fd2, ev2, ...}) -> an O_CLOEXEC epoll fd watching every pair (level
 * triggered), readable when any is ready: lets a waiter that takes one fd wait on many.
 * Or nil, errno. Negative fds are skipped. */
static int fd_epoll_set(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int n = (int)lua_rawlen(L, 1) / 2;
  tfd *f = new_fd(L);
  f->fd = epoll_create1(EPOLL_CLOEXEC);
  if (f->fd < 0) return tether_fail(L, errno);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 1, 2 * i + 1);
    lua_rawgeti(L, 1, 2 * i + 2);
    int fd = (int)lua_tointeger(L, -2);
    const char *ev = lua_tostring(L, -1);
    lua_pop(L, 2);
    if (fd < 0) continue;
    struct epoll_event e = { .events = 0, .data.u32 = (uint32_t)i };
    if (ev && strchr(ev, 'r')) e.events |= EPOLLIN;
    if (ev && strchr(ev, 'w')) e.events |= EPOLLOUT;
    if (epoll_ctl(f->fd, EPOLL_CTL_ADD, fd, &e) < 0 && errno != EEXIST) {
      int err = errno;
      close(f->fd);
      f->fd = -1;
      return tether_fail(L, err);
    }
  }
  return 1;
}

/* dup(x) -> a new O_CLOEXEC tether fd duplicating x, or nil, errno. */
static int fd_dup(lua_State *L) {
  int src = tether_checkfd(L, 1);
  tfd *f = new_fd(L);
  f->fd = fcntl(src, F_DUPFD_CLOEXEC, 3);
  if (f->fd < 0) return tether_fail(L, errno);
  return 1;
}

/* fd:read(max) -> data (non-empty string) | "" at end of file | false when it would block | nil, errno. */
static int fd_read(lua_State *L) {
  tfd *f = check_open(L, 1);
  lua_Integer max = luaL_optinteger(L, 2, 65536);
  luaL_argcheck(L, max > 0, 2, "must be positive");
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, (size_t)max);
  ssize_t n;
  do n = read(f->fd, p, (size_t)max); while (n < 0 && errno == EINTR);
  if (n < 0) {
    int e = errno;
    if (e == EAGAIN || e == EWOULDBLOCK) { lua_pushboolean(L, 0); return 1; }
    return tether_fail(L, e);
  }
  luaL_pushresultsize(&b, (size_t)n);
  return 1;
}

/* Write without being killed by SIGPIPE: block it for this thread, and consume the one
 * our write raised (unless one was already pending), then restore the mask. */
static ssize_t write_nosigpipe(int fd, const char *p, size_t len, int *err) {
  sigset_t pipe_set, old, pending;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
  sigpending(&pending);
  int was_pending = sigismember(&pending, SIGPIPE);
  ssize_t n;
  do n = write(fd, p, len); while (n < 0 && errno == EINTR);
  *err = errno;
  if (n < 0 && *err == EPIPE && !was_pending) {
    struct timespec zero = {0, 0};
    while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR) {}
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return n;
}

/* fd:write(s [, i]) -> bytes written from position i (default 1) | false when it would block
 * | nil, errno (EPIPE when the reader is gone; the process is never killed by SIGPIPE). */
static int fd_write(lua_State *L) {
  tfd *f = check_open(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  lua_Integer i = luaL_optinteger(L, 3, 1);
  luaL_argcheck(L, i >= 1 && (size_t)i <= len + 1, 3, "out of range");
  int err;
  ssize_t n = write_nosigpipe(f->fd, s + i - 1, len - (size_t)(i - 1), &err);
  if (n < 0) {
    if (err == EAGAIN || err == EWOULDBLOCK) { lua_pushboolean(L, 0); return 1; }
    return tether_fail(L, err);
  }
  lua_pushinteger(L, n);
  return 1;
}

/* fd:close() -> true; closing twice is harmless. */
static int fd_close(lua_State *L) {
  tfd *f = luaL_checkudata(L, 1, TETHER_FD_MT);
  if (f->fd >= 0) {
    close(f->fd); /* on Linux the fd is released even when close reports EINTR */
    f->fd = -1;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* fd:release() -> the integer fd (-1 when closed), which this object no longer owns: it
 * will not close it (tether.ngx hands a pipe's read end to a pool thread, which closes it). */
static int fd_release(lua_State *L) {
  tfd *f = luaL_checkudata(L, 1, TETHER_FD_MT);
  lua_pushinteger(L, f->fd);
  f->fd = -1;
  return 1;
}

/* fd:getfd() -> the integer fd, or -1 when closed. */
static int fd_getfd(lua_State *L) {
  tfd *f = luaL_checkudata(L, 1, TETHER_FD_MT);
  lua_pushinteger(L, f->fd);
  return 1;
}

/* fd:set_nonblock(on) -> true | nil, errno. Only the parent's end of a pipe is made non-blocking. */
static int fd_set_nonblock(lua_State *L) {
  tfd *f = check_open(L, 1);
  int on = lua_toboolean(L, 2);
  int fl = fcntl(f->fd, F_GETFL);
  if (fl < 0 || fcntl(f->fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK) < 0)
    return tether_fail(L, errno);
  lua_pushboolean(L, 1);
  return 1;
}

/* fd:set_pipe_size(bytes) -> the size the kernel granted | nil, errno. */
static int fd_set_pipe_size(lua_State *L) {
  tfd *f = check_open(L, 1);
  int n = fcntl(f->fd, F_SETPIPE_SZ, (int)luaL_checkinteger(L, 2));
  if (n < 0) return tether_fail(L, errno);
  lua_pushinteger(L, n);
  return 1;
}

static int fd_tostring(lua_State *L) {
  tfd *f = luaL_checkudata(L, 1, TETHER_FD_MT);
  if (f->fd < 0) lua_pushliteral(L, "tether.fd (closed)");
  else lua_pushfstring(L, "tether.fd (%d)", f->fd);
  return 1;
}

static const luaL_Reg fd_methods[] = {
  {"read", fd_read}, {"write", fd_write}, {"close", fd_close}, {"getfd", fd_getfd}, {"release", fd_release},
  {"set_nonblock", fd_set_nonblock}, {"notify", fd_notify}, {"set_pipe_size", fd_set_pipe_size}, {NULL, NULL},
};

static const luaL_Reg fd_funcs[] = {
  {"pipe", fd_pipe}, {"open_null", fd_open_null}, {"eventfd", fd_eventfd}, {"epoll_set", fd_epoll_set}, {"dup", fd_dup}, {"fileno", fd_fileno},
  {NULL, NULL},
};

void tether_open_fd(lua_State *L) {
  luaL_newmetatable(L, TETHER_FD_MT);
  lua_newtable(L);
  luaL_setfuncs(L, fd_methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, fd_close);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, fd_close);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, fd_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  luaL_setfuncs(L, fd_funcs, 0);
}
