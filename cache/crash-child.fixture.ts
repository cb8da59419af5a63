/**
 * Child process of crash.test.ts: opens a cache, puts chunks of one blob as fast as it can and reports progress
 * on stdout, until the parent SIGKILLs it. Argument: a JSON job file.
 */
import { readFile } from 'node:fs/promises'
import { BlobDataReader, type ChunkInfo, type RafsBlobInfo } from '../rafs/index.js'
import { BlobCache } from './index.js'

interface Job { cacheDir: string, blobPath: string, blob: RafsBlobInfo & { blobTocDigest: string }, chunks: Array<ChunkInfo & { digest: string }> }

const job = JSON.parse(await readFile(process.argv[2]!, 'utf8')) as Job
const blob: RafsBlobInfo = { ...job.blob, blobTocDigest: Buffer.from(job.blob.blobTocDigest, 'hex') }
const chunks: ChunkInfo[] = job.chunks.map(c => ({ ...c, digest: Buffer.from(c.digest, 'hex') }))
const reader = await BlobDataReader.open({ blobPath: job.blobPath, blob })
const cache = await BlobCache.open(job.cacheDir)
await cache.registerBlob(blob)
let done = 0
// several puts in flight at once, like a fetcher, so the kill lands between data writes and index commits
for (let i = 0; i < chunks.length; i += 8) {
  await Promise.all(chunks.slice(i, i + 8).map(async c => await cache.putChunk(blob.blobId, c, await reader.readChunk(c))))
  done += 8
  if (done % 64 === 0) process.stdout.write(`progress ${done}\n`)
}
process.stdout.write('finished\n')
// never closes: the parent kills it
setInterval(() => {}, 1000)
