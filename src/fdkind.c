/* fdkind.c - what kind of file an fd is, where tether must know (tether.core.is_pidfd).
 * tether.ngx's pool-thread wait uses it to tell a process's pidfd in a wait list. */
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

void tether_open_fdkind(lua_State *L) {
  lua_pushcfunction(L, fk_is_pidfd);
  lua_setfield(L, -2, "is_pidfd");
}
