/** RegistrySource against the embedded registry and the CNCF distribution registry: runs, ranges, decompression. */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { digestChunk, type ChunkInfo } from '../../rafs/index.js'
import { RegistryClient, startRegistryServer, type RegistryServer } from '../../registry/index.js'
import { distributionSkipReason, startDistribution, type Distribution } from '../../test/helpers/distribution.js'
import { buildTestImage, chunksOf, type TestImage } from '../../test/helpers/fetch-kit.js'
import { RegistrySource } from './registry-source.js'
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
