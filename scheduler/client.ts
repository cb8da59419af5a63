/**
 * The scheduler client, running on a peer's own libp2p node: one long-lived session stream to the scheduler,
 * batched announces and withdraws, heartbeats, and resolves that never stall a read. Given several schedulers, it
 * uses one at a time and moves to the next (round robin, with backoff) when a session breaks, a dial fails or the
 * scheduler stops answering resolves.
 *
 * The set of digests this peer holds is kept here (as 32-byte one-byte strings), with those the scheduler recorded
 * for it on its resolves (claims), because they are what the peer re-sends, whole, after every reconnect: the
 * scheduler may have restarted empty, may be another one, or may still hold entries the peer withdrew while the
 * session was down; the first frame of a session therefore resets the peer's entries.
 */
import type { Libp2p, Stream } from '@libp2p/interface'
import { Backoff, delay, describeError, silentLogger, type Logger } from '../base/index.js'
import {
  FrameReader, SCHEDULER_PROTOCOLS, type ChunkAnnouncer, type ChunkHolder, type HolderResolver, type PeerOutcome, type ResolvedHolders
} from '../p2p/index.js'
import type { PeerInfo, PeerLoad, SchedulerClientInit } from './types.js'
import { bodies, FRAME_DIGESTS, Session } from './session.js'
import { Holdings } from './holdings.js'
import { SchedulerTargets } from './targets.js'
import {
  decodeMessage, encodeMessage, packDigests, SchedulerError, DIGEST_BYTES, MAX_FRAME_BYTES, MAX_OUTCOMES_PER_FRAME,
  MAX_HOLDERS_PER_ANSWER, MAX_PEER_ID_BYTES, type SchedulerMessage
} from './protocol.js'

const DEFAULT_RESOLVE_TIMEOUT_MS = 200
const DEFAULT_HEARTBEAT_MS = 5000
const DEFAULT_FLUSH_MS = 50
const DEFAULT_FLUSH_DIGESTS = 4096
const DEFAULT_DIAL_TIMEOUT_MS = 2000
const DEFAULT_MIN_RECONNECT_MS = 100
/**
 * a scheduler that answered nothing this long after a resolve was sent is given up for the next one: long enough
 * for a directory scheduler waiting on Redis through a failover (its calls settle within about a second each)
 */
const DEFAULT_UNANSWERED_MS = 10_000
/** holders asked per digest */
const HOLDERS_PER_DIGEST = 4
/** a resolve while disconnected triggers a connection attempt at most this often */
const KICK_SPACING_MS = 500
/** outcomes waiting for a flush; past it new ones are dropped (reports are advisory) */
const MAX_QUEUED_REPORTS = 16384
/** how long `stop` waits for the LEAVE frame to go out */
const STOP_GRACE_MS = 500

const IDLE: PeerLoad = Object.freeze({ activeUploads: 0, recentUploadBps: 0 })

/** tag value that keeps the connection manager from pruning the scheduler connection */
const SCHEDULER_TAG = 'rafspeer-scheduler'

/** The parts of the peer's libp2p node the client uses (`peerStore`, when given, protects the connection). */
export interface SchedulerClientComponents {
  libp2p: Pick<Libp2p, 'dialProtocol' | 'peerId'> & Partial<Pick<Libp2p, 'peerStore'>>
}

interface PendingResolve {
  session: Session
  digests: readonly Buffer[]
  out: ResolvedHolders
  done: () => void
}

/**
 * `HolderResolver` and `ChunkAnnouncer` backed by a scheduler reached over the peer's own libp2p node.
 * `start()` connects in the background and reconnects with backoff (a resolve while disconnected also tries);
 * `stop()` sends LEAVE so the scheduler forgets this peer at once.
 */
export class SchedulerClient implements HolderResolver, ChunkAnnouncer {
  private readonly libp2p: SchedulerClientComponents['libp2p']
  private readonly targets: SchedulerTargets
  private readonly selfId: string
  private readonly zone: string
  private readonly selfAddrs: () => string[]
  private readonly resolveTimeoutMs: number
  private readonly heartbeatMs: number
  private readonly flushMs: number
  private readonly flushDigests: number
  private readonly uploadSlots: number
  private readonly uploadBps: number
  private readonly load: () => PeerLoad
  private readonly dialTimeoutMs: number
  private readonly minReconnectMs: number
  private readonly maxReconnectMs: number
  private readonly unansweredMs: number
  private readonly log: Logger

