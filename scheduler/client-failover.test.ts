/**
 * A client given several schedulers: it uses one at a time and moves to the next, round robin, when its session
 * breaks (the scheduler stopped), when a dial fails (a dead address first in the list), or when the scheduler stops
 * answering (a real `rafspeer scheduler` process under SIGSTOP: its connection stays open); each time it announces
 * everything it holds to the new one. Real schedulers over libp2p on 127.0.0.1, real clients.
 */
import '../polyfill.js'
import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { createHost, type Host } from '../p2p/index.js'
import { startSchedulerProcess, type SchedulerProcess } from '../test/helpers/scheduler-process.js'
import { SchedulerClient, startSchedulerNode, type SchedulerClientInit, type SchedulerNode } from './index.js'
import { SchedulerTargets } from './targets.js'
import { eventually } from '../test/helpers/eventually.js'

const digest = (n: string): Buffer => createHash('sha256').update(n).digest()

const hosts: Host[] = []
const clients: SchedulerClient[] = []
after(async () => {
  for (const c of clients) await c.stop().catch(() => {})
  for (const h of hosts) await Promise.resolve(h.stop()).catch(() => {})
})

async function client (scheduler: SchedulerClientInit['scheduler'], init: Partial<SchedulerClientInit> = {}): Promise<{ client: SchedulerClient, id: string }> {
  const host = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
  hosts.push(host)
  const c = new SchedulerClient({ libp2p: host }, {
    scheduler,
    selfAddrs: () => host.getMultiaddrs().map(String),
    heartbeatMs: 200,
    resolveTimeoutMs: 1000,
    minReconnectMs: 20,
    maxReconnectMs: 200,
    ...init
  })
  clients.push(c)
  await c.start()
  return { client: c, id: host.peerId.toString() }
}

const holders = async (c: SchedulerClient, d: Buffer): Promise<string[]> =>
  ((await c.resolve([d])).get(d.toString('hex')) ?? []).map((h) => h.peerId)

describe('SchedulerTargets', () => {
  it('takes one address or several, refuses every bad one at once and an empty list', async () => {
    const id = (await generateKeyPair('Ed25519')).publicKey.toString()
    const a = `/ip4/127.0.0.1/tcp/1/p2p/${id}`
    const b = `/ip4/127.0.0.2/tcp/1/p2p/${id}`
    const t = new SchedulerTargets([a, b, a])
    assert.deepEqual(t.all.map(String), [a, b], 'a repeated address is kept once')
    assert.deepEqual(t.peerIds(), [id])
    assert.equal(t.current.toString(), a)
    assert.equal(t.advance().toString(), b)
    assert.equal(t.advance().toString(), a, 'round robin')
    assert.equal(new SchedulerTargets(a).current.toString(), a)
    assert.throws(() => new SchedulerTargets(['/ip4/127.0.0.1/tcp/1', 'nonsense', a]), (err: Error & { code: string }) => {
      assert.equal(err.code, 'RAFSPEER_ERR_SCHED_CONFIG')
      assert.match(err.message, /\/ip4\/127\.0\.0\.1\/tcp\/1 lacks \/p2p/)
      assert.match(err.message, /nonsense/)
      return true
    })
    assert.throws(() => new SchedulerTargets([]), { code: 'RAFSPEER_ERR_SCHED_CONFIG' })
  })
})

