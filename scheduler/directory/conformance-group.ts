/**
 * The conformance cases of a blob's group (`SwarmDirectory.lookupGroup`), run by `conformance.ts` for every
 * implementation: the group is the blob's first live holders in join order, the same for every asker, the asker
 * included; a holder that dies, withdraws or leaves loses its place and the next moves up; a reset keeps it; a full
 * blob never replaces its group; the group is capped at `MAX_GROUP`.
 */
import assert from 'node:assert/strict'
import { it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { MAX_GROUP } from '../protocol.js'
import type { DirectoryPolicyInit, GroupLookupOptions, PeerEntry, SwarmDirectory } from './index.js'

export interface GroupCaseKit {
  open: (t: { after: (fn: () => Promise<void>) => void }, init?: DirectoryPolicyInit) => Promise<SwarmDirectory>
  entry: (id: string, over?: Partial<PeerEntry>) => PeerEntry
  blobId: (n: number) => string
}

const bad = { chunks: 0, bytes: 0, ms: 0, failed: true, bad: true }

/** Registers the cases inside the caller's `describe`. */
export function groupCases ({ open, entry, blobId }: GroupCaseKit): void {
  const b1 = blobId(1)
  const b2 = blobId(2)
  const b3 = blobId(3)
  /** the group's peer ids, in the order named (join order: never sorted here) */
  const groupOf = async (dir: SwarmDirectory, blob: string, opts: Partial<GroupLookupOptions> = {}): Promise<string[]> =>
    (await dir.lookupGroup(blob, { group: MAX_GROUP, ...opts })).group.map((m) => m.peerId)
  /** announces `ids` one after the other, so that their join order is theirs */
  const join = async (dir: SwarmDirectory, ids: readonly string[], blobs: string[], ttlMs?: number): Promise<void> => {
    for (const id of ids) await dir.announce(entry(id), blobs, ttlMs !== undefined ? { ttlMs } : {})
  }
  const peers = (n: number, from = 0): string[] => Array.from({ length: n }, (_, i) => `peer-${from + i}`)

  it('a blob\'s group is its first holders in join order, the same for every asker, the asker included', async (t) => {
    const dir = await open(t)
    await join(dir, peers(6), [b1])
    assert.deepEqual(await groupOf(dir, b1, { group: 4 }), peers(4))
    for (const asker of ['peer-1', 'peer-5', 'stranger']) {
      const found = await dir.lookupGroup(b1, { asker, group: 4, max: 16 })
      assert.deepEqual(found.group.map((m) => m.peerId), peers(4), `asked by ${asker}`)
      // the ranked holders never name the asker, and may name group members again
      assert.ok(!found.holders.some((h) => h.peerId === asker))
      assert.equal(found.holders.length, asker === 'stranger' ? 6 : 5)
    }
    assert.deepEqual(await groupOf(dir, b1, { asker: 'peer-5' }), peers(6), 'a group asked for larger names every holder')
    // the swarm's size comes with a group, whoever asks and however small the group
    for (const asker of ['peer-1', 'stranger']) assert.equal((await dir.lookupGroup(b1, { asker, group: 1, max: 2 })).swarm, 6)
    assert.equal((await dir.lookupGroup(b1, { group: 0, max: 4 })).swarm, 0, 'no group asked for, no count')
    await dir.withdraw('peer-5', [b1])
    assert.equal((await dir.lookupGroup(b1, { group: 4 })).swarm, 5)
    await dir.announce(entry('peer-5'), [b1])
    const [first] = (await dir.lookupGroup(b1, { group: 1 })).group
    assert.deepEqual(first, { peerId: 'peer-0', addrs: entry('peer-0').addrs, zone: '' })
    assert.deepEqual(await dir.lookupGroup(b1, { group: 0 }).then((f) => f.group), [])
    assert.deepEqual(await dir.lookupGroup(b2, { group: 4 }), { group: [], holders: [], swarm: 0 })
    // the order is the join order, not the ids' order
    await join(dir, ['peer-z', 'peer-a'], [b2])
    assert.deepEqual(await groupOf(dir, b2), ['peer-z', 'peer-a'])
  })

  it('a holder that expires leaves the group, the next in order moves up, and one that comes back joins last', async (t) => {
    const dir = await open(t)
    await dir.announce(entry('peer-0'), [b1], { ttlMs: 300 })
    await join(dir, peers(4, 1), [b1])
    assert.deepEqual(await groupOf(dir, b1, { group: 3 }), peers(3))
    await sleep(600)
    assert.deepEqual(await groupOf(dir, b1, { group: 3 }), peers(3, 1))
    await dir.announce(entry('peer-0'), [b1])
    assert.deepEqual(await groupOf(dir, b1), [...peers(4, 1), 'peer-0'])
  })

  it('a holder that withdraws or leaves loses its place; banned and address-less holders are passed over', async (t) => {
    const dir = await open(t, { banAfterBadReporters: 1 })
    await join(dir, peers(3), [b1])
    await dir.announce(entry('peer-mute', { addrs: [] }), [b1])
    await join(dir, peers(3, 3), [b1])
    assert.deepEqual(await groupOf(dir, b1, { group: 4 }), peers(4))
    await dir.withdraw('peer-1', [b1])
    assert.deepEqual(await groupOf(dir, b1, { group: 3 }), ['peer-0', 'peer-2', 'peer-3'])
    await dir.leave('peer-0')
    assert.deepEqual(await groupOf(dir, b1, { group: 3 }), peers(3, 2))
    await dir.announce(entry('peer-1'), [b1])
    assert.deepEqual(await groupOf(dir, b1), [...peers(4, 2), 'peer-1'])
    await dir.announce(entry('reporter'), [])
    assert.deepEqual(await dir.report('reporter', [{ ...bad, peerId: 'peer-2' }]), ['peer-2'])
    assert.deepEqual(await groupOf(dir, b1, { group: 2 }), peers(2, 3))
  })

  it('a reset announce keeps the peer\'s place in the groups of the blobs it names again', async (t) => {
    const dir = await open(t)
    await dir.announce(entry('peer-0'), [b1, b2])
    await join(dir, peers(2, 1), [b1, b2])
    await dir.announce(entry('peer-0'), [b1, b3], { reset: true })
    assert.deepEqual(await groupOf(dir, b1), peers(3))
    assert.deepEqual(await groupOf(dir, b2), peers(2, 1))
    assert.deepEqual(await groupOf(dir, b3), ['peer-0'])
  })

  it(`the group is at most ${MAX_GROUP}, and a full blob never replaces it to make room for a newcomer`, async (t) => {
    const dir = await open(t, { maxHoldersPerBlob: MAX_GROUP + 2 })
    const all = peers(30)
    for (const id of all) {
      await dir.announce(entry(id), [b1])
      const holders = await dir.lookup(b1, { max: 16 })
      assert.ok(holders.some((h) => h.peerId === id), `${id} was just announced`)
    }
    assert.deepEqual(await groupOf(dir, b1, { group: 16 }), all.slice(0, MAX_GROUP))
    assert.deepEqual(await groupOf(dir, b1, { group: 3 }), all.slice(0, 3))
    assert.equal((await dir.lookup(b1, { max: 16 })).length, MAX_GROUP + 2)
    assert.equal((await dir.stats()).entries, MAX_GROUP + 2)
  })
}
