/**
 * The serving side of `/rafspeer/chunk/1.0.0`: answers neighbours' requests from the blob cache.
 *
 * Chunks are found by digest only. The blob id and ci index an asker sends are hints we never read by: with
 * `readChunk({ verify: 'once' })` a chunk whose bytes fail is unmarked, so reading where a liar points could evict
 * good chunks. A chunk that fails its digest here is answered NOT_FOUND and never served onwards.
 *
 * One asker cannot take the server from the others: it is sure of `maxUploadsPerPeer` upload slots and may borrow
 * more only while as many stay free for others (a request a read waits for, flagged URGENT, may also take one of
 * `maxUrgentUploads` slots kept for reads while uploads no read waits for hold the rest: `takesUrgentSlot`); it may
 * hold `maxStreamsPerPeer` streams; and the chunk bytes held
 * for it (read ahead of its replies, or sent and not yet taken by its stream) stay within `maxBytesPerPeer` plus
 * the reply each of its requests sends next. A request must arrive whole within `readTimeoutMs`, and an asker that
 * takes none of our bytes for `readTimeoutMs` has its stream aborted, which frees its slots. What a non-reading
 * asker's connection queues below its streams is capped by the host (see `p2p/connection-guard.ts`).
 *
 * A server answering more than `redirectAboveUploads` requests sends an asker that takes redirects on to a peer it
 * is sending the same chunk to (REDIRECT, `chunk-receivers.ts`) instead of uploading it once more: a chunk many want
 * at once then passes along a chain of receivers rather than all from the uplink of its first holder. Past a crowd
 * of a few askers of the chunk at once it keeps askers for turns instead (PENDING frames while it waits, BUSY after
 * `turnWaitMs`), so that askers are shared between it and the receivers that got the chunk whole at every upload's
 * end: a chunk a thousand nodes want at once spreads as a tree. The chunk is here (or was waited for) when that is
 * decided, so a redirect always replaces an upload.
 *
 * @example
 * ```ts
 * const server = new ChunkServer({ libp2p: node, cache }, { maxConcurrentUploads: 16, uploadBytesPerSecond: 50e6 })
 * await server.start()
 * // ... server.counters.bytesServed
 * await server.stop()
 * ```
 */
import type { Connection, Libp2p, PeerId, Stream } from '@libp2p/interface'
import { Uint8ArrayList } from 'uint8arraylist'
import { RateLimiter, describeError, type ComponentLogger, type Logger } from '../../base/index.js'
import { sendWithBackpressure } from '../../p2p/index.js'
import {
  AcceptFlags, CHUNK_PROTOCOL, ChunkProtocolError, ChunkStatus, ChunkTimeoutError, SERVER_HIGH_WATER_BYTES, chunkFrameReader, errorReply, readChunkRequest,
  redirectReply, replyHeader, type ChunkName
} from './chunk-protocol.js'
import { ChunkReceivers, DEFAULT_REDIRECT_ABOVE_UPLOADS, TAKE_TURN } from './chunk-receivers.js'
import { DEFAULT_BUSY_AFTER_PARK_MS } from './busy-replan.js'

/** A chunk as the cache knows it: where it sits in its blob's uncompressed view, and its digest. */
export interface ServableChunk { index: number, digest: Buffer, uncompressedOffset: number, uncompressedSize: number }

/** The chunk store a node serves from: its blob cache (`BlobCache` satisfies it). */
export interface ServableCache {
  has: (blobId: string, ciIndex: number) => boolean
  /**
   * `waitMs`: how long to wait for a chunk this node is fetching (a cache that waits has its own default); `asker`:
   * the peer that asks (a cache does not wait for a fetch of ours that waits on that very peer)
   */
  findByDigest: (digest: Buffer, opts?: { exceptBlobId?: string, waitMs?: number, asker?: string }) => Promise<{ blobId: string, chunk: ServableChunk } | undefined>
  readChunk: (blobId: string, chunk: ServableChunk, opts?: { verify?: boolean | 'once' }) => Promise<Buffer | undefined>
  /**
   * whether this node is fetching the chunk now (it said PENDING): a chunk not found but still on its way is
   * answered BUSY, so the asker looks again rather than giving up on the swarm
   */
  fetching?: (digest: Buffer) => boolean
}