  /** what this peer holds and claimed, the truth re-sent after every reconnect */
  private readonly holdings = new Holdings()
  private reports: PeerOutcome[] = []
  private readonly pending = new Map<number, PendingResolve>()
  private sessionWaiters: Array<(s: Session | undefined) => void> = []
  private session: Session | undefined
  private connecting: Promise<void> | undefined
  private running = false
  private stopping = new AbortController()
  private flushTimer: NodeJS.Timeout | undefined
  private heartbeatTimer: NodeJS.Timeout | undefined
  private reconnectTimer: NodeJS.Timeout | undefined
  private readonly backoff: Backoff
  private lastAttempt = 0
  private lastAddrs = ''
  private nextId = 0
  private sessions = 0
  /** sessions given up because the scheduler stopped answering */
  private unanswered = 0

  constructor (components: SchedulerClientComponents, init: SchedulerClientInit) {
    this.libp2p = components.libp2p
    this.targets = new SchedulerTargets(init.scheduler)
    this.selfId = components.libp2p.peerId.toString()
    this.zone = init.zone ?? ''
    this.selfAddrs = init.selfAddrs
    this.resolveTimeoutMs = init.resolveTimeoutMs ?? DEFAULT_RESOLVE_TIMEOUT_MS
    this.heartbeatMs = init.heartbeatMs ?? DEFAULT_HEARTBEAT_MS
    this.flushMs = init.flushMs ?? DEFAULT_FLUSH_MS
    this.flushDigests = init.flushDigests ?? DEFAULT_FLUSH_DIGESTS
    this.uploadSlots = init.uploadSlots ?? 0
    this.uploadBps = init.uploadBps ?? 0
    this.load = init.load ?? (() => IDLE)
    this.dialTimeoutMs = init.dialTimeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS
    this.minReconnectMs = init.minReconnectMs ?? DEFAULT_MIN_RECONNECT_MS
    this.maxReconnectMs = Math.max(this.minReconnectMs, init.maxReconnectMs ?? Math.min(5000, this.heartbeatMs))
    this.unansweredMs = init.unansweredMs ?? DEFAULT_UNANSWERED_MS
    this.backoff = new Backoff({ baseMs: this.minReconnectMs, maxMs: this.maxReconnectMs })
    this.log = (init.logger ?? silentLogger).forComponent('rafspeer:scheduler-client')
  }

  /** Starts connecting (in the background: a peer works without a scheduler) and heartbeating. */
  async start (): Promise<void> {
    if (this.running) return
    this.running = true
    this.stopping = new AbortController()
    this.heartbeatTimer = setInterval(() => { this.tick() }, this.heartbeatMs)
    this.heartbeatTimer.unref()
    const peerStore = this.libp2p.peerStore
    if (peerStore !== undefined) {
      // loaded here, not with the module: a node imports this room whether or not it joins a swarm (~0.17 s)
      const { peerIdFromString } = await import('@libp2p/peer-id')
      // every scheduler it may move to, so none of their connections is pruned while another is in use
      for (const id of this.targets.peerIds()) {
        await peerStore.merge(peerIdFromString(id), { tags: { [SCHEDULER_TAG]: { value: 100 } } })
          .catch((err: Error) => { this.log.error('cannot tag the scheduler peer %s: %s', id, err.message) })
      }
    }
    this.connect()
  }

  /** Tells the scheduler this peer leaves (its entries go at once), closes the session and stops timers. */
  async stop (): Promise<void> {
    if (!this.running) return
    this.running = false
    this.stopping.abort()
    clearInterval(this.heartbeatTimer)
    clearTimeout(this.flushTimer)
    clearTimeout(this.reconnectTimer)
    this.heartbeatTimer = this.flushTimer = this.reconnectTimer = undefined
    this.holdings.dropChanges()
    this.reports = []
    const s = this.session
    if (s !== undefined) {
      s.sendUrgent(encodeMessage({ type: 'leave' }))
      await Promise.race([s.idle(), delay(STOP_GRACE_MS)])
      await s.stream.close({ signal: AbortSignal.timeout(STOP_GRACE_MS) }).catch(() => {})
      this.endSession(s, undefined)
    }
    await this.connecting
    this.wakeWaiters(undefined)
  }

