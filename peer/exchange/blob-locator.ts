/**
 * Who to ask for chunks when the swarm directory works at blob level (issue 13): the scheduler answers who works
 * on a blob (and records the asker as one of them), the `/rafspeer/have/1.0.0` sessions with those peers say which
 * chunks each has or is fetching, and back-to-source by rendezvous hash decides, for a chunk nobody has or fetches,
 * whether this node fetches it from the registry now or waits a grace period for the peer assigned to it.
 *
 * `locate` answers holders per chunk digest (hex), the shape {@link NeighbourSource} takes; a chunk left out goes
 * to the next source (the registry) at once. It waits at most `graceMs` (for an assignee's PENDING) beyond the
 * first `bitfieldWaitMs` of a blob.
 */
import { describeError, type ComponentLogger, type Logger } from '../../base/index.js'
import type { ChunkHolder, HolderResolver, PeerOutcome } from '../../p2p/index.js'
import type { ChunkInfo, RafsBlobInfo } from '../../rafs/index.js'
import type { PrefetchAdvisor } from '../fetch/index.js'
import { groupStale, NEAR_WINDOW, planChunk, runStarts, type SourceReason } from './back-to-source.js'
import type { HaveService } from './have-service.js'
import { blobGroup, groupFilling, holdersInOrder, prefetchClass, prefetchPick, type PrefetchClass, type PrefetchPicked } from './swarm-policy.js'

export const DEFAULT_GROUP_SIZE = 4
export const DEFAULT_GRACE_MS = 150
export const DEFAULT_BITFIELD_WAIT_MS = 200
export const DEFAULT_REFRESH_MS = 5_000
/**
 * how long a look-up of a blob's group waits for the scheduler while the node knows no group of it (its first, or
 * after one the scheduler left unanswered; otherwise the resolver's own 200 ms): the answer serves every read of the
 * blob for seconds, and without it the node plans as if alone and fetches from the registry what the group would
 * have shared (a scheduler sharing two cores with 8 daemons starting together answered some first look-ups after
 * more than 200 ms). A refresh of a known group keeps the short wait: it blocks the reads of the blob, every 250 ms
 * while the group is incomplete, and a wedged scheduler would hold each of them this long.
 */
export const DEFAULT_LOOKUP_TIMEOUT_MS = 1_000
/** holders of a blob remembered from the scheduler's answers */
export const DEFAULT_MAX_HOLDERS = 16
/**
 * ranked holders asked of the scheduler per look-up (besides the blob's group): few, so that followers spread over
 * the swarm instead of all following the same best peers (the model, `sim/model/`, shows 16 slower and costlier)
 */
export const DEFAULT_LOOKUP_HOLDERS = 4
export { GROUP_FILL_MS } from './swarm-policy.js'
const MAX_REMEMBERED_WANTS = 65_536

/** Finds holders for chunks of a blob; see {@link BlobLocator}. */
export interface ChunkLocator {
  locate: (blob: RafsBlobInfo, chunks: ChunkInfo[], opts: { signal: AbortSignal }) => Promise<Map<string, ChunkHolder[]>>
  report: (outcomes: PeerOutcome[]) => void
  /** how many neighbours have chunk `ci` of the blob, as they said (absent: not known) */
  holders?: (blobId: string, ci: number) => number
}

export interface BlobLocatorComponents {
  /** the scheduler, keyed by blob (the blob id's 32 bytes) */
  directory: HolderResolver
  have: Pick<HaveService, 'interest' | 'onUpdate' | 'table' | 'followers' | 'flushBlob'>
  /** this node's peer id */
  self: string
  /** told which chunks got a source (a neighbour, or the registry): their PENDING may go out (`CacheChunks.planned`) */
  planned?: (blobHex: string, indexes: number[]) => void
  logger?: ComponentLogger
}

