/**
 * The `/rafspeer/have/1.0.0` sessions of one node: it tells the neighbours of each blob it works on which chunks
 * it has and which it is fetching, and keeps what they told it in a {@link HaveTable}.
 *
 * One session per neighbour (either side may open it; both directions carry messages). `interest(blob, peers)`
 * sends INTEREST to each of those peers; a peer that receives an INTEREST answers with the blob's BITFIELD (its
 * present chunks and those it is fetching) and from then on streams batched HAVE / PENDING / DROPPED updates of that
 * blob, every `flushMs` (or at once: `flushBlob`), until UNINTEREST or the end of the session. WANT_HAVE asks a
 * neighbour which of some digests it holds in any blob (chunks shared across images).
 *
 * Bounded against a hostile neighbour: frames by size, blobs one peer may subscribe to, sessions, a reader that
 * stops reading loses its session after `drainTimeoutMs`.
 *
 * @example
 * ```ts
 * const have = new HaveService({ libp2p: node, local }, {})
 * await have.start()
 * await have.interest(blobHex, holders)   // holders from the scheduler
 * have.table.sources(blobHex, ci)         // who has chunk ci, who is fetching it
 * ```
 */
import type { Connection, Libp2p, Stream } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import { describeError, type ComponentLogger, type Logger } from '../../base/index.js'
import { FrameReader, encodeFrame, sendWithBackpressure, type ChunkHolder } from '../../p2p/index.js'
import {
  HAVE_PROTOCOL, HaveProtocolError, MAX_BLOBS_PER_MESSAGE, MAX_DIGESTS_PER_WANT, MAX_HAVE_FRAME_BYTES, MAX_INDEXES_PER_MESSAGE,
  decodeHave, encodeHave, newBits, setBit, type HaveMessage
} from './have-protocol.js'
import { HaveTable } from './have-table.js'
import { HaveOutbox } from './swarm-policy.js'

export const DEFAULT_FLUSH_MS = 20
export const DEFAULT_MAX_SESSIONS = 128
/** blobs one neighbour may follow at once */
export const DEFAULT_MAX_INTERESTS_PER_PEER = 256
export const DEFAULT_DRAIN_TIMEOUT_MS = 10_000
export const DEFAULT_DIAL_TIMEOUT_MS = 3_000
export const DEFAULT_WANT_TIMEOUT_MS = 2_000

/** What the node itself has: the blob cache and the chunks in flight. */
export interface LocalChunks {
  /** the blob's present chunks and those being fetched now, or undefined when this node knows nothing of it */
  snapshot: (blobHex: string) => { chunks: number, bits: Uint8Array, pending: number[] } | undefined
  /** tells `listener` about changes of the blob until the returned function is called */
  subscribe: (blobHex: string, listener: LocalListener) => () => void
  /** whether each digest is present in some blob of the cache */
  hasDigests: (digests: Buffer[]) => Promise<boolean[]>
}

export interface LocalListener {
  have: (indexes: number[]) => void
  pending: (indexes: number[]) => void
  dropped: (indexes: number[]) => void
  /** the blob became known here (its chunk count): send a whole bitfield */
  known: () => void
}

export interface HaveServiceComponents {
  libp2p: Pick<Libp2p, 'handle' | 'unhandle' | 'dialProtocol' | 'peerId'>
  local: LocalChunks
  logger?: ComponentLogger
}

export interface HaveServiceInit {
  flushMs?: number
  maxSessions?: number
  maxInterestsPerPeer?: number
  drainTimeoutMs?: number
  dialTimeoutMs?: number
  wantTimeoutMs?: number
  /** clock of the table (tests) */
  now?: () => number
  pendingTtlMs?: number
  /**
   * a neighbour's INTEREST in a blob this node works on too is answered with ours (true): the peers of a blob then
   * see each other's PENDING at once, not after their next look-up (the model, `sim/model/`, shows it matters)
   */
  followBack?: boolean
}

