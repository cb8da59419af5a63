/**
 * The model held against reality: the model's options for a real run's parameters ({@link modelInitFor}), and the
 * two reports compared figure by figure ({@link compareRuns}) against the bounds issue 13 sets for the model
 * (egress within ±5%, completion p50 and max within ±15%).
 *
 * The mapping is from what the real run configures, never fitted to its results:
 * - bytes: the model's chunks are plaintext, the real registry sends compressed blobs. Nodes' links are capped in
 *   plaintext (the fetcher's download limiter, the chunk server's upload pacing), the registry in blob bytes, so in
 *   the model's plaintext units the registry's cap is `bandwidth × imageBytes / blobBytes`; egress compares as a
 *   ratio (registry bytes over one full pull) on both sides.
 * - the reader: the real one reads the tree file by file through a lazy mount, with the daemon's 4 MiB read-ahead
 *   (`ReadAhead`: the next window is asked for once the reader is within half a window of it), so 2–4 MiB are in
 *   flight, in pieces of about half the window. The model's reader keeps the fetcher's 8 batches × 4 MiB in
 *   flight; `window: 'reader'` gives it the real reader's 2 × 2 MiB instead.
 * - the caps: the real ones are rate limits (token buckets: an idle daemon takes a quarter second's worth at once),
 *   the model's `caps: 'limiters'`.
 * - the scheduler: `rafspeer sim` gives its daemons a 1 s heartbeat, the model's default.
 *
 * @example
 * ```ts
 * const init = { nodes: 4, imageBytes: 32 << 20, bandwidth: 8 << 20, directory: 'blobs' } as const
 * const real = await runSwarm(init)
 * const model = runModel(modelInitFor(init, real, { window: 'reader' }))
 * for (const c of compareRuns(real, model)) console.log(c.figure, c.real, c.model, c.ratio, c.within)
 * ```
 */
import type { ModelCpu, ModelInit, ModelReport } from './model/index.js'
import type { SwarmInit, SwarmReport } from './swarm.js'

/** `rafspeer sim`'s chunk size when none is given (the image builder's default, `rafs` DEFAULT_CHUNK_SIZE) */
export const REAL_DEFAULT_CHUNK_BYTES = 1 << 20
/** the daemon's read-ahead of a sequential reader (`fetch.readaheadBytes`, `DEFAULT_READAHEAD_BYTES`) */
export const REAL_READAHEAD_BYTES = 4 << 20
/** issue 13's bounds on the model: egress within ±5%, completion p50 and max within ±15% */
export const ISSUE_BOUNDS: Readonly<CredibilityBounds> = Object.freeze({ egress: 0.05, times: 0.15 })

export interface CredibilityBounds {
  /** largest |model / real − 1| of the egress ratio */
  egress: number
  /** largest |model / real − 1| of completion p50 and max */
  times: number
}

export interface ModelMappingOptions {
  /** the model's round-trip time between any two parties (default 1 ms; loopback plus the daemons' event loops) */
  rttMs?: number
  /** the model's reader: the fetcher's whole window ('daemon', as `rafspeer sim --model` runs) or the real reader's read-ahead ('reader', default) */
  window?: 'daemon' | 'reader'
  /** the model's image: the real run's chunk layout ('real', default when the report has it) or chunks all of one size */
  layout?: 'real' | 'uniform'
  /** the machine's CPU under every node (`ModelInit.cpu`; {@link fitMachineCpu}); absent: not modelled */
  cpu?: ModelCpu
  seed?: number
}

/**
 * A calibration run on the machine: the plaintext its nodes received from the registry and from neighbours, the
 * time its nodes spent reading (ms, summed over the nodes), the requests its nodes sent neighbours, and the CPU the
 * reading phase took (`SwarmReport.readCpuMs`).
 */
export interface CpuSample { registryBytes: number, peerBytes: number, nodeMs: number, requests?: number, cpuMs: number }

