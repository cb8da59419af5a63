/**
 * The mirror's numbers: requests by kind and status, bytes served, bytes by where they came from (cache, peers,
 * upstream), auth checks and denials, fallbacks (answers that send a client back to the registry), blobs whose
 * digest failed, and the upstream's latency per registry. Read at scrape time; exposed in the daemon's `/metrics`
 * (prom-client collectors on its registry) and `/api/v1/metrics` (`proxy`).
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client'
import type { FetchCounters, NeighbourSourceCounters } from '../peer/index.js'
import type { AuthGateCounters } from './auth-gate.js'
import type { BlobJob } from './blob-job.js'
import type { RafsRangeCounters } from './rafs-ranges.js'

export const UPSTREAM_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

export interface ProxyMetricsJson {
  listen: string
  requests: Record<string, number>
  servedBytes: number
  bytesBySource: { cache: number, peer: number, upstream: number }
  blobs: { fromMap: number, jobs: number, joined: number, relayed: number, active: number, confirmed: number, failed: number, forgedMaps: number }
  auth: AuthGateCounters
  fallbacks: number
  cutOff: number
  upstreamLatencyMs: Record<string, { count: number, meanMs: number }>
  /** the mirror's own neighbour source (pieces from peers) */
  neighbours?: NeighbourSourceCounters
  /** Range reads of Nydus data blobs checked chunk by chunk */
  rafsRanges: RafsRangeCounters
  fetch: FetchCounters
}

export class ProxyMetrics {
  /** `<kind> <status>` → count */
  readonly requests = new Map<string, number>()
  servedBytes = 0
  /** Range bytes relayed from upstream as they came */
  relayedBytes = 0
  /** blob bytes taken from upstream streams by jobs */
  jobUpstreamBytes = 0
  fallbacks = 0
  cutOff = 0
  readonly blobs = { fromMap: 0, jobs: 0, joined: 0, relayed: 0, confirmed: 0, failed: 0, forgedMaps: 0 }
  private readonly latency = new Map<string, { count: number, totalMs: number }>()
  private readonly pending: Array<{ upstream: string, op: string, s: number }> = []

  constructor (private readonly sources: { fetch: () => FetchCounters, auth: () => AuthGateCounters, activeJobs: () => number, listen: () => string, rafs: () => RafsRangeCounters, neighbours?: () => NeighbourSourceCounters }) {}

  request (kind: string, status: number): void {
    const k = `${kind} ${status}`
    this.requests.set(k, (this.requests.get(k) ?? 0) + 1)
  }

  blobsFrom (how: 'map' | 'job' | 'joined' | 'relayed'): void {
    if (how === 'map') this.blobs.fromMap++
    else if (how === 'job') this.blobs.jobs++
    else if (how === 'joined') this.blobs.joined++
    else this.blobs.relayed++
  }

  jobEnded (job: BlobJob): void {
    this.jobUpstreamBytes += job.counters.upstreamBytes
    this.blobs.forgedMaps += job.counters.forgedMaps
    if (job.confirmed) this.blobs.confirmed++
    else this.blobs.failed++
  }

  /** One upstream call (a manifest, an access check) took `ms`. */
  upstreamCall (upstream: string, op: string, ms: number): void {
    const l = this.latency.get(upstream) ?? { count: 0, totalMs: 0 }
    l.count++
    l.totalMs += ms
    this.latency.set(upstream, l)
    if (this.pending.length < 10_000) this.pending.push({ upstream, op, s: ms / 1000 })
  }

  bytesBySource (): { cache: number, peer: number, upstream: number } {
    const f = this.sources.fetch().bytesBySource
    return { cache: f.cache, peer: f.peer, upstream: f.registry + this.jobUpstreamBytes + this.relayedBytes }
  }

  json (): ProxyMetricsJson {
    const upstreamLatencyMs: ProxyMetricsJson['upstreamLatencyMs'] = {}
    for (const [u, l] of this.latency) upstreamLatencyMs[u] = { count: l.count, meanMs: Math.round(l.totalMs / l.count * 10) / 10 }
    return {
      listen: this.sources.listen(),
      requests: Object.fromEntries(this.requests),
      servedBytes: this.servedBytes,
      bytesBySource: this.bytesBySource(),
      blobs: { ...this.blobs, active: this.sources.activeJobs() },
      auth: { ...this.sources.auth() },
      fallbacks: this.fallbacks,
      cutOff: this.cutOff,
      upstreamLatencyMs,
      ...(this.sources.neighbours !== undefined ? { neighbours: this.sources.neighbours() } : {}),
      rafsRanges: { ...this.sources.rafs() },
      fetch: this.sources.fetch()
    }
  }

