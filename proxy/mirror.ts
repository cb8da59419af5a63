/**
 * The registry mirror of a node: an HTTP server (GET and HEAD only) that containerd (hosts.toml, `?ns=`), docker
 * (`registry-mirrors`) and skopeo (`registries.conf`) pull through. Manifests go to the upstream (`manifest-service`),
 * blobs come from the cache, then neighbours, then the upstream (`blob-service`), and no byte of a repository is
 * served before the upstream accepted the client for it (`auth-gate`). It uses the node's cache and swarm: pieces
 * of blobs are cached, announced and served to neighbours like chunks, and its piece maps are served over
 * `/rafspeer/piecemap/1.0.0`.
 *
 * @example
 * ```ts
 * const mirror = await Mirror.start({ cache: node.cache, swarm: node.swarm, logger }, {
 *   listen: '127.0.0.1:5002', dir: '/var/lib/rafspeer/proxy', defaultUpstream: 'docker.io' })
 * // containerd: hosts.toml with [host."http://127.0.0.1:5002"] capabilities = ["pull", "resolve"]
 * await mirror.stop()
 * ```
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { answerClientError, delay, describeError, headDeadlines, parseHostPort, type ComponentLogger, type Logger } from '../base/index.js'
import type { BlobCache } from '../cache/index.js'
import { Fetcher, type NeighbourSource, type P2PNode } from '../peer/index.js'
import { RegistryClient } from '../registry/index.js'
import { AuthGate, DEFAULT_AUTH_TTL_MS } from './auth-gate.js'
import { BlobService, answer, type MirrorSwarm } from './blob-service.js'
import { ProxyError, ociAnswer } from './errors.js'
import { ManifestService } from './manifest-service.js'
import { ManifestStore } from './manifest-store.js'
import { MapServer } from './map-exchange.js'
import { MapStore } from './map-store.js'
import { ProxyMetrics } from './metrics.js'
import { DEFAULT_PIECE_BYTES, mapKey } from './piece-map.js'
import { PieceFetch } from './pieces.js'
import { PieceHints } from './piece-hints.js'
import { RafsRanges } from './rafs-ranges.js'
import { parseRoute } from './routes.js'
import { UpstreamPieces, Upstreams } from './upstream.js'

export const DEFAULT_PROXY_LISTEN = '127.0.0.1:5002'
/** deadline of upstream calls without a long body, and the idle deadline of blob bodies */
export const DEFAULT_UPSTREAM_TIMEOUT_MS = 10_000
/** the largest request head (a Bearer token is a few KiB) */
export const MAX_HEADER_BYTES = 16 << 10
/** a client must send its request line and headers within this; a slowloris socket is answered 408 and closed */
export const DEFAULT_HEADERS_TIMEOUT_MS = 10_000
/**
 * a client must send its whole request within this: the mirror takes GET and HEAD only, so it is the head again,
 * with room for a slow link. The answer (a blob of gigabytes) is not bound by it; `stallMs` guards that side.
 */
export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000
/** an idle keep-alive connection between two requests is closed after this */
export const DEFAULT_KEEP_ALIVE_TIMEOUT_MS = 5_000
/**
 * A neighbour's piece is hedged to another holder after this long without the whole piece, and given up after
 * DEFAULT_PIECE_REQUEST_MS: a busy machine takes a second or more to move 4 MiB through an encrypted stream, and a
 * hedge doubles that work (at 1.5 s, a 4-node pull on two cores hedged a third of its pieces)
 */
export const DEFAULT_PIECE_HEDGE_MS = 4_000
export const DEFAULT_PIECE_REQUEST_MS = 10_000
/** a source attempt on a piece that delivers nothing for this long goes to the next source (the upstream) */
export const DEFAULT_PIECE_ATTEMPT_MS = 30_000

export interface MirrorComponents {
  cache: BlobCache
  /** the node's swarm; without it, blobs come from the cache and the upstream only */
  swarm?: P2PNode
  logger: ComponentLogger
}