/**
 * The calibration sample of a real run, or undefined when its CPU was not measured. A node counts from its start to
 * its last byte, not over the whole reading phase: a daemon waiting for its turn (the relay's second node, started
 * once the first is done) costs little — 10–20 ms of CPU a second (per-process samples, session 22), where a reading
 * node's background was fitted at 57–69 — and charging its wait as reading made the fit take the neighbour's MiB
 * for cheaper than the registry's (21.0 against 29.4 ms; per cap 28 and 31 once counted so).
 */
export function cpuSampleOf (real: SwarmReport): CpuSample | undefined {
  if (real.readCpuMs === undefined) return undefined
  const reading = real.nodes.reduce((a, n) => a + n.completionMs, 0)
  return {
    registryBytes: real.nodes.reduce((a, n) => a + n.registryBytes, 0),
    peerBytes: real.nodes.reduce((a, n) => a + n.peerBytes, 0),
    nodeMs: reading,
    requests: real.nodes.reduce((a, n) => a + n.peerRequests.sent, 0),
    cpuMs: real.readCpuMs
  }
}

/**
 * The machine's CPU for the model (`ModelInit.cpu`), fitted by least squares to calibration runs as
 * `cpuMs = registry MiB × msPerMiB + neighbour MiB × peerMsPerMiB + node-ms × busyPerNode`: the work a MiB costs by
 * where it came from, and a reading node's background share of a core (its timers, have flushes, heartbeats). Runs
 * that cannot separate a part (no neighbour bytes in any: the neighbour's cost is the registry's), or a fit with a
 * negative part, fall back to fewer parts. Fitted from runs that are not the ones the model is held against.
 *
 * A request to a neighbour costs `msPerRequest` whatever it carries, measured apart (`bench chunk-requests`: a
 * calibration run has a few hundred requests, a swarm of 8 some 3,500, mostly one or two chunks each and REDIRECTs):
 * taken off each sample's CPU before the fit, and handed to the model.
 */
export function fitMachineCpu (cores: number, samples: readonly CpuSample[], msPerRequest = 0): ModelCpu {
  if (!(msPerRequest >= 0)) throw new RangeError(`a request's CPU must be ≥ 0 ms, got ${msPerRequest}`)
  const xs = samples
    .map(x => ({ ...x, cpuMs: x.cpuMs - (x.requests ?? 0) * msPerRequest }))
    .filter(x => x.registryBytes + x.peerBytes > 0 && x.nodeMs > 0 && x.cpuMs >= 0)
  if (xs.length === 0) throw new RangeError('fitting the machine\'s CPU needs a calibration run with its CPU measured')
  const reg = (x: CpuSample): number => x.registryBytes / (1 << 20)
  const peer = (x: CpuSample): number => x.peerBytes / (1 << 20)
  const all = (x: CpuSample): number => reg(x) + peer(x)
  const tries: Array<{ cols: Array<(x: CpuSample) => number>, make: (p: number[]) => ModelCpu }> = [
    { cols: [reg, peer, x => x.nodeMs], make: p => ({ cores, msPerMiB: p[0]!, peerMsPerMiB: p[1]!, busyPerNode: p[2]! }) },
    { cols: [reg, peer], make: p => ({ cores, msPerMiB: p[0]!, peerMsPerMiB: p[1]!, busyPerNode: 0 }) },
    { cols: [all, x => x.nodeMs], make: p => ({ cores, msPerMiB: p[0]!, peerMsPerMiB: p[0]!, busyPerNode: p[1]! }) },
    { cols: [all], make: p => ({ cores, msPerMiB: p[0]!, peerMsPerMiB: p[0]!, busyPerNode: 0 }) }
  ]
  for (const t of tries) {
    if (xs.length < t.cols.length) continue
    const p = leastSquares(xs.map(x => t.cols.map(c => c(x))), xs.map(x => x.cpuMs))
    if (p !== undefined && p.every(v => v >= 0)) return { ...t.make(p), ...(msPerRequest > 0 ? { msPerRequest } : {}) }
  }
  throw new RangeError('the calibration runs fit no machine (the CPU they took fell as they moved more)')
}

