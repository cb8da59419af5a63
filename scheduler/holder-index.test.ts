import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import fc from 'fast-check'
import { HolderIndex } from './index-store.js'
import { packDigests } from './protocol.js'
import type { HolderIndexInit, PeerInfo } from './index.js'

const digest = (n: number | string): Buffer => createHash('sha256').update(String(n)).digest()
const info = (port: number, zone = ''): PeerInfo => ({ addrs: [`/ip4/127.0.0.1/tcp/${port}`], zone, uploadSlots: 0, uploadBps: 0 })

/** an index on a hand-driven clock and without jitter unless asked */
function setup (init: HolderIndexInit = {}): { idx: HolderIndex, clock: { t: number } } {
  const clock = { t: 1_000_000 }
  const idx = new HolderIndex({ now: () => clock.t, random: () => 0.5, ...init })
  return { idx, clock }
}

const ids = (idx: HolderIndex, asker: string | undefined, d: Buffer): string[] =>
  (idx.resolveMap(asker, [d]).get(d.toString('hex')) ?? []).map((h) => h.peerId)

test('announce then resolve: holders come back, never the asker, digests nobody holds are absent', () => {
  const { idx } = setup()
  idx.announce('A', packDigests([digest(1), digest(2)]), { info: info(1) })
  idx.announce('B', packDigests([digest(2)]), { info: info(2) })
  const m = idx.resolveMap('C', [digest(1), digest(2), digest(3)])
  assert.deepEqual(m.get(digest(1).toString('hex'))?.map((h) => h.peerId), ['A'])
  assert.deepEqual(m.get(digest(2).toString('hex'))?.map((h) => h.peerId).sort(), ['A', 'B'])
  assert.equal(m.has(digest(3).toString('hex')), false)
  assert.deepEqual(m.get(digest(1).toString('hex'))?.[0].addrs, ['/ip4/127.0.0.1/tcp/1'])
  assert.deepEqual(ids(idx, 'A', digest(2)), ['B'])
  assert.deepEqual(ids(idx, 'A', digest(1)), [])
  assert.deepEqual(idx.stats(), { peers: 2, digests: 2, entries: 3, staleEntries: 0, banned: 0, refused: 0, evictions: 0, evictedEntries: 0, displacedPeers: 0 })
})

test('a peer without addresses is never handed out', () => {
  const { idx } = setup()
  idx.announce('A', packDigests([digest(1)]))
  assert.deepEqual(ids(idx, 'C', digest(1)), [])
  idx.announce('A', packDigests([]), { info: info(1) })
  assert.deepEqual(ids(idx, 'C', digest(1)), ['A'])
})

test('withdraw removes only that peer and that digest; announcing twice is idempotent', () => {
  const { idx } = setup()
  for (const p of ['A', 'B', 'C']) idx.announce(p, packDigests([digest(1), digest(2)]), { info: info(1) })
  idx.announce('A', packDigests([digest(1)]))
  assert.equal(idx.stats().entries, 6)
  assert.equal(idx.withdraw('B', packDigests([digest(1), digest(9)])), 1)
  assert.deepEqual(idx.holdersOf(digest(1)).sort(), ['A', 'C'])
  assert.deepEqual(idx.holdersOf(digest(2)).sort(), ['A', 'B', 'C'])
  idx.withdraw('A', packDigests([digest(1)]))
  idx.withdraw('C', packDigests([digest(1)]))
  assert.deepEqual(idx.holdersOf(digest(1)), [])
  assert.deepEqual(idx.stats(), { peers: 3, digests: 1, entries: 3, staleEntries: 0, banned: 0, refused: 0, evictions: 0, evictedEntries: 0, displacedPeers: 0 })
  assert.equal(idx.withdraw('nobody', packDigests([digest(2)])), 0)
})

