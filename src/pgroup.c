/* pgroup.c - who is left in a process group, for tether.supervisor: a child counts as
 * stopped once its whole group is gone. kill(-pgid, 0) cannot tell, because it counts
 * zombies, and a container's PID 1 often never reaps the orphans it inherits; so /proc is
 * read instead, skipping zombies. */
#include "tether.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Reads /proc/<name>/stat; returns 1 when that process is in group pgid and not a zombie
 * (or dead), 0 otherwise (also when it vanished meanwhile). */
static int live_member(const char *name, long pgid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%s/stat", name);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n;
  do n = read(fd, buf, sizeof buf - 1); while (n < 0 && errno == EINTR);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  char *p = strrchr(buf, ')'); /* comm may contain spaces and ')' */
  if (!p || p[1] != ' ' || !p[2]) return 0;
  char state = p[2];
  long ppid, pgrp;
  if (sscanf(p + 3, " %ld %ld", &ppid, &pgrp) != 2) return 0;
  return pgrp == pgid && state != 'Z' && state != 'X' && state != 'x';
}

/* pgroup_alive(pgid) -> true when some process that is not a zombie is in group pgid,
 * else false; nil, errno when /proc cannot be read. */
static int pg_alive(lua_State *L) {
  lua_Integer pgid = luaL_checkinteger(L, 1);
  luaL_argcheck(L, pgid > 0, 1, "pgid must be positive");
  DIR *d = opendir("/proc");
  if (!d) return tether_fail(L, errno);
  int found = 0;
  struct dirent *e;
  while (!found && (e = readdir(d)) != NULL)
    if (isdigit((unsigned char)e->d_name[0])) found = live_member(e->d_name, (long)pgid);
  closedir(d);
  lua_pushboolean(L, found);
  return 1;
}

static const luaL_Reg pg_funcs[] = {
  {"pgroup_alive", pg_alive}, {NULL, NULL},
};

void tether_open_pgroup(lua_State *L) {
  luaL_setfuncs(L, pg_funcs, 0);
}
