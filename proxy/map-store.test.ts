import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { MapStore } from './map-store.js'
import { MIN_PIECE_BYTES, encodeMap, pieceLayout } from './piece-map.js'

const P = MIN_PIECE_BYTES
const D1 = `sha256:${'1'.repeat(64)}`
const D2 = `sha256:${'2'.repeat(64)}`

async function withDir (fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'rafspeer-maps-'))
  try { await fn(dir) } finally { await rm(dir, { recursive: true, force: true }) }
}

const digests = (n: number, seed = 1): Buffer[] => Array.from({ length: n }, (_, i) => Buffer.alloc(32, seed + i))
const fileOf = (dir: string, digest: string): string => join(dir, `${digest.slice(7)}.map`)

test('a saved map is read back by a fresh store from its file', async () => {
  await withDir(async (dir) => {
    const maps = new MapStore(join(dir, 'maps'))
    const layout = pieceLayout(D1, 3 * P - 5, P)
    await maps.save(layout, digests(3))
    assert.deepEqual(await maps.get(D1), { layout, digests: digests(3) })
    assert.deepEqual(maps.peek(D1), { layout, digests: digests(3) })

    const again = new MapStore(join(dir, 'maps'))
    assert.equal(again.peek(D1), undefined, 'peek never reads the disk')
    assert.deepEqual(await again.get(D1), { layout, digests: digests(3) })
    assert.deepEqual(again.peek(D1), { layout, digests: digests(3) })
    assert.deepEqual(await readdir(join(dir, 'maps')), [`${'1'.repeat(64)}.map`], 'no temp file left')
  })
})

test('a map of an empty blob round trips', async () => {
  await withDir(async (dir) => {
    await new MapStore(dir).save(pieceLayout(D1, 0, P), [])
    const m = await new MapStore(dir).get(D1)
    assert.equal(m?.layout.count, 0)
    assert.deepEqual(m?.digests, [])
  })
})

test('a digest never saved, or one that is not sha256, is undefined', async () => {
  await withDir(async (dir) => {
    const maps = new MapStore(dir)
    assert.equal(await maps.get(D1), undefined)
    assert.equal(await new MapStore(join(dir, 'absent')).get(D1), undefined)
    await maps.save(pieceLayout(D1, P, P), digests(1))
    assert.equal(await maps.get(`sha512:${'1'.repeat(128)}`), undefined)
    assert.equal(await maps.get('1'.repeat(64)), undefined)
  })
})

test('a file that does not decode is undefined and removed', async () => {
  await withDir(async (dir) => {
    await writeFile(fileOf(dir, D1), 'not a piece map at all, just text')
    assert.equal(await new MapStore(dir).get(D1), undefined)
    assert.deepEqual(await readdir(dir), [])
  })
})

test('a truncated map file is undefined and removed', async () => {
  await withDir(async (dir) => {
    const buf = encodeMap({ size: 2 * P, pieceBytes: P, first: 0, digests: digests(2) })
    await writeFile(fileOf(dir, D1), buf.subarray(0, buf.length - 1))
    assert.equal(await new MapStore(dir).get(D1), undefined)
    assert.deepEqual(await readdir(dir), [])
  })
})

test('an incomplete map (a part from first > 0, or fewer digests than pieces) is undefined and removed', async () => {
  await withDir(async (dir) => {
    await writeFile(fileOf(dir, D1), encodeMap({ size: 3 * P, pieceBytes: P, first: 1, digests: digests(2) }))
    await writeFile(fileOf(dir, D2), encodeMap({ size: 3 * P, pieceBytes: P, first: 0, digests: digests(2) }))
    const maps = new MapStore(dir)
    assert.equal(await maps.get(D1), undefined)
    assert.equal(await maps.get(D2), undefined)
    assert.deepEqual(await readdir(dir), [])
  })
})

test('list() returns the digest of every saved map and ignores other files', async () => {
  await withDir(async (dir) => {
    const maps = new MapStore(dir)
    assert.deepEqual(await new MapStore(join(dir, 'absent')).list(), [])
    await maps.save(pieceLayout(D1, P, P), digests(1))
    await maps.save(pieceLayout(D2, 2 * P, P), digests(2))
    await writeFile(join(dir, `${'3'.repeat(64)}.map.123.tmp`), 'x')
    await writeFile(join(dir, 'README'), 'x')
    await writeFile(join(dir, `${'A'.repeat(64)}.map`), 'x')
    assert.deepEqual((await maps.list()).sort(), [D1, D2])
  })
})

test('remove() forgets a map in memory and on disk; removing a missing one is fine', async () => {
  await withDir(async (dir) => {
    const maps = new MapStore(dir)
    await maps.save(pieceLayout(D1, P, P), digests(1))
    await maps.save(pieceLayout(D2, P, P), digests(1, 9))
    await maps.remove(D1)
    assert.equal(maps.peek(D1), undefined)
    assert.equal(await maps.get(D1), undefined)
    assert.deepEqual(await maps.list(), [D2])
    await maps.remove(D1)
    await maps.remove(`sha256:${'f'.repeat(64)}`)
    assert.deepEqual((await maps.get(D2))?.digests, digests(1, 9))
  })
})

test('saving again replaces the map', async () => {
  await withDir(async (dir) => {
    const maps = new MapStore(dir)
    await maps.save(pieceLayout(D1, P, P), digests(1, 1))
    await maps.save(pieceLayout(D1, 2 * P, P), digests(2, 5))
    assert.deepEqual((await new MapStore(dir).get(D1))?.digests, digests(2, 5))
  })
})

test('two saves of the same map at once both resolve', async () => {
  await withDir(async (dir) => {
    const maps = new MapStore(dir)
    const layout = pieceLayout(D1, 2 * P, P)
    await Promise.all([maps.save(layout, digests(2)), maps.save(layout, digests(2))])
    assert.deepEqual((await new MapStore(dir).get(D1))?.digests, digests(2))
  })
})
