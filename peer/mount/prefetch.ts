/**
 * Prefetch (docs/ARCHITECTURE.md, "one cold read"): which chunks a policy names — the bootstrap's prefetch table, a
 * path list, or the whole image — and a runner that feeds them to the fetcher at prefetch priority (reads always
 * go first, and the fetcher's prefetch bandwidth cap applies), a few slices in parallel. `all` goes blob by blob in
 * stored order so Range requests stay large; a table or list goes in its own order (the first-read order of a
 * recorded run), each group of it sorted by stored offset.
 */
import { readFile } from 'node:fs/promises'
import { describeError, type Logger } from '../../base/index.js'
import type { ChunkInfo, RafsReader } from '../../rafs/index.js'
import {
  PREFETCH_SLICE_CHUNKS, PREFETCH_SLICES_IN_FLIGHT, SWARM_PREFETCH_PATIENCE_MS, SWARM_SOURCE_SLICE_BYTES, swarmPickLimits, swarmPrefetchWait, swarmQuietTake, type Fetcher, type PrefetchAdvisor
} from '../fetch/index.js'
import type { PrefetchPolicy, PrefetchStatus } from './types.js'

/** chunks handed to the fetcher per call: small enough for progress, big enough for full batches */
const SLICE_CHUNKS = PREFETCH_SLICE_CHUNKS
/** stored bytes of an ordered list kept in order as one group (sorted by offset inside it) */
const GROUP_BYTES = 4 << 20
/**
 * A slice's chunks separated by at most this many stored bytes go out as one request with what lies between: a
 * recorded table names many small files near each other (a package's modules and their caches), and one request
 * for a few of them costs less than one round trip each.
 */
export const PREFETCH_GAP_BYTES = 128 << 10
const SLICES_IN_FLIGHT = PREFETCH_SLICES_IN_FLIGHT
export { SWARM_PREFETCH_PATIENCE_MS, SWARM_SOURCE_SLICE_BYTES }
const S_IFMT = 0o170000
const S_IFDIR = 0o040000
const S_IFREG = 0o100000

/** The paths of a prefetch list file: one absolute path per line; blank lines and `#` comments skipped. */
export async function readPrefetchList (file: string): Promise<string[]> {
  const text = await readFile(file, 'utf8')
  return text.split('\n').map(l => l.trim()).filter(l => l !== '' && !l.startsWith('#'))
}

/**
 * Chunks of the files at `nids` (a directory: every file below it, in directory order), in that order, each once:
 * a table recorded from a run (`rafspeer access-list`) lists files in first-read order, and prefetch keeps it.
 */
function chunksOfNids (reader: RafsReader, nids: number[]): ChunkInfo[] {
  const out: ChunkInfo[] = []
  const seenChunks = new Set<number>()
  const seen = new Set<number>()
  const visit = (start: number): void => {
    const stack = [start]
    while (stack.length > 0) {
      const nid = stack.pop()!
      if (seen.has(nid)) continue
      seen.add(nid)
      const ino = reader.inode(nid)
      const fmt = ino.mode & S_IFMT
      if (fmt === S_IFDIR) {
        const entries = reader.readdir(nid)
        for (let i = entries.length - 1; i >= 0; i--) {
          const n = entries[i]!.name.toString('latin1')
          if (n !== '.' && n !== '..') stack.push(entries[i]!.nid)
        }
      } else if (fmt === S_IFREG && ino.size > 0) {
        for (const p of reader.mapRange(nid, 0, ino.size)) {
          // blob indexes are small and ci < 2^32: one number per chunk
          const key = p.chunk.blobIndex * 0x1_0000_0000 + p.chunk.index
          if (seenChunks.has(key)) continue
          seenChunks.add(key)
          out.push(p.chunk)
        }
      }
    }
  }
  for (const nid of nids) visit(nid)
  return out
}

/**
 * Every chunk the image's files reference (the bootstrap's chunk table), by blob. A blob may hold more: chunks of
 * files a later layer deleted are in no table, and nothing ever reads them.
 */
export function referencedChunks (reader: RafsReader): Map<number, Map<number, ChunkInfo>> {
  const out = new Map<number, Map<number, ChunkInfo>>()
  for (const info of reader.chunkInfos()) {
    let m = out.get(info.blobIndex)
    if (m === undefined) out.set(info.blobIndex, m = new Map())
    m.set(info.index, info)
  }
  return out
}

/** One call to the fetcher: chunks of one blob, sorted by stored offset so adjacent ones share a request. */
export interface PrefetchSlice {
  blobIndex: number
  chunks: ChunkInfo[]
}

/** What a policy asks for, as slices in the order they should be fetched. */
export type PrefetchPlan = PrefetchSlice[]

/**
 * Cuts an ordered chunk list into slices that keep its order at the scale of a group (`SLICE_CHUNKS` chunks or
 * `GROUP_BYTES`, whichever comes first) and the blob's order inside one, so the first-read files come first and
 * their neighbours in the blob still go out as one Range request.
 */
