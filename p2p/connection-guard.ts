/**
 * What libp2p's connection manager lacks to keep room for honest neighbours, as a service of the host. libp2p
 * refuses every inbound connection once `maxConnections` are open, whatever they are doing: 300 hosts that dial
 * a daemon and open no stream lock its neighbours out (ECONNRESET) for as long as they like. The guard:
 *
 * - evicts when full: the host lets libp2p accept a few connections past `maxConnections`, and each one past it
 *   closes the least valuable idle connection (lowest tag value, then inbound before outbound, then idle longest);
 *   a newcomer is closed only when every other connection is busy or kept;
 * - reaps idle connections: one with no stream of an application protocol (identify and ping do not count) for
 *   `idleMs` is closed, unless its peer carries a tag (the scheduler, a neighbour recently exchanged chunks with:
 *   see {@link tagPeer});
 * - caps inbound connections per IP address (loopback is exempt unless `limitLoopback`: simulators and tests run
 *   whole swarms on 127.0.0.1);
 * - caps what a connection may queue for a peer that stops reading (`maxWriteBufferBytes`, in each of the two
 *   buffers below the muxer: the encrypted stream's and the socket's): past it the connection is aborted, so a
 *   non-reading neighbour costs at most twice that below its streams.
 *
 * A connection is busy while a stream of an application protocol is open on it, as seen by a sweep every
 * `idleMs / 4` (at most every 5 s) and at every new connection.
 *
 * @example
 * ```ts
 * const guard = new ConnectionGuard({ maxConnections: 256, maxInboundPerIp: 32, idleMs: 30_000 })
 * const node = await createLibp2p({
 *   connectionGater: guard.gater, streamMuxers: [c => guard.capMuxer(yamux()(c))], services: { guard: c => guard.attach(c) }, …
 * })
 * await tagPeer(node, schedulerId, SCHEDULER_TAG, KEEP_TAG_VALUE)
 * ```
 */
import type {
  ComponentLogger, Connection, ConnectionGater, Libp2pEvents, Logger, MessageStream, MultiaddrConnection, PeerId, PeerStore,
  Startable, StreamMuxer, StreamMuxerFactory, TypedEventTarget
} from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'

/** Tags at or above this value keep their peer's connections from the reaper and from eviction. */
export const KEEP_TAG_VALUE = 100
export const DEFAULT_IDLE_CONNECTION_MS = 30_000
/** Bytes a connection may queue for its peer below its streams before it is aborted. */
export const DEFAULT_MAX_CONNECTION_WRITE_BUFFER_BYTES = 32 << 20
/** How long an evicted or reaped connection may take to close cleanly before it is reset. */
const CLOSE_TIMEOUT_MS = 1_000
/** Tag values are read at most this often per peer while connections are sorted. */
const TAG_CACHE_MS = 1_000
/** libp2p's own chatter: a stream of these does not make a connection busy. */
const BACKGROUND_PROTOCOLS = new Set(['/ipfs/id/1.0.0', '/ipfs/id/push/1.0.0', '/ipfs/ping/1.0.0'])

export interface ConnectionGuardInit {
  /** connections kept; each one past it evicts an idle one */
  maxConnections: number
  /** inbound connections from one IP address at once */
  maxInboundPerIp: number
  /** apply `maxInboundPerIp` to loopback addresses too (default false) */
  limitLoopback?: boolean
  /** an untagged connection with no application stream for this long is closed; 0: never (30 s) */
  idleMs?: number
  /** bytes a connection may queue for a peer that does not read before it is aborted (32 MiB) */
  maxWriteBufferBytes?: number
}

/** The parts of libp2p the guard uses (a libp2p service's components). */
export interface ConnectionGuardComponents {
  connectionManager: { getConnections: () => Connection[] }
  events: TypedEventTarget<Libp2pEvents>
  peerStore: Pick<PeerStore, 'get'>
  logger: ComponentLogger
}

export interface ConnectionGuardCounters {
  /** idle connections closed to make room for a new one */
  evicted: number
  /** connections closed after `idleMs` without a stream */
  reaped: number
  /** new connections closed because every other one was busy or kept */
  refusedFull: number
  /** inbound connections refused over `maxInboundPerIp` */
  refusedPerIp: number
}

export class ConnectionGuard implements Startable {
  readonly counters: ConnectionGuardCounters = { evicted: 0, reaped: 0, refusedFull: 0, refusedPerIp: 0 }
  /** to give libp2p as its `connectionGater` */
  readonly gater: ConnectionGater
  private readonly maxConnections: number
  private readonly maxInboundPerIp: number
  private readonly limitLoopback: boolean
  private readonly idleMs: number
  private readonly maxWriteBuffer: number
  private components: ConnectionGuardComponents | undefined
  private log: Logger | undefined
  /** connection id → when it was last seen busy (or opened) */
  private readonly lastBusy = new Map<string, number>()
  private readonly closing = new Set<string>()
  /** IP → inbound connections being upgraded */
  private readonly pending = new Map<string, number>()
  /** inbound connections being upgraded → how to stop counting them as pending */
  private readonly upgrades = new WeakMap<MultiaddrConnection, () => void>()
  private readonly tagValues = new Map<string, { value: number, at: number }>()
  private timer: NodeJS.Timeout | undefined
  /** new connections are judged one at a time, so two cannot evict for the same slot */
  private opening: Promise<void> = Promise.resolve()
  private sweeping = false

