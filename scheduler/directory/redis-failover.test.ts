/**
 * The Redis directory when Redis fails: calls reject with `RAFSPEER_ERR_DIRECTORY_UNAVAILABLE` within their
 * deadline (never hang) while a master is down or failing over, and succeed again once a replica has taken over
 * (or the server is back), with what was recorded before still there.
 */
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { createServer } from 'node:net'
import {
  redisClusterSkipReason, startRedisCluster, startRedisServer, type RedisCluster
} from '../../test/helpers/redis-cluster.js'
import { blobId, entry } from './conformance.js'
import { createDirectory, type SwarmDirectory } from './index.js'

const skip = redisClusterSkipReason() ?? false
const TIMEOUT_MS = 1000
/** how much later than its deadline a call may settle (timers on a loaded 2-core machine) before it counts as hung */
const SETTLE_SLACK_MS = 1500

interface Call { op: 'announce' | 'lookup', start: number, end: number, code?: string }

const codeOf = (err: unknown): string => (err as { code?: string }).code ?? (err as Error).message

async function timed (op: Call['op'], calls: Call[], fn: () => Promise<unknown>): Promise<void> {
  const start = performance.now()
  try {
    await fn()
    calls.push({ op, start, end: performance.now() })
  } catch (err) {
    calls.push({ op, start, end: performance.now(), code: codeOf(err) })
  }
}

async function closedPort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address()
      srv.close(() => { typeof addr === 'object' && addr !== null ? resolve(addr.port) : reject(new Error('no port')) })
    })
  })
}

