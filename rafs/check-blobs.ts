/**
 * The blob half of `checkImage`: each blob file's name, tail and every chunk; or each `.blob.data` view's
 * referenced chunks. Blob problems are findings, never exceptions, so one bad blob does not hide another.
 */
import { stat } from 'node:fs/promises'
import { join } from 'node:path'
import type { ChunkInfo } from './model.js'
import type { RafsReader } from './reader.js'
import { BlobDataReader, fileByteSource, readBlobTail } from './blob-reader.js'
import type { BlobTail } from './blob-reader.js'
import type { CheckBlobReport, Findings } from './check.js'
import { sha256File } from '../base/index.js'

const msg = (err: unknown): string => err instanceof Error ? err.message : String(err)

async function exists (path: string): Promise<boolean> {
  try { return (await stat(path)).isFile() } catch { return false }
}

export async function checkBlobs (r: RafsReader, f: Findings, reports: CheckBlobReport[], referenced: Map<string, ChunkInfo>,
  opts: { blobDir?: string, blobCacheDir?: string }): Promise<void> {
  for (const [index, blob] of r.blobs.entries()) {
    const rep = reports[index]!
    const mine = [...referenced.values()].filter(c => c.blobIndex === index).sort((a, b) => a.index - b.index)
    if (opts.blobDir !== undefined) {
      const path = join(opts.blobDir, blob.blobId)
      rep.present = await exists(path)
      if (!rep.present) f.error(`blob ${blob.blobId} (index ${index}): file ${path} is missing`)
      else await checkBlobFile(r, f, rep, index, path, mine)
    }
    if (opts.blobCacheDir !== undefined) {
      const path = join(opts.blobCacheDir, `${blob.blobId}.blob.data`)
      rep.viewPresent = await exists(path)
      if (!rep.viewPresent) { f.error(`blob ${blob.blobId} (index ${index}): view ${path} is missing`); continue }
      const size = (await stat(path)).size
      if (size < blob.uncompressedSize) f.error(`blob ${blob.blobId}: view ${path} is ${size} bytes, shorter than uncompressed_size ${blob.uncompressedSize}`)
      rep.viewChunksVerified = 0
      const dr = await BlobDataReader.open({ viewPath: path, blob })
      try {
        for (const c of mine) {
          try { await dr.readChunk(c); rep.viewChunksVerified++ } catch (err) { f.error(`view of blob ${blob.blobId}: ${msg(err)}`) }
        }
      } finally { await dr.close() }
    }
  }
}

async function checkBlobFile (r: RafsReader, f: Findings, rep: CheckBlobReport, index: number, path: string, mine: ChunkInfo[]): Promise<void> {
  const blob = r.blobs[index]!
  const actual = await sha256File(path)
  rep.sha256Ok = actual === blob.blobId
  if (!rep.sha256Ok) f.error(`blob ${blob.blobId}: sha256 of ${path} is ${actual}, not its id`)
  let tail: BlobTail
  const src = await fileByteSource(path)
  try {
    tail = await readBlobTail(src, blob, { verifyImageBlob: true })
  } catch (err) {
    f.error(`blob ${blob.blobId}: ${msg(err)}`)
    return
  } finally { await src.close() }
  const where = `blob ${blob.blobId}`
  if (tail.ci.length !== blob.chunkCount) f.error(`${where}: ci array has ${tail.ci.length} entries, chunk_count is ${blob.chunkCount}`)
  // the bootstrap's chunk table and the blob's ci array must describe the same chunks
  const byIndex = new Map<number, ChunkInfo>()
  for (const c of mine) {
    byIndex.set(c.index, c)
    const e = tail.ci[c.index]
    if (e === undefined) { f.error(`${where}: chunk ${c.index} is referenced but the ci array has ${tail.ci.length} entries`); continue }
    if (e.compressedOffset !== c.compressedOffset || e.compressedSize !== c.compressedSize || e.uncompressedOffset !== c.uncompressedOffset ||
      e.uncompressedSize !== c.uncompressedSize || e.compressed !== c.compressed) {
      f.error(`${where}: ci entry ${c.index} (${e.compressedOffset}+${e.compressedSize} → ${e.uncompressedOffset}+${e.uncompressedSize}) differs from the chunk table (${c.compressedOffset}+${c.compressedSize} → ${c.uncompressedOffset}+${c.uncompressedSize})`)
    }
    const d = tail.digests?.[c.index]
    if (d !== undefined && !d.equals(c.digest)) f.error(`${where}: blob.digest[${c.index}] ${d.toString('hex')} differs from the chunk table's ${c.digest.toString('hex')}`)
  }
  rep.chunksVerified = 0
  const dr = await BlobDataReader.open({ blobPath: path, blob })
  try {
    for (const [i, e] of tail.ci.entries()) {
      // unreferenced chunks are still checked against blob.digest when the blob carries one
      const known = byIndex.get(i)
      const digest = known?.digest ?? tail.digests?.[i]
      const chunk: ChunkInfo = { ...e, digest: digest ?? Buffer.alloc(32), blobIndex: index, index: i, fileOffset: 0 }
      try {
        await dr.readChunk(chunk, { verify: digest !== undefined })
        if (digest !== undefined) rep.chunksVerified++
        else f.warn(`${where}: chunk ${i} decompresses but has no digest to verify against`)
      } catch (err) { f.error(`${where}: ${msg(err)}`) }
    }
  } finally { await dr.close() }
}
