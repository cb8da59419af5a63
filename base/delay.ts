/** The one abortable wait of rafspeer, on `node:timers/promises`. */
import { setTimeout as wait } from 'node:timers/promises'

/**
 * Waits `ms`. An abort of `signal` rejects at once with the signal's own reason (callers branch on the code they
 * aborted with), not with the generic AbortError of `node:timers/promises`.
 */
export async function delay (ms: number, signal?: AbortSignal): Promise<void> {
  signal?.throwIfAborted()
  if (ms <= 0) return
  try {
    await wait(ms, undefined, signal === undefined ? undefined : { signal })
  } catch (err) {
    throw signal?.aborted === true ? signal.reason : err
  }
}