export interface HaveCounters {
  sessions: number
  messagesIn: number
  messagesOut: number
  bytesOut: number
  /** sessions ended for breaking the protocol or not reading */
  aborted: number
}

/** A blob one neighbour follows here. */
interface Following {
  /** updates waiting for the next flush */
  out: HaveOutbox
  /** the next flush sends a whole bitfield instead */
  full: boolean
  unsubscribe: () => void
}

class Session {
  /** blobs the neighbour follows here, with what to send it next and how to stop following */
  readonly following = new Map<string, Following>()
  /** blobs we asked the neighbour to follow */
  readonly interests = new Set<string>()
  readonly wants = new Map<number, (bits: boolean[]) => void>()
  closed = false
  private sending: Promise<void> = Promise.resolve()

  constructor (readonly peerId: string, readonly stream: Stream, private readonly svc: HaveService) {}

  /** queues a message behind the others (one writer per stream); a failed send ends the session */
  send (m: HaveMessage): void {
    if (this.closed) return
    const body = encodeHave(m)
    this.svc.counters.messagesOut++
    this.svc.counters.bytesOut += body.length
    this.sending = this.sending.then(async () => {
      if (this.closed) return
      await sendWithBackpressure(this.stream, encodeFrame(body), { timeoutMs: this.svc.drainTimeoutMs, what: `have session with ${this.peerId}` })
    }).catch((err: Error) => { this.svc.endSession(this, err) })
  }
}

export class HaveService {
  readonly table: HaveTable
  readonly counters: HaveCounters = { sessions: 0, messagesIn: 0, messagesOut: 0, bytesOut: 0, aborted: 0 }
  /** @internal */ readonly drainTimeoutMs: number
  private readonly libp2p: HaveServiceComponents['libp2p']
  private readonly local: LocalChunks
  private readonly log: Logger | undefined
  private readonly flushMs: number
  private readonly maxSessions: number
  private readonly maxInterests: number
  private readonly dialTimeoutMs: number
  private readonly wantTimeoutMs: number
  private readonly followBack: boolean
  private readonly sessions = new Map<string, Session>()
  private readonly dialing = new Map<string, Promise<Session | undefined>>()
  /** blobs this node works on → the neighbours it told */
  private readonly ours = new Map<string, Set<string>>()
  private readonly listeners = new Set<(blobHex: string, peerId: string) => void>()
  private timer: NodeJS.Timeout | undefined
  private nextWant = 0
  private running = false

  constructor (components: HaveServiceComponents, init: HaveServiceInit = {}) {
    this.libp2p = components.libp2p
    this.local = components.local
    this.log = components.logger?.forComponent('rafspeer:have')
    this.flushMs = init.flushMs ?? DEFAULT_FLUSH_MS
    this.maxSessions = init.maxSessions ?? DEFAULT_MAX_SESSIONS
    this.maxInterests = init.maxInterestsPerPeer ?? DEFAULT_MAX_INTERESTS_PER_PEER
    this.drainTimeoutMs = init.drainTimeoutMs ?? DEFAULT_DRAIN_TIMEOUT_MS
    this.dialTimeoutMs = init.dialTimeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS
    this.wantTimeoutMs = init.wantTimeoutMs ?? DEFAULT_WANT_TIMEOUT_MS
    this.followBack = init.followBack ?? true
    this.table = new HaveTable({ ...(init.now !== undefined ? { now: init.now } : {}), ...(init.pendingTtlMs !== undefined ? { pendingTtlMs: init.pendingTtlMs } : {}) })
  }

  async start (): Promise<void> {
    if (this.running) return
    this.running = true
    await this.libp2p.handle(HAVE_PROTOCOL, (stream, connection) => { this.accept(stream, connection) }, { maxInboundStreams: 2 })
    this.timer = setInterval(() => { this.flush() }, this.flushMs)
    this.timer.unref()
  }

