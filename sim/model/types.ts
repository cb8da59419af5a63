/** The model's options and its report (the real mode's report shape, plus what only a model can count). */
import type { NodeReport } from '../swarm.js'
import type { IndexStats } from './policy.js'

/** Options of {@link runModel}; every field but `nodes` has a default. */
/** See {@link ModelInit.cpu}. */
export interface ModelCpu {
  cores: number
  /** work per MiB a node receives from the registry */
  msPerMiB: number
  /** work per MiB a node receives from a neighbour (default `msPerMiB`): both ends' encryption, the server's cache read */
  peerMsPerMiB?: number
  /**
   * work per request a node sends a neighbour, both ends, whatever the answer (a chunk, BUSY, REDIRECT, PENDING):
   * the stream's frames, the server's handler and look-up (`bench chunk-requests`; default 0)
   */
  msPerRequest?: number
  /**
   * work of a node's first contact with a peer, both ends: the dial, its handshakes (noise, the muxer, identify) and
   * the first stream (`bench chunk-requests`' first contacts; default 0). The connection is up once the machine is
   * through it, and a round trip at the least.
   */
  msPerConnection?: number
  busyPerNode?: number
}

export interface ModelInit {
  /** modelled nodes (1–100 000); the scheduler's index holds at most 65 536 peers, past that it displaces some */
  nodes: number
  /** bytes of the image, all of it read by every node (default 1 GiB) */
  imageBytes?: number
  /** chunk size (default 1 MiB); every chunk is this size but the last of each blob */
  chunkSize?: number
  /**
   * a real image's layout instead: the bytes of each chunk, in blob order (a file's chunks are cut at its end, so a
   * tree of small files has many small chunks; `SwarmReport.chunkSizes` gives a real run's). One blob; `imageBytes`
   * is their sum and `chunkSize` is ignored.
   */
  chunkSizes?: readonly number[]
  /** data blobs the image is cut into, each its own swarm at the scheduler (default 1) */
  blobs?: number
  /** bytes/s of each node's upload and of its download (default 1.25 GB/s: 10 Gbit/s) */
  bandwidth?: number
  /** bytes/s of the registry's egress, shared by all its transfers (default twice `bandwidth`) */
  registryBandwidth?: number
  /**
   * what the caps are (default 'links'): 'links' — the links themselves, every byte at the rate; 'limiters' — the
   * rate limits `rafspeer sim` caps its real daemons and registry with, token buckets whose burst an idle side
   * sends at once (a quarter second of a node's download and upload, a twentieth of the registry's egress)
   */
  caps?: 'links' | 'limiters'
  /** round-trip time between any two parties, the scheduler and the registry included (default 1 ms) */
  rttMs?: number
  /** node i starts i × this after the first (default 0: all at once) */
  staggerMs?: number
  /** share of nodes that die once, at a uniform random time within `failWithinMs` of their start (default 0) */
  failRate?: number
  /** window of the failures (default twice one node's transfer time at `bandwidth`, at least 1 s) */
  failWithinMs?: number
  /** a dead node restarts this long after it died, with an empty cache and the same identity (default: never) */
  rejoinAfterMs?: number
  /** the run's seed: the same seed and options give a byte-identical report (default 1) */
  seed?: number
  /** each node's heartbeat to the scheduler (default 1000 ms, as `rafspeer sim` configures its daemons) */
  heartbeatMs?: number
  /**
   * what each node prefetches besides its reader's reads (default 'none'): 'all' is a daemon mounting with
   * `prefetch: all` in a swarm — the whole image, picked as the daemon's prefetch runner picks (its share of the
   * registry's chunks one slice at a time, then what neighbours have, rarest first; chunks waiting on another peer
   * left until the swarm has been quiet for a while), in slices through the fetcher's prefetch slots, reads first
   */
  prefetch?: 'none' | 'all'
  /** fetch batches a node keeps in flight (default: the fetcher's concurrency, 8) */
  windowBatches?: number
  /** bytes of one fetch batch (default: the fetcher's largest batch, 4 MiB) */
  batchBytes?: number
  /** holders one scheduler look-up of a blob returns (default 4: what `SchedulerClient` asks for) */
  holdersPerLookup?: number
  /** a chunk a holder answered BUSY is asked of it again this often when no other holder has it (default 0: the registry at once, the daemon's default) */
  busyRetries?: number
  /** the first pause before asking a BUSY holder again, growing to 4× (default 250 ms) */
  busyBackoffMs?: number
  /** requests each node's chunk server answers at once, waiting ones included; more are answered BUSY (default 16) */
  maxUploads?: number
  /**
   * requests a read waits for that each chunk server answers past `maxUploads` (default: the daemon's, a quarter of
   * `maxUploads`; 0: none, every request counts against `maxUploads`)
   */
  urgentUploads?: number
  /** a chunk a read waited for this long on the neighbours goes to the registry too (default: the fetcher's, 20 s) */
  readHandOffMs?: number
  /**
   * One machine's CPU under every node, as under `rafspeer sim`'s real daemons (absent: not modelled, each node
   * its own ample machine). Each running node keeps `busyPerNode` of a core busy whatever it moves (its timers, have
   * flushes, reader); the rest of the `cores` works through the chunks the nodes receive, in arrival order, each
   * costing `msPerMiB` (from the registry) or `peerMsPerMiB` (from a neighbour) of one core per MiB, and each
   * request a node sends a neighbour `msPerRequest`, each connection it opens `msPerConnection`: everything done
   * for it, the sender's read and encryption, the receiver's decryption, digest and write, the reader's copy. A
   * received chunk is present, readable and servable once its work is done. `bench credibility` fits them from
   * calibration runs it does not compare (`fitMachineCpu`).
   */
  cpu?: ModelCpu
  /** per-node entries in the report: 'all', or 'none' for summaries only (default: all up to 1000 nodes) */
  nodesDetail?: 'all' | 'none'
  /** include the real run time and memory (the only parts of a report that differ between runs of one seed; default true) */
  runtime?: boolean
  /** stop the run at this simulated time even if nodes are not done (default 1 h) */
  maxSimulatedMs?: number
  /** progress lines while the model runs */
  log?: (line: string) => void
}

