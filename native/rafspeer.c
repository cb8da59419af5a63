/*
 * rafspeer native addon: raw mount(2)/umount2(2), and a read-only "blob file system" served straight from the
 * kernel FUSE protocol on /dev/fuse (no libfuse).
 *
 * The blob file system is a flat root directory of regular files, one per cached blob, whose bytes live in a
 * local sparse "cache file" at the same offsets. A per-file bitmap says which 4 KiB blocks of the cache file hold
 * data. READs of ready blocks are answered on the worker threads (pread + writev) without touching the JS event
 * loop; the rest are handed to JS through a threadsafe function ("misses") and answered later with reply(). A
 * miss never blocks a worker: the request is parked in a table and the worker goes back to /dev/fuse.
 *
 * Why raw mount(2): util-linux mount wants loop devices for regular-file sources, but EROFS (Linux >= 6.12) can
 * mount a bootstrap file directly with `device=` pointing at regular files, here files of this FUSE mount.
 */
#define _GNU_SOURCE
#include <node_api.h>
#include <linux/fuse.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef FUSE_PARALLEL_DIROPS
#define FUSE_PARALLEL_DIROPS (1 << 18)
#endif
#ifndef FUSE_MAX_PAGES
#define FUSE_MAX_PAGES (1 << 22)
#endif
#ifndef FOPEN_NOFLUSH
#define FOPEN_NOFLUSH (1 << 5)
#endif
#ifndef FUSE_COMPAT_22_INIT_OUT_SIZE
#define FUSE_COMPAT_22_INIT_OUT_SIZE 24
#endif
#ifndef FUSE_COMPAT_INIT_OUT_SIZE
#define FUSE_COMPAT_INIT_OUT_SIZE 8
#endif
#ifndef MNT_DETACH
#define MNT_DETACH 2
#endif

#define BLOCK 4096u
#define BLOCK_SHIFT 12
#define DEFAULT_MAX_READ (1u << 20)
#define MAX_MAX_READ (1u << 20) /* the kernel's default fs.fuse.max_pages_limit (256 pages) */
#define REQ_BUF (64u * 1024u + 4096u) /* >= FUSE_MIN_READ_BUFFER and header + write_in + max_write */
#define TIMEOUT_S 86400
#define HIST_BUCKETS 9 /* 4K .. 1M */
#define CHUNK_SHIFT 10
#define CHUNK (1u << CHUNK_SHIFT)
#define MAX_CHUNKS 4096 /* 4 Mi files */
#define INIT_TIMEOUT_MS 5000

/* ---------------------------------------------------------------------------------------------------------------- */
/* errors                                                                                                           */

static const char *errno_name (int e) {
  switch (e) {
    case EPERM: return "EPERM"; case ENOENT: return "ENOENT"; case ESRCH: return "ESRCH"; case EINTR: return "EINTR";
    case EIO: return "EIO"; case ENXIO: return "ENXIO"; case E2BIG: return "E2BIG"; case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN"; case ENOMEM: return "ENOMEM"; case EACCES: return "EACCES"; case EFAULT: return "EFAULT";
    case ENOTBLK: return "ENOTBLK"; case EBUSY: return "EBUSY"; case EEXIST: return "EEXIST"; case EXDEV: return "EXDEV";
    case ENODEV: return "ENODEV"; case ENOTDIR: return "ENOTDIR"; case EISDIR: return "EISDIR"; case EINVAL: return "EINVAL";
    case ENFILE: return "ENFILE"; case EMFILE: return "EMFILE"; case ENOTTY: return "ENOTTY"; case EFBIG: return "EFBIG";
    case ENOSPC: return "ENOSPC"; case EROFS: return "EROFS"; case EPIPE: return "EPIPE"; case ERANGE: return "ERANGE";
    case ENAMETOOLONG: return "ENAMETOOLONG"; case ENOSYS: return "ENOSYS"; case ENOTEMPTY: return "ENOTEMPTY";
    case ELOOP: return "ELOOP"; case ENODATA: return "ENODATA"; case ENOTCONN: return "ENOTCONN";
    case ETIMEDOUT: return "ETIMEDOUT"; case ECONNABORTED: return "ECONNABORTED"; case EOPNOTSUPP: return "EOPNOTSUPP";
    case EUCLEAN: return "EUCLEAN"; case EPROTO: return "EPROTO"; case EOVERFLOW: return "EOVERFLOW";
    case ESTALE: return "ESTALE"; case ETXTBSY: return "ETXTBSY"; case EMLINK: return "EMLINK"; case ENOMEDIUM: return "ENOMEDIUM";
    case EMEDIUMTYPE: return "EMEDIUMTYPE"; case EBADMSG: return "EBADMSG"; case ENOKEY: return "ENOKEY";
    default: return "UNKNOWN";
  }
}

/* Node's own system errors carry code/errno/syscall/path; ours do too, errno positive like the reply() errno. */
static void throw_errno (napi_env env, const char *syscall, const char *path, int err) {
  char msg[PATH_MAX + 256];
  snprintf(msg, sizeof msg, "%s(%s): %s", syscall, path != NULL ? path : "", strerror(err));
  napi_value m, code, error, num, sc, p;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
  napi_create_string_utf8(env, errno_name(err), NAPI_AUTO_LENGTH, &code);
  napi_create_error(env, NULL, m, &error);
  napi_set_named_property(env, error, "code", code);
  napi_create_int32(env, err, &num);
  napi_set_named_property(env, error, "errno", num);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sc);
  napi_set_named_property(env, error, "syscall", sc);
  if (path != NULL) {
    napi_create_string_utf8(env, path, NAPI_AUTO_LENGTH, &p);
    napi_set_named_property(env, error, "path", p);
  }
  napi_throw(env, error);
}

#define NAPI_OK(call) do { if ((call) != napi_ok) return NULL; } while (0)

/* An owned copy of a JS string argument; NULL (with a TypeError thrown) when it is not a string. */
static char *get_string (napi_env env, napi_value v, const char *what) {
  size_t len;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) {
    char msg[128];
    snprintf(msg, sizeof msg, "%s must be a string", what);
    napi_throw_type_error(env, NULL, msg);
    return NULL;
  }
  char *s = malloc(len + 1);
  if (s == NULL) { napi_throw_error(env, NULL, "out of memory"); return NULL; }
  napi_get_value_string_utf8(env, v, s, len + 1, &len);
  if (strlen(s) != len) {
    free(s);
    char msg[128];
    snprintf(msg, sizeof msg, "%s must not contain NUL", what);
    napi_throw_type_error(env, NULL, msg);
    return NULL;
  }
  return s;
}

/* A non-negative integer that a double holds exactly (offsets, lengths); false with a RangeError thrown. */
static bool get_u64 (napi_env env, napi_value v, const char *what, uint64_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok || !(d >= 0) || d > 9007199254740991.0 || d != (double)(uint64_t)d) {
    char msg[128];
    snprintf(msg, sizeof msg, "%s must be an integer >= 0", what);
    napi_throw_range_error(env, NULL, msg);
    return false;
  }
  *out = (uint64_t)d;
  return true;
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* mount(2) / umount2(2)                                                                                            */

static napi_value js_mount (napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 5) { napi_throw_type_error(env, NULL, "mount(source, target, fstype, flags, data)"); return NULL; }
  char *source = NULL, *target = NULL, *fstype = NULL, *data = NULL;
  uint64_t flags;
  if ((source = get_string(env, argv[0], "source")) == NULL) goto out;
  if ((target = get_string(env, argv[1], "target")) == NULL) goto out;
  if ((fstype = get_string(env, argv[2], "fstype")) == NULL) goto out;
  if (!get_u64(env, argv[3], "flags", &flags)) goto out;
  if ((data = get_string(env, argv[4], "data")) == NULL) goto out;
  if (mount(source, target, fstype, (unsigned long)flags, data) != 0) throw_errno(env, "mount", target, errno);
out:
  free(source); free(target); free(fstype); free(data);
  return NULL;
}

static napi_value js_umount (napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1) { napi_throw_type_error(env, NULL, "umount(target, flags)"); return NULL; }
  uint64_t flags = 0;
  if (argc >= 2 && !get_u64(env, argv[1], "flags", &flags)) return NULL;
  char *target = get_string(env, argv[0], "target");
  if (target == NULL) return NULL;
  if (umount2(target, (int)flags) != 0) throw_errno(env, "umount", target, errno);
  free(target);
  return NULL;
}

