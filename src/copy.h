/* copy.h - the cross-state value copier (copy.c): Lua values serialised into a flat byte
 * buffer in one lua_State and rebuilt in another (tether.pool's tasks and results). */
#ifndef TETHER_COPY_H
#define TETHER_COPY_H

#include "tether.h"

#include <stddef.h>

/* Bounds: nesting depth of tables, and values in one buffer's top level. */
#define COPY_MAX_DEPTH 100
#define COPY_MAX_VALUES 7900

/* A growable byte buffer with a small inline store (most task arguments fit: no malloc).
 * Never moved once used (p may point into small). */
typedef struct copy_buf {
  char *p;
  size_t len, cap;
  void **sems;  /* semaphores referenced by the buffer (TETHER_HAVE_SEM), retained */
  size_t nsems, capsems;
  char small[48];
} copy_buf;

void copy_init(copy_buf *b);
/* Frees the buffer's memory and releases what it retained; leaves it empty (re-usable). */
void copy_free(copy_buf *b);
/* Truncates to len bytes (to undo a failed copy_encode; len from before it). */
void copy_truncate(copy_buf *b, size_t len);

/* Appends the n values at stack index first.. to b. 0 on success; -1 on failure with
 * *bad = the 0-based offset of the value that could not be copied and *err a static
 * message ("table cycle", "cannot copy a userdata", ...); b then holds a partial value:
 * copy_truncate it. May raise a Lua error only on memory exhaustion (b stays owned by
 * the caller, so nothing leaks). Uses a few stack slots, balanced on return. */
int copy_encode(lua_State *L, int first, int n, copy_buf *b, int *bad, const char **err);

/* Pushes the values in p[0..len). origin is the buffer p comes from when it was made by
 * copy_encode in this process (trusted: function values are loaded, semaphores resolved);
 * NULL for bytes of unknown origin: then a function or semaphore is an error, as is any
 * malformed input. Returns the number of values pushed, or -1 with *err set and nothing
 * pushed. May raise a Lua error only on memory exhaustion. */
int copy_decode(lua_State *L, const char *p, size_t len, const copy_buf *origin, const char **err);

#endif
