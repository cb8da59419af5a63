/**
 * Whom a busy chunk server sends an asker to instead of uploading a chunk once more (issue 13): the peers it is
 * sending that chunk to, or sent it to a moment ago. They have it or soon will (a request waiting for its bytes is
 * parked there), and each of them does the same while it is busy, so a chunk wanted by many at once passes along
 * a chain of receivers, each uploading it about once, instead of all from the uplink of the first to have it (8
 * daemons at 4 MiB/s: the first node uploaded 3.5 copies of the image and the other seven waited on its uplink;
 * with redirects 1.1–1.5 copies, the slowest node 1.7–1.8x one node alone instead of 3.8x). A chain is as long as
 * the crowd, though: past a crowd of a few askers at once the server keeps askers for turns of its own, and the
 * chunk spreads as a tree ({@link ChunkReceivers.route}).
 *
 * The server answers such an asker REDIRECT with the receiver's id (`chunk-protocol.ts`), only when its request
 * said it takes redirects: an asker sent on {@link MAX_REDIRECTS} times stops saying so, and is then served where
 * it asks. Pure bookkeeping with an injected clock, so the simulator's model mode (`sim/model/`) runs the same
 * code as the daemon.
 *
 * @example
 * ```ts
 * const receivers = new ChunkReceivers<string>()
 * const to = receivers.route(digestHex, asker, server.counters.uploadsActive)
 * if (to === undefined) receivers.serving(digestHex, asker)   // ... sent() once it went out, notSent() if it did not
 * else if (to === TAKE_TURN) { }                                // ask again when an upload of the chunk ends
 * else { }                                                      // REDIRECT to `to`
 * ```
 */

/** a server redirects while it answers more than this many requests (the asker's own included) */
export const DEFAULT_REDIRECT_ABOVE_UPLOADS = 1
/** {@link ChunkReceivers.route}'s answer: wait here for the chunk's upload under way to end, then ask again */
export const TAKE_TURN = '(turn)'
/**
 * askers of one chunk at once up to which {@link ChunkReceivers.route} sends them all on to receivers (chains): the
 * model's 8 nodes reading 64 MiB at 4 MiB/s are as fast as with chains alone (slowest 1.32–1.48x one node at seeds
 * 1–3; taking turns from the first asker made them 2.1–2.2x, from a crowd of 5 up 1.53x at seed 3)
 */
export const CHAIN_CROWD = 6
/** a receiver is a hint this long after it was first sent the chunk; later it may have moved on (or evicted it) */
export const RECEIVER_TTL_MS = 10_000
/** chunks whose receivers one server remembers (the oldest are forgotten) */
export const MAX_TRACKED_CHUNKS = 4096
/** receivers remembered per chunk */
export const MAX_RECEIVERS_PER_CHUNK = 16
/** redirects one chunk of one fetch follows; then its requests no longer take redirects */
export const MAX_REDIRECTS = 8

/**
 * Peers in order, as small as a server keeping thousands of chunks can hold them: one peer (most chunks, 72% in the
 * model's swarms) as itself, more as an array that is never changed in place (a change makes a new one), so `got`
 * can be the very array of `peers` when they list the same peers (nearly always). Growing arrays in place cost a
 * 17-slot backing store each, twice per chunk: two thirds of the heap of a 300-node model run.
 */
type PeerList = string | readonly string[]

const count = (l: PeerList | undefined): number => l === undefined ? 0 : typeof l === 'string' ? 1 : l.length
const nth = (l: PeerList, i: number): string => typeof l === 'string' ? l : l[i]!
const holds = (l: PeerList | undefined, peer: string): boolean =>
  l !== undefined && (typeof l === 'string' ? l === peer : l.includes(peer))
// (`concat` and `slice` make arrays of the exact size; spreading and `filter` leave room to grow)
const plus = (l: PeerList | undefined, peer: string): PeerList =>
  l === undefined ? peer : typeof l === 'string' ? [l, peer] : l.concat(peer)

/** `l` without `peer` (a list holds a peer once), undefined when nobody is left */
function minus (l: PeerList, peer: string): PeerList | undefined {
  if (typeof l === 'string') return l === peer ? undefined : l
  const at = l.indexOf(peer)
  if (at < 0) return l
  return l.length === 2 ? l[1 - at] : l.slice(0, at).concat(l.slice(at + 1))
}

/** `l`, or `like` itself when it lists the same peers in the same order (one array for both lists) */
function shared (l: PeerList | undefined, like: PeerList): PeerList | undefined {
  if (l === undefined || typeof l === 'string' || count(like) !== l.length) return l
  for (let i = 0; i < l.length; i++) if (l[i] !== nth(like, i)) return l
  return like
}

export interface ChunkReceiversInit {
  now?: () => number
  /** redirect while answering more than this many requests (1) */
  redirectAboveUploads?: number
  ttlMs?: number
  maxChunks?: number
  /** askers of a chunk at once up to which `route` sends them all on to receivers ({@link CHAIN_CROWD}) */
  chainCrowd?: number
}

