/**
 * One blob's fetch, with a real blob cache and fetch pipeline and scripted sources: the upstream's stream (cut,
 * wrong), neighbours' piece maps (honest, growing, forged, of the wrong size, gone silent) and neighbours' pieces.
 * Pinned: what may leave and when (the last byte only after the digest matched; nothing of a lent map before),
 * resumes, bans, the restart from the upstream alone after a forged map, and what ends up confirmed.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { BlobCache } from '../cache/index.js'
import { Fetcher, type ChunkSource, type FetchedChunk } from '../peer/index.js'
import type { ChunkHolder } from '../p2p/index.js'
import type { ChunkInfo } from '../rafs/index.js'
import { BlobJob, type MapLenders, type UpstreamOpener } from './blob-job.js'
import { pieceDigest, pieceLayout, type PieceLayout } from './piece-map.js'
import { PieceFetch } from './pieces.js'

const P = 64 << 10
const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`
const digestsOf = (b: Buffer): Buffer[] => {
  const out: Buffer[] = []
  for (let at = 0; at < b.length; at += P) out.push(pieceDigest(b.subarray(at, Math.min(b.length, at + P))))
  return out
}

/** Pieces by digest, as neighbours would hand them out. */
class PieceSource implements ChunkSource {
  readonly pieces = new Map<string, Buffer>()
  served = 0
  constructor (readonly name: string) {}
  add (bytes: Buffer): void {
    for (let at = 0; at < bytes.length; at += P) {
      const piece = bytes.subarray(at, Math.min(bytes.length, at + P))
      this.pieces.set(pieceDigest(piece).toString('hex'), piece)
    }
  }

  async * fetch (_blob: unknown, chunks: ChunkInfo[]): AsyncGenerator<FetchedChunk> {
    for (const chunk of chunks) {
      const p = this.pieces.get(chunk.digest.toString('hex'))
      if (p === undefined) continue
      this.served++
      yield { chunk, plaintext: Buffer.from(p) }
    }
  }
}

/** The upstream by Range, for single pieces the pipeline falls back to. */
class RangeSource implements ChunkSource {
  readonly name = 'registry'
  served = 0
  constructor (private readonly blob: Buffer) {}
  async * fetch (_blob: unknown, chunks: ChunkInfo[]): AsyncGenerator<FetchedChunk> {
    for (const chunk of chunks) {
      this.served++
      yield { chunk, plaintext: Buffer.from(this.blob.subarray(chunk.compressedOffset, chunk.compressedOffset + chunk.compressedSize)) }
    }
  }
}

/** The upstream's stream: `body` from `offset`, cut once at `cutAt` if given. */
function upstream (body: Buffer, opts: { cutAt?: number, size?: number } = {}): UpstreamOpener & { opens: number[] } {
  let cut = opts.cutAt
  const opens: number[] = []
  return {
    opens,
    open: async (offset) => {
      opens.push(offset)
      const stop = cut !== undefined && cut > offset ? cut : body.length
      const wasCut = stop < body.length
      if (wasCut) cut = undefined
      async function * gen (): AsyncGenerator<Buffer> {
        for (let at = offset; at < stop; at += 10_000) yield body.subarray(at, Math.min(stop, at + 10_000))
        if (wasCut) throw Object.assign(new Error('socket hang up'), { code: 'RAFSPEER_ERR_REGISTRY_NETWORK' })
      }
      return { body: gen(), size: opts.size ?? body.length }
    }
  }
}

interface Kit {
  cache: BlobCache
  pieces: PieceFetch
  neighbours: PieceSource
  range: RangeSource
  confirmed: Array<{ layout: PieceLayout, digests: Buffer[] }>
  job: (opener: UpstreamOpener, lenders?: MapLenders, sizeHint?: number) => BlobJob
  stop: () => Promise<void>
}

