/**
 * `BlobLocator` against a scheduler and a have service in memory: a chunk for the registry has its PENDING sent at
 * once (`flushBlob`), a member of the blob's group does not wait for an assignee it knows reads behind the chunk, and
 * a holder that only fetches a chunk is marked so (its requests carry that chunk alone).
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { getEventListeners } from 'node:events'
import type { ChunkHolder, HolderResolver } from '../../p2p/index.js'
import type { ChunkInfo, RafsBlobInfo } from '../../rafs/index.js'
import { backToSourceAssignee, BEHIND_MARGIN } from './back-to-source.js'
import { BlobLocator } from './blob-locator.js'
import { newBits, setBit } from './have-protocol.js'
import { HaveTable } from './have-table.js'

const CHUNKS = 64
const group = ['a', 'b', 'c', 'd']
/** a chunk of blob `hex` whose assignee is b, and a the first of the others, within the blob (or -1) */
function chunkFor (hex: string): number {
  for (let i = BEHIND_MARGIN + 8; i < CHUNKS - 1; i++) {
    if (backToSourceAssignee(group, hex, i) === 'b' && backToSourceAssignee(['a', 'c', 'd'], hex, i) === 'a') return i
  }
  return -1
}
// a random blob with such a chunk (about one blob in 80 has none among its 64 chunks: drawn again)
let blob = randomBytes(32)
while (chunkFor(blob.toString('hex')) < 0) blob = randomBytes(32)
const hex = blob.toString('hex')
const ci = chunkFor(hex)
const chunk = { index: ci, digest: randomBytes(32) } as unknown as ChunkInfo
const info = { blobId: hex, chunkCount: CHUNKS } as unknown as RafsBlobInfo

/** a as one of the scheduler's group of four; `state` gives each other member's present chunks (and those it fetches) */
function locator (state: Record<string, number[]>, fetching: Record<string, number[]> = {}): { loc: BlobLocator, flushed: string[], planned: number[][] } {
  const table = new HaveTable()
  for (const [peer, have] of Object.entries(state)) {
    const bits = newBits(CHUNKS)
    for (const i of have) setBit(bits, i)
    table.apply(peer, { type: 'bitfield', blob, chunks: CHUNKS, bits, pending: fetching[peer] ?? [] })
  }
  const directory: HolderResolver = {
    resolve: async () => new Map([[hex, group.map((peerId): ChunkHolder => ({ peerId, addrs: [], group: true }))]]),
    report: () => {}
  }
  const flushed: string[] = []
  const planned: number[][] = []
  const have = {
    table,
    interest: async () => {},
    onUpdate: () => () => {},
    followers: () => [],
    flushBlob: (h: string) => { flushed.push(h) }
  }
  const loc = new BlobLocator({ directory, have, self: 'a', planned: (_h, cis) => { planned.push(cis) } }, { graceMs: 10_000 })
  return { loc, flushed, planned }
}

test('a member ahead of an assignee that reads behind the chunk fetches it at once and says so at once', async () => {
  // b has the chunks a few before ci and none from ci - BEHIND_MARGIN on; c and d are level with a
  const { loc, flushed, planned } = locator({ b: [ci - BEHIND_MARGIN - 3, ci - BEHIND_MARGIN - 1], c: [ci - 1], d: [ci - 1] })
  const out = await loc.locate(info, [chunk], { signal: AbortSignal.timeout(5_000) })
  assert.equal(out.size, 0, 'left to the next source: the registry')
  assert.deepEqual(planned, [[ci]])
  assert.deepEqual(flushed, [hex])
  assert.deepEqual(loc.sourced, { assignee: 0, noGroup: 0, ahead: 1, grace: 0 }, 'counted as ahead of the assignee')
})

test('an assignee level with the member is waited for (the grace)', async () => {
  const { loc, flushed } = locator({ b: [ci - 1], c: [ci - 1], d: [ci - 1] })
  await assert.rejects(loc.locate(info, [chunk], { signal: AbortSignal.timeout(300) }))
  assert.deepEqual(flushed, [])
  assert.deepEqual(loc.sourced, { assignee: 0, noGroup: 0, ahead: 0, grace: 0 })
})

