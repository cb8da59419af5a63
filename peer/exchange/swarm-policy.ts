/**
 * Decisions of the blob-level swarm that the daemon takes inside timer-driven classes — the blob's group without
 * the scheduler's ({@link BlobLocator}), the holder asked for each chunk and how its requests are cut
 * (`NeighbourSource`), what the next flush tells a follower ({@link HaveService}) — as pure code those classes call.
 * Pure, so the simulator's model mode (`sim/model/`) runs the same code from its own events and cannot drift from
 * the daemon.
 */
import { MAX_INDEXES_PER_MESSAGE, type HaveMessage } from './have-protocol.js'
import { INCOMPLETE_GROUP_REFRESH_MS, planChunk, rendezvousScore } from './back-to-source.js'

/**
 * The blob's group when the scheduler named none: its first `groupSize` peers by rendezvous hash (chunk -1) out of
 * `ids`, everyone the node knows works on it (the scheduler's holders, the neighbours that told it their interest,
 * itself). Ties go to the lower id, so every peer that knows the same ids agrees whatever order it learnt them in.
 */
export function blobGroup (ids: Iterable<string>, blobHex: string, groupSize: number): string[] {
  const scored = [...new Set(ids)].map(id => ({ id, s: rendezvousScore(id, blobHex, -1) }))
  scored.sort((a, b) => b.s - a.s || (a.id < b.id ? -1 : 1))
  return scored.slice(0, groupSize).map(x => x.id)
}

/**
 * A chunk's holders in the order a fetch tries them: by their rendezvous hash with the chunk, highest first (ties
 * to the lower id), so that the askers of a chunk spread over every holder of it instead of all starting with the
 * first one to have it, whose uplink would carry the whole swarm.
 */
export function holdersInOrder (peers: readonly string[], blobHex: string, ci: number): string[] {
  if (peers.length < 2) return [...peers]
  const scored = peers.map(id => ({ id, s: rendezvousScore(id, blobHex, ci) }))
  scored.sort((a, b) => b.s - a.s || (a.id < b.id ? -1 : 1))
  return scored.map(x => x.id)
}

/** What one fetch knows of a holder when it picks one. */
export interface HolderLoad<H> {
  /** holders the fetch asks already */
  inUse: number
  /** distinct holders one fetch spreads its chunks over */
  maxHolders: number
  /** bytes assigned to `h` in this fetch; undefined while the fetch does not ask it */
  assigned: (h: H) => number | undefined
  /** this node's penalty of `h` (failed requests, bad chunks) */
  penalty: (h: H) => number
}

/**
 * The holder to ask for a chunk of `size` bytes out of `open`, its untried, unbanned holders in the order the
 * locator gave them: the cheapest — bytes it would have assigned in this fetch, weighted by its penalty — of those
 * in use or, while fewer than `maxHolders` are, of any (the first on a tie); when every open holder is out of use
 * and the fetch has its `maxHolders`, the first (a chunk is not left undone for want of a lane). Undefined when
 * `open` is empty.
 */
export function chooseHolder<H> (open: readonly H[], size: number, load: HolderLoad<H>): H | undefined {
  if (open.length === 0) return undefined
  const room = load.inUse < load.maxHolders
  let best: H | undefined
  let bestCost = Infinity
  for (const h of open) {
    const assigned = load.assigned(h)
    if (assigned === undefined && !room) continue
    const cost = ((assigned ?? 0) + size) * (1 + load.penalty(h))
    if (cost < bestCost) { best = h; bestCost = cost }
  }
  return best ?? open[0]
}

/**
 * The chunks assigned to one holder cut into requests, in order: at most `maxChunks` each and at most `maxBytes`
 * (a chunk larger than that goes alone), so one request stays within a few seconds on a slow link. A chunk for which
 * `alone` is true — one the holder is still fetching itself (it said PENDING, not HAVE) — also goes in a request of
 * its own: a holder answers a request's chunks in order, so the chunks behind one it is waiting for would wait with
 * it, though it may have them already (a front node's chunks land two batches at a time, in either order), and the
 * chunk server's uplink would idle meanwhile. (The model, `sim/model/`, 8 nodes at 4 MiB/s each and from the
 * registry, 57 chunks of 1 MiB, 8 seeds: the slowest node 1.53–1.73x one node alone with such chunks in shared
 * requests, 1.26–1.51x alone.)
 */
