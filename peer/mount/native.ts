/**
 * The native addon (`native/rafspeer.c`, built by `native/build.mjs` into `dist/native/rafspeer.node`): what neither
 * util-linux nor fuse-native can give the daemon.
 *
 * - `mount`/`umount`: the raw syscalls. util-linux `mount` puts a regular-file source on a loop device, but a
 *   file-backed EROFS mount (Linux >= 6.12) takes the bootstrap file itself plus `device=` files.
 * - `BlobServer`: a read-only FUSE file system spoken directly over /dev/fuse: a flat directory of blob files whose
 *   bytes come from sparse local cache files. READs of blocks marked ready are answered in C on worker threads;
 *   only the others ("misses") reach JS, which fetches the bytes and answers with `reply`. EROFS then mounts with
 *   these files as its devices, so the kernel serves the image and userspace only fills gaps.
 *
 * The addon is optional: without a C compiler at build time (or off Linux) `loadNative()` is undefined and
 * `nativeUnavailable()` says why, and the daemon falls back to its other mount modes.
 *
 * @example
 * ```ts
 * const native = loadNative()
 * if (native === undefined) throw new Error(nativeUnavailable())
 * const server = new native.BlobServer({ mountpoint: '/run/rafspeer/blobs', onMiss: (id, file, offset, length) => {
 *   fetchBytes(file, offset, length).then((buf) => server.reply(id, buf, 0), () => server.reply(id, null, 5))
 * } })
 * server.start()
 * const file = server.addFile(`${blobId}.blob.data`, cachePath, size)
 * server.setReady(file, 0, 1 << 20)
 * native.mount(bootstrap, '/mnt/app', 'erofs', native.MS_RDONLY, `device=/run/rafspeer/blobs/${blobId}.blob.data`)
 * ```
 */
import { createRequire } from 'node:module'

/**
 * An Error from a failed syscall, shaped like Node's own system errors: `code` is the errno name, `errno` the
 * (positive) number, the message `syscall(path): strerror`.
 */
export interface NativeSyscallError extends Error {
  code: string
  errno: number
  syscall: string
  path?: string
}

export interface NativeAddon {
  /**
   * mount(2), synchronously. `flags` is a bit mask of `MS_*`, `data` the file system's option string. Throws a
   * {@link NativeSyscallError}, message `mount(<target>): <strerror>` (`ENOENT` for a missing target, `ENOTBLK`
   * for a file source a file system cannot take, ...).
   */
  mount: (source: string, target: string, fstype: string, flags: number, data: string) => void
  /** umount2(2), synchronously; `flags` takes `MNT_FORCE` and `MNT_DETACH`. Throws like `mount`. */
  umount: (target: string, flags: number) => void
  /**
   * Calls `fn` with every signal blocked on the calling thread and returns its result (its exception passes
   * through); the mask is restored after. Threads a native call starts inside `fn` inherit the full mask, so
   * signal handlers never run on them (see `FuseNativeBackend`: fuse-native's threads).
   */
  withSignalsBlocked: <T>(fn: () => T) => T
  MS_RDONLY: number
  MS_NOSUID: number
  MS_NODEV: number
  MNT_DETACH: number
  MNT_FORCE: number
  BlobServer: new (opts: BlobServerOptions) => BlobServer
}

export interface BlobServerOptions {
  /** an existing empty directory */
  mountpoint: string
  /** the source in /proc/mounts (default `rafspeer-blobs`); the type is `fuse.rafspeer` */
  fsName?: string
  /** worker threads reading /dev/fuse (default 4, at most 64) */
  threads?: number
  /**
   * the largest READ the kernel sends (FUSE max_pages and max_read; default and maximum 1 MiB, a multiple of 4096).
   * The mount's readahead window is widened to match, so sequential page-cache reads arrive in pieces this big.
   */
  maxReadBytes?: number
  /**
   * opens answer FOPEN_DIRECT_IO (every read reaches the server, nothing is cached in the FUSE files' page cache)
   * instead of FOPEN_KEEP_CACHE (default false). The server asks for FUSE_ASYNC_DIO, so a direct read from an
   * asynchronous caller (EROFS reading its devices) goes out as READs in flight together, not one at a time.
   */
  directIo?: boolean
  /**
   * Called on the JS thread for a READ that touches a block not ready: `length` is already clamped at the file's
   * size. The request waits, without holding a worker thread, until `reply(id, …)`. A handler that throws fails
   * the read with EIO and the exception goes to `uncaughtException`.
   */
  onMiss: (id: number, file: number, offset: number, length: number) => void
  /**
   * Called on the JS thread, before its miss if it is one, for a READ that asks for a block no READ asked for
   * since the file's last `forgetAccess` (ready or not: a ready block's READ never reaches JS otherwise). What an
   * access log records; absent, nothing is tracked. A range may rarely be told twice (two threads at once).
   */
  onAccess?: (file: number, offset: number, length: number) => void
}

