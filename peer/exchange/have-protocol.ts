/**
 * The wire format of `/rafspeer/have/1.0.0`: which chunks of which blobs a neighbour has, or is fetching now. With
 * the scheduler at blob level (who works on blob B), chunk availability travels between the neighbours of a blob,
 * as in BitTorrent: a bitfield when one side says it is interested in a blob, then batched HAVE and PENDING
 * updates for as long as the interest lasts; and WANT_HAVE for chunks that other blobs share by digest.
 *
 * One long-lived stream per pair of peers, both ways. Every message is a frame of `p2p/framing.ts` whose body
 * starts with its type:
 *
 * ```
 * INTEREST      = 1 | count u16 | count × blob [32]        I work on these blobs: send your bitfields and updates
 * UNINTEREST    = 2 | count u16 | count × blob [32]        no more updates for these
 * BITFIELD      = 3 | blob [32] | chunks u32 | have bits [⌈chunks/8⌉] | pending count u16 | pending × ci u32
 *                                                           (bit i is 0x80 >> (i & 7) of byte i >> 3, as the cache keeps it)
 * HAVE          = 4 | blob [32] | count u16 | count × ci u32   these are now verified in my cache
 * PENDING       = 5 | blob [32] | count u16 | count × ci u32   I am fetching these now (wait for me)
 * DROPPED       = 6 | blob [32] | count u16 | count × ci u32   no longer have / no longer fetching these
 * WANT_HAVE     = 7 | id u32 | count u16 | count × digest [32] which of these chunks do you hold (any blob)?
 * HAVE_DIGESTS  = 8 | id u32 | count u16 | have bits [⌈count/8⌉]
 * ```
 *
 * Integers are big-endian. Every count and size is bounded before anything is allocated.
 */
import { RafspeerError } from '../../base/index.js'

export const HAVE_PROTOCOL = '/rafspeer/have/1.0.0'

export const BLOB_KEY_BYTES = 32
export const DIGEST_BYTES = 32
/** blobs one INTEREST names */
export const MAX_BLOBS_PER_MESSAGE = 1024
/** chunk indexes one HAVE / PENDING / DROPPED names, and pending ones a BITFIELD carries */
export const MAX_INDEXES_PER_MESSAGE = 16_384
/** chunks a blob may have (RAFS: a u32 index; 2^24 × 1 MiB chunks is 16 TiB) */
export const MAX_CHUNKS_PER_BLOB = 1 << 24
export const MAX_DIGESTS_PER_WANT = 4096
/** the largest body: a full bitfield of the largest blob and its pending list */
export const MAX_HAVE_FRAME_BYTES = 1 + BLOB_KEY_BYTES + 4 + MAX_CHUNKS_PER_BLOB / 8 + 2 + MAX_INDEXES_PER_MESSAGE * 4

export const HaveType = { INTEREST: 1, UNINTEREST: 2, BITFIELD: 3, HAVE: 4, PENDING: 5, DROPPED: 6, WANT_HAVE: 7, HAVE_DIGESTS: 8 } as const
export type HaveType = typeof HaveType[keyof typeof HaveType]

export type HaveMessage =
  | { type: 'interest' | 'uninterest', blobs: Buffer[] }
  | { type: 'bitfield', blob: Buffer, chunks: number, bits: Uint8Array, pending: number[] }
  | { type: 'have' | 'pending' | 'dropped', blob: Buffer, indexes: number[] }
  | { type: 'want-have', id: number, digests: Buffer[] }
  | { type: 'have-digests', id: number, count: number, bits: Uint8Array }

/** The other side broke the format. */
export class HaveProtocolError extends RafspeerError<'RAFSPEER_ERR_HAVE_PROTOCOL'> {
  constructor (message: string, options?: { cause?: unknown }) { super('RAFSPEER_ERR_HAVE_PROTOCOL', message, options) }
}

const bitBytes = (n: number): number => (n + 7) >>> 3

