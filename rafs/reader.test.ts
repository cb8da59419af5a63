import { NYDUS_FIXTURES } from '../test/helpers/fixtures.js'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { lstatSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, rmdirSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { listAttributesSync, getAttributeSync } from '@napi-rs/xattr'
import { RafsReader, RafsLookupError } from './reader.js'
import { BlobDataReader } from './blob-reader.js'
import { digestChunk } from './codec.js'
import { RafsFormatError } from './layout.js'
import { walk, nameKey } from './model.js'

const FIX = NYDUS_FIXTURES
const BOOT = join(FIX, 'rafs-v6-2.2.boot')
const BLOB_ID = 'be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef'
const INLINE_BOOT = join(FIX, '2fa78cad-inline-image.boot')

/** A file's bytes through mapRange + BlobDataReader. */
async function readFileVia (r: RafsReader, dr: BlobDataReader, nid: number): Promise<Buffer> {
  const parts: Buffer[] = []
  for (const p of r.mapRange(nid, 0, r.inode(nid).size)) {
    const data = await dr.readChunk(p.chunk)
    parts.push(data.subarray(p.chunkOffset, p.chunkOffset + p.length))
  }
  return Buffer.concat(parts)
}

test('2.2 fixture: superblock, blobs and root listing', async () => {
  const r = await RafsReader.open(BOOT)
  assert.equal(r.rootNid, 128)
  assert.equal(r.chunkSize, 0x100000)
  assert.equal(r.compressor, 'zstd')
  assert.equal(r.digester, 'blake3')
  assert.equal(r.flags, 0x194)
  assert.deepEqual(r.blobs.map(b => b.blobId), [BLOB_ID])
  assert.equal(r.blobEntries[0]!.chunkCount, 2)
  const names = r.readdir(r.rootNid).map(e => e.name.toString())
  assert.deepEqual(names, ['lib.rs', 'sync_io.rs'])
  const lib = r.inode(r.lookup('/lib.rs'))
  const sync = r.inode(r.lookup('sync_io.rs'))
  assert.equal(lib.size, 16931)
  assert.equal(sync.size, 13400)
  assert.equal(lib.type, 'file')
  assert.equal(lib.compact, false)
  assert.equal(lib.mode, 0o100644)
  assert.deepEqual(r.chunkIndexes(sync.nid), [{ blobIndex: 0, ciIndex: 1, blkaddr: 5 }])
  const root = r.inode(r.rootNid)
  assert.equal(root.type, 'dir')
  assert.equal(root.size, 67)
})

test('lookup errors carry ENOENT / ENOTDIR', async () => {
  const r = await RafsReader.open(BOOT)
  assert.throws(() => r.lookup('/missing'), (e: unknown) => e instanceof RafsLookupError && e.code === 'ENOENT')
  assert.throws(() => r.lookup('/lib.rs/x'), (e: unknown) => e instanceof RafsLookupError && e.code === 'ENOTDIR')
  assert.equal(r.lookup('/'), 128)
  assert.equal(r.lookup('/./lib.rs'), r.lookupChild(128, Buffer.from('lib.rs')))
  assert.equal(r.lookupChild(128, Buffer.from('zzz')), undefined)
  assert.equal(r.lookupChild(128, Buffer.from('..')), 128)
})

test('mapRange clamps at EOF and splits at chunk boundaries', async () => {
  const r = await RafsReader.open(BOOT)
  const nid = r.lookup('/lib.rs')
  const pieces = r.mapRange(nid, 100, 1 << 30)
  assert.equal(pieces.length, 1)
  assert.deepEqual({ ...pieces[0], chunk: undefined }, { chunk: undefined, chunkOffset: 100, length: 16831, fileOffset: 100 })
  assert.deepEqual(r.mapRange(nid, 16931, 10), [])
  assert.deepEqual(r.mapRange(nid, 0, 0), [])
})

test('file bytes from the blob and from the .blob.data view are identical and verify', async () => {
  const r = await RafsReader.open(BOOT)
  const blob = r.blobs[0]!
  const fromBlob = await BlobDataReader.open({ blobPath: join(FIX, BLOB_ID), blob })
  const fromView = await BlobDataReader.open({ viewPath: join(FIX, BLOB_ID + '.blob.data'), blob })
  try {
    for (const name of ['lib.rs', 'sync_io.rs']) {
      const nid = r.lookup(name)
      const a = await readFileVia(r, fromBlob, nid)
      const b = await readFileVia(r, fromView, nid)
      assert.equal(a.length, r.inode(nid).size)
      assert.ok(a.equals(b), name)
      const chunk = r.mapRange(nid, 0, 1)[0]!.chunk
      assert.ok(digestChunk('blake3', a).equals(chunk.digest))
    }
    const chunk = r.mapRange(r.lookup('lib.rs'), 0, 1)[0]!.chunk
    const forged = { ...chunk, digest: Buffer.alloc(32, 7) }
    await assert.rejects(fromBlob.readChunk(forged), (e: unknown) => e instanceof RafsFormatError && /chunk digest mismatch/.test(e.message))
    await assert.rejects(fromView.readChunk({ ...chunk, uncompressedOffset: 1 << 20 }), RafsFormatError)
    assert.equal((await fromBlob.readChunk(forged, { verify: false })).length, chunk.uncompressedSize)
  } finally {
    await fromBlob.close()
    await fromView.close()
  }
})

test('toImage: model tree with shared chunk objects and nids', async () => {
  const r = await RafsReader.open(INLINE_BOOT)
  const img = r.toImage()
  assert.deepEqual([...img.root.children!.keys()], ['error.rs', 'lib.rs', 'logger.rs'])
  assert.equal(img.root.nid, 128)
  const lib = img.root.children!.get(nameKey('lib.rs'))!
  assert.equal(lib.size, 678)
  assert.equal(lib.chunks!.length, 1)
  assert.strictEqual(lib.chunks![0], r.chunkInfo(0, 1))
  assert.equal(img.blobs.length, 1)
})

test('bootstraps larger than 1 GiB and non-bootstraps are refused with RafsFormatError', async () => {
  assert.throws(() => RafsReader.fromBuffer(Buffer.alloc(4096)), (e: unknown) => e instanceof RafsFormatError && /magic/.test(e.message))
  assert.throws(() => RafsReader.fromBuffer(Buffer.alloc(100)), RafsFormatError)
  await assert.rejects(RafsReader.open(join(FIX, BLOB_ID)), RafsFormatError)
})

// ---------------------------------------------------------------------------------------------------------------
// the kernel as the reference: mount each fixture and compare every file with what the reader says

function sh (cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim()
}

async function withKernelMount (boot: string, view: string, fn: (mnt: string) => Promise<void>): Promise<boolean> {
  const loops: string[] = []
  const mnt = mkdtempSync(join(tmpdir(), 'rafs-reader-mnt-'))
  let mounted = false
  try {
    loops.push(sh('losetup', ['-f', '--show', '-r', boot]))
    loops.push(sh('losetup', ['-f', '--show', '-r', view]))
    try {
      sh('mount', ['-t', 'erofs', '-o', `ro,device=${loops[1]!}`, loops[0]!, mnt])
    } catch {
      return false // no EROFS with device tables here
    }
    mounted = true
    await fn(mnt)
    return true
  } finally {
    if (mounted) sh('umount', [mnt])
    for (const l of loops) sh('losetup', ['-d', l])
    rmdirSync(mnt)
  }
}

const canMount = process.getuid?.() === 0

for (const [boot, view] of [[BOOT, join(FIX, BLOB_ID + '.blob.data')], [INLINE_BOOT, INLINE_BOOT + '.blob.data']] as const) {
  test(`kernel agrees with the reader on ${boot.split('/').pop()!}`, { skip: canMount ? false : 'needs root for losetup/mount' }, async (t) => {
    const r = await RafsReader.open(boot)
    const img = r.toImage()
    const dr = await BlobDataReader.open({ viewPath: view, blob: r.blobs[0]! })
    try {
      const ok = await withKernelMount(boot, view, async (mnt) => {
        let files = 0
        for (const [path, inode] of walk(img.root)) {
          const p = join(mnt, path)
          const st = lstatSync(p)
          const ri = r.inode(inode.nid!)
          assert.equal(st.ino, inode.nid, path)
          assert.equal(st.mode, inode.mode, path)
          assert.equal(st.uid, inode.uid, path)
          assert.equal(st.gid, inode.gid, path)
          assert.equal(st.nlink, ri.nlink, path)
          if (!ri.compact) assert.equal(Math.floor(st.mtimeMs / 1000), inode.mtime, path)
          if (inode.type !== 'dir') assert.equal(st.size, inode.size, path)
          if (inode.type === 'dir') assert.deepEqual(readdirSync(p).sort(), [...inode.children!.keys()].map(k => Buffer.from(k, 'latin1').toString()).sort(), path)
          if (inode.type === 'symlink') assert.ok(readlinkSync(p, { encoding: 'buffer' }).equals(inode.target!), path)
          if (inode.type === 'file') {
            assert.ok(readFileSync(p).equals(await readFileVia(r, dr, inode.nid!)), path)
            files++
          }
          const names = inode.type === 'symlink' ? [] : listAttributesSync(p)
          assert.deepEqual(names.sort(), [...inode.xattrs.keys()].sort(), path)
          for (const n of names) assert.ok(getAttributeSync(p, n)!.equals(inode.xattrs.get(n)!), `${path} ${n}`)
        }
        assert.ok(files >= 2)
      })
      if (!ok) t.skip('the kernel refused to mount (no EROFS device-table support?)')
    } finally {
      await dr.close()
    }
  })
}

/** The 2.2 fixture with lib.rs (nid 133) rewritten as a 32-byte compact inode, its chunk slot moved up to match. */
function compactVariant (): Buffer {
  const b = readFileSync(BOOT)
  const off = 0x30a0
  const slot = Buffer.from(b.subarray(0x30e0, 0x30e8))
  const c = Buffer.alloc(64)
  c.writeUInt16LE(4 << 1, 0) // compact, CHUNK_BASED
  c.writeUInt16LE(0o100640, 4)
  c.writeUInt16LE(1, 6)
  c.writeUInt32LE(16931, 8)
  c.writeUInt32LE(0x28, 16)
  c.writeUInt32LE(2, 20)
  c.writeUInt16LE(1000, 24)
  c.writeUInt16LE(1001, 26)
  slot.copy(c, 32) // roundUp(off + 32, 8)
  c.copy(b, off)
  return b
}

test('compact inodes: mtime 0, uid/gid kept, chunks still mapped (and the kernel agrees)', { skip: canMount ? false : 'needs root' }, async () => {
  const buf = compactVariant()
  const r = RafsReader.fromBuffer(buf)
  const lib = r.inode(r.lookup('/lib.rs'))
  assert.equal(lib.compact, true)
  assert.equal(lib.inodeSize, 32)
  assert.deepEqual([lib.mode, lib.uid, lib.gid, lib.mtime, lib.size], [0o100640, 1000, 1001, 0, 16931])
  const view = join(FIX, BLOB_ID + '.blob.data')
  const dr = await BlobDataReader.open({ viewPath: view, blob: r.blobs[0]! })
  const dir = mkdtempSync(join(tmpdir(), 'rafs-reader-compact-'))
  try {
    const content = await readFileVia(r, dr, lib.nid)
    writeFileSync(join(dir, 'boot'), buf)
    await withKernelMount(join(dir, 'boot'), view, async (mnt) => {
      const st = lstatSync(join(mnt, 'lib.rs'))
      assert.deepEqual([st.mode, st.uid, st.gid, st.size], [0o100640, 1000, 1001, 16931])
      assert.ok(readFileSync(join(mnt, 'lib.rs')).equals(content))
    })
  } finally {
    await dr.close()
    rmSync(dir, { recursive: true, force: true })
  }
})
