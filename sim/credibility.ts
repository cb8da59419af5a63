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
import type { ModelInit, ModelReport } from './model/index.js'
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
  seed?: number
}

/** The model's options for the real run `init` that produced `real`. */
export function modelInitFor (init: SwarmInit, real: SwarmReport, opts: ModelMappingOptions = {}): ModelInit {
  if (real.bandwidth === null) throw new RangeError('the model needs the real run\'s bandwidth cap: the real run had none')
  if (init.prefetch === 'all') throw new RangeError('the model reads what a reader reads: it has no whole-image prefetch')
  const halfWindow = REAL_READAHEAD_BYTES / 2
  const layout = (opts.layout ?? 'real') === 'real' && real.chunkSizes !== undefined && real.chunkSizes.length > 0 ? real.chunkSizes : undefined
  const plainBytes = layout !== undefined ? layout.reduce((a, b) => a + b, 0) : real.imageBytes
  return {
    nodes: init.nodes,
    ...(layout !== undefined ? { chunkSizes: layout } : { imageBytes: real.imageBytes, chunkSize: init.chunkSize ?? REAL_DEFAULT_CHUNK_BYTES }),
    bandwidth: real.bandwidth,
    // the registry sends stored (compressed) bytes, the model plaintext: its cap scaled by their ratio
    registryBandwidth: real.bandwidth * plainBytes / real.blobBytes,
    rttMs: opts.rttMs ?? 1,
    staggerMs: init.staggerMs ?? 0,
    heartbeatMs: 1000,
    seed: opts.seed ?? 1,
    ...((opts.window ?? 'reader') === 'reader' ? { windowBatches: 2, batchBytes: halfWindow } : {}),
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
