/**
 * Chunk requests on modelled links. A neighbour request (`/rafspeer/chunk/1.0.0`) reaches its holder half a round
 * trip after it is sent (a round trip more for a new connection); the holder answers BUSY past its upload slots,
 * else streams the chunks in order on one flow, waiting (with PENDING keep-alives) for a chunk it is fetching
 * itself and answering NOT_FOUND for one it neither has nor fetches. A busy holder sends an asker that takes
 * redirects on to a peer it is sending the chunk to (the daemon's {@link ChunkReceivers}); a holder's PENDING holds
 * the asker's hedge back until its next reply. A registry request is one ranged GET: its chunks stream in order at
 * the registry's shared egress. Every reply arrives half a round trip after it is sent.
 */
import { Slot, type Timed } from './events.js'
import type { Batch, Lane, SwarmFetch, Want } from './fetch.js'
import type { Flow, FlowOwner } from './links.js'
import type { SimNode } from './node.js'
import { FIRST_PENDING_MS, MAX_REDIRECTS, PENDING_INTERVAL_MS, TAKE_TURN, PROGRESS_STEP_BYTES, PROGRESS_WINDOW_MS, REDIRECTED_WAIT_MS, takesUrgentSlot } from './policy.js'
import { chunkBytes } from './world.js'
import { chunkRequestBytes, redirectReplyBytes, replyHeaderBytes } from './wire.js'

const ARRIVE = 0
const OK = 1
const NOT_FOUND = 2
const BUSY = 3
const FAIL = 4
const HEDGE = 5
/** a parked request's wait ran out (`waitingForFlights`: BUSY after `DEFAULT_BUSY_AFTER_PARK_MS`) */
const PARK_TIMEOUT = 6
const REDIRECT = 7
/** the holder's first PENDING frame for a parked request reached the asker */
const PENDING = 8
/** the holder's first keep-alive is due (`FIRST_PENDING_MS` into a park) */
const PENDING_FIRST = 9
const CODE_BITS = 4

const QUEUED = 0
const RUNNING = 1
const ENDED = 2

export class PeerReq implements Timed, FlowOwner {
  replied: Uint8Array
  private nReplied = 0
  hedged = false
  /** it carried a chunk a read waits for when it began (`nextQueued`) */
  urgent = false
  private cancelled = false
  private state = QUEUED
  private lastProgress = 0
  private startedAt = 0
  private chunks = 0
  private bytes = 0
  private failed = false
  // the holder's side
  private serving = false
  /** it holds one of the holder's uploads as a request a read waits for */
  private servingUrgent = false
  private si = 0
  private flow: Flow | undefined
  private parkedAt = -1
  /** parked for a turn (`NodeBlob.turns`), not for the chunk to land (`NodeBlob.waiters`) */
  private turnWait = false
  private waitSince = 0
  private parkToken = 0
  /** the chunk whose receivers at the holder name the asker, until it is sent (-1: none) */
  private receiving = -1
  /** per want: the peer a REDIRECT named */
  private hints: SimNode[] | undefined
  /** the request says it takes redirects (each of its chunks was sent on fewer than MAX_REDIRECTS times) */
  private takesRedirects = true
  /** the holder said PENDING: no hedge until its next reply */
  private heldBack = false
  /** the hedge and park timers' stand-in, cleared when the request ends */
  private timers: Slot | undefined

  /** `redirected`: it follows a REDIRECT (the holder waits for its chunks up to `REDIRECTED_WAIT_MS`) */
  constructor (readonly fetch: SwarmFetch, readonly lane: Lane, readonly wants: Want[], readonly redirected = false) {
    this.replied = new Uint8Array(wants.length)
  }

  /** still waiting for one of its holder's streams */
  get queued (): boolean { return this.state === QUEUED }

  /** `part` rides with this request, queued still (`joinsQueued`) */
  join (part: readonly Want[]): void {
    if (this.state !== QUEUED) throw new Error('a request joined after it was sent')
    this.wants.push(...part)
    this.replied = new Uint8Array(this.wants.length)
  }

