/**
 * The `/rafspeer/chunk/1.0.0` format on its own: round trips, every bound enforced before buffering, frames split
 * anywhere across messages, and the read deadline aborting an idle stream. The stream is a stand-in that delivers
 * messages the way a libp2p stream does (message events, then a remote close); real streams are in
 * chunk-server.test.ts and neighbour-source.test.ts.
 */
import '../../polyfill.js'
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import type { Stream } from '@libp2p/interface'
import { Uint8ArrayList } from 'uint8arraylist'
import { encodeFrame } from '../../p2p/index.js'
import {
  AcceptFlags, ChunkProtocolError, ChunkStatus, ChunkTimeoutError, EntryLayout, MAX_CHUNK_BYTES, MAX_CHUNKS_PER_REQUEST, MAX_REDIRECT_ADDRS, MAX_REDIRECT_BYTES,
  MAX_REQUEST_BODY_BYTES, RequestLayout, chunkFrameReader, decodeRequest, decodeRequestBody, encodeRequest, errorReply, readChunkRequest,
  readReply, readRequest, redirectReply, replyHeader, type ChunkName
} from './chunk-protocol.js'

/** Delivers `pieces` as message events, one per turn of the loop, then closes its remote end (or hangs). */
class FakeStream extends EventTarget {
  aborted: Error | undefined
  readStatus: 'readable' | 'paused' | 'closed' = 'readable'
  maxReadBufferLength = 4 << 20
  constructor (pieces: Array<Uint8Array | Uint8ArrayList>, hang = false) {
    super()
    let i = 0
    const next = (): void => {
      if (this.aborted !== undefined) return
      const p = pieces[i++]
      if (p !== undefined) {
        this.dispatchEvent(Object.assign(new Event('message'), { data: p }))
        setImmediate(next)
      } else if (!hang) {
        this.dispatchEvent(new Event('remoteCloseWrite'))
      }
    }
    setImmediate(next)
  }

  pause (): void { this.readStatus = 'paused' }
  resume (): void { this.readStatus = 'readable' }
  abort (err: Error): void {
    this.aborted = err
    this.readStatus = 'closed'
    this.dispatchEvent(Object.assign(new Event('close'), { error: err }))
  }
}

const stream = (pieces: Array<Uint8Array | Uint8ArrayList>, hang = false): Stream => new FakeStream(pieces, hang) as unknown as Stream
const bytes = (l: Uint8ArrayList | Uint8Array): Buffer => Buffer.from(l instanceof Uint8Array ? l : l.subarray())

const name = (size: number, seed = 1): ChunkName => ({
  digest: Buffer.alloc(32, seed), blobId: Buffer.alloc(32, seed + 1).toString('hex'), ci: seed * 7, size
})

/** `data` cut into pieces of 1..max bytes */
function shred (data: Buffer, max: number): Uint8Array[] {
  const out: Uint8Array[] = []
  for (let off = 0, i = 0; off < data.length; i++) {
    const n = 1 + ((i * 7919) % max)
    out.push(data.subarray(off, off + n))
    off += n
  }
  return out
}

/** The body of a request frame (its varint prefix dropped). */
function requestBody (names: ChunkName[]): Buffer {
  const frame = bytes(encodeRequest(names))
  const body = RequestLayout.HEADER_BYTES + names.length * EntryLayout.BYTES
  return frame.subarray(frame.length - body)
}