  constructor (init: ConnectionGuardInit) {
    this.maxConnections = init.maxConnections
    this.maxInboundPerIp = init.maxInboundPerIp
    this.limitLoopback = init.limitLoopback ?? false
    this.idleMs = Math.max(0, init.idleMs ?? DEFAULT_IDLE_CONNECTION_MS)
    this.maxWriteBuffer = init.maxWriteBufferBytes ?? DEFAULT_MAX_CONNECTION_WRITE_BUFFER_BYTES
    const capWrites = (_peer: PeerId, maConn: MultiaddrConnection): boolean => { this.capWrites(maConn); return false }
    this.gater = {
      denyInboundConnection: maConn => this.denyInbound(maConn),
      denyInboundEncryptedConnection: capWrites,
      denyOutboundEncryptedConnection: capWrites,
      denyInboundUpgradedConnection: (_peer, maConn) => { this.upgraded(maConn); return false }
    }
  }

  /**
   * The muxer factory with the write cap on what each connection's muxer writes to (the encrypted stream): the
   * muxer's frames queue there between drains of the socket, the socket's own buffer is capped by the gater.
   */
  capMuxer<M extends StreamMuxer> (factory: StreamMuxerFactory<M>): StreamMuxerFactory<M> {
    return {
      protocol: factory.protocol,
      createStreamMuxer: (maConn: MessageStream): M => { this.capWrites(maConn); return factory.createStreamMuxer(maConn) }
    }
  }

  /**
   * libp2p leaves the write buffers below a connection's streams unbounded: the muxer stops adding to them when
   * the socket is full, but each drain of the socket lets every stream add a frame more, so a peer that reads a
   * trickle could grow them without end. Past the cap the stream (so the connection) is aborted.
   */
  private capWrites (s: MessageStream): void {
    if (s.maxWriteBufferLength === undefined || s.maxWriteBufferLength > this.maxWriteBuffer) s.maxWriteBufferLength = this.maxWriteBuffer
  }

  /** The service factory's body: libp2p hands the guard its components. */
  attach (components: ConnectionGuardComponents): this {
    this.components = components
    this.log = components.logger.forComponent('rafspeer:connection-guard')
    return this
  }

  start (): void {
    const events = this.need().events
    events.addEventListener('connection:open', this.onOpen)
    events.addEventListener('connection:close', this.onClose)
    if (this.idleMs > 0) {
      this.timer = setInterval(() => { void this.sweep() }, Math.min(5_000, Math.max(100, this.idleMs / 4)))
      this.timer.unref()
    }
  }

  stop (): void {
    const events = this.need().events
    events.removeEventListener('connection:open', this.onOpen)
    events.removeEventListener('connection:close', this.onClose)
    clearInterval(this.timer)
    this.lastBusy.clear()
    this.closing.clear()
    this.tagValues.clear()
  }

  private need (): ConnectionGuardComponents {
    if (this.components === undefined) throw new Error('ConnectionGuard used before libp2p attached it')
    return this.components
  }

  private readonly onOpen = (evt: CustomEvent<Connection>): void => {
    const conn = evt.detail
    this.lastBusy.set(conn.id, Date.now())
    this.opening = this.opening.then(async () => { await this.makeRoom(conn) }).catch(err => { this.log?.error('making room failed: %e', err) })
  }

  private readonly onClose = (evt: CustomEvent<Connection>): void => {
    this.lastBusy.delete(evt.detail.id)
    this.closing.delete(evt.detail.id)
  }

  /** Past `maxConnections`, closes the least valuable idle connections (or the newcomer, when none is idle). */
  private async makeRoom (conn: Connection): Promise<void> {
    const all = this.live()
    if (!all.includes(conn) && conn.status === 'open') all.push(conn)
    let excess = all.length - this.maxConnections
    if (excess <= 0) return
    const now = Date.now()
    const candidates: Array<{ c: Connection, value: number, idleSince: number }> = []
    for (const c of all) {
      if (c === conn) continue
      if (busy(c)) { this.lastBusy.set(c.id, now); continue }
      const value = await this.tagValue(c.remotePeer)
      if (value >= KEEP_TAG_VALUE) continue
      candidates.push({ c, value, idleSince: this.lastBusy.get(c.id) ?? c.timeline.open })
    }
    candidates.sort((a, b) => a.value - b.value || rank(a.c) - rank(b.c) || a.idleSince - b.idleSince)
    for (const { c } of candidates) {
      if (excess <= 0) break
      if (c.status !== 'open' || busy(c)) continue
      this.counters.evicted++
      this.log?.('evicting idle connection %s to %p for a new one', c.id, c.remotePeer)
      this.close(c)
      excess--
    }
    if (excess > 0 && conn.direction === 'inbound' && conn.status === 'open') {
      this.counters.refusedFull++
      this.log?.('every connection is busy: closing the new one from %p', conn.remotePeer)
      this.close(conn)
    }
  }

