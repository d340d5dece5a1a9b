/* embedhost - a spec helper: a C program embedding Lua, as a host would. It opens and closes
 * lua_States, runs Lua code in them, and installs, inspects and raises signals itself, in
 * the order its arguments say. Each state loads tether from LUA_PATH/LUA_CPATH.
 *
 *   embedhost STEP...
 *     open              a new lua_State (standard libraries); states are numbered 1, 2, ...
 *     run K CODE        runs the Lua chunk CODE in state K; an error ends the host (exit 3)
 *     close K           lua_close(state K)
 *     fork K CODE       fork(); the child runs CODE in state K and exits (0, or 3 on an error);
 *                       the parent waits and prints "forked N" (N: the child's exit code)
 *     handler SIG       the host's own counting handler for SIG (sa_handler, SA_RESTART)
 *     dfl SIG           SIG_DFL for SIG
 *     raise SIG         kill(getpid(), SIG) (handled before kill returns while one thread)
 *     show SIG          prints "SIG host|dfl|ign|other" (its disposition now)
 *     count SIG         prints "count SIG N": times the host's handler ran
 *     fds               prints "fds N": how many fds this process has open
 *     loop N ... end    the steps in between, N times
 *   SIG is a number. Prints "done" and exits 0 at the end.
 *
 * Built by the Makefile as build/$(LUA)/spec/embedhost (TETHER_EMBEDHOST). */
#include <dirent.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#define MAX_STATES 16

static lua_State *states[MAX_STATES + 1];
static int nstates;
static atomic_uint counts[NSIG];

static void on_host(int sig) { atomic_fetch_add(&counts[sig], 1); }

static void die(const char *what, const char *arg) {
  fprintf(stderr, "embedhost: %s %s\n", what, arg ? arg : "");
  exit(2);
}

static int num(const char *s) {
  char *end;
  long v = strtol(s, &end, 10);
  if (*end || v < 0 || v > 100000) die("bad number", s);
  return (int)v;
}

static int sig_of(const char *s) {
  int v = num(s);
  if (v < 1 || v >= NSIG) die("bad signal", s);
  return v;
}

static lua_State *state(const char *s) {
  int k = num(s);
  if (k < 1 || k > nstates || !states[k]) die("no open state", s);
  return states[k];
}

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
#if LUA_VERSION_NUM >= 502 || defined(LUAJIT_VERSION_NUM)
  luaL_traceback(L, L, msg ? msg : "(error object)", 1);
#else
  lua_pushstring(L, msg ? msg : "(error object)"); /* Lua 5.1 has no luaL_traceback */
#endif
  return 1;
}

/* Runs the Lua chunk code in L; returns 0, or prints the error and returns -1. */
static int run(lua_State *L, const char *code) {
  lua_pushcfunction(L, traceback);
  if (luaL_loadstring(L, code) != 0 || lua_pcall(L, 0, 0, -2) != 0) {
    fprintf(stderr, "embedhost: run: %s\n", lua_tostring(L, -1));
    return -1;
  }
  lua_pop(L, 1);
  return 0;
}

/* Runs argv[i..] up to argc or an "end" that closes a loop; returns the index after it. */
static int steps(int argc, char **argv, int i) {
  while (i < argc) {
    const char *s = argv[i++];
    if (strcmp(s, "end") == 0) return i;
    if (strcmp(s, "open") == 0) {
      if (nstates == MAX_STATES) die("too many states", NULL);
      lua_State *L = luaL_newstate();
      if (!L) die("luaL_newstate failed", NULL);
      luaL_openlibs(L);
      states[++nstates] = L;
    } else if (strcmp(s, "run") == 0 && i + 1 < argc) {
      lua_State *L = state(argv[i]);
      const char *code = argv[i + 1];
      i += 2;
      if (run(L, code) < 0) exit(3);
    } else if (strcmp(s, "fork") == 0 && i + 1 < argc) {
      lua_State *L = state(argv[i]);
      const char *code = argv[i + 1];
      i += 2;
      fflush(stdout);
      pid_t pid = fork();
      if (pid < 0) die("fork failed", NULL);
      if (pid == 0) {
        int rc = run(L, code) < 0 ? 3 : 0;
        fflush(stdout);
        _exit(rc);
      }
      int st;
      while (waitpid(pid, &st, 0) < 0) {}
      printf("forked %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    } else if (strcmp(s, "close") == 0 && i < argc) {
      lua_State *L = state(argv[i]);
      states[num(argv[i++])] = NULL;
      lua_close(L);
    } else if ((strcmp(s, "handler") == 0 || strcmp(s, "dfl") == 0) && i < argc) {
      int sig = sig_of(argv[i++]);
      struct sigaction sa;
      memset(&sa, 0, sizeof sa);
      sigemptyset(&sa.sa_mask);
      sa.sa_handler = s[0] == 'h' ? on_host : SIG_DFL;
      sa.sa_flags = s[0] == 'h' ? SA_RESTART : 0;
      if (sigaction(sig, &sa, NULL) < 0) die("sigaction failed for", argv[i - 1]);
    } else if (strcmp(s, "raise") == 0 && i < argc) {
      kill(getpid(), sig_of(argv[i++]));
    } else if (strcmp(s, "show") == 0 && i < argc) {
      int sig = sig_of(argv[i++]);
      struct sigaction cur;
      if (sigaction(sig, NULL, &cur) < 0) die("sigaction failed for", argv[i - 1]);
      const char *what = "other";
      if (!(cur.sa_flags & SA_SIGINFO)) {
        if (cur.sa_handler == SIG_DFL) what = "dfl";
        else if (cur.sa_handler == SIG_IGN) what = "ign";
        else if (cur.sa_handler == on_host) what = "host";
      }
      printf("%d %s\n", sig, what);
    } else if (strcmp(s, "count") == 0 && i < argc) {
      int sig = sig_of(argv[i++]);
      printf("count %d %u\n", sig, atomic_load(&counts[sig]));
    } else if (strcmp(s, "fds") == 0) {
      DIR *d = opendir("/proc/self/fd");
      if (!d) die("cannot list", "/proc/self/fd");
      int n = -1; /* not counting the directory's own fd */
      for (struct dirent *e; (e = readdir(d));) if (e->d_name[0] != '.') n++;
      closedir(d);
      printf("fds %d\n", n);
    } else if (strcmp(s, "loop") == 0 && i < argc) {
      int n = num(argv[i++]), next = i;
      if (n < 1) die("loop count must be at least 1:", argv[i - 1]);
      for (int k = 0; k < n; k++) next = steps(argc, argv, i);
      i = next;
    } else {
      die("bad step", s);
    }
    fflush(stdout);
  }
  return i;
}

int main(int argc, char **argv) {
  steps(argc, argv, 1);
  for (int k = 1; k <= nstates; k++)
    if (states[k]) lua_close(states[k]);
  printf("done\n");
  return 0;
}