describe('chunk protocol format', () => {
  it('round-trips a request; hints and sizes survive, unknown blob ids become empty', () => {
    const names = [name(65536, 1), name(1, 2), { ...name(MAX_CHUNK_BYTES, 3), blobId: 'not-hex' }]
    const body = requestBody(names)
    assert.equal(body.length, RequestLayout.HEADER_BYTES + 3 * EntryLayout.BYTES)
    assert.deepEqual(decodeRequestBody(body), [names[0], names[1], { ...names[2], blobId: '' }])
  })

  it('a request says whether it takes redirects, whether it follows one and whether a read waits; nothing else rides on its accept byte', async () => {
    const names = [name(100, 1)]
    assert.equal(decodeRequest(requestBody(names)).accept, 0)
    const both = AcceptFlags.REDIRECT | AcceptFlags.REDIRECTED | AcceptFlags.URGENT
    const frame = bytes(encodeRequest(names, both | AcceptFlags.ZSTD | 0x80))
    const got = await readChunkRequest(chunkFrameReader(stream([frame]), 't', 1000))
    assert.deepEqual(got, { names, accept: both })
  })

  it('a REDIRECT names a peer and the addresses its sender knows; a malformed one is refused', async () => {
    const addrs = ['/ip4/10.0.0.2/tcp/4001', '/ip6/::1/tcp/4002']
    const read = async (wire: Buffer): Promise<ReturnType<typeof readReply>> => await readReply(chunkFrameReader(stream([wire]), 't', 1000), 0, name(10), 't')
    assert.deepEqual(await read(redirectReply('12D3KooWpeer', addrs)), { i: 0, status: ChunkStatus.REDIRECT, peerId: '12D3KooWpeer', addrs })
    assert.deepEqual(await read(redirectReply('12D3KooWpeer')), { i: 0, status: ChunkStatus.REDIRECT, peerId: '12D3KooWpeer', addrs: [] })
    // addresses past MAX_REDIRECT_ADDRS, or that are not multiaddrs, are left out; the peer id always goes
    const many = redirectReply('p', ['not-an-addr', '/nope/1', ...Array.from({ length: 100 }, (_, i) => `/ip4/10.0.0.${i}/tcp/4001`)])
    const r = await read(many)
    assert.deepEqual(r.addrs, Array.from({ length: MAX_REDIRECT_ADDRS }, (_, i) => `/ip4/10.0.0.${i}/tcp/4001`))
    assert.ok(many.length <= MAX_REDIRECT_BYTES + 8)
    assert.throws(() => redirectReply(''), RangeError)
    assert.throws(() => redirectReply('a/b'), RangeError)
    assert.throws(() => redirectReply('12D3KooWl0'), RangeError, 'not base58btc')
    const raw = (text: string): Buffer => Buffer.concat([replyHeader(ChunkStatus.REDIRECT, Buffer.byteLength(text)), Buffer.from(text)])
    await assert.rejects(read(raw('\n/ip4/1.2.3.4')), /malformed redirect/)
    await assert.rejects(read(raw('peer\nnot-an-addr')), /malformed redirect/)
    await assert.rejects(read(raw('peer\n/nope/1')), /malformed redirect/)
    await assert.rejects(read(raw('pe0r\n/ip4/1.2.3.4/tcp/1')), /malformed redirect/)
    await assert.rejects(read(raw(['peer', ...Array.from({ length: MAX_REDIRECT_ADDRS + 1 }, (_, i) => `/ip4/10.0.0.${i}/tcp/1`)].join('\n'))), /malformed redirect/)
    await assert.rejects(read(replyHeader(ChunkStatus.REDIRECT)), /redirect of 0 bytes/)
    await assert.rejects(read(raw('p'.repeat(MAX_REDIRECT_BYTES + 1))), /frame of \d+ bytes \(at most/)
  })

  it('refuses requests out of bounds on both sides', () => {
    assert.throws(() => encodeRequest([]), RangeError)
    assert.throws(() => encodeRequest(Array.from({ length: MAX_CHUNKS_PER_REQUEST + 1 }, () => name(10))), RangeError)
    assert.throws(() => encodeRequest([name(MAX_CHUNK_BYTES + 1)]), RangeError)
    const body = requestBody([name(100), name(200)])
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
    const wire = Buffer.concat([bytes(encodeRequest(a)), bytes(encodeRequest(b))])
    for (const max of [1, 3, 100, 5000]) {
      const reader = chunkFrameReader(stream(shred(wire, max)), 'test', 1000)
      assert.deepEqual(await readRequest(reader), a)
      assert.deepEqual(await readRequest(reader), b)
      assert.equal(await readRequest(reader), undefined)
    }
  })

  it('refuses an oversized request length before buffering it, and a request cut short', async () => {
    const prefix = bytes(encodeFrame(Buffer.alloc(MAX_REQUEST_BODY_BYTES + 1))).subarray(0, 3)
    await assert.rejects(readRequest(chunkFrameReader(stream([prefix]), 't', 1000)), /frame of \d+ bytes \(at most/)
    await assert.rejects(readRequest(chunkFrameReader(stream([bytes(encodeRequest([name(5)])).subarray(0, 20)]), 't', 1000)), /stream ended inside a frame/)
    await assert.rejects(readRequest(chunkFrameReader(stream([Buffer.from([0x80])]), 't', 1000)), /inside a frame length/)
    await assert.rejects(readRequest(chunkFrameReader(stream([Buffer.from([0x80, 0x80, 0x80, 0x80, 0x80, 1])]), 't', 1000)), /length prefix longer/)
  })

  it('reads replies of every status across message boundaries; payloads are exact', async () => {
    const names = [name(70000, 1), name(10, 2), name(10, 3), name(10, 4), name(1, 5), name(10, 6)]
    const chunk = randomBytes(70000)
    const tiny = randomBytes(1)
    const wire = Buffer.concat([
      replyHeader(ChunkStatus.OK, chunk.length), chunk,
      replyHeader(ChunkStatus.NOT_FOUND),
      replyHeader(ChunkStatus.BUSY),
      errorReply('disk on fire'),
      replyHeader(ChunkStatus.OK, 1), tiny,
      replyHeader(ChunkStatus.PENDING)
    ])
    for (const max of [1, 9, 65536, wire.length]) {
      const reader = chunkFrameReader(stream(shred(wire, max)), 'test', 1000)
      const r = []
      for (let i = 0; i < names.length; i++) r.push(await readReply(reader, i, names[i]!, 'test'))
      assert.ok(r[0]!.payload!.equals(chunk))
      assert.deepEqual(r.slice(1, 4).map(x => [x.status, x.message]), [[ChunkStatus.NOT_FOUND, undefined], [ChunkStatus.BUSY, undefined], [ChunkStatus.ERROR, 'disk on fire']])
      assert.ok(r[4]!.payload!.equals(tiny))
      assert.equal(r[5]!.status, ChunkStatus.PENDING)
    }
  })

  it('refuses replies that break the format: wrong size, unknown status or encoding, payload on NOT_FOUND', async () => {
    const read = async (wire: Buffer, size = 10): Promise<unknown> => await readReply(chunkFrameReader(stream([wire]), 't', 1000), 0, name(size), 't')
    await assert.rejects(read(Buffer.concat([replyHeader(ChunkStatus.OK, 11), Buffer.alloc(11)])), /of 11 bytes, asked for 10/)
    // a frame longer than the chunk asked for is refused from its length alone
    await assert.rejects(read(replyHeader(ChunkStatus.OK, MAX_CHUNK_BYTES)), /frame of \d+ bytes \(at most/)
    await assert.rejects(read(replyHeader(7 as ChunkStatus)), /unknown status 7/)
    await assert.rejects(read(Buffer.concat([replyHeader(ChunkStatus.OK, 10, 1), Buffer.alloc(10)])), /encoding 1/)
    await assert.rejects(read(Buffer.concat([replyHeader(ChunkStatus.NOT_FOUND, 3), Buffer.alloc(3)])), /payload/)
    await assert.rejects(read(Buffer.concat([replyHeader(ChunkStatus.ERROR, 1500), Buffer.alloc(1500)]), 10_000), /error message of 1500 bytes/)
    await assert.rejects(read(Buffer.concat([replyHeader(ChunkStatus.OK, 10), Buffer.alloc(4)])), /stream ended inside a frame/)
    await assert.rejects(read(Buffer.from(encodeFrame(Buffer.alloc(1)).subarray())), /reply 0 of 1 bytes/)
  })

  it('aborts a stream that idles past the read deadline', async () => {
    const s = stream([bytes(encodeRequest([name(5)])).subarray(0, 10)], true)
    const started = performance.now()
    await assert.rejects(readRequest(chunkFrameReader(s, 'idle test', 50)), (err: Error) => err instanceof ChunkTimeoutError && /nothing received for 50 ms/.test(err.message))
    assert.ok((s as unknown as FakeStream).aborted instanceof ChunkTimeoutError)
    assert.ok(performance.now() - started < 1000)
  })
})
