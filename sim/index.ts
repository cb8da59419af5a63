/**
 * @packageDocumentation
 * Many peers at once. The real mode ({@link runSwarm}): the embedded registry, a scheduler and N real daemon
 * processes on this machine, every node reading a published image through its own lazy mount, checked against
 * the source, with a report of registry egress, bytes from peers and completion times. Plus the image contents
 * the simulator and the demo publish ({@link generateTree}) and the content maps that check what was read.
 *
 * @example
 * ```ts
 * const report = await runSwarm({ nodes: 8, imageBytes: 64 << 20, bandwidth: 4 << 20 })
 * ```
 */
export { runSwarm, formatSwarmReport, type SwarmInit, type SwarmReport, type NodeReport } from './swarm.js'
export { generateTree, contentMap, diffContent, type ContentMap } from './source-tree.js'
