/**
 * How long a fetch waits on a swarm that is slow but moving, as a pure decision the fetcher (`flights.ts`) and the
 * model (`sim/model/`) both take.
 */
/**
 * Whether the chunks a neighbour fetch still waits for are spreading through the swarm: one of `waiting` has more
 * holders than at the last look (`seen`, brought up to date). The fetcher's idle deadline then starts over, and a
 * read's chunk is not handed to the registry yet (`readHandOffMs`), instead of sending them to the registry: a chunk a thousand nodes want at once reaches them through chains of peers parked
 * on each other's PENDING, and their fetches, begun together, met their 20 s deadlines together while it was still
 * on its way — 950 ranged GETs of the same four chunks at once (the model, 1,000 nodes × 64 MiB at 4 MiB/s,
 * prefetching all: 175 copies from the registry, p50 1,403 s; with this, 1.109 copies, p50 50.4 s). A PENDING cycle
 * (nobody has the chunk) spreads nothing, and still meets the deadline.
 */
export function spreading (waiting: readonly number[], holders: (ci: number) => number, seen: Map<number, number>): boolean {
  let grew = false
  for (const ci of waiting) {
    const h = holders(ci)
    if (h > (seen.get(ci) ?? 0)) grew = true
    seen.set(ci, h)
  }
  return grew
}
