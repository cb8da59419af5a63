/**
 * The scheduler's registered peers, each in a numbered slot, and their reputations. A peer's holdings are recorded
 * in the digest map as `ref = gen << 16 | slot`; moving the slot's generation on (a drop, or a reset on reconnect)
 * makes every ref of the old generation stale at once. Free slots are reused first-in first-out, so one slot's
 * 14-bit generation comes round only after the slot was freed 16 384 times.
 */
import type { ChunkHolder } from '../p2p/index.js'
import type { PeerInfo } from './types.js'
import { MAX_ADDRS } from './protocol.js'
import { isBanned, newReputation, zonePath, type LoadView, type Reputation } from './ranking.js'

export const SLOT_BITS = 16
export const SLOT_MASK = (1 << SLOT_BITS) - 1
const GEN_MASK = 0x3fff
export const HARD_MAX_PEERS = 1 << SLOT_BITS

/** One registered peer. */
export interface PeerRecord extends LoadView {
  readonly id: string
  readonly slot: number
  /** `gen << 16 | slot`: what the digest map stores for this peer's holdings */
  ref: number
  addrs: string[]
  zone: string
  zonePath: string[]
  intervalMs: number
  lastSeen: number
  /** live entries (digests this peer holds in the index) */
  count: number
  /** when this registration began */
  readonly since: number
  /** resolve answers that named this peer as a holder (what others asked of it, its usefulness) */
  hits: number
  rep: Reputation
  /** what resolvers hand out for this peer (shared, never mutated once built) */
  holder: ChunkHolder
  /** cache for the server: this peer's encoded RESOLVED table entry */
  wire: Uint8Array | undefined
}

export class PeerTable {
  private readonly byId = new Map<string, PeerRecord>()
  private readonly reps = new Map<string, Reputation>()
  private readonly slots: Array<PeerRecord | undefined>
  private readonly gens: Uint16Array
  /** FIFO ring of free slots */
  private readonly free: Int32Array
  private freeHead = 0
  private freeCount: number

  constructor (readonly maxPeers: number, private readonly defaultIntervalMs: number) {
    this.slots = new Array(maxPeers).fill(undefined)
    this.gens = new Uint16Array(maxPeers)
    this.free = new Int32Array(maxPeers)
    for (let i = 0; i < maxPeers; i++) this.free[i] = i
    this.freeCount = maxPeers
  }

  get size (): number { return this.byId.size }

  get (id: string): PeerRecord | undefined { return this.byId.get(id) }

  values (): IterableIterator<PeerRecord> { return this.byId.values() }

  /** The live record a ref points at, or undefined when the ref is stale. */
  live (ref: number): PeerRecord | undefined {
    const rec = this.slots[ref & SLOT_MASK]
    return rec !== undefined && rec.ref === ref ? rec : undefined
  }

  /** Whatever peer sits in the ref's slot now, stale ref or not. */
  inSlotOf (ref: number): PeerRecord | undefined { return this.slots[ref & SLOT_MASK] }

  reputation (id: string): Reputation | undefined { return this.reps.get(id) }

  /** The peer's record, registering it if there is room; undefined when the table is full. */
  register (id: string, now: number): PeerRecord | undefined {
    const known = this.byId.get(id)
    if (known !== undefined) return known
    if (this.freeCount === 0) return undefined
    const slot = this.free[this.freeHead]
    this.freeHead = (this.freeHead + 1) % this.maxPeers
    this.freeCount--
    let rep = this.reps.get(id)
    if (rep === undefined) {
      rep = newReputation(now)
      this.reps.set(id, rep)
      this.boundReputations()
    }
    const rec: PeerRecord = {
      id,
      slot,
      ref: (this.gens[slot] << SLOT_BITS) | slot,
      addrs: [],
      zone: '',
      zonePath: [],
      intervalMs: this.defaultIntervalMs,
      lastSeen: now,
      count: 0,
      since: now,
      hits: 0,
      rep,
      holder: { peerId: id, addrs: [] },
      wire: undefined,
      uploadSlots: 0,
      uploadBps: 0,
      activeUploads: 0,
      recentUploadBps: 0,
      pending: 0,
      pendingAt: now
    }
    this.slots[slot] = rec
    this.byId.set(id, rec)
    return rec
  }

  /** Reputations outlive registrations (a ban survives a re-join) but not without bound. */
  private boundReputations (): void {
    if (this.reps.size <= this.maxPeers * 2) return
    let looked = 0
    for (const id of this.reps.keys()) {
      if (++looked > 64) return
      if (!this.byId.has(id)) { this.reps.delete(id); return }
    }
  }

  /** Moves the peer to a new generation: all its refs go stale. The caller accounts for `rec.count` first. */
  renew (rec: PeerRecord): void {
    this.gens[rec.slot] = (this.gens[rec.slot] + 1) & GEN_MASK
    rec.ref = (this.gens[rec.slot] << SLOT_BITS) | rec.slot
    rec.count = 0
  }

  /** Unregisters the peer (its refs go stale) and frees its slot. */
  drop (rec: PeerRecord): void {
    this.renew(rec)
    this.slots[rec.slot] = undefined
    this.byId.delete(rec.id)
    this.free[(this.freeHead + this.freeCount) % this.maxPeers] = rec.slot
    this.freeCount++
  }

  /** Up to `k` registered peers from random slots (repeats possible), for choosing whom to evict cheaply. */
  sample (k: number, random: () => number): PeerRecord[] {
    const out: PeerRecord[] = []
    if (this.byId.size === 0) return out
    for (let i = 0; i < k * 2 && out.length < k; i++) {
      const rec = this.slots[Math.floor(random() * this.maxPeers)]
      if (rec !== undefined) out.push(rec)
    }
    return out
  }

  setInfo (rec: PeerRecord, info: PeerInfo): void {
    rec.addrs = info.addrs.slice(0, MAX_ADDRS)
    rec.zone = info.zone
    rec.zonePath = zonePath(info.zone)
    rec.uploadSlots = info.uploadSlots
    rec.uploadBps = info.uploadBps
    rec.holder = { peerId: rec.id, addrs: rec.addrs }
    rec.wire = undefined
  }

  bannedCount (now: number): number {
    let n = 0
    for (const rep of this.reps.values()) if (isBanned(rep, now)) n++
    return n
  }
}
