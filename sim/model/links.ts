/**
 * Modelled links: every endpoint (each node, and the registry) has an upload and a download capacity; every
 * transfer (a flow) gets a fair share at both ends, `min(up[src] / uploads(src), down[dst] / downloads(dst))`,
 * recomputed for the flows of the two endpoints whenever a flow starts, pauses or ends. A flow's finish is an event
 * of the queue, made stale by a version bump when its rate changes; a flow whose rate did not change is not
 * touched, so one start or end costs O(flows at its two endpoints), never O(all flows).
 *
 * A hub (the registry, which may send to thousands of nodes at once) would make that O(its flows) per start or
 * end, so its flows held back by the hub's share are served as processor sharing instead: one virtual clock `V`
 * (bytes each of them received) advancing at the share `A`, a heap of their virtual finishes, one timer for the
 * earliest. Flows held back by their download end instead run on their own rate, and move between the two sets
 * when `A` or their download share crosses the other (found through heaps keyed by download share). Every flow's
 * rate is still exactly the formula above.
 *
 * This is per-endpoint fair sharing, not max-min fairness over the whole network: a flow held back at one end does
 * not hand its unused share at the other end to its neighbours. With equal links everywhere the two agree closely;
 * with a bottleneck the model is pessimistic for the flows that are not behind it.
 *
 * Each side of an endpoint may have a token bucket, as the real rate limits do (a daemon's download limiter and
 * upload pacing hold a quarter second, the registry's egress a twentieth): a piece starting on a flow sends at once
 * as many bytes as both its ends' balances allow, the rest at the shared rate. A side refills at its rate only while
 * it has no flow (a real bucket also refills while its side runs below its rate: the model spends less burst than
 * a real swarm may), up to its burst. Without buckets every byte goes at the rate.
 *
 * A flow carries pieces (chunks) one after another ({@link Links.next}) without leaving its endpoints, so a request
 * of several chunks does not reshare its neighbours between chunks.
 */
import type { EventQueue, Timed } from './events.js'

/** What a flow tells its owner. */
export interface FlowOwner {
  /** the current piece left the sender entirely (propagation delay is the owner's business) */
  pieceDone: (flow: Flow) => void
}

/** bytes of slack when deciding that a processor-shared flow has finished (floating-point rounding only: a
 * larger slack would end pieces early, and the hub would drift from plain per-flow timing) */
const EPS_BYTES = 1e-3

export class Flow implements Timed {
  /** bytes of the current piece not yet sent (for a flow in its hub's shared set: `F - V` of the hub) */
  remaining = 0
  /** bytes per ms now (own-rate flows) */
  rate = 0
  /** when `remaining` was last brought up to date */
  at = 0
  version = 0
  active = false
  /** positions in the endpoints' lists, for O(1) removal */
  upAt = -1
  downAt = -1
  /** bytes of the current piece */
  piece = 0
  /** in its hub's processor-shared set, with virtual finish `F` */
  shared = false
  F = 0
  /** versions of its entries in the hub's heaps */
  fVer = 0
  bVer = 0
  /** the download share its hub entry was filed under */
  b = -1

  constructor (readonly links: Links, readonly src: number, readonly dst: number, readonly owner: FlowOwner, readonly hub: Hub | undefined) {}

  fire (version: number): void {
    if (version !== this.version || !this.active || this.shared) return
    this.remaining = 0
    this.at = this.links.queue.now
    this.owner.pieceDone(this)
  }
}

/** a min-heap of (key, flow, version) with lazy deletion: an entry whose version is not the flow's is stale */
class LazyHeap {
  private keys: number[] = []
  private flows: Flow[] = []
  private vers: number[] = []
  constructor (private readonly valid: (f: Flow, ver: number) => boolean) {}

  push (key: number, f: Flow, ver: number): void {
    let i = this.keys.length
    this.keys.push(key); this.flows.push(f); this.vers.push(ver)
    while (i > 0) {
      const p = (i - 1) >> 1
      if (this.keys[p]! <= key) break
      this.set(i, this.keys[p]!, this.flows[p]!, this.vers[p]!)
      i = p
    }
    this.set(i, key, f, ver)
  }

  /** the valid top, stale ones dropped on the way; undefined when empty */
  top (): { key: number, flow: Flow } | undefined {
    while (this.keys.length > 0) {
      if (this.valid(this.flows[0]!, this.vers[0]!)) return { key: this.keys[0]!, flow: this.flows[0]! }
      this.pop()
    }
    return undefined
  }