export function encodeHave (m: HaveMessage): Buffer {
  switch (m.type) {
    case 'interest':
    case 'uninterest': {
      bound(m.blobs.length, MAX_BLOBS_PER_MESSAGE, 'blobs')
      const out = Buffer.allocUnsafe(3 + m.blobs.length * BLOB_KEY_BYTES)
      out[0] = m.type === 'interest' ? HaveType.INTEREST : HaveType.UNINTEREST
      out.writeUInt16BE(m.blobs.length, 1)
      m.blobs.forEach((b, i) => { key(b).copy(out, 3 + i * BLOB_KEY_BYTES) })
      return out
    }
    case 'bitfield': {
      bound(m.chunks, MAX_CHUNKS_PER_BLOB, 'chunks')
      bound(m.pending.length, MAX_INDEXES_PER_MESSAGE, 'pending chunks')
      const nb = bitBytes(m.chunks)
      if (m.bits.length < nb) throw new RangeError(`bitfield of ${m.bits.length} bytes for ${m.chunks} chunks`)
      const out = Buffer.allocUnsafe(1 + BLOB_KEY_BYTES + 4 + nb + 2 + m.pending.length * 4)
      out[0] = HaveType.BITFIELD
      key(m.blob).copy(out, 1)
      out.writeUInt32BE(m.chunks, 33)
      out.set(m.bits.subarray(0, nb), 37)
      // bits past the last chunk are sent as zero, so both sides agree on counts
      if ((m.chunks & 7) !== 0) out[37 + nb - 1] &= tailMask(m.chunks)
      let p = 37 + nb
      out.writeUInt16BE(m.pending.length, p)
      p += 2
      for (const ci of m.pending) { out.writeUInt32BE(index(ci, m.chunks), p); p += 4 }
      return out
    }
    case 'have':
    case 'pending':
    case 'dropped': {
      bound(m.indexes.length, MAX_INDEXES_PER_MESSAGE, 'chunk indexes')
      const out = Buffer.allocUnsafe(1 + BLOB_KEY_BYTES + 2 + m.indexes.length * 4)
      out[0] = m.type === 'have' ? HaveType.HAVE : m.type === 'pending' ? HaveType.PENDING : HaveType.DROPPED
      key(m.blob).copy(out, 1)
      out.writeUInt16BE(m.indexes.length, 33)
      m.indexes.forEach((ci, i) => { out.writeUInt32BE(index(ci, MAX_CHUNKS_PER_BLOB), 35 + i * 4) })
      return out
    }
    case 'want-have': {
      bound(m.digests.length, MAX_DIGESTS_PER_WANT, 'digests')
      const out = Buffer.allocUnsafe(7 + m.digests.length * DIGEST_BYTES)
      out[0] = HaveType.WANT_HAVE
      out.writeUInt32BE(m.id >>> 0, 1)
      out.writeUInt16BE(m.digests.length, 5)
      m.digests.forEach((d, i) => { key(d).copy(out, 7 + i * DIGEST_BYTES) })
      return out
    }
    case 'have-digests': {
      bound(m.count, MAX_DIGESTS_PER_WANT, 'digests')
      const nb = bitBytes(m.count)
      const out = Buffer.alloc(7 + nb)
      out[0] = HaveType.HAVE_DIGESTS
      out.writeUInt32BE(m.id >>> 0, 1)
      out.writeUInt16BE(m.count, 5)
      out.set(m.bits.subarray(0, nb), 7)
      if ((m.count & 7) !== 0) out[7 + nb - 1] &= tailMask(m.count)
      return out
    }
  }
}

