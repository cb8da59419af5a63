/**
 * The one conformance suite every {@link SwarmDirectory} runs (abstract-level's suite, spegel's `storetest`): the
 * memory directory and the Redis one must behave the same. Call it inside a test file with a factory that makes
 * a fresh, empty directory from the bounds and policy a case asks for; the suite closes each directory after its
 * case.
 *
 * Expiry and bans are checked in real time (Redis expires keys by its own clock), with TTLs of a few hundred ms.
 *
 * @example
 * ```ts
 * import { directoryConformance } from './conformance.js'
 * directoryConformance('memory', async (init) => new MemoryDirectory({}, init))
 * ```
 */
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { groupCases } from './conformance-group.js'
import { swarmCases } from './conformance-swarm.js'
import type { BlobHolder, DirectoryPolicyInit, PeerEntry, SwarmDirectory } from './index.js'

export type DirectoryFactory = (init: DirectoryPolicyInit) => Promise<SwarmDirectory>

export const blobId = (n: number): string => createHash('sha256').update(`blob ${n}`).digest('hex')

export const entry = (id: string, over: Partial<PeerEntry> = {}): PeerEntry => ({
  id, addrs: [`/ip4/10.0.0.${id.length}/tcp/4001`, `/dns4/${id}.example/tcp/4001`], zone: '', uploadSlots: 8, uploadBps: 0, ...over
})

const peers = (hs: BlobHolder[]): string[] => hs.map((h) => h.peerId).sort()

/** Polls `check` until it holds (for effects a backend applies a moment later), failing after `timeoutMs`. */
async function eventually (what: string, check: () => Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`${what}: not within ${timeoutMs} ms`)
    await sleep(25)
  }
}

const rejectsWith = async (p: Promise<unknown>, code: string): Promise<void> => {
  await assert.rejects(p, (err: unknown) => (err as { code?: string }).code === code)
}

const ok = (chunks = 1, ms = 10) => ({ chunks, bytes: chunks << 20, ms, failed: false, bad: false })
const failed = { chunks: 0, bytes: 0, ms: 0, failed: true, bad: false }
const bad = { chunks: 0, bytes: 0, ms: 0, failed: true, bad: true }

