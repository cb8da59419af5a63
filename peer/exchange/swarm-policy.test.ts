/**
 * The decisions the daemon's timer-driven classes and the model share: a blob's group without the scheduler's, the
 * holder a fetch asks for a chunk, how its requests are cut, what a have flush sends.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { backToSourceAssignee, rendezvousScore } from './back-to-source.js'
import { MAX_INDEXES_PER_MESSAGE } from './have-protocol.js'
import {
  blobGroup, chooseHolder, GROUP_FILL_MS, groupFilling, HaveOutbox, holdersInOrder, joinsQueued, nextQueued, splitRequests, type HolderLoad, prefetchClass, prefetchPick, type PrefetchClass, type PrefetchPicked
} from './swarm-policy.js'
import { spreading, PREFETCH_SLICE_CHUNKS, SWARM_PREFETCH_PATIENCE_MS, SWARM_PREFETCH_RECHECK_MS, SWARM_SOURCE_SLICE_BYTES, swarmPickLimits, swarmPrefetchWait, swarmQuietTake } from '../fetch/index.js'

const hex = 'ab'.repeat(32)

test('blobGroup: the first groupSize ids by their hash with the blob, whatever order they came in', () => {
  const ids = Array.from({ length: 12 }, (_, i) => `peer-${i}`)
  const byScore = [...ids].sort((a, b) => rendezvousScore(b, hex, -1) - rendezvousScore(a, hex, -1))
  assert.deepEqual(blobGroup(ids, hex, 4), byScore.slice(0, 4))
  assert.deepEqual(blobGroup([...ids].reverse(), hex, 4), byScore.slice(0, 4))
  assert.deepEqual(blobGroup(ids, hex, 100), byScore)
  assert.deepEqual(blobGroup([], hex, 4), [])
  const shuffled = fc.uniqueArray(fc.string(), { maxLength: 20 })
    .chain(xs => fc.tuple(fc.constant(xs), fc.shuffledSubarray(xs, { minLength: xs.length })))
  fc.assert(fc.property(shuffled, fc.integer({ min: 1, max: 8 }), ([xs, again], size) => {
    const g = blobGroup(xs, hex, size)
    assert.equal(g.length, Math.min(size, xs.length))
    assert.deepEqual(blobGroup(again, hex, size), g)
  }))
})

test('blobGroup: an id named twice counts once', () => {
  const g = blobGroup(['a', 'b', 'a', 'c', 'b'], hex, 3)
  assert.equal(new Set(g).size, 3)
  assert.deepEqual(g, blobGroup(['a', 'b', 'c'], hex, 3))
})

test('blobGroup: ids of equal hash go lower id first', () => {
  // two ids whose hashes with this blob collide (found by search)
  const [low, high] = ['81e8f8e01d', 'f21f798c8f']
  assert.equal(rendezvousScore(low, hex, -1), rendezvousScore(high, hex, -1))
  assert.deepEqual(blobGroup([high, low], hex, 2), [low, high])
  assert.deepEqual(blobGroup([low, high], hex, 2), [low, high])
  assert.deepEqual(blobGroup([high, low], hex, 1), [low])
})

test('holdersInOrder: a chunk\'s holders by their hash with that chunk, so different chunks start with different holders', () => {
  const ids = Array.from({ length: 16 }, (_, i) => `peer-${i}`)
  for (const ci of [0, 1, 7]) {
    const order = holdersInOrder(ids, hex, ci)
    assert.deepEqual([...order].sort(), [...ids].sort(), 'every holder, once')
    for (let i = 1; i < order.length; i++) assert.ok(rendezvousScore(order[i - 1]!, hex, ci) >= rendezvousScore(order[i]!, hex, ci))
    assert.deepEqual(holdersInOrder([...ids].reverse(), hex, ci), order, 'whatever order the plan gave')
  }
  // askers of 64 chunks held by the same 16 peers: the first asked is spread, not always the first holder
  const firsts = new Set(Array.from({ length: 64 }, (_, ci) => holdersInOrder(ids, hex, ci)[0]))
  assert.ok(firsts.size >= 8, `${firsts.size} distinct first holders`)
  assert.deepEqual(holdersInOrder([], hex, 3), [])
  assert.deepEqual(holdersInOrder(['only'], hex, 3), ['only'])
})

/** a fetch's lanes: bytes assigned per holder in use, penalties per holder */
function load (assigned: Record<string, number>, maxHolders: number, penalties: Record<string, number> = {}): HolderLoad<string> {
  return { inUse: Object.keys(assigned).length, maxHolders, assigned: h => assigned[h], penalty: h => penalties[h] ?? 0 }
}

