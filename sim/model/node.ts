/**
 * One modelled node: its cache (presence bits per blob), its fetch window, its have sessions (it tells the
 * neighbours that follow a blob what it has and is fetching, batched every `haveFlushMs`; it keeps what its
 * neighbours told it in the daemon's own {@link HaveTable}), its chunk server's slots, and its scheduler client
 * (hello, heartbeats, batched reports). Death drops all of that at once; a restart begins with an empty cache.
 */
import { Batch, type SwarmFetch } from './fetch.js'
import { ConnSet } from './conns.js'
import type { Timed } from './events.js'
import type { DirectoryPeer } from './directory.js'
import { HaveDelivery, Join, NodeBlob } from './node-blob.js'
import { ModelPrefetch } from './prefetch.js'
import { HaveInbox, type Arrival } from './have-inbox.js'
import { ChunkReceivers, MAX_INDEXES_PER_MESSAGE, setBit, type HaveMessage, type HaveTable } from './policy.js'
import type { PeerReq, RegistryReq } from './request.js'
import { haveFrameBytes } from './wire.js'
import { chunkBytes, type World } from './world.js'

export { NodeBlob } from './node-blob.js'

const FLUSH = 1
const HEARTBEAT = 2
const REPORT = 3
const DIE = 4
const WATCHDOG = 5
const CODES = 8

export class SimNode implements Timed {
  static readonly START = 0
  readonly info: DirectoryPeer['info']
  readonly dir: DirectoryPeer
  alive = false
  incarnation = 0
  startedAt = 0
  doneAt: number | null = null
  completionMs: number | null = null
  diedAt: number | null = null
  blobs: NodeBlob[] = []
  /** what the neighbours told it (`table`), with the messages not applied yet */
  private inbox: HaveInbox
  /** its blobs with a look-up waiting for a neighbour's word, or a first look-up waiting for bitfields */
  private attentive = 0
  /** neighbours with an open have session, and with a connection (symmetric; most of the swarm: see `ConnSet`) */
  sessions = new Set<SimNode>()
  conns: ConnSet<SimNode>
  /** connections being opened: the peer, and when the connection is up (kept only while a handshake runs) */
  private dialing: Map<SimNode, number> | undefined
  /** the neighbour source's local penalties (failed requests) */
  penalties = new Map<SimNode, number>()
  // fetch
  private cursorBlob = 0
  private cursorCi = 0
  private running = 0
  private chunksLeft = 0
  /** the swarm prefetch (`ModelInit.prefetch`), and its batches: running, and waiting for one of the fetcher's prefetch slots */
  private prefetch: ModelPrefetch | undefined
  private prefetchRunning = 0
  private prefetchQueue: Batch[] = []
  // chunk server
  uploadsActive = 0
  /** of them, requests a read waits for */
  urgentUploadsActive = 0
  /** per chunk (blob index × 2³² + ci): the askers it is sending it to, or sent it to a moment ago */
  receivers: ChunkReceivers<number>
  /** chunks located again after their holders were all BUSY */
  replans = 0
  serving = new Set<PeerReq>()
  asking = new Set<PeerReq>()
  registryReqs = new Set<RegistryReq>()
  /**
   * neighbour fetches under the fetcher's idle deadline, watched by one timer per node (a timer per fetch would
   * hold every finished fetch in the event queue for the whole deadline)
   */
  private fetches = new Set<SwarmFetch>()
  private watchdogAt = Infinity
  // have service and scheduler client
  private dirty = new Set<NodeBlob>()
  private flushArmed = false
  private reports: Parameters<World['directory']['report']>[1] = []
  private reportArmed = false
  uploadedSinceBeat = 0
  // counters (over all incarnations)
  registryBytes = 0
  peerBytes = 0
  uploadBytes = 0
  duplicateBytes = 0
  readonly requests = { sent: 0, failed: 0, hedges: 0, busy: 0, notFound: 0, redirects: 0 }
  /**
   * as the daemon's chunk server counts them: requests refused (slots full), requests a read waits for answered in the
   * slots kept for reads (`urgentUploads`), chunks BUSY after a park, REDIRECTs
   */
  readonly served = { refused: 0, urgentUploads: 0, busyWhileFetching: 0, redirects: 0 }
  pendingFrames = 0
  /**
   * chunks fetched from the registry, by why (`SourceReason`: the rendezvous assignee in the scheduler's group, or in
   * one of the peers it knew, the assignee read behind it, nobody took it up in the grace), or a neighbour fetch left it
   */
  readonly sourced = { assignee: 0, noGroup: 0, ahead: 0, grace: 0, leftover: 0 }
  /** chunks nobody it followed had that this node, outside the blob's group, asked their assignee for */
  assigneeAsks = 0
  /** neighbour fetches given up for idleness */
  idleTimeouts = 0
  /** chunks a read waited for too long on the neighbours, sent to the registry too (the fetcher's `readHandOffs`) */
  readHandOffs = 0
  /** idle deadlines of neighbour fetches started over because their chunks spread through the swarm (`spreading`) */
  idleExtensions = 0
  readonly msgs = { scheduler: { sent: 0, received: 0 }, have: { sent: 0, received: 0 }, chunk: { sent: 0, received: 0 } }
  readonly ctrl = { sent: 0, received: 0 }
  readonly batchMs: number[] = []
  restarts = 0

