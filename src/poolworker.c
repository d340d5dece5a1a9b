/* poolworker.c - a tether.pool worker thread (pool_worker_main): builds its own lua_State
 * (libraries, the pool's package paths, init), announces itself on the pool's ctl_fd, then
 * takes one task at a time from its pinned queue or the shared one and runs it in protected
 * mode; results and failures are copied out (copy.c) into the task. Exits once the pool
 * closes and its queues are empty. Every signal is blocked in these threads (pool_new). */
#include "pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FNCACHE_MAX 512 /* task functions a worker keeps loaded */

/* Pushes the function of fn (from the cache table at upvalue 1, else loaded and cached). */
static void push_fn(lua_State *L, worker *w, fnblob *fn) {
  lua_rawgeti(L, lua_upvalueindex(1), fn->id);
  if (!lua_isnil(L, -1)) return;
  lua_pop(L, 1);
  if (fn->is_name) {
    const char *dot = strrchr(fn->data, '.');
    lua_getglobal(L, "require");
    lua_pushlstring(L, fn->data, (size_t)(dot - fn->data));
    lua_call(L, 1, 1);
    if (!lua_istable(L, -1)) luaL_error(L, "pool: module '%s' is not a table", lua_tostring(L, -2));
    lua_getfield(L, -1, dot + 1);
    if (lua_type(L, -1) != LUA_TFUNCTION)
      luaL_error(L, "pool: '%s' is not a function", fn->data);
    lua_remove(L, -2);
  } else if (tether_loadbinary(L, fn->data, fn->len, "=(pool task)") != 0) {
    lua_error(L);
  }
  if (++w->nfns > FNCACHE_MAX) { /* bounded: start over */
    lua_newtable(L);
    lua_replace(L, lua_upvalueindex(1));
    w->nfns = 1;
  }
  lua_pushvalue(L, -1);
  lua_rawseti(L, lua_upvalueindex(1), fn->id);
}

/* run(worker, task): in protected mode, the task's call; its results go to task->res. */
static int worker_run(lua_State *L) {
  worker *w = lua_touserdata(L, 1);
  task *t = lua_touserdata(L, 2);
  lua_settop(L, 0);
  push_fn(L, w, t->fn);
  const char *err;
  int n = copy_decode(L, t->args.p, t->args.len, &t->args, &err);
  if (n < 0) return luaL_error(L, "pool: arguments: %s", err);
  lua_call(L, n, LUA_MULTRET);
  int bad;
  if (copy_encode(L, 1, lua_gettop(L), &t->res, &bad, &err) < 0)
    return luaL_error(L, "pool: result #%d: %s", bad + 1, err);
  return 0;
}

/* The message handler: {message, traceback, value}. */
static int worker_msgh(lua_State *L) {
  const char *msg;
  if (lua_type(L, 1) == LUA_TSTRING || lua_type(L, 1) == LUA_TNUMBER) {
    msg = lua_tostring(L, 1);
  } else if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) {
    msg = lua_tostring(L, -1);
  } else {
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  lua_createtable(L, 3, 0);
  lua_pushstring(L, msg);
  lua_rawseti(L, -2, 1);
  tether_traceback(L, L, msg, 1);
  lua_rawseti(L, -2, 2);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 3);
  return 1;
}

/* fail(task, {message, traceback, value}): in protected mode, a failed task's res. */
static int worker_fail(lua_State *L) {
  task *t = lua_touserdata(L, 1);
  copy_free(&t->res);
  if (!lua_istable(L, 2)) { lua_pushstring(L, "pool: task failed"); lua_pushnil(L); lua_pushnil(L); }
  else { lua_rawgeti(L, 2, 1); lua_rawgeti(L, 2, 2); lua_rawgeti(L, 2, 3); }
  int bad;
  const char *err;
  if (copy_encode(L, -3, 2, &t->res, &bad, &err) < 0) return luaL_error(L, "%s", err);
  size_t len = t->res.len;
  if (copy_encode(L, -1, 1, &t->res, &bad, &err) < 0) { /* an error value that cannot cross */
    copy_truncate(&t->res, len);
    lua_pushnil(L);
    if (copy_encode(L, -1, 1, &t->res, &bad, &err) < 0) return luaL_error(L, "%s", err);
  }
  return 0;
}

/* setup(worker): in protected mode, the worker's state: libraries, package paths, its
 * task runner (with the function cache) and message handler at stack slots 1 and 2, init. */