test('chooseHolder: nobody open, nobody chosen', () => {
  assert.equal(chooseHolder([], 10, load({}, 3)), undefined)
})

test('chooseHolder: the least loaded, a holder not yet asked counting as empty while there is room', () => {
  assert.equal(chooseHolder(['a', 'b', 'c'], 10, load({ a: 30, b: 20 }, 3)), 'c')
  assert.equal(chooseHolder(['a', 'b'], 10, load({ a: 30, b: 20 }, 3)), 'b')
  // the fetch has its maxHolders: a holder out of use is not taken up, however idle
  assert.equal(chooseHolder(['a', 'b', 'c'], 10, load({ a: 30, b: 20 }, 2)), 'b')
  assert.equal(chooseHolder(['c', 'a'], 10, load({ a: 30, b: 20 }, 2)), 'a')
})

test('chooseHolder: on equal cost the first in the locator\'s order', () => {
  assert.equal(chooseHolder(['a', 'b', 'c'], 10, load({}, 3)), 'a')
  assert.equal(chooseHolder(['c', 'b', 'a'], 10, load({}, 3)), 'c')
  assert.equal(chooseHolder(['b', 'a'], 10, load({ a: 5, b: 5 }, 2)), 'b')
})

test('chooseHolder: the fetch full and none of the open holders in it, the first open one', () => {
  assert.equal(chooseHolder(['c', 'd'], 10, load({ a: 0, b: 0 }, 2)), 'c')
  assert.equal(chooseHolder(['d', 'c'], 10, load({ a: 0 }, 1)), 'd')
})

test('chooseHolder: cost is the bytes it would have, times one plus its penalty', () => {
  // a: (0 + 10) × 3 = 30; b: (10 + 10) × 1 = 20
  assert.equal(chooseHolder(['a', 'b'], 10, load({ b: 10 }, 3, { a: 2 })), 'b')
  // a: (0 + 10) × 2 = 20 = b's: the first
  assert.equal(chooseHolder(['a', 'b'], 10, load({ b: 10 }, 3, { a: 1 })), 'a')
  // a: (0 + 10) × 1.5 = 15 < 20
  assert.equal(chooseHolder(['b', 'a'], 10, load({ b: 10 }, 3, { a: 0.5 })), 'a')
  // the size counts: a: (0 + 100) × 2 = 200 > b: (50 + 100) × 1 = 150
  assert.equal(chooseHolder(['a', 'b'], 100, load({ b: 50 }, 3, { a: 1 })), 'b')
  // a penalised holder out of use is still skipped when the fetch is full
  assert.equal(chooseHolder(['a', 'b'], 10, load({ b: 1000 }, 1, { a: 0 })), 'b')
})

test('splitRequests: at most maxChunks and maxBytes per request, in order', () => {
  const size = (n: number): number => n
  assert.deepEqual(splitRequests([], size, 10, 3), [])
  assert.deepEqual(splitRequests([1, 1, 1, 1, 1, 1, 1], size, 100, 3), [[1, 1, 1], [1, 1, 1], [1]])
  assert.deepEqual(splitRequests([4, 4, 4, 4], size, 10, 64), [[4, 4], [4, 4]])
  // exactly maxBytes fits
  assert.deepEqual(splitRequests([5, 5, 5], size, 10, 64), [[5, 5], [5]])
  // a chunk larger than maxBytes goes alone, and closes the request before it
  assert.deepEqual(splitRequests([2, 30, 2, 2], size, 10, 64), [[2], [30], [2, 2]])
  assert.deepEqual(splitRequests([30], size, 10, 64), [[30]])
})

test('splitRequests: a chunk the holder is still fetching goes in a request of its own', () => {
  const size = (n: number): number => n % 100
  const fetching = (n: number): boolean => n >= 100
  // 101 and 102 are the holder's PENDING chunks: each alone, the present ones around them batched
  assert.deepEqual(splitRequests([1, 101, 2, 3, 102, 4], size, 100, 64, fetching), [[1], [101], [2, 3], [102], [4]])
  assert.deepEqual(splitRequests([101, 102], size, 100, 64, fetching), [[101], [102]])
  assert.deepEqual(splitRequests([1, 2, 3], size, 100, 64, fetching), [[1, 2, 3]])
  // limits still hold for the present ones
  assert.deepEqual(splitRequests([1, 1, 1, 101, 1], size, 100, 2, fetching), [[1, 1], [1], [101], [1]])
})

