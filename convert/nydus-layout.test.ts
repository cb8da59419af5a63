import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { newInode, nameKey, type ChunkInfo, type RafsImage } from '../rafs/index.js'
import { BOOTSTRAP_HISTORY, NydusMediaTypes, findBootstrapLayer, nydusConfig, nydusManifest } from './nydus-layout.js'
import { layerCompression } from './layer-stream.js'
import { compareTrees } from './tree-compare.js'

const blobs = [{ blobId: 'a'.repeat(64), size: 100 }, { blobId: 'b'.repeat(64), size: 200 }]
const boot = { digest: `sha256:${'c'.repeat(64)}`, size: 300, diffId: `sha256:${'d'.repeat(64)}` }

describe('nydus manifest and config', () => {
  it('lists the blobs in blob-table order, then the bootstrap layer, with the §17 types and annotations', () => {
    const m = nydusManifest({ digest: `sha256:${'e'.repeat(64)}`, size: 42 }, blobs, boot, { 'containerd.io/uncompressed': 'x', keep: 'y' })
    assert.equal(m.mediaType, NydusMediaTypes.manifest)
    assert.deepEqual(m.config, { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${'e'.repeat(64)}`, size: 42 })
    assert.deepEqual(m.layers.map(l => [l.mediaType, l.digest, l.size]), [
      ['application/vnd.oci.image.layer.nydus.blob.v1', `sha256:${'a'.repeat(64)}`, 100],
      ['application/vnd.oci.image.layer.nydus.blob.v1', `sha256:${'b'.repeat(64)}`, 200],
      ['application/vnd.oci.image.layer.v1.tar+gzip', boot.digest, 300]
    ])
    assert.deepEqual(m.layers[0]!.annotations, { 'containerd.io/snapshot/nydus-blob': 'true' })
    assert.deepEqual(m.layers[2]!.annotations, { 'containerd.io/snapshot/nydus-bootstrap': 'true', 'containerd.io/snapshot/nydus-fs-version': '6' })
    assert.deepEqual(m.annotations, { keep: 'y' }, 'containerd.io/uncompressed is dropped')
    assert.equal(findBootstrapLayer(m), m.layers[2])
  })

  it('sets diff_ids to the blobs and the bootstrap tar, and keeps history paired with them', () => {
    const source = {
      architecture: 'amd64',
      config: { Env: ['A=1'] },
      rootfs: { type: 'layers', diff_ids: ['sha256:1', 'sha256:2', 'sha256:3'] },
      history: [{ created_by: 'l0' }, { created_by: 'env', empty_layer: true }, { created_by: 'l1' }, { created_by: 'l2 (no data)' }]
    }
    // layers 0 and 1 became blobs 0 and 1; layer 2 had no file data
    const c = nydusConfig(source, blobs, boot, [0, 1, undefined])
    assert.deepEqual(c.rootfs!.diff_ids, [`sha256:${'a'.repeat(64)}`, `sha256:${'b'.repeat(64)}`, boot.diffId])
    assert.deepEqual(c.history, [
      { created_by: 'l0' }, { created_by: 'env', empty_layer: true }, { created_by: 'l1' },
      { created_by: 'l2 (no data)', empty_layer: true }, { ...BOOTSTRAP_HISTORY }
    ])
    assert.equal(c.history!.filter(h => h.empty_layer !== true).length, c.rootfs!.diff_ids!.length)
    assert.deepEqual(c.config, source.config)
    assert.deepEqual(source.history.length, 4, 'the source is not mutated')
  })

  it('falls back to one entry per blob when the source history does not pair with its layers', () => {
    const c = nydusConfig({ history: [{ created_by: 'only one' }] }, blobs, boot, [0, 1])
    assert.equal(c.history!.filter(h => h.empty_layer !== true).length, 3)
    assert.deepEqual(c.history!.at(-1), { ...BOOTSTRAP_HISTORY })
    assert.equal(c.history![0]!.empty_layer, true)
  })
})

describe('layer media types', () => {
  it('reads tar, gzip (OCI and Docker) and zstd layers and names anything else with its digest', () => {
    assert.equal(layerCompression('application/vnd.oci.image.layer.v1.tar', 'sha256:x'), 'none')
    assert.equal(layerCompression('application/vnd.docker.image.rootfs.diff.tar.gzip', 'sha256:x'), 'gzip')
    assert.equal(layerCompression('application/vnd.oci.image.layer.v1.tar+zstd', 'sha256:x'), 'zstd')
    assert.throws(() => layerCompression('application/vnd.oci.image.layer.v1.tar+bzip2', 'sha256:abc'),
      (e: Error & { code?: string }) => e.code === 'RAFSPEER_ERR_UNSUPPORTED_LAYER' && e.message.includes('sha256:abc') && e.message.includes('tar+bzip2'))
  })
})

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

