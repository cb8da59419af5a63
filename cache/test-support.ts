/**
 * Helpers shared by the cache tests: temporary directories and real blobs built with the rafs BlobWriter.
 */
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { BlobDataReader, BlobWriter, type ChunkInfo, type RafsBlobInfo } from '../rafs/index.js'

export async function tempDir (t: { after: (fn: () => Promise<void>) => void }, prefix = 'rafspeer-cache-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  t.after(async () => { await rm(dir, { recursive: true, force: true }) })
  return dir
}

export interface BuiltBlob {
  blob: RafsBlobInfo
  /** distinct chunks in ci order */
  chunks: ChunkInfo[]
  blobPath: string
  /** the uncompressed view BlobWriter wrote (`--blob-cache-dir`) */
  viewPath: string
  /** plaintext of each chunk, by ci index */
  plain: Buffer[]
}

/**
 * Builds a real data blob from files of the given sizes (random bytes; `shared` bytes are prepended to every
 * file so that blobs built with the same `shared` have a chunk in common).
 */
export async function buildBlob (dir: string, fileSizes: number[], opts: { chunkSize?: number, shared?: Buffer } = {}): Promise<BuiltBlob> {
  const writer = new BlobWriter({ blobDir: join(dir, 'blobs'), blobCacheDir: join(dir, 'view'), chunkSize: opts.chunkSize ?? 64 * 1024 })
  const seen = new Map<number, ChunkInfo>()
  for (const size of fileSizes) {
    const data = opts.shared !== undefined ? Buffer.concat([opts.shared, randomBytes(size)]) : randomBytes(size)
    for (const c of await writer.addFile(data)) seen.set(c.index, c)
  }
  const blob = await writer.finish()
  if (blob === undefined) throw new Error('empty blob')
  const chunks = [...seen.values()].sort((a, b) => a.index - b.index)
  const reader = await BlobDataReader.open({ blobPath: writer.outputs!.blobPath, blob })
  const plain: Buffer[] = []
  for (const c of chunks) plain[c.index] = await reader.readChunk(c)
  await reader.close()
  return { blob, chunks, blobPath: writer.outputs!.blobPath, viewPath: writer.outputs!.viewPath!, plain }
}
