import { test } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { errorCode } from '../base/index.js'
import { ProxyError } from './errors.js'
import {
  DEFAULT_PIECE_BYTES, MAX_PIECE_BYTES, MAX_PIECES, MIN_PIECE_BYTES, MapLayout, PIECE_DIGEST_BYTES,
  decodeMap, encodeMap, mapKey, pieceBlob, pieceBlobId, pieceChunk, pieceDigest, pieceLayout, type MapPart
} from './piece-map.js'

const D1 = `sha256:${'1'.repeat(64)}`
const D2 = `sha256:${'2'.repeat(64)}`
const P = MIN_PIECE_BYTES

function piecesError (fn: () => unknown, why: string): void {
  assert.throws(fn, (err: unknown) => err instanceof ProxyError && errorCode(err) === 'RAFSPEER_ERR_PROXY_PIECES', why)
}

function digests (n: number, seed = 0): Buffer[] {
  return Array.from({ length: n }, (_, i) => Buffer.alloc(PIECE_DIGEST_BYTES, (seed + i) & 0xff))
}

test('pieceLayout counts pieces: none for an empty blob, exact multiples, one more for a byte over', () => {
  assert.equal(pieceLayout(D1, 0).count, 0)
  assert.equal(pieceLayout(D1, 1).count, 1)
  assert.equal(pieceLayout(D1, DEFAULT_PIECE_BYTES).count, 1)
  assert.equal(pieceLayout(D1, DEFAULT_PIECE_BYTES + 1).count, 2)
  assert.equal(pieceLayout(D1, 3 * P, P).count, 3)
  assert.equal(pieceLayout(D1, 3 * P + 1, P).count, 4)
  const l = pieceLayout(D1, 10 * P, P)
  assert.deepEqual({ digest: l.digest, size: l.size, pieceBytes: l.pieceBytes }, { digest: D1, size: 10 * P, pieceBytes: P })
  assert.equal(pieceLayout(D1, 5).pieceBytes, DEFAULT_PIECE_BYTES)
})

test('pieceLayout refuses piece sizes off the 4 KiB grid or out of bounds, bad sizes and too many pieces', () => {
  for (const pb of [P + 1, P + 2048, MIN_PIECE_BYTES - 4096, 4096, 0, -4096, MAX_PIECE_BYTES + 4096, NaN]) {
    piecesError(() => pieceLayout(D1, 100, pb), `piece bytes ${pb}`)
  }
  for (const size of [-1, 1.5, NaN, 2 ** 53]) piecesError(() => pieceLayout(D1, size), `size ${size}`)
  piecesError(() => pieceLayout(D1, (MAX_PIECES + 1) * P, P), 'too many pieces')
  assert.equal(pieceLayout(D1, MAX_PIECES * P, P).count, MAX_PIECES)
  assert.equal(pieceLayout(D1, 1, MAX_PIECE_BYTES).count, 1)
})

test('pieceBlobId is not the blob digest and differs per digest and per piece size', () => {
  const id = pieceBlobId(D1, P)
  assert.match(id, /^[0-9a-f]{64}$/)
  assert.notEqual(id, D1.slice('sha256:'.length))
  assert.notEqual(id, pieceBlobId(D1, 2 * P))
  assert.notEqual(id, pieceBlobId(D2, P))
  assert.equal(id, pieceBlobId(D1, P))
  assert.equal(pieceLayout(D1, 10, P).blobId, id)
})

test('mapKey is 32 bytes, stable, and differs per digest and from the pieces blob id', () => {
  assert.equal(mapKey(D1).length, 32)
  assert.deepEqual(mapKey(D1), mapKey(D1))
  assert.notDeepEqual(mapKey(D1), mapKey(D2))
  assert.notEqual(mapKey(D1).toString('hex'), pieceBlobId(D1, DEFAULT_PIECE_BYTES))
  assert.notEqual(mapKey(D1).toString('hex'), D1.slice(7))
})

test('pieceBlob describes a plain blake3 blob whose uncompressed size is rounded up to 4096', () => {
  const l = pieceLayout(D1, 2 * P + 100, P)
  const b = pieceBlob(l)
  assert.equal(b.blobId, l.blobId)
  assert.equal(b.compressor, 'none')
  assert.equal(b.digester, 'blake3')
  assert.equal(b.chunkSize, P)
  assert.equal(b.chunkCount, 3)
  assert.equal(b.compressedSize, 2 * P + 100)
  assert.equal(b.uncompressedSize, 2 * P + 4096)
  assert.equal(pieceBlob(pieceLayout(D1, 2 * P, P)).uncompressedSize, 2 * P)
  assert.equal(pieceBlob(pieceLayout(D1, 0, P)).uncompressedSize, 0)
})

test('pieceChunk places piece i at i × pieceBytes, the last one only as long as what is left', () => {
  const l = pieceLayout(D1, 2 * P + 100, P)
  const d = Buffer.alloc(32, 7)
  const c1 = pieceChunk(l, 1, d)
  assert.deepEqual(c1, {
    digest: d, blobIndex: 0, index: 1, compressedOffset: P, compressedSize: P, uncompressedOffset: P,
    uncompressedSize: P, compressed: false, fileOffset: P
  })
  const last = pieceChunk(l, 2, d)
  assert.equal(last.compressedOffset, 2 * P)
  assert.equal(last.compressedSize, 100)
  assert.equal(last.uncompressedSize, 100)
})

test('pieceDigest is a 32-byte blake3 digest of the bytes', () => {
  const a = pieceDigest(Buffer.from('abc'))
  assert.equal(a.length, 32)
  // blake3("abc")
  assert.equal(a.toString('hex'), '6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85')
  assert.notDeepEqual(a, pieceDigest(Buffer.from('abd')))
})

