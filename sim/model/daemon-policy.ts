/**
 * Decisions the daemon makes inside timer-driven classes (`BlobLocator`, `NeighbourSource`'s `SwarmFetch`), restated
 * as pure functions so the model can run them from its own events. Each states the daemon code it mirrors; they
 * belong in `peer/exchange/` as shared pure modules (the daemon classes calling them), so that the model and the
 * daemon cannot drift apart. Until then a change to those classes must be made here too.
 */
import { rendezvousScore } from './policy.js'

/**
 * `BlobLocator.groupOf`: the blob's first `groupSize` peers by rendezvous hash (chunk -1) out of everyone the node
 * knows works on it (the scheduler's holders, the neighbours that told it their interest, itself).
 */
export function blobGroup (ids: Iterable<string>, blobHex: string, groupSize: number): string[] {
  const scored = [...new Set(ids)].map(id => ({ id, s: rendezvousScore(id, blobHex, -1) }))
  scored.sort((a, b) => b.s - a.s || (a.id < b.id ? -1 : 1))
  return scored.slice(0, groupSize).map(x => x.id)
}

/**
 * `SwarmFetch.choose`: the holder to ask for a chunk of `size` bytes, among its untried, unbanned candidates
 * (`open`, in the order the locator gave them): the least loaded (bytes assigned in this fetch, weighted by the
 * holder's local penalty) of the holders in use or, while fewer than `maxHolders` are, of any; else the first.
 * Undefined when `open` is empty.
 */
export function chooseHolder<K> (open: readonly K[], size: number, lanes: { size: number, get: (k: K) => { assigned: number } | undefined },
  maxHolders: number, penalty: (k: K) => number): K | undefined {
  if (open.length === 0) return undefined
  const room = lanes.size < maxHolders
  let best: K | undefined
  let bestCost = Infinity
  for (const h of open) {
    const lane = lanes.get(h)
    if (lane === undefined && !room) continue
    const cost = ((lane?.assigned ?? 0) + size) * (1 + penalty(h))
    if (cost < bestCost) { best = h; bestCost = cost }
  }
  return best ?? open[0]
}

/** `SwarmFetch.enqueue`: a lane's wants cut into requests of at most `maxBytes` (one want at least) and `maxChunks`. */
export function splitRequests<T> (wants: readonly T[], size: (w: T) => number, maxBytes: number, maxChunks: number): T[][] {
  const out: T[][] = []
  let cur: T[] = []
  let bytes = 0
  for (const w of wants) {
    if (cur.length === maxChunks || (cur.length > 0 && bytes + size(w) > maxBytes)) { out.push(cur); cur = []; bytes = 0 }
    cur.push(w)
    bytes += size(w)
  }
  if (cur.length > 0) out.push(cur)
  return out
}

/**
 * `HaveService`'s outbox of one follower: what the next flush sends. A chunk that became present leaves the
 * pending and dropped sets; one that went pending leaves dropped; one dropped leaves both others.
 */
export class Outbox {
  readonly have = new Set<number>()
  readonly pending = new Set<number>()
  readonly dropped = new Set<number>()

  onHave (ci: number): void { this.have.add(ci); this.pending.delete(ci); this.dropped.delete(ci) }
  onPending (ci: number): void { this.pending.add(ci); this.dropped.delete(ci) }
  onDropped (ci: number): void { this.dropped.add(ci); this.have.delete(ci); this.pending.delete(ci) }
  get empty (): boolean { return this.have.size === 0 && this.pending.size === 0 && this.dropped.size === 0 }
  clear (): void { this.have.clear(); this.pending.clear(); this.dropped.clear() }
}

