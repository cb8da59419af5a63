/**
 * `BlobLocator` in the model: a blob's group (asked of the scheduler at most every `refreshMs`, its holders told
 * of our interest, the first time a wait of up to `bitfieldWaitMs` for their bitfields) and, per fetch batch, the
 * daemon's own `planChunk` for every chunk — a neighbour that has it, one fetching it, the registry now, or a wait
 * for the assignee's PENDING — looked at again whenever a neighbour's state of the blob changes.
 */
import type { Timed } from './events.js'
import type { Batch } from './fetch.js'
import type { NodeBlob, SimNode } from './node.js'
import { blobGroup, groupStale, holdersInOrder, NEAR_WINDOW, planChunk, runStarts } from './policy.js'

const NONE = 0
const LOOKING = 1
const BITFIELDS = 2
const READY = 3
const NO_PEERS: readonly string[] = []

/** What waits for a blob's group to be known and fresh: a batch's look-up, or a swarm prefetch's pick. */
export interface GroupWaiter { plan: () => void }

/** The blob's holders as one node knows them, and look-ups waiting for them. */
export class GroupState implements Timed {
  private phase = NONE
  holders: SimNode[] = []
  /** the blob's group as the scheduler named it (undefined: it named none) */
  named: string[] | undefined
  /** the blob's swarm as the scheduler last counted it (0: not told) */
  swarm = 0
  /** when the named group last changed (or was first looked up): a group short of its size fills meanwhile */
  changedAt = 0
  private at = 0
  private waiters: GroupWaiter[] = []
  private firstLookUp = true
  private deadline = 0
  private version = 0
  private inc = 0

  constructor (private readonly node: SimNode, private readonly nb: NodeBlob) {}

  /** this node works on the blob (it looked it up) */
  get working (): boolean { return this.phase !== NONE }

  /** whether a waiter would run at once (the group is known and fresh) */
  get fresh (): boolean {
    const q = this.node.world.queue
    const cfg = this.node.world.cfg
    return this.phase === READY && !groupStale(this.named, cfg.groupSize, q.now - this.at, cfg.refreshMs)
  }

  /**
   * The group as `locate` takes it: the scheduler's (`stable`), else the one the node makes of itself, the holders it
   * follows and its followers
   */
  current (): { group: string[], stable: boolean } {
    if (this.named !== undefined) return { group: this.named, stable: true }
    const ids: string[] = [this.node.peerId]
    for (const h of this.holders) ids.push(h.peerId)
    for (const f of this.nb.followers) ids.push(f.peerId)
    return { group: blobGroup(ids, this.nb.spec.hex, this.node.world.cfg.groupSize), stable: false }
  }

  /** `loc` runs once the group is known and fresh. */
  need (loc: GroupWaiter): void {
    const q = this.node.world.queue
    const cfg = this.node.world.cfg
    if (this.phase === READY && !groupStale(this.named, cfg.groupSize, q.now - this.at, cfg.refreshMs)) { loc.plan(); return }
    this.waiters.push(loc)
    if (this.phase === LOOKING || this.phase === BITFIELDS) return
    this.firstLookUp = this.phase === NONE
    this.phase = LOOKING
    this.inc = this.node.incarnation
    const w = this.node.world
    w.directory.resolve(this.node.dir, this.nb.spec.key, w.cfg.holdersPerLookup, (ids, named, swarm) => { this.resolved(ids, named, swarm) }, w.cfg.groupSize)
  }

  private resolved (ids: string[], named: string[] | undefined, swarm: number): void {
    const node = this.node
    if (node.incarnation !== this.inc || !node.alive) return
    const w = node.world
    if (swarm > 0) this.swarm = swarm
    if (this.firstLookUp || (this.named ?? []).join() !== (named ?? []).join()) this.changedAt = w.queue.now
    this.named = named
    this.holders = []
    // the ranked holders are whom to follow; the group is who fetches from the source, and its members follow each other
    const follow = named !== undefined && named.includes(node.peerId) ? [...new Set([...named, ...ids])] : ids
    for (const id of follow) {
      const h = w.byPeerId.get(id)
      if (h !== undefined && h !== node && this.holders.length < w.cfg.locatorMaxHolders) this.holders.push(h)
    }
    const fresh = this.holders.filter(h => !this.nb.told.has(h))
    // a new connection costs a round trip and its handshakes (connection refused from a dead peer, too); a stream
    // on an open one nothing
    let up = w.queue.now
    for (const h of fresh) up = Math.max(up, node.connectAt(h))
    if (!this.firstLookUp && up > w.queue.now + w.cfg.bitfieldWaitMs) {
      // as `BlobLocator`: a refresh waits for new holders' sessions `bitfieldWaitMs` at most; they open meanwhile
      w.queue.at(up, { fire: () => { if (node.incarnation === this.inc && node.alive) for (const h of fresh) node.interest(this.nb, h) } })
      w.queue.at(w.queue.now + w.cfg.bitfieldWaitMs, { fire: () => { if (node.incarnation === this.inc && node.alive) this.ready() } })
      return
    }
    w.queue.at(up, {
      fire: () => {
        if (node.incarnation !== this.inc || !node.alive) return
        for (const h of fresh) node.interest(this.nb, h)
        if (this.firstLookUp && this.holders.length > 0) {
          this.phase = BITFIELDS
          node.attend(this.nb, 1)
          this.deadline = w.queue.now + w.cfg.bitfieldWaitMs
          w.queue.at(this.deadline, this, ++this.version)
          this.check()
        } else {
          this.ready()
        }
      }
    })
  }

