/** What a client re-sends to a new session: held digests and claims, each change at most once, claims bounded. */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { Holdings } from './holdings.js'

const d = (n: string): Buffer => createHash('sha256').update(n).digest()
const k = (n: string): string => d(n).toString('latin1')

describe('Holdings', () => {
  it('re-sends what is held and what was claimed; a claim announced becomes held, a claim released or withdrawn goes', () => {
    const h = new Holdings()
    h.announce([d('a'), Buffer.alloc(5)])
    h.claim([d('b'), d('c'), d('d'), d('a')])
    assert.deepEqual([h.heldCount, h.claimedCount], [1, 3], 'a held digest is never a claim; bad lengths are ignored')
    assert.deepEqual(h.takeChanges(), { withdraw: [], announce: [k('a')] }, 'claims are the scheduler\'s own record: nothing to send')
    h.announce([d('b')])
    h.release([d('c'), d('a')])
    h.withdraw([d('d'), d('unknown')])
    assert.deepEqual(h.takeChanges(), { withdraw: [k('c'), k('d')], announce: [k('b')] }, 'a held digest is not released; an unknown one not withdrawn')
    assert.deepEqual(h.takeChanges(), { withdraw: [], announce: [] })
    h.claim([d('e')])
    h.announce([d('f')])
    assert.deepEqual(h.takeAll().sort(), [k('a'), k('b'), k('e'), k('f')].sort())
    assert.equal(h.changes, 0, 'what a new session is sent whole is no change left to send')
  })

  it('keeps the most recent claims when past its bound', () => {
    const h = new Holdings()
    const n = (1 << 18) + 3
    for (let i = 0; i < n; i++) h.claim([d(`c${i}`)])
    h.claim([d('c0')]) // asked again: now the most recent
    assert.equal(h.claimedCount, 1 << 18)
    const all = new Set(h.takeAll())
    assert.ok(all.has(k('c0')) && all.has(k(`c${n - 1}`)))
    assert.ok(!all.has(k('c1')) && !all.has(k('c3')), 'the oldest were forgotten')
    assert.ok(all.has(k('c4')))
  })
})
