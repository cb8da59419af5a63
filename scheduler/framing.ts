/**
 * Frames on a libp2p stream: a varint length prefix (it-length-prefixed) before each body, read with backpressure
 * and a hard size bound, written with respect for `send()` returning false.
 */
import * as lp from 'it-length-prefixed'
import type { Uint8ArrayList } from 'uint8arraylist'
import type { Stream } from '@libp2p/interface'
import { MAX_FRAME_BYTES } from './protocol.js'

/** A frame ready for `stream.send`: the body behind its varint length. */
export const frame = (body: Uint8Array): Uint8ArrayList => lp.encode.single(body)

export interface ReadFramesOptions {
  maxFrameBytes?: number
  /** bytes received but not yet consumed before the stream is paused (default 8 MiB) */
  highWaterBytes?: number
}

/**
 * The frame bodies arriving on a stream. Unlike iterating the stream itself, this honours backpressure: past
 * `highWaterBytes` of unconsumed input the stream is paused (yamux stops granting window), and resumed below half.
 * Throws on a frame longer than `maxFrameBytes` or on a stream error.
 */
export async function * readFrames (stream: Stream, opts: ReadFramesOptions = {}): AsyncGenerator<Uint8ArrayList> {
  yield * lp.decode(boundedSource(stream, opts.highWaterBytes ?? 8 * 1024 * 1024), { maxDataLength: opts.maxFrameBytes ?? MAX_FRAME_BYTES })
}

async function * boundedSource (stream: Stream, highWater: number): AsyncGenerator<Uint8Array | Uint8ArrayList> {
  const queue: Array<Uint8Array | Uint8ArrayList> = []
  let queued = 0
  let ended = false
  let error: Error | undefined
  let wake: (() => void) | undefined
  // data in flight when we pause still arrives (up to the 16 MiB yamux window): let the stream buffer it
  stream.maxReadBufferLength = Math.max(stream.maxReadBufferLength, 24 * 1024 * 1024)
  const onMessage = (evt: { data: Uint8Array | Uint8ArrayList }): void => {
    queue.push(evt.data)
    queued += evt.data.byteLength
    if (queued > highWater && stream.readStatus === 'readable') stream.pause()
    wake?.()
  }
  const onClose = (evt: Event): void => {
    error = (evt as Event & { error?: Error }).error
    ended = true
    wake?.()
  }
  // a FIN may be processed just before the data of its own frame is dispatched: end on the next turn
  const onRemoteCloseWrite = (): void => { setTimeout(() => { ended = true; wake?.() }, 0) }
  stream.addEventListener('message', onMessage)
  stream.addEventListener('close', onClose)
  stream.addEventListener('remoteCloseWrite', onRemoteCloseWrite)
  try {
    while (true) {
      const next = queue.shift()
      if (next !== undefined) {
        queued -= next.byteLength
        if (stream.readStatus === 'paused' && queued < highWater / 2) stream.resume()
        yield next
        continue
      }
      if (ended || stream.readStatus === 'closed') {
        if (error !== undefined) throw error
        return
      }
      await new Promise<void>((resolve) => { wake = resolve })
      wake = undefined
    }
  } finally {
    stream.removeEventListener('message', onMessage)
    stream.removeEventListener('close', onClose)
    stream.removeEventListener('remoteCloseWrite', onRemoteCloseWrite)
  }
}

/** Sends one frame, waiting for the stream to drain when its buffer is full. */
export async function sendFrame (stream: Stream, body: Uint8Array, opts: { signal?: AbortSignal } = {}): Promise<void> {
  if (!stream.send(frame(body))) await stream.onDrain(opts)
}
