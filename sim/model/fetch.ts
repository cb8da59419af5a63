/**
 * A node's fetch of one batch, as the daemon's fetcher runs it with the blob-level neighbour source first and the
 * registry second: the locator plans every chunk; chunks planned for the source go to the registry at once (the
 * neighbour source declines them); the others are spread over up to `holdersPerFetch` holders (`SwarmFetch`:
 * least assigned bytes, at most `streamsPerHolder` requests each, a request with no reply for `hedgeAfterMs` hedged
 * to the next holder, a BUSY or NOT_FOUND chunk asked of the next holder); what no neighbour delivered goes to the
 * registry when the neighbour source is done.
 */
import type { Timed } from './events.js'
import { Locate } from './locate.js'
import type { NodeBlob, SimNode } from './node.js'
import { PeerReq, RegistryReq } from './request.js'
import { chunkBytes } from './world.js'
import { chooseHolder, DEFAULT_REPLAN_ROUNDS, joinsQueued, MAX_REDIRECTS, nextQueued, REDIRECTED_EXTRA_STREAMS, replanDelayMs, splitRequests, spreading, type QueuedShape } from './policy.js'

export class Batch {
  readonly startedAt: number
  private readonly inc: number
  private left: number
  /** its chunks that landed (one may land twice: a hedge's late copy, a replan's registry copy) */
  private readonly landed = new Set<number>()

  /**
   * `done`: told when every chunk of it is present (the node's reader window by default); a batch's chunks are the
   * node's `fetching` until they land, so a read or a prefetch wanting one of them waits for it instead
   */
  /** the reader's own batch (no prefetch): a read waits for every chunk of it from its start */
  readonly reads: boolean

  constructor (readonly node: SimNode, readonly nb: NodeBlob, readonly cis: number[], private done?: (b: Batch) => void) {
    this.startedAt = node.world.queue.now
    this.reads = done === undefined
    this.inc = node.incarnation
    this.left = cis.length
    for (const ci of cis) nb.fetching[ci] = 1
  }

  /** A read joined it while it waited for a prefetch slot: it runs as a read now, in no prefetch slot. */
  promoted (): void { this.done = () => {} }

  /** whether the node that started it is still the one running */
  current (): boolean { return this.node.alive && this.node.incarnation === this.inc }

  /** when it began running (a prefetch's batch may wait for a slot first): the fetcher's attempt at the neighbours */
  attemptAt = 0

  start (): void {
    this.attemptAt = this.node.world.queue.now
    this.nb.group.need(new Locate(this))
  }

  /** The locator's answer (PENDING went out as it placed each chunk): holders per chunk, and the chunks for the registry now. */
  located (peers: Map<number, SimNode[]>, source: number[], fetching?: Map<number, SimNode[]>): void {
    if (source.length > 0) this.toRegistry(source)
    if (peers.size > 0) new SwarmFetch(this, peers, fetching).start()
  }

  toRegistry (cis: number[]): void { new RegistryReq(this, cis).send() }

  /** per chunk, its holders at the last look of an idle deadline (`spreading`; the daemon's per fetch) */
  readonly seen = new Map<number, number>()
  /** the same, at the last look of the read hand-off */
  readonly seenAtHandOff = new Map<number, number>()

  /** rounds of re-location per chunk (`NeighbourSource`'s rounds for chunks whose holders were all BUSY) */
  private readonly rounds = new Map<number, number>()

  /**
   * As `NeighbourSource.fetch`: chunks whose every holder answered BUSY are located again after the daemon's pause
   * (`replanDelayMs`; new holders appear as the swarm fills), up to its rounds; then the registry.
   */
  replan (cis: number[]): void {
    const now: number[] = []
    let round = 0
    for (const ci of cis) {
      const r = (this.rounds.get(ci) ?? 0) + 1
      if (r > DEFAULT_REPLAN_ROUNDS) { now.push(ci); continue }
      this.rounds.set(ci, r)
      round = Math.max(round, r)
    }
    if (now.length > 0) { this.node.sourced.leftover += now.length; this.toRegistry(now) }
    const again = cis.filter(ci => !now.includes(ci))
    if (again.length === 0) return
    this.node.replans += again.length
    this.node.world.queue.after(replanDelayMs(round), {
      fire: () => { if (this.current()) this.nb.group.need(new Locate(this, again, this.startedAt)) }
    })
  }