export const DEFAULT_MAX_CONCURRENT_UPLOADS = 16
/** the share of the upload slots one asker is sure of: a quarter */
export const UPLOAD_SHARE_DIVISOR = 4

/**
 * Upload slots kept for requests a read waits for ({@link AcceptFlags}.URGENT), past `maxUploads`: a quarter more.
 * In a swarm that prefetches, every holder's slots are full of prefetch uploads; a read's request answered BUSY
 * there waits until its fetcher hands the chunk to the registry (`readHandOffMs`), and hundreds of nodes doing so
 * at once cost the registry whole copies of the image (the model: 1,000 nodes prefetching, seed 2, 3.14 copies
 * with 137 hand-offs; with these slots 1.06 and none).
 */
export function urgentUploadSlots (maxUploads: number): number { return Math.ceil(maxUploads / UPLOAD_SHARE_DIVISOR) }

/**
 * Whether a request a read waits for takes one of the slots kept for reads: every slot is taken, some of them by
 * uploads no read waits for (a swarm that only reads keeps to `maxUploads`, as without the bit), and one of the
 * slots kept for reads is free. Shared with the model (`sim/model/request.ts`).
 */
export function takesUrgentSlot (active: number, urgentActive: number, maxUploads: number, urgentSlots: number): boolean {
  return active >= maxUploads && active < maxUploads + urgentSlots && urgentActive < maxUploads
}
export const DEFAULT_READ_TIMEOUT_MS = 10_000
/** streams of this protocol one connection may hold open at once */
export const DEFAULT_MAX_INBOUND_STREAMS = 32
/** streams of this protocol one asker may hold open at once, over all its connections */
export const DEFAULT_MAX_STREAMS_PER_PEER = 32
/** chunk bytes held for one asker (read ahead, or not yet taken by its streams) past which its reads wait */
export const DEFAULT_MAX_BYTES_PER_PEER = 8 << 20
/** cache reads of one request in flight ahead of the one being sent */
export const DEFAULT_READ_AHEAD = 8
/** chunk bytes one request may hold in memory ahead of the reply being sent */
export const READ_AHEAD_BYTES = 2 << 20
/** replies already read are sent together up to about this many bytes */
export const COALESCE_BYTES = 256 << 10
/** with a rate cap, a chunk is paced in slices this big so the asker sees steady progress */
export const PACING_SLICE_BYTES = 256 << 10

/** The upload pacing's burst at `rate` bytes per second: a quarter second, and at least one slice, so pacing never
 * stalls a slice outright. */
export function uploadBurst (rate: number): number { return Math.max(PACING_SLICE_BYTES, rate / 4) }

/** while the next reply is not ready, a PENDING frame goes out this often */
export const PENDING_INTERVAL_MS = 1_000
/**
 * the first PENDING frame goes out this soon when the next reply is not ready (a chunk this node is fetching
 * itself): the asker then waits for it rather than hedging the request to another holder after its 300 ms
 */
export const FIRST_PENDING_MS = 50
/**
 * how long an asker a REDIRECT sent here waits for a chunk this node is fetching: the holder that sent it is
 * sending this node the chunk, so it comes (a plain PENDING may be a fetch waiting on another's PENDING, and is
 * waited for only briefly)
 */
export const REDIRECTED_WAIT_MS = 5_000

export interface ChunkServerComponents {
  libp2p: Pick<Libp2p, 'handle' | 'unhandle'>
  cache: ServableCache
  logger?: ComponentLogger
  /** told of each request answered with chunks (the node values the asker's connection for it) */
  onUpload?: (peer: PeerId, bytes: number) => void
  /** the addresses this node knows of a peer (its peer store), sent with a REDIRECT to it */
  addressesOf?: (peerId: string) => Promise<string[]>
}