test('a peer silent for 3 of its heartbeat intervals expires with all its entries; the sweep reclaims them', () => {
  const { idx, clock } = setup({ heartbeatMs: 5000 })
  idx.announce('A', packDigests([digest(1), digest(2)]), { info: info(1) })
  idx.heartbeat('A', 100, { activeUploads: 0, recentUploadBps: 0 })
  idx.announce('B', packDigests([digest(2)]), { info: info(2) })
  clock.t += 250
  idx.heartbeat('B', 100, { activeUploads: 0, recentUploadBps: 0 })
  assert.deepEqual(idx.expire(), [])
  assert.deepEqual(ids(idx, 'C', digest(1)), ['A'])
  clock.t += 51 // A silent 301 ms > 3 × 100
  // resolve already skips it before the expiry timer runs
  assert.deepEqual(ids(idx, 'C', digest(1)), [])
  assert.deepEqual(ids(idx, 'C', digest(2)), ['B'])
  assert.deepEqual(idx.expire(), ['A'])
  assert.equal(idx.peer('A'), undefined)
  assert.deepEqual(idx.stats(), { peers: 1, digests: 2, entries: 1, staleEntries: 2, banned: 0, refused: 0, evictions: 0, evictedEntries: 0, displacedPeers: 0 })
  idx.sweep()
  assert.deepEqual(idx.stats(), { peers: 1, digests: 1, entries: 1, staleEntries: 0, banned: 0, refused: 0, evictions: 0, evictedEntries: 0, displacedPeers: 0 })
  // the default interval applies until a peer declares one; declared ones are clamped
  idx.heartbeat('B', 1, { activeUploads: 0, recentUploadBps: 0 })
  assert.equal(idx.peer('B')?.intervalMs, 50)
  idx.heartbeat('B', 10_000_000, { activeUploads: 0, recentUploadBps: 0 })
  assert.equal(idx.peer('B')?.intervalMs, 30_000)
})

test('leave drops at once; a reset announce replaces the whole holding; a re-joined peer starts clean', () => {
  const { idx } = setup()
  idx.announce('A', packDigests([digest(1), digest(2)]), { info: info(1) })
  idx.announce('A', packDigests([digest(3)]), { reset: true, info: info(1) })
  assert.deepEqual(idx.holdersOf(digest(1)), [])
  assert.deepEqual(idx.holdersOf(digest(3)), ['A'])
  assert.equal(idx.stats().entries, 1)
  idx.leave('A')
  assert.deepEqual(idx.holdersOf(digest(3)), [])
  idx.announce('A', packDigests([digest(4)]), { info: info(1) })
  assert.deepEqual(idx.holdersOf(digest(3)), [])
  assert.deepEqual(idx.holdersOf(digest(4)), ['A'])
  idx.sweep()
  assert.deepEqual(idx.stats(), { peers: 1, digests: 1, entries: 1, staleEntries: 0, banned: 0, refused: 0, evictions: 0, evictedEntries: 0, displacedPeers: 0 })
})

test('bad bytes: one reporter drops a peer sharply, two distinct reporters ban it, bans expire, banned reporters are not heard', () => {
  const { idx, clock } = setup({ banMs: 60_000 })
  for (const p of ['A', 'B']) idx.announce(p, packDigests([digest(1)]), { info: info(1) })
  for (const p of ['R1', 'R2', 'R3']) idx.announce(p, packDigests([]), { info: info(2) })
  const bad = { peerId: 'A', chunks: 0, bytes: 0, ms: 5, failed: false, bad: true }
  idx.report('R1', [bad, bad, bad])
  assert.equal(idx.isBanned('A'), false)
  assert.deepEqual(ids(idx, 'C', digest(1)), ['B', 'A'], 'a bad peer ranks last but is still known')
  assert.deepEqual(idx.report('R2', [bad]), ['A'])
  assert.equal(idx.isBanned('A'), true)
  assert.deepEqual(ids(idx, 'C', digest(1)), ['B'])
  assert.equal(idx.stats().banned, 1)
  // a banned peer's reports are ignored
  idx.report('A', [{ ...bad, peerId: 'B' }])
  idx.report('A', [{ ...bad, peerId: 'B' }])
  assert.equal(idx.isBanned('B'), false)
  // a ban survives leaving and re-joining, and ends after banMs
  idx.leave('A')
  idx.announce('A', packDigests([digest(1)]), { info: info(1) })
  assert.deepEqual(ids(idx, 'C', digest(1)), ['B'])
  clock.t += 60_001
  for (const p of ['A', 'B']) idx.heartbeat(p, 60_000, { activeUploads: 0, recentUploadBps: 0 })
  assert.equal(idx.isBanned('A'), false)
  assert.deepEqual(ids(idx, 'C', digest(1)).sort(), ['A', 'B'])
  // reports about oneself or unknown peers change nothing
  assert.deepEqual(idx.report('B', [{ ...bad, peerId: 'B' }, { ...bad, peerId: 'ghost' }]), [])
})