async function kit (blob: Buffer): Promise<Kit> {
  const dir = await mkdtemp(join(tmpdir(), 'rafspeer-blob-job-'))
  const cache = await BlobCache.open(dir)
  const neighbours = new PieceSource('peer:test')
  const range = new RangeSource(blob)
  const fetcher = new Fetcher({ cache, sources: [neighbours, range] }, { retries: 0, deadlineMs: 5_000 })
  fetcher.start()
  const pieces = new PieceFetch({ fetcher, cache })
  const confirmed: Kit['confirmed'] = []
  return {
    cache, pieces, neighbours, range, confirmed,
    job: (opener, lenders, sizeHint) => new BlobJob({
      pieces, cache, upstream: opener, ...(lenders !== undefined ? { lenders } : {}),
      confirm: async (layout, digests) => { confirmed.push({ layout, digests: [...digests] }) }
    }, { digest: sha(blob), pieceBytes: P, ...(sizeHint !== undefined ? { sizeHint } : {}) }),
    stop: async () => { fetcher.stop(); await cache.close(); await rm(dir, { recursive: true, force: true }) }
  }
}

/** Reads the whole blob as a client would, noting the most it was ever allowed to take before the end. */
async function readAll (job: BlobJob): Promise<{ bytes: Buffer, releasedBeforeConfirm: number }> {
  const signal = AbortSignal.timeout(20_000)
  await job.sized(signal)
  const parts: Buffer[] = []
  let pos = 0
  let releasedBeforeConfirm = 0
  while (pos < job.size) {
    const limit = job.releasable()
    if (!job.confirmed) releasedBeforeConfirm = Math.max(releasedBeforeConfirm, limit)
    if (pos >= limit) { await job.wait(pos, signal); continue }
    const b = (await job.read(pos, signal)).subarray(0, limit - pos)
    parts.push(Buffer.from(b))
    pos += b.length
  }
  return { bytes: Buffer.concat(parts), releasedBeforeConfirm }
}

const holder = (peerId: string): ChunkHolder => ({ peerId, addrs: [] })

/** Lenders that hand out `maps[peerId]` in parts of `step` digests; `silentAfter` makes one throw after that many. */
function lenders (maps: Record<string, { size: number, digests: Buffer[] }>, opts: { step?: number, silentAfter?: number } = {}): MapLenders & { banned: string[], asks: number } {
  const banned: string[] = []
  const out = {
    banned,
    asks: 0,
    holders: async () => Object.keys(maps).map(holder),
    ask: async (h: ChunkHolder, first: number) => {
      out.asks++
      if (opts.silentAfter !== undefined && out.asks > opts.silentAfter) throw Object.assign(new Error('timeout'), { code: 'RAFSPEER_ERR_PROXY_MAP_PROTOCOL' })
      const m = maps[h.peerId]!
      const layout = pieceLayout('sha256:x', m.size, P)
      const digests = m.digests.slice(first, first + (opts.step ?? m.digests.length))
      return { layout, part: { size: m.size, pieceBytes: P, first, digests } }
    },
    ban: (peerId: string) => { banned.push(peerId) }
  }
  return out
}

test('from the upstream: streamed as it is hashed, the last byte held until the digest matched, cached and confirmed', async () => {
  const blob = randomBytes(5 * P + 1234)
  const k = await kit(blob)
  try {
    const job = k.job(upstream(blob))
    job.start()
    const { bytes, releasedBeforeConfirm } = await readAll(job)
    await job.done()
    assert.deepEqual(bytes, blob)
    assert.ok(releasedBeforeConfirm <= blob.length - 1)
    assert.equal(job.confirmed, true)
    assert.deepEqual(k.confirmed[0]!.digests, digestsOf(blob))
    assert.equal(job.counters.upstreamBytes, blob.length)
    assert.ok(k.cache.has(k.confirmed[0]!.layout.blobId, 5))
    const served = job.servable()
    assert.ok(served !== undefined && served !== 'pending')
    assert.deepEqual(served.digests, digestsOf(blob))
  } finally {
    await k.stop()
  }
})

test('an upstream body cut mid-way is resumed from where it stopped', async () => {
  const blob = randomBytes(4 * P)
  const k = await kit(blob)
  try {
    const up = upstream(blob, { cutAt: 100_000 })
    const job = k.job(up)
    job.start()
    assert.deepEqual((await readAll(job)).bytes, blob)
    assert.deepEqual(up.opens, [0, 100_000])
    assert.equal(job.counters.upstreamResumes, 1)
  } finally {
    await k.stop()
  }
})

