/**
 * The swarm benchmark: `rafspeer sim` with one node alone (the baseline) and with N nodes, same image, same caps
 * (each node's upload and download and the registry's egress at the same bandwidth), in the same run. Reports
 * registry egress / image blob bytes (goal ≤ 1.1) and the slowest node's completion / the lone node's (goal ≤ 2).
 * Every node, its reader and the registry share this machine's cores, so at high caps the run measures CPU, not
 * the swarm: the defaults (8 nodes, 64 MiB, 4 MiB/s) keep 8 nodes under what two cores sustain.
 */
import { runSwarm, type SwarmReport } from '../sim/index.js'

export interface SwarmBenchOptions {
  nodes?: number
  imageBytes?: number
  bandwidth?: number
  log?: (line: string) => void
}

export interface SwarmBenchResult {
  nodes: number
  imageBytes: number
  blobBytes: number
  bandwidth: number
  aloneMs: number
  slowestMs: number
  p50Ms: number
  /** registry egress / blob bytes, with N nodes */
  egressRatio: number
  /** slowest node's completion / one node alone */
  slowdown: number
  peerBytes: number
  /** upload bytes per node, to see how the serving spread */
  uploads: number[]
  verifiedOk: boolean
}

export async function benchSwarm (opts: SwarmBenchOptions = {}): Promise<SwarmBenchResult> {
  const nodes = opts.nodes ?? 8
  // all nodes share this machine's cores: the cap must be low enough that bandwidth, not CPU, is what is measured
  const imageBytes = opts.imageBytes ?? 64 << 20
  const bandwidth = opts.bandwidth ?? 4 << 20
  const log = opts.log ?? (() => {})
  const alone: SwarmReport = await runSwarm({ nodes: 1, imageBytes, bandwidth, log })
  const swarm: SwarmReport = await runSwarm({ nodes, imageBytes, bandwidth, log })
  return {
    nodes,
    imageBytes: swarm.imageBytes,
    blobBytes: swarm.blobBytes,
    bandwidth,
    aloneMs: alone.maxMs,
    slowestMs: swarm.maxMs,
    p50Ms: swarm.p50Ms,
    egressRatio: swarm.registryBytes / swarm.blobBytes,
    slowdown: swarm.maxMs / alone.maxMs,
    peerBytes: swarm.peerBytes,
    uploads: swarm.nodes.map(n => n.uploadBytes),
    verifiedOk: alone.verifiedOk && swarm.verifiedOk
  }
}

export function formatSwarmBench (r: SwarmBenchResult): string {
  const mib = (n: number): string => `${(n / (1 << 20)).toFixed(0)} MiB`
  return [
    `swarm: ${r.nodes} nodes reading a ${mib(r.imageBytes)} image (${mib(r.blobBytes)} of blobs), every node and the registry at ${mib(r.bandwidth)}/s`,
    `  registry egress / image blobs: ${r.egressRatio.toFixed(3)} (goal ≤ 1.1)`,
    `  slowest node ${(r.slowestMs / 1000).toFixed(2)} s (p50 ${(r.p50Ms / 1000).toFixed(2)} s) / one node alone ${(r.aloneMs / 1000).toFixed(2)} s = ${r.slowdown.toFixed(2)} (goal ≤ 2)`,
    `  uploads per node: ${r.uploads.map(mib).join(', ')}; every tree verified: ${r.verifiedOk ? 'yes' : 'NO'}`
  ].join('\n')
}
