/**
 * One run of the model: the clock and its events, the links, the scheduler, the image's blobs and the nodes; it
 * starts each node at its stagger, kills the ones drawn to fail (and restarts them when asked), and ends when
 * every node that can finish has finished.
 */
import { Directory } from './directory.js'
import { EventQueue, type Timed } from './events.js'
import { Links } from './links.js'
import { fakeDigestHex, fakePeerId, mulberry32 } from './random.js'
import { bucketBurst, limiterBurst, uploadBurst } from './policy.js'
import { SimNode } from './node.js'
import type { Config } from './config.js'

/** one data blob of the image */
export interface BlobSpec {
  index: number
  hex: string
  /** the blob id's 32 bytes: the blob's key at the scheduler (and in have messages) */
  key: Buffer
  chunks: number
  bytes: number
  chunkSize: number
  lastSize: number
  /** each chunk's bytes, when the image has a real layout (`ModelInit.chunkSizes`) */
  sizes?: Uint32Array
}

export const chunkBytes = (b: BlobSpec, ci: number): number => b.sizes !== undefined ? b.sizes[ci]! : ci === b.chunks - 1 ? b.lastSize : b.chunkSize

/** registry egress is recorded in buckets this long */
export const TIMELINE_BUCKET_MS = 10
/** real time between progress lines */
const PROGRESS_EVERY_MS = 5000

export class World {
  readonly queue = new EventQueue()
  readonly links: Links
  readonly directory: Directory
  readonly blobs: BlobSpec[] = []
  readonly blobBytes: number
  readonly chunks: number
  readonly nodes: SimNode[] = []
  readonly byPeerId = new Map<string, SimNode>()

  /** the registry's endpoint in `links` */
  readonly registry: number
  registryBytes = 0
  readonly timeline: number[] = []
  /** completion times (ms from each node's own start) of the nodes that finished */
  readonly completions: number[] = []
  lastCompletionAt = 0
  died = 0
  /** have sessions closed so far (deaths, lost connections): until the first, no follower has lost its session */
  sessionResets = 0
  /**
   * have messages and their bytes each node received in flushes, by node index: counted here (one small array the
   * cache keeps) rather than on each of thousands of nodes per flush; `run` adds them to the nodes' counts at its end
   */
  readonly haveReceived: Float64Array
  readonly haveBytesReceived: Float64Array
  restarts = 0
  /** when the machine's CPU (`Config.cpu`) is through the work given it so far */
  private cpuFreeAt = 0
  /** ms the machine's CPU worked on received chunks */
  cpuBusyMs = 0
  /** nodes that have yet to finish and still can */
  private remaining: number

  constructor (readonly cfg: Readonly<Config>) {
    const ids = mulberry32(cfg.seed)
    const failures = mulberry32(cfg.seed ^ 0x5bd1e995)
    const jitter = mulberry32(cfg.seed ^ 0x27d4eb2f)
    this.registry = cfg.nodes
    this.haveReceived = new Float64Array(cfg.nodes)
    this.haveBytesReceived = new Float64Array(cfg.nodes)
    this.links = new Links(this.queue, cfg.nodes + 1)
    this.links.setCapacity(this.registry, cfg.registryBandwidth, Infinity)
    // every endpoint serves its uploads as a hub: exact, and a busy uploader costs O(log flows) per change, not O(flows)
    this.links.setHub(this.registry)
    // caps that are rate limits: an idle side sends its bucket's burst at once (the registry's egress limiter, a
    // daemon's upload pacing and download limiter)
    if (cfg.limiters) this.links.setBurst(this.registry, bucketBurst(cfg.registryBandwidth), 0)
    this.directory = new Directory(this.queue, cfg.halfRttMs, { peers: cfg.nodes, heartbeatMs: cfg.heartbeatMs, random: mulberry32(cfg.seed ^ 0x68e31da4) })
    let total = 0
    if (cfg.chunkSizes !== undefined) {
      const sizes = cfg.chunkSizes
      const hex = fakeDigestHex(ids)
      this.blobs.push({ index: 0, hex, key: Buffer.from(hex, 'hex'), chunks: sizes.length, bytes: cfg.imageBytes, chunkSize: cfg.chunkSize, lastSize: sizes[sizes.length - 1]!, sizes })
      total += sizes.length
    }
    for (let b = 0; b < (cfg.chunkSizes !== undefined ? 0 : cfg.blobs); b++) {
      const bytes = Math.floor(cfg.imageBytes * (b + 1) / cfg.blobs) - Math.floor(cfg.imageBytes * b / cfg.blobs)
      if (bytes === 0) continue
      const chunks = Math.ceil(bytes / cfg.chunkSize)
      const hex = fakeDigestHex(ids)
      this.blobs.push({ index: this.blobs.length, hex, key: Buffer.from(hex, 'hex'), chunks, bytes, chunkSize: cfg.chunkSize, lastSize: bytes - (chunks - 1) * cfg.chunkSize })
      total += chunks
    }
    this.chunks = total
    this.blobBytes = this.blobs.reduce((a, b) => a + b.bytes, 0)
    for (let i = 0; i < cfg.nodes; i++) {
      let peerId = fakePeerId(ids)
      while (this.byPeerId.has(peerId)) peerId = fakePeerId(ids)
      const node = new SimNode(this, i, peerId, jitter() * cfg.haveFlushMs)
      this.links.setCapacity(i, cfg.bandwidth, cfg.bandwidth)
      this.links.setHub(i)
      if (cfg.limiters) this.links.setBurst(i, uploadBurst(cfg.bandwidth), limiterBurst(cfg.bandwidth))
      this.nodes.push(node)
      this.byPeerId.set(peerId, node)
      const startAt = i * cfg.staggerMs
      this.queue.at(startAt, node, SimNode.START)
      if (cfg.failRate > 0 && failures() < cfg.failRate) node.dieAt(startAt + failures() * cfg.failWithinMs)
    }
    this.remaining = cfg.nodes
  }