test('splitRequests: greedy — every request full up to the next chunk', () => {
  fc.assert(fc.property(fc.array(fc.integer({ min: 1, max: 50 }), { maxLength: 40 }), fc.integer({ min: 1, max: 100 }),
    fc.integer({ min: 1, max: 6 }), (wants, maxBytes, maxChunks) => {
      const parts = splitRequests(wants, n => n, maxBytes, maxChunks)
      assert.deepEqual(parts.flat(), wants)
      const sum = (p: number[]): number => p.reduce((a, b) => a + b, 0)
      parts.forEach((p, i) => {
        assert.ok(p.length >= 1 && p.length <= maxChunks)
        assert.ok(p.length === 1 || sum(p) <= maxBytes)
        const next = parts[i + 1]?.[0]
        if (next !== undefined) assert.ok(p.length === maxChunks || sum(p) + next > maxBytes)
      })
    }))
})

test('HaveOutbox: each chunk\'s latest news wins', () => {
  const out = new HaveOutbox()
  assert.ok(out.empty)
  out.onPending(1)
  out.onPending(2)
  out.onDropped(2)
  out.onHave(1)
  out.onDropped(3)
  out.onPending(3)
  out.onHave(4)
  out.onDropped(4)
  out.onDropped(5)
  out.onHave(5)
  assert.deepEqual([...out.have], [1, 5])
  assert.deepEqual([...out.pending], [3])
  assert.deepEqual([...out.dropped], [2, 4])
  assert.ok(!out.empty)
})

test('HaveOutbox: PENDING after HAVE keeps both, and HAVE goes last', () => {
  const out = new HaveOutbox()
  out.onHave(7)
  out.onPending(7)
  out.onDropped(8)
  const blob = Buffer.from(hex, 'hex')
  assert.deepEqual(out.drain(blob), [
    { type: 'dropped', blob, indexes: [8] },
    { type: 'pending', blob, indexes: [7] },
    { type: 'have', blob, indexes: [7] }
  ])
})

test('HaveOutbox: drain cuts the sets into messages of MAX_INDEXES_PER_MESSAGE and empties the outbox', () => {
  const out = new HaveOutbox()
  const n = MAX_INDEXES_PER_MESSAGE * 2 + 3
  for (let ci = 0; ci < n; ci++) out.onHave(ci)
  out.onPending(n)
  const blob = Buffer.alloc(32, 9)
  const msgs = out.drain(blob)
  assert.deepEqual(msgs.map(m => m.type), ['pending', 'have', 'have', 'have'])
  assert.deepEqual(msgs.map(m => 'indexes' in m ? m.indexes.length : -1), [1, MAX_INDEXES_PER_MESSAGE, MAX_INDEXES_PER_MESSAGE, 3])
  assert.ok(out.empty)
  assert.deepEqual(out.drain(blob), [])
})

test('HaveOutbox: clear forgets everything', () => {
  const out = new HaveOutbox()
  out.onHave(1)
  out.onPending(2)
  out.onDropped(3)
  out.clear()
  assert.ok(out.empty)
  assert.deepEqual(out.drain(Buffer.alloc(32)), [])
})

test('prefetchPick: the registry chunks first (bounded by count and bytes), then what neighbours have, rarest first', () => {
  // chunk i: 'S' this node fetches it from the registry, a digit: that many neighbours have it, 'w' it waits
  const kinds = ['S', '3', 'w', '1', 'S', '2', 'S', '1', 'w', 'S']
  const classOf = (i: number): PrefetchClass => kinds[i] === 'S' ? { kind: 'source' } : kinds[i] === 'w' ? { kind: 'wait' } : { kind: 'have', holders: Number(kinds[i]) }
  const all = kinds.map((_k, i) => i)
  const size = (): number => 100
  const pick = (max: number, maxSource: number, maxSourceBytes = 1e9): PrefetchPicked<number> => prefetchPick(all, classOf, size, { max, maxSource, maxSourceBytes })
  assert.deepEqual(pick(10, 10), { chunks: [0, 4, 6, 9, 3, 7, 5, 1], source: 4 }, 'sources in order, then holders 1, 1, 2, 3; waits left out')
  assert.deepEqual(pick(10, 2), { chunks: [0, 4, 3, 7, 5, 1], source: 2 })
  assert.deepEqual(pick(10, 0), { chunks: [3, 7, 5, 1], source: 0 }, 'a registry slice in flight: only what neighbours have')
  assert.deepEqual(pick(3, 10), { chunks: [0, 4, 6], source: 3 })
  assert.deepEqual(pick(10, 10, 250), { chunks: [0, 4, 3, 7, 5, 1], source: 2 }, 'two chunks of 100 bytes fit 250')
  assert.deepEqual(pick(10, 10, 50), { chunks: [0, 3, 7, 5, 1], source: 1 }, 'one registry chunk even past the bytes')
  assert.deepEqual(prefetchPick([2, 8], classOf, size, { max: 64, maxSource: 64, maxSourceBytes: 1e9 }), { chunks: [], source: 0 }, 'everything waits')
})

