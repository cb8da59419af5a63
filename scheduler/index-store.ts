/**
 * The in-memory holder index: digest → holders, peers with their load and reputation, expiry and bans.
 *
 * Memory is the design constraint (millions of chunks × thousands of peers), hence:
 * - a digest's key is its 32 raw bytes as a one-byte string (48 bytes on the V8 heap, hashed once), in one of 64
 *   maps chosen by its first byte (a V8 Map holds at most 2^24 entries, and smaller maps rehash in shorter pauses);
 * - a holder is a small integer `ref = gen << 16 | slot` (a V8 small integer: no allocation); a digest with one
 *   holder stores that integer as the map value itself, more holders an exactly sized array of them;
 * - dropping a peer (expiry, leave, reconnect reset) is O(1): its slot's generation moves on (`peer-table.ts`),
 *   which makes all its refs stale at once; stale refs are skipped by `resolve` and removed by an incremental `sweep`.
 */
import type { ChunkAnnouncer, ChunkHolder, HolderResolver, PeerOutcome, ResolvedHolders } from '../p2p/index.js'
import type { HolderIndexInit, IndexStats, PeerInfo, PeerLoad, RankingWeights, ResolveAnswer } from './types.js'
import { digestKey, MAX_GROUP, MAX_HOLDERS_PER_ANSWER, packDigests, type PackedDigests } from './protocol.js'
import { addPending, badPenalty, baseScore, DEFAULT_WEIGHTS, isBanned, recordOutcome, scoreFor, zoneAffinity } from './ranking.js'
import { HARD_MAX_PEERS, PeerTable, type PeerRecord } from './peer-table.js'
import {
  capAfterEviction, DEFAULT_ADMISSION, displaceable, EVICTION_SAMPLE, quotaOf, victimFor, weightOf, type AdmissionPolicy
} from './admission.js'

export { HARD_MAX_PEERS, type PeerRecord } from './peer-table.js'

/** stale entries allowed beyond `maxEntries` (as a share of it) before announces wait for the sweep */
const STALE_SLACK = 0.5
/** refs a full index sweeps at once before it refuses (a few milliseconds) */
const SYNC_SWEEP_BUDGET = 100_000
const SHARDS = 64
const SHARD_MASK = SHARDS - 1
const DEFAULTS = {
  maxPeers: 10_000,
  maxEntries: 10_000_000,
  maxDigestsPerPeer: 4_000_000,
  maxHoldersPerDigest: 32,
  heartbeatMs: 5000,
  missedHeartbeats: 3,
  minHeartbeatMs: 50,
  maxHeartbeatMs: 30_000,
  banAfterBadReporters: 2,
  banMs: 3_600_000,
  claimMisses: true
}

type Holders = number | number[]

/** whether `rec` is among the first `k` of `top` */
function among (top: ReadonlyArray<PeerRecord | undefined>, k: number, rec: PeerRecord): boolean {
  for (let i = 0; i < k; i++) if (top[i] === rec) return true
  return false
}

/** What `resolveRaw` returns: like {@link ResolveAnswer}, with the peer records themselves. */
export { MAX_GROUP }

export interface RawAnswer {
  peers: PeerRecord[]
  counts: Uint8Array
  refs: Uint16Array
  /** with a `group` asked for: per digest, how many of its holders (listed first) are the key's group */
  groups?: Uint8Array
  /** with a `group` asked for: per digest, how many holders it has on record (a blob's swarm) */
  swarms?: Uint32Array
}

export interface AnnounceResult {
  added: number
  refused: number
}

export class HolderIndex {
  private readonly shards: Array<Map<string, Holders>> = Array.from({ length: SHARDS }, () => new Map())
  private readonly peers: PeerTable
  private liveEntries = 0
  private staleEntries = 0
  private refused = 0
  private evictions = 0
  private evictedEntries = 0
  private displaced = 0
  private sweepIter: Iterator<[string, Holders]> | undefined
  private sweepShard = 0
  private staleEventsInPass = 0
  /** per-resolve caches, indexed by slot and valid when their stamp is the current one */
  private readonly scoreCache: Float64Array
  private readonly scoreStamp: Uint32Array
  private readonly tableStamp: Uint32Array
  private readonly tableIndex: Uint32Array
  private readonly firsts: Uint32Array
  private stamp = 0

