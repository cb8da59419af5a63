/**
 * `HEAD|GET /v2/<name>/manifests/<tag|digest>` of the mirror. A tag is resolved upstream on every request, with the
 * client's `Authorization` and `Accept` passed through: the upstream decides who may see what and which media type
 * to answer in. The body is size-capped and checked against its digest, kept by digest, and answered with its
 * `Content-Type`, `Content-Length` and `Docker-Content-Digest`, so the GET by digest that follows a tag HEAD can
 * always be served. A digest-addressed manifest comes from the store once the auth gate let the client through.
 *
 * A manifest fetched with a client's credentials vouches, for that client, for the digests it names (layers,
 * config, an index's manifests) in that repository, and tells the blob service their sizes.
 */
import type { ServerResponse } from 'node:http'
import { describeError, errorCode, type Logger } from '../base/index.js'
import { MANIFEST_MEDIA_TYPES, type RegistryClient } from '../registry/index.js'
import type { AuthGate } from './auth-gate.js'
import { answer } from './blob-service.js'
import { ociAnswer } from './errors.js'
import type { ManifestStore } from './manifest-store.js'
import type { ProxyMetrics } from './metrics.js'

export const DEFAULT_MANIFEST_TIMEOUT_MS = 15_000

export interface ManifestRequest {
  method: 'GET' | 'HEAD'
  host: string
  repository: string
  reference: string
  byDigest: boolean
  authorization: string | null
  accept: string | undefined
}

export interface ManifestServiceComponents {
  client: RegistryClient
  store: ManifestStore
  gate: AuthGate
  metrics: ProxyMetrics
  /** a manifest named this blob with this size */
  noteSize: (digest: string, size: number) => void
  /** a manifest passed through (a Nydus image's tells which blobs are RAFS data blobs) */
  noteManifest?: (host: string, repository: string, bytes: Buffer) => void
  log?: Logger
}

export class ManifestService {
  constructor (private readonly c: ManifestServiceComponents, private readonly timeoutMs = DEFAULT_MANIFEST_TIMEOUT_MS) {}

  async serve (req: ManifestRequest, res: ServerResponse): Promise<void> {
    if (req.byDigest) {
      const verdict = await this.c.gate.check({ host: req.host, repository: req.repository, kind: 'manifest', target: req.reference, authorization: req.authorization })
      if (!verdict.ok) { answer(res, verdict.answer); return }
      const stored = await this.c.store.get(req.reference)
      if (stored !== undefined) {
        this.c.noteManifest?.(req.host, req.repository, stored.bytes)
        send(res, req, req.reference, stored.mediaType, stored.bytes)
        return
      }
    }
    const t0 = performance.now()
    let raw
    try {
      raw = await this.c.client.getManifestBytes({ registry: req.host, repository: req.repository, ...(req.byDigest ? { digest: req.reference } : { tag: req.reference }) }, {
        accept: req.accept ?? MANIFEST_MEDIA_TYPES.join(', '),
        authorization: req.authorization,
        signal: AbortSignal.timeout(this.timeoutMs)
      })
    } catch (err) {
      this.c.metrics.upstreamCall(req.host, 'manifest', performance.now() - t0)
      this.fail(res, req, err)
      return
    }
    this.c.metrics.upstreamCall(req.host, 'manifest', performance.now() - t0)
    const mediaType = raw.mediaType ?? declaredMediaType(raw.bytes) ?? 'application/vnd.oci.image.manifest.v1+json'
    try {
      await this.c.store.put(raw.digest, mediaType, raw.bytes)
    } catch (err) {
      this.c.log?.warn('manifest %s not kept: %s', raw.digest, describeError(err))
    }
    this.c.noteManifest?.(req.host, req.repository, raw.bytes)
    const named = describedBlobs(raw.bytes)
    for (const d of named) this.c.noteSize(d.digest, d.size)
    this.c.gate.vouch(req.host, req.repository, req.authorization, [raw.digest, ...named.map(d => d.digest)])
    send(res, req, raw.digest, mediaType, raw.bytes)
  }

  private fail (res: ServerResponse, req: ManifestRequest, err: unknown): void {
    const code = errorCode(err)
    const status = (err as { status?: number }).status
    if (code === 'RAFSPEER_ERR_REGISTRY_AUTH' && status === 401) {
      const challenge = (err as { challenge?: string }).challenge
      answer(res, ociAnswer(401, 'UNAUTHORIZED', describeError(err), challenge !== undefined ? { 'www-authenticate': challenge } : undefined))
      return
    }
    if (code === 'RAFSPEER_ERR_REGISTRY_AUTH') { answer(res, ociAnswer(403, 'DENIED', describeError(err))); return }
    if (code === 'RAFSPEER_ERR_REGISTRY_NOT_FOUND') {
      answer(res, ociAnswer(404, 'MANIFEST_UNKNOWN', `manifest ${req.reference} of ${req.host}/${req.repository} is unknown`))
      return
    }
    if (code === 'RAFSPEER_ERR_REGISTRY_TOO_LARGE' || code === 'RAFSPEER_ERR_DIGEST_MISMATCH') {
      answer(res, ociAnswer(502, 'MANIFEST_INVALID', describeError(err)))
      return
    }
    this.c.metrics.fallbacks++
    this.c.log?.warn('manifest %s of %s/%s: %s', req.reference, req.host, req.repository, describeError(err))
    answer(res, ociAnswer(404, 'MANIFEST_UNKNOWN', `manifest ${req.reference} of ${req.host}/${req.repository} cannot be served: ${describeError(err)}`))
  }
}

function send (res: ServerResponse, req: ManifestRequest, digest: string, mediaType: string, bytes: Buffer): void {
  res.statusCode = 200
  res.setHeader('content-type', mediaType)
  res.setHeader('content-length', String(bytes.length))
  res.setHeader('docker-content-digest', digest)
  res.setHeader('etag', `"${digest}"`)
  res.setHeader('docker-distribution-api-version', 'registry/2.0')
  res.end(req.method === 'HEAD' ? undefined : bytes)
}

/** `mediaType` inside the JSON (OCI manifests may carry it). */
function declaredMediaType (bytes: Buffer): string | undefined {
  try {
    const j = JSON.parse(bytes.toString('utf8')) as { mediaType?: unknown }
    return typeof j.mediaType === 'string' ? j.mediaType : undefined
  } catch { return undefined }
}

/** The descriptors a manifest or index names: config, layers, manifests, blobs, subject. */
export function describedBlobs (bytes: Buffer): Array<{ digest: string, size: number }> {
  let j: Record<string, unknown>
  try { j = JSON.parse(bytes.toString('utf8')) as Record<string, unknown> } catch { return [] }
  const out: Array<{ digest: string, size: number }> = []
  const take = (d: unknown): void => {
    const x = d as { digest?: unknown, size?: unknown } | null
    if (x !== null && typeof x === 'object' && typeof x.digest === 'string' && /^sha(256|512):[0-9a-f]+$/.test(x.digest)) {
      out.push({ digest: x.digest, size: typeof x.size === 'number' ? x.size : -1 })
    }
  }
  take(j.config)
  take(j.subject)
  for (const k of ['layers', 'manifests', 'blobs']) if (Array.isArray(j[k])) for (const d of j[k] as unknown[]) take(d)
  return out
}
