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
import { access, mkdir, stat } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { delay, describeError, type ComponentLogger, type Logger } from '../../base/index.js'
import type { BlobCache } from '../../cache/index.js'
import { dataProfile, type ChunkInfo } from '../../rafs/index.js'
import { RegistryClient } from '../../registry/index.js'
import { Fetcher, type ChunkSource, type FetchCounters, type FetchSample, type FetcherInit, type FlightActivity, type PrefetchAdvisor } from '../fetch/index.js'
import { AccessLog } from './access-log.js'
import { BlobFs, type BlobFile, type BlobFsInit, type BlobFsStats } from './blob-fs.js'
import { BlobViews } from './blob-view.js'
import { openImage, type OpenedImage } from './image-open.js'
import { closingAlso, ownClient } from './mount-credentials.js'
import { MountError } from './mount-error.js'
import { clearStaleMount, kernelModeUnavailable, kernelMount, type KernelMount } from './kernel-mount.js'
import { planPrefetch, referencedChunks, runPrefetch } from './prefetch.js'
import { DEFAULT_READAHEAD_BYTES, ReadAhead } from './read-ahead.js'
import type {
  AccessList, FuseBackend, FuseMountHandle, FuseMountOptions, ImageFiles, MountInfo, MountMode, MountRequest, MountService, MountStats,
  PrefetchPolicy, PrefetchStatus
} from './types.js'

export { MountError, type MountErrorCode } from './mount-error.js'

export interface MountManagerComponents {
  cache: BlobCache
  fuse: FuseBackend
  logger?: ComponentLogger
  /** sources tried before the image's own (neighbours over P2P), shared by every mount */
  extraSources?: ChunkSource[]
  /** told which chunks every mount's fetcher is getting (the node's PENDING for its neighbours) */
  fetchActivity?: FlightActivity
  /** a swarm's prefetch order (blob-level directory: `P2PNode.prefetchAdvisor`); absent: each plan in its own order */
  prefetchAdvisor?: PrefetchAdvisor
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
  /** the lazy-kernel mode's blob file system (`<workDir>/blobfs`): worker threads, READ size, direct I/O */
  lazyKernel?: Omit<BlobFsInit, 'mountpoint'>
  /**
   * erofs-lazy reads a blob complete and verified at the mount straight from its cache file (default true); false
   * serves every blob as a blob file, complete or not (the warm bench's measure of the blob files' fast path)
   */
  completeBlobsFromCache?: boolean
  /**
   * EROFS reads the cache files with direct I/O (its `directio` option) in a file-backed mount whose blobs the
   * kernel reads straight from the cache (kernel mode; erofs-lazy when every blob was complete at the mount): `auto` (default)
   * where at least {@link DIRECT_READ_LARGE_SHARE} of the image's file bytes are in files of 1 MiB or more (large
   * files read at native speed; small files lose the blob's readahead of their neighbours, `kernel-mount.ts`)
   */
  directRead?: 'auto' | 'on' | 'off'
}

/**
 * `directRead: 'auto'` mounts an image with direct reads when at least this share of its file bytes are in large
 * files: a tar of small files runs 2.6x native buffered and 1.0x direct, 1 MiB reads of large files 0.55x buffered
 * and 1.0–1.1x direct (bench/RESULTS.md), and per byte a small file costs native reads several times what a large
 * one does, so small files decide unless they are a small part of the bytes
 */
export const DIRECT_READ_LARGE_SHARE = 0.8

/** bytes past a blob file's last miss that still count as its sequential reader's next read */
const BLOB_READAHEAD_SLACK = 1 << 20
// what one mount's prefetch list may put in the page cache of its blob files ahead of the reads (see `warmer`)
const WARM_MAX_BYTES = 256 << 20

