/**
 * The source of last resort: the image's repository in an OCI registry. Adjacent asked chunks (contiguous stored
 * bytes) become one `Range` request; each stored chunk is decompressed to exactly the size the metadata promises.
 * A registry that ignores `Range` answers each request with the whole blob, which the client skips through to the
 * asked bytes; against it, the runs of a batch are read in one request (gaps included, up to `maxRequestBytes`),
 * since every request costs the blob up to its end whatever its start.
 *
 * @example
 * ```ts
 * const registry = new RegistrySource({ client }, { repository: '127.0.0.1:5000/app' })
 * for await (const { chunk, plaintext } of registry.fetch(blob, chunks, { signal })) { ... }
 * ```
 */
import { decompressChunk, type ChunkInfo, type RafsBlobInfo } from '../../rafs/index.js'
import type { RegistryClient } from '../../registry/index.js'
import { contiguousRuns, type ByteRun, type ChunkSource, type ChunkSourceFetchOptions, type FetchedChunk } from './source.js'
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
    const runs = contiguousRuns(chunks, this.maxRequestBytes)
    const reads = this.client.ignoresRange(this.repository) ? spans(runs, this.maxRequestBytes) : runs
    for (const run of reads) {
      opts.signal.throwIfAborted()
      if (run.end === run.start) throw new SourceProtocolError(this.name, `chunk ${run.chunks[0]!.index} of blob ${blob.blobId} has no stored bytes`)
      // each chunk goes out as soon as its bytes are in, not when the whole range is: a read waiting on the first
      // chunk of a 4 MiB batch at 4 MiB/s waited a second for the other three (traced: the first node of a swarm
      // reading behind a range that streamed while it was waiting for the one before)
      const bytes = Buffer.allocUnsafe(run.end - run.start)
      let filled = 0
      let wake: (() => void) | undefined
      let failure: { err: unknown } | undefined
      // a consumer that stops taking chunks (its attempt ended) ends the download too
      const left = new AbortController()
      const fetched = this.client.fetchBlobRange(this.repository, digest, run.start, run.end - 1, {
        signal: AbortSignal.any([opts.signal, left.signal]),
        ...(opts.progress !== undefined ? { onBytes: opts.progress } : {}),
        into: bytes,
        onFilled: n => { filled = n; wake?.() }
      }).then(() => { filled = bytes.length; wake?.() }, (err: unknown) => { failure = { err }; wake?.() })
      try {
        for (const chunk of run.chunks) {
          const endAt = chunk.compressedOffset - run.start + chunk.compressedSize
          while (filled < endAt) {
            if (failure !== undefined) throw failure.err
            await new Promise<void>(resolve => { wake = resolve })
            wake = undefined
          }
          const stored = bytes.subarray(chunk.compressedOffset - run.start, endAt)
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
        await fetched
        if (failure !== undefined) throw failure.err
      } finally {
        if (filled < bytes.length) left.abort(new Error('the chunks of this range are no longer wanted'))
      }
    }
  }
}

/** Consecutive runs merged into reads of at most `maxBytes` each, the gaps between them included. */
export function spans (runs: ByteRun[], maxBytes: number): ByteRun[] {
  const out: ByteRun[] = []
  for (const run of runs) {
    const last = out[out.length - 1]
    if (last !== undefined && run.end - last.start <= maxBytes) {
      out[out.length - 1] = { start: last.start, end: run.end, chunks: [...last.chunks, ...run.chunks] }
    } else {
      out.push(run)
    }
  }
  return out
}
