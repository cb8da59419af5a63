/**
 * The model, run for real at small sizes: a seed replays a run byte for byte; every node gets every chunk exactly
 * once and the bytes add up; one node alone takes what its links allow; nodes starting together cost the
 * registry about one copy (the daemon's 3-node case, and many nodes with ample upload slots); a chunk wanted by
 * many at once does not all come from its first holder's uplink; a swarm with failing and restarting nodes still
 * finishes. A swarm prefetching the whole image as daemons with `prefetch: all` do gets every chunk once (reads and
 * prefetch slices join each other's flights), its group's members each fetching their share from the registry.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { runModel, type ModelInit, type ModelReport } from './index.js'
import { resolveConfig } from './config.js'
import { World } from './world.js'

const MiB = 1 << 20
const small: ModelInit = { nodes: 20, imageBytes: 32 * MiB, chunkSize: MiB, runtime: false }
const AMPLE: Partial<ModelInit> = { busyRetries: 10, maxUploads: 64 }

function assertComplete (r: ModelReport): void {
  assert.equal(r.verifiedOk, true, r.nodes.filter(n => !n.ok).map(n => `${n.id}: ${n.differences.join('; ')}`).join('\n'))
  for (const n of r.nodes) {
    if (n.diedAtMs !== null && n.restarts === 0) continue
    assert.notEqual(n.completionMs, null, `node ${n.id} did not finish`)
  }
}

describe('the swarm model', () => {
  it('replays a run byte for byte from its seed; another seed is another run', () => {
    const init: ModelInit = { ...small, failRate: 0.1, seed: 7 }
    const a = JSON.stringify(runModel(init))
    const b = JSON.stringify(runModel(init))
    assert.equal(a, b)
    assert.notEqual(JSON.stringify(runModel({ ...init, seed: 8 })), a)
  })

  it('gives every node every chunk exactly once, and the bytes add up', () => {
    const r = runModel({ ...small, blobs: 2, chunkSize: 512 << 10 })
    assertComplete(r)
    assert.equal(r.nodes.length, 20)
    assert.equal(r.blobBytes, 32 * MiB)
    for (const n of r.nodes) assert.equal(n.registryBytes + n.peerBytes, r.blobBytes, `node ${n.id}`)
    const fromRegistry = r.nodes.reduce((a, n) => a + n.registryBytes, 0)
    // nothing was cut off (nobody failed), so the registry sent exactly what nodes took from it
    assert.equal(r.registryBytes, fromRegistry)
    assert.equal(r.peerBytes + r.model.duplicateBytes, r.nodes.reduce((a, n) => a + n.uploadBytes, 0))
    assert.equal(r.model.completed, 20)
    assert.ok(r.p50Ms <= r.p95Ms && r.p95Ms <= r.p99Ms && r.p99Ms <= r.maxMs)
  })

  it('a read waits for neighbours readHandOffMs at most: then its chunks go to the registry too, each landing once', () => {
    const base: ModelInit = { ...small, nodes: 8, bandwidth: 4 * MiB }
    const patient = runModel(base)
    const hasty = runModel({ ...base, readHandOffMs: 50 })
    assertComplete(patient)
    assertComplete(hasty)
    assert.equal(patient.model.readHandOffs, 0, 'a swarm at ease serves its reads within the default')
    assert.ok(hasty.model.readHandOffs > 0)
    assert.ok(hasty.registryBytes > patient.registryBytes, `${hasty.registryBytes} > ${patient.registryBytes}`)
    // a chunk that came both ways counts once for its node, the other copy as a duplicate
    for (const n of hasty.nodes) assert.equal(n.registryBytes + n.peerBytes, hasty.blobBytes, `node ${n.id}`)
    assert.throws(() => runModel({ ...base, readHandOffMs: 0 }), /readHandOffMs must be a number > 0/)
  })

  it('a real layout (chunkSizes): a list of equal chunks runs as that chunk size; small chunks all arrive, each once', () => {
    const sizes = Array.from({ length: 32 }, () => MiB)
    const uniform = runModel(small)
    const listed = runModel({ ...small, imageBytes: undefined, chunkSize: undefined, chunkSizes: sizes })
    assertComplete(listed)
    for (const k of ['p50Ms', 'maxMs', 'registryBytes', 'peerBytes'] as const) assert.equal(listed[k], uniform[k], k)
    // a tree of small files: many small chunks among a few large ones
    const mixed = [...Array.from({ length: 80 }, (_v, i) => 4096 + i * 997), ...Array.from({ length: 12 }, () => MiB), ...Array.from({ length: 200 }, (_v, i) => 2048 + i * 131)]
    const r = runModel({ nodes: 6, chunkSizes: mixed, bandwidth: 8 * MiB, runtime: false })
    assertComplete(r)
    const bytes = mixed.reduce((a, b) => a + b, 0)
    assert.equal(r.blobBytes, bytes)
    assert.equal(r.model.chunks, mixed.length)
    for (const n of r.nodes) assert.equal(n.registryBytes + n.peerBytes, bytes, `node ${n.id}`)
    assert.throws(() => runModel({ nodes: 2, chunkSizes: [MiB, 0] }), /chunkSizes/)
    assert.throws(() => runModel({ nodes: 2, chunkSizes: [MiB], blobs: 2 }), /one blob/)
  })

  it('one node alone takes the blob at the slower of its download and the registry, plus round trips', () => {
    for (const caps of ['links', 'limiters'] as const) for (const [bandwidth, registryBandwidth] of [[1e8, 2e8], [1e8, 0.4e8]] as const) {
      // the links, not the reader: a window as deep as the fetcher's keeps them full despite the round trips
      const r = runModel({ nodes: 1, imageBytes: 256 * MiB, chunkSize: MiB, bandwidth, registryBandwidth, caps, rttMs: 1, runtime: false, windowBatches: 8, batchBytes: 4 * MiB })
      assertComplete(r)
      assert.equal(r.model.caps, caps)
      const ideal = r.blobBytes / Math.min(bandwidth, registryBandwidth) * 1000 + 2 * 1
      // rate limits let their burst through at once (the daemon's download limiter a quarter second, the
      // registry's a twentieth), the rest at their rate
      const fastest = caps === 'links' ? ideal : Math.max((r.blobBytes - bandwidth / 4) / bandwidth, (r.blobBytes - registryBandwidth / 20) / registryBandwidth) * 1000 + 2 * 1
      const ms = r.nodes[0]!.completionMs!
      assert.ok(ms >= fastest - 0.01, `${ms} ms, faster than the links allow (${fastest} ms)`)
      assert.ok(ms / ideal < 1.05, `${ms} ms against ${ideal.toFixed(1)} ms at ${bandwidth}/${registryBandwidth} B/s`)
      assert.equal(r.registryBytes, r.blobBytes)
      assert.equal(r.nativeReadMs, ms)
    }
  })

  it('three nodes starting together cost the registry one copy, as the daemon does', () => {
    // at a sim's link speed (a 1.25 GB/s link reads the whole image in 30 ms, before the first group is even full)
    const r = runModel({ ...small, nodes: 3, bandwidth: 50 * MiB })
    assertComplete(r)
    assert.ok(r.model.registryRatio <= 1.1, `registry sent ${r.model.registryRatio}x`)
    assert.ok(r.peerBytes >= 2 * r.blobBytes * 0.9)
  })

  it('a swarm prefetching everything, its registry no faster than one node, costs the registry one copy', () => {
    // the first copies of chunks take longer than the fetcher's 10 s idle deadline to arrive and spread: given up
    // at it, every waiting node fetched them from the same registry (1.59 / 3.61 copies; the neighbour source now
    // has two deadlines)
    for (const seed of [1, 3]) {
      const r = runModel({ nodes: 16, imageBytes: 64 * MiB, chunkSize: MiB, bandwidth: 4 * MiB, registryBandwidth: 4 * MiB, prefetch: 'all', seed, runtime: false })
      assertComplete(r)
      assert.equal(r.model.peerRequests.idleTimeouts, 0, `seed ${seed}: fetches given up idle`)
      assert.ok(r.model.registryRatio <= 1.05, `seed ${seed}: ${r.model.registryRatio} copies`)
    }
  })

  it('a quiet swarm\'s prefetch takes one registry slice at a time, not a whole slice of chunks nobody fetches', () => {
    // 96 nodes outside the blob's group, each taking the next 64 chunks after 3 s without news: 1.75 copies
    const r = runModel({ nodes: 96, imageBytes: 32 * MiB, chunkSize: MiB, bandwidth: 4 * MiB, registryBandwidth: 8 * MiB, prefetch: 'all', seed: 1, runtime: false })
    assertComplete(r)
    assert.ok(r.model.registryRatio <= 1.1, `${r.model.registryRatio} copies`)
  })

  it('many nodes starting together with ample upload cost the registry one copy', () => {
    const r = runModel({ ...small, nodes: 150, imageBytes: 16 * MiB, ...AMPLE })
    assertComplete(r)
    assert.ok(r.model.registryRatio <= 1.1, `registry sent ${r.model.registryRatio}x`)
    assert.equal(r.model.registryChunks.afterGrace + r.model.registryChunks.leftover, 0)
  })

  it('a chunk many want at once spreads down a tree: its first holder uploads it about once, not once per asker', () => {
    // issue 13's real swarm: 8 nodes, every link and the registry at 4 MiB/s; the node that fetches from the registry
    // runs ahead, the seven others read behind it (before REDIRECT it uploaded about 5 copies and they took over 5x alone)
    const r = runModel({ nodes: 8, imageBytes: 64 * MiB, chunkSize: MiB, bandwidth: 4 * MiB, registryBandwidth: 4 * MiB, rttMs: 0.2, runtime: false })
    assertComplete(r)
    const most = Math.max(...r.nodes.map(n => n.uploadBytes))
    assert.ok(most <= 1.5 * r.blobBytes, `one node uploaded ${(most / r.blobBytes).toFixed(2)} copies of the image`)
    assert.ok(r.maxMs <= 2 * r.model.aloneMs, `the slowest took ${(r.maxMs / r.model.aloneMs).toFixed(2)}x one node alone`)
    assert.ok(r.model.registryRatio <= 1.05, `registry sent ${r.model.registryRatio}x`)
    assert.ok(r.model.peerRequests.redirects > 0)
  })

  it('a chunk a crowd wants at once spreads as a tree, not down a chain of them all: 300 readers, the first chunk at half of them in 8 s', () => {
    // every node reads chunk 0 first: a holder with a crowd of askers takes turns with those it sent the chunk to
    // (HEAD before: a chain through every asker, 70 of 300 nodes had it after 8 s; with turns 182)
    const w = new World(resolveConfig({ nodes: 300, imageBytes: 64 * MiB, bandwidth: 4 * MiB, seed: 1, runtime: false, nodesDetail: 'none' }))
    let at8s = -1
    w.queue.at(8_000, { fire: () => { at8s = w.nodes.filter(n => n.blobs[0]!.has(0)).length; w.queue.stop() } })
    w.run()
    assert.ok(at8s >= 150, `chunk 0 at ${at8s} of 300 nodes after 8 s`)
  })

  it('a swarm whose nodes die finishes: the others fall back; restarted nodes read again from scratch', () => {
    const dying = runModel({ ...small, nodes: 40, failRate: 0.3, seed: 3 })
    assertComplete(dying)
    assert.ok(dying.model.died > 0)
    const survivors = dying.nodes.filter(n => n.diedAtMs === null)
    assert.equal(survivors.filter(n => n.completionMs !== null).length, survivors.length)
    // the dead were dropped by the scheduler after missing their heartbeats, or the run ended first
    assert.ok(dying.model.directory.expired <= dying.model.died)

    const restarting = runModel({ ...small, nodes: 40, failRate: 0.3, seed: 3, rejoinAfterMs: 20 })
    assertComplete(restarting)
    assert.equal(restarting.model.restarts, restarting.model.died)
    assert.equal(restarting.model.completed, 40)
  })

  it('counts messages, control bytes and directory operations', () => {
    const r = runModel(small)
    const m = r.model
    assert.equal(m.directory.announces, 20)
    assert.ok(m.directory.resolves >= 20)
    assert.ok(m.directory.opsPerSecond > 0)
    assert.equal(m.directory.stats.digests, 1, 'the index is keyed by blob')
    assert.ok(m.messages.byKind.have > 0 && m.messages.byKind.chunk > 0 && m.messages.byKind.scheduler > 0)
    assert.ok(m.controlBytes.perNode.mean > 0 && m.controlBytes.perNode.max >= m.controlBytes.perNode.mean)
    for (const n of r.nodes) {
      assert.ok(n.messages.scheduler.sent >= 3, `node ${n.id}: hello (2 frames) and a look-up`)
      assert.ok(n.controlBytes.sent > 0)
    }
    assert.ok(m.completionCdf.length > 0 && m.completionCdf[m.completionCdf.length - 1]![1] === 20)
    assert.equal(m.registryTimeline.bytes.reduce((a, b) => a + b, 0), r.registryBytes)
  })

  it('measures what the scheduler\'s index holds at the end of a run (bytes per entry, per peer)', () => {
    // more peers than `small`: a directory of 20 is close to what a collection's noise can hide
    const r = runModel({ ...small, nodes: 100, runtime: true })
    const heap = r.runtime?.directoryHeap
    assert.ok(heap !== undefined && heap !== null, 'V8\'s collection can be forced in tests')
    assert.ok(heap.bytes > 0 && heap.perPeer > 0 && heap.perEntry > 0, JSON.stringify(heap))
    assert.equal(heap.perPeer, Math.round(heap.bytes / r.model.directory.stats.peers))
    assert.equal(runModel(small).runtime, undefined)
  })

  it('with the machine\'s CPU, a swarm short of it takes at least its work over the cores left, and its chunks land after their work', () => {
    const base: ModelInit = { nodes: 4, imageBytes: 8 * MiB, chunkSize: MiB, bandwidth: 64 * MiB, runtime: false }
    const free = runModel(base)
    // 4 nodes × 8 MiB at 100 ms a MiB on one core: 3.2 s of work; the links alone would take about 0.3 s
    const bound = runModel({ ...base, cpu: { cores: 1, msPerMiB: 100 } })
    assertComplete(bound)
    assert.ok(free.maxMs < 1000, `without CPU: ${free.maxMs} ms`)
    assert.ok(bound.maxMs >= 3200 - 1, `with CPU: ${bound.maxMs} ms`)
    assert.ok(bound.maxMs < 3200 * 1.5, `with CPU: ${bound.maxMs} ms`)
    assert.equal(bound.model.cpu?.cores, 1)
    assert.ok(bound.model.cpu !== undefined && bound.model.cpu.busyShare > 0.8 && bound.model.cpu.busyShare <= 1, JSON.stringify(bound.model.cpu))
    assert.equal(free.model.cpu, undefined)
    // each node's background share comes off the cores: 2 cores less 4 × 0.25 is the one core above
    const busy = runModel({ ...base, cpu: { cores: 2, msPerMiB: 100, busyPerNode: 0.25 } })
    assert.equal(busy.model.cpu?.cores, 1)
    assert.equal(busy.maxMs, bound.maxMs)
    // ample CPU changes nothing but when chunks land
    const ample = runModel({ ...base, cpu: { cores: 64, msPerMiB: 1 } })
    assert.ok(Math.abs(ample.maxMs - free.maxMs) < 50, `${ample.maxMs} vs ${free.maxMs}`)
    assert.throws(() => runModel({ ...base, cpu: { cores: 0, msPerMiB: -1 } }), (err: Error) => /cpu\.cores/.test(err.message) && /cpu\.msPerMiB/.test(err.message))
    // requests to neighbours take their share too: at 200 ms each, the neighbours' requests alone are seconds of work
    const asking = runModel({ ...base, cpu: { cores: 1, msPerMiB: 100, msPerRequest: 200 } })
    assertComplete(asking)
    const requests = asking.model.peerRequests.sent
    assert.ok(requests > 0)
    assert.ok(asking.maxMs >= 3200 + requests * 200 * 0.5, `${requests} requests: ${asking.maxMs} ms against ${bound.maxMs} without their cost`)
    assert.throws(() => runModel({ ...base, cpu: { cores: 1, msPerMiB: 1, msPerRequest: -1 } }), /cpu\.msPerRequest/)
    // a first contact's handshakes too: nobody gets a neighbour's chunk before its connection is through them
    const light = runModel({ ...base, cpu: { cores: 1, msPerMiB: 1 } })
    const dialing = runModel({ ...base, cpu: { cores: 1, msPerMiB: 1, msPerConnection: 500 } })
    assertComplete(dialing)
    assert.ok(dialing.peerBytes > 0)
    assert.ok(dialing.maxMs >= light.maxMs + 500, `${dialing.maxMs} ms with 500 ms a connection, ${light.maxMs} without`)
    assert.throws(() => runModel({ ...base, cpu: { cores: 1, msPerMiB: 1, msPerConnection: -1 } }), /cpu\.msPerConnection/)
  })

  it('prefetching all: every chunk once (reads and prefetch join each other\'s flights), the members fetch their own share from the registry, a seed replays', () => {
    const init: ModelInit = { nodes: 8, imageBytes: 24 * MiB, chunkSize: MiB, bandwidth: 4 * MiB, registryBandwidth: 4 * MiB, prefetch: 'all', runtime: false }
    for (const seed of [1, 2, 3]) {
      const r = runModel({ ...init, seed })
      assertComplete(r)
      assert.equal(r.model.prefetch, 'all')
      assert.ok(r.model.registryRatio <= 1.15, `seed ${seed}: the registry sent ${r.model.registryRatio}x the blob`)
      // a prefetch takes its share of the registry's chunks as their assignee; the reads alone wait out the grace
      const rc = r.model.registryChunks
      const all = rc.assignee + rc.noGroup + rc.ahead + rc.afterGrace + rc.leftover
      assert.ok(rc.assignee >= 0.6 * all, `seed ${seed}: ${JSON.stringify(rc)}`)
      const reads = runModel({ ...init, seed, prefetch: 'none' }).model.registryChunks
      assert.ok(reads.assignee < 0.5 * (reads.assignee + reads.noGroup + reads.ahead + reads.afterGrace + reads.leftover), JSON.stringify(reads))
      assert.ok(r.nodes.filter(n => n.registryBytes > 0).length >= 2, 'more than one member fetched from the registry')
    }
    assert.equal(JSON.stringify(runModel({ ...init, seed: 4 })), JSON.stringify(runModel({ ...init, seed: 4 })))
  })

  it('hundreds prefetching all: fetches whose chunks spread through the swarm wait on past their idle deadline, not to the registry', () => {
    // 300 nodes begin together: the first read's chunks reach them through chains of peers parked on each other's
    // PENDING, and neighbour fetches begun at once meet their idle deadlines at once (1,000 nodes: 175 copies)
    const r = runModel({ nodes: 300, imageBytes: 64 * MiB, chunkSize: MiB, bandwidth: 4 * MiB, prefetch: 'all', runtime: false, nodesDetail: 'none' })
    assert.equal(r.verifiedOk, true)
    assert.equal(r.model.completed, 300)
    assert.ok(r.model.idleExtensions > 0, 'some deadlines were started over')
    assert.equal(r.model.peerRequests.idleTimeouts, 0)
    // 1.5 copies and 31 fetches given up idle without it
    assert.ok(r.model.registryRatio <= 1.2, `the registry sent ${r.model.registryRatio}x the blob`)
  })

  it('a read whose holders\' slots are all prefetch uploads takes one of the slots kept for reads, not the registry', () => {
    // 200 nodes prefetching, 8 upload slots each: without slots kept for reads, reads wait on full holders past the
    // hand-off and 4 chunks go to the registry twice; with them (the daemon's default, 2 here) none does, sooner
    const run = (urgentUploads?: number): ReturnType<typeof runModel> => runModel({
      nodes: 200, imageBytes: 32 * MiB, chunkSize: MiB, bandwidth: 4 * MiB, prefetch: 'all', maxUploads: 8, seed: 1, runtime: false, nodesDetail: 'none',
      ...(urgentUploads !== undefined ? { urgentUploads } : {})
    })
    const none = run(0)
    const kept = run()
    assert.equal(kept.model.urgentUploads, 2)
    assert.equal(none.model.urgentServed, 0)
    assert.ok(none.model.readHandOffs > 0, 'the case shows the problem')
    assert.ok(kept.model.urgentServed > 0)
    assert.equal(kept.model.readHandOffs, 0)
    assert.ok(kept.model.registryRatio < none.model.registryRatio, `${kept.model.registryRatio} vs ${none.model.registryRatio}`)
    assert.ok(kept.p50Ms < none.p50Ms)
    for (const r of [none, kept]) {
      assert.equal(r.verifiedOk, true)
      assert.equal(r.model.completed, 200)
    }
  })

  it('a prefetching swarm whose nodes die and restart finishes, every chunk once', () => {
    const r = runModel({ nodes: 16, imageBytes: 32 * MiB, chunkSize: 512 << 10, bandwidth: 8 * MiB, prefetch: 'all', failRate: 0.25, rejoinAfterMs: 1500, seed: 3, runtime: false })
    assertComplete(r)
    assert.ok(r.model.died > 0 && r.model.restarts > 0)
  })

  it('rejects bad options, every problem at once', () => {
    assert.throws(() => runModel({ nodes: 0, failRate: 2, chunkSize: 3, prefetch: 'some' as 'all' }), (err: Error) =>
      err instanceof RangeError && /nodes/.test(err.message) && /failRate/.test(err.message) && /chunkSize/.test(err.message) && /prefetch/.test(err.message))
  })
})