test('outside the group, a chunk nobody it follows has: its assignee asked once (as fetching it, at the address the scheduler gave), then the registry', async () => {
  const directory: HolderResolver = {
    resolve: async () => new Map([[hex, group.map((peerId): ChunkHolder => ({ peerId, addrs: [`/ip4/127.0.0.1/tcp/${peerId.charCodeAt(0)}`], group: true }))]]),
    report: () => {}
  }
  const have = { table: new HaveTable(), interest: async () => {}, onUpdate: () => () => {}, followers: () => [], flushBlob: () => {} }
  const loc = new BlobLocator({ directory, have, self: 'z' }, { graceMs: 20 })
  const signal = AbortSignal.timeout(5_000)
  const out = await loc.locate(info, [chunk], { signal })
  assert.deepEqual(out.get(chunk.digest.toString('hex')), [{ peerId: 'b', addrs: ['/ip4/127.0.0.1/tcp/98'], fetching: true }])
  assert.equal(loc.assigneeAsks, 1)
  // its fetch came back without it (NOT_FOUND, BUSY): the chunk planned again goes to the registry, not to b again
  assert.equal((await loc.locate(info, [chunk], { signal })).size, 0)
  assert.equal(loc.assigneeAsks, 1)
  assert.deepEqual(loc.sourced, { assignee: 0, noGroup: 0, ahead: 0, grace: 1 })
})

test('holders of a chunk: those that have it as they are, those only fetching it marked `fetching`', async () => {
  const { loc } = locator({ b: [ci], c: [], d: [ci] }, { c: [ci], d: [ci] })
  const out = await loc.locate(info, [chunk], { signal: AbortSignal.timeout(5_000) })
  const holders = out.get(chunk.digest.toString('hex')) ?? []
  assert.deepEqual(holders.map(h => h.peerId).sort(), ['b', 'c', 'd'])
  for (const h of holders) assert.equal(h.fetching === true, h.peerId === 'c', `${h.peerId}: fetching ${String(h.fetching)}`)
})

test('a prefetch picks the chunks it is the one to fetch from the registry, then those neighbours have, rarest first; the rest wait', async () => {
  const all = Array.from({ length: CHUNKS }, (_v, i) => ({ index: i, digest: randomBytes(32), compressedSize: 1000 }) as unknown as ChunkInfo)
  const mine = all.filter(c => backToSourceAssignee(group, hex, c.index) === 'a').map(c => c.index)
  const others = all.filter(c => backToSourceAssignee(group, hex, c.index) !== 'a').map(c => c.index)
  assert.ok(mine.length >= 4 && others.length >= 8)
  // b has two of the others' chunks, c one of them too (the rarer first: held once); d fetches one of a's own
  const [o1, o2, o3] = others
  const fetchedByD = mine[0]!
  const { loc, planned } = locator({ b: [o1!, o2!], c: [o2!], d: [] }, { d: [fetchedByD] })
  const signal = AbortSignal.timeout(5_000)
  const picked = await loc.pick(info, all, { max: CHUNKS, maxSource: CHUNKS, maxSourceBytes: 1e9, signal })
  assert.deepEqual(picked.chunks.map(c => c.index), [...mine.filter(i => i !== fetchedByD), o1, o2])
  assert.equal(picked.source, mine.length - 1)
  assert.ok(!picked.chunks.some(c => c.index === o3), 'another member\'s chunk nobody has yet waits for it')
  assert.deepEqual(planned, [], 'picking announces nothing: the fetch does, when it gets to the chunks')
  const few = await loc.pick(info, all, { max: 3, maxSource: 0, maxSourceBytes: 1e9, signal })
  assert.deepEqual(few, { chunks: [all[o1!], all[o2!]], source: 0 }, 'with a registry slice in flight, only what neighbours have')
})

test('waiting for news of a blob leaves no timer or listener behind when the news comes first', async () => {
  const listeners = new Set<(hex: string, peer: string) => void>()
  const have = {
    table: new HaveTable(),
    interest: async () => {},
    onUpdate: (fn: (hex: string, peer: string) => void) => { listeners.add(fn); return () => { listeners.delete(fn) } },
    followers: () => [],
    flushBlob: () => {}
  }
  const directory: HolderResolver = { resolve: async () => new Map(), report: () => {} }
  const loc = new BlobLocator({ directory, have, self: 'a' })
  const ac = new AbortController()
  for (let i = 0; i < 20; i++) {
    const waiting = loc.changed(info, 60_000, ac.signal)
    for (const fn of [...listeners]) fn(hex, 'b')
    assert.equal(await waiting, true)
  }
  assert.equal(getEventListeners(ac.signal, 'abort').length, 0, 'no abort listener left on the caller\'s signal')
  assert.equal(listeners.size, 0)
  assert.equal(await loc.changed(info, 5, ac.signal), false, 'no news: false after the wait')
  const aborted = loc.changed(info, 60_000, ac.signal)
  ac.abort(new Error('stop'))
  await assert.rejects(aborted, /stop/)
  assert.equal(getEventListeners(ac.signal, 'abort').length, 0)
})

