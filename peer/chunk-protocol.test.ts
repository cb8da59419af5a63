/**
 * The `/rafspeer/chunk/1.0.0` framing on its own: round trips, every bound enforced before buffering, frames
 * split anywhere across messages, and the read deadline aborting an idle stream.
 */
import '../polyfill.js'
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { Uint8ArrayList } from 'uint8arraylist'
import {
  ChunkProtocolError, ChunkStatus, ChunkTimeoutError, EntryLayout, FrameReader, LENGTH_PREFIX_BYTES, MAX_CHUNK_BYTES,
  MAX_CHUNKS_PER_REQUEST, MAX_REQUEST_BODY_BYTES, RequestLayout, decodeRequestBody, encodeErrorReply, encodeReplyHeader,
  encodeRequest, type ChunkName
} from './chunk-protocol.js'

/** A stream stand-in: yields the given pieces, then ends (or hangs until aborted). */
class FakeStream {
  aborted: Error | undefined
  private wake: (() => void) | undefined
  constructor (private readonly pieces: Array<Uint8Array | Uint8ArrayList>, private readonly hang = false) {}
  abort (err: Error): void { this.aborted = err; this.wake?.() }
  async * [Symbol.asyncIterator] (): AsyncGenerator<Uint8Array | Uint8ArrayList> {
    for (const p of this.pieces) {
      if (this.aborted !== undefined) throw this.aborted
      yield p
    }
    if (this.hang) await new Promise<void>(resolve => { this.wake = resolve })
    if (this.aborted !== undefined) throw this.aborted
  }
}

const name = (size: number, seed = 1): ChunkName => ({
  digest: Buffer.alloc(32, seed), blobId: Buffer.alloc(32, seed + 1).toString('hex'), ci: seed * 7, size
})

/** `bytes` cut into pieces of 1..max bytes */
function shred (bytes: Buffer, max: number): Uint8Array[] {
  const out: Uint8Array[] = []
  for (let off = 0, i = 0; off < bytes.length; i++) {
    const n = 1 + ((i * 7919) % max)
    out.push(bytes.subarray(off, off + n))
    off += n
  }
  return out
}