/*
 * withSignalsBlocked(fn): calls fn() with every signal blocked on this thread and returns what it returns (an
 * exception passes through); the mask is restored after. A thread a native call starts meanwhile inherits the full
 * mask, so no signal handler ever runs on it. What fuse-native's threads need: libfuse 2 cancels its workers when
 * the session ends, and a worker cancelled inside libuv's SIGCHLD handler takes the handler's lock with it, which
 * hangs the event loop the next time it touches signals (libuv#112).
 */
static napi_value js_with_signals_blocked (napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], global, result = NULL;
  napi_valuetype type = napi_undefined;
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || napi_typeof(env, argv[0], &type) != napi_ok || type != napi_function) {
    napi_throw_type_error(env, NULL, "withSignalsBlocked(fn): fn must be a function");
    return NULL;
  }
  NAPI_OK(napi_get_global(env, &global));
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  napi_status st = napi_call_function(env, global, argv[0], 0, NULL, &result);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return st == napi_ok ? result : NULL;
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* the blob file system                                                                                             */

typedef struct bfile {
  char *name;
  size_t namelen;
  int fd;
  uint64_t size;
  uint64_t nblocks;
  _Atomic uint64_t *bits;
  /* blocks some READ has asked for since the last forgetAccess(): a READ touching a block not in it is an access */
  _Atomic uint64_t *seen;
  /* fast-path readers hold it for read across check + pread; clearReady takes it for write */
  pthread_rwlock_t lock;
} bfile;

typedef struct miss {
  struct miss *next;
  uint64_t unique;
  uint32_t file;
  uint64_t offset;
  uint32_t length;
} miss;

/* what the threadsafe function carries to the JS thread: a miss, or (access) the first READ of some blocks */
typedef struct miss_event {
  bool access;
  uint64_t unique;
  uint32_t file;
  uint64_t offset;
  uint32_t length;
} miss_event;

/* a range of a file to copy into the kernel's page cache of that file (FUSE_NOTIFY_STORE) */
typedef struct push_job {
  struct push_job *next;
  uint32_t file;
  uint64_t offset;
  uint64_t length;
} push_job;

enum { ST_NEW, ST_STARTED, ST_STOPPED };

typedef struct server {
  atomic_int refs; /* the JS wrapper, the threadsafe function, the env cleanup hook */
  napi_env env;
  char *mountpoint;
  char *fsname;
  unsigned nthreads;
  uint32_t max_read;
  bool direct_io;
  napi_ref on_miss;
  napi_ref on_access; /* NULL: accesses are not reported */
  napi_threadsafe_function tsfn;
  bool hook;
  time_t born;

  /* files: chunks are allocated before nfiles is published, and never move */
  bfile **chunks[MAX_CHUNKS];
  atomic_uint nfiles;
  pthread_mutex_t files_mu; /* addFile and the name hash */
  uint32_t *htab; /* index + 1, open addressing */
  size_t hcap;

  /* the connection */
  int fd;
  unsigned dev_minor;
  bool have_dev;
  pthread_t *tids;
  unsigned ntids;
  bool leaked; /* worker threads that would not exit: their memory and fds are never released */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int inited; /* 0 waiting, 1 answered, -errno failed */
  _Atomic uint32_t minor; /* negotiated protocol minor */
  unsigned live;
  atomic_int state;

  /* push(): ranges the pusher thread stores into the page cache, under mu; push_cv wakes it */
  push_job *push_head, *push_tail;
  pthread_cond_t push_cv;
  _Atomic uint64_t pushes, push_bytes, push_skipped;

  /* misses waiting for reply(), keyed by the FUSE unique */
  pthread_mutex_t miss_mu;
  miss *mtab[1024];

  _Atomic uint64_t requests, reads, fast_reads, fast_bytes, misses, miss_bytes, replies, errors;
  _Atomic uint64_t hist[HIST_BUCKETS];
} server;

static inline bfile *file_at (server *s, uint32_t idx) {
  return s->chunks[idx >> CHUNK_SHIFT][idx & (CHUNK - 1)];
}

static bfile *file_get (server *s, uint64_t idx) {
  if (idx >= atomic_load_explicit(&s->nfiles, memory_order_acquire)) return NULL;
  return file_at(s, (uint32_t)idx);
}

static uint64_t name_hash (const char *p, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++) { h ^= (unsigned char)p[i]; h *= 1099511628211ULL; }
  return h;
}

/* with files_mu held; -1 when absent */
static int64_t name_find (server *s, const char *name, size_t n) {
  if (s->hcap == 0) return -1;
  for (size_t i = name_hash(name, n) & (s->hcap - 1);; i = (i + 1) & (s->hcap - 1)) {
    uint32_t v = s->htab[i];
    if (v == 0) return -1;
    bfile *f = file_at(s, v - 1);
    if (f->namelen == n && memcmp(f->name, name, n) == 0) return v - 1;
  }
}

static bool name_insert (server *s, uint32_t idx) {
  if ((uint64_t)(idx + 1) * 2 > s->hcap) {
    size_t cap = s->hcap == 0 ? 64 : s->hcap * 2;
    uint32_t *t = calloc(cap, sizeof *t);
    if (t == NULL) return false;
    for (size_t i = 0; i < s->hcap; i++) {
      uint32_t v = s->htab[i];
      if (v == 0) continue;
      bfile *f = file_at(s, v - 1);
      size_t j = name_hash(f->name, f->namelen) & (cap - 1);
      while (t[j] != 0) j = (j + 1) & (cap - 1);
      t[j] = v;
    }
    free(s->htab);
    s->htab = t;
    s->hcap = cap;
  }
  bfile *f = file_at(s, idx);
  size_t j = name_hash(f->name, f->namelen) & (s->hcap - 1);
  while (s->htab[j] != 0) j = (j + 1) & (s->hcap - 1);
  s->htab[j] = idx + 1;
  return true;
}

/* bits [b0, b1) of a bitmap: set, clear, or test that all are set */
static void map_update (_Atomic uint64_t *bits, uint64_t b0, uint64_t b1, bool on) {
  while (b0 < b1) {
    uint64_t w = b0 >> 6, end = (w + 1) << 6;
    if (end > b1) end = b1;
    unsigned lo = (unsigned)(b0 & 63), hi = (unsigned)(end - (w << 6));
    uint64_t mask = (hi == 64 ? ~0ULL : ((1ULL << hi) - 1)) & ~((1ULL << lo) - 1);
    if (on) atomic_fetch_or_explicit(&bits[w], mask, memory_order_release);
    else atomic_fetch_and_explicit(&bits[w], ~mask, memory_order_release);
    b0 = end;
  }
}

static bool map_all (_Atomic uint64_t *bits, uint64_t b0, uint64_t b1) {
  while (b0 < b1) {
    uint64_t w = b0 >> 6, end = (w + 1) << 6;
    if (end > b1) end = b1;
    unsigned lo = (unsigned)(b0 & 63), hi = (unsigned)(end - (w << 6));
    uint64_t mask = (hi == 64 ? ~0ULL : ((1ULL << hi) - 1)) & ~((1ULL << lo) - 1);
    if ((atomic_load_explicit(&bits[w], memory_order_acquire) & mask) != mask) return false;
    b0 = end;
  }
  return true;
}

static void bits_update (bfile *f, uint64_t b0, uint64_t b1, bool on) { map_update(f->bits, b0, b1, on); }
static bool bits_all (bfile *f, uint64_t b0, uint64_t b1) { return map_all(f->bits, b0, b1); }

