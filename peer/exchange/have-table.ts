/**
 * What the neighbours of each blob have and are fetching, as they told us over `/rafspeer/have/1.0.0`: one bitfield
 * and one pending list per (blob, neighbour). Pure bookkeeping with an injected clock, so the simulator's model mode
 * runs the same code as the daemon.
 *
 * A PENDING promise is trusted for `pendingTtlMs` only: a neighbour that said it was fetching a chunk and then went
 * quiet (died, stalled, lost interest without saying so) must not keep others waiting; its HAVE or DROPPED ends the
 * promise earlier.
 *
 * Layout: per blob, the neighbours' bitfields are one matrix stored by chunk — row `ci` holds one bit per neighbour
 * (its slot, in the order its first bitfield came) — so "who has chunk ci", asked for every chunk a locator plans, reads
 * one row instead of every neighbour's bitfield, and updates about the chunks a swarm is busy with land in a few
 * rows. Per chunk the table also counts the neighbours that have it and those with a PENDING entry for it (old ones
 * included until a look-up drops them), so a chunk nobody has or fetches is answered without visiting anyone.
 */
import { getBit, newBits, type HaveMessage } from './have-protocol.js'

export const DEFAULT_PENDING_TTL_MS = 10_000

interface PeerBlob {
  peer: string
  chunks: number
  /** its column in the blob's matrix; slots only grow (a forgotten neighbour's stays empty until a compaction) */
  slot: number
  /** ci → when the peer said it started fetching it */
  pending: Map<number, number>
  have: number
}

/** The neighbours of one blob (see the file's comment). */
class BlobPeers {
  readonly byId = new Map<string, PeerBlob>()
  /** by slot; undefined for a forgotten neighbour's */
  slots: Array<PeerBlob | undefined> = []
  /** their peer ids by slot (what `sources` lists, without visiting each neighbour's state) */
  ids: Array<string | undefined> = []
  live = 0
  /** rows (chunks) and 32-bit words per row of `bits` */
  rows = 0
  words = 1
  bits = new Uint32Array(0)
  /** per chunk: neighbours whose bit is set */
  haves = new Uint32Array(0)
  /** per chunk: neighbours with a PENDING entry for it, expired or not */
  pendings = new Uint32Array(0)

  has (st: PeerBlob, ci: number): boolean {
    return (this.bits[ci * this.words + (st.slot >>> 5)]! & (1 << (st.slot & 31))) !== 0
  }

  set (st: PeerBlob, ci: number): void {
    this.bits[ci * this.words + (st.slot >>> 5)]! |= 1 << (st.slot & 31)
    st.have++
    this.haves[ci]!++
  }

  clear (st: PeerBlob, ci: number): void {
    this.bits[ci * this.words + (st.slot >>> 5)]! &= ~(1 << (st.slot & 31))
    st.have--
    this.haves[ci]!--
  }

  /** Room for `rows` chunks and `slots` neighbours (the matrix is laid out again when it grows). */
  fit (rows: number, slots: number): void {
    const words = Math.max(this.words, Math.ceil(slots / 32))
    if (rows <= this.rows && words === this.words) return
    const nrows = Math.max(rows, this.rows)
    const bits = new Uint32Array(nrows * words)
    for (let r = 0; r < this.rows; r++) bits.set(this.bits.subarray(r * this.words, (r + 1) * this.words), r * words)
    this.bits = bits
    this.words = words
    if (nrows > this.rows) {
      const haves = new Uint32Array(nrows)
      haves.set(this.haves)
      const pendings = new Uint32Array(nrows)
      pendings.set(this.pendings)
      this.haves = haves
      this.pendings = pendings
      this.rows = nrows
    }
  }

  /** A new neighbour's slot, after the others'. */
  add (st: PeerBlob): void {
    // forgotten neighbours' slots are given back (in order) once they are most of them
    if (this.slots.length >= 64 && this.live * 2 < this.slots.length) this.compact()
    st.slot = this.slots.length
    this.fit(this.rows, st.slot + 1)
    this.slots.push(st)
    this.ids.push(st.peer)
    this.live++
    this.byId.set(st.peer, st)
  }

  /** Takes a neighbour's state out: its bits, its counts, its slot. */
  remove (st: PeerBlob): void {
    for (let i = 0; i < st.chunks; i++) if (this.has(st, i)) this.clear(st, i)
    for (const ci of st.pending.keys()) this.pendings[ci]!--
    this.slots[st.slot] = undefined
    this.ids[st.slot] = undefined
    this.live--
    this.byId.delete(st.peer)
  }