describe('chunk protocol framing', () => {
  it('round-trips a request; hints and sizes survive, unknown blob ids become empty', () => {
    const names = [name(65536, 1), name(1, 2), { ...name(MAX_CHUNK_BYTES, 3), blobId: 'not-hex' }]
    const frame = encodeRequest(names)
    assert.equal(frame.readUInt32BE(0), RequestLayout.HEADER_BYTES + 3 * EntryLayout.BYTES)
    const back = decodeRequestBody(frame.subarray(LENGTH_PREFIX_BYTES))
    assert.deepEqual(back, [names[0], names[1], { ...names[2], blobId: '' }])
  })

  it('refuses requests out of bounds on both sides', () => {
    assert.throws(() => encodeRequest([]), RangeError)
    assert.throws(() => encodeRequest(Array.from({ length: MAX_CHUNKS_PER_REQUEST + 1 }, () => name(10))), RangeError)
    assert.throws(() => encodeRequest([name(MAX_CHUNK_BYTES + 1)]), RangeError)
    const body = encodeRequest([name(100), name(200)]).subarray(LENGTH_PREFIX_BYTES)
    const bad = (patch: (b: Buffer) => Buffer): void => { assert.throws(() => decodeRequestBody(patch(Buffer.from(body))), ChunkProtocolError) }
    bad(b => { b[RequestLayout.VERSION] = 9; return b })
    bad(b => { b.writeUInt16BE(0, RequestLayout.COUNT); return b })
    bad(b => { b.writeUInt16BE(3, RequestLayout.COUNT); return b })
    bad(b => { b.writeUInt16BE(MAX_CHUNKS_PER_REQUEST + 1, RequestLayout.COUNT); return b })
    bad(b => { b.writeUInt32BE(0, RequestLayout.HEADER_BYTES + EntryLayout.SIZE); return b })
    bad(b => { b.writeUInt32BE(MAX_CHUNK_BYTES + 1, RequestLayout.HEADER_BYTES + EntryLayout.SIZE); return b })
    bad(b => b.subarray(0, b.length - 1))
    bad(b => b.subarray(0, 2))
  })

  it('reads requests split at every byte, several on one stream, then a clean end', async () => {
    const a = [name(4096, 1), name(70000, 2)]
    const b = Array.from({ length: MAX_CHUNKS_PER_REQUEST }, (_, i) => name(1000 + i, i + 3))
    const bytes = Buffer.concat([encodeRequest(a), encodeRequest(b)])
    for (const max of [1, 3, 100, 5000]) {
      const reader = new FrameReader(new FakeStream(shred(bytes, max)), 1000, 'test')
      assert.deepEqual(await reader.readRequest(), a)
      assert.deepEqual(await reader.readRequest(), b)
      assert.equal(await reader.readRequest(), undefined)
    }
  })

  it('refuses an oversized request length before buffering it, and a request cut short', async () => {
    const huge = Buffer.alloc(4)
    huge.writeUInt32BE(MAX_REQUEST_BODY_BYTES + 1)
    await assert.rejects(new FrameReader(new FakeStream([huge]), 1000, 't').readRequest(), /request body of/)
    await assert.rejects(new FrameReader(new FakeStream([encodeRequest([name(5)]).subarray(0, 20)]), 1000, 't').readRequest(), /stream ended inside a request/)
    await assert.rejects(new FrameReader(new FakeStream([Buffer.from([0, 0])]), 1000, 't').readRequest(), /inside a request length/)
  })

  it('reads replies of every status across message boundaries; payloads are exact', async () => {
    const names = [name(70000, 1), name(10, 2), name(10, 3), name(10, 4), name(1, 5)]
    const chunk = randomBytes(70000)
    const tiny = randomBytes(1)
    const wire = new Uint8ArrayList(
      encodeReplyHeader(ChunkStatus.OK, chunk.length), chunk,
      encodeReplyHeader(ChunkStatus.NOT_FOUND),
      encodeReplyHeader(ChunkStatus.BUSY),
      encodeErrorReply('disk on fire'),
      encodeReplyHeader(ChunkStatus.OK, 1), tiny
    ).subarray()
    for (const max of [1, 9, 65536, wire.length]) {
      const reader = new FrameReader(new FakeStream(shred(Buffer.from(wire), max)), 1000, 'test')
      const r = []
      for (let i = 0; i < names.length; i++) r.push(await reader.readReply(i, names[i]!))
      assert.ok(r[0]!.payload!.equals(chunk))
      assert.deepEqual(r.slice(1, 4).map(x => [x.status, x.message]), [[ChunkStatus.NOT_FOUND, undefined], [ChunkStatus.BUSY, undefined], [ChunkStatus.ERROR, 'disk on fire']])
      assert.ok(r[4]!.payload!.equals(tiny))
    }
  })

  it('refuses replies that break the format: wrong size, unknown status or encoding, payload on NOT_FOUND', async () => {
    const read = async (wire: Uint8Array, size = 10): Promise<unknown> => await new FrameReader(new FakeStream([wire]), 1000, 't').readReply(0, name(size))
    await assert.rejects(read(Buffer.concat([encodeReplyHeader(ChunkStatus.OK, 11), Buffer.alloc(11)])), /of 11 bytes, asked for 10/)
    await assert.rejects(read(Buffer.concat([encodeReplyHeader(ChunkStatus.OK, MAX_CHUNK_BYTES + 8)])), /asked for 10/)
    await assert.rejects(read(encodeReplyHeader(7 as ChunkStatus)), /unknown status 7/)
    await assert.rejects(read(Buffer.concat([encodeReplyHeader(ChunkStatus.OK, 10, 1), Buffer.alloc(10)])), /encoding 1/)
    await assert.rejects(read(Buffer.concat([encodeReplyHeader(ChunkStatus.NOT_FOUND, 3), Buffer.alloc(3)])), /payload/)
    await assert.rejects(read(encodeReplyHeader(ChunkStatus.ERROR, 5000)), /error message of 5000 bytes/)
    await assert.rejects(read(Buffer.concat([encodeReplyHeader(ChunkStatus.OK, 10), Buffer.alloc(4)])), /stream ended inside a reply/)
  })

  it('aborts a stream that idles past the read deadline', async () => {
    const stream = new FakeStream([encodeRequest([name(5)]).subarray(0, 10)], true)
    const started = performance.now()
    await assert.rejects(new FrameReader(stream, 50, 'idle test').readRequest(), (err: Error) => err instanceof ChunkTimeoutError && /nothing received for 50 ms/.test(err.message))
    assert.ok(stream.aborted instanceof ChunkTimeoutError)
    assert.ok(performance.now() - started < 1000)
  })
})
