/** What convert and check --image take and report. */
import type { Compressor, Digester } from '../rafs/index.js'
import type { Descriptor, RegistryClient } from '../registry/index.js'
import type { PushOutcome } from './push.js'

export interface ConvertOptions {
  /** `os/arch[/variant]` chosen from an index; default the host's (`linux/amd64` on x86-64) */
  platform?: string
  /** chunk compression of the data blobs (default zstd) */
  compressor?: Compressor
  /** default 0x100000 (1 MiB) */
  chunkSize?: number
  /** chunk digest (default blake3) */
  digester?: Digester
  /** used when no `client` is given: plain HTTP always, never, or for loopback registries (default 'auto') */
  plainHttp?: boolean | 'auto'
  /** parent of the temporary work directory (blobs and bootstraps while converting); default the OS temp dir */
  workDir?: string
  /**
   * absolute paths in the image, hottest first (e.g. `rafspeer access-list` of a recorded run): written as the
   * merged bootstrap's prefetch table, resolved against the merged tree (the files a container sees, whichever
   * layer they come from). Paths not in the image are skipped and reported (`ConvertReport.prefetch.missing`).
   */
  prefetchFiles?: string[]
  onProgress?: (ev: ConvertProgress) => void
  /** a configured client (credentials, CA); otherwise one is made from `plainHttp` */
  client?: RegistryClient
  signal?: AbortSignal
}

/** What convert reports while it works, for progress bars and logs. */
export type ConvertProgress =
  | { type: 'manifest', digest: string, layers: Array<{ digest: string, size: number, mediaType: string }> }
  | {
    type: 'layer'
    phase: 'start' | 'progress' | 'done'
    index: number
    /** the source layer */
    digest: string
    /** compressed size of the source layer */
    size: number
    /** compressed bytes downloaded so far */
    downloaded: number
    /** chunks written so far (references while running; distinct chunks of the blob when done) */
    chunks: number
    blobId?: string
  }
  | { type: 'merged', blobs: number, bootstrapSize: number }
  /** the prefetch table written: entries, and the listed paths the image does not have (skipped) */
  | { type: 'prefetch', entries: number, missing: string[] }
  | { type: 'push', phase: 'start' | 'done', label: string, digest: string, size: number, outcome?: PushOutcome }
  | { type: 'pushed', digest: string }

export interface LayerReport {
  /** the source layer digest */
  sourceDigest: string
  /** the source layer size */
  size: number
  /** distinct chunks of the layer's data blob */
  chunks: number
  /** the data blob this layer became; absent for a layer without file data */
  blobId?: string
  blobSize?: number
  /** true when the target already had the blob (or got it by a mount): nothing was uploaded */
  skippedPush: boolean
  push?: PushOutcome
}

export interface ConvertReport {
  source: string
  target: string
  /** the source manifest (the platform's manifest, not the index) */
  sourceDigest: string
  /** the pushed manifest */
  targetDigest: string
  layers: LayerReport[]
  bootstrap: { digest: string, size: number, diffId: string, push: PushOutcome }
  config: { digest: string, size: number }
  /** with `prefetchFiles`: paths listed, table entries written (files and directories, each once), paths skipped */
  prefetch?: { listed: number, entries: number, missing: string[] }
  elapsedMs: number
}

export interface CheckImageOptions {
  /** the OCI image it was converted from: compare the two trees file by file */
  source?: string
  platform?: string
  plainHttp?: boolean | 'auto'
  client?: RegistryClient
  /** parent of the temporary work directory; default the OS temp dir */
  workDir?: string
  signal?: AbortSignal
}

export interface CheckedBlob {
  blobId: string
  /** position in the bootstrap's blob table */
  index: number
  size: number
  chunkCount: number
  /** listed in the manifest with the right digest, size and media type */
  inManifest: boolean
  /** ToC, blob.meta header and ci array read and consistent with the blob table */
  tailOk: boolean
  chunksVerified: number
}

export interface CheckImageReport {
  ok: boolean
  errors: string[]
  warnings: string[]
  reference: string
  manifest: { digest: string, mediaType: string, layers: Descriptor[] }
  bootstrap?: { digest: string, size: number, inodes: number, chunkSize: number, compressor: string, digester: string }
  blobs: CheckedBlob[]
  /** with `source`: entries compared and every difference found (one line each) */
  compared?: { entries: number, differences: string[] }
}
