import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import fc from 'fast-check'
import { decodeHave, encodeHave, getBit, HaveProtocolError, MAX_INDEXES_PER_MESSAGE, newBits, setBit, type HaveMessage } from './have-protocol.js'
import { HaveTable } from './have-table.js'
import { BEHIND_MARGIN, backToSourceAssignee, planChunk, rendezvousScore, runStarts } from './back-to-source.js'

const blob = randomBytes(32)
const hex = blob.toString('hex')

test('have messages survive encode → decode', () => {
  const bits = newBits(13)
  for (const i of [0, 3, 12]) setBit(bits, i)
  const msgs: HaveMessage[] = [
    { type: 'interest', blobs: [blob, randomBytes(32)] },
    { type: 'uninterest', blobs: [] },
    { type: 'bitfield', blob, chunks: 13, bits, pending: [1, 5] },
    { type: 'bitfield', blob, chunks: 0, bits: new Uint8Array(0), pending: [] },
    { type: 'have', blob, indexes: [0, 7, 1 << 20] },
    { type: 'pending', blob, indexes: [2] },
    { type: 'dropped', blob, indexes: [] },
    { type: 'want-have', id: 7, digests: [randomBytes(32)] },
    { type: 'have-digests', id: 7, count: 9, bits: Uint8Array.of(0b101, 0x80) }
  ]
  for (const m of msgs) assert.deepEqual(decodeHave(encodeHave(m)), m)
  // bits past the last chunk are cleared on the way out
  const dirty = Uint8Array.of(0xff, 0xff)
  const back = decodeHave(encodeHave({ type: 'bitfield', blob, chunks: 10, bits: dirty, pending: [] }))
  assert.equal(back.type === 'bitfield' && back.bits[1], 0b1100_0000)
})

test('malformed have frames are refused with RAFSPEER_ERR_HAVE_PROTOCOL, never a crash', () => {
  const bad = [
    Buffer.alloc(0),
    Buffer.of(99),
    Buffer.of(1, 0, 2, ...randomBytes(32)), // two blobs announced, one sent
    Buffer.concat([Buffer.of(3), blob, Buffer.from([0xff, 0xff, 0xff, 0xff])]), // 4G chunks
    Buffer.concat([Buffer.of(3), blob, Buffer.from([0, 0, 0, 4]), Buffer.of(0x0f), Buffer.from([0, 0])]), // bits past the end
    Buffer.concat([Buffer.of(3), blob, Buffer.from([0, 0, 0, 4]), Buffer.of(1), Buffer.from([0, 1, 0, 0, 0, 9])]), // pending ci 9 of 4
    Buffer.concat([Buffer.of(4), blob, Buffer.from([0xff, 0xff])]), // 65535 indexes announced, none sent
    Buffer.concat([Buffer.of(4), blob, Buffer.from([0, 1, 0xff, 0xff, 0xff, 0xff])]) // ci past any blob
  ]
  for (const b of bad) assert.throws(() => decodeHave(b), HaveProtocolError, b.toString('hex').slice(0, 40))
  fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), (b) => {
    try { decodeHave(b) } catch (err) { assert.ok(err instanceof HaveProtocolError, String(err)) }
  }), { numRuns: 2000 })
  assert.throws(() => encodeHave({ type: 'have', blob, indexes: new Array(MAX_INDEXES_PER_MESSAGE + 1).fill(0) }), RangeError)
})

test('the have table: bitfield, updates, pending promises that expire, rarest first, forgetting', () => {
  let t = 0
  const table = new HaveTable({ now: () => t, pendingTtlMs: 1000 })
  const bits = newBits(8)
  setBit(bits, 0)
  table.apply('A', { type: 'bitfield', blob, chunks: 8, bits, pending: [1] })
  table.apply('B', { type: 'bitfield', blob, chunks: 8, bits: newBits(8), pending: [] })
  // an update before a bitfield is dropped
  table.apply('C', { type: 'have', blob, indexes: [5] })
  assert.deepEqual(table.sources(hex, 0), { have: ['A'], pending: [] })
  assert.deepEqual(table.sources(hex, 1), { have: [], pending: [{ peerId: 'A', since: 0 }] })
  assert.deepEqual(table.sources(hex, 5), { have: [], pending: [] })
  table.apply('B', { type: 'pending', blob, indexes: [2] })
  table.apply('B', { type: 'have', blob, indexes: [0, 3] })
  assert.deepEqual(table.sources(hex, 0).have.sort(), ['A', 'B'])
  assert.deepEqual(table.rarestFirst(hex, [0, 1, 2, 3]), [1, 2, 3, 0])
  // A's promise for chunk 1 is too old: not trusted any more
  t = 1500
  assert.deepEqual(table.sources(hex, 1), { have: [], pending: [] })
  table.apply('B', { type: 'dropped', blob, indexes: [0, 2] })
  assert.deepEqual(table.sources(hex, 0).have, ['A'])
  assert.deepEqual(table.neighbours(hex).find(n => n.peerId === 'B'), { peerId: 'B', have: 1, chunks: 8 })
  table.forgetPeer('A')
  assert.deepEqual(table.sources(hex, 0).have, [])
  table.forgetBlob('B', hex)
  assert.deepEqual(table.neighbours(hex), [])
})

