/**
 * The mount manager of a node: opens an image (registry or local), picks the mode (kernel EROFS when every blob
 * is complete in the cache, FUSE otherwise, or what was asked), wires a fetcher per mount, starts prefetch, and
 * unmounts. Blobs under a kernel mount are pinned so eviction never punches what the kernel reads.
 *
 * @example
 * ```ts
 * const mounts = new MountManager({ cache, fuse: new FuseNativeBackend() }, { workDir: '/var/lib/rafspeer' })
 * await mounts.mount({ source: '127.0.0.1:5000/app:v1-rafs', mountpoint: '/mnt/app' })
 * await mounts.stop()
 * ```
 */
import { mkdir, stat } from 'node:fs/promises'
import { resolve } from 'node:path'
import type { BlobCache } from '../cache/index.js'
import type { ChunkInfo, RafsBlobInfo } from '../rafs/index.js'
import { RegistryClient } from '../registry/index.js'
import type { ChunkSource } from './chunk-source.js'
import { Fetcher } from './fetcher.js'
import type { ComponentLogger, FetchCounters, FetchSample, FetcherInit, Log } from './fetch-types.js'
import { openImage, type OpenedImage } from './image-open.js'
import { kernelModeUnavailable, kernelMount, type KernelMount } from './kernel-mount.js'
import type {
  FuseBackend, FuseMountHandle, FuseMountOptions, ImageFiles, MountInfo, MountMode, MountRequest, MountService, MountStats,
  PrefetchPolicy, PrefetchStatus
} from './mount-types.js'
import { planPrefetch, referencedChunks, runPrefetch } from './prefetch.js'

export class MountError extends Error {
  constructor (readonly code: 'RAFSPEER_ERR_ALREADY_MOUNTED' | 'RAFSPEER_ERR_NOT_MOUNTED' | 'RAFSPEER_ERR_MOUNT' | 'RAFSPEER_ERR_KERNEL_MODE', message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'MountError'
  }
}

export interface MountManagerComponents {
  cache: BlobCache
  fuse: FuseBackend
  logger?: ComponentLogger
  /** sources tried before the image's own (neighbours over P2P), shared by every mount */
  extraSources?: ChunkSource[]
  /** registry clients by plain-HTTP setting (default: one `RegistryClient` each, Docker config auth) */
  clientFor?: (plainHttp: boolean | 'auto') => RegistryClient
}

export interface MountManagerInit {
  /** bootstraps are kept under `<workDir>/bootstraps` */
  workDir: string
  fetch?: FetcherInit
  prefetch?: { policy?: PrefetchPolicy, bandwidthBytesPerSecond?: number }
  defaultMode?: MountMode
  fuse?: FuseMountOptions
  plainHttp?: boolean | 'auto'
  /**
   * A file read sequentially has this many bytes past the read fetched ahead of it, in the background (4 MiB;
   * 0: off). Random reads fetch only what they touch (plus `fetch.amplifyBytes`).
   */
  readaheadBytes?: number
}

export const DEFAULT_READAHEAD_BYTES = 4 << 20
/** files whose read position is remembered for read-ahead, per mount */
const READAHEAD_TRACKED_FILES = 256

/** Where a file's sequential reader is, and up to where read-ahead was asked for. */
interface ReadCursor { end: number, ahead: number }

interface Mounted {
  info: MountInfo
  image: OpenedImage
  /** per blob index: the chunks the image's files reference (what a kernel mount needs present) */
  needed: Map<number, Map<number, ChunkInfo>>
  fetcher: Fetcher | undefined
  fuse: FuseMountHandle | undefined
  kernel: KernelMount | undefined
  prefetch: PrefetchStatus
  prefetchDone: Promise<void>
  abort: AbortController
  reads: number
  readBytes: number
  readErrors: number
  /** nid → its sequential reader's position (insertion order = least recently read first) */
  cursors: Map<number, ReadCursor>
  /** reads answered by the verified-cache fast path (the fetcher never saw them) */
  fastBytes: number
  fastChunks: number
}

const emptyCounters = (): FetchCounters => ({
  bytesBySource: { cache: 0, registry: 0, peer: 0 },
  reads: 0, readBytes: 0, readTimeouts: 0, chunksFromCache: 0, chunksFetched: 0, chunksCopied: 0, chunksAmplified: 0, batches: 0,
  sourceAttempts: 0, retries: 0, singleFlightJoins: 0, verifyFailures: 0, cacheReadFailures: 0, cachePutFailures: 0
})