  /** A chunk arrived (from the registry, or a neighbour's first copy): present once the machine's CPU is through it. */
  deliver (ci: number, fromRegistry: boolean): void {
    if (!this.current()) return
    const w = this.node.world
    const at = w.cpuDoneAt(chunkBytes(this.nb.spec, ci), fromRegistry)
    if (at <= w.queue.now) { this.land(ci, fromRegistry); return }
    w.queue.at(at, { fire: () => { if (this.current()) this.land(ci, fromRegistry) } })
  }

  private land (ci: number, fromRegistry: boolean): void {
    const first = this.node.accept(this.nb, ci, fromRegistry, chunkBytes(this.nb.spec, ci))
    if (!first && this.landed.has(ci)) return
    this.landed.add(ci)
    if (--this.left > 0) return
    if (this.done !== undefined) this.done(this)
    else this.node.batchDone(this)
  }
}

/** One chunk of one neighbour fetch. */
export interface Want {
  /** its place in the fetch's wants */
  i: number
  ci: number
  size: number
  candidates: SimNode[]
  tried: Set<SimNode>
  attempts: Set<PeerReq>
  done: boolean
  /** BUSY answers so far */
  busy: number
  /** REDIRECT answers so far */
  redirects: number
  /** the holder a REDIRECT named: asked next */
  next: SimNode | undefined
  /** its latest request follows a REDIRECT */
  following: boolean
  /** the holder whose REDIRECT it follows: asked again, to send it, if the one it named does not */
  origin: SimNode | undefined
  /** its requests no longer take redirects */
  noRedirect: boolean
  /** the nodes its REDIRECTs came from or named */
  chain: Set<SimNode> | undefined
  /** its holders that were still fetching it when it was located (undefined: none) */
  fetchingAt: SimNode[] | undefined
  /** handed to the registry while the fetch's other chunks go on (nobody left to ask) */
  declined?: boolean
}

/** The requests of one fetch to one holder. */
export interface Lane {
  holder: SimNode
  queued: PeerReq[]
  running: Set<PeerReq>
  assigned: number
  /** running requests that carried a chunk a read waits for when they began */
  runningUrgent: number
}

const FLUSH = 0
const RETRY = 2
const CODE_BITS = 2

export class SwarmFetch implements Timed {
  readonly wants: Want[] = []
  private readonly lanes = new Map<SimNode, Lane>()
  private pendingAssign: Want[] = []
  private flushScheduled = false
  private outstanding = 0
  private ended = false
  /** given up for idleness: its requests stopped, the rest handed to the registry */
  private aborted = false
  /** the fetcher's idle deadline counts from the last chunk this source delivered */
  private lastProgress: number

  constructor (readonly batch: Batch, holders: Map<number, SimNode[]>, fetching?: Map<number, SimNode[]>) {
    this.lastProgress = batch.startedAt
    const spec = batch.nb.spec
    for (const ci of batch.cis) {
      const candidates = holders.get(ci)
      if (candidates !== undefined && candidates.length > 0) {
        this.wants.push({ i: this.wants.length, ci, size: chunkBytes(spec, ci), candidates, tried: new Set(), attempts: new Set(), done: false, busy: 0, redirects: 0, next: undefined, following: false, origin: undefined, noRedirect: false, chain: undefined, fetchingAt: fetching?.get(ci) })
      }
    }
  }

  get node (): SimNode { return this.batch.node }

  start (): void {
    const handOffMs = this.node.world.cfg.readHandOffMs
    if (Number.isFinite(handOffMs)) this.handOffDue = this.batch.attemptAt + handOffMs
    this.node.watch(this)
    this.pendingAssign = [...this.wants]
    this.flush()
    this.checkEnd()
  }

