/**
 * RegistrySource against the embedded registry and the CNCF distribution registry: runs, ranges, decompression; and
 * against a registry that ignores Range (answers 200 with the whole blob): lazy reads stay correct and verified.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { digestChunk, type ChunkInfo } from '../../rafs/index.js'
import { RegistryClient, startRegistryServer, type RegistryServer } from '../../registry/index.js'
import { distributionSkipReason, startDistribution, type Distribution } from '../../test/helpers/distribution.js'
import { buildTestImage, chunksOf, MemoryChunkCache, CHUNK_SIZE, type TestImage } from '../../test/helpers/fetch-kit.js'
import { Fetcher } from './fetcher.js'
import { RegistrySource, spans } from './registry-source.js'
import { contiguousRuns } from './source.js'

const distributionSkip = distributionSkipReason()

function allChunks (img: TestImage): ChunkInfo[] {
  const blob = img.blobs[0]!
  return Array.from({ length: blob.chunkCount }, (_, ci) => img.reader.chunkInfo(0, ci))
}

async function collect (src: RegistrySource, img: TestImage, chunks: ChunkInfo[], signal = new AbortController().signal): Promise<Map<number, Buffer>> {
  const out = new Map<number, Buffer>()
  // the source only moves bytes: no verify of its own, the fetcher checks what it yields
  for await (const { chunk, plaintext } of src.fetch(img.blobs[0]!, chunks, { signal, verify: () => true })) {
    assert.ok(!out.has(chunk.index), `chunk ${chunk.index} yielded twice`)
    out.set(chunk.index, plaintext)
  }
  return out
}

describe('contiguousRuns', () => {
  const c = (index: number, compressedOffset: number, compressedSize: number): ChunkInfo =>
    ({ index, compressedOffset, compressedSize } as unknown as ChunkInfo)

  it('merges contiguous chunks, splits at gaps and at the size cap, drops duplicates', () => {
    const runs = contiguousRuns([c(2, 200, 100), c(0, 0, 100), c(1, 100, 100), c(1, 100, 100), c(4, 500, 50), c(5, 550, 500)], 500)
    assert.deepEqual(runs.map(r => [r.start, r.end, r.chunks.map(x => x.index)]), [[0, 300, [0, 1, 2]], [500, 550, [4]], [550, 1050, [5]]])
  })
})

describe('spans', () => {
  const run = (start: number, end: number): { start: number, end: number, chunks: ChunkInfo[] } =>
    ({ start, end, chunks: [{ index: start, compressedOffset: start, compressedSize: end - start } as unknown as ChunkInfo] })

  it('merges runs, gaps included, up to the cap', () => {
    const merged = spans([run(0, 100), run(200, 300), run(350, 600), run(900, 1000)], 600)
    assert.deepEqual(merged.map(r => [r.start, r.end, r.chunks.map(c => c.index)]), [[0, 600, [0, 200, 350]], [900, 1000, [900]]])
  })
})

describe('RegistrySource', () => {
  let img: TestImage
  let rawImg: TestImage
  let root: string
  let reg: RegistryServer
  let dist: Distribution | undefined
  const client = new RegistryClient({ retries: 0 })

  before(async () => {
    img = await buildTestImage()
    rawImg = await buildTestImage({ compressor: 'none' })
    root = await mkdtemp(join(tmpdir(), 'rafspeer-regsrc-'))
    reg = await startRegistryServer({ root })
    if (distributionSkip === undefined) dist = await startDistribution()
    for (const i of [img, rawImg]) await client.pushBlob(`${reg.host}/src/img`, `sha256:${i.blobId}`, i.blobSize, i.blobPath)
  })

  after(async () => {
    await reg?.stop()
    await dist?.stop()
    await rm(root, { recursive: true, force: true })
    await img?.cleanup()
    await rawImg?.cleanup()
    await client.close()
  })

  async function everyChunkVerifies (host: string): Promise<void> {
    for (const i of [img, rawImg]) {
      const src = new RegistrySource({ client }, { repository: `${host}/src/img` })
      const chunks = allChunks(i)
      const got = await collect(src, i, chunks)
      assert.equal(got.size, chunks.length)
      for (const ch of chunks) {
        const plain = got.get(ch.index)!
        assert.equal(plain.length, ch.uncompressedSize)
        assert.ok(digestChunk(i.blobs[0]!.digester, plain).equals(ch.digest), `chunk ${ch.index} of the ${i.blobs[0]!.compressor} image`)
      }
      // file bytes reassembled from chunks
      const b = Buffer.concat(chunksOf(i, '/b.bin').map(ch => got.get(ch.index)!))
      assert.deepEqual(b, i.files['/b.bin'])
    }
  }

  it('yields every chunk of zstd and uncompressed blobs, verified (embedded registry)', async () => {
    await everyChunkVerifies(reg.host)
  })

  it('yields every chunk, verified (CNCF distribution registry)', { skip: distributionSkip }, async () => {
    for (const i of [img, rawImg]) await client.pushBlob(`${dist!.host}/src/img`, `sha256:${i.blobId}`, i.blobSize, i.blobPath)
    await everyChunkVerifies(dist!.host)
  })

  it('one Range request per contiguous run, split at maxRequestBytes', async () => {
    await client.pushBlob(`${reg.host}/src/runs`, `sha256:${img.blobId}`, img.blobSize, img.blobPath)
    const ranges = (): number => reg.counters.snapshot()['src/runs']?.rangeRequests ?? 0
    const src = new RegistrySource({ client }, { repository: `${reg.host}/src/runs`, maxRequestBytes: 1 << 20 })
    const a = chunksOf(img, '/a.bin') // 16 × 64 KiB stored raw, contiguous
    await collect(src, img, a)
    assert.equal(ranges(), 1)
    await collect(src, img, [a[0]!, a[2]!, a[3]!, a[9]!])
    assert.equal(ranges(), 1 + 3)
    const e = chunksOf(img, '/e.bin') // 2 MiB: two requests under a 1 MiB cap
    await collect(src, img, e)
    assert.equal(ranges(), 4 + 2)
  })

  it('stops when its signal aborts', async () => {
    const src = new RegistrySource({ client }, { repository: `${reg.host}/src/img` })
    const ac = new AbortController()
    ac.abort()
    await assert.rejects(collect(src, img, allChunks(img), ac.signal))
  })
})

/**
 * A registry that answers a Range with the asked bytes of `blob`, but sends only the first `firstBytes` of them until
 * `release()` (or, with `cut`, ends the connection there): a slow or broken link in the middle of a range.
 */
