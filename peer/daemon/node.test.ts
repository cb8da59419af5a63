/**
 * The composition root: a node assembled from a config with P2P on (embedded scheduler, loopback) announces what
 * its cache stores without anyone in between, stops in order, and a node that cannot start leaves its cache
 * closed (the directory opens again at once).
 */
import '../../polyfill.js'
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { silentLogger } from '../../base/index.js'
import { BlobCache } from '../../cache/index.js'
import { buildBlob, tempDir } from '../../cache/test-support.js'
import { createDirectory } from '../../scheduler/index.js'
import { redisClusterSkipReason, startRedisServer } from '../../test/helpers/redis-cluster.js'
import { parseDaemonConfig } from './config.js'
import { startNode } from './node.js'

describe('startNode', () => {
  it('wires the cache to the swarm: a stored chunk is announced (chunk level); stop() closes everything', async (t) => {
    const dir = await tempDir(t, 'rafspeer-node-')
    const config = parseDaemonConfig({
      workDir: join(dir, 'work'),
      p2p: { listen: ['/ip4/127.0.0.1/tcp/0'], directory: 'chunks' },
      scheduler: { embedded: true }
    })
    const built = await buildBlob(join(dir, 'blob'), [200_000])
    const node = await startNode(config, silentLogger)
    let stopped = false
    t.after(async () => { if (!stopped) await node.stop() })
    assert.ok(node.swarm !== undefined && node.p2p !== undefined, 'P2P is on')
    const index = node.swarm.embedded!.index
    const chunk = built.chunks[1]!
    assert.deepEqual(index.holdersOf(chunk.digest), [])
    await node.cache.registerBlob(built.blob)
    await node.cache.putChunk(built.blob.blobId, chunk, built.plain[chunk.index]!)
    const deadline = Date.now() + 5000
    while (index.holdersOf(chunk.digest).length === 0 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 20))
    assert.deepEqual(index.holdersOf(chunk.digest), [node.swarm.peerId], 'the stored chunk reached the swarm')
    assert.equal(node.p2p.info().peerId, node.swarm.peerId)
    assert.equal(node.cacheStats().chunksPresent, 1)
    await node.stop()
    stopped = true
    // the cache was flushed and closed: another process (here: this one) may open it
    const again = await BlobCache.open(config.cache.dir)
    assert.ok(again.has(built.blob.blobId, chunk.index))
    await again.close()
  })

  it('an embedded scheduler keeps its own node alive: idle for many heartbeats, it is still offered as a holder', async (t) => {
    const dir = await tempDir(t, 'rafspeer-node-')
    const config = parseDaemonConfig({
      workDir: join(dir, 'work'),
      p2p: { listen: ['/ip4/127.0.0.1/tcp/0'], directory: 'chunks' },
      scheduler: { embedded: true, heartbeatMs: 60 }
    })
    const built = await buildBlob(join(dir, 'blob'), [100_000])
    const node = await startNode(config, silentLogger)
    t.after(async () => { await node.stop() })
    const chunk = built.chunks[0]!
    await node.cache.registerBlob(built.blob)
    await node.cache.putChunk(built.blob.blobId, chunk, built.plain[chunk.index]!)
    const index = node.swarm!.embedded!.index
    const deadline = Date.now() + 5000
    while (index.holdersOf(chunk.digest).length === 0 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 20))
    // ten heartbeats without a word from the node itself
    await new Promise(resolve => setTimeout(resolve, 600))
    const holders = index.resolveMap(undefined, [chunk.digest]).get(chunk.digest.toString('hex')) ?? []
    assert.deepEqual(holders.map(h => h.peerId), [node.swarm!.peerId])
  })

  it('an embedded scheduler on Redis: the node registers in the directory through it, and serves it to others', { skip: redisClusterSkipReason() ?? false }, async (t) => {
    const dir = await tempDir(t, 'rafspeer-node-')
    const redis = await startRedisServer()
    t.after(async () => { await redis.stop() })
    const config = parseDaemonConfig({
      workDir: join(dir, 'work'),
      p2p: { listen: ['/ip4/127.0.0.1/tcp/0'], directory: 'blobs' },
      scheduler: { embedded: true, redis: [redis.url], heartbeatMs: 200 }
    })
    const node = await startNode(config, silentLogger)
    let stopped = false
    t.after(async () => { if (!stopped) await node.stop() })
    const observer = await createDirectory({ redis: redis.url })
    t.after(async () => { await observer.close() })
    const peerId = node.swarm!.peerId
    const deadline = Date.now() + 10_000
    while (await observer.peer(peerId) === undefined && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 50))
    const seen = await observer.peer(peerId)
    assert.ok(seen !== undefined, 'the node is live in the directory on Redis')
    assert.deepEqual(seen.addrs, node.swarm!.addrs)
    assert.deepEqual({ embedded: node.p2p!.stats().scheduler.embedded, connected: node.p2p!.stats().scheduler.connected }, { embedded: true, connected: true })
    assert.equal(node.swarm!.embedded, undefined, 'not the in-memory index')
    // the node's own host answers the scheduler protocol from the same directory
    assert.ok(node.swarm!.host.getProtocols().includes('/rafspeer/scheduler/1.0.0'))
    await node.stop()
    stopped = true
    // the node said LEAVE on its way out, and the Redis connection is released
    assert.equal(await observer.peer(peerId), undefined)
  })

  it('a node that cannot start (its P2P port is taken) leaves nothing open', async (t) => {
    const dir = await tempDir(t, 'rafspeer-node-')
    const taken = createServer()
    await new Promise<void>(resolve => taken.listen(0, '127.0.0.1', resolve))
    t.after(() => { taken.close() })
    const port = (taken.address() as { port: number }).port
    const config = parseDaemonConfig({ workDir: join(dir, 'work'), p2p: { enabled: true, listen: [`/ip4/127.0.0.1/tcp/${port}`] } })
    await assert.rejects(startNode(config, silentLogger))
    const cache = await BlobCache.open(config.cache.dir)
    await cache.close()
  })
})
