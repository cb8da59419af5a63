/**
 * Sequential read-ahead of a lazily mounted image: a read that starts where the same file's last read ended moves
 * the file's cursor, and once the cursor comes within half a window of what was fetched ahead, the next window of
 * the file is handed to the fetcher in the background (at read priority, not counted against the prefetch cap;
 * the fetcher skips what the cache holds). Random reads fetch only what they touch (plus amplification).
 *
 * The kernel reads ahead too, but only within its readahead window (128 KiB over FUSE); a model or a layer tar
 * read front to back wants megabytes in flight to keep a slow link busy.
 *
 * @example
 * ```ts
 * const ahead = new ReadAhead({ fetcher, image, logger }, { windowBytes: 4 << 20, signal })
 * ahead.observe(nid, offset, length)   // on every FUSE read, before serving it
 * ```
 */
import { LRUCache } from 'lru-cache'
import { describeError, type ComponentLogger, type Logger } from '../../base/index.js'
import type { ChunkInfo } from '../../rafs/index.js'
import type { EnsureOptions, FetchImage } from '../fetch/index.js'

export const DEFAULT_READAHEAD_BYTES = 4 << 20
/** files whose read position is remembered, per mount */
export const READAHEAD_TRACKED_FILES = 256

/** Where a file's sequential reader is, and up to where read-ahead was asked for. */
interface Cursor { end: number, ahead: number }

export interface ReadAheadComponents {
  fetcher: { ensureChunks: (blob: FetchImage['blobs'][number], chunks: ChunkInfo[], opts?: EnsureOptions) => Promise<void> }
  image: FetchImage
  logger?: ComponentLogger
}

export interface ReadAheadInit {
  /** bytes fetched ahead of a sequential reader (4 MiB; 0 turns read-ahead off) */
  windowBytes?: number
  /** stops the background fetches (the mount goes away) */
  signal?: AbortSignal
  /**
   * A read starting anywhere from the cursor up to this many bytes past what was fetched ahead still counts as
   * sequential (default 0: only a read starting exactly at the cursor). For readers that are told only about
   * some reads: a blob file's misses, while the kernel answers the rest from what read-ahead brought.
   */
  slackBytes?: number
}

export class ReadAhead {
  private readonly window: number
  private readonly cursors = new LRUCache<number, Cursor>({ max: READAHEAD_TRACKED_FILES })
  private readonly log: Logger | undefined

  constructor (private readonly components: ReadAheadComponents, private readonly init: ReadAheadInit = {}) {
    this.window = init.windowBytes ?? DEFAULT_READAHEAD_BYTES
    this.log = components.logger?.forComponent('rafspeer:read-ahead')
  }

  /** A read of [offset, offset + length) of file `nid` is about to be served. */
  observe (nid: number, offset: number, length: number): void {
    if (this.window <= 0) return
    const end = offset + length
    let c = this.cursors.get(nid)
    const slack = this.init.slackBytes ?? 0
    const sequential = c !== undefined && (slack > 0 ? offset >= c.end && offset <= c.ahead + slack : offset === c.end)
    if (c === undefined || !sequential) {
      c = { end, ahead: end }
      this.cursors.set(nid, c)
      // a random read fetches only what it touches; read-ahead starts with a file's first byte or a read continuing
      // this one (with slack, where reads are a blob's and its first byte is just its first file's: the second)
      if (offset !== 0 || slack > 0) return
    }
    c.end = end
    c.ahead = Math.max(c.ahead, end)
    if (c.ahead - end > this.window / 2) return
    const from = c.ahead
    const { reader, blobs } = this.components.image
    let pieces
    try {
      pieces = reader.mapRange(nid, from, end + this.window - from)
    } catch {
      return
    }
    if (pieces.length === 0) return
    const last = pieces[pieces.length - 1]!
    c.ahead = last.fileOffset + last.length
    const byBlob = new Map<number, ChunkInfo[]>()
    for (const p of pieces) {
      const list = byBlob.get(p.chunk.blobIndex)
      if (list === undefined) byBlob.set(p.chunk.blobIndex, [p.chunk])
      else list.push(p.chunk)
    }
    for (const [bi, chunks] of byBlob) {
      const blob = blobs[bi]
      if (blob === undefined) continue
      this.components.fetcher.ensureChunks(blob, chunks, { priority: 'read', ...(this.init.signal !== undefined ? { signal: this.init.signal } : {}) })
        .catch((err: unknown) => { this.log?.debug('read-ahead of %d chunks of nid %d failed: %s', chunks.length, nid, describeError(err)) })
    }
  }
}