  constructor (readonly world: World, readonly idx: number, readonly peerId: string, private readonly flushPhase: number) {
    this.info = { addrs: [`/ip4/10.${(idx >> 16) & 255}.${(idx >> 8) & 255}.${idx & 255}/tcp/4001`], zone: '', uploadSlots: 0, uploadBps: world.cfg.bandwidth }
    this.dir = {
      peerId,
      info: this.info,
      alive: () => this.alive,
      counted: (sent, received, bytesSent, bytesReceived) => {
        this.msgs.scheduler.sent += sent
        this.msgs.scheduler.received += received
        this.ctrl.sent += bytesSent
        this.ctrl.received += bytesReceived
      }
    }
    this.inbox = new HaveInbox(() => world.queue.now)
    this.receivers = new ChunkReceivers({ now: () => world.queue.now })
    this.conns = this.newConns()
    this.dialing = undefined
  }

  private newConns (): ConnSet<SimNode> { return new ConnSet(this.world.nodes, this.world.cfg.nodes) }

  /**
   * When a connection to `peer` is up: now if there is one, else once its dial is through — a round trip, and the
   * machine's work on the handshakes (`World.cpuConnect`), paid once however many wait for it.
   */
  connectAt (peer: SimNode): number {
    const w = this.world
    const now = w.queue.now
    if (this.conns.has(peer)) return now
    const dialing = this.dialing ??= new Map()
    const at = dialing.get(peer)
    if (at !== undefined && at > now) return at
    if (dialing.size >= 64) for (const [p, t] of dialing) if (t <= now) dialing.delete(p)
    const up = Math.max(now + this.cfg.rttMs, w.cpuConnect())
    dialing.set(peer, up)
    return up
  }

  /** what its neighbours told it, up to now */
  get table (): HaveTable { return this.inbox.table }

  private get cfg (): World['cfg'] { return this.world.cfg }

  /** This incarnation's timer arg for `code`. */
  private arg (code: number): number { return code + CODES * this.incarnation }

  fire (arg: number): void {
    const code = arg % CODES
    if (code === SimNode.START) { this.start(); return }
    if (Math.floor(arg / CODES) !== this.incarnation || !this.alive) return
    switch (code) {
      case FLUSH: this.flush(); return
      case HEARTBEAT: this.heartbeat(); return
      case REPORT: this.flushReports(); return
      case WATCHDOG: this.watchdog(); return
      case DIE: this.die()
    }
  }

  /** Dies at `t` (in its first life). */
  dieAt (t: number): void { this.world.queue.at(t, this, DIE + CODES) }