  pop (): void {
    const n = this.keys.length - 1
    const k = this.keys[n]!; const f = this.flows[n]!; const v = this.vers[n]!
    this.keys.pop(); this.flows.pop(); this.vers.pop()
    if (n === 0) return
    let i = 0
    for (;;) {
      let c = 2 * i + 1
      if (c >= n) break
      if (c + 1 < n && this.keys[c + 1]! < this.keys[c]!) c++
      if (k <= this.keys[c]!) break
      this.set(i, this.keys[c]!, this.flows[c]!, this.vers[c]!)
      i = c
    }
    this.set(i, k, f, v)
  }

  private set (i: number, k: number, f: Flow, v: number): void { this.keys[i] = k; this.flows[i] = f; this.vers[i] = v }

  get size (): number { return this.keys.length }

  /** Drops every stale entry (they hold their flows, and those their owners, until they surface). */
  compact (): void {
    const keys = this.keys; const flows = this.flows; const vers = this.vers
    this.keys = []; this.flows = []; this.vers = []
    for (let i = 0; i < keys.length; i++) if (this.valid(flows[i]!, vers[i]!)) this.push(keys[i]!, flows[i]!, vers[i]!)
  }
}

/** A hub's processor-shared set: see the file's comment. */
export class Hub implements Timed {
  /** virtual bytes each shared flow has received since the start */
  V = 0
  at = 0
  /** the share of one flow (bytes per ms) */
  A = Infinity
  version = 0
  readonly finish = new LazyHeap((f, v) => f.shared && f.fVer === v)
  /** shared flows by download share, least first (they leave when A rises above it) */
  readonly sharedByB = new LazyHeap((f, v) => f.shared && f.bVer === v)
  /** own-rate flows by download share, most first (negated key; they join when A falls to it) */
  readonly ownByB = new LazyHeap((f, v) => f.active && !f.shared && f.bVer === v)

  constructor (readonly links: Links, readonly endpoint: number) {}

  fire (version: number): void {
    if (version !== this.version) return
    this.links.hubDue(this)
  }
}

export class Links {
  /** bytes per ms */
  private readonly up: Float64Array
  private readonly down: Float64Array
  private readonly ups: Flow[][]
  private readonly downs: Flow[][]
  private readonly hubs: Array<Hub | undefined>
  /** token buckets: bytes an idle side may send at once, the balance now, and since when the side was idle */
  private readonly upBurst: Float64Array
  private readonly downBurst: Float64Array
  private readonly upTokens: Float64Array
  private readonly downTokens: Float64Array
  private readonly upIdleSince: Float64Array
  private readonly downIdleSince: Float64Array
  /** flows started */
  flows = 0

  constructor (readonly queue: EventQueue, endpoints: number) {
    this.up = new Float64Array(endpoints)
    this.down = new Float64Array(endpoints)
    this.ups = Array.from({ length: endpoints }, () => [])
    this.downs = Array.from({ length: endpoints }, () => [])
    this.hubs = new Array(endpoints).fill(undefined)
    this.upBurst = new Float64Array(endpoints)
    this.downBurst = new Float64Array(endpoints)
    this.upTokens = new Float64Array(endpoints)
    this.downTokens = new Float64Array(endpoints)
    this.upIdleSince = new Float64Array(endpoints)
    this.downIdleSince = new Float64Array(endpoints)
  }

  /** Sets an endpoint's capacities in bytes per second. */
  setCapacity (endpoint: number, upBps: number, downBps: number): void {
    this.up[endpoint] = upBps / 1000
    this.down[endpoint] = downBps / 1000
  }

  /** Gives an endpoint's two sides token buckets of these many bytes (full at the start). */
  setBurst (endpoint: number, upBytes: number, downBytes: number): void {
    this.upBurst[endpoint] = this.upTokens[endpoint] = upBytes
    this.downBurst[endpoint] = this.downTokens[endpoint] = downBytes
  }

  /** bytes of a piece starting now that its endpoints' buckets let through at once */
  private burst (f: Flow, bytes: number): number {
    const k = Math.min(bytes, this.upTokens[f.src]!, this.downTokens[f.dst]!)
    if (!(k > 0)) return 0
    this.upTokens[f.src]! -= k
    this.downTokens[f.dst]! -= k
    return k
  }

