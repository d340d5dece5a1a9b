/* copy.c - the cross-state value copier. Values are serialised into a flat byte buffer in
 * one lua_State and rebuilt in another: nil, booleans, numbers (integer and float kept
 * apart on 5.3+), strings (any bytes), tables of those (any key types, nested up to
 * COPY_MAX_DEPTH; shared sub-tables are copied once per reference, a cycle is refused),
 * functions without upvalues (see below) and, with TETHER_HAVE_SEM, tether.sync
 * semaphores (shared, not copied).
 *
 * Functions: string.dump's bytecode. "Without upvalues" means no upvalue other than
 * _ENV: on 5.2+ a function that uses globals has _ENV as its (first and only) upvalue; it
 * is accepted and, rebuilt in the other state, sees that state's globals. Any other
 * upvalue (a captured local) is refused. C functions are refused. On 5.1/LuaJIT a
 * function must have no upvalue at all; it sees the other state's globals.
 *
 * Trust: loading bytecode that did not come from string.dump is unsafe in Lua (the VM
 * does not verify it), so copy_decode rebuilds function values (and semaphores, which are
 * pointers kept beside the bytes, never in them) only when the caller vouches that the
 * bytes come from copy_encode in this process (origin != NULL: tether.pool's own task and
 * result buffers, which never leave the process). Bytes of unknown origin (the fuzz
 * target, any future API over external bytes) with a function or semaphore tag are an
 * error. Everything else is checked: truncation, bad tags, lengths beyond the end,
 * trailing bytes, nil or NaN keys, depth, counts; malformed input gives an error, never
 * a crash, an out-of-bounds read or a leak.
 *
 * Format: a sequence of values, each a tag byte then its payload:
 *   NIL FALSE TRUE | INT zigzag-varint | FLT 8 bytes (host order) | STR varint len, bytes
 *   TAB varint narray, narray values (keys 1..narray), then key/value pairs up to END
 *   FUN varint len, bytecode | SEM varint index into origin->sems
 *
 * Entry points (copy.h): copy_init/free/truncate, copy_encode, copy_decode; and the
 * core functions copy_encode/copy_decode (tether_open_copy) for specs and the fuzzer. */
#include "copy.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { T_NIL, T_FALSE, T_TRUE, T_INT, T_FLT, T_STR, T_TAB, T_FUN, T_SEM, T_END };

/* ---- buffer ------------------------------------------------------------------------ */

void copy_init(copy_buf *b) {
  b->p = b->small;
  b->len = 0;
  b->cap = sizeof b->small;
  b->sems = NULL;
  b->nsems = b->capsems = 0;
}

void copy_free(copy_buf *b) {
  if (b->p != b->small) free(b->p);
#ifdef TETHER_HAVE_SEM
  for (size_t i = 0; i < b->nsems; i++) tether_sem_release((tether_sem *)b->sems[i]);
#endif
  free(b->sems);
  copy_init(b);
}

void copy_truncate(copy_buf *b, size_t len) {
  if (len < b->len) b->len = len;
}

/* Makes room for n more bytes; 0, or -1 when memory ran out. */
static int reserve(copy_buf *b, size_t n) {
  if (b->cap - b->len >= n) return 0;
  size_t cap = b->cap * 2;
  while (cap - b->len < n) {
    if (cap > SIZE_MAX / 2) return -1;
    cap *= 2;
  }
  char *p = b->p == b->small ? malloc(cap) : realloc(b->p, cap);
  if (!p) return -1;
  if (b->p == b->small) memcpy(p, b->small, b->len);
  b->p = p;
  b->cap = cap;
  return 0;
}

static int put(copy_buf *b, const void *s, size_t n) {
  if (reserve(b, n) < 0) return -1;
  memcpy(b->p + b->len, s, n);
  b->len += n;
  return 0;
}

static int put_byte(copy_buf *b, int c) {
  if (b->len == b->cap && reserve(b, 1) < 0) return -1;
  b->p[b->len++] = (char)c;
  return 0;
}

static int put_varint(copy_buf *b, uint64_t v) {
  unsigned char tmp[10];
  size_t n = 0;
  do {
    unsigned char c = v & 0x7f;
    v >>= 7;
    tmp[n++] = c | (v ? 0x80 : 0);
  } while (v);
  return put(b, tmp, n);
}

/* ---- encoding ---------------------------------------------------------------------- */

typedef struct {
  lua_State *L;
  copy_buf *b;
  int seen;         /* stack index of the table of tables being copied (cycle check), or 0 */
  const char *err;
} enc;

static const char *OOM = "out of memory";

static int dump_writer(lua_State *L, const void *p, size_t sz, void *ud) {
  (void)L;
  return put((copy_buf *)ud, p, sz);
}