  async stop (): Promise<void> {
    if (!this.running) return
    this.running = false
    clearInterval(this.timer)
    await this.libp2p.unhandle(HAVE_PROTOCOL).catch(() => {})
    for (const s of [...this.sessions.values()]) this.endSession(s, undefined)
  }

  /** Called with (blob, neighbour) whenever a neighbour's state of a blob changed: waiting readers look again. */
  onUpdate (listener: (blobHex: string, peerId: string) => void): () => void {
    this.listeners.add(listener)
    return () => { this.listeners.delete(listener) }
  }

  /**
   * This node works on `blobHex`: each of `peers` (dialled if need be) is asked for its bitfield and updates of it.
   * Resolves once the INTERESTs are queued (dial failures are logged, not thrown: the peer is just not a source).
   */
  async interest (blobHex: string, peers: ChunkHolder[], opts: { signal?: AbortSignal } = {}): Promise<void> {
    let told = this.ours.get(blobHex)
    if (told === undefined) {
      told = new Set()
      this.ours.set(blobHex, told)
    }
    const self = this.libp2p.peerId.toString()
    await Promise.all(peers.filter(p => p.peerId !== self && !told.has(p.peerId)).map(async p => {
      const s = await this.session(p, opts.signal)
      if (s === undefined || s.interests.has(blobHex)) return
      told.add(p.peerId)
      s.interests.add(blobHex)
      s.send({ type: 'interest', blobs: [Buffer.from(blobHex, 'hex')] })
    }))
  }

  /** This node is done with `blobHex`: the neighbours stop sending its updates, and their state of it is dropped. */
  uninterest (blobHex: string): void {
    const told = this.ours.get(blobHex)
    this.ours.delete(blobHex)
    for (const peerId of told ?? []) {
      const s = this.sessions.get(peerId)
      if (s !== undefined && s.interests.delete(blobHex)) s.send({ type: 'uninterest', blobs: [Buffer.from(blobHex, 'hex')] })
      this.table.forgetBlob(peerId, blobHex)
    }
  }

  /** Which of `digests` the neighbour holds in any blob; all false when it cannot say in time. */
  async wantHave (peer: ChunkHolder, digests: Buffer[], opts: { signal?: AbortSignal } = {}): Promise<boolean[]> {
    const none = digests.map(() => false)
    if (digests.length === 0) return none
    const s = await this.session(peer, opts.signal)
    if (s === undefined) return none
    const out: boolean[] = []
    for (let i = 0; i < digests.length; i += MAX_DIGESTS_PER_WANT) {
      const part = digests.slice(i, i + MAX_DIGESTS_PER_WANT)
      const id = (this.nextWant = (this.nextWant + 1) >>> 0)
      const answer = await new Promise<boolean[]>((resolve) => {
        const timer = setTimeout(() => { s.wants.delete(id); resolve(part.map(() => false)) }, this.wantTimeoutMs)
        s.wants.set(id, (bits) => { clearTimeout(timer); resolve(bits) })
        s.send({ type: 'want-have', id, digests: part })
      })
      out.push(...answer)
    }
    return out
  }

  /**
   * Sends what changed of `blobHex` to its followers now rather than at the next flush. For a chunk this node just
   * chose to fetch from the registry: the blob's other peers wait for its PENDING, and one whose grace runs out
   * before the next flush fetches the chunk too (the model, `sim/model/`: at 1,000 nodes most duplicate registry
   * fetches were such, 21 of 26).
   */
  flushBlob (blobHex: string): void {
    if (!this.running) return
    for (const s of this.sessions.values()) {
      const f = s.following.get(blobHex)
      if (f !== undefined) this.flushOne(s, blobHex, f)
    }
  }

  /** Neighbours with an open session. */
  get peers (): string[] { return [...this.sessions.keys()] }

