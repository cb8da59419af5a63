/**
 * Whom a busy chunk server sends an asker to: nobody while it is not busy; its receivers of that chunk in turn,
 * those that got it whole first; never an asker to itself or round a circle; nobody after the receiver's send failed
 * or the record aged out; a bounded record.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { ChunkReceivers, MAX_RECEIVERS_PER_CHUNK, RECEIVER_TTL_MS } from './chunk-receivers.js'

describe('ChunkReceivers', () => {
  it('a server answering one request (the asker\'s) sends the chunk; a busy one sends the asker to a receiver', () => {
    const r = new ChunkReceivers<string>({ now: () => 0 })
    assert.equal(r.redirect('c', 'b', 5), undefined, 'nobody was sent it yet')
    r.serving('c', 'a')
    assert.equal(r.redirect('c', 'b', 1), undefined, 'not busy: served')
    assert.equal(r.redirect('c', 'b', 2), 'a')
    assert.equal(r.redirect('other', 'b', 2), undefined, 'receivers are per chunk')
  })

  it('receivers in turn, those that got the chunk whole first', () => {
    const r = new ChunkReceivers<string>({ now: () => 0 })
    r.serving('c', 'a')
    r.serving('c', 'b')
    assert.deepEqual([1, 2, 3, 4].map(() => r.redirect('c', 'x', 3)), ['a', 'b', 'a', 'b'])
    r.sent('c', 'b')
    assert.deepEqual([1, 2, 3].map(() => r.redirect('c', 'x', 3)), ['b', 'b', 'b'])
    r.sent('c', 'nobody')
    assert.equal(r.redirect('c', 'x', 3), 'b', 'a peer never served is not marked')
  })

  it('an asker that is a receiver already is served, not sent round in a circle', () => {
    const r = new ChunkReceivers<string>({ now: () => 0 })
    r.serving('c', 'a')
    r.serving('c', 'b')
    assert.equal(r.redirect('c', 'a', 9), undefined)
  })

  it('a receiver whose chunk did not go out is nobody\'s hint; the record ages out', () => {
    let now = 0
    const r = new ChunkReceivers<string>({ now: () => now })
    r.serving('c', 'a')
    r.serving('c', 'b')
    r.notSent('c', 'a')
    assert.equal(r.redirect('c', 'x', 3), 'b')
    r.notSent('c', 'b')
    assert.equal(r.redirect('c', 'x', 3), undefined)
    assert.equal(r.size, 0)
    r.serving('d', 'a')
    now = RECEIVER_TTL_MS + 1
    assert.equal(r.redirect('d', 'x', 3), undefined)
  })

  it('a bounded record: chunks past maxChunks and expired ones are dropped, receivers per chunk capped', () => {
    let now = 0
    const r = new ChunkReceivers<number>({ now: () => now, maxChunks: 3 })
    for (let k = 0; k < 5; k++) r.serving(k, 'a')
    assert.equal(r.size, 3)
    assert.equal(r.redirect(0, 'x', 3), undefined, 'the oldest went first')
    assert.equal(r.redirect(4, 'x', 3), 'a')
    now = RECEIVER_TTL_MS + 1
    r.serving(9, 'a')
    assert.equal(r.size, 1, 'expired entries leave as new ones come')
    for (let i = 0; i < MAX_RECEIVERS_PER_CHUNK + 5; i++) r.serving(9, `p${i}`)
    const hints = new Set(Array.from({ length: 40 }, () => r.redirect(9, 'x', 3)))
    assert.equal(hints.size, MAX_RECEIVERS_PER_CHUNK)
  })

  it('redirectAboveUploads sets how busy is busy', () => {
    const r = new ChunkReceivers<string>({ now: () => 0, redirectAboveUploads: 3 })
    r.serving('c', 'a')
    assert.equal(r.redirect('c', 'x', 3), undefined)
    assert.equal(r.redirect('c', 'x', 4), 'a')
  })
})
