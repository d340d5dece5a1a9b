/* slab.c - read buffers for the file-I/O lane: each lane thread carves the buffers of small
 * files out of its own 2 MiB slab (one transparent huge page where the kernel allows), so
 * reading thousands of small files faults in a few huge pages instead of a fresh 4 KiB page or
 * two per file, and the lane threads never contend on malloc's arenas.
 *
 * A slab is refcounted: one reference per buffer cut from it, plus one for its thread while it
 * is that thread's current slab. The Lua thread drops a buffer's reference once it has copied
 * the data into a Lua string (lane_buf_free); whoever drops the last frees the slab. So memory
 * is held only while some buffer of the slab is not collected yet. Bigger files use malloc. */
#include "lane.h"

#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>

#define SLAB_SIZE ((size_t)2 << 20)      /* one huge page, and the slab's alignment */
#define SLAB_ITEM_MAX ((size_t)64 << 10)  /* bigger buffers come from malloc */
#define SLAB_HEAD 64                      /* the header, rounded to a cache line */

struct slab {
  atomic_size_t refs;
  size_t used;                           /* the owner thread's bump offset */
};

/* this lane thread's slab, or NULL; initial-exec TLS, as tether.h's TETHER_TLS_IE says why */
static _Thread_local struct slab *current __attribute__((tls_model("initial-exec")));

static struct slab *slab_of(const char *p) {
  return (struct slab *)((uintptr_t)p & ~(uintptr_t)(SLAB_SIZE - 1));
}

static void slab_unref(struct slab *s) {
  if (atomic_fetch_sub(&s->refs, 1) == 1) free(s);
}

static struct slab *slab_new(void) {
  struct slab *s = aligned_alloc(SLAB_SIZE, SLAB_SIZE);
  if (!s) return NULL;
#ifdef MADV_HUGEPAGE
  madvise(s, SLAB_SIZE, MADV_HUGEPAGE);
#endif
  atomic_init(&s->refs, 1);
  s->used = SLAB_HEAD;
  return s;
}

char *lane_buf_alloc(size_t size, int *from_slab) {
  *from_slab = 0;
  if (size > SLAB_ITEM_MAX) return malloc(size);
  size = (size + 15) & ~(size_t)15;
  if (!current || current->used + size > SLAB_SIZE) {
    struct slab *s = slab_new();
    if (!s) return malloc(size);
    if (current) slab_unref(current);
    current = s;
  }
  char *p = (char *)current + current->used;
  current->used += size;
  atomic_fetch_add(&current->refs, 1);
  *from_slab = 1;
  return p;
}

void lane_buf_free(char *p, int from_slab) {
  if (!p) return;
  if (from_slab) slab_unref(slab_of(p));
  else free(p);
}

void lane_buf_thread_exit(void) {
  if (current) slab_unref(current);
  current = NULL;
}
