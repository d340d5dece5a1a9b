/* sigexec - run a command with some signals blocked and some ignored (both survive execve).
 * usage: sigexec [-b SIGNUM]... [-i SIGNUM]... -- cmd args...
 * Used by the specs to start a Lua parent whose mask and dispositions are not the defaults. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
  sigset_t block;
  sigemptyset(&block);
  int i = 1;
  for (; i + 1 < argc && strcmp(argv[i], "--") != 0; i += 2) {
    int sig = atoi(argv[i + 1]);
    if (strcmp(argv[i], "-b") == 0) sigaddset(&block, sig);
    else if (strcmp(argv[i], "-i") == 0) signal(sig, SIG_IGN);
    else { fprintf(stderr, "sigexec: bad option %s\n", argv[i]); return 2; }
  }
  if (i >= argc || strcmp(argv[i], "--") != 0 || i + 1 >= argc) {
    fprintf(stderr, "usage: sigexec [-b SIGNUM]... [-i SIGNUM]... -- cmd args...\n");
    return 2;
  }
  sigprocmask(SIG_BLOCK, &block, NULL);
  execvp(argv[i + 1], argv + i + 1);
  perror("sigexec: execvp");
  return 127;
}