export function splitRequests<T> (wants: readonly T[], size: (w: T) => number, maxBytes: number, maxChunks: number, alone?: (w: T) => boolean): T[][] {
  const out: T[][] = []
  let cur: T[] = []
  let bytes = 0
  for (const w of wants) {
    const single = alone?.(w) === true
    if (cur.length > 0 && (single || cur.length === maxChunks || bytes + size(w) > maxBytes)) { out.push(cur); cur = []; bytes = 0 }
    cur.push(w)
    bytes += size(w)
    if (single) { out.push(cur); cur = []; bytes = 0 }
  }
  if (cur.length > 0) out.push(cur)
  return out
}

/** A request as {@link joinsQueued} sees it: its chunks, their bytes, whether it follows a REDIRECT, whether it
 * carries a chunk its holder is still fetching (`splitRequests`' `alone`). */
export interface QueuedShape { chunks: number, bytes: number, redirected: boolean, alone: boolean }

/**
 * Whether a new request's chunks (`part`) ride with a request still queued for the same holder — not sent yet, it
 * waits for one of the holder's streams anyway — rather than going as one request more. Each REDIRECT reply is
 * followed as it is read, so a holder sending many of a request's chunks on to one peer made as many requests of
 * one chunk each to that peer (real swarm, 4 × 64 MiB at 16 MiB/s: 30–40 in a row), two or four of them running
 * at a time, each a round trip of a loaded machine. Joined: a REDIRECT's chunks with those of another queued
 * REDIRECT (the peer named is receiving them all now), a holder's chunks with others it has, within the request's
 * bounds; a chunk it is still fetching never joins (`splitRequests`).
 */
export function joinsQueued (queued: QueuedShape, part: QueuedShape, maxBytes: number, maxChunks: number): boolean {
  if (queued.redirected !== part.redirected) return false
  if (!part.redirected && (queued.alone || part.alone)) return false
  return queued.chunks + part.chunks <= maxChunks && queued.bytes + part.bytes <= maxBytes
}

/**
 * Which of a holder's queued requests starts next (its index), or -1 while none may. A request that follows a
 * REDIRECT is queued first and may take `extra` streams beyond `streams`. Otherwise the first request carrying a
 * chunk a read waits for (`urgent`) goes ahead of the others, and while fewer than `streams` such requests run
 * (`runningUrgent`: the lane's other requests are a prefetch's) it may take the `extra` streams too. A read that
 * joins a prefetch batch waits for the batch's chunks it needs, and those were queued behind the rest of the batch:
 * a holder still fetching a batch's 31 chunks answered each BUSY after about a second, two at a time, and a chunk
 * answered BUSY was asked again only after the other 30 (16 daemons prefetching 24 MiB at 2 MiB/s, traced: a file's
 * first chunk, in the swarm 3.4 s into its batch's fetch, asked again 6–12 s after its BUSY, read up to 19 s into
 * it). A lane of reads alone runs as before: `streams` at a time, in order.
 */
export function nextQueued (queued: ReadonlyArray<{ redirected: boolean }>, lane: { running: number, runningUrgent: number },
  streams: number, extra: number, urgent: (i: number) => boolean): number {
  if (queued.length === 0) return -1
  const { running, runningUrgent } = lane
  if (queued[0]!.redirected) return running < streams + extra ? 0 : -1
  if (running >= streams + extra || (running >= streams && runningUrgent >= streams)) return -1
  for (let i = 0; i < queued.length; i++) if (urgent(i)) return i
  return running < streams ? 0 : -1
}

/**
 * What the next flush of the have service tells a follower of one blob about chunks that changed since the last:
 * only each chunk's latest news counts, so a chunk that landed leaves the PENDING and DROPPED sets, one that went
 * pending leaves DROPPED, one dropped leaves both others.
 */
export class HaveOutbox {
  readonly have = new Set<number>()
  readonly pending = new Set<number>()
  readonly dropped = new Set<number>()

  onHave (ci: number): void { this.have.add(ci); this.pending.delete(ci); this.dropped.delete(ci) }
  onPending (ci: number): void { this.pending.add(ci); this.dropped.delete(ci) }
  onDropped (ci: number): void { this.dropped.add(ci); this.have.delete(ci); this.pending.delete(ci) }
  get empty (): boolean { return this.have.size === 0 && this.pending.size === 0 && this.dropped.size === 0 }
  clear (): void { this.have.clear(); this.pending.clear(); this.dropped.clear() }

  /**
   * The flush's messages for `blob`, emptying the outbox: DROPPED, PENDING, then HAVE (last, so a chunk that went
   * pending again after it landed still reads as present), each at most {@link MAX_INDEXES_PER_MESSAGE} indexes.
   */
  drain (blob: Buffer): HaveMessage[] {
    const msgs: HaveMessage[] = []
    for (const [type, set] of [['dropped', this.dropped], ['pending', this.pending], ['have', this.have]] as const) {
      if (set.size === 0) continue
      const all = [...set]
      set.clear()
      for (let i = 0; i < all.length; i += MAX_INDEXES_PER_MESSAGE) msgs.push({ type, blob, indexes: all.slice(i, i + MAX_INDEXES_PER_MESSAGE) })
    }
    return msgs
  }
}

