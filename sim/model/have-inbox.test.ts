/**
 * The have inbox holds messages until its table is read: the table a read sees is the one applying every message
 * on arrival builds, PENDING promises dated from their arrival (so they expire on time), whatever the reads' rhythm.
 */
import { it } from 'node:test'
import assert from 'node:assert/strict'
import { HaveInbox } from './have-inbox.js'
import { HaveTable, newBits, setBit, type HaveMessage } from './policy.js'

const blob = Buffer.alloc(32, 9)
const hex = blob.toString('hex')
const TTL = 10_000

it('a read sees what applying each message on arrival would have built, promises dated at their arrival', () => {
  let now = 0
  const inbox = new HaveInbox(() => now)
  const eager = new HaveTable({ now: () => now })
  const bits = newBits(16)
  setBit(bits, 3)
  const arrivals: Array<[number, string, HaveMessage]> = [
    [0, 'A', { type: 'bitfield', blob, chunks: 16, bits, pending: [4] }],
    [5, 'B', { type: 'bitfield', blob, chunks: 16, bits: newBits(16), pending: [] }],
    [7, 'B', { type: 'pending', blob, indexes: [5, 6] }],
    [9_000, 'A', { type: 'have', blob, indexes: [4] }],
    [9_500, 'B', { type: 'pending', blob, indexes: [7] }],
    [9_600, 'B', { type: 'have', blob, indexes: [6] }]
  ]
  for (const [t, peer, m] of arrivals) {
    now = t
    inbox.push({ peer, blobHex: hex, msgs: [m], at: t })
    eager.apply(peer, m, hex)
  }
  assert.equal(inbox.held, arrivals.length, 'nothing applied before a read')
  // past B's first promise's TTL, before its second one's
  now = 7 + TTL + 1
  for (let ci = 0; ci < 16; ci++) assert.deepEqual(inbox.table.sources(hex, ci), eager.sources(hex, ci), `chunk ${ci}`)
  assert.equal(inbox.held, 0)
  assert.deepEqual(inbox.table.sources(hex, 7), { have: [], pending: [{ peerId: 'B', since: 9_500 }] })
  assert.deepEqual(inbox.table.sources(hex, 5), { have: [], pending: [] }, 'the promise dated from its arrival has expired')
  assert.deepEqual(inbox.table.neighbours(hex), eager.neighbours(hex))
})

it('holds a bounded number of messages for a node that never reads', () => {
  const inbox = new HaveInbox(() => 0)
  inbox.push({ peer: 'A', blobHex: hex, msgs: [{ type: 'bitfield', blob, chunks: 8, bits: newBits(8), pending: [] }], at: 0 })
  for (let i = 0; i < 10_000; i++) inbox.push({ peer: 'A', blobHex: hex, msgs: [{ type: 'pending', blob, indexes: [i % 8] }], at: 0 })
  assert.ok(inbox.held < 256, `${inbox.held} held`)
  assert.deepEqual(inbox.table.sources(hex, 3).pending, [{ peerId: 'A', since: 0 }])
})