test('failures and latency from reports order the holders', () => {
  const { idx } = setup()
  for (const p of ['fast', 'slow', 'flaky']) idx.announce(p, packDigests([digest(1)]), { info: info(1) })
  const ok = (peerId: string, ms: number) => ({ peerId, chunks: 4, bytes: 4 << 20, ms, failed: false, bad: false })
  idx.report('R', [ok('fast', 8), ok('slow', 400), ok('flaky', 8), { ...ok('flaky', 2000), chunks: 0, failed: true }, { ...ok('flaky', 2000), chunks: 0, failed: true }])
  assert.deepEqual(ids(idx, 'C', digest(1)), ['fast', 'slow', 'flaky'])
})

test('load: a busy holder ranks below idle ones, and hand-outs spread over near-equal holders', () => {
  const { idx } = setup({ random: Math.random })
  const holders = ['h0', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'h7']
  for (const p of holders) idx.announce(p, packDigests([digest(1)]), { info: { ...info(1), uploadSlots: 4 } })
  idx.heartbeat('h0', 5000, { activeUploads: 4, recentUploadBps: 90e6 })
  const firsts = new Map<string, number>()
  for (let i = 0; i < 800; i++) {
    const got = ids(idx, `asker${i % 50}`, digest(1))
    assert.equal(got.length, 4)
    firsts.set(got[0], (firsts.get(got[0]) ?? 0) + 1)
  }
  assert.equal(firsts.get('h0') ?? 0, 0, 'the saturated holder is never first')
  for (const p of holders.slice(1)) assert.ok((firsts.get(p) ?? 0) >= 40, `${p} first ${firsts.get(p) ?? 0} times of 800: ${JSON.stringify([...firsts])}`)
})

test('one answer orders the same holders the same way for every digest (so the fetcher can batch)', () => {
  const { idx } = setup({ random: Math.random })
  const ds = Array.from({ length: 200 }, (_, i) => digest(i))
  for (const p of ['a', 'b', 'c', 'd', 'e', 'f']) idx.announce(p, packDigests(ds), { info: info(1) })
  const m = idx.resolveMap('asker', ds)
  const orders = new Set([...m.values()].map((hs) => hs.map((h) => h.peerId).join(',')))
  assert.equal(orders.size, 1)
  assert.equal([...m.values()][0].length, 4)
})

test('zone affinity: the same zone first, then the longest shared prefix, unknown last', () => {
  const { idx } = setup()
  idx.announce('far', packDigests([digest(1)]), { info: info(1, 'us|nyc|r1') })
  idx.announce('none', packDigests([digest(1)]), { info: info(1) })
  idx.announce('near', packDigests([digest(1)]), { info: info(1, 'eu|fra|r2') })
  idx.announce('same', packDigests([digest(1)]), { info: info(1, 'EU|fra|r1') })
  idx.announce('asker', packDigests([]), { info: info(9, 'eu|fra|r1') })
  for (let i = 0; i < 5; i++) assert.deepEqual(ids(idx, 'asker', digest(1)).slice(0, 2), ['same', 'near'])
  // an asker the scheduler does not know gets no zone preference but still an answer
  assert.equal(ids(idx, undefined, digest(1)).length, 4)
})

