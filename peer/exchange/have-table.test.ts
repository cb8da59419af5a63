/**
 * The have table against a plain reference (a Map per blob of each neighbour's bits and PENDING promises, visited
 * in full for every question): the same answers, in the same order, through any sequence of messages, expiries
 * and forgetting. The table's per-chunk counts only let it skip visiting; they must never change an answer.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { getBit, newBits, setBit, type HaveMessage } from './have-protocol.js'
import { HaveTable } from './have-table.js'

const TTL = 100
const blobs = [Buffer.alloc(32, 1), Buffer.alloc(32, 2)]

/** what the table answered before it kept counts */
class Reference {
  private readonly blobs = new Map<string, Map<string, { chunks: number, bits: Uint8Array, pending: Map<number, number> }>>()
  constructor (private readonly now: () => number) {}

  apply (peer: string, m: HaveMessage): void {
    if (m.type === 'bitfield') {
      const hex = m.blob.toString('hex')
      let per = this.blobs.get(hex)
      if (per === undefined) this.blobs.set(hex, (per = new Map()))
      const bits = newBits(m.chunks)
      bits.set(m.bits.subarray(0, bits.length))
      per.set(peer, { chunks: m.chunks, bits, pending: new Map(m.pending.filter(ci => !getBit(bits, ci)).map(ci => [ci, this.now()])) })
      return
    }
    if (m.type !== 'have' && m.type !== 'pending' && m.type !== 'dropped') return
    const st = this.blobs.get(m.blob.toString('hex'))?.get(peer)
    if (st === undefined) return
    for (const ci of m.indexes) {
      if (ci >= st.chunks) continue
      const has = getBit(st.bits, ci)
      if (m.type === 'have') { setBit(st.bits, ci); st.pending.delete(ci) } else if (m.type === 'pending') { if (!has) st.pending.set(ci, this.now()) } else {
        st.bits[ci >>> 3]! &= ~(0x80 >>> (ci & 7))
        st.pending.delete(ci)
      }
    }
  }

  forgetPeer (peer: string): void {
    for (const [hex, per] of this.blobs) { per.delete(peer); if (per.size === 0) this.blobs.delete(hex) }
  }

  sources (hex: string, ci: number): { have: string[], pending: Array<{ peerId: string, since: number }> } {
    const out = { have: [] as string[], pending: [] as Array<{ peerId: string, since: number }> }
    for (const [peer, st] of this.blobs.get(hex) ?? []) {
      if (ci >= st.chunks) continue
      if (getBit(st.bits, ci)) { out.have.push(peer); continue }
      const since = st.pending.get(ci)
      if (since !== undefined && this.now() - since <= TTL) out.pending.push({ peerId: peer, since })
    }
    return out
  }

  neighbours (hex: string): Array<[string, number, number]> {
    return [...this.blobs.get(hex) ?? []].map(([peer, st]) => {
      let have = 0
      for (let i = 0; i < st.chunks; i++) if (getBit(st.bits, i)) have++
      return [peer, have, st.chunks]
    })
  }

  holders (hex: string, ci: number): number {
    let n = 0
    for (const st of this.blobs.get(hex)?.values() ?? []) if (ci < st.chunks && getBit(st.bits, ci)) n++
    return n
  }

  activeNear (hex: string, ci: number, window: number): boolean {
    for (let i = Math.max(0, ci - window); i <= ci + window; i++) if (this.holders(hex, i) > 0 || this.sources(hex, i).pending.length > 0) return true
    return false
  }

  behind (hex: string, peer: string, ci: number, window: number): boolean {
    const st = this.blobs.get(hex)?.get(peer)
    if (st === undefined || ci < 1 || ci >= st.chunks) return false
    const active = (i: number): boolean => i >= 0 && i < st.chunks && (getBit(st.bits, i) || this.now() - (st.pending.get(i) ?? -Infinity) <= TTL)
    for (let i = ci; i <= ci + window; i++) if (active(i)) return false
    for (let i = ci - window; i < ci; i++) if (active(i)) return true
    return false
  }
}