test('a look-up the scheduler left unanswered: made again within 250 ms when the node knows no group (waiting longer), never erasing a group it knew', async () => {
  let now = 0
  const asked: Array<number | undefined> = []
  const directory: HolderResolver = {
    // the first and the third answers come too late (the resolver's timeout: an empty map), the others name the group
    resolve: async (_d, opts) => {
      asked.push(opts?.timeoutMs)
      return asked.length === 1 || asked.length === 3 ? new Map() : new Map([[hex, group.map((peerId): ChunkHolder => ({ peerId, addrs: [], group: true }))]])
    },
    report: () => {}
  }
  const have = { table: new HaveTable(), interest: async () => {}, onUpdate: () => () => {}, followers: () => [], flushBlob: () => {} }
  const loc = new BlobLocator({ directory, have, self: 'a' }, { graceMs: 10_000, bitfieldWaitMs: 0, now: () => now })
  const signal = AbortSignal.timeout(5_000)
  // alone for now: a's own group of one makes it the assignee of every chunk
  assert.equal((await loc.locate(info, [chunk], { signal })).size, 0)
  assert.equal(asked.length, 1)
  assert.ok((asked[0] ?? 0) >= 1000, `the look-up waits ${String(asked[0])} ms for the scheduler`)
  now += 100
  await loc.locate(info, [chunk], { signal })
  assert.equal(asked.length, 1, 'not again at once')
  now += 200
  // b is the chunk's assignee in the group the scheduler names now: a waits for it (the grace), not the registry
  await assert.rejects(loc.locate(info, [chunk], { signal: AbortSignal.timeout(200) }))
  assert.equal(asked.length, 2, 'asked again 300 ms later, not after the full refresh (5 s)')
  assert.ok((asked[1] ?? 0) >= 1000, 'still blind: the long wait again')
  now += 300
  await assert.rejects(loc.locate(info, [chunk], { signal: AbortSignal.timeout(200) }))
  assert.equal(asked.length, 2, 'the group of four is full: kept')
  now += 5_000
  await assert.rejects(loc.locate(info, [chunk], { signal: AbortSignal.timeout(200) }))
  assert.equal(asked.length, 3)
  assert.equal(asked[2], undefined, 'a refresh of a known group waits the resolver\'s own short time (it holds the reads of the blob)')
  // that refresh came back empty: the group is kept (a still waits for b above, not the registry), and asked again soon
  now += 300
  await assert.rejects(loc.locate(info, [chunk], { signal: AbortSignal.timeout(200) }))
  assert.equal(asked.length, 3, 'kept as it was: full, so not asked again before the full refresh')
})

test('a first look-up waits for the bitfields of the holders it follows, not for any neighbour\'s', async () => {
  // a joins b's group; b fetches everything already, and its bitfield is slow to come; c (which follows a) is quick
  const pair = ['b', 'a']
  const mine = Array.from({ length: CHUNKS }, (_v, i) => i).find(i => backToSourceAssignee(pair, hex, i) === 'a')!
  const c = { index: mine, digest: randomBytes(32) } as unknown as ChunkInfo
  const table = new HaveTable()
  const listeners = new Set<(hex: string, peer: string) => void>()
  const bitfield = (peer: string, pending: number[]): void => {
    table.apply(peer, { type: 'bitfield', blob, chunks: CHUNKS, bits: newBits(CHUNKS), pending })
    for (const fn of [...listeners]) fn(hex, peer)
  }
  const have = {
    table,
    interest: async () => { bitfield('c', []) },
    onUpdate: (fn: (hex: string, peer: string) => void) => { listeners.add(fn); return () => { listeners.delete(fn) } },
    followers: () => [],
    flushBlob: () => {}
  }
  const directory: HolderResolver = {
    resolve: async () => new Map([[hex, pair.map((peerId): ChunkHolder => ({ peerId, addrs: [], group: true }))]]),
    report: () => {}
  }
  const loc = new BlobLocator({ directory, have, self: 'a' }, { graceMs: 10_000, bitfieldWaitMs: 2_000 })
  setTimeout(() => { bitfield('b', Array.from({ length: CHUNKS }, (_v, i) => i)) }, 50)
  const out = await loc.locate(info, [c], { signal: AbortSignal.timeout(5_000) })
  const holders = out.get(c.digest.toString('hex')) ?? []
  assert.deepEqual(holders.map(h => [h.peerId, h.fetching]), [['b', true]], 'b is fetching it: waited for, not fetched from the registry too')
})

