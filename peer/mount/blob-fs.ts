/**
 * The lazy-kernel mode's blob file system: one small FUSE file system per daemon (`<workDir>/blobfs`) whose root
 * holds a `<blob-id>.blob.data` file per blob in use, the blob's uncompressed view. The kernel's EROFS mounts an
 * image's bootstrap with these files as its devices, so every lookup, readdir, stat and page-cache hit is the
 * kernel's own; only view bytes the kernel does not have reach the FUSE server.
 *
 * The server is the native addon's (`native.ts`): worker threads answer a READ whose 4 KiB blocks are all "ready"
 * straight from the cache file (one pread, no hashing, no event loop); any other READ is a miss handed here, where
 * the blob's first attached mount reads the range through its fetcher (cache → neighbours → registry, each chunk
 * checked against its digest) into a zeroed buffer that answers it. "Ready" is exactly what the cache told its
 * `ChunkWatcher`: chunks written or read back matching their digest by this process, and no longer once an
 * eviction or a failed check clears them (the native side waits for fast reads of those blocks before the cache
 * punches its hole). A chunk whose cached bytes were flipped while the daemon was down is therefore never served:
 * its first read after the restart is a miss, hashed once by the fetcher.
 *
 * @example
 * ```ts
 * const fs = new BlobFs({ cache, logger }, { mountpoint: '/var/lib/rafspeer/blobfs' })
 * const file = await fs.attach(blob, views.chunks(bi), { read: (off, len, buf, signal) => ... })
 * // mount(bootstrap, '/mnt/app', 'erofs', MS_RDONLY, `device=${file.path}`)
 * file.detach(); await fs.stop()
 * ```
 */
import { mkdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { RafspeerError, describeError, errorCode, type ComponentLogger, type Logger } from '../../base/index.js'
import type { BlobCache } from '../../cache/index.js'
import type { ChunkInfo, RafsBlobInfo } from '../../rafs/index.js'
import { mountsAt } from './fuse-backend.js'
import { loadNative, nativeUnavailable, type BlobServer, type NativeAddon } from './native.js'

const EIO = 5
const ETIMEDOUT = 110
const BLOCK = 4096
const aligned = (n: number): number => Math.ceil(n / BLOCK) * BLOCK

/** Reads view bytes of one blob for a miss: fills `buf` (zeroed, exactly `length` bytes) or rejects. */
export interface BlobFileReader {
  read: (offset: number, length: number, buf: Buffer) => Promise<void>
  /**
   * The kernel asked for view bytes of the blob no READ had asked for since it was attached, served from the cache
   * or not (an access log's source: hits of ready blocks never reach `read`). Told to every reader of the blob.
   */
  accessed?: (offset: number, length: number) => void
}

export interface BlobFsInit {
  /** where the file system is mounted (created if missing) */
  mountpoint: string
  /** native worker threads answering FUSE (default 4) */
  threads?: number
  /** largest READ negotiated with the kernel (default 1 MiB) */
  maxReadBytes?: number
  /** FUSE files opened with direct I/O instead of keeping their page cache (default false) */
  directIo?: boolean
}

export interface BlobFsStats {
  files: number
  requests: number
  fastReads: number
  fastBytes: number
  misses: number
  missBytes: number
  missErrors: number
  /** ranges copied into the kernel's page cache ahead of their reads (`BlobFile.warm`) */
  pushes: number
  pushBytes: number
  readSizes: number[]
}

/** One blob's file, while some mount uses it. */
export interface BlobFile {
  /** the file's path: an EROFS `device=` */
  readonly path: string
  /**
   * Puts the range's verified blocks into the kernel's page cache of the file, in the background: for data a
   * reader is about to want (a prefetch table), so its reads, and the readahead the kernel starts around them,
   * do not become READs; in particular not a READ that also asks for the next, not yet fetched, chunks and
   * waits for them.
   */
  warm: (offset: number, length: number) => void
  /** the mount no longer reads it; the last detach forgets the blob's readiness (the file itself stays, unread) */
  detach: () => void
}

interface Served {
  index: number
  blob: RafsBlobInfo
  readers: BlobFileReader[]
  unwatch: (() => void) | undefined
}

/** The blob file system cannot run here (no addon, no FUSE) or was stopped. */
export class BlobFsError extends RafspeerError<'RAFSPEER_ERR_KERNEL_MODE'> {
  constructor (message: string, options?: { cause?: unknown }) { super('RAFSPEER_ERR_KERNEL_MODE', message, options) }
}

export class BlobFs {
  private readonly cache: BlobCache
  private readonly log: Logger | undefined
  private readonly init: BlobFsInit
  private server: BlobServer | undefined
  private starting: Promise<BlobServer> | undefined
  private readonly served = new Map<string, Served>()
  private readonly byIndex: Served[] = []
  private missErrors = 0
  private stopped = false

  constructor (components: { cache: BlobCache, logger?: ComponentLogger }, init: BlobFsInit) {
    this.cache = components.cache
    this.log = components.logger?.forComponent('rafspeer:blobfs')
    this.init = init
  }

  get mountpoint (): string { return this.init.mountpoint }

  /** Why this host cannot run the lazy-kernel mode's blob files, or undefined. */
  static unavailable (): string | undefined {
    return nativeUnavailable()
  }

  private async ensureStarted (): Promise<BlobServer> {
    if (this.server !== undefined) return this.server
    if (this.stopped) throw new BlobFsError('the blob file system was stopped')
    this.starting ??= this.start().finally(() => { this.starting = undefined })
    return await this.starting
  }

  private async start (): Promise<BlobServer> {
    const native = loadNative()
    if (native === undefined) throw new BlobFsError(`lazy-kernel mode: ${nativeUnavailable() ?? 'no native addon'}`)
    const mp = this.init.mountpoint
    await clearStale(native, mp, this.log)
    await mkdir(mp, { recursive: true })
    const server = new native.BlobServer({
      mountpoint: mp,
      fsName: 'rafspeer-blobs',
      threads: this.init.threads ?? 4,
      maxReadBytes: this.init.maxReadBytes ?? 1 << 20,
      directIo: this.init.directIo ?? false,
      onMiss: (id, file, offset, length) => { this.miss(id, file, offset, length) },
      onAccess: (file, offset, length) => { this.accessed(file, offset, length) }
    })
    try {
      server.start()
    } catch (err) {
      throw new BlobFsError(`lazy-kernel mode: cannot start the blob file system at ${mp}: ${(err as Error).message}`, { cause: err })
    }
    this.server = server
    this.log?.info('blob file system up at %s', mp)
    return server
  }

  /**
   * Serves `blob` (registered in the cache) as `<blob-id>.blob.data` with `reader` answering its misses;
   * `chunks` are the blob's chunks (any order), to tell the server what the cache already holds verified.
   */
  async attach (blob: RafsBlobInfo, chunks: ChunkInfo[], reader: BlobFileReader): Promise<BlobFile> {
    const server = await this.ensureStarted()
    let s = this.served.get(blob.blobId)
    if (s === undefined) {
      const index = server.addFile(`${blob.blobId}.blob.data`, this.cache.blobPath(blob.blobId), blob.uncompressedSize)
      s = { index, blob, readers: [], unwatch: undefined }
      this.served.set(blob.blobId, s)
      this.byIndex[index] = s
    }
    const served = s
    if (served.unwatch === undefined) {
      // watch first, then scan: a chunk verified in between is told twice, which is harmless
      served.unwatch = this.cache.watch(blob.blobId, {
        verified: (offset, length) => { server.setReady(served.index, offset, length) },
        cleared: (offset, length) => { server.clearReady(served.index, offset, length) }
      })
      let runStart = -1
      let runEnd = -1
      const flush = (): void => { if (runStart >= 0) server.setReady(served.index, runStart, runEnd - runStart) }
      for (const c of [...chunks].sort((a, b) => a.uncompressedOffset - b.uncompressedOffset)) {
        if (!this.cache.isVerified(blob.blobId, c.index)) continue
        const end = c.uncompressedOffset + aligned(c.uncompressedSize)
        if (c.uncompressedOffset === runEnd) { runEnd = end; continue }
        flush()
        runStart = c.uncompressedOffset
        runEnd = end
      }
      flush()
    }
    served.readers.push(reader)
    let attached = true
    return {
      path: join(this.init.mountpoint, `${blob.blobId}.blob.data`),
      warm: (offset, length) => {
        const start = Math.floor(offset / BLOCK) * BLOCK
        const end = Math.min(aligned(offset + length), aligned(blob.uncompressedSize))
        if (attached && !this.stopped && this.server !== undefined && end > start) this.server.push(served.index, start, end - start)
      },
      detach: () => {
        if (!attached) return
        attached = false
        const i = served.readers.indexOf(reader)
        if (i >= 0) served.readers.splice(i, 1)
        if (served.readers.length === 0 && served.unwatch !== undefined) {
          // nobody keeps this file's readiness true any more: forget it (a miss with no reader answers EIO)
          served.unwatch()
          served.unwatch = undefined
          if (this.server !== undefined) {
            server.clearReady(served.index, 0, aligned(blob.uncompressedSize))
            // the next mount of the blob records its own accesses from the first READ on
            server.forgetAccess(served.index)
          }
        }
      }
    }
  }

  private accessed (file: number, offset: number, length: number): void {
    for (const r of this.byIndex[file]?.readers ?? []) r.accessed?.(offset, length)
  }

  private miss (id: number, file: number, offset: number, length: number): void {
    const server = this.server
    if (server === undefined) return
    const s = this.byIndex[file]
    const reader = s?.readers[0]
    if (reader === undefined) {
      this.missErrors++
      server.reply(id, null, EIO)
      return
    }
    const buf = Buffer.alloc(length)
    reader.read(offset, length, buf).then(
      () => { server.reply(id, buf, 0) },
      (err: unknown) => {
        this.missErrors++
        const code = errorCode(err)
        this.log?.warn('blob %s: read of %d bytes at %d failed: %s', s!.blob.blobId, length, offset, describeError(err))
        server.reply(id, null, code === 'RAFSPEER_ERR_READ_TIMEOUT' ? ETIMEDOUT : EIO)
      })
  }

  stats (): BlobFsStats {
    const st = this.server?.stats()
    return {
      files: this.served.size,
      requests: st?.requests ?? 0,
      fastReads: st?.fastReads ?? 0,
      fastBytes: st?.fastBytes ?? 0,
      misses: st?.misses ?? 0,
      missBytes: st?.missBytes ?? 0,
      missErrors: this.missErrors,
      pushes: st?.pushes ?? 0,
      pushBytes: st?.pushBytes ?? 0,
      readSizes: st?.readSizes ?? []
    }
  }

  /** Unmounts the file system and stops its threads (image mounts over it must be gone first). */
  async stop (): Promise<void> {
    this.stopped = true
    await this.starting?.catch(() => {})
    for (const s of this.served.values()) { s.unwatch?.(); s.unwatch = undefined }
    const server = this.server
    this.server = undefined
    if (server !== undefined) {
      server.stop()
      this.log?.info('blob file system at %s stopped', this.init.mountpoint)
    }
  }
}

/** A blob file system left by a daemon that died: nothing serves it, so it goes (its EROFS users read EIO). */
async function clearStale (native: NativeAddon, mp: string, log: Logger | undefined): Promise<void> {
  const st = await stat(mp).catch((err: NodeJS.ErrnoException) => err)
  const dead = !(st instanceof Error) ? false : st.code === 'ENOTCONN' || st.code === 'ECONNABORTED'
  const mounted = (await mountsAt(mp).catch(() => [])).length > 0
  if (!dead && !mounted) return
  log?.warn('clearing the blob file system at %s left by an earlier process', mp)
  for (let i = 0; i < 8; i++) {
    try { native.umount(mp, native.MNT_DETACH) } catch { break }
  }
}
