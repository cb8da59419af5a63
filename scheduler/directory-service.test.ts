/**
 * The scheduler protocol over the swarm directory: real SchedulerClients over libp2p, the in-memory directory and
 * a real 3-master Redis Cluster with two schedulers in front of it (state shared: what one peer announces through
 * one scheduler, another resolves through the other; a scheduler that dies loses nothing, and a client that moves
 * to the other keeps what it holds and what it claimed; a blob's group is named alike by both, and by a scheduler
 * started anew), and a real Redis that stops taking writes for a while (updates it missed are sent again once it
 * is back).
 */
import '../polyfill.js'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { promisify } from 'node:util'
import { multiaddr } from '@multiformats/multiaddr'
import { FrameReader, SCHEDULER_PROTOCOL_1_0, announceAddrs, createHost, encodeFrame, type Host } from '../p2p/index.js'
import { MAX_FRAME_BYTES, decodeMessage, encodeMessage, packDigests } from './protocol.js'
import { REDIS_CLI_BIN, redisClusterSkipReason, startRedisCluster, startRedisServer, type RedisCluster } from '../test/helpers/redis-cluster.js'
import { SchedulerClient } from './client.js'
import type { SchedulerClientInit } from './types.js'
import { createDirectory } from './directory/index.js'
import { startDirectorySchedulerNode, type DirectorySchedulerNode } from './directory-service.js'
import { eventually, sleep } from '../test/helpers/eventually.js'

const run = promisify(execFile)