  /**
   * when `handOffReads` looks next (the node's watchdog calls it, as it calls `idle`: an event queued per fetch held
   * every fetch in memory until it fired — 1,000 nodes × 3 GB peaked at 4.5 GB instead of 0.75)
   */
  handOffDue = Infinity

  /**
   * As the fetcher's (`Flights.watchReads`): a chunk a read has waited for `readHandOffMs` on the neighbours (since
   * the batch began running, or the read came) goes to the registry too; still asked of nobody here, taken from
   * whichever sends it first — a quarter of that later if it is spreading through the swarm (`spreading`: more
   * neighbours have it than at the last look). Looked at every `readHandOffMs` while the fetch runs.
   */
  handOffReads (): void {
    this.handOffDue = Infinity
    if (this.ended || this.aborted || !this.batch.current()) return
    const now = this.node.world.queue.now
    const { readHandOffMs } = this.node.world.cfg
    const since = this.batch.nb.readSince
    const own = this.batch.reads ? this.batch.startedAt : undefined
    const due: number[] = []
    let next = now + readHandOffMs
    const hex = this.batch.nb.spec.hex
    for (const w of this.wants) {
      const read = since?.get(w.ci) ?? own
      if (w.done || w.declined === true || read === undefined) continue
      const at = Math.max(read, this.batch.attemptAt) + readHandOffMs
      if (at > now) next = Math.min(next, at)
      else if (now < at + readHandOffMs / 4 && spreading([w.ci], ci => this.node.table.holders(hex, ci), this.batch.seenAtHandOff)) next = Math.min(next, at + readHandOffMs / 4)
      else { w.declined = true; due.push(w.ci) }
    }
    this.handOffDue = next
    if (due.length === 0) return
    this.node.readHandOffs += due.length
    this.batch.toRegistry(due)
    // nothing left to wait for here: its requests stop (the fetcher's attempt ends)
    if (this.wants.every(w => w.done || w.declined === true)) {
      for (const lane of this.lanes.values()) {
        this.outstanding -= lane.queued.length
        lane.queued = []
        for (const req of [...lane.running]) req.cancel()
      }
    }
    this.checkEnd()
  }

  /** the deferred flush of requeued wants, or the idle deadline */
  fire (arg: number): void {
    const code = arg & ((1 << CODE_BITS) - 1)
    if (code === RETRY) {
      if (!this.batch.current() || this.aborted) return
      this.outstanding--
      this.requeue(this.wants[arg >>> CODE_BITS]!)
      this.checkEnd()
      return
    }
    this.flushScheduled = false
    if (!this.batch.current() || this.aborted) return
    this.flush()
    this.checkEnd()
  }

  /** when the fetcher's idle deadline falls, as things stand */
  get idleDue (): number { return this.lastProgress + this.node.world.cfg.fetchIdleMs }

  get over (): boolean { return this.ended }

  /**
   * The fetcher's idle deadline (the node's watchdog calls this once it passed): no chunk from this source for
   * `fetchIdleMs` (neighbours waiting on each other's PENDING, say), and none on its way, and the attempt is given
   * up; its chunks go to the registry.
   */
  idle (): void {
    if (this.ended || !this.batch.current()) return
    // as the daemon's neighbour source reports the bytes of a chunk still arriving: a transfer under way is progress
    for (const lane of this.lanes.values()) {
      for (const req of lane.running) {
        if (!req.moving) continue
        this.lastProgress = this.node.world.queue.now
        this.node.watch(this)
        return
      }
    }
    // as the daemon's fetcher, with its neighbour source's counts (`holders`): chunks spreading through the swarm are coming
    const hex = this.batch.nb.spec.hex
    const waiting = this.wants.filter(w => !w.done && w.declined !== true).map(w => w.ci)
    if (spreading(waiting, ci => this.node.table.holders(hex, ci), this.batch.seen)) {
      this.node.idleExtensions++
      this.lastProgress = this.node.world.queue.now
      this.node.watch(this)
      return
    }
    this.aborted = true
    this.node.idleTimeouts++
    for (const lane of this.lanes.values()) {
      lane.queued = []
      for (const req of [...lane.running]) req.abort()
    }
    this.outstanding = 0
    this.flushScheduled = false
    this.checkEnd()
  }

