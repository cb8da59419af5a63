/**
 * The daemon's numbers, two ways: Prometheus text (prom-client, on a registry of its own) and a JSON view for
 * `/api/v1/metrics`. Both are read at scrape time from the mount service and the cache; nothing is pushed.
 *
 * Per-mount counters carry a `mountpoint` label; when an image is unmounted its series go away, and a new mount at
 * the same place starts a new series from 0 (a counter reset, which `rate()` handles).
 *
 * @example
 * ```ts
 * const metrics = new DaemonMetrics({ service, cacheStats: () => cache.stats() })
 * res.setHeader('content-type', metrics.contentType).end(await metrics.prometheus())
 * const view = metrics.json()   // { images, totals, cache, fetchLatencyMs }
 * ```
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { CacheStats } from '../../cache/index.js'
import type { P2PStats } from '../exchange/index.js'
import { sourceKind } from '../fetch/index.js'
import type { BlobFsStats, MountService, MountStats, PrefetchStatus } from '../mount/index.js'
import type { DaemonExtension } from './node.js'

/** seconds; a cache-adjacent peer answers in ms, a far registry in 100s of ms, a struggling one in seconds */
export const FETCH_DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
/** fetch-latency samples kept for the JSON percentiles */
export const DEFAULT_LATENCY_WINDOW = 1024

export interface BytesBySource { cache: number, registry: number, peer: number }

export interface ImageMetrics {
  mountpoint: string
  source: string
  mode: MountStats['mode']
  /** reads that reached userspace: FUSE reads (fuse), blob-file misses (erofs-lazy), 0 (kernel) */
  readCount: number
  readBytes: number
  readErrors: number
  readTimeouts: number
  bytesBySource: BytesBySource
  /** share of read bytes served straight from the cache (0..1); null before any read */
  cacheHitRatio: number | null
  prefetch: PrefetchStatus
  /** plaintext bytes fetched by prefetch batches no read waited for (a read that joined one makes its bytes the read's) */
  prefetchFetchedBytes: number
}

export interface LatencySummary { count: number, p50: number, p90: number, p99: number, max: number }

export interface MetricsJson {
  images: ImageMetrics[]
  totals: {
    mounts: number
    readCount: number
    readBytes: number
    readErrors: number
    readTimeouts: number
    bytesBySource: BytesBySource
    cacheHitRatio: number | null
  }
  cache: CacheStats
  /** over the most recent fetch attempts (all sources) */
  fetchLatencyMs: LatencySummary
  /** the node's part in the swarm, when P2P is on */
  p2p?: P2PStats
  /** the erofs-lazy mode's blob file system, once it has served a mount: READs answered in C vs misses */
  lazyKernel?: BlobFsStats
  /** what uses of the node add (`proxy`: the registry mirror's numbers) */
  [extension: string]: unknown
}

/** The last `capacity` latencies, for percentiles. */
export class LatencyWindow {
  private readonly ring: number[] = []
  private next = 0
  constructor (readonly capacity = DEFAULT_LATENCY_WINDOW) {}

  add (ms: number): void {
    if (this.ring.length < this.capacity) this.ring.push(ms)
    else this.ring[this.next] = ms
    this.next = (this.next + 1) % this.capacity
  }

  summary (): LatencySummary {
    const s = [...this.ring].sort((a, b) => a - b)
    const q = (p: number): number => s.length === 0 ? 0 : round(s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)]!)
    return { count: s.length, p50: q(0.5), p90: q(0.9), p99: q(0.99), max: s.length === 0 ? 0 : round(s[s.length - 1]!) }
  }
}

const round = (ms: number): number => Math.round(ms * 1000) / 1000

const hitRatio = (cacheBytes: number, readBytes: number): number | null =>
  readBytes === 0 ? null : Math.min(1, cacheBytes / readBytes)

function imageMetrics (s: MountStats): ImageMetrics {
  return {
    mountpoint: s.mountpoint,
    source: s.source,
    mode: s.mode,
    readCount: s.reads,
    readBytes: s.readBytes,
    readErrors: s.readErrors,
    readTimeouts: s.fetch.readTimeouts,
    bytesBySource: { ...s.fetch.bytesBySource },
    cacheHitRatio: hitRatio(s.fetch.bytesBySource.cache, s.readBytes),
    prefetch: s.prefetch,
    prefetchFetchedBytes: s.fetch.prefetchBytes
  }
}

