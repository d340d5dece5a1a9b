/* fuzz/copy_fuzz.c - libFuzzer target for the value copier's deserialiser (src/copy.c).
 *
 * Feeds arbitrary bytes to copy_decode as bytes of unknown origin (function and semaphore
 * tags are refused there: untrusted bytecode is never loaded). When they decode, the values
 * are encoded again, decoded again, and both rebuilds must be deeply equal (same types,
 * integer vs float kept, numbers bit for bit, strings byte for byte, tables with the same
 * keys and values). Any mismatch aborts; ASan/UBSan catch the rest. Build and run:
 */
// clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc $(pkg-config --cflags lua5.4)
//   fuzz/copy_fuzz.c src/*.c $(pkg-config --libs lua5.4) -pthread -o build/copy_fuzz
// ./build/copy_fuzz -max_total_time=600 fuzz/corpus/copy
// The seed corpus is made by fuzz/gen_copy_corpus.lua.
#include "copy.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int deep_equal(lua_State *L, int a, int b, int depth);

/* Every key of a (not a table) is in b with an equal value, and both have as many keys. */
static int tables_equal(lua_State *L, int a, int b, int depth) {
  if (depth > COPY_MAX_DEPTH + 1) return 0;
  lua_checkstack(L, 8);
  long na = 0, nb = 0, ta = 0, tb = 0;
  lua_pushnil(L);
  while (lua_next(L, a)) {
    na++;
    if (lua_type(L, -2) == LUA_TTABLE) { ta++; lua_pop(L, 1); continue; }
    lua_pushvalue(L, -2);
    lua_rawget(L, b);
    int eq = deep_equal(L, lua_gettop(L) - 1, lua_gettop(L), depth + 1);
    lua_pop(L, 2);
    if (!eq) { lua_pop(L, 1); return 0; }
  }
  lua_pushnil(L);
  while (lua_next(L, b)) {
    nb++;
    if (lua_type(L, -2) == LUA_TTABLE) tb++;
    lua_pop(L, 1);
  }
  return na == nb && ta == tb;
}

static int deep_equal(lua_State *L, int a, int b, int depth) {
  int t = lua_type(L, a);
  if (t != lua_type(L, b)) return 0;
  switch (t) {
  case LUA_TNIL: return 1;
  case LUA_TBOOLEAN: return lua_toboolean(L, a) == lua_toboolean(L, b);
  case LUA_TNUMBER: {
#if LUA_VERSION_NUM >= 503
    if (lua_isinteger(L, a) != lua_isinteger(L, b)) return 0;
    if (lua_isinteger(L, a)) return lua_tointeger(L, a) == lua_tointeger(L, b);
#endif
    lua_Number x = lua_tonumber(L, a), y = lua_tonumber(L, b);
    return memcmp(&x, &y, sizeof x) == 0;
  }
  case LUA_TSTRING: {
    size_t n, m;
    const char *x = lua_tolstring(L, a, &n), *y = lua_tolstring(L, b, &m);
    return n == m && memcmp(x, y, n) == 0;
  }
  case LUA_TTABLE: return tables_equal(L, a, b, depth);
  default: return 0;
  }
}

typedef struct { const uint8_t *data; size_t size; copy_buf *b; } job;

/* In protected mode (a memory error must not escape): decode, encode, decode, compare. */
static int round_trip(lua_State *L) {
  job *j = lua_touserdata(L, 1);
  lua_settop(L, 0);
  const char *err;
  int n = copy_decode(L, (const char *)j->data, j->size, NULL, &err);
  if (n < 0) {
    if (lua_gettop(L) != 0) abort(); /* a failed decode pushes nothing */
    return 0;
  }
  int bad;
  if (copy_encode(L, 1, n, j->b, &bad, &err) < 0) {
    fprintf(stderr, "re-encoding value %d failed: %s\n", bad + 1, err);
    abort();
  }
  int m = copy_decode(L, j->b->p, j->b->len, NULL, &err);
  if (m != n) {
    fprintf(stderr, "re-decoding gave %d values for %d (%s)\n", m, n, m < 0 ? err : "");
    abort();
  }
  for (int i = 1; i <= n; i++)
    if (!deep_equal(L, i, n + i, 0)) {
      fprintf(stderr, "value %d differs after a round trip\n", i);
      abort();
    }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_State *L = luaL_newstate();
  if (!L) return 0;
  copy_buf b;
  copy_init(&b);
  job j = { data, size, &b };
  lua_pushcfunction(L, round_trip);
  lua_pushlightuserdata(L, &j);
  if (lua_pcall(L, 1, 0, 0) != 0) {
    const char *m = lua_tostring(L, -1);
    if (!m || !strstr(m, "memory")) { fprintf(stderr, "unexpected error: %s\n", m ? m : "?"); abort(); }
  }
  copy_free(&b);
  lua_close(L);
  return 0;
}
