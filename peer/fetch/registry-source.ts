/**
 * The source of last resort: the image's repository in an OCI registry. Adjacent asked chunks (contiguous stored
 * bytes) become one `Range` request; each stored chunk is decompressed to exactly the size the metadata promises.
 *
 * @example
 * ```ts
 * const registry = new RegistrySource({ client }, { repository: '127.0.0.1:5000/app' })
 * for await (const { chunk, plaintext } of registry.fetch(blob, chunks, { signal })) { ... }
 * ```
 */
import { decompressChunk, type ChunkInfo, type RafsBlobInfo } from '../../rafs/index.js'
import type { RegistryClient } from '../../registry/index.js'
import { contiguousRuns, type ChunkSource, type ChunkSourceFetchOptions, type FetchedChunk } from './source.js'
import { SourceProtocolError } from './errors.js'

/** One Range request never asks more than this, so a huge batch cannot pin a huge buffer. */
export const DEFAULT_MAX_REQUEST_BYTES = 8 << 20

export interface RegistrySourceComponents {
  client: RegistryClient
}

export interface RegistrySourceInit {
  /** `host[:port]/repository` of the image; blobs are fetched as `sha256:<blobId>` from it */
  repository: string
  maxRequestBytes?: number
}

export class RegistrySource implements ChunkSource {
  readonly name = 'registry'
  private readonly client: RegistryClient
  private readonly repository: string
  private readonly maxRequestBytes: number

  constructor (components: RegistrySourceComponents, init: RegistrySourceInit) {
    this.client = components.client
    this.repository = init.repository
    this.maxRequestBytes = init.maxRequestBytes ?? DEFAULT_MAX_REQUEST_BYTES
  }

  async * fetch (blob: RafsBlobInfo, chunks: ChunkInfo[], opts: ChunkSourceFetchOptions): AsyncGenerator<FetchedChunk> {
    const digest = `sha256:${blob.blobId}`
    for (const run of contiguousRuns(chunks, this.maxRequestBytes)) {
      opts.signal.throwIfAborted()
      if (run.end === run.start) throw new SourceProtocolError(this.name, `chunk ${run.chunks[0]!.index} of blob ${blob.blobId} has no stored bytes`)
      const bytes = await this.client.fetchBlobRange(this.repository, digest, run.start, run.end - 1, { signal: opts.signal })
      for (const chunk of run.chunks) {
        const stored = bytes.subarray(chunk.compressedOffset - run.start, chunk.compressedOffset - run.start + chunk.compressedSize)
        const what = `chunk ${chunk.index} of blob ${blob.blobId}`
        let plaintext: Buffer
        if (chunk.compressed) {
          plaintext = decompressChunk(blob.compressor, stored, chunk.uncompressedSize, what)
        } else {
          if (stored.length !== chunk.uncompressedSize) {
            throw new SourceProtocolError(this.name, `${what} is stored uncompressed in ${stored.length} bytes, metadata says ${chunk.uncompressedSize}`)
          }
          // a copy, so the cached chunk does not pin the whole range buffer
          plaintext = Buffer.from(stored)
        }
        yield { chunk, plaintext }
      }
    }
  }
}
