/**
 * The swarm directory in memory: `Map<blob id, holders>` and `Map<peer id, record>`, for one scheduler.
 *
 * At blob level the numbers are small (10k peers × 50 blobs = 500k records), so this is plain maps, not the chunk
 * index's packed refs. A blob keeps its whole swarm by default (`maxHoldersPerBlob` is `maxPeers`), and a popular
 * blob's swarm is every peer: its holders (`memory-holders.ts`) keep their join order (whose head is the blob's
 * group) and a bag to sample, both O(1) per join, removal and draw, so a look-up ranks a uniform random sample of
 * {@link lookupSample} holders, never walking a 10k-holder swarm. A peer's record keeps the set of blobs it holds,
 * so `leave`, `expire` and a reset announce drop its records at once. Blob ids are stored once: a peer's set holds
 * the string the blob's record holds.
 */
import type { Logger } from '../../base/index.js'
import { silentLogger } from '../../base/index.js'
import type { PeerOutcome } from '../../p2p/index.js'
import { MAX_GROUP } from '../protocol.js'
import type { PeerLoad } from '../types.js'
import { addPending, isBanned, newReputation, recordOutcome, type LoadView, type Reputation } from '../ranking.js'
import {
  answerSize, checkBlobId, checkBlobIds, checkEntry, checkLoad, checkOutcomes, checkPeerId, clampTtl, DIRECTORY_DEFAULTS,
  groupSize, resolvePolicy, type Policy
} from './bounds.js'
import { DirectoryError } from './errors.js'
import { BlobHolders } from './memory-holders.js'
import { rankHolders, type Candidate } from './rank.js'
import type {
  AnnounceOptions, AnnounceResult, BlobHolder, CallOptions, DirectoryComponents, DirectoryStats, GroupLookup,
  GroupLookupOptions, GroupMember, LookupOptions, MemoryDirectoryInit, PeerEntry, PeerView, SwarmDirectory
} from './index.js'

interface MemPeer extends LoadView {
  readonly id: string
  addrs: string[]
  zone: string
  ttlMs: number
  expiresAt: number
  /** blob ids as the blob records hold them */
  readonly blobs: Set<string>
}

interface MemBlob {
  readonly id: string
  /** peer ids in join order (the first `MAX_GROUP` live ones are the group), at most `maxHoldersPerBlob` */
  readonly holders: BlobHolders
}

/** reputations looked at per newcomer when the table of reputations is over its bound */
const REPUTATION_EVICTION_SCAN = 64

/** holders a look-up ranks, at least: as many as the chunk index ranks per look-up (`HolderIndex`) */
const LOOKUP_SAMPLE = 32

/**
 * Live, reachable holders a look-up ranks for an answer of `max`: a uniform sample of the swarm, so each asker
 * follows peers from all over it (a list of the latest joiners makes the swarm's follow graph a chain), at a cost
 * that does not grow with the swarm. 32, as the chunk index ranks (the model measured 10,000 nodes with it), and
 * `lookupOversample` per answered holder for larger answers (48 for 16), so that the ranking still chooses among a
 * few candidates for every place in the answer.
 */
const lookupSample = (max: number): number => Math.max(LOOKUP_SAMPLE, max * DIRECTORY_DEFAULTS.lookupOversample)

export class MemoryDirectory implements SwarmDirectory {
  readonly kind = 'memory'
  private readonly peers = new Map<string, MemPeer>()
  private readonly blobs = new Map<string, MemBlob>()
  /** outlive registrations (a ban survives a re-join), bounded by {@link keepReputation} */
  private readonly reps = new Map<string, Reputation>()
  private entries = 0
  private closed = false
  private readonly policy: Policy
  private readonly maxPeers: number
  private readonly maxEntries: number
  private readonly log: Logger