export interface BlobLocatorInit {
  /** peers of a blob among which back-to-source chunks are shared (4) */
  groupSize?: number
  /** how long a non-assignee waits for the assignee's PENDING before fetching from the source itself (150 ms) */
  graceMs?: number
  /** how long the first look-up of a blob waits for its neighbours' bitfields (200 ms) */
  bitfieldWaitMs?: number
  /** a blob's holders are asked of the scheduler again after this (5 s) */
  refreshMs?: number
  maxHolders?: number
  /** ranked holders asked for per look-up (4) */
  lookupHolders?: number
  /** how long a look-up waits for the scheduler's answer while no group of the blob is known (1 s) */
  lookupTimeoutMs?: number
  now?: () => number
}

interface BlobGroup {
  holders: Map<string, ChunkHolder>
  /** the scheduler's group as it named it, addresses included (a node outside it asks an assignee) */
  members: Map<string, ChunkHolder>
  /** the blob's group as the scheduler named it (this node included if it is one); undefined: it named none */
  group: string[] | undefined
  at: number
}

export class BlobLocator implements ChunkLocator, PrefetchAdvisor {
  /** chunks `locate` sent to the registry, by why ({@link SourceReason}) */
  readonly sourced: Record<SourceReason, number> = { assignee: 0, noGroup: 0, ahead: 0, grace: 0 }
  /** chunks nobody it followed had that this node, outside their blob's group, asked their assignee for (`askAssignee`) */
  assigneeAsks = 0
  private readonly directory: HolderResolver
  private readonly have: BlobLocatorComponents['have']
  private readonly self: string
  private readonly planned: BlobLocatorComponents['planned']
  private readonly log: Logger | undefined
  private readonly groupSize: number
  private readonly graceMs: number
  private readonly bitfieldWaitMs: number
  private readonly refreshMs: number
  private readonly maxHolders: number
  private readonly lookupHolders: number
  private readonly lookupTimeoutMs: number
  private readonly now: () => number
  private readonly groups = new Map<string, Promise<BlobGroup>>()
  /** blob → its swarm's size as the scheduler last counted it */
  private readonly swarms = new Map<string, number>()
  /** `${blob}/${ci}` → when this node first wanted it */
  private readonly wanted = new Map<string, number>()
  /** `${blob}/${ci}` → when this node asked the chunk's assignee for it (once per want: then the registry) */
  private readonly asked = new Map<string, number>()
  /** blob → when the scheduler's group of it last changed (or this node first looked it up) */
  private readonly groupChangedAt = new Map<string, number>()

  constructor (components: BlobLocatorComponents, init: BlobLocatorInit = {}) {
    this.directory = components.directory
    this.have = components.have
    this.self = components.self
    this.planned = components.planned
    this.log = components.logger?.forComponent('rafspeer:blob-locator')
    this.groupSize = Math.max(1, init.groupSize ?? DEFAULT_GROUP_SIZE)
    this.graceMs = init.graceMs ?? DEFAULT_GRACE_MS
    this.bitfieldWaitMs = init.bitfieldWaitMs ?? DEFAULT_BITFIELD_WAIT_MS
    this.refreshMs = init.refreshMs ?? DEFAULT_REFRESH_MS
    this.maxHolders = init.maxHolders ?? DEFAULT_MAX_HOLDERS
    this.lookupHolders = init.lookupHolders ?? DEFAULT_LOOKUP_HOLDERS
    this.lookupTimeoutMs = init.lookupTimeoutMs ?? DEFAULT_LOOKUP_TIMEOUT_MS
    this.now = init.now ?? Date.now
  }

  report (outcomes: PeerOutcome[]): void { this.directory.report(outcomes) }

  holders (blobId: string, ci: number): number { return this.have.table.holders(blobId, ci) }

