/**
 * Prefetch (docs/ARCHITECTURE.md, "one cold read"): which chunks a policy names — the bootstrap's prefetch table, a path list, or the
 * whole image — and a runner that feeds them to the fetcher at prefetch priority (reads always go first, and
 * the fetcher's prefetch bandwidth cap applies), blob by blob in stored order so Range requests stay large.
 */
import { readFile } from 'node:fs/promises'
import { describeError, type Logger } from '../../base/index.js'
import type { ChunkInfo, RafsReader } from '../../rafs/index.js'
import type { Fetcher } from '../fetch/index.js'
import type { PrefetchPolicy, PrefetchStatus } from './types.js'

/** chunks handed to the fetcher per call: small enough for progress, big enough for full batches */
const SLICE_CHUNKS = 64
const SLICES_IN_FLIGHT = 4
const S_IFMT = 0o170000
const S_IFDIR = 0o040000
const S_IFREG = 0o100000

/** The paths of a prefetch list file: one absolute path per line; blank lines and `#` comments skipped. */
export async function readPrefetchList (file: string): Promise<string[]> {
  const text = await readFile(file, 'utf8')
  return text.split('\n').map(l => l.trim()).filter(l => l !== '' && !l.startsWith('#'))
}

/** Chunks of the files at `nids` (directories: every file below them), deduplicated, by blob. */
function chunksOfNids (reader: RafsReader, nids: number[]): Map<number, Map<number, ChunkInfo>> {
  const out = new Map<number, Map<number, ChunkInfo>>()
  const seen = new Set<number>()
  const stack = [...nids]
  while (stack.length > 0) {
    const nid = stack.pop()!
    if (seen.has(nid)) continue
    seen.add(nid)
    const ino = reader.inode(nid)
    const fmt = ino.mode & S_IFMT
    if (fmt === S_IFDIR) {
      for (const e of reader.readdir(nid)) {
        const n = e.name.toString('latin1')
        if (n !== '.' && n !== '..') stack.push(e.nid)
      }
    } else if (fmt === S_IFREG && ino.size > 0) {
      for (const p of reader.mapRange(nid, 0, ino.size)) {
        let m = out.get(p.chunk.blobIndex)
        if (m === undefined) out.set(p.chunk.blobIndex, m = new Map())
        m.set(p.chunk.index, p.chunk)
      }
    }
  }
  return out
}

/**
 * Every chunk the image's files reference (the bootstrap's chunk table), by blob. A blob may hold more: chunks of
 * files a later layer deleted are in no table, and nothing ever reads them.
 */
export function referencedChunks (reader: RafsReader): Map<number, Map<number, ChunkInfo>> {
  const out = new Map<number, Map<number, ChunkInfo>>()
  for (const { info } of reader.chunkTableEntries()) {
    let m = out.get(info.blobIndex)
    if (m === undefined) out.set(info.blobIndex, m = new Map())
    if (!m.has(info.index)) m.set(info.index, reader.chunkInfo(info.blobIndex, info.index))
  }
  return out
}

/**
 * The chunks a policy asks for, per blob index, sorted by stored offset. Paths that do not exist are reported
 * through `log` and skipped.
 */
export async function planPrefetch (reader: RafsReader, policy: PrefetchPolicy, log?: Logger): Promise<Map<number, ChunkInfo[]>> {
  let byBlob: Map<number, Map<number, ChunkInfo>>
  if (policy === 'none') return new Map()
  if (policy === 'all') byBlob = referencedChunks(reader)
  else if (policy === 'table') byBlob = chunksOfNids(reader, reader.prefetchNids)
  else {
    const paths = 'file' in policy ? await readPrefetchList(policy.file) : policy.paths
    const nids: number[] = []
    for (const p of paths) {
      try {
        nids.push(reader.lookup(p))
      } catch (err) {
        log?.warn('prefetch: skipping %s: %s', p, describeError(err))
      }
    }
    byBlob = chunksOfNids(reader, nids)
  }
  const out = new Map<number, ChunkInfo[]>()
  for (const [bi, m] of byBlob) out.set(bi, [...m.values()].sort((a, b) => a.compressedOffset - b.compressedOffset))
  return out
}

/** Runs a plan through the fetcher; `status` is updated as slices land. Never rejects: failures end in `status`. */
export async function runPrefetch (fetcher: Fetcher, reader: RafsReader, plan: Map<number, ChunkInfo[]>, status: PrefetchStatus,
  opts: { signal: AbortSignal, log?: Logger | undefined }): Promise<void> {
  status.chunksTotal = 0
  status.bytesTotal = 0
  status.chunksDone = 0
  for (const list of plan.values()) {
    status.chunksTotal += list.length
    for (const c of list) status.bytesTotal += c.uncompressedSize
  }
  if (status.chunksTotal === 0) { status.state = 'done'; return }
  status.state = 'running'
  const jobs: Array<{ bi: number, slice: ChunkInfo[] }> = []
  for (const [bi, list] of plan) {
    for (let i = 0; i < list.length; i += SLICE_CHUNKS) jobs.push({ bi, slice: list.slice(i, i + SLICE_CHUNKS) })
  }
  try {
    // a few slices in flight keep the fetcher's prefetch slots busy between slices
    const worker = async (): Promise<void> => {
      for (let job = jobs.shift(); job !== undefined; job = jobs.shift()) {
        opts.signal.throwIfAborted()
        try {
          await fetcher.ensureChunks(reader.blobs[job.bi]!, job.slice, { priority: 'prefetch', signal: opts.signal })
        } catch (err) {
          jobs.length = 0 // the other workers stop after their current slice
          throw err
        }
        status.chunksDone += job.slice.length
      }
    }
    await Promise.all(Array.from({ length: Math.min(SLICES_IN_FLIGHT, jobs.length) }, worker))
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
