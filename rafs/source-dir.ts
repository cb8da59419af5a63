/**
 * A `TreeSource` over a real directory: the RAFS inode tree with exact metadata (mode, owner, ns mtimes, rdev,
 * xattrs, raw-byte names, hard links), regular-file bytes streamed into the sink one file at a time.
 *
 * @example
 * ```ts
 * const root = await directorySource('/srv/rootfs')(new BlobWriter({ blobDir }))
 * ```
 */
import { closeSync, lstatSync, openSync, readdirSync, readlinkSync, readSync, statSync, type BigIntStats } from 'node:fs'
import { performance } from 'node:perf_hooks'
import { debuglog } from 'node:util'
import { getAttributeSync, listAttributesSync } from '@napi-rs/xattr'
import { splitXattrName } from './layout.js'
import { fileTypeOfMode, nameKey, newInode, type RafsInode } from './model.js'
import type { ChunkSink, TreeSource } from './source.js'
import { RafspeerError } from '../base/index.js'

const debug = debuglog('rafspeer:source-dir')
const NS_PER_SEC = 1_000_000_000n
const READ_CHUNK = 1 << 20
// Files handed to the sink and not stored yet: enough to keep its workers busy, bounded so memory stays flat.
const WINDOW_BYTES = 32 << 20
const WINDOW_FILES = 4096
// The walk runs synchronous syscalls; it lets the event loop run at least this often.
const SLICE_MS = 10

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
    let st: BigIntStats
    try {
      // the root itself may be reached through a symlink; everything below it is taken as it is
      st = statSync(rootPath, { bigint: true })
    } catch (err) {
      throw new SourceError(`cannot read source directory ${dir}: ${(err as Error).message}`, { cause: err })
    }
    if (!st.isDirectory()) throw new SourceError(`source ${dir} is not a directory`)
    const walker = new Walker(sink, withXattrs, signal)
    const root = await walker.inodeOf(rootPath, st)
    await walker.fillDir(rootPath, root)
    await walker.settle()
    return root
  }
}

interface InFlight {
  done: Promise<void>
  bytes: number
}

/**
 * Walks with synchronous syscalls: for a tree of many small files, a thread-pool round trip and a promise per
 * lstat, open, read and close cost the main thread several times what the syscalls do (the page cache answers
 * most of them in microseconds). The CPU-heavy part, digesting and compressing, is the sink's (worker threads
 * in BlobWriter), so the walk does not wait for one file's chunks before it reads the next.
 */
class Walker {
  /** (dev, ino) → inode, so every name of a hard-linked file shares one RafsInode */
  readonly #links = new Map<string, RafsInode>()
  /** one read buffer for the whole walk: the sink copies what it keeps before addFile returns */
  readonly #readBuf = Buffer.allocUnsafe(READ_CHUNK)
  readonly #inFlight: InFlight[] = []
  #inFlightBytes = 0
  #sliceStart = performance.now()

  constructor (readonly sink: ChunkSink, readonly withXattrs: boolean, readonly signal: AbortSignal | undefined) {}

  // Depth-first in byte order of names, so the blob's chunk order only depends on the tree.
  async fillDir (path: Buffer, dir: RafsInode): Promise<void> {
    let names: Buffer[]
    try {
      names = readdirSync(path, { encoding: 'buffer' })
    } catch (err) {
      throw new SourceError(`cannot list directory ${show(path)}: ${(err as Error).message}`, { cause: err })
    }
    names.sort(Buffer.compare)
    const slash = Buffer.from('/')
    for (const name of names) {
      this.signal?.throwIfAborted()
      if (performance.now() - this.#sliceStart > SLICE_MS) {
        await new Promise(resolve => setImmediate(resolve))
        this.#sliceStart = performance.now()
      }
      const child = Buffer.concat([path, slash, name])
      let st: BigIntStats
      try {
        st = lstatSync(child, { bigint: true })
      } catch (err) {
        throw new SourceError(`cannot stat ${show(child)}: ${(err as Error).message}`, { cause: err })
      }
      // only a name whose inode has other names can be a hard link (and the key costs two BigInt conversions)
      const key = st.nlink > 1n && !st.isDirectory() ? `${st.dev}:${st.ino}` : undefined
      let inode = key !== undefined ? this.#links.get(key) : undefined
      if (inode === undefined) {
        inode = await this.inodeOf(child, st)
        if (key !== undefined) this.#links.set(key, inode)
        if (inode.type === 'dir') await this.fillDir(child, inode)
      }
      dir.children!.set(nameKey(name), inode)
    }
  }