static void server_unref (server *s) {
  if (atomic_fetch_sub(&s->refs, 1) != 1) return;
  uint32_t n = atomic_load(&s->nfiles);
  for (uint32_t i = 0; i < n; i++) {
    bfile *f = file_at(s, i);
    if (f->fd >= 0) close(f->fd);
    pthread_rwlock_destroy(&f->lock);
    free(f->name);
    free((void *)f->bits);
    free((void *)f->seen);
    free(f);
  }
  for (unsigned c = 0; c < MAX_CHUNKS && s->chunks[c] != NULL; c++) free(s->chunks[c]);
  for (size_t i = 0; i < sizeof s->mtab / sizeof s->mtab[0]; i++) {
    for (miss *m = s->mtab[i], *next; m != NULL; m = next) { next = m->next; free(m); }
  }
  for (push_job *j = s->push_head, *next; j != NULL; j = next) { next = j->next; free(j); }
  free(s->htab);
  free(s->tids);
  free(s->mountpoint);
  free(s->fsname);
  pthread_mutex_destroy(&s->files_mu);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
  pthread_cond_destroy(&s->push_cv);
  pthread_mutex_destroy(&s->miss_mu);
  free(s);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* FUSE replies                                                                                                     */

/* 0, or -errno of the write; ENOENT means the kernel no longer waits for this request (interrupted, aborted) */
static int send_reply (server *s, uint64_t unique, int error, const void *a, size_t alen, const void *b, size_t blen) {
  struct fuse_out_header h = { .len = (uint32_t)(sizeof h + alen + blen), .error = error, .unique = unique };
  struct iovec iov[3] = { { &h, sizeof h } };
  int n = 1;
  if (alen > 0) iov[n++] = (struct iovec){ (void *)a, alen };
  if (blen > 0) iov[n++] = (struct iovec){ (void *)b, blen };
  for (;;) {
    ssize_t w = writev(s->fd, iov, n);
    if (w >= 0) return 0;
    if (errno == EINTR) continue;
    int e = errno;
    if (e != ENOENT) atomic_fetch_add(&s->errors, 1);
    return -e;
  }
}

static int send_error (server *s, uint64_t unique, int err) {
  return send_reply(s, unique, -err, NULL, 0, NULL, 0);
}

static void fill_attr (server *s, uint64_t nodeid, struct fuse_attr *a) {
  memset(a, 0, sizeof *a);
  a->ino = nodeid;
  a->atime = a->mtime = a->ctime = (uint64_t)s->born;
  a->blksize = BLOCK;
  if (nodeid == FUSE_ROOT_ID) {
    a->mode = S_IFDIR | 0555;
    a->nlink = 2;
    a->size = BLOCK;
    a->blocks = BLOCK / 512;
  } else {
    bfile *f = file_get(s, nodeid - 2);
    a->mode = S_IFREG | 0444;
    a->nlink = 1;
    a->size = f->size;
    a->blocks = (f->size + 511) / 512;
  }
}

/* the file behind a nodeid, or NULL for the root and unknown ids */
static bfile *node_file (server *s, uint64_t nodeid) {
  if (nodeid < 2) return NULL;
  return file_get(s, nodeid - 2);
}

static void do_init (server *s, struct fuse_in_header *in, const void *arg, size_t alen) {
  struct fuse_init_in ii;
  memset(&ii, 0, sizeof ii);
  memcpy(&ii, arg, alen < sizeof ii ? alen : sizeof ii);
  struct fuse_init_out out;
  memset(&out, 0, sizeof out);
  out.major = FUSE_KERNEL_VERSION;
  int result;
  if (ii.major < 7) {
    send_error(s, in->unique, EPROTO);
    result = -EPROTO;
  } else if (ii.major > 7) {
    /* the kernel resends INIT with our major */
    send_reply(s, in->unique, 0, &out, FUSE_COMPAT_INIT_OUT_SIZE, NULL, 0);
    return;
  } else {
    out.minor = ii.minor < FUSE_KERNEL_MINOR_VERSION ? ii.minor : FUSE_KERNEL_MINOR_VERSION;
    out.max_readahead = ii.max_readahead < s->max_read ? ii.max_readahead : s->max_read;
    /* ASYNC_DIO: a direct read from an async kiocb (EROFS's `directio` reads of the blob files) goes out as READs
     * sent at once, instead of one READ at a time with the submitter waiting on each */
    out.flags = (FUSE_ASYNC_READ | FUSE_ASYNC_DIO | FUSE_MAX_PAGES | FUSE_PARALLEL_DIROPS) & ii.flags;
    out.max_background = 64;
    out.congestion_threshold = 48;
    out.max_write = BLOCK;
    out.time_gran = 1;
    out.max_pages = (uint16_t)((s->max_read + BLOCK - 1) / BLOCK);
    size_t size = out.minor >= 23 ? sizeof out : out.minor >= 5 ? FUSE_COMPAT_22_INIT_OUT_SIZE : FUSE_COMPAT_INIT_OUT_SIZE;
    result = send_reply(s, in->unique, 0, &out, size, NULL, 0);
    if (result == 0) result = 1;
  }
  pthread_mutex_lock(&s->mu);
  s->minor = out.minor;
  s->inited = result;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

static void do_lookup (server *s, struct fuse_in_header *in, const char *name, size_t alen) {
  size_t n = strnlen(name, alen);
  int64_t idx = -1;
  if (in->nodeid == FUSE_ROOT_ID && n < alen) {
    pthread_mutex_lock(&s->files_mu);
    idx = name_find(s, name, n);
    pthread_mutex_unlock(&s->files_mu);
  }
  /* no negative entry: files are added while mounted */
  if (idx < 0) { send_error(s, in->unique, ENOENT); return; }
  struct fuse_entry_out e;
  memset(&e, 0, sizeof e);
  e.nodeid = (uint64_t)idx + 2;
  e.entry_valid = e.attr_valid = TIMEOUT_S;
  fill_attr(s, e.nodeid, &e.attr);
  send_reply(s, in->unique, 0, &e, sizeof e, NULL, 0);
}

static void do_getattr (server *s, struct fuse_in_header *in) {
  if (in->nodeid != FUSE_ROOT_ID && node_file(s, in->nodeid) == NULL) { send_error(s, in->unique, ENOENT); return; }
  struct fuse_attr_out o;
  memset(&o, 0, sizeof o);
  o.attr_valid = TIMEOUT_S;
  fill_attr(s, in->nodeid, &o.attr);
  send_reply(s, in->unique, 0, &o, sizeof o, NULL, 0);
}

static void do_release (server *s, struct fuse_in_header *in) {
  send_reply(s, in->unique, 0, NULL, 0, NULL, 0);
}

static void do_open (server *s, struct fuse_in_header *in, const void *arg, size_t alen, bool dir) {
  struct fuse_open_in oi;
  memset(&oi, 0, sizeof oi);
  memcpy(&oi, arg, alen < sizeof oi ? alen : sizeof oi);
  struct fuse_open_out o;
  memset(&o, 0, sizeof o);
  if (dir) {
    if (in->nodeid != FUSE_ROOT_ID) { send_error(s, in->unique, ENOTDIR); return; }
  } else {
    if (in->nodeid == FUSE_ROOT_ID) { send_error(s, in->unique, EISDIR); return; }
    if (node_file(s, in->nodeid) == NULL) { send_error(s, in->unique, ENOENT); return; }
    if ((oi.flags & O_ACCMODE) != O_RDONLY) { send_error(s, in->unique, EROFS); return; }
    o.fh = in->nodeid - 2;
    o.open_flags = s->direct_io ? FOPEN_DIRECT_IO : FOPEN_KEEP_CACHE;
    if (s->minor >= 33) o.open_flags |= FOPEN_NOFLUSH;
  }
  send_reply(s, in->unique, 0, &o, sizeof o, NULL, 0);
}

static ssize_t pread_full (int fd, char *buf, size_t len, uint64_t off) {
  size_t done = 0;
  while (done < len) {
    ssize_t r = pread(fd, buf + done, len - done, (off_t)(off + done));
    if (r < 0) { if (errno == EINTR) continue; return -1; }
    if (r == 0) break;
    done += (size_t)r;
  }
  return (ssize_t)done;
}

static void hist_add (server *s, uint32_t size) {
  unsigned i = 0;
  while (i < HIST_BUCKETS - 1 && size > (BLOCK << i)) i++;
  atomic_fetch_add_explicit(&s->hist[i], 1, memory_order_relaxed);
}

static unsigned miss_slot (uint64_t unique) {
  return (unsigned)((unique * 11400714819323198485ULL) >> 54); /* 1024 slots */
}

static void do_read (server *s, struct fuse_in_header *in, const void *arg, size_t alen, char *dbuf, size_t dcap) {
  struct fuse_read_in ri;
  memset(&ri, 0, sizeof ri);
  memcpy(&ri, arg, alen < sizeof ri ? alen : sizeof ri);
  atomic_fetch_add_explicit(&s->reads, 1, memory_order_relaxed);
  hist_add(s, ri.size);
  bfile *f = node_file(s, in->nodeid);
  if (f == NULL) { send_error(s, in->unique, in->nodeid == FUSE_ROOT_ID ? EISDIR : ENOENT); return; }
  if (ri.offset >= f->size || ri.size == 0) { send_reply(s, in->unique, 0, NULL, 0, NULL, 0); return; }
  uint64_t len = f->size - ri.offset;
  if (len > ri.size) len = ri.size;
  uint64_t b0 = ri.offset >> BLOCK_SHIFT, b1 = (ri.offset + len + BLOCK - 1) >> BLOCK_SHIFT;
  /* the first READ of these blocks, whether ready or not: what an access log needs, since a ready block's READ
   * never reaches JS otherwise. Two threads may both report the same blocks; the listener keeps the first. */
  if (s->on_access != NULL && !map_all(f->seen, b0, b1)) {
    map_update(f->seen, b0, b1, true);
    miss_event *ae = malloc(sizeof *ae);
    if (ae != NULL) {
      *ae = (miss_event){ .access = true, .file = (uint32_t)(in->nodeid - 2), .offset = ri.offset, .length = (uint32_t)len };
      if (napi_call_threadsafe_function(s->tsfn, ae, napi_tsfn_nonblocking) != napi_ok) free(ae);
    }
  }
  if (len <= dcap) {
    pthread_rwlock_rdlock(&f->lock);
    if (bits_all(f, b0, b1) && pread_full(f->fd, dbuf, len, ri.offset) == (ssize_t)len) {
      /* the bytes are ours now: a hole punched after clearReady cannot reach this reply */
      pthread_rwlock_unlock(&f->lock);
      atomic_fetch_add_explicit(&s->fast_reads, 1, memory_order_relaxed);
      atomic_fetch_add_explicit(&s->fast_bytes, len, memory_order_relaxed);
      send_reply(s, in->unique, 0, dbuf, len, NULL, 0);
      return;
    }
    pthread_rwlock_unlock(&f->lock);
  }
  /* a miss: park the request and let JS answer it, the worker goes straight back to /dev/fuse */
  if (atomic_load(&s->state) != ST_STARTED) { send_error(s, in->unique, EIO); return; }
  miss *m = malloc(sizeof *m);
  miss_event *ev = malloc(sizeof *ev);
  if (m == NULL || ev == NULL) { free(m); free(ev); send_error(s, in->unique, ENOMEM); return; }
  *m = (miss){ .unique = in->unique, .file = (uint32_t)(in->nodeid - 2), .offset = ri.offset, .length = (uint32_t)len };
  *ev = (miss_event){ .access = false, .unique = m->unique, .file = m->file, .offset = m->offset, .length = m->length };
  unsigned slot = miss_slot(m->unique);
  pthread_mutex_lock(&s->miss_mu);
  m->next = s->mtab[slot];
  s->mtab[slot] = m;
  pthread_mutex_unlock(&s->miss_mu);
  atomic_fetch_add_explicit(&s->misses, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&s->miss_bytes, len, memory_order_relaxed);
  if (napi_call_threadsafe_function(s->tsfn, ev, napi_tsfn_nonblocking) != napi_ok) {
    free(ev);
    /* closing: take the request back unless someone answered it meanwhile */
    bool mine = false;
    pthread_mutex_lock(&s->miss_mu);
    for (miss **p = &s->mtab[slot]; *p != NULL; p = &(*p)->next) {
      if ((*p)->unique == in->unique) { miss *x = *p; *p = x->next; free(x); mine = true; break; }
    }
    pthread_mutex_unlock(&s->miss_mu);
    if (mine) { atomic_fetch_add(&s->errors, 1); send_error(s, in->unique, EIO); }
  }
}

static void do_readdir (server *s, struct fuse_in_header *in, const void *arg, size_t alen, char *dbuf, size_t dcap) {
  struct fuse_read_in ri;
  memset(&ri, 0, sizeof ri);
  memcpy(&ri, arg, alen < sizeof ri ? alen : sizeof ri);
  if (in->nodeid != FUSE_ROOT_ID) { send_error(s, in->unique, ENOTDIR); return; }
  size_t cap = ri.size < dcap ? ri.size : dcap, pos = 0;
  /* entry k sits at offset k: ".", "..", then file k - 2; an entry's off is where the next call resumes */
  uint64_t total = 2 + (uint64_t)atomic_load_explicit(&s->nfiles, memory_order_acquire);
  for (uint64_t k = ri.offset; k < total; k++) {
    const char *name;
    size_t nl;
    uint64_t ino = FUSE_ROOT_ID;
    uint32_t type = DT_DIR;
    if (k == 0) { name = "."; nl = 1; }
    else if (k == 1) { name = ".."; nl = 2; }
    else {
      bfile *f = file_at(s, (uint32_t)(k - 2));
      name = f->name; nl = f->namelen; ino = k; type = DT_REG;
    }
    size_t rec = FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + nl);
    if (pos + rec > cap) break;
    struct fuse_dirent *d = (struct fuse_dirent *)(dbuf + pos);
    d->ino = ino;
    d->off = k + 1;
    d->namelen = (uint32_t)nl;
    d->type = type;
    memcpy(d->name, name, nl);
    memset(d->name + nl, 0, rec - FUSE_NAME_OFFSET - nl);
    pos += rec;
  }
  send_reply(s, in->unique, 0, dbuf, pos, NULL, 0);
}

static void do_statfs (server *s, struct fuse_in_header *in) {
  struct fuse_statfs_out o;
  memset(&o, 0, sizeof o);
  uint32_t n = atomic_load_explicit(&s->nfiles, memory_order_acquire);
  uint64_t blocks = 0;
  for (uint32_t i = 0; i < n; i++) blocks += (file_at(s, i)->size + BLOCK - 1) / BLOCK;
  o.st.blocks = blocks;
  o.st.files = (uint64_t)n + 1;
  o.st.bsize = BLOCK;
  o.st.frsize = BLOCK;
  o.st.namelen = 255;
  send_reply(s, in->unique, 0, &o, sizeof o, NULL, 0);
}

/* false when the thread should stop reading */
static bool handle (server *s, char *buf, size_t n, char *dbuf, size_t dcap) {
  struct fuse_in_header *in = (struct fuse_in_header *)buf;
  const char *arg = buf + sizeof *in;
  size_t alen = n - sizeof *in;
  switch (in->opcode) {
    case FUSE_INIT: do_init(s, in, arg, alen); break;
    case FUSE_LOOKUP: do_lookup(s, in, arg, alen); break;
    case FUSE_GETATTR: do_getattr(s, in); break;
    case FUSE_OPEN: do_open(s, in, arg, alen, false); break;
    case FUSE_OPENDIR: do_open(s, in, arg, alen, true); break;
    case FUSE_READ: do_read(s, in, arg, alen, dbuf, dcap); break;
    case FUSE_READDIR: do_readdir(s, in, arg, alen, dbuf, dcap); break;
    case FUSE_STATFS: do_statfs(s, in); break;
    case FUSE_RELEASE: do_release(s, in); break;
    case FUSE_RELEASEDIR: case FUSE_FLUSH: case FUSE_ACCESS:
      send_reply(s, in->unique, 0, NULL, 0, NULL, 0);
      break;
    case FUSE_GETXATTR: send_error(s, in->unique, ENODATA); break;
    case FUSE_LISTXATTR: {
      struct fuse_getxattr_in gi;
      memset(&gi, 0, sizeof gi);
      memcpy(&gi, arg, alen < sizeof gi ? alen : sizeof gi);
      struct fuse_getxattr_out go;
      memset(&go, 0, sizeof go);
      /* size 0 asks for the length of the list, otherwise the (empty) list itself */
      send_reply(s, in->unique, 0, &go, gi.size == 0 ? sizeof go : 0, NULL, 0);
      break;
    }
    case FUSE_FORGET: case FUSE_BATCH_FORGET: case FUSE_INTERRUPT: break;
    case FUSE_DESTROY:
      send_reply(s, in->unique, 0, NULL, 0, NULL, 0);
      return false;
    default: send_error(s, in->unique, ENOSYS); break;
  }
  return true;
}

static void *worker (void *arg) {
  server *s = arg;
  char *rbuf = malloc(REQ_BUF);
  size_t dcap = s->max_read > 65536 ? s->max_read : 65536;
  char *dbuf = NULL;
  if (rbuf != NULL && posix_memalign((void **)&dbuf, BLOCK, dcap) != 0) dbuf = NULL;
  while (rbuf != NULL && dbuf != NULL) {
    ssize_t n = read(s->fd, rbuf, REQ_BUF);
    if (n < 0) {
      /* ENOENT: the request was interrupted before we got it; ENODEV: the connection is gone */
      if (errno == EINTR || errno == EAGAIN || errno == ENOENT) continue;
      break;
    }
    if ((size_t)n < sizeof(struct fuse_in_header)) continue;
    atomic_fetch_add_explicit(&s->requests, 1, memory_order_relaxed);
    if (!handle(s, rbuf, (size_t)n, dbuf, dcap)) break;
  }
  free(rbuf);
  free(dbuf);
  pthread_mutex_lock(&s->mu);
  s->live--;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

/* Copies a ready range into the kernel's page cache of its file, a piece of at most max_read at a time. A piece with
 * a block that is not ready (cleared since push() was asked) is skipped: the kernel then READs it as usual. */
static void push_range (server *s, push_job *j, char *buf) {
  bfile *f = file_get(s, j->file);
  if (f == NULL) return;
  for (uint64_t off = j->offset, end = j->offset + j->length; off < end && atomic_load(&s->state) == ST_STARTED;) {
    uint64_t len = end - off < s->max_read ? end - off : s->max_read;
    uint64_t b0 = off >> BLOCK_SHIFT, b1 = (off + len + BLOCK - 1) >> BLOCK_SHIFT;
    bool ok = false;
    pthread_rwlock_rdlock(&f->lock);
    if (bits_all(f, b0, b1) && pread_full(f->fd, buf, len, off) == (ssize_t)len) ok = true;
    pthread_rwlock_unlock(&f->lock);
    if (ok) {
      struct fuse_notify_store_out st = { .nodeid = (uint64_t)j->file + 2, .offset = off, .size = (uint32_t)len };
      struct fuse_out_header h = { .len = (uint32_t)(sizeof h + sizeof st + len), .error = FUSE_NOTIFY_STORE, .unique = 0 };
      struct iovec iov[3] = { { &h, sizeof h }, { &st, sizeof st }, { buf, len } };
      ssize_t w;
      do { w = writev(s->fd, iov, 3); } while (w < 0 && errno == EINTR);
      /* ENOENT: the kernel has no inode for the file (not opened yet, or forgotten): nothing to warm */
      ok = w >= 0;
    }
    if (ok) {
      atomic_fetch_add_explicit(&s->pushes, 1, memory_order_relaxed);
      atomic_fetch_add_explicit(&s->push_bytes, len, memory_order_relaxed);
    } else {
      atomic_fetch_add_explicit(&s->push_skipped, 1, memory_order_relaxed);
    }
    off += len;
  }
}

static void *pusher (void *arg) {
  server *s = arg;
  char *buf = malloc(s->max_read);
  pthread_mutex_lock(&s->mu);
  for (;;) {
    while (s->push_head == NULL && atomic_load(&s->state) == ST_STARTED) pthread_cond_wait(&s->push_cv, &s->mu);
    if (atomic_load(&s->state) != ST_STARTED) break;
    push_job *j = s->push_head;
    s->push_head = j->next;
    if (s->push_head == NULL) s->push_tail = NULL;
    pthread_mutex_unlock(&s->mu);
    if (buf != NULL) push_range(s, j, buf);
    else atomic_fetch_add_explicit(&s->push_skipped, 1, memory_order_relaxed);
    free(j);
    pthread_mutex_lock(&s->mu);
  }
  s->live--;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  free(buf);
  return NULL;
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* lifecycle                                                                                                        */

static void deadline_in (struct timespec *ts, long ms) {
  clock_gettime(CLOCK_MONOTONIC, ts);
  ts->tv_sec += ms / 1000;
  ts->tv_nsec += (ms % 1000) * 1000000L;
  if (ts->tv_nsec >= 1000000000L) { ts->tv_sec++; ts->tv_nsec -= 1000000000L; }
}

/* true when every worker has exited within ms */
static bool wait_workers (server *s, long ms) {
  struct timespec ts;
  deadline_in(&ts, ms);
  pthread_mutex_lock(&s->mu);
  while (s->live > 0) {
    if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) == ETIMEDOUT) break;
  }
  bool done = s->live == 0;
  pthread_mutex_unlock(&s->mu);
  return done;
}

static bool write_abort (const char *dir, unsigned minor) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/%u/abort", dir, minor);
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = write(fd, "1", 1) == 1;
  close(fd);
  return ok;
}

