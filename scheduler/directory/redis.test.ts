/**
 * The Redis directory against real servers (Debian's redis-server): the conformance suite on a 3-master Redis
 * Cluster, on a cluster with a replica per master, and on one plain server; and what only Redis has (addresses,
 * mode detection, keys spread over the masters). Failover is in `redis-failover.test.ts`.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'
import {
  REDIS_CLI_BIN, redisClusterSkipReason, startRedisCluster, startRedisServer, type RedisCluster, type RedisServer
} from '../../test/helpers/redis-cluster.js'
import { blobId, directoryConformance, entry } from './conformance.js'
import { createDirectory, type SwarmDirectory } from './index.js'
import { parseSeed } from './redis-connect.js'

const run = promisify(execFile)
const skip = redisClusterSkipReason() ?? false
let namespaces = 0
/** every directory of a run gets its own key prefix, so cases sharing a cluster never see each other's keys */
const fresh = (): string => `t${process.pid}.${namespaces++}:`

describe('Redis directory on a 3-master Redis Cluster', { skip }, () => {
  let cluster: RedisCluster | undefined
  before(async () => { cluster = await startRedisCluster({ masters: 3 }) })
  after(async () => { await cluster?.stop() })

  directoryConformance('Redis Cluster, 3 masters', async (init) =>
    await createDirectory({ ...init, redis: cluster?.seeds ?? [], keyPrefix: fresh() }))

  it('spreads blob keys over every master and keeps a peer on one slot', async () => {
    const c = cluster as RedisCluster
    const prefix = fresh()
    const dir = await createDirectory({ redis: c.seeds.slice(0, 1), keyPrefix: prefix })
    try {
      assert.equal(dir.kind, 'redis')
      await dir.announce(entry('peer-a'), Array.from({ length: 60 }, (_, i) => blobId(i)))
      for (const m of c.masters()) {
        const keys = (await c.cli(m.port, '--scan', '--pattern', `${prefix}b:*`)).trim().split('\n').filter((k) => k !== '')
        assert.ok(keys.length > 0, `master ${m.port} holds no blob key`)
      }
      const slots = await Promise.all(['p', 'h'].map(async (k) => (await c.cli(c.masters()[0].port, 'cluster', 'keyslot', `${prefix}${k}:{peer-a}`)).trim()))
      assert.equal(slots[0], slots[1])
      assert.equal((await dir.lookup(blobId(59)))[0]?.peerId, 'peer-a')
    } finally {
      await dir.close()
    }
  })
})

describe('Redis directory on a Redis Cluster with a replica per master', { skip }, () => {
  let cluster: RedisCluster | undefined
  before(async () => { cluster = await startRedisCluster({ masters: 3, replicas: 1 }) })
  after(async () => { await cluster?.stop() })

  directoryConformance('Redis Cluster, 3 masters + 3 replicas', async (init) =>
    await createDirectory({ ...init, redis: cluster?.seeds ?? [], keyPrefix: fresh() }))
})

describe('Redis directory on one plain Redis server', { skip }, () => {
  let server: RedisServer | undefined
  before(async () => { server = await startRedisServer() })
  after(async () => { await server?.stop() })

  directoryConformance('one Redis server', async (init) =>
    await createDirectory({ ...init, redis: server?.url ?? '', keyPrefix: fresh() }))

  it('is found to be a plain server, and refuses several addresses for one', async () => {
    const s = server as RedisServer
    const dir: SwarmDirectory = await createDirectory({ redis: `127.0.0.1:${s.port}`, keyPrefix: fresh() })
    assert.equal(dir.kind, 'redis')
    await dir.close()
    await assert.rejects(createDirectory({ redis: [s.url, s.url], redisMode: 'standalone' }), { code: 'RAFSPEER_ERR_DIRECTORY_CONFIG' })
  })

  it('a member a reset is renaming keeps its place in the group; one the reset dropped is removed', async () => {
    const s = server as RedisServer
    const prefix = fresh()
    const redis = async (...args: string[]): Promise<string> => (await run(REDIS_CLI_BIN, ['-p', String(s.port), ...args])).stdout.trim()
    const dir = await createDirectory({ redis: s.url, keyPrefix: prefix })
    const [b1, b2] = [blobId(1), blobId(2)]
    const groupOf = async (b: string): Promise<string[]> => (await dir.lookupGroup(b, { group: 8, max: 4 })).group.map((m) => m.peerId)
    try {
      for (const id of ['peer-0', 'peer-1', 'peer-2']) await dir.announce(entry(id), [b1, b2])
      // the moment between a reset's script (a new epoch, its holdings b1 alone) and the renaming of its members,
      // which are separate calls, one per blob, that another scheduler's look-up may come between
      await redis('HSET', `${prefix}p:{peer-0}`, 'epoch', 'moved')
      await redis('SREM', `${prefix}h:{peer-0}`, b2)
      for (let i = 0; i < 3; i++) assert.deepEqual(await groupOf(b1), ['peer-0', 'peer-1', 'peer-2'])
      assert.equal(await redis('ZCARD', `${prefix}j:{${b1}}`), '3', 'the renamed member is kept, with its place')
      assert.deepEqual(await groupOf(b2), ['peer-1', 'peer-2'])
      assert.equal(await redis('ZCARD', `${prefix}j:{${b2}}`), '2', 'the dropped one is removed')
      assert.equal(await redis('SCARD', `${prefix}b:{${b2}}`), '2')
    } finally {
      await dir.close()
    }
  })
})

describe('Redis addresses', () => {
  it('parse as host:port, [v6]:port or redis[s]:// URLs with credentials', () => {
    assert.deepEqual(parseSeed('10.0.0.1:7000'), { host: '10.0.0.1', port: 7000, tls: false })
    assert.deepEqual(parseSeed('redis-0.redis'), { host: 'redis-0.redis', port: 6379, tls: false })
    assert.deepEqual(parseSeed('[::1]:7001'), { host: '::1', port: 7001, tls: false })
    assert.deepEqual(parseSeed('rediss://u:p%40ss@r.example:6380'), { host: 'r.example', port: 6380, username: 'u', password: 'p@ss', tls: true })
  })

  it('that do not parse are refused before anything is dialled', async () => {
    for (const bad of ['http://r.example', 'redis://r.example/3', '::::', ' , ']) {
      await assert.rejects(createDirectory({ redis: bad }), { code: 'RAFSPEER_ERR_DIRECTORY_CONFIG' }, bad)
    }
  })
})
