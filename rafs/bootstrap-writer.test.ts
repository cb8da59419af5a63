import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import {
  BLOCK_SIZE, BlobFeatures, COMPAT_RAFS_V6, CHUNK_INDEX_SIZE, CHUNK_INFO_SIZE, ChunkFlags, DEVICE_TABLE_OFFSET,
  EXTENDED_INODE_SIZE, InodeLayout, RAFS_V6_INCOMPAT, RafsFlags, SB_EXT_OFFSET, SB_EXT_SIZE, SUPERBLOCK_OFFSET,
  SUPERBLOCK_SIZE, decodeBlobEntry, decodeChunkIndex, decodeChunkInfo, decodeDeviceSlot, decodeDirent, decodeInode,
  decodeRdev, decodeSuperBlock, decodeSuperBlockExt, roundUp, xattrIbodySize
} from './layout.js'
import type { OnDiskInode } from './layout.js'
import { newInode, nameKey } from './model.js'
import type { ChunkInfo, RafsBlobInfo, RafsImage, RafsInode } from './model.js'
import { encodeBootstrap } from './bootstrap-writer.js'

const CS = 0x10000
const hex = (s: string): string => createHash('sha256').update(s).digest('hex')

function blob (id: string, uncompressedSize: number): RafsBlobInfo {
  return {
    blobId: hex(id), compressor: 'zstd', digester: 'blake3', chunkSize: CS, chunkCount: 4, compressedSize: 12345,
    uncompressedSize, features: 0x7000_0021, ciCompressor: 'none', ciOffset: 1000, ciCompressedSize: 64,
    ciUncompressedSize: 64, blobTocSize: 1024, blobTocDigest: Buffer.alloc(32, 7)
  }
}

function chunk (blobIndex: number, index: number, uoff: number, usize: number, digestSeed: number, compressed = true): ChunkInfo {
  return {
    digest: Buffer.alloc(32, digestSeed), blobIndex, index, compressedOffset: index * 100, compressedSize: 100,
    uncompressedOffset: uoff, uncompressedSize: usize, compressed, fileOffset: 0,
    ...(index % 2 === 0 ? { crc32: 0xdeadbeef } : {})
  }
}

function dir (entries: Record<string, RafsInode>, init: Partial<RafsInode> = {}): RafsInode {
  const d = newInode('dir', init)
  for (const [name, inode] of Object.entries(entries)) d.children!.set(nameKey(name), inode)
  return d
}

function image (root: RafsInode, blobs: RafsBlobInfo[] = [], extra: Partial<RafsImage> = {}): RafsImage {
  return { root, blobs, chunkSize: CS, compressor: 'zstd', digester: 'blake3', ...extra }
}

/** A minimal reader over the writer's output, built only on layout.ts decoders. */
function reader (buf: Buffer) {
  const sb = decodeSuperBlock(buf.subarray(SUPERBLOCK_OFFSET, SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE))
  const ext = decodeSuperBlockExt(buf.subarray(SB_EXT_OFFSET, SB_EXT_OFFSET + SB_EXT_SIZE))
  const offOf = (nid: number): number => sb.metaBlkaddr * BLOCK_SIZE + 32 * nid
  const inode = (nid: number): OnDiskInode => decodeInode(buf, offOf(nid))
  /** the bytes of a flat (dir/symlink) inode, checking the inline tail stays inside its block */
  const data = (nid: number): Buffer => {
    const i = inode(nid)
    const body = offOf(nid) + i.inodeSize + xattrIbodySize(i.xattrIcount)
    const nblocks = Math.ceil(i.size / BLOCK_SIZE)
    const parts: Buffer[] = []
    for (let k = 0; k < nblocks; k++) {
      const len = Math.min(BLOCK_SIZE, i.size - k * BLOCK_SIZE)
      if (i.layout === InodeLayout.FLAT_INLINE && k === nblocks - 1) {
        assert.ok((offOf(nid) % BLOCK_SIZE) + i.inodeSize + xattrIbodySize(i.xattrIcount) + len <= BLOCK_SIZE, `nid ${nid}: inline tail crosses a block`)
        parts.push(buf.subarray(body, body + len))
      } else {
        assert.equal(i.layout, i.layout === InodeLayout.FLAT_INLINE ? InodeLayout.FLAT_INLINE : InodeLayout.FLAT_PLAIN)
        parts.push(buf.subarray((i.u + k) * BLOCK_SIZE, (i.u + k) * BLOCK_SIZE + len))
      }
    }
    return Buffer.concat(parts)
  }
  /** every dirent of a directory, block by block, in on-disk order */
  const readdir = (nid: number): Array<{ name: string, nid: number, type: number, block: number }> => {
    const d = data(nid)
    const out: Array<{ name: string, nid: number, type: number, block: number }> = []
    for (let base = 0, block = 0; base < d.length; base += BLOCK_SIZE, block++) {
      const blk = d.subarray(base, Math.min(d.length, base + BLOCK_SIZE))
      const n = decodeDirent(blk, 0).nameoff / 12
      for (let j = 0; j < n; j++) {
        const de = decodeDirent(blk, 12 * j)
        let end = j + 1 < n ? decodeDirent(blk, 12 * (j + 1)).nameoff : blk.length
        const nul = blk.indexOf(0, de.nameoff)
        if (j + 1 === n && nul >= 0 && nul < end) end = nul
        out.push({ name: blk.subarray(de.nameoff, end).toString('latin1'), nid: de.nid, type: de.fileType, block })
      }
    }
    return out
  }
  const lookup = (path: string): number => {
    let nid = sb.rootNid
    for (const part of path.split('/').filter(p => p !== '')) {
      const e = readdir(nid).find(x => x.name === nameKey(part))
      assert.ok(e !== undefined, `no ${part} in ${path}`)
      nid = e.nid
    }
    return nid
  }
  return { sb, ext, inode, data, readdir, lookup, offOf }
}

