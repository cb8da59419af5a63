/**
 * An opaque OCI blob (a gzip or zstd layer, a config) as the mirror moves it between nodes: cut into fixed pieces,
 * each named by the blake3 digest of its bytes. The list of those digests is the blob's piece map. A piece is a
 * chunk to the rest of the node: it lives in the blob cache under a blob id of its own (never the layer's sha256,
 * which a RAFS data blob of the same digest would use for its uncompressed view), it is announced to the scheduler
 * and served to neighbours by digest like any chunk, and the fetch pipeline verifies it like any chunk.
 *
 * The map itself is only trustworthy once the whole blob hashed to its sha256: pieces checked against a forged map
 * are consistently wrong. So a map is `confirmed` only by a node that verified the blob's digest itself; a map
 * from a neighbour is a claim until then (see `blob-job.ts`).
 *
 * The binary form (a map file, a reply of `/rafspeer/piecemap/1.0.0`):
 * ```
 * magic "RPMAP1\0\0" [8] | size u64 BE | piece bytes u32 BE | first u32 BE | count u32 BE | count × digest [32]
 * ```
 * `first` is the index of the first digest carried (a neighbour may send the part of a map it has so far).
 *
 * @example
 * ```ts
 * const layout = pieceLayout('sha256:ab…', 300 << 20)
 * const blob = pieceBlob(layout)            // register with the cache, fetch pieces with the fetcher
 * const chunk = pieceChunk(layout, 3, digest)
 * ```
 */
import { createHash } from 'node:crypto'
import { digestChunk, type ChunkInfo, type RafsBlobInfo } from '../rafs/index.js'
import { ProxyError } from './errors.js'

/** 4 MiB: a piece is one request to a neighbour, a few ms on a LAN, and a 256 MiB layer is 64 of them */
export const DEFAULT_PIECE_BYTES = 4 << 20
export const MIN_PIECE_BYTES = 64 << 10
/** the chunk protocol's largest chunk */
export const MAX_PIECE_BYTES = 16 << 20
export const PIECE_DIGEST_BYTES = 32
/** a blob this large has more pieces than a map reply should carry; it is passed through, not cached */
export const MAX_PIECES = 1 << 18

export const MapLayout = { MAGIC: 0, SIZE: 8, PIECE_BYTES: 16, FIRST: 20, COUNT: 24, HEADER_BYTES: 28 } as const
const MAGIC = Buffer.from('RPMAP1\0\0', 'latin1')

/** How a blob is cut: its digest and size, the piece size, and the cache blob id its pieces live under. */
export interface PieceLayout {
  /** `sha256:<hex>` of the whole blob */
  digest: string
  size: number
  pieceBytes: number
  count: number
  /** hex sha256 naming the pieces' cache blob */
  blobId: string
}

export function pieceLayout (digest: string, size: number, pieceBytes = DEFAULT_PIECE_BYTES): PieceLayout {
  if (!Number.isSafeInteger(size) || size < 0) throw new ProxyError('RAFSPEER_ERR_PROXY_PIECES', `blob ${digest}: invalid size ${size}`)
  if (!Number.isSafeInteger(pieceBytes) || pieceBytes < MIN_PIECE_BYTES || pieceBytes > MAX_PIECE_BYTES || pieceBytes % 4096 !== 0) {
    throw new ProxyError('RAFSPEER_ERR_PROXY_PIECES', `piece size ${pieceBytes} must be a multiple of 4096 between ${MIN_PIECE_BYTES} and ${MAX_PIECE_BYTES}`)
  }
  const count = Math.ceil(size / pieceBytes)
  if (count > MAX_PIECES) throw new ProxyError('RAFSPEER_ERR_PROXY_PIECES', `blob ${digest} of ${size} bytes has more than ${MAX_PIECES} pieces`)
  return { digest, size, pieceBytes, count, blobId: pieceBlobId(digest, pieceBytes) }
}

/** The cache blob id of a blob's pieces: distinct from the blob's own digest and from other piece sizes. */
export function pieceBlobId (digest: string, pieceBytes: number): string {
  return createHash('sha256').update(`rafspeer-oci-pieces\0${digest}\0${pieceBytes}`).digest('hex')
}

/** The digest the swarm knows a blob's piece map under: who announces it can send the map. */
export function mapKey (digest: string): Buffer {
  return createHash('sha256').update(`rafspeer-piece-map\0${digest}`).digest()
}

