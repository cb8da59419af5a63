/**
 * The scheduler in the model: the real holder index (blob-level keys) behind modelled messages. Each message takes
 * half a round trip each way and is handled at once on arrival (the scheduler's CPU is not modelled); expired
 * peers are dropped and stale entries swept every `sweepIntervalMs`, as the scheduler service does.
 */
import type { EventQueue, Timed } from './events.js'
import { HolderIndex, HARD_MAX_PEERS, packDigests, type PeerInfo } from './policy.js'
import { schedulerFrameBytes } from './wire.js'

/** the scheduler service's default sweep period */
export const SWEEP_INTERVAL_MS = 250
const NO_DIGESTS = packDigests([])

/** The scheduler's side of one node: who it is and its counters. */
export interface DirectoryPeer {
  peerId: string
  info: PeerInfo
  alive: () => boolean
  counted: (sent: number, received: number, bytesSent: number, bytesReceived: number) => void
}

export class Directory implements Timed {
  private held: HolderIndex | undefined
  announces = 0
  resolves = 0
  heartbeats = 0
  reports = 0
  expired = 0
  bytesIn = 0
  bytesOut = 0
  private running = true

  constructor (private readonly queue: EventQueue, private readonly halfRttMs: number, init: { peers: number, heartbeatMs: number, random: () => number }) {
    this.held = new HolderIndex({
      maxPeers: Math.min(HARD_MAX_PEERS, init.peers + 16),
      heartbeatMs: init.heartbeatMs,
      now: () => this.queue.now,
      random: init.random
    })
    queue.after(SWEEP_INTERVAL_MS, this)
  }

  /** the scheduler's holder index (until {@link release}) */
  get index (): HolderIndex {
    if (this.held === undefined) throw new Error('the model\'s directory was released')
    return this.held
  }

  /** Lets go of the index (after the run: what it held is then measured as the heap it frees). */
  release (): void { this.held = undefined }

  /** the sweep timer */
  fire (): void {
    if (!this.running) return
    this.expired += this.index.expire().length
    this.index.sweep()
    this.queue.after(SWEEP_INTERVAL_MS, this)
  }

  stop (): void { this.running = false }

  private send (p: DirectoryPeer, bytes: number, handle: () => void, frames = 1): void {
    p.counted(frames, 0, bytes, 0)
    this.queue.after(this.halfRttMs, {
      fire: () => {
        this.bytesIn += bytes
        handle()
      }
    })
  }

  /** A (re)started node's first frames: an announce resetting what it had, with its info, and a heartbeat. */
  hello (p: DirectoryPeer, heartbeatMs: number): void {
    const bytes = schedulerFrameBytes({ type: 'announce', reset: true, info: p.info, digests: NO_DIGESTS }) +
      schedulerFrameBytes({ type: 'heartbeat', intervalMs: heartbeatMs, load: { activeUploads: 0, recentUploadBps: 0 } })
    this.send(p, bytes, () => {
      this.announces++
      this.heartbeats++
      this.index.announce(p.peerId, NO_DIGESTS, { reset: true, info: p.info })
      this.index.heartbeat(p.peerId, heartbeatMs, { activeUploads: 0, recentUploadBps: 0 })
    }, 2)
  }

  heartbeat (p: DirectoryPeer, heartbeatMs: number, load: { activeUploads: number, recentUploadBps: number }): void {
    this.send(p, schedulerFrameBytes({ type: 'heartbeat', intervalMs: heartbeatMs, load }), () => {
      this.heartbeats++
      this.index.heartbeat(p.peerId, heartbeatMs, load)
    })
  }

  report (p: DirectoryPeer, outcomes: Array<{ peerId: string, chunks: number, bytes: number, ms: number, failed: boolean, bad: boolean }>): void {
    this.send(p, schedulerFrameBytes({ type: 'report', outcomes }), () => {
      this.reports++
      this.index.report(p.peerId, outcomes)
    })
  }

  /**
   * Who works on the blob (`packedKey`: the blob id's 32 bytes), at most `max`; the look-up records the asker as
   * one of them (a claim). With `group`, the answer starts with the blob's group (the asker included if it is one),
   * as the daemon's locator asks. `answer` gets the ranked holders' peer ids (best first, never the asker), the group
   * and the blob's swarm size (with a group; else 0), a round trip later.
   */
  resolve (p: DirectoryPeer, packedKey: Buffer, max: number, answer: (holders: string[], group: string[] | undefined, swarm: number) => void, group = 0): void {
    this.send(p, schedulerFrameBytes({ type: 'resolve', id: 0, max, digests: packedKey, group }), () => {
      this.resolves++
      const raw = this.index.resolveRaw(p.peerId, packedKey, max, group)
      const holders: string[] = []
      const g = raw.groups?.[0] ?? 0
      const named: string[] | undefined = raw.groups !== undefined ? [] : undefined
      for (let j = 0; j < raw.counts[0]!; j++) {
        const id = raw.peers[raw.refs[j]!]!.id
        if (j < g) named!.push(id)
        else holders.push(id)
      }
      const swarm = raw.swarms?.[0] ?? 0
      const bytes = schedulerFrameBytes({ type: 'resolved', id: 0, peers: raw.peers.map(r => r.holder), counts: raw.counts, refs: raw.refs, ...(raw.groups !== undefined ? { groups: raw.groups, swarms: raw.swarms } : {}) })
      this.bytesOut += bytes
      this.queue.after(this.halfRttMs, {
        fire: () => {
          if (!p.alive()) return
          p.counted(0, 1, 0, bytes)
          answer(holders, named, swarm)
        }
      })
    })
  }
}
