/**
 * How far V8's old generation may grow past what a full collection left alive, for a process that moves bytes all
 * day (the daemon).
 *
 * Why: a daemon moving chunks keeps most of its bytes in Buffers outside the JavaScript heap and allocates little on
 * it, so V8's memory reducer takes it for an idle process and makes its full collections "reduce memory" ones,
 * after which the heap may grow only 1.1× past what survived (V8's minimal growing mode). With some 25 MB alive and
 * a steady trickle promoted from the young generation, that was a full collection every 0.3–0.5 s while chunks
 * flowed: about 47 per daemon over an 18 s read (`--trace-gc`), a third of each daemon's CPU in marking and
 * sweeping. A fixed factor (V8's own `--heap-growing-percent`, honoured in every growing mode, read whenever a
 * collection sets the next limit, so it takes effect when set at run time) leaves the old generation room: with
 * 300 (4×, the factor V8 itself uses when collecting is cheap) 3 full collections instead of 47, and 8 daemons on
 * two cores reading 64 MiB each took 12% (at 16 MiB/s) to 18% (at 4 MiB/s) less CPU (bench/RESULTS.md, session 22). The price is the
 * garbage the heap may hold: 4× the live size (about +20 MiB of RSS per daemon there).
 *
 * The factor cannot come from `NODE_OPTIONS` (Node refuses V8 heap flags there), so the daemon sets it itself; a
 * `--heap-growing-percent` on node's own command line wins.
 */
import { setFlagsFromString } from 'node:v8'

/** the daemon's default (`runtime.heapGrowingPercent`): the old generation grows to 4× what survived */
export const DEFAULT_HEAP_GROWING_PERCENT = 300

export interface HeapGrowthInit {
  /** node's own flags (default `process.execArgv`) */
  execArgv?: readonly string[]
  /** sets a V8 flag (default `v8.setFlagsFromString`) */
  setFlags?: (flags: string) => void
}

/** What {@link setHeapGrowth} did: set the factor, left the one node was started with, or left V8's own. */
export type HeapGrowth =
  | { state: 'set', percent: number }
  | { state: 'node-flag', flag: string }
  | { state: 'v8-default' }

/** The `--heap-growing-percent` node was started with (V8 takes `-` and `_` alike), if any. */
export function heapGrowingFlag (execArgv: readonly string[]): string | undefined {
  return execArgv.find(a => /^--heap[-_]growing[-_]percent(=|$)/.test(a))
}

/**
 * Fixes V8's heap growing factor at `1 + percent / 100` for this process (`percent` 0: V8 decides, as without
 * rafspeer), unless node was started with a factor of its own.
 */
export function setHeapGrowth (percent: number, init: HeapGrowthInit = {}): HeapGrowth {
  if (!Number.isInteger(percent) || percent < 0) throw new RangeError(`heap growing percent must be a whole number ≥ 0, got ${percent}`)
  const own = heapGrowingFlag(init.execArgv ?? process.execArgv)
  if (own !== undefined) return { state: 'node-flag', flag: own }
  if (percent === 0) return { state: 'v8-default' }
  ;(init.setFlags ?? setFlagsFromString)(`--heap-growing-percent=${percent}`)
  return { state: 'set', percent }
}