/** Counters since start; `errors` counts error replies from `reply` and failed writes to /dev/fuse. */
export interface BlobServerStats {
  /** every request read from /dev/fuse */
  requests: number
  /** READs of files */
  reads: number
  /** READs answered in C from the cache file, and their bytes */
  fastReads: number
  fastBytes: number
  /** READs handed to `onMiss`, and their (clamped) bytes */
  misses: number
  missBytes: number
  /** `reply` calls that answered a pending miss */
  replies: number
  errors: number
  /** `push` pieces stored into the page cache, their bytes, and pieces skipped (not ready, or no inode yet) */
  pushes: number
  pushBytes: number
  pushSkipped: number
  /** READ sizes as the kernel asked them: index i counts sizes ≤ 4096 << i (4 KiB … 1 MiB) */
  readSizes: number[]
}

export interface BlobServer {
  /**
   * Opens /dev/fuse, mounts it (type `fuse.rafspeer`, read-only, nosuid, nodev, allow_other), starts the worker
   * threads and returns once the kernel's INIT is answered (5 s at most). Throws a {@link NativeSyscallError} and
   * leaves nothing mounted on failure. Once only: a stopped server stays stopped.
   */
  start: () => void
  /**
   * Adds `name` to the root directory, served from `cachePath` (opened read-only now and kept open) for `size`
   * bytes; returns its index (0, 1, …: the `file` of the other calls and of `onMiss`). Every block starts not
   * ready. Works before and after start; a duplicate name throws EEXIST.
   */
  addFile: (name: string, cachePath: string, size: number) => number
  /**
   * Marks blocks ready: the cache file holds their bytes from now on. Offset and length are multiples of 4096;
   * the range may end at the size rounded up to 4096. Lock-free, cheap.
   */
  setReady: (file: number, offset: number, length: number) => void
  /**
   * Marks blocks not ready and returns once no fast read that saw them ready still reads the cache file, so the
   * caller may punch holes in it right after.
   */
  clearReady: (file: number, offset: number, length: number) => void
  /**
   * Copies the ready blocks of [offset, offset + length) (multiples of 4096) into the kernel's page cache of the
   * file (FUSE_NOTIFY_STORE), in the background, by a thread of its own: reads of them never become READs, and a
   * readahead around them never becomes a READ reaching into blocks that are not ready. Pieces with a block not
   * ready, and files the kernel has not looked up yet, are skipped. Does nothing with `directIo` or after stop.
   */
  push: (file: number, offset: number, length: number) => void
  /** Every block of the file counts as never read again: its next READs are told to `onAccess` anew. */
  forgetAccess: (file: number) => void
  /** Whether every block of [offset, offset + length) is ready (the range stops at the file's size). */
  isReady: (file: number, offset: number, length: number) => boolean
  /**
   * Answers a miss with `data` (up to the asked length; shorter means EOF) or, when `errno` > 0, fails it with
   * that errno (5 = EIO). Returns whether a reply went out: false for an unknown or already answered id and after
   * stop. Answering a request the kernel has since interrupted is fine.
   */
  reply: (id: number, data: Buffer | null, errno: number) => boolean
  stats: () => BlobServerStats
  /**
   * Lazily unmounts, ends the connection (aborting it through fusectl when files are still open, e.g. under an
   * EROFS mount: their readers get errors), joins the worker threads, drops pending misses and releases the event
   * loop. Idempotent. Unmount what is mounted over the blob files first.
   */
  stop: () => void
}

const require = createRequire(import.meta.url)

/** what loading gave: the addon, or why there is none */
let loaded: { addon: NativeAddon } | { reason: string } | undefined

function load (): { addon: NativeAddon } | { reason: string } {
  if (process.platform !== 'linux') return { reason: `the native addon needs Linux (this is ${process.platform})` }
  try {
    // relative to dist/peer/mount/native.js
    return { addon: require('../../native/rafspeer.node') as NativeAddon }
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    if (e.code === 'MODULE_NOT_FOUND') return { reason: 'the native addon was not built (no C compiler or Node-API headers at build time)' }
    return { reason: `the native addon failed to load: ${(e.message ?? String(err)).split('\n')[0]}` }
  }
}

/** The addon, loaded once; undefined when it was not built or cannot load (never throws). */
export function loadNative (): NativeAddon | undefined {
  loaded ??= load()
  return 'addon' in loaded ? loaded.addon : undefined
}

/** Why {@link loadNative} has no addon, in one line; undefined when it has one. */
export function nativeUnavailable (): string | undefined {
  loaded ??= load()
  return 'reason' in loaded ? loaded.reason : undefined
}
