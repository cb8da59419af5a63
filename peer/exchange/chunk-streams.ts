/**
 * Chunk streams kept open between requests: an asker that is done with a stream (every reply read) leaves it idle
 * here, and its next request to the same holder goes on it instead of on a new stream. A libp2p stream costs a
 * multistream negotiation and, at both ends, the peer store's bookkeeping and the protocol handler's set-up: in the
 * swarm, where most requests carry one or two chunks (and every REDIRECT is a new request), that was most of a
 * request's CPU ({@link ChunkChannel}).
 *
 * Idle streams are closed after `idleMs` (well within the holder's own idle deadline, `chunk-server.ts`: it never
 * has to abort one), at most `maxIdlePerPeer` are kept per holder, and one whose connection closed is dropped.
 *
 * @example
 * ```ts
 * const streams = new ChunkStreams({ dial: async (peer, signal) => await node.dialProtocol(addr, CHUNK_PROTOCOL, { signal }) })
 * const { channel } = await streams.acquire(holder, 'peer:' + holder.peerId, 3000, signal)
 * for await (const r of channel.exchange(names)) use(r)
 * streams.release(holder.peerId, channel)
 * ```
 */
import type { Stream } from '@libp2p/interface'
import type { ChunkHolder } from '../../p2p/index.js'
import { ChunkChannel } from './chunk-protocol.js'

/** how long a stream stays open with no request on it (the holder waits 10 s for one) */
export const DEFAULT_STREAM_IDLE_MS = 2_000
/** idle streams kept per holder */
export const DEFAULT_MAX_IDLE_STREAMS_PER_PEER = 4

export interface ChunkStreamsComponents {
  /** opens a new chunk-protocol stream to the holder */
  dial: (holder: ChunkHolder, signal: AbortSignal) => Promise<Stream>
}

export interface ChunkStreamsInit {
  idleMs?: number
  maxIdlePerPeer?: number
}

export interface ChunkStreamsCounters {
  /** streams opened */
  opened: number
  /** requests sent on a stream opened for an earlier one */
  reused: number
  /** idle streams closed (idle too long, too many, or at close) */
  closedIdle: number
}

interface Idle { channel: ChunkChannel, timer: NodeJS.Timeout }

export class ChunkStreams {
  readonly counters: ChunkStreamsCounters = { opened: 0, reused: 0, closedIdle: 0 }
  private readonly dial: ChunkStreamsComponents['dial']
  private readonly idleMs: number
  private readonly maxIdlePerPeer: number
  /** per holder, its idle streams, the most recently used last */
  private readonly idle = new Map<string, Idle[]>()
  private closed = false

  constructor (components: ChunkStreamsComponents, init: ChunkStreamsInit = {}) {
    this.dial = components.dial
    this.idleMs = Math.max(1, init.idleMs ?? DEFAULT_STREAM_IDLE_MS)
    this.maxIdlePerPeer = Math.max(0, init.maxIdlePerPeer ?? DEFAULT_MAX_IDLE_STREAMS_PER_PEER)
  }

  /** Idle streams kept now (all holders). */
  get idleCount (): number {
    let n = 0
    for (const list of this.idle.values()) n += list.length
    return n
  }

  /**
   * A channel to `holder` for one exchange: an idle one when there is one (`reused`), else a new stream.
   * `fresh`: always a new stream (a reused one just failed).
   */
  async acquire (holder: ChunkHolder, what: string, timeoutMs: number, signal: AbortSignal, fresh = false): Promise<{ channel: ChunkChannel, reused: boolean }> {
    const list = fresh ? undefined : this.idle.get(holder.peerId)
    while (list !== undefined && list.length > 0) {
      const { channel, timer } = list.pop()!
      clearTimeout(timer)
      if (list.length === 0) this.idle.delete(holder.peerId)
      if (channel.usable) {
        this.counters.reused++
        return { channel, reused: true }
      }
      channel.abort(new Error(`${what}: idle stream no longer usable`))
    }
    const stream = await this.dial(holder, signal)
    this.counters.opened++
    return { channel: new ChunkChannel(stream, timeoutMs, what), reused: false }
  }

  /** `channel` is done with an exchange: kept for the holder's next request when it may take one, else closed. */
  release (peerId: string, channel: ChunkChannel): void {
    // the holder ended its side after the replies (a holder that serves one request per stream): ours ends too, or
    // the half-open stream would count against the connection's stream limit for good
    if (!channel.usable) { channel.close(); return }
    let list = this.idle.get(peerId)
    if (this.closed || this.maxIdlePerPeer === 0 || (list?.length ?? 0) >= this.maxIdlePerPeer) {
      this.counters.closedIdle++
      channel.close()
      return
    }
    if (list === undefined) this.idle.set(peerId, list = [])
    const entry: Idle = {
      channel,
      timer: setTimeout(() => {
        const l = this.idle.get(peerId)
        const at = l?.indexOf(entry) ?? -1
        if (at < 0) return
        l!.splice(at, 1)
        if (l!.length === 0) this.idle.delete(peerId)
        this.counters.closedIdle++
        channel.close()
      }, this.idleMs)
    }
    entry.timer.unref()
    list.push(entry)
  }

  /** Closes every idle stream; streams released later are closed at once. */
  close (): void {
    this.closed = true
    for (const list of this.idle.values()) {
      for (const { channel, timer } of list) {
        clearTimeout(timer)
        this.counters.closedIdle++
        channel.close()
      }
    }
    this.idle.clear()
  }
}
