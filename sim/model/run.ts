/** One model run, and the one-node baseline it is measured against. */
import { resolveConfig } from './config.js'
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
  return buildReport(world, cfg, end, aloneMs, cfg.runtime ? performance.now() - t0 : undefined)
}
