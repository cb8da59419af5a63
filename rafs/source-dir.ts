/**
 * A `TreeSource` over a real directory: the RAFS inode tree with exact metadata (mode, owner, ns mtimes, rdev,
 * xattrs, raw-byte names, hard links), regular-file bytes streamed into the sink one file at a time.
 *
 * @example
 * ```ts
 * const root = await directorySource('/srv/rootfs')(new BlobWriter({ blobDir }))
 * ```
 */
import { lstat, open, readdir, readlink, stat, type FileHandle } from 'node:fs/promises'
import type { BigIntStats } from 'node:fs'
import { debuglog } from 'node:util'
import { getAttribute, listAttributes } from '@napi-rs/xattr'
import { splitXattrName } from './layout.js'
import { fileTypeOfMode, nameKey, newInode, type RafsInode } from './model.js'
import type { ChunkSink, TreeSource } from './source.js'
import { RafspeerError } from '../base/index.js'

const debug = debuglog('rafspeer:source-dir')
const NS_PER_SEC = 1_000_000_000n
const READ_CHUNK = 1 << 20
const STAT_CONCURRENCY = 16
const READ_AHEAD = 8
const SMALL_FILE = 256 << 10

/** Reads a small file whole; undefined when it is not exactly `size` bytes any more (the slow path re-reads it). */
async function readSmall (path: Buffer, size: number): Promise<Buffer | undefined> {
  const fh = await open(path, 'r')
  try {
    const buf = Buffer.allocUnsafe(size + 1)
    const { bytesRead } = await fh.read(buf, 0, size + 1, 0)
    return bytesRead === size ? buf.subarray(0, size) : undefined
  } finally {
    await fh.close()
  }
}

/** Maps with at most `limit` calls in flight, keeping the input order in the result. */
async function mapLimit<T, R> (items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length)
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++
      out[i] = await fn(items[i]!)
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
  return out
}

export class SourceError extends RafspeerError.coded('RAFSPEER_ERR_SOURCE') {}

export interface DirectorySourceOptions {
  /** read extended attributes (default true) */
  xattrs?: boolean
}

/** Linux dev_t → (major, minor) with glibc's masks (the `~0xff` of the C macros is 32-bit, not unbounded). */
export function splitRdev (rdev: bigint): { major: number, minor: number } {
  return {
    major: Number(((rdev & 0xfff00n) >> 8n) | ((rdev & 0xffff_f000_0000_0000n) >> 32n)),
    minor: Number((rdev & 0xffn) | ((rdev & 0x0000_0fff_fff0_0000n) >> 12n))
  }
}

const show = (path: Buffer): string => path.toString('utf8')

export function directorySource (dir: string, opts: DirectorySourceOptions = {}): TreeSource {
  const withXattrs = opts.xattrs ?? true
  return async (sink: ChunkSink, options: { signal?: AbortSignal } = {}): Promise<RafsInode> => {
    const { signal } = options
    const rootPath = Buffer.from(dir)
    // the root itself may be reached through a symlink; everything below it is taken as it is
    const st = await stat(rootPath, { bigint: true }).catch((err: unknown) => {
      throw new SourceError(`cannot read source directory ${dir}: ${(err as Error).message}`, { cause: err })
    })
    if (!st.isDirectory()) throw new SourceError(`source ${dir} is not a directory`)
    const walker = new Walker(sink, withXattrs, signal)
    const root = await walker.inodeOf(rootPath, st)
    await walker.fillDir(rootPath, root)
    return root
  }
}

class Walker {
  /** (dev, ino) → inode, so every name of a hard-linked file shares one RafsInode */
  readonly #links = new Map<string, RafsInode>()
  #readBuf?: Buffer

  constructor (readonly sink: ChunkSink, readonly withXattrs: boolean, readonly signal: AbortSignal | undefined) {}

  // Depth-first in byte order of names, so the blob's chunk order only depends on the tree.
  async fillDir (path: Buffer, dir: RafsInode): Promise<void> {
    let names: Buffer[]
    try {
      names = await readdir(path, { encoding: 'buffer' })
    } catch (err) {
      throw new SourceError(`cannot list directory ${show(path)}: ${(err as Error).message}`, { cause: err })
    }
    names.sort(Buffer.compare)
    // Metadata of a whole directory is fetched with bounded concurrency (each lstat/listxattr is a thread-pool
    // round trip); file data is still fed to the sink one file at a time, in name order.
    const paths = names.map((name) => Buffer.concat([path, Buffer.from('/'), name]))
    const meta = await mapLimit(paths, STAT_CONCURRENCY, async (child) => {
      this.signal?.throwIfAborted()
      let st: BigIntStats
      try {
        st = await lstat(child, { bigint: true })
      } catch (err) {
        throw new SourceError(`cannot stat ${show(child)}: ${(err as Error).message}`, { cause: err })
      }
      const xattrs = this.withXattrs ? await this.#xattrs(child) : undefined
      return { st, xattrs }
    })
    // Small files are read a few entries ahead, so their open/read/close round trips overlap the hashing
    // and compression of the files before them (bounded: READ_AHEAD files of at most SMALL_FILE bytes).
    const ahead = new Map<number, Promise<Buffer | undefined>>()
    const startReads = (from: number): void => {
      for (let j = from; j < Math.min(names.length, from + READ_AHEAD); j++) {
        const st = meta[j]!.st
        if (ahead.has(j) || !st.isFile() || st.size === 0n || st.size > BigInt(SMALL_FILE)) continue
        const p = readSmall(paths[j]!, Number(st.size))
        p.catch(() => {}) // a failure is reported when (and if) the entry is consumed
        ahead.set(j, p)
      }
    }
    for (let i = 0; i < names.length; i++) {
      this.signal?.throwIfAborted()
      startReads(i)
      const child = paths[i]!
      const { st, xattrs } = meta[i]!
      const key = `${st.dev}:${st.ino}`
      let inode = st.isDirectory() ? undefined : this.#links.get(key)
      const early = ahead.get(i)
      ahead.delete(i)
      if (inode === undefined) {
        inode = await this.inodeOf(child, st, xattrs, early)
        if (inode.type !== 'dir' && st.nlink > 1n) this.#links.set(key, inode)
        if (inode.type === 'dir') await this.fillDir(child, inode)
      }
      dir.children!.set(nameKey(names[i]!), inode)
    }
  }