describe('a client with several schedulers', () => {
  it('moves to the next when its session breaks, re-announcing; comes round to a restarted first one', async () => {
    const key1 = await generateKeyPair('Ed25519')
    // claims on misses would make the observers' polling resolves holders of what they poll for
    let s1: SchedulerNode = await startSchedulerNode({ privateKey: key1, claimMisses: false })
    const s2 = await startSchedulerNode({ claimMisses: false })
    const first = s1.multiaddrs[0]!
    const listen1 = first.replace(/\/p2p\/.*$/, '')
    try {
      const held = digest('held')
      const n = await client([first, s2.multiaddrs[0]!])
      const at1 = await client(first)
      const at2 = await client(s2.multiaddrs[0]!)
      assert.equal(await n.client.waitConnected(5000), true)
      assert.equal(n.client.address, first, 'the first address first')
      n.client.announce([held])
      await eventually(async () => { assert.deepEqual(await holders(at1.client, held), [n.id]) })
      assert.deepEqual(await holders(at2.client, held), [], 'the second scheduler knows nothing yet')

      await s1.stop()
      // its session broke: the client moved on and told the second one everything it holds
      await eventually(async () => { assert.deepEqual(await holders(at2.client, held), [n.id]) })
      assert.equal(n.client.address, s2.multiaddrs[0])
      assert.equal(n.client.connected, true)

      // the first one back (same key, same address), the second gone: round robin leads back to the first
      s1 = await startSchedulerNode({ privateKey: key1, listen: [listen1], claimMisses: false })
      await s2.stop()
      await eventually(async () => { assert.deepEqual(await holders(at1.client, held), [n.id]) })
      assert.equal(n.client.address, first)
      assert.ok(n.client.stats().sessions >= 3, `sessions ${n.client.stats().sessions}`)
    } finally {
      await s1.stop().catch(() => {})
      await s2.stop().catch(() => {})
    }
  })

  it('skips a dead address at the head of the list', async () => {
    const dead = await startSchedulerNode()
    const deadAddr = dead.multiaddrs[0]!
    await dead.stop()
    const s = await startSchedulerNode({ claimMisses: false })
    try {
      const n = await client([deadAddr, s.multiaddrs[0]!])
      const observer = await client(s.multiaddrs[0]!)
      const d = digest('after a dead one')
      n.client.announce([d])
      // resolves while the dead one is tried never fail, they answer empty
      assert.deepEqual(await holders(n.client, digest('anything')), [])
      assert.equal(await n.client.waitConnected(8000), true)
      assert.equal(n.client.address, s.multiaddrs[0])
      await eventually(async () => { assert.deepEqual(await holders(observer.client, d), [n.id]) })
    } finally {
      await s.stop()
    }
  })

  it('gives up a scheduler that stops answering (SIGSTOP: its connection stays open) for the next', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'rafspeer-sched-failover-'))
    let wedged: SchedulerProcess | undefined
    const s = await startSchedulerNode({ claimMisses: false })
    try {
      wedged = await startSchedulerProcess({ keyFile: join(dir, 'wedged.key') })
      const n = await client([wedged.address, s.multiaddrs[0]!], { unansweredMs: 1000, resolveTimeoutMs: 300 })
      const observer = await client(s.multiaddrs[0]!)
      assert.equal(await n.client.waitConnected(10_000), true)
      assert.equal(n.client.address, wedged.address)
      const d = digest('held while wedged')
      n.client.announce([d])
      await eventually(async () => { assert.deepEqual(await holders(n.client, digest('answered')), []) })
      await wedged.kill('SIGSTOP')
      const stoppedAt = Date.now()
      // reads keep resolving (empty, within their timeout) while the client finds the scheduler silent
      let resolves = 0
      while (n.client.address === wedged.address && Date.now() - stoppedAt < 15_000) {
        const start = Date.now()
        assert.deepEqual(await holders(n.client, digest(`probe ${resolves++}`)), [])
        assert.ok(Date.now() - start < 5000, 'a resolve never hangs')
      }
      assert.equal(n.client.address, s.multiaddrs[0], 'moved to the next scheduler')
      assert.equal(n.client.stats().unanswered, 1, 'because it answered nothing, not because libp2p found the connection dead')
      t.diagnostic(`moved on ${Date.now() - stoppedAt} ms after SIGSTOP (unansweredMs 1000), ${resolves} resolves meanwhile`)
      await eventually(async () => { assert.deepEqual(await holders(observer.client, d), [n.id]) })
    } finally {
      await wedged?.stop()
      await s.stop()
      await rm(dir, { recursive: true, force: true })
    }
  })
})
