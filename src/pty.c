/* pty.c - pseudo-terminals for tether.terminal: opens a master/slave pair (both
 * O_CLOEXEC, the master non-blocking for the parent), sets, reads and changes the
 * window size, names the slave. The child side (setsid + TIOCSCTTY on the slave) lives
 * in process.c's child path (spawn's `ctty` field); everything else about a Terminal
 * (buffering, expect, timeouts) is Lua, in lua/tether/terminal.lua. */
#include "tether.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif

/* A window size argument: an integer in [0, 65535] (0 leaves that dimension unset). */
static unsigned short check_dim(lua_State *L, int idx, const char *what) {
  lua_Integer v = luaL_checkinteger(L, idx);
  luaL_argcheck(L, v >= 0 && v <= 65535, idx, what);
  return (unsigned short)v;
}

/* Opens the slave of master: TIOCGPTPEER (Linux 4.13+, no path lookup, so no race with a
 * devpts remount), else ptsname_r + open. -1 with errno on failure. */
static int open_slave(int master) {
  int fd = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (fd >= 0 || (errno != EINVAL && errno != ENOTTY)) return fd;
  char name[64];
  if (ptsname_r(master, name, sizeof name) != 0) return -1;
  return open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
}

/* pty_open(rows, cols) -> master, slave (tether fds, both O_CLOEXEC; the master is
 * non-blocking) | nil, errno. rows or cols 0: the kernel's default (0) is left. */
static int pty_open(lua_State *L) {
  struct winsize ws;
  memset(&ws, 0, sizeof ws);
  ws.ws_row = check_dim(L, 1, "rows must be an integer in [0, 65535]");
  ws.ws_col = check_dim(L, 2, "cols must be an integer in [0, 65535]");
  int *master = tether_newfd(L), *slave = tether_newfd(L); /* created closed: no leak on error */
  int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (m < 0) return tether_fail(L, errno);
  *master = m;
  int fl = fcntl(m, F_GETFL);
  if (grantpt(m) != 0 || unlockpt(m) != 0 || fl < 0 || fcntl(m, F_SETFL, fl | O_NONBLOCK) < 0 ||
      ((ws.ws_row || ws.ws_col) && ioctl(m, TIOCSWINSZ, &ws) < 0))
    return tether_fail(L, errno); /* the master is closed by its finalizer */
  int s = open_slave(m);
  if (s < 0) return tether_fail(L, errno);
  *slave = s;
  return 2;
}

/* pty_resize(master, rows, cols) -> true | nil, errno. The kernel sends SIGWINCH to the
 * terminal's foreground process group when the size changes. */
static int pty_resize(lua_State *L) {
  int fd = tether_checkfd(L, 1);
  struct winsize ws;
  memset(&ws, 0, sizeof ws);
  ws.ws_row = check_dim(L, 2, "rows must be an integer in [0, 65535]");
  ws.ws_col = check_dim(L, 3, "cols must be an integer in [0, 65535]");
  if (ioctl(fd, TIOCSWINSZ, &ws) < 0) return tether_fail(L, errno);
  lua_pushboolean(L, 1);
  return 1;
}

/* pty_size(fd) -> rows, cols | nil, errno (TIOCGWINSZ). */
static int pty_size(lua_State *L) {
  int fd = tether_checkfd(L, 1);
  struct winsize ws;
  if (ioctl(fd, TIOCGWINSZ, &ws) < 0) return tether_fail(L, errno);
  lua_pushinteger(L, ws.ws_row);
  lua_pushinteger(L, ws.ws_col);
  return 2;
}

/* pty_set_echo(fd, on) -> true | nil, errno: the terminal's ECHO flag (tcsetattr; on a
 * master fd Linux changes the slave's settings, which the line discipline uses). */
static int pty_set_echo(lua_State *L) {
  int fd = tether_checkfd(L, 1);
  int on = lua_toboolean(L, 2);
  struct termios t;
  if (tcgetattr(fd, &t) < 0) return tether_fail(L, errno);
  if (on) t.c_lflag |= ECHO; else t.c_lflag &= ~(tcflag_t)ECHO;
  if (tcsetattr(fd, TCSANOW, &t) < 0) return tether_fail(L, errno);
  lua_pushboolean(L, 1);
  return 1;
}

/* pty_name(master) -> the slave's path ("/dev/pts/3") | nil, errno. */
static int pty_name(lua_State *L) {
  int fd = tether_checkfd(L, 1);
  char name[64];
  int e = ptsname_r(fd, name, sizeof name);
  if (e != 0) return tether_fail(L, e == -1 ? errno : e);
  lua_pushstring(L, name);
  return 1;
}

static const luaL_Reg pty_funcs[] = {
  {"pty_open", pty_open}, {"pty_resize", pty_resize}, {"pty_size", pty_size},
  {"pty_name", pty_name}, {"pty_set_echo", pty_set_echo}, {NULL, NULL},
};

void tether_open_pty(lua_State *L) {
  luaL_setfuncs(L, pty_funcs, 0);
}