export interface ChunkServerInit {
  /** requests answered at once, across all askers; more are answered BUSY (16) */
  maxConcurrentUploads?: number
  /**
   * requests a read waits for ({@link AcceptFlags}.URGENT) answered past `maxConcurrentUploads`, up to this many
   * more (a quarter of it: {@link urgentUploadSlots})
   */
  maxUrgentUploads?: number
  /**
   * upload slots one asker is sure of (a quarter of them); it may take more only while this many stay free for
   * other askers, so a lone asker gets all but a quarter and never makes a newcomer BUSY
   */
  maxUploadsPerPeer?: number
  /** streams one asker may hold open, over all its connections; more are reset at once (32) */
  maxStreamsPerPeer?: number
  /** chunk bytes held for one asker past which its requests read no further ahead than their next reply (8 MiB) */
  maxBytesPerPeer?: number
  /** total upload rate; unlimited when absent */
  uploadBytesPerSecond?: number
  /**
   * deadline of a whole request (from the start of its read, however slowly it trickles in) and of every wait
   * for the asker to take our bytes (10 s)
   */
  readTimeoutMs?: number
  maxInboundStreams?: number
  readAhead?: number
  /**
   * while answering more than this many requests, an asker that takes redirects is sent to a peer this node is
   * sending the chunk to (`chunk-receivers.ts`) instead of being sent it once more (1; Infinity: never)
   */
  redirectAboveUploads?: number
  /**
   * how long an asker kept for a turn (`ChunkReceivers.route`) waits for one before it is answered BUSY (1 s, as a
   * wait on a chunk this node is fetching; an asker a redirect sent here waits `REDIRECTED_WAIT_MS`)
   */
  turnWaitMs?: number
  /** askers of a chunk at once up to which this server sends them all on to its receivers (`CHAIN_CROWD`) */
  chainCrowd?: number
}

export interface ChunkServerCounters {
  /** requests being answered now */
  uploadsActive: number
  /** requests answered (not refused) */
  uploads: number
  /** of them, requests a read waited for (URGENT) answered past maxConcurrentUploads, in the slots kept for reads */
  urgentUploads: number
  chunksServed: number
  bytesServed: number
  /** chunks answered NOT_FOUND (absent, or failing their digest in our cache) */
  notFound: number
  /** requests answered BUSY */
  refused: number
  /** chunks answered ERROR (cache I/O) */
  errors: number
  /** streams aborted for breaking the format */
  malformed: number
  /** streams aborted for idling past the deadline, or reset by the asker */
  aborted: number
  /** streams reset at once because their asker held `maxStreamsPerPeer` already */
  streamsRefused: number
  /** PENDING frames sent while a reply was not ready (a claimed chunk being fetched) */
  pendingFrames: number
  /** chunks answered BUSY because this node's own fetch of them outlasted the wait */
  busyWhileFetching: number
  /** chunks answered REDIRECT: the asker was sent to a peer receiving them from this node */
  redirects: number
  /** askers kept for a turn: waiting for an upload of the chunk they ask for to end (`ChunkReceivers.route`) */
  turns: number
  /** chunks answered BUSY because the asker's turn did not come within `turnWaitMs` */
  turnsRunOut: number
  /** chunk bytes held for askers now: read ahead of their replies, or sent and not yet taken by their streams */
  bytesHeld: number
}

/** What one asker holds of the server now. */
interface PeerLoad { streams: number, uploads: number, bytes: number }

export class ChunkServer {
  readonly counters: ChunkServerCounters = {
    uploadsActive: 0, uploads: 0, urgentUploads: 0, chunksServed: 0, bytesServed: 0, notFound: 0, refused: 0, errors: 0, malformed: 0, aborted: 0,
    streamsRefused: 0, pendingFrames: 0, busyWhileFetching: 0, redirects: 0, turns: 0, turnsRunOut: 0, bytesHeld: 0
  }

  private readonly libp2p: ChunkServerComponents['libp2p']
  private readonly cache: ServableCache
  private readonly log: Logger | undefined
  private readonly onUpload: ChunkServerComponents['onUpload']
  private readonly addressesOf: ChunkServerComponents['addressesOf']
  private readonly maxUploads: number
  private readonly uploadsPerPeer: number
  private readonly urgentUploads: number
  /** uploads running that a read waits for */
  private urgentActive = 0
  private readonly streamsPerPeer: number
  private readonly bytesPerPeer: number
  private readonly readTimeoutMs: number
  private readonly maxInboundStreams: number
  private readonly readAhead: number
  private readonly bucket: RateLimiter | undefined
  /** per chunk (hex digest): the askers this node is sending it to, or sent it to a moment ago */
  private readonly receivers: ChunkReceivers<string>
  /** per chunk (hex digest): askers answered now (waiting for it to land or for a turn, or being routed) */
  private readonly crowds = new Map<string, number>()
  /** per chunk (hex digest): askers kept for a turn, woken when an upload of it ends */
  private readonly turns = new Map<string, Array<(turn: boolean) => void>>()
  private readonly turnWaitMs: number
  private readonly streams = new Set<Stream>()
  /** peer id → what it holds; absent when nothing */
  private readonly peers = new Map<string, PeerLoad>()
  private started = false

