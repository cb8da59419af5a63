/**
 * Getting one opaque blob onto this node, once, for every client that asks meanwhile: the blob's bytes are hashed
 * in order into its sha256, cut into pieces, and each piece is cached and announced as it completes. Clients read
 * the hashed prefix as it grows (`BlobBytes`); the last byte leaves only once the whole blob matched its digest,
 * and no byte of a blob whose map a neighbour lent leaves before that: a forged map is then found out while the
 * client has received nothing, and the blob is fetched again from the upstream alone, in the same request.
 *
 * Where the bytes come from, in order:
 * 1. Neighbours: a holder of the blob's piece map (found through the scheduler under `mapKey(digest)`) sends the
 *    map, possibly while it is still fetching the blob itself; pieces are fetched through the fetch pipeline
 *    (several neighbours in parallel, upstream by Range as the last resort), each checked against the map. A map
 *    whose size disagrees with the upstream's is refused and its sender banned at once.
 * 2. Upstream, from wherever the neighbours stopped (a holder that went silent, no holder at all): a streaming GET
 *    (or Range from the hashed prefix), resumed with Range after a reset. A piece computed here that disagrees with
 *    the map a neighbour sent proves that map forged: the sender is banned and its pieces dropped.
 * A blob lent by neighbours that does not hash to its digest is discarded (pieces and all), every neighbour that
 * lent its map is banned, and the blob is fetched again from the upstream only. A blob the upstream itself sent
 * wrong is discarded and its clients are cut off before their last byte. A confirmed map is saved and announced.
 *
 * @example
 * ```ts
 * const job = new BlobJob(components, { digest, sizeHint })
 * job.start()
 * await job.ready()                      // the layout (size) is known
 * for (let pos = 0; pos < job.size; ) { await job.wait(pos, signal); const b = await job.read(pos, signal); ... }
 * ```
 */
import { createHash } from 'node:crypto'
import { describeError, errorCode, type Logger } from '../base/index.js'
import type { ChunkHolder } from '../p2p/index.js'
import { ProxyError } from './errors.js'
import type { PieceFetch } from './pieces.js'
import { pieceChunk, pieceDigest, pieceLayout, pieceLength, type MapPart, type PieceLayout } from './piece-map.js'

/** pieces fetched ahead of the hash cursor while following a neighbour's map */
export const DEFAULT_WINDOW_PIECES = 4
/** finished pieces kept in memory for clients just behind the cursor */
const RING_PIECES = 4
/** holders of a map tried in turn */
const MAX_MAP_HOLDERS = 3
/** replies without a new digest after which a holder is given up (each waits up to its hold time) */
const MAX_IDLE_REPLIES = 3
const UPSTREAM_ATTEMPTS = 3

/** The bytes a client is sent, whoever produces them. */
export interface BlobBytes {
  readonly size: number
  /** bytes from 0 that may leave now */
  releasable: () => number
  /** resolves at the next progress (or at once when `releasable()` is past `pos`); rejects with the job's error */
  wait: (pos: number, signal: AbortSignal) => Promise<void>
  /** grows with every step of progress (a stalled source leaves it still) */
  readonly progress: number
  /** bytes from `offset` (below `releasable()`), at least one */
  read: (offset: number, signal: AbortSignal) => Promise<Buffer>
}

/** An upstream body from `offset`, and the blob's total size when the upstream said it. */
export interface UpstreamOpener {
  open: (offset: number, signal: AbortSignal) => Promise<{ body: AsyncIterable<Buffer>, size: number | undefined }>
}

export interface MapLenders {
  /** holders of the blob's map, best first, without this node and banned peers */
  holders: (signal: AbortSignal) => Promise<ChunkHolder[]>
  ask: (holder: ChunkHolder, first: number, signal: AbortSignal) => Promise<{ layout: PieceLayout, part: MapPart } | undefined>
  ban: (peerId: string, why: string) => void
  /** `holder` lent these piece digests (it holds the pieces) */
  lent?: (holder: ChunkHolder, digests: Buffer[]) => void
}

export interface BlobJobComponents {
  pieces: PieceFetch
  cache: { putChunk: (blobId: string, chunk: ReturnType<typeof pieceChunk>, bytes: Buffer) => Promise<unknown>, removeBlob: (blobId: string) => Promise<void> }
  upstream: UpstreamOpener
  lenders?: MapLenders
  /** saves and announces a map the whole blob confirmed */
  confirm: (layout: PieceLayout, digests: Buffer[]) => Promise<void>
  /** the job computes the map itself from the upstream's bytes (neighbours may ask it from now on) */
  sourcing?: () => void
  /** the job failed (what was announced for it is withdrawn) */
  failed?: () => void
  log?: Logger
}