export class MountManager implements MountService {
  private readonly cache: BlobCache
  private readonly fuse: FuseBackend
  private readonly extraSources: ChunkSource[]
  private readonly log: Log
  private readonly logger: ComponentLogger | undefined
  private readonly clientFor: (plainHttp: boolean | 'auto') => RegistryClient
  private readonly init: MountManagerInit
  private readonly mounts = new Map<string, Mounted>()
  /** mountpoints being mounted or unmounted right now */
  private readonly busy = new Set<string>()

  constructor (components: MountManagerComponents, init: MountManagerInit) {
    this.cache = components.cache
    this.fuse = components.fuse
    this.extraSources = components.extraSources ?? []
    this.logger = components.logger
    this.log = components.logger?.forComponent('rafspeer:mounts') ?? (() => {})
    const clients = new Map<string, RegistryClient>()
    this.clientFor = components.clientFor ?? (plainHttp => {
      const key = String(plainHttp)
      let c = clients.get(key)
      if (c === undefined) clients.set(key, c = new RegistryClient({ plainHttp }))
      return c
    })
    this.init = init
  }

  async mount (req: MountRequest, opts: { signal?: AbortSignal } = {}): Promise<MountInfo> {
    const mountpoint = resolve(req.mountpoint)
    if (this.mounts.has(mountpoint) || this.busy.has(mountpoint)) {
      throw new MountError('RAFSPEER_ERR_ALREADY_MOUNTED', `${mountpoint} is already mounted (or being mounted) by this daemon`)
    }
    this.busy.add(mountpoint)
    try {
      return await this.doMount({ ...req, mountpoint }, opts.signal)
    } finally {
      this.busy.delete(mountpoint)
    }
  }

  private async doMount (req: MountRequest, signal: AbortSignal | undefined): Promise<MountInfo> {
    const requestedMode = req.mode ?? this.init.defaultMode ?? 'auto'
    const st = await stat(req.mountpoint).catch(() => undefined)
    if (st === undefined) await mkdir(req.mountpoint, { recursive: true })
    else if (!st.isDirectory()) throw new MountError('RAFSPEER_ERR_MOUNT', `mountpoint ${req.mountpoint} is not a directory`)
    if (requestedMode === 'kernel') {
      const why = await kernelModeUnavailable()
      if (why !== undefined) throw new MountError('RAFSPEER_ERR_KERNEL_MODE', `--mode kernel: ${why}`)
    }

    const image = await openImage({ cache: this.cache, clientFor: this.clientFor, log: this.log }, {
      source: req.source,
      ...(req.blobDir !== undefined ? { blobDir: req.blobDir } : {}),
      plainHttp: req.plainHttp ?? this.init.plainHttp ?? 'auto',
      ...(signal !== undefined ? { signal } : {})
    }, this.init.workDir)

    const m: Mounted = {
      info: undefined as unknown as MountInfo,
      image,
      needed: referencedChunks(image.reader),
      fetcher: undefined,
      fuse: undefined,
      kernel: undefined,
      prefetch: { state: 'none', chunksTotal: 0, chunksDone: 0, bytesTotal: 0 },
      prefetchDone: Promise.resolve(),
      abort: new AbortController(),
      reads: 0,
      readBytes: 0,
      readErrors: 0,
      cursors: new Map(),
      fastBytes: 0,
      fastChunks: 0
    }
    try {
      const fetcher = new Fetcher({ cache: this.cache, sources: [...this.extraSources, ...image.chunkSources], ...(this.logger !== undefined ? { logger: this.logger } : {}) }, {
        ...this.init.fetch,
        verifyCacheReads: 'once',
        ...(this.init.prefetch?.bandwidthBytesPerSecond !== undefined && this.init.prefetch.bandwidthBytesPerSecond > 0
          ? { prefetchBytesPerSecond: this.init.prefetch.bandwidthBytesPerSecond }
          : {})
      })
      m.fetcher = fetcher
      let mode: 'fuse' | 'kernel' = 'fuse'
      if (requestedMode === 'kernel') {
        // kernel mode asked on an incomplete cache: pull the rest first (at read priority), then mount
        await this.completeBlobs(fetcher, m, signal)
        mode = 'kernel'
      } else if (requestedMode === 'auto' && this.allPresent(m) && await kernelModeUnavailable() === undefined) {
        mode = await this.verifiedComplete(fetcher, m, signal) ? 'kernel' : 'fuse'
      }
      if (mode === 'kernel') {
        await this.mountKernel(m, req.mountpoint)
      } else {
        m.fuse = await this.fuse.mount(req.mountpoint, this.files(m), this.init.fuse)
      }
      m.info = {
        mountpoint: req.mountpoint,
        source: image.source,
        requestedMode,
        mode,
        ...(image.manifestDigest !== undefined ? { manifestDigest: image.manifestDigest } : {}),
        bootstrapDigest: image.bootstrapDigest,
        bootstrapPath: image.bootstrapPath,
        blobs: [],
        prefetch: m.prefetch,
        mountedAt: new Date().toISOString()
      }
      this.mounts.set(req.mountpoint, m)
      this.log('mounted %s at %s (%s mode%s)', image.source, req.mountpoint, mode, image.offline ? ', registry offline' : '')
      if (mode === 'fuse') this.startPrefetch(m, req.prefetch ?? this.init.prefetch?.policy ?? 'table')
      return this.infoOf(m)
    } catch (err) {
      m.abort.abort()
      m.fetcher?.stop()
      await image.close()
      throw err
    }
  }