  private start (): void {
    const w = this.world
    const q = w.queue
    if (this.incarnation > 0) { this.restarts++; w.nodeRestarted() }
    this.incarnation++
    this.alive = true
    this.startedAt = q.now
    this.doneAt = null
    this.completionMs = null
    this.blobs = w.blobs.map(s => new NodeBlob(this, s))
    this.inbox = new HaveInbox(() => q.now)
    this.attentive = 0
    this.sessions = new Set()
    this.conns = this.newConns()
    this.dialing = undefined
    this.penalties = new Map()
    this.serving = new Set()
    this.asking = new Set()
    this.registryReqs = new Set()
    this.fetches = new Set()
    this.watchdogAt = Infinity
    this.dirty = new Set()
    this.flushArmed = false
    this.reports = []
    this.reportArmed = false
    this.uploadsActive = 0
    this.urgentUploadsActive = 0
    this.receivers = new ChunkReceivers({ now: () => q.now })
    this.uploadedSinceBeat = 0
    this.cursorBlob = 0
    this.cursorCi = 0
    this.running = 0
    this.chunksLeft = w.chunks
    this.prefetchRunning = 0
    this.prefetchQueue = []
    this.prefetch = this.cfg.prefetch ? new ModelPrefetch(this) : undefined
    w.directory.hello(this.dir, this.cfg.heartbeatMs)
    q.after(this.cfg.heartbeatMs, this, this.arg(HEARTBEAT))
    this.startBatches()
    this.prefetch?.start()
  }

  private die (): void {
    const w = this.world
    const q = w.queue
    this.alive = false
    w.sessionResets++
    this.diedAt = q.now
    for (const r of this.serving) r.serverDied()
    for (const r of this.asking) r.askerDied()
    for (const r of this.registryReqs) r.abort()
    const inc = this.incarnation
    for (const peer of new Set([...this.sessions, ...this.conns])) {
      // the peers see the connection reset half a round trip later
      q.after(this.cfg.halfRttMs, { fire: () => { peer.lost(this, inc) } })
    }
    this.sessions = new Set()
    this.conns = this.newConns()
    this.dialing = undefined
    w.nodeDied(this, this.doneAt !== null)
  }

  /** The connection to `peer` (in its life `inc`) is gone: its state is forgotten, waiting look-ups look again. */
  lost (peer: SimNode, inc: number): void {
    if (!this.alive || (peer.alive && peer.incarnation !== inc)) return
    this.conns.delete(peer)
    if (!this.sessions.delete(peer)) return
    this.world.sessionResets++
    this.table.forgetPeer(peer.peerId)
    for (const nb of this.blobs) {
      nb.followers.delete(peer)
      nb.told.delete(peer)
      this.updated(nb)
    }
  }

  // ---- fetching ----

  private startBatches (): void {
    if (this.prefetch !== undefined) { this.startReads(); return }
    const { windowBatches, batchBytes } = this.cfg
    while (this.running < windowBatches && this.cursorBlob < this.blobs.length) {
      const nb = this.blobs[this.cursorBlob]!
      const cis: number[] = []
      let bytes = 0
      while (this.cursorCi < nb.spec.chunks) {
        const size = chunkBytes(nb.spec, this.cursorCi)
        if (cis.length > 0 && bytes + size > batchBytes) break
        cis.push(this.cursorCi++)
        bytes += size
      }
      if (this.cursorCi >= nb.spec.chunks) { this.cursorBlob++; this.cursorCi = 0 }
      if (cis.length === 0) continue
      this.running++
      new Batch(this, nb, cis).start()
    }
  }