export interface BlobJobInit {
  digest: string
  /** the size the upstream gave (a HEAD, a manifest's descriptor): a neighbour's map must agree */
  sizeHint?: number
  pieceBytes?: number
  windowPieces?: number
  /** deadline of one piece read through the fetch pipeline */
  pieceDeadlineMs?: number
}

export interface BlobJobCounters {
  /** blob bytes taken from the upstream's stream (not counting pieces the fetcher got by Range) */
  upstreamBytes: number
  mapParts: number
  forgedMaps: number
  putFailures: number
  upstreamResumes: number
}

export class BlobJob implements BlobBytes {
  readonly digest: string
  readonly counters: BlobJobCounters = { upstreamBytes: 0, mapParts: 0, forgedMaps: 0, putFailures: 0, upstreamResumes: 0 }
  layout: PieceLayout | undefined
  /** piece digests known so far (own or lent) */
  readonly digests: Buffer[] = []
  hashedPieces = 0
  /** bytes hashed, from 0 */
  available = 0
  confirmed = false
  error: Error | undefined
  /** where the bytes came from (for the log and the metrics) */
  readonly sources = new Set<'upstream' | 'neighbours'>()
  private readonly c: BlobJobComponents
  private readonly log: Logger | undefined
  private readonly sizeHint: number | undefined
  private readonly pieceBytes: number | undefined
  private readonly window: number
  private readonly pieceDeadlineMs: number | undefined
  private sha = createHash('sha256')
  /** the bytes so far rest on a map a neighbour lent: nothing leaves before the digest matched */
  private tainted = false
  /** the size came from the upstream (or agreed with what it said): headers may go out */
  private sizeTrusted = false
  progress = 0
  private readonly ring = new Map<number, Buffer>()
  private partial: { index: number, buf: Buffer, filled: number } | undefined
  /** who lent which digests */
  private readonly lenders: Array<{ peerId: string, from: number, to: number }> = []
  private mapOpen = false
  private waiters = new Set<() => void>()
  private readonly abort = new AbortController()
  private readonly readyP: Promise<PieceLayout>
  private readyResolve!: (l: PieceLayout) => void
  private readyReject!: (e: Error) => void
  private finished: Promise<void> | undefined

  constructor (components: BlobJobComponents, init: BlobJobInit) {
    this.c = components
    this.log = components.log
    this.digest = init.digest
    this.sizeHint = init.sizeHint
    this.pieceBytes = init.pieceBytes
    this.window = Math.max(1, init.windowPieces ?? DEFAULT_WINDOW_PIECES)
    this.pieceDeadlineMs = init.pieceDeadlineMs
    this.readyP = new Promise((resolve, reject) => { this.readyResolve = resolve; this.readyReject = reject })
    this.readyP.catch(() => {})
  }

  get size (): number {
    if (this.layout === undefined) throw new Error('the blob size is not known yet')
    return this.layout.size
  }

  /** Starts the work (once); `done()` settles when it ends. */
  start (): void {
    this.finished ??= this.run()
  }

  async done (): Promise<void> { this.start(); await this.finished }

  /** Resolves the layout once the size is known; rejects when the job failed before. */
  async ready (): Promise<PieceLayout> { return await this.readyP }

  /** Stops the work (the node is stopping): clients waiting are failed. */
  stop (): void {
    this.abort.abort(new ProxyError('RAFSPEER_ERR_PROXY_UNAVAILABLE', 'the mirror is stopping'))
  }

  releasable (): number {
    if (this.layout === undefined) return 0
    if (this.confirmed) return this.layout.size
    if (this.tainted) return 0
    return Math.max(0, Math.min(this.available, this.layout.size - 1))
  }

  /** Resolves once the blob's size can be told to a client (from the upstream, or a lent map it agrees with). */
  async sized (signal: AbortSignal): Promise<number> {
    while (!this.sizeTrusted && !this.confirmed) {
      if (this.error !== undefined) throw this.error
      await this.changed(1000, signal)
      signal.throwIfAborted()
    }
    if (this.error !== undefined) throw this.error
    return this.layout!.size
  }

  async wait (pos: number, signal: AbortSignal): Promise<void> {
    if (this.error !== undefined) throw this.error
    if (this.releasable() > pos || this.confirmed) return
    signal.throwIfAborted()
    const set = this.waiters
    await new Promise<void>(resolve => {
      const wake = (): void => { signal.removeEventListener('abort', wake); set.delete(wake); resolve() }
      set.add(wake)
      signal.addEventListener('abort', wake, { once: true })
    })
    if (this.error !== undefined) throw this.error
  }

