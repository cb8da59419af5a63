/**
 * A run's settings: the caller's options checked once, with the daemon's own defaults for everything a daemon
 * decides (taken from the daemon's modules, so a changed default changes the model too).
 */
import type { ModelInit } from './types.js'
import {
  DEFAULT_BITFIELD_WAIT_MS, DEFAULT_FETCH_IDLE_MS, DEFAULT_FLUSH_MS, DEFAULT_GRACE_MS, DEFAULT_GROUP_SIZE, DEFAULT_HEDGE_AFTER_MS,
  DEFAULT_HOLDERS_PER_FETCH, DEFAULT_READAHEAD_BYTES, DEFAULT_LOOKUP_HOLDERS, DEFAULT_BUSY_RETRIES, DEFAULT_BUSY_AFTER_PARK_MS, DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_CONCURRENT_UPLOADS, urgentUploadSlots, DEFAULT_MAX_HOLDERS, DEFAULT_MAX_REQUEST_BYTES,
  DEFAULT_MAX_SESSIONS, DEFAULT_REFRESH_MS, DEFAULT_STREAMS_PER_HOLDER, MAX_CHUNKS_PER_REQUEST, DEFAULT_CONCURRENCY, defaultPrefetchSlots, DEFAULT_NEIGHBOUR_IDLE_FACTOR,
  DEFAULT_DEADLINE_MS, defaultReadHandOffMs
} from './policy.js'

export const MAX_MODEL_NODES = 100_000
export const DEFAULT_IMAGE_BYTES = 1 << 30
export const DEFAULT_CHUNK_BYTES = 1 << 20
/** 10 Gbit/s */
export const DEFAULT_BANDWIDTH = 1.25e9
export const DEFAULT_RTT_MS = 1
export const DEFAULT_HEARTBEAT_MS = 1000
/** what `SchedulerClient` asks a resolve for (its HOLDERS_PER_DIGEST) */
export const DEFAULT_HOLDERS_PER_LOOKUP = DEFAULT_LOOKUP_HOLDERS
/** `SchedulerClient`'s default flushMs: reports are batched this long */
export const REPORT_FLUSH_MS = 50
export const DEFAULT_MAX_SIMULATED_MS = 3_600_000
/** `NeighbourSource`'s default busyBackoffMs */
export const DEFAULT_BUSY_BACKOFF_MS = 250
/** the reader's read-ahead in flight as this many fetch batches */
export const READER_WINDOW_BATCHES = 2
const DETAIL_LIMIT = 1000
/** chunks a `chunkSizes` layout may list */
const MAX_LAYOUT_CHUNKS = 4_000_000

export interface Config {
  nodes: number
  imageBytes: number
  chunkSize: number
  /** the layout of `ModelInit.chunkSizes` (one blob), or undefined: every chunk `chunkSize` */
  chunkSizes: Uint32Array | undefined
  blobs: number
  bandwidth: number
  registryBandwidth: number
  rttMs: number
  halfRttMs: number
  staggerMs: number
  failRate: number
  failWithinMs: number
  rejoinAfterMs: number | undefined
  seed: number
  heartbeatMs: number
  windowBatches: number
  batchBytes: number
  /** every node prefetches the whole image (`ModelInit.prefetch`) */
  prefetch: boolean
  /** the caps are rate limits with their bursts (`ModelInit.caps`) */
  limiters: boolean
  /** prefetch batches a node runs at once (the fetcher's prefetch slots) and the largest of them */
  prefetchSlots: number
  prefetchBatchBytes: number
  holdersPerLookup: number
  busyRetries: number
  busyBackoffMs: number
  parkTimeoutMs: number
  nodesDetail: 'all' | 'none'
  runtime: boolean
  maxSimulatedMs: number
  log: (line: string) => void
  // the daemon's
  groupSize: number
  graceMs: number
  bitfieldWaitMs: number
  refreshMs: number
  locatorMaxHolders: number
  haveFlushMs: number
  maxSessions: number
  holdersPerFetch: number
  hedgeAfterMs: number
  maxRequestBytes: number
  maxChunksPerRequest: number
  streamsPerHolder: number
  maxUploads: number
  /** slots past `maxUploads` for requests a read waits for (`ChunkServer`'s, a quarter more) */
  urgentUploads: number
  reportFlushMs: number
  /** the neighbour source's idle deadline (the fetcher's, times `NeighbourSource.idleFactor`) */
  fetchIdleMs: number
  /** a chunk a read waited for this long on the neighbours goes to the registry too (the fetcher's `readHandOffMs`) */
  readHandOffMs: number
  /** the machine's CPU (`ModelInit.cpu`): ms of work per byte received (from the registry, from a neighbour) and per request to a neighbour, and the cores left for it; undefined: not modelled */
  cpu: { msPerByte: number, peerMsPerByte: number, requestMs: number, connectMs: number, cores: number } | undefined
}