  async locate (blob: RafsBlobInfo, chunks: ChunkInfo[], opts: { signal: AbortSignal }): Promise<Map<string, ChunkHolder[]>> {
    const blobHex = blob.blobId
    const g = await this.group(blobHex, opts.signal)
    const group = g.group ?? this.groupOf(blobHex, g)
    const out = new Map<string, ChunkHolder[]>()
    const now = this.now()
    let open = chunks.map(c => ({ chunk: c, since: this.wantedSince(blobHex, c.index, now) }))
    const chosen: number[] = []
    const fronts = runStarts(chunks.map(c => c.index))
    while (open.length > 0) {
      const waiting: typeof open = []
      let sourced = false
      let soonest = Infinity
      for (const w of open) {
        const sources = this.have.table.sources(blobHex, w.chunk.index)
        const have = sources.have.filter(p => p !== this.self)
        const pending = sources.pending.map(p => p.peerId).filter(p => p !== this.self)
        const plan = planChunk({
          self: this.self,
          group,
          blobHex,
          ci: w.chunk.index,
          have,
          pending,
          wantedForMs: this.now() - w.since,
          graceMs: this.graceMs,
          stable: g.group !== undefined,
          activeNear: () => this.have.table.activeNear(blobHex, w.chunk.index, NEAR_WINDOW),
          behind: (peer, ci) => this.have.table.behind(blobHex, peer, ci, NEAR_WINDOW),
          front: fronts.get(w.chunk.index),
          askAssignee: !this.askedLately(blobHex, w.chunk.index)
        })
        if (plan.action === 'peer') {
          const peers = holdersInOrder(plan.peers, blobHex, w.chunk.index)
          // a holder only fetching the chunk is marked: its requests carry the chunk alone (`splitRequests`); so is
          // an assignee asked for a chunk nobody is known to have (it may be fetching it)
          out.set(w.chunk.digest.toString('hex'), peers.map(id => {
            const h = g.holders.get(id) ?? g.members.get(id) ?? { peerId: id, addrs: [] }
            return plan.ask === true || (pending.includes(id) && !have.includes(id)) ? { ...h, fetching: true } : h
          }))
          if (plan.ask === true) {
            this.assigneeAsks++
            this.remember(this.asked, `${blobHex}/${w.chunk.index}`, this.now())
          }
          chosen.push(w.chunk.index)
        } else if (plan.action === 'wait') {
          waiting.push(w)
          soonest = Math.min(soonest, plan.retryInMs)
        } else {
          this.sourced[plan.reason]++
          this.wanted.delete(`${blobHex}/${w.chunk.index}`)
          this.asked.delete(`${blobHex}/${w.chunk.index}`)
          chosen.push(w.chunk.index)
          sourced = true
        }
      }
      if (chosen.length > 0) this.planned?.(blobHex, chosen.splice(0))
      // chunks for the registry: their PENDING goes out now, not at the next flush (the peers waiting on it would
      // fetch them too)
      if (sourced) this.have.flushBlob(blobHex)
      if (waiting.length === 0) break
      await this.changeOf(blobHex, soonest, opts.signal)
      open = waiting
    }
    return out
  }

  /**
   * The prefetch's next chunks of `blob` ({@link prefetchPick}): those this node is the one to fetch from the
   * registry (back-to-source by rendezvous over the blob's group, as `locate` decides; none while the group is
   * filling, {@link GROUP_FILL_MS}), then those neighbours have, rarest first; a chunk a neighbour is fetching, or
   * that another member of the group is to fetch, waits until someone has it.
   */
  async pick (blob: RafsBlobInfo, chunks: readonly ChunkInfo[], opts: { max: number, maxSource: number, maxSourceBytes: number, signal: AbortSignal }): Promise<PrefetchPicked<ChunkInfo>> {
    const blobHex = blob.blobId
    const g = await this.group(blobHex, opts.signal)
    const group = g.group ?? this.groupOf(blobHex, g)
    const filling = groupFilling(group.length, this.groupSize, this.now() - (this.groupChangedAt.get(blobHex) ?? 0))
    const table = this.have.table
    const classOf = (c: ChunkInfo): PrefetchClass => {
      const sources = table.sources(blobHex, c.index)
      return prefetchClass({
        self: this.self, group, stable: g.group !== undefined, blobHex, ci: c.index, graceMs: this.graceMs,
        have: sources.have.filter(p => p !== this.self).length, othersFetching: sources.pending.some(p => p.peerId !== this.self)
      })
    }
    const maxSource = filling ? 0 : opts.maxSource
    return prefetchPick(chunks, classOf, c => c.compressedSize, { max: opts.max, maxSource, maxSourceBytes: opts.maxSourceBytes })
  }