  readonly maxPeers: number
  private readonly maxEntries: number
  /** live + stale entries: the memory bound */
  private readonly hardEntries: number
  private readonly admission: AdmissionPolicy
  private readonly maxDigestsPerPeer: number
  private readonly maxHolders: number
  private readonly maxBlobHolders: number
  private readonly heartbeatMs: number
  private readonly missed: number
  private readonly minHeartbeatMs: number
  private readonly maxHeartbeatMs: number
  private readonly policy: { banAfterBadReporters: number, banMs: number }
  private readonly weights: RankingWeights
  private readonly claimMisses: boolean
  private readonly now: () => number
  private readonly random: () => number

  constructor (init: HolderIndexInit = {}) {
    this.maxPeers = Math.max(1, Math.min(HARD_MAX_PEERS, init.maxPeers ?? DEFAULTS.maxPeers))
    this.maxEntries = init.maxEntries ?? DEFAULTS.maxEntries
    this.maxDigestsPerPeer = init.maxDigestsPerPeer ?? DEFAULTS.maxDigestsPerPeer
    this.hardEntries = this.maxEntries + Math.floor(this.maxEntries * STALE_SLACK)
    this.admission = {
      maxEntries: this.maxEntries,
      maxDigestsPerPeer: this.maxDigestsPerPeer,
      openFill: init.admission?.openFill ?? DEFAULT_ADMISSION.openFill,
      provenWeight: init.admission?.provenWeight ?? DEFAULT_ADMISSION.provenWeight,
      minQuota: init.admission?.minQuota ?? DEFAULT_ADMISSION.minQuota,
      unprovenMaxDigests: init.admission?.unprovenMaxDigests ?? DEFAULT_ADMISSION.unprovenMaxDigests
    }
    this.maxHolders = Math.max(1, init.maxHoldersPerDigest ?? DEFAULTS.maxHoldersPerDigest)
    this.maxBlobHolders = Math.max(1, init.maxHoldersPerBlob ?? this.maxPeers)
    this.heartbeatMs = init.heartbeatMs ?? DEFAULTS.heartbeatMs
    this.missed = init.missedHeartbeats ?? DEFAULTS.missedHeartbeats
    this.minHeartbeatMs = init.minHeartbeatMs ?? DEFAULTS.minHeartbeatMs
    this.maxHeartbeatMs = init.maxHeartbeatMs ?? DEFAULTS.maxHeartbeatMs
    this.policy = { banAfterBadReporters: Math.max(1, init.banAfterBadReporters ?? DEFAULTS.banAfterBadReporters), banMs: init.banMs ?? DEFAULTS.banMs }
    this.weights = { ...DEFAULT_WEIGHTS, ...init.ranking }
    this.claimMisses = init.claimMisses ?? DEFAULTS.claimMisses
    this.now = init.now ?? Date.now
    this.random = init.random ?? Math.random
    this.peers = new PeerTable(this.maxPeers, this.heartbeatMs)
    this.scoreCache = new Float64Array(this.maxPeers)
    this.scoreStamp = new Uint32Array(this.maxPeers)
    this.tableStamp = new Uint32Array(this.maxPeers)
    this.tableIndex = new Uint32Array(this.maxPeers)
    this.firsts = new Uint32Array(this.maxPeers)
  }

  // ---- peers ----

  /** The peer's entries are about to go stale: count them for the sweep. */
  private staled (rec: PeerRecord): void {
    this.staleEntries += rec.count
    this.liveEntries -= rec.count
    this.staleEventsInPass += rec.count
  }

  /** All the peer's entries go stale; it stays registered (a reset announce). */
  private renew (rec: PeerRecord): void {
    this.staled(rec)
    this.peers.renew(rec)
  }

  private drop (rec: PeerRecord): void {
    this.staled(rec)
    this.peers.drop(rec)
  }

  private isLive (ref: number): boolean {
    return this.peers.live(ref) !== undefined
  }

  private expired (rec: PeerRecord, now: number): boolean {
    return now - rec.lastSeen > rec.intervalMs * this.missed
  }