/* Aborts the connection through fusectl, mounting a private fusectl instance when none is mounted. */
static void abort_connection (server *s) {
  if (!s->have_dev) return;
  if (write_abort("/sys/fs/fuse/connections", s->dev_minor)) return;
  char dir[] = "/tmp/rafspeer-fusectl-XXXXXX";
  if (mkdtemp(dir) == NULL) return;
  if (mount("fusectl", dir, "fusectl", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) == 0) {
    write_abort(dir, s->dev_minor);
    umount2(dir, MNT_DETACH);
  }
  rmdir(dir);
}

static void server_stop (server *s) {
  int st = atomic_exchange(&s->state, ST_STOPPED);
  if (st == ST_STOPPED) return;
  if (st == ST_STARTED) {
    pthread_mutex_lock(&s->mu);
    pthread_cond_broadcast(&s->push_cv);
    pthread_mutex_unlock(&s->mu);
    /* with no file open the superblock dies with the mount and the workers read ENODEV; whatever else may have been
     * mounted there since (our mount removed by someone else) is left alone */
    struct statx sx;
    if (!s->have_dev || statx(AT_FDCWD, s->mountpoint, AT_STATX_DONT_SYNC, STATX_BASIC_STATS, &sx) != 0 ||
        (sx.stx_dev_major == 0 && sx.stx_dev_minor == s->dev_minor)) {
      umount2(s->mountpoint, MNT_DETACH);
    }
    if (!wait_workers(s, 300)) {
      abort_connection(s);
      if (!wait_workers(s, 5000)) s->leaked = true;
    }
    for (unsigned i = 0; i < s->ntids; i++) {
      if (s->leaked) pthread_detach(s->tids[i]);
      else pthread_join(s->tids[i], NULL);
    }
    s->ntids = 0;
    /* pending misses die with the connection */
    pthread_mutex_lock(&s->miss_mu);
    for (size_t i = 0; i < sizeof s->mtab / sizeof s->mtab[0]; i++) {
      for (miss *m = s->mtab[i], *next; m != NULL; m = next) { next = m->next; free(m); }
      s->mtab[i] = NULL;
    }
    pthread_mutex_unlock(&s->miss_mu);
    if (s->leaked) atomic_fetch_add(&s->refs, 1); /* never freed: the stuck threads still use it */
    if (s->tsfn != NULL) {
      napi_threadsafe_function t = s->tsfn;
      s->tsfn = NULL;
      napi_release_threadsafe_function(t, napi_tsfn_abort);
    }
  }
  if (!s->leaked) {
    if (s->fd >= 0) { close(s->fd); s->fd = -1; }
    uint32_t n = atomic_load(&s->nfiles);
    for (uint32_t i = 0; i < n; i++) {
      bfile *f = file_at(s, i);
      if (f->fd >= 0) { close(f->fd); f->fd = -1; }
    }
  }
}