  /** Whether a session to the scheduler is open. */
  get connected (): boolean { return this.session !== undefined }

  /** The scheduler in use (or, disconnected, the one dialled next). */
  get address (): string { return this.targets.current.toString() }

  /** Resolves true once connected, false after `timeoutMs` (for tests and start-up logs). */
  async waitConnected (timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs
    while (this.running && this.session === undefined && Date.now() < deadline) {
      if (this.connecting === undefined) this.connect()
      await delay(Math.max(1, Math.min(25, deadline - Date.now())))
    }
    return this.session !== undefined
  }

  stats (): { connected: boolean, scheduler: string, held: number, claimed: number, pendingResolves: number, sessions: number, unanswered: number } {
    return {
      connected: this.connected,
      scheduler: this.address,
      held: this.holdings.heldCount,
      claimed: this.holdings.claimedCount,
      pendingResolves: this.pending.size,
      sessions: this.sessions,
      unanswered: this.unanswered
    }
  }

  // ---- announcer ----

  announce (digests: Buffer[]): void {
    this.holdings.announce(digests)
    this.scheduleFlush()
  }

  withdraw (digests: Buffer[]): void {
    this.holdings.withdraw(digests)
    this.scheduleFlush()
  }

  /**
   * Gives up claims: digests the scheduler recorded for this peer on a resolve miss (see `claimMisses`) that it
   * did not get after all. Digests the peer announced since are left alone.
   */
  releaseClaims (digests: Buffer[]): void {
    this.holdings.release(digests)
    this.scheduleFlush()
  }

  report (outcomes: PeerOutcome[]): void {
    for (const o of outcomes) {
      if (this.reports.length >= MAX_QUEUED_REPORTS) break
      if (o.peerId === this.selfId || Buffer.byteLength(o.peerId) > MAX_PEER_ID_BYTES) continue
      this.reports.push(o)
    }
    this.scheduleFlush()
  }

  private scheduleFlush (): void {
    const waiting = this.holdings.changes + this.reports.length
    if (waiting >= this.flushDigests) {
      this.flush()
    } else if (this.flushTimer === undefined && waiting > 0) {
      this.flushTimer = setTimeout(() => { this.flush() }, this.flushMs)
      this.flushTimer.unref()
    }
  }

  /** Sends what is batched. Without a session it is dropped: the holdings are re-sent whole when the session opens. */
  private flush (): void {
    clearTimeout(this.flushTimer)
    this.flushTimer = undefined
    const s = this.session
    if (s !== undefined) {
      const { withdraw, announce } = this.holdings.takeChanges()
      if (withdraw.length > 0) s.sendBulk(bodies(withdraw, (digests) => ({ type: 'withdraw', digests })))
      if (announce.length > 0) s.sendBulk(bodies(announce, (digests) => ({ type: 'announce', reset: false, digests })))
      for (let i = 0; i < this.reports.length; i += MAX_OUTCOMES_PER_FRAME) {
        s.sendUrgent(encodeMessage({ type: 'report', outcomes: this.reports.slice(i, i + MAX_OUTCOMES_PER_FRAME) }))
      }
    }
    this.holdings.dropChanges()
    this.reports = []
  }

  // ---- resolver ----

