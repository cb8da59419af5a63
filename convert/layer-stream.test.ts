import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { layerCompression } from './layer-stream.js'

describe('layer media types', () => {
  it('reads tar, gzip (OCI and Docker) and zstd layers and names anything else with its digest', () => {
    assert.equal(layerCompression('application/vnd.oci.image.layer.v1.tar', 'sha256:x'), 'none')
    assert.equal(layerCompression('application/vnd.docker.image.rootfs.diff.tar.gzip', 'sha256:x'), 'gzip')
    assert.equal(layerCompression('application/vnd.oci.image.layer.v1.tar+zstd', 'sha256:x'), 'zstd')
    assert.throws(() => layerCompression('application/vnd.oci.image.layer.v1.tar+bzip2', 'sha256:abc'),
      (e: Error & { code?: string }) => e.code === 'RAFSPEER_ERR_UNSUPPORTED_LAYER' && e.message.includes('sha256:abc') && e.message.includes('tar+bzip2'))
  })
})
