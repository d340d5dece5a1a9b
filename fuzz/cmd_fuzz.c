/* cmd_fuzz.c - libFuzzer target: the Cmd option parser.
 *
 * Each input is decoded into Lua values for every field of a Cmd (path, args, env,
 * dir, stdin/stdout/stderr, extra_files, setpgid, setsid, pdeathsig, uid, gid, groups,
 * wait_delay, max_output, timeout, extra_env, rlimits, umask, cancel, foreground) and for
 * the C spawn spec (core.spawn: path, argv, env, dir,
 * fds, pgid, setsid, pdeathsig, uid, gid, groups). Both parsers run: exec.command +
 * cmd:run() (the Lua validation, then the C parser) and core.spawn directly.
 *
 * What must hold, besides no crash and no sanitizer finding:
 *  - exec raises only errors that name the field ("exec: cmd.dir ...", or Lua's own
 *    "bad argument #2 to 'command'"); a runtime failure is
 *    nil plus an error object, never a raw errno or a string;
 *  - every started child is waited for (no zombie) and no fd is left open after an input.
 * The first byte also picks the spawn mode (auto, direct or relay: tether.set_spawn_mode),
 * so relay mode's intermediate is fuzzed too, not only in a host that ignores SIGCHLD.
 * Only /bin/true, /bin/false and paths that cannot exist are ever executed: the path
 * comes from a fixed list, everything else (args, env, dir, ids, fds) is fuzzed.
 *
 * Build and run: make fuzz (FUZZ_TIME seconds per target; corpus in fuzz/corpus/cmd).
 * By hand, keep make fuzz's -print_funcs=0: libFuzzer otherwise starts llvm-symbolizer at
 * its first NEW_FUNC line, and the two pipes it keeps to it count as a leak here.
 * CMD_FUZZ_DEBUG=1 build/fuzz/cmd <input> prints each input's decoded values;
 * CMD_FUZZ_SAVE=DIR keeps every input in run order (see save_input).
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

int luaopen_tether_core(lua_State *L);

#ifndef TETHER_ROOT
#error "build with -DTETHER_ROOT=\"<repository root>\""
#endif

typedef struct { const uint8_t *p; size_t n; } input;

static unsigned byte(input *in) {
  if (!in->n) return 0;
  in->n--;
  return *in->p++;
}

static const char *const words[] = {
  "null", "inherit", "/bin/true", "true", "SIGTERM", "TERM", "KILL", "SIGKILL", "", "/",
  "..", "PATH=/bin", "A=B", "=x", "A", "A=", "/nonexistent", "HOME=/root", "x\0y", "-1",
};

/* Pushes one fuzzed value: nil, boolean, integer, float, string, a word, a list, a map,
 * a function, or a file / tether fd (made fresh, closed by the caller's collectgarbage). */