/** Decodes one frame body; anything malformed throws {@link HaveProtocolError}. */
export function decodeHave (body: Uint8Array): HaveMessage {
  const b = Buffer.from(body.buffer, body.byteOffset, body.byteLength)
  const need = (n: number, what: string): void => {
    if (b.length < n) throw new HaveProtocolError(`have message: ${what} needs ${n} bytes, got ${b.length}`)
  }
  const exact = (n: number, what: string): void => {
    if (b.length !== n) throw new HaveProtocolError(`have message: ${what} is ${n} bytes, got ${b.length}`)
  }
  need(1, 'a type')
  switch (b[0]) {
    case HaveType.INTEREST:
    case HaveType.UNINTEREST: {
      need(3, 'an interest')
      const n = b.readUInt16BE(1)
      if (n > MAX_BLOBS_PER_MESSAGE) throw new HaveProtocolError(`have message: ${n} blobs (at most ${MAX_BLOBS_PER_MESSAGE})`)
      exact(3 + n * BLOB_KEY_BYTES, `an interest in ${n} blobs`)
      const blobs: Buffer[] = []
      for (let i = 0; i < n; i++) blobs.push(Buffer.from(b.subarray(3 + i * BLOB_KEY_BYTES, 3 + (i + 1) * BLOB_KEY_BYTES)))
      return { type: b[0] === HaveType.INTEREST ? 'interest' : 'uninterest', blobs }
    }
    case HaveType.BITFIELD: {
      need(37, 'a bitfield header')
      const chunks = b.readUInt32BE(33)
      if (chunks > MAX_CHUNKS_PER_BLOB) throw new HaveProtocolError(`have message: a blob of ${chunks} chunks (at most ${MAX_CHUNKS_PER_BLOB})`)
      const nb = bitBytes(chunks)
      need(37 + nb + 2, `a bitfield of ${chunks} chunks`)
      const bits = new Uint8Array(b.subarray(37, 37 + nb))
      if ((chunks & 7) !== 0 && (bits[nb - 1]! & ~tailMask(chunks) & 0xff) !== 0) throw new HaveProtocolError('have message: bits set past the last chunk')
      const np = b.readUInt16BE(37 + nb)
      if (np > MAX_INDEXES_PER_MESSAGE) throw new HaveProtocolError(`have message: ${np} pending chunks (at most ${MAX_INDEXES_PER_MESSAGE})`)
      exact(37 + nb + 2 + np * 4, `a bitfield with ${np} pending chunks`)
      const pending: number[] = []
      for (let i = 0; i < np; i++) pending.push(checkIndex(b.readUInt32BE(37 + nb + 2 + i * 4), chunks))
      return { type: 'bitfield', blob: Buffer.from(b.subarray(1, 33)), chunks, bits, pending }
    }
    case HaveType.HAVE:
    case HaveType.PENDING:
    case HaveType.DROPPED: {
      need(35, 'an update')
      const n = b.readUInt16BE(33)
      if (n > MAX_INDEXES_PER_MESSAGE) throw new HaveProtocolError(`have message: ${n} chunk indexes (at most ${MAX_INDEXES_PER_MESSAGE})`)
      exact(35 + n * 4, `an update of ${n} chunks`)
      const indexes: number[] = []
      for (let i = 0; i < n; i++) indexes.push(checkIndex(b.readUInt32BE(35 + i * 4), MAX_CHUNKS_PER_BLOB))
      const type = b[0] === HaveType.HAVE ? 'have' : b[0] === HaveType.PENDING ? 'pending' : 'dropped'
      return { type, blob: Buffer.from(b.subarray(1, 33)), indexes }
    }
    case HaveType.WANT_HAVE: {
      need(7, 'a want-have')
      const n = b.readUInt16BE(5)
      if (n > MAX_DIGESTS_PER_WANT) throw new HaveProtocolError(`have message: ${n} digests (at most ${MAX_DIGESTS_PER_WANT})`)
      exact(7 + n * DIGEST_BYTES, `a want-have of ${n} digests`)
      const digests: Buffer[] = []
      for (let i = 0; i < n; i++) digests.push(Buffer.from(b.subarray(7 + i * DIGEST_BYTES, 7 + (i + 1) * DIGEST_BYTES)))
      return { type: 'want-have', id: b.readUInt32BE(1), digests }
    }
    case HaveType.HAVE_DIGESTS: {
      need(7, 'a have-digests')
      const n = b.readUInt16BE(5)
      if (n > MAX_DIGESTS_PER_WANT) throw new HaveProtocolError(`have message: ${n} digests (at most ${MAX_DIGESTS_PER_WANT})`)
      exact(7 + bitBytes(n), `a have-digests of ${n} digests`)
      const bits = new Uint8Array(b.subarray(7))
      if ((n & 7) !== 0 && (bits[bits.length - 1]! & ~tailMask(n) & 0xff) !== 0) throw new HaveProtocolError('have message: bits set past the last digest')
      return { type: 'have-digests', id: b.readUInt32BE(1), count: n, bits }
    }
    default:
      throw new HaveProtocolError(`have message: unknown type ${b[0]}`)
  }
}

export const getBit = (bits: Uint8Array, i: number): boolean => ((bits[i >>> 3] ?? 0) & (0x80 >>> (i & 7))) !== 0
export const setBit = (bits: Uint8Array, i: number): void => { bits[i >>> 3]! |= 0x80 >>> (i & 7) }
export const clearBit = (bits: Uint8Array, i: number): void => { bits[i >>> 3]! &= ~(0x80 >>> (i & 7)) }
/** the bits of the last byte that name real entries when there are `n` (n % 8 ≠ 0) */
const tailMask = (n: number): number => (0xff00 >>> (n & 7)) & 0xff
export const newBits = (n: number): Uint8Array => new Uint8Array(bitBytes(n))

function bound (n: number, max: number, what: string): void {
  if (!Number.isSafeInteger(n) || n < 0 || n > max) throw new RangeError(`${n} ${what} (at most ${max})`)
}

function key (b: Buffer): Buffer {
  if (b.length !== BLOB_KEY_BYTES) throw new RangeError(`a blob key or digest is ${BLOB_KEY_BYTES} bytes, got ${b.length}`)
  return b
}

function index (ci: number, chunks: number): number {
  if (!Number.isInteger(ci) || ci < 0 || ci >= chunks) throw new RangeError(`chunk index ${ci} outside [0, ${chunks})`)
  return ci
}

function checkIndex (ci: number, chunks: number): number {
  if (ci >= chunks) throw new HaveProtocolError(`have message: chunk index ${ci} outside [0, ${chunks})`)
  return ci
}