  async changed (blob: RafsBlobInfo, ms: number, signal: AbortSignal): Promise<boolean> {
    return await this.changeOf(blob.blobId, ms, signal)
  }

  /**
   * resolves true when a neighbour's state of the blob changes, false after `ms` without; its timer and its listener
   * on `signal` go when it settles (a swarm's updates end most waits early: a timer left behind would hold a listener
   * on the fetch's signal for the rest of its `ms`, and a busy blob piles them up)
   */
  private async changeOf (blobHex: string, ms: number, signal: AbortSignal): Promise<boolean> {
    signal.throwIfAborted()
    let off: (() => void) | undefined
    let timer: NodeJS.Timeout | undefined
    let onAbort: (() => void) | undefined
    try {
      return await new Promise<boolean>((resolve, reject) => {
        off = this.have.onUpdate(hex => { if (hex === blobHex) resolve(true) })
        timer = setTimeout(() => { resolve(false) }, Math.max(1, ms))
        onAbort = () => { reject(signal.reason) }
        signal.addEventListener('abort', onAbort, { once: true })
      })
    } finally {
      off?.()
      clearTimeout(timer)
      if (onAbort !== undefined) signal.removeEventListener('abort', onAbort)
    }
  }

  private wantedSince (blobHex: string, ci: number, now: number): number {
    const key = `${blobHex}/${ci}`
    const t = this.wanted.get(key)
    // a want older than the grace period plus a while is from an earlier read that ended: start over
    if (t !== undefined && now - t < this.graceMs + this.refreshMs) return t
    this.remember(this.wanted, key, now)
    return now
  }

  /** whether this node asked the chunk's assignee for it during the current want (as `wantedSince` dates wants) */
  private askedLately (blobHex: string, ci: number): boolean {
    const t = this.asked.get(`${blobHex}/${ci}`)
    return t !== undefined && this.now() - t < this.graceMs + this.refreshMs
  }

  private remember (map: Map<string, number>, key: string, at: number): void {
    map.delete(key)
    map.set(key, at)
    if (map.size > MAX_REMEMBERED_WANTS) map.delete(map.keys().next().value as string)
  }

  /** The blob's holders (asked of the scheduler at most every `refreshMs`), told of our interest. */
  private async group (blobHex: string, signal: AbortSignal): Promise<BlobGroup> {
    const known = this.groups.get(blobHex)
    let before: BlobGroup | undefined
    if (known !== undefined) {
      before = await known
      if (!groupStale(before.group, this.groupSize, this.now() - before.at, this.refreshMs)) return before
    }
    // a node that knows no group yet (its first look-up, or one left unanswered) waits longer for the answer; an
    // answer with nobody in it (the scheduler did not answer in time: it always names at least the asker) does not
    // erase what the node knew, it only dates it (8 daemons prefetching 24 MiB: refreshes of a filling group that
    // came back empty and left members blind cost the registry up to 1.15 copies)
    const prior = before
    const fresh = this.lookUp(blobHex, signal, prior?.group === undefined).then(g =>
      prior !== undefined && g.group === undefined && g.holders.size === 0 && (prior.group !== undefined || prior.holders.size > 0)
        ? { ...prior, at: g.at }
        : g)
    this.groups.set(blobHex, fresh)
    try {
      const g = await fresh
      if (before === undefined || (before.group ?? []).join() !== (g.group ?? []).join()) this.groupChangedAt.set(blobHex, this.now())
      return g
    } catch (err) {
      this.groups.delete(blobHex)
      throw err
    }
  }

  /**
   * The blob's swarm as the scheduler last counted it (its holders on record, this node included; a scheduler
   * before protocol 1.1 does not tell): 0 when not known.
   */
  swarmSize (blobHex: string): number { return this.swarms.get(blobHex) ?? 0 }