  /** Registers the mirror's series on a daemon's prom-client registry. */
  register (r: Registry): void {
    const self = this
    const mirrored = (name: string, help: string, labelNames: string[], points: () => Array<{ labels: Record<string, string>, value: number }>): void => {
      const last = new Map<string, number>()
      new Counter({
        name, help, labelNames, registers: [r],
        collect: function () {
          for (const p of points()) {
            const k = JSON.stringify(p.labels)
            const before = last.get(k) ?? 0
            if (p.value > before) this.inc(p.labels, p.value - before)
            last.set(k, Math.max(before, p.value))
          }
        }
      })
    }
    mirrored('rafspeer_proxy_requests_total', 'mirror requests by kind (base, manifest, blob, other) and HTTP status', ['kind', 'status'],
      () => [...this.requests].map(([k, v]) => { const [kind = '', status = ''] = k.split(' '); return { labels: { kind, status }, value: v } }))
    mirrored('rafspeer_proxy_served_bytes_total', 'blob bytes sent to mirror clients', [], () => [{ labels: {}, value: this.servedBytes }])
    mirrored('rafspeer_proxy_source_bytes_total', 'blob bytes the mirror got, by source: read from the cache, from peers, from the upstream', ['source'],
      () => Object.entries(this.bytesBySource()).map(([source, value]) => ({ labels: { source }, value })))
    mirrored('rafspeer_proxy_blobs_total', 'blob requests by how they were served: a confirmed map, a new fetch, joining a fetch, a relayed Range', ['how'],
      () => [['map', this.blobs.fromMap], ['job', this.blobs.jobs], ['joined', this.blobs.joined], ['relayed', this.blobs.relayed]].map(([how, value]) => ({ labels: { how: how as string }, value: value as number })))
    mirrored('rafspeer_proxy_blob_fetches_total', 'blob fetches by outcome: confirmed (digest matched) or failed', ['outcome'],
      () => [{ labels: { outcome: 'confirmed' }, value: this.blobs.confirmed }, { labels: { outcome: 'failed' }, value: this.blobs.failed }])
    mirrored('rafspeer_proxy_forged_maps_total', 'piece maps from neighbours proven false (their senders banned)', [], () => [{ labels: {}, value: this.blobs.forgedMaps }])
    mirrored('rafspeer_proxy_auth_checks_total', 'access checks by result: allowed, denied; probes sent upstream; allowed offline', ['result'],
      () => { const a = this.sources.auth(); return [['allowed', a.allowed], ['denied', a.denied], ['probe', a.probes], ['offline', a.offline], ['probe_failed', a.probeFailures]].map(([result, value]) => ({ labels: { result: result as string }, value: value as number })) })
    mirrored('rafspeer_proxy_rafs_chunks_total', 'chunks of Nydus data blob ranges checked against their bootstrap digests: verified, bad (the response cut before it)', ['result'],
      () => { const c = this.sources.rafs(); return [{ labels: { result: 'verified' }, value: c.chunksVerified }, { labels: { result: 'bad' }, value: c.badChunks }] })
    mirrored('rafspeer_proxy_fallbacks_total', 'answers that sent the client back to the registry (nothing could serve)', [], () => [{ labels: {}, value: this.fallbacks }])
    mirrored('rafspeer_proxy_cut_off_total', 'blob responses cut off after their first byte (a failed source, a failed digest)', [], () => [{ labels: {}, value: this.cutOff }])
    new Gauge({ name: 'rafspeer_proxy_active_fetches', help: 'blobs the mirror is getting now', registers: [r], collect: function () { this.set(self.sources.activeJobs()) } })
    const h = new Histogram({
      name: 'rafspeer_proxy_upstream_seconds', help: 'upstream calls of the mirror (manifests, access checks) by registry and operation',
      labelNames: ['upstream', 'op'], buckets: UPSTREAM_BUCKETS, registers: [r],
      collect: () => { for (const p of this.pending.splice(0)) h.observe({ upstream: p.upstream, op: p.op }, p.s) }
    })
  }
}
