/** WWW-Authenticate parsing and Docker config credentials: quoted commas, several challenges, all key forms. */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { defaultDockerConfigPath, loadDockerConfigCredentials, parseWwwAuthenticate } from './auth.js'

test('Bearer challenge with quoted values holding commas and escapes', () => {
  assert.deepEqual(parseWwwAuthenticate('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push"'), [
    { scheme: 'bearer', params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/alpine:pull,push' } }
  ])
  assert.deepEqual(parseWwwAuthenticate('bearer  Realm = "a\\"b" , error=insufficient_scope'), [
    { scheme: 'bearer', params: { realm: 'a"b', error: 'insufficient_scope' } }
  ])
})

test('several challenges in one header or in several headers', () => {
  assert.deepEqual(parseWwwAuthenticate('Basic realm="x, y", Bearer realm="https://t/token",service=s'), [
    { scheme: 'basic', params: { realm: 'x, y' } },
    { scheme: 'bearer', params: { realm: 'https://t/token', service: 's' } }
  ])
  assert.deepEqual(parseWwwAuthenticate(['Basic realm="r"', 'Negotiate']).map(c => c.scheme), ['basic', 'negotiate'])
  assert.deepEqual(parseWwwAuthenticate(undefined), [])
  assert.deepEqual(parseWwwAuthenticate(''), [])
})

test('Docker config: base64 auth, username/password, URL-shaped keys; missing file is empty; broken file throws', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'rafspeer-auth-'))
  try {
    const file = join(dir, 'config.json')
    await writeFile(file, JSON.stringify({
      auths: {
        'https://index.docker.io/v1/': { auth: Buffer.from('hub:pw:with:colons').toString('base64') },
        'http://127.0.0.1:5000/v2/': { username: 'u', password: 'p' },
        'ghcr.io': { auth: '' },
        'quay.io': { identitytoken: 'x' }
      },
      credsStore: 'desktop'
    }))
    const creds = await loadDockerConfigCredentials(file)
    assert.deepEqual(Object.fromEntries(creds), {
      'docker.io': { username: 'hub', password: 'pw:with:colons' },
      '127.0.0.1:5000': { username: 'u', password: 'p' }
    })
    assert.equal((await loadDockerConfigCredentials(join(dir, 'absent.json'))).size, 0)
    await writeFile(file, '{ nope')
    await assert.rejects(loadDockerConfigCredentials(file), /not valid JSON/)
    assert.equal(defaultDockerConfigPath({ DOCKER_CONFIG: '/etc/dc' }), '/etc/dc/config.json')
    assert.match(defaultDockerConfigPath({}), /\.docker\/config\.json$/)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})
