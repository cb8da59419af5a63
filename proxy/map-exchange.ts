/**
 * `/rafspeer/piecemap/1.0.0`: a neighbour asks for the piece map of a blob, from a piece index on. A holder that is
 * still fetching the blob from upstream sends what it has so far; while it has nothing new it sends PENDING about
 * once a second (so the asker's read deadline measures a silent holder, not a slow blob). Frames are those of
 * `p2p/framing.ts`.
 *
 * ```
 * request body = version u8 (1) | blob sha256 [32] | first u32 BE
 * reply body   = status u8 | payload
 * payload      = OK: a map part (piece-map.ts `encodeMap`: size, piece size, first, digests) · ERROR: UTF-8 message
 *                · NOT_FOUND, PENDING: empty
 * ```
 * One request per stream; PENDING frames may precede the one answer. Every length is bounded before it is
 * buffered, every read has a deadline, and the map part is checked against the blob before it is used.
 *
 * @example
 * ```ts
 * const server = new MapServer({ libp2p: host, maps }, {})
 * await server.start()
 * const part = await askMap(host, holder, 'sha256:…', 0, { timeoutMs: 3000, signal })
 * ```
 */
import type { Connection, Libp2p, Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { describeError, type ComponentLogger, type Logger } from '../base/index.js'
import { FrameReader, PIECEMAP_PROTOCOL, encodeFrame, sendWithBackpressure, type ChunkHolder } from '../p2p/index.js'
import { ProxyError } from './errors.js'
import { MAX_PIECES, MapLayout, PIECE_DIGEST_BYTES, decodeMap, encodeMap, type MapPart, type PieceLayout } from './piece-map.js'

export { PIECEMAP_PROTOCOL }

export const MAP_PROTOCOL_VERSION = 1
export const MapStatus = { OK: 0, NOT_FOUND: 1, ERROR: 3, PENDING: 4 } as const
export const MapRequestLayout = { VERSION: 0, DIGEST: 1, FIRST: 33, BYTES: 37 } as const
const MAX_MESSAGE_BYTES = 1024
const MAX_REPLY_BYTES = 1 + MapLayout.HEADER_BYTES + MAX_PIECES * PIECE_DIGEST_BYTES
/** PENDING frames an asker takes for one request */
export const MAX_PENDING_FRAMES = 120
export const PENDING_EVERY_MS = 1_000
/** how long a holder keeps a request open waiting for new pieces before it answers with none */
export const DEFAULT_HOLD_MS = 10_000
export const DEFAULT_MAP_TIMEOUT_MS = 3_000
const DEFAULT_MAX_INBOUND_STREAMS = 256

const malformed = (m: string): ProxyError => new ProxyError('RAFSPEER_ERR_PROXY_MAP_PROTOCOL', m)

export interface ServableMap { layout: PieceLayout, digests: Buffer[], final: boolean }

/** What this node can tell neighbours about its maps. */
export interface MapProvider {
  /**
   * The digests this node vouches for (a confirmed map, or one it is computing from the upstream's own bytes), with
   * the blob's layout; 'pending' while it is getting the blob but has no layout yet (the asker is told to wait);
   * undefined when it has none for this blob.
   */
  servable: (digest: string) => Promise<ServableMap | 'pending' | undefined>
  /** resolves when the blob's servable map may have grown (or after `ms`) */
  changed: (digest: string, ms: number, signal: AbortSignal) => Promise<void>
}

export interface MapServerComponents {
  libp2p: Pick<Libp2p, 'handle' | 'unhandle'>
  maps: MapProvider
  logger?: ComponentLogger
}

export interface MapServerInit {
  holdMs?: number
  timeoutMs?: number
  maxInboundStreams?: number
}

export interface MapServerCounters { requests: number, served: number, notFound: number, failed: number }

export class MapServer {
  readonly counters: MapServerCounters = { requests: 0, served: 0, notFound: 0, failed: 0 }
  private readonly libp2p: MapServerComponents['libp2p']
  private readonly maps: MapProvider
  private readonly log: Logger | undefined
  private readonly holdMs: number
  private readonly timeoutMs: number
  private readonly maxInboundStreams: number
  private readonly streams = new Set<Stream>()
  private readonly stopping = new AbortController()
  private started = false

  constructor (components: MapServerComponents, init: MapServerInit = {}) {
    this.libp2p = components.libp2p
    this.maps = components.maps
    this.log = components.logger?.forComponent('rafspeer:map-server')
    this.holdMs = init.holdMs ?? DEFAULT_HOLD_MS
    this.timeoutMs = init.timeoutMs ?? DEFAULT_MAP_TIMEOUT_MS
    this.maxInboundStreams = init.maxInboundStreams ?? DEFAULT_MAX_INBOUND_STREAMS
  }

  async start (): Promise<void> {
    if (this.started) return
    await this.libp2p.handle(PIECEMAP_PROTOCOL, async (stream, connection) => { await this.serve(stream, connection) }, {
      maxInboundStreams: this.maxInboundStreams
    })
    this.started = true
  }

  async stop (): Promise<void> {
    if (!this.started) return
    this.started = false
    this.stopping.abort()
    await this.libp2p.unhandle(PIECEMAP_PROTOCOL)
    for (const s of this.streams) s.abort(new Error('map server stopped'))
    this.streams.clear()
  }

  private async serve (stream: Stream, connection: Connection): Promise<void> {
    const what = `piece map for ${connection.remotePeer.toString()}`
    this.streams.add(stream)
    this.counters.requests++
    const reader = new FrameReader(stream, { what, timeoutMs: this.timeoutMs, frameTimeoutMs: this.timeoutMs, highWaterBytes: 4096, malformed, timeout: malformed })
    try {
      const body = await reader.readFrame(MapRequestLayout.BYTES)
      if (body === undefined || body.byteLength !== MapRequestLayout.BYTES) throw malformed(`${what}: request of ${body?.byteLength ?? 0} bytes`)
      const req = body.subarray()
      if (req[MapRequestLayout.VERSION] !== MAP_PROTOCOL_VERSION) throw malformed(`${what}: version ${req[MapRequestLayout.VERSION]}`)
      const digest = `sha256:${Buffer.from(req.subarray(MapRequestLayout.DIGEST, MapRequestLayout.FIRST)).toString('hex')}`
      const first = Buffer.from(req.subarray(MapRequestLayout.FIRST)).readUInt32BE(0)
      reader.release()
      const send = async (b: Uint8Array): Promise<void> => { await sendWithBackpressure(stream, encodeFrame(b), { timeoutMs: this.timeoutMs, what }) }
      const until = Date.now() + this.holdMs
      for (;;) {
        const s = await this.maps.servable(digest)
        if (s === undefined || (s === 'pending' && Date.now() >= until)) {
          this.counters.notFound++
          await send(Uint8Array.of(MapStatus.NOT_FOUND))
          break
        }
        if (s !== 'pending' && first > s.layout.count) {
          await send(errorReply(`first piece ${first} past the blob's ${s.layout.count}`))
          break
        }
        if (s !== 'pending' && (s.digests.length > first || s.final || Date.now() >= until)) {
          const part: MapPart = { size: s.layout.size, pieceBytes: s.layout.pieceBytes, first, digests: s.digests.slice(first) }
          this.counters.served++
          await send(Buffer.concat([Uint8Array.of(MapStatus.OK), encodeMap(part)]))
          break
        }
        const known = s === 'pending' ? -1 : s.digests.length
        await this.maps.changed(digest, Math.max(1, Math.min(PENDING_EVERY_MS, until - Date.now())), this.stopping.signal)
        if (this.stopping.signal.aborted) throw new Error('map server stopped')
        const now = await this.maps.servable(digest)
        if ((now === 'pending' ? -1 : now?.digests.length) === known) await send(Uint8Array.of(MapStatus.PENDING))
      }
      await stream.close({ signal: AbortSignal.timeout(this.timeoutMs) })
    } catch (err) {
      this.counters.failed++
      this.log?.debug('%s: %s', what, describeError(err))
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    } finally {
      reader.release()
      this.streams.delete(stream)
    }
  }
}

function errorReply (message: string): Buffer {
  const msg = Buffer.from(message, 'utf8').subarray(0, MAX_MESSAGE_BYTES)
  return Buffer.concat([Uint8Array.of(MapStatus.ERROR), msg])
}

export interface AskMapOptions {
  /** deadline of the dial and of every wait for a frame */
  timeoutMs: number
  signal?: AbortSignal
}

/**
 * Asks `holder` for the map of `digest` from piece `first`. Resolves the part (checked against the blob: sizes,
 * counts, bounds) or undefined when the holder has no map; throws RAFSPEER_ERR_PROXY_MAP_PROTOCOL when it broke
 * the protocol or said ERROR, and the stream's error when it timed out or reset.
 */
export async function askMap (libp2p: Pick<Libp2p, 'dialProtocol'>, holder: ChunkHolder, digest: string, first: number,
  opts: AskMapOptions): Promise<{ layout: PieceLayout, part: MapPart } | undefined> {
  const what = `piece map of ${digest} from peer:${holder.peerId}`
  const dialSignal = AbortSignal.any([AbortSignal.timeout(opts.timeoutMs), ...(opts.signal !== undefined ? [opts.signal] : [])])
  const addrs = holder.addrs.map(a => multiaddr(`${a.replace(/\/p2p\/[^/]+$/, '')}/p2p/${holder.peerId}`))
  const stream = await libp2p.dialProtocol(addrs.length > 0 ? addrs : peerIdFromString(holder.peerId), PIECEMAP_PROTOCOL, { signal: dialSignal })
  const onAbort = (): void => { stream.abort(new Error(`${what}: aborted`)) }
  opts.signal?.addEventListener('abort', onAbort, { once: true })
  const reader = new FrameReader(stream, { what, timeoutMs: opts.timeoutMs, highWaterBytes: MAX_REPLY_BYTES, malformed, timeout: malformed })
  try {
    const req = Buffer.alloc(MapRequestLayout.BYTES)
    req[MapRequestLayout.VERSION] = MAP_PROTOCOL_VERSION
    Buffer.from(digest.slice('sha256:'.length), 'hex').copy(req, MapRequestLayout.DIGEST)
    req.writeUInt32BE(first, MapRequestLayout.FIRST)
    stream.send(encodeFrame(req))
    await stream.close({ signal: AbortSignal.timeout(opts.timeoutMs) })
    for (let pending = 0; ; pending++) {
      if (pending > MAX_PENDING_FRAMES) throw malformed(`${what}: more than ${MAX_PENDING_FRAMES} pending frames`)
      const body = await reader.readFrame(MAX_REPLY_BYTES)
      if (body === undefined || body.byteLength < 1) throw malformed(`${what}: no reply`)
      const status = body.get(0)
      const payload = Buffer.from(body.subarray(1))
      switch (status) {
        case MapStatus.PENDING:
          if (payload.length !== 0) throw malformed(`${what}: PENDING with a payload`)
          continue
        case MapStatus.NOT_FOUND:
          return undefined
        case MapStatus.ERROR:
          throw malformed(`${what}: holder says ${payload.subarray(0, MAX_MESSAGE_BYTES).toString('utf8')}`)
        case MapStatus.OK: {
          let decoded
          try { decoded = decodeMap(payload, digest) } catch (err) { throw malformed(`${what}: ${(err as Error).message}`) }
          if (decoded.part.first !== first) throw malformed(`${what}: asked from piece ${first}, got from ${decoded.part.first}`)
          return decoded
        }
        default:
          throw malformed(`${what}: unknown status ${status}`)
      }
    }
  } catch (err) {
    stream.abort(err instanceof Error ? err : new Error(String(err)))
    throw err
  } finally {
    opts.signal?.removeEventListener('abort', onAbort)
    reader.release()
  }
}
