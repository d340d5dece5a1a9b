/* fork.c - fork() from any thread of the host, at any time, leaves a child whose tether locks
 * are usable. One pthread_atfork registration (tether_fork_init, from luaopen_tether_core)
 * takes every process-wide tether lock before the fork, in the order tether nests them (env,
 * then the child registry, then relay mode's orphans, then the pools, then the semaphores),
 * and releases them after it, in the parent and in the child (where the forking thread is
 * the only thread left). The lane (lane.c) and the signal slots (signal.c) register their
 * own handlers when first used: those also reset state a child must not share.
 *
 * glibc drops these handlers if this library is unloaded (dlclose), so a later fork never
 * calls into unmapped code. */
#include "tether.h"

#include <pthread.h>

static void prepare(void) {
  tether_env_lock();
  tether_children_lock();
  tether_relay_lock();
  tether_pool_fork(0);
  tether_sync_fork(0);
}

static void in_parent(void) {
  tether_sync_fork(1);
  tether_pool_fork(1);
  tether_relay_unlock();
  tether_children_unlock();
  tether_env_unlock();
}

static void in_child(void) {
  tether_sync_fork(2);
  tether_pool_fork(2);
  tether_relay_unlock();
  tether_children_unlock();
  tether_env_child_unlock();
}

static pthread_once_t once = PTHREAD_ONCE_INIT;
static void do_register(void) { pthread_atfork(prepare, in_parent, in_child); }

void tether_fork_init(void) { pthread_once(&once, do_register); }
