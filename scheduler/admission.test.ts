import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { HolderIndex } from './index-store.js'
import { packDigests } from './protocol.js'
import type { HolderIndexInit, PeerInfo } from './index.js'

const digest = (n: number | string): Buffer => createHash('sha256').update(String(n)).digest()
const digests = (from: number, n: number): Buffer[] => Array.from({ length: n }, (_, i) => digest(from + i))
const junk = (n: number): Buffer => randomBytes(32 * n)
const info = (port: number): PeerInfo => ({ addrs: [`/ip4/127.0.0.1/tcp/${port}`], zone: '', uploadSlots: 0, uploadBps: 0 })
const ok = (peerId: string): { peerId: string, chunks: number, bytes: number, ms: number, failed: boolean, bad: boolean } =>
  ({ peerId, chunks: 8, bytes: 8 << 20, ms: 40, failed: false, bad: false })

function setup (init: HolderIndexInit = {}): HolderIndex {
  let t = 1_000_000
  return new HolderIndex({ now: () => t++, random: Math.random, ...init })
}

/** how many of `ds` resolve to `holder` for `asker` */
function resolvedTo (idx: HolderIndex, asker: string, ds: Buffer[], holder: string): number {
  const m = idx.resolveMap(asker, ds, 4)
  return ds.filter((d) => m.get(d.toString('hex'))?.some((h) => h.peerId === holder) === true).length
}

test('fake identities flooding random digests cannot lock honest peers out; the index stays within its bound', () => {
  const maxEntries = 100_000
  const idx = setup({ maxEntries, maxDigestsPerPeer: 60_000 })
  // four fresh identities, each announcing 60k digests nobody has: the index fills, and past half full each is
  // held to its share (the biggest is evicted whenever a smaller one needs room)
  for (const f of ['F1', 'F2', 'F3', 'F4']) {
    for (let i = 0; i < 4; i++) idx.announce(f, junk(15_000), { info: info(9) })
  }
  assert.ok(idx.stats().evictions >= 1, 'the flood filled the index')
  assert.ok(idx.stats().refused > 0)
  // honest A (unproven, new) announces its 1000 real chunks: all taken
  const real = digests(0, 1000)
  assert.deepEqual(idx.announce('A', packDigests(real), { info: info(1) }), { added: 1000, refused: 0 })
  // B asks for them: all resolve to A (and B claims them: it fetches them next)
  idx.announce('B', packDigests([]), { info: info(2) })
  assert.equal(resolvedTo(idx, 'B', real, 'A'), 1000)
  assert.equal(idx.holdersOf(real[0]).sort().join(), 'A,B')
  // the flooders go on: what they announce is capped, and they can no longer push the honest out
  for (let round = 0; round < 5; round++) {
    for (const f of ['F1', 'F2', 'F3', 'F4']) idx.announce(f, junk(15_000), { info: info(9) })
    assert.ok(idx.stats().entries <= maxEntries)
    assert.ok(idx.stats().entries + idx.stats().staleEntries <= maxEntries * 1.5)
  }
  assert.equal(resolvedTo(idx, 'C', real, 'A'), 1000)
  assert.equal(resolvedTo(idx, 'C', real, 'B'), 1000)
  // a late honest newcomer still gets its working set in, into a full index
  idx.announce('F1', junk(30_000), { info: info(9) })
  const more = digests(5000, 2000)
  assert.deepEqual(idx.announce('D', packDigests(more), { info: info(4) }), { added: 2000, refused: 0 })
  assert.equal(resolvedTo(idx, 'C', more, 'D'), 2000)
})

test('a peer others vouched for outweighs unproven ones: a flooder never evicts it', () => {
  const idx = setup({ maxEntries: 40_000, maxDigestsPerPeer: 40_000 })
  const real = digests(0, 20_000)
  idx.announce('seed', packDigests(real), { info: info(1) })
  idx.announce('B', packDigests([]), { info: info(2) })
  idx.report('B', [ok('seed')]) // B fetched from seed: a voucher
  // a flooder with 0 entries fills the rest, then wants more: the seed holds 20k but weighs 16, so it stays
  idx.announce('F', junk(40_000), { info: info(9) })
  assert.equal(idx.holdersOf(real[123]).includes('seed'), true)
  assert.equal(idx.peer('seed')?.count, 20_000)
  assert.equal(idx.stats().evictions, 0)
  assert.ok(idx.stats().refused > 0)
})

