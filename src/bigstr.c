/* bigstr.c - owns handing a large byte range to Lua as a string: the one copy into the
 * string's own block, with the source released as the copy goes (so the peak is the string
 * plus one chunk, not twice the data), and the block faulted in on huge pages.
 *
 * lua_pushlstring allocates the string's block and then copies the bytes into it; a C module
 * cannot write into a Lua string it did not copy. What this file does instead, where the Lua
 * has a replaceable allocator (5.1-5.4; not LuaJIT, whose allocator tether leaves alone):
 *   1. ask the state's own allocator for the block, of the size Lua will ask for;
 *   2. copy the bytes into it chunk by chunk, unmapping each source chunk once copied;
 *   3. push the string with a wrapper allocator in place for that one call, which hands Lua
 *      that block when it asks for that size; Lua's own copy is then from the block onto
 *      itself, which glibc's memmove skips.
 * The block comes from the state's allocator and is freed through it, so any allocator
 * works. Where the block goes unused (the wrapper was not asked), it is given back and Lua
 * copies from it as from any source: the string is right in every case. Where Lua puts a
 * string's bytes inside its block (the header size) is learned once at run time by pushing
 * a probe string, not taken from Lua's internals. */
#include "tether.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#ifndef MADV_HUGEPAGE
#define MADV_HUGEPAGE 14
#endif

#if defined(LUAJIT_VERSION_NUM) || defined(LUA_JITLIBNAME)
#define BIGSTR_WRAP 0
#else
#define BIGSTR_WRAP 1
#endif

#define CHUNK ((size_t)2 << 20) /* copy and release granule: one huge page */
#define PROBE_LEN 200

/* The allocator in place during one push: passes everything through to the state's own
 * allocator, except that it hands out `give` for the first new block of `give_size`, and
 * records the first new block whose size lies in [seen_min, seen_max] (the probe). */
typedef struct {
  lua_Alloc f;
  void *ud;
  void *give;
  size_t give_size;
  int used;
  size_t seen_min, seen_max;
  void *seen;
  size_t seen_size, seen_tag;
} wrap_state;

static void *wrap_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  wrap_state *w = ud;
  if (ptr == NULL && nsize != 0) {
    if (w->give && !w->used && nsize == w->give_size) {
      w->used = 1;
      return w->give;
    }
    void *p = w->f(w->ud, ptr, osize, nsize);
    if (!w->seen && nsize >= w->seen_min && nsize <= w->seen_max) { /* the first one only */
      w->seen = p;
      w->seen_size = nsize;
      w->seen_tag = osize;
    }
    return p;
  }
  return w->f(w->ud, ptr, osize, nsize);
}

/* What the probe learned: the offset of a string's bytes in its block, and the `osize`
 * (object tag) Lua passes when it allocates one. -1: not probed yet; -2: unusable here. */
static int str_offset = -1;
static size_t str_tag;

typedef struct {
  const char *s;
  size_t len;
} push_args;

static int push_call(lua_State *L) {
  const push_args *a = lua_touserdata(L, 1);
  lua_pushlstring(L, a->s, a->len);
  return 1;
}

/* Pushes s with w in place as the allocator, and the state's own allocator back afterwards
 * whatever happens: a memory error inside the push is caught, the allocator restored, and
 * the error returned (nonzero, with the message pushed) for the caller to raise. */
static int push_wrapped(lua_State *L, wrap_state *w, const char *s, size_t len) {
  push_args a = {s, len};
  w->f = lua_getallocf(L, &w->ud);
  lua_pushcfunction(L, push_call);
  lua_pushlightuserdata(L, &a);
  lua_setallocf(L, wrap_alloc, w);
  int rc = lua_pcall(L, 1, 1, 0);
  lua_setallocf(L, w->f, w->ud);
  return rc;
}

static void probe(lua_State *L) {
  static unsigned counter;
  char s[PROBE_LEN];
  memset(s, 'p', sizeof s);
  /* Unique bytes, so that no Lua can find an equal string already interned. */
  int n = snprintf(s, sizeof s, "tether-bigstr-probe %p %u", (void *)s, ++counter);
  if (n > 0 && n < (int)sizeof s) s[n] = 'p';
  wrap_state w = {0};
  w.seen_min = PROBE_LEN;
  w.seen_max = PROBE_LEN + 512;
  if (push_wrapped(L, &w, s, sizeof s) != 0) { /* out of memory: try again next time */
    lua_pop(L, 1);
    return;
  }
  const char *got = lua_tostring(L, -1);
  ptrdiff_t off = w.seen ? got - (const char *)w.seen : -1;
  if (off > 0 && off < 512 && w.seen_size == (size_t)off + PROBE_LEN + 1) {
    str_tag = w.seen_tag;
    str_offset = (int)off;
  } else {
    str_offset = -2;
  }
  lua_pop(L, 1);
}

/* Unmap [from, to) of the source mapping that starts at map (page aligned). */
static void release(char *map, size_t from, size_t to) {
  if (to > from) munmap(map + from, to - from);
}

void tether_push_mapping(lua_State *L, char *map, size_t len, size_t maplen) {
  if (BIGSTR_WRAP && len >= CHUNK && str_offset == -1) probe(L);
  if (!BIGSTR_WRAP || len < CHUNK || str_offset < 0 || len > SIZE_MAX - (size_t)str_offset - 1) {
    lua_pushlstring(L, map, len);
    munmap(map, maplen);
    return;
  }
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  size_t size = (size_t)str_offset + len + 1;
  char *block = f(ud, NULL, str_tag, size);
  if (block == NULL) { /* the allocator is out of memory: Lua's own push raises */
    lua_pushlstring(L, map, len);
    munmap(map, maplen);
    return;
  }
  char *dst = block + str_offset;
  uintptr_t lo = ((uintptr_t)dst + 4095) & ~(uintptr_t)4095;
  uintptr_t hi = ((uintptr_t)dst + len) & ~(uintptr_t)4095;
  if (hi > lo) madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
  for (size_t at = 0; at < len; at += CHUNK) {
    size_t n = len - at < CHUNK ? len - at : CHUNK;
    memcpy(dst + at, map + at, n);
    release(map, at, at + n < len ? at + n : at); /* the last chunk goes with the rest below */
  }
  size_t last = len > CHUNK ? (len - 1) / CHUNK * CHUNK : 0;
  release(map, last, maplen);
  wrap_state w = {0};
  w.give = block;
  w.give_size = size;
  int rc = push_wrapped(L, &w, dst, len);
  if (!w.used) f(ud, block, size, 0);
  if (rc != 0) lua_error(L);
}
