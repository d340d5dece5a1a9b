/* fdkind.c - what kind of file an fd is, where tether must know (tether.core.is_pidfd), and
 * closing a bare fd no object owns (close_int), and a pipe of bare fds (pipe_int). tether.ngx
 * uses them for a command it runs whole in nginx's thread pool (its abort pipe). */
#include "tether.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* is_pidfd(fd) -> whether fd is a pidfd (its /proc/self/fd link reads "anon_inode:[pidfd]",
 * or "pidfd:..." on pidfs). */
static int fk_is_pidfd(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  char path[64], buf[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(path, buf, sizeof buf - 1);
  if (n < 0) n = 0;
  buf[n] = 0;
  lua_pushboolean(L, strstr(buf, "pidfd") != NULL);
  return 1;
}

/* close_int(fd): closes an integer fd that no tether object owns (fd:release()). */
static int fk_close_int(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  if (fd >= 0) close(fd);
  return 0;
}

/* pipe_int() -> rfd, wfd (integers no tether object owns, O_CLOEXEC) | nil, err. */
static int fk_pipe_int(lua_State *L) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) return tether_fail(L, errno);
  lua_pushinteger(L, p[0]);
  lua_pushinteger(L, p[1]);
  return 2;
}

void tether_open_fdkind(lua_State *L) {
  lua_pushcfunction(L, fk_pipe_int);
  lua_setfield(L, -2, "pipe_int");
  lua_pushcfunction(L, fk_is_pidfd);
  lua_setfield(L, -2, "is_pidfd");
  lua_pushcfunction(L, fk_close_int);
  lua_setfield(L, -2, "close_int");
}
