/**
 * @packageDocumentation
 * The model mode of `sim/`: a deterministic discrete-event model of a swarm, 10 to 100 000 nodes in one process,
 * that runs the daemon's real policy code — the scheduler's holder index (blob-level keys, claims, ranking,
 * expiry), each node's have table, back-to-source by rendezvous hash — over modelled links (per-node upload and
 * download, a registry egress cap, a round-trip time on every message), with seeded failures and restarts. Its
 * report has the real mode's shape plus what only a model counts: messages and control bytes per node, the
 * scheduler's operations per second, the registry's egress over time, the completion CDF. Nothing real is
 * started: no registry server, no daemon, no socket.
 *
 * What the daemon decides inside timer-driven classes it runs too, through the pure module those classes call
 * (`peer/exchange/swarm-policy.ts`); the model's simplifications are listed in this folder's README.
 *
 * @example
 * ```ts
 * import { runModel, formatModelReport, modelChartSvg } from './sim/model/index.js'
 * const report = runModel({ nodes: 1000, imageBytes: 3e9, chunkSize: 4 << 20, bandwidth: 1.25e9, seed: 7 })
 * console.log(formatModelReport(report))            // registry egress 1.0xx the image, p50/p99 vs one node alone
 * await writeFile('swarm.svg', modelChartSvg(report))
 * ```
 */
export { runModel } from './run.js'
export { formatModelReport } from './report.js'
export { modelChartSvg } from './chart.js'
export { MAX_MODEL_NODES } from './config.js'
export type { ModelCpu, ModelInit, ModelReport, ModelNodeReport, Count, Spread } from './types.js'
