/** Promise plumbing with signals: nothing here ever waits on a promise longer than its signal allows. */
import { FetchAbortedError, ReadTimeoutError } from './fetch-errors.js'

/** Resolves with `p` unless `signal` fires first (then rejects with its reason); `p` may settle later, unseen. */
export async function raceAbort<T> (p: Promise<T>, signal: AbortSignal, what: string): Promise<T> {
  p.catch(() => {})
  if (signal.aborted) throw reasonOf(signal, what)
  return await new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(reasonOf(signal, what))
    signal.addEventListener('abort', onAbort, { once: true })
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort))
  })
}

function reasonOf (signal: AbortSignal, what: string): unknown {
  const r: unknown = signal.reason
  return r instanceof Error && typeof (r as { code?: unknown }).code === 'string' ? r : new FetchAbortedError(what, { cause: r })
}

export async function withDeadline (p: Promise<void>, ms: number, signal: AbortSignal | undefined, what: string): Promise<void> {
  const timer = new AbortController()
  const t = setTimeout(() => timer.abort(new ReadTimeoutError(what, ms)), ms)
  try {
    await raceAbort(p, signal === undefined ? timer.signal : AbortSignal.any([timer.signal, signal]), what)
  } finally {
    clearTimeout(t)
  }
}

export async function sleep (ms: number, signal: AbortSignal): Promise<void> {
  await raceAbort(new Promise<void>(resolve => setTimeout(resolve, ms)), signal, 'backoff')
}