  /** whether it asked for chunk `ci` and has no reply for it yet */
  awaits (ci: number): boolean {
    for (let j = 0; j < this.wants.length; j++) if (this.wants[j]!.ci === ci && this.replied[j] === 0) return true
    return false
  }

  private get asker (): SimNode { return this.fetch.batch.node }
  private get server (): SimNode { return this.lane.holder }

  /**
   * a chunk of it is on its way to the asker now at a live transfer's pace (the daemon's `progressAtPace`: a step of
   * bytes within a window): progress for the fetcher's idle deadline
   */
  get moving (): boolean {
    return this.serving && this.flow !== undefined && this.flow.active && this.flow.rate * PROGRESS_WINDOW_MS >= PROGRESS_STEP_BYTES
  }

  /** Sends the request (its lane has a free stream). */
  run (): void {
    const asker = this.asker
    const q = asker.world.queue
    const cfg = asker.world.cfg
    this.state = RUNNING
    this.startedAt = q.now
    if (this.wants.every(w => w.done)) { this.cancelled = true; this.end(); return }
    asker.requests.sent++
    asker.world.cpuRequest()
    this.takesRedirects = this.wants.every(w => !w.noRedirect && w.redirects < MAX_REDIRECTS)
    asker.msgs.chunk.sent++
    asker.ctrl.sent += chunkRequestBytes(this.wants.length)
    asker.asking.add(this)
    this.lastProgress = q.now
    this.timers = new Slot(this)
    q.after(cfg.hedgeAfterMs, this.timers, HEDGE)
    q.at(asker.connectAt(this.server) + cfg.halfRttMs, this, ARRIVE)
  }

  fire (arg: number): void {
    const code = arg & ((1 << CODE_BITS) - 1)
    const i = arg >>> CODE_BITS
    if (this.state !== RUNNING) {
      // a chunk sent before the asker stopped the request (another copy came first): uploaded for nothing
      if (code === OK && this.state === ENDED) this.asker.duplicateBytes += this.wants[i]!.size
      return
    }
    if (code === ARRIVE) { this.arrive(); return }
    if (code === PENDING_FIRST) {
      if (this.serving && this.parkedAt >= 0 && i === this.parkToken) {
        const s = this.server
        s.pendingFrames++
        s.msgs.chunk.sent++
        s.ctrl.sent += replyHeaderBytes(0)
        s.world.queue.after(s.world.cfg.halfRttMs, this, PENDING)
      }
      return
    }
    if (code === PARK_TIMEOUT) {
      if (this.serving && this.parkedAt >= 0 && i === this.parkToken) {
        const s = this.server
        s.served.busyWhileFetching++
        s.msgs.chunk.sent++
        s.ctrl.sent += replyHeaderBytes(0)
        this.endServe()
        s.world.queue.after(s.world.cfg.halfRttMs, this, BUSY)
      }
      return
    }
    if (!this.fetch.batch.current()) return
    if (code === PENDING) { this.heldBack = true; return }
    if (code === HEDGE) {
      if (this.hedged) return
      if (this.heldBack) { this.asker.world.queue.after(this.asker.world.cfg.hedgeAfterMs, this.timers!, HEDGE); return }
      const due = this.lastProgress + this.asker.world.cfg.hedgeAfterMs
      const q = this.asker.world.queue
      if (q.now < due) q.at(due, this.timers!, HEDGE)
      else this.fetch.hedge(this)
      return
    }
    this.reply(code, i)
  }

  // ---- the holder's side ----

