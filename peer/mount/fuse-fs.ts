/**
 * The read-only filesystem a FUSE mount serves: fuse-native's path-based operations over one image, metadata from
 * the in-memory bootstrap (`RafsReader`) and file data from `ImageFiles.read`. Every handler but `read` answers
 * synchronously from memory; `read` waits for `ImageFiles.read`, which owns the read's deadline, passing it the
 * session's signal (aborted when the mount goes away). No handler throws: every failure is an errno, and the
 * unexpected ones (EIO) are logged with their path and cause.
 *
 * Paths resolve to nids from memory: the first lookup in a directory (or its `readdir`) remembers the paths of
 * all its children, so every later lookup there is one `Map` hit, and a miss in a listed directory is ENOENT.
 *
 * What fuse-native can carry limits what is shown: paths and names are UTF-8 strings, so a name that is not valid
 * UTF-8 is left out of `readdir` (logged once per directory) and such a symlink target reads as EIO; times have
 * ms precision; `ino` and `rdev` are 32-bit (majors above 4095 and minors above 2^20 - 1 do not fit). st_ino is
 * the nid, as under the kernel's EROFS driver.
 *
 * @example
 * ```ts
 * const ops = rafsFuseOps({ reader, read }, { logger, signal })
 * ops.getattr('/etc/os-release', (err, st) => console.log(err, st?.ino)) // 0, the nid
 * ```
 */
import { isUtf8 } from 'node:buffer'
import type Fuse from 'fuse-native'
import { describeError, silentLogger, type ComponentLogger } from '../../base/index.js'
import type { ReaderInode } from '../../rafs/index.js'
import type { ImageFiles } from './types.js'

/** The errnos the handlers answer, negated as FUSE wants them (Linux numbering). */
export const Errno = {
  ENOENT: -2,
  EIO: -5,
  ENOTDIR: -20,
  EISDIR: -21,
  EINVAL: -22,
  EROFS: -30,
  ERANGE: -34,
  ENODATA: -61
} as const

export interface RafsFuseOpsInit {
  logger?: ComponentLogger
  /** the session's signal, handed to every read: aborted when the mount goes away */
  signal?: AbortSignal
  /** resolved paths remembered before the memo starts over (default 1 Mi) */
  maxCachedPaths?: number
}

/** fuse-native's operations; each one registered with the binding costs a kernel↔JS round trip per request. */
export interface RafsFuseOps {
  getattr: (path: string, cb: Fuse.Result<Fuse.Stat>) => void
  readdir: (path: string, cb: (err: number, names?: string[], stats?: Fuse.Stat[]) => void) => void
  readlink: (path: string, cb: Fuse.Result<string>) => void
  /** the fd is nid + 1 (0 means "none" to fuse-native); write access is EROFS */
  open: (path: string, flags: number, cb: Fuse.Result<number>) => void
  read: (path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (result: number) => void) => void
  getxattr: (path: string, name: string, position: number, cb: Fuse.Result<Buffer>) => void
  listxattr: (path: string, cb: Fuse.Result<string[]>) => void
  statfs: (path: string, cb: Fuse.Result<Fuse.Statfs>) => void
}

const DEFAULT_MAX_CACHED_PATHS = 1 << 20
const BLOCK = 4096
const O_ACCMODE = 3
const ST_RDONLY = 1
const U32_MAX = 0xffffffff

/** st_rdev as the kernel's 32-bit new_encode_dev, which FUSE attributes carry. */
export function encodeRdev (major: number, minor: number): number {
  return (minor & 0xff) + (major & 0xfff) * 0x100 + ((minor >>> 8) & 0xfff) * 0x100000
}

/** st_ino is the nid, except that readdir(3) hides a d_ino of 0, so an inode at nid 0 shows as 2^32 - 1. */
export const inoOf = (nid: number): number => nid === 0 ? U32_MAX : nid