const blob = fc.integer({ min: 0, max: 1 })
const ci = fc.integer({ min: 0, max: 23 })
/** operations on a table whose neighbours are drawn from `peers` ids */
const ops = (peers: number, maxLength: number): fc.Arbitrary<Op[]> => {
  const peer = fc.integer({ min: 0, max: peers - 1 }).map(i => `P${i}`)
  return fc.array(fc.oneof(
  fc.record({ kind: fc.constant('bitfield' as const), peer, blob, chunks: fc.integer({ min: 0, max: 20 }), bits: fc.uint8Array({ minLength: 3, maxLength: 3 }), pending: fc.array(ci, { maxLength: 4 }) }),
  fc.record({ kind: fc.constantFrom('have' as const, 'pending' as const, 'dropped' as const), peer, blob, indexes: fc.array(ci, { maxLength: 4 }) }),
  fc.record({ kind: fc.constant('forget' as const), peer }),
  fc.record({ kind: fc.constant('wait' as const), ms: fc.integer({ min: 0, max: 80 }) })
  ), { maxLength })
}

type Op =
  | { kind: 'bitfield', peer: string, blob: number, chunks: number, bits: Uint8Array, pending: number[] }
  | { kind: 'have' | 'pending' | 'dropped', peer: string, blob: number, indexes: number[] }
  | { kind: 'forget', peer: string }
  | { kind: 'wait', ms: number }

test('the have table answers as a full visit of every neighbour would, in the same order', () => {
  fc.assert(fc.property(ops(4, 60), o => { check(o, 1) }), { numRuns: 300 })
})

test('… with many neighbours coming and going (the matrix grows past 32 and gives forgotten slots back)', () => {
  fc.assert(fc.property(ops(100, 600), o => { check(o, 25) }), { numRuns: 30 })
})

/** Runs `ops` on the table and the reference, comparing every answer after every `every`-th one. */
function check (ops: Op[], every: number): void {
  let now = 0
  let done = 0
  const table = new HaveTable({ now: () => now, pendingTtlMs: TTL })
  const ref = new Reference(() => now)
  for (const o of ops) {
    if (o.kind === 'wait') now += o.ms
    else if (o.kind === 'forget') { table.forgetPeer(o.peer); ref.forgetPeer(o.peer) } else {
      const m: HaveMessage = o.kind === 'bitfield'
        ? { type: 'bitfield', blob: blobs[o.blob]!, chunks: o.chunks, bits: o.bits, pending: o.pending.filter(c => c < o.chunks) }
        : { type: o.kind, blob: blobs[o.blob]!, indexes: o.indexes }
      table.apply(o.peer, m, o.blob === 0 ? blobs[0]!.toString('hex') : undefined)
      ref.apply(o.peer, m)
    }
    if (++done % every !== 0 && done !== ops.length) continue
    for (const b of blobs) {
      const hex = b.toString('hex')
      for (let c = 0; c < 24; c++) {
        assert.equal(table.holders(hex, c), ref.holders(hex, c), `holders of ${c}`)
        assert.equal(table.activeNear(hex, c, 2), ref.activeNear(hex, c, 2), `near ${c}`)
        for (const n of table.neighbours(hex)) assert.equal(table.behind(hex, n.peerId, c, 3), ref.behind(hex, n.peerId, c, 3), `${n.peerId} behind ${c}`)
        assert.deepEqual(table.sources(hex, c), ref.sources(hex, c), `sources of ${c}`)
      }
      assert.deepEqual(table.neighbours(hex).map(n => [n.peerId, n.have, n.chunks]), ref.neighbours(hex))
    }
  }
}

test('a hundred neighbours, most of them forgotten, then a new one: the order of first bitfields holds', () => {
  const table = new HaveTable({ now: () => 0 })
  const [blob] = blobs
  const hex = blob!.toString('hex')
  const all = newBits(8)
  for (let i = 0; i < 8; i++) setBit(all, i)
  for (let i = 0; i < 100; i++) table.apply(`P${i}`, { type: 'bitfield', blob: blob!, chunks: 8, bits: i % 3 === 0 ? newBits(8) : all, pending: [] }, hex)
  for (let i = 0; i < 100; i++) if (i % 5 !== 0) table.forgetPeer(`P${i}`)
  table.apply('Q', { type: 'bitfield', blob: blob!, chunks: 8, bits: all, pending: [] }, hex)
  const kept = Array.from({ length: 20 }, (_, k) => 5 * k)
  assert.deepEqual(table.sources(hex, 3).have, [...kept.filter(i => i % 3 !== 0).map(i => `P${i}`), 'Q'])
  assert.deepEqual(table.neighbours(hex).map(n => n.peerId), [...kept.map(i => `P${i}`), 'Q'])
  assert.equal(table.holders(hex, 3), kept.filter(i => i % 3 !== 0).length + 1)
})