static int enc_value(enc *e, int idx, int depth);

/* A function: bytecode, when it has no upvalue but _ENV (5.2+). */
static int enc_function(enc *e, int idx) {
  lua_State *L = e->L;
  if (lua_iscfunction(L, idx)) { e->err = "cannot copy a C function"; return -1; }
  for (int i = 1;; i++) {
    const char *name = lua_getupvalue(L, idx, i);
    if (name == NULL) break;
    lua_pop(L, 1);
#if LUA_VERSION_NUM >= 502
    if (i == 1 && strcmp(name, "_ENV") == 0) continue;
#endif
    e->err = "cannot copy a function with upvalues (only _ENV is allowed)";
    return -1;
  }
  /* Tag, then a 5-byte slot for the length, filled in after the dump. */
  size_t at = e->b->len;
  if (put_byte(e->b, T_FUN) < 0 || put(e->b, "\0\0\0\0\0", 5) < 0) { e->err = OOM; return -1; }
  size_t start = e->b->len;
  lua_pushvalue(L, idx);
  int r = tether_dump(L, dump_writer, e->b);
  lua_pop(L, 1);
  if (r != 0) { e->err = OOM; return -1; }
  uint64_t n = e->b->len - start;
  if (n > 0x7ffffffffULL) { e->err = "function too large"; return -1; }
  unsigned char *s = (unsigned char *)e->b->p + at + 1;
  for (int i = 0; i < 5; i++) { s[i] = (unsigned char)((n & 0x7f) | (i < 4 ? 0x80 : 0)); n >>= 7; }
  return 0;
}

static int enc_table(enc *e, int idx, int depth) {
  lua_State *L = e->L;
  if (depth >= COPY_MAX_DEPTH) { e->err = "tables nested too deep"; return -1; }
  if (!lua_checkstack(L, 6)) { e->err = OOM; return -1; }
  lua_pushvalue(L, idx);
  lua_rawget(L, e->seen);
  int cyc = !lua_isnil(L, -1);
  lua_pop(L, 1);
  if (cyc) { e->err = "table cycle"; return -1; }
  lua_pushvalue(L, idx);
  lua_pushboolean(L, 1);
  lua_rawset(L, e->seen);

  if (put_byte(e->b, T_TAB) < 0) { e->err = OOM; return -1; }
  /* The array part: 1..n while present. */
  lua_Integer n = 0;
  for (;;) {
    lua_rawgeti(L, idx, n + 1);
    if (lua_isnil(L, -1)) { lua_pop(L, 1); break; }
    lua_pop(L, 1);
    n++;
  }
  if (put_varint(e->b, (uint64_t)n) < 0) { e->err = OOM; return -1; }
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, idx, i);
    int r = enc_value(e, lua_gettop(L), depth + 1);
    lua_pop(L, 1);
    if (r < 0) return -1;
  }
  /* Everything else. */
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) == LUA_TNUMBER) {
      lua_Number k = lua_tonumber(L, -2);
      if (k >= 1 && k <= (lua_Number)n && floor(k) == k) { lua_pop(L, 1); continue; }
    }
    if (enc_value(e, lua_gettop(L) - 1, depth + 1) < 0 || enc_value(e, lua_gettop(L), depth + 1) < 0) {
      lua_pop(L, 2);
      return -1;
    }
    lua_pop(L, 1);
  }
  if (put_byte(e->b, T_END) < 0) { e->err = OOM; return -1; }
  lua_pushvalue(L, idx);
  lua_pushnil(L);
  lua_rawset(L, e->seen); /* a DAG is fine: only a table inside itself is a cycle */
  return 0;
}