test('the have table lists neighbours in the order their first bitfield came, a new bitfield keeping the place', () => {
  const table = new HaveTable({ now: () => 0 })
  const all = newBits(4)
  for (let i = 0; i < 4; i++) setBit(all, i)
  for (const p of ['C', 'A', 'B']) table.apply(p, { type: 'bitfield', blob, chunks: 4, bits: all, pending: [] }, hex)
  assert.deepEqual(table.sources(hex, 1).have, ['C', 'A', 'B'])
  // A again, with nothing: still second in line for what it has after updates
  table.apply('A', { type: 'bitfield', blob, chunks: 4, bits: newBits(4), pending: [2] })
  assert.deepEqual(table.sources(hex, 1).have, ['C', 'B'])
  table.apply('A', { type: 'have', blob, indexes: [1] }, hex)
  assert.deepEqual(table.sources(hex, 1).have, ['C', 'A', 'B'])
  assert.deepEqual(table.sources(hex, 2), { have: ['C', 'B'], pending: [{ peerId: 'A', since: 0 }] })
  // forgotten and back: last
  table.forgetPeer('C')
  table.apply('C', { type: 'bitfield', blob, chunks: 4, bits: all, pending: [] }, hex)
  assert.deepEqual(table.sources(hex, 1).have, ['A', 'B', 'C'])
  assert.deepEqual(table.neighbours(hex).map(n => n.peerId), ['A', 'B', 'C'])
  // the hex a caller passes names the blob (the message's own blob is not decoded again)
  table.apply('B', { type: 'dropped', blob: randomBytes(32), indexes: [1] }, hex)
  assert.deepEqual(table.sources(hex, 1).have, ['A', 'C'])
})

test('back to source: every peer computes the same assignee; chunks spread evenly over the group', () => {
  const group = ['p1', 'p2', 'p3', 'p4']
  const counts = new Map<string, number>()
  for (let ci = 0; ci < 4000; ci++) {
    const a = backToSourceAssignee(group, hex, ci)!
    assert.equal(backToSourceAssignee([...group].reverse(), hex, ci), a)
    counts.set(a, (counts.get(a) ?? 0) + 1)
  }
  for (const p of group) assert.ok(Math.abs(counts.get(p)! - 1000) < 150, `${p}: ${counts.get(p)}`)
  // a peer leaving the group moves only its own chunks
  let moved = 0
  for (let ci = 0; ci < 4000; ci++) {
    const before = backToSourceAssignee(group, hex, ci)
    const after = backToSourceAssignee(group.slice(0, 3), hex, ci)
    if (before !== after) { moved++; assert.equal(before, 'p4') }
  }
  assert.equal(moved, counts.get('p4'))
  assert.notEqual(rendezvousScore('p1', hex, 1), rendezvousScore('p1', hex, 2))
  assert.equal(backToSourceAssignee([], hex, 0), undefined)
})