  /**
   * The reader beside a prefetch: its window walks the image as without one, but a chunk present is read at once and
   * one a batch already fetches (a prefetch slice's) is waited for, its batch started now if it still waits for a
   * prefetch slot (the fetch queue's promotion of a job a read joins); only the rest is fetched, as a read.
   */
  private startReads (): void {
    const { windowBatches, batchBytes } = this.cfg
    while (this.running < windowBatches && this.cursorBlob < this.blobs.length) {
      const nb = this.blobs[this.cursorBlob]!
      const fresh: number[] = []
      const wanted: number[] = []
      let bytes = 0
      while (this.cursorCi < nb.spec.chunks) {
        const ci = this.cursorCi
        const size = chunkBytes(nb.spec, ci)
        if (wanted.length > 0 && bytes + size > batchBytes) break
        this.cursorCi++
        if (nb.has(ci)) continue
        bytes += size
        wanted.push(ci)
        ;(nb.reading ??= new Uint8Array(nb.spec.chunks))[ci] = 1
        nb.readSince ??= new Map()
        if (!nb.readSince.has(ci)) nb.readSince.set(ci, this.world.queue.now)
        if (nb.fetching[ci] === 1) this.promote(nb, ci)
        else fresh.push(ci)
      }
      if (this.cursorCi >= nb.spec.chunks) { this.cursorBlob++; this.cursorCi = 0 }
      if (wanted.length === 0) continue
      this.running++
      const started = this.world.queue.now
      if (fresh.length > 0) new Batch(this, nb, fresh, () => {}).start()
      new Join(nb, wanted, () => {
        this.running--
        if (this.cfg.nodesDetail === 'all') this.batchMs.push(this.world.queue.now - started)
        this.startBatches()
      })
    }
  }

  /** A prefetch slice's batch for chunks not fetched yet: it runs in one of the fetcher's prefetch slots, reads first. */
  prefetchBatch (nb: NodeBlob, cis: number[]): void {
    const b = new Batch(this, nb, cis, () => {
      this.prefetchRunning--
      this.pumpPrefetch()
    })
    this.prefetchQueue.push(b)
    this.pumpPrefetch()
  }

  private pumpPrefetch (): void {
    while (this.prefetchRunning < this.cfg.prefetchSlots && this.prefetchQueue.length > 0) {
      this.prefetchRunning++
      this.prefetchQueue.shift()!.start()
    }
  }

  /** A read joins chunk `ci`'s flight: its batch, if still waiting for a prefetch slot, starts now (as a read). */
  private promote (nb: NodeBlob, ci: number): void {
    const at = this.prefetchQueue.findIndex(b => b.nb === nb && b.cis.includes(ci))
    if (at < 0) return
    const b = this.prefetchQueue.splice(at, 1)[0]!
    b.promoted()
    b.start()
  }

  /** Neighbours' news of blob `nb`, for a prefetch waiting on it. */
  private news (nb: NodeBlob): void { this.prefetch?.news(nb) }

  batchDone (b: Batch): void {
    this.running--
    if (this.cfg.nodesDetail === 'all') this.batchMs.push(this.world.queue.now - b.startedAt)
    this.startBatches()
  }

  /** The locator placed chunks (as `CacheChunks` with `pendingWhenPlanned`): PENDING to the followers. */
  pending (nb: NodeBlob, cis: readonly number[]): void {
    let fresh = false
    for (const ci of cis) {
      // as `CacheChunks.planned`: a chunk said PENDING once per flight (a replan says nothing new), none for one here
      if (nb.has(ci) || nb.inFlight.has(ci)) continue
      nb.inFlight.add(ci)
      nb.out.onPending(ci)
      fresh = true
    }
    if (fresh) this.touched(nb)
  }