export function directoryConformance (name: string, make: DirectoryFactory, opts: { skip?: string | false } = {}): void {
  describe(`SwarmDirectory conformance: ${name}`, { skip: opts.skip ?? false }, () => {
    const open = async (t: { after: (fn: () => Promise<void>) => void }, init: DirectoryPolicyInit = {}): Promise<SwarmDirectory> => {
      const dir = await make(init)
      t.after(async () => { await dir.close() })
      return dir
    }
    const b1 = blobId(1)
    const b2 = blobId(2)
    const b3 = blobId(3)

    it('a lookup answers the announced holders with their addresses and zone, and nothing for a blob nobody holds', async (t) => {
      const dir = await open(t)
      assert.deepEqual(await dir.announce(entry('peer-a', { zone: 'eu|fra' }), [b1, b2]), { accepted: 2, refused: 0, banned: false })
      await dir.announce(entry('peer-b'), [b1])
      const hs = await dir.lookup(b1)
      assert.deepEqual(peers(hs), ['peer-a', 'peer-b'])
      const a = hs.find((h) => h.peerId === 'peer-a')
      assert.deepEqual(a?.addrs, entry('peer-a').addrs)
      assert.equal(a?.zone, 'eu|fra')
      assert.ok(hs.every((h) => Number.isFinite(h.score)))
      assert.ok(hs[0].score >= hs[1].score, 'best first')
      assert.deepEqual(peers(await dir.lookup(b2)), ['peer-a'])
      assert.deepEqual(await dir.lookup(b3), [])
    })

    it('a lookup never answers the asker, and answers at most `max` distinct holders (default 4)', async (t) => {
      const dir = await open(t)
      for (let i = 0; i < 8; i++) await dir.announce(entry(`peer-${i}`), [b1])
      const hs = await dir.lookup(b1, { asker: 'peer-0', max: 16 })
      assert.equal(hs.length, 7)
      assert.ok(!hs.some((h) => h.peerId === 'peer-0'))
      assert.equal(new Set(hs.map((h) => h.peerId)).size, 7)
      assert.equal((await dir.lookup(b1)).length, 4)
      assert.equal((await dir.lookup(b1, { max: 2 })).length, 2)
      assert.deepEqual(await dir.lookup(b1, { max: 0 }), [])
      // a peer without addresses cannot be reached: never answered
      await dir.announce(entry('peer-mute', { addrs: [] }), [b2])
      assert.deepEqual(await dir.lookup(b2), [])
    })

    it('withdraw removes only the withdrawn holdings', async (t) => {
      const dir = await open(t)
      await dir.announce(entry('peer-a'), [b1, b2])
      await dir.announce(entry('peer-b'), [b1])
      await dir.withdraw('peer-a', [b1])
      assert.deepEqual(peers(await dir.lookup(b1)), ['peer-b'])
      assert.deepEqual(peers(await dir.lookup(b2)), ['peer-a'])
      assert.equal((await dir.peer('peer-a'))?.blobs, 1)
      assert.equal((await dir.stats()).entries, 2)
    })

    it('leave drops the peer and everything it held at once', async (t) => {
      const dir = await open(t)
      await dir.announce(entry('peer-a'), [b1, b2, b3])
      await dir.announce(entry('peer-b'), [b1])
      await dir.leave('peer-a')
      assert.deepEqual(peers(await dir.lookup(b1)), ['peer-b'])
      assert.deepEqual(await dir.lookup(b2), [])
      assert.equal(await dir.peer('peer-a'), undefined)
      assert.deepEqual(await dir.stats(), { peers: 1, blobs: 1, entries: 1, banned: 0 })
    })

    it('calls about unknown peers and blobs are harmless', async (t) => {
      const dir = await open(t)
      await dir.withdraw('peer-x', [b1])
      await dir.leave('peer-x')
      assert.equal(await dir.heartbeat('peer-x', { activeUploads: 0, recentUploadBps: 0 }, 1000), false)
      assert.equal(await dir.peer('peer-x'), undefined)
      assert.deepEqual(await dir.lookup(b1, { asker: 'peer-x' }), [])
      assert.deepEqual(await dir.report('peer-x', [{ ...bad, peerId: 'peer-y' }]), [])
      assert.deepEqual(await dir.stats(), { peers: 0, blobs: 0, entries: 0, banned: 0 })
    })

    it('a peer not refreshed within its TTL is dead: never answered, and dropped when a lookup meets it', async (t) => {
      const dir = await open(t)
      await dir.announce(entry('peer-short'), [b1], { ttlMs: 300 })
      await dir.announce(entry('peer-long'), [b1])
      assert.equal((await dir.lookup(b1)).length, 2)
      await sleep(600)
      assert.deepEqual(peers(await dir.lookup(b1)), ['peer-long'])
      assert.deepEqual(await dir.stats(), { peers: 1, blobs: 1, entries: 1, banned: 0 })
      assert.equal(await dir.peer('peer-short'), undefined)
      assert.equal(await dir.heartbeat('peer-short', { activeUploads: 0, recentUploadBps: 0 }, 1000), false, 'must announce again')
    })

    it('expire() leaves no dead peer registered', async (t) => {
      const dir = await open(t)
      await dir.announce(entry('peer-a'), [b1, b2], { ttlMs: 200 })
      await sleep(400)
      await dir.expire()
      assert.equal((await dir.stats()).peers, 0)
      assert.deepEqual(await dir.lookup(b1), [])
    })

    it('heartbeats keep a peer live past its first TTL and carry its load', async (t) => {
      const dir = await open(t)
      await dir.announce(entry('peer-a'), [b1], { ttlMs: 600 })
      for (let i = 0; i < 6; i++) {
        await sleep(150)
        assert.equal(await dir.heartbeat('peer-a', { activeUploads: 3, recentUploadBps: 5e6 }, 600), true)
      }
      assert.deepEqual(peers(await dir.lookup(b1)), ['peer-a'])
      const view = await dir.peer('peer-a')
      assert.equal(view?.activeUploads, 3)
      assert.equal(view?.recentUploadBps, 5e6)
      assert.equal(view?.ttlMs, 600)
      // an announce keeps the TTL the heartbeats asked for
      await dir.announce(entry('peer-a'), [b2])
      assert.equal((await dir.peer('peer-a'))?.ttlMs, 600)
    })

    it('a peer that expired and comes back holds only what it announces again', async (t) => {
      const dir = await open(t)
      await dir.announce(entry('peer-a'), [b1, b2], { ttlMs: 300 })
      await sleep(600)
      await dir.announce(entry('peer-a'), [b2])
      assert.deepEqual(await dir.lookup(b1), [])
      assert.deepEqual(peers(await dir.lookup(b2)), ['peer-a'])
      assert.equal((await dir.peer('peer-a'))?.blobs, 1)
    })

    it('a reset announce replaces everything the peer held', async (t) => {
      const dir = await open(t)
      await dir.announce(entry('peer-a'), [b1, b2])
      await dir.announce(entry('peer-b'), [b1])
      assert.deepEqual(await dir.announce(entry('peer-a'), [b2, b3], { reset: true }), { accepted: 2, refused: 0, banned: false })
      assert.deepEqual(peers(await dir.lookup(b1)), ['peer-b'])
      assert.deepEqual(peers(await dir.lookup(b2)), ['peer-a'])
      assert.deepEqual(peers(await dir.lookup(b3)), ['peer-a'])
      assert.equal((await dir.peer('peer-a'))?.blobs, 2)
      await eventually('the old records are gone', async () => (await dir.stats()).entries === 3)
    })

    it('maxBlobsPerPeer refuses the rest of an announce; blobs already held stay accepted', async (t) => {
      const dir = await open(t, { maxBlobsPerPeer: 3 })
      const ids = [1, 2, 3, 4, 5].map(blobId)
      assert.deepEqual(await dir.announce(entry('peer-a'), ids), { accepted: 3, refused: 2, banned: false })
      assert.deepEqual(await dir.announce(entry('peer-a'), [ids[0], ids[4]]), { accepted: 1, refused: 1, banned: false })
      assert.equal((await dir.peer('peer-a'))?.blobs, 3)
      await dir.withdraw('peer-a', [ids[0]])
      assert.deepEqual(await dir.announce(entry('peer-a'), [ids[4]]), { accepted: 1, refused: 0, banned: false })
      assert.deepEqual(peers(await dir.lookup(ids[4])), ['peer-a'])
      assert.deepEqual(await dir.lookup(ids[0]), [])
    })

    it('maxHoldersPerBlob set, a popular blob keeps a bounded sample of its holders, the newest announcer in it', async (t) => {
      const dir = await open(t, { maxHoldersPerBlob: 5 })
      for (let i = 0; i < 12; i++) {
        await dir.announce(entry(`peer-${i}`), [b1])
        const hs = await dir.lookup(b1, { max: 16 })
        assert.equal(hs.length, Math.min(5, i + 1))
        assert.ok(hs.some((h) => h.peerId === `peer-${i}`), `peer-${i} was just announced`)
      }
      assert.deepEqual(await dir.stats(), { peers: 12, blobs: 1, entries: 5, banned: 0 })
    })

    it('addresses past the bound are dropped; ids, addresses and zones out of bounds are refused', async (t) => {
      const dir = await open(t)
      const addrs = Array.from({ length: 40 }, (_, i) => `/ip4/10.0.1.${i}/tcp/4001`)
      await dir.announce(entry('peer-a', { addrs }), [b1])
      assert.deepEqual((await dir.peer('peer-a'))?.addrs, addrs.slice(0, 16))
      const invalid = 'RAFSPEER_ERR_DIRECTORY_INVALID'
      await rejectsWith(dir.announce(entry(''), [b1]), invalid)
      await rejectsWith(dir.announce(entry('peer a'), [b1]), invalid)
      await rejectsWith(dir.announce(entry('p'.repeat(200)), [b1]), invalid)
      await rejectsWith(dir.announce(entry('peer-b'), ['x'.repeat(200)]), invalid)
      await rejectsWith(dir.announce(entry('peer-b'), ['']), invalid)
      await rejectsWith(dir.announce(entry('peer-b', { zone: 'z'.repeat(300) }), [b1]), invalid)
      await rejectsWith(dir.announce(entry('peer-b', { addrs: ['/ip4/1.2.3.4/tcp/1\n/ip4/5.6.7.8/tcp/1'] }), [b1]), invalid)
      await rejectsWith(dir.lookup(''), invalid)
      await rejectsWith(dir.report('peer-a', [{ ...bad, peerId: '' }]), invalid)
      assert.equal(await dir.peer('peer-b'), undefined, 'nothing of a refused announce was kept')
    })

    it('bad bytes reported by distinct live peers ban a peer: never answered, its announces refused, across leave and re-join', async (t) => {
      const dir = await open(t, { banAfterBadReporters: 2 })
      await dir.announce(entry('peer-bad'), [b1])
      await dir.announce(entry('peer-good'), [b1])
      await dir.announce(entry('reporter-1'), [])
      await dir.announce(entry('reporter-2'), [])
      assert.deepEqual(await dir.report('reporter-1', [{ ...bad, peerId: 'peer-bad' }]), [])
      assert.deepEqual(await dir.report('reporter-1', [{ ...bad, peerId: 'peer-bad' }]), [], 'one reporter is not enough')
      assert.equal((await dir.peer('peer-bad'))?.banned, false)
      assert.deepEqual(await dir.report('reporter-2', [{ ...bad, peerId: 'peer-bad' }]), ['peer-bad'])
      assert.equal((await dir.peer('peer-bad'))?.banned, true)
      assert.deepEqual(peers(await dir.lookup(b1, { max: 8 })), ['peer-good'])
      assert.deepEqual(await dir.announce(entry('peer-bad'), [b2]), { accepted: 0, refused: 1, banned: true })
      await dir.leave('peer-bad')
      assert.deepEqual(await dir.announce(entry('peer-bad'), [b1]), { accepted: 0, refused: 1, banned: true })
      assert.deepEqual(peers(await dir.lookup(b1, { max: 8 })), ['peer-good'])
      assert.equal((await dir.stats()).banned, 1)
    })

    it('a ban ends after banMs', async (t) => {
      const dir = await open(t, { banAfterBadReporters: 1, banMs: 700 })
      await dir.announce(entry('peer-a'), [b1])
      await dir.announce(entry('reporter'), [])
      assert.deepEqual(await dir.report('reporter', [{ ...bad, peerId: 'peer-a' }]), ['peer-a'])
      assert.equal((await dir.announce(entry('peer-a'), [b1])).banned, true)
      await sleep(900)
      assert.deepEqual(await dir.announce(entry('peer-a'), [b1]), { accepted: 1, refused: 0, banned: false })
      assert.deepEqual(peers(await dir.lookup(b1)), ['peer-a'])
    })

    it('reports are heard only from live, unbanned reporters, and never about the reporter itself', async (t) => {
      const dir = await open(t, { banAfterBadReporters: 1 })
      await dir.announce(entry('peer-a'), [b1])
      await dir.announce(entry('peer-b'), [b1])
      await dir.announce(entry('peer-c'), [b1])
      assert.deepEqual(await dir.report('stranger', [{ ...bad, peerId: 'peer-a' }]), [], 'not registered')
      assert.deepEqual(await dir.report('peer-a', [{ ...bad, peerId: 'peer-a' }]), [], 'about itself')
      assert.equal((await dir.peer('peer-a'))?.banned, false)
      assert.deepEqual(await dir.report('peer-b', [{ ...bad, peerId: 'peer-c' }]), ['peer-c'])
      assert.deepEqual(await dir.report('peer-c', [{ ...bad, peerId: 'peer-a' }]), [], 'a banned reporter')
      assert.equal((await dir.peer('peer-a'))?.banned, false)
      assert.deepEqual(await dir.report('peer-b', [{ ...bad, peerId: 'nobody' }]), [], 'about a peer never seen')
      assert.equal((await dir.stats()).banned, 1)
    })

    it('ranking: an idle holder ranks above a busy one', async (t) => {
      const dir = await open(t)
      await dir.announce(entry('peer-busy', { uploadSlots: 4, uploadBps: 10e6 }), [b1])
      await dir.announce(entry('peer-idle', { uploadSlots: 4, uploadBps: 10e6 }), [b1])
      await dir.heartbeat('peer-busy', { activeUploads: 4, recentUploadBps: 10e6 }, 15_000)
      await dir.heartbeat('peer-idle', { activeUploads: 0, recentUploadBps: 0 }, 15_000)
      for (let i = 0; i < 8; i++) assert.equal((await dir.lookup(b1))[0].peerId, 'peer-idle')
    })

    it("ranking: a holder in the asker's zone ranks above a distant one", async (t) => {
      const dir = await open(t)
      await dir.announce(entry('peer-far', { zone: 'us|nyc|r1' }), [b1])
      await dir.announce(entry('peer-near', { zone: 'eu|fra|r1' }), [b1])
      await dir.announce(entry('asker', { zone: 'eu|fra|r7' }), [])
      for (let i = 0; i < 4; i++) assert.equal((await dir.lookup(b1, { askerZone: 'EU|fra' }))[0].peerId, 'peer-near')
      for (let i = 0; i < 4; i++) assert.equal((await dir.lookup(b1, { asker: 'asker' }))[0].peerId, 'peer-near', "the asker's announced zone")
      assert.equal((await dir.lookup(b1, { asker: 'asker', askerZone: 'us|nyc' }))[0].peerId, 'peer-far', 'an explicit zone wins')
    })

    it('ranking: a holder others reported failing ranks below a reliable one', async (t) => {
      const dir = await open(t)
      await dir.announce(entry('peer-flaky'), [b1])
      await dir.announce(entry('peer-solid'), [b1])
      await dir.announce(entry('reporter'), [])
      await dir.report('reporter', [
        ...Array.from({ length: 5 }, () => ({ ...failed, peerId: 'peer-flaky' })),
        ...Array.from({ length: 5 }, () => ({ ...ok(4, 40), peerId: 'peer-solid' }))
      ])
      for (let i = 0; i < 6; i++) assert.equal((await dir.lookup(b1))[0].peerId, 'peer-solid')
    })

    it('near-equal holders share the load: successive answers lead with different holders', async (t) => {
      const dir = await open(t)
      for (let i = 0; i < 4; i++) await dir.announce(entry(`peer-${i}`), [b1])
      const firsts = new Set<string>()
      for (let i = 0; i < 40; i++) firsts.add((await dir.lookup(b1, { max: 1 }))[0].peerId)
      assert.ok(firsts.size >= 3, `answers led with ${[...firsts].join(', ')}`)
    })

    it('stats count live peers, blobs and records', async (t) => {
      const dir = await open(t)
      await dir.announce(entry('peer-a'), [b1, b2, b3])
      await dir.announce(entry('peer-b'), [b1, b2])
      await dir.announce(entry('peer-c'), [b1])
      assert.deepEqual(await dir.stats(), { peers: 3, blobs: 3, entries: 6, banned: 0 })
      assert.equal((await dir.peer('peer-a'))?.blobs, 3)
    })

    it('an aborted signal rejects the call with its reason', async (t) => {
      const dir = await open(t)
      const ac = new AbortController()
      ac.abort()
      await assert.rejects(dir.lookup(b1, { signal: ac.signal }), { name: 'AbortError' })
      await assert.rejects(dir.announce(entry('peer-a'), [b1], { signal: ac.signal }), { name: 'AbortError' })
      assert.equal(await dir.peer('peer-a'), undefined)
    })

    groupCases({ open, entry, blobId })
    swarmCases({ open, entry, blobId })

    it('a closed directory rejects every call', async (t) => {
      const dir = await make({})
      await dir.announce(entry('peer-a'), [b1])
      await dir.close()
      const closed = 'RAFSPEER_ERR_DIRECTORY_CLOSED'
      await rejectsWith(dir.lookup(b1), closed)
      await rejectsWith(dir.lookupGroup(b1, { group: 4 }), closed)
      await rejectsWith(dir.announce(entry('peer-a'), [b1]), closed)
      await rejectsWith(dir.heartbeat('peer-a', { activeUploads: 0, recentUploadBps: 0 }, 1000), closed)
      await rejectsWith(dir.stats(), closed)
      await dir.close()
    })
  })
}