  /**
   * The peer's record, registering it if new. A full table makes way for a newcomer by dropping a sampled peer of
   * no greater weight (see `admission.ts`); undefined when none may be dropped, or the newcomer is banned.
   */
  private admit (id: string, now: number): PeerRecord | undefined {
    const rec = this.peers.register(id, now)
    if (rec !== undefined) return rec
    const rep = this.peers.reputation(id)
    if (rep !== undefined && isBanned(rep, now)) return undefined
    const victim = displaceable(this.peers.sample(EVICTION_SAMPLE, this.random), rep !== undefined ? weightOf(rep, this.admission) : 1, this.admission)
    if (victim === undefined) return undefined
    this.drop(victim)
    this.displaced++
    return this.peers.register(id, now)
  }

  /** Marks a peer alive (any message counts). */
  touch (id: string): void {
    const rec = this.peers.get(id)
    if (rec !== undefined) rec.lastSeen = this.now()
  }

  heartbeat (id: string, intervalMs: number, load: PeerLoad): boolean {
    const now = this.now()
    const rec = this.admit(id, now)
    if (rec === undefined) return false
    rec.lastSeen = now
    rec.intervalMs = intervalMs > 0 ? Math.max(this.minHeartbeatMs, Math.min(this.maxHeartbeatMs, intervalMs)) : this.heartbeatMs
    rec.activeUploads = load.activeUploads
    rec.recentUploadBps = load.recentUploadBps
    return true
  }

  /** The peer left: drop it and all its entries now. */
  leave (id: string): void {
    const rec = this.peers.get(id)
    if (rec !== undefined) this.drop(rec)
  }

  /** Drops every peer silent for `missedHeartbeats` of its intervals; returns their ids. */
  expire (): string[] {
    const now = this.now()
    const gone: string[] = []
    for (const rec of this.peers.values()) {
      if (this.expired(rec, now)) { this.drop(rec); gone.push(rec.id) }
    }
    return gone
  }

  /** Applies outcomes reported by `reporter` (a banned reporter is not heard); returns the peers banned by it. */
  report (reporter: string, outcomes: readonly PeerOutcome[]): string[] {
    const now = this.now()
    // only registered peers are heard: a success report is a voucher (admission.ts), so it must come from a peer
    // that announced or heartbeated under its own key, not from any connection
    const reporterRec = this.peers.get(reporter)
    if (reporterRec === undefined || isBanned(reporterRec.rep, now)) return []
    reporterRec.lastSeen = now
    const banned: string[] = []
    for (const o of outcomes) {
      if (o.peerId === reporter) continue
      const rep = this.peers.reputation(o.peerId)
      if (rep !== undefined && recordOutcome(rep, o, reporter, now, this.policy)) banned.push(o.peerId)
    }
    return banned
  }

  isBanned (id: string): boolean {
    const rep = this.peers.reputation(id)
    return rep !== undefined && isBanned(rep, this.now())
  }

  peer (id: string): Readonly<PeerRecord> | undefined { return this.peers.get(id) }

  // ---- holdings ----

  /**
   * Records that `id` holds `digests`. `reset` first drops everything it held (a client's first frame after a
   * reconnect); `info` updates its addresses, zone and capacity. Past a bound, the rest is refused and counted.
   */
  announce (id: string, digests: PackedDigests, opts: { reset?: boolean, info?: PeerInfo } = {}): AnnounceResult {
    const now = this.now()
    const count = digests.length >>> 5
    const rec = this.admit(id, now)
    if (rec === undefined) {
      this.refused += count
      return { added: 0, refused: count }
    }
    rec.lastSeen = now
    if (opts.reset === true && rec.count > 0) this.renew(rec)
    if (opts.info !== undefined) this.peers.setInfo(rec, opts.info)
    let added = 0
    const quota = this.quotaOf(rec)
    for (let i = 0; i < count; i++) {
      if (rec.count >= quota || !this.roomFor(rec, count - i)) {
        this.refused += count - i
        return { added, refused: count - i }
      }
      if (this.addHolder(digestKey(digests, i), rec, this.maxHolders)) added++
    }
    return { added, refused: 0 }
  }