  async inodeOf (path: Buffer, st: BigIntStats, xattrs?: Map<string, Buffer>, early?: Promise<Buffer | undefined>): Promise<RafsInode> {
    const mode = Number(st.mode)
    const type = fileTypeOfMode(mode)
    if (type === undefined) throw new SourceError(`${show(path)} has an unknown file type (mode 0${mode.toString(8)})`)
    let sec = st.mtimeNs / NS_PER_SEC
    let nsec = st.mtimeNs % NS_PER_SEC
    if (nsec < 0n) { nsec += NS_PER_SEC; sec -= 1n } // pre-1970 times: keep nsec in [0, 1e9)
    const inode = newInode(type, {
      mode,
      uid: Number(st.uid),
      gid: Number(st.gid),
      mtime: Number(sec),
      mtimeNsec: Number(nsec)
    })
    if (type === 'chr' || type === 'blk') {
      const { major, minor } = splitRdev(st.rdev)
      inode.rdevMajor = major
      inode.rdevMinor = minor
    } else if (type === 'symlink') {
      try {
        inode.target = await readlink(path, { encoding: 'buffer' })
      } catch (err) {
        throw new SourceError(`cannot read symlink ${show(path)}: ${(err as Error).message}`, { cause: err })
      }
    }
    if (xattrs !== undefined) inode.xattrs = xattrs
    else if (this.withXattrs) inode.xattrs = await this.#xattrs(path)
    if (type === 'file') {
      const data = await early?.catch(() => undefined)
      if (data !== undefined) {
        inode.chunks = await this.sink.addFile(data)
        inode.size = data.length
      } else await this.#readFile(path, inode, Number(st.size))
    }
    return inode
  }

  async #readFile (path: Buffer, inode: RafsInode, expected: number): Promise<void> {
    if (expected === 0) return
    let fh: FileHandle
    try {
      // opened here rather than by the stream, whose open error would surface as an unhandled 'error' event
      fh = await open(path, 'r')
    } catch (err) {
      throw new SourceError(`cannot open file ${show(path)}: ${(err as Error).message}`, { cause: err })
    }
    let size = 0
    // One read buffer for the whole walk: a ReadStream allocates a fresh highWaterMark-sized buffer per read,
    // which for thousands of small files is gigabytes of garbage. Reuse is safe because the sink finishes with
    // (copies or writes) each piece before it asks for the next one.
    const buf = (this.#readBuf ??= Buffer.allocUnsafe(READ_CHUNK))
    const signal = this.signal
    const pieces = (async function * () {
      for (;;) {
        signal?.throwIfAborted()
        const { bytesRead } = await fh.read(buf, 0, buf.length, size)
        if (bytesRead === 0) return
        // counting as we go: a file that changes under us must still get a size that matches its chunks
        size += bytesRead
        yield buf.subarray(0, bytesRead)
        // a short read that reaches the size lstat gave is the end: spares every small file a second read
        if (bytesRead < buf.length && size >= expected) return
      }
    })()
    try {
      inode.chunks = await this.sink.addFile(pieces)
    } catch (err) {
      if ((err as Error).name === 'AbortError') throw err
      if ((err as { code?: unknown }).code === 'RAFSPEER_ERR_BLOB_WRITE') throw err
      throw new SourceError(`cannot read file ${show(path)}: ${(err as Error).message}`, { cause: err })
    } finally {
      await fh.close()
    }
    if (size !== expected) debug('%s changed size while reading (%d → %d bytes)', show(path), expected, size)
    inode.size = size
  }

  async #xattrs (path: Buffer): Promise<Map<string, Buffer>> {
    const out = new Map<string, Buffer>()
    const p = path.toString('utf8')
    // the xattr binding takes UTF-8 strings only; a path that does not survive the round trip cannot be named
    if (!Buffer.from(p, 'utf8').equals(path)) {
      debug('%s: non-UTF-8 path, extended attributes skipped', p)
      return out
    }
    let names: string[]
    try {
      names = await listAttributes(p)
    } catch (err) {
      if (/os error (95|61)\b/.test((err as Error).message)) return out // filesystem without xattr support
      throw new SourceError(`cannot list extended attributes of ${p}: ${(err as Error).message}`, { cause: err })
    }
    for (const name of names.sort()) {
      if (splitXattrName(name) === undefined) {
        debug('%s: xattr %s has a prefix RAFS cannot store, skipped', p, name)
        continue
      }
      let value: Buffer | null
      try {
        value = await getAttribute(p, name)
      } catch (err) {
        throw new SourceError(`cannot read extended attribute ${name} of ${p}: ${(err as Error).message}`, { cause: err })
      }
      if (value !== null) out.set(name, value)
    }
    return out
  }
}