  private arrive (): void {
    const s = this.server
    const asker = this.asker
    const w = asker.world
    if (!s.alive) { w.queue.after(w.cfg.halfRttMs, this, FAIL); return }
    asker.conns.add(s)
    s.conns.add(asker)
    s.msgs.chunk.received++
    s.ctrl.received += chunkRequestBytes(this.wants.length)
    // past its slots, a holder still takes a request a read waits for into those kept for reads (`ChunkServer.admit`)
    if (s.uploadsActive >= w.cfg.maxUploads &&
      !(this.urgent && takesUrgentSlot(s.uploadsActive, s.urgentUploadsActive, w.cfg.maxUploads, w.cfg.urgentUploads))) {
      s.served.refused++
      s.msgs.chunk.sent++
      s.ctrl.sent += replyHeaderBytes(0) * this.wants.length
      w.queue.after(w.cfg.halfRttMs, this, BUSY)
      return
    }
    this.serving = true
    if (s.uploadsActive >= w.cfg.maxUploads) s.served.urgentUploads++
    s.uploadsActive++
    this.servingUrgent = this.urgent
    if (this.servingUrgent) s.urgentUploadsActive++
    s.serving.add(this)
    this.serveNext()
  }

  /** The next chunk in order: sent if present, waited for if the holder is fetching it, else NOT_FOUND. */
  private serveNext (): void {
    const s = this.server
    const w = s.world
    const nb = s.blobs[this.fetch.batch.nb.spec.index]!
    while (this.si < this.wants.length) {
      const ci = this.wants[this.si]!.ci
      if (this.receiving !== ci && nb.has(ci)) {
        const key = nb.spec.index * 2 ** 32 + ci
        const to = this.takesRedirects ? s.receivers.route(key, this.asker.peerId, s.uploadsActive, nb.crowd(ci)) : undefined
        if (to === TAKE_TURN) {
          const list = nb.turns.get(ci)
          if (list === undefined) nb.turns.set(ci, [this])
          else list.push(this)
          this.park(ci, true)
          return
        }
        if (to !== undefined) {
          const hint = w.byPeerId.get(to)!
          ;(this.hints ??= [])[this.si] = hint
          s.served.redirects++
          s.msgs.chunk.sent++
          s.ctrl.sent += redirectReplyBytes(hint.peerId, hint.info.addrs)
          w.queue.after(w.cfg.halfRttMs, this, REDIRECT | (this.si << CODE_BITS))
          this.si++
          continue
        }
        s.receivers.serving(key, this.asker.peerId)
        this.receiving = ci
      }
      if (nb.has(ci)) {
        const size = chunkBytes(nb.spec, ci)
        if (this.flow === undefined) this.flow = w.links.open(s.idx, this.asker.idx, size, this)
        else w.links.resume(this.flow, size)
        return
      }
      if (nb.inFlight.has(ci)) {
        // our own fetch of it asks the asker: each would wait on the other (`waitingForFlights`): BUSY at once
        if (s.isAsking(this.asker, nb.spec.index, ci)) {
          s.served.busyWhileFetching++
          s.msgs.chunk.sent++
          s.ctrl.sent += replyHeaderBytes(0)
          this.endServe()
          w.queue.after(w.cfg.halfRttMs, this, BUSY)
          return
        }
        const list = nb.waiters.get(ci)
        if (list === undefined) nb.waiters.set(ci, [this])
        else list.push(this)
        this.park(ci, false)
        return
      }
      s.msgs.chunk.sent++
      s.ctrl.sent += replyHeaderBytes(0)
      w.queue.after(w.cfg.halfRttMs, this, NOT_FOUND | (this.si << CODE_BITS))
      this.si++
    }
    this.endServe()
  }

  /** Waits at the holder for chunk `ci` to land (`turn`: for the holder's upload of it to end). */
  private park (ci: number, turn: boolean): void {
    const w = this.server.world
    this.parkedAt = ci
    this.turnWait = turn
    this.waitSince = w.queue.now
    const parkMs = this.redirected ? REDIRECTED_WAIT_MS : w.cfg.parkTimeoutMs
    if (parkMs > 0) w.queue.after(parkMs, this.timers!, PARK_TIMEOUT | (++this.parkToken << CODE_BITS))
    // the daemon's first keep-alive, if the chunk has not landed by then (counted with the others at landing)
    w.queue.after(FIRST_PENDING_MS, this.timers!, PENDING_FIRST | (this.parkToken << CODE_BITS))
    if (this.flow !== undefined) w.links.pause(this.flow)
  }