  private compact (): void {
    const old = this.slots
    const oldBits = this.bits
    const oldWords = this.words
    const live = old.filter((st): st is PeerBlob => st !== undefined)
    this.words = Math.max(1, Math.ceil((live.length + 1) / 32))
    this.bits = new Uint32Array(this.rows * this.words)
    this.slots = live
    this.ids = live.map(st => st.peer)
    live.forEach((st, slot) => {
      const from = st.slot
      st.slot = slot
      for (let r = 0; r < this.rows; r++) {
        if ((oldBits[r * oldWords + (from >>> 5)]! & (1 << (from & 31))) !== 0) this.bits[r * this.words + (slot >>> 5)]! |= 1 << (slot & 31)
      }
    })
  }
}

/** Who can give chunk `ci` of a blob: holders first, then peers fetching it now (with when they started). */
export interface ChunkSources { have: string[], pending: Array<{ peerId: string, since: number }> }

export class HaveTable {
  /** blob (hex) → its neighbours' states */
  private readonly blobs = new Map<string, BlobPeers>()
  private readonly now: () => number
  private readonly pendingTtlMs: number

  constructor (init: { now?: () => number, pendingTtlMs?: number } = {}) {
    this.now = init.now ?? Date.now
    this.pendingTtlMs = init.pendingTtlMs ?? DEFAULT_PENDING_TTL_MS
  }

  /**
   * Applies a message from `peer` about a blob (interest and want-have are not table state: ignored). `blobHex` is
   * the message's blob in hex, when the caller has it already.
   */
  apply (peer: string, m: HaveMessage, blobHex?: string): void {
    switch (m.type) {
      case 'bitfield': {
        const hex = blobHex ?? m.blob.toString('hex')
        let per = this.blobs.get(hex)
        if (per === undefined) this.blobs.set(hex, (per = new BlobPeers()))
        const bits = newBits(m.chunks)
        bits.set(m.bits.subarray(0, bits.length))
        const now = this.now()
        const pending = new Map(m.pending.filter(ci => !getBit(bits, ci)).map(ci => [ci, now]))
        // a new bitfield replaces the old state in its place
        let st = per.byId.get(peer)
        if (st === undefined) {
          per.fit(m.chunks, per.slots.length + 1)
          st = { peer, chunks: m.chunks, slot: 0, pending, have: 0 }
          per.add(st)
        } else {
          for (let i = 0; i < st.chunks; i++) if (per.has(st, i)) per.clear(st, i)
          for (const ci of st.pending.keys()) per.pendings[ci]!--
          per.fit(m.chunks, per.slots.length)
          st.chunks = m.chunks
          st.pending = pending
        }
        for (let i = 0; i < m.chunks; i++) if (getBit(bits, i)) per.set(st, i)
        for (const ci of pending.keys()) per.pendings[ci]!++
        return
      }
      case 'have':
      case 'pending':
      case 'dropped': {
        const per = this.blobs.get(blobHex ?? m.blob.toString('hex'))
        const st = per?.byId.get(peer)
        // updates before a bitfield: the peer broke the order; nothing to update
        if (per === undefined || st === undefined) return
        const now = this.now()
        for (const ci of m.indexes) {
          if (ci >= st.chunks) continue
          if (m.type === 'have') {
            if (!per.has(st, ci)) per.set(st, ci)
            if (per.pendings[ci]! > 0 && st.pending.delete(ci)) per.pendings[ci]!--
          } else if (m.type === 'pending') {
            if (per.has(st, ci)) continue
            if (!st.pending.has(ci)) per.pendings[ci]!++
            st.pending.set(ci, now)
          } else {
            if (per.has(st, ci)) per.clear(st, ci)
            if (per.pendings[ci]! > 0 && st.pending.delete(ci)) per.pendings[ci]!--
          }
        }
        return
      }
      default:
    }
  }

  /** The peer said it is done with a blob, or we are: forget its state of it. */
  forgetBlob (peer: string, blobHex: string): void {
    const per = this.blobs.get(blobHex)
    const st = per?.byId.get(peer)
    if (per === undefined || st === undefined) return
    per.remove(st)
    if (per.live === 0) this.blobs.delete(blobHex)
  }

