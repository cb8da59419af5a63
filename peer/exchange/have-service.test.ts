/**
 * `/rafspeer/have/1.0.0` between real libp2p hosts on loopback: bitfields on interest, batched HAVE / PENDING /
 * DROPPED (or at once: `flushBlob`), a blob learned later, want-have across blobs, uninterest, a hostile neighbour, the
 * end of a session.
 */
import '../../polyfill.js'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { announceAddrs, createHost, encodeFrame, type ChunkHolder, type Host } from '../../p2p/index.js'
import { HAVE_PROTOCOL, encodeHave, newBits, setBit } from './have-protocol.js'
import { HaveService, type LocalChunks, type LocalListener } from './have-service.js'

/** A node's own chunks, kept in memory (the daemon's implementation reads the blob cache and the fetcher). */
class MemoryChunks implements LocalChunks {
  readonly blobs = new Map<string, { chunks: number, bits: Uint8Array, pending: Set<number> }>()
  readonly digests = new Set<string>()
  private readonly listeners = new Map<string, Set<LocalListener>>()
  snapshot (hex: string): { chunks: number, bits: Uint8Array, pending: number[] } | undefined {
    const b = this.blobs.get(hex)
    return b === undefined ? undefined : { chunks: b.chunks, bits: b.bits.slice(), pending: [...b.pending] }
  }

  subscribe (hex: string, l: LocalListener): () => void {
    const set = this.listeners.get(hex) ?? new Set()
    this.listeners.set(hex, set)
    set.add(l)
    return () => set.delete(l)
  }

  async hasDigests (ds: Buffer[]): Promise<boolean[]> { return ds.map(d => this.digests.has(d.toString('hex'))) }
  register (hex: string, chunks: number): void {
    this.blobs.set(hex, { chunks, bits: newBits(chunks), pending: new Set() })
    for (const l of this.listeners.get(hex) ?? []) l.known()
  }

  have (hex: string, cis: number[]): void {
    const b = this.blobs.get(hex)!
    for (const ci of cis) { setBit(b.bits, ci); b.pending.delete(ci) }
    for (const l of this.listeners.get(hex) ?? []) l.have(cis)
  }

  pending (hex: string, cis: number[]): void {
    for (const ci of cis) this.blobs.get(hex)!.pending.add(ci)
    for (const l of this.listeners.get(hex) ?? []) l.pending(cis)
  }

  dropped (hex: string, cis: number[]): void {
    const b = this.blobs.get(hex)!
    for (const ci of cis) { b.bits[ci >>> 3]! &= ~(0x80 >>> (ci & 7)); b.pending.delete(ci) }
    for (const l of this.listeners.get(hex) ?? []) l.dropped(cis)
  }
}

const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }
async function eventually (check: () => void, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms
  for (;;) {
    try { check(); return } catch (err) { if (Date.now() > deadline) throw err }
    await sleep(10)
  }
}

/** `n` libp2p hosts on loopback, each with a have service over its own chunks, started before and stopped after the suite */
function hostsWithServices (n: number, init: ConstructorParameters<typeof HaveService>[1], hosts: Host[], locals: MemoryChunks[], services: HaveService[]): void {
  before(async () => {
    for (let i = 0; i < n; i++) {
      const host = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
      const local = new MemoryChunks()
      const svc = new HaveService({ libp2p: host, local }, init)
      await svc.start()
      hosts.push(host)
      locals.push(local)
      services.push(svc)
    }
  })
  after(async () => {
    for (const s of services) await s.stop()
    for (const h of hosts) await h.stop()
  })
}

