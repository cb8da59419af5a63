/**
 * Checking a data blob where it lives, in the registry: its tail (ToC, blob.meta header, ci array) through ranged
 * reads, its ci entries against the bootstrap's chunk table, and every chunk's digest while the blob streams past
 * once (the client checks the blob's sha256 on the same pass).
 */
import type { Readable } from 'node:stream'
import { decompressChunk, digestChunk, readBlobTail, type BlobByteSource, type BlobTail, type ChunkInfo, type RafsBlobInfo } from '../rafs/index.js'
import type { ImageReference, RegistryClient } from '../registry/index.js'

/** Ranged reads stay under this; the tail reader asks for one section at a time. */
const MAX_READ = 64 << 20

/** A BlobByteSource over registry Range GETs (size from HEAD). */
export function registryByteSource (client: RegistryClient, repo: ImageReference, digest: string, size: number, signal?: AbortSignal): BlobByteSource {
  return {
    size,
    async read (offset, length) {
      if (length === 0) return Buffer.alloc(0)
      if (length > MAX_READ) throw new RangeError(`a ${length}-byte read of ${digest} is over the ${MAX_READ}-byte limit`)
      return await client.fetchBlobRange(repo, digest, offset, offset + length - 1, signal !== undefined ? { signal } : {})
    }
  }
}

export interface Report { error: (m: string) => void, warn: (m: string) => void }

const msg = (err: unknown): string => err instanceof Error ? err.message : String(err)

export async function readRemoteTail (src: BlobByteSource, blob: RafsBlobInfo, r: Report): Promise<BlobTail | undefined> {
  try {
    return await readBlobTail(src, blob)
  } catch (err) {
    r.error(`blob ${blob.blobId}: ${msg(err)}`)
    return undefined
  }
}

/** The bootstrap's chunk table (chunks of this blob that files use) against the blob's ci array and blob.digest. */
export function compareCi (blob: RafsBlobInfo, tail: BlobTail, used: ChunkInfo[], r: Report): void {
  const where = `blob ${blob.blobId}`
  if (tail.ci.length !== blob.chunkCount) r.error(`${where}: ci array has ${tail.ci.length} entries, the blob table says ${blob.chunkCount}`)
  for (const c of used) {
    const e = tail.ci[c.index]
    if (e === undefined) { r.error(`${where}: chunk ${c.index} is used by the bootstrap but the ci array has ${tail.ci.length} entries`); continue }
    if (e.compressedOffset !== c.compressedOffset || e.compressedSize !== c.compressedSize || e.uncompressedOffset !== c.uncompressedOffset ||
      e.uncompressedSize !== c.uncompressedSize || e.compressed !== c.compressed) {
      r.error(`${where}: ci entry ${c.index} (${e.compressedOffset}+${e.compressedSize} → ${e.uncompressedOffset}+${e.uncompressedSize}) differs from the chunk table (${c.compressedOffset}+${c.compressedSize} → ${c.uncompressedOffset}+${c.uncompressedSize})`)
    }
    const d = tail.digests?.[c.index]
    if (d !== undefined && !d.equals(c.digest)) r.error(`${where}: blob.digest[${c.index}] ${d.toString('hex')} differs from the chunk table's ${c.digest.toString('hex')}`)
  }
}

/**
 * Streams the blob once and verifies each chunk as its bytes pass: decompress to the promised size, digest,
 * compare with the chunk table (or blob.digest for a chunk no file uses). Memory: one chunk plus one piece.
 * Returns the number of chunks verified.
 */
export async function verifyChunksStreaming (stream: Readable, blob: RafsBlobInfo, tail: BlobTail, used: Map<number, ChunkInfo>, r: Report): Promise<number> {
  const where = `blob ${blob.blobId}`
  const order = tail.ci.map((e, i) => ({ e, i })).sort((a, b) => a.e.compressedOffset - b.e.compressedOffset)
  let k = 0
  let verified = 0
  let base = 0 // stream offset of pieces[0][0]
  let pieces: Buffer[] = []
  let held = 0
  const take = (start: number, len: number): Buffer => {
    const all = pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces)
    pieces = [all]
    return all.subarray(start - base, start - base + len)
  }
  /** forgets the bytes before `upTo` (which is within what is held) */
  const drop = (upTo: number): void => {
    if (upTo <= base) return
    const all = pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces)
    const rest = all.subarray(upTo - base)
    base = upTo
    pieces = rest.length > 0 ? [rest] : []
    held = rest.length
  }
  const check = (i: number, stored: Buffer): void => {
    const e = tail.ci[i]!
    const expected = used.get(i)?.digest ?? tail.digests?.[i]
    if (expected === undefined) { r.warn(`${where}: chunk ${i} is used by no file and the blob has no blob.digest: not verified`); return }
    try {
      const data = e.compressed ? decompressChunk(blob.compressor, stored, e.uncompressedSize, `${where} chunk ${i}`) : stored
      if (data.length !== e.uncompressedSize) throw new Error(`holds ${data.length} bytes, expected ${e.uncompressedSize}`)
      const actual = digestChunk(blob.digester, data)
      if (!actual.equals(expected)) r.error(`${where}: chunk ${i} digest ${actual.toString('hex')} differs from the bootstrap's ${expected.toString('hex')}`)
      else verified++
    } catch (err) {
      r.error(`${where}: chunk ${i}: ${msg(err)}`)
    }
  }
  for await (const piece of stream) {
    pieces.push(piece as Buffer)
    held += (piece as Buffer).length
    while (k < order.length) {
      const { e, i } = order[k]!
      const end = e.compressedOffset + e.compressedSize
      if (base + held < end) break
      if (e.compressedOffset < base) { r.error(`${where}: chunk ${i} overlaps an earlier chunk`); k++; continue }
      check(i, Buffer.from(take(e.compressedOffset, e.compressedSize)))
      drop(end)
      k++
    }
    // nothing before the next chunk is needed
    const next = order[k]?.e.compressedOffset ?? Infinity
    if (next > base + held) { base += held; pieces = []; held = 0 } else drop(next)
  }
  if (k < order.length) r.error(`${where}: the blob ended before chunk ${order[k]!.i} (${order.length - k} chunks unread)`)
  return verified
}
