/**
 * The fetch pipeline against real registries (embedded and CNCF distribution) and hostile node:http ones:
 * laziness, correctness, batching, single-flight, verification, deadlines, cache failures, priorities.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { RegistryClient } from '../../registry/index.js'
import { startRegistryServer, type RegistryServer } from '../../registry/index.js'
import { distributionSkipReason, startDistribution, type Distribution } from '../../test/helpers/distribution.js'
import type { ChunkSource, ChunkSourceFetchOptions } from './source.js'
import type { ChunkInfo } from '../../rafs/index.js'
import { Fetcher } from './fetcher.js'
import { BlobCache } from '../../cache/index.js'
import { buildTestImage, chunksOf, startHostileRegistry, TestCache, CHUNK_SIZE, type TestImage } from '../../test/helpers/fetch-kit.js'
import type { FetcherInit } from './types.js'
import { RegistrySource } from './registry-source.js'

const distributionSkip = distributionSkipReason()

describe('Fetcher', () => {
  let img: TestImage
  let rawImg: TestImage
  let regRoot: string
  let reg: RegistryServer
  let dist: Distribution | undefined
  const client = new RegistryClient({ retries: 0, timeoutMs: 10_000 })
  let repoSeq = 0
  let cacheRoot: string
  const caches: BlobCache[] = []

  /** A fresh real BlobCache (LevelDB index + sparse blob files) knowing the blobs of `image`. */
  async function newCache (image: TestImage = img): Promise<TestCache> {
    const cache = await BlobCache.open(join(cacheRoot, `c${caches.length}`))
    caches.push(cache)
    for (const b of image.blobs) await cache.registerBlob(b)
    return new TestCache(cache)
  }

  before(async () => {
    img = await buildTestImage()
    rawImg = await buildTestImage({ compressor: 'none' })
    regRoot = await mkdtemp(join(tmpdir(), 'rafspeer-fetch-reg-'))
    cacheRoot = await mkdtemp(join(tmpdir(), 'rafspeer-fetch-cache-'))
    reg = await startRegistryServer({ root: regRoot })
    if (distributionSkip === undefined) dist = await startDistribution()
  })

  after(async () => {
    await reg?.stop()
    await dist?.stop()
    for (const c of caches) await c.close()
    await rm(regRoot, { recursive: true, force: true })
    await rm(cacheRoot, { recursive: true, force: true })
    await img?.cleanup()
    await rawImg?.cleanup()
    await client.close()
  })

  /** A fresh repository holding the image's blob, so its counters start at zero. */
  async function freshRepo (host = reg.host): Promise<{ ref: string, name: string }> {
    const name = `fetch/t${++repoSeq}`
    await client.pushBlob(`${host}/${name}`, `sha256:${img.blobId}`, img.blobSize, img.blobPath)
    return { ref: `${host}/${name}`, name }
  }

  async function fetcherFor (ref: string, init: FetcherInit = {}, given?: TestCache): Promise<{ fetcher: Fetcher, cache: TestCache }> {
    const cache = given ?? await newCache()
    const fetcher = new Fetcher({ cache, sources: [new RegistrySource({ client }, { repository: ref })] }, init)
    return { fetcher, cache }
  }

  const served = (name: string): { bytes: number, ranges: number } => {
    const c = reg.counters.snapshot()[name]
    return { bytes: c?.bytesServed ?? 0, ranges: c?.rangeRequests ?? 0 }
  }

  it('reading one small file fetches a small fraction of the blob', async () => {
    const { ref, name } = await freshRepo()
    const { fetcher } = await fetcherFor(ref)
    const got = await fetcher.read(img, img.reader.lookup('/small.txt'), 0, 1 << 20)
    assert.deepEqual(got, img.files['/small.txt'])
    const s = served(name)
    assert.ok(s.ranges >= 1)
    assert.ok(s.bytes < img.blobSize / 3, `served ${s.bytes} of a ${img.blobSize}-byte blob`)
    const inner = await fetcher.read(img, img.reader.lookup('/dir/c.bin'), 70_000, 10)
    assert.deepEqual(inner, img.files['/dir/c.bin']!.subarray(70_000, 70_010))
    assert.ok(served(name).bytes < img.blobSize / 2)
  })

  async function readsEqualSource (ref: string): Promise<Fetcher> {
    const { fetcher } = await fetcherFor(ref, { amplifyBytes: 256 << 10 })
    // odd ranges first (chunk-crossing, partial), then whole files
    for (const [path, bytes] of Object.entries(img.files)) {
      const nid = img.reader.lookup(path)
      for (const [off, len] of [[1, 100], [CHUNK_SIZE - 7, 20], [bytes.length - 5, 100], [12345, 3 * CHUNK_SIZE]] as const) {
        if (off < 0 || off >= bytes.length) continue
        assert.deepEqual(await fetcher.read(img, nid, off, len), bytes.subarray(off, off + len), `${path} @${off}+${len}`)
      }
    }
    await Promise.all(Object.entries(img.files).map(async ([path, bytes]) => {
      assert.deepEqual(await fetcher.read(img, img.reader.lookup(path), 0, bytes.length + 1000), bytes, path)
    }))
    assert.equal((await fetcher.read(img, img.reader.lookup('/a.bin'), 5 << 20, 10)).length, 0)
    return fetcher
  }

  it('full reads equal the source bytes (embedded registry); a second pass is served from the cache', async () => {
    const { ref, name } = await freshRepo()
    const fetcher = await readsEqualSource(ref)
    const before = served(name)
    assert.ok(before.bytes <= img.blobSize, `each chunk fetched once: ${before.bytes} ≤ ${img.blobSize}`)
    for (const [path, bytes] of Object.entries(img.files)) {
      assert.deepEqual(await fetcher.read(img, img.reader.lookup(path), 0, bytes.length), bytes)
    }
    assert.deepEqual(served(name), before)
    const c = fetcher.counters
    assert.ok(c.bytesBySource.cache > 0)
    assert.ok(c.bytesBySource.registry > 0)
    assert.equal(c.verifyFailures, 0)
    assert.ok(fetcher.drainSamples().every(s => s.ok && s.source === 'registry'))
  })

  it('full reads equal the source bytes (CNCF distribution registry)', { skip: distributionSkip }, async () => {
    const { ref } = await freshRepo(dist!.host)
    const fetcher = await readsEqualSource(ref)
    assert.ok(fetcher.counters.bytesBySource.registry > 0)
  })

  it('batches adjacent chunks into few Range requests, and amplifies small sequential reads', async () => {
    const { ref, name } = await freshRepo()
    const { fetcher } = await fetcherFor(ref, { amplifyBytes: 0 })
    const a = img.files['/a.bin']!
    assert.equal(chunksOf(img, '/a.bin').length, 16)
    assert.deepEqual(await fetcher.read(img, img.reader.lookup('/a.bin'), 0, a.length), a)
    assert.equal(served(name).ranges, 1, '16 adjacent chunks in one request')

    // 64 KiB sequential reads of /f.bin: one request each without amplification...
    const f = img.files['/f.bin']!
    const nidF = img.reader.lookup('/f.bin')
    for (let off = 0; off < f.length; off += CHUNK_SIZE) {
      assert.deepEqual(await fetcher.read(img, nidF, off, CHUNK_SIZE), f.subarray(off, off + CHUNK_SIZE))
    }
    assert.equal(served(name).ranges, 1 + 16)

    // ...one for all with 1 MiB amplification
    const other = await freshRepo()
    const amp = await (await fetcherFor(other.ref)).fetcher
    for (let off = 0; off < f.length; off += CHUNK_SIZE) {
      assert.deepEqual(await amp.read(img, nidF, off, CHUNK_SIZE), f.subarray(off, off + CHUNK_SIZE))
    }
    assert.equal(served(other.name).ranges, 1)
    assert.ok(amp.counters.chunksAmplified >= 15)
    assert.equal(amp.counters.chunksFetched, 16)
    assert.equal(amp.counters.singleFlightJoins + amp.counters.chunksFromCache, 15, 'later reads joined or hit the cache')
  })

  it('single-flight: concurrent reads of one chunk share one request', async () => {
    const { ref, name } = await freshRepo()
    const { fetcher } = await fetcherFor(ref, { amplifyBytes: 0 })
    const nid = img.reader.lookup('/dir/c.bin')
    const c = img.files['/dir/c.bin']!
    const [x, y, z] = await Promise.all([
      fetcher.read(img, nid, 0, 4096),
      fetcher.read(img, nid, 100, 4096),
      fetcher.read(img, nid, 1000, 10)
    ])
    assert.deepEqual(x, c.subarray(0, 4096))
    assert.deepEqual(y, c.subarray(100, 4196))
    assert.deepEqual(z, c.subarray(1000, 1010))
    assert.equal(served(name).ranges, 1)
    assert.equal(fetcher.counters.singleFlightJoins, 2)
    assert.equal(fetcher.counters.chunksFetched, 1)

    // overlapping multi-chunk reads: the shared chunk is fetched once
    const [p, q] = await Promise.all([
      fetcher.read(img, nid, CHUNK_SIZE, 2 * CHUNK_SIZE),
      fetcher.read(img, nid, 2 * CHUNK_SIZE, 2 * CHUNK_SIZE)
    ])
    assert.deepEqual(p, c.subarray(CHUNK_SIZE, 3 * CHUNK_SIZE))
    assert.deepEqual(q, c.subarray(2 * CHUNK_SIZE, 4 * CHUNK_SIZE))
    assert.equal(fetcher.counters.chunksFetched, 4)
  })

  it('a registry sending wrong bytes: digest mismatch, nothing cached, nothing returned', async () => {
    const hostile = await startHostileRegistry(rawImg.blobPath, 'flip')
    try {
      const cache = await newCache(rawImg)
      const zCache = await newCache(img)
      const fetcher = new Fetcher({ cache, sources: [new RegistrySource({ client }, { repository: `${hostile.host}/evil` })] },
        { retries: 1, retryBaseMs: 10 })
      await assert.rejects(fetcher.read(rawImg, rawImg.reader.lookup('/a.bin'), 0, 100), { code: 'RAFSPEER_ERR_DIGEST_MISMATCH' })
      assert.equal(hostile.requests, 2, 'one attempt and one retry')
      assert.equal(cache.puts, 0)
      assert.equal(cache.present(rawImg.blobs[0]!), 0)
      assert.ok(fetcher.counters.verifyFailures >= 2)
      assert.equal(fetcher.counters.bytesBySource.registry, 0)

      // compressed chunks flipped: whatever fails first (decompression or digest), nothing gets through
      const z = new Fetcher({ cache: zCache, sources: [new RegistrySource({ client }, { repository: `${hostile.host}/evil` })] }, { retries: 0 })
      const zHostile = await startHostileRegistry(img.blobPath, 'flip')
      try {
        const zf = new Fetcher({ cache: zCache, sources: [new RegistrySource({ client }, { repository: `${zHostile.host}/evil` })] }, { retries: 0 })
        await assert.rejects(zf.read(img, img.reader.lookup('/b.bin'), 0, 100),
          (err: { code?: string }) => ['RAFSPEER_ERR_DIGEST_MISMATCH', 'RAFSPEER_ERR_BAD_FORMAT'].includes(err.code ?? ''))
        assert.equal(zCache.puts, 0)
        assert.equal(zCache.present(img.blobs[0]!), 0)
      } finally {
        await zHostile.stop()
      }
      z.stop()
    } finally {
      await hostile.stop()
    }
  })

  it('a lying source is skipped: the next source serves verified bytes', async () => {
    const { ref } = await freshRepo()
    const liar: ChunkSource = {
      name: 'peer:liar',
      async * fetch (_blob, chunks) {
        for (const chunk of chunks) yield { chunk, plaintext: Buffer.alloc(chunk.uncompressedSize, 7) }
      }
    }
    const cache = await newCache()
    const fetcher = new Fetcher({ cache, sources: [liar, new RegistrySource({ client }, { repository: ref })] })
    const b = img.files['/b.bin']!
    assert.deepEqual(await fetcher.read(img, img.reader.lookup('/b.bin'), 0, b.length), b)
    const c = fetcher.counters
    assert.equal(c.verifyFailures, 1)
    assert.equal(c.bytesBySource.peer, 0)
    assert.ok(c.bytesBySource.registry >= b.length)
    await new Promise(resolve => setTimeout(resolve, 50))
    const nid = img.reader.lookup('/b.bin')
    for (const p of img.reader.mapRange(nid, 0, b.length)) {
      const cached = await cache.readChunk(img.blobId, p.chunk, { verify: true })
      assert.ok(cached !== undefined, `chunk ${p.chunk.index} cached`)
      assert.deepEqual(cached.subarray(p.chunkOffset, p.chunkOffset + p.length), b.subarray(p.fileOffset, p.fileOffset + p.length))
    }
  })

  it('a source with an idle factor is given that many idle deadlines before the next source is asked', async () => {
    const { ref } = await freshRepo()
    const b = img.files['/b.bin']!
    const waited: number[] = []
    // a source that never sends (neighbours all waiting on someone's registry fetch) until the fetcher gives up on it
    const patient = (idleFactor?: number): ChunkSource => ({
      name: 'peer:waiting',
      ...(idleFactor !== undefined ? { idleFactor } : {}),
      async * fetch (_blob, _chunks, opts) {
        const t0 = performance.now()
        await new Promise<void>(resolve => { opts.signal.addEventListener('abort', () => resolve(), { once: true }) })
        waited.push(performance.now() - t0)
        opts.signal.throwIfAborted()
      }
    })
    for (const [factor, deadlineMs] of [[undefined, 10_000], [3, 10_000], [3, 500]] as const) {
      const cache = await newCache()
      const fetcher = new Fetcher({ cache, sources: [patient(factor), new RegistrySource({ client }, { repository: ref })] }, { timeoutMs: 200, retries: 0, deadlineMs, readHandOffMs: Infinity })
      assert.deepEqual(await fetcher.read(img, img.reader.lookup('/b.bin'), 0, b.length), b)
      assert.ok(fetcher.counters.bytesBySource.registry >= b.length)
      fetcher.stop()
    }
    assert.equal(waited.length, 3, `waited: ${waited.join(", ")}`)
    assert.ok(waited[0]! >= 190 && waited[0]! < 590, `one deadline: ${waited[0]} ms`)
    assert.ok(waited[1]! >= 590, `three deadlines: ${waited[1]} ms`)
    // a read's deadline of 500 ms leaves the registry one deadline (200 ms): the source gets 300, not 600
    assert.ok(waited[2]! >= 290 && waited[2]! < 590, `capped by the read's deadline: ${waited[2]} ms`)
  })

  /** neighbours that never send; the first `growFor` looks at each chunk find one more holder than the last */
  function heldButSpreading (growFor: number): { source: ChunkSource, looks: Map<number, number>, waited: () => number } {
    const looks = new Map<number, number>()
    let waitedMs = 0
    const source: ChunkSource = {
      name: 'peer:waiting',
      async * fetch (_blob, _chunks, opts) {
        const t0 = performance.now()
        opts.holders?.(c => {
          const n = (looks.get(c.index) ?? 0) + 1
          looks.set(c.index, n)
          return Math.min(n, growFor)
        })
        await new Promise<void>(resolve => { opts.signal.addEventListener('abort', () => resolve(), { once: true }) })
        waitedMs = performance.now() - t0
        opts.signal.throwIfAborted()
      }
    }
    return { source, looks, waited: () => waitedMs }
  }

  it('a source whose chunks spread meanwhile (more holders) has its idle deadline started over; then the next source', async () => {
    const { ref } = await freshRepo()
    const b = img.files['/b.bin']!
    const bChunks = chunksOf(img, '/b.bin')
    const held = heldButSpreading(2)
    const fetcher = new Fetcher({ cache: await newCache(), sources: [held.source, new RegistrySource({ client }, { repository: ref })] },
      { amplifyBytes: 0, timeoutMs: 150, retries: 0, readHandOffMs: Infinity })
    assert.deepEqual(await fetcher.read(img, img.reader.lookup('/b.bin'), 0, b.length), b)
    assert.deepEqual([...held.looks.keys()].sort((x, y) => x - y), bChunks.map(c => c.index), 'asked about the chunks awaited')
    assert.ok([...held.looks.values()].every(n => n === 3), 'looked at each deadline: holders 1, 2, 2 — two extensions, then given up')
    assert.ok(held.waited() >= 440 && held.waited() < 1_500, `three deadlines of 150 ms: ${held.waited()} ms`)
    assert.equal(fetcher.counters.idleExtensions, 2)
    assert.equal(fetcher.counters.bytesBySource.registry, b.length)
    fetcher.stop()
  })

  it('a read\'s chunk spreading through the swarm is handed to the registry a quarter of readHandOffMs later', async () => {
    const { ref } = await freshRepo()
    const b = img.files['/b.bin']!
    const bChunks = chunksOf(img, '/b.bin')
    const held = heldButSpreading(3)
    const fetcher = new Fetcher({ cache: await newCache(), sources: [held.source, new RegistrySource({ client }, { repository: ref })] },
      { amplifyBytes: 0, timeoutMs: 60_000, readHandOffMs: 200 })
    const t0 = performance.now()
    assert.deepEqual(await fetcher.read(img, img.reader.lookup('/b.bin'), 0, b.length), b)
    const took = performance.now() - t0
    // looked at 200 ms (1 holder: spreading), handed off at 250 all the same
    assert.ok(took >= 240 && took < 3_000, `handed off a quarter later: ${took} ms`)
    assert.ok([...held.looks.values()].every(n => n === 1), JSON.stringify([...held.looks]))
    assert.equal(fetcher.counters.readHandOffs, bChunks.length)
    assert.equal(fetcher.counters.idleExtensions, 0)
    fetcher.stop()
  })

  it('chunks a source declines go to the next source at once, while it is still busy with the rest', async () => {
    const { ref } = await freshRepo()
    const b = img.files['/b.bin']!
    const nid = img.reader.lookup('/b.bin')
    const pieces = img.reader.mapRange(nid, 0, b.length)
    assert.ok(pieces.length >= 2)
    const first = pieces[0]!.chunk.index
    let release!: () => void
    const held = new Promise<void>(resolve => { release = resolve })
    let declinedAt = 0
    // holds the first chunk until the registry has delivered the ones it declined: with a sequential hand-over
    // (the registry only after this source is done) the read could never finish
    const neighbours: ChunkSource = {
      name: 'peer:swarm',
      async * fetch (_blob, chunks, opts) {
        const rest = chunks.filter(c => c.index !== first)
        declinedAt = performance.now()
        opts.decline?.(rest)
        await held
        const c = chunks.find(x => x.index === first)
        if (c !== undefined) yield { chunk: c, plaintext: b.subarray(0, c.uncompressedSize) }
      }
    }
    const registry = new RegistrySource({ client }, { repository: ref })
    const watched: ChunkSource = {
      name: 'registry',
      async * fetch (blob, chunks, opts) {
        assert.ok(chunks.every(c => c.index !== first), 'the registry is not asked for what the neighbour kept')
        for await (const got of registry.fetch(blob, chunks, opts)) yield got
        release()
      }
    }
    const cache = await newCache()
    const fetcher = new Fetcher({ cache, sources: [neighbours, watched] }, { amplifyBytes: 0 })
    assert.deepEqual(await fetcher.read(img, nid, 0, b.length), b)
    assert.ok(declinedAt > 0)
    const c = fetcher.counters
    assert.equal(c.bytesBySource.peer, pieces[0]!.chunk.uncompressedSize)
    assert.equal(c.bytesBySource.registry, b.length - pieces[0]!.chunk.uncompressedSize)
  })

  it('a chunk a read waited for readHandOffMs on the neighbours is asked of the registry too; a prefetch\'s is not', async () => {
    const { ref } = await freshRepo()
    const blob = img.blobs[0]!
    const b = img.files['/b.bin']!
    const bChunks = chunksOf(img, '/b.bin')
    const e = chunksOf(img, '/e.bin')
    assert.ok(bChunks.length >= 2 && e.length >= 3)
    const registry = new RegistrySource({ client }, { repository: ref })
    const toRegistry: number[] = []
    const watched: ChunkSource = {
      name: 'registry',
      async * fetch (bl, chunks, o) {
        toRegistry.push(...chunks.map(c => c.index))
        for await (const got of registry.fetch(bl, chunks, o)) yield got
      }
    }
    // neighbours that hold every request until released (peers waiting on each other's PENDING), then send it all
    let release!: () => void
    const held = new Promise<void>(resolve => { release = resolve })
    const calls: Array<{ opts: ChunkSourceFetchOptions, chunks: ChunkInfo[], ended: boolean }> = []
    const neighbours: ChunkSource = {
      name: 'peer:swarm',
      async * fetch (bl, chunks, o) {
        const call = { opts: o, chunks, ended: false }
        calls.push(call)
        try {
          await Promise.race([held, new Promise((_resolve, reject) => { o.signal.addEventListener('abort', () => { reject(o.signal.reason) }, { once: true }) })])
          for await (const got of registry.fetch(bl, chunks, o)) yield got
        } finally { call.ended = true }
      }
    }
    const fetcher = new Fetcher({ cache: await newCache(), sources: [neighbours, watched] }, { amplifyBytes: 0, readHandOffMs: 200 })
    // a read alone: its chunks go to the registry after 200 ms, and the neighbours' attempt ends
    const t0 = performance.now()
    assert.deepEqual(await fetcher.read(img, img.reader.lookup('/b.bin'), 0, b.length), b)
    const took = performance.now() - t0
    assert.ok(took >= 190 && took < 3_000, `served after the hand-off: ${took} ms`)
    assert.deepEqual(toRegistry.sort((x, y) => x - y), bChunks.map(c => c.index))
    assert.equal(fetcher.counters.readHandOffs, bChunks.length)
    await new Promise(resolve => setTimeout(resolve, 20))
    assert.ok(calls[0]!.ended, 'every chunk gone: the neighbours were let go')
    assert.ok(bChunks.every(c => calls[0]!.opts.withdrawn!(c)))
    // a prefetch waits on the neighbours as long as they take ...
    toRegistry.length = 0
    const prefetch = fetcher.ensureChunks(blob, e)
    await new Promise(resolve => setTimeout(resolve, 500))
    assert.deepEqual(toRegistry, [], 'no read waits: nothing handed off')
    const call = calls[1]!
    assert.deepEqual(call.chunks.map(c => c.index), e.map(c => c.index))
    // ... until a read joins one of its chunks: that one alone goes to the registry too
    const nid = img.reader.lookup('/e.bin')
    const want = img.reader.mapRange(nid, 0, 1).map(p => p.chunk.index)
    const t1 = performance.now()
    assert.deepEqual(await fetcher.read(img, nid, 0, 1), img.files['/e.bin']!.subarray(0, 1))
    const waited = performance.now() - t1
    assert.ok(waited >= 190 && waited < 3_000, `the read waited ${waited} ms`)
    assert.deepEqual(toRegistry, want)
    assert.ok(!call.ended, 'the prefetch\'s other chunks still wait on the neighbours')
    assert.ok(call.opts.withdrawn!(e.find(c => c.index === want[0])!) && !call.opts.withdrawn!(e.find(c => c.index !== want[0])!))
    // the neighbours send everything, the handed-off chunk too: taken once, no error
    release()
    await prefetch
    const c = fetcher.counters
    assert.equal(c.readHandOffs, bChunks.length + want.length)
    assert.equal(c.verifyFailures, 0)
    assert.equal(c.bytesBySource.peer, e.filter(x => !want.includes(x.index)).reduce((n, x) => n + x.uncompressedSize, 0))
    fetcher.stop()
  })

  it('a registry that keeps sending, slowly: the idle deadline counts bytes, not whole chunks', async () => {
    const slow = await startHostileRegistry(img.blobPath, 'trickle')
    try {
      const cache = await newCache()
      const source = new RegistrySource({ client }, { repository: `${slow.host}/slow` })
      // one chunk takes ~0.6 s to arrive, 2 KiB every 20 ms: far past the 150 ms idle deadline as a whole
      const fetcher = new Fetcher({ cache, sources: [source] }, { timeoutMs: 150, retries: 0, amplifyBytes: 0, deadlineMs: 10_000 })
      const nid = img.reader.lookup('/e.bin')
      const got = await fetcher.read(img, nid, 0, 4096)
      assert.deepEqual(got, img.files['/e.bin']!.subarray(0, 4096))
      assert.equal(slow.requests, 1)
      assert.equal(fetcher.counters.sourceAttempts, 1)
      assert.equal(fetcher.counters.chunksFetched, 1)
    } finally {
      await slow.stop()
    }
  })

  it('a stalling registry: the read rejects with RAFSPEER_ERR_READ_TIMEOUT in bounded time', async () => {
    const stall = await startHostileRegistry(img.blobPath, 'stall')
    try {
      const cache = await newCache()
      const source = new RegistrySource({ client }, { repository: `${stall.host}/slow` })
      const deadlineMs = 300
      const retryStalledAfterMs = 400
      const fetcher = new Fetcher({ cache, sources: [source] }, { deadlineMs, timeoutMs: 60_000, retries: 3, retryStalledAfterMs })
      const t0 = performance.now()
      // a second read of the same chunk starting half-way waits for what is left of the chunk's deadline only
      const late = (async () => {
        await new Promise(resolve => setTimeout(resolve, deadlineMs / 2))
        const t = performance.now()
        await assert.rejects(fetcher.read(img, img.reader.lookup('/e.bin'), 0, 100), { code: 'RAFSPEER_ERR_READ_TIMEOUT' })
        return performance.now() - t
      })()
      await assert.rejects(fetcher.read(img, img.reader.lookup('/e.bin'), 0, 4096), { code: 'RAFSPEER_ERR_READ_TIMEOUT' })
      const elapsed = performance.now() - t0
      assert.ok(elapsed >= deadlineMs - 20 && elapsed < 10 * deadlineMs, `rejected after ${elapsed} ms`)
      const lateMs = await late
      assert.ok(lateMs < deadlineMs * 0.5 + 100, `the later read waited ${lateMs} ms, not the chunk's remaining ${deadlineMs / 2} ms`)
      assert.equal(cache.present(img.blobs[0]!), 0)
      // the kernel retries the page at once: the chunk just missed its deadline, so the retry fails at once
      const tRetry = performance.now()
      await assert.rejects(fetcher.read(img, img.reader.lookup('/e.bin'), 0, 4096), { code: 'RAFSPEER_ERR_READ_TIMEOUT' })
      assert.ok(performance.now() - tRetry < 100, `the retry took ${performance.now() - tRetry} ms`)
      assert.equal(fetcher.counters.readTimeouts, 3)
      assert.equal(stall.requests, 1)
      // later, a read tries again: the abandoned fetch was aborted, so a new request, not joining a dead one
      await new Promise(resolve => setTimeout(resolve, retryStalledAfterMs + 50))
      await assert.rejects(fetcher.read(img, img.reader.lookup('/e.bin'), 0, 4096, { deadlineMs: 200 }), { code: 'RAFSPEER_ERR_READ_TIMEOUT' })
      assert.equal(stall.requests, 2)

      // per-attempt timeouts shorter than the deadline: retries run out first, with a fetch error
      const quick = new Fetcher({ cache, sources: [source] }, { deadlineMs: 5000, timeoutMs: 100, retries: 1, retryBaseMs: 10 })
      const t1 = performance.now()
      await assert.rejects(quick.read(img, img.reader.lookup('/e.bin'), 0, 4096), { code: 'RAFSPEER_ERR_FETCH_FAILED' })
      assert.ok(performance.now() - t1 < 5000)
      assert.equal(quick.counters.sourceAttempts, 2)

      // the caller's own signal (once the chunk may be tried again)
      await new Promise(resolve => setTimeout(resolve, retryStalledAfterMs + deadlineMs))
      const ac = new AbortController()
      setTimeout(() => ac.abort(), 50)
      await assert.rejects(fetcher.read(img, img.reader.lookup('/e.bin'), 0, 4096, { signal: ac.signal }), { code: 'RAFSPEER_ERR_ABORTED' })

      // stop(): queued and running fetches end, their readers reject
      const one = new Fetcher({ cache, sources: [source] }, { concurrency: 1, amplifyBytes: 0 })
      const pending = [0, 1, 2].map(async k => await one.read(img, img.reader.lookup('/e.bin'), k * CHUNK_SIZE, 10))
      await new Promise(resolve => setTimeout(resolve, 50))
      one.stop()
      for (const p of pending) await assert.rejects(p, { code: 'RAFSPEER_ERR_ABORTED' })
    } finally {
      await stall.stop()
    }
  })

  it('a cache that cannot store (RAFSPEER_ERR_CACHE_FULL) does not fail the read', async () => {
    const { ref, name } = await freshRepo()
    const cache = await newCache()
    cache.failPut = Object.assign(new Error('no space left on the cache disk'), { code: 'RAFSPEER_ERR_CACHE_FULL' })
    const { fetcher } = await fetcherFor(ref, {}, cache)
    const b = img.files['/b.bin']!
    const nid = img.reader.lookup('/b.bin')
    assert.deepEqual(await fetcher.read(img, nid, 0, b.length), b)
    await new Promise(resolve => setImmediate(resolve))
    assert.ok(fetcher.counters.cachePutFailures >= chunksOf(img, '/b.bin').length)
    assert.equal(cache.present(img.blobs[0]!), 0)
    const first = served(name).bytes
    assert.deepEqual(await fetcher.read(img, nid, 0, b.length), b, 'served again, from the network')
    assert.ok(served(name).bytes > first)
  })

  it('prefetch: fills the cache; runs under its bandwidth cap; reads overtake it', async () => {
    const { ref, name } = await freshRepo()
    const blob = img.blobs[0]!
    const rate = 1 << 20
    const maxBatchBytes = 256 << 10
    const { fetcher, cache } = await fetcherFor(ref, { amplifyBytes: 0, concurrency: 2, maxBatchBytes, prefetchBytesPerSecond: rate })
    const e = chunksOf(img, '/e.bin')
    const f = chunksOf(img, '/f.bin')
    const t0 = performance.now()
    let prefetchDone = 0
    const prefetch = fetcher.ensureChunks(blob, [...e, ...f]).then(() => { prefetchDone = performance.now() })
    await new Promise(resolve => setTimeout(resolve, 100))
    const small = img.files['/small.txt']!
    assert.deepEqual(await fetcher.read(img, img.reader.lookup('/small.txt'), 0, small.length), small)
    const readDone = performance.now()
    assert.equal(prefetchDone, 0, 'the read finished while prefetch was still going')
    assert.ok(readDone - t0 < 1500, `read took ${readDone - t0} ms behind a prefetch`)
    await prefetch
    const bytes = [...e, ...f].reduce((n, c) => n + c.compressedSize, 0)
    // a 1 s burst, then the cap; the last batch may start on credit
    assert.ok(prefetchDone - t0 >= (bytes - rate - maxBatchBytes) / rate * 1000 * 0.9, `prefetch of ${bytes} B took ${prefetchDone - t0} ms`)
    for (const c of [...e, ...f]) assert.ok(cache.has(blob.blobId, c.index))
    const before = served(name)
    assert.deepEqual(await fetcher.read(img, img.reader.lookup('/e.bin'), 0, 3 << 20), img.files['/e.bin'])
    assert.deepEqual(served(name), before)
  })

  it('a read joining a prefetch\'s batch marks the chunks it waits for urgent to the source, until it is served', async () => {
    const { ref } = await freshRepo()
    const blob = img.blobs[0]!
    const e = chunksOf(img, '/e.bin')
    assert.ok(e.length >= 3)
    const registry = new RegistrySource({ client }, { repository: ref })
    let opts: ChunkSourceFetchOptions | undefined
    let asked: ChunkInfo[] = []
    let begun!: () => void
    const started = new Promise<void>(resolve => { begun = resolve })
    let release!: () => void
    const held = new Promise<void>(resolve => { release = resolve })
    const neighbours: ChunkSource = {
      name: 'peer:swarm',
      async * fetch (b, chunks, o) {
        opts = o
        asked = chunks
        begun()
        await held
        for await (const got of registry.fetch(b, chunks, o)) yield got
      }
    }
    const fetcher = new Fetcher({ cache: await newCache(), sources: [neighbours] }, { amplifyBytes: 0, maxBatchBytes: 64 << 20 })
    const prefetch = fetcher.ensureChunks(blob, e)
    await started
    assert.equal(asked.length, e.length, 'one batch')
    const urgent = (): number[] => asked.filter(c => opts!.urgent!(c)).map(c => c.index)
    assert.deepEqual(urgent(), [], 'a prefetch alone has nothing urgent')
    const nid = img.reader.lookup('/e.bin')
    const want = img.reader.mapRange(nid, 0, 1).map(p => p.chunk.index)
    const read = fetcher.read(img, nid, 0, 1)
    await new Promise(resolve => setTimeout(resolve, 50))
    assert.deepEqual(urgent(), want, 'the chunk the read waits for')
    release()
    assert.deepEqual(await read, img.files['/e.bin']!.subarray(0, 1))
    await prefetch
    assert.deepEqual(urgent(), [], 'served: urgent no more')
    assert.ok(fetcher.counters.readWaitMaxMs >= 45, `the read waited for the held batch: ${fetcher.counters.readWaitMaxMs} ms`)
    fetcher.stop()
  })

  it('a chunk held by another cached blob under the same digest is copied locally, never fetched', async () => {
    // img (zstd) and rawImg (none) hold the same files: same chunk digests, different blobs
    const { ref } = await freshRepo()
    const cache = await BlobCache.open(join(cacheRoot, `c${caches.length}`))
    caches.push(cache)
    for (const b of [...img.blobs, ...rawImg.blobs]) await cache.registerBlob(b)
    const warm = new Fetcher({ cache, sources: [new RegistrySource({ client }, { repository: ref })] })
    for (const path of Object.keys(img.files)) await warm.read(img, img.reader.lookup(path), 0, 8 << 20)
    // rawImg's blob is in no registry: every chunk must come from the local copy
    const { ref: empty } = { ref: `${reg.host}/fetch/nothing-here` }
    const fetcher = new Fetcher({ cache, sources: [new RegistrySource({ client }, { repository: empty })] }, { retries: 0 })
    for (const [path, bytes] of Object.entries(rawImg.files)) {
      assert.deepEqual(await fetcher.read(rawImg, rawImg.reader.lookup(path), 0, bytes.length), bytes, path)
    }
    const c = fetcher.counters
    assert.ok(c.chunksCopied > 0)
    assert.equal(c.chunksFetched, 0)
    assert.equal(c.bytesBySource.registry, 0)
    assert.equal(cache.isComplete(rawImg.blobs[0]!.blobId), true)
  })
})
