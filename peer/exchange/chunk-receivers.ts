/**
 * Whom a busy chunk server sends an asker to instead of uploading a chunk once more (issue 13): the peers it is
 * sending that chunk to, or sent it to a moment ago. They have it or soon will (a request waiting for its bytes is
 * parked there), and each of them does the same while it is busy, so a chunk wanted by many at once passes along
 * a chain of receivers, each uploading it about once, instead of all from the uplink of the first to have it (8
 * daemons at 4 MiB/s: the first node uploaded 3.5 copies of the image and the other seven waited on its uplink;
 * with redirects 1.1–1.5 copies, the slowest node 1.7–1.8x one node alone instead of 3.8x).
 *
 * The server answers such an asker REDIRECT with the receiver's id (`chunk-protocol.ts`), only when its request
 * said it takes redirects: an asker sent on {@link MAX_REDIRECTS} times stops saying so, and is then served where
 * it asks. Pure bookkeeping with an injected clock, so the simulator's model mode (`sim/model/`) runs the same
 * code as the daemon.
 *
 * @example
 * ```ts
 * const receivers = new ChunkReceivers<string>()
 * const hint = receivers.redirect(digestHex, asker, server.counters.uploadsActive)
 * if (hint === undefined) receivers.serving(digestHex, asker)   // ... and notSent() if no bytes went out
 * ```
 */

/** a server redirects while it answers more than this many requests (the asker's own included) */
export const DEFAULT_REDIRECT_ABOVE_UPLOADS = 1
/** a receiver is a hint this long after it was first sent the chunk; later it may have moved on (or evicted it) */
export const RECEIVER_TTL_MS = 10_000
/** chunks whose receivers one server remembers (the oldest are forgotten) */
export const MAX_TRACKED_CHUNKS = 4096
/** receivers remembered per chunk */
export const MAX_RECEIVERS_PER_CHUNK = 16
/** redirects one chunk of one fetch follows; then its requests no longer take redirects */
export const MAX_REDIRECTS = 8

/** `peers` in the order they were sent the chunk; `got` those of them that got it whole (arrays: a server keeps thousands) */
interface Receivers { peers: string[], got: string[] | undefined, at: number, next: number }

export interface ChunkReceiversInit {
  now?: () => number
  /** redirect while answering more than this many requests (1) */
  redirectAboveUploads?: number
  ttlMs?: number
  maxChunks?: number
}

/** One chunk server's receivers per chunk, keyed by whatever names a chunk there (`K`). */
export class ChunkReceivers<K> {
  private readonly chunks = new Map<K, Receivers>()
  private readonly now: () => number
  private readonly above: number
  private readonly ttlMs: number
  private readonly maxChunks: number

  constructor (init: ChunkReceiversInit = {}) {
    this.now = init.now ?? Date.now
    this.above = Math.max(0, init.redirectAboveUploads ?? DEFAULT_REDIRECT_ABOVE_UPLOADS)
    this.ttlMs = init.ttlMs ?? RECEIVER_TTL_MS
    this.maxChunks = Math.max(1, init.maxChunks ?? MAX_TRACKED_CHUNKS)
  }

  /**
   * The peer to send `asker` to instead of serving it chunk `key`, while this server answers `uploads` requests
   * (the asker's included) and that is more than its threshold: its receivers of the chunk, in turn, those that
   * got it whole first (they answer at once; the others make the asker wait for the rest of the chunk). Undefined:
   * serve it (also when the asker is a receiver already: it asks again, and it is not sent round in a circle).
   */
  redirect (key: K, asker: string, uploads: number): string | undefined {
    if (uploads <= this.above) return undefined
    const r = this.live(key)
    if (r === undefined || r.peers.includes(asker)) return undefined
    const pool = r.got ?? r.peers
    return pool[r.next++ % pool.length]
  }

  /** `asker` is being served chunk `key` (or waits here for it). */
  serving (key: K, asker: string): void {
    let r = this.live(key)
    if (r === undefined) {
      const now = this.now()
      // entries are in the order they were made, so the expired ones are the first: dropped here, a few at a time
      for (const [k, old] of this.chunks) {
        if (this.chunks.size < this.maxChunks && now - old.at <= this.ttlMs) break
        this.chunks.delete(k)
      }
      r = { peers: [], got: undefined, at: now, next: 0 }
      this.chunks.set(key, r)
    }
    if (!r.peers.includes(asker) && r.peers.length < MAX_RECEIVERS_PER_CHUNK) r.peers.push(asker)
  }

  /** `asker` got chunk `key` whole (its stream took the last byte). */
  sent (key: K, asker: string): void {
    const r = this.chunks.get(key)
    if (r === undefined || !r.peers.includes(asker) || r.got?.includes(asker) === true) return
    ;(r.got ??= []).push(asker)
  }

  /** `asker` was not sent chunk `key` after all (not found, a wait that ran out, a failed stream): no hint. */
  notSent (key: K, asker: string): void {
    const r = this.chunks.get(key)
    const at = r?.peers.indexOf(asker) ?? -1
    if (at < 0) return
    r!.peers.splice(at, 1)
    const got = r!.got?.indexOf(asker) ?? -1
    if (got >= 0) r!.got!.splice(got, 1)
    if (r!.got?.length === 0) r!.got = undefined
    if (r!.peers.length === 0) this.chunks.delete(key)
  }

  /** chunks with receivers remembered now (tests, metrics) */
  get size (): number { return this.chunks.size }

  private live (key: K): Receivers | undefined {
    const r = this.chunks.get(key)
    if (r === undefined) return undefined
    if (this.now() - r.at <= this.ttlMs) return r
    this.chunks.delete(key)
    return undefined
  }
}