  /** the largest swarm this node works in, as the scheduler last counted it (0: none known) */
  get largestSwarm (): number {
    let max = 0
    for (const n of this.swarms.values()) max = Math.max(max, n)
    return max
  }

  /** whether every one of `holders` sent its state of the blob */
  private heardFrom (blobHex: string, holders: ReadonlyMap<string, unknown>): boolean {
    const heard = new Set(this.have.table.neighbours(blobHex).map(n => n.peerId))
    for (const id of holders.keys()) if (!heard.has(id)) return false
    return true
  }

  private async lookUp (blobHex: string, signal: AbortSignal, blind: boolean): Promise<BlobGroup> {
    const first = !this.groups.has(blobHex)
    const holders = new Map<string, ChunkHolder>()
    const members = new Map<string, ChunkHolder>()
    let group: string[] | undefined
    try {
      // the blob's group first (the same for every asker), then the best other holders
      const answer = await this.directory.resolve([Buffer.from(blobHex, 'hex')], { signal, max: this.lookupHolders, group: this.groupSize, ...(blind ? { timeoutMs: this.lookupTimeoutMs } : {}) })
      const all = answer.get(blobHex) ?? []
      const swarm = answer.swarms?.get(blobHex)
      if (swarm !== undefined) this.swarms.set(blobHex, swarm)
      for (const h of all) {
        if (h.group !== true) continue
        ;(group ??= []).push(h.peerId)
        if (h.peerId !== this.self) members.set(h.peerId, { peerId: h.peerId, addrs: h.addrs })
      }
      // the ranked holders are whom to follow; the group is who fetches from the source (not whom everyone piles
      // onto), and its members follow each other
      const inGroup = group?.includes(this.self) === true
      for (const h of all) {
        if (h.peerId === this.self || holders.size >= this.maxHolders) continue
        if (h.group !== true || inGroup) holders.set(h.peerId, h)
      }
    } catch (err) {
      signal.throwIfAborted()
      this.log?.warn('looking up the holders of blob %s failed: %s', blobHex, describeError(err))
    }
    const told = this.have.interest(blobHex, [...holders.values()], { signal })
    if (first) await told
    else await this.within(told, this.bitfieldWaitMs)
    // the first time: give their bitfields a moment, so the first reads see who has what. Theirs, not any: peers
    // that told us their interest send bitfields too, and counting those let a node that joined a group plan
    // without the bitfield of the member fetching everything (the busiest, so the slowest to answer), and take its
    // share of chunks that member was fetching already from the registry (real 4 × 16 MiB/s: up to 1.09 copies)
    if (first && holders.size > 0) {
      const deadline = this.now() + this.bitfieldWaitMs
      while (!this.heardFrom(blobHex, holders) && this.now() < deadline) {
        await this.changeOf(blobHex, deadline - this.now(), signal)
      }
    }
    return { holders, members, group, at: this.now() }
  }

  /**
   * `work`, waited for `ms` at most (it goes on; its failure is its own). A refresh of a blob's group tells new
   * holders our interest, which dials the ones we have no session with, and every read of the blob waits for the
   * refresh: real 8 × 64 MiB at 4 MiB/s, traced, the front's reads waited 0.6–2.2 s on the dials of a filling group's
   * refreshes (its next Range asked 1.9 s after the first). New holders' sessions open in the background; their
   * bitfields come when they do.
   */
  private async within (work: Promise<void>, ms: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined
    const quiet = work.catch(() => {})
    try {
      await Promise.race([quiet, new Promise<void>(resolve => { timer = setTimeout(resolve, ms) })])
    } finally {
      clearTimeout(timer)
    }
  }

  /**
   * Without the scheduler's group (one that names none, or no answer): {@link blobGroup} of everyone this node knows
   * works on the blob: the scheduler's holders, the neighbours that told us their interest, and itself. Peers that
   * started together see each other's interest within a round trip, so they agree on the group before their first
   * chunks.
   */
  private groupOf (blobHex: string, g: BlobGroup): string[] {
    return blobGroup([...g.holders.keys(), ...this.have.followers(blobHex), this.self], blobHex, this.groupSize)
  }
}