test('plan: holders, then peers fetching it, then the assignee fetches and the others wait a grace period', () => {
  const base = { group: ['a', 'b', 'c'], blobHex: hex, have: [], pending: [], wantedForMs: 0, graceMs: 200 }
  assert.deepEqual(planChunk({ ...base, self: 'a', ci: 1, have: ['x'] }), { action: 'peer', peers: ['x'] })
  assert.deepEqual(planChunk({ ...base, self: 'a', ci: 1, have: ['x'], pending: ['y'] }), { action: 'peer', peers: ['x', 'y'] })
  assert.deepEqual(planChunk({ ...base, self: 'a', ci: 1, pending: ['y'] }), { action: 'peer', peers: ['y'] })
  let ci = 0
  while (backToSourceAssignee(base.group, hex, ci) !== 'b') ci++
  assert.deepEqual(planChunk({ ...base, self: 'b', ci }), { action: 'source', reason: 'noGroup' })
  assert.deepEqual(planChunk({ ...base, self: 'a', ci, wantedForMs: 50 }), { action: 'wait', retryInMs: 150 })
  assert.deepEqual(planChunk({ ...base, self: 'a', ci, wantedForMs: 200 }), { action: 'source', reason: 'grace' })
  // a peer outside the group computes over the group plus itself
  const outsider = planChunk({ ...base, self: 'z', ci })
  assert.ok(outsider.action === 'wait' || outsider.action === 'source')
  assert.equal(getBit(Uint8Array.of(0x40), 1), true)
  // the scheduler's group: an outsider is never the assignee; past the grace it goes to the source, unless its
  // neighbours are busy near the chunk, then it waits up to four graces for the group's PENDING
  const stable = { ...base, self: 'z', ci, stable: true }
  assert.deepEqual(planChunk({ ...stable, wantedForMs: 0 }), { action: 'wait', retryInMs: 200 })
  assert.deepEqual(planChunk({ ...stable, wantedForMs: 200 }), { action: 'source', reason: 'grace' })
  assert.deepEqual(planChunk({ ...stable, wantedForMs: 200, activeNear: () => true }), { action: 'wait', retryInMs: 600 })
  assert.deepEqual(planChunk({ ...stable, wantedForMs: 800, activeNear: () => true }), { action: 'source', reason: 'grace' })
  // told to, past its grace it asks the chunk's assignee (b) instead; not before, nor in a group it made up itself
  assert.deepEqual(planChunk({ ...stable, wantedForMs: 200, askAssignee: true }), { action: 'peer', peers: ['b'], ask: true })
  assert.deepEqual(planChunk({ ...stable, wantedForMs: 0, askAssignee: true }), { action: 'wait', retryInMs: 200 })
  assert.equal(planChunk({ ...base, self: 'z', ci, wantedForMs: 10_000, askAssignee: true }).action, 'source')
  // a member never asks: it is one of those asked
  assert.deepEqual(planChunk({ ...base, self: 'a', ci, wantedForMs: 200, stable: true, askAssignee: true }), { action: 'source', reason: 'grace' })
  // a member of the group, assignee or not, keeps the short grace
  assert.deepEqual(planChunk({ ...base, self: 'a', ci, wantedForMs: 200, stable: true, activeNear: () => true }), { action: 'source', reason: 'grace' })
})

test('plan: a member passes over the members it knows read behind the chunk; the next by hash takes it at once', () => {
  const group = ['a', 'b', 'c', 'd']
  // a chunk whose assignee is b, and a the first of the others
  let ci = BEHIND_MARGIN + 1
  while (backToSourceAssignee(group, hex, ci) !== 'b' || backToSourceAssignee(['a', 'c', 'd'], hex, ci) !== 'a') ci++
  const asked: Array<[string, number]> = []
  const bBehind = (peer: string, at: number): boolean => { asked.push([peer, at]); return peer === 'b' }
  const base = { group, blobHex: hex, ci, have: [], pending: [], wantedForMs: 0, graceMs: 150, stable: true }
  assert.deepEqual(planChunk({ ...base, self: 'a', behind: bBehind }), { action: 'source', reason: 'ahead' })
  // asked of the others, BEHIND_MARGIN chunks back (a member level with us may look a chunk or two behind)
  assert.deepEqual(asked.map(([p]) => p).sort(), ['b', 'c', 'd'])
  assert.ok(asked.every(([, at]) => at === ci - BEHIND_MARGIN))
  // the others wait for a's PENDING, as for an assignee's
  assert.deepEqual(planChunk({ ...base, self: 'c', behind: bBehind }), { action: 'wait', retryInMs: 150 })
  // b itself does not wait: it is the assignee
  assert.deepEqual(planChunk({ ...base, self: 'b', behind: (p: string) => p !== 'b' }), { action: 'source', reason: 'assignee' })
  // nobody behind, or nothing known: a waits for b
  assert.deepEqual(planChunk({ ...base, self: 'a', behind: () => false }), { action: 'wait', retryInMs: 150 })
  assert.deepEqual(planChunk({ ...base, self: 'a' }), { action: 'wait', retryInMs: 150 })
  // a and b both behind as c sees them: c, d wait for the next, which is c or d
  const next = backToSourceAssignee(['c', 'd'], hex, ci)!
  const both = (p: string): boolean => p === 'a' || p === 'b'
  assert.deepEqual(planChunk({ ...base, self: next, behind: both }), { action: 'source', reason: 'ahead' })
  assert.equal(planChunk({ ...base, self: next === 'c' ? 'd' : 'c', behind: both }).action, 'wait')
  // only within the scheduler's group, and by its members
  assert.equal(planChunk({ ...base, self: 'a', behind: bBehind, stable: false }).action, 'wait')
  assert.equal(planChunk({ ...base, self: 'z', behind: bBehind }).action, 'wait')
})

