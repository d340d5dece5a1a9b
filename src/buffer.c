/* buffer.c - tether.buffer: captured output, read straight from an fd into one growing
 * block (no per-chunk strings). With a limit, the first half and the last half of the
 * limit are kept (head and tail) and the buffer is marked truncated. */
#include "tether.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <stdint.h>
#include <sys/mman.h>

typedef struct {
  char *data;            /* everything, or the head once truncated */
  size_t len, cap;
  size_t limit;          /* 0: unlimited */
  size_t head;           /* bytes of data kept once truncated: limit - limit/2 */
  char *ring;            /* the tail once truncated: the last limit/2 bytes */
  size_t ring_cap, ring_pos, ring_len;
  size_t total;          /* all bytes ever appended */
  int truncated;
  int mapped;            /* data is a mapping of its own (cap bytes), not malloc'd */
} tbuf;

static tbuf *check_buf(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, TETHER_BUFFER_MT);
}

/* Storage: small buffers live in malloc'd memory; from MAP_MIN on, the data moves once into
 * an anonymous mapping of its own, advised for huge pages as a whole (never a sub-range,
 * which would split it), that grows with mremap: the kernel moves page tables, no byte is
 * copied, however big the capture gets. */
#define MAP_MIN ((size_t)2 << 20)

static void store_free(tbuf *b) {
  if (b->mapped) munmap(b->data, b->cap);
  else free(b->data);
  b->data = NULL;
  b->cap = 0;
  b->mapped = 0;
}

