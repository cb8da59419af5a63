import { NYDUS_FIXTURES } from '../test/helpers/fixtures.js'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { readBlobTail, fileByteSource } from './blob-reader.js'
import type { BlobByteSource } from './blob-reader.js'
import { RafsReader } from './reader.js'
import { RafsFormatError } from './layout.js'

const FIX = NYDUS_FIXTURES
const BE7 = 'be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef'
const INLINE = '2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca'

const memSource = (buf: Buffer): BlobByteSource => ({ size: buf.length, read: async (o, l) => buf.subarray(o, o + l) })

test('be7d77ee blob tail agrees with its bootstrap (ToC size and digest known)', async () => {
  const r = await RafsReader.open(join(FIX, 'rafs-v6-2.2.boot'))
  const src = await fileByteSource(join(FIX, BE7))
  try {
    const tail = await readBlobTail(src, r.blobs[0], { verifyImageBlob: true })
    assert.deepEqual(tail.toc.map(e => e.name), ['image.blob', 'blob.meta', 'blob.meta.header', 'blob.digest'])
    assert.equal(tail.tocSize, 1024)
    assert.ok(tail.tocDigest.equals(r.blobs[0]!.blobTocDigest))
    assert.equal(tail.metaHeader.ciEntries, 2)
    assert.deepEqual(tail.ci[1], { uncompressedOffset: 0x5000, uncompressedSize: 13400, compressedOffset: 4828, compressedSize: 2974, compressed: true })
    // blob.digest matches the bootstrap's chunk table
    assert.ok(tail.digests![1]!.equals(r.chunkInfo(0, 1).digest))
    assert.equal(tail.bootstrap, undefined)
  } finally {
    await src.close()
  }
})

test('ToC auto-detection gives the same result without a blob-table entry', async () => {
  const buf = readFileSync(join(FIX, BE7))
  const tail = await readBlobTail(memSource(buf))
  assert.equal(tail.tocSize, 1024)
  assert.equal(tail.ci.length, 2)
})

test('inline-meta blob yields the extracted image.boot', async () => {
  const src = await fileByteSource(join(FIX, INLINE))
  try {
    const tail = await readBlobTail(src, undefined, { verifyImageBlob: true })
    assert.deepEqual(tail.toc.map(e => e.name), ['image.blob', 'blob.meta', 'blob.meta.header', 'image.boot'])
    assert.equal(tail.ci.length, 3)
    assert.equal(tail.digests, undefined)
    assert.ok(tail.bootstrap!.equals(readFileSync(join(FIX, '2fa78cad-inline-image.boot'))))
    // and that bootstrap reads
    const r = RafsReader.fromBuffer(tail.bootstrap!)
    assert.equal(r.readdir(r.rootNid).length, 3)
  } finally {
    await src.close()
  }
})

test('corrupted tails are RafsFormatErrors naming the fault', async () => {
  const r = await RafsReader.open(join(FIX, 'rafs-v6-2.2.boot'))
  const good = readFileSync(join(FIX, BE7))
  const blob = r.blobs[0]!
  const flip = (off: number): Buffer => { const b = Buffer.from(good); b[off] = b[off]! ^ 0xff; return b }
  // ToC digest (an entry byte), tar checksum, ci array, blob.digest, meta magic
  await assert.rejects(readBlobTail(memSource(flip(good.length - 1024 + 30)), blob), /ToC sha256/)
  await assert.rejects(readBlobTail(memSource(flip(good.length - 400)), { ...blob, blobTocDigest: Buffer.alloc(32) }), /checksum/)
  await assert.rejects(readBlobTail(memSource(flip(blob.ciOffset + 3)), blob), RafsFormatError)
  await assert.rejects(readBlobTail(memSource(flip(blob.ciOffset + blob.ciCompressedSize)), blob), /magic|sha256/)
  await assert.rejects(readBlobTail(memSource(flip(0x209a + 4096 + 512 + 5)), blob), /blob.digest/)
  await assert.rejects(readBlobTail(memSource(good.subarray(0, 100)), blob), RafsFormatError)
  await assert.rejects(readBlobTail(memSource(good.subarray(0, 100))), RafsFormatError)
  await assert.rejects(readBlobTail(memSource(flip(10)), { ...blob }, { verifyImageBlob: true }), /image.blob/)
  await assert.rejects(readBlobTail(memSource(good), { ...blob, chunkCount: 3 }), /ci_entries/)
})
