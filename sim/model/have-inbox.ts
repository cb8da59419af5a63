/**
 * A node's {@link HaveTable} with the have messages it received and has not looked at yet. A node reads its table
 * only when it plans (a look-up, a neighbour's word while a look-up waits, a lost connection), far less often than
 * its neighbours' flushes arrive, so messages wait here and are applied in a run, each with the time it arrived,
 * just before the next read: the table a read sees is the one eager application would have built, and applying
 * one node's messages together keeps its table in the cache instead of visiting every node's table for every flush.
 */
import { HaveTable, type HaveMessage } from './policy.js'

/** deliveries held at most before they are applied anyway (memory stays bounded for a node that never reads) */
const MAX_HELD = 256

/** Have messages from one neighbour about one blob, as they arrived. */
export interface Arrival {
  /** the sender's peer id */
  readonly peer: string
  readonly blobHex: string
  readonly msgs: readonly HaveMessage[]
  /** when they arrived */
  readonly at: number
}

export class HaveInbox {
  private readonly tbl: HaveTable
  // in arrival order; the array keeps its size between runs (reallocating it at every read made it live long enough
  // to be copied by the collector)
  private readonly arrivals: Arrival[] = []
  private n = 0
  /** arrival time of the message being applied, or NaN outside a replay */
  private replayAt = NaN

  constructor (private readonly now: () => number) {
    this.tbl = new HaveTable({ now: () => Number.isNaN(this.replayAt) ? this.now() : this.replayAt })
  }

  /** deliveries held */
  get held (): number { return this.n }

  /** Messages arrived (now: `a.at` is the current time). */
  push (a: Arrival): void {
    this.arrivals[this.n++] = a
    if (this.n >= MAX_HELD) this.apply()
  }

  /** The table, with every message that arrived so far applied. */
  get table (): HaveTable {
    if (this.n > 0) this.apply()
    return this.tbl
  }

  private apply (): void {
    for (let i = 0; i < this.n; i++) {
      const a = this.arrivals[i]!
      this.replayAt = a.at
      for (const m of a.msgs) this.tbl.apply(a.peer, m, a.blobHex)
    }
    this.replayAt = NaN
    this.n = 0
  }
}