export interface MirrorInit {
  /** `host:port` (port 0: any free port) */
  listen?: string
  /** state: confirmed piece maps, manifests, repositories seen public */
  dir: string
  defaultUpstream?: string
  upstreams?: Record<string, { plainHttp?: boolean }>
  restrictUpstreams?: boolean
  plainHttp?: boolean | 'auto'
  authTtlMs?: number
  pieceBytes?: number
  upstreamTimeoutMs?: number
  /** fetch pipeline of pieces */
  fetch?: { concurrency?: number, timeoutMs?: number, retries?: number, deadlineMs?: number }
  /** a client waiting this long without a new byte is cut off */
  stallMs?: number
  /** deadline of one piece-map request to a neighbour */
  mapTimeoutMs?: number
  /** a neighbour has not sent a whole piece after this long: the piece is asked of another too (4 s) */
  pieceHedgeMs?: number
  /** request line and headers must arrive within this (10 s) */
  headersTimeoutMs?: number
  /** the whole request must arrive within this (30 s, at least `headersTimeoutMs`) */
  requestTimeoutMs?: number
}

export class Mirror {
  readonly metrics: ProxyMetrics
  readonly gate: AuthGate
  readonly blobs: BlobService
  /** Range reads of Nydus data blobs, checked chunk by chunk */
  readonly rafs: RafsRanges
  readonly fetcher: Fetcher
  /** the swarm as a source of pieces (its own scores and bans) */
  readonly neighbours: NeighbourSource | undefined
  private readonly server: Server
  private readonly mapServer: MapServer | undefined
  private readonly manifests: ManifestService
  private readonly client: RegistryClient
  private readonly log: Logger
  private readonly sockets = new Set<import('node:net').Socket>()
  private addr = ''