/** a machine's CPU left for chunks is never taken below this share of its cores by the nodes' background work */
const MIN_CPU_SHARE = 0.1

/** Checks `init` (every problem at once) and fills in the defaults. */
export function resolveConfig (init: ModelInit): Readonly<Config> {
  const problems: string[] = []
  const int = (name: string, v: number | undefined, min: number, max: number, dflt: number): number => {
    if (v === undefined) return dflt
    if (!Number.isInteger(v) || v < min || v > max) problems.push(`${name} must be a whole number from ${min} to ${max}, got ${v}`)
    return v
  }
  const num = (name: string, v: number | undefined, min: number, dflt: number, open = false): number => {
    if (v === undefined) return dflt
    if (!Number.isFinite(v) || v < min || (open && v === min)) problems.push(`${name} must be a number ${open ? '>' : '≥'} ${min}, got ${v}`)
    return v
  }
  const nodes = int('nodes', init.nodes, 1, MAX_MODEL_NODES, 1)
  let chunkSizes: Uint32Array | undefined
  if (init.chunkSizes !== undefined) {
    if (init.chunkSizes.length === 0 || init.chunkSizes.length > MAX_LAYOUT_CHUNKS) problems.push(`chunkSizes must list 1–${MAX_LAYOUT_CHUNKS} chunks, got ${init.chunkSizes.length}`)
    else if (init.chunkSizes.some(s => !Number.isInteger(s) || s < 1 || s > 16 << 20)) problems.push('chunkSizes must be integers of 1 byte to 16 MiB')
    else chunkSizes = Uint32Array.from(init.chunkSizes)
    if (init.blobs !== undefined && init.blobs !== 1) problems.push(`chunkSizes lays out one blob, got blobs ${init.blobs}`)
  }
  const imageBytes = chunkSizes !== undefined
    ? chunkSizes.reduce((a, b) => a + b, 0)
    : int('imageBytes', init.imageBytes, 1, Number.MAX_SAFE_INTEGER, DEFAULT_IMAGE_BYTES)
  const chunkSize = chunkSizes !== undefined
    ? Math.max(1, Math.round(imageBytes / chunkSizes.length))
    : int('chunkSize', init.chunkSize, 4096, 16 << 20, DEFAULT_CHUNK_BYTES)
  const blobs = chunkSizes !== undefined ? 1 : int('blobs', init.blobs, 1, 1024, 1)
  const bandwidth = num('bandwidth', init.bandwidth, 0, DEFAULT_BANDWIDTH, true)
  const registryBandwidth = num('registryBandwidth', init.registryBandwidth, 0, 2 * bandwidth, true)
  const rttMs = num('rttMs', init.rttMs, 0, DEFAULT_RTT_MS)
  const failRate = num('failRate', init.failRate, 0, 0)
  if (failRate > 1) problems.push(`failRate must be at most 1, got ${failRate}`)
  const perNodeMs = imageBytes / bandwidth * 1000
  const maxUploads = int('maxUploads', init.maxUploads, 1, 65535, DEFAULT_MAX_CONCURRENT_UPLOADS)
  const cfg: Config = {
    nodes,
    imageBytes,
    chunkSize,
    chunkSizes,
    blobs,
    bandwidth,
    registryBandwidth,
    rttMs,
    halfRttMs: rttMs / 2,
    staggerMs: num('staggerMs', init.staggerMs, 0, 0),
    failRate,
    failWithinMs: num('failWithinMs', init.failWithinMs, 0, Math.max(1000, 2 * perNodeMs), true),
    rejoinAfterMs: init.rejoinAfterMs === undefined ? undefined : num('rejoinAfterMs', init.rejoinAfterMs, 0, 0),
    seed: int('seed', init.seed, 0, 0xffffffff, 1),
    heartbeatMs: num('heartbeatMs', init.heartbeatMs, 50, DEFAULT_HEARTBEAT_MS),
    // a sequential reader on a lazy mount has the daemon's read-ahead in flight, not the fetcher's whole window
    // (8 × 4 MiB): measured against real swarms (`bench credibility`), the larger window made the model fetch
    // 1.5–5x the image from the registry where the daemons fetched 1.0x
    windowBatches: int('windowBatches', init.windowBatches, 1, 1024, READER_WINDOW_BATCHES),
    batchBytes: int('batchBytes', init.batchBytes, 1, 1 << 30, Math.min(DEFAULT_MAX_BATCH_BYTES, DEFAULT_READAHEAD_BYTES / READER_WINDOW_BATCHES)),
    prefetch: init.prefetch === 'all',
    limiters: init.caps === 'limiters',
    prefetchSlots: defaultPrefetchSlots(DEFAULT_CONCURRENCY),
    prefetchBatchBytes: DEFAULT_MAX_BATCH_BYTES,
    holdersPerLookup: int('holdersPerLookup', init.holdersPerLookup, 1, 16, DEFAULT_HOLDERS_PER_LOOKUP),
    busyRetries: int('busyRetries', init.busyRetries, 0, 100, DEFAULT_BUSY_RETRIES),
    busyBackoffMs: num('busyBackoffMs', init.busyBackoffMs, 1, DEFAULT_BUSY_BACKOFF_MS),
    parkTimeoutMs: DEFAULT_BUSY_AFTER_PARK_MS,
    nodesDetail: init.nodesDetail ?? (nodes <= DETAIL_LIMIT ? 'all' : 'none'),
    runtime: init.runtime ?? true,
    maxSimulatedMs: num('maxSimulatedMs', init.maxSimulatedMs, 0, DEFAULT_MAX_SIMULATED_MS, true),
    log: init.log ?? (() => {}),
    groupSize: DEFAULT_GROUP_SIZE,
    graceMs: DEFAULT_GRACE_MS,
    bitfieldWaitMs: DEFAULT_BITFIELD_WAIT_MS,
    refreshMs: DEFAULT_REFRESH_MS,
    locatorMaxHolders: DEFAULT_MAX_HOLDERS,
    haveFlushMs: DEFAULT_FLUSH_MS,
    maxSessions: DEFAULT_MAX_SESSIONS,
    holdersPerFetch: DEFAULT_HOLDERS_PER_FETCH,
    hedgeAfterMs: DEFAULT_HEDGE_AFTER_MS,
    maxRequestBytes: DEFAULT_MAX_REQUEST_BYTES,
    maxChunksPerRequest: MAX_CHUNKS_PER_REQUEST,
    streamsPerHolder: DEFAULT_STREAMS_PER_HOLDER,
    maxUploads,
    urgentUploads: int('urgentUploads', init.urgentUploads, 0, 65535, urgentUploadSlots(maxUploads)),
    reportFlushMs: REPORT_FLUSH_MS,
    // the neighbour source's idle deadline: the fetcher's, times the source's factor
    fetchIdleMs: DEFAULT_FETCH_IDLE_MS * DEFAULT_NEIGHBOUR_IDLE_FACTOR,
    readHandOffMs: num('readHandOffMs', init.readHandOffMs, 0, defaultReadHandOffMs(DEFAULT_DEADLINE_MS), true),
    cpu: undefined
  }
  if (init.cpu !== undefined) {
    const cores = num('cpu.cores', init.cpu.cores, 0, 1, true)
    const msPerMiB = num('cpu.msPerMiB', init.cpu.msPerMiB, 0, 0)
    const peerMsPerMiB = num('cpu.peerMsPerMiB', init.cpu.peerMsPerMiB, 0, msPerMiB)
    const requestMs = num('cpu.msPerRequest', init.cpu.msPerRequest, 0, 0)
    const connectMs = num('cpu.msPerConnection', init.cpu.msPerConnection, 0, 0)
    const busy = num('cpu.busyPerNode', init.cpu.busyPerNode, 0, 0)
    cfg.cpu = { msPerByte: msPerMiB / (1 << 20), peerMsPerByte: peerMsPerMiB / (1 << 20), requestMs, connectMs, cores: Math.max(cores * MIN_CPU_SHARE, cores - nodes * busy) }
  }
  if (init.prefetch !== undefined && init.prefetch !== 'all' && init.prefetch !== 'none') problems.push(`prefetch must be all or none, got ${String(init.prefetch)}`)
  if (init.caps !== undefined && init.caps !== 'links' && init.caps !== 'limiters') problems.push(`caps must be links or limiters, got ${String(init.caps)}`)
  if (init.nodesDetail !== undefined && init.nodesDetail !== 'all' && init.nodesDetail !== 'none') problems.push(`nodesDetail must be all or none, got ${String(init.nodesDetail)}`)
  if (problems.length > 0) throw new RangeError(`model options: ${problems.join('; ')}`)
  return Object.freeze(cfg)
}