/** argmin |A p − y|² by the normal equations (a few unknowns); undefined when they do not determine p */
function leastSquares (a: number[][], y: number[]): number[] | undefined {
  const k = a[0]!.length
  const m = Array.from({ length: k }, (_, i) => Array.from({ length: k + 1 }, (_, j) =>
    a.reduce((acc, row, r) => acc + row[i]! * (j < k ? row[j]! : y[r]!), 0)))
  for (let c = 0; c < k; c++) {
    let piv = c
    for (let r = c + 1; r < k; r++) if (Math.abs(m[r]![c]!) > Math.abs(m[piv]![c]!)) piv = r
    const scale = Math.max(...m.map(row => Math.abs(row[c]!)))
    if (scale === 0 || Math.abs(m[piv]![c]!) <= 1e-9 * scale) return undefined
    ;[m[c], m[piv]] = [m[piv]!, m[c]!]
    for (let r = 0; r < k; r++) {
      if (r === c) continue
      const f = m[r]![c]! / m[c]![c]!
      for (let j = c; j <= k; j++) m[r]![j]! -= f * m[c]![j]!
    }
  }
  return m.map((row, i) => row[k]! / row[i]!)
}

/** The model's options for the real run `init` that produced `real`. */
export function modelInitFor (init: SwarmInit, real: SwarmReport, opts: ModelMappingOptions = {}): ModelInit {
  if (real.bandwidth === null) throw new RangeError('the model needs the real run\'s bandwidth cap: the real run had none')
  const halfWindow = REAL_READAHEAD_BYTES / 2
  const layout = (opts.layout ?? 'real') === 'real' && real.chunkSizes !== undefined && real.chunkSizes.length > 0 ? real.chunkSizes : undefined
  const plainBytes = layout !== undefined ? layout.reduce((a, b) => a + b, 0) : real.imageBytes
  return {
    nodes: init.nodes,
    ...(layout !== undefined ? { chunkSizes: layout } : { imageBytes: real.imageBytes, chunkSize: init.chunkSize ?? REAL_DEFAULT_CHUNK_BYTES }),
    bandwidth: real.bandwidth,
    // the registry sends stored (compressed) bytes, the model plaintext: its cap scaled by their ratio
    registryBandwidth: real.bandwidth * plainBytes / real.blobBytes,
    // the real caps are the daemons' and the registry's rate limits, bursts and all
    caps: 'limiters',
    rttMs: opts.rttMs ?? 1,
    staggerMs: init.staggerMs ?? 0,
    heartbeatMs: 1000,
    seed: opts.seed ?? 1,
    ...((opts.window ?? 'reader') === 'reader' ? { windowBatches: 2, batchBytes: halfWindow } : {}),
    ...(opts.cpu !== undefined ? { cpu: opts.cpu } : {}),
    ...(init.prefetch === 'all' ? { prefetch: 'all' as const } : {}),
    runtime: false
  }
}

export interface FigureComparison {
  figure: 'egress' | 'p50Ms' | 'maxMs'
  real: number
  model: number
  /** model / real */
  ratio: number
  bound: number
  within: boolean
}

/** Egress (registry bytes over one full pull), completion p50 and max, real against modelled. */
export function compareRuns (real: SwarmReport, model: ModelReport, bounds: CredibilityBounds = ISSUE_BOUNDS): FigureComparison[] {
  const figure = (name: FigureComparison['figure'], r: number, m: number, bound: number): FigureComparison => {
    const ratio = m / r
    return { figure: name, real: r, model: m, ratio, bound, within: Math.abs(ratio - 1) <= bound }
  }
  return [
    figure('egress', real.registryBytes / real.blobBytes, model.model.registryRatio, bounds.egress),
    figure('p50Ms', real.p50Ms, model.p50Ms, bounds.times),
    figure('maxMs', real.maxMs, model.maxMs, bounds.times)
  ]
}
