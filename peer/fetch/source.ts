/**
 * Where chunk bytes come from: neighbours over `/rafspeer/chunk/1.0.0` first, the registry last (or a local blob
 * directory). A source only moves bytes; it returns plaintext and is never trusted: the fetcher checks every chunk
 * against its digest before it is cached or returned.
 */
import type { ChunkInfo, RafsBlobInfo } from '../../rafs/index.js'

export interface FetchedChunk {
  chunk: ChunkInfo
  /** exactly `chunk.uncompressedSize` bytes, as the source claims them to be */
  plaintext: Buffer
}

export interface ChunkSourceFetchOptions {
  signal: AbortSignal
  /**
   * Checks `plaintext` against the chunk's size and digest, and remembers the answer: a chunk a source checked here
   * is not hashed again when it is yielded (every chunk is hashed exactly once, wherever it came from). A source
   * that must know (to score or ban the neighbour that sent it, and ask another) calls it; any other yields and
   * the fetcher checks.
   */
  verify: (chunk: ChunkInfo, plaintext: Buffer) => boolean
  /**
   * A source that learns early that it cannot deliver some chunks (no neighbour holds them) says so here, once or
   * more: the fetcher asks the next sources for them at once, alongside the rest of this attempt. It then must
   * not yield them.
   */
  decline?: (chunks: ChunkInfo[]) => void
  /**
   * A source whose chunks arrive in pieces (a Range request) says here that bytes came in: the fetcher's idle
   * deadline counts them, so a large chunk still arriving over a slow or shared link is not cut off (and its bytes
   * paid for again) before it is whole.
   */
  progress?: (bytes: number) => void
  /**
   * Whether a read waits for the chunk now (it may change while the fetch runs: a read joins a prefetch's batch); a
   * source that queues requests asks for such chunks first. Absent: none is.
   */
  urgent?: (chunk: ChunkInfo) => boolean
  /**
   * Whether the fetcher took the chunk elsewhere meanwhile (a read waited too long for it: the next source is asked
   * too): a source stops asking for it; one it still yields is taken if it comes first. Absent: none is.
   */
  withdrawn?: (chunk: ChunkInfo) => boolean
  /**
   * A source that knows how many neighbours have each chunk registers the count here: when its idle deadline falls,
   * or a read has waited `readHandOffMs` for a chunk, the fetcher waits on (starts the deadline over, looks again a
   * little later) if the chunks awaited are spreading — more neighbours have them than at its last look.
   */
  holders?: (count: (chunk: ChunkInfo) => number) => void
}

export interface ChunkSource {
  /** `'registry'`, `'local'` or `'peer:<id>'`: names the source in errors, logs and byte counters */
  readonly name: string
  /**
   * how many of the fetcher's idle deadlines this source may go without a chunk before the fetcher gives up on it
   * (default 1): a neighbour fetch in a swarm waits on other peers' registry fetches
   */
  readonly idleFactor?: number
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

/** A run of chunks whose stored bytes are contiguous in the blob: one read (a Range request, a pread). */
export interface ByteRun { start: number, end: number, chunks: ChunkInfo[] }

/**
 * Groups chunks into runs of contiguous stored bytes of at most `maxBytes` each (a single larger chunk is a run of
 * its own), sorted by offset. Chunks asked twice are kept once.
 */
export function contiguousRuns (chunks: ChunkInfo[], maxBytes: number): ByteRun[] {
  const sorted = [...chunks].sort((a, b) => a.compressedOffset - b.compressedOffset)
  const runs: ByteRun[] = []
  let cur: ByteRun | undefined
  for (const c of sorted) {
    const end = c.compressedOffset + c.compressedSize
    if (cur !== undefined && c.compressedOffset === cur.chunks[cur.chunks.length - 1]!.compressedOffset) continue
    if (cur !== undefined && c.compressedOffset === cur.end && end - cur.start <= maxBytes) {
      cur.chunks.push(c)
      cur.end = end
    } else {
      cur = { start: c.compressedOffset, end, chunks: [c] }
      runs.push(cur)
    }
  }
  return runs
}