  /** The chunk this request waited for is now in the holder's cache (or its turn came). */
  landed (): void {
    if (!this.serving) return
    const s = this.server
    // the keep-alives after the first (which went out on its own event)
    const waited = s.world.queue.now - this.waitSince
    const frames = waited < FIRST_PENDING_MS ? 0 : Math.floor((waited - FIRST_PENDING_MS) / PENDING_INTERVAL_MS)
    s.pendingFrames += frames
    s.msgs.chunk.sent += frames
    s.ctrl.sent += frames * replyHeaderBytes(0)
    this.parkedAt = -1
    this.serveNext()
  }

  pieceDone (): void {
    const s = this.server
    const sentCi = this.receiving
    if (sentCi >= 0) s.receivers.sent(this.fetch.batch.nb.spec.index * 2 ** 32 + sentCi, this.asker.peerId)
    this.receiving = -1
    const w = s.world
    const size = this.wants[this.si]!.size
    s.uploadBytes += size
    s.uploadedSinceBeat += size
    s.ctrl.sent += replyHeaderBytes(size)
    w.queue.after(w.cfg.halfRttMs, this, OK | (this.si << CODE_BITS))
    this.si++
    this.serveNext()
    if (sentCi >= 0) s.blobs[this.fetch.batch.nb.spec.index]!.turnEnded(sentCi)
  }

  private endServe (): void {
    if (!this.serving) return
    this.serving = false
    const s = this.server
    // stopped before its chunk went out (a wait that ran out, a stream that ended): nobody's hint
    const unsent = this.receiving
    if (unsent >= 0) s.receivers.notSent(this.fetch.batch.nb.spec.index * 2 ** 32 + unsent, this.asker.peerId)
    this.receiving = -1
    s.uploadsActive--
    if (this.servingUrgent) s.urgentUploadsActive--
    s.serving.delete(this)
    if (this.flow !== undefined) s.world.links.pause(this.flow)
    const nb = s.blobs[this.fetch.batch.nb.spec.index]
    if (this.parkedAt >= 0) {
      const list = (this.turnWait ? nb?.turns : nb?.waiters)?.get(this.parkedAt)
      const at = list?.indexOf(this) ?? -1
      if (at >= 0) list!.splice(at, 1)
      this.parkedAt = -1
    }
    if (unsent >= 0) nb?.turnEnded(unsent)
  }

  /** The holder died: its connection resets under the asker. */
  serverDied (): void {
    if (!this.serving) return
    this.serving = false
    if (this.flow !== undefined) this.server.world.links.pause(this.flow)
    this.server.world.queue.after(this.server.world.cfg.halfRttMs, this, FAIL)
  }

  /** The asker died: the holder stops. */
  askerDied (): void {
    this.ended()
    this.endServe()
  }

  /** The asker's fetch gave up (idle): stopped, nothing said about the holder. */
  abort (): void {
    if (this.state !== RUNNING) return
    this.ended()
    this.asker.asking.delete(this)
    this.endServe()
  }

  private ended (): void {
    this.state = ENDED
    this.timers?.clear()
  }

  // ---- the asker's side ----

