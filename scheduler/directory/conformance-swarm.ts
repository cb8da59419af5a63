/**
 * The conformance cases of a large swarm, run by `conformance.ts` for every implementation: by default a blob keeps
 * every holder, and a look-up ranks a uniform sample of all of them, so its answers come from the whole swarm, not
 * from its latest joiners; dead holders a sample meets are dropped, and the group stays the first live holders in
 * join order.
 *
 * Why it matters: a holder list capped with random replacement keeps mostly the latest joiners, who have the least
 * of the blob, so each asker follows peers that joined just before it and the swarm's follow graph becomes a chain
 * (the chunk index had that bug: 10,000 nodes pulled 6.45 copies of the image from the registry, commit 0dc3889).
 */
import assert from 'node:assert/strict'
import { it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { MAX_GROUP } from '../protocol.js'
import type { GroupCaseKit } from './conformance-group.js'
import type { SwarmDirectory } from './index.js'

/** peers joining one blob: far more than the 128 a blob used to keep */
const SWARM = 2000
/**
 * announces in flight at once; a wave joins after the one before it, but within a wave the order is the backend's
 * (a cluster runs them on several masters), so the first joiners, whose order names the group, join one at a time
 */
const WAVE = 50
const ONE_BY_ONE = 2 * MAX_GROUP

/** Registers the cases inside the caller's `describe`. */
export function swarmCases ({ open, entry, blobId }: GroupCaseKit): void {
  const b1 = blobId(1)
  const ids = Array.from({ length: SWARM }, (_, i) => `peer-${i}`)
  const indexOf = (peerId: string): number => Number(peerId.slice('peer-'.length))
  /** announces `ids`, the first ones one by one, then wave by wave: the first half of them joins before the second */
  const join = async (dir: SwarmDirectory, ttlOf: (i: number) => number): Promise<void> => {
    for (let at = 0; at < ids.length;) {
      const wave = at < ONE_BY_ONE ? 1 : WAVE
      await Promise.all(ids.slice(at, at + wave).map(async (id, k) => await dir.announce(entry(id), [b1], { ttlMs: ttlOf(at + k) })))
      at += wave
    }
  }

  it(`a blob joined by ${SWARM} peers keeps them all, and look-ups answer from the whole swarm, not its latest joiners`, async (t) => {
    const dir = await open(t)
    await join(dir, () => 60_000)
    assert.equal((await dir.stats()).entries, SWARM, 'the whole swarm is kept')
    let early = 0
    let answers = 0
    const answered = new Set<string>()
    for (let i = 0; i < 250; i++) {
      const asker = ids[(i * 7919) % SWARM]
      const found = await dir.lookupGroup(b1, { asker, max: 4, group: MAX_GROUP })
      assert.deepEqual(found.group.map((m) => m.peerId), ids.slice(0, MAX_GROUP), 'the group is the first joiners')
      assert.equal(found.holders.length, 4)
      for (const h of found.holders) {
        assert.notEqual(h.peerId, asker)
        answers++
        answered.add(h.peerId)
        if (indexOf(h.peerId) < SWARM / 2) early++
      }
    }
    // the first half of the swarm is about half of a uniform sample's answers; a list capped at 128 with random
    // replacement keeps hardly any of them past its group (~6% of answers), and names at most 128 peers in all
    const share = early / answers
    assert.ok(share > 0.35 && share < 0.65, `the first ${SWARM / 2} joiners got ${(100 * share).toFixed(1)}% of ${answers} answers`)
    assert.ok(answered.size > 400, `${answered.size} distinct holders answered in ${answers} answers`)
  })

  it('dead holders a look-up\'s sample meets are dropped; answers stay full and the group is the first live holders', async (t) => {
    const dir = await open(t)
    // every fourth peer (from the second: one of the group) dies soon
    const dies = (i: number): boolean => i % 4 === 1
    await join(dir, (i) => dies(i) ? 300 : 60_000)
    await sleep(600)
    const live = ids.filter((_, i) => !dies(i))
    for (let i = 0; i < 100; i++) {
      const found = await dir.lookupGroup(b1, { max: 4, group: MAX_GROUP })
      assert.deepEqual(found.group.map((m) => m.peerId), live.slice(0, MAX_GROUP))
      assert.equal(found.holders.length, 4, 'enough live holders: a full answer')
      for (const h of found.holders) assert.ok(!dies(indexOf(h.peerId)), `${h.peerId} is dead`)
    }
    const { entries } = await dir.stats()
    // the group's walk meets two dead ones at most: the rest were met by the samples
    assert.ok(entries <= SWARM - 50, `${SWARM - entries} dead records dropped`)
    assert.ok(entries >= live.length, 'no live holder was dropped')
  })
}