/* Make room for need bytes in all; -1 (errno ENOMEM) when that cannot be had. */
static int grow(tbuf *b, size_t need) {
  if (need <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 16384;
  while (cap < need) {
    if (cap > SIZE_MAX / 2) { errno = ENOMEM; return -1; }
    cap *= 2;
  }
  if (cap < MAP_MIN) {
    char *p = realloc(b->data, cap);
    if (!p) { errno = ENOMEM; return -1; }
    b->data = p;
    b->cap = cap;
    return 0;
  }
  char *p;
  if (b->mapped) {
    p = mremap(b->data, b->cap, cap, MREMAP_MAYMOVE);
    if (p == MAP_FAILED) return -1;
  } else {
    p = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return -1;
    madvise(p, cap, MADV_HUGEPAGE); /* the whole mapping; mremap keeps the advice */
    if (b->len) memcpy(p, b->data, b->len);
    free(b->data);
    b->mapped = 1;
  }
  b->data = p;
  b->cap = cap;
  return 0;
}

static void ring_append(tbuf *b, const char *s, size_t n) {
  if (b->ring_cap == 0) return;
  if (n >= b->ring_cap) { /* only the last ring_cap bytes survive */
    memcpy(b->ring, s + n - b->ring_cap, b->ring_cap);
    b->ring_pos = 0;
    b->ring_len = b->ring_cap;
    return;
  }
  size_t first = b->ring_cap - b->ring_pos;
  if (first > n) first = n;
  memcpy(b->ring + b->ring_pos, s, first);
  memcpy(b->ring, s + first, n - first);
  b->ring_pos = (b->ring_pos + n) % b->ring_cap;
  b->ring_len = b->ring_len + n > b->ring_cap ? b->ring_cap : b->ring_len + n;
}

/* Append n bytes; returns -1 when out of memory. */
static int buf_add(tbuf *b, const char *s, size_t n) {
  if (n > SIZE_MAX - b->len) return -1;
  b->total += n;
  if (!b->truncated && (b->limit == 0 || b->len + n <= b->limit)) {
    if (grow(b, b->len + n) < 0) return -1;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
  }
  if (!b->truncated) { /* first overflow: fill the head, move the rest to the tail ring */
    if (b->len < b->head) {
      size_t k = b->head - b->len < n ? b->head - b->len : n;
      if (grow(b, b->head) < 0) return -1;
      memcpy(b->data + b->len, s, k);
      b->len += k;
      s += k;
      n -= k;
    }
    b->ring_cap = b->limit / 2;
    b->ring = malloc(b->ring_cap ? b->ring_cap : 1);
    if (!b->ring) return -1;
    b->truncated = 1;
    ring_append(b, b->data + b->head, b->len - b->head);
    b->len = b->head;
  }
  ring_append(b, s, n);
  return 0;
}

/* buffer([limit]) -> a new empty buffer; limit (bytes) bounds what is kept, nil = unlimited. */
static int buf_new(lua_State *L) {
  lua_Integer limit = luaL_optinteger(L, 1, 0);
  luaL_argcheck(L, limit >= 0, 1, "limit must be >= 0");
  tbuf *b = lua_newuserdatauv(L, sizeof *b, 0);
  memset(b, 0, sizeof *b);
  b->limit = (size_t)limit;
  b->head = b->limit - b->limit / 2;
  luaL_setmetatable(L, TETHER_BUFFER_MT);
  return 1;
}

/* The most one read_from asks for (read(2) itself stops just below 2 GiB). */
#define READ_MAX ((lua_Integer)1 << 30)

/* buf:read_from(fd [, max]) -> bytes read (> 0) | 0 at end of file | false when it would block
 * | nil, errno (ENOMEM when the buffer cannot grow). Reads straight into the buffer when it
 * has room. max (default 65536) must be from 1 to 2^30; anything else raises. */
static int buf_read_from(lua_State *L) {
  tbuf *b = check_buf(L, 1);
  int fd = tether_checkfd(L, 2);
  lua_Integer imax = luaL_optinteger(L, 3, 65536);
  luaL_argcheck(L, imax >= 1 && imax <= READ_MAX, 3, "max must be from 1 to 2^30");
  size_t max = (size_t)imax;
  if (max > SIZE_MAX - b->len) return tether_fail(L, ENOMEM);
  ssize_t n;
  if (!b->truncated && (b->limit == 0 || b->len + max <= b->limit)) {
    if (grow(b, b->len + max) < 0) return tether_fail(L, ENOMEM);
    do n = read(fd, b->data + b->len, max); while (n < 0 && errno == EINTR);
    if (n > 0) { b->len += (size_t)n; b->total += (size_t)n; }
  } else {
    char tmp[65536];
    if (max > sizeof tmp) max = sizeof tmp;
    do n = read(fd, tmp, max); while (n < 0 && errno == EINTR);
    if (n > 0 && buf_add(b, tmp, (size_t)n) < 0) return tether_fail(L, ENOMEM);
  }
  if (n < 0) {
    int e = errno;
    if (e == EAGAIN || e == EWOULDBLOCK) { lua_pushboolean(L, 0); return 1; }
    return tether_fail(L, e);
  }
  lua_pushinteger(L, n);
  return 1;
}

/* buf:append(s) -> buf. */
static int buf_append(lua_State *L) {
  tbuf *b = check_buf(L, 1);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  if (buf_add(b, s, n) < 0) return luaL_error(L, "not enough memory");
  lua_settop(L, 1);
  return 1;
}

/* buf:result() -> the kept bytes as one string (head then tail when truncated). */
static int buf_result(lua_State *L) {
  tbuf *b = check_buf(L, 1);
  if (!b->truncated) {
    lua_pushlstring(L, b->data ? b->data : "", b->len);
    return 1;
  }
  luaL_Buffer lb;
  luaL_buffinit(L, &lb);
  luaL_addlstring(&lb, b->data, b->len);
  size_t start = (b->ring_pos + b->ring_cap - b->ring_len) % (b->ring_cap ? b->ring_cap : 1);
  size_t first = b->ring_cap - start < b->ring_len ? b->ring_cap - start : b->ring_len;
  luaL_addlstring(&lb, b->ring + start, first);
  luaL_addlstring(&lb, b->ring, b->ring_len - first);
  luaL_pushresult(&lb);
  return 1;
}

/* buf:take() -> the kept bytes as one string, as result() gives them; the buffer is then
 * empty, its memory given up as the string is made (a big capture costs its size once, not
 * twice: bigstr.c). */
static int buf_take(lua_State *L) {
  tbuf *b = check_buf(L, 1);
  if (b->truncated || !b->mapped) {
    buf_result(L);
  } else {
    char *map = b->data;
    size_t len = b->len, maplen = b->cap;
    b->data = NULL; /* the mapping is handed over: released there, even should the push raise */
    b->cap = 0;
    b->mapped = 0;
    tether_push_mapping(L, map, len, maplen);
  }
  store_free(b); /* total() and truncated() still tell what the capture saw */
  free(b->ring);
  b->ring = NULL;
  b->len = b->ring_cap = b->ring_pos = b->ring_len = 0;
  return 1;
}

/* buf:total() -> all bytes appended; buf:truncated() -> whether bytes were dropped. */
static int buf_total(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_buf(L, 1)->total);
  return 1;
}

static int buf_truncated(lua_State *L) {
  lua_pushboolean(L, check_buf(L, 1)->truncated);
  return 1;
}

/* buf:free() releases the memory now; the buffer is then empty. Also __gc. */
static int buf_free(lua_State *L) {
  tbuf *b = check_buf(L, 1);
  store_free(b);
  free(b->ring);
  size_t limit = b->limit, head = b->head;
  memset(b, 0, sizeof *b);
  b->limit = limit;
  b->head = head;
  return 0;
}

/* split_lines(s, pos, t [, keep [, max]]) -> n, next: t[1..n] = the complete lines of s
 * from byte pos on, at most max of them (without their "\n", or with it when keep); next
 * is the byte after the last "\n" used (pos when n is 0). One memchr and one string per line: the Reader's lines() (pipe.lua)
 * hands the table out line by line, so no Lua code runs per byte. */