static int enc_value(enc *e, int idx, int depth) {
  lua_State *L = e->L;
  copy_buf *b = e->b;
  int r = 0;
  switch (lua_type(L, idx)) {
  case LUA_TNIL: r = put_byte(b, T_NIL); break;
  case LUA_TBOOLEAN: r = put_byte(b, lua_toboolean(L, idx) ? T_TRUE : T_FALSE); break;
  case LUA_TNUMBER:
#if LUA_VERSION_NUM >= 503
    if (lua_isinteger(L, idx)) {
      uint64_t u = (uint64_t)lua_tointeger(L, idx);
      r = put_byte(b, T_INT) < 0 ? -1 : put_varint(b, (u << 1) ^ (uint64_t)-(int64_t)(u >> 63));
      break;
    }
#endif
    {
      double d = (double)lua_tonumber(L, idx);
      r = put_byte(b, T_FLT) < 0 ? -1 : put(b, &d, sizeof d);
    }
    break;
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    r = (put_byte(b, T_STR) < 0 || put_varint(b, n) < 0) ? -1 : put(b, s, n);
    break;
  }
  case LUA_TTABLE: return enc_table(e, idx, depth);
  case LUA_TFUNCTION: return enc_function(e, idx);
  case LUA_TUSERDATA: {
#ifdef TETHER_HAVE_SEM
    tether_sem *s = tether_sem_test(L, idx);
    if (s) {
      if (b->nsems == b->capsems) {
        size_t cap = b->capsems ? b->capsems * 2 : 4;
        void **v = realloc(b->sems, cap * sizeof *v);
        if (!v) { e->err = OOM; return -1; }
        b->sems = v;
        b->capsems = cap;
      }
      if (put_byte(b, T_SEM) < 0 || put_varint(b, b->nsems) < 0) { e->err = OOM; return -1; }
      tether_sem_retain(s);
      b->sems[b->nsems++] = s;
      return 0;
    }
#endif
    e->err = "cannot copy a userdata";
    return -1;
  }
  case LUA_TLIGHTUSERDATA: e->err = "cannot copy a light userdata"; return -1;
  case LUA_TTHREAD: e->err = "cannot copy a coroutine"; return -1;
  default: e->err = "cannot copy this value"; return -1;
  }
  if (r < 0) { e->err = OOM; return -1; }
  return 0;
}

int copy_encode(lua_State *L, int first, int n, copy_buf *b, int *bad, const char **err) {
  int top = lua_gettop(L);
  enc e = { L, b, 0, NULL };
  *bad = 0;
  if (first < 0) first = top + first + 1;
  if (n > COPY_MAX_VALUES) { *bad = COPY_MAX_VALUES; *err = "too many values"; return -1; }
  for (int i = 0; i < n; i++)
    if (lua_type(L, first + i) == LUA_TTABLE) {
      if (!lua_checkstack(L, 4)) { *err = OOM; return -1; }
      lua_newtable(L);
      e.seen = lua_gettop(L);
      break;
    }
  for (int i = 0; i < n; i++) {
    if (enc_value(&e, first + i, 0) < 0) {
      lua_settop(L, top);
      *bad = i;
      *err = e.err;
      return -1;
    }
  }
  lua_settop(L, top);
  return 0;
}

/* ---- decoding ---------------------------------------------------------------------- */

typedef struct {
  lua_State *L;
  const unsigned char *p, *end;
  const copy_buf *origin;
  const char *err;
} dec;

static int bad(dec *d, const char *msg) {
  if (!d->err) d->err = msg;
  return -1;
}

static int get_varint(dec *d, uint64_t *out) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (d->p >= d->end) return bad(d, "truncated input");
    unsigned c = *d->p++;
    if (shift == 63 && (c & 0x7e)) return bad(d, "integer out of range");
    v |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80)) { *out = v; return 0; }
  }
  return bad(d, "integer out of range");
}

/* A length that fits in what is left of the input. */
static int get_len(dec *d, size_t *out) {
  uint64_t v;
  if (get_varint(d, &v) < 0) return -1;
  if (v > (uint64_t)(d->end - d->p)) return bad(d, "length beyond the end of the input");
  *out = (size_t)v;
  return 0;
}

static int dec_value(dec *d, int depth, int as_key);

static int dec_table(dec *d, int depth) {
  lua_State *L = d->L;
  if (depth >= COPY_MAX_DEPTH) return bad(d, "tables nested too deep");
  if (!lua_checkstack(L, 4)) return bad(d, "out of stack space");
  uint64_t n;
  if (get_varint(d, &n) < 0) return -1;
  /* Each value takes at least a byte: a count beyond the input is malformed (and must not
   * size an allocation). */
  if (n > (uint64_t)(d->end - d->p)) return bad(d, "length beyond the end of the input");
  lua_createtable(L, (int)n, 0);
  for (uint64_t i = 1; i <= n; i++) {
    if (dec_value(d, depth + 1, 0) < 0) { lua_pop(L, 1); return -1; }
    lua_rawseti(L, -2, (lua_Integer)i);
  }
  for (;;) {
    if (d->p >= d->end) { lua_pop(L, 1); return bad(d, "truncated input"); }
    if (*d->p == T_END) { d->p++; return 0; }
    if (dec_value(d, depth + 1, 1) < 0) { lua_pop(L, 1); return -1; }
    if (dec_value(d, depth + 1, 0) < 0) { lua_pop(L, 2); return -1; }
    lua_rawset(L, -3);
  }
}

