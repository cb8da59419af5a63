/**
 * The scheduler protocol over the swarm directory: real SchedulerClients over libp2p, the in-memory directory and
 * a real 3-master Redis Cluster with two schedulers in front of it (state shared: what one peer announces through
 * one scheduler, another resolves through the other; a scheduler that dies loses nothing).
 */
import '../polyfill.js'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { announceAddrs, createHost, type Host } from '../p2p/index.js'
import { redisClusterSkipReason, startRedisCluster, type RedisCluster } from '../test/helpers/redis-cluster.js'
import { SchedulerClient } from './client.js'
import { createDirectory } from './directory/index.js'
import { startDirectorySchedulerNode, type DirectorySchedulerNode } from './directory-service.js'

const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }
async function eventually (check: () => Promise<void>, ms = 8000): Promise<void> {
  const deadline = Date.now() + ms
  for (;;) {
    try { await check(); return } catch (err) { if (Date.now() > deadline) throw err }
    await sleep(50)
  }
}

function harness (): { client: (sched: DirectorySchedulerNode) => Promise<{ host: Host, client: SchedulerClient, id: string }>, close: () => Promise<void> } {
  const hosts: Host[] = []
  const clients: SchedulerClient[] = []
  return {
    client: async (sched) => {
      const host = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
      const client = new SchedulerClient({ libp2p: host }, { scheduler: sched.multiaddrs[0]!, selfAddrs: () => announceAddrs(host), heartbeatMs: 300, resolveTimeoutMs: 2000 })
      hosts.push(host)
      clients.push(client)
      await client.start()
      assert.equal(await client.waitConnected(5000), true)
      return { host, client, id: host.peerId.toString() }
    },
    close: async () => {
      for (const c of clients) await c.stop().catch(() => {})
      for (const h of hosts) await Promise.resolve(h.stop()).catch(() => {})
    }
  }
}

const holdersOf = async (c: SchedulerClient, key: Buffer): Promise<string[]> =>
  ((await c.resolve([key])).get(key.toString('hex')) ?? []).map(h => h.peerId).sort()

describe('scheduler protocol over the in-memory directory', () => {
  let sched: DirectorySchedulerNode
  const h = harness()
  before(async () => { sched = await startDirectorySchedulerNode(await createDirectory({})) })
  after(async () => { await h.close(); await sched.stop() })

  it('announce, resolve with claims, withdraw, leave', async () => {
    const a = await h.client(sched)
    const b = await h.client(sched)
    const c = await h.client(sched)
    const blob = randomBytes(32)
    a.client.announce([blob])
    await eventually(async () => { assert.deepEqual(await holdersOf(b.client, blob), [a.id]) })
    // b asked: b is now a holder too (it fetches next), so c is sent to both
    await eventually(async () => { assert.deepEqual(await holdersOf(c.client, blob), [a.id, b.id].sort()) })
    a.client.withdraw([blob])
    await eventually(async () => { assert.deepEqual(await holdersOf(c.client, blob), [b.id]) })
    await b.client.stop()
    await eventually(async () => { assert.deepEqual(await holdersOf(c.client, blob), []) })
  })
})

describe('two schedulers in front of one Redis Cluster', { skip: redisClusterSkipReason() ?? false }, () => {
  let cluster: RedisCluster | undefined
  let s1: DirectorySchedulerNode
  let s2: DirectorySchedulerNode
  const h = harness()
  before(async () => {
    cluster = await startRedisCluster({ masters: 3 })
    s1 = await startDirectorySchedulerNode(await createDirectory({ redis: cluster.seeds, keyPrefix: 'svc1:' }))
    s2 = await startDirectorySchedulerNode(await createDirectory({ redis: cluster.seeds, keyPrefix: 'svc1:' }))
  })
  after(async () => {
    await h.close()
    await s2?.stop().catch(() => {})
    await s1?.stop().catch(() => {})
    await cluster?.stop()
  })

  it('what one peer announces through one scheduler, another resolves through the other; one dying loses nothing', async () => {
    const a = await h.client(s1)
    const b = await h.client(s2)
    const blobs = [randomBytes(32), randomBytes(32), randomBytes(32)]
    a.client.announce(blobs)
    for (const blob of blobs) await eventually(async () => { assert.deepEqual(await holdersOf(b.client, blob), [a.id]) })
    // the scheduler a talks to dies: its state lives in Redis, b still finds a (until a's TTL runs out)
    await s1.stop()
    assert.deepEqual(await holdersOf(b.client, blobs[0]!), [a.id])
    // a third peer through the surviving scheduler joins the swarm of those blobs
    const c = await h.client(s2)
    await eventually(async () => { assert.ok((await holdersOf(c.client, blobs[1]!)).includes(a.id)) })
  })
})