test('prefetchClass: neighbours have it (how many), another fetches it (wait), else the registry for its assignee only', () => {
  const blobHex = 'ab'.repeat(32)
  const group = ['peerA', 'peerB', 'peerC']
  const base = { group, stable: true, blobHex, graceMs: 150 }
  for (let ci = 0; ci < 40; ci++) {
    const assignee = backToSourceAssignee(group, blobHex, ci)
    for (const self of group) {
      assert.deepEqual(prefetchClass({ ...base, self, ci, have: 2, othersFetching: true }), { kind: 'have', holders: 2 })
      assert.deepEqual(prefetchClass({ ...base, self, ci, have: 0, othersFetching: true }), { kind: 'wait' })
      assert.deepEqual(prefetchClass({ ...base, self, ci, have: 0, othersFetching: false }), { kind: self === assignee ? 'source' : 'wait' }, `chunk ${ci} for ${self}`)
    }
  }
})

test('a swarm prefetch\'s limits and pauses: one registry slice at a time; a quiet swarm waits out the patience, then goes on', () => {
  assert.deepEqual(swarmPickLimits(0), { max: PREFETCH_SLICE_CHUNKS, maxSource: PREFETCH_SLICE_CHUNKS, maxSourceBytes: SWARM_SOURCE_SLICE_BYTES })
  assert.equal(swarmPickLimits(1).maxSource, 0)
  assert.deepEqual(swarmPrefetchWait(0), { force: false, waitMs: SWARM_PREFETCH_RECHECK_MS })
  assert.deepEqual(swarmPrefetchWait(SWARM_PREFETCH_PATIENCE_MS - 100), { force: false, waitMs: 100 })
  assert.deepEqual(swarmPrefetchWait(SWARM_PREFETCH_PATIENCE_MS), { force: true })
  assert.deepEqual(swarmPrefetchWait(50, 40), { force: true }, 'a patience of its own')
  assert.equal(groupFilling(2, 4, GROUP_FILL_MS - 1), true)
  assert.equal(groupFilling(2, 4, GROUP_FILL_MS), false, 'filled for long enough')
  assert.equal(groupFilling(4, 4, 0), false, 'full')
})

test('a quiet swarm\'s take: the next chunks in order, one registry slice of stored bytes at most, at least one', () => {
  const MiB = 1 << 20
  const sizes = [300 << 10, 300 << 10, 300 << 10, 300 << 10, 300 << 10]
  const idx = sizes.map((_, i) => i)
  assert.deepEqual(swarmQuietTake(idx, i => sizes[i]!), [0, 1, 2], 'three fit the slice, the fourth would not')
  assert.deepEqual(swarmQuietTake([7, 8], () => 3 * MiB), [7], 'one chunk past the slice alone goes all the same')
  assert.deepEqual(swarmQuietTake([], () => 1), [])
  // small chunks: no more than a prefetch slice's count either
  assert.equal(swarmQuietTake(Array.from({ length: 500 }, (_, i) => i), () => 1).length, PREFETCH_SLICE_CHUNKS)
  fc.assert(fc.property(fc.array(fc.integer({ min: 1, max: 4 * MiB }), { maxLength: 80 }), xs => {
    const taken = swarmQuietTake(xs.map((_, i) => i), i => xs[i]!)
    assert.deepEqual(taken, taken.map((_, i) => i), 'a prefix, in order')
    if (xs.length > 0) assert.ok(taken.length >= 1)
    const bytes = taken.reduce((a, i) => a + xs[i]!, 0)
    assert.ok(taken.length <= 1 || bytes <= SWARM_SOURCE_SLICE_BYTES)
  }))
})

