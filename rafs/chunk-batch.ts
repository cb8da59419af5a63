/**
 * The CPU work of a blob build, a batch of chunks at a time: digest and compress each chunk. A batch lives in
 * shared memory that a worker thread fills in place, so one short message carries hundreds of small files'
 * chunks and the main thread keeps only the ordered, cheap part (dedup and writing). Shared rather than
 * transferred: every transfer re-registers megabytes of external memory, and the main thread paid for that in
 * garbage collections.
 */
import { compressBound, compressChunkInto, digestChunk } from './codec.js'
import type { Compressor, Digester } from './layout.js'

export const DIGEST_SIZE = 32

export interface ChunkBatch {
  compressor: Compressor
  digester: Digester
  count: number
  /** chunk i is data[ends[i - 1] ?? 0, ends[i]) */
  data: Uint8Array
  ends: Uint32Array
  /** out: digests[32 i, 32 i + 32) */
  digests: Uint8Array
  /** out: stored size of chunk i when compressing paid, else 0 (stored raw from `data`) */
  packed: Uint32Array
  /** out: the compressed chunks back to back, in chunk order; never longer than the used part of `data` */
  out: Uint8Array
}

export function newBatch (compressor: Compressor, digester: Digester, bytes: number, chunks: number): ChunkBatch {
  const shared = (n: number): SharedArrayBuffer => new SharedArrayBuffer(n)
  return {
    compressor,
    digester,
    count: 0,
    data: new Uint8Array(shared(bytes)),
    ends: new Uint32Array(shared(chunks * 4)),
    digests: new Uint8Array(shared(chunks * DIGEST_SIZE)),
    packed: new Uint32Array(shared(chunks * 4)),
    out: new Uint8Array(shared(compressor === 'none' ? 0 : bytes))
  }
}

let scratch: Buffer | undefined
let local: Buffer | undefined
let zeros: Buffer | undefined
// sparse files are mostly zeros: memcmp is several times faster than hashing them
const zeroDigests = new Map<string, Buffer>()

function digestInto (b: ChunkBatch, i: number, chunk: Buffer): void {
  if (zeros === undefined || zeros.length < chunk.length) zeros = Buffer.alloc(chunk.length)
  let d: Buffer
  if (chunk.equals(zeros.subarray(0, chunk.length))) {
    const key = `${b.digester}:${chunk.length}`
    d = zeroDigests.get(key) ?? digestChunk(b.digester, chunk)
    zeroDigests.set(key, d)
  } else {
    d = digestChunk(b.digester, chunk)
  }
  b.digests.set(d, i * DIGEST_SIZE)
}

/** Fills a batch's digests, packed sizes and compressed bytes in place. */
export function processBatch (b: ChunkBatch): ChunkBatch {
  // Native hashers may only read ArrayBuffer memory (blake3's binding crashes on a shared buffer): work on a copy.
  const used = b.count === 0 ? 0 : b.ends[b.count - 1]!
  if (local === undefined || local.length < used) local = Buffer.allocUnsafe(Math.max(used, b.data.byteLength))
  local.set(b.data.subarray(0, used))
  const data = local
  const out = Buffer.from(b.out.buffer, b.out.byteOffset, b.out.byteLength)
  let start = 0
  let outPos = 0
  for (let i = 0; i < b.count; i++) {
    const end = b.ends[i]!
    const chunk = data.subarray(start, end)
    digestInto(b, i, chunk)
    let n = 0
    if (b.compressor !== 'none') {
      const room = compressBound(b.compressor, chunk.length)
      if (scratch === undefined || scratch.length < room) scratch = Buffer.allocUnsafe(room)
      n = compressChunkInto(b.compressor, chunk, scratch)
      scratch.copy(out, outPos, 0, n)
      outPos += n
    }
    b.packed[i] = n
    start = end
  }
  return b
}
