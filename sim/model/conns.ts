/**
 * A node's open connections, as a set of the world's nodes that costs a bit per node of the world and 4 bytes per
 * connection. Since REDIRECTs send askers from peer to peer, a node ends up connected to most of the swarm (1,000
 * nodes: 632 each on average; 300: 241): as a `Set` that was 20 KiB per node at 1,000 nodes, and it grows with
 * the square of the swarm. Iterates in the order the connections were made, as a `Set` does (a death resets its
 * peers in that order, and the order of events is part of a run).
 */

/** what it holds: a node, known by its index in the world's list */
interface Indexed { readonly idx: number }

const EMPTY = new Int32Array(0)

export class ConnSet<T extends Indexed> implements Iterable<T> {
  /** a bit per node of the world, allocated with the first connection */
  private bits: Uint32Array | undefined
  /** the nodes' indexes, in the order they were added */
  private order = EMPTY
  private n = 0

  /** `all`: the world's nodes, by index (filled by the time the first connection is made), `count` of them */
  constructor (private readonly all: readonly T[], private readonly count: number) {}

  get size (): number { return this.n }

  has (node: T): boolean {
    const bits = this.bits
    return bits !== undefined && (bits[node.idx >>> 5]! & (1 << (node.idx & 31))) !== 0
  }

  add (node: T): this {
    if (this.has(node)) return this
    const bits = this.bits ??= new Uint32Array((this.count + 31) >>> 5)
    bits[node.idx >>> 5]! |= 1 << (node.idx & 31)
    if (this.n === this.order.length) this.grow()
    this.order[this.n++] = node.idx
    return this
  }

  /** Removes `node` (a peer lost; rare: a linear pass over the order). */
  delete (node: T): boolean {
    if (!this.has(node)) return false
    this.bits![node.idx >>> 5]! &= ~(1 << (node.idx & 31))
    const at = this.order.subarray(0, this.n).indexOf(node.idx)
    this.order.copyWithin(at, at + 1, this.n)
    this.n--
    return true
  }

  * [Symbol.iterator] (): Iterator<T> {
    for (let i = 0; i < this.n; i++) yield this.all[this.order[i]!]!
  }

  private grow (): void {
    const order = new Int32Array(Math.max(8, this.order.length * 2))
    order.set(this.order)
    this.order = order
  }
}
