/* fdkind.c - what kind of file an fd is, where tether must know (tether.core.is_pidfd), and
 * closing a bare fd no object owns (close_int). tether.ngx's pool-thread side uses both. */
#include "tether.h"

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

void tether_open_fdkind(lua_State *L) {
  lua_pushcfunction(L, fk_is_pidfd);
  lua_setfield(L, -2, "is_pidfd");
  lua_pushcfunction(L, fk_close_int);
  lua_setfield(L, -2, "close_int");
}
