import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import type { ChunkInfo } from '../../rafs/index.js'
import { buildTestImage, type TestImage } from '../../test/helpers/fetch-kit.js'
import { BlobViews } from './blob-view.js'
import { ReadAhead } from './read-ahead.js'

/** What read-ahead asked the fetcher for: chunk indexes per call. */
function recorder (): { fetcher: { ensureChunks: (blob: unknown, chunks: ChunkInfo[]) => Promise<void> }, calls: number[][] } {
  const calls: number[][] = []
  return { calls, fetcher: { ensureChunks: async (_blob, chunks) => { calls.push(chunks.map(c => c.index)) } } }
}

describe('ReadAhead: when a reader counts as sequential, and what is fetched ahead of it', () => {
  let img: TestImage
  before(async () => { img = await buildTestImage() })
  after(async () => { await img?.cleanup() })

  it('per file: from the first byte or a read continuing the last; random reads fetch nothing ahead', () => {
    const { fetcher, calls } = recorder()
    const ahead = new ReadAhead({ fetcher, image: img }, { windowBytes: 256 << 10 })
    const nid = img.reader.lookup('/e.bin')
    ahead.observe(nid, 1 << 20, 4096)
    assert.equal(calls.length, 0, 'a read in the middle of a file is random until continued')
    ahead.observe(nid, 0, 4096)
    assert.equal(calls.length, 1, 'the first byte of a file starts read-ahead')
    ahead.observe(nid, 4096, 4096)
    ahead.observe(nid, 8192, 4096)
    assert.equal(calls.length, 1, 'within the window: nothing more yet')
    for (let off = 12288; off < 200 << 10; off += 4096) ahead.observe(nid, off, 4096)
    assert.ok(calls.length >= 2, 'a reader past half the window gets the next one')
  })

  it('blob views with slack: the second nearby miss starts read-ahead, in blob order; a far miss does not', () => {
    const { fetcher, calls } = recorder()
    const views = new BlobViews(img.reader)
    const ahead = new ReadAhead({ fetcher, image: { reader: views, blobs: img.blobs } }, { windowBytes: 512 << 10, slackBytes: 256 << 10 })
    ahead.observe(0, 0, 4096)
    assert.equal(calls.length, 0, "a blob's first byte is only its first file's")
    ahead.observe(0, 3 << 20, 4096)
    assert.equal(calls.length, 0, 'far from the last miss: random')
    ahead.observe(0, (3 << 20) + 64 * 1024, 4096)
    assert.equal(calls.length, 1, 'a miss a little past the last one: sequential')
    const asked = calls[0]!.map(ci => views.chunkInfo(0, ci).uncompressedOffset)
    assert.ok(asked.every(o => o >= (3 << 20) && o < (3 << 20) + (1 << 20)), `fetched ahead in blob order: ${asked.join(' ')}`)
  })
})
