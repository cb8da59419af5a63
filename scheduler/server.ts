/**
 * The scheduler service: serves `/rafspeer/scheduler/1.0.0` from any libp2p node over a {@link HolderIndex}, plus a
 * standalone node (TCP + noise + yamux) for `rafspeer scheduler` and tests, and the persistent identity it runs under.
 */
import { setImmediate as yieldLoop } from 'node:timers/promises'
import { multiaddr } from '@multiformats/multiaddr'
import type { Connection, Libp2p, PrivateKey, Stream } from '@libp2p/interface'
import { describeError, errorCode, silentLogger, type Logger } from '../base/index.js'
import {
  FrameReader, P2P_CODE, SCHEDULER_PROTOCOL_1_0, SCHEDULER_PROTOCOLS, createHost, encodeFrame, loadOrCreateKey, sendWithBackpressure, type Host
} from '../p2p/index.js'
import type { PeerInfo, SchedulerNodeInit, SchedulerServiceInit } from './types.js'
import { HolderIndex, type RawAnswer } from './index-store.js'
import {
  decodeMessage, encodePeerEntry, encodeResolved, SchedulerError, MAX_ADDRS, MAX_FRAME_BYTES,
  MAX_HOLDERS_PER_ANSWER
} from './protocol.js'

const DEFAULT_SWEEP_INTERVAL_MS = 250
const DEFAULT_STREAMS_PER_CONNECTION = 4
const DEFAULT_MAX_HOLDERS = 4
/** stale refs removed per maintenance tick: bounded so a tick stays in the low milliseconds */
const SWEEP_BUDGET = 200_000
/** a client that reads no answers for this long loses its stream */
const DRAIN_TIMEOUT_MS = 30_000
/** a frame begun must be complete within this (a peer trickling bytes loses its session) */
const FRAME_TIMEOUT_MS = 30_000
/** a session that kept the event loop this long yields it, so one peer's burst does not starve the others */
const YIELD_AFTER_MS = 4
/** refused announces are logged at most this often */
const REFUSAL_LOG_MS = 10_000

const noop = (): void => {}

/** The parts of a libp2p node the service uses. */
export interface SchedulerServiceComponents {
  libp2p: Pick<Libp2p, 'handle' | 'unhandle'>
}

export class SchedulerService {
  readonly index: HolderIndex
  private readonly libp2p: SchedulerServiceComponents['libp2p']
  private readonly log: Logger
  private readonly sweepIntervalMs: number
  private readonly maxStreams: number
  private readonly sessions = new Set<Stream>()
  private timer: NodeJS.Timeout | undefined
  private refusalLoggedAt = 0
  private refusalsUnlogged = 0

  constructor (components: SchedulerServiceComponents, init: SchedulerServiceInit = {}) {
    this.libp2p = components.libp2p
    this.index = new HolderIndex(init)
    this.log = (init.logger ?? silentLogger).forComponent('rafspeer:scheduler')
    this.sweepIntervalMs = init.sweepIntervalMs ?? DEFAULT_SWEEP_INTERVAL_MS
    this.maxStreams = init.maxStreamsPerConnection ?? DEFAULT_STREAMS_PER_CONNECTION
  }

  async start (): Promise<void> {
    await this.libp2p.handle(SCHEDULER_PROTOCOLS, (stream, connection) => { void this.serve(stream, connection) }, {
      maxInboundStreams: this.maxStreams
    })
    this.timer = setInterval(() => { this.maintain() }, this.sweepIntervalMs)
    this.timer.unref()
  }

  async stop (): Promise<void> {
    clearInterval(this.timer)
    this.timer = undefined
    await this.libp2p.unhandle(SCHEDULER_PROTOCOLS).catch(noop)
    for (const s of this.sessions) s.abort(new Error('scheduler stopping'))
    this.sessions.clear()
  }

  /** Open client sessions. */
  get sessionCount (): number { return this.sessions.size }

  /** Drops expired peers and sweeps some stale entries; runs on a timer, callable directly. */
  maintain (): void {
    try {
      const gone = this.index.expire()
      if (gone.length > 0) this.log.info('expired %d peer(s): %s', gone.length, gone.slice(0, 8).join(' '))
      this.index.sweep(SWEEP_BUDGET)
    } catch (err) {
      this.log.error('maintenance failed: %s', describeError(err))
    }
  }