  constructor (components: ChunkServerComponents, init: ChunkServerInit = {}) {
    this.libp2p = components.libp2p
    this.cache = components.cache
    this.log = components.logger?.forComponent('rafspeer:chunk-server')
    this.onUpload = components.onUpload
    this.addressesOf = components.addressesOf
    this.maxUploads = Math.max(0, init.maxConcurrentUploads ?? DEFAULT_MAX_CONCURRENT_UPLOADS)
    this.uploadsPerPeer = Math.max(1, init.maxUploadsPerPeer ?? Math.ceil(this.maxUploads / UPLOAD_SHARE_DIVISOR))
    this.urgentUploads = Math.max(0, init.maxUrgentUploads ?? urgentUploadSlots(this.maxUploads))
    this.streamsPerPeer = Math.max(1, init.maxStreamsPerPeer ?? DEFAULT_MAX_STREAMS_PER_PEER)
    this.bytesPerPeer = Math.max(0, init.maxBytesPerPeer ?? DEFAULT_MAX_BYTES_PER_PEER)
    this.readTimeoutMs = init.readTimeoutMs ?? DEFAULT_READ_TIMEOUT_MS
    this.maxInboundStreams = init.maxInboundStreams ?? DEFAULT_MAX_INBOUND_STREAMS
    this.readAhead = Math.max(1, init.readAhead ?? DEFAULT_READ_AHEAD)
    this.receivers = new ChunkReceivers({
      redirectAboveUploads: init.redirectAboveUploads ?? DEFAULT_REDIRECT_ABOVE_UPLOADS, chainCrowd: init.chainCrowd
    })
    this.turnWaitMs = Math.max(0, init.turnWaitMs ?? DEFAULT_BUSY_AFTER_PARK_MS)
    const rate = init.uploadBytesPerSecond
    this.bucket = rate === undefined ? undefined : new RateLimiter(rate, uploadBurst(rate))
  }

  async start (): Promise<void> {
    if (this.started) return
    await this.libp2p.handle(CHUNK_PROTOCOL, async (stream, connection) => { await this.serve(stream, connection) }, {
      maxInboundStreams: this.maxInboundStreams
    })
    this.started = true
  }

  /** Stops taking requests and aborts the uploads in progress. */
  async stop (): Promise<void> {
    if (!this.started) return
    this.started = false
    await this.libp2p.unhandle(CHUNK_PROTOCOL)
    for (const s of this.streams) s.abort(new Error('chunk server stopped'))
    this.streams.clear()
    const waiting = [...this.turns.values()]
    this.turns.clear()
    for (const wake of waiting.flat()) wake(false)
  }

  private async serve (stream: Stream, connection: Connection): Promise<void> {
    const peer = connection.remotePeer.toString()
    const what = `chunk upload to ${peer}`
    const load = this.load(peer)
    load.streams++
    this.streams.add(stream)
    try {
      if (load.streams > this.streamsPerPeer) {
        this.counters.streamsRefused++
        stream.abort(new ChunkProtocolError(`${what}: more than ${this.streamsPerPeer} streams from one peer`))
        return
      }
      const reader = chunkFrameReader(stream, what, this.readTimeoutMs, SERVER_HIGH_WATER_BYTES, this.readTimeoutMs)
      for (;;) {
        const request = await readChunkRequest(reader)
        if (request === undefined) break
        const names = request.names
        // a request a read waits for may take one of the slots kept for reads, within the asker's share (an asker
        // that calls everything urgent gains no more than it is sure of anyway)
        const urgent = (request.accept & AcceptFlags.URGENT) !== 0
        const kept = urgent && load.uploads < this.uploadsPerPeer &&
          takesUrgentSlot(this.counters.uploadsActive, this.urgentActive, this.maxUploads, this.urgentUploads)
        if (!kept && !this.admit(load)) {
          this.counters.refused++
          await this.send(stream, busyReplies(names.length), what)
          continue
        }
        if (kept) this.counters.urgentUploads++
        if (urgent) this.urgentActive++
        this.counters.uploadsActive++
        this.counters.uploads++
        load.uploads++
        try {
          const bytes = await this.answer(stream, names, what, load, {
            peer, redirects: (request.accept & AcceptFlags.REDIRECT) !== 0, redirected: (request.accept & AcceptFlags.REDIRECTED) !== 0
          })
          if (bytes > 0) this.onUpload?.(connection.remotePeer, bytes)
        } finally {
          this.counters.uploadsActive--
          if (urgent) this.urgentActive--
          load.uploads--
        }
      }
      await stream.close({ signal: AbortSignal.timeout(this.readTimeoutMs) })
    } catch (err) {
      if (err instanceof ChunkProtocolError) this.counters.malformed++
      else this.counters.aborted++
      this.log?.debug('%s: stream aborted: %s', what, describeError(err))
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    } finally {
      this.streams.delete(stream)
      load.streams--
      this.release(peer, load)
    }
  }

