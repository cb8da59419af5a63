/**
 * A blob's uncompressed view (§1: every chunk's plaintext at its 4 KiB-aligned uncompressed offset, zeros between)
 * seen as one file per blob, so that the fetcher, which reads *files* of an image, can serve the lazy-kernel
 * mode's blob files: `mapRange(blobIndex, offset, length)` gives the chunk pieces of a view range in view order,
 * with `fileOffset` = the view offset. Bytes of the range no piece covers (alignment padding, the tail) are zeros.
 *
 * @example
 * ```ts
 * const view = new BlobViews(reader)
 * const pieces = view.mapRange(0, 1 << 20, 128 << 10)
 * const buf = Buffer.alloc(128 << 10)   // zeroed: gaps stay zero
 * await fetcher.readPieces({ reader: view, blobs: reader.blobs }, pieces, buf.subarray(pieces[0].fileOffset - (1 << 20)))
 * ```
 */
import { partitionPoint } from '../../base/index.js'
import type { ChunkInfo, MappedPiece, RafsReader } from '../../rafs/index.js'

export class BlobViews {
  /** per blob: its chunks sorted by view offset, built on first use */
  private readonly sorted = new Map<number, ChunkInfo[]>()

  constructor (private readonly reader: Pick<RafsReader, 'blobs' | 'chunkInfo'>) {}

  chunkInfo (blobIndex: number, ciIndex: number): ChunkInfo { return this.reader.chunkInfo(blobIndex, ciIndex) }

  /** Every chunk of a blob, in view order. */
  chunks (blobIndex: number): ChunkInfo[] {
    let list = this.sorted.get(blobIndex)
    if (list === undefined) {
      const blob = this.reader.blobs[blobIndex]
      if (blob === undefined) throw new RangeError(`no blob ${blobIndex} (${this.reader.blobs.length} blobs)`)
      list = []
      for (let ci = 0; ci < blob.chunkCount; ci++) {
        // a chunk no file references may be missing from the chunk table: nothing reads it, its view stays zeros
        try { list.push(this.reader.chunkInfo(blobIndex, ci)) } catch {}
      }
      list.sort((a, b) => a.uncompressedOffset - b.uncompressedOffset)
      this.sorted.set(blobIndex, list)
    }
    return list
  }

  /** Pieces of view range [offset, offset + length) of blob `blobIndex`, in order; gaps between them are zeros. */
  mapRange (blobIndex: number, offset: number, length: number): MappedPiece[] {
    const list = this.chunks(blobIndex)
    const end = offset + length
    const first = partitionPoint(list.length, i => list[i]!.uncompressedOffset + list[i]!.uncompressedSize <= offset)
    const out: MappedPiece[] = []
    for (let i = first; i < list.length; i++) {
      const c = list[i]!
      if (c.uncompressedOffset >= end) break
      const from = Math.max(offset, c.uncompressedOffset)
      const to = Math.min(end, c.uncompressedOffset + c.uncompressedSize)
      if (to > from) out.push({ chunk: c, chunkOffset: from - c.uncompressedOffset, length: to - from, fileOffset: from })
    }
    return out
  }
}