/** One chunk server's receivers per chunk, keyed by whatever names a chunk there (`K`). */
export class ChunkReceivers<K> {
  /** per chunk, in the order the chunks were first served: its slot in the arrays below */
  private readonly chunks = new Map<K, number>()
  // A chunk's record is a slot in these arrays, not an object: the model's servers keep millions of them, and an
  // object with its time boxed cost 72 bytes where a slot costs 32.
  /** the peers sent the chunk, in the order they were */
  private readonly peers: Array<PeerList | undefined> = []
  /** those of them that got it whole, in the order they did */
  private readonly got: Array<PeerList | undefined> = []
  /** when the chunk was first served */
  private readonly at: number[] = []
  /** redirects from the chunk so far: whose turn it is */
  private readonly turn: number[] = []
  /** slots of forgotten chunks, to reuse */
  private readonly free: number[] = []
  private readonly now: () => number
  private readonly above: number
  private readonly ttlMs: number
  private readonly maxChunks: number
  private readonly chainCrowd: number

  constructor (init: ChunkReceiversInit = {}) {
    this.now = init.now ?? Date.now
    this.above = Math.max(0, init.redirectAboveUploads ?? DEFAULT_REDIRECT_ABOVE_UPLOADS)
    this.ttlMs = init.ttlMs ?? RECEIVER_TTL_MS
    this.maxChunks = Math.max(1, init.maxChunks ?? MAX_TRACKED_CHUNKS)
    this.chainCrowd = Math.max(0, init.chainCrowd ?? CHAIN_CROWD)
  }

  /**
   * Where `asker` goes for chunk `key` while this server answers `uploads` requests (the asker's included) and
   * `crowd` askers want the chunk here now (the asker's included: waiting for it to land, kept for a turn, or
   * routed now). Undefined: serve it — when `uploads` is not more than the threshold, when nobody was sent the chunk
   * here, or when the asker is a receiver already (it asks again, and is not sent round in a circle). With a crowd
   * of at most {@link CHAIN_CROWD}: a peer to send it to, its receivers in turn, those that got it whole first
   * (they answer at once; the others make the asker wait for the rest of the chunk) — chains, pipelined, each
   * receiver uploading the chunk about once, which a swarm of a few nodes needs (its uplinks are all busy). A larger
   * crowd is shared between this server and the receivers that got the chunk whole, in turn: one of them, or
   * {@link TAKE_TURN} — keep the asker until the upload of the chunk under way ends (`sent` or `notSent`), then ask
   * again — or undefined when none is under way. A chunk a thousand nodes want at once then spreads as a tree (each
   * holder's crowd halved at every upload's end), not down a chain of them all.
   */
  route (key: K, asker: string, uploads: number, crowd = 1): string | undefined {
    if (uploads <= this.above) return undefined
    const s = this.live(key)
    if (s === undefined) return undefined
    const peers = this.peers[s]!
    if (holds(peers, asker)) return undefined
    const got = this.got[s]
    if (crowd <= this.chainCrowd) {
      const pool = got ?? peers
      return nth(pool, this.turn[s]!++ % count(pool))
    }
    const n = count(got)
    const pick = this.turn[s]!++ % (n + 1)
    if (pick < n) return nth(got!, pick)
    return n < count(peers) ? TAKE_TURN : undefined
  }

  /** `asker` is being served chunk `key` (or waits here for it). */
  serving (key: K, asker: string): void {
    const s = this.live(key)
    if (s === undefined) {
      const now = this.now()
      // entries are in the order they were made, so the expired ones are the first: dropped here, a few at a time
      for (const [k, old] of this.chunks) {
        if (this.chunks.size < this.maxChunks && now - this.at[old]! <= this.ttlMs) break
        this.forget(k, old)
      }
      this.chunks.set(key, this.record(asker, now))
      return
    }
    const peers = this.peers[s]!
    if (!holds(peers, asker) && count(peers) < MAX_RECEIVERS_PER_CHUNK) this.peers[s] = plus(peers, asker)
  }

  /** `asker` got chunk `key` whole (its stream took the last byte); false when that changed nothing here. */
  sent (key: K, asker: string): boolean {
    const s = this.chunks.get(key)
    if (s === undefined || !holds(this.peers[s], asker) || holds(this.got[s], asker)) return false
    this.got[s] = shared(plus(this.got[s], asker), this.peers[s]!)
    return true
  }

  /**
   * `asker` was not sent chunk `key` after all (not found, a wait that ran out, a failed stream): no hint. False
   * when it was no receiver here.
   */
  notSent (key: K, asker: string): boolean {
    const s = this.chunks.get(key)
    if (s === undefined || !holds(this.peers[s], asker)) return false
    const peers = minus(this.peers[s]!, asker)
    if (peers === undefined) { this.forget(key, s); return true }
    this.peers[s] = peers
    const got = this.got[s]
    this.got[s] = got === undefined ? undefined : shared(minus(got, asker), peers)
    return true
  }

  /** chunks with receivers remembered now (tests, metrics) */
  get size (): number { return this.chunks.size }

  /** the chunk's slot, unless it is unknown or its record aged out (then it is forgotten) */
  private live (key: K): number | undefined {
    const s = this.chunks.get(key)
    if (s === undefined) return undefined
    if (this.now() - this.at[s]! <= this.ttlMs) return s
    this.forget(key, s)
    return undefined
  }

  /** A new record of one receiver, in a free slot. */
  private record (peer: string, at: number): number {
    const s = this.free.pop() ?? this.peers.length
    this.peers[s] = peer
    this.got[s] = undefined
    this.at[s] = at
    this.turn[s] = 0
    return s
  }

  private forget (key: K, s: number): void {
    this.chunks.delete(key)
    this.peers[s] = undefined
    this.got[s] = undefined
    this.free.push(s)
  }
}
