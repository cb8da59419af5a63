/**
 * Who gets room in a full holder index. Identities cost nothing (a fresh Ed25519 key per connection), so bounds
 * that are first come, first served let a few fake peers announcing millions of random digests fill the index and
 * lock every honest peer out. Instead, room is shared by weight, and a full index makes room by evicting whoever
 * holds the most for its weight:
 *
 * - A peer's weight is 1 until another registered peer reports a verified delivery from it (a "voucher"), then
 *   `provenWeight`: serving others is what admits an identity to a larger share.
 * - While the index is less than `openFill` full, a peer may announce up to `maxDigestsPerPeer` (an unproven one
 *   up to `unprovenMaxDigests`, so a few fresh keys cost the index little). Past it, its
 *   quota shrinks to its weighted fair share of the index (never below `minQuota`, so a newcomer can always
 *   announce a working set), and to its own cap if it was evicted before.
 * - When the index is full, a peer that asks for room takes it from the peer with the most entries per weight, and
 *   only if that peer holds more per weight than the asker would after its announce: max-min fairness, so a peer
 *   holding a realistic cache is never evicted by one that floods, while a flooder is evicted by anyone smaller.
 *   The evicted peer loses its whole holdings at once (O(1): its slot's generation moves on) and its cap becomes
 *   half of what it held, so repeated floods shrink geometrically.
 * - When the peer table is full, a newcomer takes the slot of a sampled peer of no greater weight that was asked
 *   for least and registered first; proven peers are never displaced by unproven ones.
 *
 * Vouchers can be forged by identities that vouch for each other; they then compete as proven peers, and fairness
 * still keeps them from evicting any peer holding less per weight than they do.
 */
import type { PeerRecord } from './peer-table.js'
import type { Reputation } from './ranking.js'

export interface AdmissionPolicy {
  maxEntries: number
  maxDigestsPerPeer: number
  /** fill (live entries / maxEntries) from which quotas shrink to fair shares (default 0.5) */
  openFill: number
  /** weight of a peer others vouched for, against 1 for an unproven one (default 16) */
  provenWeight: number
  /** the smallest quota under pressure (default 4096 digests: a few GiB of chunks) */
  minQuota: number
  /** digests an unproven peer may hold at all (default 262 144: 256 GiB of 1 MiB chunks) */
  unprovenMaxDigests: number
}

export const DEFAULT_ADMISSION = { openFill: 0.5, provenWeight: 16, minQuota: 4096, unprovenMaxDigests: 262_144 }
/** peers sampled when the table is full and one must make way */
export const EVICTION_SAMPLE = 32

export const isProven = (rep: Reputation): boolean => rep.vouchers !== undefined && rep.vouchers.size > 0

export const weightOf = (rep: Reputation, policy: Pick<AdmissionPolicy, 'provenWeight'>): number =>
  isProven(rep) ? policy.provenWeight : 1

/**
 * Digests `rec` may hold now, given the live entries and the sum of all registered peers' weights.
 */
export function quotaOf (rec: PeerRecord, live: number, totalWeight: number, policy: AdmissionPolicy): number {
  const most = isProven(rec.rep) ? policy.maxDigestsPerPeer : Math.min(policy.maxDigestsPerPeer, policy.unprovenMaxDigests)
  if (live < policy.maxEntries * policy.openFill) return most
  const share = Math.floor(policy.maxEntries * weightOf(rec.rep, policy) / Math.max(1, totalWeight))
  return Math.min(most, rec.rep.cap, Math.max(policy.minQuota, share))
}

/**
 * The peer to evict so that `claimant` can add `want` more entries to a full index, or undefined when nobody
 * holds more per weight than the claimant would.
 */
export function victimFor (peers: Iterable<PeerRecord>, claimant: PeerRecord, want: number, policy: AdmissionPolicy): PeerRecord | undefined {
  const claimantLoad = (claimant.count + want) / weightOf(claimant.rep, policy)
  let best: PeerRecord | undefined
  let bestLoad = claimantLoad
  for (const p of peers) {
    if (p === claimant || p.count === 0) continue
    const load = p.count / weightOf(p.rep, policy)
    if (load > bestLoad) { best = p; bestLoad = load }
  }
  return best
}

/** The cap of a peer whose `count` entries were just evicted. */
export const capAfterEviction = (count: number, policy: AdmissionPolicy): number => Math.max(policy.minQuota, Math.floor(count / 2))

/**
 * Of `sample`, the peer a newcomer of weight `newcomerWeight` may displace from a full peer table: lowest weight
 * first, then the one asked for least, then the longest registered; never a peer weighing more than the newcomer.
 */
export function displaceable (sample: readonly PeerRecord[], newcomerWeight: number, policy: AdmissionPolicy): PeerRecord | undefined {
  let best: PeerRecord | undefined
  let bestW = Infinity
  for (const p of sample) {
    const w = weightOf(p.rep, policy)
    if (w > newcomerWeight) continue
    if (best === undefined || w < bestW || (w === bestW && (p.hits < best.hits || (p.hits === best.hits && p.since < best.since)))) {
      best = p
      bestW = w
    }
  }
  return best
}
