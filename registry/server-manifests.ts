/**
 * Manifest and tag endpoints of the embedded registry. A manifest is accepted only when everything it
 * references is already in the same repository, so a pushed tag never points at an image that cannot be pulled.
 */
import { readFile } from 'node:fs/promises'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { ServerContext } from './server-blobs.js'
import { API_VERSION_HEADER, DistributionError, isDigest, sendEmpty, sendJson } from './server-http.js'

export const DEFAULT_MAX_MANIFEST_SIZE = 4 * 1024 * 1024

export const MEDIA_TYPES = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json'
} as const

const INDEX_TYPES = new Set<string>([MEDIA_TYPES.ociIndex, MEDIA_TYPES.dockerList])
const IMAGE_TYPES = new Set<string>([MEDIA_TYPES.ociManifest, MEDIA_TYPES.dockerManifest])

interface Descriptor { mediaType: string, digest: string, size: number, urls?: unknown }

function invalid (message: string, detail?: unknown): DistributionError {
  return new DistributionError('MANIFEST_INVALID', message, { detail })
}

function descriptor (value: unknown, where: string): Descriptor {
  const d = value as Partial<Descriptor> | null
  if (typeof d !== 'object' || d === null || Array.isArray(d)) throw invalid(`${where} is not a descriptor`)
  if (typeof d.mediaType !== 'string' || d.mediaType === '') throw invalid(`${where} has no mediaType`)
  if (typeof d.digest !== 'string' || !isDigest(d.digest)) throw invalid(`${where} has an invalid digest`, { digest: d.digest })
  if (typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0) throw invalid(`${where} has an invalid size`, { size: d.size })
  return d as Descriptor
}

function descriptors (value: unknown, where: string): Descriptor[] {
  if (!Array.isArray(value)) throw invalid(`${where} must be an array`)
  return value.map((v, i) => descriptor(v, `${where}[${i}]`))
}

/** Media type without parameters, or undefined when the header says nothing useful. */
function contentType (req: IncomingMessage): string | undefined {
  const ct = req.headers['content-type']?.split(';')[0].trim().toLowerCase()
  return ct === undefined || ct === '' || ct === 'application/json' || ct === 'application/octet-stream' ? undefined : ct
}

async function readLimited (req: IncomingMessage, max: number): Promise<Buffer> {
  const tooLarge = (): DistributionError => new DistributionError('MANIFEST_INVALID', `manifest larger than ${max} bytes`, { status: 413, detail: { limit: max } })
  const declared = Number(req.headers['content-length'] ?? 0)
  if (declared > max) throw tooLarge()
  const chunks: Buffer[] = []
  let n = 0
  for await (const chunk of req) {
    n += (chunk as Buffer).length
    if (n > max) throw tooLarge()
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks)
}

