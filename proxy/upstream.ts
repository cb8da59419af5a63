/**
 * The upstream side of the mirror: which registry a request goes to (containerd's `?ns=`, else
 * `proxy.defaultUpstream`), whether it speaks plain HTTP, and the upstream as a source of pieces for the fetch
 * pipeline (the last source, after neighbours). A blob's pieces are fetched from upstream with the credentials of
 * the latest client that was let through for it: pieces move between nodes without credentials, so the upstream is
 * only ever asked on behalf of a client it accepted.
 *
 * @example
 * ```ts
 * const upstreams = new Upstreams({ defaultUpstream: 'docker.io', plainHttp: 'auto', hosts: {} })
 * const host = upstreams.choose(route.ns)            // 'docker.io', or an OciAnswer when there is none
 * const source = new UpstreamPieces({ client })      // fetcher source
 * source.bind(layout.blobId, { host, repository, digest, authorization })
 * ```
 */
import { isLoopbackHost, type RegistryClient } from '../registry/index.js'
import type { ChunkInfo, RafsBlobInfo } from '../rafs/index.js'
import { contiguousRuns, type ChunkSource, type ChunkSourceFetchOptions, type FetchedChunk } from '../peer/index.js'
import { ociAnswer, type OciAnswer } from './errors.js'

export interface UpstreamsInit {
  /** the registry of requests without `?ns=` (docker, skopeo); none: such requests are refused */
  defaultUpstream?: string
  /** 'auto': plain HTTP for loopback upstreams only */
  plainHttp: boolean | 'auto'
  /** per upstream host: plain HTTP or not, overriding `plainHttp` */
  hosts: Record<string, { plainHttp?: boolean }>
  /** refuse `?ns=` upstreams that are neither the default nor listed in `hosts` */
  restrict?: boolean
}

export class Upstreams {
  constructor (private readonly init: UpstreamsInit) {}

  /** The upstream registry of a request, or the 4xx answer when there is none it may use. */
  choose (ns: string | undefined): string | OciAnswer {
    const host = ns ?? this.init.defaultUpstream
    if (host === undefined) return ociAnswer(404, 'NAME_UNKNOWN', 'no upstream: the request has no ?ns= and the mirror has no proxy.defaultUpstream')
    if (this.init.restrict === true && host !== this.init.defaultUpstream && this.init.hosts[host] === undefined) {
      return ociAnswer(403, 'DENIED', `upstream ${host} is not one this mirror serves (proxy.upstreams)`)
    }
    return host
  }

  /** Whether to speak plain HTTP to `host` (the client's per-host decision). */
  plainHttp (host: string): boolean {
    const own = this.init.hosts[host]?.plainHttp
    if (own !== undefined) return own
    return this.init.plainHttp === 'auto' ? isLoopbackHost(host) : this.init.plainHttp
  }
}

/** Where a blob is upstream, and whose credentials fetch it. */
export interface UpstreamBlob {
  host: string
  repository: string
  digest: string
  authorization: string | null
}

/** Piece bytes asked of the upstream in one Range request, at most. */
export const MAX_UPSTREAM_RANGE_BYTES = 16 << 20

/** The upstream as a fetcher source of pieces: contiguous pieces become one Range request. */
export class UpstreamPieces implements ChunkSource {
  readonly name = 'registry'
  private readonly client: RegistryClient
  private readonly bound = new Map<string, UpstreamBlob>()

  constructor (components: { client: RegistryClient }) {
    this.client = components.client
  }

  /** Pieces of cache blob `blobId` come from this blob, with these credentials (the latest client's). */
  bind (blobId: string, blob: UpstreamBlob): void {
    this.bound.delete(blobId)
    this.bound.set(blobId, blob)
    // bindings of blobs nobody asked for in a long while go (oldest first)
    if (this.bound.size > 4096) this.bound.delete(this.bound.keys().next().value as string)
  }

  binding (blobId: string): UpstreamBlob | undefined { return this.bound.get(blobId) }

  async * fetch (blob: RafsBlobInfo, chunks: ChunkInfo[], opts: ChunkSourceFetchOptions): AsyncGenerator<FetchedChunk> {
    const up = this.bound.get(blob.blobId)
    if (up === undefined) return
    for (const run of contiguousRuns(chunks, MAX_UPSTREAM_RANGE_BYTES)) {
      opts.signal.throwIfAborted()
      const bytes = await this.client.fetchBlobRange({ registry: up.host, repository: up.repository }, up.digest, run.start, run.end - 1,
        { signal: opts.signal, authorization: up.authorization })
      for (const chunk of run.chunks) {
        const at = chunk.compressedOffset - run.start
        // a copy, so a cached piece does not pin the whole range buffer
        yield { chunk, plaintext: Buffer.from(bytes.subarray(at, at + chunk.compressedSize)) }
      }
    }
  }
}
