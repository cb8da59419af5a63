/**
 * Whom a busy chunk server sends an asker to: nobody while it is not busy; its receivers of that chunk in turn,
 * those that got it whole first; never an asker to itself or round a circle; nobody after the receiver's send failed
 * or the record aged out; a bounded record. A crowd of more than `chainCrowd` askers at once is shared in turn
 * between the server and the receivers that got the chunk whole (a tree, not a chain).
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { CHAIN_CROWD, ChunkReceivers, MAX_RECEIVERS_PER_CHUNK, RECEIVER_TTL_MS, TAKE_TURN } from './chunk-receivers.js'

describe('ChunkReceivers', () => {
  it('a server answering one request (the asker\'s) sends the chunk; a busy one sends the asker to a receiver', () => {
    const r = new ChunkReceivers<string>({ now: () => 0 })
    assert.equal(r.route('c', 'b', 5), undefined, 'nobody was sent it yet')
    r.serving('c', 'a')
    assert.equal(r.route('c', 'b', 1), undefined, 'not busy: served')
    assert.equal(r.route('c', 'b', 2), 'a')
    assert.equal(r.route('other', 'b', 2), undefined, 'receivers are per chunk')
  })

  it('receivers in turn, those that got the chunk whole first', () => {
    const r = new ChunkReceivers<string>({ now: () => 0 })
    r.serving('c', 'a')
    r.serving('c', 'b')
    assert.deepEqual([1, 2, 3, 4].map(() => r.route('c', 'x', 3)), ['a', 'b', 'a', 'b'])
    r.sent('c', 'b')
    assert.deepEqual([1, 2, 3].map(() => r.route('c', 'x', 3)), ['b', 'b', 'b'])
    r.sent('c', 'nobody')
    assert.equal(r.route('c', 'x', 3), 'b', 'a peer never served is not marked')
  })

  it('those that got the chunk whole keep their own order through sends and failed sends', () => {
    const r = new ChunkReceivers<string>({ now: () => 0 })
    const turn = (n: number): Array<string | undefined> => Array.from({ length: n }, () => r.route('c', 'x', 3))
    r.serving('c', 'a')
    r.sent('c', 'a')
    r.sent('c', 'a')
    assert.deepEqual(turn(2), ['a', 'a'], 'one receiver, marked once')
    r.serving('c', 'b')
    r.serving('c', 'c')
    assert.deepEqual(turn(2), ['a', 'a'], 'only a got it whole')
    r.sent('c', 'c')
    r.sent('c', 'b')
    assert.deepEqual(turn(3), ['c', 'b', 'a'], 'a, c, b in the order they got it')
    r.notSent('c', 'c')
    assert.deepEqual(turn(2), ['b', 'a'])
    r.notSent('c', 'a')
    r.notSent('c', 'b')
    assert.equal(r.size, 0, 'nobody left: the chunk is forgotten')
    r.serving('c', 'd')
    r.serving('c', 'e')
    r.sent('c', 'd')
    r.sent('c', 'e')
    r.notSent('c', 'd')
    r.serving('c', 'f')
    assert.deepEqual(turn(2), ['e', 'e'], 'f is not marked with e')
    r.sent('c', 'f')
    assert.deepEqual(turn(2), ['e', 'f'])
  })

  it('an asker that is a receiver already is served, not sent round in a circle', () => {
    const r = new ChunkReceivers<string>({ now: () => 0 })
    r.serving('c', 'a')
    r.serving('c', 'b')
    assert.equal(r.route('c', 'a', 9), undefined)
  })

  it('a receiver whose chunk did not go out is nobody\'s hint; the record ages out', () => {
    let now = 0
    const r = new ChunkReceivers<string>({ now: () => now })
    r.serving('c', 'a')
    r.serving('c', 'b')
    r.notSent('c', 'a')
    assert.equal(r.route('c', 'x', 3), 'b')
    r.notSent('c', 'b')
    assert.equal(r.route('c', 'x', 3), undefined)
    assert.equal(r.size, 0)
    r.serving('d', 'a')
    now = RECEIVER_TTL_MS + 1
    assert.equal(r.route('d', 'x', 3), undefined)
  })

  it('a bounded record: chunks past maxChunks and expired ones are dropped, receivers per chunk capped', () => {
    let now = 0
    const r = new ChunkReceivers<number>({ now: () => now, maxChunks: 3 })
    for (let k = 0; k < 5; k++) r.serving(k, 'a')
    assert.equal(r.size, 3)
    assert.equal(r.route(0, 'x', 3), undefined, 'the oldest went first')
    assert.equal(r.route(4, 'x', 3), 'a')
    now = RECEIVER_TTL_MS + 1
    r.serving(9, 'a')
    assert.equal(r.size, 1, 'expired entries leave as new ones come')
    for (let i = 0; i < MAX_RECEIVERS_PER_CHUNK + 5; i++) r.serving(9, `p${i}`)
    const hints = new Set(Array.from({ length: 40 }, () => r.route(9, 'x', 3)))
    assert.equal(hints.size, MAX_RECEIVERS_PER_CHUNK)
  })

  it('a chunk remembered after one forgotten starts afresh (no receivers, no turn of the other)', () => {
    let now = 0
    const r = new ChunkReceivers<string>({ now: () => now })
    r.serving('c', 'a')
    r.serving('c', 'z')
    r.sent('c', 'a')
    assert.deepEqual([r.route('c', 'x', 3), r.route('c', 'x', 3), r.route('c', 'x', 3)], ['a', 'a', 'a'])
    r.notSent('c', 'a')
    r.notSent('c', 'z')
    r.serving('d', 'b')
    r.serving('d', 'e')
    assert.deepEqual([r.route('d', 'x', 3), r.route('d', 'x', 3)], ['b', 'e'], 'nobody got d whole: its receivers, from the first')
    now = RECEIVER_TTL_MS + 1
    r.serving('f', 'g')
    assert.equal(r.size, 1, 'd aged out')
    assert.equal(r.route('f', 'x', 3), 'g')
    assert.equal(r.route('c', 'x', 3), undefined)
  })

  it('redirectAboveUploads sets how busy is busy', () => {
    const r = new ChunkReceivers<string>({ now: () => 0, redirectAboveUploads: 3 })
    r.serving('c', 'a')
    assert.equal(r.route('c', 'x', 3), undefined)
    assert.equal(r.route('c', 'x', 4), 'a')
  })

  it('a crowd past chainCrowd: kept for a turn while the chunk goes out, then shared with those that got it', () => {
    const r = new ChunkReceivers<string>({ now: () => 0, chainCrowd: 2 })
    r.serving('c', 'a')
    assert.equal(r.route('c', 'x', 3, 2), 'a', 'a small crowd: sent on (a chain)')
    assert.equal(r.route('c', 'x', 3, 3), TAKE_TURN, 'a crowd: kept, a is still receiving')
    assert.equal(r.sent('c', 'a'), true)
    assert.equal(r.sent('c', 'a'), false, 'marked once')
    // the upload ended: the crowd goes in turn to a (which got it whole) and this server (idle for c)
    assert.deepEqual([r.route('c', 'x', 3, 3), r.route('c', 'x', 3, 3)], ['a', undefined])
    r.serving('c', 'y')
    assert.deepEqual([r.route('c', 'x', 3, 3), r.route('c', 'x', 3, 3)], ['a', TAKE_TURN], 'y still receiving: a, or a turn here')
    assert.equal(r.route('c', 'x', 3, 2), 'a', 'a small crowd again: sent on, to those that got it whole first')
    r.sent('c', 'y')
    assert.deepEqual([1, 2, 3].map(() => r.route('c', 'x', 3, 9)), ['y', undefined, 'a'], 'nothing under way: y, served here, a')
    assert.equal(r.route('c', 'x', 1, 9), undefined, 'not busy: served')
    assert.equal(r.route('c', 'y', 3, 9), undefined, 'a receiver asking again is served')
  })

  it('chainCrowd 0: turns from the first asker on; by default a crowd of CHAIN_CROWD still goes down a chain', () => {
    const r = new ChunkReceivers<string>({ now: () => 0, chainCrowd: 0 })
    r.serving('c', 'a')
    assert.equal(r.route('c', 'x', 3), TAKE_TURN)
    assert.equal(r.notSent('c', 'a'), true)
    assert.equal(r.notSent('c', 'a'), false, 'no receiver any more')
    assert.equal(r.route('c', 'x', 3), undefined, 'nobody left to send to: served')
    const d = new ChunkReceivers<string>({ now: () => 0 })
    d.serving('c', 'a')
    assert.equal(d.route('c', 'x', 3, CHAIN_CROWD), 'a')
    assert.equal(d.route('c', 'x', 3, CHAIN_CROWD + 1), TAKE_TURN)
  })
})
