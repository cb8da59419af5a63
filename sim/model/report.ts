/** The model's report: the real mode's shape (per-node entries, egress, percentiles) plus what only a model counts. */
import type { Config } from './config.js'
import type { SimNode } from './node.js'
import type { ModelNodeReport, ModelReport, Spread } from './types.js'
import { TIMELINE_BUCKET_MS, type World } from './world.js'

/** points of the completion CDF and buckets of the egress timeline, at most */
const SERIES_POINTS = 200

/** the same percentile as the real mode's report (nearest rank) */
export const percentile = (sorted: readonly number[], p: number): number =>
  sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))]!

const round = (n: number, digits = 3): number => Math.round(n * 10 ** digits) / 10 ** digits

function spread (xs: readonly number[]): Spread {
  if (xs.length === 0) return { mean: 0, max: 0, min: 0 }
  let sum = 0
  let max = -Infinity
  let min = Infinity
  for (const x of xs) { sum += x; if (x > max) max = x; if (x < min) min = x }
  return { mean: round(sum / xs.length, 1), max, min }
}

/** What is wrong with a node's chunks: each received other than exactly once (a node that died may miss some). */
function differences (n: SimNode): string[] {
  const out: string[] = []
  const finished = n.completionMs !== null
  for (const nb of n.blobs) {
    for (let ci = 0; ci < nb.spec.chunks; ci++) {
      const got = nb.received[ci]!
      if (got > 1 || (got === 0 && finished)) out.push(`chunk ${ci} of blob ${nb.spec.index} received ${got} times`)
      if (out.length >= 10) return out
    }
  }
  // a node that died and stayed down was not expected to finish; one still running (or never started) was
  if (!finished && (n.alive || n.diedAt === null)) out.push('did not finish within the simulated time')
  return out
}

function nodeReport (n: SimNode, detail: boolean): ModelNodeReport {
  const fetch = [...n.batchMs].sort((a, b) => a - b)
  const diffs = differences(n)
  return {
    id: n.idx + 1,
    peerId: n.peerId,
    completionMs: n.completionMs === null ? null : round(n.completionMs),
    startMs: round(n.startedAt),
    mode: 'model',
    registryBytes: n.registryBytes,
    peerBytes: n.peerBytes,
    cacheBytes: 0,
    uploadBytes: n.uploadBytes,
    ok: diffs.length === 0,
    differences: diffs,
    fetchMs: detail ? { p50: round(percentile(fetch, 0.5)), p99: round(percentile(fetch, 0.99)), max: round(fetch[fetch.length - 1] ?? 0) } : { p50: 0, p99: 0, max: 0 },
    peerRequests: { sent: n.requests.sent, failed: n.requests.failed, timeouts: n.idleTimeouts, hedges: n.requests.hedges, busy: n.requests.busy, notFound: n.requests.notFound, badChunks: 0, redirects: n.requests.redirects },
    served: { ...n.served },
    diedAtMs: n.diedAt === null ? null : round(n.diedAt),
    restarts: n.restarts,
    duplicateBytes: n.duplicateBytes,
    messages: { scheduler: { ...n.msgs.scheduler }, have: { ...n.msgs.have }, chunk: { ...n.msgs.chunk } },
    controlBytes: { ...n.ctrl }
  }
}