test('an upstream that sends wrong bytes: the job fails, no client gets the last byte, the pieces are dropped', async () => {
  const blob = randomBytes(3 * P)
  const wrong = Buffer.from(blob)
  wrong[P + 5] ^= 1
  const k = await kit(blob)
  try {
    const job = k.job(upstream(wrong))
    job.start()
    await assert.rejects(readAll(job), (err: Error & { code?: string }) => err.code === 'RAFSPEER_ERR_PROXY_DIGEST')
    await job.done()
    assert.equal(job.confirmed, false)
    assert.equal(k.confirmed.length, 0)
    assert.equal(k.cache.has(pieceLayout(sha(blob), blob.length, P).blobId, 0), false)
  } finally {
    await k.stop()
  }
})

test('a neighbour\'s honest map: pieces from neighbours, nothing released before the digest matched', async () => {
  const blob = randomBytes(6 * P + 77)
  const k = await kit(blob)
  try {
    k.neighbours.add(blob)
    const up = upstream(blob)
    const l = lenders({ A: { size: blob.length, digests: digestsOf(blob) } }, { step: 2 })
    const job = k.job(up, l, blob.length)
    job.start()
    const { bytes, releasedBeforeConfirm } = await readAll(job)
    assert.deepEqual(bytes, blob)
    assert.equal(releasedBeforeConfirm, 0)
    assert.deepEqual(up.opens, [])
    assert.equal(k.neighbours.served, 7)
    assert.deepEqual(l.banned, [])
    assert.deepEqual([...job.sources], ['neighbours'])
  } finally {
    await k.stop()
  }
})

test('a forged map of the right size: its lender is banned and the blob comes again from the upstream alone', async () => {
  const blob = randomBytes(4 * P)
  const forged = Buffer.alloc(blob.length, 9)
  const k = await kit(blob)
  try {
    k.neighbours.add(forged)
    const up = upstream(blob)
    const l = lenders({ liar: { size: blob.length, digests: digestsOf(forged) } })
    const job = k.job(up, l, blob.length)
    job.start()
    // the client, reading all along, received exactly the blob: no byte of the forged one ever left
    assert.deepEqual((await readAll(job)).bytes, blob)
    assert.deepEqual(l.banned, ['liar'])
    assert.equal(job.counters.forgedMaps, 1)
    assert.deepEqual(up.opens, [0])
    assert.deepEqual(k.confirmed[0]!.digests, digestsOf(blob))
  } finally {
    await k.stop()
  }
})

test('a map whose size disagrees with the registry\'s: banned before a piece is fetched', async () => {
  const blob = randomBytes(3 * P)
  const k = await kit(blob)
  try {
    const l = lenders({ liar: { size: blob.length + P, digests: digestsOf(Buffer.alloc(blob.length + P)) } })
    const job = k.job(upstream(blob), l, blob.length)
    job.start()
    assert.deepEqual((await readAll(job)).bytes, blob)
    assert.deepEqual(l.banned, ['liar'])
    assert.equal(k.neighbours.served, 0)
  } finally {
    await k.stop()
  }
})

test('a lender that goes silent mid-map: the hashed prefix stays, the upstream gives the rest', async () => {
  const blob = randomBytes(8 * P)
  const k = await kit(blob)
  try {
    k.neighbours.add(blob)
    const up = upstream(blob)
    const l = lenders({ A: { size: blob.length, digests: digestsOf(blob) } }, { step: 3, silentAfter: 1 })
    const job = k.job(up, l, blob.length)
    job.start()
    assert.deepEqual((await readAll(job)).bytes, blob)
    assert.deepEqual(up.opens, [3 * P])
    assert.deepEqual(l.banned, [])
    assert.deepEqual([...job.sources].sort(), ['neighbours', 'upstream'])
    assert.deepEqual(k.confirmed[0]!.digests, digestsOf(blob))
  } finally {
    await k.stop()
  }
})

test('a piece no neighbour has comes from the upstream by Range, checked against the map', async () => {
  const blob = randomBytes(4 * P)
  const k = await kit(blob)
  try {
    k.neighbours.add(blob.subarray(0, 2 * P))
    const l = lenders({ A: { size: blob.length, digests: digestsOf(blob) } })
    const job = k.job(upstream(blob), l, blob.length)
    job.start()
    assert.deepEqual((await readAll(job)).bytes, blob)
    assert.equal(k.neighbours.served, 2)
    assert.equal(k.range.served, 2)
  } finally {
    await k.stop()
  }
})
