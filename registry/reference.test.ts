/** Image references: Docker's short forms, hosts with ports, tags, digests, and every malformed form refused. */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { formatReference, isLoopbackHost, parseReference, registryEndpoint, toReference } from './reference.js'

const HEX = 'a'.repeat(64)

test('Docker Hub short forms get docker.io, library/ and latest', () => {
  assert.deepEqual(parseReference('alpine'), { registry: 'docker.io', repository: 'library/alpine', tag: 'latest' })
  assert.deepEqual(parseReference('user/app:1.2'), { registry: 'docker.io', repository: 'user/app', tag: '1.2' })
  assert.deepEqual(parseReference('index.docker.io/busybox'), { registry: 'docker.io', repository: 'library/busybox', tag: 'latest' })
  assert.equal(registryEndpoint('docker.io'), 'registry-1.docker.io')
  assert.equal(registryEndpoint('ghcr.io'), 'ghcr.io')
})

test('hosts with ports, nested paths, tags and digests', () => {
  assert.deepEqual(parseReference('127.0.0.1:5000/team/app/api:v1-rc.2'), { registry: '127.0.0.1:5000', repository: 'team/app/api', tag: 'v1-rc.2' })
  assert.deepEqual(parseReference(`localhost/app@sha256:${HEX}`), { registry: 'localhost', repository: 'app', digest: `sha256:${HEX}` })
  assert.deepEqual(parseReference(`GHCR.io/o/a:t@sha256:${HEX}`), { registry: 'ghcr.io', repository: 'o/a', tag: 't', digest: `sha256:${HEX}` })
  assert.deepEqual(parseReference('[::1]:5000/app'), { registry: '[::1]:5000', repository: 'app', tag: 'latest' })
  assert.deepEqual(parseReference('my-reg.example.com/a__b/c-d.e_f'), { registry: 'my-reg.example.com', repository: 'a__b/c-d.e_f', tag: 'latest' })
  for (const s of ['127.0.0.1:5000/a/b:c', `docker.io/library/x@sha256:${HEX}`, `r.io/x:y@sha512:${'b'.repeat(128)}`]) {
    assert.equal(formatReference(parseReference(s)), s)
  }
})

test('malformed references are refused with the reason', () => {
  const bad: Array<[string, RegExp]> = [
    ['', /empty/],
    ['http://r.io/a', /scheme/],
    ['r.io/App', /lower-case/],
    ['r.io/a//b', /lower-case/],
    ['r.io/a-', /lower-case/],
    ['r.io/a:-tag', /tag/],
    [`r.io/a:${'t'.repeat(129)}`, /tag/],
    ['r.io/a@sha256:abc', /64 lower-case hex/],
    [`r.io/a@md5:${HEX}`, /not supported/],
    [`r.io/a@sha256:${'A'.repeat(64)}`, /hex/],
    ['bad_host.io:5000/a', /host/],
    ['r.io:99999/a', /port/],
    [`r.io/${'a/'.repeat(130)}a`, /longer than 255/]
  ]
  for (const [input, reason] of bad) {
    assert.throws(() => parseReference(input), (e: Error & { code?: string }) =>
      e.code === 'RAFSPEER_ERR_INVALID_REFERENCE' && reason.test(e.message), input)
  }
  assert.throws(() => toReference({ registry: 'r.io', repository: 'UPPER' }), { code: 'RAFSPEER_ERR_INVALID_REFERENCE' })
})

test('loopback hosts are told apart from the rest', () => {
  for (const h of ['127.0.0.1', '127.0.0.1:5000', '127.9.8.7:1', 'localhost', 'localhost:5000', '[::1]:5000', '::1']) assert.ok(isLoopbackHost(h), h)
  for (const h of ['128.0.0.1', 'ghcr.io', '10.0.0.1:5000', '[::2]:5000', 'localhost.evil.com']) assert.ok(!isLoopbackHost(h), h)
})
