import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { newInode, nameKey, type ChunkInfo, type RafsImage } from '../rafs/index.js'
import { compareTrees } from './tree-compare.js'

describe('compareTrees', () => {
  const chunk = (d: number): ChunkInfo => ({ digest: Buffer.alloc(32, d), blobIndex: 0, index: d, compressedOffset: 0, compressedSize: 1, uncompressedOffset: 0, uncompressedSize: 1, compressed: false, fileOffset: 0 })
  const tree = (): RafsImage => {
    const root = newInode('dir')
    const f = newInode('file', { size: 1, chunks: [chunk(1)], mtime: 5 })
    f.xattrs.set('user.a', Buffer.from('1'))
    root.children!.set(nameKey('f'), f)
    root.children!.set(nameKey('g'), f)
    root.children!.set(nameKey('l'), newInode('symlink', { target: Buffer.from('f') }))
    return { root, blobs: [], chunkSize: 4096, compressor: 'none', digester: 'blake3' }
  }

  it('finds nothing between equal trees and every kind of difference otherwise', () => {
    assert.deepEqual(compareTrees(tree(), tree()), { entries: 4, differences: [] })
    const other = tree()
    const f = other.root.children!.get(nameKey('f'))!
    other.root.children!.set(nameKey('g'), { ...f, chunks: [chunk(2)], mode: 0o100600, uid: 7 })
    f.xattrs.set('user.a', Buffer.from('2'))
    other.root.children!.get(nameKey('l'))!.target = Buffer.from('g')
    other.root.children!.set(nameKey('extra'), newInode('fifo'))
    other.root.children!.delete(nameKey('f'))
    const { differences } = compareTrees(tree(), other)
    const text = differences.join('\n')
    for (const want of ['/f: missing', '/g: mode', '/g: uid', '/g: hard-link group', '/g: content', '/l: symlink target', '/extra: unexpected fifo']) {
      assert.ok(text.includes(want), `${want} in\n${text}`)
    }
  })
})