/** The JSON view of `/api/v1/metrics`; `latency` holds the recent fetch samples (see `DaemonMetrics.json`). */
export function metricsJson (service: Pick<MountService, 'stats' | 'lazyKernelStats'>, cacheStats: () => CacheStats, latency: LatencyWindow,
  p2pStats?: () => P2PStats): MetricsJson {
  const images = service.stats().map(imageMetrics)
  const sum = (f: (i: ImageMetrics) => number): number => images.reduce((a, i) => a + f(i), 0)
  const bytesBySource = { cache: sum(i => i.bytesBySource.cache), registry: sum(i => i.bytesBySource.registry), peer: sum(i => i.bytesBySource.peer) }
  return {
    images,
    totals: {
      mounts: images.length,
      readCount: sum(i => i.readCount),
      readBytes: sum(i => i.readBytes),
      readErrors: sum(i => i.readErrors),
      readTimeouts: sum(i => i.readTimeouts),
      bytesBySource,
      cacheHitRatio: hitRatio(bytesBySource.cache, sum(i => i.readBytes))
    },
    cache: cacheStats(),
    fetchLatencyMs: latency.summary(),
    ...(p2pStats !== undefined ? { p2p: p2pStats() } : {}),
    ...lazyKernel(service)
  }
}

function lazyKernel (service: Pick<MountService, 'lazyKernelStats'>): { lazyKernel?: BlobFsStats } {
  const st = service.lazyKernelStats?.()
  return st === undefined ? {} : { lazyKernel: st }
}

interface Snapshot {
  stats: MountStats[]
  /** mountpoint → when the mount there began: a new mount at the same place restarts its counters */
  epochs: Map<string, string>
  cache: CacheStats
}

interface Point { labels: Record<string, string>, value: number, epoch: string }

/**
 * A prom-client Counter that mirrors absolute values read elsewhere: it increments by the growth since the last
 * scrape, restarts a series whose source restarted (new epoch or a smaller value), and drops vanished series.
 */
class MirroredCounter {
  private readonly last = new Map<string, { labels: Record<string, string>, value: number, epoch: string }>()
  readonly counter: Counter<string>

  constructor (registry: Registry, name: string, help: string, labelNames: string[], points: () => Point[]) {
    this.counter = new Counter({ name, help, labelNames, registers: [registry], collect: () => { this.sync(points()) } })
  }

  private sync (points: Point[]): void {
    const seen = new Set<string>()
    for (const p of points) {
      const key = JSON.stringify(p.labels)
      seen.add(key)
      const prev = this.last.get(key)
      if (prev === undefined || prev.epoch !== p.epoch || p.value < prev.value) {
        if (prev !== undefined) this.counter.remove(p.labels)
        this.counter.inc(p.labels, p.value)
      } else if (p.value > prev.value) {
        this.counter.inc(p.labels, p.value - prev.value)
      }
      this.last.set(key, { labels: p.labels, value: p.value, epoch: p.epoch })
    }
    for (const [key, prev] of this.last) {
      if (!seen.has(key)) {
        this.counter.remove(prev.labels)
        this.last.delete(key)
      }
    }
  }
}

export interface DaemonMetricsComponents {
  service: MountService
  cacheStats: () => CacheStats
  /** the swarm's counters, on a P2P node */
  p2pStats?: () => P2PStats
  /** uses of the node with numbers of their own (the registry mirror) */
  extensions?: DaemonExtension[]
}

export interface DaemonMetricsInit {
  /** process and Node.js metrics (`process_*`, `nodejs_*`; default true) */
  defaultMetrics?: boolean
  /** fetch samples kept for the JSON percentiles (1024) */
  latencyWindow?: number
}

export class DaemonMetrics {
  readonly registry = new Registry()
  private readonly service: MountService
  private readonly cacheStats: () => CacheStats
  private readonly p2pStats: (() => P2PStats) | undefined
  private readonly extensions: DaemonExtension[]
  private readonly window: LatencyWindow
  private readonly fetchDuration: Histogram<'source' | 'outcome'>
  private snap: Snapshot | undefined