/**
 * What a swarm prefetch can do about one chunk now: `have` — neighbours have it (`holders` of them); `source` — this
 * node is the one to fetch it from the registry for the swarm; `wait` — another peer is fetching it or is the one to.
 */
export type PrefetchClass = { kind: 'have', holders: number } | { kind: 'source' } | { kind: 'wait' }

/**
 * How long after it last changed (or was first looked up) a group short of `groupSize` counts as still filling.
 * Meanwhile a prefetch picks no chunk to fetch from the registry, only what neighbours have: every early asker
 * counts itself among a partial group, so each would take a share of every chunk, and the registry would send those
 * several times (8 nodes × 24 MiB: 2 chunks a pick cost 1.74 copies, the first three askers each fetching the
 * blob's first 30 chunks within 0.8 s). Reads are not held: they go by `locate`'s rules.
 */
export const GROUP_FILL_MS = 4 * INCOMPLETE_GROUP_REFRESH_MS

/** Whether a blob's group of `size` members is still filling ({@link GROUP_FILL_MS}), `sinceChangeMs` after it last changed. */
export function groupFilling (size: number, groupSize: number, sinceChangeMs: number): boolean {
  return size < groupSize && sinceChangeMs < GROUP_FILL_MS
}

/**
 * What a swarm prefetch can do about chunk `ci` of a blob now ({@link PrefetchClass}), from what this node knows:
 * the neighbours that have it and those fetching it (both without this node), and the blob's group. A chunk nobody
 * has or fetches is this node's to fetch from the registry when it is the chunk's assignee as `planChunk` names it
 * the moment the chunk is wanted (the grace for another's PENDING ahead), else it waits.
 */
export function prefetchClass (p: { self: string, group: readonly string[], stable: boolean, blobHex: string, ci: number,
  have: number, othersFetching: boolean, graceMs: number }): PrefetchClass {
  if (p.have > 0) return { kind: 'have', holders: p.have }
  if (p.othersFetching) return { kind: 'wait' }
  const plan = planChunk({ self: p.self, group: [...p.group], blobHex: p.blobHex, ci: p.ci, have: [], pending: [], wantedForMs: 0, graceMs: p.graceMs, stable: p.stable })
  return plan.action === 'source' ? { kind: 'source' } : { kind: 'wait' }
}

/** What {@link prefetchPick} takes: the chunks in fetch order, and how many of them (the first ones) are for the registry. */
export interface PrefetchPicked<T> { chunks: T[], source: number }

/**
 * The chunks a swarm prefetch takes next out of `chunks` (one blob's, still to prefetch, in the policy's order), at
 * most `max`: first the chunks this node fetches from the registry for the swarm, in order, up to `maxSource` of
 * them and `maxSourceBytes` (at least one when `maxSource` allows any) — few, so that the registry's bandwidth goes
 * to few requests at a time and a chunk a neighbour's read waits for is not one of many sharing it — then the
 * chunks neighbours have, fewest holders first (rarest-first: copies spread over the swarm instead of every peer
 * taking the same common ones; ties keep the policy's order). A chunk another peer fetches or is the one to fetch
 * is left for later: prefetching it now would cost the registry a second copy. Empty when every chunk waits.
 */
export function prefetchPick<T> (chunks: readonly T[], classOf: (c: T) => PrefetchClass, size: (c: T) => number,
  limits: { max: number, maxSource: number, maxSourceBytes: number }): PrefetchPicked<T> {
  const out: T[] = []
  const have: Array<{ c: T, holders: number, at: number }> = []
  let sourceBytes = 0
  for (let i = 0; i < chunks.length; i++) {
    const c = chunks[i]!
    const k = classOf(c)
    if (k.kind === 'source') {
      if (out.length < Math.min(limits.max, limits.maxSource) && (out.length === 0 || sourceBytes + size(c) <= limits.maxSourceBytes)) {
        out.push(c)
        sourceBytes += size(c)
      }
    } else if (k.kind === 'have') have.push({ c, holders: k.holders, at: i })
  }
  const source = out.length
  have.sort((a, b) => a.holders - b.holders || a.at - b.at)
  for (const h of have) {
    if (out.length >= limits.max) break
    out.push(h.c)
  }
  return { chunks: out, source }
}
