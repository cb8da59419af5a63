/**
 * The scheduler protocol served over a {@link SwarmDirectory} (issue 13): the same `/rafspeer/scheduler/1.0.0` the
 * daemons speak, with the state in the directory instead of this process, so several schedulers can run in front
 * of one Redis Cluster and any of them can die. Keys are blob ids (a daemon in blob mode announces and resolves the
 * 32 bytes of a blob id).
 *
 * Per message: ANNOUNCE records the peer (the connection's peer id, never a claimed one) as holder of the keys;
 * RESOLVE looks each key up (at most `maxKeysPerResolve`, concurrently) and, like the in-memory index, records the
 * asker as a holder of what it asked for (it fetches them next: later askers are sent to it); a RESOLVE that asks
 * for a group gets each key's group first (its first holders in join order, as the directory keeps it: alike from
 * every scheduler in front of it), the asker's claim recorded before the look-up; REPORT feeds the
 * reputations; HEARTBEAT refreshes the peer's TTL, and when the directory no longer knows the peer (its record
 * expired, Redis lost it in a failover) the session is closed, so the client reconnects and announces everything
 * again. So is a session some of whose updates the directory failed to record (Redis failing over), at its first
 * heartbeat the directory answers again. A directory that cannot answer (RAFSPEER_ERR_DIRECTORY_UNAVAILABLE) gets
 * empty answers: peers then fetch from the registry, never wait.
 */
import type { Connection, Libp2p, Stream } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import { describeError, errorCode, silentLogger, type ComponentLogger, type Logger } from '../base/index.js'
import { FrameReader, P2P_CODE, SCHEDULER_PROTOCOL_1_0, SCHEDULER_PROTOCOLS, encodeFrame, sendWithBackpressure, type ChunkHolder, type Host } from '../p2p/index.js'
import type { GroupLookup, PeerEntry, SwarmDirectory } from './directory/index.js'
import {
  decodeMessage, encodePeerEntry, encodeResolved, MAX_ADDRS, MAX_FRAME_BYTES, MAX_GROUP, MAX_HOLDERS_PER_ANSWER, SchedulerError
} from './protocol.js'
import { schedulerHost } from './server.js'
import type { PeerInfo, SchedulerNodeInit } from './types.js'

const DEFAULT_MAX_HOLDERS = 4
/** keys one RESOLVE may look up (blob level: a read asks for one blob, a mount for a few) */
export const DEFAULT_MAX_KEYS_PER_RESOLVE = 256
/** look-ups in flight for one RESOLVE */
const LOOKUP_CONCURRENCY = 32
const DRAIN_TIMEOUT_MS = 30_000
/** a frame begun must be complete within this (a peer trickling bytes loses its session) */
const FRAME_TIMEOUT_MS = 30_000
const DEFAULT_MISSED_HEARTBEATS = 3
const DEFAULT_HEARTBEAT_MS = 5_000
const DEFAULT_EXPIRE_INTERVAL_MS = 1_000
/** directory failures are logged at most this often */
const FAILURE_LOG_MS = 10_000

export interface DirectoryServiceComponents {
  libp2p: Pick<Libp2p, 'handle' | 'unhandle'>
  directory: SwarmDirectory
  logger?: ComponentLogger
}

export interface DirectoryServiceInit {
  maxKeysPerResolve?: number
  /** a peer silent for this many of its heartbeat intervals is dropped by the directory (3) */
  missedHeartbeats?: number
  /** how often the in-memory directory drops expired peers (Redis expires them itself) */
  expireIntervalMs?: number
  maxStreamsPerConnection?: number
  /** record an asker as holder of what it resolves (default true, as the in-memory index) */
  claimMisses?: boolean
}

interface SessionState {
  peerId: string
  info: PeerInfo | undefined
  intervalMs: number
  /** an announce, claim or withdraw of this session did not reach the directory: the peer's entries are wrong */
  lost: boolean
  /** the client speaks 1.1 or later: an answer with groups tells each key's swarm size */
  swarms: boolean
}