  private constructor (components: MirrorComponents, init: MirrorInit) {
    const { cache, swarm, logger } = components
    this.log = logger.forComponent('rafspeer:proxy')
    const upstreams = new Upstreams({
      ...(init.defaultUpstream !== undefined ? { defaultUpstream: init.defaultUpstream } : {}),
      plainHttp: init.plainHttp ?? 'auto',
      hosts: init.upstreams ?? {},
      ...(init.restrictUpstreams !== undefined ? { restrict: init.restrictUpstreams } : {})
    })
    this.client = new RegistryClient({
      plainHttp: host => upstreams.plainHttp(host),
      timeoutMs: init.upstreamTimeoutMs ?? DEFAULT_UPSTREAM_TIMEOUT_MS,
      retries: 1,
      userAgent: 'rafspeer-mirror/0.1',
      logger
    })
    const upstreamPieces = new UpstreamPieces({ client: this.client })
    // pieces are megabytes: a holder is hedged only when it is really slow, not while it sends one
    const hints = new PieceHints()
    const neighbours = swarm?.neighbourSource({
      hedgeAfterMs: init.pieceHedgeMs ?? DEFAULT_PIECE_HEDGE_MS,
      requestTimeoutMs: DEFAULT_PIECE_REQUEST_MS,
      // the alternative to a neighbour is the registry: wait for the scheduler's answer
      schedulerWaitMs: 2_000,
      resolveTimeoutMs: 2_500,
      // a holder whose upload slots are full is asked again shortly rather than the registry
      busyRetries: 20,
      maxRequestBytes: init.pieceBytes ?? DEFAULT_PIECE_BYTES
    }, logger, resolver => hints.wrap(resolver))
    this.neighbours = neighbours
    this.fetcher = new Fetcher({ cache, sources: [...(neighbours !== undefined ? [neighbours] : []), upstreamPieces], logger }, {
      ...(init.fetch?.concurrency !== undefined ? { concurrency: init.fetch.concurrency } : {}),
      timeoutMs: init.fetch?.timeoutMs ?? DEFAULT_PIECE_ATTEMPT_MS,
      ...(init.fetch?.retries !== undefined ? { retries: init.fetch.retries } : {}),
      deadlineMs: init.fetch?.deadlineMs ?? 60_000
    })
    const pieces = new PieceFetch({ fetcher: this.fetcher, cache, log: this.log })
    const maps = new MapStore(join(init.dir, 'maps'))
    this.gate = new AuthGate({
      probe: {
        probe: async t => {
          const t0 = performance.now()
          try {
            const ref = { registry: t.host, repository: t.repository }
            const opts = { authorization: t.authorization, signal: AbortSignal.timeout(init.upstreamTimeoutMs ?? DEFAULT_UPSTREAM_TIMEOUT_MS) }
            if (t.kind === 'blob') {
              const size = await this.client.headBlob(ref, t.target, opts)
              if (size !== undefined) this.blobs.noteSize(t.target, size)
              return size === undefined ? 'missing' : 'ok'
            }
            return await this.client.headManifest({ ...ref, digest: t.target }, opts) === undefined ? 'missing' : 'ok'
          } finally {
            this.metrics.upstreamCall(t.host, `check_${t.kind}`, performance.now() - t0)
          }
        }
      },
      logger
    }, { ttlMs: init.authTtlMs ?? DEFAULT_AUTH_TTL_MS, stateFile: join(init.dir, 'public-repos.json') })
    this.metrics = new ProxyMetrics({
      fetch: () => this.fetcher.counters,
      auth: () => this.gate.counters,
      activeJobs: () => this.blobs.activeJobs,
      listen: () => this.addr,
      rafs: () => this.rafs.counters,
      ...(neighbours !== undefined ? { neighbours: () => ({ ...neighbours.counters }) } : {})
    })
    const mirrorSwarm: MirrorSwarm | undefined = swarm === undefined
      ? undefined
      : {
          peerId: swarm.peerId,
          holders: async (digests, opts) => await swarm.holders(digests, opts),
          announce: digests => { swarm.announce(digests) },
          withdraw: digests => { swarm.withdraw(digests) },
          lent: (holder, digests) => { hints.add(holder, digests) },
          dial: swarm.host,
          isBanned: peerId => neighbours!.isBanned(peerId),
          ban: (peerId, why) => { neighbours!.ban(peerId, why) }
        }
    const rafs = this.rafs = new RafsRanges({ client: this.client, dir: join(init.dir, 'bootstraps'), log: this.log })
    this.blobs = new BlobService({
      client: this.client, cache, pieces, upstreamPieces, maps, gate: this.gate, metrics: this.metrics, log: this.log, rafs,
      ...(mirrorSwarm !== undefined ? { swarm: mirrorSwarm } : {})
    }, {
      pieceBytes: init.pieceBytes ?? DEFAULT_PIECE_BYTES,
      ...(init.mapTimeoutMs !== undefined ? { mapTimeoutMs: init.mapTimeoutMs } : {}),
      ...(init.stallMs !== undefined ? { stallMs: init.stallMs } : {}),
      pieceDeadlineMs: init.fetch?.deadlineMs ?? 60_000
    })
    this.manifests = new ManifestService({
      client: this.client, store: new ManifestStore(join(init.dir, 'manifests')), gate: this.gate, metrics: this.metrics, log: this.log,
      noteSize: (d, n) => { this.blobs.noteSize(d, n) },
      noteManifest: (host, repository, bytes) => { rafs.noteManifest(host, repository, bytes) }
    }, init.upstreamTimeoutMs !== undefined ? init.upstreamTimeoutMs + 5_000 : undefined)
    this.mapServer = swarm === undefined
      ? undefined
      : new MapServer({
        libp2p: swarm.host,
        maps: {
          servable: async digest => {
            const job = this.blobs.job(digest)
            if (job !== undefined) return job.servable()
            const m = await maps.get(digest)
            return m === undefined ? undefined : { layout: m.layout, digests: m.digests, final: true }
          },
          changed: async (digest, ms, signal) => {
            const job = this.blobs.job(digest)
            if (job !== undefined) await job.changed(ms, signal)
            else await delay(ms, signal).catch(() => {})
          }
        },
        logger
      })
    const headersTimeout = init.headersTimeoutMs ?? DEFAULT_HEADERS_TIMEOUT_MS
    this.server = createServer({
      maxHeaderSize: MAX_HEADER_BYTES,
      ...headDeadlines(headersTimeout, init.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS),
      keepAliveTimeout: DEFAULT_KEEP_ALIVE_TIMEOUT_MS
    }, (req, res) => { void this.handle(req, res, upstreams) })
    this.server.on('connection', s => { this.sockets.add(s); s.once('close', () => this.sockets.delete(s)) })
    this.server.on('clientError', (err, socket) => {
      // malformed HTTP, headers over the limit or too slow: a 4xx when the socket still takes one, never a crash
      this.metrics.request('malformed', answerClientError(err, socket))
    })
    this.maps = maps
    this.swarm = swarm
  }

  private readonly maps: MapStore
  private readonly swarm: P2PNode | undefined

