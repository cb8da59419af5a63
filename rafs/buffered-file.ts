/**
 * A sequential file writer with two large buffers: one fills while the other is being written, so disk time
 * overlaps hashing and compression, and small chunks don't cost a syscall each. Optionally feeds every byte to a
 * running hash so what it wrote is never re-read.
 */
import type { Hash } from 'node:crypto'
import type { FileHandle } from 'node:fs/promises'

const WRITE_BUFFER_SIZE = 8 << 20

export class BufferedFile {
  #buf = Buffer.allocUnsafe(WRITE_BUFFER_SIZE)
  #spare = Buffer.allocUnsafe(WRITE_BUFFER_SIZE)
  #fill = 0
  /** bytes already handed to the kernel (or in flight) */
  #queued = 0
  #inflight: Promise<void> = Promise.resolve()

  constructor (readonly fh: FileHandle, readonly hash?: Hash) {}

  /** bytes written so far, buffered or not */
  get position (): number { return this.#queued + this.#fill }

  async write (data: Uint8Array): Promise<void> {
    this.hash?.update(data)
    if (this.#fill + data.length > this.#buf.length) await this.#handOff()
    if (data.length >= this.#buf.length) {
      // the caller reuses `data` once we return, so this one cannot stay in flight
      await this.#inflight
      await this.#writeAll(data, this.#queued)
      this.#queued += data.length
    } else {
      this.#buf.set(data, this.#fill)
      this.#fill += data.length
    }
  }

  async zeros (n: number): Promise<void> {
    if (n === 0) return
    if (this.#fill + n > this.#buf.length) await this.#handOff()
    this.#buf.fill(0, this.#fill, this.#fill + n)
    this.hash?.update(this.#buf.subarray(this.#fill, this.#fill + n))
    this.#fill += n
  }

  async flush (): Promise<void> {
    await this.#handOff()
    await this.#inflight
  }

  async #handOff (): Promise<void> {
    await this.#inflight // the spare buffer is free again, or the previous write's error surfaces here
    if (this.#fill === 0) return
    const full = this.#buf
    const n = this.#fill
    const pos = this.#queued
    this.#buf = this.#spare
    this.#spare = full
    this.#fill = 0
    this.#queued += n
    this.#inflight = this.#writeAll(full.subarray(0, n), pos)
    this.#inflight.catch(() => {}) // observed by the next handOff/flush; avoids an unhandled rejection meanwhile
  }

  async #writeAll (data: Uint8Array, position: number): Promise<void> {
    let done = 0
    while (done < data.length) {
      const { bytesWritten } = await this.fh.write(data, done, data.length - done, position + done)
      done += bytesWritten
    }
  }

  /** Waits for any write in flight, then closes; errors of an abandoned file are not interesting. */
  async close (): Promise<void> {
    await this.#inflight.catch(() => {})
    await this.fh.close()
  }
}