export class DirectorySchedulerService {
  readonly directory: SwarmDirectory
  private readonly libp2p: DirectoryServiceComponents['libp2p']
  private readonly log: Logger
  private readonly maxKeys: number
  private readonly missed: number
  private readonly expireIntervalMs: number
  private readonly maxStreams: number
  private readonly claimMisses: boolean
  private readonly sessions = new Set<Stream>()
  private timer: NodeJS.Timeout | undefined
  private failureLoggedAt = 0
  private failuresUnlogged = 0

  constructor (components: DirectoryServiceComponents, init: DirectoryServiceInit = {}) {
    this.libp2p = components.libp2p
    this.directory = components.directory
    this.log = (components.logger ?? silentLogger).forComponent('rafspeer:scheduler')
    this.maxKeys = init.maxKeysPerResolve ?? DEFAULT_MAX_KEYS_PER_RESOLVE
    this.missed = init.missedHeartbeats ?? DEFAULT_MISSED_HEARTBEATS
    this.expireIntervalMs = init.expireIntervalMs ?? DEFAULT_EXPIRE_INTERVAL_MS
    this.maxStreams = init.maxStreamsPerConnection ?? 4
    this.claimMisses = init.claimMisses ?? true
  }

  async start (): Promise<void> {
    await this.libp2p.handle(SCHEDULER_PROTOCOLS, (stream, connection) => { void this.serve(stream, connection) }, { maxInboundStreams: this.maxStreams })
    if (this.directory.kind === 'memory') {
      this.timer = setInterval(() => { void this.directory.expire().catch(() => {}) }, this.expireIntervalMs)
      this.timer.unref()
    }
  }

  async stop (): Promise<void> {
    clearInterval(this.timer)
    await this.libp2p.unhandle(SCHEDULER_PROTOCOLS).catch(() => {})
    for (const s of this.sessions) s.abort(new Error('scheduler stopping'))
    this.sessions.clear()
  }

  get sessionCount (): number { return this.sessions.size }

