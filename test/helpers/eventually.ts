/** Waiting helpers for tests that watch asynchronous state settle. */

export const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

/** Polls until `check` passes or `ms` elapse (then its last failure is thrown). */
export async function eventually (check: () => void | Promise<void>, ms = 8000, everyMs = 25): Promise<void> {
  const deadline = Date.now() + ms
  for (;;) {
    try {
      await check()
      return
    } catch (err) {
      if (Date.now() > deadline) throw err
      await sleep(everyMs)
    }
  }
}
