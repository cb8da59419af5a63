/**
 * Range reads of Nydus data blobs, chunk by chunk, every chunk verified. nydusd and nydus-snapshotter read a RAFS
 * data blob by `Range` through a mirror; a range of an opaque blob has no digest of its own, but a chunk of a RAFS
 * blob has one, in the image's bootstrap. So when a manifest the mirror served names a blob beside a bootstrap layer
 * (`containerd.io/snapshot/nydus-bootstrap`), a `Range` of that blob is answered from the chunks it covers: their
 * stored bytes are fetched from the upstream (whole chunks, with the client's credentials), each is decompressed and
 * hashed against the bootstrap's digest, and only then do its bytes leave. A chunk that fails cuts the response
 * before any of its bytes. Bytes between chunks (the blob's chunk table and ToC at its end) have no chunk digest and
 * are relayed as they come.
 *
 * @example
 * ```ts
 * const rafs = new RafsRanges({ client, dir: '/var/lib/rafspeer/proxy/bootstraps' })
 * rafs.noteManifest('ghcr.io', 'team/app', manifestBytes)
 * if (rafs.knows(digest)) await rafs.send(req, res, { start, end }, signal)
 * ```
 */
import type { ServerResponse } from 'node:http'
import { mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { LRUCache } from 'lru-cache'
import { partitionPoint, type Logger } from '../base/index.js'
import { extractBootstrap, findBootstrapLayer } from '../image/index.js'
import { RafsReader, decompressChunk, digestChunk, type Compressor, type Digester } from '../rafs/index.js'
import { MediaTypes, type Descriptor, type ImageManifest, type RegistryClient } from '../registry/index.js'
import { ProxyError } from './errors.js'
import { writeBytes } from './send.js'

/** stored bytes asked of the upstream in one Range request, at most (whole chunks, so one chunk may exceed it) */
const WINDOW_BYTES = 8 << 20

/** What a range needs of one chunk. */
interface StoredChunk { offset: number, size: number, plainSize: number, compressed: boolean, digest: Buffer }

/** A RAFS data blob's chunks in stored order, and how to check them. */
export interface BlobChunks { compressor: Compressor, digester: Digester, chunks: StoredChunk[] }

interface Where { host: string, repository: string, bootstrap: Descriptor }

export interface RafsRangeCounters {
  /** ranges answered chunk by chunk */
  ranges: number
  chunksVerified: number
  /** chunks whose upstream bytes did not match the bootstrap (each cut its response) */
  badChunks: number
  /** bytes between chunks (chunk tables, ToC) relayed unchecked */
  relayedGapBytes: number
}

export interface RafsRangeRequest {
  host: string
  repository: string
  digest: string
  authorization: string | null
}

export class RafsRanges {
  /** data blob digest → where its bootstrap is */
  private readonly blobs = new LRUCache<string, Where>({ max: 20_000 })
  /** bootstrap digest → its blobs' chunk lists, by blob digest */
  private readonly indexes = new LRUCache<string, Promise<Map<string, BlobChunks>>>({ max: 32 })
  readonly counters: RafsRangeCounters = { ranges: 0, chunksVerified: 0, badChunks: 0, relayedGapBytes: 0 }

  constructor (private readonly c: { client: RegistryClient, dir: string, log?: Logger }) {}

  /** A manifest passed through: if it is a Nydus image's, its data blobs are RAFS blobs of its bootstrap. */
  noteManifest (host: string, repository: string, bytes: Buffer): void {
    let m: ImageManifest
    try { m = JSON.parse(bytes.toString('utf8')) as ImageManifest } catch { return }
    if (!Array.isArray(m.layers)) return
    const bootstrap = findBootstrapLayer(m)
    if (bootstrap === undefined) return
    for (const l of m.layers) {
      if (l !== bootstrap && typeof l.digest === 'string') this.blobs.set(l.digest, { host, repository, bootstrap })
    }
  }

  knows (digest: string): boolean { return this.blobs.has(digest) }

  /**
   * Sends bytes `[start, end)` of the blob (the caller has sent the 206 head): chunks checked before they leave, gaps
   * relayed. Rejects (having sent fewer bytes) when a chunk fails or the upstream does.
   */
  async send (req: RafsRangeRequest, res: ServerResponse, range: { start: number, end: number }, signal: AbortSignal,
    onBytes: (n: number) => void): Promise<void> {
    const blob = await this.chunksOf(req, signal)
    this.counters.ranges++
    const ref = { registry: req.host, repository: req.repository }
    const call = { signal, authorization: req.authorization }
    let pos = range.start
    while (pos < range.end) {
      signal.throwIfAborted()
      let i = firstEndingAfter(blob.chunks, pos)
      const c = blob.chunks[i]
      if (c === undefined || c.offset > pos) {
        // bytes no chunk covers: up to the next chunk (or the end), as the upstream sends them
        const to = Math.min(range.end, c?.offset ?? range.end)
        const bytes = await this.c.client.fetchBlobRange(ref, req.digest, pos, to - 1, call)
        this.counters.relayedGapBytes += bytes.length
        await writeBytes(res, bytes, signal)
        onBytes(bytes.length)
        pos = to
        continue
      }
      // a run of adjacent chunks from the one holding `pos`, up to the window (at least that one chunk)
      const runStart = c.offset
      let runEnd = c.offset + c.size
      for (i++; i < blob.chunks.length; i++) {
        const n = blob.chunks[i]!
        if (n.offset !== runEnd || runEnd >= range.end || n.offset + n.size - runStart > WINDOW_BYTES) break
        runEnd = n.offset + n.size
      }
      const stored = await this.c.client.fetchBlobRange(ref, req.digest, runStart, runEnd - 1, call)
      for (let k = firstEndingAfter(blob.chunks, runStart); k < blob.chunks.length && blob.chunks[k]!.offset < runEnd; k++) {
        const ch = blob.chunks[k]!
        this.check(blob, ch, stored.subarray(ch.offset - runStart, ch.offset - runStart + ch.size), req.digest)
      }
      const from = Math.max(pos, runStart) - runStart
      const to = Math.min(range.end, runEnd) - runStart
      await writeBytes(res, stored.subarray(from, to), signal)
      onBytes(to - from)
      pos = runStart + to
    }
  }

  private check (blob: BlobChunks, c: StoredChunk, stored: Buffer, digest: string): void {
    const what = `chunk at ${c.offset} of ${digest}`
    let ok: boolean
    try {
      const plain = c.compressed ? decompressChunk(blob.compressor, stored, c.plainSize, what) : stored
      ok = plain.length === c.plainSize && digestChunk(blob.digester, plain).equals(c.digest)
    } catch {
      ok = false
    }
    if (!ok) {
      this.counters.badChunks++
      throw new ProxyError('RAFSPEER_ERR_PROXY_DIGEST', `${what} from the upstream does not match its digest in the bootstrap; the response is cut before it`)
    }
    this.counters.chunksVerified++
  }

  /** The blob's chunks, from its bootstrap (fetched once per bootstrap, verified by the registry client). */
  private async chunksOf (req: RafsRangeRequest, signal: AbortSignal): Promise<BlobChunks> {
    const where = this.blobs.get(req.digest)
    if (where === undefined) throw new ProxyError('RAFSPEER_ERR_PROXY_UNAVAILABLE', `${req.digest} is not a known RAFS data blob`)
    let index = this.indexes.get(where.bootstrap.digest)
    if (index === undefined) {
      index = this.load(where, req.authorization, signal)
      index.catch(() => { this.indexes.delete(where.bootstrap.digest) })
      this.indexes.set(where.bootstrap.digest, index)
    }
    const blob = (await index).get(req.digest)
    if (blob === undefined) throw new ProxyError('RAFSPEER_ERR_PROXY_UNAVAILABLE', `the bootstrap ${where.bootstrap.digest} has no blob ${req.digest}`)
    return blob
  }

  private async load (where: Where, authorization: string | null, signal: AbortSignal): Promise<Map<string, BlobChunks>> {
    await mkdir(this.c.dir, { recursive: true })
    // the reader holds the bootstrap in memory and only the chunk lists are kept: the file is scratch
    const tmp = join(this.c.dir, `${where.bootstrap.digest.replace(/^sha256:/, '')}.${process.pid}.${Math.random().toString(36).slice(2)}.boot`)
    let reader: RafsReader
    try {
      const gzip = where.bootstrap.mediaType === MediaTypes.OciLayerGzip || where.bootstrap.mediaType === MediaTypes.DockerLayerGzip
      const layer = await this.c.client.getBlob({ registry: where.host, repository: where.repository }, where.bootstrap.digest, { signal, authorization })
      await extractBootstrap(layer, tmp, { gzip })
      reader = await RafsReader.open(tmp)
    } finally {
      await rm(tmp, { force: true })
    }
    const out = new Map<string, BlobChunks>()
    reader.blobs.forEach((b, blobIndex) => {
      const chunks: StoredChunk[] = []
      const seen = new Set<number>()
      for (const { info } of reader.chunkTableEntries()) {
        if (info.blobIndex !== blobIndex || info.compressedSize === 0 || seen.has(info.compressedOffset)) continue
        seen.add(info.compressedOffset)
        chunks.push({ offset: info.compressedOffset, size: info.compressedSize, plainSize: info.uncompressedSize, compressed: info.compressed, digest: info.digest })
      }
      chunks.sort((x, y) => x.offset - y.offset)
      out.set(`sha256:${b.blobId}`, { compressor: b.compressor, digester: b.digester, chunks })
    })
    this.c.log?.debug('bootstrap %s: %d data blobs known for chunk-checked ranges', where.bootstrap.digest, out.size)
    return out
  }
}

/** Index of the first chunk ending after `pos` (chunks sorted by offset). */
function firstEndingAfter (chunks: StoredChunk[], pos: number): number {
  return partitionPoint(chunks.length, i => chunks[i]!.offset + chunks[i]!.size <= pos)
}