  /** Closes untagged connections idle past `idleMs`. */
  private async sweep (): Promise<void> {
    if (this.sweeping || this.components === undefined) return
    this.sweeping = true
    try {
      const now = Date.now()
      for (const c of this.live()) {
        if (busy(c)) { this.lastBusy.set(c.id, now); continue }
        if (now - (this.lastBusy.get(c.id) ?? c.timeline.open) < this.idleMs) continue
        if (await this.tagValue(c.remotePeer) > 0) continue
        if (c.status !== 'open' || busy(c)) continue
        this.counters.reaped++
        this.log?.('closing connection %s to %p: idle for %d ms', c.id, c.remotePeer, this.idleMs)
        this.close(c)
      }
    } catch (err) {
      this.log?.error('sweeping idle connections failed: %e', err)
    } finally {
      this.sweeping = false
    }
  }

  /** Open connections not already being closed by us. */
  private live (): Connection[] {
    return this.need().connectionManager.getConnections().filter(c => c.status === 'open' && !this.closing.has(c.id))
  }

  private close (c: Connection): void {
    this.closing.add(c.id)
    c.close({ signal: AbortSignal.timeout(CLOSE_TIMEOUT_MS) }).catch((err: Error) => { c.abort(err) })
  }

  /** The sum of the peer's tag values (0 for a peer the store does not know). */
  private async tagValue (peer: PeerId): Promise<number> {
    const key = peer.toString()
    const now = Date.now()
    const cached = this.tagValues.get(key)
    if (cached !== undefined && now - cached.at < TAG_CACHE_MS) return cached.value
    let value = 0
    try {
      for (const t of (await this.need().peerStore.get(peer)).tags.values()) value += t.value
    } catch { /* unknown peer: no tags */ }
    this.tagValues.set(key, { value, at: now })
    if (this.tagValues.size > 4 * this.maxConnections) {
      for (const [k, v] of this.tagValues) if (now - v.at >= TAG_CACHE_MS) this.tagValues.delete(k)
    }
    return value
  }

  private denyInbound (maConn: MultiaddrConnection): boolean {
    const ip = ipOf(maConn.remoteAddr)
    if (ip === undefined || (!this.limitLoopback && isLoopback(ip))) return false
    let n = this.pending.get(ip) ?? 0
    for (const c of this.live()) if (c.direction === 'inbound' && ipOf(c.remoteAddr) === ip) n++
    if (n >= this.maxInboundPerIp) {
      this.counters.refusedPerIp++
      this.log?.('refusing a connection from %s: %d inbound connections from there already', ip, n)
      return true
    }
    this.pending.set(ip, (this.pending.get(ip) ?? 0) + 1)
    let counted = true
    const done = (): void => {
      if (!counted) return
      counted = false
      const left = (this.pending.get(ip) ?? 1) - 1
      if (left > 0) this.pending.set(ip, left)
      else this.pending.delete(ip)
    }
    this.upgrades.set(maConn, done)
    maConn.addEventListener('close', done, { once: true })
    return false
  }

  private upgraded (maConn: MultiaddrConnection): void {
    this.upgrades.get(maConn)?.()
    this.upgrades.delete(maConn)
  }
}

/**
 * Tags `peer` in the host's peer store, so the guard (and libp2p's own pruning) values its connections: a
 * value of {@link KEEP_TAG_VALUE} or more keeps them open, any value keeps them from the idle reaper. `ttlMs`
 * makes the tag lapse.
 */
export async function tagPeer (host: { peerStore: Pick<PeerStore, 'merge'> }, peer: PeerId, tag: string, value: number,
  ttlMs?: number): Promise<void> {
  await host.peerStore.merge(peer, { tags: { [tag]: { value, ...(ttlMs !== undefined ? { ttl: ttlMs } : {}) } } })
}

/** A stream of an application protocol is open on the connection. */
function busy (c: Connection): boolean {
  return c.streams.some(s => s.protocol !== undefined && s.protocol !== '' && !BACKGROUND_PROTOCOLS.has(s.protocol) &&
    (s.status === 'open' || s.status === 'closing'))
}

/** inbound connections are evicted before our own dials */
function rank (c: Connection): number { return c.direction === 'inbound' ? 0 : 1 }

function ipOf (ma: Multiaddr): string | undefined {
  const first = ma.getComponents()[0]
  return first !== undefined && (first.name === 'ip4' || first.name === 'ip6') ? first.value : undefined
}

function isLoopback (ip: string): boolean {
  return ip.startsWith('127.') || ip === '::1' || ip.startsWith('::ffff:127.')
}