  /** Digests `rec` may hold now: its weighted share once the index fills (see `admission.ts`). */
  private quotaOf (rec: PeerRecord): number {
    if (this.liveEntries < this.maxEntries * this.admission.openFill) return quotaOf(rec, this.liveEntries, 1, this.admission)
    let total = 0
    for (const p of this.peers.values()) total += weightOf(p.rep, this.admission)
    return quotaOf(rec, this.liveEntries, total, this.admission)
  }

  /**
   * Whether `rec` may add an entry (it wants `want` more): stale entries beyond the slack are swept first, and a
   * full index evicts the peer holding the most per weight, if it holds more than `rec` would.
   */
  private roomFor (rec: PeerRecord, want: number): boolean {
    if (this.liveEntries < this.maxEntries && this.liveEntries + this.staleEntries < this.hardEntries) return true
    if (this.liveEntries + this.staleEntries >= this.hardEntries) {
      this.sweep(SYNC_SWEEP_BUDGET)
      if (this.liveEntries + this.staleEntries >= this.hardEntries) return false
    }
    if (this.liveEntries >= this.maxEntries) {
      const victim = victimFor(this.peers.values(), rec, want, this.admission)
      if (victim === undefined) return false
      this.evict(victim)
    }
    return this.liveEntries < this.maxEntries && this.liveEntries + this.staleEntries < this.hardEntries
  }

  /** Drops all of a peer's holdings (it stays registered) and caps what it may hold while the index is full. */
  private evict (rec: PeerRecord): void {
    this.evictions++
    this.evictedEntries += rec.count
    rec.rep.cap = capAfterEviction(rec.count, this.admission)
    this.renew(rec)
  }

  withdraw (id: string, digests: PackedDigests): number {
    const rec = this.peers.get(id)
    if (rec === undefined) return 0
    rec.lastSeen = this.now()
    let removed = 0
    const count = digests.length >>> 5
    for (let i = 0; i < count; i++) if (this.removeHolder(digestKey(digests, i), rec)) removed++
    return removed
  }

  /** a stale ref was overwritten */
  private unstaled (): void {
    if (this.staleEntries > 0) this.staleEntries--
  }

  private gained (rec: PeerRecord): void {
    rec.count++
    this.liveEntries++
  }

  private shard (key: string): Map<string, Holders> {
    return this.shards[key.charCodeAt(0) & SHARD_MASK]
  }

  /** `rec` joins the key's holders, last in join order; past `cap` of them it replaces one (see below). */
  private addHolder (key: string, rec: PeerRecord, cap: number): boolean {
    const ref = rec.ref
    const map = this.shard(key)
    const v = map.get(key)
    if (v === undefined) {
      map.set(key, ref)
    } else if (typeof v === 'number') {
      if (v === ref) return false
      if (this.isLive(v)) {
        map.set(key, [v, ref])
      } else {
        map.set(key, ref)
        this.unstaled()
      }
    } else {
      let staleAt = -1
      for (let i = 0; i < v.length; i++) {
        const h = v[i]
        if (h === ref) return false
        if (staleAt < 0 && !this.isLive(h)) staleAt = i
      }
      if (staleAt >= 0) {
        v[staleAt] = ref
        this.unstaled()
      } else if (v.length < Math.min(cap, this.maxHolders)) {
        // concat allocates exactly; push would reserve room for 16 more
        map.set(key, v.concat(ref))
      } else if (v.length < cap) {
        // a blob's swarm: a list this long grows by push, not by a copy per joiner
        v.push(ref)
      } else {
        // full: replace a random holder, which keeps a fresh random sample of a popular chunk's holders; never one
        // of the first few, who are the key's group for as long as they live (`resolveRaw`'s `group`)
        const kept = Math.min(MAX_GROUP, v.length - 1)
        const j = kept + Math.floor(this.random() * (v.length - kept))
        const old = this.peers.inSlotOf(v[j])
        if (old !== undefined) old.count--
        this.liveEntries--
        v[j] = ref
      }
    }
    this.gained(rec)
    return true
  }