  /**
   * A verified chunk for the cache, first of its name: present, HAVE to the followers, neighbours' requests waiting
   * for it go on. False (and counted as duplicate bytes) when it was there already.
   */
  accept (nb: NodeBlob, ci: number, fromRegistry: boolean, bytes: number): boolean {
    if (nb.received[ci]!++ > 0) { this.duplicateBytes += bytes; return false }
    setBit(nb.present, ci)
    nb.inFlight.delete(ci)
    nb.readSince?.delete(ci)
    nb.out.onHave(ci)
    this.touched(nb)
    if (fromRegistry) this.registryBytes += bytes
    else this.peerBytes += bytes
    const waiting = nb.waiters.get(ci)
    if (waiting !== undefined) {
      nb.waiters.delete(ci)
      nb.wake(ci, waiting)
    }
    if (--this.chunksLeft === 0) {
      const q = this.world.queue
      this.doneAt = q.now
      this.completionMs = q.now - this.startedAt
      this.world.nodeDone(this, this.completionMs)
    }
    nb.arrived(ci)
    return true
  }

  /** Watches a neighbour fetch's idle deadline. */
  /**
   * Whether a request of this node asks `peer` for chunk `ci` of blob `b` and has no reply for it yet (the daemon's
   * `NeighbourSource.isAsking`): that peer asking us for it would wait on us while we wait on it.
   */
  isAsking (peer: SimNode, b: number, ci: number): boolean {
    for (const r of this.asking) if (r.lane.holder === peer && r.fetch.batch.nb.spec.index === b && r.awaits(ci)) return true
    return false
  }

  watch (f: SwarmFetch): void {
    this.fetches.add(f)
    this.armWatchdog(Math.min(f.idleDue, f.handOffDue))
  }

  unwatch (f: SwarmFetch): void { this.fetches.delete(f) }

  private armWatchdog (t: number): void {
    if (t >= this.watchdogAt) return
    this.watchdogAt = t
    this.world.queue.at(t, this, this.arg(WATCHDOG))
  }

  private watchdog (): void {
    const now = this.world.queue.now
    if (now < this.watchdogAt) return
    this.watchdogAt = Infinity
    let next = Infinity
    for (const f of [...this.fetches]) {
      if (f.over) { this.fetches.delete(f); continue }
      // a read's chunks waited on the neighbours too long (the fetcher's hand-off), then the idle deadline
      if (f.handOffDue <= now) f.handOffReads()
      if (f.over) { this.fetches.delete(f); continue }
      if (f.idleDue <= now) { this.fetches.delete(f); f.idle(); continue }
      next = Math.min(next, f.idleDue, f.handOffDue)
    }
    if (next < Infinity) this.armWatchdog(next)
  }

  // ---- have sessions ----

  /** Opens a have session with `peer` (after the dial) and tells it our interest in the blob; false when it failed. */
  interest (nb: NodeBlob, peer: SimNode): boolean {
    const max = this.cfg.maxSessions
    if (!peer.alive || (!this.sessions.has(peer) && (this.sessions.size >= max || peer.sessions.size >= max))) return false
    this.conns.add(peer)
    peer.conns.add(this)
    this.sessions.add(peer)
    peer.sessions.add(this)
    nb.told.add(peer)
    const m: HaveMessage = { type: 'interest', blobs: [nb.spec.key] }
    const bytes = haveFrameBytes(m)
    this.msgs.have.sent++
    this.ctrl.sent += bytes
    const b = nb.spec.index
    this.world.queue.after(this.cfg.halfRttMs, { fire: () => { peer.interested(this, b, bytes) } })
    return true
  }

  /** `from` follows blob `b` here: its bitfield (with what is being fetched) now, updates at each flush. */
  private interested (from: SimNode, b: number, bytes: number): void {
    if (!this.alive || !this.sessions.has(from)) return
    this.msgs.have.received++
    this.ctrl.received += bytes
    const nb = this.blobs[b]!
    nb.followers.add(from)
    const m: HaveMessage = { type: 'bitfield', blob: nb.spec.key, chunks: nb.spec.chunks, bits: nb.present.slice(), pending: [...nb.inFlight].slice(0, MAX_INDEXES_PER_MESSAGE) }
    this.send([from], nb, [m])
    // as `HaveService` with `followBack`: interest in a blob this node works on too is answered with ours
    if (nb.group.working && !nb.told.has(from)) this.interest(nb, from)
  }