describe('have sessions between real libp2p hosts', () => {
  const hosts: Host[] = []
  const services: HaveService[] = []
  const locals: MemoryChunks[] = []
  const holder = (i: number): ChunkHolder => ({ peerId: hosts[i]!.peerId.toString(), addrs: announceAddrs(hosts[i]!) })
  const blob = randomBytes(32).toString('hex')
  const other = randomBytes(32).toString('hex')

  hostsWithServices(3, { flushMs: 10, maxInterestsPerPeer: 4 }, hosts, locals, services)

  it('interest brings the bitfield with pending chunks, then batched updates', async () => {
    locals[1]!.register(blob, 20)
    locals[1]!.have(blob, [0, 1, 2])
    locals[1]!.pending(blob, [3])
    const updates: string[] = []
    const off = services[0]!.onUpdate((hex, peer) => { updates.push(`${hex.slice(0, 4)}:${peer.slice(-4)}`) })
    await services[0]!.interest(blob, [holder(1)])
    const t = services[0]!.table
    const p1 = holder(1).peerId
    await eventually(() => { assert.deepEqual(t.sources(blob, 2).have, [p1]) })
    assert.deepEqual(t.sources(blob, 3).pending.map(p => p.peerId), [p1])
    assert.deepEqual(t.sources(blob, 4), { have: [], pending: [] })
    // updates arrive batched: PENDING, HAVE, DROPPED
    locals[1]!.pending(blob, [4, 5])
    locals[1]!.have(blob, [3, 4])
    locals[1]!.dropped(blob, [0])
    await eventually(() => {
      assert.deepEqual(t.sources(blob, 3).have, [p1])
      assert.deepEqual(t.sources(blob, 5).pending.map(p => p.peerId), [p1])
      assert.deepEqual(t.sources(blob, 0).have, [])
    })
    assert.ok(updates.length >= 2)
    off()
  })

  it('follows back: interest in a blob the neighbour works on too is answered with its own', async () => {
    const third = randomBytes(32).toString('hex')
    await services[2]!.interest(third, [])
    locals[0]!.register(third, 4)
    locals[0]!.have(third, [1])
    await services[0]!.interest(third, [holder(2)])
    await eventually(() => { assert.deepEqual(services[0]!.followers(third), [holder(2).peerId]) })
    await eventually(() => { assert.deepEqual(services[2]!.table.sources(third, 1).have, [holder(0).peerId]) })
    // a blob the neighbour does not work on is not followed back (first test: host 1 never followed host 0)
    assert.deepEqual(services[0]!.followers(blob), [])
  })

  it('a blob the neighbour learns later is sent whole once it knows it', async () => {
    await services[0]!.interest(other, [holder(2)])
    await sleep(50)
    assert.deepEqual(services[0]!.table.neighbours(other), [])
    locals[2]!.register(other, 8)
    locals[2]!.have(other, [7])
    await eventually(() => { assert.deepEqual(services[0]!.table.sources(other, 7).have, [holder(2).peerId]) })
  })

  it('want-have answers for digests held in any blob; a silent or unknown peer answers all false', async () => {
    const d1 = randomBytes(32)
    const d2 = randomBytes(32)
    locals[2]!.digests.add(d2.toString('hex'))
    assert.deepEqual(await services[0]!.wantHave(holder(2), [d1, d2]), [false, true])
    assert.deepEqual(await services[0]!.wantHave({ peerId: holder(2).peerId, addrs: [] }, []), [])
  })

  it('uninterest stops the updates and forgets the state', async () => {
    services[0]!.uninterest(other)
    assert.deepEqual(services[0]!.table.neighbours(other), [])
    locals[2]!.have(other, [1])
    await sleep(60)
    assert.deepEqual(services[0]!.table.neighbours(other), [])
  })

  it('a hostile neighbour: garbage ends its session, a flood of interests is bounded; honest sessions go on', async () => {
    const liar = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    try {
      // more blobs followed than allowed: the rest is ignored, nothing grows without bound
      const stream = await liar.dialProtocol(hosts[1]!.getMultiaddrs()[0]!, HAVE_PROTOCOL)
      const many = Array.from({ length: 10 }, () => randomBytes(32))
      const body = Buffer.concat([Buffer.of(1, 0, many.length), ...many])
      stream.send(encodeFrame(body))
      // then garbage: an unknown message type
      stream.send(encodeFrame(Buffer.of(99)))
      const before = services[1]!.counters.aborted
      await eventually(() => { assert.ok(services[1]!.counters.aborted > before) })
      // a blob's updates we never asked about are not kept
      const s2 = await liar.dialProtocol(hosts[0]!.getMultiaddrs()[0]!, HAVE_PROTOCOL)
      const bits = newBits(4)
      setBit(bits, 0)
      const unasked = randomBytes(32)
      s2.send(encodeFrame(Buffer.concat([Buffer.of(3), unasked, Buffer.from([0, 0, 0, 4]), bits, Buffer.from([0, 0])])))
      await sleep(50)
      assert.deepEqual(services[0]!.table.neighbours(unasked.toString('hex')), [])
      // a bitfield of a blob we follow, sized unlike the blob as we know it: not taken (no rows for 16M chunks)
      const followed = randomBytes(32)
      const fhex = followed.toString('hex')
      locals[0]!.register(fhex, 20)
      await services[0]!.interest(fhex, [])
      const right = newBits(20)
      setBit(right, 1)
      s2.send(encodeFrame(encodeHave({ type: 'bitfield', blob: followed, chunks: 20, bits: right, pending: [] })))
      await eventually(() => { assert.deepEqual(services[0]!.table.sources(fhex, 1).have, [liar.peerId.toString()]) })
      const huge = newBits(1 << 24)
      setBit(huge, 0)
      s2.send(encodeFrame(encodeHave({ type: 'bitfield', blob: followed, chunks: 1 << 24, bits: huge, pending: [] })))
      // an update after it on the same stream: once it shows, the lie before it was read
      s2.send(encodeFrame(encodeHave({ type: 'have', blob: followed, indexes: [2] })))
      await eventually(() => { assert.deepEqual(services[0]!.table.sources(fhex, 2).have, [liar.peerId.toString()]) })
      assert.deepEqual(services[0]!.table.sources(fhex, 0).have, [], 'the oversized bitfield was applied')
      assert.deepEqual(services[0]!.table.sources(fhex, 1).have, [liar.peerId.toString()])
    } finally {
      await liar.stop()
    }
    // the honest session still carries updates
    locals[1]!.have(blob, [10])
    await eventually(() => { assert.deepEqual(services[0]!.table.sources(blob, 10).have, [holder(1).peerId]) })
  })

  it('the end of a session drops the neighbour from the table', async () => {
    assert.ok(services[0]!.peers.includes(holder(1).peerId))
    await services[1]!.stop()
    await eventually(() => { assert.deepEqual(services[0]!.table.sources(blob, 1).have, []) })
    assert.ok(!services[0]!.peers.includes(holder(1).peerId))
  })
})

describe('flushBlob: a blob\'s news now, not at the next flush', () => {
  const hosts: Host[] = []
  const services: HaveService[] = []
  const locals: MemoryChunks[] = []
  const blob = randomBytes(32).toString('hex')

  // a flush a minute away: only flushBlob can send an update in time
  hostsWithServices(2, { flushMs: 60_000 }, hosts, locals, services)

  it('sends the PENDING of a chunk just chosen for the registry to every follower at once', async () => {
    locals[1]!.register(blob, 8)
    await services[0]!.interest(blob, [{ peerId: hosts[1]!.peerId.toString(), addrs: announceAddrs(hosts[1]!) }])
    const t = services[0]!.table
    await eventually(() => { assert.equal(t.neighbours(blob).length, 1) })
    locals[1]!.pending(blob, [3])
    await sleep(100)
    assert.deepEqual(t.sources(blob, 3).pending, [], 'held for the next flush')
    services[1]!.flushBlob(blob)
    await eventually(() => { assert.deepEqual(t.sources(blob, 3).pending.map(p => p.peerId), [hosts[1]!.peerId.toString()]) }, 1000)
    // a blob nobody follows: nothing to send
    services[1]!.flushBlob(randomBytes(32).toString('hex'))
  })
})
