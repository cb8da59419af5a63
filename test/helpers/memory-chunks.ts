/**
 * A blob of random chunks held in memory, with a chunk server's cache over them: exchange tests and benches that
 * measure the exchange, not the disk.
 *
 * @example
 * ```ts
 * const { blob, chunks, plain, cache } = memoryChunks(24, 4096)
 * const server = new ChunkServer({ libp2p: node, cache })
 * ```
 */
import { randomBytes } from 'node:crypto'
import type { ServableCache } from '../../peer/index.js'
import { digestChunk, type ChunkInfo, type RafsBlobInfo } from '../../rafs/index.js'

export interface MemoryChunks {
  blob: RafsBlobInfo
  chunks: ChunkInfo[]
  /** each chunk's bytes, by index */
  plain: Buffer[]
  /** finds a chunk by digest, reads it from `plain` */
  cache: ServableCache
}

/** `count` chunks of `size` random bytes, stored uncompressed one after another in one blob (blake3 digests). */
export function memoryChunks (count: number, size: number, blobId = 'ab'.repeat(32)): MemoryChunks {
  const plain = Array.from({ length: count }, () => randomBytes(size))
  const digests = plain.map(p => digestChunk('blake3', p))
  const byDigest = new Map(digests.map((d, i) => [d.toString('hex'), i]))
  const blob: RafsBlobInfo = {
    blobId, compressor: 'none', digester: 'blake3', chunkSize: size, chunkCount: count, compressedSize: count * size, uncompressedSize: count * size,
    features: 0, ciCompressor: 'none', ciOffset: 0, ciCompressedSize: 0, ciUncompressedSize: 0, blobTocSize: 0, blobTocDigest: Buffer.alloc(32)
  }
  const chunks: ChunkInfo[] = plain.map((_, i) => ({
    digest: digests[i]!, blobIndex: 0, index: i, compressedOffset: i * size, compressedSize: size, uncompressedOffset: i * size,
    uncompressedSize: size, compressed: false, fileOffset: i * size
  }))
  const cache: ServableCache = {
    has: () => true,
    findByDigest: async (digest) => {
      const i = byDigest.get(digest.toString('hex'))
      return i === undefined ? undefined : { blobId, chunk: chunks[i]! }
    },
    readChunk: async (_blobId, chunk) => plain[chunk.index]
  }
  return { blob, chunks, plain, cache }
}