test('joinsQueued: a REDIRECT\'s chunks join a queued REDIRECT, a holder\'s present chunks a queued request of them, within bounds', () => {
  const q = (chunks: number, bytes: number, redirected: boolean, alone = false): { chunks: number, bytes: number, redirected: boolean, alone: boolean } => ({ chunks, bytes, redirected, alone })
  assert.equal(joinsQueued(q(3, 300, true), q(1, 100, true), 1000, 64), true)
  // chunks the peer named is receiving join whether or not it said PENDING for them
  assert.equal(joinsQueued(q(3, 300, true, true), q(1, 100, true, true), 1000, 64), true)
  assert.equal(joinsQueued(q(3, 300, false), q(2, 100, false), 1000, 64), true)
  // never across kinds, never with a chunk the holder is still fetching
  assert.equal(joinsQueued(q(3, 300, true), q(1, 100, false), 1000, 64), false)
  assert.equal(joinsQueued(q(3, 300, false), q(1, 100, true), 1000, 64), false)
  assert.equal(joinsQueued(q(1, 100, false, true), q(1, 100, false), 1000, 64), false)
  assert.equal(joinsQueued(q(3, 300, false), q(1, 100, false, true), 1000, 64), false)
  // bounds: chunks and bytes
  assert.equal(joinsQueued(q(63, 300, true), q(1, 100, true), 1000, 64), true)
  assert.equal(joinsQueued(q(64, 300, true), q(1, 100, true), 1000, 64), false)
  assert.equal(joinsQueued(q(3, 900, false), q(1, 100, false), 1000, 64), true)
  assert.equal(joinsQueued(q(3, 901, false), q(1, 100, false), 1000, 64), false)
})

test('nextQueued: a REDIRECT first, then a read\'s chunks, which may take the extra streams only beside a prefetch\'s requests', () => {
  const q = (...kinds: string[]): Array<{ redirected: boolean, urgent: boolean }> => kinds.map(k => ({ redirected: k === 'R', urgent: k === 'U' }))
  const next = (queued: ReturnType<typeof q>, running: number, runningUrgent: number): number =>
    nextQueued(queued, { running, runningUrgent }, 2, 2, i => queued[i]!.urgent)
  assert.equal(next(q(), 0, 0), -1)
  // plain requests in order, two at a time
  assert.equal(next(q('P', 'P'), 0, 0), 0)
  assert.equal(next(q('P', 'P'), 2, 0), -1)
  // a REDIRECT's request is queued first and has the extra streams
  assert.equal(next(q('R', 'U'), 3, 3), 0)
  assert.equal(next(q('R', 'U'), 4, 0), -1)
  // a read's chunk goes ahead of the prefetch's requests queued before it
  assert.equal(next(q('P', 'P', 'U'), 0, 0), 2)
  assert.equal(next(q('P', 'P', 'U'), 1, 0), 2)
  // ...on an extra stream while the two running are a prefetch's, not beside two of its own
  assert.equal(next(q('P', 'U'), 2, 0), 1)
  assert.equal(next(q('P', 'U'), 3, 1), 1)
  assert.equal(next(q('P', 'U'), 4, 1), -1)
  assert.equal(next(q('U', 'U'), 2, 2), -1)
  assert.equal(next(q('P', 'P'), 3, 1), -1, 'no prefetch request on an extra stream')
  // a lane of reads alone runs as without urgency: in order, `streams` at a time
  fc.assert(fc.property(fc.integer({ min: 1, max: 6 }), fc.integer({ min: 0, max: 4 }), (n, running) => {
    const all = q(...Array.from({ length: n }, () => 'U'))
    assert.equal(next(all, running, running), running < 2 ? 0 : -1)
  }))
})

test('spreading: a chunk with more holders than at the last look; the look remembered; nobody holding is no news', () => {
  const holders = new Map<number, number>([[1, 0], [2, 3]])
  const seen = new Map<number, number>()
  assert.equal(spreading([1], ci => holders.get(ci) ?? 0, seen), false, 'nobody has it (a PENDING cycle): not spreading')
  assert.equal(spreading([1, 2], ci => holders.get(ci) ?? 0, seen), true, 'first look: some neighbours have it')
  assert.equal(spreading([1, 2], ci => holders.get(ci) ?? 0, seen), false, 'no change since')
  holders.set(2, 2)
  assert.equal(spreading([1, 2], ci => holders.get(ci) ?? 0, seen), false, 'fewer (a holder left)')
  holders.set(1, 1)
  assert.equal(spreading([1, 2], ci => holders.get(ci) ?? 0, seen), true)
  assert.deepEqual([...seen], [[1, 1], [2, 2]])
})
