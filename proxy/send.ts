/**
 * Sending blob bytes to an HTTP client: from a `BlobBytes` (a job still getting the blob, or a confirmed map's
 * pieces), in order, honouring the socket's backpressure, never past what may leave yet, and never waiting on a
 * source that makes no progress for longer than the stall deadline (the client is cut off instead of left hanging).
 */
import type { ServerResponse } from 'node:http'
import { ProxyError } from './errors.js'
import type { BlobBytes } from './blob-job.js'
import type { PieceFetch } from './pieces.js'
import type { ConfirmedMap } from './map-store.js'

/** nothing new for this long: the client is cut off (it resumes elsewhere) */
export const DEFAULT_STALL_MS = 30_000

/** Bytes `[start, end)` of `bytes` to `res`; resolves the bytes sent, rejects (having sent fewer) on failure. */
export async function sendBytes (res: ServerResponse, bytes: BlobBytes, start: number, end: number,
  opts: { signal: AbortSignal, stallMs?: number, onBytes?: (n: number) => void }): Promise<number> {
  const stallMs = opts.stallMs ?? DEFAULT_STALL_MS
  let pos = start
  // the stall clock runs while the source makes no progress at all (bytes held back while a lent blob is checked
  // are progress)
  let seen = bytes.progress
  let since = Date.now()
  while (pos < end) {
    opts.signal.throwIfAborted()
    const limit = Math.min(end, bytes.releasable())
    if (pos >= limit) {
      if (bytes.progress !== seen) { seen = bytes.progress; since = Date.now() }
      const left = stallMs - (Date.now() - since)
      if (left <= 0) throw new ProxyError('RAFSPEER_ERR_PROXY_UNAVAILABLE', `no progress for ${stallMs} ms at byte ${pos}`)
      const stall = AbortSignal.timeout(left)
      try {
        await bytes.wait(pos, AbortSignal.any([opts.signal, stall]))
      } catch (err) {
        if (!stall.aborted || opts.signal.aborted) throw err
      }
      continue
    }
    let buf = await bytes.read(pos, opts.signal)
    if (buf.length > limit - pos) buf = buf.subarray(0, limit - pos)
    await writeBytes(res, buf, opts.signal, stallMs)
    pos += buf.length
    opts.onBytes?.(buf.length)
  }
  return pos - start
}

/**
 * Writes `buf` to `res`; when the socket is full, waits for it to drain, rejecting if the client goes away, `signal`
 * fires, or the client takes nothing for `ms`.
 */
export async function writeBytes (res: ServerResponse, buf: Buffer, signal: AbortSignal, ms = DEFAULT_STALL_MS): Promise<void> {
  if (buf.length === 0 || res.write(buf)) return
  await new Promise<void>((resolve, reject) => {
    const done = (err?: Error): void => {
      clearTimeout(timer)
      res.off('drain', ok)
      res.off('close', closed)
      signal.removeEventListener('abort', aborted)
      if (err !== undefined) reject(err)
      else resolve()
    }
    const ok = (): void => { done() }
    const closed = (): void => { done(new ProxyError('RAFSPEER_ERR_PROXY_UNAVAILABLE', 'the client went away')) }
    const aborted = (): void => { done(signal.reason instanceof Error ? signal.reason : new Error('aborted')) }
    const timer = setTimeout(() => { done(new ProxyError('RAFSPEER_ERR_PROXY_UNAVAILABLE', `the client took nothing for ${ms} ms`)) }, ms)
    res.once('drain', ok)
    res.once('close', closed)
    signal.addEventListener('abort', aborted, { once: true })
  })
}

/** A blob whose map this node confirmed: every byte may leave; pieces come through the pipeline, a few ahead. */
export class ConfirmedBytes implements BlobBytes {
  readonly size: number
  readonly progress = 0
  private readonly ahead = new Map<number, Promise<Buffer>>()

  constructor (private readonly pieces: PieceFetch, private readonly map: ConfirmedMap, private readonly window = 3,
    private readonly deadlineMs?: number) {
    this.size = map.layout.size
  }

  releasable (): number { return this.size }
  async wait (): Promise<void> {}

  async read (offset: number, signal: AbortSignal): Promise<Buffer> {
    const { layout, digests } = this.map
    const i = Math.floor(offset / layout.pieceBytes)
    for (const k of this.ahead.keys()) if (k < i) this.ahead.delete(k)
    for (let k = i; k < Math.min(layout.count, i + this.window); k++) {
      if (this.ahead.has(k)) continue
      const p = this.pieces.read(layout, digests, k, { signal, ...(this.deadlineMs !== undefined ? { deadlineMs: this.deadlineMs } : {}) })
      p.catch(() => {})
      this.ahead.set(k, p)
    }
    const buf = await this.ahead.get(i)!
    return buf.subarray(offset - i * layout.pieceBytes)
  }
}
