import { NYDUS_FIXTURES } from '../test/helpers/fixtures.js'
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { BlobWriter } from './blob-writer.js'
import { decompressChunk, digestChunk } from './codec.js'
import {
  BLOB_META_HEADER_SIZE, BLOB_META_MAGIC, CI_V1_SIZE, CompressorCode, DEFAULT_BLOB_FEATURES, TAR_HEADER_SIZE,
  TOC_ENTRY_SIZE, TarName, TocFlags, decodeBlobMetaHeader, decodeCiV1, decodeTarHeader, decodeTocEntry,
  encodeTarHeader, type Compressor, type Digester, type TocEntry
} from './layout.js'
import type { ChunkInfo, RafsBlobInfo } from './model.js'

const FIXTURE = join(NYDUS_FIXTURES, 'be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef')
const sha256 = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest()

interface Tail {
  sections: Array<{ name: string, offset: number, size: number, header: Buffer }>
  toc: TocEntry[]
}

/** Walks a blob's reverse tar from the end, the way nydus-snapshotter's seekFileByTarHeader does. */
function parseTail (blob: Buffer): Tail {
  const sections: Tail['sections'] = []
  let end = blob.length
  while (end > 0) {
    const header = blob.subarray(end - TAR_HEADER_SIZE, end)
    const h = decodeTarHeader(header)
    assert.ok(h.checksumOk, `tar header before ${end} has a bad checksum`)
    assert.deepEqual(header, encodeTarHeader(h.name, h.size), `tar header ${h.name} differs from encodeTarHeader`)
    const offset = end - TAR_HEADER_SIZE - h.size
    sections.unshift({ name: h.name, offset, size: h.size, header })
    end = offset
  }
  const tocSec = sections.at(-1)!
  assert.equal(tocSec.name, TarName.TOC)
  const toc: TocEntry[] = []
  for (let o = tocSec.offset; o < tocSec.offset + tocSec.size; o += TOC_ENTRY_SIZE) toc.push(decodeTocEntry(blob, o))
  return { sections, toc }
}

async function collect (chunks: Uint8Array[]): Promise<AsyncIterable<Uint8Array>> {
  return (async function * () { for (const c of chunks) yield c })()
}

