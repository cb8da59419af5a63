/**
 * Who fetches a chunk from the registry when no neighbour has it or is fetching it: of the blob's first peers (the
 * scheduler hands every asker of a blob the same first few), the one whose hash with the chunk is highest
 * (rendezvous hashing). Every peer computes the same answer without talking, so a chunk wanted by many at once is
 * fetched from the source about once: the assignee fetches (and announces PENDING), the others wait for it a
 * little, then fetch themselves if it never said anything (it may not want that chunk at all). A member of the group
 * that knows the assignee reads the blob behind the chunk does not wait for it: the next member by hash that is not
 * behind fetches it. Pure functions, so the simulator's model mode runs the same code.
 */

/**
 * how many graces a node outside the scheduler's group waits for a chunk in a region its neighbours are busy with
 * (the model, `sim/model/`: 1,000 nodes cost the registry 1.8 copies of a 3 GB image with 1 grace)
 */
export const OUTSIDE_GROUP_GRACE_FACTOR = 4
/**
 * A blob's holders are asked of the scheduler again this soon while its group is not full yet (it is still filling:
 * the first peers of a swarm would otherwise each plan over a different partial group, and fetch the same chunks)
 */
export const INCOMPLETE_GROUP_REFRESH_MS = 250

/**
 * Whether a looked-up group is old: a full one after `refreshMs`; one still filling, or none at all (the scheduler's
 * answer came too late or not at all), after {@link INCOMPLETE_GROUP_REFRESH_MS}. A node without the group plans as if
 * alone (every chunk's assignee is itself): 8 daemons starting together, three of whose first look-ups went
 * unanswered within their timeout, each read from the registry for the 5 s until their next look-up (1.4–1.9 copies).
 */
export function groupStale (group: readonly string[] | undefined, groupSize: number, ageMs: number, refreshMs: number): boolean {
  return ageMs >= (group === undefined || group.length < groupSize ? Math.min(refreshMs, INCOMPLETE_GROUP_REFRESH_MS) : refreshMs)
}

/** chunks either side of a wanted one whose neighbours' activity makes it "a region the swarm is busy with" */
export const NEAR_WINDOW = 8
/**
 * chunks a member must trail a chunk by before the other members stop waiting for it to fetch that chunk: what a
 * peer fetches from its neighbours is told at the have service's next flush, so a member level with this one can
 * look a few chunks behind (the model, `sim/model/`, 300 nodes × 3 GB: with no margin two members at the front each
 * took the same chunks, 2–3% more registry egress; with 1, 0.6%; with 2, none; once busy holders sent askers on
 * (REDIRECT) the front moved faster and 2 cost 2.4%, 3 0.7%, 4 none)
 */
export const BEHIND_MARGIN = 4