test('a refresh of the group waits for a new holder\'s session only the bitfield wait: the dial goes on behind the reads', { timeout: 10_000 }, async () => {
  let clock = 0
  let members = ['a', 'b']
  const directory: HolderResolver = {
    resolve: async () => new Map([[hex, members.map((peerId): ChunkHolder => ({ peerId, addrs: [], group: true }))]]),
    report: () => {}
  }
  const table = new HaveTable()
  const bits = newBits(CHUNKS)
  setBit(bits, ci)
  table.apply('b', { type: 'bitfield', blob, chunks: CHUNKS, bits, pending: [] })
  const told: string[][] = []
  let dialed!: () => void
  const dial = new Promise<void>(resolve => { dialed = resolve })
  const have = {
    table,
    // the first holder answers at once; a new one is dialed for as long as the test wants
    interest: async (_h: string, peers: ChunkHolder[]) => {
      told.push(peers.map(p => p.peerId))
      if (peers.some(p => p.peerId === 'c')) await dial
    },
    onUpdate: () => () => {},
    followers: () => [],
    flushBlob: () => {}
  }
  const loc = new BlobLocator({ directory, have, self: 'a' }, { graceMs: 10_000, bitfieldWaitMs: 100, now: () => clock })
  const first = await loc.locate(info, [chunk], { signal: AbortSignal.timeout(5_000) })
  assert.deepEqual(first.get(chunk.digest.toString('hex'))?.map(h => h.peerId), ['b'])
  // the group is filling: the next look-up refreshes it, and the scheduler names c too
  clock += 1_000
  members = ['a', 'b', 'c']
  const t0 = performance.now()
  const again = await loc.locate(info, [chunk], { signal: AbortSignal.timeout(5_000) })
  const waited = performance.now() - t0
  assert.deepEqual(again.get(chunk.digest.toString('hex'))?.map(h => h.peerId), ['b'])
  assert.deepEqual(told.at(-1), ['b', 'c'])
  assert.ok(waited >= 90 && waited < 1_000, `the refresh waited ${waited} ms for a dial that had not ended`)
  dialed()
})

test('the swarm\'s size as the scheduler last told it, per blob; a scheduler that tells none leaves it unknown', async () => {
  const table = new HaveTable()
  const bits = newBits(CHUNKS)
  setBit(bits, 0)
  table.apply('b', { type: 'bitfield', blob, chunks: CHUNKS, bits, pending: [] })
  let swarms: Map<string, number> | undefined = new Map([[hex, 5_000]])
  const directory: HolderResolver = {
    resolve: async () => Object.assign(new Map([[hex, group.map((peerId): ChunkHolder => ({ peerId, addrs: [], group: true }))]]), swarms === undefined ? {} : { swarms }),
    report: () => {}
  }
  const have = { table, interest: async () => {}, onUpdate: () => () => {}, followers: () => [], flushBlob: () => {} }
  let now = 0
  const loc = new BlobLocator({ directory, have, self: 'a' }, { graceMs: 10_000, bitfieldWaitMs: 0, refreshMs: 1_000, now: () => now })
  assert.equal(loc.swarmSize(hex), 0, 'not told yet')
  assert.equal(loc.largestSwarm, 0)
  // a chunk b has: located at once, the blob looked up on the way
  const c0 = { index: 0, digest: randomBytes(32) } as unknown as ChunkInfo
  await loc.locate(info, [c0], { signal: AbortSignal.timeout(5_000) })
  assert.equal(loc.swarmSize(hex), 5_000)
  assert.equal(loc.swarmSize('ff'.repeat(32)), 0, 'another blob')
  assert.equal(loc.largestSwarm, 5_000)
  // the next look-up's count replaces it; one without a count (a 1.0 scheduler) keeps the last known
  swarms = new Map([[hex, 4_200]])
  now += 2_000
  await loc.locate(info, [c0], { signal: AbortSignal.timeout(5_000) })
  assert.equal(loc.swarmSize(hex), 4_200)
  swarms = undefined
  now += 2_000
  await loc.locate(info, [c0], { signal: AbortSignal.timeout(5_000) })
  assert.equal(loc.swarmSize(hex), 4_200)
})