describe('Redis directory when Redis fails', { skip }, () => {
  it('createDirectory rejects with RAFSPEER_ERR_DIRECTORY_UNAVAILABLE when no Redis answers', async () => {
    const port = await closedPort()
    for (const redisMode of ['auto', 'cluster', 'standalone'] as const) {
      await assert.rejects(createDirectory({ redis: `127.0.0.1:${port}`, redisMode, connectTimeoutMs: 1000 }),
        { code: 'RAFSPEER_ERR_DIRECTORY_UNAVAILABLE' }, redisMode)
    }
  })

  it('calls against a stopped server reject within their deadline, and succeed once a server is back', async (t) => {
    const first = await startRedisServer()
    let dir: SwarmDirectory | undefined
    let second: Awaited<ReturnType<typeof startRedisServer>> | undefined
    try {
      dir = await createDirectory({ redis: first.url, timeoutMs: TIMEOUT_MS })
      await dir.announce(entry('peer-a'), [blobId(1)])
      await first.stop()
      for (let i = 0; i < 3; i++) {
        const start = performance.now()
        await assert.rejects(dir.lookup(blobId(1)), { code: 'RAFSPEER_ERR_DIRECTORY_UNAVAILABLE' })
        assert.ok(performance.now() - start < TIMEOUT_MS + SETTLE_SLACK_MS, 'settled within its deadline')
      }
      second = await startRedisServer({ port: first.port })
      const d = dir
      const back = performance.now()
      let resumed = false
      while (!resumed && performance.now() - back < 15_000) {
        resumed = await d.announce(entry('peer-a'), [blobId(1)]).then(() => true, async () => { await sleep(100); return false })
      }
      assert.ok(resumed, 'calls succeed again once a server answers on the address')
      t.diagnostic(`plain server: calls resumed ${((performance.now() - back) / 1000).toFixed(2)} s after a new server started`)
      assert.equal((await d.lookup(blobId(1)))[0]?.peerId, 'peer-a')
    } finally {
      await dir?.close()
      await first.stop()
      await second?.stop()
    }
  })

  describe('a master of a cluster with replicas is killed mid-run', () => {
    let cluster: RedisCluster | undefined
    before(async () => { cluster = await startRedisCluster({ masters: 3, replicas: 1, nodeTimeoutMs: 2000 }) })
    after(async () => { await cluster?.stop() })

    it('announces and lookups fail fast while it fails over, then resume with the records kept', async (t) => {
      const c = cluster as RedisCluster
      const dir = await createDirectory({ redis: c.seeds, timeoutMs: TIMEOUT_MS, peerTtlMs: 120_000 })
      try {
        const PEERS = 30
        const BLOBS = 60
        for (let p = 0; p < PEERS; p++) {
          await dir.announce(entry(`peer-${p}`), Array.from({ length: 6 }, (_, i) => blobId((p * 7 + i) % BLOBS)))
        }
        // replication is asynchronous: give the replicas a moment to have everything
        await sleep(500)
        const calls: Call[] = []
        let stop = false
        const worker = async (w: number): Promise<void> => {
          for (let n = 0; !stop; n++) {
            const p = (w * 13 + n) % PEERS
            if (n % 2 === 0) {
              await timed('announce', calls, async () => await dir.announce(entry(`peer-${p}`), [blobId((p * 7 + n) % BLOBS)]))
            } else {
              await timed('lookup', calls, async () => await dir.lookup(blobId((n * 11 + w) % BLOBS), { asker: `peer-${p}` }))
            }
            await sleep(5)
          }
        }
        const workers = [0, 1, 2, 3].map(worker)
        await sleep(1000)
        const victim = c.masters()[0]
        const killedAt = performance.now()
        await c.kill(victim, 'SIGKILL')
        // run until the calls have succeeded for 3 s on end after the kill (or give up after 60 s)
        const cleanFor = async (ms: number): Promise<boolean> => {
          const since = performance.now() - ms
          const after = calls.filter((x) => x.end > since)
          return since > killedAt && after.length > 0 && after.every((x) => x.code === undefined)
        }
        while (!(await cleanFor(3000)) && performance.now() - killedAt < 60_000) await sleep(100)
        stop = true
        await Promise.all(workers)

        const afterKill = calls.filter((x) => x.end > killedAt)
        const failures = afterKill.filter((x) => x.code !== undefined)
        const slowest = Math.max(...calls.map((x) => x.end - x.start))
        const lastFailure = (op: Call['op']): number => Math.max(killedAt, ...failures.filter((x) => x.op === op).map((x) => x.end))
        const resumed = Math.max(lastFailure('announce'), lastFailure('lookup'))
        const servedMeanwhile = afterKill.filter((x) => x.op === 'lookup' && x.code === undefined && x.end < resumed).length
        const roles = await c.roles()
        t.diagnostic(`failover: SIGKILL of master ${victim.port} (cluster-node-timeout 2000 ms, call deadline ${TIMEOUT_MS} ms): ` +
          `${failures.length} of ${afterKill.length} calls failed after it, ` +
          `codes ${[...new Set(failures.map((x) => x.code))].join(', ') || 'none'}; slowest call ${slowest.toFixed(0)} ms; ` +
          `announces resumed ${((lastFailure('announce') - killedAt) / 1000).toFixed(2)} s and lookups ` +
          `${((lastFailure('lookup') - killedAt) / 1000).toFixed(2)} s after the kill (${servedMeanwhile} lookups answered meanwhile from the ` +
          `holders on the other masters); masters now ${roles.masters.join(', ')}`)

        assert.ok(slowest < TIMEOUT_MS + SETTLE_SLACK_MS, `a call took ${slowest.toFixed(0)} ms: calls must settle within their deadline`)
        assert.ok(failures.length > 0, 'the slots of the killed master were unavailable for a while')
        assert.deepEqual([...new Set(failures.map((x) => x.code))], ['RAFSPEER_ERR_DIRECTORY_UNAVAILABLE'])
        assert.ok(await cleanFor(3000), 'calls succeed again after the failover')
        assert.ok(!roles.masters.includes(victim.port) && roles.masters.length === 3, `a replica took over: masters ${roles.masters.join(', ')}`)
        // what was recorded before the kill is still there: the promoted replica had it
        let found = 0
        for (let b = 0; b < BLOBS; b++) if ((await dir.lookup(blobId(b))).length > 0) found++
        assert.equal(found, BLOBS, 'every blob still has holders')
      } finally {
        await dir.close()
      }
    })
  })
})