  /** The connection to `peer` is gone. */
  forgetPeer (peer: string): void {
    for (const [blob, per] of this.blobs) {
      const st = per.byId.get(peer)
      if (st === undefined) continue
      per.remove(st)
      if (per.live === 0) this.blobs.delete(blob)
    }
  }

  /** Who has chunk `ci` of the blob, and who is fetching it (promises younger than the TTL). */
  sources (blobHex: string, ci: number): ChunkSources {
    const out: ChunkSources = { have: [], pending: [] }
    const per = this.blobs.get(blobHex)
    if (per === undefined || ci >= per.rows) return out
    if (per.haves[ci]! > 0) {
      const words = per.words
      const row = ci * words
      for (let w = 0; w < words; w++) {
        let x = per.bits[row + w]!
        while (x !== 0) {
          const low = x & -x
          out.have.push(per.ids[w * 32 + 31 - Math.clz32(low)]!)
          x ^= low
        }
      }
    }
    if (per.pendings[ci]! > 0) {
      const now = this.now()
      for (const st of per.slots) {
        if (st === undefined || ci >= st.chunks || st.pending.size === 0 || per.has(st, ci)) continue
        const since = st.pending.get(ci)
        if (since === undefined) continue
        if (now - since > this.pendingTtlMs) { st.pending.delete(ci); per.pendings[ci]!--; continue }
        out.pending.push({ peerId: st.peer, since })
      }
    }
    return out
  }

  /** Neighbours that have chunk `ci` (for rarest-first). */
  holders (blobHex: string, ci: number): number {
    return this.blobs.get(blobHex)?.haves[ci] ?? 0
  }

  /** Whether some neighbour has, or is fetching, a chunk of the blob within `window` indexes of `ci`. */
  activeNear (blobHex: string, ci: number, window: number): boolean {
    const per = this.blobs.get(blobHex)
    if (per === undefined) return false
    const lo = Math.max(0, ci - window)
    const hi = Math.min(per.rows - 1, ci + window)
    let pending = false
    for (let i = lo; i <= hi; i++) {
      if (per.haves[i]! > 0) return true
      if (per.pendings[i]! > 0) pending = true
    }
    if (!pending) return false
    const now = this.now()
    for (const st of per.slots) {
      if (st === undefined || st.pending.size === 0) continue
      for (let i = lo; i <= Math.min(st.chunks - 1, hi); i++) {
        const since = st.pending.get(i)
        if (since !== undefined && now - since <= this.pendingTtlMs) return true
      }
    }
    return false
  }

  /**
   * Whether `peer` reads the blob behind chunk `ci`: it told us it has or is fetching some of the `window` chunks
   * before `ci`, and none of `ci` and the `window` after it. Nothing near `ci` says nothing (the peer may have just
   * begun, its first PENDING on its way; or it reads elsewhere): false.
   */
  behind (blobHex: string, peer: string, ci: number, window: number): boolean {
    const per = this.blobs.get(blobHex)
    const st = per?.byId.get(peer)
    if (per === undefined || st === undefined || ci < 1 || ci >= st.chunks) return false
    const now = this.now()
    const active = (i: number): boolean => {
      if (per.has(st, i)) return true
      const since = st.pending.get(i)
      return since !== undefined && now - since <= this.pendingTtlMs
    }
    for (let i = ci; i <= Math.min(st.chunks - 1, ci + window); i++) if (active(i)) return false
    for (let i = ci - 1; i >= Math.max(0, ci - window); i--) if (active(i)) return true
    return false
  }

  /** Neighbours that told us about the blob, and how many of its chunks each has. */
  neighbours (blobHex: string): Array<{ peerId: string, have: number, chunks: number }> {
    const per = this.blobs.get(blobHex)
    if (per === undefined) return []
    const out: Array<{ peerId: string, have: number, chunks: number }> = []
    for (const st of per.slots) if (st !== undefined) out.push({ peerId: st.peer, have: st.have, chunks: st.chunks })
    return out
  }

  /**
   * Prefetch order: the chunks fewest neighbours have first (so the swarm's copies spread instead of everyone
   * taking the same common ones), ties in blob order (sequential reads stay sequential).
   */
  rarestFirst (blobHex: string, indexes: readonly number[]): number[] {
    const counts = new Map(indexes.map(ci => [ci, this.holders(blobHex, ci)]))
    return [...indexes].sort((a, b) => (counts.get(a)! - counts.get(b)!) || a - b)
  }
}
