/**
 * What a peer has the scheduler record for it, kept on the client: the digests it holds, those the scheduler took
 * it for a holder of because it asked (claims), and the changes not sent yet. The first two are the truth a new
 * session sends whole (its first frame resets what the scheduler had), so they survive a restarted scheduler, a move
 * to another one, or updates a scheduler lost. Digests are kept as 32-byte one-byte strings.
 */
import { DIGEST_BYTES } from './protocol.js'

/** claims remembered for the next session; past it the oldest are forgotten (about 80 bytes each) */
const MAX_CLAIMS = 1 << 18

export class Holdings {
  private readonly held = new Set<string>()
  /**
   * oldest first. At blob level these claims are the only record that the peer works on a blob: a new session's
   * reset would drop them if they were not sent again.
   */
  private readonly claimed = new Set<string>()
  private readonly toAnnounce = new Set<string>()
  private readonly toWithdraw = new Set<string>()

  get heldCount (): number { return this.held.size }
  get claimedCount (): number { return this.claimed.size }
  /** changes waiting to be sent */
  get changes (): number { return this.toAnnounce.size + this.toWithdraw.size }

  announce (digests: Buffer[]): void {
    for (const k of keys(digests)) {
      if (this.held.has(k)) continue
      this.held.add(k)
      this.claimed.delete(k)
      this.toWithdraw.delete(k)
      this.toAnnounce.add(k)
    }
  }

  /** No longer held, nor claimed. */
  withdraw (digests: Buffer[]): void {
    for (const k of keys(digests)) {
      const held = this.held.delete(k)
      if (!this.claimed.delete(k) && !held) continue
      this.toAnnounce.delete(k)
      this.toWithdraw.add(k)
    }
  }

  /** Claims given up (digests announced since are left alone); withdrawn even when not remembered as claims. */
  release (digests: Buffer[]): void {
    for (const k of keys(digests)) {
      if (this.held.has(k)) continue
      this.claimed.delete(k)
      this.toAnnounce.delete(k)
      this.toWithdraw.add(k)
    }
  }

  /** The scheduler took this peer for a holder of `digests` (it asked for them). */
  claim (digests: readonly Buffer[]): void {
    for (const k of keys(digests)) {
      if (this.held.has(k)) continue
      // re-inserted, so the set stays oldest first
      this.claimed.delete(k)
      this.claimed.add(k)
      if (this.claimed.size > MAX_CLAIMS) this.claimed.delete(this.claimed.values().next().value!)
    }
  }

  /** The changes since the last call, which are forgotten. */
  takeChanges (): { withdraw: string[], announce: string[] } {
    const out = { withdraw: [...this.toWithdraw], announce: [...this.toAnnounce] }
    this.dropChanges()
    return out
  }

  /** Everything to record for a new session; the pending changes are part of it, so they are forgotten. */
  takeAll (): string[] {
    this.dropChanges()
    return [...this.held, ...this.claimed]
  }

  dropChanges (): void {
    this.toAnnounce.clear()
    this.toWithdraw.clear()
  }
}

function * keys (digests: readonly Buffer[]): Generator<string> {
  for (const d of digests) if (d.length === DIGEST_BYTES) yield d.toString('latin1')
}
