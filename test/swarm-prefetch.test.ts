/**
 * A swarm whose every node prefetches the whole image (issue 13, "reads first, prefetch rarest-first"): real
 * daemons with lazy mounts, the blob-level directory and the embedded registry capped like a shared uplink. Each
 * node prefetches its share of the registry's chunks one slice at a time and the rest from its neighbours as they
 * get them, so no read waits past its deadline. (Before: every node prefetched the same slices from the registry at
 * once; at 8 nodes × 24 MiB reads failed with EIO at the 30 s deadline, and at 8 × 64 MiB the registry sent 4.2
 * copies when they did not.) The registry still sends more than one copy at this size (1.05–2.12 measured, mean 1.7:
 * reads of chunks whose assignee fetches them slowly from the shared registry, whose askers are answered BUSY and
 * after the idle deadline take them from the registry too); the bound holds what is measured, with room for a loaded
 * machine, not the goal (bench/RESULTS.md).
 */
import '../polyfill.js'
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { swarmSkipReason } from './helpers/swarm.js'
import { runSwarm } from '../sim/index.js'

const MiB = 1 << 20
/** registry egress over the blob's size at most this (measured 1.05–2.12 here; 1.0–1.32 at 8 nodes × 64 MiB) */
const EGRESS_MAX = 3.5

const skip = swarmSkipReason()

describe('a swarm that prefetches everything', { skip }, () => {
  it('8 nodes × 24 MiB at 4 MiB/s, all prefetching: every read served and right', async () => {
    const r = await runSwarm({ nodes: 8, imageBytes: 24 * MiB, bandwidth: 4 * MiB, directory: 'blobs', prefetch: 'all' })
    const egress = r.registryBytes / r.blobBytes
    process.stderr.write(`swarm-prefetch: egress ${egress.toFixed(3)}, p50 ${r.p50Ms} ms, max ${r.maxMs} ms\n`)
    assert.ok(r.verifiedOk, 'every node read exactly the published tree')
    for (const n of r.nodes) assert.ok(n.ok, `node${n.id}: ${n.differences.join('; ')}`)
    assert.ok(egress <= EGRESS_MAX, `the registry sent ${egress.toFixed(3)}x the blob`)
  })
})