export function buildReport (world: World, cfg: Readonly<Config>, endMs: number, aloneMs: number, realMs: number | undefined): ModelReport {
  const nodes = world.nodes
  const messagesOf = (n: SimNode): number => n.msgs.scheduler.sent + n.msgs.scheduler.received + n.msgs.have.sent + n.msgs.have.received + n.msgs.chunk.sent + n.msgs.chunk.received
  const reports = nodes.map(n => nodeReport(n, cfg.nodesDetail === 'all'))
  const times = reports.flatMap(r => r.completionMs === null ? [] : [r.completionMs]).sort((a, b) => a - b)
  const p50 = percentile(times, 0.5)
  const p99 = percentile(times, 0.99)
  const sum = (f: (n: SimNode) => number): number => nodes.reduce((a, n) => a + f(n), 0)
  const d = world.directory
  const ops = d.announces + d.resolves + d.heartbeats + d.reports
  const cdf: Array<[number, number]> = []
  const step = Math.max(1, Math.ceil(times.length / SERIES_POINTS))
  for (let k = step; k < times.length; k += step) cdf.push([times[k - 1]!, k])
  if (times.length > 0) cdf.push([times[times.length - 1]!, times.length])
  const factor = Math.max(1, Math.ceil(world.timeline.length / SERIES_POINTS))
  const timeline: number[] = []
  for (let i = 0; i < world.timeline.length; i += factor) timeline.push(world.timeline.slice(i, i + factor).reduce((a, b) => a + b, 0))
  const report: ModelReport = {
    mode: 'model',
    nodes: cfg.nodesDetail === 'all' ? reports : [],
    imageBytes: cfg.imageBytes,
    blobBytes: world.blobBytes,
    registryBytes: world.registryBytes,
    peerBytes: sum(n => n.peerBytes),
    verifiedOk: reports.every(r => r.ok),
    bandwidth: cfg.bandwidth,
    p50Ms: p50,
    p95Ms: percentile(times, 0.95),
    p99Ms: p99,
    maxMs: times[times.length - 1] ?? 0,
    wallMs: round(endMs),
    nativeReadMs: round(aloneMs),
    model: {
      seed: cfg.seed,
      nodes: cfg.nodes,
      completed: times.length,
      died: world.died,
      restarts: world.restarts,
      blobs: world.blobs.length,
      chunkSize: cfg.chunkSize,
      chunks: world.chunks,
      registryBandwidth: cfg.registryBandwidth,
      rttMs: cfg.rttMs,
      staggerMs: cfg.staggerMs,
      failRate: cfg.failRate,
      holdersPerLookup: cfg.holdersPerLookup,
      busyRetries: cfg.busyRetries,
      maxUploads: cfg.maxUploads,
      urgentUploads: cfg.urgentUploads,
      prefetch: cfg.prefetch ? 'all' : 'none',
      caps: cfg.limiters ? 'limiters' : 'links',
      ...(cfg.cpu !== undefined ? { cpu: { cores: round(cfg.cpu.cores), busyShare: round(world.cpuBusyMs / Math.max(1, world.queue.now)) } } : {}),
      registryRatio: round(world.registryBytes / world.blobBytes, 4),
      aloneMs: round(aloneMs),
      p50OverAlone: round(p50 / aloneMs),
      p99OverAlone: round(p99 / aloneMs),
      p99OverP50: p50 > 0 ? round(p99 / p50) : 0,
      duplicateBytes: sum(n => n.duplicateBytes),
      registryChunks: { assignee: sum(n => n.sourced.assignee), noGroup: sum(n => n.sourced.noGroup), ahead: sum(n => n.sourced.ahead), afterGrace: sum(n => n.sourced.grace), leftover: sum(n => n.sourced.leftover) },
      assigneeAsks: sum(n => n.assigneeAsks),
      readHandOffs: sum(n => n.readHandOffs),
      urgentServed: sum(n => n.served.urgentUploads),
      idleExtensions: sum(n => n.idleExtensions),
      peerRequests: {
        sent: sum(n => n.requests.sent),
        failed: sum(n => n.requests.failed),
        hedges: sum(n => n.requests.hedges),
        redirects: sum(n => n.requests.redirects),
        busy: sum(n => n.requests.busy),
        notFound: sum(n => n.requests.notFound),
        pendingFrames: sum(n => n.pendingFrames),
        idleTimeouts: sum(n => n.idleTimeouts),
        replans: sum(n => n.replans)
      },
      messages: {
        total: sum(n => n.msgs.scheduler.sent + n.msgs.have.sent + n.msgs.chunk.sent),
        perNode: spread(nodes.map(messagesOf)),
        byKind: { scheduler: sum(n => n.msgs.scheduler.sent), have: sum(n => n.msgs.have.sent), chunk: sum(n => n.msgs.chunk.sent) }
      },
      controlBytes: { total: sum(n => n.ctrl.sent), perNode: spread(nodes.map(n => n.ctrl.sent + n.ctrl.received)) },
      directory: {
        announces: d.announces,
        resolves: d.resolves,
        heartbeats: d.heartbeats,
        reports: d.reports,
        ops,
        opsPerSecond: endMs > 0 ? round(ops / (endMs / 1000), 1) : 0,
        expired: d.expired,
        bytesIn: d.bytesIn,
        bytesOut: d.bytesOut,
        stats: d.index.stats()
      },
      completionCdf: cdf,
      registryTimeline: { bucketMs: TIMELINE_BUCKET_MS * factor, bytes: timeline },
      events: world.queue.processed,
      simulatedMs: round(world.queue.now)
    }
  }
  if (realMs !== undefined) {
    const mem = process.memoryUsage()
    report.runtime = {
      realMs: Math.round(realMs),
      eventsPerSecond: Math.round(world.queue.processed / (realMs / 1000)),
      heapUsedBytes: mem.heapUsed,
      rssBytes: process.resourceUsage().maxRSS * 1024,
      simulatedOverReal: round(endMs / realMs)
    }
  }
  return report
}