  async read (offset: number, signal: AbortSignal): Promise<Buffer> {
    const layout = this.layout!
    const i = Math.floor(offset / layout.pieceBytes)
    const at = offset - i * layout.pieceBytes
    if (i < this.hashedPieces) {
      const buf = this.ring.get(i) ?? await this.c.pieces.read(layout, this.digests, i, { signal, ...this.deadline() })
      return buf.subarray(at)
    }
    const p = this.partial
    if (p !== undefined && p.index === i && offset < this.available) return p.buf.subarray(at, this.available - i * layout.pieceBytes)
    throw new RangeError(`byte ${offset} of ${this.digest} is not available yet`)
  }

  /**
   * The map this node vouches for: only one it computed from upstream bytes, or one the whole blob confirmed;
   * 'pending' while it has no layout yet (it may be about to get the blob from the upstream: an asker waits);
   * nothing while it follows another node's map (an asker does better asking that node).
   */
  servable (): { layout: PieceLayout, digests: Buffer[], final: boolean } | 'pending' | undefined {
    if (this.error !== undefined) return undefined
    if (this.confirmed && this.layout !== undefined) return { layout: this.layout, digests: this.digests, final: true }
    if (this.tainted || this.mapOpen) return undefined
    if (this.layout === undefined) return 'pending'
    return { layout: this.layout, digests: this.digests.slice(0, this.hashedPieces), final: false }
  }

  /** Resolves on the next progress (or after `ms`). */
  async changed (ms: number, signal: AbortSignal): Promise<void> {
    const set = this.waiters
    await new Promise<void>(resolve => {
      const wake = (): void => { clearTimeout(timer); set.delete(wake); signal.removeEventListener('abort', wake); resolve() }
      const timer = setTimeout(wake, ms)
      set.add(wake)
      signal.addEventListener('abort', wake, { once: true })
    })
  }

  private notify (): void {
    this.progress++
    const ws = this.waiters
    this.waiters = new Set()
    for (const w of ws) w()
  }

  private deadline (): { deadlineMs?: number } {
    return this.pieceDeadlineMs !== undefined ? { deadlineMs: this.pieceDeadlineMs } : {}
  }

  private async run (): Promise<void> {
    const signal = this.abort.signal
    try {
      // round 1 with neighbours' maps (when there are any), round 2 from the upstream alone after a forged one
      for (let round = 1; ; round++) {
        const lenders = round === 1 ? this.c.lenders : undefined
        try {
          if (lenders !== undefined) await this.fromNeighbours(lenders, signal)
          if (this.layout === undefined || this.available < this.layout.size) await this.fromUpstream(signal)
          const actual = `sha256:${this.sha.digest('hex')}`
          if (actual !== this.digest) {
            throw new ProxyError('RAFSPEER_ERR_PROXY_DIGEST', `blob ${this.digest} hashed to ${actual}`)
          }
          break
        } catch (err) {
          if (!this.tainted || signal.aborted || (errorCode(err) !== 'RAFSPEER_ERR_PROXY_DIGEST' && this.lenders.length === 0)) throw err
          const lent = [...new Set(this.lenders.map(l => l.peerId))]
          for (const peer of lent) this.c.lenders?.ban(peer, `lent a piece map of ${this.digest} that its bytes do not match (${describeError(err)})`)
          this.counters.forgedMaps++
          this.log?.warn('blob %s: the map lent by %s is false (%s); getting it from the upstream alone', this.digest, lent.map(p => `peer:${p}`).join(', '), describeError(err))
          await this.reset()
        }
      }
      const layout = this.layout!
      await this.c.confirm(layout, this.digests)
      this.confirmed = true
      this.log?.debug('blob %s confirmed: %d pieces from %s', this.digest, layout.count, [...this.sources].join(' + '))
    } catch (err) {
      this.error = err instanceof Error ? err : new Error(String(err))
      this.readyReject(this.error)
      if (this.layout !== undefined && errorCode(err) === 'RAFSPEER_ERR_PROXY_DIGEST') await this.purge()
      this.c.failed?.()
      this.log?.warn('blob %s: %s', this.digest, describeError(err))
    } finally {
      this.ring.clear()
      this.partial = undefined
      this.notify()
    }
  }

  /** Back to nothing (no client received a byte: the job was tainted), the cached pieces dropped. */
  private async reset (): Promise<void> {
    if (this.layout !== undefined) await this.purge()
    this.sha = createHash('sha256')
    this.digests.length = 0
    this.lenders.length = 0
    this.hashedPieces = 0
    this.available = 0
    this.ring.clear()
    this.partial = undefined
    this.tainted = false
    if (!this.sizeTrusted) this.layout = undefined
    else if (this.layout !== undefined) await this.c.pieces.prepare(this.layout)
    this.notify()
  }

