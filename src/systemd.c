/* systemd.c - what tether.systemd needs from C: the sd_notify wire protocol (one AF_UNIX
 * datagram to $NOTIFY_SOCKET, a path or an abstract "@name" address) and the fd flag that
 * socket activation asks for (FD_CLOEXEC on the fds passed in). No libsystemd.
 * notify_listen binds the receiving end of that protocol: the specs use it to read what
 * notify sent, and a supervisor could use it to be a NOTIFY_SOCKET for its children. */
#include "tether.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

/* Fills *sa from addr ("/path" or "@abstract"); returns the address length, or -1 with
 * errno EINVAL (empty, relative, NUL inside) or ENAMETOOLONG. */
static int unix_addr(struct sockaddr_un *sa, const char *addr, size_t len) {
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  if (len < 2 || (addr[0] != '/' && addr[0] != '@') || memchr(addr, '\0', len)) {
    errno = EINVAL;
    return -1;
  }
  if (addr[0] == '@') { /* abstract: a leading NUL, the name after it, no terminator */
    if (len > sizeof sa->sun_path) { errno = ENAMETOOLONG; return -1; }
    memcpy(sa->sun_path + 1, addr + 1, len - 1);
    return (int)(offsetof(struct sockaddr_un, sun_path) + len);
  }
  if (len >= sizeof sa->sun_path) { errno = ENAMETOOLONG; return -1; }
  memcpy(sa->sun_path, addr, len);
  return (int)(offsetof(struct sockaddr_un, sun_path) + len + 1);
}

/* notify_send(addr, data) -> true | nil, errno: sends data as one datagram from a fresh
 * SOCK_DGRAM|SOCK_CLOEXEC socket to addr ("/path" or "@abstract"), then closes it. */
static int sd_notify_send(lua_State *L) {
  size_t alen, dlen;
  const char *addr = luaL_checklstring(L, 1, &alen);
  const char *data = luaL_checklstring(L, 2, &dlen);
  struct sockaddr_un sa;
  int salen = unix_addr(&sa, addr, alen);
  if (salen < 0) return tether_fail(L, errno);
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return tether_fail(L, errno);
  ssize_t n;
  do n = sendto(fd, data, dlen, MSG_NOSIGNAL, (struct sockaddr *)&sa, (socklen_t)salen);
  while (n < 0 && errno == EINTR);
  int err = errno;
  close(fd);
  if (n < 0) return tether_fail(L, err);
  lua_pushboolean(L, 1);
  return 1;
}

/* notify_listen(addr) -> tether fd | nil, errno: a SOCK_DGRAM socket bound to addr
 * ("/path" or "@abstract"), O_CLOEXEC and non-blocking; fd:read(n) returns one datagram. */
static int sd_notify_listen(lua_State *L) {
  size_t alen;
  const char *addr = luaL_checklstring(L, 1, &alen);
  struct sockaddr_un sa;
  int salen = unix_addr(&sa, addr, alen);
  if (salen < 0) return tether_fail(L, errno);
  int *fd = tether_newfd(L);
  *fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (*fd < 0) return tether_fail(L, errno);
  if (bind(*fd, (struct sockaddr *)&sa, (socklen_t)salen) < 0) {
    int err = errno;
    close(*fd);
    *fd = -1;
    return tether_fail(L, err);
  }
  return 1;
}

/* set_cloexec(fd) -> true | nil, errno (EBADF when fd is not open): sets FD_CLOEXEC. */
static int sd_set_cloexec(lua_State *L) {
  int fd = tether_checkfd(L, 1);
  int fl = fcntl(fd, F_GETFD);
  if (fl < 0 || (!(fl & FD_CLOEXEC) && fcntl(fd, F_SETFD, fl | FD_CLOEXEC) < 0))
    return tether_fail(L, errno);
  lua_pushboolean(L, 1);
  return 1;
}

static const luaL_Reg sd_funcs[] = {
  {"notify_send", sd_notify_send}, {"notify_listen", sd_notify_listen},
  {"set_cloexec", sd_set_cloexec}, {NULL, NULL},
};

void tether_open_systemd(lua_State *L) {
  luaL_setfuncs(L, sd_funcs, 0);
}