  /** Serves the endpoint's uploads as a hub (worth it for an endpoint with many flows at once). */
  setHub (endpoint: number): void { this.hubs[endpoint] = new Hub(this, endpoint) }

  uploads (endpoint: number): number { return this.ups[endpoint]!.length }
  downloads (endpoint: number): number { return this.downs[endpoint]!.length }

  /** A new flow from `src` to `dst` sending a first piece of `bytes`. */
  open (src: number, dst: number, bytes: number, owner: FlowOwner): Flow {
    const f = new Flow(this, src, dst, owner, this.hubs[src])
    this.flows++
    this.resume(f, bytes)
    return f
  }

  /** The next piece of an active flow, right after the last one (its endpoints' shares do not change). */
  next (f: Flow, bytes: number): void {
    const now = this.queue.now
    f.piece = bytes
    f.at = now
    const left = bytes - this.burst(f, bytes)
    if (f.shared) {
      const h = f.hub!
      this.advanceHub(h)
      f.F = h.V + left
      f.remaining = left
      h.finish.push(f.F, f, ++f.fVer)
      this.scheduleHub(h)
      return
    }
    f.remaining = left
    f.version++
    this.schedule(f)
  }

  /** A paused (or finished) flow sends again: it rejoins its endpoints' shares with a piece of `bytes`. */
  resume (f: Flow, bytes: number): void {
    if (f.active) { this.next(f, bytes); return }
    const h = f.hub
    if (h !== undefined) this.advanceHub(h)
    f.active = true
    f.shared = false
    f.piece = bytes
    f.at = this.queue.now
    f.rate = 0
    f.version++
    const ups = this.ups[f.src]!
    const downs = this.downs[f.dst]!
    // a side idle until now refilled its bucket at its rate meanwhile
    const now = this.queue.now
    if (ups.length === 0) this.upTokens[f.src] = Math.min(this.upBurst[f.src]!, this.upTokens[f.src]! + (now - this.upIdleSince[f.src]!) * this.up[f.src]!)
    if (downs.length === 0) this.downTokens[f.dst] = Math.min(this.downBurst[f.dst]!, this.downTokens[f.dst]! + (now - this.downIdleSince[f.dst]!) * this.down[f.dst]!)
    f.remaining = bytes - this.burst(f, bytes)
    f.upAt = ups.length
    ups.push(f)
    f.downAt = downs.length
    downs.push(f)
    this.reshare(f.src, f.dst)
  }

  /** The flow leaves its endpoints (ended, aborted, or waiting for its next piece); the rest reshare. */
  pause (f: Flow): void {
    if (!f.active) return
    const h = f.hub
    if (h !== undefined) this.advanceHub(h)
    if (f.shared) {
      f.remaining = Math.max(0, f.F - h!.V)
      f.shared = false
      f.fVer++
    } else {
      this.advance(f)
    }
    f.at = this.queue.now
    f.bVer++
    f.b = -1
    f.active = false
    f.version++
    remove(this.ups[f.src]!, f, true)
    remove(this.downs[f.dst]!, f, false)
    if (this.ups[f.src]!.length === 0) this.upIdleSince[f.src] = this.queue.now
    if (this.downs[f.dst]!.length === 0) this.downIdleSince[f.dst] = this.queue.now
    this.reshare(f.src, f.dst)
  }

  /** bytes of the current piece sent so far (after `pause`, what an aborted piece cost) */
  sentOf (f: Flow): number {
    if (f.shared) {
      this.advanceHub(f.hub!)
      return f.piece - Math.max(0, f.F - f.hub!.V)
    }
    return f.piece - f.remaining
  }

  private advance (f: Flow): void {
    const now = this.queue.now
    if (f.rate > 0 && now > f.at) f.remaining = Math.max(0, f.remaining - f.rate * (now - f.at))
    f.at = now
  }

  private reshare (src: number, dst: number): void {
    const h = this.hubs[src]
    if (h !== undefined) this.hubShareChanged(h)
    else for (const f of this.ups[src]!) this.rerate(f)
    for (const f of this.downs[dst]!) this.rerate(f)
  }

  private rerate (f: Flow): void {
    if (f.hub !== undefined) { this.place(f); return }
    const rate = Math.min(this.up[f.src]! / this.ups[f.src]!.length, this.down[f.dst]! / this.downs[f.dst]!.length)
    this.setOwnRate(f, rate)
  }