test('bounds: digests per peer, entries in total (past them the biggest holder per weight makes room), peers, holders per digest', () => {
  const { idx } = setup({ maxPeers: 2, maxDigestsPerPeer: 3, maxEntries: 5, maxHoldersPerDigest: 2, random: Math.random })
  assert.deepEqual(idx.announce('A', packDigests([digest(1), digest(2), digest(3), digest(4)]), { info: info(1) }), { added: 3, refused: 1 })
  // the index is full after B's second digest, and A holds no more than B would: refused, nothing evicted
  assert.deepEqual(idx.announce('B', packDigests([digest(1), digest(2), digest(5)]), { info: info(2) }), { added: 2, refused: 1 })
  assert.equal(idx.stats().entries, 5)
  assert.equal(idx.stats().evictions, 0)
  // a full peer table: the newcomer takes the slot of an unproven peer nobody asked for
  assert.deepEqual(idx.announce('C', packDigests([digest(1)]), { info: info(3) }), { added: 1, refused: 0 })
  assert.equal([idx.peer('A'), idx.peer('B')].filter((p) => p === undefined).length, 1)
  assert.equal(idx.stats().peers, 2)
  assert.equal(idx.stats().displacedPeers, 1)
  assert.equal(idx.stats().refused, 2)

  // a popular digest keeps a bounded, refreshed sample of holders
  const big = setup({ maxHoldersPerDigest: 4, random: Math.random }).idx
  for (let p = 0; p < 50; p++) big.announce(`p${p}`, packDigests([digest(1)]), { info: info(p + 1) })
  assert.equal(big.holdersOf(digest(1)).length, 4)
  assert.equal(big.stats().entries, 4)
  assert.ok(big.holdersOf(digest(1)).some((p) => Number(p.slice(1)) >= 40), 'late holders get in')
})

test('bookkeeping stays exact under random announce / withdraw / leave / reset / expire / sweep', () => {
  const op = fc.oneof(
    fc.record({ k: fc.constant('announce' as const), p: fc.integer({ min: 0, max: 5 }), ds: fc.array(fc.integer({ min: 0, max: 30 }), { maxLength: 12 }), reset: fc.boolean() }),
    fc.record({ k: fc.constant('withdraw' as const), p: fc.integer({ min: 0, max: 5 }), ds: fc.array(fc.integer({ min: 0, max: 30 }), { maxLength: 12 }) }),
    fc.record({ k: fc.constant('leave' as const), p: fc.integer({ min: 0, max: 5 }) }),
    fc.record({ k: fc.constant('tick' as const), ms: fc.integer({ min: 0, max: 200 }) }),
    fc.record({ k: fc.constant('sweep' as const), budget: fc.integer({ min: 1, max: 40 }) })
  )
  fc.assert(fc.property(fc.array(op, { maxLength: 80 }), fc.constantFrom(10_000_000, 12), (ops, maxEntries) => {
    // a tiny maxEntries keeps the index full: evictions and displaced peers happen all the time
    const { idx, clock } = setup({ maxPeers: 4, maxHoldersPerDigest: 3, random: Math.random, heartbeatMs: 100, maxEntries, admission: { minQuota: 2 } })
    const model = new Map<string, Set<number>>() // peer → digests, as far as the index accepted them
    for (const o of ops) {
      const peer = 'p' in o ? `P${o.p}` : ''
      if (o.k === 'announce') {
        if (o.reset) model.delete(peer)
        const before = idx.peer(peer) !== undefined
        idx.announce(peer, packDigests(o.ds.map(digest)), { reset: o.reset, info: info(1) })
        if (idx.peer(peer) !== undefined) {
          const s = model.get(peer) ?? new Set()
          for (const d of o.ds) s.add(d)
          model.set(peer, s)
        } else assert.equal(before, false)
      } else if (o.k === 'withdraw') {
        idx.withdraw(peer, packDigests(o.ds.map(digest)))
        for (const d of o.ds) model.get(peer)?.delete(d)
      } else if (o.k === 'leave') {
        idx.leave(peer)
        model.delete(peer)
      } else if (o.k === 'tick') {
        clock.t += o.ms
        for (const id of idx.expire()) model.delete(id)
      } else {
        idx.sweep(o.budget)
      }
      // every live entry the index reports is one the model has, except holders evicted from a full digest
      for (const p of model.keys()) if (idx.peer(p) === undefined) model.delete(p)
      let live = 0
      for (let d = 0; d <= 30; d++) {
        const hs = idx.holdersOf(digest(d))
        assert.ok(hs.length <= 3)
        for (const h of hs) assert.ok(model.get(h)?.has(d), `${h} holds ${d}`)
        live += hs.length
      }
      assert.equal(idx.stats().entries, live)
      assert.ok(idx.stats().entries <= maxEntries)
      assert.ok(idx.stats().entries + idx.stats().staleEntries <= maxEntries * 1.5)
    }
    while (idx.sweep(1000) > 0) { /* drain */ }
    idx.sweep(1000)
    assert.equal(idx.stats().staleEntries, 0)
  }), { numRuns: 300 })
})