  /** Runs to the end; returns the simulated end (the last completion, or where it stopped). */
  run (): number {
    const log = this.cfg.log
    let lastLog = performance.now()
    const progress: Timed = {
      fire: () => {
        const now = performance.now()
        if (now - lastLog >= PROGRESS_EVERY_MS) {
          lastLog = now
          log(`  simulated ${(this.queue.now / 1000).toFixed(2)} s: ${this.completions.length}/${this.cfg.nodes} done, registry sent ${(this.registryBytes / this.blobBytes).toFixed(3)}x the blobs, ${this.queue.processed} events`)
        }
        if (this.remaining > 0) this.queue.after(TIMELINE_BUCKET_MS * 10, progress)
      }
    }
    this.queue.after(0, progress)
    this.queue.run(this.cfg.maxSimulatedMs)
    this.directory.stop()
    for (const n of this.nodes) {
      n.msgs.have.received += this.haveReceived[n.idx]!
      n.ctrl.received += this.haveBytesReceived[n.idx]!
    }
    this.haveReceived.fill(0)
    this.haveBytesReceived.fill(0)
    return this.remaining === 0 ? this.lastCompletionAt : this.queue.now
  }

  /**
   * When the machine's CPU will be through a chunk of `bytes` received now (`Config.cpu`: one queue, in arrival
   * order, its cores left after the nodes' background work as one server); now when CPU is not modelled.
   */
  cpuDoneAt (bytes: number, fromRegistry: boolean): number {
    const cpu = this.cfg.cpu
    const now = this.queue.now
    if (cpu === undefined) return now
    const ms = bytes * (fromRegistry ? cpu.msPerByte : cpu.peerMsPerByte) / cpu.cores
    this.cpuBusyMs += ms
    this.cpuFreeAt = Math.max(now, this.cpuFreeAt) + ms
    return this.cpuFreeAt
  }

  /**
   * A request to a neighbour was sent (`Config.cpu`): its work joins the machine's queue; nothing waits on it but
   * the chunks behind it.
   */
  cpuRequest (): void {
    const cpu = this.cfg.cpu
    if (cpu === undefined || cpu.requestMs === 0) return
    const ms = cpu.requestMs / cpu.cores
    this.cpuBusyMs += ms
    this.cpuFreeAt = Math.max(this.queue.now, this.cpuFreeAt) + ms
  }

  /**
   * A node opens a connection now (`Config.cpu`): when the machine is through its handshakes; now when CPU is not
   * modelled.
   */
  cpuConnect (): number {
    const cpu = this.cfg.cpu
    const now = this.queue.now
    if (cpu === undefined || cpu.connectMs === 0) return now
    const ms = cpu.connectMs / cpu.cores
    this.cpuBusyMs += ms
    this.cpuFreeAt = Math.max(now, this.cpuFreeAt) + ms
    return this.cpuFreeAt
  }

  /** The registry sent `bytes` (a chunk, or part of one cut off). */
  registrySent (bytes: number): void {
    this.registryBytes += bytes
    const bucket = Math.floor(this.queue.now / TIMELINE_BUCKET_MS)
    while (this.timeline.length <= bucket) this.timeline.push(0)
    this.timeline[bucket] += bytes
  }

  nodeDone (n: SimNode, completionMs: number): void {
    this.completions.push(completionMs)
    this.lastCompletionAt = this.queue.now
    if (--this.remaining === 0) this.queue.stop()
  }

  /** A node died; `wasDone` it had finished before. */
  nodeDied (n: SimNode, wasDone: boolean): void {
    this.died++
    if (this.cfg.rejoinAfterMs !== undefined) {
      this.queue.after(this.cfg.rejoinAfterMs, n, SimNode.START)
      // a node that had finished reads the image again after its restart
      if (wasDone) this.remaining++
    } else if (!wasDone && --this.remaining === 0) {
      this.queue.stop()
    }
  }

  nodeRestarted (): void { this.restarts++ }
}
