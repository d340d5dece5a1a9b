/* httpload - a small HTTP load client that times every request (bench case "nginx").
 *
 * usage: httpload PORT PATH CONCURRENCY COUNT [EXPECT]
 *   Sends COUNT requests "GET PATH HTTP/1.0" to 127.0.0.1:PORT, CONCURRENCY at a time, each
 *   on its own connection (HTTP/1.0: the response ends at EOF, no chunking), and times each
 *   from connect to EOF. COUNT 0 runs until SIGTERM/SIGINT. Prints one line:
 *     n=<done> bad=<non-200 or body without EXPECT> rps=<requests/s> p50=<ms> p99=<ms> max=<ms>
 * wrk reports latency wrongly when some requests are slow; this client keeps every sample. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct conn {
  int fd;
  double t0;
  size_t sent, got;
  char buf[4096];
};

static volatile sig_atomic_t stop;
static void on_stop(int sig) { (void)sig; stop = 1; }

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static struct sockaddr_in addr;
static char req[1024];
static size_t reqlen;
static int ep;

static int start(struct conn *c) {
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0) return -1;
  c->t0 = now();
  c->sent = c->got = 0;
  if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
    close(c->fd);
    return -1;
  }
  struct epoll_event ev = { .events = EPOLLOUT | EPOLLIN, .data.ptr = c };
  return epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: httpload PORT PATH CONCURRENCY COUNT [EXPECT]\n");
    return 2;
  }
  int port = atoi(argv[1]), conc = atoi(argv[3]);
  long count = atol(argv[4]);
  const char *expect = argc > 5 ? argv[5] : NULL;
  if (conc < 1) conc = 1;
  signal(SIGTERM, on_stop);
  signal(SIGINT, on_stop);
  signal(SIGPIPE, SIG_IGN);
  addr.sin_family = AF_INET;
  addr.sin_port = htons((unsigned short)port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  reqlen = (size_t)snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", argv[2]);
  ep = epoll_create1(EPOLL_CLOEXEC);
  size_t cap = count > 0 ? (size_t)count : 1 << 16, n = 0;
  double *lat = malloc(cap * sizeof *lat);
  struct conn *cs = calloc((size_t)conc, sizeof *cs);
  if (!lat || !cs || ep < 0) return 1;
  long launched = 0, bad = 0;
  double t_start = now();
  int live = 0;
  for (int i = 0; i < conc && (count == 0 || launched < count); i++) {
    if (start(&cs[i]) == 0) { launched++; live++; }
    else bad++;
  }
  struct epoll_event evs[64];
  while (live > 0) {
    int k = epoll_wait(ep, evs, 64, 1000);
    if (k < 0 && errno == EINTR) k = 0;
    for (int j = 0; j < k; j++) {
      struct conn *c = evs[j].data.ptr;
      int done = 0;
      if (c->sent < reqlen) {
        ssize_t w = send(c->fd, req + c->sent, reqlen - c->sent, MSG_NOSIGNAL);
        if (w > 0) c->sent += (size_t)w;
        else if (w < 0 && errno != EAGAIN && errno != EINPROGRESS && errno != ENOTCONN) done = 2;
        if (c->sent == reqlen) {
          struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
          epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        }
      }
      if (!done && (evs[j].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
        for (;;) {
          char tmp[4096];
          ssize_t r = read(c->fd, tmp, sizeof tmp);
          if (r > 0) {
            size_t room = sizeof c->buf - 1 - c->got, m = (size_t)r < room ? (size_t)r : room;
            memcpy(c->buf + c->got, tmp, m);
            c->got += m;
            continue;
          }
          if (r == 0) done = 1;
          else if (errno != EAGAIN) done = 2;
          break;
        }
      }
      if (!done) continue;
      double t = now() - c->t0;
      close(c->fd);
      c->buf[c->got] = 0;
      int ok = done == 1 && strncmp(c->buf, "HTTP/1.1 200", 12) == 0 &&
               (!expect || strstr(c->buf, expect) != NULL);
      if (!ok) bad++;
      if (n == cap) {
        cap *= 2;
        double *more = realloc(lat, cap * sizeof *lat);
        if (!more) return 1;
        lat = more;
      }
      lat[n++] = t;
      live--;
      if (!stop && (count == 0 || launched < count)) {
        if (start(c) == 0) { launched++; live++; }
        else bad++;
      }
    }
  }
  double elapsed = now() - t_start;
  qsort(lat, n, sizeof *lat, cmp);
  double p50 = n ? lat[n / 2] : 0, p99 = n ? lat[(size_t)((double)(n - 1) * 0.99)] : 0;
  printf("n=%zu bad=%ld rps=%.1f p50=%.3f p99=%.3f max=%.3f\n", n, bad,
         elapsed > 0 ? (double)n / elapsed : 0, p50 * 1e3, p99 * 1e3, n ? lat[n - 1] * 1e3 : 0);
  free(lat);
  free(cs);
  close(ep);
  return 0;
}
