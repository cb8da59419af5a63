import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mergeLayers } from './merge.js'
import { newInode, nameKey, walk, type ChunkInfo, type RafsBlobInfo, type RafsImage, type RafsInode } from './model.js'

function blob (id: string): RafsBlobInfo {
  return {
    blobId: id.repeat(64).slice(0, 64),
    compressor: 'zstd',
    digester: 'blake3',
    chunkSize: 0x100000,
    chunkCount: 4,
    compressedSize: 1000,
    uncompressedSize: 4096 * 4,
    features: 0,
    ciCompressor: 'none',
    ciOffset: 0,
    ciCompressedSize: 0,
    ciUncompressedSize: 0,
    blobTocSize: 0,
    blobTocDigest: Buffer.alloc(32)
  }
}
function chunk (blobIndex: number, index: number): ChunkInfo {
  return {
    digest: Buffer.alloc(32, index + 16 * blobIndex),
    blobIndex,
    index,
    compressedOffset: index * 100,
    compressedSize: 100,
    uncompressedOffset: index * 4096,
    uncompressedSize: 4096,
    compressed: true,
    fileOffset: 0
  }
}
const file = (tag: number, chunks: ChunkInfo[] = []): RafsInode =>
  newInode('file', { uid: tag, size: chunks.length * 4096, chunks })
const dir = (entries: Record<string, RafsInode>, init: Partial<RafsInode> = {}): RafsInode =>
  newInode('dir', { ...init, children: new Map(Object.entries(entries).map(([k, v]) => [nameKey(k), v])) })
const image = (root: RafsInode, blobs: RafsBlobInfo[] = [], prefetch?: RafsInode[]): RafsImage =>
  ({ root, blobs, chunkSize: 0x100000, compressor: 'zstd', digester: 'blake3', ...(prefetch !== undefined ? { prefetch } : {}) })

/** path → type:uid, which tells the layers' entries apart */
function listing (img: RafsImage): Record<string, string> {
  const out: Record<string, string> = {}
  for (const [path, inode] of walk(img.root)) out[path] = `${inode.type}:${inode.uid}`
  return out
}
function at (root: RafsInode, path: string): RafsInode {
  let n = root
  for (const part of path.split('/').filter(Boolean)) n = n.children!.get(nameKey(part))!
  assert.ok(n !== undefined, path)
  return n
}
/** A deep, identity-free fingerprint, to prove the layers were left alone. */
const fingerprint = (img: RafsImage): string => JSON.stringify([...walk(img.root)].map(([p, i]) =>
  [p, i.type, i.mode, i.uid, i.mtime, [...i.xattrs], i.chunks?.map(c => [c.blobIndex, c.index]), i.children?.size]))

test('whiteouts hide lower entries; the markers never appear', () => {
  const lower = image(dir({
    a: file(1),
    b: dir({ x: file(1), y: file(1) }),
    keep: file(1),
    '.wh.bottom': file(1) // a marker in the bottom layer hides nothing but is still dropped
  }))
  const upper = image(dir({
    '.wh.a': file(2),
    b: dir({ '.wh.x': file(2), z: file(2) }, { uid: 2 }),
    '.wh.nothing-there': file(2),
    '.wh.keep2': file(2)
  }, { uid: 2 }))
  const before = [fingerprint(lower), fingerprint(upper)]
  const merged = mergeLayers([lower, upper])
  assert.deepEqual(listing(merged), {
    '/': 'dir:2',
    '/b': 'dir:2',
    '/b/y': 'file:1',
    '/b/z': 'file:2',
    '/keep': 'file:1'
  })
  assert.deepEqual([fingerprint(lower), fingerprint(upper)], before)
  assert.notEqual(merged.root, lower.root)
})

