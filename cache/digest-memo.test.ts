/** `DigestMemo`: places and absences learnt, unlearnt by stores, never learnt from a look-up a store overtook. */
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { DigestMemo } from './digest-memo.js'

const place = (blobId: string, index: number): { blobId: string, chunk: { index: number } } => ({ blobId, chunk: { index } })

test('a look-up teaches where a digest is, or that it is nowhere; a store unlearns the absence', () => {
  const m = new DigestMemo<{ index: number }>()
  assert.equal(m.places('d'), undefined)
  assert.equal(m.knownAbsent('d'), false)
  m.learnt('d', m.begin(), [])
  assert.equal(m.knownAbsent('d'), true)
  m.stored('d', place('a', 3))
  assert.equal(m.knownAbsent('d'), false)
  assert.deepEqual(m.places('d'), [place('a', 3)])
  m.stored('d', place('b', 9))
  m.stored('d', place('b', 9))
  assert.deepEqual(m.places('d'), [place('b', 9), place('a', 3)], 'newest first, once each')
  m.learnt('e', m.begin(), [place('c', 1)])
  assert.deepEqual(m.places('e'), [place('c', 1)])
})

test('a look-up that a store of its digest overtook teaches nothing; one that another store overtook, no absence', () => {
  const m = new DigestMemo<{ index: number }>()
  const token = m.begin()
  m.stored('d', place('a', 1))
  m.learnt('d', token, [])
  assert.equal(m.knownAbsent('d'), false)
  assert.deepEqual(m.places('d'), [place('a', 1)], 'the store stands')
  // a store of some other digest meanwhile: that digest may have been this one, forgotten since — no absence
  const t2 = m.begin()
  m.stored('x', place('a', 2))
  m.learnt('y', t2, [])
  assert.equal(m.knownAbsent('y'), false)
  // stale places the cache found gone, and the index holds none: absent
  m.learnt('d', m.begin(), [])
  assert.equal(m.knownAbsent('d'), true)
  assert.equal(m.places('d'), undefined)
})

test('bounded: the oldest digests are forgotten first', () => {
  const m = new DigestMemo<{ index: number }>(4)
  for (let i = 0; i < 6; i++) m.stored(`k${i}`, place('a', i))
  assert.equal(m.places('k0'), undefined)
  assert.equal(m.places('k1'), undefined)
  assert.deepEqual(m.places('k5'), [place('a', 5)])
  for (let i = 0; i < 6; i++) m.learnt(`n${i}`, m.begin(), [])
  assert.equal(m.knownAbsent('n0'), false)
  assert.equal(m.knownAbsent('n5'), true)
})