test('a resolve miss makes a registered asker the holder; later askers are sent to it; withdraw undoes the claim', () => {
  const { idx } = setup()
  idx.announce('A', packDigests([]), { info: info(1) })
  idx.announce('B', packDigests([]), { info: info(2) })
  // A misses digest 9: nobody to offer, A claims it
  assert.deepEqual(ids(idx, 'A', digest(9)), [])
  assert.deepEqual(idx.holdersOf(digest(9)), ['A'])
  // B asks next: sent to A, and becomes a holder too (it fetches from A), so a third asker may be sent to B
  assert.deepEqual(ids(idx, 'B', digest(9)), ['A'])
  assert.deepEqual(idx.holdersOf(digest(9)).sort(), ['A', 'B'])
  idx.announce('D', packDigests([]), { info: info(4) })
  assert.deepEqual(ids(idx, 'D', digest(9)).sort(), ['A', 'B'])
  // an unregistered asker, or one without addresses, claims nothing
  idx.announce('C', packDigests([]))
  assert.deepEqual(ids(idx, 'C', digest(10)), [])
  assert.deepEqual(ids(idx, 'nobody', digest(10)), [])
  assert.deepEqual(idx.holdersOf(digest(10)), [])
  // none of them got it: withdrawing frees the digest, and the next miss is B's
  for (const p of ['A', 'B', 'D']) idx.withdraw(p, packDigests([digest(9)]))
  assert.deepEqual(ids(idx, 'B', digest(9)), [])
  assert.deepEqual(idx.holdersOf(digest(9)), ['B'])
  assert.equal(idx.stats().entries, 1)
})

test('claims can be turned off', () => {
  const { idx } = setup({ claimMisses: false })
  idx.announce('A', packDigests([]), { info: info(1) })
  assert.deepEqual(ids(idx, 'A', digest(9)), [])
  assert.deepEqual(idx.holdersOf(digest(9)), [])
})

test('a grouped resolve names every asker the same group: the key\'s first holders in join order, askers included', () => {
  const { idx } = setup({ random: Math.random })
  const blob = digest('blob')
  const answer = (asker: string): { group: string[], ranked: string[] } => {
    const raw = idx.resolveRaw(asker, packDigests([blob]), 4, 3)
    const all = Array.from(raw.refs.subarray(0, raw.counts[0]), (r) => raw.peers[r].id)
    const g = raw.groups?.[0] ?? 0
    return { group: all.slice(0, g), ranked: all.slice(g) }
  }
  for (let i = 0; i < 10; i++) idx.announce(`P${i}`, packDigests([]), { info: info(i + 1) })
  // each look-up claims the blob for the asker before the answer: the first asker is its own group
  assert.deepEqual(answer('P0').group, ['P0'])
  assert.deepEqual(answer('P1').group, ['P0', 'P1'])
  assert.deepEqual(answer('P2').group, ['P0', 'P1', 'P2'])
  for (let i = 3; i < 10; i++) {
    const a = answer(`P${i}`)
    assert.deepEqual(a.group, ['P0', 'P1', 'P2'], `asker P${i}`)
    assert.ok(a.ranked.length > 0 && a.ranked.length <= 4 && !a.ranked.includes(`P${i}`))
  }
  // without a group, answers are as before: ranked only, never the asker
  assert.equal(idx.resolveRaw('P9', packDigests([blob]), 4).groups, undefined)
  assert.ok(!ids(idx, 'P9', blob).includes('P9'))
  // with one, the blob's swarm: every asker claimed it (a key nobody held, the asker just did)
  assert.deepEqual([...idx.resolveRaw('P9', packDigests([blob, digest('nobody')]), 4, 3).swarms ?? []], [10, 1])
  assert.equal(idx.resolveRaw('P9', packDigests([blob]), 4).swarms, undefined)
  const m = idx.resolveMap('P9', [blob], 4, 3)
  assert.deepEqual([...m.swarms ?? []], [[blob.toString('hex'), 10]])
})