test('encodeMap and decodeMap round trip a whole map and a part starting at first', () => {
  const whole: MapPart = { size: 5 * P - 1, pieceBytes: P, first: 0, digests: digests(5) }
  const buf = encodeMap(whole)
  assert.equal(buf.length, MapLayout.HEADER_BYTES + 5 * PIECE_DIGEST_BYTES)
  assert.equal(buf.subarray(0, 8).toString('latin1'), 'RPMAP1\0\0')
  const back = decodeMap(buf, D1)
  assert.deepEqual(back.part, whole)
  assert.equal(back.layout.count, 5)
  assert.equal(back.layout.blobId, pieceBlobId(D1, P))

  const part: MapPart = { size: 5 * P - 1, pieceBytes: P, first: 2, digests: digests(3, 9) }
  assert.deepEqual(decodeMap(encodeMap(part), D1).part, part)
  const tail: MapPart = { size: 5 * P, pieceBytes: P, first: 5, digests: [] }
  assert.deepEqual(decodeMap(encodeMap(tail), D1).part, tail)
  const empty: MapPart = { size: 0, pieceBytes: P, first: 0, digests: [] }
  assert.deepEqual(decodeMap(encodeMap(empty), D1).part, empty)
})

test('decoded digests are copies, not views of the input', () => {
  const buf = encodeMap({ size: P, pieceBytes: P, first: 0, digests: digests(1, 3) })
  const { part } = decodeMap(buf, D1)
  buf.fill(0)
  assert.deepEqual(part.digests[0], Buffer.alloc(32, 3))
})

test('decodeMap refuses hostile headers and lengths with RAFSPEER_ERR_PROXY_PIECES', () => {
  const good = encodeMap({ size: 3 * P, pieceBytes: P, first: 0, digests: digests(3) })
  const with32 = (at: number, v: number): Buffer => { const b = Buffer.from(good); b.writeUInt32BE(v, at); return b }
  const with64 = (v: bigint): Buffer => { const b = Buffer.from(good); b.writeBigUInt64BE(v, MapLayout.SIZE); return b }
  const cases: Array<[string, Buffer]> = [
    ['empty', Buffer.alloc(0)],
    ['wrong magic', Buffer.concat([Buffer.from('RPMAP2\0\0'), good.subarray(8)])],
    ['truncated header', good.subarray(0, MapLayout.HEADER_BYTES - 1)],
    ['count beyond the layout', encodeMap({ size: 3 * P, pieceBytes: P, first: 0, digests: digests(4) })],
    ['first + count beyond the layout', encodeMap({ size: 3 * P, pieceBytes: P, first: 1, digests: digests(3) })],
    ['first beyond the count', encodeMap({ size: 3 * P, pieceBytes: P, first: 4, digests: [] })],
    ['first near 2^32', with32(MapLayout.FIRST, 0xffffffff)],
    ['count near 2^32', with32(MapLayout.COUNT, 0xffffffff)],
    ['one digest byte short', good.subarray(0, good.length - 1)],
    ['one byte too many', Buffer.concat([good, Buffer.alloc(1)])],
    ['count larger than the bytes', with32(MapLayout.COUNT, 2)],
    ['size past 2^53', with64(2n ** 53n)],
    ['size 2^64 - 1', with64(2n ** 64n - 1n)],
    ['size needing too many pieces', with64(BigInt(MAX_PIECES + 1) * BigInt(P))],
    ['piece bytes 0', with32(MapLayout.PIECE_BYTES, 0)],
    ['piece bytes off the grid', with32(MapLayout.PIECE_BYTES, P + 1)],
    ['piece bytes too large', with32(MapLayout.PIECE_BYTES, 0xfffff000)]
  ]
  for (const [why, buf] of cases) piecesError(() => decodeMap(buf, D1), why)
})

test('decodeMap of random bytes or a mutated valid map either fits the layout or throws RAFSPEER_ERR_PROXY_PIECES', () => {
  const valid = fc.record({
    count: fc.integer({ min: 0, max: 6 }),
    extra: fc.integer({ min: 0, max: P - 1 }),
    pieceBytes: fc.constantFrom(P, 2 * P, DEFAULT_PIECE_BYTES),
    first: fc.nat({ max: 6 })
  }).map(({ count, extra, pieceBytes, first }) => {
    const size = count === 0 ? 0 : (count - 1) * pieceBytes + 1 + (extra % pieceBytes)
    const f = Math.min(first, count)
    return encodeMap({ size, pieceBytes, first: f, digests: digests(count - f) })
  })
  const mutated = fc.tuple(valid, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }), fc.nat())
    .map(([buf, edits, cut]) => {
      const b = Buffer.from(buf)
      for (const [at, v] of edits) b[at % b.length] = v
      return cut % 5 === 0 ? b.subarray(0, cut % (b.length + 1)) : b
    })
  const input = fc.oneof(fc.uint8Array({ maxLength: 200 }).map(u => Buffer.from(u)), mutated)
  fc.assert(fc.property(input, buf => {
    let out: ReturnType<typeof decodeMap>
    try {
      out = decodeMap(buf, D1)
    } catch (err) {
      assert.ok(err instanceof ProxyError && errorCode(err) === 'RAFSPEER_ERR_PROXY_PIECES', String(err))
      return
    }
    const { layout, part } = out
    assert.ok(part.first <= layout.count && part.first + part.digests.length <= layout.count)
    assert.ok(part.digests.every(d => d.length === PIECE_DIGEST_BYTES))
    assert.equal(part.size, layout.size)
    assert.equal(part.pieceBytes, layout.pieceBytes)
    assert.equal(buf.length, MapLayout.HEADER_BYTES + part.digests.length * PIECE_DIGEST_BYTES)
  }), { numRuns: 2000 })
})