  constructor (components: DaemonMetricsComponents, init: DaemonMetricsInit = {}) {
    this.service = components.service
    this.cacheStats = components.cacheStats
    this.p2pStats = components.p2pStats
    this.extensions = components.extensions ?? []
    this.window = new LatencyWindow(init.latencyWindow ?? DEFAULT_LATENCY_WINDOW)
    if (init.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry })
    const r = this.registry
    const self = this

    // ---- mounts
    new Gauge({
      name: 'rafspeer_mounts', help: 'images mounted, by mode', labelNames: ['mode'], registers: [r],
      collect: function () {
        const stats = self.snapshot().stats
        for (const mode of ['fuse', 'erofs-lazy', 'kernel'] as const) this.set({ mode }, stats.filter(s => s.mode === mode).length)
      }
    })
    new Gauge({
      name: 'rafspeer_mount_info', help: 'one series per mount naming its image', labelNames: ['mountpoint', 'image', 'mode'], registers: [r],
      collect: function () {
        this.reset()
        for (const s of self.snapshot().stats) this.set({ mountpoint: s.mountpoint, image: s.source, mode: s.mode }, 1)
      }
    })
    const perMount = (name: string, help: string, value: (s: MountStats) => number): void => {
      new MirroredCounter(r, name, help, ['mountpoint'], () => {
        const snap = this.snapshot()
        return snap.stats.map(s => ({ labels: { mountpoint: s.mountpoint }, value: value(s), epoch: snap.epochs.get(s.mountpoint) ?? '' }))
      })
    }
    perMount('rafspeer_reads_total', 'reads that reached the daemon (FUSE reads; blob-file misses in erofs-lazy mode)', s => s.reads)
    perMount('rafspeer_read_bytes_total', 'bytes returned to FUSE reads', s => s.readBytes)
    perMount('rafspeer_read_errors_total', 'FUSE reads answered with an error', s => s.readErrors)
    perMount('rafspeer_read_timeouts_total', 'reads not served within the read deadline', s => s.fetch.readTimeouts)
    perMount('rafspeer_chunks_fetched_total', 'verified chunks fetched from the registry or peers', s => s.fetch.chunksFetched)
    perMount('rafspeer_chunks_copied_total', 'chunks found under the same digest in another cached blob and copied locally', s => s.fetch.chunksCopied)
    perMount('rafspeer_chunks_amplified_total', 'chunks fetched only because they sat next to wanted ones', s => s.fetch.chunksAmplified)
    perMount('rafspeer_prefetch_fetched_chunks_total', 'chunks fetched by prefetch batches no read waited for', s => s.fetch.prefetchChunks)
    perMount('rafspeer_prefetch_fetched_bytes_total', 'plaintext bytes fetched by prefetch batches no read waited for', s => s.fetch.prefetchBytes)
    perMount('rafspeer_fetch_batches_total', 'batches handed to sources (a registry batch is one Range request)', s => s.fetch.batches)
    perMount('rafspeer_fetch_retries_total', 'extra rounds over the sources after a transient failure', s => s.fetch.retries)
    perMount('rafspeer_fetch_verify_failures_total', 'chunks from a source that failed their digest (dropped)', s => s.fetch.verifyFailures)
    perMount('rafspeer_single_flight_joins_total', 'reads that joined a fetch already in flight', s => s.fetch.singleFlightJoins)
    new MirroredCounter(r, 'rafspeer_fetched_bytes_total', 'plaintext bytes by where they came from: read from the cache, fetched from the registry or from peers',
      ['mountpoint', 'source'], () => {
        const snap = this.snapshot()
        return snap.stats.flatMap(s => (['cache', 'registry', 'peer'] as const).map(source =>
          ({ labels: { mountpoint: s.mountpoint, source }, value: s.fetch.bytesBySource[source], epoch: snap.epochs.get(s.mountpoint) ?? '' })))
      })
    new Gauge({
      name: 'rafspeer_cache_hit_ratio', help: 'share of read bytes served straight from the cache (0..1)', labelNames: ['mountpoint'], registers: [r],
      collect: function () {
        this.reset()
        for (const s of self.snapshot().stats) {
          const ratio = hitRatio(s.fetch.bytesBySource.cache, s.readBytes)
          if (ratio !== null) this.set({ mountpoint: s.mountpoint }, ratio)
        }
      }
    })
    const prefetchGauge = (name: string, help: string, value: (p: PrefetchStatus) => number): void => {
      new Gauge({
        name, help, labelNames: ['mountpoint'], registers: [r],
        collect: function () {
          this.reset()
          for (const s of self.snapshot().stats) this.set({ mountpoint: s.mountpoint }, value(s.prefetch))
        }
      })
    }
    prefetchGauge('rafspeer_prefetch_chunks_done', 'chunks prefetch has made present', p => p.chunksDone)
    prefetchGauge('rafspeer_prefetch_chunks', 'chunks prefetch was asked for', p => p.chunksTotal)
    prefetchGauge('rafspeer_prefetch_bytes', 'plaintext bytes of the chunks prefetch was asked for', p => p.bytesTotal)
    prefetchGauge('rafspeer_prefetch_bytes_done', 'plaintext bytes of the chunks prefetch has made present', p => p.bytesDone)

