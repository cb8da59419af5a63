/**
 * Manifests and indexes in the OCI and Docker v2 media types: what the client accepts, a structural check of what
 * it receives (so a malformed manifest fails here, naming the registry, not deep inside convert), and platform
 * selection from an index.
 */
import {
  InvalidReferenceError, ManifestInvalidError, RegistryNotFoundError, UnsupportedMediaTypeError,
  type RegistryErrorContext
} from './errors.js'
import { validateDigest } from './reference.js'

export const MediaTypes = {
  OciManifest: 'application/vnd.oci.image.manifest.v1+json',
  OciIndex: 'application/vnd.oci.image.index.v1+json',
  DockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  DockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  OciConfig: 'application/vnd.oci.image.config.v1+json',
  DockerConfig: 'application/vnd.docker.container.image.v1+json',
  OciLayer: 'application/vnd.oci.image.layer.v1.tar',
  OciLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  OciLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  DockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip'
} as const

/** The four manifest media types the client asks for and accepts, most preferred first. */
export const MANIFEST_MEDIA_TYPES: readonly string[] = [
  MediaTypes.OciIndex, MediaTypes.DockerManifestList, MediaTypes.OciManifest, MediaTypes.DockerManifest
]
/** Registries cap manifests at 4 MiB; anything larger is refused before it is read. */
export const MAX_MANIFEST_BYTES = 4 << 20

export interface Platform {
  os: string
  architecture: string
  variant?: string
  'os.version'?: string
  'os.features'?: string[]
}

export interface Descriptor {
  mediaType: string
  digest: string
  size: number
  urls?: string[]
  annotations?: Record<string, string>
  platform?: Platform
  artifactType?: string
}

export interface ImageManifest {
  schemaVersion: 2
  mediaType?: string
  artifactType?: string
  config: Descriptor
  layers: Descriptor[]
  subject?: Descriptor
  annotations?: Record<string, string>
}

export interface ImageIndex {
  schemaVersion: 2
  mediaType?: string
  manifests: Descriptor[]
  annotations?: Record<string, string>
}

export function isIndexMediaType (mediaType: string): boolean {
  return mediaType === MediaTypes.OciIndex || mediaType === MediaTypes.DockerManifestList
}

export function isIndex (json: ImageManifest | ImageIndex): json is ImageIndex {
  return Array.isArray((json as ImageIndex).manifests)
}

function fail (what: string, ctx: RegistryErrorContext): never {
  throw new ManifestInvalidError(`malformed manifest: ${what}`, ctx)
}

function checkDescriptor (d: unknown, where: string, ctx: RegistryErrorContext): void {
  if (d === null || typeof d !== 'object') fail(`${where} is not an object`, ctx)
  const o = d as Partial<Descriptor>
  if (typeof o.mediaType !== 'string' || o.mediaType === '') fail(`${where}.mediaType missing`, ctx)
  if (typeof o.size !== 'number' || !Number.isSafeInteger(o.size) || o.size < 0) fail(`${where}.size is not a size`, ctx)
  if (typeof o.digest !== 'string') fail(`${where}.digest missing`, ctx)
  try { validateDigest(o.digest) } catch (err) {
    throw new ManifestInvalidError(`malformed manifest: ${where}.digest: ${(err as Error).message}`, ctx, { cause: err })
  }
}

/**
 * Decides the media type (the `Content-Type` when it is specific, else the body's `mediaType`) and checks the
 * structure. Schema 1 and anything unknown is refused: convert must never guess at a layout.
 */
