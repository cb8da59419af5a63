import { NYDUS_FIXTURES } from '../test/helpers/fixtures.js'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { copyFileSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { checkImage } from './check.js'

const FIX = NYDUS_FIXTURES
const BOOT = join(FIX, 'rafs-v6-2.2.boot')
const BE7 = 'be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef'

test('2.2 fixture: structurally clean; the blob check flags only the known sha256 ≠ id', async () => {
  const meta = await checkImage(BOOT)
  assert.deepEqual(meta.errors, [])
  assert.deepEqual(meta.warnings, [])
  assert.equal(meta.ok, true)
  assert.deepEqual(meta.stats, { files: 2, dirs: 1, symlinks: 0, others: 0, hardlinks: 0, chunkSlots: 2, distinctChunks: 2 })
  assert.equal(meta.bootstrap.inodes, 3)

  const full = await checkImage(BOOT, { blobDir: FIX, blobCacheDir: FIX })
  assert.equal(full.ok, false)
  assert.equal(full.errors.length, 1)
  assert.match(full.errors[0]!, /sha256 of .* is 4b16fb83.*not its id/)
  assert.equal(full.blobs[0]!.present, true)
  assert.equal(full.blobs[0]!.sha256Ok, false)
  assert.equal(full.blobs[0]!.chunksVerified, 2)
  assert.equal(full.blobs[0]!.viewChunksVerified, 2)
})

test('inline-meta bootstrap: clean; its view verifies under the provisional blob id', async () => {
  const boot = join(FIX, '2fa78cad-inline-image.boot')
  const dir = mkdtempSync(join(tmpdir(), 'rafs-check-'))
  try {
    const report0 = await checkImage(boot)
    assert.deepEqual(report0.errors, [])
    const id = report0.blobs[0]!.blobId
    symlinkSync(boot + '.blob.data', join(dir, `${id}.blob.data`))
    const report = await checkImage(boot, { blobCacheDir: dir, blobDir: dir })
    assert.equal(report.blobs[0]!.viewChunksVerified, 3)
    assert.deepEqual(report.errors, [`blob ${id} (index 0): file ${join(dir, id)} is missing`])
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test('collects several problems at once and names where they are', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'rafs-check-'))
  try {
    const b = readFileSync(BOOT)
    b.writeUInt32LE(0x1234, 0x404) // checksum ≠ 0
    b.writeUInt32LE(7, 0x42c) // xattr_blkaddr ≠ 0
    b.writeUInt32LE(0x40, 0x3064 + 0) // sync_io.rs dirent nid → nowhere useful
    b.writeUInt32LE(5, 0x302c + 0x80 - 0x80) // root nlink 5
    b.writeUInt32LE(3, 0x30a0 + 44) // lib.rs nlink 3
    const p = join(dir, 'bad.boot')
    writeFileSync(p, b)
    const r = await checkImage(p)
    assert.equal(r.ok, false)
    const all = r.errors.join('\n')
    assert.match(all, /checksum is 0x1234/)
    assert.match(all, /xattr_blkaddr is 7/)
    assert.match(all, /\/sync_io\.rs/)
    assert.match(all, /\/lib\.rs \(nid 133\): nlink 3 but 1 names/)
    assert.match(r.warnings.join('\n'), /directory nlink 5, expected 2/)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test('a corrupted chunk in the blob is reported with blob id and ci index', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'rafs-check-'))
  try {
    const blob = readFileSync(join(FIX, BE7))
    blob[20] = blob[20]! ^ 0x55
    writeFileSync(join(dir, BE7), blob)
    copyFileSync(join(FIX, BE7 + '.blob.data'), join(dir, BE7 + '.blob.data'))
    const view = readFileSync(join(dir, BE7 + '.blob.data'))
    view[0x5000 + 10] = view[0x5000 + 10]! ^ 1
    writeFileSync(join(dir, BE7 + '.blob.data'), view)
    const r = await checkImage(BOOT, { blobDir: dir, blobCacheDir: dir })
    const all = r.errors.join('\n')
    assert.match(all, /image\.blob: sha256/) // the ToC digest of the data section
    assert.match(all, /view of blob .*chunk digest mismatch: blob be7d77ee\S+ ci index 1/)
    assert.equal(r.blobs[0]!.viewChunksVerified, 1)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test('a missing or unreadable bootstrap is an error, not an exception', async () => {
  const r = await checkImage('/nonexistent/boot')
  assert.equal(r.ok, false)
  assert.match(r.errors[0]!, /cannot read bootstrap/)
})
