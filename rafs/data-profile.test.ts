import { test } from 'node:test'
import assert from 'node:assert/strict'
import { linkSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { buildFromDirectory } from './build.js'
import { RafsReader } from './reader.js'
import { dataProfile } from './data-profile.js'

async function imageOf (files: Record<string, number>, links: Record<string, string> = {}): Promise<{ reader: RafsReader, done: () => void }> {
  const dir = mkdtempSync(join(tmpdir(), 'rafs-profile-'))
  const src = join(dir, 'src')
  mkdirSync(src)
  for (const [path, size] of Object.entries(files)) {
    mkdirSync(join(src, path, '..'), { recursive: true })
    if (size < 0) { mkdirSync(join(src, path)); continue }
    // distinct bytes per file: no chunk is shared, so the blob holds every file once
    const b = Buffer.alloc(size)
    for (let i = 0; i < size; i += 4096) b.write(`${path}:${i}`, i)
    writeFileSync(join(src, path), b)
  }
  for (const [link, target] of Object.entries(links)) linkSync(join(src, target), join(src, link))
  const built = await buildFromDirectory(src, { bootstrap: join(dir, 'image.boot'), blobDir: join(dir, 'blobs'), compressor: 'none' })
  return { reader: await RafsReader.open(built.bootstrap), done: () => rmSync(dir, { recursive: true, force: true }) }
}

test('dataProfile: bytes of large and small files, hard links once, nested directories walked', async () => {
  const { reader, done } = await imageOf({ 'a/big.bin': 3 << 20, 'a/b/c/small.txt': 5000, 'exactly-1MiB': 1 << 20, 'tiny': 10 }, { 'a/b/big-again': 'a/big.bin' })
  try {
    const p = await dataProfile(reader)
    assert.equal(p.files, 4)
    assert.equal(p.bytes, (3 << 20) + 5000 + (1 << 20) + 10)
    assert.equal(p.largeBytes, (4 << 20))
    assert.equal(p.largeShare, (4 << 20) / p.bytes)
    assert.equal(p.partial, false)
    const strict = await dataProfile(reader, { largeFileBytes: 2 << 20 })
    assert.equal(strict.largeBytes, 3 << 20)
  } finally { done() }
})

test('dataProfile: stops early once small files decide that the large share cannot be reached', async () => {
  const files: Record<string, number> = {}
  for (let d = 0; d < 40; d++) for (let f = 0; f < 10; f++) files[`d${d}/f${f}`] = 8192
  const { reader, done } = await imageOf(files)
  try {
    const whole = await dataProfile(reader)
    assert.equal(whole.files, 400)
    assert.equal(whole.largeShare, 0)
    const early = await dataProfile(reader, { largeShareAtLeast: 0.8 })
    assert.equal(early.partial, true)
    assert.ok(early.files < 400, `walked ${early.files} files`)
    assert.ok(early.largeShare < 0.8)
    // a share that holds is never decided early
    const { reader: big, done: done2 } = await imageOf({ 'model.bin': 4 << 20, 'config.json': 300 })
    try {
      const p = await dataProfile(big, { largeShareAtLeast: 0.8 })
      assert.equal(p.partial, false)
      assert.ok(p.largeShare > 0.99)
    } finally { done2() }
  } finally { done() }
})

test('dataProfile: an image without regular files has a share of 0', async () => {
  const { reader, done } = await imageOf({ 'empty-dir/': -1 })
  try {
    assert.deepEqual(await dataProfile(reader), { files: 0, bytes: 0, largeBytes: 0, largeShare: 0, partial: false })
  } finally { done() }
})
