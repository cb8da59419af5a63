/**
 * The Prometheus side of the daemon's metrics: a prom-client registry of its own whose collectors read the mount
 * service, the cache and the swarm at scrape time. Loaded by `DaemonMetrics` when first needed (a scrape, or enough
 * fetch samples waiting for the histogram): prom-client costs a new process tens of milliseconds, and a daemon
 * started to mount one image should reach its first read without paying them.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { CacheStats } from '../../cache/index.js'
import type { P2PStats } from '../exchange/index.js'
import type { BlobFsStats, MountStats, PrefetchStatus } from '../mount/index.js'
import { hitRatio } from './metrics.js'
import type { DaemonExtension } from './node.js'

/** seconds; a cache-adjacent peer answers in ms, a far registry in 100s of ms, a struggling one in seconds */
export const FETCH_DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

/** One reading of the service and the cache, shared by every collect() of one scrape. */
export interface Snapshot {
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

export interface PrometheusSource {
  snapshot: () => Snapshot
  lazyKernelStats: () => BlobFsStats | undefined
  /** the swarm's counters, on a P2P node */
  p2pStats: (() => P2PStats) | undefined
  extensions: DaemonExtension[]
  /** moves the fetch samples gathered since the last call into the histogram (run at every scrape) */
  pump: () => void
  /** process and Node.js metrics (`process_*`, `nodejs_*`) */
  defaultMetrics: boolean
}

export interface PrometheusSide {
  registry: Registry
  fetchDuration: Histogram<'source' | 'outcome'>
}

/** The daemon's registry, every collector registered. */
export function daemonRegistry (src: PrometheusSource): PrometheusSide {
  const r = new Registry()
  if (src.defaultMetrics) collectDefaultMetrics({ register: r })

  // ---- mounts
  new Gauge({
    name: 'rafspeer_mounts', help: 'images mounted, by mode', labelNames: ['mode'], registers: [r],
    collect: function () {
      const stats = src.snapshot().stats
      for (const mode of ['fuse', 'erofs-lazy', 'kernel'] as const) this.set({ mode }, stats.filter(s => s.mode === mode).length)
    }
  })
  new Gauge({
    name: 'rafspeer_mount_info', help: 'one series per mount naming its image', labelNames: ['mountpoint', 'image', 'mode'], registers: [r],
    collect: function () {
      this.reset()
      for (const s of src.snapshot().stats) this.set({ mountpoint: s.mountpoint, image: s.source, mode: s.mode }, 1)
    }
  })
  const perMount = (name: string, help: string, value: (s: MountStats) => number): void => {
    new MirroredCounter(r, name, help, ['mountpoint'], () => {
      const snap = src.snapshot()
      return snap.stats.map(s => ({ labels: { mountpoint: s.mountpoint }, value: value(s), epoch: snap.epochs.get(s.mountpoint) ?? '' }))
    })
  }
  perMount('rafspeer_reads_total', 'reads that reached the daemon (FUSE reads; blob-file misses in erofs-lazy mode)', s => s.reads)
  perMount('rafspeer_read_bytes_total', 'bytes returned to FUSE reads', s => s.readBytes)
  perMount('rafspeer_read_errors_total', 'FUSE reads answered with an error', s => s.readErrors)
  perMount('rafspeer_read_timeouts_total', 'reads not served within the read deadline', s => s.fetch.readTimeouts)
  perMount('rafspeer_read_hand_offs_total', 'chunks a read waited for on the neighbours past fetch.readHandOffMs, then asked of the registry too', s => s.fetch.readHandOffs)
  perMount('rafspeer_chunks_fetched_total', 'verified chunks fetched from the registry or peers', s => s.fetch.chunksFetched)
  perMount('rafspeer_chunks_copied_total', 'chunks found under the same digest in another cached blob and copied locally', s => s.fetch.chunksCopied)
  perMount('rafspeer_chunks_amplified_total', 'chunks fetched only because they sat next to wanted ones', s => s.fetch.chunksAmplified)
  perMount('rafspeer_prefetch_fetched_chunks_total', 'chunks fetched by prefetch batches no read waited for', s => s.fetch.prefetchChunks)
  perMount('rafspeer_prefetch_fetched_bytes_total', 'plaintext bytes fetched by prefetch batches no read waited for', s => s.fetch.prefetchBytes)
  perMount('rafspeer_fetch_batches_total', 'batches handed to sources (a registry batch is one Range request)', s => s.fetch.batches)
  perMount('rafspeer_fetch_idle_extensions_total', 'idle deadlines of neighbour fetches started over because the chunks awaited spread through the swarm', s => s.fetch.idleExtensions)
  perMount('rafspeer_fetch_retries_total', 'extra rounds over the sources after a transient failure', s => s.fetch.retries)
  perMount('rafspeer_fetch_verify_failures_total', 'chunks from a source that failed their digest (dropped)', s => s.fetch.verifyFailures)
  perMount('rafspeer_single_flight_joins_total', 'reads that joined a fetch already in flight', s => s.fetch.singleFlightJoins)
  new MirroredCounter(r, 'rafspeer_fetched_bytes_total', 'plaintext bytes by where they came from: read from the cache, fetched from the registry or from peers',
    ['mountpoint', 'source'], () => {
      const snap = src.snapshot()
      return snap.stats.flatMap(s => (['cache', 'registry', 'peer'] as const).map(source =>
        ({ labels: { mountpoint: s.mountpoint, source }, value: s.fetch.bytesBySource[source], epoch: snap.epochs.get(s.mountpoint) ?? '' })))
    })
  new Gauge({
    name: 'rafspeer_cache_hit_ratio', help: 'share of read bytes served straight from the cache (0..1)', labelNames: ['mountpoint'], registers: [r],
    collect: function () {
      this.reset()
      for (const s of src.snapshot().stats) {
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
        for (const s of src.snapshot().stats) this.set({ mountpoint: s.mountpoint }, value(s.prefetch))
      }
    })
  }
  prefetchGauge('rafspeer_prefetch_chunks_done', 'chunks prefetch has made present', p => p.chunksDone)
  prefetchGauge('rafspeer_prefetch_chunks', 'chunks prefetch was asked for', p => p.chunksTotal)
  prefetchGauge('rafspeer_prefetch_bytes', 'plaintext bytes of the chunks prefetch was asked for', p => p.bytesTotal)
  prefetchGauge('rafspeer_prefetch_bytes_done', 'plaintext bytes of the chunks prefetch has made present', p => p.bytesDone)

  // ---- cache (one per daemon, lives as long as it)
  const cacheGauge = (name: string, help: string, value: (c: CacheStats) => number): void => {
    new Gauge({ name, help, registers: [r], collect: function () { this.set(value(src.snapshot().cache)) } })
  }
  cacheGauge('rafspeer_cache_bytes', '4 KiB-aligned bytes of cached chunks (what the cap counts)', c => c.diskBytes)
  cacheGauge('rafspeer_cache_plaintext_bytes', 'plaintext bytes of cached chunks', c => c.bytesPresent)
  cacheGauge('rafspeer_cache_capacity_bytes', 'the cache cap (0: unlimited)', c => c.capBytes ?? 0)
  cacheGauge('rafspeer_cache_chunks', 'chunks present in the cache', c => c.chunksPresent)
  cacheGauge('rafspeer_cache_blobs', 'blobs known to the cache', c => c.blobs)
  cacheGauge('rafspeer_cache_complete_blobs', 'blobs complete in the cache (kernel-mountable)', c => c.completeBlobs)
  const cacheCounter = (name: string, help: string, value: (c: CacheStats) => number): void => {
    new MirroredCounter(r, name, help, [], () => [{ labels: {}, value: value(src.snapshot().cache), epoch: '' }])
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
      const k = src.lazyKernelStats()
      return k === undefined ? [] : [{ labels: {}, value: value(k), epoch: '' }]
    })
  }
  lazyCounter('rafspeer_blobfs_requests_total', 'FUSE requests the erofs-lazy blob files received', k => k.requests)
  lazyCounter('rafspeer_blobfs_fast_reads_total', 'blob-file READs answered from verified cache blocks by the native threads', k => k.fastReads)
  lazyCounter('rafspeer_blobfs_fast_bytes_total', 'bytes of those READs', k => k.fastBytes)
  lazyCounter('rafspeer_blobfs_misses_total', 'blob-file READs handed to the fetch pipeline', k => k.misses)
  lazyCounter('rafspeer_blobfs_miss_errors_total', 'blob-file misses answered with an error', k => k.missErrors)
  lazyCounter('rafspeer_blobfs_pushed_bytes_total', 'prefetched bytes put into the page cache of the blob files before any read', k => k.pushBytes)

  // ---- swarm (one host per daemon, lives as long as it)
  const p2pStats = src.p2pStats
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
    p2pCounter('rafspeer_p2p_upload_urgent_total', 'neighbour requests a read waited for, answered past the upload slots in those kept for reads', p => p.upload.urgentUploads)
    p2pCounter('rafspeer_p2p_upload_not_found_total', 'chunks neighbours asked for that this node does not hold', p => p.upload.notFound)
    p2pCounter('rafspeer_p2p_upload_redirects_total', 'chunks a busy node sent askers on for, to a neighbour it is sending them to', p => p.upload.redirects)
    p2pCounter('rafspeer_p2p_upload_turns_total', 'askers of a chunk a crowd wanted kept for a turn (the end of an upload of it)', p => p.upload.turns)
    p2pCounter('rafspeer_p2p_upload_turns_run_out_total', 'chunks answered busy because the asker\'s turn did not come in time', p => p.upload.turnsRunOut)
    p2pGauge('rafspeer_p2p_uploads_active', 'neighbour requests being answered now', p => p.upload.uploadsActive)
    p2pCounter('rafspeer_p2p_download_bytes_total', 'verified chunk bytes received from neighbours', p => p.download.bytesFromPeers)
    p2pCounter('rafspeer_p2p_download_requests_total', 'chunk requests sent to neighbours', p => p.download.requests)
    p2pCounter('rafspeer_p2p_download_failed_requests_total', 'chunk requests to neighbours that failed (dial, reset, timeout)', p => p.download.failedRequests)
    p2pCounter('rafspeer_p2p_download_streams_opened_total', 'chunk-protocol streams opened to neighbours (a request goes on a stream kept open from an earlier one when it can)', p => p.download.streams.opened)
    p2pCounter('rafspeer_p2p_download_streams_reused_total', 'chunk requests sent on a stream kept open from an earlier request', p => p.download.streams.reused)
    p2pCounter('rafspeer_p2p_hedges_total', 'requests re-sent to another holder because the first was slow', p => p.download.hedges)
    p2pCounter('rafspeer_p2p_download_pending_overstays_total', 'chunk requests a holder kept on PENDING past what an honest one may (given up, asked elsewhere)', p => p.download.pendingOverstays)
    p2pCounter('rafspeer_p2p_download_joined_total', 'chunks that rode with a request already queued for their holder instead of making one more', p => p.download.joined)
    p2pCounter('rafspeer_p2p_download_redirects_total', 'chunks a busy holder sent this node on for, to a neighbour it is sending them to', p => p.download.redirects)
    p2pCounter('rafspeer_p2p_bad_chunks_total', 'chunks from neighbours that failed their digest (dropped)', p => p.download.badChunks)
    p2pGauge('rafspeer_p2p_banned_peers', 'neighbours banned for sending bad bytes', p => p.download.bannedPeers)
    p2pCounter('rafspeer_p2p_resolve_failures_total', 'holder look-ups the scheduler did not answer in time', p => p.download.resolveFailures)
    new MirroredCounter(r, 'rafspeer_swarm_registry_chunks_total',
      'chunks the swarm sent to the registry, by why: the node is their assignee in the scheduler\'s group (assignee) or, the scheduler having named none, among the peers it knows (noGroup), the one after an assignee reading behind them (ahead), or nobody said it fetched them within the grace (grace)',
      ['reason'], () => Object.entries(p2pStats().registryChunks ?? {}).map(([reason, value]) => ({ labels: { reason }, value, epoch: '' })))
    p2pCounter('rafspeer_swarm_assignee_asks_total', 'chunks nobody this node follows had that it asked their assignee in the blob\'s group for before the registry', p => p.assigneeAsks ?? 0)
    p2pGauge('rafspeer_swarm_largest_peers', 'peers in the largest swarm this node works in (a blob\'s holders), as the scheduler last counted them', p => p.largestSwarm ?? 0)
    p2pGauge('rafspeer_p2p_claims', 'chunks this node claimed at the scheduler and is still fetching', p => p.claims)
    p2pGauge('rafspeer_scheduler_connected', '1 while the scheduler session is up (or the scheduler is embedded)', p => p.scheduler.connected ? 1 : 0)
  }

  for (const e of src.extensions) e.registerMetrics?.(r)

  // ---- latency
  const fetchDuration = new Histogram({
    name: 'rafspeer_fetch_duration_seconds', help: 'one attempt of one batch at one source, by source kind and outcome',
    labelNames: ['source', 'outcome'], buckets: FETCH_DURATION_BUCKETS, registers: [r],
    collect: () => { src.pump() }
  })
  return { registry: r, fetchDuration }
}