static int buf_split_lines(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  lua_Integer pos = luaL_checkinteger(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  int keep = lua_toboolean(L, 4);
  lua_Integer max = luaL_optinteger(L, 5, INT32_MAX);
  luaL_argcheck(L, pos >= 1 && (size_t)pos <= len + 1, 2, "out of range");
  size_t i = (size_t)pos - 1;
  int n = 0;
  while (i < len && n < max) {
    const char *nl = memchr(s + i, '\n', len - i);
    if (!nl) break;
    size_t e = (size_t)(nl - s);
    lua_pushlstring(L, s + i, e - i + (keep ? 1 : 0));
    lua_rawseti(L, 3, ++n);
    i = e + 1;
  }
  lua_pushinteger(L, n);
  lua_pushinteger(L, (lua_Integer)i + 1);
  return 2;
}

/* The line iterator of Reader:lines() on PUC Lua with no custom waiter (pipe.lua): a C
 * function the generic for calls directly, so a line costs one memchr and one string.
 * Upvalues: 1 the Reader, 2 slow(reader) -> line, buf, pos (Lua: reads one line the
 * general way, waiting through tether's waiter, and hands the rest of the buffer over),
 * 3 the buffer (a string, or nil), 4 the position of its first unread byte, 5 keep (the
 * lines keep their "\n"). Called with the flush token, it gives the unread rest of its
 * buffer back (a string or nil) and drops it: other reads of the Reader come first. */
static char flush_token;

static int line_next(lua_State *L) {
  if (lua_touserdata(L, 1) == &flush_token) {
    if (lua_type(L, lua_upvalueindex(3)) == LUA_TSTRING) {
      size_t len;
      const char *s = lua_tolstring(L, lua_upvalueindex(3), &len);
      lua_Integer pos = lua_tointeger(L, lua_upvalueindex(4));
      lua_pushlstring(L, s + pos - 1, len - (size_t)(pos - 1));
    } else lua_pushnil(L);
    lua_pushnil(L);
    lua_replace(L, lua_upvalueindex(3));
    return 1;
  }
  if (lua_type(L, lua_upvalueindex(3)) == LUA_TSTRING) {
    size_t len;
    const char *s = lua_tolstring(L, lua_upvalueindex(3), &len);
    size_t i = (size_t)lua_tointeger(L, lua_upvalueindex(4)) - 1;
    const char *nl = i < len ? memchr(s + i, '\n', len - i) : NULL;
    if (nl) {
      size_t e = (size_t)(nl - s);
      lua_pushlstring(L, s + i, e - i + (lua_toboolean(L, lua_upvalueindex(5)) ? 1 : 0));
      if (e + 1 >= len) { lua_pushnil(L); lua_replace(L, lua_upvalueindex(3)); }
      else { lua_pushinteger(L, (lua_Integer)e + 2); lua_replace(L, lua_upvalueindex(4)); }
      return 1;
    }
    /* no whole line left: the rest goes back to the Reader, the slow path reads on */
    lua_pushlstring(L, s + i, len - i);
    lua_setfield(L, lua_upvalueindex(1), "_buf");
    lua_pushinteger(L, 1);
    lua_setfield(L, lua_upvalueindex(1), "_pos");
    lua_pushnil(L);
    lua_replace(L, lua_upvalueindex(3));
    if (i >= len) { lua_pushnil(L); lua_setfield(L, lua_upvalueindex(1), "_buf"); }
  }
  lua_settop(L, 0);
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_call(L, 1, 3); /* line, buf, pos */
  if (lua_type(L, 2) == LUA_TSTRING) {
    lua_pushvalue(L, 2);
    lua_replace(L, lua_upvalueindex(3));
    lua_pushvalue(L, 3);
    lua_replace(L, lua_upvalueindex(4));
  }
  lua_settop(L, 1);
  return 1;
}

/* line_iter(reader, slow, keep) -> iterator, flush_token (see line_next). */
static int buf_line_iter(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 3);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_pushnil(L);
  lua_pushinteger(L, 1);
  lua_pushboolean(L, lua_toboolean(L, 3));
  lua_pushcclosure(L, line_next, 5);
  lua_pushlightuserdata(L, &flush_token);
  return 2;
}

static const luaL_Reg buf_methods[] = {
  {"read_from", buf_read_from}, {"append", buf_append}, {"result", buf_result}, {"take", buf_take},
  {"total", buf_total}, {"truncated", buf_truncated}, {"free", buf_free}, {NULL, NULL},
};

void tether_open_buffer(lua_State *L) {
  luaL_newmetatable(L, TETHER_BUFFER_MT);
  lua_newtable(L);
  luaL_setfuncs(L, buf_methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, buf_free);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_pushcfunction(L, buf_new);
  lua_setfield(L, -2, "buffer");
  lua_pushcfunction(L, buf_split_lines);
  lua_setfield(L, -2, "split_lines");
  lua_pushcfunction(L, buf_line_iter);
  lua_setfield(L, -2, "line_iter");
}
