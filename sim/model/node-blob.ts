/** One node's state of one blob, and have messages on their way between nodes. */
import type { Timed } from './events.js'
import { GroupState, type Locate } from './locate.js'
import { Outbox } from './daemon-policy.js'
import type { SimNode } from './node.js'
import { newBits, type HaveMessage } from './policy.js'
import type { PeerReq } from './request.js'
import type { BlobSpec } from './world.js'

/** One blob as one node has it. */
export class NodeBlob {
  readonly present: Uint8Array
  /** chunks accepted, per index: every one must end at exactly 1 */
  readonly received: Uint8Array
  /** chunks this node is fetching now (its PENDING) */
  readonly inFlight = new Set<number>()
  /** what the next flush tells the followers */
  readonly out = new Outbox()
  /** neighbours that follow this blob here (they sent INTEREST) */
  readonly followers = new Set<SimNode>()
  /** neighbours this node asked to follow (sent INTEREST to) */
  readonly told = new Set<SimNode>()
  /** look-ups waiting for a neighbour's word */
  readonly waiting = new Set<Locate>()
  /** neighbours' requests waiting for a chunk this node is fetching */
  readonly waiters = new Map<number, PeerReq[]>()
  readonly group: GroupState

  constructor (readonly node: SimNode, readonly spec: BlobSpec) {
    this.present = newBits(spec.chunks)
    this.received = new Uint8Array(spec.chunks)
    this.group = new GroupState(node, this)
  }

  has (ci: number): boolean { return (this.present[ci >>> 3]! & (0x80 >>> (ci & 7))) !== 0 }
}

/** Have messages of one flush (or a bitfield) on their way to the followers. */
export class HaveDelivery implements Timed {
  constructor (private readonly from: SimNode, private readonly b: number, private readonly msgs: HaveMessage[],
    private readonly bytes: number, private readonly to: SimNode[]) {}

  fire (): void {
    for (const n of this.to) n.receiveHave(this.from, this.b, this.msgs, this.bytes)
  }
}
