/**
 * Pieces through the node's fetch pipeline: a piece of a blob whose map is known (confirmed, or being followed) is
 * read like a chunk — from the cache when it is there, else from neighbours, else from the upstream by Range —
 * verified against its blake3 digest, and cached. The fetcher single-flights it with every other reader of the
 * same piece.
 *
 * @example
 * ```ts
 * const pieces = new PieceFetch({ fetcher, cache })
 * await pieces.prepare(layout)
 * const bytes = await pieces.read(layout, digests, 0, { signal })
 * ```
 */
import { describeError, type Logger } from '../base/index.js'
import type { BlobCache } from '../cache/index.js'
import type { Fetcher, FetchImage } from '../peer/index.js'
import type { ChunkInfo } from '../rafs/index.js'
import { ProxyError } from './errors.js'
import { pieceBlob, pieceChunk, type PieceLayout } from './piece-map.js'

export interface PieceFetchComponents {
  fetcher: Fetcher
  cache: Pick<BlobCache, 'registerBlob'>
  log?: Logger
}

export class PieceFetch {
  private readonly fetcher: Fetcher
  private readonly cache: PieceFetchComponents['cache']
  private readonly log: Logger | undefined
  private readonly registered = new Map<string, Promise<void>>()

  constructor (components: PieceFetchComponents) {
    this.fetcher = components.fetcher
    this.cache = components.cache
    this.log = components.log
  }

  /**
   * Registers the pieces' blob with the cache (once per process). A cache that refuses (full, I/O) is not fatal:
   * pieces are then served from memory and refetched when read again.
   */
  async prepare (layout: PieceLayout): Promise<void> {
    let p = this.registered.get(layout.blobId)
    if (p === undefined) {
      p = this.cache.registerBlob(pieceBlob(layout)).catch(err => {
        this.registered.delete(layout.blobId)
        this.log?.warn('cannot cache the pieces of %s: %s', layout.digest, describeError(err))
      })
      this.registered.set(layout.blobId, p)
    }
    await p
  }

  /** Forgets that the blob is registered (after the cache removed it). */
  forget (blobId: string): void { this.registered.delete(blobId) }

  /** The whole of piece `i`, whose digest is `digests[i]`, verified (shared with other readers: read only). */
  async read (layout: PieceLayout, digests: Buffer[], i: number, opts: { signal?: AbortSignal, deadlineMs?: number } = {}): Promise<Buffer> {
    const digest = digests[i]
    if (digest === undefined) throw new ProxyError('RAFSPEER_ERR_PROXY_PIECES', `piece ${i} of ${layout.digest} has no known digest`)
    await this.prepare(layout)
    return await this.fetcher.readChunk(pieceImage(layout, digests), pieceChunk(layout, i, digest), {
      ...(opts.signal !== undefined ? { signal: opts.signal } : {}),
      ...(opts.deadlineMs !== undefined ? { deadlineMs: opts.deadlineMs } : {})
    })
  }
}

/** A blob's pieces as the fetcher sees an image: one blob, pieces as chunks, no files. */
function pieceImage (layout: PieceLayout, digests: Buffer[]): FetchImage {
  return {
    blobs: [pieceBlob(layout)],
    reader: {
      chunkInfo: (_blobIndex: number, ci: number): ChunkInfo => {
        const d = digests[ci]
        if (d === undefined || ci >= layout.count) throw new ProxyError('RAFSPEER_ERR_PROXY_PIECES', `no piece ${ci}`)
        return pieceChunk(layout, ci, d)
      },
      mapRange: () => { throw new ProxyError('RAFSPEER_ERR_PROXY_PIECES', 'a blob of pieces has no files') }
    }
  }
}