/** a 32-bit hash of (peer, blob, chunk) with good avalanche (FNV-1a, then murmur3's finaliser) */
export function rendezvousScore (peerId: string, blobHex: string, ci: number): number {
  let h = 0x811c9dc5
  const mix = (s: string): void => {
    for (let i = 0; i < s.length; i++) {
      h ^= s.charCodeAt(i)
      h = Math.imul(h, 0x01000193)
    }
  }
  mix(peerId)
  h ^= 0xff
  mix(blobHex)
  h ^= ci
  h = Math.imul(h, 0x01000193)
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

/** The peer of `peers` that fetches chunk `ci` of the blob from the source; undefined when `peers` is empty. */
export function backToSourceAssignee (peers: readonly string[], blobHex: string, ci: number): string | undefined {
  let best: string | undefined
  let bestScore = -1
  for (const p of peers) {
    const s = rendezvousScore(p, blobHex, ci)
    if (s > bestScore || (s === bestScore && best !== undefined && p < best)) { best = p; bestScore = s }
  }
  return best
}

/**
 * Why a peer fetches a chunk from the registry: `assignee` — it is the chunk's assignee in the scheduler's group;
 * `noGroup` — it is the assignee in a group of the peers it knows, the scheduler having named none (yet); `ahead` —
 * it is the one after the assignee, a member it knows reads behind the chunk ({@link PlanInput.behind}); `grace` —
 * the chunk's assignee is another peer, and it said nothing within the grace.
 */
export type SourceReason = 'assignee' | 'noGroup' | 'ahead' | 'grace'

/**
 * What a peer does about a chunk it wants: `peer` — ask a neighbour that has it or is fetching it; `source` — fetch
 * it from the registry now ({@link SourceReason}); `wait` — the assignee is another peer that may be about to say
 * PENDING: look again after `retryInMs`.
 */
export type ChunkPlan =
  | { action: 'peer', peers: string[], ask?: true }
  | { action: 'source', reason: SourceReason }
  | { action: 'wait', retryInMs: number }

export interface PlanInput {
  self: string
  /** the blob's first peers as the scheduler gave them (self included or not) */
  group: readonly string[]
  /**
   * `group` is the scheduler's (every asker was named the same peers, this one among them only if it is one): a
   * peer outside it is never an assignee; otherwise this peer counts itself in
   */
  stable?: boolean
  blobHex: string
  ci: number
  /** neighbours that have the chunk */
  have: readonly string[]
  /** neighbours fetching it now */
  pending: readonly string[]
  /** how long this peer has wanted the chunk */
  wantedForMs: number
  /** how long to wait for another assignee's PENDING before fetching from the source */
  graceMs: number
  /** whether neighbours have or fetch chunks near this one (asked only outside a stable group, past the grace) */
  activeNear?: () => boolean
  /**
   * whether `peer` is known to read the blob behind chunk `ci` (`HaveTable.behind` over {@link NEAR_WINDOW}); asked
   * of the other members by a member of a stable group, for a chunk nobody has or fetches
   */
  behind?: (peer: string, ci: number) => boolean
  /**
   * a node outside the scheduler's group asks the chunk's assignee for it past the grace, before the registry (the
   * plan is then `peer` with `ask`; the caller asks once per want, and the next plan of the chunk goes to the
   * registry): see {@link planChunk}
   */
  askAssignee?: boolean
  /**
   * the first chunk of the read `ci` belongs to (its run of consecutive chunks in the fetch batch, {@link runStarts}):
   * a member is judged behind the read, not behind each chunk of it. A member level with this one has nothing near the batch's last chunks yet, and would count as
   * behind them; every member planning the same batch so would take those chunks itself (traced: three nodes
   * reading a 16-chunk file together, one was the assignee of 11 of its chunks). Small chunks make long batches:
   * 8 real nodes × 64 MiB of 256 KiB chunks, 3 pairs, slowest 28.0 → 26.5 s, egress alike; the model is unchanged
   */
  front?: number
}

/**
 * For each chunk index of a fetch batch, the first index of the run of consecutive ones it is in: a sequential read's
 * batch is one run; a prefetch's picks (rarest first, scattered) are each their own.
 */
export function runStarts (indexes: Iterable<number>): Map<number, number> {
  const sorted = [...new Set(indexes)].sort((a, b) => a - b)
  const out = new Map<number, number>()
  let start = sorted[0] ?? 0
  for (let i = 0; i < sorted.length; i++) {
    if (i > 0 && sorted[i] !== sorted[i - 1]! + 1) start = sorted[i]!
    out.set(sorted[i]!, start)
  }
  return out
}

export function planChunk (p: PlanInput): ChunkPlan {
  // holders and peers fetching it alike: the neighbour source spreads its asks over them, so a chunk wanted by many
  // flows down a tree instead of all from the uplink of the first to have it
  if (p.have.length > 0 || p.pending.length > 0) return { action: 'peer', peers: [...p.have, ...p.pending] }
  const group = p.group.length === 0 ? [p.self] : p.stable === true || p.group.includes(p.self) ? p.group : [...p.group, p.self]
  const inGroup = group.includes(p.self)
  // a member of the scheduler's group passes over the members it knows read the blob behind this chunk: such an
  // assignee comes to the chunk only after those it reads now, and the group's front (the whole swarm follows it)
  // would wait out the grace for it, chunk after chunk. The next member by hash that is not behind takes it; every
  // member ahead names the same one, and its PENDING goes out at once (`HaveService.flushBlob`), so the member
  // behind finds it when it gets there. (The model: 1,000 nodes, p50 29.1 -> 19.9 s.)
  const at = Math.min(p.ci, p.front ?? p.ci) - BEHIND_MARGIN
  const candidates = p.stable === true && inGroup && p.behind !== undefined && at > 0
    ? group.filter(m => m === p.self || !p.behind!(m, at))
    : group
  const assignee = backToSourceAssignee(candidates, p.blobHex, p.ci)
  // a node outside the group, in a region of the blob its neighbours are busy with, waits longer: the group is
  // fetching what the swarm reads, and its PENDING may be a few hops away (a lone read keeps the short grace)
  const grace = p.stable === true && p.wantedForMs >= p.graceMs && !inGroup && p.activeNear?.() === true
    ? p.graceMs * OUTSIDE_GROUP_GRACE_FACTOR
    : p.graceMs
  if (assignee === p.self) {
    if (p.stable !== true) return { action: 'source', reason: 'noGroup' }
    return { action: 'source', reason: candidates === group || backToSourceAssignee(group, p.blobHex, p.ci) === p.self ? 'assignee' : 'ahead' }
  }
  if (p.wantedForMs >= grace) {
    // a node outside the scheduler's group hears of a chunk only from the neighbours it follows, and at a swarm's
    // start they are as new as it is: the members' PENDING is out of its sight. The chunk's assignee is the one
    // likely to have it or to be fetching it: asked, it sends it, holds the request until its own copy lands, or
    // says NOT_FOUND, and the chunk goes to the registry a round trip later. (Real, 16 nodes × 24 MiB at 2 MiB/s
    // prefetching all on a loaded machine, traced: reads starting up to 3 s apart, each outsider fetched its first
    // read's 31 chunks from the registry that a member had PENDING. Builds alternating, 5 pairs: 1.22–2.43 copies,
    // mean 1.77, before; 1.11–1.50, mean 1.24, with the asks, lower in every pair.) Once per want: asked again (a
    // BUSY holder's chunks are planned anew) it could hold a read until its deadline.
    if (p.askAssignee === true && p.stable === true && !inGroup && assignee !== undefined) return { action: 'peer', peers: [assignee], ask: true }
    return { action: 'source', reason: 'grace' }
  }
  return { action: 'wait', retryInMs: grace - p.wantedForMs }
}