static void env_cleanup (void *arg) {
  server *s = arg;
  s->hook = false;
  server_stop(s);
  server_unref(s);
}

/* stop() from JS or the finalizer: also drops the env cleanup hook */
static void server_stop_js (server *s) {
  server_stop(s);
  if (s->hook) {
    s->hook = false;
    napi_remove_env_cleanup_hook(s->env, env_cleanup, s);
    server_unref(s);
  }
}

static void tsfn_finalize (napi_env env, void *data, void *hint) {
  (void)env; (void)hint;
  server_unref(data);
}

static void call_js (napi_env env, napi_value js_cb, void *context, void *data) {
  miss_event *ev = data;
  server *s = context;
  if (env == NULL || js_cb == NULL) { free(ev); return; }
  napi_value argv[4], undef, result;
  if (ev->access) {
    napi_value fn;
    if (s->on_access == NULL || napi_get_reference_value(env, s->on_access, &fn) != napi_ok) { free(ev); return; }
    napi_create_uint32(env, ev->file, &argv[0]);
    napi_create_double(env, (double)ev->offset, &argv[1]);
    napi_create_uint32(env, ev->length, &argv[2]);
    free(ev);
    napi_get_undefined(env, &undef);
    /* an access report has no reader waiting on it: an exception only goes to uncaughtException */
    if (napi_call_function(env, undef, fn, 3, argv, &result) == napi_pending_exception) {
      napi_value err;
      napi_get_and_clear_last_exception(env, &err);
      napi_fatal_exception(env, err);
    }
    return;
  }
  napi_create_double(env, (double)ev->unique, &argv[0]);
  napi_create_uint32(env, ev->file, &argv[1]);
  napi_create_double(env, (double)ev->offset, &argv[2]);
  napi_create_uint32(env, ev->length, &argv[3]);
  uint64_t unique = ev->unique;
  free(ev);
  napi_get_undefined(env, &undef);
  if (napi_call_function(env, undef, js_cb, 4, argv, &result) == napi_pending_exception) {
    /* a throwing handler would leave the reader waiting forever: fail the read, then report the exception */
    napi_value err;
    napi_get_and_clear_last_exception(env, &err);
    bool mine = false;
    unsigned slot = miss_slot(unique);
    pthread_mutex_lock(&s->miss_mu);
    for (miss **p = &s->mtab[slot]; *p != NULL; p = &(*p)->next) {
      if ((*p)->unique == unique) { miss *x = *p; *p = x->next; free(x); mine = true; break; }
    }
    pthread_mutex_unlock(&s->miss_mu);
    if (mine && atomic_load(&s->state) == ST_STARTED) { atomic_fetch_add(&s->errors, 1); send_error(s, unique, EIO); }
    napi_fatal_exception(env, err);
  }
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* BlobServer                                                                                                       */

static server *unwrap (napi_env env, napi_callback_info info, size_t *argc, napi_value *argv) {
  napi_value self;
  void *p = NULL;
  if (napi_get_cb_info(env, info, argc, argv, &self, NULL) != napi_ok) return NULL;
  if (napi_unwrap(env, self, &p) != napi_ok || p == NULL) {
    napi_throw_type_error(env, NULL, "not a BlobServer");
    return NULL;
  }
  return p;
}

static void finalize_server (napi_env env, void *data, void *hint) {
  (void)env; (void)hint;
  server *s = data;
  server_stop_js(s);
  if (s->on_miss != NULL) { napi_delete_reference(env, s->on_miss); s->on_miss = NULL; }
  if (s->on_access != NULL) { napi_delete_reference(env, s->on_access); s->on_access = NULL; }
  server_unref(s);
}

static bool opt_prop (napi_env env, napi_value obj, const char *key, napi_value *out) {
  bool has = false;
  napi_valuetype t;
  if (napi_has_named_property(env, obj, key, &has) != napi_ok || !has) return false;
  napi_get_named_property(env, obj, key, out);
  napi_typeof(env, *out, &t);
  return t != napi_undefined && t != napi_null;
}

static napi_value js_server_new (napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], self, v;
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, &self, NULL));
  napi_valuetype t = napi_undefined;
  if (argc >= 1) napi_typeof(env, argv[0], &t);
  if (t != napi_object) { napi_throw_type_error(env, NULL, "new BlobServer(options)"); return NULL; }
  server *s = calloc(1, sizeof *s);
  if (s == NULL) { napi_throw_error(env, NULL, "out of memory"); return NULL; }
  atomic_init(&s->refs, 1);
  s->env = env;
  s->fd = -1;
  s->nthreads = 4;
  s->max_read = DEFAULT_MAX_READ;
  s->born = time(NULL);
  pthread_mutex_init(&s->files_mu, NULL);
  pthread_mutex_init(&s->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&s->cv, &ca);
  pthread_condattr_destroy(&ca);
  pthread_cond_init(&s->push_cv, NULL);
  pthread_mutex_init(&s->miss_mu, NULL);
  atomic_init(&s->state, ST_NEW);

  if (!opt_prop(env, argv[0], "mountpoint", &v)) { napi_throw_type_error(env, NULL, "options.mountpoint is required"); goto fail; }
  if ((s->mountpoint = get_string(env, v, "options.mountpoint")) == NULL) goto fail;
  if (opt_prop(env, argv[0], "fsName", &v)) {
    if ((s->fsname = get_string(env, v, "options.fsName")) == NULL) goto fail;
  } else {
    s->fsname = strdup("rafspeer-blobs");
  }
  if (s->fsname == NULL) { napi_throw_error(env, NULL, "out of memory"); goto fail; }
  if (s->fsname[0] == '\0') { napi_throw_range_error(env, NULL, "options.fsName must not be empty"); goto fail; }
  uint64_t u;
  if (opt_prop(env, argv[0], "threads", &v)) {
    if (!get_u64(env, v, "options.threads", &u)) goto fail;
    if (u < 1 || u > 64) { napi_throw_range_error(env, NULL, "options.threads must be 1..64"); goto fail; }
    s->nthreads = (unsigned)u;
  }
  if (opt_prop(env, argv[0], "maxReadBytes", &v)) {
    if (!get_u64(env, v, "options.maxReadBytes", &u)) goto fail;
    if (u < BLOCK || u > MAX_MAX_READ || u % BLOCK != 0) {
      napi_throw_range_error(env, NULL, "options.maxReadBytes must be a multiple of 4096 from 4096 to 1048576");
      goto fail;
    }
    s->max_read = (uint32_t)u;
  }
  if (opt_prop(env, argv[0], "directIo", &v)) {
    if (napi_get_value_bool(env, v, &s->direct_io) != napi_ok) { napi_throw_type_error(env, NULL, "options.directIo must be a boolean"); goto fail; }
  }
  if (!opt_prop(env, argv[0], "onMiss", &v) || (napi_typeof(env, v, &t), t != napi_function)) {
    napi_throw_type_error(env, NULL, "options.onMiss must be a function");
    goto fail;
  }
  napi_create_reference(env, v, 1, &s->on_miss);
  if (opt_prop(env, argv[0], "onAccess", &v)) {
    if (napi_typeof(env, v, &t), t != napi_function) { napi_throw_type_error(env, NULL, "options.onAccess must be a function"); goto fail; }
    napi_create_reference(env, v, 1, &s->on_access);
  }
  if (napi_wrap(env, self, s, finalize_server, NULL, NULL) != napi_ok) goto fail;
  return self;