  constructor (components: DirectoryComponents = {}, init: MemoryDirectoryInit = {}) {
    this.maxPeers = Math.max(1, init.maxPeers ?? DIRECTORY_DEFAULTS.maxPeers)
    // a blob keeps its whole swarm unless told otherwise: no more peers than that are registered
    this.policy = resolvePolicy({ ...init, maxHoldersPerBlob: init.maxHoldersPerBlob ?? this.maxPeers })
    this.maxEntries = Math.max(1, init.maxEntries ?? DIRECTORY_DEFAULTS.maxEntries)
    this.log = (components.logger ?? silentLogger).forComponent('rafspeer:directory')
  }

  private begin (opts: CallOptions | undefined): void {
    if (this.closed) throw new DirectoryError('RAFSPEER_ERR_DIRECTORY_CLOSED', 'the swarm directory is closed')
    opts?.signal?.throwIfAborted()
  }

  /** The peer's record if it is live; a dead one met here is dropped. */
  private live (id: string, now: number): MemPeer | undefined {
    const p = this.peers.get(id)
    if (p === undefined) return undefined
    if (p.expiresAt > now) return p
    this.drop(p)
    return undefined
  }

  private drop (p: MemPeer): void {
    for (const blobId of p.blobs) this.unlink(blobId, p.id)
    p.blobs.clear()
    this.peers.delete(p.id)
  }

  private unlink (blobId: string, peerId: string): void {
    const b = this.blobs.get(blobId)
    if (b === undefined || !b.holders.delete(peerId)) return
    this.entries--
    if (b.holders.size === 0) this.blobs.delete(blobId)
  }

  /**
   * Records `p` as the last joiner of `blobId`; a blob with `maxHoldersPerBlob` holders (a bound set explicitly:
   * by default no blob reaches it) makes room by dropping a random holder of it, never one of its first `MAX_GROUP`
   * (its group, for as long as they live).
   */
  private link (blobId: string, p: MemPeer): void {
    let b = this.blobs.get(blobId)
    if (b === undefined) {
      b = { id: blobId, holders: new BlobHolders() }
      this.blobs.set(blobId, b)
    }
    const old = b.holders.size >= this.policy.maxHoldersPerBlob
      ? b.holders.randomOutside(Math.min(MAX_GROUP, b.holders.size - 1), this.policy.random)
      : undefined
    if (old !== undefined) {
      b.holders.delete(old)
      this.peers.get(old)?.blobs.delete(b.id)
    } else {
      this.entries++
    }
    b.holders.add(p.id)
    p.blobs.add(b.id)
  }

  private banned (id: string, now: number): boolean {
    const rep = this.reps.get(id)
    return rep !== undefined && isBanned(rep, now)
  }

  /** Keeps a new reputation; past twice `maxPeers` one of a peer that is neither live nor banned makes way. */
  private keepReputation (id: string, rep: Reputation, now: number): void {
    this.reps.set(id, rep)
    if (this.reps.size <= this.maxPeers * 2) return
    let looked = 0
    for (const [other, r] of this.reps) {
      if (++looked > REPUTATION_EVICTION_SCAN) return
      if (!this.peers.has(other) && !isBanned(r, now)) { this.reps.delete(other); return }
    }
  }

