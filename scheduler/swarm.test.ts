/**
 * A real scheduler and real peers over libp2p on 127.0.0.1: announce, resolve, withdraw, expiry of a silent peer,
 * leave, a hostile stream, the scheduler going away (resolve answers empty, fast) and coming back on the same key
 * and address (clients re-announce by themselves).
 */
import '../polyfill.js'
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createHost, encodeFrame, type Host } from '../p2p/index.js'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import type { PrivateKey } from '@libp2p/interface'
import { SCHEDULER_PROTOCOL, SchedulerClient, loadOrCreatePeerKey, startSchedulerNode, type SchedulerNode, type SchedulerError } from './index.js'
import { eventually } from '../test/helpers/eventually.js'

const digest = (n: string): Buffer => createHash('sha256').update(n).digest()
const hex = (d: Buffer): string => d.toString('hex')

async function peerNode (): Promise<Host> {
  return await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
}

const holderIds = async (c: SchedulerClient, d: Buffer): Promise<string[]> =>
  ((await c.resolve([d])).get(hex(d)) ?? []).map((h) => h.peerId).sort()

let key: PrivateKey
let sched: SchedulerNode | undefined
const nodes: Host[] = []
const clients: SchedulerClient[] = []
let a: SchedulerClient, b: SchedulerClient, c: SchedulerClient
let nodeA: Host, nodeB: Host, nodeC: Host

before(async () => {
  key = await generateKeyPair('Ed25519')
  // claims on misses (holder-index.test.ts) would make the polling resolves below holders of what they poll for
  sched = await startSchedulerNode({ privateKey: key, sweepIntervalMs: 50, claimMisses: false })
  for (let i = 0; i < 3; i++) nodes.push(await peerNode())
  ;[nodeA, nodeB, nodeC] = nodes
  for (const [i, n] of nodes.entries()) {
    clients.push(new SchedulerClient({ libp2p: n }, {
      scheduler: sched.multiaddrs[0],
      zone: `test|z${i}`,
      selfAddrs: () => n.getMultiaddrs().map(String),
      heartbeatMs: 100,
      maxReconnectMs: 300
    }))
  }
  ;[a, b, c] = clients
  for (const cl of clients) await cl.start()
  for (const cl of clients) assert.ok(await cl.waitConnected(5000))
})

after(async () => {
  for (const cl of clients) await cl.stop().catch(() => {})
  for (const n of nodes) await Promise.resolve(n.stop()).catch(() => {})
  await sched?.stop().catch(() => {})
})

test('announce → resolve names the holders with their addresses, never the asker', async () => {
  a.announce([digest('d1'), digest('d2')])
  b.announce([digest('d2'), digest('d3')])
  await eventually(async () => {
    const m = await c.resolve([digest('d1'), digest('d2'), digest('d3'), digest('nobody')])
    assert.deepEqual(m.get(hex(digest('d1')))?.map((h) => h.peerId), [nodeA.peerId.toString()])
    assert.deepEqual(m.get(hex(digest('d2')))?.map((h) => h.peerId).sort(), [nodeA.peerId.toString(), nodeB.peerId.toString()].sort())
    assert.deepEqual(m.get(hex(digest('d3')))?.map((h) => h.peerId), [nodeB.peerId.toString()])
    assert.equal(m.has(hex(digest('nobody'))), false)
    assert.deepEqual(m.get(hex(digest('d1')))?.[0].addrs, nodeA.getMultiaddrs().map((ma) => ma.decapsulateCode(421).toString()))
  })
  assert.deepEqual(await holderIds(a, digest('d2')), [nodeB.peerId.toString()])
  assert.deepEqual(await holderIds(a, digest('d1')), [])
})

test('withdraw removes the holder', async () => {
  b.withdraw([digest('d3')])
  await eventually(async () => { assert.deepEqual(await holderIds(c, digest('d3')), []) })
  assert.deepEqual(await holderIds(c, digest('d2')), [nodeA.peerId.toString(), nodeB.peerId.toString()].sort())
})

test('a peer the index dropped while its session lived (a busy scheduler missed its heartbeats) announces itself again', async () => {
  const aId = nodeA.peerId.toString()
  sched?.service.index.leave(aId)
  assert.equal(sched?.service.index.peer(aId), undefined)
  // its next heartbeat ends the session; the client reconnects and announces everything, addresses first
  await eventually(async () => { assert.deepEqual(await holderIds(c, digest('d1')), [aId]) })
  assert.ok((sched?.service.index.peer(aId)?.addrs.length ?? 0) > 0)
})

test('a hostile stream is closed and the scheduler keeps serving', async () => {
  const target = multiaddr(sched?.multiaddrs[0] as string)
  const s1 = await nodeC.dialProtocol(target, SCHEDULER_PROTOCOL)
  s1.send(encodeFrame(Uint8Array.from([0x7f, 1, 2, 3])))
  const s2 = await nodeC.dialProtocol(target, SCHEDULER_PROTOCOL)
  // a length prefix claiming 100 MiB
  s2.send(Uint8Array.from([0x80, 0x80, 0x80, 0x32]))
  await eventually(async () => {
    assert.notEqual(s1.status, 'open')
    assert.notEqual(s2.status, 'open')
  }, 3000)
  assert.deepEqual(await holderIds(c, digest('d1')), [nodeA.peerId.toString()])
})

