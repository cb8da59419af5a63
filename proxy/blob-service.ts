/**
 * `HEAD|GET /v2/<name>/blobs/<digest>` of the mirror. After the auth gate let the client through:
 * - a blob whose piece map this node confirmed is served from its pieces (cache, neighbours, upstream by Range);
 * - otherwise one `BlobJob` per blob gets it (neighbours' maps and pieces first, the upstream's stream for the rest)
 *   and every client asking meanwhile reads it as it is hashed, the last byte only after the digest matched;
 * - a `Range` request for a blob this node neither holds nor is getting is relayed to the upstream as it is.
 * Nothing is answered before the size is known, so a failure before the first byte is still a clean OCI error
 * (BLOB_UNKNOWN: containerd then falls back to the registry); after it, the connection is cut.
 *
 * @example
 * ```ts
 * const blobs = new BlobService(components, { pieceBytes: 4 << 20 })
 * await blobs.serve({ method: 'GET', host, repository, digest, authorization, range }, res, signal)
 * ```
 */
import type { ServerResponse } from 'node:http'
import { LRUCache } from 'lru-cache'
import { describeError, errorCode, type Logger } from '../base/index.js'
import type { BlobCache } from '../cache/index.js'
import type { ChunkHolder } from '../p2p/index.js'
import type { RegistryClient } from '../registry/index.js'
import type { AuthGate } from './auth-gate.js'
import { BlobJob, type MapLenders } from './blob-job.js'
import { ociAnswer, type OciAnswer } from './errors.js'
import { askMap } from './map-exchange.js'
import type { MapStore } from './map-store.js'
import { mapKey } from './piece-map.js'
import type { PieceFetch } from './pieces.js'
import { resolveRange } from './routes.js'
import { ConfirmedBytes, sendBytes } from './send.js'
import type { UpstreamBlob, UpstreamPieces } from './upstream.js'
import type { ProxyMetrics } from './metrics.js'
import type { RafsRanges } from './rafs-ranges.js'

const EMPTY_SHA256 = 'sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'

/** The swarm as the mirror uses it (a P2PNode provides it). */
export interface MirrorSwarm {
  readonly peerId: string
  holders: (digests: Buffer[], opts: { signal?: AbortSignal, timeoutMs?: number }) => Promise<Map<string, ChunkHolder[]>>
  announce: (digests: Buffer[]) => void
  dial: Parameters<typeof askMap>[0]
  withdraw: (digests: Buffer[]) => void
  isBanned: (peerId: string) => boolean
  ban: (peerId: string, why: string) => void
  /** `holder` lent a map listing these pieces: ask it for them first */
  lent: (holder: ChunkHolder, digests: Buffer[]) => void
}

export interface BlobRequest {
  method: 'GET' | 'HEAD'
  host: string
  repository: string
  digest: string
  authorization: string | null
  range: string | undefined
}

export interface BlobServiceComponents {
  client: RegistryClient
  cache: Pick<BlobCache, 'putChunk' | 'removeBlob'>
  pieces: PieceFetch
  upstreamPieces: UpstreamPieces
  maps: MapStore
  gate: AuthGate
  swarm?: MirrorSwarm
  /** Nydus data blobs: ranges checked chunk by chunk */
  rafs?: RafsRanges
  metrics: ProxyMetrics
  log?: Logger
}

export interface BlobServiceInit {
  pieceBytes?: number
  /** deadline of one map request to a neighbour (dial and each frame) */
  mapTimeoutMs?: number
  /** deadline of one piece read through the pipeline */
  pieceDeadlineMs?: number
  /** a client waiting this long without a new byte is cut off */
  stallMs?: number
}

export class BlobService {
  private readonly c: BlobServiceComponents
  private readonly init: BlobServiceInit
  private readonly jobs = new Map<string, BlobJob>()
  /** sizes the upstream told (HEADs, manifests' descriptors) */
  private readonly sizes = new LRUCache<string, number>({ max: 50_000 })
  private stopped = false

  constructor (components: BlobServiceComponents, init: BlobServiceInit = {}) {
    this.c = components
    this.init = init
  }

  /** A manifest named this blob with this size. */
  noteSize (digest: string, size: number): void {
    if (Number.isSafeInteger(size) && size >= 0) this.sizes.set(digest, size)
  }

  /** The fetch of this blob in progress, if any. */
  job (digest: string): BlobJob | undefined { return this.jobs.get(digest) }

  /** Blobs being fetched now. */
  get activeJobs (): number { return this.jobs.size }

  stop (): void {
    this.stopped = true
    for (const j of this.jobs.values()) j.stop()
  }

