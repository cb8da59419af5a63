/**
 * One node's state of one blob (what it has, fetches, tells its followers), and have messages on their way between
 * nodes.
 */
import type { Timed } from './events.js'
import { GroupState, type Locate } from './locate.js'
import type { SimNode } from './node.js'
import { HaveOutbox, newBits, type HaveMessage } from './policy.js'
import type { PeerReq } from './request.js'
import type { Arrival } from './have-inbox.js'
import type { BlobSpec } from './world.js'

/** One blob as one node has it. */
export class NodeBlob {
  readonly present: Uint8Array
  /** chunks accepted, per index: every one must end at exactly 1 */
  readonly received: Uint8Array
  /** chunks this node is fetching now (its PENDING) */
  readonly inFlight = new Set<number>()
  /** per chunk, 1 while one of this node's batches holds it (from the batch's start until it is present) */
  readonly fetching: Uint8Array
  /**
   * per chunk, 1 once a read beside a prefetch waits for it (its requests go first, `nextQueued`); made with the
   * first such read
   */
  reading: Uint8Array | undefined
  /** per chunk a read waits for while it is fetched, since when (the fetcher's `Flight.readSince`; gone once present) */
  readSince: Map<number, number> | undefined
  /** per chunk, what waits for it to be present (a read or a prefetch slice joining a batch's flight; `Join`) */
  readonly joins = new Map<number, Join[]>()
  /** what the next flush tells the followers */
  readonly out = new HaveOutbox()
  /** neighbours that follow this blob here (they sent INTEREST) */
  readonly followers = new Set<SimNode>()
  /** neighbours this node asked to follow (sent INTEREST to) */
  readonly told = new Set<SimNode>()
  /** chunks this node asked their assignee for (once: as the daemon's locator, the next plan goes to the registry) */
  readonly asked = new Set<number>()
  /** look-ups waiting for a neighbour's word (through `wait`/`unwait`) */
  readonly waiting = new Set<Locate>()
  /** neighbours' requests waiting for a chunk this node is fetching */
  readonly waiters = new Map<number, PeerReq[]>()
  /** neighbours' requests waiting for this node's upload of a chunk to end (`ChunkReceivers.route`: TAKE_TURN) */
  readonly turns = new Map<number, PeerReq[]>()
  readonly group: GroupState

  constructor (readonly node: SimNode, readonly spec: BlobSpec) {
    this.present = newBits(spec.chunks)
    this.received = new Uint8Array(spec.chunks)
    this.fetching = new Uint8Array(spec.chunks)
    this.group = new GroupState(node, this)
  }

  /** The upload of chunk `ci` to a neighbour ended: the requests that waited their turn ask again. */
  turnEnded (ci: number): void {
    const js = this.turns.get(ci)
    if (js === undefined) return
    this.turns.delete(ci)
    this.wake(ci, js)
  }

  /** chunk `ci`'s requests woken now, and how many of them are still to go on */
  private wakeCi = -1
  private wakeLeft = 0

  /** Requests that waited here for chunk `ci` go on, in order. */
  wake (ci: number, js: readonly PeerReq[]): void {
    const ci0 = this.wakeCi
    const left0 = this.wakeLeft
    this.wakeCi = ci
    for (let i = 0; i < js.length; i++) {
      this.wakeLeft = js.length - i - 1
      js[i]!.landed()
    }
    this.wakeCi = ci0
    this.wakeLeft = left0
  }

  /** neighbours' requests here for chunk `ci` now: kept for a turn, or woken and still to go on, and one more */
  crowd (ci: number): number {
    return (this.turns.get(ci)?.length ?? 0) + (this.wakeCi === ci ? this.wakeLeft : 0) + 1
  }

  has (ci: number): boolean { return (this.present[ci >>> 3]! & (0x80 >>> (ci & 7))) !== 0 }

  /** `loc` waits for a neighbour's word about this blob. */
  wait (loc: Locate): void {
    if (this.waiting.size === 0) this.node.attend(this, 1)
    this.waiting.add(loc)
  }

  unwait (loc: Locate): void {
    if (this.waiting.delete(loc) && this.waiting.size === 0) this.node.attend(this, -1)
  }

  /** Chunk `ci` is present: what joined its flight goes on. */
  arrived (ci: number): void {
    this.fetching[ci] = 0
    const js = this.joins.get(ci)
    if (js === undefined) return
    this.joins.delete(ci)
    for (const j of js) j.landed()
  }
}

/**
 * Waits for some chunks of one blob to be present, as the daemon's single-flight join does: a read or a prefetch
 * slice asking for chunks a batch already fetches waits for that batch instead of fetching them again.
 */
export class Join {
  private left = 0

  constructor (nb: NodeBlob, cis: readonly number[], private readonly done: () => void) {
    for (const ci of cis) {
      if (nb.has(ci)) continue
      this.left++
      const js = nb.joins.get(ci)
      if (js === undefined) nb.joins.set(ci, [this])
      else js.push(this)
    }
    if (this.left === 0) done()
  }

  landed (): void {
    if (--this.left === 0) this.done()
  }
}

/** Have messages of one flush (or a bitfield) on their way to the followers; once there, each keeps it as it arrived. */
export class HaveDelivery implements Timed, Arrival {
  readonly peer: string
  readonly blobHex: string
  at = NaN

  constructor (private readonly from: SimNode, private readonly b: number, readonly msgs: HaveMessage[],
    private readonly bytes: number, private to: SimNode[]) {
    this.peer = from.peerId
    this.blobHex = from.blobs[b]!.spec.hex
  }

  fire (): void {
    this.at = this.from.world.queue.now
    const to = this.to
    // the followers' inboxes keep the delivery until they read: it holds its messages then, not its list of followers
    this.to = []
    for (const n of to) n.receiveHave(this.from, this.b, this, this.bytes)
  }
}