/** Parses and checks a manifest; returns its media type and what it references. */
export function validateManifest (body: Buffer, headerType: string | undefined): { mediaType: string, blobs: Descriptor[], manifests: Descriptor[], subject?: string } {
  let doc: Record<string, unknown>
  try { doc = JSON.parse(body.toString('utf8')) as Record<string, unknown> } catch (err) {
    throw invalid('manifest is not valid JSON', { reason: (err as Error).message })
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw invalid('manifest is not a JSON object')
  if (doc.schemaVersion !== 2) throw invalid('schemaVersion must be 2', { schemaVersion: doc.schemaVersion })
  const declared = doc.mediaType
  if (declared !== undefined && typeof declared !== 'string') throw invalid('mediaType must be a string')
  if (declared !== undefined && headerType !== undefined && declared !== headerType) {
    throw invalid('Content-Type does not match the manifest mediaType', { contentType: headerType, mediaType: declared })
  }
  const mediaType = declared ?? headerType ?? (Array.isArray(doc.manifests) ? MEDIA_TYPES.ociIndex : MEDIA_TYPES.ociManifest)
  const subject = doc.subject === undefined ? undefined : descriptor(doc.subject, 'subject').digest
  if (INDEX_TYPES.has(mediaType)) return { mediaType, blobs: [], manifests: descriptors(doc.manifests, 'manifests'), subject }
  if (!IMAGE_TYPES.has(mediaType)) throw invalid('unsupported manifest media type', { mediaType })
  const config = descriptor(doc.config, 'config')
  return { mediaType, blobs: [config, ...descriptors(doc.layers, 'layers')], manifests: [], subject }
}

/** Layers that the spec lets live elsewhere (`urls`), which a registry is not expected to hold. */
function isForeign (d: Descriptor): boolean {
  return Array.isArray(d.urls) && /foreign|nondistributable/.test(d.mediaType)
}

export async function handleManifest (ctx: ServerContext, req: IncomingMessage, res: ServerResponse, name: string, reference: string): Promise<void> {
  switch (req.method) {
    case 'PUT': await putManifest(ctx, req, res, name, reference); return
    case 'GET':
    case 'HEAD': await getManifest(ctx, req, res, name, reference); return
    case 'DELETE':
      if (!await ctx.storage.deleteManifest(name, reference)) {
        throw new DistributionError('MANIFEST_UNKNOWN', 'manifest unknown', { detail: { name, reference } })
      }
      sendEmpty(res, 202)
      return
    default:
      throw new DistributionError('UNSUPPORTED', 'method not allowed', { headers: { Allow: 'GET, HEAD, PUT, DELETE' } })
  }
}

async function putManifest (ctx: ServerContext, req: IncomingMessage, res: ServerResponse, name: string, reference: string): Promise<void> {
  const body = await readLimited(req, ctx.maxManifestSize)
  ctx.counters.received(name, body.length)
  const m = validateManifest(body, contentType(req))
  for (const d of m.blobs) {
    if (isForeign(d)) continue
    const size = await ctx.storage.blobSize(name, d.digest)
    if (size === undefined) throw new DistributionError('MANIFEST_BLOB_UNKNOWN', 'manifest references a blob unknown to this repository', { detail: { digest: d.digest } })
    if (size !== d.size) throw invalid('descriptor size does not match the stored blob', { digest: d.digest, size: d.size, stored: size })
  }
  for (const d of m.manifests) {
    if (!await ctx.storage.hasManifest(name, d.digest)) {
      throw new DistributionError('MANIFEST_BLOB_UNKNOWN', 'index references a manifest unknown to this repository', { detail: { digest: d.digest } })
    }
  }
  const digest = await ctx.storage.putManifest(name, reference, body, m.mediaType)
  const headers: Record<string, string> = { Location: `/v2/${name}/manifests/${digest}`, 'Docker-Content-Digest': digest }
  if (m.subject !== undefined) headers['OCI-Subject'] = m.subject
  sendEmpty(res, 201, headers)
}

async function getManifest (ctx: ServerContext, req: IncomingMessage, res: ServerResponse, name: string, reference: string): Promise<void> {
  const m = await ctx.storage.getManifest(name, reference)
  if (m === undefined) {
    if (!await ctx.storage.repoExists(name)) throw new DistributionError('NAME_UNKNOWN', 'repository name not known to registry', { detail: { name } })
    throw new DistributionError('MANIFEST_UNKNOWN', 'manifest unknown', { detail: { name, reference } })
  }
  // Manifests are capped in size when pushed, so reading one whole is bounded.
  const body = req.method === 'HEAD' ? undefined : await readFile(m.path)
  res.writeHead(200, {
    ...API_VERSION_HEADER,
    'Content-Type': m.mediaType,
    'Content-Length': m.size,
    'Docker-Content-Digest': m.digest,
    ETag: `"${m.digest}"`
  })
  res.end(body)
  if (body !== undefined) ctx.counters.served(name, body.length)
}

export async function handleTags (ctx: ServerContext, req: IncomingMessage, res: ServerResponse, name: string, query: URLSearchParams): Promise<void> {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    throw new DistributionError('UNSUPPORTED', 'method not allowed', { headers: { Allow: 'GET, HEAD' } })
  }
  if (!await ctx.storage.repoExists(name)) throw new DistributionError('NAME_UNKNOWN', 'repository name not known to registry', { detail: { name } })
  const nParam = query.get('n')
  const n = nParam === null ? undefined : Number(nParam)
  if (n !== undefined && (!Number.isSafeInteger(n) || n < 0)) throw new DistributionError('PAGINATION_NUMBER_INVALID', 'invalid number of results requested', { detail: { n: nParam } })
  const last = query.get('last')
  let tags = await ctx.storage.tags(name)
  if (last !== null) tags = tags.filter(t => t > last)
  const headers: Record<string, string> = {}
  if (n !== undefined && tags.length > n) {
    tags = tags.slice(0, n)
    if (n > 0) headers.Link = `</v2/${name}/tags/list?n=${n}&last=${encodeURIComponent(tags[n - 1])}>; rel="next"`
  }
  sendJson(req, res, 200, { name, tags }, headers)
}