export function rafsFuseOps (files: ImageFiles, init: RafsFuseOpsInit = {}): RafsFuseOps {
  const { reader } = files
  const log = (init.logger ?? silentLogger).forComponent('rafspeer:fuse')
  const logError = (formatter: string, ...args: unknown[]): void => { log.error(formatter, ...args) }
  const signal = init.signal
  const maxCachedPaths = init.maxCachedPaths ?? DEFAULT_MAX_CACHED_PATHS
  const rootNid = reader.rootNid

  // every path resolved so far; a directory in `listed` has all its (UTF-8) children in `paths`, so a miss
  // there is ENOENT without touching the bootstrap
  const paths = new Map<string, number>([['/', rootNid]])
  const listed = new Set<number>()
  const warnedDirs = new Set<number>()

  /** Remembers every child of directory `nid` (at `path`) and returns them; names that are not UTF-8 are left out. */
  const listDir = (path: string, nid: number): Array<{ name: string, nid: number }> => {
    const out: Array<{ name: string, nid: number }> = []
    let skipped = 0
    for (const child of reader.readdir(nid)) {
      if (isUtf8(child.name)) out.push({ name: child.name.toString('utf8'), nid: child.nid })
      else skipped++
    }
    if (skipped > 0 && !warnedDirs.has(nid)) {
      warnedDirs.add(nid)
      logError('fuse %s: %d name(s) that are not UTF-8 left out (fuse-native carries names as UTF-8)', path, skipped)
    }
    if (!listed.has(nid)) {
      if (paths.size + out.length > maxCachedPaths) {
        paths.clear()
        listed.clear()
        paths.set('/', rootNid)
      }
      const prefix = path === '/' ? '/' : path + '/'
      for (const c of out) paths.set(prefix + c.name, c.nid)
      listed.add(nid)
    }
    return out
  }

  /** nid of `path`, or a negative errno; throws only on a corrupt image (the callers answer EIO). */
  const resolve = (path: string): number => {
    const hit = paths.get(path)
    if (hit !== undefined) return hit
    const slash = path.lastIndexOf('/')
    if (slash < 0) return Errno.ENOENT
    const parentPath = slash === 0 ? '/' : path.slice(0, slash)
    const parent = resolve(parentPath)
    if (parent < 0) return parent
    if (listed.has(parent)) return Errno.ENOENT
    if (reader.inode(parent).type !== 'dir') return Errno.ENOTDIR
    // one listing serves every later lookup in the directory (the reader's lookupChild parses blocks each time)
    listDir(parentPath, parent)
    return paths.get(path) ?? Errno.ENOENT
  }

  /** Logs what made a handler fail unexpectedly (a corrupt image, a bug) and returns EIO. */
  const failed = (op: string, path: string, err: unknown): number => {
    logError('fuse %s %s: %s', op, path, describeError(err))
    return Errno.EIO
  }

  const statOf = (ino: ReaderInode): Fuse.Stat => {
    const ms = ino.mtime * 1000 + Math.floor(ino.mtimeNsec / 1e6)
    return {
      mode: ino.mode,
      uid: ino.uid,
      gid: ino.gid,
      size: ino.size,
      nlink: ino.nlink,
      ino: inoOf(ino.nid),
      rdev: ino.type === 'chr' || ino.type === 'blk' ? encodeRdev(ino.rdevMajor, ino.rdevMinor) : 0,
      blksize: BLOCK,
      blocks: Math.ceil(ino.size / 512),
      atime: ms,
      mtime: ms,
      ctime: ms
    }
  }

  const direntStat = (ino: ReaderInode): Fuse.Stat => ({ mode: ino.mode, ino: inoOf(ino.nid), atime: 0, mtime: 0, ctime: 0 })

  let lastXattrNid = -1
  let lastXattrs = new Map<string, Buffer>()
  const xattrsOf = (nid: number): Map<string, Buffer> => {
    if (nid !== lastXattrNid) {
      lastXattrs = reader.xattrs(nid)
      lastXattrNid = nid
    }
    return lastXattrs
  }

  const totals = imageTotals(reader, logError)

  // each handler works out one answer inside try and calls back once, outside it
  return {
    getattr (path, cb) {
      let res: number | Fuse.Stat
      try {
        const nid = resolve(path)
        res = nid < 0 ? nid : statOf(reader.inode(nid))
      } catch (err) {
        res = failed('getattr', path, err)
      }
      if (typeof res === 'number') cb(res)
      else cb(0, res)
    },

    readdir (path, cb) {
      let res: number | { names: string[], stats: Fuse.Stat[] }
      try {
        const nid = resolve(path)
        if (nid < 0) res = nid
        else if (reader.inode(nid).type !== 'dir') res = Errno.ENOTDIR
        else {
          const slash = path.lastIndexOf('/')
          const parent = slash <= 0 ? rootNid : resolve(path.slice(0, slash))
          const names = ['.', '..']
          const stats = [direntStat(reader.inode(nid)), direntStat(reader.inode(parent < 0 ? nid : parent))]
          for (const child of listDir(path, nid)) {
            names.push(child.name)
            stats.push(direntStat(reader.inode(child.nid)))
          }
          res = { names, stats }
        }
      } catch (err) {
        res = failed('readdir', path, err)
      }
      if (typeof res === 'number') cb(res)
      else cb(0, res.names, res.stats)
    },

    readlink (path, cb) {
      let res: number | string
      try {
        const nid = resolve(path)
        if (nid < 0) res = nid
        else if (reader.inode(nid).type !== 'symlink') res = Errno.EINVAL
        else {
          const target = reader.readlink(nid)
          if (isUtf8(target)) res = target.toString('utf8')
          else {
            logError('fuse readlink %s: target 0x%s is not UTF-8, which fuse-native cannot carry', path, target.toString('hex'))
            res = Errno.EIO
          }
        }
      } catch (err) {
        res = failed('readlink', path, err)
      }
      if (typeof res === 'number') cb(res)
      else cb(0, res)
    },

    open (path, flags, cb) {
      let res: number
      try {
        res = (flags & O_ACCMODE) !== 0 ? Errno.EROFS : resolve(path)
      } catch (err) {
        res = failed('open', path, err)
      }
      if (res < 0) cb(res)
      else cb(0, res + 1)
    },

    read (path, fd, buf, len, pos, cb) {
      let nid = -1
      let want = 0
      let early: number | undefined
      try {
        nid = fd > 0 ? fd - 1 : resolve(path)
        if (nid < 0) early = nid
        else {
          const ino = reader.inode(nid)
          if (ino.type !== 'file') early = ino.type === 'dir' ? Errno.EISDIR : Errno.EINVAL
          else if (pos >= ino.size || len <= 0) early = 0
          else want = Math.min(len, ino.size - pos)
        }
      } catch (err) {
        early = failed('read', path, err)
      }
      if (early !== undefined) return cb(early)

      const fail = (why: string): void => {
        logError('fuse read %s (nid %d) at %d+%d: %s', path, nid, pos, want, why)
        cb(Errno.EIO)
      }
      // the answer frees libfuse's buffer: files.read settles (by its deadline) only once it is done with it
      let reading: Promise<number>
      try {
        reading = files.read(nid, pos, want, buf, signal)
      } catch (err) {
        return fail(describeError(err))
      }
      reading.then(n => {
        // the range ends at EOF at the latest, so anything short is lost data, which the kernel would cache as EOF
        if (n !== want) fail(`the image read answered ${String(n)} bytes of ${want}`)
        else cb(n)
      }, err => { fail(describeError(err)) })
    },

    getxattr (path, name, _position, cb) {
      let res: number | Buffer
      try {
        const nid = resolve(path)
        res = nid < 0 ? nid : reader.inode(nid).xattrIcount === 0 ? Errno.ENODATA : xattrsOf(nid).get(name) ?? Errno.ENODATA
      } catch (err) {
        res = failed('getxattr', path, err)
      }
      if (typeof res === 'number') cb(res)
      else cb(0, res)
    },

    listxattr (path, cb) {
      let res: number | string[]
      try {
        const nid = resolve(path)
        res = nid < 0 ? nid : reader.inode(nid).xattrIcount === 0 ? [] : [...xattrsOf(nid).keys()]
      } catch (err) {
        res = failed('listxattr', path, err)
      }
      if (typeof res === 'number') cb(res)
      else cb(0, res)
    },

    statfs (path, cb) {
      let t: { files: number, bytes: number }
      try {
        t = totals()
      } catch (err) {
        return cb(failed('statfs', path, err))
      }
      cb(0, {
        bsize: BLOCK,
        frsize: BLOCK,
        blocks: Math.min(U32_MAX, Math.ceil(t.bytes / BLOCK)),
        bfree: 0,
        bavail: 0,
        files: Math.min(U32_MAX, t.files),
        ffree: 0,
        favail: 0,
        fsid: 0,
        flag: ST_RDONLY,
        namemax: 255
      })
    }
  }
}