test('a peer that stops heartbeating is kept for 3 intervals, then expires with its entries', async () => {
  await nodeA.stop() // no LEAVE: the node just goes silent
  const stoppedAt = Date.now()
  assert.deepEqual(await holderIds(c, digest('d1')), [nodeA.peerId.toString()], 'not dropped on disconnect')
  await eventually(async () => { assert.deepEqual(await holderIds(c, digest('d1')), []) }, 3000)
  const gone = Date.now() - stoppedAt
  assert.ok(gone >= 150 && gone < 1500, `expired after ${gone} ms (3 × 100 ms heartbeat)`)
  assert.deepEqual(await holderIds(c, digest('d2')), [nodeB.peerId.toString()])
  await a.stop()
})

test('a stopping client leaves at once, long before its expiry', async () => {
  const n = await peerNode()
  nodes.push(n)
  const d = new SchedulerClient({ libp2p: n }, { scheduler: sched?.multiaddrs[0] as string, selfAddrs: () => n.getMultiaddrs().map(String), heartbeatMs: 10_000 })
  clients.push(d)
  await d.start()
  d.announce([digest('d4')])
  await eventually(async () => { assert.deepEqual(await holderIds(c, digest('d4')), [n.peerId.toString()]) })
  await d.stop()
  await eventually(async () => { assert.deepEqual(await holderIds(c, digest('d4')), []) }, 1000)
})

test('reports travel: a peer two others report for bad bytes is no longer handed out', async () => {
  const n = await peerNode()
  nodes.push(n)
  const e = new SchedulerClient({ libp2p: n }, { scheduler: sched?.multiaddrs[0] as string, selfAddrs: () => n.getMultiaddrs().map(String), heartbeatMs: 100 })
  clients.push(e)
  await e.start()
  e.announce([digest('d6')])
  const id = n.peerId.toString()
  await eventually(async () => { assert.deepEqual(await holderIds(c, digest('d6')), [id]) })
  const bad = { peerId: id, chunks: 0, bytes: 0, ms: 3, failed: false, bad: true }
  b.report([bad])
  c.report([bad])
  await eventually(async () => { assert.deepEqual(await holderIds(c, digest('d6')), []) }, 2000)
  assert.equal(sched?.service.index.isBanned(id), true)
  await e.stop()
})

test('scheduler down: resolve answers empty within its timeout; back on the same key and address: clients re-announce', async (t) => {
  const addr = sched?.multiaddrs[0] as string
  const listen = multiaddr(addr).decapsulateCode(421).toString()
  await sched?.stop()
  sched = undefined
  await eventually(async () => { assert.equal(b.connected || c.connected, false) }, 2000)
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now()
    const m = await c.resolve([digest('d2')])
    const ms = performance.now() - t0
    t.diagnostic(`scheduler down: resolve answered in ${ms.toFixed(1)} ms`)
    assert.equal(m.size, 0)
    assert.ok(ms < 1000, `resolve took ${ms.toFixed(0)} ms with the scheduler down`)
  }
  // withdrawn while the scheduler is away: must not come back after the re-announce
  b.withdraw([digest('d2')])
  b.announce([digest('d5')])

  sched = await startSchedulerNode({ privateKey: key, listen: [listen], sweepIntervalMs: 50 })
  assert.equal(sched.multiaddrs[0], addr)
  await eventually(async () => {
    assert.deepEqual(await holderIds(c, digest('d5')), [nodeB.peerId.toString()])
  }, 8000)
  assert.deepEqual(await holderIds(c, digest('d2')), [])
  assert.ok(b.stats().sessions >= 2)
})

test('a scheduler that accepts but never answers: resolve still answers within resolveTimeoutMs', async (t) => {
  const mute = await peerNode()
  nodes.push(mute)
  await mute.handle(SCHEDULER_PROTOCOL, () => { /* reads nothing, answers nothing */ })
  const n = await peerNode()
  nodes.push(n)
  const cl = new SchedulerClient({ libp2p: n }, { scheduler: mute.getMultiaddrs()[0].toString(), selfAddrs: () => [] })
  clients.push(cl)
  await cl.start()
  assert.ok(await cl.waitConnected(3000))
  const t0 = performance.now()
  const m = await cl.resolve([digest('d1')])
  const ms = performance.now() - t0
  t.diagnostic(`mute scheduler: resolve answered in ${ms.toFixed(0)} ms`)
  assert.equal(m.size, 0)
  assert.ok(ms >= 150 && ms < 1000, `${ms} ms`)
  await cl.stop()
})

test('resolve with an aborted signal or nothing to ask answers at once', async () => {
  const ctl = new AbortController()
  ctl.abort()
  assert.equal((await c.resolve([digest('d5')], { signal: ctl.signal })).size, 0)
  assert.equal((await c.resolve([])).size, 0)
  assert.equal((await c.resolve([Buffer.alloc(5)])).size, 0)
})

test('the key file keeps the peer identity (mode 0600) and a bad one is refused', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'rafspeer-sched-key-'))
  try {
    const file = join(dir, 'sub', 'scheduler.key')
    const k1 = await loadOrCreatePeerKey(file)
    assert.equal((await stat(file)).mode & 0o777, 0o600)
    const k2 = await loadOrCreatePeerKey(file)
    assert.ok(k1.equals(k2))
    await writeFile(join(dir, 'bad.key'), 'not a key')
    await assert.rejects(loadOrCreatePeerKey(join(dir, 'bad.key')), (e: SchedulerError) => e.code === 'RAFSPEER_ERR_SCHED_CONFIG')
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})

test('a scheduler address without /p2p/ is a configuration error', () => {
  assert.throws(() => new SchedulerClient({ libp2p: nodeC }, { scheduler: '/ip4/127.0.0.1/tcp/1', selfAddrs: () => [] }), /p2p/)
  assert.throws(() => new SchedulerClient({ libp2p: nodeC }, { scheduler: 'nonsense', selfAddrs: () => [] }), (e: SchedulerError) => e.code === 'RAFSPEER_ERR_SCHED_CONFIG')
})