  /** Every chunk the image references is in the cache. */
  private allPresent (m: Mounted): boolean {
    for (const [bi, chunks] of m.needed) {
      const blobId = m.image.blobs[bi]!.blobId
      for (const ci of chunks.keys()) if (!this.cache.has(blobId, ci)) return false
    }
    return true
  }

  /**
   * Every referenced chunk present and verified by this process (a kernel mount has no per-read check); bad
   * chunks are refetched once.
   */
  private async verifiedComplete (fetcher: Fetcher, m: Mounted, signal: AbortSignal | undefined): Promise<boolean> {
    for (const [bi, chunks] of m.needed) {
      const blob = m.image.blobs[bi]!
      for (const chunk of chunks.values()) {
        signal?.throwIfAborted()
        if (this.cache.isVerified(blob.blobId, chunk.index)) continue
        if (await this.cache.readChunk(blob.blobId, chunk, { verify: 'once' }) === undefined) {
          this.log('blob %s chunk %d missing or bad before a kernel mount: fetching it', blob.blobId, chunk.index)
          await fetcher.ensureChunks(blob, [chunk], { priority: 'read', ...(signal !== undefined ? { signal } : {}) })
          if (!this.cache.isVerified(blob.blobId, chunk.index)) return false
        }
      }
    }
    return true
  }

  private async completeBlobs (fetcher: Fetcher, m: Mounted, signal: AbortSignal | undefined): Promise<void> {
    for (const [bi, chunks] of m.needed) {
      const list = [...chunks.values()].sort((a, b) => a.compressedOffset - b.compressedOffset)
      await fetcher.ensureChunks(m.image.blobs[bi]!, list, { priority: 'read', ...(signal !== undefined ? { signal } : {}) })
    }
    if (!(await this.verifiedComplete(fetcher, m, signal))) {
      throw new MountError('RAFSPEER_ERR_KERNEL_MODE', `--mode kernel: the cache could not hold every chunk of ${m.image.source} (cache full?)`)
    }
  }

  private async mountKernel (m: Mounted, mountpoint: string): Promise<void> {
    const blobs = m.image.blobs
    for (const b of blobs) this.cache.pin(b.blobId)
    try {
      m.kernel = await kernelMount(m.image.bootstrapPath, blobs.map(b => this.cache.blobPath(b.blobId)), mountpoint, { log: this.log })
    } catch (err) {
      for (const b of blobs) this.cache.unpin(b.blobId)
      throw err
    }
  }

  /** FUSE's view of the image: verified cached spans straight from the cache files, the rest through the fetcher. */
  private files (m: Mounted): ImageFiles {
    const { reader, blobs } = m.image
    const image = { reader, blobs }
    return {
      reader,
      read: async (nid, offset, length, buf) => {
        m.reads++
        this.readAhead(m, nid, offset, length)
        try {
          let n = await this.fastRead(m, blobs, nid, offset, length, buf)
          if (n === undefined) {
            const data = await m.fetcher!.read(image, nid, offset, length)
            n = data.copy(buf, 0)
          }
          m.readBytes += n
          return n
        } catch (err) {
          m.readErrors++
          throw err
        }
      }
    }
  }

