/**
 * Worker-thread entry of the chunk pool: takes one batch at a time and fills it in place (its buffers are
 * shared). An error goes back as a message, so the pool can fail that batch alone.
 */
import { parentPort } from 'node:worker_threads'
import { processBatch, type ChunkBatch } from './chunk-batch.js'

parentPort!.on('message', (b: ChunkBatch) => {
  try {
    processBatch(b)
  } catch (err) {
    parentPort!.postMessage({ error: (err as Error).message })
    return
  }
  parentPort!.postMessage({})
})