  /** Starts serving; rejects (leaving nothing open) when the address cannot be listened on. */
  static async start (components: MirrorComponents, init: MirrorInit): Promise<Mirror> {
    const listen = init.listen ?? DEFAULT_PROXY_LISTEN
    const hp = parseHostPort(listen)
    if (hp === undefined) throw new ProxyError('RAFSPEER_ERR_PROXY_LISTEN', `proxy listen address ${listen}: expected host:port`)
    const m = new Mirror(components, init)
    try {
      await m.mapServer?.start()
      await new Promise<void>((resolve, reject) => {
        m.server.once('error', reject)
        m.server.listen(hp.port, hp.host, () => { m.server.off('error', reject); resolve() })
      })
    } catch (err) {
      await m.mapServer?.stop().catch(() => {})
      throw new ProxyError('RAFSPEER_ERR_PROXY_LISTEN', `cannot serve the registry mirror on ${listen}: ${(err as Error).message}`, { cause: err })
    }
    const a = m.server.address() as AddressInfo
    m.addr = a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`
    m.fetcher.start()
    void m.announceMaps()
    m.log.info('registry mirror on http://%s%s', m.addr, init.defaultUpstream !== undefined ? ` (default upstream ${init.defaultUpstream})` : '')
    return m
  }

  /** `host:port` it listens on. */
  get address (): string { return this.addr }

  async stop (): Promise<void> {
    this.blobs.stop()
    await new Promise<void>(resolve => {
      this.server.close(() => { resolve() })
      for (const s of this.sockets) s.destroy()
    })
    this.fetcher.stop()
    this.neighbours?.close()
    await this.mapServer?.stop()
    await this.gate.flush()
    await this.client.close()
  }

  /** Tells the swarm about the maps confirmed before this start. */
  private async announceMaps (): Promise<void> {
    if (this.swarm === undefined) return
    try {
      const digests = await this.maps.list()
      for (let i = 0; i < digests.length; i += 1024) this.swarm.announce(digests.slice(i, i + 1024).map(mapKey))
      if (digests.length > 0) this.log.info('announced %d piece maps', digests.length)
    } catch (err) {
      this.log.warn('announcing piece maps failed: %s', describeError(err))
    }
  }

  private async handle (req: IncomingMessage, res: ServerResponse, upstreams: Upstreams): Promise<void> {
    const ac = new AbortController()
    res.once('close', () => { if (!res.writableFinished) ac.abort(new ProxyError('RAFSPEER_ERR_PROXY_UNAVAILABLE', 'the client went away')) })
    req.resume()
    const route = parseRoute(req.method, req.url)
    const kind = 'status' in route ? 'other' : route.kind
    const t0 = performance.now()
    res.once('finish', () => {
      this.metrics.request(kind, res.statusCode)
      if (this.log.isLevelEnabled('debug')) this.log.debug('%s %s%s → %d in %d ms', req.method, req.url, req.headers.range !== undefined ? ` (${req.headers.range})` : '', res.statusCode, Math.round(performance.now() - t0))
    })
    res.once('close', () => { if (!res.writableFinished) this.metrics.request(kind, 499) })
    try {
      if ('status' in route) { answer(res, route); return }
      res.setHeader('docker-distribution-api-version', 'registry/2.0')
      if (route.kind === 'base') {
        res.setHeader('content-type', 'application/json')
        res.setHeader('content-length', '2')
        res.end(req.method === 'HEAD' ? undefined : '{}')
        return
      }
      const host = upstreams.choose(route.ns)
      if (typeof host !== 'string') { answer(res, host); return }
      const authorization = req.headers.authorization ?? null
      const method = req.method as 'GET' | 'HEAD'
      if (route.kind === 'manifest') {
        await this.manifests.serve({
          method, host, repository: route.name, reference: route.reference, byDigest: route.byDigest, authorization,
          accept: req.headers.accept
        }, res)
        return
      }
      await this.blobs.serve({ method, host, repository: route.name, digest: route.digest, authorization, range: req.headers.range }, res, ac.signal)
    } catch (err) {
      this.log.error('%s %s: %s', req.method, req.url, describeError(err))
      if (res.headersSent) res.destroy()
      else answer(res, ociAnswer(500, 'UNSUPPORTED', `internal error: ${describeError(err)}`))
    }
  }
}