export function orderedSlices (ordered: ChunkInfo[]): PrefetchPlan {
  const out: PrefetchPlan = []
  const flush = (group: ChunkInfo[]): void => {
    const byBlob = new Map<number, ChunkInfo[]>()
    for (const c of group) {
      let l = byBlob.get(c.blobIndex)
      if (l === undefined) byBlob.set(c.blobIndex, l = [])
      l.push(c)
    }
    for (const [blobIndex, chunks] of byBlob) out.push({ blobIndex, chunks: chunks.sort((a, b) => a.compressedOffset - b.compressedOffset) })
  }
  let group: ChunkInfo[] = []
  let bytes = 0
  for (const c of ordered) {
    group.push(c)
    bytes += c.compressedSize
    if (group.length >= SLICE_CHUNKS || bytes >= GROUP_BYTES) { flush(group); group = []; bytes = 0 }
  }
  if (group.length > 0) flush(group)
  return out
}

/**
 * The slices a policy asks for, in fetch order: `all` blob by blob in stored order; the prefetch table and path
 * lists in their order (first-read order, for a table recorded from a run). Paths that do not exist are reported
 * through `log` and skipped.
 */
export async function planPrefetch (reader: RafsReader, policy: PrefetchPolicy, log?: Logger): Promise<PrefetchPlan> {
  if (policy === 'none') return []
  if (policy === 'all') {
    const out: PrefetchPlan = []
    for (const [blobIndex, m] of referencedChunks(reader)) {
      const list = [...m.values()].sort((a, b) => a.compressedOffset - b.compressedOffset)
      for (let i = 0; i < list.length; i += SLICE_CHUNKS) out.push({ blobIndex, chunks: list.slice(i, i + SLICE_CHUNKS) })
    }
    return out
  }
  if (policy === 'table') return orderedSlices(chunksOfNids(reader, reader.prefetchNids))
  const paths = 'file' in policy ? await readPrefetchList(policy.file) : policy.paths
  const nids: number[] = []
  for (const p of paths) {
    try {
      nids.push(reader.lookup(p))
    } catch (err) {
      log?.warn('prefetch: skipping %s: %s', p, describeError(err))
    }
  }
  return orderedSlices(chunksOfNids(reader, nids))
}

/** Options of {@link runPrefetch}. */
export interface RunPrefetchOptions {
  signal: AbortSignal
  log?: Logger | undefined
  gapBytes?: number
  onFetched?: (blobIndex: number, chunks: ChunkInfo[]) => void
  /**
   * The node is one of a swarm (blob-level directory): each slice is what the advisor picks out of the chunks left
   * (the node's share of the registry's, those neighbours have rarest first), not the plan's next slice; chunks
   * waiting on other peers are taken later (see {@link SWARM_PREFETCH_PATIENCE_MS}). No gap filling: the bytes
   * between picked chunks are other peers' to fetch.
   */
  advisor?: PrefetchAdvisor | undefined
  /** see {@link SWARM_PREFETCH_PATIENCE_MS} */
  patienceMs?: number
}

/** One worker's next job: a slice of one blob; `source`: it holds chunks this node fetches from the registry for the swarm. */
interface PrefetchJob { bi: number, slice: ChunkInfo[], source?: boolean }

/** Hands out the plan's slices in order. */
function planOrder (plan: PrefetchPlan): { next: () => Promise<PrefetchJob | undefined>, done: (job: PrefetchJob) => void } {
  const jobs = plan.map(s => ({ bi: s.blobIndex, slice: s.chunks }))
  return { next: async () => jobs.shift(), done: () => {} }
}

/**
 * Hands out what the advisor picks, blob by blob in plan order (the chunks of each kept in the plan's order for
 * it), skipping chunks the cache got meanwhile (a read's), with one slice of registry chunks in flight at a time
 * (`sourceSlices`). Waits while every chunk left waits on other peers, until the swarm has been quiet for
 * `patienceMs`; then the next ones in plan order go anyway, a registry slice's worth at a time ({@link swarmQuietTake}), one
 * after another while it stays quiet.
 */
