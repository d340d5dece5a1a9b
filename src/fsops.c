/* fsops.c - the disk syscalls of the file-I/O lane: read a whole file, write one (atomically
 * or not), stat. They run on lane threads (lane.c): blocking is their job, and they never
 * touch a lua_State. Every fd is O_CLOEXEC (a child spawned meanwhile inherits none), every
 * syscall restarts on EINTR, and short reads and writes are continued. */
#include "lane.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* One read or write syscall asks for at most this much: a cancelled read of a huge file stops
 * between chunks, and no call nears the kernel's 2 GiB per-call cap. */
#define CHUNK ((size_t)8 << 20)
/* Buffer for a file whose size stat does not tell (/proc, pipes, devices); doubled as needed. */
#define FIRST_CAP ((size_t)16384)

static void fail(struct lane_op *op, const char *step, int err) {
  op->err = err;
  op->errop = step;
}

static int open_retry(const char *path, int flags, mode_t mode) {
  int fd;
  do fd = open(path, flags, mode); while (fd < 0 && errno == EINTR);
  return fd;
}

/* A FIFO reads as Go's os.ReadFile reads it: until its writers have come and closed it. It
 * was opened non-blocking (the open does not wait for a writer), so a read before any writer
 * came would see end of file at once: wait until it is readable (data) or hung up (a writer
 * came and went; poll does not report the hang-up of a FIFO that never had a writer since it
 * was opened). Polls in slices, so a cancelled batch stops within one; -1 with errno. */
static int fifo_wait(int fd, const atomic_int *cancel) {
  for (;;) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    int r = poll(&p, 1, 100);
    if (r > 0) return 0;
    if (r < 0 && errno != EINTR) return -1;
    if (atomic_load_explicit(cancel, memory_order_relaxed)) { errno = ECANCELED; return -1; }
  }
}