  private reply (code: number, i: number): void {
    const asker = this.asker
    this.heldBack = false
    if (code === FAIL) {
      this.failed = true
      asker.requests.failed++
      this.end()
      return
    }
    if (code === BUSY) {
      asker.msgs.chunk.received++
      asker.ctrl.received += replyHeaderBytes(0) * this.wants.length
      for (let j = 0; j < this.wants.length; j++) {
        if (this.replied[j] === 1) continue
        this.markReplied(j)
        asker.requests.busy++
        const w = this.wants[j]!
        const cfg = asker.world.cfg
        if (++w.busy <= cfg.busyRetries && !w.candidates.some(h => !w.tried.has(h))) {
          // nobody else has it: this holder again, a little later
          w.tried.delete(this.server)
          this.fetch.requeueLater(w, cfg.busyBackoffMs * Math.min(4, w.busy))
        } else {
          this.fetch.requeue(w)
        }
      }
    } else {
      const w = this.wants[i]!
      this.markReplied(i)
      this.lastProgress = asker.world.queue.now
      if (code === OK) {
        asker.ctrl.received += replyHeaderBytes(w.size)
        this.chunks++
        this.bytes += w.size
        this.fetch.deliver(w)
      } else if (code === REDIRECT) {
        const hint = this.hints![i]!
        asker.msgs.chunk.received++
        asker.ctrl.received += redirectReplyBytes(hint.peerId, hint.info.addrs)
        asker.requests.redirects++
        this.fetch.redirect(w, hint, this.server)
        this.fetch.requeue(w)
      } else if (this.redirected && this.fetch.backToOrigin(w)) {
        asker.msgs.chunk.received++
        asker.ctrl.received += replyHeaderBytes(0)
        asker.requests.notFound++
        this.fetch.requeue(w)
      } else {
        asker.msgs.chunk.received++
        asker.ctrl.received += replyHeaderBytes(0)
        asker.requests.notFound++
        this.fetch.requeue(w)
      }
    }
    if (this.state !== RUNNING) return
    let open = false
    for (let j = 0; j < this.wants.length; j++) if (this.replied[j] === 0 && !this.wants[j]!.done) { open = true; break }
    if (!open) {
      this.cancelled = this.nReplied < this.wants.length
      this.end()
    }
  }

  private markReplied (j: number): void {
    this.replied[j] = 1
    this.nReplied++
    this.wants[j]!.attempts.delete(this)
  }

  /** Everything it asked for came from elsewhere: stopped. */
  cancel (): void {
    if (this.state !== RUNNING) return
    this.cancelled = true
    this.end()
  }

  private end (): void {
    if (this.state === ENDED) return
    this.ended()
    const asker = this.asker
    asker.asking.delete(this)
    this.endServe()
    for (let j = 0; j < this.wants.length; j++) {
      if (this.replied[j] === 1) continue
      const w = this.wants[j]!
      w.attempts.delete(this)
      if (this.redirected && !w.done && w.declined !== true) this.fetch.backToOrigin(w)
      this.fetch.requeue(w)
    }
    // a request we stopped ourselves says nothing about the holder
    if (this.chunks > 0 || this.failed || !this.cancelled) {
      asker.outcome(this.server, { chunks: this.chunks, bytes: this.bytes, ms: asker.world.queue.now - this.startedAt, failed: this.failed })
    }
    this.fetch.requestEnded(this)
  }
}

/** One ranged GET of a batch's chunks from the registry. */
export class RegistryReq implements Timed, FlowOwner {
  private i = 0
  private flow: Flow | undefined
  private aborted = false

  constructor (private readonly batch: Batch, private readonly cis: number[]) {}

  send (): void {
    const node = this.batch.node
    node.registryReqs.add(this)
    node.world.queue.after(node.world.cfg.halfRttMs, this, -1)
  }

  fire (arg: number): void {
    if (this.aborted) return
    if (arg >= 0) { this.batch.deliver(this.cis[arg]!, true); return }
    const node = this.batch.node
    const w = node.world
    this.flow = w.links.open(w.registry, node.idx, chunkBytes(this.batch.nb.spec, this.cis[0]!), this)
  }

  pieceDone (f: Flow): void {
    const w = this.batch.node.world
    w.registrySent(f.piece)
    w.queue.after(w.cfg.halfRttMs, this, this.i)
    if (++this.i < this.cis.length) {
      w.links.next(f, chunkBytes(this.batch.nb.spec, this.cis[this.i]!))
    } else {
      w.links.pause(f)
      this.batch.node.registryReqs.delete(this)
    }
  }

  /** The node died: the transfer is cut off (what was sent of the current chunk still cost the registry). */
  abort (): void {
    this.aborted = true
    const w = this.batch.node.world
    if (this.flow?.active === true) {
      w.links.pause(this.flow)
      w.registrySent(w.links.sentOf(this.flow))
    }
  }
}