export function parseManifest (bytes: Buffer, contentType: string | undefined, ctx: RegistryErrorContext):
{ mediaType: string, json: ImageManifest | ImageIndex } {
  let json: unknown
  try { json = JSON.parse(bytes.toString('utf8')) } catch (err) {
    throw new ManifestInvalidError(`manifest is not valid JSON: ${(err as Error).message}`, ctx, { cause: err })
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) fail('not a JSON object', ctx)
  const o = json as Record<string, unknown>
  const header = (contentType ?? '').split(';')[0]!.trim().toLowerCase()
  const generic = header === '' || header === 'application/json' || header === 'application/octet-stream' || header === 'text/plain'
  const mediaType = generic ? (typeof o.mediaType === 'string' ? o.mediaType : guessMediaType(o)) : header
  if (!MANIFEST_MEDIA_TYPES.includes(mediaType)) throw new UnsupportedMediaTypeError(mediaType, ctx)
  if (typeof o.mediaType === 'string' && o.mediaType !== mediaType) {
    fail(`body mediaType "${o.mediaType}" disagrees with Content-Type "${mediaType}"`, ctx)
  }
  if (o.schemaVersion !== 2) fail(`schemaVersion ${String(o.schemaVersion)} (expected 2)`, ctx)
  if (isIndexMediaType(mediaType)) {
    if (!Array.isArray(o.manifests)) fail('index without a manifests array', ctx)
    o.manifests.forEach((d, i) => checkDescriptor(d, `manifests[${i}]`, ctx))
  } else {
    checkDescriptor(o.config, 'config', ctx)
    if (!Array.isArray(o.layers)) fail('manifest without a layers array', ctx)
    o.layers.forEach((d, i) => checkDescriptor(d, `layers[${i}]`, ctx))
  }
  return { mediaType, json: json as unknown as ImageManifest | ImageIndex }
}

/** An OCI manifest may omit `mediaType`; its shape still tells an index from an image manifest. */
function guessMediaType (o: Record<string, unknown>): string {
  if (Array.isArray(o.manifests)) return MediaTypes.OciIndex
  if (o.config !== undefined && Array.isArray(o.layers)) return MediaTypes.OciManifest
  return 'unknown (no mediaType and no Content-Type)'
}

/** `linux/amd64`, `linux/arm64/v8`, `windows/amd64` → a platform. */
export function parsePlatform (s: string): Platform {
  const parts = s.trim().split('/')
  if (parts.length < 2 || parts.length > 3 || parts.some(p => !/^[a-z0-9._-]+$/i.test(p))) {
    throw new InvalidReferenceError(s, 'platform must be os/architecture[/variant], e.g. linux/amd64')
  }
  const [os = '', architecture = '', variant] = parts.map(p => p.toLowerCase())
  return { os, architecture, ...(variant !== undefined ? { variant } : {}) }
}

export function formatPlatform (p: Platform): string {
  return [p.os, p.architecture, p.variant].filter(x => x !== undefined && x !== '').join('/')
}

/** Variants registries leave out: arm64 means v8 and arm means v7 unless said otherwise (as containerd assumes). */
function effectiveVariant (p: Platform): string | undefined {
  if (p.variant !== undefined && p.variant !== '') return p.variant
  if (p.architecture === 'arm64') return 'v8'
  if (p.architecture === 'arm') return 'v7'
  return undefined
}

/**
 * Picks the index entry for a platform: os and architecture must match; the variant too (with arm defaults) when
 * one is asked or a plain entry exists. When several match, the first wins (index order is the publisher's preference). Attestation entries
 * (`unknown/unknown`) never match a real platform.
 */
export function selectPlatform (index: ImageIndex, wanted: Platform, ctx: RegistryErrorContext): Descriptor {
  const same = index.manifests.filter(d => d.platform !== undefined &&
    d.platform.os === wanted.os && d.platform.architecture === wanted.architecture)
  const exact = same.find(d => effectiveVariant(d.platform!) === effectiveVariant(wanted))
  if (exact !== undefined) return exact
  // no variant asked: any variant of the architecture will do (e.g. only linux/amd64/v2 published)
  if (wanted.variant === undefined && same[0] !== undefined) return same[0]
  const have = index.manifests.filter(d => d.platform !== undefined).map(d => formatPlatform(d.platform!))
  throw new RegistryNotFoundError(`no manifest for platform ${formatPlatform(wanted)} in index (has: ${have.join(', ') || 'none'})`, ctx)
}
