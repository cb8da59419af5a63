/**
 * What a source (directory walk, OCI layer tar stream) needs from the blob builder, and what it gives back.
 * Sources never hold a whole file in memory: they hand file bytes to the sink as a stream of pieces.
 */
import type { ChunkInfo, RafsInode } from './model.js'

export interface ChunkSink {
  /**
   * Cuts one regular file's bytes into chunks of the image chunk size (pieces may have any size), digests,
   * deduplicates and stores them; resolves to the file's chunk list in file order (ceil(size/chunkSize) entries).
   * Chunks are stored in call order, so a source need not wait for one file's list before it adds the next. A
   * Uint8Array is the caller's again once the call returns (the directory source reuses one read buffer): a sink
   * copies what it keeps before returning. A stream's pieces are the caller's again once the next one is asked for.
   */
  addFile: (data: AsyncIterable<Uint8Array> | Uint8Array) => Promise<ChunkInfo[]>
}

/** Produces the root directory of a tree, feeding regular-file data to `sink` as it goes. */
export type TreeSource = (sink: ChunkSink, options?: { signal?: AbortSignal }) => Promise<RafsInode>