static void push_value(lua_State *L, input *in, int depth) {
  unsigned tag = byte(in) % 11;
  if (depth > 3 && (tag == 6 || tag == 7)) tag = 2;
  switch (tag) {
  case 0: lua_pushnil(L); break;
  case 1: lua_pushboolean(L, byte(in) & 1); break;
  case 2: {
    int64_t v = (int8_t)byte(in);
    unsigned k = byte(in) % 4;
    for (unsigned i = 0; i < k; i++) v = v * 256 + byte(in);
    lua_pushinteger(L, (lua_Integer)v);
    break;
  }
  case 3: {
    static const double f[] = { 0.5, -0.0, 1e300, -1.0, 3.0, 1.0 / 0.0, 2147483648.0, 65536.5 };
    unsigned i = byte(in) % 9;
    lua_pushnumber(L, i < 8 ? f[i] : 0.0 / 0.0);
    break;
  }
  case 4: {
    size_t len = byte(in) % 24;
    if (len > in->n) len = in->n;
    lua_pushlstring(L, (const char *)in->p, len);
    in->p += len, in->n -= len;
    break;
  }
  case 5: {
    unsigned i = byte(in) % (sizeof words / sizeof words[0]);
    lua_pushlstring(L, words[i], i == 18 ? 3 : strlen(words[i]));
    break;
  }
  case 6: case 7: {
    unsigned n = byte(in) % 6;
    lua_createtable(L, 0, 0);
    for (unsigned i = 1; i <= n; i++) {
      if (tag == 6) lua_pushinteger(L, i);
      else push_value(L, in, depth + 1);
      if (lua_isnil(L, -1)) { lua_pop(L, 1); continue; }
      push_value(L, in, depth + 1);
      if (lua_type(L, -2) == LUA_TNUMBER && lua_tonumber(L, -2) != lua_tonumber(L, -2)) {
        lua_pop(L, 2); /* a NaN key */
        continue;
      }
      lua_settable(L, -3);
    }
    break;
  }
  case 8: luaL_dostring(L, "return function() end"); break;
  case 9: luaL_dostring(L, byte(in) & 1 ? "return io.stderr" : "return (require 'tether.core').open_null()"); break;
  default: lua_pushinteger(L, byte(in) % 8); break; /* a small fd number */
  }
}

static int count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  int n = 0;
  if (!d) abort();
  while (readdir(d)) n++;
  closedir(d);
  return n;
}

/* The Lua side: builds the Cmd from fuzzed fields, runs it, checks the outcome. */
static const char *const driver =
  "local exec, errors = require 'tether.exec', require 'tether.errors'\n"
  "local core = require 'tether.core'\n"
  "local paths = { '/bin/true', '/bin/false', '/nonexistent/x', 'true', '', 'rel/x' }\n"
  "local function named(msg) msg = tostring(msg)\n"
  "  return msg:find('exec: ', 1, true) or msg:find('bad argument #%d+ to') end\n"
  "local modes = { 'auto', 'direct', 'relay' }\n"
  "local function show(v, d) d = d or 0\n"
  "  if type(v) ~= 'table' or d > 3 then return type(v) == 'string' and ('%q'):format(v) or tostring(v) end\n"
  "  local t = {} for k, x in pairs(v) do t[#t + 1] = '[' .. show(k, d + 1) .. ']=' .. show(x, d + 1) end\n"
  "  return '{' .. table.concat(t, ', ') .. '}' end\n"
  "local debug_inputs = os.getenv('CMD_FUZZ_DEBUG')\n"
  "return function(which, args, f, spec)\n"
  "  if debug_inputs then io.stderr:write('which=', which, ' args=', show(args), '\\nfields=', show(f), '\\nspec=', show(spec), '\\n') end\n"
  "  require('tether').set_spawn_mode(modes[which // 8 % 3 + 1])\n"
  "  local path = paths[which % #paths + 1]\n"
  "  local ok, cmd = pcall(exec.command, path, (table.unpack or unpack)(type(args) == 'table' and args or {}))\n"
  "  if not ok then\n"
  "    if not named(cmd) then error('unnamed error from command: ' .. tostring(cmd)) end\n"
  "  else\n"
  "    for k, v in pairs(f) do cmd[k] = v end\n"
  "    local ok2, r, err = pcall(cmd.run, cmd)\n"
  "    if not ok2 then\n"
  "      if not named(r) then error('unnamed error from run: ' .. tostring(r)) end\n"
  "      if cmd.process then cmd.process:kill(); cmd.process:wait() end\n"
  "    elseif not r and not errors.is_error(err) then\n"
  "      error('run failed without an error object: ' .. tostring(err))\n"
  "    end\n"
  "  end\n"
  "  spec.path = paths[which % 3 + 1] == '/nonexistent/x' and '/nonexistent/x' or '/bin/true'\n"
  "  local ok3, p = pcall(core.spawn, spec)\n"
  "  if ok3 and p then\n"
  "    while p:try_wait() == false do core.poll(p:pidfd(), 'r', core.now() + 5) end\n"
  "  end\n"
  "end\n";