  private setOwnRate (f: Flow, rate: number): void {
    if (rate === f.rate) return
    this.advance(f)
    f.rate = rate
    f.version++
    this.schedule(f)
  }

  private schedule (f: Flow): void {
    if (f.rate <= 0) return
    this.queue.at(f.at + f.remaining / f.rate, f, f.version)
  }

  // ---- hubs ----

  private downShare (f: Flow): number { return this.down[f.dst]! / this.downs[f.dst]!.length }

  private advanceHub (h: Hub): void {
    const now = this.queue.now
    if (now > h.at && Number.isFinite(h.A)) h.V += h.A * (now - h.at)
    h.at = now
  }

  /** A hub flow's place after its download share or the hub's share changed. */
  private place (f: Flow): void {
    const h = f.hub!
    this.advanceHub(h)
    const b = this.downShare(f)
    const wasShared = f.shared
    if (b >= h.A) {
      if (!f.shared) {
        this.advance(f)
        f.version++
        f.shared = true
        f.F = h.V + f.remaining
        h.finish.push(f.F, f, ++f.fVer)
        this.scheduleHub(h)
      }
      if (b !== f.b || !wasShared) { f.b = b; h.sharedByB.push(b, f, ++f.bVer) }
      f.rate = h.A
    } else {
      if (f.shared) {
        f.remaining = Math.max(0, f.F - h.V)
        f.at = this.queue.now
        f.shared = false
        f.fVer++
        f.rate = 0
        this.scheduleHub(h)
      }
      if (b !== f.b || wasShared) { f.b = b; h.ownByB.push(-b, f, ++f.bVer) }
      this.setOwnRate(f, b)
    }
  }

  /** The hub's flow count changed: new share, flows that cross it move between the sets. */
  private hubShareChanged (h: Hub): void {
    this.advanceHub(h)
    const n = this.ups[h.endpoint]!.length
    const A = n > 0 ? this.up[h.endpoint]! / n : Infinity
    const old = h.A
    h.A = A
    if (A < old) {
      // own-rate flows whose download share is now at least the hub's join the shared set
      for (let t = h.ownByB.top(); t !== undefined && -t.key >= A; t = h.ownByB.top()) { h.ownByB.pop(); this.place(t.flow) }
    } else if (A > old) {
      for (let t = h.sharedByB.top(); t !== undefined && t.key < A; t = h.sharedByB.top()) { h.sharedByB.pop(); this.place(t.flow) }
    }
    // the flows not placed yet (a new one) are placed by the caller's reshare of its download end
    this.scheduleHub(h)
  }

  private scheduleHub (h: Hub): void {
    // each flow has at most one valid entry per heap: past a few times the flows, the rest is stale
    const bound = 4 * this.ups[h.endpoint]!.length + 1024
    if (h.finish.size > bound) h.finish.compact()
    if (h.sharedByB.size > bound) h.sharedByB.compact()
    if (h.ownByB.size > bound) h.ownByB.compact()
    h.version++
    const t = h.finish.top()
    if (t === undefined || !Number.isFinite(h.A)) return
    this.queue.at(h.at + Math.max(0, t.key - h.V) / h.A, h, h.version)
  }

  /** @internal the hub's earliest shared flow should be done: its pieces end */
  hubDue (h: Hub): void {
    this.advanceHub(h)
    const done: Flow[] = []
    for (let t = h.finish.top(); t !== undefined && t.key <= h.V + EPS_BYTES; t = h.finish.top()) {
      h.finish.pop()
      t.flow.fVer++
      done.push(t.flow)
    }
    // never stall on rounding: the earliest is done when its time has come
    if (done.length === 0) {
      const t = h.finish.top()
      if (t !== undefined) { h.finish.pop(); t.flow.fVer++; done.push(t.flow) }
    }
    for (const f of done) {
      f.remaining = 0
      f.F = h.V
      f.at = this.queue.now
    }
    for (const f of done) if (f.active && f.shared) f.owner.pieceDone(f)
    this.scheduleHub(h)
  }
}

function remove (list: Flow[], f: Flow, up: boolean): void {
  const i = up ? f.upAt : f.downAt
  const last = list.pop()!
  if (last !== f) {
    list[i] = last
    if (up) last.upAt = i
    else last.downAt = i
  }
  if (up) f.upAt = -1
  else f.downAt = -1
}
