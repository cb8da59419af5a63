/**
 * Orders a blob's live holders for one asker with the scheduler's ranking (`../ranking.ts`), the same pure
 * functions the chunk index and the simulator run, over records either implementation builds from what it stores.
 */
import { badPenalty, baseScore, scoreFor, zoneAffinity, zonePath, type LoadView, type Reputation } from '../ranking.js'
import type { RankingWeights } from '../types.js'
import type { BlobHolder } from './index.js'

/** A live, unbanned holder with addresses, as an implementation read it. */
export interface Candidate {
  peerId: string
  addrs: string[]
  zone: string
  load: LoadView
  /** the ranking decays its counts to `now` */
  rep: Reputation
}

/**
 * The best `max` of `candidates` for an asker in `askerZone`, best first. Each candidate draws its own jitter, so
 * successive answers rotate among near-equal holders.
 */
export function rankHolders (candidates: readonly Candidate[], askerZone: string, max: number, now: number,
  weights: RankingWeights, random: () => number): Array<{ candidate: Candidate, holder: BlobHolder }> {
  const askerPath = zonePath(askerZone)
  const scored = candidates.map((c) => {
    const base = baseScore(c.load, c.rep, now, weights)
    return { c, score: scoreFor(base, zoneAffinity(askerPath, zonePath(c.zone)), badPenalty(c.rep), weights, random()) }
  })
  scored.sort((a, b) => b.score - a.score)
  return scored.slice(0, max).map(({ c, score }) => ({ candidate: c, holder: { peerId: c.peerId, addrs: c.addrs, zone: c.zone, score } }))
}