  private load (peer: string): PeerLoad {
    let load = this.peers.get(peer)
    if (load === undefined) {
      load = { streams: 0, uploads: 0, bytes: 0 }
      this.peers.set(peer, load)
    }
    return load
  }

  private release (peer: string, load: PeerLoad): void {
    if (load.streams === 0 && load.uploads === 0 && load.bytes === 0 && this.peers.get(peer) === load) this.peers.delete(peer)
  }

  /** A slot for one more request of this asker: within its share, or borrowed while its share stays free for others. */
  private admit (load: PeerLoad): boolean {
    const free = this.maxUploads - this.counters.uploadsActive
    if (free <= 0) return false
    return load.uploads < this.uploadsPerPeer || free - 1 >= this.uploadsPerPeer
  }

  /**
   * One reply per name, in order; cache reads run a few ahead of the sends (within the asker's byte budget), and
   * replies already read go out together (one send, so yamux and noise frame them in large pieces rather than one
   * small frame per chunk). Resolves with the chunk bytes sent.
   */
  private async answer (stream: Stream, names: ChunkName[], what: string, load: PeerLoad, asker: Asker): Promise<number> {
    const replies: Array<Promise<Reply>> = []
    const ready: boolean[] = []
    // bytes this request holds in the asker's budget: counted when a read starts, returned once its stream took them
    let held = 0
    const hold = (n: number): void => { held += n; load.bytes += n; this.counters.bytesHeld += n }
    const unhold = (n: number): void => { held -= n; load.bytes -= n; this.counters.bytesHeld -= n }
    // reads ahead of reply `from`: at most readAhead of them, READ_AHEAD_BYTES of chunks and the asker's budget,
    // except that a request holding nothing may always read its next reply, so every request moves
    const startReads = (from: number): void => {
      let bytes = 0
      for (let i = from; i < names.length && i < from + this.readAhead; i++) {
        const size = names[i]!.size
        bytes += size
        if (i > from && bytes > READ_AHEAD_BYTES) break
        if (i < replies.length) continue
        if (held > 0 && load.bytes + size > this.bytesPerPeer) break
        hold(size)
        replies.push(this.reply(names[i]!, asker).then(r => { ready[i] = true; return r }))
      }
    }
    let sent = 0
    // replies before this one went out whole
    let delivered = 0
    try {
      for (let i = 0; i < names.length;) {
        startReads(i)
        // the next reply in order may take a while (a chunk this node is fetching itself): keep the asker waiting
        if (ready[i] !== true) await this.keepAlive(stream, replies[i]!, what)
        if (this.bucket !== undefined) {
          const r = await replies[i]!
          sent += await this.sendPaced(stream, r, what)
          delete replies[i]
          unhold(names[i]!.size)
          if (r.payload !== undefined) this.uploadEnded(names[i]!.digest.toString('hex'), asker.peer, true)
          delivered = ++i
          continue
        }
        const out = new Uint8ArrayList()
        let outHeld = 0
        do {
          const r = await replies[i]!
          delete replies[i]
          outHeld += names[i]!.size
          i++
          startReads(i)
          if (r.payload === undefined) { out.append(r.frame); continue }
          out.append(replyHeader(ChunkStatus.OK, r.payload.length), r.payload)
          this.counters.chunksServed++
          this.counters.bytesServed += r.payload.length
          sent += r.payload.length
        } while (i < names.length && ready[i] === true && out.byteLength < COALESCE_BYTES)
        await this.send(stream, out, what)
        unhold(outHeld)
        for (let j = delivered; j < i; j++) this.uploadEnded(names[j]!.digest.toString('hex'), asker.peer, true)
        delivered = i
      }
    } finally {
      // reads still running or replies never sent (the stream failed): their bytes leave the budget with the request,
      // and their askers are nobody's hint
      unhold(held)
      asker.gone = true
      for (let j = delivered; j < replies.length; j++) this.uploadEnded(names[j]!.digest.toString('hex'), asker.peer, false)
    }
    return sent
  }

