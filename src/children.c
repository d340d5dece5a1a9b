/* children.c - the registry of tether's live children and background reaping of the ones
 * whose Lua objects were collected without wait (orphans).
 *
 * One lock guards the pid table and the orphan list. spawn (process.c) holds it from clone
 * until the child is in the table, and reaper.c holds it around its wait4(-1), so a child
 * can never be reaped before tether knows it is its own; tether_child_stash keeps the status
 * of a child the reaper took for its Process. Never waitpid(-1) here.
 *
 * Entry points: tether_children_lock/unlock, tether_child_add/remove/find/orphan
 * (children.h), tether_child_stash and tether_reap_orphans (tether.h). */
#include "tether.h"
#include "children.h"
#include "spawn.h" /* tether_relay_reap_orphans */

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/wait.h>

static pthread_mutex_t children_lock = PTHREAD_MUTEX_INITIALIZER;

void tether_children_lock(void) { pthread_mutex_lock(&children_lock); }
void tether_children_unlock(void) { pthread_mutex_unlock(&children_lock); }

/* ---- the pid table ---------------------------------------------------------------------- */

#define NBUCKETS 256
static struct child_rec *buckets[NBUCKETS];

static struct child_rec **bucket_of(pid_t pid) { return &buckets[(unsigned)pid % NBUCKETS]; }

void tether_child_add(struct child_rec *r) {
  struct child_rec **b = bucket_of(r->pid);
  r->next = *b;
  *b = r;
}

void tether_child_remove(struct child_rec *r) {
  for (struct child_rec **pp = bucket_of(r->pid); *pp; pp = &(*pp)->next)
    if (*pp == r) { *pp = r->next; r->next = NULL; return; }
}

struct child_rec *tether_child_find(pid_t pid) {
  for (struct child_rec *r = *bucket_of(pid); r; r = r->next)
    if (r->pid == pid) return r;
  return NULL;
}

/* Called by the reaper, lock held, for each process its wait4(-1) reaped: 1 when it was
 * one of tether's children (its status is kept for its Process), 0 otherwise. */
int tether_child_stash(pid_t pid, int status, const struct rusage *ru) {
  struct child_rec *r = tether_child_find(pid);
  if (!r) return 0;
  tether_child_remove(r); /* the pid is free for reuse from now on */
  r->stashed = 1;
  r->status = status;
  r->ru = *ru;
  return 1;
}

/* ---- orphans: released (collected) processes still running ------------------------------ */

static struct child_rec **orphans;
static size_t orphan_cap;
static atomic_size_t orphan_count;

int tether_child_orphan(struct child_rec *r) {
  size_t n = atomic_load(&orphan_count);
  if (n == orphan_cap) {
    size_t cap = orphan_cap ? orphan_cap * 2 : 16;
    struct child_rec **p = realloc(orphans, cap * sizeof *p);
    if (!p) return 0;
    orphans = p;
    orphan_cap = cap;
  }
  orphans[n] = r;
  atomic_store(&orphan_count, n + 1);
  return 1;
}

void tether_reap_orphans(void) {
  if (tether_reaper_on()) tether_reaper_step();
  tether_relay_reap_orphans(); /* relay mode's released intermediates (relay.c) */
  if (atomic_load_explicit(&orphan_count, memory_order_relaxed) == 0) return;
  int saved = errno;
  pthread_mutex_lock(&children_lock);
  size_t n = atomic_load(&orphan_count);
  for (size_t i = 0; i < n;) {
    struct child_rec *r = orphans[i];
    int st, gone = r->stashed;
    if (!gone) {
      pid_t w = waitpid(r->pid, &st, WNOHANG | __WALL);
      gone = w == r->pid || (w < 0 && errno == ECHILD);
      if (gone) tether_child_remove(r);
    }
    if (gone) { free(r); orphans[i] = orphans[--n]; }
    else i++;
  }
  atomic_store(&orphan_count, n);
  if (n == 0) { free(orphans); orphans = NULL; orphan_cap = 0; }
  pthread_mutex_unlock(&children_lock);
  errno = saved;
}