  async announce (peer: PeerEntry, blobIds: readonly string[], opts: AnnounceOptions = {}): Promise<AnnounceResult> {
    this.begin(opts)
    const entry = checkEntry(peer)
    const ids = checkBlobIds(blobIds)
    const now = this.policy.now()
    if (this.banned(entry.id, now)) return { accepted: 0, refused: ids.length, banned: true }
    let p = this.live(entry.id, now)
    if (p === undefined) {
      if (this.peers.size >= this.maxPeers) this.expireAt(now)
      if (this.peers.size >= this.maxPeers) {
        this.log.debug('peer table full (%d): refused %s', this.maxPeers, entry.id)
        return { accepted: 0, refused: ids.length, banned: false }
      }
      p = {
        id: entry.id, addrs: [], zone: '', ttlMs: this.policy.peerTtlMs, expiresAt: 0, blobs: new Set(),
        uploadSlots: 0, uploadBps: 0, activeUploads: 0, recentUploadBps: 0, pending: 0, pendingAt: now
      }
      this.peers.set(p.id, p)
    }
    if (opts.reset === true) {
      // what it names again it keeps, with its place in those blobs' groups (a client re-announces in full after
      // every reconnect: that must not send it to the end of every group)
      const again = new Set(ids)
      for (const blobId of p.blobs) {
        if (!again.has(blobId)) { this.unlink(blobId, p.id); p.blobs.delete(blobId) }
      }
    }
    p.addrs = entry.addrs
    p.zone = entry.zone
    p.uploadSlots = entry.uploadSlots
    p.uploadBps = entry.uploadBps
    p.ttlMs = clampTtl(opts.ttlMs, this.policy) ?? p.ttlMs
    p.expiresAt = now + p.ttlMs
    let accepted = 0
    let refused = 0
    for (const id of ids) {
      if (p.blobs.has(id)) {
        accepted++
      } else if (p.blobs.size >= this.policy.maxBlobsPerPeer || this.entries >= this.maxEntries) {
        refused++
      } else {
        this.link(id, p)
        accepted++
      }
    }
    return { accepted, refused, banned: false }
  }

  async withdraw (peerId: string, blobIds: readonly string[], opts: CallOptions = {}): Promise<void> {
    this.begin(opts)
    const id = checkPeerId(peerId)
    const ids = checkBlobIds(blobIds)
    const p = this.live(id, this.policy.now())
    if (p === undefined) return
    for (const blobId of ids) if (p.blobs.delete(blobId)) this.unlink(blobId, id)
  }

  async leave (peerId: string, opts: CallOptions = {}): Promise<void> {
    this.begin(opts)
    const p = this.peers.get(checkPeerId(peerId))
    if (p !== undefined) this.drop(p)
  }

  async heartbeat (peerId: string, load: PeerLoad, ttlMs: number, opts: CallOptions = {}): Promise<boolean> {
    this.begin(opts)
    const id = checkPeerId(peerId)
    const l = checkLoad(load)
    const now = this.policy.now()
    const p = this.live(id, now)
    if (p === undefined) return false
    p.ttlMs = clampTtl(ttlMs, this.policy) ?? p.ttlMs
    p.expiresAt = now + p.ttlMs
    p.activeUploads = l.activeUploads
    p.recentUploadBps = l.recentUploadBps
    return true
  }

  async lookup (blobId: string, opts: LookupOptions = {}): Promise<BlobHolder[]> {
    return (await this.lookupGroup(blobId, { ...opts, group: 0 })).holders
  }

  async lookupGroup (blobId: string, opts: GroupLookupOptions): Promise<GroupLookup> {
    this.begin(opts)
    const id = checkBlobId(blobId)
    const asker = opts.asker !== undefined ? checkPeerId(opts.asker, 'asker') : undefined
    const max = answerSize(opts.max)
    const size = groupSize(opts.group)
    const b = this.blobs.get(id)
    if (b === undefined || (max === 0 && size === 0)) return { group: [], holders: [], swarm: 0 }
    const now = this.policy.now()
    const group = this.groupOf(b, size, now)
    const askerZone = opts.askerZone ?? (asker !== undefined ? this.peers.get(asker)?.zone : undefined) ?? ''
    const candidates: Candidate[] = []
    // a uniform sample of the whole swarm, drawn until it holds enough live, reachable holders (or none are left)
    const want = max > 0 ? lookupSample(max) : 0
    const dead: string[] = []
    const draw = b.holders.sampler(this.policy.random)
    while (candidates.length < want) {
      const peerId = draw()
      if (peerId === undefined) break
      const p = this.peers.get(peerId)
      // dropped after the draw, which a removal would disturb
      if (p === undefined || p.expiresAt <= now) { dead.push(peerId); continue }
      if (peerId === asker || p.addrs.length === 0) continue
      const rep = this.reps.get(peerId)
      if (rep !== undefined && isBanned(rep, now)) continue
      candidates.push({ peerId, addrs: p.addrs, zone: p.zone, load: p, rep: rep ?? newReputation(now) })
    }
    for (const peerId of dead) if (this.live(peerId, now) === undefined) this.unlink(id, peerId)
    const ranked = rankHolders(candidates, askerZone, max, now, this.policy.weights, this.policy.random)
    if (ranked.length > 0) addPending(ranked[0].candidate.load, 1, now)
    // the records left once the dead ones this look-up met were dropped (Redis counts beside its reads: those may
    // still be in it, as the interface allows)
    return { group, holders: ranked.map(({ holder }) => ({ ...holder, addrs: holder.addrs.slice() })), swarm: size > 0 ? b.holders.size : 0 }
  }