  /** Answers one blob request (never throws: failures are answered or cut the connection). */
  async serve (req: BlobRequest, res: ServerResponse, signal: AbortSignal): Promise<void> {
    const m = this.c.metrics
    const verdict = await this.c.gate.check({ host: req.host, repository: req.repository, kind: 'blob', target: req.digest, authorization: req.authorization })
    if (!verdict.ok) { answer(res, verdict.answer); return }
    const up: UpstreamBlob = { host: req.host, repository: req.repository, digest: req.digest, authorization: req.authorization }
    if (req.digest === EMPTY_SHA256) { this.head(res, req, 0, 'none'); res.end(); return }
    try {
      const map = await this.c.maps.get(req.digest)
      if (map !== undefined) {
        this.c.upstreamPieces.bind(map.layout.blobId, up)
        m.blobsFrom('map')
        await this.sendFrom(new ConfirmedBytes(this.c.pieces, map, 3, this.init.pieceDeadlineMs), req, res, signal)
        return
      }
      let job = this.jobs.get(req.digest)
      if (job === undefined && req.range !== undefined) { await this.relayRange(req, res, signal); return }
      if (job === undefined && req.method === 'HEAD') {
        const size = await this.sizeOf(req)
        if (size === undefined) { answer(res, blobUnknown(req, 'the upstream does not have it')); return }
        this.head(res, req, size, 'none')
        res.end()
        return
      }
      if (job === undefined) {
        if (this.stopped) { answer(res, blobUnknown(req, 'the mirror is stopping')); return }
        job = this.startJob(req, up)
        m.blobsFrom('job')
      } else {
        m.blobsFrom('joined')
      }
      const layout = await job.ready()
      this.c.upstreamPieces.bind(layout.blobId, up)
      // a size only a neighbour's map told is not said to the client before the blob proved it
      await job.sized(signal)
      await this.sendFrom(job, req, res, signal)
    } catch (err) {
      this.fail(res, req, err)
    }
  }

  private startJob (req: BlobRequest, up: UpstreamBlob): BlobJob {
    const swarm = this.c.swarm
    const sizeHint = this.sizes.get(req.digest)
    const digest = req.digest
    const job: BlobJob = new BlobJob({
      pieces: this.c.pieces,
      cache: this.c.cache,
      upstream: {
        open: async (offset, signal) => {
          // the latest client's credentials: a token that expired meanwhile is replaced by a fresher one
          const b = job.layout !== undefined ? this.c.upstreamPieces.binding(job.layout.blobId) ?? up : up
          const s = await this.c.client.getBlobRange({ registry: b.host, repository: b.repository }, digest, offset, undefined, { signal, authorization: b.authorization })
          return { body: s, size: s.total }
        }
      },
      ...(swarm !== undefined ? { lenders: this.lenders(swarm, digest) } : {}),
      confirm: async (layout, digests) => {
        await this.c.maps.save(layout, digests)
        swarm?.announce([mapKey(digest)])
      },
      // from its first upstream byte this node is the blob's source: announced, not only claimed (a claim lapses)
      sourcing: () => { swarm?.announce([mapKey(digest)]) },
      failed: () => { swarm?.withdraw([mapKey(digest)]) },
      ...(this.c.log !== undefined ? { log: this.c.log } : {})
    }, {
      digest,
      ...(sizeHint !== undefined ? { sizeHint } : {}),
      ...(this.init.pieceBytes !== undefined ? { pieceBytes: this.init.pieceBytes } : {}),
      ...(this.init.pieceDeadlineMs !== undefined ? { pieceDeadlineMs: this.init.pieceDeadlineMs } : {})
    })
    this.jobs.set(digest, job)
    job.start()
    void job.done().finally(() => {
      if (this.jobs.get(digest) === job) this.jobs.delete(digest)
      this.c.metrics.jobEnded(job)
    })
    return job
  }

  /** The node's neighbours as lenders of this blob's map. */
  private lenders (swarm: MirrorSwarm, digest: string): MapLenders {
    const key = mapKey(digest)
    const timeoutMs = this.init.mapTimeoutMs ?? 3_000
    return {
      holders: async signal => {
        // waiting a little for the scheduler beats fetching a whole blob from the registry again
        const found = await swarm.holders([key], { signal: AbortSignal.any([signal, AbortSignal.timeout(2_500)]), timeoutMs: 2_000 })
        return (found.get(key.toString('hex')) ?? []).filter(h => h.peerId !== swarm.peerId && !swarm.isBanned(h.peerId))
      },
      ask: async (holder, first, signal) => {
        if (swarm.isBanned(holder.peerId)) return undefined
        return await askMap(swarm.dial, holder, digest, first, { timeoutMs, signal })
      },
      ban: (peerId, why) => { swarm.ban(peerId, why) },
      lent: (holder, digests) => { swarm.lent(holder, digests) }
    }
  }

  /** The blob's size: known from a manifest or a HEAD, else asked upstream with the client's credentials. */
  private async sizeOf (req: BlobRequest): Promise<number | undefined> {
    const known = this.sizes.get(req.digest)
    if (known !== undefined) return known
    const size = await this.c.client.headBlob({ registry: req.host, repository: req.repository }, req.digest, { authorization: req.authorization, signal: AbortSignal.timeout(10_000) })
    if (size !== undefined) this.sizes.set(req.digest, size)
    return size
  }