  /** Waits for the chunks of every file handed to the sink; the first failure is thrown. */
  async settle (): Promise<void> {
    while (this.#inFlight.length > 0) await this.#inFlight.shift()!.done
    this.#inFlightBytes = 0
  }

  async inodeOf (path: Buffer, st: BigIntStats): Promise<RafsInode> {
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
        inode.target = readlinkSync(path, { encoding: 'buffer' })
      } catch (err) {
        throw new SourceError(`cannot read symlink ${show(path)}: ${(err as Error).message}`, { cause: err })
      }
    }
    if (this.withXattrs) inode.xattrs = this.#xattrs(path)
    if (type === 'file') await this.#readFile(path, inode, Number(st.size))
    return inode
  }

  async #readFile (path: Buffer, inode: RafsInode, expected: number): Promise<void> {
    if (expected === 0) return
    let fd: number
    try {
      fd = openSync(path, 'r')
    } catch (err) {
      throw new SourceError(`cannot open file ${show(path)}: ${(err as Error).message}`, { cause: err })
    }
    const buf = this.#readBuf
    let size: number
    try {
      size = readSync(fd, buf, 0, buf.length, 0)
    } catch (err) {
      closeSync(fd)
      throw new SourceError(`cannot read file ${show(path)}: ${(err as Error).message}`, { cause: err })
    }
    // a short read that reaches the size lstat gave is the end: most files take one read and no await
    if (size < buf.length && size >= expected) {
      closeSync(fd)
      this.#track(inode, this.sink.addFile(buf.subarray(0, size)), size)
      inode.size = size
      if (this.#inFlightBytes > WINDOW_BYTES || this.#inFlight.length > WINDOW_FILES) await this.#drainHalf()
      return
    }
    try {
      await this.#readLarge(path, fd, inode, size)
    } finally {
      closeSync(fd)
    }
    if (inode.size !== expected) debug('%s changed size while reading (%d → %d bytes)', show(path), expected, inode.size)
  }

  /**
   * Streams a file whose first `first` bytes are in the read buffer. Waits until the sink has read it all (the
   * buffer and the descriptor are free again then), not until it has stored it: that can overlap the next files.
   */
  async #readLarge (path: Buffer, fd: number, inode: RafsInode, first: number): Promise<void> {
    let size = first
    let readError: unknown
    let taken!: () => void
    const consumed = new Promise<void>(resolve => { taken = resolve })
    const buf = this.#readBuf
    const signal = this.signal
    const pieces = async function * (): AsyncGenerator<Buffer> {
      try {
        let n = first
        while (n > 0) {
          yield buf.subarray(0, n)
          signal?.throwIfAborted()
          try {
            n = readSync(fd, buf, 0, buf.length, size)
          } catch (err) {
            readError = err
            throw err
          }
          // counting as we go: a file that changes under us must still get a size that matches its chunks
          size += n
        }
      } finally {
        taken()
      }
    }
    const chunks = this.sink.addFile(pieces())
    // the sink holds a stream back itself, so it does not count against the window
    this.#track(inode, chunks, 0)
    await Promise.race([consumed, chunks.then(() => {}, () => {})])
    if (readError !== undefined) throw new SourceError(`cannot read file ${show(path)}: ${(readError as Error).message}`, { cause: readError })
    signal?.throwIfAborted()
    inode.size = size
  }

  // Down to half, not just below the limit: waiting for one file at a time would hand the sink one file per
  // batch, since every wait lets it flush the batch it is filling.
  async #drainHalf (): Promise<void> {
    while (this.#inFlightBytes > WINDOW_BYTES / 2 || this.#inFlight.length > WINDOW_FILES / 2) await this.#inFlight.shift()!.done
  }

  #track (inode: RafsInode, chunks: Promise<RafsInode['chunks'] & {}>, bytes: number): void {
    const done = chunks.then((c) => {
      inode.chunks = c
      this.#inFlightBytes -= bytes
    })
    done.catch(() => {}) // thrown when the walk gets to it; a walk that fails earlier leaves it unobserved
    this.#inFlight.push({ done, bytes })
    this.#inFlightBytes += bytes
  }

  #xattrs (path: Buffer): Map<string, Buffer> {
    const out = new Map<string, Buffer>()
    const p = path.toString('utf8')
    // the xattr binding takes UTF-8 strings only; a path that does not survive the round trip cannot be named
    if (!Buffer.from(p, 'utf8').equals(path)) {
      debug('%s: non-UTF-8 path, extended attributes skipped', p)
      return out
    }
    let names: string[]
    try {
      names = listAttributesSync(p)
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
        value = getAttributeSync(p, name)
      } catch (err) {
        throw new SourceError(`cannot read extended attribute ${name} of ${p}: ${(err as Error).message}`, { cause: err })
      }
      if (value !== null) out.set(name, value)
    }
    return out
  }
}