  /**
   * Sequential read detection: a read starting where the file's last one ended moves its cursor, and once the
   * cursor comes within half a window of what was fetched ahead, the next window of the file's missing chunks is
   * fetched in the background (at read priority, not counted against the prefetch cap).
   */
  private readAhead (m: Mounted, nid: number, offset: number, length: number): void {
    const window = this.init.readaheadBytes ?? DEFAULT_READAHEAD_BYTES
    const fetcher = m.fetcher
    if (window <= 0 || fetcher === undefined || m.kernel !== undefined) return
    const end = offset + length
    const cur = m.cursors.get(nid)
    // re-inserted below: the map's order is least recently read first
    if (cur !== undefined) m.cursors.delete(nid)
    let c: ReadCursor
    if (cur !== undefined && offset === cur.end) c = cur
    else if (offset === 0) c = { end: 0, ahead: 0 }
    else c = { end, ahead: Number.MAX_SAFE_INTEGER } // random until the next read continues this one
    m.cursors.set(nid, c)
    if (m.cursors.size > READAHEAD_TRACKED_FILES) m.cursors.delete(m.cursors.keys().next().value!)
    if (c.ahead === Number.MAX_SAFE_INTEGER) { c.ahead = end; return }
    c.end = end
    c.ahead = Math.max(c.ahead, end)
    if (c.ahead - end > window / 2) return
    const from = c.ahead
    let pieces
    try {
      pieces = m.image.reader.mapRange(nid, from, end + window - from)
    } catch {
      return
    }
    if (pieces.length === 0) return
    const last = pieces[pieces.length - 1]!
    c.ahead = last.fileOffset + last.length
    const byBlob = new Map<number, ChunkInfo[]>()
    for (const p of pieces) {
      const blob = m.image.blobs[p.chunk.blobIndex]
      if (blob === undefined || this.cache.has(blob.blobId, p.chunk.index)) continue
      const list = byBlob.get(p.chunk.blobIndex) ?? []
      list.push(p.chunk)
      byBlob.set(p.chunk.blobIndex, list)
    }
    for (const [bi, chunks] of byBlob) {
      fetcher.ensureChunks(m.image.blobs[bi]!, chunks, { priority: 'read', signal: m.abort.signal }).catch((err: unknown) => {
        this.log('read-ahead of %d chunks of nid %d failed: %s', chunks.length, nid, (err as Error).message)
      })
    }
  }

  /** undefined when some chunk of the range is not verified in the cache (the fetcher then serves it). */
  private async fastRead (m: Mounted, blobs: RafsBlobInfo[], nid: number, offset: number, length: number, buf: Buffer): Promise<number | undefined> {
    const pieces = m.image.reader.mapRange(nid, offset, length)
    if (pieces.length === 0) return 0
    for (const p of pieces) if (!this.cache.isVerified(blobs[p.chunk.blobIndex]!.blobId, p.chunk.index)) return undefined
    const start = pieces[0]!.fileOffset
    let i = 0
    while (i < pieces.length) {
      // one pread per run of pieces contiguous in one blob's uncompressed view
      const first = pieces[i]!
      const blobId = blobs[first.chunk.blobIndex]!.blobId
      const viewStart = first.chunk.uncompressedOffset + first.chunkOffset
      let len = first.length
      let j = i + 1
      while (j < pieces.length) {
        const p = pieces[j]!
        if (p.chunk.blobIndex !== first.chunk.blobIndex || p.chunk.uncompressedOffset + p.chunkOffset !== viewStart + len) break
        len += p.length
        j++
      }
      if (!(await this.cache.readVerifiedInto(blobId, viewStart, len, buf, first.fileOffset - start))) return undefined
      i = j
    }
    const last = pieces[pieces.length - 1]!
    const n = last.fileOffset + last.length - start
    m.fastBytes += n
    m.fastChunks += pieces.length
    return n
  }

  private startPrefetch (m: Mounted, policy: PrefetchPolicy): void {
    if (policy === 'none') return
    m.prefetchDone = (async () => {
      try {
        const plan = await planPrefetch(m.image.reader, policy, this.log)
        await runPrefetch(m.fetcher!, m.image.reader, plan, m.prefetch, { signal: m.abort.signal, log: this.log })
        if (m.prefetch.state === 'done' && m.prefetch.chunksTotal > 0) this.log('prefetch of %s done: %d chunks', m.info.mountpoint, m.prefetch.chunksTotal)
      } catch (err) {
        m.prefetch.state = 'failed'
        m.prefetch.error = (err as Error).message
        this.log('prefetch of %s failed: %s', m.info.mountpoint, (err as Error).message)
      }
    })()
  }