fail:
  if (s->on_miss != NULL) napi_delete_reference(env, s->on_miss);
  if (s->on_access != NULL) napi_delete_reference(env, s->on_access);
  server_unref(s);
  return NULL;
}

/* start() failing before anything is mounted or any thread runs: only the fd and the threadsafe function to release */
static napi_value start_failed (napi_env env, server *s, const char *syscall, const char *path, int err) {
  if (s->fd >= 0) { close(s->fd); s->fd = -1; }
  atomic_store(&s->state, ST_STOPPED);
  napi_release_threadsafe_function(s->tsfn, napi_tsfn_abort);
  s->tsfn = NULL;
  throw_errno(env, syscall, path, err);
  return NULL;
}

static napi_value js_start (napi_env env, napi_callback_info info) {
  size_t argc = 0;
  server *s = unwrap(env, info, &argc, NULL);
  if (s == NULL) return NULL;
  if (atomic_load(&s->state) != ST_NEW) { napi_throw_error(env, NULL, "BlobServer: start() may be called once"); return NULL; }

  napi_value fn, name;
  napi_get_reference_value(env, s->on_miss, &fn);
  napi_create_string_utf8(env, "rafspeer.BlobServer.onMiss", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, fn, NULL, name, 0, 1, s, tsfn_finalize, s, call_js, &s->tsfn) != napi_ok) {
    napi_throw_error(env, NULL, "BlobServer: cannot create the threadsafe function");
    return NULL;
  }
  atomic_fetch_add(&s->refs, 1); /* the threadsafe function's, dropped in tsfn_finalize */
  atomic_store(&s->state, ST_STARTED);

  /* the mountpoint outlives the cwd, and stop() must find it again */
  char *abs = realpath(s->mountpoint, NULL);
  if (abs == NULL) return start_failed(env, s, "mount", s->mountpoint, errno);
  free(s->mountpoint);
  s->mountpoint = abs;
  s->fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (s->fd < 0) return start_failed(env, s, "open", "/dev/fuse", errno);
  char data[256];
  snprintf(data, sizeof data, "fd=%d,rootmode=40000,user_id=%u,group_id=%u,allow_other,default_permissions,max_read=%u",
           s->fd, (unsigned)geteuid(), (unsigned)getegid(), s->max_read);
  if (mount(s->fsname, s->mountpoint, "fuse.rafspeer", MS_NOSUID | MS_NODEV | MS_RDONLY, data) != 0) {
    return start_failed(env, s, "mount", s->mountpoint, errno);
  }

  /* signals go to the JS threads: a worker has nothing to do with them */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  s->tids = calloc(s->nthreads + 1, sizeof *s->tids);
  int err = s->tids == NULL ? ENOMEM : 0;
  for (unsigned i = 0; err == 0 && i <= s->nthreads; i++) {
    pthread_mutex_lock(&s->mu);
    err = pthread_create(&s->tids[i], NULL, i < s->nthreads ? worker : pusher, s);
    if (err == 0) { s->ntids++; s->live++; }
    pthread_mutex_unlock(&s->mu);
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);

  /* the connection's device number names it in fusectl; DONT_SYNC answers from the root inode, no request */
  struct statx sx;
  if (statx(AT_FDCWD, s->mountpoint, AT_STATX_DONT_SYNC, STATX_BASIC_STATS, &sx) == 0) {
    s->dev_minor = sx.stx_dev_minor;
    s->have_dev = true;
  }

  if (err == 0) {
    struct timespec ts;
    deadline_in(&ts, INIT_TIMEOUT_MS);
    pthread_mutex_lock(&s->mu);
    while (s->inited == 0 && s->live > 0) {
      if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) == ETIMEDOUT) break;
    }
    err = s->inited == 1 ? 0 : s->inited < 0 ? -s->inited : s->live == 0 ? ENOTCONN : ETIMEDOUT;
    pthread_mutex_unlock(&s->mu);
  }
  if (err != 0) {
    server_stop_js(s);
    throw_errno(env, "start", s->mountpoint, err);
    return NULL;
  }

  /* Page-cache reads come in readahead-window pieces, and the kernel caps a FUSE bdi's window at 128 KiB; widen it so
   * a sequential reader gets READs of maxReadBytes. Best effort. */
  if (s->have_dev && s->max_read > 128 * 1024) {
    char path[128], val[32];
    snprintf(path, sizeof path, "/sys/class/bdi/0:%u/read_ahead_kb", s->dev_minor);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
      int n = snprintf(val, sizeof val, "%u", s->max_read / 1024);
      if (write(fd, val, (size_t)n) != n) { /* keep the kernel's window */ }
      close(fd);
    }
  }

  atomic_fetch_add(&s->refs, 1);
  s->hook = true;
  napi_add_env_cleanup_hook(env, env_cleanup, s);
  return NULL;
}