    // ---- cache (one per daemon, lives as long as it)
    const cacheGauge = (name: string, help: string, value: (c: CacheStats) => number): void => {
      new Gauge({ name, help, registers: [r], collect: function () { this.set(value(self.snapshot().cache)) } })
    }
    cacheGauge('rafspeer_cache_bytes', '4 KiB-aligned bytes of cached chunks (what the cap counts)', c => c.diskBytes)
    cacheGauge('rafspeer_cache_plaintext_bytes', 'plaintext bytes of cached chunks', c => c.bytesPresent)
    cacheGauge('rafspeer_cache_capacity_bytes', 'the cache cap (0: unlimited)', c => c.capBytes ?? 0)
    cacheGauge('rafspeer_cache_chunks', 'chunks present in the cache', c => c.chunksPresent)
    cacheGauge('rafspeer_cache_blobs', 'blobs known to the cache', c => c.blobs)
    cacheGauge('rafspeer_cache_complete_blobs', 'blobs complete in the cache (kernel-mountable)', c => c.completeBlobs)
    const cacheCounter = (name: string, help: string, value: (c: CacheStats) => number): void => {
      new MirroredCounter(r, name, help, [], () => [{ labels: {}, value: value(this.snapshot().cache), epoch: '' }])
    }
    cacheCounter('rafspeer_cache_hits_total', 'chunk lookups the cache answered', c => c.hits)
    cacheCounter('rafspeer_cache_misses_total', 'chunk lookups the cache could not answer', c => c.misses)
    cacheCounter('rafspeer_cache_verify_failures_total', 'cached chunks that failed their digest when re-read (dropped, refetched)', c => c.verifyFailures)
    cacheCounter('rafspeer_cache_evictions_total', 'chunks evicted to stay under the cap', c => c.evictions)
    cacheCounter('rafspeer_cache_evicted_bytes_total', 'aligned bytes evicted to stay under the cap', c => c.evictedBytes)
    cacheCounter('rafspeer_cache_write_failures_total', 'chunk writes refused for lack of space or I/O errors', c => c.writeFailures)

    // ---- the erofs-lazy blob files (one file system per daemon, from its first erofs-lazy mount)
    const lazyCounter = (name: string, help: string, value: (k: BlobFsStats) => number): void => {
      new MirroredCounter(r, name, help, [], () => {
        const k = this.service.lazyKernelStats?.()
        return k === undefined ? [] : [{ labels: {}, value: value(k), epoch: '' }]
      })
    }
    lazyCounter('rafspeer_blobfs_requests_total', 'FUSE requests the erofs-lazy blob files received', k => k.requests)
    lazyCounter('rafspeer_blobfs_fast_reads_total', 'blob-file READs answered from verified cache blocks by the native threads', k => k.fastReads)
    lazyCounter('rafspeer_blobfs_fast_bytes_total', 'bytes of those READs', k => k.fastBytes)
    lazyCounter('rafspeer_blobfs_misses_total', 'blob-file READs handed to the fetch pipeline', k => k.misses)
    lazyCounter('rafspeer_blobfs_miss_errors_total', 'blob-file misses answered with an error', k => k.missErrors)

