/**
 * The part of `fuse-native` (2.2.x, libfuse 2.9 high-level API) that rafspeer uses. Results go back through
 * callbacks: `cb(0, value)` on success, `cb(-errno)` on failure; `read` answers `cb(bytesRead)`.
 */
declare module 'fuse-native' {
  namespace Fuse {
    /** Times are ms since the epoch (the binding carries no finer precision); `ino` and `rdev` are 32 bits. */
    interface Stat {
      mode: number
      uid?: number
      gid?: number
      size?: number
      dev?: number
      nlink?: number
      ino?: number
      rdev?: number
      blksize?: number
      blocks?: number
      atime?: number | Date
      mtime?: number | Date
      ctime?: number | Date
    }

    /** Every field is carried as an unsigned 32-bit integer. */
    interface Statfs {
      bsize: number
      frsize: number
      blocks: number
      bfree: number
      bavail: number
      files: number
      ffree: number
      favail: number
      fsid: number
      flag: number
      namemax: number
    }

    type Done = (err: number) => void
    type Result<T> = (err: number, value?: T) => void

    /** Paths and names arrive as UTF-8-decoded strings. */
    interface Operations {
      init?: (cb: Done) => void
      getattr?: (path: string, cb: Result<Stat>) => void
      readdir?: (path: string, cb: (err: number, names?: string[], stats?: Stat[]) => void) => void
      readlink?: (path: string, cb: Result<string>) => void
      open?: (path: string, flags: number, cb: Result<number>) => void
      /** `buf` is libfuse's reply buffer (`len` bytes); answer `cb(bytesRead)` or `cb(-errno)` */
      read?: (path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (result: number) => void) => void
      /** no value and no error: ENODATA */
      getxattr?: (path: string, name: string, position: number, cb: Result<Buffer>) => void
      listxattr?: (path: string, cb: Result<string[]>) => void
      statfs?: (path: string, cb: Result<Statfs>) => void
      access?: (path: string, mode: number, cb: Done) => void
    }

    /** Per-op timeouts: a number for every op, or `{ default, [op]: ms | false }`. */
    type Timeout = number | false | ({ default?: number } & Record<string, number | false | undefined>)

    interface Options {
      timeout?: Timeout
      debug?: boolean
      force?: boolean
      mkdir?: boolean
    }

    /** Arguments after `signal` of the internal per-op dispatchers. */
    type Signal = (res: number, ...rest: unknown[]) => void
  }

  class Fuse {
    constructor (mnt: string, ops: Fuse.Operations, opts?: Fuse.Options)
    readonly mnt: string
    readonly ops: Fuse.Operations
    readonly opts: Fuse.Options
    /** the native fuse_thread_t, set while mounting */
    protected _thread: Buffer | null

    mount (cb: (err: Error | null) => void): void
    unmount (cb: (err: Error | null) => void): void

    /** the `-o...` argument handed to fuse_mount / fuse_new */
    protected _fuseOptions (): string
    protected _close (cb: (err: Error | null) => void): void
    protected _op_getxattr (signal: Fuse.Signal, path: string, name: string, valueBuf: Buffer, position: number): void
    protected _op_listxattr (signal: Fuse.Signal, path: string, listBuf: Buffer): void

    /** runs `fusermount -uz` through a shell */
    static unmount (mnt: string, cb: (err: Error | null) => void): void
  }

  export = Fuse
}
