/**
 * Batch planning as prefetch uses it: no amplification past the wanted chunks, gaps up to `gapBytes` filled with
 * the chunks in them (one request for neighbours), larger gaps and chunks not fetchable splitting batches.
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import type { ChunkInfo } from '../../rafs/index.js'
import { planBatches } from './plan.js'

const KiB = 1024
/** 40 chunks of 32 KiB stored back to back */
const table: ChunkInfo[] = Array.from({ length: 40 }, (_v, i) =>
  ({ blobIndex: 0, index: i, compressedOffset: i * 32 * KiB, compressedSize: 32 * KiB, uncompressedSize: 32 * KiB }) as unknown as ChunkInfo)

const plan = (wanted: number[], gapBytes: number, fetchable: (ci: number) => boolean = () => true): number[][] =>
  planBatches({
    wanted: wanted.map(i => table[i]!),
    chunkCount: table.length,
    neighbour: ci => table[ci],
    fetchable,
    amplifyBytes: 0,
    gapBytes,
    maxBatchBytes: 4 << 20
  }).map(b => b.chunks.map(c => c.index))

describe('planBatches with gapBytes', () => {
  it('fills gaps up to gapBytes and never amplifies past the last wanted chunk', () => {
    // gaps: 2 chunks (64 KiB) between 0 and 3, 4 chunks (128 KiB) between 3 and 8, 5 chunks (160 KiB) before 14
    assert.deepEqual(plan([0, 3, 8, 14], 128 * KiB), [[0, 1, 2, 3, 4, 5, 6, 7, 8], [14]])
    assert.deepEqual(plan([0, 3, 8, 14], 64 * KiB), [[0, 1, 2, 3], [8], [14]])
    assert.deepEqual(plan([0, 3, 8, 14], 0), [[0], [3], [8], [14]])
    // the extra chunks are marked as nobody's
    const [first] = planBatches({
      wanted: [table[0]!, table[3]!], chunkCount: table.length, neighbour: ci => table[ci], fetchable: () => true, amplifyBytes: 0, gapBytes: 64 * KiB, maxBatchBytes: 4 << 20
    })
    assert.deepEqual([...first!.extra].map(c => c.index), [1, 2])
  })

  it('a chunk in the gap that is cached or in flight splits the batch', () => {
    assert.deepEqual(plan([0, 3], 128 * KiB, ci => ci !== 2), [[0], [3]])
  })
})
