/**
 * What the neighbours of each blob have and are fetching, as they told us over `/rafspeer/have/1.0.0`: one bitfield
 * and one pending list per (blob, neighbour). Pure bookkeeping with an injected clock, so the simulator's model mode
 * runs the same code as the daemon.
 *
 * A PENDING promise is trusted for `pendingTtlMs` only: a neighbour that said it was fetching a chunk and then went
 * quiet (died, stalled, lost interest without saying so) must not keep others waiting; its HAVE or DROPPED ends the
 * promise earlier.
 */
import { clearBit, getBit, newBits, setBit, type HaveMessage } from './have-protocol.js'

export const DEFAULT_PENDING_TTL_MS = 10_000

interface PeerBlob {
  chunks: number
  bits: Uint8Array
  /** ci → when the peer said it started fetching it */
  pending: Map<number, number>
  have: number
}

/** Who can give chunk `ci` of a blob: holders first, then peers fetching it now (with when they started). */
export interface ChunkSources { have: string[], pending: Array<{ peerId: string, since: number }> }

export class HaveTable {
  /** blob (hex) → peer → its state */
  private readonly blobs = new Map<string, Map<string, PeerBlob>>()
  private readonly now: () => number
  private readonly pendingTtlMs: number

  constructor (init: { now?: () => number, pendingTtlMs?: number } = {}) {
    this.now = init.now ?? Date.now
    this.pendingTtlMs = init.pendingTtlMs ?? DEFAULT_PENDING_TTL_MS
  }

  /** Applies a message from `peer` about a blob (interest and want-have are not table state: ignored). */
  apply (peer: string, m: HaveMessage): void {
    switch (m.type) {
      case 'bitfield': {
        const per = this.peersOf(m.blob.toString('hex'), true)
        const bits = newBits(m.chunks)
        bits.set(m.bits.subarray(0, bits.length))
        let have = 0
        for (let i = 0; i < m.chunks; i++) if (getBit(bits, i)) have++
        const now = this.now()
        per.set(peer, { chunks: m.chunks, bits, pending: new Map(m.pending.filter(ci => !getBit(bits, ci)).map(ci => [ci, now])), have })
        return
      }
      case 'have':
      case 'pending':
      case 'dropped': {
        const st = this.blobs.get(m.blob.toString('hex'))?.get(peer)
        // updates before a bitfield: the peer broke the order; nothing to update
        if (st === undefined) return
        const now = this.now()
        for (const ci of m.indexes) {
          if (ci >= st.chunks) continue
          if (m.type === 'have') {
            if (!getBit(st.bits, ci)) { setBit(st.bits, ci); st.have++ }
            st.pending.delete(ci)
          } else if (m.type === 'pending') {
            if (!getBit(st.bits, ci)) st.pending.set(ci, now)
          } else {
            if (getBit(st.bits, ci)) { clearBit(st.bits, ci); st.have-- }
            st.pending.delete(ci)
          }
        }
        return
      }
      default:
    }
  }

  private peersOf (blobHex: string, create: true): Map<string, PeerBlob> {
    let per = this.blobs.get(blobHex)
    if (per === undefined && create) {
      per = new Map()
      this.blobs.set(blobHex, per)
    }
    return per as Map<string, PeerBlob>
  }

  /** The peer said it is done with a blob, or we are: forget its state of it. */
  forgetBlob (peer: string, blobHex: string): void {
    const per = this.blobs.get(blobHex)
    if (per === undefined) return
    per.delete(peer)
    if (per.size === 0) this.blobs.delete(blobHex)
  }

  /** The connection to `peer` is gone. */
  forgetPeer (peer: string): void {
    for (const [blob, per] of this.blobs) {
      per.delete(peer)
      if (per.size === 0) this.blobs.delete(blob)
    }
  }

  /** Who has chunk `ci` of the blob, and who is fetching it (promises younger than the TTL). */
  sources (blobHex: string, ci: number): ChunkSources {
    const out: ChunkSources = { have: [], pending: [] }
    const per = this.blobs.get(blobHex)
    if (per === undefined) return out
    const now = this.now()
    for (const [peer, st] of per) {
      if (ci >= st.chunks) continue
      if (getBit(st.bits, ci)) { out.have.push(peer); continue }
      const since = st.pending.get(ci)
      if (since === undefined) continue
      if (now - since > this.pendingTtlMs) { st.pending.delete(ci); continue }
      out.pending.push({ peerId: peer, since })
    }
    return out
  }

  /** Neighbours that have chunk `ci` (for rarest-first). */
  holders (blobHex: string, ci: number): number {
    const per = this.blobs.get(blobHex)
    if (per === undefined) return 0
    let n = 0
    for (const st of per.values()) if (ci < st.chunks && getBit(st.bits, ci)) n++
    return n
  }

  /** Neighbours that told us about the blob, and how many of its chunks each has. */
  /** Whether some neighbour has, or is fetching, a chunk of the blob within `window` indexes of `ci`. */
  activeNear (blobHex: string, ci: number, window: number): boolean {
    const per = this.blobs.get(blobHex)
    if (per === undefined) return false
    const now = this.now()
    for (const st of per.values()) {
      const lo = Math.max(0, ci - window)
      const hi = Math.min(st.chunks - 1, ci + window)
      for (let i = lo; i <= hi; i++) {
        if (getBit(st.bits, i)) return true
        const since = st.pending.get(i)
        if (since !== undefined && now - since <= this.pendingTtlMs) return true
      }
    }
    return false
  }

  neighbours (blobHex: string): Array<{ peerId: string, have: number, chunks: number }> {
    const per = this.blobs.get(blobHex)
    return per === undefined ? [] : [...per].map(([peerId, st]) => ({ peerId, have: st.have, chunks: st.chunks }))
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