async function heldRangeRegistry (blob: Buffer, firstBytes: number, cut = false): Promise<{ host: string, release: () => void, closed: Promise<boolean>, stop: () => Promise<void> }> {
  let release!: () => void
  const released = new Promise<void>(resolve => { release = resolve })
  // resolves when an answer's connection goes: true if the client left before the whole answer was sent
  let closedEarly!: (early: boolean) => void
  const closed = new Promise<boolean>(resolve => { closedEarly = resolve })
  const server: Server = createServer((req, res) => {
    res.on('close', () => { closedEarly(!res.writableFinished) })
    const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '')
    if (req.method !== 'GET' || m === null) { res.writeHead(404).end(); return }
    const start = Number(m[1])
    const end = Number(m[2])
    res.writeHead(206, { 'content-length': end - start + 1, 'content-range': `bytes ${start}-${end}/${blob.length}`, 'content-type': 'application/octet-stream' })
    res.write(blob.subarray(start, start + firstBytes))
    if (cut) { setTimeout(() => { res.destroy() }, 50); return }
    void released.then(() => res.end(blob.subarray(start + firstBytes, end + 1)))
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  return {
    host: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    release,
    closed,
    stop: async () => { release(); server.closeAllConnections(); await new Promise<void>(resolve => server.close(() => resolve())) }
  }
}

describe('RegistrySource, a range still arriving', () => {
  let img: TestImage
  before(async () => { img = await buildTestImage({ compressor: 'none' }) })
  after(async () => { await img?.cleanup() })

  /**
   * `/a.bin`'s chunks (64 KiB stored raw, contiguous: one range) from a registry that sends the first chunk's bytes and
   * `extra` more, then holds back the rest (or, `cut`, ends the connection)
   */
  async function withHeld (extra: number, cut: boolean, fn: (t: { a: ChunkInfo[], reg: Awaited<ReturnType<typeof heldRangeRegistry>>, src: RegistrySource }) => Promise<void>): Promise<void> {
    const a = chunksOf(img, '/a.bin')
    const reg = await heldRangeRegistry(await readFile(img.blobPath), a[0]!.compressedSize + extra, cut)
    const client = new RegistryClient({ retries: 0 })
    try {
      await fn({ a, reg, src: new RegistrySource({ client }, { repository: `${reg.host}/held/app` }) })
    } finally {
      await reg.stop()
      await client.close()
    }
  }

  it('yields a chunk as soon as its bytes are in, before the rest of the range', async () => {
    await withHeld(0, false, async ({ a, reg, src }) => {
      const it = src.fetch(img.blobs[0]!, a.slice(0, 4), { signal: AbortSignal.timeout(10_000), verify: () => true })[Symbol.asyncIterator]()
      // only the first chunk's bytes were sent: it comes out while the rest is held back
      const first = await it.next()
      assert.equal(first.done, false)
      assert.equal(first.value.chunk.index, a[0]!.index)
      assert.deepEqual(first.value.plaintext, img.files['/a.bin']!.subarray(0, a[0]!.uncompressedSize))
      reg.release()
      const rest: number[] = []
      for (let r = await it.next(); r.done !== true; r = await it.next()) rest.push(r.value.chunk.index)
      assert.deepEqual(rest, a.slice(1, 4).map(c => c.index))
    })
  })

  it('a consumer that stops after the first chunk ends the range\'s download', async () => {
    await withHeld(0, false, async ({ a, reg, src }) => {
      // a signal that never fires: only the consumer's leaving can end the download
      const it = src.fetch(img.blobs[0]!, a.slice(0, 4), { signal: new AbortController().signal, verify: () => true })[Symbol.asyncIterator]()
      assert.equal((await it.next()).value?.chunk.index, a[0]!.index)
      await it.return?.(undefined)
      const closed = await Promise.race([reg.closed, new Promise<string>(resolve => setTimeout(() => { resolve('still open after 3 s') }, 3_000))])
      assert.equal(closed, true, 'the connection went before the rest of the range was sent')
    })
  })

  it('a range cut after its first chunk: that chunk comes out, then a clear error', async () => {
    await withHeld(100, true, async ({ a, src }) => {
      const got: number[] = []
      await assert.rejects(async () => {
        for await (const r of src.fetch(img.blobs[0]!, a.slice(0, 4), { signal: AbortSignal.timeout(10_000), verify: () => true })) got.push(r.chunk.index)
      }, (err: Error) => /cut at byte|truncated|socket|terminated|closed/i.test(`${err.message} ${String((err.cause as Error | undefined)?.message)}`))
      assert.deepEqual(got, [a[0]!.index])
    })
  })
})

/**
 * A registry that ignores Range: every blob GET is answered 200 with the whole blob (HTTP allows it). `flip`
 * changes one byte of the body, to show that skipping never lets a wrong byte through.
 */
async function rangeIgnoringRegistry (blobPath: string): Promise<{ host: string, ranged: number, flip: boolean, stop: () => Promise<void> }> {
  const blob = await readFile(blobPath)
  const state = { ranged: 0, flip: false }
  const server: Server = createServer((req, res) => {
    if (req.method !== 'GET' || !/\/blobs\/sha256:/.test(req.url ?? '')) { res.writeHead(404).end(); return }
    if (req.headers.range !== undefined) state.ranged++
    const body = state.flip ? Buffer.from(blob) : blob
    if (state.flip) body[body.length >> 1]! ^= 0xff
    res.writeHead(200, { 'content-length': body.length, 'content-type': 'application/octet-stream' }).end(body)
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  return Object.assign(state, {
    host: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    stop: async () => { server.closeAllConnections(); await new Promise<void>(resolve => server.close(() => resolve())) }
  })
}

describe('RegistrySource against a registry that ignores Range', () => {
  let img: TestImage
  let reg: Awaited<ReturnType<typeof rangeIgnoringRegistry>>
  const client = new RegistryClient({ retries: 0 })

  before(async () => {
    img = await buildTestImage()
    reg = await rangeIgnoringRegistry(img.blobPath)
  })
  after(async () => {
    await reg?.stop()
    await img?.cleanup()
    await client.close()
  })

  it('lazy reads anywhere in the blob return the source bytes, verified', async () => {
    const fetcher = new Fetcher({ cache: new MemoryChunkCache(), sources: [new RegistrySource({ client }, { repository: `${reg.host}/plain/app` })] },
      { amplifyBytes: 0, retries: 0 })
    for (const [path, bytes] of Object.entries(img.files)) {
      const nid = img.reader.lookup(path)
      for (const [off, len] of [[bytes.length - 5, 100], [1, 100], [CHUNK_SIZE - 7, 20]] as const) {
        if (off < 0 || off >= bytes.length) continue
        assert.deepEqual(await fetcher.read(img, nid, off, len), bytes.subarray(off, off + len), `${path} @${off}+${len}`)
      }
      assert.deepEqual(await fetcher.read(img, nid, 0, bytes.length), bytes, path)
    }
    assert.ok(reg.ranged > 0)
    assert.equal(fetcher.counters.verifyFailures, 0)
  })

  it('once known, the runs of a batch are read in one request', async () => {
    // a fresh client has not met this registry yet: its first request tells it
    const fresh = new RegistryClient({ retries: 0 })
    try {
      const src = new RegistrySource({ client: fresh }, { repository: `${reg.host}/plain/app` })
      const a = chunksOf(img, '/a.bin')
      const gappy = [a[0]!, a[2]!, a[5]!, a[9]!]
      const collectAll = async (): Promise<number> => {
        let n = 0
        for await (const _ of src.fetch(img.blobs[0]!, gappy, { signal: new AbortController().signal, verify: () => true })) n++
        return n
      }
      const before = reg.ranged
      assert.equal(await collectAll(), 4)
      assert.equal(reg.ranged - before, 4, 'learning: one request per run')
      assert.ok(fresh.ignoresRange(`${reg.host}/plain/app`))
      assert.equal(await collectAll(), 4)
      assert.equal(reg.ranged - before, 4 + 1, 'known: one request for the batch')
    } finally { await fresh.close() }
  })

  it('a wrong byte in the whole-blob answer fails the read; no wrong byte is returned', async () => {
    const fetcher = new Fetcher({ cache: new MemoryChunkCache(), sources: [new RegistrySource({ client }, { repository: `${reg.host}/plain/flip` })] },
      { amplifyBytes: 0, retries: 0 })
    reg.flip = true
    try {
      // every chunk crosses the flipped byte's position or not: read them all, none may differ from the source
      let failed = 0
      for (const [path, bytes] of Object.entries(img.files)) {
        try {
          assert.deepEqual(await fetcher.read(img, img.reader.lookup(path), 0, bytes.length), bytes, path)
        } catch (err) {
          if (err instanceof assert.AssertionError) throw err
          failed++
        }
      }
      assert.ok(failed >= 1, 'the file holding the flipped byte failed')
      assert.ok(fetcher.counters.verifyFailures >= 1)
    } finally { reg.flip = false }
  })
})
