/**
 * The registry layout of a Nydus image (`docs/FORMAT.md` §17), declared once: media types, annotations,
 * and the pure functions that turn a converted image into its OCI manifest and config. Convert writes with them and
 * check --image reads with the same constants.
 */
import { createHash } from 'node:crypto'
import type { Descriptor, ImageManifest } from '../registry/index.js'

export const NydusMediaTypes = {
  blob: 'application/vnd.oci.image.layer.nydus.blob.v1',
  bootstrap: 'application/vnd.oci.image.layer.v1.tar+gzip',
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  config: 'application/vnd.oci.image.config.v1+json'
} as const

export const NydusAnnotations = {
  blob: 'containerd.io/snapshot/nydus-blob',
  bootstrap: 'containerd.io/snapshot/nydus-bootstrap',
  fsVersion: 'containerd.io/snapshot/nydus-fs-version',
  /** removed by the converter from anything it copies */
  uncompressed: 'containerd.io/uncompressed'
} as const

export const BOOTSTRAP_HISTORY = { created_by: 'Nydus Converter', comment: 'Nydus Bootstrap Layer' } as const

/** The bootstrap's path inside the bootstrap layer tar; `image.boot` at the tar root is the legacy place. */
export const BOOTSTRAP_TAR_DIR = 'image'
export const BOOTSTRAP_TAR_PATH = 'image/image.boot'
export const LEGACY_BOOTSTRAP_TAR_PATH = 'image.boot'

export const sha256Digest = (bytes: Uint8Array): string => `sha256:${createHash('sha256').update(bytes).digest('hex')}`

export interface BlobLayer {
  /** lowercase hex sha256 of the blob file (= the digest without `sha256:`) */
  blobId: string
  size: number
}

export interface BootstrapLayer {
  /** sha256 of the .tar.gz */
  digest: string
  size: number
  /** sha256 of the uncompressed tar */
  diffId: string
}

/** A history entry as the OCI config carries it (extra fields pass through). */
export interface HistoryEntry {
  created?: string
  created_by?: string
  author?: string
  comment?: string
  empty_layer?: boolean
  [k: string]: unknown
}

export interface SourceConfig {
  rootfs?: { type?: string, diff_ids?: string[] }
  history?: HistoryEntry[]
  [k: string]: unknown
}

export function blobDescriptor (b: BlobLayer): Descriptor {
  return { mediaType: NydusMediaTypes.blob, digest: `sha256:${b.blobId}`, size: b.size, annotations: { [NydusAnnotations.blob]: 'true' } }
}

export function bootstrapDescriptor (b: BootstrapLayer): Descriptor {
  return {
    mediaType: NydusMediaTypes.bootstrap,
    digest: b.digest,
    size: b.size,
    annotations: { [NydusAnnotations.bootstrap]: 'true', [NydusAnnotations.fsVersion]: '6' }
  }
}

/**
 * The Nydus config: a copy of the source config with the diff_ids of the RAFS layers and the converter's history
 * entry. `blobOfLayer[i]` is the index (in `blobs`) of the data blob source layer i produced, or undefined when it
 * produced none (no file data) or the same blob as an earlier layer.
 *
 * The OCI image spec pairs the history entries without `empty_layer` with the diff_ids, in order. The converted
 * image has one diff_id per blob plus the bootstrap, so a source history entry keeps its layer only when its
 * source layer became a blob of its own; every other source entry is marked `empty_layer: true` (its changes now
 * live in the merged bootstrap). If the source history does not pair with the source layers to begin with, no
 * mapping can be trusted: every source entry is marked empty and one entry per blob is added instead.
 */
export function nydusConfig (source: SourceConfig, blobs: BlobLayer[], bootstrap: BootstrapLayer, blobOfLayer: Array<number | undefined>): SourceConfig {
  const config: SourceConfig = structuredClone(source)
  config.rootfs = { type: 'layers', diff_ids: [...blobs.map(b => `sha256:${b.blobId}`), bootstrap.diffId] }
  const history = (source.history ?? []).map(h => ({ ...h }))
  const layered = history.filter(h => h.empty_layer !== true)
  const out: HistoryEntry[] = []
  if (history.length > 0 && layered.length === blobOfLayer.length) {
    let layer = 0
    for (const h of history) {
      if (h.empty_layer === true) { out.push(h); continue }
      if (blobOfLayer[layer++] === undefined) out.push({ ...h, empty_layer: true })
      else out.push(h)
    }
  } else {
    for (const h of history) out.push({ ...h, empty_layer: true })
    blobs.forEach((b, i) => out.push({ created_by: 'rafspeer convert', comment: `RAFS data blob ${i} (sha256:${b.blobId})` }))
  }
  out.push({ ...BOOTSTRAP_HISTORY })
  config.history = out
  return config
}

/** The OCI manifest: data blobs in blob-table order, then the bootstrap layer (§17). */
export function nydusManifest (config: { digest: string, size: number }, blobs: BlobLayer[], bootstrap: BootstrapLayer, annotations?: Record<string, string>): ImageManifest {
  const m: ImageManifest = {
    schemaVersion: 2,
    mediaType: NydusMediaTypes.manifest,
    config: { mediaType: NydusMediaTypes.config, digest: config.digest, size: config.size },
    layers: [...blobs.map(blobDescriptor), bootstrapDescriptor(bootstrap)]
  }
  if (annotations !== undefined) {
    const copy = { ...annotations }
    delete copy[NydusAnnotations.uncompressed]
    if (Object.keys(copy).length > 0) m.annotations = copy
  }
  return m
}

/** Canonical bytes for a JSON document we push (stable key order as built, no whitespace). */
export const jsonBytes = (v: unknown): Buffer => Buffer.from(JSON.stringify(v), 'utf8')

/** §17 detection: a manifest is a Nydus image when a layer carries the bootstrap annotation. */
export function findBootstrapLayer (m: ImageManifest): Descriptor | undefined {
  return m.layers.find(l => l.annotations?.[NydusAnnotations.bootstrap] === 'true')
}