  private async setLayout (layout: PieceLayout, trusted: boolean): Promise<void> {
    this.layout = layout
    this.sizeTrusted = trusted
    await this.c.pieces.prepare(layout)
    this.readyResolve(layout)
    this.notify()
  }

  /** Pieces cached under digests that proved wrong are dropped with the whole blob (rare: a forged map). */
  private async purge (): Promise<void> {
    const layout = this.layout!
    try { await this.c.cache.removeBlob(layout.blobId) } catch {}
    this.c.pieces.forget(layout.blobId)
  }

  // ---- neighbours

  private async fromNeighbours (lenders: MapLenders, signal: AbortSignal): Promise<void> {
    let holders: ChunkHolder[]
    try { holders = await lenders.holders(signal) } catch (err) { this.log?.debug('no map holders for %s: %s', this.digest, describeError(err)); return }
    if (holders.length === 0) return
    this.mapOpen = true
    // a piece no source can deliver ends the job: the map is not asked for any more either
    const local = new AbortController()
    const both = AbortSignal.any([signal, local.signal])
    const hashing = this.hashLent(both).catch(err => { local.abort(err); throw err })
    try {
      for (const h of holders.slice(0, MAX_MAP_HOLDERS)) {
        if (both.aborted || await this.followMap(h, lenders, both)) break
      }
    } finally {
      this.mapOpen = false
      this.notify()
    }
    // the known pieces are hashed; the upstream goes on from there (lent digests past it are checked against it)
    await hashing
  }

  /** Takes the map from `holder` until complete (true), or until it fails or goes idle (false). */
  private async followMap (holder: ChunkHolder, lenders: MapLenders, signal: AbortSignal): Promise<boolean> {
    let idle = 0
    try {
      for (;;) {
        const got = await lenders.ask(holder, this.digests.length, signal)
        if (got === undefined) return false
        this.counters.mapParts++
        if (this.layout === undefined) {
          if (this.sizeHint !== undefined && got.layout.size !== this.sizeHint) {
            lenders.ban(holder.peerId, `sent a piece map of ${this.digest} for ${got.layout.size} bytes, the registry says ${this.sizeHint}`)
            this.counters.forgedMaps++
            return false
          }
          await this.setLayout(got.layout, this.sizeHint !== undefined)
        } else if (got.layout.size !== this.layout.size || got.layout.pieceBytes !== this.layout.pieceBytes) {
          lenders.ban(holder.peerId, `sent a piece map of ${this.digest} that disagrees with another (${got.layout.size}/${got.layout.pieceBytes})`)
          this.counters.forgedMaps++
          return false
        }
        if (got.part.digests.length > 0) {
          const from = this.digests.length
          this.digests.push(...got.part.digests)
          this.lenders.push({ peerId: holder.peerId, from, to: this.digests.length })
          lenders.lent?.(holder, got.part.digests)
          this.tainted = true
          this.sources.add('neighbours')
          idle = 0
          this.notify()
        } else if (++idle >= MAX_IDLE_REPLIES) {
          return false
        }
        if (this.digests.length === this.layout!.count) return true
      }
    } catch (err) {
      if (this.abort.signal.aborted) throw err
      this.log?.info('piece map of %s from peer:%s failed, going on without it: %s', this.digest, holder.peerId, describeError(err))
      return false
    }
  }

  /** Hashes lent pieces in order as their digests become known, fetching a few ahead through the pipeline. */
  private async hashLent (signal: AbortSignal): Promise<void> {
    const ahead = new Map<number, Promise<Buffer>>()
    for (;;) {
      signal.throwIfAborted()
      const layout = this.layout
      const i = this.hashedPieces
      if (layout !== undefined && i >= layout.count) return
      if (layout === undefined || i >= this.digests.length) {
        if (!this.mapOpen) return
        await this.changed(1000, signal)
        continue
      }
      for (let k = i; k < Math.min(this.digests.length, i + this.window); k++) {
        if (!ahead.has(k)) {
          const p = this.c.pieces.read(layout, this.digests, k, { signal, ...this.deadline() })
          p.catch(() => {})
          ahead.set(k, p)
        }
      }
      const buf = await ahead.get(i)!
      ahead.delete(i)
      this.sha.update(buf)
      this.keep(i, buf)
      this.hashedPieces = i + 1
      this.available += buf.length
      this.notify()
    }
  }

  private keep (i: number, buf: Buffer): void {
    this.ring.set(i, buf)
    for (const k of this.ring.keys()) if (k <= i - RING_PIECES) this.ring.delete(k)
  }