    // ---- swarm (one host per daemon, lives as long as it)
    const p2pStats = components.p2pStats
    if (p2pStats !== undefined) {
      const p2pCounter = (name: string, help: string, value: (p: P2PStats) => number): void => {
        new MirroredCounter(r, name, help, [], () => [{ labels: {}, value: value(p2pStats()), epoch: '' }])
      }
      const p2pGauge = (name: string, help: string, value: (p: P2PStats) => number): void => {
        new Gauge({ name, help, registers: [r], collect: function () { this.set(value(p2pStats())) } })
      }
      p2pCounter('rafspeer_p2p_upload_bytes_total', 'chunk bytes served to neighbours', p => p.upload.bytesServed)
      p2pCounter('rafspeer_p2p_upload_chunks_total', 'chunks served to neighbours', p => p.upload.chunksServed)
      p2pCounter('rafspeer_p2p_upload_requests_total', 'neighbour requests answered', p => p.upload.uploads)
      p2pCounter('rafspeer_p2p_upload_refused_total', 'neighbour requests answered busy (upload slots full)', p => p.upload.refused)
      p2pCounter('rafspeer_p2p_upload_not_found_total', 'chunks neighbours asked for that this node does not hold', p => p.upload.notFound)
      p2pGauge('rafspeer_p2p_uploads_active', 'neighbour requests being answered now', p => p.upload.uploadsActive)
      p2pCounter('rafspeer_p2p_download_bytes_total', 'verified chunk bytes received from neighbours', p => p.download.bytesFromPeers)
      p2pCounter('rafspeer_p2p_download_requests_total', 'chunk requests sent to neighbours', p => p.download.requests)
      p2pCounter('rafspeer_p2p_download_failed_requests_total', 'chunk requests to neighbours that failed (dial, reset, timeout)', p => p.download.failedRequests)
      p2pCounter('rafspeer_p2p_hedges_total', 'requests re-sent to another holder because the first was slow', p => p.download.hedges)
      p2pCounter('rafspeer_p2p_bad_chunks_total', 'chunks from neighbours that failed their digest (dropped)', p => p.download.badChunks)
      p2pGauge('rafspeer_p2p_banned_peers', 'neighbours banned for sending bad bytes', p => p.download.bannedPeers)
      p2pCounter('rafspeer_p2p_resolve_failures_total', 'holder look-ups the scheduler did not answer in time', p => p.download.resolveFailures)
      p2pGauge('rafspeer_p2p_claims', 'chunks this node claimed at the scheduler and is still fetching', p => p.claims)
      p2pGauge('rafspeer_scheduler_connected', '1 while the scheduler session is up (or the scheduler is embedded)', p => p.scheduler.connected ? 1 : 0)
    }

    for (const e of this.extensions) e.registerMetrics?.(r)

    // ---- latency
    this.fetchDuration = new Histogram({
      name: 'rafspeer_fetch_duration_seconds', help: 'one attempt of one batch at one source, by source kind and outcome',
      labelNames: ['source', 'outcome'], buckets: FETCH_DURATION_BUCKETS, registers: [r],
      collect: () => { this.pump() }
    })
  }

  /** `content-type` of `prometheus()` */
  get contentType (): string { return this.registry.contentType }

  /** The Prometheus text exposition. */
  async prometheus (): Promise<string> {
    return await this.registry.metrics()
  }

  /** The `/api/v1/metrics` view. */
  json (): MetricsJson {
    this.pump()
    const json = metricsJson(this.service, this.cacheStats, this.window, this.p2pStats)
    for (const e of this.extensions) if (e.metricsJson !== undefined) json[e.name] = e.metricsJson()
    return json
  }

  /** Moves the fetch samples gathered since the last call into the histogram and the percentile window. */
  private pump (): void {
    for (const s of this.service.drainFetchSamples()) {
      this.fetchDuration.observe({ source: s.source === 'cache' ? 'cache' : sourceKind(s.source), outcome: s.ok ? 'ok' : 'error' }, s.ms / 1000)
      this.window.add(s.ms)
    }
  }

  /** One reading of the service and the cache per scrape: every collect() of one scrape runs in the same tick. */
  private snapshot (): Snapshot {
    if (this.snap === undefined) {
      this.snap = {
        stats: this.service.stats(),
        epochs: new Map(this.service.list().map(m => [m.mountpoint, m.mountedAt])),
        cache: this.cacheStats()
      }
      setImmediate(() => { this.snap = undefined })
    }
    return this.snap
  }
}