test('identities vouching for each other still cannot evict a proven peer holding less than them', () => {
  const idx = setup({ maxEntries: 30_000, maxDigestsPerPeer: 30_000 })
  idx.announce('honest', packDigests(digests(0, 5000)), { info: info(1) })
  idx.announce('user', packDigests([]), { info: info(2) })
  idx.report('user', [ok('honest')])
  for (const f of ['F1', 'F2']) idx.announce(f, packDigests([]), { info: info(9) })
  idx.report('F1', [ok('F2')])
  idx.report('F2', [ok('F1')])
  idx.announce('F1', junk(25_000), { info: info(9) })
  idx.announce('F2', junk(25_000), { info: info(9) })
  assert.equal(idx.peer('honest')?.count, 5000)
  assert.ok(idx.stats().entries <= 30_000)
})

test('reports from an unregistered connection are not heard (no vouchers, no bans)', () => {
  const idx = setup()
  idx.announce('A', packDigests(digests(0, 10)), { info: info(1) })
  assert.deepEqual(idx.report('ghost1', [{ ...ok('A'), bad: true }]), [])
  assert.deepEqual(idx.report('ghost2', [{ ...ok('A'), bad: true }]), [])
  assert.equal(idx.isBanned('A'), false)
})

test('past half full, a peer may hold its weighted share: quotas shrink as the index fills', () => {
  const idx = setup({ maxEntries: 100_000, maxDigestsPerPeer: 100_000, admission: { minQuota: 1000 } })
  idx.announce('big', junk(50_000), { info: info(1) })
  // half full: now shares apply. Two peers, total weight 2: each may hold 50k; 'late' gets to 50k, no further
  const r = idx.announce('late', junk(60_000), { info: info(2) })
  assert.equal(r.added, 50_000)
  assert.equal(r.refused, 10_000)
})

test('a full peer table lets a newcomer in by dropping an unproven peer nobody asked for, never a proven one', () => {
  const idx = setup({ maxPeers: 8 })
  idx.announce('seed', packDigests(digests(0, 10)), { info: info(1) })
  idx.announce('user', packDigests([]), { info: info(2) })
  idx.report('user', [ok('seed')])
  for (let i = 0; i < 6; i++) idx.heartbeat(`fake${i}`, 30_000, { activeUploads: 0, recentUploadBps: 0 })
  assert.equal(idx.stats().peers, 8)
  // wave after wave of fresh identities: each gets in, the seed (proven) is never displaced
  for (let i = 0; i < 200; i++) assert.equal(idx.heartbeat(`wave${i}`, 30_000, { activeUploads: 0, recentUploadBps: 0 }), true)
  assert.notEqual(idx.peer('seed'), undefined)
  assert.equal(idx.stats().peers, 8)
  assert.equal(resolvedTo(idx, 'x', digests(0, 10), 'seed'), 10)
  assert.ok(idx.stats().displacedPeers >= 200)
})

test('a banned identity does not get back in by displacing others', () => {
  const idx = setup({ maxPeers: 3, banAfterBadReporters: 2 })
  for (const p of ['A', 'B', 'C']) idx.announce(p, packDigests([]), { info: info(1) })
  idx.report('A', [{ ...ok('C'), bad: true }])
  idx.report('B', [{ ...ok('C'), bad: true }])
  assert.equal(idx.isBanned('C'), true)
  idx.leave('C')
  idx.heartbeat('D', 30_000, { activeUploads: 0, recentUploadBps: 0 })
  assert.equal(idx.heartbeat('C', 30_000, { activeUploads: 0, recentUploadBps: 0 }), false)
})

test('an unproven identity holds at most unprovenMaxDigests; once another peer vouches for it, up to maxDigestsPerPeer', () => {
  const idx = setup({ maxEntries: 1_000_000, maxDigestsPerPeer: 50_000, admission: { unprovenMaxDigests: 10_000 } })
  assert.deepEqual(idx.announce('new', junk(20_000), { info: info(1) }), { added: 10_000, refused: 10_000 })
  idx.announce('user', packDigests([]), { info: info(2) })
  idx.report('user', [ok('new')])
  assert.deepEqual(idx.announce('new', junk(20_000), { info: info(1) }), { added: 20_000, refused: 0 })
})