test('plan: a member is judged behind the read, not behind each chunk of it (a batch that starts where the others are)', () => {
  const group = ['a', 'b', 'c', 'd']
  // the batch starts at `front`; a chunk of it well past where b's activity ends, assigned to b, then to a
  const front = 40
  let ci = front + 2 * BEHIND_MARGIN
  while (backToSourceAssignee(group, hex, ci) !== 'b' || backToSourceAssignee(['a', 'c', 'd'], hex, ci) !== 'a') ci++
  // b has chunks up to front - 1 (level with a): by the chunk it reads behind, by the read it does not
  const bLevel = (peer: string, at: number): boolean => peer === 'b' && at >= front + 1
  const base = { group, blobHex: hex, ci, have: [], pending: [], wantedForMs: 0, graceMs: 150, stable: true, self: 'a', behind: bLevel }
  // judged by the chunk, b is behind it and a takes it (so would b: every member level at the front fetches it)
  assert.deepEqual(planChunk(base), { action: 'source', reason: 'ahead' })
  assert.deepEqual(planChunk({ ...base, front }), { action: 'wait', retryInMs: 150 })
  // asked at the batch's front, less the margin
  const asked: number[] = []
  planChunk({ ...base, front, behind: (_p: string, at: number) => { asked.push(at); return false } })
  assert.ok(asked.length > 0 && asked.every(at => at === front - BEHIND_MARGIN))
  // a front past the chunk (a batch planned out of order) changes nothing
  assert.deepEqual(planChunk({ ...base, front: ci + 5 }).action, planChunk(base).action)
})

test('a batch\'s reads: each chunk\'s run of consecutive chunks starts where the run does; scattered picks are their own', () => {
  assert.deepEqual([...runStarts([12, 5, 6, 7, 10, 13, 6])], [[5, 5], [6, 5], [7, 5], [10, 10], [12, 12], [13, 12]])
  assert.equal(runStarts([]).size, 0)
})

test('a neighbour reading behind a chunk: some of the window before it, none of it and the window after', () => {
  let now = 0
  const t = new HaveTable({ now: () => now, pendingTtlMs: 1000 })
  const bits = newBits(64)
  setBit(bits, 10)
  t.apply('p', { type: 'bitfield', blob, chunks: 64, bits, pending: [12] })
  assert.equal(t.behind(hex, 'p', 13, 8), true)
  assert.equal(t.behind(hex, 'p', 20, 8), true)
  assert.equal(t.behind(hex, 'p', 21, 8), false) // nothing of the 8 before: says nothing
  assert.equal(t.behind(hex, 'p', 12, 8), false) // fetching it
  assert.equal(t.behind(hex, 'p', 5, 8), false) // it has chunks after
  assert.equal(t.behind(hex, 'p', 0, 8), false)
  assert.equal(t.behind(hex, 'q', 13, 8), false) // a peer we know nothing of
  assert.equal(t.behind(randomBytes(32).toString('hex'), 'p', 13, 8), false)
  t.apply('p', { type: 'pending', blob, indexes: [25] })
  assert.equal(t.behind(hex, 'p', 20, 8), false) // fetching one within the window after
  now = 2000 // its PENDINGs went stale: only what it has counts
  assert.equal(t.behind(hex, 'p', 20, 8), false)
  assert.equal(t.behind(hex, 'p', 13, 8), true)
  assert.equal(t.behind(hex, 'p', 11, 8), true)
})

test('activity near a chunk: a neighbour that has or fetches one within the window', () => {
  let now = 0
  const t = new HaveTable({ now: () => now, pendingTtlMs: 1000 })
  const bits = newBits(64)
  setBit(bits, 10)
  t.apply('p', { type: 'bitfield', blob, chunks: 64, bits, pending: [40] })
  assert.equal(t.activeNear(hex, 18, 8), true)
  assert.equal(t.activeNear(hex, 19, 8), false)
  assert.equal(t.activeNear(hex, 33, 8), true)
  assert.equal(t.activeNear(hex, 60, 8), false)
  now = 2000 // the PENDING went stale
  assert.equal(t.activeNear(hex, 33, 8), false)
  assert.equal(t.activeNear(randomBytes(32).toString('hex'), 10, 8), false)
})
