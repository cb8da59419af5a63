/**
 * The event engine: a binary min-heap of (time, sequence) → target, arg. Ties in time run in the order they were
 * scheduled, so a run depends only on its inputs and seed. Events are not objects: a target is a long-lived object
 * of the model (a flow, a request, a node) with a `fire(arg)` method, and the arg says what happened to it, so the
 * 10⁷–10⁸ events of a large run allocate nothing. Cancelling is lazy: targets carry a version and ignore stale args.
 */

/** Something an event happens to. */
export interface Timed {
  fire: (arg: number) => void
}

const INITIAL_CAPACITY = 1024

/**
 * A long timer's stand-in for its target: once cleared, the event still comes due (and does nothing, as a stale
 * arg would) but no longer holds the target. A request ends in milliseconds while its hedge timer runs for 300:
 * held by the queue, every request (its wants, fetch, flows) would live long enough to be promoted to the old
 * generation, and the garbage collector would spend its time copying them.
 */
export class Slot implements Timed {
  constructor (private target: Timed | undefined) {}
  fire (arg: number): void { this.target?.fire(arg) }
  clear (): void { this.target = undefined }
}

export class EventQueue {
  /** simulated time of the event being run (ms) */
  now = 0
  /** events run so far */
  processed = 0
  private time = new Float64Array(INITIAL_CAPACITY)
  private seq = new Float64Array(INITIAL_CAPACITY)
  private arg = new Float64Array(INITIAL_CAPACITY)
  private target: Array<Timed | undefined> = new Array(INITIAL_CAPACITY)
  private n = 0
  private nextSeq = 0
  private stopped = false

  get size (): number { return this.n }

  /** Runs `target.fire(arg)` at time `t` (never before now). */
  at (t: number, target: Timed, arg = 0): void {
    if (this.n === this.time.length) this.grow()
    let i = this.n++
    const when = t < this.now ? this.now : t
    const s = this.nextSeq++
    // sift up, moving parents down into the hole
    while (i > 0) {
      const p = (i - 1) >> 1
      const pt = this.time[p]!
      if (pt < when || (pt === when && this.seq[p]! < s)) break
      this.move(p, i)
      i = p
    }
    this.time[i] = when
    this.seq[i] = s
    this.arg[i] = arg
    this.target[i] = target
  }

  /** Runs `target.fire(arg)` `ms` from now. */
  after (ms: number, target: Timed, arg = 0): void { this.at(this.now + ms, target, arg) }

  /** Ends `run` after the event being run. */
  stop (): void { this.stopped = true }

  /** Runs events in order until none is left, `stop()` is called, or the next one is past `until`. */
  run (until = Infinity): void {
    this.stopped = false
    while (this.n > 0 && !this.stopped) {
      if (this.time[0]! > until) break
      this.now = this.time[0]!
      const target = this.target[0]!
      const arg = this.arg[0]!
      this.pop()
      this.processed++
      target.fire(arg)
    }
  }

  private move (from: number, to: number): void {
    this.time[to] = this.time[from]!
    this.seq[to] = this.seq[from]!
    this.arg[to] = this.arg[from]!
    this.target[to] = this.target[from]
  }

  private pop (): void {
    const last = --this.n
    if (last === 0) { this.target[0] = undefined; return }
    const t = this.time[last]!
    const s = this.seq[last]!
    const a = this.arg[last]!
    const x = this.target[last]
    this.target[last] = undefined
    let i = 0
    for (;;) {
      const l = 2 * i + 1
      if (l >= last) break
      const r = l + 1
      let c = l
      if (r < last && (this.time[r]! < this.time[l]! || (this.time[r] === this.time[l] && this.seq[r]! < this.seq[l]!))) c = r
      const ct = this.time[c]!
      if (t < ct || (t === ct && s < this.seq[c]!)) break
      this.move(c, i)
      i = c
    }
    this.time[i] = t
    this.seq[i] = s
    this.arg[i] = a
    this.target[i] = x
  }

  private grow (): void {
    const cap = this.time.length * 2
    const grow = (a: Float64Array<ArrayBuffer>): Float64Array<ArrayBuffer> => { const b = new Float64Array(cap); b.set(a); return b }
    this.time = grow(this.time)
    this.seq = grow(this.seq)
    this.arg = grow(this.arg)
    this.target.length = cap
  }
}