static int worker_setup(lua_State *L) {
  worker *w = lua_touserdata(L, 1);
  pool *p = w->p;
  lua_settop(L, 0);
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  if (lua_istable(L, -1)) {
    if (p->path) { lua_pushstring(L, p->path); lua_setfield(L, -2, "path"); }
    if (p->cpath) { lua_pushstring(L, p->cpath); lua_setfield(L, -2, "cpath"); }
  }
  lua_pop(L, 1);
  if (p->init) {
    if (p->init->is_name) {
      lua_getglobal(L, "require");
      lua_pushstring(L, p->init->data);
      lua_call(L, 1, 0);
    } else {
      if (tether_loadbinary(L, p->init->data, p->init->len, "=(pool init)") != 0) lua_error(L);
      lua_pushinteger(L, w->index + 1);
      lua_pushinteger(L, p->size);
      lua_call(L, 2, 0);
    }
  }
  lua_settop(L, 0);
  lua_newtable(L);
  lua_pushcclosure(L, worker_run, 1);
  lua_pushcfunction(L, worker_msgh);
  return 2;
}

/* Runs one task in L (runner at slot 1, handler at 2); its final state. */
static int run_task(lua_State *L, worker *w, task *t) {
  lua_pushvalue(L, 1);
  lua_pushlightuserdata(L, w);
  lua_pushlightuserdata(L, t);
  if (lua_pcall(L, 2, 0, 2) == 0) return ST_DONE;
  /* the error table (or a memory error's string) is on top */
  lua_pushcfunction(L, worker_fail);
  lua_insert(L, -2);
  lua_pushlightuserdata(L, t);
  lua_insert(L, -2);
  if (lua_pcall(L, 2, 0, 0) != 0) {
    lua_pop(L, 1);
    copy_free(&t->res); /* the Lua side reports a failure without a message */
  }
  lua_settop(L, 2);
  return ST_FAILED;
}

/* Takes the next task for w (its own queue first), or NULL; the lock is held. One task at
 * a time: a task is only ever held by a worker that runs it, so none waits behind a long
 * one while another worker is free, and `queued` is exact for backpressure and cancel. When
 * tasks are left for others, wakes one more worker. */
static task *take(pool *p, worker *w) {
  if (w->waking) { w->waking = 0; p->nwaking--; }
  task *t = pool_q_pop(&w->q);
  if (!t) t = pool_q_pop(&p->q);
  if (t) {
    p->queued--;
    pool_space_check(p);
    if (p->q.head) pool_wake(p, NULL);
  }
  return t;
}

void *pool_worker_main(void *arg) {
  worker *w = arg;
  pool *p = w->p;
  char name[32];
  snprintf(name, sizeof name, "tether-w%d", w->index + 1);
  name[15] = 0; /* the kernel's limit */
  pthread_setname_np(pthread_self(), name);
  lua_State *L = NULL;
  if (w->cpus) {
    int e = pthread_setaffinity_np(pthread_self(), w->cpusize, w->cpus);
    if (e != 0) {
      char buf[128];
      snprintf(buf, sizeof buf, "affinity: %s", strerror(e));
      w->err = strdup(buf);
    }
  }
  if (!w->err) {
    L = luaL_newstate();
    if (!L) w->err = strdup("out of memory");
  }
  if (L) {
    lua_pushcfunction(L, worker_setup);
    lua_pushlightuserdata(L, w);
    if (lua_pcall(L, 1, 2, 0) != 0) {
      const char *m = lua_tostring(L, -1);
      w->err = strdup(m ? m : "init failed (error object is not a string)");
    }
  }
  pthread_mutex_lock(&p->mu);
  if (w->err) p->failed++; else p->ready++;
  tether_efd_write(p->ctl_fd);
  pthread_mutex_unlock(&p->mu);

  if (!w->err) {
    pthread_mutex_lock(&p->mu);
    for (;;) {
      task *t = take(p, w);
      if (!t) {
        if (p->closing) break;
        w->idle = 1;
        p->nidle++;
        while (w->idle) pthread_cond_wait(&w->cv, &p->mu);
        continue;
      }
      pthread_mutex_unlock(&p->mu);
      int s = ST_QUEUED;
      if (atomic_compare_exchange_strong(&t->state, &s, ST_RUNNING)) {
        atomic_fetch_add(&p->running, 1);
        int st = run_task(L, w, t);
        atomic_store(&t->state, st);
        atomic_fetch_sub(&p->running, 1);
        atomic_fetch_add(st == ST_DONE ? &p->done : &p->nfailed, 1);
        pool_task_ended(t);
      } /* else cancelled after it was taken: the canceller did the rest */
      pool_task_unref(t);
      pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
  }
  if (L) lua_close(L);
  pthread_mutex_lock(&p->mu);
  p->exited++;
  tether_efd_write(p->ctl_fd);
  pthread_mutex_unlock(&p->mu);
  return NULL;
}