  requeue (w: Want): void {
    if (w.done || w.declined === true || w.attempts.size > 0 || !this.batch.current() || this.aborted) return
    this.pendingAssign.push(w)
    if (this.flushScheduled) return
    this.flushScheduled = true
    this.node.world.queue.after(0, this, FLUSH)
  }

  /** A BUSY holder that nobody else can stand in for: asked again after `ms` (the fetch stays open meanwhile). */
  requeueLater (w: Want, ms: number): void {
    this.outstanding++
    this.node.world.queue.after(ms, this, RETRY | (w.i << CODE_BITS))
  }

  private flush (): void {
    const byLane = new Map<Lane, Want[]>()
    const followed = new Map<Lane, Want[]>()
    const none: number[] = []
    for (const w of this.pendingAssign) {
      if (w.done || w.declined === true || w.attempts.size > 0) continue
      const lane = this.choose(w)
      if (lane === undefined) {
        // as the daemon's: nobody left to ask, and no BUSY to locate it again for: the registry now
        if (w.busy === 0 && w.redirects === 0) { w.declined = true; none.push(w.ci) }
        continue
      }
      const to = w.following ? followed : byLane
      const list = to.get(lane) ?? []
      list.push(w)
      to.set(lane, list)
    }
    this.pendingAssign = []
    if (none.length > 0) { this.node.sourced.leftover += none.length; this.batch.toRegistry(none) }
    for (const [lane, wants] of followed) this.enqueue(lane, wants, true)
    for (const [lane, wants] of byLane) this.enqueue(lane, wants)
  }

  /**
   * As the daemon's: holder `from` sent `w` on to `to`, asked next (even if asked before); unless it is us, it sent
   * `w` on or was named for it before, or `w` was sent on too often: then `from` is asked again without redirects.
   */
  redirect (w: Want, to: SimNode, from: SimNode): void {
    const chain = w.chain ??= new Set()
    chain.add(from)
    if (++w.redirects > MAX_REDIRECTS || to === this.node || chain.has(to)) {
      w.next = from
      w.noRedirect = true
      w.origin = undefined
      return
    }
    chain.add(to)
    w.next = to
    w.origin = from
  }

  /** As the daemon's: a followed redirect did not deliver `w`: the holder that sent it there is asked again. */
  backToOrigin (w: Want): boolean {
    const origin = w.origin
    w.origin = undefined
    if (origin === undefined) return false
    w.next = origin
    w.noRedirect = true
    return true
  }

  private choose (w: Want): Lane | undefined {
    const next = w.next
    w.next = undefined
    w.following = next !== undefined
    const open = next !== undefined ? [next] : w.candidates.filter(h => !w.tried.has(h))
    const cfg = this.node.world.cfg
    const penalties = this.node.penalties
    const h = chooseHolder(open, w.size, {
      inUse: this.lanes.size,
      maxHolders: cfg.holdersPerFetch,
      assigned: c => this.lanes.get(c)?.assigned,
      penalty: c => penalties.get(c) ?? 0
    })
    if (h === undefined) return undefined
    let lane = this.lanes.get(h)
    if (lane === undefined) {
      lane = { holder: h, queued: [], running: new Set(), assigned: 0, runningUrgent: 0 }
      this.lanes.set(h, lane)
    }
    lane.assigned += w.size
    return lane
  }

