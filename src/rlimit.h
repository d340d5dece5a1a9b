/* rlimit.h - a child's resource limits and umask (cmd.rlimits, cmd.umask), prepared by the
 * parent for the spawn path (rlimit.c parses them; process.c's child applies them). */
#ifndef TETHER_RLIMIT_H
#define TETHER_RLIMIT_H

#include "tether.h"
#include <stdint.h>

#define TETHER_NRLIMITS 8 /* nofile core cpu as fsize nproc stack memlock */

/* One limit as the prlimit64 syscall takes it (struct rlimit64: two u64, ~0 = infinity). */
struct tether_rlimit {
  int resource;
  uint64_t cur, max;
};

struct tether_child_limits {
  struct tether_rlimit lim[TETHER_NRLIMITS];
  int n;
  int umask; /* -1: keep */
};

/* Reads spec.rlimits (a list of {name, soft, hard}; math.huge = unlimited) and spec.umask
 * (an integer 0..0777) from the table at idx into out. Raises a plain "spawn: ..." error
 * on a malformed spec (the Lua layer validates first and names the Cmd field). */
void tether_child_limits(lua_State *L, int idx, struct tether_child_limits *out);

/* In the child (async-signal-safe: raw syscalls only): sets the limits, then the umask.
 * Returns 0, or -1 with errno set when a limit could not be set. */
int tether_apply_child_limits(const struct tether_child_limits *l);

#endif