  private head (res: ServerResponse, req: BlobRequest, size: number, range: 'none' | { start: number, end: number }): void {
    res.setHeader('content-type', 'application/octet-stream')
    res.setHeader('docker-content-digest', req.digest)
    res.setHeader('accept-ranges', 'bytes')
    res.setHeader('etag', `"${req.digest}"`)
    if (range === 'none') {
      res.setHeader('content-length', String(size))
      res.statusCode = 200
    } else {
      res.setHeader('content-length', String(range.end - range.start))
      res.setHeader('content-range', `bytes ${range.start}-${range.end - 1}/${size}`)
      res.statusCode = 206
    }
  }

  private async sendFrom (bytes: ConfirmedBytes | BlobJob, req: BlobRequest, res: ServerResponse, signal: AbortSignal): Promise<void> {
    const size = bytes.size
    const range = resolveRange(req.range, size)
    if (range === 'unsatisfiable') {
      answer(res, ociAnswer(416, 'RANGE_INVALID', `range ${req.range ?? ''} of a ${size}-byte blob`, { 'content-range': `bytes */${size}` }))
      return
    }
    this.head(res, req, size, range)
    if (req.method === 'HEAD') { res.end(); return }
    const { start, end } = range === 'none' ? { start: 0, end: size } : range
    res.flushHeaders()
    await sendBytes(res, bytes, start, end, {
      signal,
      ...(this.init.stallMs !== undefined ? { stallMs: this.init.stallMs } : {}),
      onBytes: n => { this.c.metrics.servedBytes += n }
    })
    res.end()
  }

  /** A Range of a blob this node has no map of and is not fetching: straight from the upstream. */
  private async relayRange (req: BlobRequest, res: ServerResponse, signal: AbortSignal): Promise<void> {
    const size = await this.sizeOf(req)
    if (size === undefined) { answer(res, blobUnknown(req, 'the upstream does not have it')); return }
    const range = resolveRange(req.range, size)
    if (range === 'unsatisfiable') {
      answer(res, ociAnswer(416, 'RANGE_INVALID', `range ${req.range ?? ''} of a ${size}-byte blob`, { 'content-range': `bytes */${size}` }))
      return
    }
    const { start, end } = range === 'none' ? { start: 0, end: size } : range
    this.c.metrics.blobsFrom('relayed')
    if (req.method === 'HEAD' || start === end) { this.head(res, req, size, range); res.end(); return }
    if (this.c.rafs?.knows(req.digest) === true) {
      this.head(res, req, size, range)
      res.flushHeaders()
      await this.c.rafs.send(req, res, { start, end }, signal, n => {
        this.c.metrics.relayedBytes += n
        this.c.metrics.servedBytes += n
      })
      res.end()
      return
    }
    const s = await this.c.client.getBlobRange({ registry: req.host, repository: req.repository }, req.digest, start, end - 1, { signal, authorization: req.authorization })
    this.head(res, req, size, range)
    res.flushHeaders()
    for await (const chunk of s) {
      this.c.metrics.relayedBytes += (chunk as Buffer).length
      this.c.metrics.servedBytes += (chunk as Buffer).length
      if (!res.write(chunk)) await new Promise<void>(resolve => { res.once('drain', resolve); res.once('close', resolve) })
      if (res.destroyed) throw new Error('the client went away')
    }
    res.end()
  }

  private fail (res: ServerResponse, req: BlobRequest, err: unknown): void {
    const code = errorCode(err)
    if (res.headersSent) {
      this.c.metrics.cutOff++
      this.c.log?.warn('blob %s for %s/%s cut off: %s', req.digest, req.host, req.repository, describeError(err))
      res.destroy(err instanceof Error ? err : new Error(String(err)))
      return
    }
    const status = (err as { status?: number }).status
    if (code === 'RAFSPEER_ERR_REGISTRY_AUTH' && status === 401) {
      const challenge = (err as { challenge?: string }).challenge
      answer(res, ociAnswer(401, 'UNAUTHORIZED', describeError(err), challenge !== undefined ? { 'www-authenticate': challenge } : undefined))
      return
    }
    if (code === 'RAFSPEER_ERR_REGISTRY_AUTH') { answer(res, ociAnswer(403, 'DENIED', describeError(err))); return }
    this.c.metrics.fallbacks++
    this.c.log?.warn('blob %s for %s/%s: %s', req.digest, req.host, req.repository, describeError(err))
    answer(res, blobUnknown(req, describeError(err)))
  }
}

function blobUnknown (req: BlobRequest, why: string): OciAnswer {
  return ociAnswer(404, 'BLOB_UNKNOWN', `blob ${req.digest} of ${req.host}/${req.repository} cannot be served: ${why}`)
}

/** Writes an OCI error answer (HEAD: no body). */
export function answer (res: ServerResponse, a: OciAnswer): void {
  if (res.headersSent) { res.destroy(); return }
  const body = Buffer.from(JSON.stringify({ errors: [{ code: a.code, message: a.message }] }))
  res.statusCode = a.status
  for (const [k, v] of Object.entries(a.headers ?? {})) res.setHeader(k, v)
  res.setHeader('content-type', 'application/json')
  res.setHeader('content-length', String(body.length))
  res.setHeader('docker-distribution-api-version', 'registry/2.0')
  res.end(res.req.method === 'HEAD' ? undefined : body)
}