  // ---- upstream

  private async fromUpstream (signal: AbortSignal): Promise<void> {
    // digests lent past the hashed prefix are kept to be compared with what the upstream sends
    for (let attempt = 0; ; attempt++) {
      const offset = this.available
      try {
        const { body, size } = await this.c.upstream.open(offset, signal)
        if (this.layout === undefined) {
          if (size === undefined) throw new ProxyError('RAFSPEER_ERR_PROXY_UNAVAILABLE', `the upstream sent ${this.digest} without its size`)
          await this.setLayout(pieceLayout(this.digest, size, this.pieceBytes), true)
        } else if (size !== undefined && size !== this.layout.size) {
          throw new ProxyError('RAFSPEER_ERR_PROXY_DIGEST', `the upstream says ${this.digest} has ${size} bytes, the map says ${this.layout.size}`)
        } else if (size !== undefined) {
          this.sizeTrusted = true
        }
        const total = this.layout!.size
        if (!this.tainted && attempt === 0) this.c.sourcing?.()
        this.sources.add('upstream')
        for await (const raw of body) {
          await this.consume(raw)
          signal.throwIfAborted()
        }
        if (this.available !== total) {
          throw new ProxyError('RAFSPEER_ERR_PROXY_UNAVAILABLE', `the upstream body of ${this.digest} ended at byte ${this.available} of ${total}`)
        }
        return
      } catch (err) {
        // an attempt that brought nothing is not tried again (the registry client already retried it once):
        // a client must hear quickly that this upstream cannot serve
        const progressed = this.available > offset
        if (signal.aborted || errorCode(err) === 'RAFSPEER_ERR_PROXY_DIGEST' || !resumable(err) || !progressed || attempt + 1 >= UPSTREAM_ATTEMPTS) throw err
        this.counters.upstreamResumes++
        this.log?.info('upstream body of %s cut at byte %d (%s): resuming', this.digest, this.available, describeError(err))
      }
    }
  }

  /** Upstream bytes at `available`: hashed, gathered into pieces; a full piece is checked, cached, announced. */
  private async consume (raw: Buffer): Promise<void> {
    const layout = this.layout!
    let data = raw
    while (data.length > 0) {
      if (this.available >= layout.size) throw new ProxyError('RAFSPEER_ERR_PROXY_DIGEST', `the upstream sent more than the ${layout.size} bytes of ${this.digest}`)
      const i = Math.floor(this.available / layout.pieceBytes)
      const len = pieceLength(layout, i)
      if (this.partial === undefined || this.partial.index !== i) this.partial = { index: i, buf: Buffer.allocUnsafe(len), filled: 0 }
      const p = this.partial
      const take = Math.min(len - p.filled, data.length)
      data.copy(p.buf, p.filled, 0, take)
      this.sha.update(data.subarray(0, take))
      p.filled += take
      this.available += take
      this.counters.upstreamBytes += take
      data = data.subarray(take)
      if (p.filled === len) await this.completePiece(i, p.buf)
      else this.notify()
    }
  }

  private async completePiece (i: number, buf: Buffer): Promise<void> {
    const layout = this.layout!
    const d = pieceDigest(buf)
    if (i < this.digests.length && !d.equals(this.digests[i]!)) {
      // the upstream's bytes contradict a lent map: it is forged, and what was cached under it goes (start over)
      throw new ProxyError('RAFSPEER_ERR_PROXY_DIGEST', `piece ${i} from the upstream hashes to ${d.toString('hex').slice(0, 16)}…, the lent map says ${this.digests[i]!.toString('hex').slice(0, 16)}…`)
    }
    if (i >= this.digests.length) this.digests.push(d)
    try {
      await this.c.cache.putChunk(layout.blobId, pieceChunk(layout, i, d), buf)
    } catch (err) {
      this.counters.putFailures++
      this.log?.debug('piece %d of %s not cached: %s', i, this.digest, describeError(err))
    }
    this.keep(i, buf)
    this.partial = undefined
    this.hashedPieces = i + 1
    this.notify()
  }
}

function resumable (err: unknown): boolean {
  const code = errorCode(err)
  return code === 'RAFSPEER_ERR_REGISTRY_NETWORK' || code === 'RAFSPEER_ERR_REGISTRY_TRUNCATED' || code === 'RAFSPEER_ERR_PROXY_UNAVAILABLE' ||
    code === 'UND_ERR_BODY_TIMEOUT' || code === 'UND_ERR_SOCKET' || code === 'ECONNRESET' || code === 'UND_ERR_ABORTED'
}