interface Mounted {
  info: MountInfo
  image: OpenedImage
  /** per blob index: the chunks the image's files reference (what a kernel mount needs present) */
  needed: Map<number, Map<number, ChunkInfo>>
  fetcher: Fetcher
  fuse: FuseMountHandle | undefined
  /** the EROFS mount: of the cache files (kernel mode) or of the blob file system's files (erofs-lazy) */
  kernel: KernelMount | undefined
  /** erofs-lazy: per blob index, the blob file system's file the EROFS mount reads; undefined where it reads the cache file */
  blobFiles: Array<BlobFile | undefined>
  /** blobs pinned in the cache while the kernel reads their cache files (kernel mode: all; erofs-lazy: those complete at the mount) */
  pinned: string[]
  prefetch: PrefetchStatus
  prefetchDone: Promise<void>
  abort: AbortController
  readAhead: ReadAhead
  /** the files read so far, in first-read order (`rafspeer access-list`) */
  access: AccessLog
  reads: number
  readBytes: number
  readErrors: number
}

export class MountManager implements MountService {
  private readonly cache: BlobCache
  private readonly fuse: FuseBackend
  private readonly extraSources: ChunkSource[]
  private readonly fetchActivity: FlightActivity | undefined
  private readonly prefetchAdvisor: PrefetchAdvisor | undefined
  private readonly log: Logger | undefined
  private readonly logger: ComponentLogger | undefined
  private readonly clientFor: (plainHttp: boolean | 'auto') => RegistryClient
  private readonly init: MountManagerInit
  private readonly mounts = new Map<string, Mounted>()
  /** `directRead: 'auto'`'s answer per bootstrap digest (the walk is done once per image) */
  private readonly directReads = new Map<string, boolean>()
  /** mountpoints being mounted or unmounted right now */
  private readonly busy = new Set<string>()
  /** the lazy-kernel mode's blob files, started with its first mount */
  private blobFs: BlobFs | undefined

  constructor (components: MountManagerComponents, init: MountManagerInit) {
    this.cache = components.cache
    this.fuse = components.fuse
    this.extraSources = components.extraSources ?? []
    this.fetchActivity = components.fetchActivity
    this.prefetchAdvisor = components.prefetchAdvisor
    this.logger = components.logger
    this.log = components.logger?.forComponent('rafspeer:mounts')
    const clients = new Map<string, RegistryClient>()
    this.clientFor = components.clientFor ?? (plainHttp => {
      const key = String(plainHttp)
      let c = clients.get(key)
      if (c === undefined) clients.set(key, c = new RegistryClient({ plainHttp, ...(this.logger !== undefined ? { logger: this.logger } : {}) }))
      return c
    })
    this.init = init
  }

  async mount (req: MountRequest, opts: { signal?: AbortSignal } = {}): Promise<MountInfo> {
    const mountpoint = resolve(req.mountpoint)
    if (this.busy.has(mountpoint)) throw busy(mountpoint)
    if (this.mounts.has(mountpoint)) throw new MountError('RAFSPEER_ERR_ALREADY_MOUNTED', `${mountpoint} is already mounted by this daemon`)
    this.busy.add(mountpoint)
    try {
      return await this.doMount({ ...req, mountpoint }, opts.signal)
    } finally {
      this.busy.delete(mountpoint)
    }
  }