  private async serve (stream: Stream, connection: Connection): Promise<void> {
    const st: SessionState = { peerId: connection.remotePeer.toString(), info: undefined, intervalMs: DEFAULT_HEARTBEAT_MS, lost: false, swarms: stream.protocol !== SCHEDULER_PROTOCOL_1_0 }
    this.sessions.add(stream)
    try {
      const frames = new FrameReader(stream, {
        // a session idles between frames as long as it likes, but a frame once begun must arrive whole
        frameTimeoutMs: FRAME_TIMEOUT_MS,
        what: `scheduler session of ${st.peerId}`,
        malformed: m => new SchedulerError('RAFSPEER_ERR_SCHED_MALFORMED', `malformed scheduler frame: ${m}`)
      })
      for await (const body of frames.frames(MAX_FRAME_BYTES)) {
        const m = decodeMessage(body)
        switch (m.type) {
          case 'announce': {
            if (m.info !== undefined) st.info = cleanInfo(m.info)
            const entry = this.entry(st)
            if (entry === undefined) break
            const keys = hexKeys(m.digests)
            if (keys.length === 0 && !m.reset && m.info === undefined) break
            const done = await this.guard('announce', async () => {
              await this.directory.announce(entry, keys, { reset: m.reset, ttlMs: st.intervalMs * this.missed })
              return true
            })
            if (done === undefined) st.lost = true
            break
          }
          case 'withdraw':
            if (await this.guard('withdraw', async () => { await this.directory.withdraw(st.peerId, hexKeys(m.digests)); return true }) === undefined) st.lost = true
            break
          case 'resolve': {
            const max = m.max === 0 ? DEFAULT_MAX_HOLDERS : Math.min(m.max, MAX_HOLDERS_PER_ANSWER)
            const group = Math.min(m.group ?? 0, MAX_GROUP)
            const body = encodeAnswer(m.id, await this.resolve(st, hexKeys(m.digests), max, group), group > 0, st.swarms)
            await sendWithBackpressure(stream, encodeFrame(body), { timeoutMs: DRAIN_TIMEOUT_MS, what: `answer to ${st.peerId}` })
            break
          }
          case 'report': {
            const banned = await this.guard('report', async () => await this.directory.report(st.peerId, m.outcomes)) ?? []
            if (banned.length > 0) this.log.warn('banned %s (bad bytes reported by several peers)', banned.join(' '))
            break
          }
          case 'heartbeat': {
            if (m.intervalMs > 0) st.intervalMs = m.intervalMs
            const known = await this.guard('heartbeat', async () => await this.directory.heartbeat(st.peerId, m.load, st.intervalMs * this.missed))
            // the directory forgot this peer (expired, or lost in a failover): a new session makes the client
            // announce everything again
            if (known === false && st.info !== undefined) {
              throw new SchedulerError('RAFSPEER_ERR_SCHED_MALFORMED', 'the directory no longer knows this peer: reconnect and announce again')
            }
            // the directory answers again, but missed some of this peer's updates (it failed over meanwhile): the
            // client's next session sends everything, resetting what the directory has
            if (known === true && st.lost) {
              throw new SchedulerError('RAFSPEER_ERR_SCHED_MALFORMED', 'the directory missed updates of this peer: reconnect and announce again')
            }
            break
          }
          case 'leave':
            await this.guard('leave', async () => { await this.directory.leave(st.peerId) })
            break
          case 'resolved':
            throw new SchedulerError('RAFSPEER_ERR_SCHED_MALFORMED', 'malformed scheduler frame: an answer sent to the scheduler')
        }
      }
      await stream.close().catch(() => {})
    } catch (err) {
      if (this.sessions.has(stream)) this.log.info('closing scheduler stream from %s: %s', st.peerId, describeError(err))
      stream.abort(err as Error)
    } finally {
      this.sessions.delete(stream)
    }
  }

  private entry (st: SessionState): PeerEntry | undefined {
    return st.info === undefined ? undefined : { id: st.peerId, ...st.info }
  }

  /**
   * Per key, its group (with `group` > 0) and its holders, best first; the asker is recorded as a holder of every
   * key it asked for. With a group, the claim comes first, as in the in-memory index (`HolderIndex.resolveRaw`): an
   * asker among a blob's first holders is told it is one of its group, so every asker of that moment is told the
   * same group, and the group members agree on who fetches which chunk from the source.
   */
  private async resolve (st: SessionState, keys: string[], max: number, group: number): Promise<GroupLookup[]> {
    const out: GroupLookup[] = keys.map(() => ({ group: [], holders: [], swarm: 0 }))
    const looked = Math.min(keys.length, this.maxKeys)
    if (group > 0) await this.claim(st, keys.slice(0, looked))
    let next = 0
    const worker = async (): Promise<void> => {
      for (let i = next++; i < looked; i = next++) {
        const found = await this.guard('lookup', async () => await this.directory.lookupGroup(keys[i]!, { asker: st.peerId, max, group }))
        if (found === undefined) continue
        // the group first, then as many ranked holders as an answer has room for
        found.holders = found.holders.slice(0, Math.max(0, MAX_HOLDERS_PER_ANSWER - found.group.length))
        out[i] = found
      }
    }
    await Promise.all(Array.from({ length: Math.min(LOOKUP_CONCURRENCY, looked) }, worker))
    if (group === 0) await this.claim(st, keys.slice(0, looked))
    return out
  }

  /** Records the asker as a holder of `keys` (it fetches them next), when it can be reached. */
  private async claim (st: SessionState, keys: string[]): Promise<void> {
    const entry = this.entry(st)
    if (!this.claimMisses || entry === undefined || entry.addrs.length === 0 || keys.length === 0) return
    const done = await this.guard('claim', async () => { await this.directory.announce(entry, keys, { ttlMs: st.intervalMs * this.missed }); return true })
    if (done === undefined) st.lost = true
  }