  private send (to: SimNode[], nb: NodeBlob, msgs: HaveMessage[]): void {
    let bytes = 0
    for (const m of msgs) bytes += haveFrameBytes(m)
    this.msgs.have.sent += msgs.length * to.length
    this.ctrl.sent += bytes * to.length
    this.world.queue.after(this.cfg.halfRttMs, new HaveDelivery(this, nb.spec.index, msgs, bytes, to))
  }

  /** Messages about blob `b` from `from`, into the table; look-ups waiting on the blob look again. */
  receiveHave (from: SimNode, b: number, a: Arrival, bytes: number): void {
    // (this runs for every follower of every flush: it touches as little of the node as it can)
    const w = this.world
    // until a session closes somewhere, a follower still has its session and its interest (nothing takes them back)
    const resets = w.sessionResets > 0
    if (!this.alive || (resets && !this.sessions.has(from))) return
    w.haveReceived[this.idx] += a.msgs.length
    w.haveBytesReceived[this.idx] += bytes
    if (resets && !this.blobs[b]!.told.has(from)) return
    this.inbox.push(a)
    if (this.attentive > 0) this.updated(this.blobs[b]!)
  }

  /** The blob's state of attention changed by `d` (see `attentive`); a past life's blobs do not count. */
  attend (nb: NodeBlob, d: number): void {
    if (this.blobs[nb.spec.index] === nb) this.attentive += d
  }

  /** A neighbour's state of the blob changed. */
  updated (nb: NodeBlob): void {
    nb.group.check()
    this.news(nb)
    if (nb.waiting.size === 0) return
    for (const loc of [...nb.waiting]) loc.plan()
  }

  private touched (nb: NodeBlob): void {
    this.dirty.add(nb)
    if (this.flushArmed) return
    this.flushArmed = true
    // the have service's interval timer, at this node's phase
    const { haveFlushMs } = this.cfg
    const now = this.world.queue.now
    const next = this.flushPhase + (Math.floor((now - this.flushPhase) / haveFlushMs) + 1) * haveFlushMs
    this.world.queue.at(next, this, this.arg(FLUSH))
  }

  /** As `HaveService.flushBlob`: what changed of the blob to its followers now, not at the next flush. */
  flushBlob (nb: NodeBlob): void {
    if (nb.followers.size > 0 && !nb.out.empty) this.send([...nb.followers], nb, nb.out.drain(nb.spec.key))
  }

  private flush (): void {
    this.flushArmed = false
    for (const nb of this.dirty) {
      if (nb.followers.size > 0 && !nb.out.empty) this.send([...nb.followers], nb, nb.out.drain(nb.spec.key))
      else nb.out.clear()
    }
    this.dirty.clear()
  }

  // ---- scheduler client ----

  private heartbeat (): void {
    const hb = this.cfg.heartbeatMs
    this.world.directory.heartbeat(this.dir, hb, { activeUploads: this.uploadsActive, recentUploadBps: this.uploadedSinceBeat * 1000 / hb })
    this.uploadedSinceBeat = 0
    this.world.queue.after(hb, this, this.arg(HEARTBEAT))
  }

  /** An outcome of a request to a neighbour, for the scheduler (batched) and the local penalty. */
  outcome (peer: SimNode, o: { chunks: number, bytes: number, ms: number, failed: boolean }): void {
    const p = this.penalties.get(peer) ?? 0
    if (o.failed) this.penalties.set(peer, p + 1)
    else if (o.chunks > 0 && p > 0) this.penalties.set(peer, Math.max(0, p - 0.5))
    this.reports.push({ peerId: peer.peerId, ...o, bad: false })
    if (this.reportArmed) return
    this.reportArmed = true
    this.world.queue.after(this.cfg.reportFlushMs, this, this.arg(REPORT))
  }

  private flushReports (): void {
    this.reportArmed = false
    if (this.reports.length === 0) return
    this.world.directory.report(this.dir, this.reports)
    this.reports = []
  }
}
