/**
 * Undo steps for a test, run last-in first-out after it (a mount comes off before its directory goes), also when
 * the test fails; the first error among them fails the test.
 *
 * @example
 * const defer = deferOf(t)
 * defer(async () => { await rm(dir, { recursive: true }) })
 */
export interface TestCtx { after: (fn: () => Promise<void>) => void }
export type Defer = (fn: () => Promise<unknown>) => void

const cleanups = new WeakMap<TestCtx, Defer>()

export function deferOf (t: TestCtx): Defer {
  let d = cleanups.get(t)
  if (d === undefined) {
    const stack: Array<() => Promise<unknown>> = []
    t.after(async () => {
      const errors: unknown[] = []
      for (const fn of stack.reverse()) await fn().catch((err: unknown) => errors.push(err))
      if (errors.length > 0) throw errors[0]
    })
    d = (fn) => { stack.push(fn) }
    cleanups.set(t, d)
  }
  return d
}
