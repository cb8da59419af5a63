/** One model run, and the one-node baseline it is measured against. */
import { resolveConfig } from './config.js'
import { heapHeldBy } from './heap.js'
import { buildReport } from './report.js'
import type { ModelInit, ModelReport } from './types.js'
import { World } from './world.js'

export function runModel (init: ModelInit): ModelReport {
  const cfg = resolveConfig(init)
  const t0 = performance.now()
  // the baseline: one node alone over the same links, nothing failing
  let aloneMs: number
  if (cfg.nodes === 1 && cfg.failRate === 0) {
    aloneMs = NaN
  } else {
    const alone = new World(resolveConfig({ ...init, nodes: 1, failRate: 0, staggerMs: 0, nodesDetail: 'none', runtime: false, log: () => {} }))
    alone.run()
    aloneMs = alone.nodes[0]!.completionMs ?? NaN
  }
  cfg.log(`modelling ${cfg.nodes} node(s): ${(cfg.imageBytes / 2 ** 20).toFixed(0)} MiB image, ${(cfg.chunkSize / 2 ** 20).toFixed(2)} MiB chunks, seed ${cfg.seed}`)
  const world = new World(cfg)
  const end = world.run()
  if (Number.isNaN(aloneMs)) aloneMs = world.nodes[0]!.completionMs ?? 0
  const report = buildReport(world, cfg, end, aloneMs, cfg.runtime ? performance.now() - t0 : undefined)
  if (report.runtime !== undefined) {
    // the scheduler's memory at the end of the run, all peers in it: what a directory of this swarm costs
    const { entries, peers } = report.model.directory.stats
    const bytes = heapHeldBy(() => { world.directory.release() })
    report.runtime.directoryHeap = bytes === null
      ? null
      : { bytes, perEntry: entries > 0 ? Math.round(bytes / entries) : 0, perPeer: peers > 0 ? Math.round(bytes / peers) : 0 }
  }
  return report
}