  private removeHolder (key: string, rec: PeerRecord): boolean {
    const map = this.shard(key)
    const v = map.get(key)
    if (v === undefined) return false
    if (typeof v === 'number') {
      if (v !== rec.ref) return false
      map.delete(key)
    } else {
      const i = v.indexOf(rec.ref)
      if (i < 0) return false
      if (v.length === 2) {
        map.set(key, v[1 - i])
      } else {
        v[i] = v[v.length - 1]
        v.pop()
      }
    }
    rec.count--
    this.liveEntries--
    return true
  }

  /**
   * Removes up to `budget` entries' worth of stale refs, resuming where the last call stopped. Returns how many
   * refs it removed. Cheap when there is nothing stale.
   */
  sweep (budget = 100_000): number {
    if (this.staleEntries === 0 && this.sweepIter === undefined) return 0
    if (this.sweepIter === undefined) {
      this.sweepShard = 0
      this.sweepIter = this.shards[0].entries()
      this.staleEventsInPass = 0
    }
    let removed = 0
    for (let n = 0; n < budget; n++) {
      const it = this.sweepIter.next()
      if (it.done === true) {
        if (++this.sweepShard < SHARDS) {
          this.sweepIter = this.shards[this.sweepShard].entries()
          continue
        }
        this.sweepIter = undefined
        this.staleEntries = Math.max(0, this.staleEntries - removed)
        // nothing went stale during the pass, so the pass saw every stale ref: none is left
        if (this.staleEventsInPass === 0) this.staleEntries = 0
        return removed
      }
      const map = this.shards[this.sweepShard]
      const [key, v] = it.value
      if (typeof v === 'number') {
        if (!this.isLive(v)) { map.delete(key); removed++ }
        continue
      }
      let kept = 0
      for (let i = 0; i < v.length; i++) if (this.isLive(v[i])) v[kept++] = v[i]
      if (kept === v.length) continue
      removed += v.length - kept
      if (kept === 0) map.delete(key)
      else if (kept === 1) map.set(key, v[0])
      else map.set(key, v.slice(0, kept))
    }
    this.staleEntries = Math.max(0, this.staleEntries - removed)
    return removed
  }

  // ---- resolve ----

  private score (rec: PeerRecord, asker: PeerRecord | undefined, askerZone: readonly string[], now: number): number {
    const slot = rec.slot
    if (this.scoreStamp[slot] === this.stamp) return this.scoreCache[slot]
    let s = -1
    if (rec !== asker && rec.addrs.length > 0 && !this.expired(rec, now) && !isBanned(rec.rep, now)) {
      const base = baseScore(rec, rec.rep, now, this.weights)
      s = scoreFor(base, zoneAffinity(askerZone, rec.zonePath), badPenalty(rec.rep), this.weights, this.random())
    }
    this.scoreStamp[slot] = this.stamp
    this.scoreCache[slot] = s
    return s
  }

  private nextStamp (): number {
    if (this.stamp >= 0xfffffffe) {
      this.stamp = 0
      this.scoreStamp.fill(0)
      this.tableStamp.fill(0)
    }
    return ++this.stamp
  }