  private async serve (stream: Stream, connection: Connection): Promise<void> {
    // the connection's authenticated peer id is the only identity we trust
    const peerId = connection.remotePeer.toString()
    // a 1.0 client rejects an answer with swarm sizes
    const swarms = stream.protocol !== SCHEDULER_PROTOCOL_1_0
    this.sessions.add(stream)
    let busySince = performance.now()
    /** the session announced (with its addresses): from then on the index must know the peer */
    let sessionAnnounced = false
    try {
      const frames = new FrameReader(stream, {
        // a session idles between frames as long as it likes, but a frame once begun must arrive whole
        frameTimeoutMs: FRAME_TIMEOUT_MS,
        what: `scheduler session of ${peerId}`,
        malformed: m => new SchedulerError('RAFSPEER_ERR_SCHED_MALFORMED', `malformed scheduler frame: ${m}`)
      })
      for await (const body of frames.frames(MAX_FRAME_BYTES)) {
        // frames already buffered arrive through microtasks only: give other sockets their turn now and then
        if (performance.now() - busySince > YIELD_AFTER_MS) {
          await yieldLoop()
          busySince = performance.now()
        }
        const m = decodeMessage(body)
        switch (m.type) {
          case 'announce': {
            sessionAnnounced = true
            const r = this.index.announce(peerId, m.digests, { reset: m.reset, info: m.info !== undefined ? this.cleanInfo(m.info, peerId) : undefined })
            if (r.refused > 0) this.refusedFrom(peerId, r.refused)
            break
          }
          case 'withdraw':
            this.index.withdraw(peerId, m.digests)
            break
          case 'resolve': {
            const answer = this.index.resolveRaw(peerId, m.digests, m.max === 0 ? DEFAULT_MAX_HOLDERS : Math.min(m.max, MAX_HOLDERS_PER_ANSWER), m.group ?? 0)
            await sendWithBackpressure(stream, encodeFrame(answerBody(m.id, swarms ? answer : { ...answer, swarms: undefined })), { timeoutMs: DRAIN_TIMEOUT_MS, what: `answer to ${peerId}` })
            break
          }
          case 'report': {
            const banned = this.index.report(peerId, m.outcomes)
            if (banned.length > 0) this.log.warn('banned %s (bad bytes reported by several peers)', banned.join(' '))
            break
          }
          case 'heartbeat':
            // a peer this index dropped (it expired while this process was too busy to hear it, or the table
            // displaced it) would come back without its addresses and holdings: a new session makes the client
            // announce everything again, addresses first
            if (this.index.peer(peerId) === undefined && sessionAnnounced) {
              throw new SchedulerError('RAFSPEER_ERR_SCHED_MALFORMED', 'heartbeat of a peer the index no longer knows: reconnect and announce again')
            }
            this.index.heartbeat(peerId, m.intervalMs, m.load)
            break
          case 'leave':
            this.index.leave(peerId)
            break
          case 'resolved':
            throw new SchedulerError('RAFSPEER_ERR_SCHED_MALFORMED', 'malformed scheduler frame: an answer sent to the scheduler')
        }
      }
      await stream.close().catch(noop)
    } catch (err) {
      if (this.sessions.has(stream)) this.log.error('closing scheduler stream from %s: %s', peerId, describeError(err))
      stream.abort(err as Error)
    } finally {
      this.sessions.delete(stream)
    }
  }

  /** Logs refusals at most every {@link REFUSAL_LOG_MS}: a flood of announces must not become a flood of logs. */
  private refusedFrom (peerId: string, n: number): void {
    this.refusalsUnlogged += n
    const now = Date.now()
    if (now - this.refusalLoggedAt < REFUSAL_LOG_MS) return
    this.log.warn('refused %d digest(s) (latest from %s): its quota, or a full index where nobody holds more per weight (%j)',
      this.refusalsUnlogged, peerId, this.index.stats())
    this.refusalsUnlogged = 0
    this.refusalLoggedAt = now
  }