  /** Runs a directory call; a failure is logged (rate-limited) and answered with undefined. */
  private async guard<T> (what: string, call: () => Promise<T>): Promise<T | undefined> {
    try {
      return await call()
    } catch (err) {
      this.failuresUnlogged++
      const now = Date.now()
      if (now - this.failureLoggedAt >= FAILURE_LOG_MS) {
        this.log.warn('directory %s failed (%d failures since the last log): %s', what, this.failuresUnlogged, errorCode(err) ?? describeError(err))
        this.failureLoggedAt = now
        this.failuresUnlogged = 0
      }
      return undefined
    }
  }
}

function hexKeys (packed: Buffer): string[] {
  const out: string[] = []
  for (let i = 0; i + 32 <= packed.length; i += 32) out.push(packed.toString('hex', i, i + 32))
  return out
}

/** Only parseable addresses, without `/p2p/<id>`, deduplicated. */
function cleanInfo (info: PeerInfo): PeerInfo {
  const addrs: string[] = []
  for (const a of info.addrs) {
    try {
      const s = multiaddr(a).decapsulateCode(P2P_CODE).toString()
      if (s !== '' && s !== '/' && !addrs.includes(s)) addrs.push(s)
    } catch { /* an unparseable address is skipped */ }
    if (addrs.length >= MAX_ADDRS) break
  }
  return { ...info, zone: info.zone.trim(), addrs }
}

/**
 * The RESOLVED body: a table of the distinct holders, then per key indexes into it, its group first; with
 * `grouped`, the trailer saying how many of each key's holders are its group, and with `swarms` too the one saying
 * how many holders each key has.
 */
function encodeAnswer (id: number, perKey: GroupLookup[], grouped: boolean, swarms: boolean): Buffer {
  const table = new Map<string, number>()
  const entries: Buffer[] = []
  const counts = new Uint8Array(perKey.length)
  const groups = grouped ? new Uint8Array(perKey.length) : undefined
  const sizes = grouped && swarms ? new Uint32Array(perKey.length) : undefined
  const refs: number[] = []
  perKey.forEach((answer, i) => {
    const listed: ChunkHolder[] = [...answer.group, ...answer.holders]
    counts[i] = listed.length
    if (groups !== undefined) groups[i] = answer.group.length
    if (sizes !== undefined) sizes[i] = answer.swarm
    for (const h of listed) {
      let at = table.get(h.peerId)
      if (at === undefined) {
        at = entries.length
        table.set(h.peerId, at)
        entries.push(encodePeerEntry({ peerId: h.peerId, addrs: h.addrs }))
      }
      refs.push(at)
    }
  })
  return encodeResolved(id, entries, counts, Uint16Array.from(refs), groups, sizes)
}

/** A running standalone scheduler over a directory. */
export interface DirectorySchedulerNode {
  node: Host
  service: DirectorySchedulerService
  peerId: string
  multiaddrs: string[]
  stop: () => Promise<void>
}

/**
 * A libp2p host serving the scheduler protocol over `directory` (closed with the node). Several of these in front
 * of one Redis Cluster share one swarm: a peer may use any of them.
 */
export async function startDirectorySchedulerNode (directory: SwarmDirectory, init: Pick<SchedulerNodeInit, 'privateKey' | 'listen' | 'maxPeers'> & DirectoryServiceInit & { logger?: ComponentLogger } = {}): Promise<DirectorySchedulerNode> {
  const node = await schedulerHost(init)
  const service = new DirectorySchedulerService({ libp2p: node, directory, ...(init.logger !== undefined ? { logger: init.logger } : {}) }, init)
  try {
    await service.start()
  } catch (err) {
    await node.stop()
    throw err
  }
  return {
    node,
    service,
    peerId: node.peerId.toString(),
    multiaddrs: node.getMultiaddrs().map(ma => ma.toString()),
    stop: async () => {
      await service.stop()
      await node.stop()
      await directory.close()
    }
  }
}
