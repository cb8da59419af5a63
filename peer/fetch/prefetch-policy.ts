/**
 * A swarm prefetch's pace, as pure decisions the daemon's prefetch runner (`peer/mount/prefetch.ts`, with the blob
 * locator as its advisor) and the model (`sim/model/prefetch.ts`) both take: how much one slice holds, how many run at
 * once, the limits of the next pick, and what a prefetch whose every chunk waits on other peers does.
 */

/** chunks one prefetch slice holds at most (one call to the fetcher) */
export const PREFETCH_SLICE_CHUNKS = 64
/** prefetch slices in flight at once, keeping the fetcher's prefetch slots busy between slices */
export const PREFETCH_SLICES_IN_FLIGHT = 4
/**
 * A swarm prefetch keeps one slice of the chunks it fetches from the registry for the swarm in flight, of at most
 * this many stored bytes: the registry's bandwidth, shared by the group's members, goes to few requests, each chunk
 * arrives soon, and a neighbour's read waiting for one of them (its PENDING) is not held up behind many others.
 * (8 daemons, all caps 4 MiB/s, prefetching all, 5 pairs: 24 MiB image, registry copies 2.05 → 1.74 and p50
 * 16.3 → 13.3 s with 1 MiB instead of 4; 64 MiB, 3 pairs: 1.29 → 1.18, p50 29.5 → 28.5 s.)
 */
export const SWARM_SOURCE_SLICE_BYTES = 1 << 20
/**
 * A swarm prefetch whose chunks all wait on other peers takes the next ones in its own order anyway once the blob's
 * swarm has been quiet this long (nothing picked, no neighbour's news of the blob: the peer assigned to them may not
 * prefetch, or may be gone): the fetch then goes by the read rules, a short grace for that peer's PENDING, then the
 * registry
 */
export const SWARM_PREFETCH_PATIENCE_MS = 3_000
/**
 * The chunks a swarm prefetch takes once the swarm went quiet ({@link swarmPrefetchWait}'s `force`): the next ones in
 * its own order, as many as one registry slice holds ({@link SWARM_SOURCE_SLICE_BYTES} of stored bytes, at least
 * one). They go by the read rules, mostly to the registry: a swarm of hundreds whose quiet members each took a whole
 * slice of 64 paid the registry 4.9 copies of the image (the model: 256 nodes × 64 MiB at 4 MiB/s, registry 16 MiB/s,
 * prefetching all; one registry slice at a time, 2.0), and 101 copies with the registry at 4 MiB/s (4.5). A lone
 * prefetcher among peers that do not prefetch still moves: quiet takes are not news, so the next goes at once.
 */
export function swarmQuietTake<T> (left: readonly T[], storedBytes: (c: T) => number): T[] {
  const out: T[] = []
  let bytes = 0
  for (const c of left) {
    const b = storedBytes(c)
    if (out.length > 0 && bytes + b > SWARM_SOURCE_SLICE_BYTES) break
    out.push(c)
    bytes += b
    if (out.length >= PREFETCH_SLICE_CHUNKS) break
  }
  return out
}

/** how often a waiting swarm prefetch looks again when nothing about the blob changed */
export const SWARM_PREFETCH_RECHECK_MS = 250

/** The limits of a swarm prefetch's next pick ({@link prefetchPick}): no registry chunks while a slice of them is in flight. */
export function swarmPickLimits (sourceSlicesInFlight: number): { max: number, maxSource: number, maxSourceBytes: number } {
  return { max: PREFETCH_SLICE_CHUNKS, maxSource: sourceSlicesInFlight > 0 ? 0 : PREFETCH_SLICE_CHUNKS, maxSourceBytes: SWARM_SOURCE_SLICE_BYTES }
}

/**
 * What a swarm prefetch whose every chunk waits on other peers does, the blob's swarm quiet for `quietMs`: take the
 * next ones in its own order (`force`), or look again in `waitMs` (or at the next news of the blob).
 */
export function swarmPrefetchWait (quietMs: number, patienceMs = SWARM_PREFETCH_PATIENCE_MS): { force: true } | { force: false, waitMs: number } {
  if (quietMs >= patienceMs) return { force: true }
  return { force: false, waitMs: Math.min(SWARM_PREFETCH_RECHECK_MS, Math.max(1, patienceMs - quietMs)) }
}