static napi_value js_add_file (napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  server *s = unwrap(env, info, &argc, argv);
  if (s == NULL) return NULL;
  if (argc < 3) { napi_throw_type_error(env, NULL, "addFile(name, cachePath, size)"); return NULL; }
  if (atomic_load(&s->state) == ST_STOPPED) { napi_throw_error(env, NULL, "BlobServer: stopped"); return NULL; }
  uint64_t size;
  if (!get_u64(env, argv[2], "size", &size)) return NULL;
  char *name = get_string(env, argv[0], "name");
  if (name == NULL) return NULL;
  char *path = get_string(env, argv[1], "cachePath");
  if (path == NULL) { free(name); return NULL; }
  size_t nl = strlen(name);
  napi_value result = NULL;
  bfile *f = NULL;
  if (nl == 0 || nl > 255 || strchr(name, '/') != NULL || strcmp(name, ".") == 0 || strcmp(name, "..") == 0) {
    napi_throw_range_error(env, NULL, "addFile: name must be a file name (1..255 bytes, no '/', not . or ..)");
    goto out;
  }
  pthread_mutex_lock(&s->files_mu);
  bool dup = name_find(s, name, nl) >= 0;
  uint32_t idx = atomic_load(&s->nfiles);
  pthread_mutex_unlock(&s->files_mu);
  if (dup) { throw_errno(env, "addFile", name, EEXIST); goto out; }
  if (idx >= (uint32_t)MAX_CHUNKS * CHUNK) { throw_errno(env, "addFile", name, ENOSPC); goto out; }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) { throw_errno(env, "open", path, errno); goto out; }
  f = calloc(1, sizeof *f);
  uint64_t nblocks = (size + BLOCK - 1) / BLOCK;
  if (f != NULL) f->bits = calloc((size_t)((nblocks + 63) / 64) + 1, sizeof(uint64_t));
  if (f != NULL) f->seen = calloc((size_t)((nblocks + 63) / 64) + 1, sizeof(uint64_t));
  if (f == NULL || f->bits == NULL || f->seen == NULL) {
    close(fd);
    if (f != NULL) { free((void *)f->bits); free((void *)f->seen); free(f); f = NULL; }
    napi_throw_error(env, NULL, "out of memory");
    goto out;
  }
  f->name = name; name = NULL;
  f->namelen = nl;
  f->fd = fd;
  f->size = size;
  f->nblocks = nblocks;
  /* writer preference: a stream of fast reads must not starve clearReady */
  pthread_rwlockattr_t ra;
  pthread_rwlockattr_init(&ra);
  pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init(&f->lock, &ra);
  pthread_rwlockattr_destroy(&ra);

  pthread_mutex_lock(&s->files_mu);
  uint32_t c = idx >> CHUNK_SHIFT;
  if (s->chunks[c] == NULL) s->chunks[c] = calloc(CHUNK, sizeof(bfile *));
  bool ok = s->chunks[c] != NULL;
  if (ok) {
    s->chunks[c][idx & (CHUNK - 1)] = f;
    ok = name_insert(s, idx);
    if (ok) atomic_store_explicit(&s->nfiles, idx + 1, memory_order_release);
  }
  pthread_mutex_unlock(&s->files_mu);
  if (!ok) {
    close(fd);
    pthread_rwlock_destroy(&f->lock);
    free(f->name); free((void *)f->bits); free((void *)f->seen); free(f);
    napi_throw_error(env, NULL, "out of memory");
    goto out;
  }
  napi_create_uint32(env, idx, &result);
out:
  free(name);
  free(path);
  return result;
}

/* file, offset, length arguments; with aligned, the range must be whole blocks within the file's blocks */
static bfile *range_args (napi_env env, server *s, size_t argc, napi_value *argv, bool aligned, uint64_t *off, uint64_t *len) {
  uint64_t idx;
  if (argc < 3) { napi_throw_type_error(env, NULL, "(file, offset, length)"); return NULL; }
  if (!get_u64(env, argv[0], "file", &idx) || !get_u64(env, argv[1], "offset", off) || !get_u64(env, argv[2], "length", len)) return NULL;
  bfile *f = file_get(s, idx);
  if (f == NULL) { napi_throw_range_error(env, NULL, "no such file index"); return NULL; }
  if (aligned) {
    if (*off % BLOCK != 0 || *len % BLOCK != 0) { napi_throw_range_error(env, NULL, "offset and length must be multiples of 4096"); return NULL; }
    if (*off + *len > f->nblocks * BLOCK) { napi_throw_range_error(env, NULL, "range beyond the end of the file"); return NULL; }
  }
  return f;
}

static napi_value js_set_ready (napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  server *s = unwrap(env, info, &argc, argv);
  uint64_t off, len;
  bfile *f = s == NULL ? NULL : range_args(env, s, argc, argv, true, &off, &len);
  if (f != NULL) bits_update(f, off / BLOCK, (off + len) / BLOCK, true);
  return NULL;
}

/* push(file, offset, length): the ready blocks of the range go into the kernel's page cache of the file, so reads of
 * them never become READs (and never start a readahead READ that reaches past them); queued, done by the pusher */