void fsop_read(struct lane_op *op, const atomic_int *cancel) {
  /* O_NONBLOCK: opening a FIFO without a writer must not block the lane. */
  int fd = open_retry(op->path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0);
  if (fd < 0) { fail(op, "open", errno); return; }
  struct stat st;
  if (fstat(fd, &st) < 0) { fail(op, "stat", errno); close(fd); return; }
  size_t cap = FIRST_CAP;
  int blocking = 0, sized = 0, fifo = S_ISFIFO(st.st_mode);
  if (S_ISREG(st.st_mode)) {
    /* st_size + 1, so that the read seeing EOF fits without growing. A file that grows
     * meanwhile is read to its end all the same; /proc files report size 0. */
    if ((uintmax_t)st.st_size >= SIZE_MAX / 4) { fail(op, "read", EFBIG); close(fd); return; }
    if (st.st_size > 0) {
      cap = (size_t)st.st_size + 1;
      sized = 1;
    }
  } else if (!fifo) {
    /* Not a regular file: reads block like Go's os.ReadFile (no EAGAIN to handle). A FIFO
     * stays non-blocking: see fifo_wait. */
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) == 0) blocking = 1;
  }
  int slab;
  char *buf = lane_buf_alloc(cap, &slab);
  if (!buf) { fail(op, "read", ENOMEM); close(fd); return; }
  size_t len = 0;
  for (;;) {
    if (len == cap) {
      if (cap > SIZE_MAX / 4) { fail(op, "read", EFBIG); break; }
      char *nb;
      if (slab) { /* out of the slab into malloc'ed memory */
        nb = malloc(cap * 2);
        if (nb) {
          memcpy(nb, buf, len);
          lane_buf_free(buf, 1);
          slab = 0;
        }
      } else {
        nb = realloc(buf, cap * 2);
      }
      if (!nb) { fail(op, "read", ENOMEM); break; }
      buf = nb;
      cap *= 2;
    }
    size_t want = cap - len;
    if (want > CHUNK) want = CHUNK;
    if (fifo && fifo_wait(fd, cancel) < 0) { fail(op, "read", errno); break; }
    ssize_t r = read(fd, buf + len, want);
    if (r < 0) {
      if (errno == EINTR || (errno == EAGAIN && fifo)) continue; /* fifo: another reader took it */
      if (errno == EAGAIN && !blocking) {
        /* A file system that honours O_NONBLOCK on this file: read it blocking. */
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0 && fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) == 0) { blocking = 1; continue; }
      }
      fail(op, "read", errno);
      break;
    }
    if (r == 0) break;
    len += (size_t)r;
    /* A regular file that gave less than asked, ending exactly at its stat size, is at its
     * end: skip the read that would return 0 (local file systems read short only at end of
     * file, and lane threads take no signals). A short read before that size reads on. */
    if (sized && (size_t)r < want && len == (size_t)st.st_size) break;
    if (len >= CHUNK && atomic_load_explicit(cancel, memory_order_relaxed)) {
      fail(op, "read", ECANCELED);
      break;
    }
  }
  close(fd);
  if (op->err) { lane_buf_free(buf, slab); return; }
  op->data = buf;
  op->len = len;
  op->slab = slab;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t r = write(fd, p, n > CHUNK ? CHUNK : n);
    if (r < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (r == 0) return EIO;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

/* fsync, where a file system that cannot sync a directory (EINVAL) does not count as failure. */
static int sync_fd(int fd, int is_dir) {
  int r;
  do r = fsync(fd); while (r < 0 && errno == EINTR);
  if (r < 0 && !(is_dir && (errno == EINVAL || errno == ENOTSUP))) return errno;
  return 0;
}

static void write_plain(struct lane_op *op, const struct lane_wopts *w) {
  int fd = open_retry(op->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOCTTY,
                      w->has_mode ? w->mode : 0666);
  if (fd < 0) { fail(op, "open", errno); return; }
  int err = write_all(fd, op->data, op->len);
  if (err) fail(op, "write", err);
  else if (w->sync && (err = sync_fd(fd, 0)) != 0) fail(op, "sync", err);
  if (close(fd) < 0 && !op->err && errno != EINTR) fail(op, "close", errno);
}

/* A fresh suffix for a temporary name: process id, a counter and the clock, mixed. */
static unsigned tmp_suffix(void) {
  static atomic_uint seq;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  unsigned x = (unsigned)getpid() * 2654435761u ^ atomic_fetch_add(&seq, 1) * 40503u ^
               (unsigned)ts.tv_nsec * 97u;
  return x & 0xffffffu;
}

/* Atomic replace: write DIR/.BASE.tmpXXXXXX (created with O_EXCL), fsync it if asked, rename
 * it over the target, fsync the directory if asked. A reader sees the old file or the new one,
 * never a part. Any failure before the rename removes the temporary file. */
static void write_atomic(struct lane_op *op, const struct lane_wopts *w) {
  const char *path = op->path;
  const char *slash = strrchr(path, '/');
  size_t dlen = slash ? (size_t)(slash - path) + 1 : 0; /* directory part, with its slash */
  const char *base = path + dlen;
  size_t blen = strlen(base);
  if (blen == 0) { fail(op, "open", EISDIR); return; }
  if (blen > 200) blen = 200; /* keep the temporary name under NAME_MAX */
  /* The permission bits: the given mode (umask applies), else the replaced file's (kept
   * exactly), else 0666 less the umask, as a plain create would give. */
  int keep = 0;
  mode_t mode = w->has_mode ? w->mode : 0666;
  struct stat st;
  if (!w->has_mode && stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
    keep = 1;
    mode = st.st_mode & 07777;
  }
  char *tmp = malloc(dlen + blen + 24);
  if (!tmp) { fail(op, "open", ENOMEM); return; }
  int fd = -1;
  for (int tries = 0; tries < 100; tries++) {
    snprintf(tmp, dlen + blen + 24, "%.*s.%.*s.tmp%06x", (int)dlen, path, (int)blen, base, tmp_suffix());
    fd = open_retry(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY, keep ? 0600 : mode);
    if (fd >= 0 || errno != EEXIST) break;
  }
  if (fd < 0) { fail(op, "open", errno); free(tmp); return; }
  int err = 0;
  if (keep && fchmod(fd, mode) < 0) fail(op, "chmod", errno);
  else if ((err = write_all(fd, op->data, op->len)) != 0) fail(op, "write", err);
  else if (w->sync && (err = sync_fd(fd, 0)) != 0) fail(op, "sync", err);
  if (close(fd) < 0 && !op->err && errno != EINTR) fail(op, "close", errno);
  if (!op->err && rename(tmp, path) < 0) fail(op, "rename", errno);
  if (op->err) {
    unlink(tmp);
    free(tmp);
    return;
  }
  free(tmp);
  if (w->sync) {
    /* Make the rename itself durable. */
    char *dir = dlen ? strndup(path, dlen) : strdup(".");
    if (!dir) { fail(op, "sync", ENOMEM); return; }
    int dfd = open_retry(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    free(dir);
    if (dfd < 0) { fail(op, "sync", errno); return; }
    if ((err = sync_fd(dfd, 1)) != 0) fail(op, "sync", err);
    close(dfd);
  }
}

void fsop_write(struct lane_op *op, const struct lane_wopts *w) {
  if (w->atomic) write_atomic(op, w);
  else write_plain(op, w);
}

void fsop_stat(struct lane_op *op, struct stat *st, int follow) {
  if (fstatat(AT_FDCWD, op->path, st, follow ? 0 : AT_SYMLINK_NOFOLLOW) < 0)
    fail(op, follow ? "stat" : "lstat", errno);
}
