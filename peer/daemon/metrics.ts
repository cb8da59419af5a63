/**
 * The daemon's numbers, two ways: Prometheus text (prom-client, on a registry of its own: `prometheus.ts`, loaded at
 * the first scrape) and a JSON view for `/api/v1/metrics`. Both are read at scrape time from the mount service and the
 * cache; nothing is pushed.
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
import type { CacheStats } from '../../cache/index.js'
import type { P2PStats } from '../exchange/index.js'
import { sourceKind, type FetchSample } from '../fetch/index.js'
import type { BlobFsStats, MountService, MountStats, PrefetchStatus } from '../mount/index.js'
import type { DaemonExtension } from './node.js'
import type { PrometheusSide, Snapshot } from './prometheus.js'

/** fetch-latency samples kept for the JSON percentiles */
export const DEFAULT_LATENCY_WINDOW = 1024
/**
 * Fetch samples kept for the histogram until prom-client is loaded (JSON reads drain the service before any
 * scrape); past this many, it is loaded without waiting for a scrape, so the backlog stays small.
 */
const MAX_PENDING_SAMPLES = 4096
/** prom-client's `Registry.PROMETHEUS_CONTENT_TYPE`, named here so that asking it does not load prom-client */
const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8'

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
  /** the longest one read waited for chunks fetched for it, ms (`FetchCounters.readWaitMaxMs`) */
  readWaitMaxMs: number
  /** chunks a read waited for `readHandOffMs` on the neighbours, then asked of the registry too (`FetchCounters.readHandOffs`) */
  readHandOffs: number
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

/** share of read bytes served from the cache; null before any read */
export const hitRatio = (cacheBytes: number, readBytes: number): number | null =>
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
    readWaitMaxMs: s.fetch.readWaitMaxMs,
    readHandOffs: s.fetch.readHandOffs,
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
  private readonly service: MountService
  private readonly cacheStats: () => CacheStats
  private readonly p2pStats: (() => P2PStats) | undefined
  private readonly extensions: DaemonExtension[]
  private readonly window: LatencyWindow
  private readonly defaultMetrics: boolean
  private prom: PrometheusSide | undefined
  private loading: Promise<PrometheusSide> | undefined
  private pending: FetchSample[] = []
  private snap: Snapshot | undefined

  constructor (components: DaemonMetricsComponents, init: DaemonMetricsInit = {}) {
    this.service = components.service
    this.cacheStats = components.cacheStats
    this.p2pStats = components.p2pStats
    this.extensions = components.extensions ?? []
    this.window = new LatencyWindow(init.latencyWindow ?? DEFAULT_LATENCY_WINDOW)
    this.defaultMetrics = init.defaultMetrics !== false
  }

  /** `content-type` of `prometheus()` */
  get contentType (): string { return this.prom?.registry.contentType ?? PROMETHEUS_CONTENT_TYPE }

  /** The Prometheus text exposition. */
  async prometheus (): Promise<string> {
    return await (await this.prometheusSide()).registry.metrics()
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
      this.window.add(s.ms)
      if (this.prom !== undefined) observe(this.prom, s)
      else this.pending.push(s)
    }
    if (this.pending.length > MAX_PENDING_SAMPLES) this.prometheusSide().catch(() => {})
  }

  private async prometheusSide (): Promise<PrometheusSide> {
    this.loading ??= import('./prometheus.js').then(({ daemonRegistry }) => {
      const side = daemonRegistry({
        snapshot: () => this.snapshot(),
        lazyKernelStats: () => this.service.lazyKernelStats?.(),
        p2pStats: this.p2pStats,
        extensions: this.extensions,
        pump: () => { this.pump() },
        defaultMetrics: this.defaultMetrics
      })
      for (const s of this.pending) observe(side, s)
      this.pending = []
      this.prom = side
      return side
    })
    return await this.loading
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

function observe (side: PrometheusSide, s: FetchSample): void {
  side.fetchDuration.observe({ source: s.source === 'cache' ? 'cache' : sourceKind(s.source), outcome: s.ok ? 'ok' : 'error' }, s.ms / 1000)
}
