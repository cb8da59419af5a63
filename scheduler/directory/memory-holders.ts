/**
 * A blob's holders in the memory directory: their join order, whose head is the blob's group, and a bag the
 * look-ups sample from. A popular blob's swarm is its whole swarm (10k holders and more), so every operation is
 * O(1) whatever its size: a join appends, a holder leaving from the middle of the order costs no splice, and a
 * look-up draws its sample without walking the rest.
 *
 * The join order is a `Map` (it iterates in insertion order and deletes in O(1)) from each holder to its place in
 * the bag, an array in no particular order: a removal moves the last holder into the gap, and a draw swaps its pick
 * to the front of what is left to draw (a partial Fisher–Yates shuffle, in place: the bag's order means nothing).
 */
export class BlobHolders {
  /** holder id → its index in `bag`, in join order */
  private readonly order = new Map<string, number>()
  private readonly bag: string[] = []

  get size (): number { return this.bag.length }

  has (id: string): boolean { return this.order.has(id) }

  /** `id` joins last; false when it already holds the blob (it keeps its place) */
  add (id: string): boolean {
    if (this.order.has(id)) return false
    this.order.set(id, this.bag.length)
    this.bag.push(id)
    return true
  }

  /** `id` no longer holds the blob; those after it in join order move up one place. False when it did not. */
  delete (id: string): boolean {
    const at = this.order.get(id)
    if (at === undefined) return false
    this.order.delete(id)
    const last = this.bag.pop() as string
    if (at < this.bag.length) this.put(at, last)
    return true
  }

  /** The holders in join order (a holder deleted while this runs is skipped, not an error). */
  joinOrder (): IterableIterator<string> { return this.order.keys() }

  /**
   * Draws holders uniformly at random without replacement, until none are left (undefined). The holders must not
   * change while a draw is used: a removal moves a holder the draw has not reached into the part it has.
   */
  sampler (random: () => number): () => string | undefined {
    let drawn = 0
    return () => {
      const left = this.bag.length - drawn
      if (left <= 0) return undefined
      const j = drawn + Math.min(left - 1, Math.floor(random() * left))
      const pick = this.bag[j]
      if (j !== drawn) {
        this.put(j, this.bag[drawn])
        this.put(drawn, pick)
      }
      drawn++
      return pick
    }
  }

  /**
   * A holder drawn uniformly at random from all but the first `kept` in join order (for a full blob to make room:
   * those are its group); undefined when there is none.
   */
  randomOutside (kept: number, random: () => number): string | undefined {
    const k = Math.min(Math.max(0, kept), this.bag.length)
    const n = this.bag.length - k
    if (n <= 0) return undefined
    const skip: number[] = []
    for (const at of this.order.values()) {
      if (skip.length >= k) break
      skip.push(at)
    }
    // the r-th place of the bag that is not one of `skip`: each skipped place at or before it moves it one on
    let r = Math.min(n - 1, Math.floor(random() * n))
    for (const at of skip.sort((a, b) => a - b)) if (at <= r) r++
    return this.bag[r]
  }

  private put (at: number, id: string): void {
    this.bag[at] = id
    // an existing key keeps its place in the join order
    this.order.set(id, at)
  }
}