  async unmount (mountpoint: string): Promise<void> {
    const mp = resolve(mountpoint)
    const m = this.mounts.get(mp)
    if (m === undefined) throw new MountError('RAFSPEER_ERR_NOT_MOUNTED', `${mp} is not mounted by this daemon`)
    if (this.busy.has(mp)) throw new MountError('RAFSPEER_ERR_MOUNT', `${mp} is being unmounted`)
    this.busy.add(mp)
    try {
      m.abort.abort()
      await m.prefetchDone
      if (m.fuse !== undefined) await m.fuse.unmount()
      if (m.kernel !== undefined) {
        try {
          // a reader that just closed its files can leave the mount busy for a moment
          for (let i = 0; ; i++) {
            try { await m.kernel.unmount(); break } catch (err) { if (i >= 10) throw err }
            await new Promise(resolve => setTimeout(resolve, 100))
          }
        } catch {
          // busy: detach it now; it stays pinned until this process ends, since the kernel may still read the blobs
          await m.kernel.unmount({ lazy: true })
          this.log('%s was busy: unmounted lazily, its blobs stay pinned', mp)
          m.kernel = undefined
        }
        if (m.kernel !== undefined) for (const b of m.image.blobs) this.cache.unpin(b.blobId)
      }
      m.fetcher?.stop()
      await m.image.close()
      this.mounts.delete(mp)
      this.log('unmounted %s', mp)
    } finally {
      this.busy.delete(mp)
    }
  }

  /** Unmounts everything (SIGTERM, daemon stop). */
  async stop (): Promise<void> {
    const all = [...this.mounts.keys()]
    const results = await Promise.allSettled(all.map(async mp => await this.unmount(mp)))
    results.forEach((r, i) => { if (r.status === 'rejected') this.log.error?.('unmounting %s: %s', all[i], (r.reason as Error).message) })
  }

  private infoOf (m: Mounted): MountInfo {
    return {
      ...m.info,
      blobs: m.image.blobs.map((b, bi) => {
        const needed = m.needed.get(bi) ?? new Map<number, ChunkInfo>()
        let present = 0
        for (const ci of needed.keys()) if (this.cache.has(b.blobId, ci)) present++
        return { blobId: b.blobId, chunkCount: b.chunkCount, chunksReferenced: needed.size, chunksPresent: present, complete: present === needed.size }
      }),
      prefetch: { ...m.prefetch }
    }
  }

  get (mountpoint: string): MountInfo | undefined {
    const m = this.mounts.get(resolve(mountpoint))
    return m === undefined ? undefined : this.infoOf(m)
  }

  list (): MountInfo[] { return [...this.mounts.values()].map(m => this.infoOf(m)) }

  stats (): MountStats[] {
    return [...this.mounts.values()].map(m => {
      const fetch = m.fetcher?.counters ?? emptyCounters()
      fetch.bytesBySource.cache += m.fastBytes
      fetch.chunksFromCache += m.fastChunks
      return {
        mountpoint: m.info.mountpoint,
        source: m.info.source,
        mode: m.info.mode,
        reads: m.reads,
        readBytes: m.readBytes,
        readErrors: m.readErrors,
        fetch,
        prefetch: { ...m.prefetch }
      }
    })
  }

  drainFetchSamples (): Array<FetchSample & { mountpoint: string }> {
    const out: Array<FetchSample & { mountpoint: string }> = []
    for (const m of this.mounts.values()) {
      for (const s of m.fetcher?.drainSamples() ?? []) out.push({ ...s, mountpoint: m.info.mountpoint })
    }
    return out
  }

  /** Resolves when the mount's prefetch has finished (done, failed or cancelled). */
  async prefetchSettled (mountpoint: string): Promise<PrefetchStatus> {
    const m = this.mounts.get(resolve(mountpoint))
    if (m === undefined) throw new MountError('RAFSPEER_ERR_NOT_MOUNTED', `${mountpoint} is not mounted by this daemon`)
    await m.prefetchDone
    return { ...m.prefetch }
  }
}