  private async send (stream: Stream, data: Uint8Array | Uint8ArrayList, what: string): Promise<void> {
    await sendWithBackpressure(stream, data, { timeoutMs: this.readTimeoutMs, what, timeout: m => new ChunkTimeoutError(m) })
  }

  /** Sends a PENDING frame after FIRST_PENDING_MS, then every PENDING_INTERVAL_MS, until `reply` settles. */
  private async keepAlive (stream: Stream, reply: Promise<Reply>, what: string): Promise<void> {
    let settled = false
    const done = reply.then(() => { settled = true }, () => { settled = true })
    for (let n = 0; ; n++) {
      let timer: NodeJS.Timeout | undefined
      await Promise.race([done, new Promise<void>(resolve => { timer = setTimeout(resolve, n === 0 ? FIRST_PENDING_MS : PENDING_INTERVAL_MS) })])
      clearTimeout(timer)
      if (settled) return
      this.counters.pendingFrames++
      await this.send(stream, replyHeader(ChunkStatus.PENDING), what)
    }
  }

  /**
   * One reply under the rate cap: a chunk goes in slices paid for one by one, so the asker sees steady progress.
   * Resolves with the chunk bytes sent.
   */
  private async sendPaced (stream: Stream, r: Reply, what: string): Promise<number> {
    const bucket = this.bucket!
    if (r.payload === undefined) {
      await bucket.take(r.frame.byteLength)
      await this.send(stream, r.frame, what)
      return 0
    }
    const payload = r.payload
    const header = replyHeader(ChunkStatus.OK, payload.length)
    await bucket.take(header.length)
    await this.send(stream, header, what)
    for (let off = 0; off < payload.length; off += PACING_SLICE_BYTES) {
      const slice = payload.subarray(off, off + PACING_SLICE_BYTES)
      await bucket.take(slice.length)
      await this.send(stream, slice, what)
    }
    this.counters.chunksServed++
    this.counters.bytesServed += payload.length
    return payload.length
  }

  /**
   * The reply to one name; never rejects. Once the chunk is here (it may have been waited for), a busy server sends
   * an asker that takes redirects to a peer it is sending the chunk to ({@link ChunkReceivers}), without reading
   * the chunk; otherwise the asker becomes one of those.
   */
  private async reply (name: ChunkName, asker: Asker): Promise<Reply> {
    const key = name.digest.toString('hex')
    // where the asker goes, decided and recorded in one step once the chunk is here: askers whose requests meet the
    // chunk together (they waited for it to land) would otherwise all be served, none of them yet a receiver for
    // the next to be sent to (8 daemons at 4 MiB/s: one holder sending the same chunk to three askers at once)
    let receiving = false
    const claim = async (): Promise<string | undefined> => {
      const until = Date.now() + (asker.redirected ? REDIRECTED_WAIT_MS : this.turnWaitMs)
      for (;;) {
        if (asker.gone === true) return TAKE_TURN
        const to = asker.redirects ? this.receivers.route(key, asker.peer, this.counters.uploadsActive, this.crowds.get(key) ?? 1) : undefined
        if (to === undefined) {
          this.receivers.serving(key, asker.peer)
          receiving = true
        }
        if (to !== TAKE_TURN) return to
        this.counters.turns++
        if (!await this.nextTurn(key, until - Date.now())) return TAKE_TURN
      }
    }
    this.crowds.set(key, (this.crowds.get(key) ?? 0) + 1)
    let r: Reply | { to: string }
    try {
      r = await this.lookUp(name, asker, claim)
    } finally {
      const left = this.crowds.get(key)! - 1
      if (left === 0) this.crowds.delete(key)
      else this.crowds.set(key, left)
    }
    if ('to' in r) {
      this.counters.redirects++
      const addrs = await this.addressesOf?.(r.to).catch(() => []) ?? []
      return { frame: redirectReply(r.to, addrs) }
    }
    // claimed, then not read after all (evicted, or failed its digest): nobody's hint
    // ... or its request ended while it waited (it will never be sent: a receiver nobody sends to would keep others
    // waiting for a turn)
    if (receiving && (r.payload === undefined || asker.gone === true)) this.uploadEnded(key, asker.peer, false)
    return r
  }