/**
 * One node, in the real mode's NodeReport shape: `completionMs` null for a node that never finished; `ok` true for a
 * node that died without finishing but got nothing wrong; `fetchMs` per fetch batch, start to last chunk;
 * `peerRequests.timeouts` the neighbour fetches given up after the fetcher's idle deadline.
 */
export interface ModelNodeReport extends Omit<NodeReport, 'completionMs' | 'mode'> {
  /** from the node's (last) start to its last chunk; null when it died and did not finish */
  completionMs: number | null
  mode: 'model'
  /** when it died (ms from the start of the run), or null */
  diedAtMs: number | null
  restarts: number
  /** bytes it received twice (a hedged request's late copy) */
  duplicateBytes: number
  /** messages and control bytes, sent and received (chunk: requests and non-data reply frames) */
  messages: { scheduler: Count, have: Count, chunk: Count }
  controlBytes: Count
}

export interface Count { sent: number, received: number }

/** min / mean / max over nodes */
export interface Spread { mean: number, max: number, min: number }

export interface ModelReport {
  mode: 'model'
  /** per-node entries (empty with `nodesDetail: 'none'`) */
  nodes: ModelNodeReport[]
  imageBytes: number
  blobBytes: number
  /** chunk bytes the registry sent */
  registryBytes: number
  /** chunk bytes nodes accepted from neighbours */
  peerBytes: number
  /** every node that did not die finished with every chunk exactly once */
  verifiedOk: boolean
  /** bytes/s of each node's links */
  bandwidth: number
  p50Ms: number
  p95Ms: number
  p99Ms: number
  maxMs: number
  /** the simulated run, from the first start to the last completion */
  wallMs: number
  /** the model's answer to "what a node's read costs at best": one node alone over the same links */
  nativeReadMs: number
  model: {
    seed: number
    nodes: number
    completed: number
    died: number
    restarts: number
    blobs: number
    chunkSize: number
    chunks: number
    registryBandwidth: number
    rttMs: number
    staggerMs: number
    failRate: number
    holdersPerLookup: number
    busyRetries: number
    maxUploads: number
    urgentUploads: number
    prefetch: 'none' | 'all'
    caps: 'links' | 'limiters'
    /** with `ModelInit.cpu`: the cores left for chunks, and the share of the simulated time they were busy */
    cpu?: { cores: number, busyShare: number }
    /** registryBytes / blobBytes (goal ≤ 1.1) */
    registryRatio: number
    /** one node alone over the same links (= nativeReadMs) */
    aloneMs: number
    /** p50, p99 over one node alone, and p99 over p50 (goal ≤ 2) */
    p50OverAlone: number
    p99OverAlone: number
    p99OverP50: number
    duplicateBytes: number
    /**
     * chunks the registry sent, by why: the node was the chunk's rendezvous assignee; the assignee read the blob
     * behind the chunk (a member ahead took it); nobody said PENDING within the grace; a neighbour fetch left it
     * (BUSY, NOT_FOUND, failed, idle)
     */
    registryChunks: { assignee: number, noGroup: number, ahead: number, afterGrace: number, leftover: number }
    /** chunks nobody a node followed had that it, outside the blob's group, asked their assignee for before the registry */
    assigneeAsks: number
    /** chunks a read waited for on the neighbours past the fetcher's `readHandOffMs`, sent to the registry too */
    readHandOffs: number
    /** requests a read waited for answered past a holder's upload slots, in those kept for reads (`urgentUploads`) */
    urgentServed: number
    /** idle deadlines of neighbour fetches started over because the chunks spread through the swarm meanwhile */
    idleExtensions: number
    /** `redirects`: chunks a busy holder sent the asker on for (REDIRECT) */
    peerRequests: { sent: number, failed: number, hedges: number, redirects: number, busy: number, notFound: number, pendingFrames: number, idleTimeouts: number, replans: number }
    /** per node, all kinds */
    messages: { total: number, perNode: Spread, byKind: { scheduler: number, have: number, chunk: number } }
    controlBytes: { total: number, perNode: Spread }
    directory: {
      announces: number
      resolves: number
      heartbeats: number
      reports: number
      /** all of the above */
      ops: number
      /** ops per simulated second over the run */
      opsPerSecond: number
      /** peers dropped for missing heartbeats */
      expired: number
      bytesIn: number
      bytesOut: number
      stats: IndexStats
    }
    /** nodes done by time: [ms from own start, nodes done], at most ~200 points */
    completionCdf: Array<[number, number]>
    /** registry egress over simulated time: bytes sent per bucket */
    registryTimeline: { bucketMs: number, bytes: number[] }
    /** events the engine ran */
    events: number
    simulatedMs: number
  }
  /** how long the model took to run, and its memory (absent with `runtime: false`) */
  runtime?: {
    realMs: number
    eventsPerSecond: number
    heapUsedBytes: number
    rssBytes: number
    simulatedOverReal: number
    /**
     * the heap the scheduler's holder index held at the end of the run (every peer in it), per (blob, holder) entry
     * and per peer; null where V8's collection cannot be forced
     */
    directoryHeap?: { bytes: number, perEntry: number, perPeer: number } | null
  }
}