function sampleImage (): RafsImage {
  const b0 = blob('b0', 8 * BLOCK_SIZE * 16)
  const b1 = blob('b1', 32 * BLOCK_SIZE)
  const shared = chunk(0, 0, 0, CS, 9)
  const big = newInode('file', { size: CS * 2 + 1, chunks: [shared, chunk(0, 1, CS, CS, 3), chunk(1, 2, 0, 1, 5, false)], uid: 1000, gid: 2000, mtime: 1_700_000_000, mtimeNsec: 123456789 })
  const same = newInode('file', { size: CS, chunks: [shared] })
  const empty = newInode('file', { size: 0 })
  const hard = newInode('file', { size: 0, mode: 0o104755 })
  const sub = dir({ hard, inner: dir({}) })
  const root = dir({
    big, same, empty, hard, sub, other: dir({ again: hard }),
    link: newInode('symlink', { target: Buffer.from('big') }),
    tty: newInode('chr', { rdevMajor: 4, rdevMinor: 300 }),
    sda: newInode('blk', { rdevMajor: 8, rdevMinor: 1 }),
    pipe: newInode('fifo'),
    sock: newInode('sock'),
    opaque: dir({}, { xattrs: new Map([['trusted.overlay.opaque', Buffer.from('y')], ['user.a', Buffer.from('bc')]]) })
  }, { mode: 0o41777, mtime: 5 })
  return image(root, [b0, b1])
}

