import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { BOOTSTRAP_HISTORY, NydusMediaTypes, findBootstrapLayer, nydusConfig, nydusManifest } from './nydus-layout.js'

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