  /**
   * Waits up to `ms` for an upload of chunk `key` to end (another asker's turn may then be this one's); false when
   * none did in time, or the server stopped.
   */
  private async nextTurn (key: string, ms: number): Promise<boolean> {
    if (ms <= 0 || !this.started) return false
    return await new Promise<boolean>(resolve => {
      const list = this.turns.get(key) ?? []
      const wake = (turn: boolean): void => {
        clearTimeout(timer)
        resolve(turn)
      }
      const timer = setTimeout(() => {
        const l = this.turns.get(key)
        const at = l?.indexOf(wake) ?? -1
        if (at >= 0) l!.splice(at, 1)
        if (l?.length === 0) this.turns.delete(key)
        resolve(false)
      }, ms)
      list.push(wake)
      this.turns.set(key, list)
    })
  }

  /** `peer`'s upload of chunk `key` ended, `whole` or not: the askers kept for a turn at it ask again. */
  private uploadEnded (key: string, peer: string, whole: boolean): void {
    if (!(whole ? this.receivers.sent(key, peer) : this.receivers.notSent(key, peer))) return
    const waiting = this.turns.get(key)
    if (waiting === undefined) return
    this.turns.delete(key)
    for (const wake of waiting) wake(true)
  }

  /**
   * The chunk, or where `claim` sends the asker once the chunk is found here (before its bytes are read; `claim`
   * records the asker as a receiver when it sends it nowhere).
   */
  private async lookUp (name: ChunkName, asker: Asker, claim: () => Promise<string | undefined>): Promise<Reply | { to: string }> {
    try {
      let found = await this.cache.findByDigest(name.digest, { asker: asker.peer, ...(asker.redirected ? { waitMs: REDIRECTED_WAIT_MS } : {}) })
      for (let tries = 0; found !== undefined && tries < 2; tries++) {
        const c = found.chunk
        if (c.uncompressedSize !== name.size || !c.digest.equals(name.digest)) break
        const to = tries === 0 ? await claim() : undefined
        if (to === TAKE_TURN) {
          this.counters.turnsRunOut++
          return { frame: replyHeader(ChunkStatus.BUSY) }
        }
        if (to !== undefined) return { to }
        const bytes = await this.cache.readChunk(found.blobId, c, { verify: 'once' })
        if (bytes !== undefined && bytes.length === name.size) return { payload: bytes }
        // failed its digest (now unmarked) or was evicted: another blob may hold the same chunk
        found = await this.cache.findByDigest(name.digest, { exceptBlobId: found.blobId })
      }
      if (this.cache.fetching?.(name.digest) === true) {
        this.counters.busyWhileFetching++
        return { frame: replyHeader(ChunkStatus.BUSY) }
      }
      this.counters.notFound++
      return { frame: replyHeader(ChunkStatus.NOT_FOUND) }
    } catch (err) {
      this.counters.errors++
      this.log?.warn('reading chunk %s for a neighbour failed: %s', name.digest.toString('hex'), describeError(err))
      return { frame: errorReply('cache read failed') }
    }
  }
}

type Reply = { payload: Buffer, frame?: undefined } | { payload?: undefined, frame: Uint8Array | Uint8ArrayList }

/** who asks, whether its request takes redirects, and whether a redirect sent it */
interface Asker {
  peer: string
  redirects: boolean
  redirected: boolean
  /** its request is over (answered, or its stream failed): a reply still on its way goes to nobody */
  gone?: boolean
}

function busyReplies (count: number): Buffer {
  const one = replyHeader(ChunkStatus.BUSY)
  return Buffer.concat(Array.from({ length: count }, () => one))
}