describe('BlobWriter', () => {
  let dir: string
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'rafs-blob-writer-')) })
  after(async () => { await rm(dir, { recursive: true, force: true }) })

  const fresh = async (name: string): Promise<{ blobDir: string, blobCacheDir: string }> => {
    const d = await mkdtemp(join(dir, name + '-'))
    return { blobDir: join(d, 'blobs'), blobCacheDir: join(d, 'cache') }
  }

  /** Checks everything a reader can check about a blob we wrote against the chunks we were handed. */
  async function verifyBlob (info: RafsBlobInfo, blobDir: string, chunks: ChunkInfo[], viewDir?: string): Promise<Buffer> {
    const blob = await readFile(join(blobDir, info.blobId))
    assert.equal(sha256(blob).toString('hex'), info.blobId, 'blob id is the sha256 of the file')
    assert.equal(blob.length, info.compressedSize)
    assert.equal(info.features, DEFAULT_BLOB_FEATURES)
    const { sections, toc } = parseTail(blob)
    assert.deepEqual(sections.map(s => s.name), [TarName.BLOB_DATA, TarName.BLOB_META, TarName.BLOB_DIGEST, TarName.TOC])
    const [data, meta, dig, tocSec] = sections as [Tail['sections'][0], Tail['sections'][0], Tail['sections'][0], Tail['sections'][0]]
    assert.equal(data.offset, 0)
    const n = info.chunkCount
    assert.equal(n, chunks.length)

    // blob.meta = stored ci + header; the header must agree with the blob-table fields
    assert.equal(meta.offset, info.ciOffset)
    assert.equal(meta.size, info.ciCompressedSize + BLOB_META_HEADER_SIZE)
    const hdr = decodeBlobMetaHeader(blob.subarray(meta.offset + info.ciCompressedSize, meta.offset + meta.size))
    assert.equal(hdr.magic, BLOB_META_MAGIC)
    assert.equal(hdr.magic2, BLOB_META_MAGIC)
    assert.equal(hdr.features, info.features)
    assert.equal(hdr.ciEntries, n)
    assert.equal(hdr.ciOffset, info.ciOffset)
    assert.equal(hdr.ciCompressor, CompressorCode[info.ciCompressor])
    assert.equal(hdr.ciCompressedSize, info.ciCompressedSize)
    assert.equal(hdr.ciUncompressedSize, n * CI_V1_SIZE)
    assert.equal(info.ciUncompressedSize, n * CI_V1_SIZE)
    const ciStored = blob.subarray(info.ciOffset, info.ciOffset + info.ciCompressedSize)
    const ci = info.ciCompressor === 'none' ? ciStored : decompressChunk(info.ciCompressor, ciStored, n * CI_V1_SIZE)
    assert.ok(info.ciCompressedSize <= info.ciUncompressedSize)

    assert.equal(dig.size, 32 * n)
    const view = viewDir !== undefined ? await readFile(join(viewDir, `${info.blobId}.blob.data`)) : undefined
    if (view !== undefined) assert.equal(view.length, info.uncompressedSize)
    let expectC = 0
    let expectU = 0
    for (let i = 0; i < n; i++) {
      const c = chunks[i]!
      assert.equal(c.index, i)
      assert.equal(c.compressedOffset, expectC, `chunk ${i} packed right after the previous one`)
      assert.equal(c.uncompressedOffset, expectU, `chunk ${i} uncompressed offset 4096-aligned and cumulative`)
      expectC += c.compressedSize
      expectU += Math.ceil(c.uncompressedSize / 4096) * 4096
      assert.deepEqual(decodeCiV1(ci, i * CI_V1_SIZE), {
        uncompressedOffset: c.uncompressedOffset, uncompressedSize: c.uncompressedSize,
        compressedOffset: c.compressedOffset, compressedSize: c.compressedSize, compressed: c.compressed
      })
      assert.equal(c.compressed, c.compressedSize !== c.uncompressedSize)
      const stored = blob.subarray(c.compressedOffset, c.compressedOffset + c.compressedSize)
      const plain = c.compressed ? decompressChunk(info.compressor, stored, c.uncompressedSize) : stored
      assert.deepEqual(digestChunk(info.digester, plain), c.digest)
      assert.deepEqual(blob.subarray(dig.offset + 32 * i, dig.offset + 32 * i + 32), c.digest)
      assert.equal(c.crc32, undefined)
      if (view !== undefined) {
        assert.deepEqual(view.subarray(c.uncompressedOffset, c.uncompressedOffset + c.uncompressedSize), plain)
        const gapEnd = c.uncompressedOffset + Math.ceil(c.uncompressedSize / 4096) * 4096
        assert.ok(view.subarray(c.uncompressedOffset + c.uncompressedSize, gapEnd).every(b => b === 0), 'zero gap after short chunk')
      }
    }
    assert.equal(data.size, expectC)
    assert.equal(info.uncompressedSize, expectU)

    // ToC: four entries in nydus order, digests and offsets pointing at the sections
    assert.deepEqual(toc.map(t => t.name), [TarName.BLOB_DATA, TarName.BLOB_META, TarName.BLOB_META_HEADER, TarName.BLOB_DIGEST])
    const flags = { zstd: TocFlags.COMPRESSION_ZSTD, lz4_block: TocFlags.COMPRESSION_LZ4_BLOCK, none: TocFlags.COMPRESSION_NONE, gzip: -1 }
    const [tData, tMeta, tHdr, tDig] = toc as [TocEntry, TocEntry, TocEntry, TocEntry]
    assert.deepEqual(tData, { flags: TocFlags.COMPRESSION_NONE, name: TarName.BLOB_DATA, digest: sha256(blob.subarray(0, data.size + TAR_HEADER_SIZE)), compressedOffset: 0, compressedSize: data.size, uncompressedSize: info.uncompressedSize })
    assert.deepEqual(tMeta, { flags: flags[info.ciCompressor], name: TarName.BLOB_META, digest: sha256(ci), compressedOffset: info.ciOffset, compressedSize: info.ciCompressedSize, uncompressedSize: n * CI_V1_SIZE })
    assert.deepEqual(tHdr, { flags: TocFlags.COMPRESSION_NONE, name: TarName.BLOB_META_HEADER, digest: sha256(blob.subarray(info.ciOffset + info.ciCompressedSize, info.ciOffset + info.ciCompressedSize + 4096)), compressedOffset: info.ciOffset + info.ciCompressedSize, compressedSize: 4096, uncompressedSize: 4096 })
    assert.deepEqual(tDig, { flags: TocFlags.COMPRESSION_NONE, name: TarName.BLOB_DIGEST, digest: sha256(blob.subarray(dig.offset, dig.offset + dig.size)), compressedOffset: dig.offset, compressedSize: dig.size, uncompressedSize: dig.size })
    assert.equal(info.blobTocSize, tocSec.size + TAR_HEADER_SIZE)
    assert.equal(info.blobTocSize, 4 * 128 + 512)
    assert.deepEqual(info.blobTocDigest, sha256(blob.subarray(blob.length - info.blobTocSize)))
    return blob
  }

  for (const compressor of ['zstd', 'lz4_block', 'none'] as Compressor[]) {
    for (const digester of ['blake3', 'sha256'] as Digester[]) {
      it(`writes a blob nydus can parse (${compressor}, ${digester})`, async () => {
        const out = await fresh(`${compressor}-${digester}`)
        const chunkSize = 0x10000
        const w = new BlobWriter({ ...out, compressor, digester, chunkSize, blobIndex: 3 })
        const text = Buffer.from('hello rafs '.repeat(20000)) // compressible, 220000 B = 3 chunks + tail
        const random = randomBytes(chunkSize + 100)
        const a = await w.addFile(text)
        const b = await w.addFile(random)
        const all = [...new Set([...a, ...b])].sort((x, y) => x.index - y.index)
        assert.equal(a.length, Math.ceil(text.length / chunkSize))
        assert.equal(b.length, 2)
        assert.ok(a.every(c => c.blobIndex === 3))
        if (compressor !== 'none') assert.ok(a[0]!.compressed && a[0]!.compressedSize < chunkSize, 'text compresses')
        else assert.ok(!a[0]!.compressed)
        assert.ok(!b[0]!.compressed && b[0]!.compressedSize === chunkSize, 'random bytes are kept raw')
        assert.equal(b[1]!.uncompressedSize, 100)
        assert.equal(b[1]!.fileOffset, chunkSize)
        const info = await w.finish()
        assert.ok(info !== undefined)
        assert.equal(info.compressor, compressor)
        assert.equal(info.digester, digester)
        assert.equal(info.chunkSize, chunkSize)
        await verifyBlob(info, out.blobDir, all, out.blobCacheDir)
        // no temp files remain next to the outputs
        assert.deepEqual(await readdir(out.blobDir), [info.blobId])
        assert.deepEqual(await readdir(out.blobCacheDir), [`${info.blobId}.blob.data`])
      })
    }
  }

  for (const compressor of ['zstd', 'lz4_block', 'none'] as Compressor[]) {
    it(`compresses a large ci array with the blob compressor (${compressor})`, async () => {
      const out = await fresh(`ci-${compressor}`)
      const w = new BlobWriter({ ...out, compressor, chunkSize: 4096 })
      const chunks: ChunkInfo[] = []
      for (let i = 0; i < 600; i++) chunks.push(...await w.addFile(Buffer.from(`file number ${i}\n`.repeat(50))))
      const info = await w.finish()
      assert.equal(info!.ciCompressor, compressor)
      assert.ok(compressor === 'none' ? info!.ciCompressedSize === 600 * 16 : info!.ciCompressedSize < 600 * 16)
      await verifyBlob(info!, out.blobDir, chunks, out.blobCacheDir)
    })
  }

  it('cuts chunks at the chunk size whatever the piece sizes (boundary ± 1)', async () => {
    const out = await fresh('boundaries')
    const cs = 4096
    const w = new BlobWriter({ ...out, chunkSize: cs, compressor: 'none' })
    const sizes = [cs - 1, cs, cs + 1, 2 * cs - 1, 2 * cs, 2 * cs + 1, 1]
    for (const [n, size] of sizes.entries()) {
      const bytes = randomBytes(size)
      // the 1-byte tails (cs + 1, 2cs + 1, 1) must differ, or dedup would rightly hand back the first one's ChunkInfo
      bytes[size - 1] = n
      // odd piece sizes straddle chunk boundaries
      const pieces: Uint8Array[] = []
      for (let o = 0, step = 1; o < size; o += step, step = step * 3 + 1) pieces.push(bytes.subarray(o, o + step))
      const list = await w.addFile(await collect(pieces))
      assert.equal(list.length, Math.ceil(size / cs), `size ${size}`)
      assert.deepEqual(list.map(c => c.uncompressedSize), Array.from({ length: list.length }, (_, i) => Math.min(cs, size - i * cs)))
      assert.deepEqual(list.map(c => c.fileOffset), list.map((_, i) => i * cs))
      const again = Buffer.concat(list.map(c => c.digest))
      assert.deepEqual(again, Buffer.concat(list.map((_, i) => digestChunk('blake3', bytes.subarray(i * cs, (i + 1) * cs)))))
    }
    const info = await w.finish()
    assert.ok(info !== undefined)
    assert.equal(info.chunkCount, 1 + 1 + 2 + 2 + 2 + 3 + 1)
  })

  it('deduplicates identical chunks to the same ChunkInfo object, stored once', async () => {
    const out = await fresh('dedup')
    const cs = 8192
    const w = new BlobWriter({ ...out, chunkSize: cs })
    const bytes = randomBytes(3 * cs + 10)
    const [a, b] = await Promise.all([w.addFile(bytes), w.addFile(await collect([bytes.subarray(0, 5), bytes.subarray(5)]))])
    assert.equal(a!.length, 4)
    for (let i = 0; i < 4; i++) assert.equal(a![i], b![i], 'same object')
    const zeros = await w.addFile(Buffer.alloc(3 * cs))
    assert.equal(zeros[0], zeros[1])
    assert.equal(zeros[1], zeros[2])
    const zeroTail = await w.addFile(Buffer.alloc(100))
    assert.notEqual(zeroTail[0], zeros[0], 'a short zero chunk has its own digest')
    assert.deepEqual(zeroTail[0]!.digest, digestChunk('blake3', Buffer.alloc(100)))
    assert.deepEqual(zeros[0]!.digest, digestChunk('blake3', Buffer.alloc(cs)))
    const info = await w.finish()
    assert.equal(info!.chunkCount, 6)
    const blob = await verifyBlob(info!, out.blobDir, [...a!, zeros[0]!, zeroTail[0]!], out.blobCacheDir)
    assert.equal(blob.indexOf(bytes.subarray(0, cs)), 0)
    assert.equal(blob.indexOf(bytes.subarray(0, cs), 1), -1, 'stored once')
  })

  it('serializes concurrent addFile calls in call order', async () => {
    const out = await fresh('order')
    const w = new BlobWriter({ ...out, chunkSize: 4096 })
    const slow = (async function * () {
      await new Promise(resolve => setTimeout(resolve, 30))
      yield randomBytes(5000)
    })()
    const [first, second] = await Promise.all([w.addFile(slow), w.addFile(randomBytes(100))])
    assert.deepEqual(first!.map(c => c.index), [0, 1])
    assert.deepEqual(second!.map(c => c.index), [2])
    await w.abort()
  })

  it('returns no chunks for an empty file and no blob when nothing was written', async () => {
    const out = await fresh('empty')
    const w = new BlobWriter(out)
    assert.deepEqual(await w.addFile(new Uint8Array(0)), [])
    assert.deepEqual(await w.addFile(await collect([new Uint8Array(0)])), [])
    assert.equal(await w.finish(), undefined)
    assert.deepEqual(await readdir(out.blobDir).catch(() => []), [])
    assert.deepEqual(await readdir(out.blobCacheDir).catch(() => []), [])
    await assert.rejects(w.addFile(Buffer.from('x')), { code: 'RAFSPEER_ERR_BLOB_WRITE' })
  })

  it('abort() removes temporary files and refuses later work', async () => {
    const out = await fresh('abort')
    const w = new BlobWriter(out)
    await w.addFile(randomBytes(10000))
    assert.equal((await readdir(out.blobDir)).length, 1)
    await w.abort()
    assert.deepEqual(await readdir(out.blobDir), [])
    assert.deepEqual(await readdir(out.blobCacheDir), [])
    await assert.rejects(w.finish(), { code: 'RAFSPEER_ERR_BLOB_WRITE' })
  })

  it('a failing source rejects that file but leaves the writer usable', async () => {
    const out = await fresh('source-error')
    const w = new BlobWriter({ ...out, chunkSize: 4096 })
    const bad = (async function * () { yield randomBytes(5000); throw new Error('disk on fire') })()
    await assert.rejects(w.addFile(bad), /disk on fire/)
    const good = await w.addFile(Buffer.from('fine'))
    const info = await w.finish()
    assert.equal(info!.chunkCount, 2)
    assert.equal(good[0]!.index, 1)
  })

  it('rejects bad chunk sizes and unsupported compressors', () => {
    assert.throws(() => new BlobWriter({ blobDir: dir, chunkSize: 3000 }), { code: 'RAFSPEER_ERR_BLOB_WRITE' })
    assert.throws(() => new BlobWriter({ blobDir: dir, chunkSize: 0x2000000 }), { code: 'RAFSPEER_ERR_BLOB_WRITE' })
    assert.throws(() => new BlobWriter({ blobDir: dir, compressor: 'gzip' }), { code: 'RAFSPEER_ERR_BLOB_WRITE' })
  })

  it('keeps the same tail structure as the real nydus fixture blob', async () => {
    const fixture = await readFile(FIXTURE)
    const { sections, toc } = parseTail(fixture)
    assert.deepEqual(sections.map(s => [s.name, s.offset, s.size]), [
      [TarName.BLOB_DATA, 0, 7802],
      [TarName.BLOB_META, 8314, 32 + 4096],
      [TarName.BLOB_DIGEST, 12954, 64],
      [TarName.TOC, 13530, 512]
    ])
    const hdr = decodeBlobMetaHeader(fixture.subarray(8314 + 32, 8314 + 32 + 4096))
    assert.deepEqual([hdr.magic, hdr.magic2, hdr.features, hdr.ciEntries, hdr.ciOffset, hdr.ciCompressor], [BLOB_META_MAGIC, BLOB_META_MAGIC, DEFAULT_BLOB_FEATURES, 2, 8314, 0])
    // §13.2 worked example: chunk 1
    assert.deepEqual(decodeCiV1(fixture, 8314 + 16), { uncompressedOffset: 0x5000, uncompressedSize: 13400, compressedOffset: 4828, compressedSize: 2974, compressed: true })
    assert.deepEqual(toc.map(t => [t.name, t.flags]), [
      [TarName.BLOB_DATA, TocFlags.COMPRESSION_NONE], [TarName.BLOB_META, TocFlags.COMPRESSION_NONE],
      [TarName.BLOB_META_HEADER, TocFlags.COMPRESSION_NONE], [TarName.BLOB_DIGEST, TocFlags.COMPRESSION_NONE]
    ])
    // the quirk our writer copies: image.blob's digest covers the chunk data plus its tar header
    assert.deepEqual(toc[0]!.digest, sha256(fixture.subarray(0, 7802 + 512)))
    assert.deepEqual(toc[1]!.digest, sha256(fixture.subarray(8314, 8314 + 32)))
    assert.equal(toc[0]!.uncompressedSize, 36864)
    assert.deepEqual(toc[2]!.digest, sha256(fixture.subarray(8346, 8346 + 4096)))

    // rebuild the fixture's two chunks with our writer: the same structure comes out
    const view = await readFile(FIXTURE + '.blob.data')
    const out = await fresh('fixture')
    const w = new BlobWriter({ ...out, compressor: 'zstd', digester: 'blake3' })
    const lib = await w.addFile(view.subarray(0, 16931))
    const sync = await w.addFile(view.subarray(0x5000, 0x5000 + 13400))
    const info = await w.finish()
    const blob = await verifyBlob(info!, out.blobDir, [...lib, ...sync])
    const ours = parseTail(blob)
    assert.deepEqual(ours.sections.map(s => s.name), sections.map(s => s.name))
    assert.deepEqual(ours.toc.map(t => [t.name, t.flags]), toc.map(t => [t.name, t.flags]))
    assert.equal(info!.uncompressedSize, 36864)
    assert.deepEqual([lib[0]!.uncompressedOffset, sync[0]!.uncompressedOffset], [0, 0x5000])
    // chunk digests equal the fixture's blob.digest array
    assert.deepEqual(Buffer.concat([lib[0]!.digest, sync[0]!.digest]), fixture.subarray(12954, 12954 + 64))
    assert.deepEqual(ours.sections[2]!.header, sections[2]!.header, 'blob.digest tar header byte-identical')
    assert.deepEqual(ours.sections[3]!.header, sections[3]!.header, 'ToC tar header byte-identical')
  })
})
