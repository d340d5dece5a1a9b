/* tether.h - shared internals of the C core (tether.core). Not a public API. */
#ifndef TETHER_H
#define TETHER_H

#define _GNU_SOURCE
#include "compat.h"

/* Each C file registers its functions into the core table on top of the stack. */
void tether_open_sys(lua_State *L);
void tether_open_fd(lua_State *L);
void tether_open_buffer(lua_State *L);
void tether_open_process(lua_State *L);
void tether_open_env(lua_State *L);
void tether_open_signal(lua_State *L);
void tether_open_pool(lua_State *L);
void tether_open_cpus(lua_State *L);
void tether_open_copy(lua_State *L);

/* Push nil, errno and return 2: the Lua layer turns errno into an error object.
 * The caller must have saved errno before any Lua API call. */
int tether_fail(lua_State *L, int err);

/* The one lock around the process environment (env.c); spawn holds it while
 * a child inherits environ. */
void tether_env_lock(void);
void tether_env_unlock(void);

/* Reap processes whose Lua objects were collected without wait (process.c).
 * Cheap when there are none; called from the common entry points. */
void tether_reap_orphans(void);

/* Integer fd from an argument: a number, a Lua file, or a tether fd userdata.
 * Raises naming the argument when it is none of these (fd.c). */
int tether_checkfd(lua_State *L, int idx);

#define TETHER_FD_MT "tether.fd"
#define TETHER_PROC_MT "tether.process"
#define TETHER_BUFFER_MT "tether.buffer"

#endif