describe('encodeBootstrap', () => {
  it('writes the headers as nydus-image does', () => {
    const img = sampleImage()
    const buf = encodeBootstrap(img)
    const r = reader(buf)
    assert.equal(buf.length % BLOCK_SIZE, 0)
    assert.ok(buf.subarray(0, SUPERBLOCK_OFFSET).equals(Buffer.alloc(SUPERBLOCK_OFFSET)))
    assert.equal(r.sb.featureCompat, COMPAT_RAFS_V6)
    assert.equal(r.sb.featureIncompat, RAFS_V6_INCOMPAT)
    assert.equal(r.sb.checksum, 0)
    assert.equal(r.sb.blkszbits, 12)
    assert.equal(r.sb.rootNid, 128)
    assert.equal(r.sb.extraDevices, 2)
    assert.equal(r.sb.devtSlotoff, 11)
    assert.equal(r.sb.inos, 14) // "hard" counted once
    assert.equal(r.sb.blocks, 128 + 32)
    assert.equal(r.ext.blobTableOffset, BLOCK_SIZE)
    assert.equal(r.ext.blobTableSize, 512)
    assert.equal(r.sb.metaBlkaddr, 2)
    assert.equal(r.ext.chunkSize, CS)
    assert.equal(r.ext.prefetchTableOffset, 0)
    assert.equal(r.ext.flags, RafsFlags.COMPRESSION_ZSTD | RafsFlags.HASH_BLAKE3 | RafsFlags.EXPLICIT_UID_GID |
      RafsFlags.HAS_XATTR | RafsFlags.INLINED_CHUNK_DIGEST | RafsFlags.ENCRYPTION_NONE)
    const slot0 = decodeDeviceSlot(buf.subarray(DEVICE_TABLE_OFFSET, DEVICE_TABLE_OFFSET + 128))
    const slot1 = decodeDeviceSlot(buf.subarray(DEVICE_TABLE_OFFSET + 128, DEVICE_TABLE_OFFSET + 256))
    assert.deepEqual(slot0, { tag: img.blobs[0]!.blobId, blocks: 128, mappedBlkaddr: 128 })
    assert.deepEqual(slot1, { tag: img.blobs[1]!.blobId, blocks: 32, mappedBlkaddr: 256 })
    const e1 = decodeBlobEntry(buf.subarray(BLOCK_SIZE + 256, BLOCK_SIZE + 512))
    assert.equal(e1.blobIndex, 1)
    assert.equal(e1.blobId, img.blobs[1]!.blobId)
    assert.equal(e1.compressionAlgo, 3)
    assert.equal(e1.features, 0x7000_0021)
    assert.equal(e1.blobTocSize, 1024)
    assert.ok(e1.blobTocDigest.equals(Buffer.alloc(32, 7)))
  })

  it('writes inodes, nlink, rdev, symlinks, xattrs and chunk slots', () => {
    const img = sampleImage()
    const r = reader(encodeBootstrap(img))
    const root = r.inode(128)
    assert.equal(root.mode, 0o41777)
    assert.equal(root.nlink, 2 + 3)
    assert.equal(root.version, 1)
    assert.equal(img.root.nid, 128)
    assert.equal(r.inode(r.lookup('/sub')).nlink, 3)
    assert.equal(r.inode(r.lookup('/sub/inner')).nlink, 2)
    const hard = r.lookup('/hard')
    assert.equal(r.lookup('/sub/hard'), hard)
    assert.equal(r.lookup('/other/again'), hard)
    assert.equal(r.inode(hard).nlink, 3)
    assert.equal(r.inode(hard).mode, 0o104755)
    assert.equal(r.inode(r.lookup('/same')).nlink, 1)
    const tty = r.inode(r.lookup('/tty'))
    assert.equal(tty.layout, InodeLayout.FLAT_PLAIN)
    assert.deepEqual(decodeRdev(tty.u), { major: 4, minor: 300 })
    assert.equal(r.inode(r.lookup('/sda')).u, 0x801)
    assert.equal(r.inode(r.lookup('/pipe')).u, 0)
    assert.equal(r.data(r.lookup('/link')).toString(), 'big')
    const dotdot = r.readdir(r.lookup('/sub/inner')).find(e => e.name === '..')
    assert.equal(dotdot?.nid, r.lookup('/sub'))
    assert.equal(r.readdir(128).find(e => e.name === '..')?.nid, 128)

    const opaque = r.lookup('/opaque')
    const oi = r.inode(opaque)
    assert.equal(oi.xattrIcount, (4 + 4 + 20) / 4 + 1) // user.a=bc (8 B) + trusted.overlay.opaque=y (20 B)
    const xb = r.offOf(opaque) + EXTENDED_INODE_SIZE
    const bytes = encodeBootstrap(img).subarray(xb + 12, xb + 12 + 28)
    assert.deepEqual([bytes[0], bytes[1], bytes.readUInt16LE(2)], [1, 1, 2])
    assert.equal(bytes.subarray(4, 7).toString(), 'abc')
    assert.deepEqual([bytes[8], bytes[9]], [14, 4])

    const bigNid = r.lookup('/big')
    const big = r.inode(bigNid)
    assert.equal(big.layout, InodeLayout.CHUNK_BASED)
    assert.equal(big.u, 0x20 | 4)
    assert.equal(big.size, CS * 2 + 1)
    assert.deepEqual([big.uid, big.gid, big.mtime, big.mtimeNsec], [1000, 2000, 1_700_000_000, 123456789])
    const slots = roundUp(r.offOf(bigNid) + EXTENDED_INODE_SIZE, 8)
    const buf = encodeBootstrap(img)
    const got = [0, 1, 2].map(k => decodeChunkIndex(buf, slots + CHUNK_INDEX_SIZE * k))
    assert.deepEqual(got, [
      { ciIndex: 0, blobIndex: 0, deviceId: 1, blkaddr: 0 },
      { ciIndex: 1, blobIndex: 0, deviceId: 1, blkaddr: CS / BLOCK_SIZE },
      { ciIndex: 2, blobIndex: 1, deviceId: 2, blkaddr: 0 }
    ])
    assert.equal(r.inode(r.lookup('/empty')).size, 0)
  })

  it('writes one sorted chunk-table entry per distinct chunk', () => {
    const buf = encodeBootstrap(sampleImage())
    const r = reader(buf)
    assert.equal(r.ext.chunkTableOffset % BLOCK_SIZE, 0)
    assert.equal(r.ext.chunkTableSize, 3 * CHUNK_INFO_SIZE)
    assert.ok(r.ext.chunkTableOffset + r.ext.chunkTableSize <= buf.length)
    const entries = [0, 1, 2].map(i => decodeChunkInfo(buf, r.ext.chunkTableOffset + CHUNK_INFO_SIZE * i))
    assert.deepEqual(entries.map(e => [e.digest[0], e.blobIndex, e.index]), [[3, 0, 1], [5, 1, 2], [9, 0, 0]])
    assert.equal(entries[0]!.flags, ChunkFlags.COMPRESSED)
    assert.equal(entries[1]!.flags, ChunkFlags.HAS_CRC32)
    assert.equal(entries[1]!.crc32, 0xdeadbeef)
    assert.equal(entries[2]!.flags, ChunkFlags.COMPRESSED | ChunkFlags.HAS_CRC32)
    assert.equal(entries[0]!.uncompressedOffset, CS)
  })

  it('sorts dirents by raw bytes with . and .. in place, also names before "."', () => {
    const names = ['zz', '!', '-x', '.a', 'A', '\u00e9', 'a', '..b', '+']
    const root = dir(Object.fromEntries(names.map(n => [n, newInode('file')])))
    const r = reader(encodeBootstrap(image(root)))
    const got = r.readdir(128).map(e => e.name)
    const want = [...names.map(nameKey), '.', '..'].sort((a, b) => Buffer.compare(Buffer.from(a, 'latin1'), Buffer.from(b, 'latin1')))
    assert.deepEqual(got, want)
    assert.deepEqual(got.slice(0, 4), ['!', '+', '-x', '.'])
    assert.equal(r.readdir(128).find(e => e.name === 'a')?.type, 1)
  })

  it('packs big directories into self-contained blocks, each sorted', () => {
    const kids: Record<string, RafsInode> = {}
    for (let i = 0; i < 1500; i++) kids[`entry-${String(i).padStart(5, '0')}-${'n'.repeat(i % 40)}`] = newInode('file')
    kids['L'.repeat(255)] = newInode('dir')
    const root = dir({ big: dir(kids) })
    const r = reader(encodeBootstrap(image(root)))
    const nid = r.lookup('/big')
    const ents = r.readdir(nid)
    assert.equal(ents.length, 1503)
    const blocks = Math.max(...ents.map(e => e.block)) + 1
    assert.ok(blocks > 10)
    const i = r.inode(nid)
    assert.equal(Math.ceil(i.size / BLOCK_SIZE), blocks)
    const names = ents.map(e => e.name)
    assert.deepEqual(names, [...names].sort())
    assert.equal(r.lookup('/big/' + 'L'.repeat(255)), ents.find(e => e.name.length === 255)!.nid)
    assert.equal(r.inode(nid).nlink, 3)
  })

  it('never lets an inline tail cross a block, and goes plain when the tail cannot fit', () => {
    const kids: Record<string, RafsInode> = {}
    for (let i = 0; i < 300; i++) {
      kids[`s${i}`] = newInode('symlink', { target: Buffer.alloc(1 + (i * 37) % 4095, 0x61) })
      const sub: Record<string, RafsInode> = {}
      for (let j = 0; j < i % 30; j++) sub[`f${j}-${'x'.repeat(i % 200)}`] = newInode('fifo')
      kids[`d${i}`] = dir(sub)
    }
    kids.fat = dir({}, { xattrs: new Map([['user.big', Buffer.alloc(4050, 1)]]) })
    kids.full = newInode('symlink', { target: Buffer.alloc(4095, 0x62) })
    const img = image(dir(kids))
    const r = reader(encodeBootstrap(img))
    let inline = 0
    for (const [key, child] of img.root.children!) {
      const i = r.inode(child.nid!)
      if (i.layout === InodeLayout.FLAT_INLINE) inline++
      const d = r.data(child.nid!) // asserts the inline rule
      if (child.type === 'symlink') assert.ok(d.equals(child.target!), key)
      if (child.type === 'dir') assert.equal(i.size, child.size)
    }
    assert.ok(inline > 500)
    assert.equal(r.inode(img.root.children!.get('fat')!.nid!).layout, InodeLayout.FLAT_PLAIN)
    assert.equal(r.readdir(img.root.children!.get('fat')!.nid!).length, 2)
  })

  it('writes an image without blobs', () => {
    const root = dir({ e: newInode('file'), l: newInode('symlink', { target: Buffer.from('x') }) })
    const buf = encodeBootstrap(image(root, [], { compressor: 'none', digester: 'sha256' }))
    const r = reader(buf)
    assert.equal(r.sb.extraDevices, 0)
    assert.equal(r.sb.blocks, 0)
    assert.equal(r.sb.metaBlkaddr, 1)
    assert.equal(r.ext.chunkTableSize, 0)
    assert.equal(r.ext.chunkTableOffset % BLOCK_SIZE, 0)
    assert.ok(r.ext.chunkTableOffset <= buf.length)
    assert.equal(buf.length % BLOCK_SIZE, 0)
    assert.equal(r.ext.flags, RafsFlags.COMPRESSION_NONE | RafsFlags.HASH_SHA256 | RafsFlags.EXPLICIT_UID_GID | RafsFlags.ENCRYPTION_NONE)
  })

  it('writes the prefetch table before the meta area', () => {
    const f = newInode('file')
    const img = image(dir({ f }), [], { prefetch: [f] })
    const buf = encodeBootstrap(img)
    const r = reader(buf)
    assert.equal(r.ext.prefetchTableOffset, BLOCK_SIZE)
    assert.equal(r.ext.prefetchTableSize, 4)
    assert.equal(buf.readUInt32LE(BLOCK_SIZE), f.nid)
    assert.equal(r.sb.metaBlkaddr, 2)
  })

  it('leaves INLINED_CHUNK_DIGEST out when a blob lacks it', () => {
    const b = { ...blob('x', BLOCK_SIZE * 16), features: BlobFeatures.ALIGNED }
    const r = reader(encodeBootstrap(image(dir({}), [b])))
    assert.equal(r.ext.flags & RafsFlags.INLINED_CHUNK_DIGEST, 0)
  })

  it('rejects what RAFS cannot hold', () => {
    const bad = (root: RafsInode, blobs: RafsBlobInfo[] = [], re: RegExp): void => {
      assert.throws(() => encodeBootstrap(image(root, blobs)), re)
    }
    bad(dir({ ['n'.repeat(256)]: newInode('file') }), [], /256 bytes/)
    bad(dir({ 'a/b': newInode('file') }), [], /'\/' or NUL/)
    bad(dir({ 'a\0b': newInode('file') }), [], /'\/' or NUL/)
    bad(dir({ '': newInode('file') }), [], /empty file name/)
    bad(dir({ l: newInode('symlink', { target: Buffer.alloc(4096, 1) }) }), [], /4096 bytes/)
    bad(dir({ f: newInode('file', { size: 10, chunks: [chunk(1, 0, 0, 10, 1)] }) }), [blob('a', BLOCK_SIZE * 16)], /outside the blob table/)
    bad(dir({ f: newInode('file', { size: CS + 1, chunks: [chunk(0, 0, 0, CS, 1)] }) }), [blob('a', BLOCK_SIZE * 16)], /needs 2/)
    bad(dir({ x: newInode('file', { xattrs: new Map([['os2.foo', Buffer.from('1')]]) }) }), [], /os2\.foo.*cannot be stored/)
    bad(dir({}), Array.from({ length: 255 }, (_, i) => blob(String(i), BLOCK_SIZE)), /at most 254/)
    const d = dir({})
    bad(dir({ a: d, b: d }), [], /hard-linked/)
  })

  it('lays out 100k inodes quickly', () => {
    const dirs: Record<string, RafsInode> = {}
    for (let d = 0; d < 100; d++) {
      const kids: Record<string, RafsInode> = {}
      for (let i = 0; i < 1000; i++) kids[`file-${i}`] = newInode('file')
      dirs[`d${d}`] = dir(kids)
    }
    const t = Date.now()
    const buf = encodeBootstrap(image(dir(dirs)))
    assert.ok(Date.now() - t < 10_000, `took ${Date.now() - t} ms`)
    assert.equal(reader(buf).sb.inos, 100_101)
  })
})