const gib = (n: number): string => n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(2)} GiB` : `${(n / (1 << 20)).toFixed(1)} MiB`
const s = (ms: number | null): string => ms === null ? '-' : `${(ms / 1000).toFixed(3)} s`
const rate = (bps: number): string => bps >= 1e9 ? `${(bps / 1e9).toFixed(2)} GB/s` : `${(bps / (1 << 20)).toFixed(1)} MiB/s`

/** The report as a few human lines (and a per-node table for small runs). */
export function formatModelReport (r: ModelReport): string {
  const m = r.model
  const dir = m.directory
  const lines = [
    `model: ${m.nodes} nodes, ${gib(r.blobBytes)} image in ${m.blobs} blob(s) of ${gib(m.chunkSize)} chunks (${m.chunks} chunks); ` +
      `each node ${rate(r.bandwidth)} up and down, registry ${rate(m.registryBandwidth)}${m.caps === 'limiters' ? ' (rate limits with their bursts)' : ''}, RTT ${m.rttMs} ms${m.staggerMs > 0 ? `, stagger ${m.staggerMs} ms` : ''}${m.failRate > 0 ? `, fail rate ${m.failRate}` : ''}; seed ${m.seed}`,
    `registry egress: ${gib(r.registryBytes)} = ${m.registryRatio.toFixed(3)}x the image; from peers: ${gib(r.peerBytes)}; duplicate bytes ${gib(m.duplicateBytes)}`,
    `registry chunks: ${m.registryChunks.assignee} as the rendezvous assignee, ${m.registryChunks.noGroup} as the assignee without the scheduler's group, ${m.registryChunks.ahead} ahead of an assignee behind, ${m.registryChunks.afterGrace} after the grace, ${m.registryChunks.leftover} left by neighbour fetches; ${m.assigneeAsks} asked of their assignee first; ${m.readHandOffs} a read waited for past the hand-off; ${m.urgentServed} requests a read waited for answered in the slots kept for reads`,
    `completion: p50 ${s(r.p50Ms)}, p95 ${s(r.p95Ms)}, p99 ${s(r.p99Ms)}, max ${s(r.maxMs)}; one node alone ${s(m.aloneMs)}: ` +
      `p50 ${m.p50OverAlone.toFixed(2)}x, p99 ${m.p99OverAlone.toFixed(2)}x of it, p99/p50 ${m.p99OverP50.toFixed(2)}`,
    `directory: ${dir.ops} ops (${dir.announces} announces, ${dir.resolves} resolves, ${dir.heartbeats} heartbeats, ${dir.reports} reports) = ${dir.opsPerSecond}/s; ` +
      `${dir.stats.entries} entries over ${dir.stats.peers} peers and ${dir.stats.digests} blob(s); ${dir.expired} expired`,
    `per node: ${m.messages.perNode.mean} messages (max ${m.messages.perNode.max}), ${(m.controlBytes.perNode.mean / 1024).toFixed(1)} KiB of control (max ${(m.controlBytes.perNode.max / 1024).toFixed(1)} KiB); ` +
      `requests to peers ${m.peerRequests.sent} (busy ${m.peerRequests.busy}, not found ${m.peerRequests.notFound}, failed ${m.peerRequests.failed}, hedges ${m.peerRequests.hedges}, redirects ${m.peerRequests.redirects}, fetches given up idle ${m.peerRequests.idleTimeouts}, idle deadlines started over as chunks spread ${m.idleExtensions})`,
    `nodes: ${m.completed} finished, ${m.died} died, ${m.restarts} restarted`,
    `verified: ${r.verifiedOk ? 'every node got every chunk exactly once' : 'PROBLEMS (see the nodes)'}`,
    `model: ${m.events} events, ${s(r.wallMs)} simulated${r.runtime !== undefined ? ` in ${s(r.runtime.realMs)} real (${r.runtime.eventsPerSecond} events/s), peak RSS ${gib(r.runtime.rssBytes)}` : ''}`
  ]
  const heap = r.runtime?.directoryHeap
  if (heap !== undefined && heap !== null) {
    lines.splice(5, 0, `directory memory: ${gib(heap.bytes)} at the end (${heap.perEntry} B per entry, ${heap.perPeer} B per peer)`)
  }
  if (r.nodes.length > 0 && r.nodes.length <= 64) {
    lines.push('  node  time       registry    peers       uploaded    messages  control')
    for (const n of r.nodes) {
      const msgs = n.messages.scheduler.sent + n.messages.have.sent + n.messages.chunk.sent
      lines.push(`  ${String(n.id).padEnd(5)} ${s(n.completionMs).padEnd(10)} ${gib(n.registryBytes).padEnd(11)} ${gib(n.peerBytes).padEnd(11)} ${gib(n.uploadBytes).padEnd(11)} ${String(msgs).padEnd(9)} ${(n.controlBytes.sent / 1024).toFixed(1)} KiB` +
        `${n.diedAtMs !== null ? ` died at ${s(n.diedAtMs)}` : ''}${n.ok ? '' : `: ${n.differences.join('; ')}`}`)
    }
  }
  return lines.join('\n')
}