  /** the bitfield wait's deadline */
  fire (version: number): void {
    if (version === this.version && this.node.incarnation === this.inc) this.check()
  }

  /** During the first look-up: ready once every holder's bitfield came, or at the deadline. */
  check (): void {
    if (this.phase !== BITFIELDS) return
    const now = this.node.world.queue.now
    if (now >= this.deadline || this.heardFromHolders()) this.ready()
  }

  /** as `BlobLocator`: every holder it told its interest sent its bitfield (others' count for nothing) */
  private heardFromHolders (): boolean {
    const heard = this.node.table.neighbours(this.nb.spec.hex)
    if (heard.length < this.holders.length) return false
    const ids = new Set(heard.map(n => n.peerId))
    return this.holders.every(h => ids.has(h.peerId))
  }

  private ready (): void {
    if (this.phase === BITFIELDS) this.node.attend(this.nb, -1)
    this.phase = READY
    this.at = this.node.world.queue.now
    const ws = this.waiters
    this.waiters = []
    for (const loc of ws) loc.plan()
  }
}

/** One fetch batch's `locate`: a plan for each of its chunks. */
export class Locate implements Timed {
  private open: number[]
  private readonly since: number
  /** each chunk's run start in the batch (`planChunk`'s `front`, as `BlobLocator`) */
  private readonly fronts: Map<number, number>
  private group: string[] | undefined
  private readonly peers = new Map<number, SimNode[]>()
  /** per chunk, its holders that only said PENDING (absent: none) */
  private fetching: Map<number, SimNode[]> | undefined
  private readonly source: number[] = []
  private timerAt = Infinity
  private version = 0
  private done = false

  constructor (private readonly batch: Batch, cis?: number[], since?: number) {
    this.open = cis ?? batch.cis
    this.fronts = runStarts(batch.cis)
    this.since = since ?? batch.node.world.queue.now
  }

  fire (version: number): void {
    if (this.done || version !== this.version) return
    this.timerAt = Infinity
    this.plan()
  }

  plan (): void {
    const { node, nb } = this.batch
    if (this.done || !this.batch.current()) return
    const w = node.world
    const hex = nb.spec.hex
    const self = node.peerId
    const now = w.queue.now
    const stable = nb.group.named !== undefined
    if (this.group === undefined && stable) this.group = nb.group.named
    if (this.group === undefined) {
      const ids: string[] = [self]
      for (const h of nb.group.holders) ids.push(h.peerId)
      for (const f of nb.followers) ids.push(f.peerId)
      this.group = blobGroup(ids, hex, w.cfg.groupSize)
    }
    const waiting: number[] = []
    const chosen: number[] = []
    const sourcedBefore = this.source.length
    let soonest = Infinity
    for (const ci of this.open) {
      const { have, pending } = node.table.sources(hex, ci)
      const plan = planChunk({
        self,
        group: this.group,
        blobHex: hex,
        ci,
        have: have.includes(self) ? have.filter(p => p !== self) : have,
        pending: pending.length === 0 ? NO_PEERS : pending.map(p => p.peerId).filter(p => p !== self),
        wantedForMs: now - this.since,
        graceMs: w.cfg.graceMs,
        stable,
        activeNear: () => node.table.activeNear(hex, ci, NEAR_WINDOW),
        behind: (peer, c) => node.table.behind(hex, peer, c, NEAR_WINDOW),
        front: this.fronts.get(ci),
        askAssignee: !nb.asked.has(ci)
      })
      if (plan.action === 'peer') {
        this.peers.set(ci, holdersInOrder(plan.peers, hex, ci).map(id => w.byPeerId.get(id)!))
        // as `BlobLocator`: the holders still fetching it, whose requests carry it alone (`splitRequests`); so does
        // an assignee asked for it
        if (plan.ask === true) {
          (this.fetching ??= new Map()).set(ci, plan.peers.map(id => w.byPeerId.get(id)!))
          nb.asked.add(ci)
          node.assigneeAsks++
        } else if (pending.length > 0) {
          const only = pending.filter(p => p.peerId !== self && !have.includes(p.peerId)).map(p => w.byPeerId.get(p.peerId)!)
          if (only.length > 0) (this.fetching ??= new Map()).set(ci, only)
        }
        chosen.push(ci)
      } else if (plan.action === 'wait') {
        waiting.push(ci)
        soonest = Math.min(soonest, plan.retryInMs)
      } else {
        this.source.push(ci)
        chosen.push(ci)
        node.sourced[plan.reason]++
      }
    }
    // as `BlobLocator` (`planned`, then `flushBlob` after a round that chose the registry): PENDING for the chunks
    // this round placed, sent at once when some go to the registry, though the batch goes on only once all are placed
    if (chosen.length > 0) node.pending(nb, chosen)
    if (this.source.length > sourcedBefore) node.flushBlob(nb)
    this.open = waiting
    if (waiting.length === 0) {
      this.done = true
      nb.unwait(this)
      this.batch.located(this.peers, this.source, this.fetching)
      return
    }
    nb.wait(this)
    const t = now + Math.max(1, soonest)
    if (t < this.timerAt) {
      this.timerAt = t
      w.queue.at(t, this, ++this.version)
    }
  }
}