function swarmOrder (fetcher: Fetcher, reader: RafsReader, plan: PrefetchPlan, advisor: PrefetchAdvisor, signal: AbortSignal,
  patienceMs: number, skipped: (chunks: ChunkInfo[]) => void): { next: () => Promise<PrefetchJob | undefined>, done: (job: PrefetchJob) => void } {
  const left = new Map<number, ChunkInfo[]>()
  for (const s of plan) {
    let l = left.get(s.blobIndex)
    if (l === undefined) left.set(s.blobIndex, l = [])
    l.push(...s.chunks)
  }
  let lastNews = Date.now()
  // slices holding registry chunks handed out and not done yet (counted here: the next pick may run before the
  // worker that took one resumes)
  let sourceSlices = 0
  // a registry slice that ends lets the next pick take registry chunks again: a worker waiting for news looks again
  let slicesDone: (() => void) | undefined
  const take = (bi: number, chosen: ChunkInfo[], source: boolean, forced = false): PrefetchJob => {
    const set = new Set(chosen)
    left.set(bi, left.get(bi)!.filter(c => !set.has(c)))
    // a pick is news; taking chunks because the swarm is quiet is not (the next slice goes at once too)
    if (!forced) lastNews = Date.now()
    if (source) sourceSlices++
    return { bi, slice: [...chosen].sort((a, b) => a.compressedOffset - b.compressedOffset), source }
  }
  const pickNext = async (): Promise<PrefetchJob | undefined> => {
    for (;;) {
      signal.throwIfAborted()
      let first: number | undefined
      for (const [bi, chunks] of left) {
        const blobId = reader.blobs[bi]!.blobId
        const open = chunks.filter(c => !fetcher.cached(blobId, c.index))
        if (open.length < chunks.length) skipped(chunks.filter(c => fetcher.cached(blobId, c.index)))
        if (open.length === 0) { left.delete(bi); continue }
        left.set(bi, open)
        first ??= bi
        const picked = await advisor.pick(reader.blobs[bi]!, open, { ...swarmPickLimits(sourceSlices), signal })
        if (picked.chunks.length > 0) return take(bi, picked.chunks, picked.source > 0)
      }
      if (first === undefined) return undefined
      // every chunk left waits on another peer: once the swarm went quiet, the plan's next ones go by the read rules
      const quiet = swarmPrefetchWait(Date.now() - lastNews, patienceMs)
      if (quiet.force) return take(first, swarmQuietTake(left.get(first)!, c => c.compressedSize), true, true)
      const wait = quiet.waitMs
      const ours = new Promise<boolean>(resolve => { slicesDone = () => { resolve(false) } })
      // the advisor's wait is ended when ours wins (else it would hold its timer and a listener on `signal` on)
      const waitEnd = new AbortController()
      const news = advisor.changed(reader.blobs[first]!, wait, AbortSignal.any([signal, waitEnd.signal])).catch((err: unknown) => {
        if (signal.aborted) throw err
        return false
      })
      news.catch(() => {}) // once ours won, a late rejection has no one to tell
      try {
        if (await Promise.race([news, ours])) lastNews = Date.now()
      } finally {
        slicesDone = undefined
        waitEnd.abort()
      }
    }
  }
  // one pick at a time: two workers picking at once would both take the same chunks
  let turn: Promise<unknown> = Promise.resolve()
  return {
    next: async () => {
      const mine = turn.then(pickNext)
      turn = mine.catch(() => {})
      return await mine
    },
    done: job => {
      if (job.source !== true) return
      sourceSlices--
      slicesDone?.()
    }
  }
}

/** Runs a plan through the fetcher; `status` is updated as slices land. Never rejects: failures end in `status`. */
export async function runPrefetch (fetcher: Fetcher, reader: RafsReader, plan: PrefetchPlan, status: PrefetchStatus,
  opts: RunPrefetchOptions): Promise<void> {
  status.chunksTotal = 0
  status.bytesTotal = 0
  status.chunksDone = 0
  status.bytesDone = 0
  for (const s of plan) {
    status.chunksTotal += s.chunks.length
    for (const c of s.chunks) status.bytesTotal += c.uncompressedSize
  }
  if (status.chunksTotal === 0) { status.state = 'done'; return }
  status.state = 'running'
  // the slices are taken in plan order (or as a swarm's advisor picks them); the fetch queue puts every read before them
  const order = opts.advisor !== undefined
    ? swarmOrder(fetcher, reader, plan, opts.advisor, opts.signal, opts.patienceMs ?? SWARM_PREFETCH_PATIENCE_MS, chunks => {
      // taken by reads meanwhile: done
      status.chunksDone += chunks.length
      for (const c of chunks) status.bytesDone += c.uncompressedSize
    })
    : planOrder(plan)
  let failed = false
  try {
    // a few slices in flight keep the fetcher's prefetch slots busy between slices
    const worker = async (): Promise<void> => {
      for (let job = await order.next(); job !== undefined && !failed; job = await order.next()) {
        opts.signal.throwIfAborted()
        try {
          const bi = job.bi
          const neighbour = (ci: number): ChunkInfo | undefined => { try { return reader.chunkInfo(bi, ci) } catch { return undefined } }
          await fetcher.ensureChunks(reader.blobs[bi]!, job.slice, {
            priority: 'prefetch',
            signal: opts.signal,
            ...(opts.advisor === undefined ? { fillGaps: { neighbour, maxGapBytes: opts.gapBytes ?? PREFETCH_GAP_BYTES } } : {})
          })
        } catch (err) {
          failed = true // the other workers stop after their current slice
          throw err
        } finally {
          order.done(job)
        }
        status.chunksDone += job.slice.length
        for (const c of job.slice) status.bytesDone += c.uncompressedSize
        opts.onFetched?.(job.bi, job.slice)
      }
    }
    await Promise.all(Array.from({ length: Math.min(SLICES_IN_FLIGHT, plan.length) }, worker))
    status.state = 'done'
  } catch (err) {
    if (opts.signal.aborted) {
      status.state = 'cancelled'
    } else {
      status.state = 'failed'
      status.error = (err as Error).message
      opts.log?.warn('prefetch failed: %s', describeError(err))
    }
  }
}