/** Byte length of piece `i`. */
export function pieceLength (l: PieceLayout, i: number): number {
  return Math.min(l.pieceBytes, l.size - i * l.pieceBytes)
}

/** The pieces' blob as the cache and the fetch pipeline see it: stored plain, each piece one chunk. */
export function pieceBlob (l: PieceLayout): RafsBlobInfo {
  return {
    blobId: l.blobId,
    compressor: 'none',
    digester: 'blake3',
    chunkSize: l.pieceBytes,
    chunkCount: l.count,
    compressedSize: l.size,
    uncompressedSize: Math.ceil(l.size / 4096) * 4096,
    features: 0,
    ciCompressor: 'none',
    ciOffset: 0,
    ciCompressedSize: 0,
    ciUncompressedSize: 0,
    blobTocSize: 0,
    blobTocDigest: Buffer.alloc(32)
  }
}

/** Piece `i` as a chunk of `pieceBlob(l)`. */
export function pieceChunk (l: PieceLayout, i: number, digest: Buffer): ChunkInfo {
  const offset = i * l.pieceBytes
  const size = pieceLength(l, i)
  return {
    digest, blobIndex: 0, index: i, compressedOffset: offset, compressedSize: size, uncompressedOffset: offset,
    uncompressedSize: size, compressed: false, fileOffset: offset
  }
}

/** The blake3 digest a piece's bytes must have. */
export function pieceDigest (bytes: Uint8Array): Buffer {
  return digestChunk('blake3', bytes)
}

/** A run of a map: digests of pieces `first …`. */
export interface MapPart {
  size: number
  pieceBytes: number
  first: number
  digests: Buffer[]
}

export function encodeMap (part: MapPart): Buffer {
  const out = Buffer.alloc(MapLayout.HEADER_BYTES + part.digests.length * PIECE_DIGEST_BYTES)
  MAGIC.copy(out, MapLayout.MAGIC)
  out.writeBigUInt64BE(BigInt(part.size), MapLayout.SIZE)
  out.writeUInt32BE(part.pieceBytes, MapLayout.PIECE_BYTES)
  out.writeUInt32BE(part.first, MapLayout.FIRST)
  out.writeUInt32BE(part.digests.length, MapLayout.COUNT)
  part.digests.forEach((d, i) => { d.copy(out, MapLayout.HEADER_BYTES + i * PIECE_DIGEST_BYTES) })
  return out
}

/**
 * Decodes and bounds-checks a map part (a file or a neighbour's reply) against the blob it claims to describe:
 * the digests must fit the layout the size and piece size give. Throws RAFSPEER_ERR_PROXY_PIECES.
 */
export function decodeMap (buf: Buffer, digest: string): { layout: PieceLayout, part: MapPart } {
  const bad = (why: string): ProxyError => new ProxyError('RAFSPEER_ERR_PROXY_PIECES', `piece map of ${digest}: ${why}`)
  if (buf.length < MapLayout.HEADER_BYTES || !buf.subarray(0, 8).equals(MAGIC)) throw bad('not a piece map')
  const size = buf.readBigUInt64BE(MapLayout.SIZE)
  if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`size ${size} too large`)
  const pieceBytes = buf.readUInt32BE(MapLayout.PIECE_BYTES)
  const first = buf.readUInt32BE(MapLayout.FIRST)
  const n = buf.readUInt32BE(MapLayout.COUNT)
  let layout: PieceLayout
  try { layout = pieceLayout(digest, Number(size), pieceBytes) } catch (err) { throw bad((err as Error).message) }
  if (first > layout.count || n > layout.count - first) throw bad(`pieces ${first}+${n} beyond its ${layout.count}`)
  if (buf.length !== MapLayout.HEADER_BYTES + n * PIECE_DIGEST_BYTES) throw bad(`${buf.length} bytes for ${n} digests`)
  const digests: Buffer[] = []
  for (let i = 0; i < n; i++) {
    const at = MapLayout.HEADER_BYTES + i * PIECE_DIGEST_BYTES
    digests.push(Buffer.from(buf.subarray(at, at + PIECE_DIGEST_BYTES)))
  }
  return { layout, part: { size: layout.size, pieceBytes, first, digests } }
}