test('asPeer resolves as the wire client does: with a group asked for, the group first and marked, then ranked holders', async () => {
  const { idx } = setup({ random: Math.random })
  const blob = digest('blob')
  for (let i = 0; i < 5; i++) idx.announce(`P${i}`, packDigests([]), { info: info(i + 1) })
  const as = (id: string): ReturnType<HolderIndex['asPeer']> => idx.asPeer(id, info(1))
  for (let i = 0; i < 4; i++) await as(`P${i}`).resolve([blob], { group: 3 })
  const got = (await as('P4').resolve([blob], { group: 3, max: 2 })).get(blob.toString('hex')) ?? []
  assert.deepEqual(got.filter(h => h.group === true).map(h => h.peerId), ['P0', 'P1', 'P2'])
  const ranked = got.filter(h => h.group !== true)
  assert.ok(ranked.length > 0 && ranked.length <= 2 && !ranked.some(h => h.peerId === 'P4'))
  // without a group nobody is marked
  const plain = (await as('P4').resolve([blob])).get(blob.toString('hex')) ?? []
  assert.ok(plain.length > 0 && plain.every(h => h.group === undefined))
})

test('a full key keeps its group: new holders replace others at random, never the first ones', () => {
  const { idx } = setup({ random: Math.random, maxHoldersPerBlob: 10 })
  const blob = digest('full')
  for (let i = 0; i < 200; i++) {
    idx.announce(`P${i}`, packDigests([]), { info: info(i + 1) })
    idx.resolveRaw(`P${i}`, packDigests([blob]), 4, 4)
  }
  const raw = idx.resolveRaw('P0', packDigests([blob]), 4, 4)
  assert.deepEqual(Array.from(raw.refs.subarray(0, 4), (r) => raw.peers[r].id), ['P0', 'P1', 'P2', 'P3'])
  assert.equal(idx.holdersOf(blob).length, 10)
})

test('a blob looked up by more peers than a digest keeps: every asker is named the same group, and followed peers come from the whole swarm', () => {
  // a seeded draw: the answers are checked in bulk, not one by one
  let seed = 7
  const random = (): number => { seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; return seed / 2 ** 32 }
  const { idx } = setup({ random })
  const blob = digest('swarm')
  const askers = 2000
  const groups = new Set<string>()
  const followedAt: number[] = []
  for (let i = 0; i < askers; i++) {
    idx.announce(`P${i}`, packDigests([]), { info: info(i + 1) })
    const raw = idx.resolveRaw(`P${i}`, packDigests([blob]), 4, 4)
    const all = Array.from(raw.refs.subarray(0, raw.counts[0]), (r) => raw.peers[r].id)
    const g = raw.groups?.[0] ?? 0
    if (i >= 3) groups.add(all.slice(0, g).join())
    for (const id of all.slice(g)) {
      assert.notEqual(id, `P${i}`)
      if (i >= 1000) followedAt.push(i - Number(id.slice(1)))
    }
  }
  assert.deepEqual([...groups], ['P0,P1,P2,P3'])
  // the whole swarm is kept, far more than a digest's 32 holders
  assert.equal(idx.holdersOf(blob).length, askers)
  // a list of the latest joiners only would have each asker follow peers a few dozen look-ups older; a sample of
  // the whole swarm reaches back hundreds (a follow graph of short hops is a chain that PENDING cannot cross in time)
  followedAt.sort((a, b) => a - b)
  assert.ok(followedAt[Math.floor(followedAt.length / 2)] > 200, `median age of a followed peer: ${followedAt[Math.floor(followedAt.length / 2)]} look-ups`)
})

test('a blob\'s list past maxHoldersPerBlob replaces a random holder, never one of its group', () => {
  const { idx } = setup({ random: Math.random, maxHoldersPerDigest: 4, maxHoldersPerBlob: 50 })
  const blob = digest('capped')
  for (let i = 0; i < 300; i++) {
    idx.announce(`P${i}`, packDigests([]), { info: info(i + 1) })
    idx.resolveRaw(`P${i}`, packDigests([blob]), 4, 4)
  }
  const holders = idx.holdersOf(blob)
  assert.equal(holders.length, 50)
  assert.deepEqual(holders.slice(0, 4), ['P0', 'P1', 'P2', 'P3'])
  assert.ok(holders.some((p) => Number(p.slice(1)) >= 250), 'late holders get in')
  // a digest announced (not looked up with a group) keeps the digest's bound
  for (let i = 0; i < 20; i++) idx.announce(`P${i}`, packDigests([digest('chunk')]))
  assert.equal(idx.holdersOf(digest('chunk')).length, 4)
})