function harness (): { client: (sched: DirectorySchedulerNode | string[], init?: Partial<SchedulerClientInit>) => Promise<{ host: Host, client: SchedulerClient, id: string }>, close: () => Promise<void> } {
  const hosts: Host[] = []
  const clients: SchedulerClient[] = []
  return {
    client: async (sched, init = {}) => {
      const host = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
      const scheduler = Array.isArray(sched) ? sched : sched.multiaddrs[0]!
      const client = new SchedulerClient({ libp2p: host }, { scheduler, selfAddrs: () => announceAddrs(host), heartbeatMs: 300, resolveTimeoutMs: 2000, ...init })
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

  it('an answer with a group tells the blob\'s swarm size (1.1); a 1.0 session is answered as before', async () => {
    const a = await h.client(sched)
    const b = await h.client(sched)
    const blob = randomBytes(32)
    const hex = blob.toString('hex')
    a.client.announce([blob])
    await eventually(async () => { assert.deepEqual(await holdersOf(b.client, blob), [a.id]) })
    // b's look-up claimed the blob: a swarm of two, counted with b's group
    const answer = await b.client.resolve([blob], { group: 4 })
    assert.equal(answer.swarms?.get(hex), 2)
    assert.equal((await b.client.resolve([blob])).swarms, undefined, 'no group asked for, no count')
    // a client that speaks only 1.0 gets the groups and no trailer after them (its decoder would refuse one)
    const old = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    try {
      const stream = await old.dialProtocol(multiaddr(sched.multiaddrs[0]!), SCHEDULER_PROTOCOL_1_0)
      assert.equal(stream.protocol, SCHEDULER_PROTOCOL_1_0)
      const frames = new FrameReader(stream, { what: 'a 1.0 session', malformed: (m) => new Error(m) })
      stream.send(encodeFrame(encodeMessage({ type: 'resolve', id: 5, max: 4, digests: packDigests([blob]), group: 4 })))
      const body = await frames.readFrame(MAX_FRAME_BYTES)
      assert.ok(body !== undefined)
      const m = decodeMessage(body)
      assert.ok(m.type === 'resolved' && m.id === 5)
      assert.deepEqual([...m.groups ?? []], [2])
      assert.equal(m.swarms, undefined)
      await stream.close()
    } finally {
      await old.stop()
    }
  })
})

/**
 * Two directory schedulers over one fresh 3-master cluster, for the enclosing describe; `restart1` starts a new first
 * one over the same Redis (after the old one was stopped).
 */
function twoSchedulers (keyPrefix: string): {
  h: ReturnType<typeof harness>, s1: () => DirectorySchedulerNode, s2: () => DirectorySchedulerNode, restart1: () => Promise<DirectorySchedulerNode>
} {
  let cluster: RedisCluster | undefined
  let s1: DirectorySchedulerNode | undefined
  let s2: DirectorySchedulerNode | undefined
  const h = harness()
  before(async () => {
    cluster = await startRedisCluster({ masters: 3 })
    s1 = await startDirectorySchedulerNode(await createDirectory({ redis: cluster.seeds, keyPrefix }))
    s2 = await startDirectorySchedulerNode(await createDirectory({ redis: cluster.seeds, keyPrefix }))
  })
  after(async () => {
    await h.close()
    await s2?.stop().catch(() => {})
    await s1?.stop().catch(() => {})
    await cluster?.stop()
  })
  const restart1 = async (): Promise<DirectorySchedulerNode> => {
    s1 = await startDirectorySchedulerNode(await createDirectory({ redis: cluster!.seeds, keyPrefix }))
    return s1
  }
  return { h, s1: () => s1!, s2: () => s2!, restart1 }
}

describe('two schedulers in front of one Redis Cluster', { skip: redisClusterSkipReason() ?? false }, () => {
  const { h, s1, s2 } = twoSchedulers('svc1:')

  it('what one peer announces through one scheduler, another resolves through the other; one dying loses nothing', async () => {
    const a = await h.client(s1())
    const b = await h.client(s2())
    const blobs = [randomBytes(32), randomBytes(32), randomBytes(32)]
    a.client.announce(blobs)
    for (const blob of blobs) await eventually(async () => { assert.deepEqual(await holdersOf(b.client, blob), [a.id]) })
    // the scheduler a talks to dies: its state lives in Redis, b still finds a (until a's TTL runs out)
    await s1().stop()
    assert.deepEqual(await holdersOf(b.client, blobs[0]!), [a.id])
    // a third peer through the surviving scheduler joins the swarm of those blobs
    const c = await h.client(s2())
    await eventually(async () => { assert.ok((await holdersOf(c.client, blobs[1]!)).includes(a.id)) })
  })
})

describe('a client moving between two schedulers over one Redis Cluster', { skip: redisClusterSkipReason() ?? false }, () => {
  const { h, s1, s2 } = twoSchedulers('move:')

  it('keeps what it announced and what it claimed by asking: the new session\'s reset does not drop them', async () => {
    const a = await h.client([s1().multiaddrs[0]!, s2().multiaddrs[0]!], { minReconnectMs: 20, maxReconnectMs: 200 })
    const observer = await h.client(s2())
    const announced = randomBytes(32)
    const asked = randomBytes(32)
    a.client.announce([announced])
    // at blob level a node never announces the blob it reads: the scheduler records it as a holder when it asks
    assert.deepEqual(await holdersOf(a.client, asked), [])
    await eventually(async () => { assert.deepEqual(await holdersOf(observer.client, asked), [a.id]) })
    await eventually(async () => { assert.deepEqual(await holdersOf(observer.client, announced), [a.id]) })
    const before = a.client.stats().sessions
    await s1().stop()
    await eventually(async () => { assert.ok(a.client.connected && a.client.stats().sessions > before, 'a moved to the second scheduler') })
    assert.equal(a.client.address, s2().multiaddrs[0])
    // its first frame there reset its entries, and re-sent both
    await sleep(500)
    assert.deepEqual(await holdersOf(observer.client, announced), [a.id])
    assert.deepEqual(await holdersOf(observer.client, asked), [a.id])
  })
})

describe('a blob\'s group through two schedulers over one Redis Cluster', { skip: redisClusterSkipReason() ?? false }, () => {
  const { h, s1, s2, restart1 } = twoSchedulers('group:')

  it('is the same for askers of either scheduler, the asker included, and survives a scheduler\'s restart', async () => {
    const addrs = (first: DirectorySchedulerNode, second: DirectorySchedulerNode): string[] => [first.multiaddrs[0]!, second.multiaddrs[0]!]
    // heartbeats every second: a registration outlives a move between schedulers (3 s), so the peer keeps its place
    const moving = { heartbeatMs: 1000, minReconnectMs: 20, maxReconnectMs: 200 }
    const a = await h.client(addrs(s1(), s2()), moving)
    const b = await h.client(addrs(s2(), s1()), moving)
    const c = await h.client(addrs(s1(), s2()), moving)
    const blob = randomBytes(32)
    const groupOf = async (x: SchedulerClient): Promise<string[]> =>
      ((await x.resolve([blob], { max: 8, group: 8 })).get(blob.toString('hex')) ?? []).filter(m => m.group === true).map(m => m.peerId)
    // each asker claims before the group is listed: the first is told it is the group, the next ones join it
    assert.deepEqual(await groupOf(a.client), [a.id])
    assert.deepEqual(await groupOf(b.client), [a.id, b.id])
    assert.deepEqual(await groupOf(c.client), [a.id, b.id, c.id])
    for (const x of [a, b, c]) assert.deepEqual(await groupOf(x.client), [a.id, b.id, c.id], `asked by ${x.id} again`)
    // the first scheduler dies: a and c move to the second and announce again (a reset, which keeps their places)
    await s1().stop()
    for (const x of [a, c]) {
      await eventually(async () => { assert.ok(x.client.connected && x.client.address === s2().multiaddrs[0], `${x.id} moved`) })
    }
    assert.deepEqual(await groupOf(b.client), [a.id, b.id, c.id])
    // a scheduler started anew over the same Redis names the same group, and a newcomer through it joins last
    const d = await h.client(await restart1())
    assert.deepEqual(await groupOf(d.client), [a.id, b.id, c.id, d.id])
    for (const x of [a, b, c]) assert.deepEqual(await groupOf(x.client), [a.id, b.id, c.id, d.id])
  })
})

describe('a Redis that stops taking writes for a while', { skip: redisClusterSkipReason() ?? false }, () => {
  it('updates it missed reach it once it is back: the session is renewed and everything announced again', async () => {
    const redis = await startRedisServer()
    const h = harness()
    let sched: DirectorySchedulerNode | undefined
    try {
      sched = await startDirectorySchedulerNode(await createDirectory({ redis: redis.url, timeoutMs: 500 }))
      const a = await h.client(sched)
      const b = await h.client(sched)
      const early = randomBytes(32)
      a.client.announce([early])
      await eventually(async () => { assert.deepEqual(await holdersOf(b.client, early), [a.id]) })
      const sessions = a.client.stats().sessions
      await run(REDIS_CLI_BIN, ['-p', String(redis.port), 'client', 'pause', '2000', 'write'])
      const late = randomBytes(32)
      a.client.announce([late])
      // the announce is lost (the directory's call timed out); once writes are taken again, a's next heartbeat
      // finds the directory answering and its session is renewed, with everything announced again
      await eventually(async () => { assert.ok(a.client.stats().sessions > sessions, 'a reconnected') }, 15_000)
      await eventually(async () => { assert.deepEqual(await holdersOf(b.client, late), [a.id]) })
      assert.deepEqual(await holdersOf(b.client, early), [a.id])
    } finally {
      await h.close()
      await sched?.stop().catch(() => {})
      await redis.stop()
    }
  })
})
