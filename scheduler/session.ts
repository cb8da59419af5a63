/** The client's session stream: two write lanes over one libp2p stream to the scheduler. */
import type { Stream } from '@libp2p/interface'
import { encodeFrame } from '../p2p/index.js'
import { encodeMessage, DIGEST_BYTES, type SchedulerMessage } from './protocol.js'

/** digests per ANNOUNCE/WITHDRAW/RESOLVE frame the client sends (256 KiB): small enough to interleave resolves */
export const FRAME_DIGESTS = 8192

/** bytes a session may queue towards a scheduler that does not read; past it resolves answer empty at once */
const MAX_QUEUED_BYTES = 8 * 1024 * 1024

/**
 * One session stream: a writer with an urgent lane (resolves, heartbeats, reports) ahead of a bulk lane
 * (holdings). A scheduler that stops reading fills the urgent lane up to `MAX_QUEUED_BYTES` (then `sendUrgent`
 * refuses) and, once a drain takes longer than `drainTimeoutMs`, loses the session (the client reconnects).
 */
export class Session {
  closed = false
  readonly openedAt = Date.now()
  /** when the oldest resolve the scheduler has not answered since its last frame was sent (undefined: none) */
  awaitingSince: number | undefined
  private readonly urgent: Uint8Array[] = []
  private urgentBytes = 0
  private readonly bulk: Array<Iterator<Uint8Array>> = []
  private writing = false
  private idleWaiters: Array<() => void> = []

  constructor (readonly stream: Stream, private readonly drainTimeoutMs: number, private readonly onError: (err: Error) => void) {}

  /** false when the lane is full: the scheduler is not reading */
  sendUrgent (body: Uint8Array): boolean {
    if (this.urgentBytes + body.length > MAX_QUEUED_BYTES) return false
    this.urgent.push(body)
    this.urgentBytes += body.length
    void this.pump()
    return true
  }

  /** frames produced lazily, so a full re-announce of millions of digests is never materialised at once */
  sendBulk (bodies: Iterator<Uint8Array>): void {
    this.bulk.push(bodies)
    void this.pump()
  }

  private next (): Uint8Array | undefined {
    const u = this.urgent.shift()
    if (u !== undefined) {
      this.urgentBytes -= u.length
      return u
    }
    while (this.bulk.length > 0) {
      const it = this.bulk[0].next()
      if (it.done !== true) return it.value
      this.bulk.shift()
    }
    return undefined
  }

  private async pump (): Promise<void> {
    if (this.writing || this.closed) return
    this.writing = true
    try {
      for (let body = this.next(); body !== undefined && !this.closed; body = this.next()) {
        if (!this.stream.send(encodeFrame(body))) await this.stream.onDrain({ signal: AbortSignal.timeout(this.drainTimeoutMs) })
      }
    } catch (err) {
      this.onError(err as Error)
    } finally {
      this.writing = false
      for (const w of this.idleWaiters.splice(0)) w()
    }
  }

  /** resolves once everything queued so far was handed to the stream (or the session closed) */
  async idle (): Promise<void> {
    if (!this.writing) return
    await new Promise<void>((resolve) => { this.idleWaiters.push(resolve) })
  }
}

/** Batches of at most `FRAME_DIGESTS` digests (given as 32-byte one-byte strings), packed. */
function * packedBatches (keys: readonly string[]): Generator<Buffer> {
  let i = 0
  do {
    const n = Math.min(FRAME_DIGESTS, keys.length - i)
    const packed = Buffer.allocUnsafe(n * DIGEST_BYTES)
    for (let j = 0; j < n; j++) packed.write(keys[i + j], j * DIGEST_BYTES, 'latin1')
    yield packed
    i += n
  } while (i < keys.length)
}

/** Frame bodies for `keys`, made lazily `FRAME_DIGESTS` at a time; `first` marks the one that may carry a reset and the peer info. */
export function * bodies (keys: readonly string[], make: (digests: Buffer, first: boolean) => SchedulerMessage): Generator<Uint8Array> {
  let first = true
  for (const packed of packedBatches(keys)) {
    yield encodeMessage(make(packed, first))
    first = false
  }
}