/* Pushes one value (a key when as_key: nil and NaN are refused). */
static int dec_value(dec *d, int depth, int as_key) {
  lua_State *L = d->L;
  if (d->p >= d->end) return bad(d, "truncated input");
  int tag = *d->p++;
  switch (tag) {
  case T_NIL:
    if (as_key) return bad(d, "nil table key");
    lua_pushnil(L);
    return 0;
  case T_FALSE: lua_pushboolean(L, 0); return 0;
  case T_TRUE: lua_pushboolean(L, 1); return 0;
  case T_INT: {
    uint64_t u;
    if (get_varint(d, &u) < 0) return -1;
    int64_t v = (int64_t)((u >> 1) ^ (uint64_t)-(int64_t)(u & 1));
#if LUA_VERSION_NUM >= 503
    lua_pushinteger(L, (lua_Integer)v);
#else
    lua_pushnumber(L, (lua_Number)v);
#endif
    return 0;
  }
  case T_FLT: {
    double v;
    if ((size_t)(d->end - d->p) < sizeof v) return bad(d, "truncated input");
    memcpy(&v, d->p, sizeof v);
    d->p += sizeof v;
    if (as_key && isnan(v)) return bad(d, "NaN table key");
    lua_pushnumber(L, (lua_Number)v);
    return 0;
  }
  case T_STR: {
    size_t n;
    if (get_len(d, &n) < 0) return -1;
    lua_pushlstring(L, (const char *)d->p, n);
    d->p += n;
    return 0;
  }
  case T_TAB: return dec_table(d, depth);
  case T_FUN: {
    size_t n;
    if (!d->origin) return bad(d, "a function value in bytes of unknown origin");
    if (get_len(d, &n) < 0) return -1;
    if (tether_loadbinary(L, (const char *)d->p, n, "=(copied function)") != 0) {
      lua_pop(L, 1);
      return bad(d, "bad function bytecode");
    }
    d->p += n;
    return 0;
  }
  case T_SEM: {
    uint64_t i;
    if (get_varint(d, &i) < 0) return -1;
    if (!d->origin || i >= d->origin->nsems) return bad(d, "a semaphore in bytes of unknown origin");
#ifdef TETHER_HAVE_SEM
    tether_sem_push(L, (tether_sem *)d->origin->sems[i]);
    return 0;
#else
    return bad(d, "semaphores are not supported in this build");
#endif
  }
  default: return bad(d, "bad tag");
  }
}

int copy_decode(lua_State *L, const char *p, size_t len, const copy_buf *origin, const char **err) {
  dec d = { L, (const unsigned char *)p, (const unsigned char *)p + len, origin, NULL };
  int top = lua_gettop(L), n = 0;
  while (d.p < d.end) {
    if (n >= COPY_MAX_VALUES) { d.err = "too many values"; break; }
    if (!lua_checkstack(L, 2)) { d.err = "out of stack space"; break; }
    if (dec_value(&d, 0, 0) < 0) break;
    n++;
  }
  if (d.err) {
    lua_settop(L, top);
    *err = d.err;
    return -1;
  }
  return n;
}

/* ---- Lua entry points (specs, the fuzz corpus generator) --------------------------- */

/* copy_encode(...) -> the bytes of the arguments | nil, index, message. */
static int copy_lua_encode(lua_State *L) {
  int bad, n = lua_gettop(L);
  const char *err;
  /* Into a buffer owned by a userdata: a memory error inside leaks nothing. */
  copy_buf *ub = lua_newuserdatauv(L, sizeof *ub, 0);
  copy_init(ub);
  luaL_getmetatable(L, "tether.copybuf");
  lua_setmetatable(L, -2);
  if (copy_encode(L, 1, n, ub, &bad, &err) < 0) {
    copy_free(ub);
    lua_pushnil(L);
    lua_pushinteger(L, bad + 1);
    lua_pushstring(L, err);
    return 3;
  }
  lua_pushlstring(L, ub->p, ub->len);
  copy_free(ub);
  return 1;
}

/* copy_decode(bytes) -> true, values... | nil, message. Bytes of unknown origin: a function
 * or a semaphore is refused, as is anything malformed. */
static int copy_lua_decode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len), *err;
  lua_pushboolean(L, 1);
  int n = copy_decode(L, s, len, NULL, &err);
  if (n < 0) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  return n + 1;
}

static int copybuf_gc(lua_State *L) {
  copy_free(lua_touserdata(L, 1));
  return 0;
}

static const luaL_Reg copy_funcs[] = {
  {"copy_encode", copy_lua_encode}, {"copy_decode", copy_lua_decode}, {NULL, NULL},
};

void tether_open_copy(lua_State *L) {
  luaL_newmetatable(L, "tether.copybuf");
  lua_pushcfunction(L, copybuf_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  luaL_setfuncs(L, copy_funcs, 0);
}