/** Directories walked per slice of the statfs walk, between which other requests are served. */
const WALK_SLICE_DIRS = 64

/**
 * The image's inode count and file bytes (hard links once) for statfs. The superblock has the count; the bytes
 * take a walk of every directory, done once in slices on the loop from the first call, so a big image never
 * stalls the mount. Until it ends, the bytes are the blobs' (deduplicated) data size.
 */
function imageTotals (reader: ImageFiles['reader'], logError: (formatter: string, ...args: unknown[]) => void): () => { files: number, bytes: number } {
  const estimate = { files: reader.superblock.inos, bytes: reader.blobs.reduce((n, b) => n + b.uncompressedSize, 0) }
  let exact: { files: number, bytes: number } | undefined
  let started = false
  const walk = (): void => {
    const seen = new Set<number>([reader.rootNid])
    const stack = [reader.rootNid]
    let bytes = 0
    const slice = (): void => {
      try {
        for (let n = 0; n < WALK_SLICE_DIRS && stack.length > 0; n++) {
          for (const child of reader.readdir(stack.pop()!)) {
            if (seen.has(child.nid)) continue
            seen.add(child.nid)
            const ino = reader.inode(child.nid)
            if (ino.type === 'dir') stack.push(child.nid)
            else if (ino.type === 'file') bytes += ino.size
          }
        }
      } catch (err) {
        logError('fuse statfs: walking the image failed, sizes stay estimates: %s', describeError(err))
        return
      }
      if (stack.length > 0) setImmediate(slice)
      else exact = { files: seen.size, bytes }
    }
    slice()
  }
  return () => {
    if (!started) {
      started = true
      walk()
    }
    return exact ?? estimate
  }
}