  /** Neighbours that told us they work on `blobHex` (they follow our state of it). */
  followers (blobHex: string): string[] {
    const out: string[] = []
    for (const s of this.sessions.values()) if (s.following.has(blobHex)) out.push(s.peerId)
    return out
  }

  // ---- sessions ----

  private async session (peer: ChunkHolder, signal: AbortSignal | undefined): Promise<Session | undefined> {
    const open = this.sessions.get(peer.peerId)
    if (open !== undefined) return open
    let dial = this.dialing.get(peer.peerId)
    if (dial === undefined) {
      dial = this.dial(peer, signal).finally(() => { this.dialing.delete(peer.peerId) })
      this.dialing.set(peer.peerId, dial)
    }
    return await dial
  }

  private async dial (peer: ChunkHolder, signal: AbortSignal | undefined): Promise<Session | undefined> {
    if (!this.running || this.sessions.size >= this.maxSessions) return undefined
    try {
      // loaded with the first dial: a node that never exchanges haves never pays for it
      const { peerIdFromString } = await import('@libp2p/peer-id')
      const addrs = peer.addrs.map(a => multiaddr(`${a.replace(/\/p2p\/[^/]+$/, '')}/p2p/${peer.peerId}`))
      const timeout = AbortSignal.timeout(this.dialTimeoutMs)
      const stream = await this.libp2p.dialProtocol(addrs.length > 0 ? addrs : peerIdFromString(peer.peerId), HAVE_PROTOCOL,
        { signal: signal === undefined ? timeout : AbortSignal.any([signal, timeout]) })
      // the other side may have opened one meanwhile: keep one session, this stream still works both ways
      return this.sessions.get(peer.peerId) ?? this.adopt(peer.peerId, stream)
    } catch (err) {
      this.log?.debug('have session with %s: %s', peer.peerId, describeError(err))
      return undefined
    }
  }

  private accept (stream: Stream, connection: Connection): void {
    const peerId = connection.remotePeer.toString()
    if (!this.running || (this.sessions.size >= this.maxSessions && !this.sessions.has(peerId))) {
      stream.abort(new Error('too many have sessions'))
      return
    }
    this.adopt(peerId, stream)
  }

  private adopt (peerId: string, stream: Stream): Session {
    const s = new Session(peerId, stream, this)
    if (!this.sessions.has(peerId)) this.sessions.set(peerId, s)
    this.counters.sessions++
    void this.read(s)
    return s
  }

  private async read (s: Session): Promise<void> {
    const frames = new FrameReader(s.stream, {
      what: `have session with ${s.peerId}`,
      // idle between frames as long as the session lasts, but a frame once begun must arrive whole
      frameTimeoutMs: this.drainTimeoutMs,
      highWaterBytes: MAX_HAVE_FRAME_BYTES,
      malformed: m => new HaveProtocolError(m)
    })
    try {
      for await (const body of frames.frames(MAX_HAVE_FRAME_BYTES)) {
        this.counters.messagesIn++
        await this.receive(s, decodeHave(body.subarray()))
      }
      this.endSession(s, undefined)
    } catch (err) {
      this.endSession(s, err as Error)
    } finally {
      frames.release()
    }
  }

