/**
 * Sessions, checkpoints and re-verification. Each open starts a generation (`meta!generation`) and removes the
 * clean marker; a clean close writes `meta!clean = meta!checkpoint = generation`. An open that finds the last
 * generation without its clean marker re-verifies every chunk whose record carries a generation after
 * `meta!checkpoint`, then moves the checkpoint: a crash during recovery simply repeats it.
 */
import { constants as fsc } from 'node:fs'
import { open } from 'node:fs/promises'
import { digestChunk } from '../rafs/index.js'
import { BlobState } from './blob-state.js'
import { MetaKey, type BlobRecord, type CacheIndex, type ChunkRecord } from './cache-index.js'
import { readFull } from './chunk-io.js'
import { CacheError } from './errors.js'
import type { Logger } from '../base/index.js'
import { CACHE_FORMAT_VERSION, type VerifyReport } from './types.js'

/** Stamps a fresh index with our version; refuses any other version, and records that carry none. */
export async function checkVersion (index: CacheIndex, dir: string): Promise<void> {
  const version = await index.getMeta(MetaKey.VERSION)
  if (version === undefined) {
    if (!(await index.isEmpty())) throw new CacheError('RAFSPEER_ERR_CACHE_VERSION', `cache index in ${dir} has records but no format version: not a rafspeer cache, refusing to use it`)
    await index.putMeta({ [MetaKey.VERSION]: String(CACHE_FORMAT_VERSION) }, { sync: true })
  } else if (version !== String(CACHE_FORMAT_VERSION)) {
    throw new CacheError('RAFSPEER_ERR_CACHE_VERSION', `cache in ${dir} has format version ${version}; this rafspeer reads version ${CACHE_FORMAT_VERSION}. Use a matching rafspeer or remove the directory`)
  }
}

/** Starts a new generation. `recoverAfter` is set when the previous one ended uncleanly. */
export async function beginSession (index: CacheIndex): Promise<{ generation: number, recoverAfter: number | undefined }> {
  const prev = Number(await index.getMeta(MetaKey.GENERATION) ?? 0)
  const clean = await index.getMeta(MetaKey.CLEAN) === String(prev)
  const checkpoint = Number(await index.getMeta(MetaKey.CHECKPOINT) ?? 0)
  const generation = prev + 1
  // unclean until close() says otherwise
  await index.putMeta({ [MetaKey.GENERATION]: String(generation), [MetaKey.CLEAN]: undefined }, { sync: true })
  return { generation, recoverAfter: prev > 0 && !clean ? checkpoint : undefined }
}

/** Every chunk of earlier generations is now verified or came from a clean session. */
export async function endRecovery (index: CacheIndex, generation: number): Promise<void> {
  await index.putMeta({ [MetaKey.CHECKPOINT]: String(generation - 1) }, { sync: true })
}

export async function markClean (index: CacheIndex, generation: number): Promise<void> {
  await index.putMeta({ [MetaKey.CLEAN]: String(generation), [MetaKey.CHECKPOINT]: String(generation) }, { sync: true })
}

/** Re-hashes the present chunks of a blob marked after `afterGeneration` (one reused buffer). */
export async function findBadChunks (index: CacheIndex, s: BlobState, afterGeneration: number): Promise<{ report: VerifyReport, bad: ChunkRecord[] }> {
  const report: VerifyReport = { checked: 0, bad: 0, bytes: 0 }
  let buf = Buffer.alloc(0)
  const bad: ChunkRecord[] = []
  for await (const c of index.chunks(s.record.blobId, { afterGeneration })) {
    if (!s.has(c.index) || s.writing.has(c.index)) continue
    if (buf.length < c.uncompressedSize) buf = Buffer.allocUnsafe(Math.max(c.uncompressedSize, 1 << 20))
    const view = buf.subarray(0, c.uncompressedSize)
    const n = await readFull(s.fh, view, c.uncompressedOffset)
    report.checked++
    report.bytes += c.uncompressedSize
    if (n !== view.length || !digestChunk(s.record.digester, view).equals(c.digest)) bad.push(c)
  }
  report.bad = bad.length
  return { report, bad }
}

/**
 * Opens a blob's data file and rebuilds its presence bitmap from the index. A missing or resized file means the
 * data is gone or not ours: its records are dropped and undefined returned.
 */
export async function loadBlobState (index: CacheIndex, rec: BlobRecord, path: string, rangeBytes: number, log: Logger): Promise<BlobState | undefined> {
  const fh = await open(path, fsc.O_RDWR).catch(() => undefined)
  if (fh === undefined || (await fh.stat()).size !== rec.uncompressedSize) {
    log.error('blob %s: data file missing or resized, dropping its index records', rec.blobId)
    await fh?.close()
    await index.removeBlob(rec.blobId)
    return undefined
  }
  const state = new BlobState(rec, path, fh, rangeBytes)
  const stray: number[] = []
  for await (const c of index.chunks(rec.blobId)) {
    if (c.index >= rec.chunkCount || c.uncompressedOffset + c.uncompressedSize > rec.uncompressedSize) stray.push(c.index)
    else state.set(c.index, c.uncompressedOffset, c.uncompressedSize, rec.lastAccess)
  }
  if (stray.length > 0) await index.unmarkChunks(stray.map(i => ({ blobId: rec.blobId, index: i })))
  return state
}