static napi_value js_push (napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  server *s = unwrap(env, info, &argc, argv);
  uint64_t off, len;
  bfile *f = s == NULL ? NULL : range_args(env, s, argc, argv, true, &off, &len);
  if (f == NULL || len == 0 || s->direct_io || atomic_load(&s->state) != ST_STARTED) return NULL;
  push_job *j = malloc(sizeof *j);
  if (j == NULL) { napi_throw_error(env, NULL, "out of memory"); return NULL; }
  uint64_t idx;
  get_u64(env, argv[0], "file", &idx);
  *j = (push_job){ .next = NULL, .file = (uint32_t)idx, .offset = off, .length = len };
  pthread_mutex_lock(&s->mu);
  if (s->push_tail != NULL) s->push_tail->next = j; else s->push_head = j;
  s->push_tail = j;
  pthread_cond_signal(&s->push_cv);
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

static napi_value js_clear_ready (napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  server *s = unwrap(env, info, &argc, argv);
  uint64_t off, len;
  bfile *f = s == NULL ? NULL : range_args(env, s, argc, argv, true, &off, &len);
  if (f == NULL || len == 0) return NULL;
  /* the write lock waits out every fast read that may have seen these blocks ready */
  pthread_rwlock_wrlock(&f->lock);
  bits_update(f, off / BLOCK, (off + len) / BLOCK, false);
  pthread_rwlock_unlock(&f->lock);
  return NULL;
}

/* the file named by argv[0] of a call taking `want` arguments (`usage` says which), or NULL with an exception */
static bfile *file_arg (napi_env env, server *s, size_t argc, napi_value *argv, size_t want, const char *usage) {
  uint64_t idx;
  if (s == NULL) return NULL;
  if (argc < want) { napi_throw_type_error(env, NULL, usage); return NULL; }
  if (!get_u64(env, argv[0], "file", &idx)) return NULL;
  bfile *f = file_get(s, idx);
  if (f == NULL) napi_throw_range_error(env, NULL, "no such file index");
  return f;
}

/* forgetAccess(file): every block of the file counts as never read again, so the next READ of it is reported */
static napi_value js_forget_access (napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  server *s = unwrap(env, info, &argc, argv);
  bfile *f = file_arg(env, s, argc, argv, 1, "forgetAccess(file)");
  if (f == NULL) return NULL;
  map_update(f->seen, 0, f->nblocks, false);
  return NULL;
}

static napi_value js_is_ready (napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], result;
  server *s = unwrap(env, info, &argc, argv);
  uint64_t off, len;
  bfile *f = s == NULL ? NULL : range_args(env, s, argc, argv, false, &off, &len);
  if (f == NULL) return NULL;
  /* like READ, the range stops at the end of the file */
  uint64_t end = off + len > f->size ? f->size : off + len;
  bool ready = off >= end || bits_all(f, off / BLOCK, (end + BLOCK - 1) / BLOCK);
  napi_get_boolean(env, ready, &result);
  return result;
}

static napi_value js_reply (napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], result;
  server *s = unwrap(env, info, &argc, argv);
  if (s == NULL) return NULL;
  if (argc < 3) { napi_throw_type_error(env, NULL, "reply(id, data, errno)"); return NULL; }
  uint64_t unique, err;
  if (!get_u64(env, argv[0], "id", &unique) || !get_u64(env, argv[2], "errno", &err)) return NULL;
  if (err > 4095) { napi_throw_range_error(env, NULL, "errno must be 0..4095"); return NULL; }
  void *data = NULL;
  size_t dlen = 0;
  napi_valuetype t;
  napi_typeof(env, argv[1], &t);
  if (t != napi_null && t != napi_undefined) {
    bool is = false;
    napi_is_typedarray(env, argv[1], &is);
    if (is) {
      napi_typedarray_type tt;
      size_t n;
      napi_get_typedarray_info(env, argv[1], &tt, &n, &data, NULL, NULL);
      if (tt != napi_uint8_array && tt != napi_uint8_clamped_array && tt != napi_int8_array) {
        napi_throw_type_error(env, NULL, "data must be a Buffer or null");
        return NULL;
      }
      dlen = n;
    } else if (napi_is_buffer(env, argv[1], &is), is) {
      napi_get_buffer_info(env, argv[1], &data, &dlen);
    } else if (err == 0) {
      napi_throw_type_error(env, NULL, "data must be a Buffer or null");
      return NULL;
    }
  }
  bool written = false;
  if (atomic_load(&s->state) == ST_STARTED) {
    miss *m = NULL;
    unsigned slot = miss_slot(unique);
    pthread_mutex_lock(&s->miss_mu);
    for (miss **p = &s->mtab[slot]; *p != NULL; p = &(*p)->next) {
      if ((*p)->unique == unique) { m = *p; *p = m->next; break; }
    }
    pthread_mutex_unlock(&s->miss_mu);
    if (m != NULL) {
      int r;
      if (err > 0) {
        atomic_fetch_add(&s->errors, 1);
        r = send_error(s, unique, (int)err);
      } else {
        /* more than asked would fail the whole reply */
        r = send_reply(s, unique, 0, data, dlen < m->length ? dlen : m->length, NULL, 0);
      }
      free(m);
      written = r == 0 || r == -ENOENT;
      if (written) atomic_fetch_add(&s->replies, 1);
    }
  }
  napi_get_boolean(env, written, &result);
  return result;
}

static void set_num (napi_env env, napi_value obj, const char *key, uint64_t v) {
  napi_value n;
  napi_create_double(env, (double)v, &n);
  napi_set_named_property(env, obj, key, n);
}

static napi_value js_stats (napi_env env, napi_callback_info info) {
  size_t argc = 0;
  server *s = unwrap(env, info, &argc, NULL);
  if (s == NULL) return NULL;
  napi_value o, arr;
  napi_create_object(env, &o);
  set_num(env, o, "requests", atomic_load(&s->requests));
  set_num(env, o, "reads", atomic_load(&s->reads));
  set_num(env, o, "fastReads", atomic_load(&s->fast_reads));
  set_num(env, o, "fastBytes", atomic_load(&s->fast_bytes));
  set_num(env, o, "misses", atomic_load(&s->misses));
  set_num(env, o, "missBytes", atomic_load(&s->miss_bytes));
  set_num(env, o, "replies", atomic_load(&s->replies));
  set_num(env, o, "errors", atomic_load(&s->errors));
  set_num(env, o, "pushes", atomic_load(&s->pushes));
  set_num(env, o, "pushBytes", atomic_load(&s->push_bytes));
  set_num(env, o, "pushSkipped", atomic_load(&s->push_skipped));
  napi_create_array_with_length(env, HIST_BUCKETS, &arr);
  for (unsigned i = 0; i < HIST_BUCKETS; i++) {
    napi_value n;
    napi_create_double(env, (double)atomic_load(&s->hist[i]), &n);
    napi_set_element(env, arr, i, n);
  }
  napi_set_named_property(env, o, "readSizes", arr);
  return o;
}

static napi_value js_stop (napi_env env, napi_callback_info info) {
  size_t argc = 0;
  server *s = unwrap(env, info, &argc, NULL);
  if (s != NULL) server_stop_js(s);
  return NULL;
}

/* ---------------------------------------------------------------------------------------------------------------- */

static void set_const (napi_env env, napi_value exports, const char *key, uint32_t v) {
  napi_value n;
  napi_create_uint32(env, v, &n);
  napi_set_named_property(env, exports, key, n);
}

NAPI_MODULE_INIT () {
  napi_value fn, cls;
  napi_create_function(env, "mount", NAPI_AUTO_LENGTH, js_mount, NULL, &fn);
  napi_set_named_property(env, exports, "mount", fn);
  napi_create_function(env, "umount", NAPI_AUTO_LENGTH, js_umount, NULL, &fn);
  napi_set_named_property(env, exports, "umount", fn);
  napi_create_function(env, "withSignalsBlocked", NAPI_AUTO_LENGTH, js_with_signals_blocked, NULL, &fn);
  napi_set_named_property(env, exports, "withSignalsBlocked", fn);
  set_const(env, exports, "MS_RDONLY", MS_RDONLY);
  set_const(env, exports, "MS_NOSUID", MS_NOSUID);
  set_const(env, exports, "MS_NODEV", MS_NODEV);
  set_const(env, exports, "MNT_FORCE", MNT_FORCE);
  set_const(env, exports, "MNT_DETACH", MNT_DETACH);
  napi_property_descriptor methods[] = {
    { "start", NULL, js_start, NULL, NULL, NULL, napi_default_method, NULL },
    { "addFile", NULL, js_add_file, NULL, NULL, NULL, napi_default_method, NULL },
    { "setReady", NULL, js_set_ready, NULL, NULL, NULL, napi_default_method, NULL },
    { "clearReady", NULL, js_clear_ready, NULL, NULL, NULL, napi_default_method, NULL },
    { "push", NULL, js_push, NULL, NULL, NULL, napi_default_method, NULL },
    { "isReady", NULL, js_is_ready, NULL, NULL, NULL, napi_default_method, NULL },
    { "forgetAccess", NULL, js_forget_access, NULL, NULL, NULL, napi_default_method, NULL },
    { "reply", NULL, js_reply, NULL, NULL, NULL, napi_default_method, NULL },
    { "stats", NULL, js_stats, NULL, NULL, NULL, napi_default_method, NULL },
    { "stop", NULL, js_stop, NULL, NULL, NULL, napi_default_method, NULL },
  };
  napi_define_class(env, "BlobServer", NAPI_AUTO_LENGTH, js_server_new, NULL, sizeof methods / sizeof methods[0], methods, &cls);
  napi_set_named_property(env, exports, "BlobServer", cls);
  return exports;
}