  private async receive (s: Session, m: HaveMessage): Promise<void> {
    switch (m.type) {
      case 'interest':
        for (const b of m.blobs) this.follow(s, b.toString('hex'))
        return
      case 'uninterest':
        for (const b of m.blobs) {
          const hex = b.toString('hex')
          s.following.get(hex)?.unsubscribe()
          s.following.delete(hex)
        }
        return
      case 'want-have': {
        const has = await this.local.hasDigests(m.digests)
        const bits = newBits(m.digests.length)
        has.forEach((h, i) => { if (h) setBit(bits, i) })
        s.send({ type: 'have-digests', id: m.id, count: m.digests.length, bits })
        return
      }
      case 'have-digests': {
        const done = s.wants.get(m.id)
        if (done === undefined) return
        s.wants.delete(m.id)
        const out: boolean[] = []
        for (let i = 0; i < m.count; i++) out.push((m.bits[i >>> 3]! & (0x80 >>> (i & 7))) !== 0)
        done(out)
        return
      }
      default: {
        const hex = m.blob.toString('hex')
        // state of a blob we did not ask about is not kept (a neighbour cannot fill our memory with it)
        if (!this.ours.has(hex)) return
        // a bitfield sized unlike the blob as we know it is a lie (the table sizes a blob's rows by it)
        if (m.type === 'bitfield') {
          const chunks = this.local.snapshot(hex)?.chunks
          if (chunks !== undefined && m.chunks !== chunks) {
            this.log?.debug('%s sent a bitfield of %d chunks for blob %s, which has %d: ignored', s.peerId, m.chunks, hex, chunks)
            return
          }
        }
        this.table.apply(s.peerId, m, hex)
        for (const l of this.listeners) l(hex, s.peerId)
      }
    }
  }

  /** The neighbour follows `blobHex` here: its bitfield now (if known), updates from now on. */
  private follow (s: Session, blobHex: string): void {
    if (s.following.has(blobHex)) return
    if (s.following.size >= this.maxInterests) {
      this.log?.warn('have session with %s: more than %d blobs followed, ignoring %s', s.peerId, this.maxInterests, blobHex)
      return
    }
    const out = new HaveOutbox()
    const state = { out, full: true }
    const unsubscribe = this.local.subscribe(blobHex, {
      have: (xs) => { for (const ci of xs) out.onHave(ci) },
      pending: (xs) => { for (const ci of xs) out.onPending(ci) },
      dropped: (xs) => { for (const ci of xs) out.onDropped(ci) },
      known: () => { state.full = true }
    })
    const f: Following = Object.assign(state, { unsubscribe })
    s.following.set(blobHex, f)
    this.flushOne(s, blobHex, f)
    const told = this.ours.get(blobHex)
    if (this.followBack && told !== undefined && !s.interests.has(blobHex)) {
      told.add(s.peerId)
      s.interests.add(blobHex)
      s.send({ type: 'interest', blobs: [Buffer.from(blobHex, 'hex')] })
    }
  }

  /** @internal */
  endSession (s: Session, err: Error | undefined): void {
    if (s.closed) return
    s.closed = true
    if (err !== undefined) {
      this.counters.aborted++
      this.log?.debug('have session with %s ended: %s', s.peerId, describeError(err))
      s.stream.abort(err)
    } else {
      void s.stream.close().catch(() => {})
    }
    for (const f of s.following.values()) f.unsubscribe()
    s.following.clear()
    for (const w of s.wants.values()) w([])
    s.wants.clear()
    if (this.sessions.get(s.peerId) === s) {
      this.sessions.delete(s.peerId)
      this.table.forgetPeer(s.peerId)
      for (const told of this.ours.values()) told.delete(s.peerId)
      for (const hex of s.interests) for (const l of this.listeners) l(hex, s.peerId)
    }
  }

  private flush (): void {
    for (const s of this.sessions.values()) for (const [hex, f] of s.following) this.flushOne(s, hex, f)
  }

  private flushOne (s: Session, blobHex: string, f: Following): void {
    const blob = Buffer.from(blobHex, 'hex')
    if (f.full) {
      const snap = this.local.snapshot(blobHex)
      if (snap === undefined) return
      f.full = false
      const pending = [...new Set([...snap.pending, ...f.out.pending])].slice(0, MAX_INDEXES_PER_MESSAGE)
      // the bitfield carries everything the waiting updates would have said
      f.out.clear()
      s.send({ type: 'bitfield', blob, chunks: snap.chunks, bits: snap.bits, pending })
      return
    }
    for (const m of f.out.drain(blob)) s.send(m)
  }
}

/** the most blobs one INTEREST names (re-exported for callers batching their interests) */
export { MAX_BLOBS_PER_MESSAGE }