test('opaque directories drop lower children but keep the same layer\'s; nested opaques; re-created names', () => {
  const l0 = image(dir({
    d: dir({ old: file(0), sub: dir({ deep: file(0) }) }),
    e: dir({ gone: file(0) }),
    f: dir({ inner: file(0) })
  }))
  const l1 = image(dir({
    d: dir({ '.wh..wh..opq': file(1), new: file(1), sub: dir({ mine: file(1) }, { uid: 1 }) }, { uid: 1 }),
    e: dir({ '.wh.gone': file(1), gone: file(1) }), // whited out and re-created in one layer: the new one stays
    '.wh.f': file(1),
    f: dir({ fresh: file(1) }, { uid: 1 })
  }))
  const l2 = image(dir({
    d: dir({ sub: dir({ '.wh..wh..opq': file(2), top: file(2) }, { uid: 2 }) }, { uid: 2 })
  }))
  assert.deepEqual(listing(mergeLayers([l0, l1, l2])), {
    '/': 'dir:0',
    '/d': 'dir:2',
    '/d/new': 'file:1',
    '/d/sub': 'dir:2',
    '/d/sub/top': 'file:2',
    '/e': 'dir:0',
    '/e/gone': 'file:1',
    '/f': 'dir:1',
    '/f/fresh': 'file:1'
  })
})

test('a whiteout inside a directory the same layer creates applies to lower layers only', () => {
  const l0 = image(dir({ n: file(0) }))
  const l1 = image(dir({ n: dir({ '.wh.x': file(1), '.wh..wh..opq': file(1), y: file(1) }, { uid: 1 }) }))
  assert.deepEqual(listing(mergeLayers([l0, l1])), { '/': 'dir:0', '/n': 'dir:1', '/n/y': 'file:1' })
})

test('dir over file, file over dir, symlink over dir; upper dir attributes win', () => {
  const l0 = image(dir({
    a: file(0),
    b: dir({ x: file(0) }),
    c: dir({ x: file(0) }),
    d: dir({ x: file(0) }, { mode: 0o40700, mtime: 5, xattrs: new Map([['user.a', Buffer.from('0')]]) })
  }))
  const l1 = image(dir({
    a: dir({ y: file(1) }, { uid: 1 }),
    b: file(1),
    c: newInode('symlink', { uid: 1, target: Buffer.from('/x') }),
    d: dir({ y: file(1) }, { uid: 1, mode: 0o40751, mtime: 9, xattrs: new Map([['user.b', Buffer.from('1')]]) })
  }))
  const merged = mergeLayers([l0, l1])
  assert.deepEqual(listing(merged), {
    '/': 'dir:0',
    '/a': 'dir:1',
    '/a/y': 'file:1',
    '/b': 'file:1',
    '/c': 'symlink:1',
    '/d': 'dir:1',
    '/d/x': 'file:0',
    '/d/y': 'file:1'
  })
  const d = at(merged.root, 'd')
  assert.equal(d.mode, 0o40751)
  assert.equal(d.mtime, 9)
  assert.deepEqual([...d.xattrs.keys()], ['user.b'])
  assert.equal(at(l0.root, 'd').mode, 0o40700)
})

test('hard links stay one inode per layer, also when one name is whited out later', () => {
  const shared0 = file(0)
  const shared1 = file(1)
  const l0 = image(dir({ a: shared0, sub: dir({ b: shared0, c: shared0 }) }))
  const l1 = image(dir({ sub: dir({ '.wh.b': file(1), h1: shared1 }), h2: shared1 }))
  const merged = mergeLayers([l0, l1])
  assert.equal(at(merged.root, 'a'), at(merged.root, 'sub/c'))
  assert.notEqual(at(merged.root, 'a'), shared0)
  assert.equal(at(merged.root, 'sub/h1'), at(merged.root, 'h2'))
  assert.deepEqual([...at(merged.root, 'sub').children!.keys()].sort(), ['c', 'h1'])
})

