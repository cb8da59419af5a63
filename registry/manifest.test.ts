/** Manifest checks, platform selection, and the small parsers of the wire (Retry-After, Content-Range, upload URLs). */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { parseContentRange } from './blob-download.js'
import { withDigest } from './blob-upload.js'
import { MediaTypes, parseManifest, parsePlatform, selectPlatform, type ImageIndex } from './manifest.js'
import { parseRetryAfter } from './transport.js'

const ctx = { host: 'r.io', repository: 'a/b', target: 'v1' }
const D = (c: string): string => `sha256:${c.repeat(64)}`

test('the media type comes from a specific Content-Type, else from the body, else from the shape', () => {
  const body = Buffer.from(JSON.stringify({ schemaVersion: 2, config: { mediaType: MediaTypes.OciConfig, digest: D('1'), size: 2 }, layers: [] }))
  assert.equal(parseManifest(body, `${MediaTypes.OciManifest}; charset=utf-8`, ctx).mediaType, MediaTypes.OciManifest)
  assert.equal(parseManifest(body, 'application/json', ctx).mediaType, MediaTypes.OciManifest)
  assert.throws(() => parseManifest(body, MediaTypes.DockerManifestList, ctx), { code: 'RAFSPEER_ERR_REGISTRY_MANIFEST_INVALID' })
  const typed = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.DockerManifest, config: { mediaType: 'x', digest: D('1'), size: 2 }, layers: [] }))
  assert.throws(() => parseManifest(typed, MediaTypes.OciManifest, ctx), /disagrees/)
  assert.throws(() => parseManifest(body, 'application/vnd.oci.artifact.manifest.v1+json', ctx), { code: 'RAFSPEER_ERR_REGISTRY_UNSUPPORTED_MEDIA_TYPE' })
  const badDigest = Buffer.from(JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'x', digest: 'sha256:zz', size: 1 }] }))
  assert.throws(() => parseManifest(badDigest, MediaTypes.OciIndex, ctx), /manifests\[0\]\.digest/)
})

test('platform selection: exact, arm64 variant defaults, any variant when none asked, clear miss', () => {
  const entry = (digest: string, os: string, architecture: string, variant?: string): ImageIndex['manifests'][number] =>
    ({ mediaType: MediaTypes.OciManifest, digest, size: 1, platform: { os, architecture, ...(variant !== undefined ? { variant } : {}) } })
  const index: ImageIndex = {
    schemaVersion: 2,
    manifests: [entry(D('a'), 'unknown', 'unknown'), entry(D('b'), 'linux', 'amd64', 'v3'), entry(D('c'), 'linux', 'arm64'), entry(D('d'), 'linux', 'arm', 'v6'), entry(D('e'), 'linux', 'arm', 'v7')]
  }
  assert.equal(selectPlatform(index, parsePlatform('linux/amd64'), ctx).digest, D('b'))
  assert.equal(selectPlatform(index, parsePlatform('linux/arm64/v8'), ctx).digest, D('c'))
  assert.equal(selectPlatform(index, parsePlatform('linux/arm'), ctx).digest, D('e'))
  assert.equal(selectPlatform(index, parsePlatform('linux/arm/v6'), ctx).digest, D('d'))
  assert.throws(() => selectPlatform(index, parsePlatform('linux/amd64/v2'), ctx), /linux\/amd64\/v2.*has: unknown\/unknown, linux\/amd64\/v3/)
  assert.throws(() => parsePlatform('linux'), { code: 'RAFSPEER_ERR_INVALID_REFERENCE' })
})

test('Retry-After in seconds or as an HTTP date; Content-Range forms; digest appended to upload URLs verbatim', () => {
  assert.equal(parseRetryAfter('3'), 3000)
  assert.equal(parseRetryAfter(new Date(10_000).toUTCString(), 4_000), 6000)
  assert.equal(parseRetryAfter('soon'), undefined)
  assert.equal(parseRetryAfter(undefined), undefined)
  assert.deepEqual(parseContentRange('bytes 5-9/100'), { start: 5, end: 9, total: 100 })
  assert.deepEqual(parseContentRange('bytes 5-9/*'), { start: 5, end: 9, total: undefined })
  assert.equal(parseContentRange('5-9/100'), undefined)
  assert.equal(withDigest('http://r/u/1?_state=a%2Bb~c=', D('f')), `http://r/u/1?_state=a%2Bb~c=&digest=sha256%3A${'f'.repeat(64)}`)
  assert.equal(withDigest('https://r/u/1', D('f')), `https://r/u/1?digest=sha256%3A${'f'.repeat(64)}`)
})
