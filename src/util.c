/* util.c - the small helpers every other C file shares: tether_fail (runtime failures as
 * nil, errno) and the eventfd wake-up (tether_efd_write, tether_efd_drain). Nothing here
 * calls back into the rest of the core. */
#include "tether.h"

#include <errno.h>
#include <stdint.h>
#include <unistd.h>

int tether_fail(lua_State *L, int err) {
  lua_pushnil(L);
  lua_pushinteger(L, err);
  return 2;
}

/* Adds 1 to an eventfd (no-op for fd < 0), restarting on EINTR. Async-signal-safe and keeps
 * errno: signal handlers call it too. An eventfd only refuses a write when its counter is
 * near 2^64, and then it is readable already. */
void tether_efd_write(int fd) {
  if (fd < 0) return;
  int saved = errno;
  uint64_t one = 1;
  while (write(fd, &one, sizeof one) < 0 && errno == EINTR) {}
  errno = saved;
}

/* Resets a non-blocking eventfd to 0 (no-op for fd < 0; EAGAIN: it was not readable). */
void tether_efd_drain(int fd) {
  if (fd < 0) return;
  int saved = errno;
  uint64_t v;
  while (read(fd, &v, sizeof v) < 0 && errno == EINTR) {}
  errno = saved;
}