  /**
   * Up to `max` holders per digest, best first, never `askerId` itself, nor expired, banned or address-less peers.
   * Scores are computed once per call (with a random spread of `ranking.jitter`), so one answer orders the same
   * holders the same way for every digest (the fetcher can batch per holder), while successive answers rotate
   * among near-equal holders; every digest's first holder is charged as pending load, which steers the next
   * answers elsewhere until the peer's heartbeat reports its real load.
   *
   * With `group` > 0 (blob-level keys), each key's answer starts with its group: the first `group` usable holders in
   * the key's list (join order, the asker included when it is one; the asker claims the key before), which every
   * asker of that moment is told alike, so that all of them agree on who fetches which chunk from the source
   * (`back-to-source.ts`); up to `max` ranked holders follow (never the asker; a group member may be among them
   * again, as one of the best holders to fetch from). Such a key keeps up to `maxHoldersPerBlob` holders (the whole
   * swarm), ranked on a random sample of `maxHoldersPerDigest` of them per answer.
   */
  resolveRaw (askerId: string | undefined, digests: PackedDigests, max = 4, group = 0): RawAnswer {
    const now = this.now()
    const stamp = this.nextStamp()
    const asker = askerId !== undefined ? this.peers.get(askerId) : undefined
    if (asker !== undefined) asker.lastSeen = now
    const askerZone = asker?.zonePath ?? []
    // the asker becomes a holder of what it asks for at once, since it fetches those chunks next: on a miss from
    // the source (whoever asks next is sent to it, not to the source too), else from the holders given here (the
    // next askers spread over it and them, so a popular chunk flows down a tree of peers, not all from its first
    // holder); the asker's server makes a neighbour wait for its own fetch
    let claimer = this.claimMisses && asker !== undefined && asker.addrs.length > 0 && !isBanned(asker.rep, now) ? asker : undefined
    const n = digests.length >>> 5
    const claimQuota = claimer !== undefined ? this.quotaOf(claimer) : 0
    group = Math.min(group, MAX_GROUP)
    const counts = new Uint8Array(n)
    const groups = group > 0 ? new Uint8Array(n) : undefined
    const swarms = group > 0 ? new Uint32Array(n) : undefined
    const refs = new Uint16Array(n * Math.min(MAX_HOLDERS_PER_ANSWER, max + group))
    const peers: PeerRecord[] = []
    const firstRecs: PeerRecord[] = []
    const topRec: Array<PeerRecord | undefined> = new Array(max).fill(undefined)
    const topScore = new Float64Array(max)
    let nrefs = 0
    for (let i = 0; i < n; i++) {
      const key = digestKey(digests, i)
      if (group > 0 && claimer !== undefined && !this.claim(key, claimer, claimQuota, n - i, this.maxBlobHolders)) claimer = undefined
      const v = this.shard(key).get(key)
      if (v === undefined) {
        if (claimer !== undefined && !this.claim(key, claimer, claimQuota, n - i, this.maxHolders)) claimer = undefined
        continue
      }
      let k = 0
      const len = typeof v === 'number' ? 1 : v.length
      if (swarms !== undefined) swarms[i] = len
      let g = 0
      if (groups !== undefined) {
        for (let j = 0; j < len && g < group; j++) {
          const rec = this.peers.live(typeof v === 'number' ? v : v[j])
          if (rec === undefined || (rec !== asker && this.score(rec, asker, askerZone, now) < 0)) continue
          this.pushRef(rec, peers, stamp)
          refs[nrefs++] = this.tableIndex[rec.slot]
          g++
        }
        groups[i] = g
      }
      // a list longer than a digest's (a blob's swarm) is ranked on a uniform sample of it: an answer from its
      // whole length, at a digest's cost
      const sampled = len > this.maxHolders
      for (let t = 0, tries = sampled ? this.maxHolders : len; t < tries; t++) {
        const ref = typeof v === 'number' ? v : v[sampled ? Math.floor(this.random() * len) : t]
        const rec = this.peers.live(ref)
        if (rec === undefined || (sampled && among(topRec, k, rec))) continue
        const s = this.score(rec, asker, askerZone, now)
        if (s < 0) continue
        // insertion into the small sorted top-`max` list
        const room = Math.min(max, MAX_HOLDERS_PER_ANSWER - g)
        if (room <= 0) break
        let at = k < room ? k++ : room
        if (at === room && s <= topScore[room - 1]) continue
        if (at === room) at = room - 1
        while (at > 0 && topScore[at - 1] < s) {
          topScore[at] = topScore[at - 1]
          topRec[at] = topRec[at - 1]
          at--
        }
        topScore[at] = s
        topRec[at] = rec
      }
      counts[i] = g + k
      for (let j = 0; j < k; j++) {
        const rec = topRec[j] as PeerRecord
        this.pushRef(rec, peers, stamp)
        refs[nrefs++] = this.tableIndex[rec.slot]
      }
      if (k > 0) {
        const first = topRec[0] as PeerRecord
        if (this.firsts[first.slot]++ === 0) firstRecs.push(first)
      }
      if (group === 0 && claimer !== undefined && !this.claim(key, claimer, claimQuota, n - i, this.maxHolders)) claimer = undefined
    }
    for (const rec of firstRecs) addPending(rec, this.firsts[rec.slot], now)
    return { peers, counts, refs: refs.subarray(0, nrefs), ...(groups !== undefined ? { groups, swarms } : {}) }
  }