test('blob tables concatenate with duplicates folded; chunk indexes are remapped and shared', () => {
  const [bA, bB, bC] = [blob('a'), blob('b'), blob('c')]
  const c0 = chunk(0, 0) // layer 0: blob a
  const l0 = image(dir({ f: file(0, [c0, chunk(0, 1)]), g: file(0, [c0]) }), [bA])
  // layer 1 lists blob a again (e.g. a chunk dict) after its own blobs b and c
  const l1x = chunk(2, 3)
  const l1 = image(dir({ h: file(1, [chunk(0, 0), chunk(1, 2)]), i: file(1, [l1x]), j: file(1, [chunk(2, 1)]) }), [bB, bC, { ...bA }])
  const l2 = image(dir({ k: file(2, [chunk(0, 1)]) }), [bC])
  const merged = mergeLayers([l0, l1, l2])
  assert.deepEqual(merged.blobs.map(b => b.blobId[0]), ['a', 'b', 'c'])
  const slots = (p: string): Array<[number, number]> => at(merged.root, p).chunks!.map(c => [c.blobIndex, c.index])
  assert.deepEqual(slots('f'), [[0, 0], [0, 1]])
  assert.deepEqual(slots('h'), [[1, 0], [2, 2]])
  assert.deepEqual(slots('i'), [[0, 3]])
  assert.deepEqual(slots('j'), [[0, 1]])
  assert.deepEqual(slots('k'), [[2, 1]])
  // one ChunkInfo per (blob, index), shared across files and layers; the layers' own objects are untouched
  assert.equal(at(merged.root, 'f').chunks![0], at(merged.root, 'g').chunks![0])
  assert.equal(at(merged.root, 'j').chunks![0], at(merged.root, 'f').chunks![1])
  assert.notEqual(at(merged.root, 'j').chunks![0], at(merged.root, 'k').chunks![0])
  assert.equal(at(merged.root, 'i').chunks![0]!.digest.equals(l1x.digest), true)
  assert.equal(l1x.blobIndex, 2)
  assert.notEqual(at(merged.root, 'f').chunks![0], c0)
})

test('prefetch is the union of surviving prefetch inodes, in layer order', () => {
  const p0 = file(0)
  const gone = file(0)
  const p1 = file(1)
  const l0 = image(dir({ p0, gone }), [], [p0, gone])
  const l1 = image(dir({ '.wh.gone': file(1), p1 }), [], [p1])
  const merged = mergeLayers([l0, l1])
  assert.deepEqual(merged.prefetch, [at(merged.root, 'p0'), at(merged.root, 'p1')])
  assert.equal(mergeLayers([image(dir({}))]).prefetch, undefined)
})

test('layers must agree on chunk size and codecs', () => {
  const a = image(dir({}))
  assert.throws(() => mergeLayers([a, { ...image(dir({})), chunkSize: 0x10000 }]), { code: 'RAFSPEER_ERR_MERGE', message: /chunk size/ })
  assert.throws(() => mergeLayers([a, { ...image(dir({})), compressor: 'none' }]), { code: 'RAFSPEER_ERR_MERGE' })
  assert.throws(() => mergeLayers([a, { ...image(dir({})), digester: 'sha256' }]), { code: 'RAFSPEER_ERR_MERGE' })
  assert.throws(() => mergeLayers([]), { code: 'RAFSPEER_ERR_MERGE' })
})

test('a directory the upper layer only passes through (implicit, no tar entry) keeps the lower attributes', () => {
  const lower = image(dir({ opt: dir({ model: dir({ a: file(1) }, { mtime: 200, mode: 0o040700 }) }, { mtime: 100, uid: 7 }) }, { mtime: 50 }))
  const upper = image({
    ...dir({ opt: { ...dir({ model: { ...dir({ b: file(2) }), implicit: true } }), implicit: true } }),
    implicit: true
  })
  const merged = mergeLayers([lower, upper])
  assert.deepEqual(listing(merged), { '/': 'dir:0', '/opt': 'dir:7', '/opt/model': 'dir:0', '/opt/model/a': 'file:1', '/opt/model/b': 'file:2' })
  assert.equal(merged.root.mtime, 50)
  assert.equal(at(merged.root, 'opt').mtime, 100)
  assert.equal(at(merged.root, 'opt').uid, 7)
  assert.equal(at(merged.root, 'opt/model').mtime, 200)
  assert.equal(at(merged.root, 'opt/model').mode, 0o040700)
  // an explicit upper directory still wins
  const explicit = mergeLayers([lower, image(dir({ opt: dir({}, { mtime: 300 }) }))])
  assert.equal(at(explicit.root, 'opt').mtime, 300)
})