  private async doMount (req: MountRequest, signal: AbortSignal | undefined): Promise<MountInfo> {
    const requestedMode = req.mode ?? this.init.defaultMode ?? 'auto'
    // where a mount's time goes, in its log line: a container waits for all of it
    const started = performance.now()
    let lapAt = started
    const laps: string[] = []
    const lap = (step: string): void => {
      const now = performance.now()
      laps.push(`${step} ${Math.round(now - lapAt)}`)
      lapAt = now
    }
    const st = await stat(req.mountpoint).catch(() => undefined)
    if (st === undefined) await mkdir(req.mountpoint, { recursive: true })
    else if (!st.isDirectory()) throw new MountError('RAFSPEER_ERR_MOUNT', `mountpoint ${req.mountpoint} is not a directory`)
    if (requestedMode === 'kernel' || requestedMode === 'erofs-lazy') {
      const why = requestedMode === 'kernel' ? await kernelModeUnavailable() : await erofsLazyUnavailable()
      if (why !== undefined) throw new MountError('RAFSPEER_ERR_KERNEL_MODE', `--mode ${requestedMode}: ${why}`)
    }

    // credentials of this mount: a registry client of its own, so neither they nor their tokens serve other mounts
    const own = req.credentials === undefined || req.blobDir !== undefined ? undefined : ownClient(req.source, req.credentials)
    const clientFor = own === undefined ? this.clientFor : (plainHttp: boolean | 'auto') => own(plainHttp)
    let image: OpenedImage
    try {
      image = await openImage({ cache: this.cache, clientFor, ...(this.logger !== undefined ? { logger: this.logger } : {}) }, {
        source: req.source,
        ...(req.blobDir !== undefined ? { blobDir: req.blobDir } : {}),
        plainHttp: req.plainHttp ?? this.init.plainHttp ?? 'auto',
        ...(signal !== undefined ? { signal } : {}),
        onStep: lap
      }, this.init.workDir)
    } catch (err) {
      await own?.close()
      throw err
    }
    if (own !== undefined) image = closingAlso(image, own.close)

    const fetcher = new Fetcher({ cache: this.cache, sources: [...this.extraSources, ...image.chunkSources], ...(this.logger !== undefined ? { logger: this.logger } : {}) }, {
      ...this.init.fetch,
      ...(this.fetchActivity !== undefined ? { activity: this.fetchActivity } : {}),
      verifyCacheReads: 'once',
      ...(this.init.prefetch?.bandwidthBytesPerSecond !== undefined && this.init.prefetch.bandwidthBytesPerSecond > 0
        ? { prefetchBytesPerSecond: this.init.prefetch.bandwidthBytesPerSecond }
        : {})
    })
    const abort = new AbortController()
    const m: Mounted = {
      info: undefined as unknown as MountInfo,
      image,
      needed: referencedChunks(image.reader),
      fetcher,
      fuse: undefined,
      kernel: undefined,
      blobFiles: [],
      pinned: [],
      prefetch: { state: 'none', chunksTotal: 0, chunksDone: 0, bytesTotal: 0, bytesDone: 0 },
      prefetchDone: Promise.resolve(),
      abort,
      readAhead: new ReadAhead({ fetcher, image, ...(this.logger !== undefined ? { logger: this.logger } : {}) },
        { windowBytes: this.init.readaheadBytes ?? DEFAULT_READAHEAD_BYTES, signal: abort.signal }),
      access: new AccessLog(image.reader),
      reads: 0,
      readBytes: 0,
      readErrors: 0
    }
    lap('chunk table')
    try {
      let mode: MountInfo['mode'] = requestedMode === 'auto' ? 'fuse' : requestedMode
      if (requestedMode === 'kernel') {
        // kernel mode asked on an incomplete cache: pull the rest first (at read priority), then mount
        await this.completeBlobs(fetcher, m, signal)
      } else if (requestedMode === 'auto') {
        // kernel when complete; else the kernel from the first read where it can (erofs-lazy); else per-file FUSE
        if (this.allPresent(m) && await kernelModeUnavailable() === undefined && await this.verifiedComplete(fetcher, m, signal)) mode = 'kernel'
        else if (await erofsLazyUnavailable() === undefined) mode = 'erofs-lazy'
      }
      if (mode !== 'fuse') await clearStaleMount(req.mountpoint, join(this.init.workDir, 'bootstraps'), this.log)
      lap('mode')
      if (mode === 'kernel') {
        await this.mountKernel(m, req.mountpoint)
      } else if (mode === 'erofs-lazy') {
        await this.mountLazy(m, req.mountpoint)
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
        mountedAt: new Date().toISOString(),
        ...(m.kernel !== undefined ? { directRead: m.kernel.directRead } : {})
      }
      lap(`${mode} mount`)
      this.mounts.set(req.mountpoint, m)
      this.log?.info('mounted %s at %s (%s mode%s) in %d ms (%s)', image.source, req.mountpoint, mode, image.offline ? ', registry offline' : '',
        Math.round(performance.now() - started), laps.join(', '))
      if (mode !== 'kernel') this.startPrefetch(m, req.prefetch ?? this.init.prefetch?.policy ?? 'table')
      return this.infoOf(m)
    } catch (err) {
      m.abort.abort()
      m.fetcher.stop()
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
          this.log?.info('blob %s chunk %d missing or bad before a kernel mount: fetching it', blob.blobId, chunk.index)
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
    for (const b of blobs) this.pin(m, b.blobId)
    try {
      const directRead = await this.directRead(m)
      m.kernel = await kernelMount(m.image.bootstrapPath, blobs.map(b => this.cache.blobPath(b.blobId)), mountpoint, { directRead, ...(this.logger !== undefined ? { logger: this.logger } : {}) })
    } catch (err) {
      this.unpinAll(m)
      throw err
    }
  }

  private pin (m: Mounted, blobId: string): void {
    this.cache.pin(blobId)
    m.pinned.push(blobId)
  }

  private unpinAll (m: Mounted): void {
    for (const id of m.pinned.splice(0)) this.cache.unpin(id)
  }

  /** Every chunk of blob `bi` the image's files reference is in the cache, verified by this process. */
  private blobVerified (m: Mounted, bi: number): boolean {
    const needed = m.needed.get(bi)
    if (needed === undefined || needed.size === 0) return false
    const blobId = m.image.blobs[bi]!.blobId
    for (const ci of needed.keys()) if (!this.cache.isVerified(blobId, ci)) return false
    return true
  }

  /** Whether `m`'s file-backed EROFS mount reads its blob files with direct I/O (`directRead`). */
  private async directRead (m: Mounted): Promise<boolean> {
    const how = this.init.directRead ?? 'auto'
    if (how !== 'auto') return how === 'on'
    const known = this.directReads.get(m.image.bootstrapDigest)
    if (known !== undefined) return known
    const profile = await dataProfile(m.image.reader, { largeShareAtLeast: DIRECT_READ_LARGE_SHARE, signal: m.abort.signal })
    const direct = profile.largeShare >= DIRECT_READ_LARGE_SHARE
    this.log?.debug('%s: %s of the file bytes in files of 1 MiB or more%s: %s reads', m.image.source,
      `${(profile.largeShare * 100).toFixed(0)}%`, profile.partial ? ' (or less: the walk stopped early)' : '', direct ? 'direct' : 'buffered')
    this.directReads.set(m.image.bootstrapDigest, direct)
    return direct
  }

  /**
   * erofs-lazy: the kernel's EROFS over the blob file system's files. A miss of a blob file is a view range, mapped
   * to chunk pieces (`BlobViews`) and read through this mount's fetcher under the read's one deadline; misses that
   * follow each other in a blob read ahead in blob order, which is the order the image's files were built in.
   */
  private async mountLazy (m: Mounted, mountpoint: string): Promise<void> {
    this.blobFs ??= new BlobFs({ cache: this.cache, ...(this.logger !== undefined ? { logger: this.logger } : {}) },
      { ...this.init.lazyKernel, mountpoint: join(this.init.workDir, 'blobfs') })
    const views = new BlobViews(m.image.reader)
    const image = { reader: views, blobs: m.image.blobs }
    const ahead = new ReadAhead({ fetcher: m.fetcher, image, ...(this.logger !== undefined ? { logger: this.logger } : {}) },
      { windowBytes: this.init.readaheadBytes ?? DEFAULT_READAHEAD_BYTES, signal: m.abort.signal, slackBytes: BLOB_READAHEAD_SLACK })
    try {
      for (const [bi, blob] of m.image.blobs.entries()) {
        // a blob complete and verified now is read by the kernel straight from its cache file, pinned until the
        // unmount: no FUSE round trip, no page cache of a blob file besides the cache file's own. (FUSE passthrough
        // would do the same through the blob file, but a FUSE mount with passthrough is a stacked file system, and
        // Linux 6.18 refuses to back a file-backed EROFS with a file of one.)
        if (this.init.completeBlobsFromCache !== false && this.blobVerified(m, bi)) {
          this.pin(m, blob.blobId)
          m.blobFiles.push(undefined)
          continue
        }
        m.blobFiles.push(await this.blobFs.attach(blob, views.chunks(bi), {
          read: async (offset, length, buf) => {
            m.reads++
            try {
              const pieces = views.mapRange(bi, offset, length)
              ahead.observe(bi, offset, length)
              if (pieces.length > 0) await m.fetcher.readPieces(image, pieces, buf.subarray(pieces[0]!.fileOffset - offset), { signal: m.abort.signal })
              m.readBytes += length
            } catch (err) {
              m.readErrors++
              throw err
            }
          },
          accessed: (offset, length) => {
            for (const p of views.mapRange(bi, offset, length)) m.access.chunkRead(bi, p.chunk.index)
          }
        }))
      }
      // direct reads only where the kernel reads every blob file from the cache itself: a blob file still served by
      // the daemon would answer each small read with a READ round trip, without the page cache of the blob file
      const directRead = m.blobFiles.every(f => f === undefined) && await this.directRead(m)
      const devices = m.blobFiles.map((f, bi) => f?.path ?? this.cache.blobPath(m.image.blobs[bi]!.blobId))
      m.kernel = await kernelMount(m.image.bootstrapPath, devices, mountpoint, { directRead, ...(this.logger !== undefined ? { logger: this.logger } : {}) })
    } catch (err) {
      for (const f of m.blobFiles) f?.detach()
      m.blobFiles = []
      this.unpinAll(m)
      throw err
    }
  }

  /**
   * FUSE's view of the image. A read's range is mapped to chunk pieces here, once; the fetcher copies verified
   * cached spans straight into FUSE's buffer and fetches the rest, under the read's one deadline, and the FUSE
   * session's signal (aborted at unmount) reaches every fetch the read waits on.
   */
  private files (m: Mounted): ImageFiles {
    const image = { reader: m.image.reader, blobs: m.image.blobs }
    return {
      reader: image.reader,
      read: async (nid, offset, length, buf, signal) => {
        m.reads++
        m.access.fileRead(nid)
        try {
          const pieces = image.reader.mapRange(nid, offset, length)
          m.readAhead.observe(nid, offset, length)
          const n = await m.fetcher.readPieces(image, pieces, buf, signal !== undefined ? { signal } : {})
          m.readBytes += n
          return n
        } catch (err) {
          m.readErrors++
          throw err
        }
      }
    }
  }

  private startPrefetch (m: Mounted, policy: PrefetchPolicy): void {
    if (policy === 'none') return
    m.prefetchDone = (async () => {
      try {
        const plan = await planPrefetch(m.image.reader, policy, this.log)
        await runPrefetch(m.fetcher, m.image.reader, plan, m.prefetch, {
          signal: m.abort.signal,
          log: this.log,
          advisor: this.prefetchAdvisor,
          ...(policy !== 'all' && m.blobFiles.some(f => f !== undefined) ? { onFetched: warmer(m) } : {})
        })
        if (m.prefetch.state === 'done' && m.prefetch.chunksTotal > 0) this.log?.info('prefetch of %s done: %d chunks', m.info.mountpoint, m.prefetch.chunksTotal)
      } catch (err) {
        m.prefetch.state = 'failed'
        m.prefetch.error = (err as Error).message
        this.log?.warn('prefetch of %s failed: %s', m.info.mountpoint, describeError(err))
      }
    })()
  }

  async unmount (mountpoint: string): Promise<void> {
    const mp = resolve(mountpoint)
    // before the lookup: a mount still in progress is not in `mounts` yet, and "not mounted" would be wrong
    if (this.busy.has(mp)) throw busy(mp)
    const m = this.mounts.get(mp)
    if (m === undefined) throw new MountError('RAFSPEER_ERR_NOT_MOUNTED', `${mp} is not mounted by this daemon`)
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
            await delay(100)
          }
        } catch {
          // busy: detach it now; it stays pinned until this process ends, since the kernel may still read the blobs
          await m.kernel.unmount({ lazy: true })
          this.log?.warn(m.info.mode === 'kernel'
            ? '%s was busy: unmounted lazily, its blobs stay pinned'
            : '%s was busy: unmounted lazily; its open files read what the page cache holds (the cache files of blobs complete at the mount, which stay pinned), EIO beyond', mp)
          m.kernel = undefined
        }
        if (m.kernel !== undefined) this.unpinAll(m)
      }
      for (const f of m.blobFiles) f?.detach()
      m.fetcher.stop()
      await m.image.close()
      this.mounts.delete(mp)
      this.log?.info('unmounted %s', mp)
    } finally {
      this.busy.delete(mp)
    }
  }

  /** Unmounts everything (SIGTERM, daemon stop). */
  async stop (): Promise<void> {
    const all = [...this.mounts.keys()]
    const results = await Promise.allSettled(all.map(async mp => await this.unmount(mp)))
    results.forEach((r, i) => { if (r.status === 'rejected') this.log?.error('unmounting %s: %s', all[i], describeError(r.reason)) })
    await this.blobFs?.stop()
    this.blobFs = undefined
  }

  /** The lazy-kernel mode's blob file system: what the kernel asked of it (undefined before its first mount). */
  lazyKernelStats (): BlobFsStats | undefined {
    return this.blobFs?.stats()
  }

  private infoOf (m: Mounted): MountInfo {
    return {
      ...m.info,
      blobs: m.image.blobs.map((b, bi) => {
        const needed = m.needed.get(bi) ?? new Map<number, ChunkInfo>()
        let present = 0
        for (const ci of needed.keys()) if (this.cache.has(b.blobId, ci)) present++
        const readFromCache = m.kernel !== undefined && m.pinned.includes(b.blobId)
        return { blobId: b.blobId, chunkCount: b.chunkCount, chunksReferenced: needed.size, chunksPresent: present, complete: present === needed.size, readFromCache }
      }),
      prefetch: { ...m.prefetch }
    }
  }

  accessList (mountpoint: string): AccessList {
    const m = this.mounts.get(resolve(mountpoint))
    if (m === undefined) throw new MountError('RAFSPEER_ERR_NOT_MOUNTED', `${mountpoint} is not mounted by this daemon`)
    const tracked = m.info.mode !== 'kernel'
    return { mountpoint: m.info.mountpoint, source: m.info.source, mode: m.info.mode, tracked, files: tracked ? m.access.paths() : [] }
  }

  get (mountpoint: string): MountInfo | undefined {
    const m = this.mounts.get(resolve(mountpoint))
    return m === undefined ? undefined : this.infoOf(m)
  }

  list (): MountInfo[] { return [...this.mounts.values()].map(m => this.infoOf(m)) }

  stats (): MountStats[] {
    return [...this.mounts.values()].map(m => {
      const fetch: FetchCounters = m.fetcher.counters
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
      for (const s of m.fetcher.drainSamples()) out.push({ ...s, mountpoint: m.info.mountpoint })
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

/** A mount or unmount of `mountpoint` is running: a conflict the caller may retry after it, not a failure. */
function busy (mountpoint: string): MountError {
  return new MountError('RAFSPEER_ERR_MOUNT_BUSY', `${mountpoint} is being mounted or unmounted right now: retry when that is done`)
}

/** Why the erofs-lazy mode cannot run here (no native addon, no FUSE, no kernel EROFS, not root), or undefined. */
export async function erofsLazyUnavailable (): Promise<string | undefined> {
  const kernel = await kernelModeUnavailable()
  if (kernel !== undefined) return kernel
  const native = BlobFs.unavailable()
  if (native !== undefined) return native
  if (await access('/dev/fuse').then(() => false, () => true)) return 'no /dev/fuse (modprobe fuse)'
  return undefined
}

/**
 * erofs-lazy: a prefetch list names files a container reads as it starts, so their chunks go on into the kernel's
 * page cache of the blob files as they land (up to WARM_MAX_BYTES per mount). Otherwise the kernel's readahead
 * of the blob file turns a read of a prefetched file into a READ that also asks for the next chunks in the blob,
 * files nobody listed, and that READ waits for the registry. A whole-image prefetch (`all`) is not warmed: it
 * would only fill the page cache twice over. Warmed blocks never reach the access log by a READ, so they are
 * recorded as read here: a list recorded on this mount keeps them.
 */
function warmer (m: Mounted): (blobIndex: number, chunks: ChunkInfo[]) => void {
  let budget = WARM_MAX_BYTES
  return (bi, chunks) => {
    const file = m.blobFiles[bi]
    if (file === undefined) return
    const sorted = [...chunks].sort((a, b) => a.uncompressedOffset - b.uncompressedOffset)
    let start = -1
    let end = -1
    const flush = (): void => { if (start >= 0 && budget > 0) { file.warm(start, end - start); budget -= end - start } }
    for (const c of sorted) {
      m.access.chunkRead(bi, c.index)
      const cEnd = c.uncompressedOffset + Math.ceil(c.uncompressedSize / 4096) * 4096
      if (c.uncompressedOffset <= end) { end = Math.max(end, cEnd); continue }
      flush()
      start = c.uncompressedOffset
      end = cEnd
    }
    flush()
  }
}
