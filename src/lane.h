/* lane.h - the file-I/O lane's internals, shared by lane.c (the threads, batches and their
 * Lua userdata) and fsops.c (the disk syscalls a lane thread runs). Pure C: nothing here
 * touches a lua_State, since fsops run on lane threads. */
#ifndef TETHER_LANE_H
#define TETHER_LANE_H

#include <stdatomic.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>

/* One disk operation of a batch: its input (path, data to write) and its result. */
struct lane_op {
  const char *path;   /* NUL-terminated, owned by the batch */
  char *data;         /* read: the file's bytes (malloc'ed, owned by the op until taken);
                         write: the bytes to write (owned by the batch) */
  size_t len;
  int slab;           /* read: data was cut from a lane thread's slab (slab.c) */
  int err;            /* 0, or the errno of the failed step */
  const char *errop;  /* the failed step, Go's PathError op: "open", "read", "write", ... */
};

/* Options of a write. */
struct lane_wopts {
  int atomic;         /* temp file in the same directory + rename */
  int sync;           /* fsync the file (and, when atomic, the directory after rename) */
  int has_mode;       /* mode given: create with it (umask applies); else 0666, or an
                         existing file's permission bits when atomic */
  mode_t mode;
};

/* Reads op->path whole into op->data/op->len, or sets op->err/op->errop. Restarts on EINTR,
 * loops over short reads, grows its buffer for files whose size stat does not tell (/proc).
 * *cancel becoming non-zero stops a long read between chunks with ECANCELED. */
void fsop_read(struct lane_op *op, const atomic_int *cancel);

/* Read buffers (slab.c): small ones cut from the calling lane thread's huge-page slab, big
 * ones from malloc (*from_slab says which). lane_buf_free may be called from any thread.
 * lane_buf_thread_exit lets go of the thread's slab. */
char *lane_buf_alloc(size_t size, int *from_slab);
void lane_buf_free(char *p, int from_slab);
void lane_buf_thread_exit(void);

/* Writes op->data/op->len to op->path as *w asks; on failure no temp file is left. */
void fsop_write(struct lane_op *op, const struct lane_wopts *w);

/* stat (follow = 1) or lstat (follow = 0) of op->path into *st. */
void fsop_stat(struct lane_op *op, struct stat *st, int follow);

#endif