  /**
   * Holders per hex digest, best first (never this peer). Resolves within `resolveTimeoutMs` with whatever
   * arrived (nothing when the scheduler is unreachable) and never rejects; an abort of `opts.signal` answers at once.
   */
  async resolve (digests: Buffer[], opts: { signal?: AbortSignal, timeoutMs?: number, max?: number, group?: number } = {}): Promise<ResolvedHolders> {
    const out: ResolvedHolders = new Map<string, ChunkHolder[]>()
    const asked = digests.filter((d) => d.length === DIGEST_BYTES)
    if (!this.running || asked.length === 0 || opts.signal?.aborted === true) return out
    return await new Promise((resolve) => {
      const ids: number[] = []
      let left = 0
      let finished = false
      const finish = (): void => {
        if (finished) return
        finished = true
        clearTimeout(timer)
        opts.signal?.removeEventListener('abort', finish)
        for (const id of ids) this.pending.delete(id)
        resolve(out)
      }
      const timer = setTimeout(finish, opts.timeoutMs ?? this.resolveTimeoutMs)
      opts.signal?.addEventListener('abort', finish, { once: true })
      const send = (s: Session | undefined): void => {
        if (finished) return
        if (s === undefined || s.closed) { finish(); return }
        for (let i = 0; i < asked.length; i += FRAME_DIGESTS) {
          const part = asked.slice(i, i + FRAME_DIGESTS)
          this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1
          const id = this.nextId
          const max = Math.max(1, Math.min(MAX_HOLDERS_PER_ANSWER, opts.max ?? HOLDERS_PER_DIGEST))
          const group = Math.min(max, Math.max(0, opts.group ?? 0))
          if (!s.sendUrgent(encodeMessage({ type: 'resolve', id, max, digests: packDigests(part), ...(group > 0 ? { group } : {}) }))) break
          ids.push(id)
          s.awaitingSince ??= Date.now()
          this.holdings.claim(part)
          left++
          this.pending.set(id, { session: s, digests: part, out, done: () => { if (--left === 0) finish() } })
        }
        if (left === 0 || s.closed) finish()
      }
      if (this.session !== undefined && !this.giveUpIfUnanswering(this.session)) {
        send(this.session)
      } else if (this.connecting !== undefined || Date.now() - this.lastAttempt >= KICK_SPACING_MS) {
        // wait for the connection in progress (or one started now); a failed attempt answers empty at once
        this.sessionWaiters.push(send)
        this.connect()
      } else {
        finish()
      }
    })
  }

  private answer (m: Extract<SchedulerMessage, { type: 'resolved' }>): void {
    const p = this.pending.get(m.id)
    if (p === undefined) return // answered too late: the caller has moved on
    this.pending.delete(m.id)
    if (m.counts.length !== p.digests.length) {
      this.log.error('scheduler answered %d digests for %d asked: ignored', m.counts.length, p.digests.length)
      p.done()
      return
    }
    const holders = m.peers.map((h) => (h.peerId === this.selfId ? undefined : h))
    let j = 0
    for (let i = 0; i < m.counts.length; i++) {
      // a 1.1 scheduler tells the swarm's size with a group
      const swarm = m.swarms?.[i] ?? 0
      if (swarm > 0) (p.out.swarms ??= new Map()).set(p.digests[i].toString('hex'), swarm)
      const k = m.counts[i]
      if (k === 0) continue
      const list: ChunkHolder[] = []
      // the key's group (asked for with `group`) comes first, this peer included when it is one of them
      const g = m.groups?.[i] ?? 0
      for (let e = 0; e < k; e++) {
        const ref = m.refs[j++]
        if (e < g) list.push({ ...m.peers[ref], group: true })
        else if (holders[ref] !== undefined) list.push(holders[ref])
      }
      if (list.length > 0) p.out.set(p.digests[i].toString('hex'), list)
    }
    p.done()
  }

  // ---- session ----

  private info (): PeerInfo {
    let addrs: string[] = []
    try {
      addrs = this.selfAddrs()
    } catch (err) {
      this.log.error('selfAddrs failed: %s', (err as Error).message)
    }
    return { addrs, zone: this.zone, uploadSlots: this.uploadSlots, uploadBps: this.uploadBps }
  }

  private heartbeatBody (): Uint8Array {
    let load = IDLE
    try {
      load = this.load()
    } catch (err) {
      this.log.error('load sampler failed: %s', (err as Error).message)
    }
    return encodeMessage({ type: 'heartbeat', intervalMs: this.heartbeatMs, load })
  }

  private tick (): void {
    const s = this.session
    if (s === undefined || this.giveUpIfUnanswering(s)) {
      if (this.connecting === undefined && this.reconnectTimer === undefined) this.connect()
      return
    }
    s.sendUrgent(this.heartbeatBody())
    const info = this.info()
    const key = JSON.stringify(info.addrs)
    if (key !== this.lastAddrs) {
      this.lastAddrs = key
      s.sendBulk([encodeMessage({ type: 'announce', reset: false, info, digests: Buffer.alloc(0) })].values())
    }
  }

  /**
   * Ends a session whose scheduler left a resolve unanswered for `unansweredMs` and answered nothing since (it is
   * stopped, or wedged: the stream alone may stay open for minutes), so the next scheduler is tried.
   */
  private giveUpIfUnanswering (s: Session): boolean {
    if (s.awaitingSince === undefined || Date.now() - s.awaitingSince < this.unansweredMs) return false
    this.unanswered++
    this.endSession(s, new SchedulerError('RAFSPEER_ERR_SCHED_UNANSWERED', `scheduler ${this.address} answered nothing for ${Date.now() - s.awaitingSince} ms after a resolve`))
    return true
  }