  /** Only parseable addresses, without `/p2p/<id>`, deduplicated. */
  private cleanInfo (info: PeerInfo, peerId: string): PeerInfo {
    const addrs: string[] = []
    for (const a of info.addrs) {
      try {
        const s = multiaddr(a).decapsulateCode(P2P_CODE).toString()
        if (s !== '' && s !== '/' && !addrs.includes(s)) addrs.push(s)
      } catch {
        this.log.error('ignoring unparseable address from %s: %s', peerId, a.slice(0, 80))
      }
      if (addrs.length >= MAX_ADDRS) break
    }
    return { ...info, zone: info.zone.trim(), addrs }
  }
}

/**
 * The RESOLVED body for an answer. Peer table entries are encoded once per peer and cached. If the answer would
 * outgrow a frame, the tail digests are answered with no holders (table indexes are assigned in order of first
 * use, so the peers of a prefix of digests are a prefix of the table).
 */
export function answerBody (id: number, a: RawAnswer): Buffer {
  const entries = a.peers.map((p) => (p.wire ??= encodePeerEntry(p.holder)))
  const limit = MAX_FRAME_BYTES - 64
  let size = a.counts.length
  for (const e of entries) size += e.length
  const perKey = (a.groups !== undefined ? 1 : 0) + (a.groups !== undefined && a.swarms !== undefined ? 4 : 0)
  size += a.refs.length * 2 + a.counts.length * perKey
  if (size <= limit) return encodeResolved(id, entries, a.counts, a.refs, a.groups, a.swarms)
  // the trailers cover every key, answered or not
  size = a.counts.length * (1 + perKey)
  let peersUsed = 0
  let refsUsed = 0
  const counts = new Uint8Array(a.counts.length)
  for (let i = 0; i < a.counts.length; i++) {
    let grow = a.counts[i] * 2
    let peersAfter = peersUsed
    for (let k = 0; k < a.counts[i]; k++) {
      const ref = a.refs[refsUsed + k]
      while (peersAfter <= ref) grow += entries[peersAfter++].length
    }
    if (size + grow > limit) break
    size += grow
    counts[i] = a.counts[i]
    refsUsed += a.counts[i]
    peersUsed = peersAfter
  }
  return encodeResolved(id, entries.slice(0, peersUsed), counts, a.refs.subarray(0, refsUsed), a.groups, a.swarms)
}

/** A running standalone scheduler. */
export interface SchedulerNode {
  node: Host
  service: SchedulerService
  peerId: string
  /** listen multiaddrs including `/p2p/<peer id>`, ready to give to clients */
  multiaddrs: string[]
  stop: () => Promise<void>
}

/** Starts a libp2p host serving the scheduler protocol, sized for every peer of the swarm. */
export async function startSchedulerNode (init: SchedulerNodeInit = {}): Promise<SchedulerNode> {
  const node = await schedulerHost(init)
  const service = new SchedulerService({ libp2p: node }, init)
  try {
    await service.start()
  } catch (err) {
    await node.stop()
    throw err
  }
  const peerId = node.peerId.toString()
  return {
    node,
    service,
    peerId,
    multiaddrs: node.getMultiaddrs().map((ma) => ma.toString()),
    stop: async () => {
      await service.stop()
      await node.stop()
    }
  }
}

/** The libp2p host of a scheduler: sized for every peer of the swarm. */
export async function schedulerHost (init: Pick<SchedulerNodeInit, 'privateKey' | 'listen' | 'maxPeers'>): Promise<Host> {
  const maxPeers = init.maxPeers ?? 10_000
  return await createHost({
    ...(init.privateKey !== undefined ? { privateKey: init.privateKey } : {}),
    listen: init.listen ?? ['/ip4/127.0.0.1/tcp/0'],
    maxConnections: maxPeers + 64,
    // after a scheduler restart every peer of a host reconnects at once (many peers share a host in tests and sims)
    inboundConnectionThreshold: Math.max(64, maxPeers),
    maxIncomingPendingConnections: 256
  })
}

/**
 * The peer identity kept in `file` (a protobuf-encoded private key, mode 0600); a new Ed25519 key is created and
 * saved when the file does not exist, so a restarted scheduler keeps its peer id and its clients' addresses stay valid.
 */
export async function loadOrCreatePeerKey (file: string): Promise<PrivateKey> {
  try {
    return await loadOrCreateKey(file)
  } catch (err) {
    if (errorCode(err) === 'RAFSPEER_ERR_PEER_KEY') throw new SchedulerError('RAFSPEER_ERR_SCHED_CONFIG', (err as Error).message, { cause: err })
    throw err
  }
}
