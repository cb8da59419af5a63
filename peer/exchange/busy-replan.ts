/**
 * When every holder of a chunk answered BUSY (blob-level swarm): the chunk is located again a moment later instead
 * of going to the registry, because by then more neighbours have it (a chunk wanted by thousands spreads from a few
 * holders whose upload slots are all taken at first). Pure, so the simulator's model mode runs the same rounds
 * (`sim/model/`: without it, 1,000 nodes cost the registry several copies of the image).
 */

/**
 * rounds of re-location after the first attempt, at most (≈ 9.5 s of pauses in all, below the fetcher's 10 s idle
 * deadline): 8 real daemons at 4 MiB/s, all waiting on the first one's registry fetches, ran out of 20 rounds
 * (≈ 4.5 s) and cost the registry 1.26 copies; with 40, 1.003
 */
export const DEFAULT_REPLAN_ROUNDS = 40
/** the first pause; it doubles each round up to {@link REPLAN_MAX_MS} */
export const REPLAN_BASE_MS = 20
export const REPLAN_MAX_MS = 250

/** The pause before re-location round `round` (1-based). */
export function replanDelayMs (round: number): number {
  return Math.min(REPLAN_MAX_MS, REPLAN_BASE_MS * 2 ** Math.max(0, Math.min(20, round - 1)))
}

/**
 * How long a neighbour's request waits for a chunk this node is fetching itself before it is answered BUSY (the
 * asker locates it again): two nodes whose fetches wait on each other's PENDING are otherwise stuck until the
 * fetcher's 10 s idle deadline.
 */
export const DEFAULT_BUSY_AFTER_PARK_MS = 1_000