  private connect (): void {
    if (!this.running || this.session !== undefined || this.connecting !== undefined) return
    clearTimeout(this.reconnectTimer)
    this.reconnectTimer = undefined
    this.lastAttempt = Date.now()
    this.connecting = this.openSession().finally(() => { this.connecting = undefined })
  }

  private async openSession (): Promise<void> {
    const target = this.targets.current
    let stream: Stream
    try {
      stream = await this.libp2p.dialProtocol(target, SCHEDULER_PROTOCOLS, {
        signal: AbortSignal.any([this.stopping.signal, AbortSignal.timeout(this.dialTimeoutMs)])
      })
    } catch (err) {
      if (this.running) {
        this.log.warn('scheduler %s unreachable: %s', target.toString(), describeError(err))
        this.moveOn()
        this.scheduleReconnect()
      }
      this.wakeWaiters(undefined)
      return
    }
    if (!this.running) {
      stream.abort(new Error('scheduler client stopped'))
      return
    }
    const s: Session = new Session(stream, Math.max(5000, 3 * this.heartbeatMs), (err) => { this.endSession(s, err) })
    this.session = s
    this.sessions++
    // everything batched is part of the holdings, which go out whole, the first frame resetting the old entries
    clearTimeout(this.flushTimer)
    this.flushTimer = undefined
    const all = this.holdings.takeAll()
    const info = this.info()
    this.lastAddrs = JSON.stringify(info.addrs)
    s.sendBulk(bodies(all, (digests, first) => ({ type: 'announce', reset: first, info: first ? info : undefined, digests })))
    s.sendUrgent(this.heartbeatBody())
    if (this.reports.length > 0) this.scheduleFlush()
    this.log.info('connected to scheduler %s (%d digests held, %d claimed)', target.toString(), this.holdings.heldCount, this.holdings.claimedCount)
    this.wakeWaiters(s)
    void this.readLoop(s)
  }

  private async readLoop (s: Session): Promise<void> {
    try {
      for await (const body of new FrameReader(s.stream, { what: 'scheduler session', malformed: m => new SchedulerError('RAFSPEER_ERR_SCHED_MALFORMED', `malformed scheduler frame: ${m}`) }).frames(MAX_FRAME_BYTES)) {
        s.awaitingSince = undefined
        const m = decodeMessage(body)
        if (m.type !== 'resolved') throw new SchedulerError('RAFSPEER_ERR_SCHED_MALFORMED', `malformed scheduler frame: unexpected ${m.type} from the scheduler`)
        this.answer(m)
      }
      this.endSession(s, undefined)
    } catch (err) {
      this.endSession(s, err as Error)
    }
  }

  private endSession (s: Session, err: Error | undefined): void {
    if (s.closed) return
    s.closed = true
    if (this.session === s) this.session = undefined
    // a session that lived a while earns a quick reconnect; one that dies at once keeps backing off
    if (Date.now() - s.openedAt > 2 * this.maxReconnectMs) this.backoff.reset()
    if (err !== undefined && this.running) this.log.error('scheduler session ended: %s', err.message)
    s.stream.abort(err ?? new Error('scheduler session ended'))
    for (const [id, p] of this.pending) {
      if (p.session !== s) continue
      this.pending.delete(id)
      p.done()
    }
    if (this.running) {
      this.moveOn()
      this.scheduleReconnect()
    }
  }

  /** The next scheduler gets the next attempt (with one scheduler: the same one again). */
  private moveOn (): void {
    if (this.targets.all.length < 2) return
    const from = this.targets.current.toString()
    this.log.info('scheduler %s failed: trying %s next', from, this.targets.advance().toString())
  }

  private scheduleReconnect (): void {
    if (!this.running || this.session !== undefined || this.reconnectTimer !== undefined) return
    const delay = this.backoff.next()
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined
      this.connect()
    }, delay)
    this.reconnectTimer.unref()
  }

  private wakeWaiters (s: Session | undefined): void {
    for (const w of this.sessionWaiters.splice(0)) w(s)
  }
}
