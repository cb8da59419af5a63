/**
 * Where chunk bytes come from: the registry now, neighbours over `/rafspeer/chunk/1` next. A source only moves
 * bytes; it returns plaintext and the fetcher verifies every chunk's digest, so a source is never trusted.
 */
import type { ChunkInfo, RafsBlobInfo } from '../rafs/index.js'

export interface FetchedChunk {
  chunk: ChunkInfo
  /** exactly `chunk.uncompressedSize` bytes, as the source claims them to be */
  plaintext: Buffer
}

export interface ChunkSourceFetchOptions {
  signal: AbortSignal
  /**
   * A source that learns early that it cannot deliver some chunks (no neighbour holds them) says so here, once or
   * more: the fetcher asks the next sources for them at once, alongside the rest of this attempt. It then must
   * not yield them.
   */
  decline?: (chunks: ChunkInfo[]) => void
}

export interface ChunkSource {
  /** `'registry'` or `'peer:<id>'`: names the source in errors, logs and byte counters */
  readonly name: string
  /**
   * Yields the asked chunks (all of `blob`, sorted by `compressedOffset`) in any order, each at most once. It may
   * stop early (the fetcher asks the next source for the rest) or throw; it must stop when `signal` aborts.
   */
  fetch: (blob: RafsBlobInfo, chunks: ChunkInfo[], opts: ChunkSourceFetchOptions) => AsyncIterable<FetchedChunk>
}

/** The counter bucket a source's bytes land in. */
export function sourceKind (name: string): 'registry' | 'peer' {
  return name.startsWith('peer:') ? 'peer' : 'registry'
}
