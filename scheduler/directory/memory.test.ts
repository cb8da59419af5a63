/**
 * The in-memory directory: the conformance suite, and what only it has (a peer-table bound, an injectable clock).
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { blobId, directoryConformance, entry } from './conformance.js'
import { createDirectory, MemoryDirectory } from './index.js'

directoryConformance('memory', async (init) => new MemoryDirectory({}, init))

describe('MemoryDirectory', () => {
  it('is what createDirectory makes when no Redis is named', async () => {
    const dir = await createDirectory({ redis: [] })
    assert.equal(dir.kind, 'memory')
    await dir.close()
  })

  it('refuses a newcomer when maxPeers live peers are registered, and takes it once one expired', async () => {
    let now = 1_000_000
    const dir = new MemoryDirectory({}, { maxPeers: 2, now: () => now })
    await dir.announce(entry('peer-a'), [blobId(1)], { ttlMs: 1000 })
    await dir.announce(entry('peer-b'), [blobId(1)], { ttlMs: 5000 })
    assert.deepEqual(await dir.announce(entry('peer-c'), [blobId(1)]), { accepted: 0, refused: 1, banned: false })
    now += 2000
    assert.deepEqual(await dir.announce(entry('peer-c'), [blobId(1)]), { accepted: 1, refused: 0, banned: false })
    assert.deepEqual((await dir.lookup(blobId(1), { max: 8 })).map((h) => h.peerId).sort(), ['peer-b', 'peer-c'])
    await dir.close()
  })

  it('expires by its injected clock, and expire() drops the dead peers with their records', async () => {
    let now = 1_000_000
    const dir = new MemoryDirectory({}, { now: () => now, peerTtlMs: 15_000 })
    await dir.announce(entry('peer-a'), [blobId(1), blobId(2)])
    await dir.announce(entry('peer-b'), [blobId(1)], { ttlMs: 60_000 })
    now += 14_999
    assert.equal((await dir.lookup(blobId(1), { max: 8 })).length, 2)
    now += 2
    assert.equal(await dir.expire(), 1)
    assert.deepEqual(await dir.stats(), { peers: 1, blobs: 1, entries: 1, banned: 0 })
    await dir.close()
  })

  it('a look-up draws its sample without replacement: a constant random still answers `max` distinct holders', async () => {
    for (const r of [0, 0.999999999]) {
      const dir = new MemoryDirectory({}, { random: () => r })
      for (let i = 0; i < 100; i++) await dir.announce(entry(`peer-${i}`), [blobId(1)])
      const hs = await dir.lookup(blobId(1), { asker: 'peer-0', max: 16 })
      assert.equal(new Set(hs.map((h) => h.peerId)).size, 16)
      assert.ok(!hs.some((h) => h.peerId === 'peer-0'))
      await dir.close()
    }
  })

  it('refuses records past maxEntries', async () => {
    const dir = new MemoryDirectory({}, { maxEntries: 3 })
    assert.deepEqual(await dir.announce(entry('peer-a'), [1, 2].map(blobId)), { accepted: 2, refused: 0, banned: false })
    assert.deepEqual(await dir.announce(entry('peer-b'), [1, 2].map(blobId)), { accepted: 1, refused: 1, banned: false })
    await dir.close()
  })
})