  /** `rec` into this answer's table of distinct holders (once per answer, stamped) */
  private pushRef (rec: PeerRecord, peers: PeerRecord[], stamp: number): void {
    if (this.tableStamp[rec.slot] === stamp) return
    this.tableStamp[rec.slot] = stamp
    this.tableIndex[rec.slot] = peers.length
    this.firsts[rec.slot] = 0
    rec.hits++
    peers.push(rec)
  }

  /**
   * Records a claim of `key` by `rec` within the bounds announces obey; false past them (the caller stops claiming
   * for the rest of its call, so a full index is not searched for room digest after digest).
   */
  private claim (key: string, rec: PeerRecord, quota: number, want: number, cap: number): boolean {
    if (rec.count >= quota || !this.roomFor(rec, want)) return false
    this.addHolder(key, rec, cap)
    return true
  }

  /** {@link resolveRaw} with the holders as handed out to clients. */
  resolve (askerId: string | undefined, digests: PackedDigests, max = 4): ResolveAnswer {
    const raw = this.resolveRaw(askerId, digests, max)
    return { peers: raw.peers.map((p) => p.holder), counts: raw.counts, refs: raw.refs }
  }

  /**
   * Holders by hex digest, the shape `HolderResolver.resolve` answers with; with a `group` asked for, each key's
   * group first, marked `group: true` (as the scheduler client marks them from the wire answer), and its swarm's
   * size in `swarms`.
   */
  resolveMap (askerId: string | undefined, digests: readonly Buffer[], max = 4, group = 0): ResolvedHolders {
    const raw = this.resolveRaw(askerId, packDigests(digests), max, group)
    const out: ResolvedHolders = new Map<string, ChunkHolder[]>()
    const swarms = raw.swarms !== undefined ? new Map<string, number>() : undefined
    if (swarms !== undefined) out.swarms = swarms
    let j = 0
    for (let i = 0; i < digests.length; i++) {
      const swarm = raw.swarms?.[i] ?? 0
      if (swarms !== undefined && swarm > 0) swarms.set(digests[i].toString('hex'), swarm)
      const k = raw.counts[i]
      if (k === 0) continue
      const grouped = raw.groups?.[i] ?? 0
      const hs: ChunkHolder[] = []
      for (let e = 0; e < k; e++) {
        const h = raw.peers[raw.refs[j++]].holder
        hs.push(e < grouped ? { ...h, group: true } : h)
      }
      out.set(digests[i].toString('hex'), hs)
    }
    return out
  }

  /** The live holders of one digest (unranked), for tests and inspection. */
  holdersOf (digest: Uint8Array): string[] {
    const key = Buffer.from(digest.buffer, digest.byteOffset, digest.byteLength).toString('latin1')
    const v = this.shard(key).get(key)
    if (v === undefined) return []
    const out: string[] = []
    for (const ref of typeof v === 'number' ? [v] : v) {
      const rec = this.peers.live(ref)
      if (rec !== undefined) out.push(rec.id)
    }
    return out
  }

  /**
   * An in-process view for one peer, for the simulator's model mode and embedded use: the same contract as
   * `SchedulerClient` without a network (announces apply at once).
   */
  asPeer (id: string, info: PeerInfo): HolderResolver & ChunkAnnouncer {
    return {
      announce: (digests) => { this.announce(id, packDigests(digests), { info }) },
      withdraw: (digests) => { this.withdraw(id, packDigests(digests)) },
      resolve: async (digests, opts) => this.resolveMap(id, digests, opts?.max, opts?.group),
      report: (outcomes) => { this.report(id, outcomes) }
    }
  }

  stats (): IndexStats {
    let digests = 0
    for (const m of this.shards) digests += m.size
    return {
      peers: this.peers.size,
      digests,
      banned: this.peers.bannedCount(this.now()),
      entries: this.liveEntries,
      staleEntries: this.staleEntries,
      refused: this.refused,
      evictions: this.evictions,
      evictedEntries: this.evictedEntries,
      displacedPeers: this.displaced
    }
  }
}
