/**
 * A small pool of worker threads that digest and compress chunk batches (chunk-batch.ts), shared by every blob
 * writer in the process. Workers start on first use and are unreferenced while idle, so an idle pool never keeps
 * the process alive.
 */
import { availableParallelism } from 'node:os'
import { Worker } from 'node:worker_threads'
import type { ChunkBatch } from './chunk-batch.js'

// At most two: digests and compression are most of a build's CPU, and more workers than cores would only take
// turns with the main thread, which walks the tree and writes the blob.
const MAX_WORKERS = Math.max(1, Math.min(2, availableParallelism()))
// Sources run as TypeScript (tsx) in some tests; the worker then has to be the .ts file, with the same loader.
const WORKER_URL = new URL(import.meta.url.endsWith('.ts') ? './chunk-worker.ts' : './chunk-worker.js', import.meta.url)

interface Job {
  batch: ChunkBatch
  resolve: () => void
  reject: (err: Error) => void
}

interface Slot {
  worker: Worker
  job: Job | undefined
}

export class ChunkPool {
  readonly #slots: Slot[] = []
  readonly #queue: Job[] = []

  constructor (readonly size = MAX_WORKERS) {}

  /** Digests and compresses a batch in place. */
  run (batch: ChunkBatch): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ batch, resolve, reject })
      try {
        this.#pump()
      } catch (err) {
        // no worker could start: nothing queued can run
        for (const job of this.#queue.splice(0)) job.reject(err as Error)
      }
    })
  }

  #pump (): void {
    while (this.#queue.length > 0) {
      let slot = this.#slots.find(s => s.job === undefined)
      if (slot === undefined) {
        if (this.#slots.length >= this.size) return
        slot = this.#spawn()
      }
      const job = this.#queue.shift()!
      slot.job = job
      slot.worker.ref()
      slot.worker.postMessage(job.batch)
    }
  }

  #spawn (): Slot {
    const slot: Slot = { worker: new Worker(WORKER_URL), job: undefined }
    const lost = (err: Error): void => {
      const i = this.#slots.indexOf(slot)
      if (i < 0) return
      this.#slots.splice(i, 1)
      slot.job?.reject(err)
      slot.job = undefined
      void slot.worker.terminate()
      this.#pump()
    }
    slot.worker.on('message', (msg: { error?: string }) => {
      const job = slot.job!
      slot.job = undefined
      slot.worker.unref()
      if (msg.error === undefined) job.resolve()
      else job.reject(new Error(`chunk worker: ${msg.error}`))
      this.#pump()
    })
    slot.worker.on('error', lost)
    slot.worker.on('exit', (code) => { lost(new Error(`chunk worker exited with code ${code}`)) })
    this.#slots.push(slot)
    return slot
  }
}

let shared: ChunkPool | undefined

export function chunkPool (): ChunkPool {
  return (shared ??= new ChunkPool())
}