  private enqueue (lane: Lane, wants: Want[], redirected = false): void {
    const cfg = this.node.world.cfg
    const holder = lane.holder
    const alone = (w: Want): boolean => w.fetchingAt?.includes(holder) === true
    const shape = (list: readonly Want[], r: boolean): QueuedShape =>
      ({ chunks: list.length, bytes: list.reduce((n, w) => n + w.size, 0), redirected: r, alone: list.some(alone) })
    for (const part of splitRequests(wants, w => w.size, cfg.maxRequestBytes, cfg.maxChunksPerRequest, alone)) {
      // as the daemon's: a queued request of the same kind takes them along
      const queued = redirected ? lane.queued[0] : lane.queued[lane.queued.length - 1]
      if (queued !== undefined && queued.queued && joinsQueued(shape(queued.wants, queued.redirected), shape(part, redirected), cfg.maxRequestBytes, cfg.maxChunksPerRequest)) {
        queued.join(part)
        for (const w of part) { w.attempts.add(queued); w.tried.add(lane.holder) }
        continue
      }
      const req = new PeerReq(this, lane, part, redirected)
      for (const w of part) { w.attempts.add(req); w.tried.add(lane.holder) }
      if (redirected) lane.queued.unshift(req)
      else lane.queued.push(req)
      this.outstanding++
    }
    this.pump(lane)
  }

  /**
   * As the daemon's (`nextQueued`): a request that follows a REDIRECT goes first, on a stream of its own if need be;
   * then one with a chunk a read waits for (a read that joined this prefetch batch), beside the prefetch's requests.
   */
  private pump (lane: Lane): void {
    const streams = this.node.world.cfg.streamsPerHolder
    const reading = this.batch.nb.reading
    const urgent = (req: PeerReq): boolean => reading !== undefined && req.wants.some(w => !w.done && reading[w.ci] === 1)
    for (;;) {
      const at = nextQueued(lane.queued, { running: lane.running.size, runningUrgent: lane.runningUrgent }, streams, REDIRECTED_EXTRA_STREAMS,
        i => urgent(lane.queued[i]!))
      if (at < 0) return
      const req = at === 0 ? lane.queued.shift()! : lane.queued.splice(at, 1)[0]!
      req.urgent = urgent(req)
      if (req.urgent) lane.runningUrgent++
      lane.running.add(req)
      req.run()
    }
  }

  /** A request ended (delivered, failed, cancelled): its lane takes the next. */
  requestEnded (req: PeerReq): void {
    if (req.lane.running.delete(req) && req.urgent) req.lane.runningUrgent--
    this.outstanding--
    if (!this.batch.current() || this.aborted) return
    this.pump(req.lane)
    this.checkEnd()
  }

  /** A verified chunk from a neighbour: the first copy counts; requests with nothing left to give are stopped. */
  deliver (w: Want): void {
    if (w.done) { this.node.duplicateBytes += w.size; return }
    w.done = true
    this.lastProgress = this.node.world.queue.now
    this.batch.deliver(w.ci, false)
    for (const other of w.attempts) if (other.wants.every(x => x.done)) other.cancel()
    w.attempts.clear()
  }

  /** No reply for `hedgeAfterMs`: the request's chunks nobody else is asked for go to their next holders too. */
  hedge (req: PeerReq): void {
    req.hedged = true
    const byLane = new Map<Lane, Want[]>()
    req.wants.forEach((w, i) => {
      if (req.replied[i] === 1 || w.done || w.declined === true || w.attempts.size > 1) return
      const lane = this.choose(w)
      if (lane === undefined) return
      const list = byLane.get(lane) ?? []
      list.push(w)
      byLane.set(lane, list)
    })
    if (byLane.size === 0) return
    this.node.requests.hedges++
    for (const [lane, wants] of byLane) this.enqueue(lane, wants)
  }

  /** The neighbour source is done once nothing is queued, running or about to be: the rest goes to the registry. */
  private checkEnd (): void {
    if (this.ended || this.outstanding > 0 || this.flushScheduled) return
    this.ended = true
    this.node.unwatch(this)
    let left = this.wants.filter(w => !w.done && w.declined !== true)
    if (!this.aborted) {
      const busy = left.filter(w => w.busy > 0 || w.redirects > 0)
      if (busy.length > 0) this.batch.replan(busy.map(w => w.ci))
      left = left.filter(w => w.busy === 0 && w.redirects === 0)
    }
    this.node.sourced.leftover += left.length
    if (left.length > 0) this.batch.toRegistry(left.map(w => w.ci))
  }
}