static const char *const fields[] = {
  "env", "dir", "stdin", "stdout", "stderr", "extra_files", "setpgid", "setsid",
  "pdeathsig", "uid", "gid", "groups", "wait_delay", "max_output",
  "timeout", "extra_env", "rlimits", "umask", "cancel", "foreground",
};
static const char *const spec_fields[] = {
  "argv", "env", "dir", "fds", "pgid", "setsid", "pdeathsig", "uid", "gid", "groups",
};

static lua_State *L;
static int base_fds;

static void setup(void) {
  L = luaL_newstate();
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_pushstring(L, TETHER_ROOT "/lua/?.lua;" TETHER_ROOT "/lua/?/init.lua");
  lua_setfield(L, -2, "path");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_tether_core);
  lua_setfield(L, -2, "tether.core");
  lua_pop(L, 2);
  if (luaL_loadstring(L, driver) || lua_pcall(L, 0, 1, 0)) {
    fprintf(stderr, "cmd_fuzz: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_setglobal(L, "drive");
  /* Warm up: tether opens a few fds once and keeps them (e.g. /dev/null for "null"). */
  if (luaL_dostring(L, "drive(0, {}, { stdin = 'x', stdout = {} }, { argv = { 'true' }, fds = {} })")) {
    fprintf(stderr, "cmd_fuzz: warm-up failed: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_gc(L, LUA_GCCOLLECT, 0);
  base_fds = count_fds();
}

/* CMD_FUZZ_SAVE=DIR keeps every input, numbered in the order run (DIR/00000001, ...), to
 * replay a failure that depends on the inputs before it: build/fuzz/cmd DIR/<from> ... */
static void save_input(const uint8_t *data, size_t size) {
  static const char *dir;
  static int checked;
  static unsigned long seq;
  if (!checked) { dir = getenv("CMD_FUZZ_SAVE"); checked = 1; }
  if (!dir) return;
  char path[4096];
  snprintf(path, sizeof path, "%s/%08lu", dir, ++seq);
  FILE *f = fopen(path, "wb");
  if (!f) return;
  if (size) fwrite(data, 1, size, f);
  fclose(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!L) setup();
  save_input(data, size);
  input in = { data, size };
  int top = lua_gettop(L);
  lua_getglobal(L, "drive");
  lua_pushinteger(L, byte(&in));
  push_value(L, &in, 0);
  lua_newtable(L);
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
    if (byte(&in) & 1) { push_value(L, &in, 1); lua_setfield(L, -2, fields[i]); }
  lua_newtable(L);
  for (size_t i = 0; i < sizeof spec_fields / sizeof spec_fields[0]; i++)
    if (byte(&in) & 1) { push_value(L, &in, 1); lua_setfield(L, -2, spec_fields[i]); }
  if (lua_pcall(L, 4, 0, 0) != LUA_OK) { /* the driver turned a broken rule into an error */
    fprintf(stderr, "cmd_fuzz: %s\n", lua_tostring(L, -1) ? lua_tostring(L, -1) : "(non-string error)");
    abort();
  }
  lua_settop(L, top);
  lua_gc(L, LUA_GCCOLLECT, 0); /* closes the fds made for this input */
  int n = count_fds();
  /* A Process collected without wait keeps its pidfd until tether reaps it in the
   * background (at its next wait or sleep): give that a moment. */
  for (int i = 0; i < 300 && n != base_fds; i++) {
    if (luaL_dostring(L, "require('tether').sleep(0.01)")) abort();
    n = count_fds();
  }
  if (n != base_fds) {
    fprintf(stderr, "cmd_fuzz: fd count %d after an input, %d before\n", n, base_fds);
    if (system("ls -l /proc/$PPID/fd >&2") != 0) fprintf(stderr, "cmd_fuzz: cannot list fds\n");
    abort();
  }
  return 0;
}