  /** The first `size` live, reachable, unbanned holders of `b` in join order; dead ones met are dropped. */
  private groupOf (b: MemBlob, size: number, now: number): GroupMember[] {
    const out: GroupMember[] = []
    if (size === 0) return out
    // dropping a holder while walking the join order is safe: the walk goes on with the next
    for (const peerId of b.holders.joinOrder()) {
      const p = this.live(peerId, now)
      if (p === undefined) {
        this.unlink(b.id, peerId)
        continue
      }
      if (p.addrs.length === 0 || this.banned(peerId, now)) continue
      out.push({ peerId, addrs: p.addrs.slice(), zone: p.zone })
      if (out.length >= size) break
    }
    return out
  }

  async report (reporter: string, outcomes: readonly PeerOutcome[], opts: CallOptions = {}): Promise<string[]> {
    this.begin(opts)
    const from = checkPeerId(reporter, 'reporter')
    const outs = checkOutcomes(from, outcomes)
    const now = this.policy.now()
    if (this.live(from, now) === undefined || this.banned(from, now)) return []
    const banned: string[] = []
    for (const o of outs) {
      let rep = this.reps.get(o.peerId)
      if (rep === undefined) {
        if (this.live(o.peerId, now) === undefined) continue
        rep = newReputation(now)
        this.keepReputation(o.peerId, rep, now)
      }
      if (recordOutcome(rep, o, from, now, this.policy)) banned.push(o.peerId)
    }
    return banned
  }

  async peer (peerId: string, opts: CallOptions = {}): Promise<PeerView | undefined> {
    this.begin(opts)
    const now = this.policy.now()
    const p = this.live(checkPeerId(peerId), now)
    if (p === undefined) return undefined
    return {
      id: p.id,
      addrs: p.addrs.slice(),
      zone: p.zone,
      uploadSlots: p.uploadSlots,
      uploadBps: p.uploadBps,
      activeUploads: p.activeUploads,
      recentUploadBps: p.recentUploadBps,
      ttlMs: p.ttlMs,
      blobs: p.blobs.size,
      banned: this.banned(p.id, now)
    }
  }

  private expireAt (now: number): number {
    let n = 0
    for (const p of this.peers.values()) {
      if (p.expiresAt <= now) { this.drop(p); n++ }
    }
    if (n > 0) this.log.debug('expired %d peers', n)
    return n
  }

  async expire (opts: CallOptions = {}): Promise<number> {
    this.begin(opts)
    return this.expireAt(this.policy.now())
  }

  async stats (opts: CallOptions = {}): Promise<DirectoryStats> {
    this.begin(opts)
    const now = this.policy.now()
    let peers = 0
    for (const p of this.peers.values()) if (p.expiresAt > now) peers++
    let banned = 0
    for (const rep of this.reps.values()) if (isBanned(rep, now)) banned++
    return { peers, blobs: this.blobs.size, entries: this.entries, banned }
  }

  async close (): Promise<void> {
    this.closed = true
    this.peers.clear()
    this.blobs.clear()
    this.reps.clear()
    this.entries = 0
  }
}
