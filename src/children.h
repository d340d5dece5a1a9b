/* children.h - the registry of tether's live children (children.c), shared with process.c
 * (which adds, looks up and removes records) and reaper.c (tether_child_stash, in tether.h).
 * Every function here is called with the registry lock held (tether_children_lock). */
#ifndef TETHER_CHILDREN_H
#define TETHER_CHILDREN_H

#include <sys/resource.h>
#include <sys/types.h>

/* One per live child of tether (spawned, or found by find_process while our child):
 * looked up by pid when reaper mode's wait4(-1) reaps a process, so that the status
 * reaches the Process object instead of being lost. In the pid table while unreaped. */
struct child_rec {
  pid_t pid;
  int stashed;             /* reaped by the reaper: status and ru are final */
  int status;
  struct rusage ru;
  struct child_rec *next;  /* pid table chain */
};

void tether_child_add(struct child_rec *r);          /* into the pid table (r->pid set) */
void tether_child_remove(struct child_rec *r);       /* out of the pid table (if in it) */
struct child_rec *tether_child_find(pid_t pid);      /* the record in the table, or NULL */
/* Keeps r (still in the pid table) to be reaped by a later tether call (tether_reap_orphans),
 * which frees it; 0 when out of memory (the caller keeps r). */
int tether_child_orphan(struct child_rec *r);

#endif
