import assert from 'node:assert/strict'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import fc from 'fast-check'
import { BlobDataReader, RafsReader, buildImage, directorySource } from '../../rafs/index.js'
import { TEST_FILES } from '../../test/helpers/fetch-kit.js'
import { BlobViews } from './blob-view.js'

describe('BlobViews: a blob view range as chunk pieces', () => {
  let dir: string
  let reader: RafsReader
  let view: Buffer
  const plain = new Map<number, Buffer>()

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rafspeer-blobview-'))
    const src = join(dir, 'src')
    for (const [path, bytes] of Object.entries(TEST_FILES)) {
      await mkdir(join(src, path, '..'), { recursive: true })
      await writeFile(join(src, path), bytes)
    }
    // small files between the big ones: short chunks, so the view has padding after them
    for (let i = 0; i < 20; i++) await writeFile(join(src, `tiny${i}.txt`), `tiny ${i}\n`.repeat(i * 37 + 1))
    const built = await buildImage(directorySource(src), {
      bootstrap: join(dir, 'image.boot'), blobDir: join(dir, 'blobs'), blobCacheDir: join(dir, 'views'), chunkSize: 64 << 10, compressor: 'zstd'
    })
    reader = await RafsReader.open(built.bootstrap)
    const blob = reader.blobs[0]!
    view = await readFile(join(dir, 'views', `${blob.blobId}.blob.data`))
    const r = await BlobDataReader.open({ blobPath: built.blobs[0]!.path, blob })
    try {
      for (let ci = 0; ci < blob.chunkCount; ci++) plain.set(ci, await r.readChunk(reader.chunkInfo(0, ci)))
    } finally {
      await r.close()
    }
  })
  after(async () => { await rm(dir, { recursive: true, force: true }) })

  /** what a blob file's miss answers: a zeroed buffer with every piece's bytes at its view offset */
  function assemble (views: BlobViews, offset: number, length: number): Buffer {
    const out = Buffer.alloc(length)
    for (const p of views.mapRange(0, offset, length)) {
      plain.get(p.chunk.index)!.copy(out, p.fileOffset - offset, p.chunkOffset, p.chunkOffset + p.length)
    }
    return out
  }

  it('pieces of any range, zeros between them, equal the built uncompressed view', () => {
    const views = new BlobViews(reader)
    assert.equal(view.length, reader.blobs[0]!.uncompressedSize)
    assert.ok(assemble(views, 0, view.length).equals(view), 'the whole view')
    fc.assert(fc.property(fc.nat(view.length - 1), fc.integer({ min: 1, max: 3 << 20 }), (offset, len) => {
      const length = Math.min(len, view.length - offset)
      return assemble(views, offset, length).equals(view.subarray(offset, offset + length))
    }), { numRuns: 300 })
  })

  it('pieces come in view order, inside the range, and a range past the end maps to nothing', () => {
    const views = new BlobViews(reader)
    const pieces = views.mapRange(0, 4096, 1 << 20)
    assert.ok(pieces.length > 1)
    for (let i = 1; i < pieces.length; i++) assert.ok(pieces[i]!.fileOffset >= pieces[i - 1]!.fileOffset + pieces[i - 1]!.length)
    assert.ok(pieces[0]!.fileOffset >= 4096 && pieces.at(-1)!.fileOffset + pieces.at(-1)!.length <= 4096 + (1 << 20))
    assert.deepEqual(views.mapRange(0, view.length, 1 << 20), [])
    assert.equal(views.chunks(0).length, reader.blobs[0]!.chunkCount)
    assert.throws(() => views.mapRange(1, 0, 10), RangeError)
  })
})
