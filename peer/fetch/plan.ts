/**
 * Turns the missing chunks of one read into batches: runs of contiguous stored bytes, with small gaps filled and
 * each run extended forward with missing neighbours until it is at least `amplifyBytes` long (read
 * amplification, as nydusd's amplify_io), then split at `maxBatchBytes`. One batch is one source request.
 */
import type { ChunkInfo } from '../../rafs/index.js'

export interface PlanInput {
  /** the chunks the read needs and nobody is fetching yet, all of one blob */
  wanted: ChunkInfo[]
  /** chunks in that blob (the blob table's chunkCount) */
  chunkCount: number
  /** chunk-table lookup by ci, for gap filling and amplification; absent: neither */
  neighbour?: (ci: number) => ChunkInfo | undefined
  /** true when ci is neither cached nor being fetched, so it may join a batch */
  fetchable: (ci: number) => boolean
  amplifyBytes: number
  /** largest gap between wanted chunks filled with the chunks in it (default `amplifyBytes`) */
  gapBytes?: number
  maxBatchBytes: number
}

export interface PlannedBatch {
  chunks: ChunkInfo[]
  /** stored bytes */
  bytes: number
  /** chunks nobody asked for (gap fill and amplification) */
  extra: Set<ChunkInfo>
}

interface Run { chunks: ChunkInfo[], start: number, end: number, extra: Set<ChunkInfo> }

const endOf = (c: ChunkInfo): number => c.compressedOffset + c.compressedSize

export function planBatches (input: PlanInput): PlannedBatch[] {
  const { neighbour, amplifyBytes } = input
  const claimed = new Set<number>()
  const sorted: ChunkInfo[] = []
  for (const c of [...input.wanted].sort((a, b) => a.compressedOffset - b.compressedOffset)) {
    if (claimed.has(c.index)) continue
    claimed.add(c.index)
    sorted.push(c)
  }
  const usable = (ci: number, at: number): ChunkInfo | undefined => {
    if (neighbour === undefined || ci < 0 || ci >= input.chunkCount || claimed.has(ci) || !input.fetchable(ci)) return undefined
    const n = neighbour(ci)
    return n !== undefined && n.compressedOffset === at && n.compressedSize > 0 ? n : undefined
  }

  const runs: Run[] = []
  let cur: Run | undefined
  for (const c of sorted) {
    if (cur !== undefined && c.compressedOffset === cur.end) {
      cur.chunks.push(c); cur.end = endOf(c); continue
    }
    if (cur !== undefined && neighbour !== undefined) {
      const gap = fillGap(cur, c, input.gapBytes ?? amplifyBytes, usable)
      if (gap !== undefined) {
        for (const g of gap) { cur.chunks.push(g); cur.extra.add(g); claimed.add(g.index) }
        cur.chunks.push(c); cur.end = endOf(c); continue
      }
    }
    cur = { chunks: [c], start: c.compressedOffset, end: endOf(c), extra: new Set() }
    runs.push(cur)
  }

  for (const run of runs) {
    while (run.end - run.start < amplifyBytes) {
      const n = usable(run.chunks[run.chunks.length - 1]!.index + 1, run.end)
      if (n === undefined) break
      run.chunks.push(n); run.extra.add(n); claimed.add(n.index); run.end = endOf(n)
    }
  }

  // amplification may have reached the next run
  const merged: Run[] = []
  for (const run of runs) {
    const last = merged[merged.length - 1]
    if (last !== undefined && last.end === run.start) {
      last.chunks.push(...run.chunks); last.end = run.end
      for (const e of run.extra) last.extra.add(e)
    } else merged.push(run)
  }

  const out: PlannedBatch[] = []
  for (const run of merged) {
    let batch: PlannedBatch | undefined
    for (const c of run.chunks) {
      if (batch === undefined || (batch.bytes + c.compressedSize > input.maxBatchBytes && batch.chunks.length > 0)) {
        batch = { chunks: [], bytes: 0, extra: new Set() }
        out.push(batch)
      }
      batch.chunks.push(c); batch.bytes += c.compressedSize
      if (run.extra.has(c)) batch.extra.add(c)
    }
  }
  return out
}

/** The chunks between `run` and `next` when all are fetchable, contiguous and together ≤ `limit` bytes. */
function fillGap (run: Run, next: ChunkInfo, limit: number,
  usable: (ci: number, at: number) => ChunkInfo | undefined): ChunkInfo[] | undefined {
  const last = run.chunks[run.chunks.length - 1]!
  if (next.index <= last.index || next.compressedOffset - run.end > limit) return undefined
  const gap: ChunkInfo[] = []
  let at = run.end
  for (let ci = last.index + 1; ci < next.index; ci++) {
    const n = usable(ci, at)
    if (n === undefined) return undefined
    gap.push(n); at = endOf(n)
  }
  return at === next.compressedOffset ? gap : undefined
}
