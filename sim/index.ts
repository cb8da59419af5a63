/**
 * @packageDocumentation
 * Many peers at once. The real mode ({@link runSwarm}): the embedded registry, a scheduler and N real daemon
 * processes on this machine, every node reading a published image through its own lazy mount, checked against
 * the source, with a report of registry egress, bytes from peers and completion times. The model mode
 * ({@link runModel}, `model/`): a deterministic discrete-event model of 10 to 100 000 nodes in this process, running
 * the daemon's own scheduler index, have table and back-to-source policy over modelled links, with the same report
 * and what only a model can count. Plus the image contents the simulator and the demo publish ({@link generateTree})
 * and the content maps that check what was read. {@link modelInitFor} and {@link compareRuns} hold the model against a
 * real run with the same parameters.
 *
 * @example
 * ```ts
 * const report = await runSwarm({ nodes: 8, imageBytes: 64 << 20, bandwidth: 4 << 20 })
 * const modelled = runModel({ nodes: 10_000, imageBytes: 3e9, chunkSize: 4 << 20, seed: 1 })
 * ```
 */
export { runSwarm, formatSwarmReport, type SwarmInit, type SwarmReport, type NodeReport } from './swarm.js'
export {
  modelInitFor, compareRuns, cpuSampleOf, fitMachineCpu, ISSUE_BOUNDS, type CpuSample, type CredibilityBounds, type FigureComparison, type ModelMappingOptions
} from './credibility.js'
export { generateTree, contentMap, diffContent, type ContentMap } from './source-tree.js'
export {
  runModel, formatModelReport, modelChartSvg, MAX_MODEL_NODES, type ModelCpu, type ModelInit, type ModelReport, type ModelNodeReport
} from './model/index.js'
