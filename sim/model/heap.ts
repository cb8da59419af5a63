/**
 * The heap a part of the model holds, for the report's runtime section: the heap after a forced collection with the
 * part, less the heap after one without it. V8's `gc()` is reached without `--expose-gc` (as the benchmarks do);
 * where it cannot be, there is no measure.
 */
import { runInNewContext } from 'node:vm'
import { setFlagsFromString } from 'node:v8'

/** V8's full collection, or undefined when this runtime does not give it. */
export function forcedGc (): (() => void) | undefined {
  const exposed = (globalThis as { gc?: () => void }).gc
  if (typeof exposed === 'function') return exposed
  try {
    setFlagsFromString('--expose-gc')
    const gc = runInNewContext('gc') as unknown
    return typeof gc === 'function' ? gc as () => void : undefined
  } catch {
    return undefined
  }
}

/** Heap bytes `drop()` let go of (null without a forced collection). */
export function heapHeldBy (drop: () => void): number | null {
  const gc = forcedGc()
  if (gc === undefined) return null
  const used = (): number => { for (let i = 0; i < 3; i++) gc(); return process.memoryUsage().heapUsed }
  const before = used()
  drop()
  // the lower of two readings: a reading can catch the heap while V8 still allocates for the code that just ran
  return Math.max(0, before - Math.min(used(), used()))
}
