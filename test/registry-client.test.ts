/**
 * One conformance suite for the registry client, run against the real CNCF distribution registry (anonymous and
 * htpasswd Basic) and against the embedded server (anonymous, Basic, and Bearer with the server as token issuer):
 * the client must behave the same against both, and the embedded server must look like the real one to it.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { RegistryClient, MediaTypes, isIndex, type Credentials, type ImageManifest } from '../registry/index.js'
import { startRegistryServer } from '../registry/server.js'
import { distributionSkipReason, startDistribution } from './helpers/distribution.js'

interface Started {
  host: string
  stop: () => Promise<void>
  /** credentials the registry demands, when it demands any */
  auth?: Credentials & { scheme: 'basic' | 'bearer' }
}

const sha256 = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`

async function collect (stream: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Buffer[] = []
  for await (const c of stream) parts.push(Buffer.from(c))
  return Buffer.concat(parts)
}

/** A config blob and a manifest naming it and `layers`, in OCI or Docker media types. */
function imageOf (kind: 'oci' | 'docker', config: Buffer, layers: Buffer[]): { mediaType: string, bytes: Buffer } {
  const mediaType = kind === 'oci' ? MediaTypes.OciManifest : MediaTypes.DockerManifest
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType,
    config: { mediaType: kind === 'oci' ? MediaTypes.OciConfig : MediaTypes.DockerConfig, digest: sha256(config), size: config.length },
    layers: layers.map(l => ({ mediaType: kind === 'oci' ? MediaTypes.OciLayerGzip : MediaTypes.DockerLayerGzip, digest: sha256(l), size: l.length }))
  }
  return { mediaType, bytes: Buffer.from(JSON.stringify(manifest)) }
}

function configOf (os: string, architecture: string, variant?: string): Buffer {
  return Buffer.from(JSON.stringify({ os, architecture, ...(variant !== undefined ? { variant } : {}), rootfs: { type: 'layers', diff_ids: [] } }))
}

export function registryConformance (name: string, start: () => Promise<Started>, skip?: string): void {
  describe(name, { skip: skip ?? false }, () => {
    let reg: Started
    let client: RegistryClient
    let scratch: string
    let repo: string
    const blob = randomBytes(1 << 20 | 12345)
    const blobDigest = sha256(blob)

    before(async () => {
      scratch = await mkdtemp(join(tmpdir(), 'rafspeer-conformance-'))
      reg = await start()
      repo = `${reg.host}/conformance/app`
      // hermetic: never the developer's ~/.docker/config.json
      const creds = reg.auth !== undefined ? { [reg.host]: { username: reg.auth.username, password: reg.auth.password } } : undefined
      client = new RegistryClient({ dockerConfig: join(scratch, 'none.json'), retryBaseMs: 10, ...(creds !== undefined ? { credentials: creds } : {}) })
    })
    after(async () => {
      await reg?.stop()
      await client?.close()
      if (scratch !== undefined) await rm(scratch, { recursive: true, force: true })
    })

    it('ping reports the API and the auth scheme', async () => {
      const p = await client.ping(reg.host)
      assert.equal(p.url, `http://${reg.host}`)
      assert.equal(p.apiVersion, 'registry/2.0')
      assert.equal(p.auth, reg.auth?.scheme ?? 'none')
    })

    it('pushes a blob monolithically, HEADs it, reads it back verified, and skips it the second time', async () => {
      assert.equal(await client.headBlob(repo, blobDigest), undefined)
      const pushed = await client.pushBlob(repo, blobDigest, blob.length, () => Readable.from([blob.subarray(0, 1000), blob.subarray(1000)]))
      assert.deepEqual(pushed, { digest: blobDigest, size: blob.length, pushed: true })
      assert.equal(await client.headBlob(repo, blobDigest), blob.length)
      assert.equal(await client.blobExists(repo, blobDigest), true)
      const stream = await client.getBlob(repo, blobDigest)
      assert.equal(stream.size, blob.length)
      assert.ok((await collect(stream)).equals(blob))
      const again = await client.pushBlob(repo, blobDigest, blob.length, () => { throw new Error('source must not be read') })
      assert.equal(again.pushed, false)
      assert.ok(client.counters.downloaded(reg.host) >= blob.length)
      assert.ok(client.counters.uploaded(reg.host) >= blob.length)
    })

    it('pushes a blob in chunks from a file', async () => {
      const data = randomBytes(700_001)
      const file = join(scratch, 'chunked.bin')
      await writeFile(file, data)
      const r = await client.pushBlob(`${reg.host}/conformance/chunked`, sha256(data), data.length, file, { chunked: true, chunkSize: 256 << 10 })
      assert.equal(r.pushed, true)
      const back = await collect(await client.getBlob(`${reg.host}/conformance/chunked`, sha256(data)))
      assert.ok(back.equals(data))
    })

    it('reads byte ranges (206 with a matching Content-Range)', async () => {
      const mid = await client.fetchBlobRange(repo, blobDigest, 4096, 4096 + 65535)
      assert.ok(mid.equals(blob.subarray(4096, 4096 + 65536)))
      const first = await client.fetchBlobRange(repo, blobDigest, 0, 0)
      assert.ok(first.equals(blob.subarray(0, 1)))
      const last = await client.fetchBlobRange(repo, blobDigest, blob.length - 10, blob.length - 1)
      assert.ok(last.equals(blob.subarray(blob.length - 10)))
    })

    it('mounts a blob from another repository (201), and reports 202 for a blob the source lacks', async () => {
      const target = `${reg.host}/conformance/mounted`
      assert.equal(await client.mountBlob(target, blobDigest, 'conformance/app'), true)
      assert.equal(await client.headBlob(target, blobDigest), blob.length)
      const absent = sha256(Buffer.from('never pushed'))
      assert.equal(await client.mountBlob(target, absent, 'conformance/app'), false)
      assert.equal(await client.headBlob(target, absent), undefined)
    })

    for (const kind of ['oci', 'docker'] as const) {
      it(`puts a ${kind} manifest and gets it back by tag and by digest`, async () => {
        const config = configOf('linux', 'amd64')
        await client.pushBlob(repo, sha256(config), config.length, () => Readable.from([config]))
        const image = imageOf(kind, config, [blob])
        const digest = await client.putManifest(`${repo}:${kind}`, image.mediaType, image.bytes)
        assert.equal(digest, sha256(image.bytes))
        const byTag = await client.getManifest(`${repo}:${kind}`)
        assert.equal(byTag.mediaType, image.mediaType)
        assert.equal(byTag.digest, digest)
        assert.ok(byTag.bytes.equals(image.bytes))
        assert.ok(!isIndex(byTag.json) && byTag.json.layers[0]!.digest === blobDigest)
        const byDigest = await client.getManifest(`${repo}@${digest}`)
        assert.ok(byDigest.bytes.equals(image.bytes))
        assert.deepEqual(await client.headManifest(`${repo}:${kind}`), { digest, mediaType: image.mediaType, size: image.bytes.length })
        // a platform asked of a single-platform image changes nothing
        assert.equal((await client.getManifest(`${repo}:${kind}`, { platform: 'linux/amd64' })).digest, digest)
      })
    }

    it('selects a platform from an index', async () => {
      const entries = []
      for (const [os, arch, variant] of [['linux', 'amd64'], ['linux', 'arm64', 'v8']] as const) {
        const config = configOf(os, arch, variant)
        await client.pushBlob(repo, sha256(config), config.length, () => Readable.from([config]))
        const image = imageOf('oci', config, [blob])
        const digest = await client.putManifest(`${repo}@${sha256(image.bytes)}`, image.mediaType, image.bytes)
        entries.push({ mediaType: image.mediaType, digest, size: image.bytes.length, platform: { os, architecture: arch, ...(variant !== undefined ? { variant } : {}) } })
      }
      const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.OciIndex, manifests: entries }))
      const indexDigest = await client.putManifest(`${repo}:multi`, MediaTypes.OciIndex, index)
      const raw = await client.getManifest(`${repo}:multi`)
      assert.equal(raw.mediaType, MediaTypes.OciIndex)
      assert.ok(isIndex(raw.json) && raw.json.manifests.length === 2)
      const arm = await client.getManifest(`${repo}:multi`, { platform: 'linux/arm64' })
      assert.equal(arm.digest, entries[1]!.digest)
      assert.deepEqual(arm.index, { digest: indexDigest, mediaType: MediaTypes.OciIndex })
      const amd = await client.getManifest(`${repo}:multi`, { platform: 'linux/amd64' })
      assert.equal(amd.digest, entries[0]!.digest)
      await assert.rejects(client.getManifest(`${repo}:multi`, { platform: 'linux/s390x' }),
        (e: Error & { code?: string }) => e.code === 'RAFSPEER_ERR_REGISTRY_NOT_FOUND' && /linux\/s390x/.test(e.message) && /linux\/arm64\/v8/.test(e.message))
    })

    it('a missing blob or manifest is NOT_FOUND, naming the registry, repository and digest or tag', async () => {
      const absent = sha256(Buffer.from('absent'))
      await assert.rejects(client.getBlob(repo, absent), (e: Error & { code?: string }) =>
        e.code === 'RAFSPEER_ERR_REGISTRY_NOT_FOUND' && e.message.includes(reg.host) && e.message.includes('conformance/app') && e.message.includes(absent))
      await assert.rejects(client.fetchBlobRange(repo, absent, 0, 9), { code: 'RAFSPEER_ERR_REGISTRY_NOT_FOUND' })
      await assert.rejects(client.getManifest(`${repo}:no-such-tag`), (e: Error & { code?: string }) =>
        e.code === 'RAFSPEER_ERR_REGISTRY_NOT_FOUND' && e.message.includes('no-such-tag') && e.message.includes('conformance/app'))
      assert.equal(await client.headManifest(`${repo}:no-such-tag`), undefined)
    })

    it('without credentials: AUTH error; with them from DOCKER_CONFIG: success', async (t) => {
      if (reg.auth === undefined) { t.skip('registry without auth'); return }
      const anonymous = new RegistryClient({ dockerConfig: join(scratch, 'none.json'), retryBaseMs: 10 })
      await assert.rejects(anonymous.headBlob(repo, blobDigest), (e: Error & { code?: string }) =>
        e.code === 'RAFSPEER_ERR_REGISTRY_AUTH' && e.message.includes(reg.host) && e.message.includes('conformance/app'))
      const wrong = new RegistryClient({ dockerConfig: join(scratch, 'none.json'), credentials: { [reg.host]: { username: reg.auth.username, password: 'wrong' } } })
      await assert.rejects(wrong.getManifest(`${repo}:oci`), { code: 'RAFSPEER_ERR_REGISTRY_AUTH' })

      const dir = join(scratch, 'docker')
      await rm(dir, { recursive: true, force: true })
      await mkdir(dir)
      const auth = Buffer.from(`${reg.auth.username}:${reg.auth.password}`).toString('base64')
      await writeFile(join(dir, 'config.json'), JSON.stringify({ auths: { [`http://${reg.host}`]: { auth } } }))
      const saved = process.env.DOCKER_CONFIG
      process.env.DOCKER_CONFIG = dir
      try {
        const fromConfig = new RegistryClient({ retryBaseMs: 10 })
        assert.equal(await fromConfig.headBlob(repo, blobDigest), blob.length)
        assert.ok((await fromConfig.fetchBlobRange(repo, blobDigest, 10, 19)).equals(blob.subarray(10, 20)))
      } finally {
        if (saved === undefined) delete process.env.DOCKER_CONFIG
        else process.env.DOCKER_CONFIG = saved
      }
    })

    it('a bearer token is fetched once per scope and reused', async (t) => {
      if (reg.auth?.scheme !== 'bearer') { t.skip('registry without bearer tokens'); return }
      const c = new RegistryClient({ dockerConfig: join(scratch, 'none.json'), credentials: { [reg.host]: { username: reg.auth.username, password: reg.auth.password } } })
      for (let i = 0; i < 5; i++) assert.equal(await c.headBlob(repo, blobDigest), blob.length)
      await c.fetchBlobRange(repo, blobDigest, 0, 99)
      assert.equal(c.tokenRequests, 1)
    })
  })
}

const distributionSkip = distributionSkipReason()
const basic = { username: 'rafspeer', password: 's3cret-passw0rd' }

registryConformance('distribution registry, anonymous', async () => await startDistribution(), distributionSkip)
registryConformance('distribution registry, htpasswd Basic', async () => {
  const d = await startDistribution({ htpasswd: { user: basic.username, password: basic.password } })
  return { host: d.host, stop: d.stop, auth: { ...basic, scheme: 'basic' } }
}, distributionSkip)

async function embedded (auth?: 'basic' | 'bearer'): Promise<Started> {
  const root = await mkdtemp(join(tmpdir(), 'rafspeer-embedded-'))
  const creds = { user: basic.username, password: basic.password }
  try {
    const srv = await startRegistryServer({ root, ...(auth !== undefined ? { auth: { [auth]: creds } } : {}) })
    return {
      host: srv.host,
      stop: async () => { await srv.stop(); await rm(root, { recursive: true, force: true }) },
      ...(auth !== undefined ? { auth: { ...basic, scheme: auth } } : {})
    }
  } catch (e) {
    await rm(root, { recursive: true, force: true })
    throw e
  }
}

registryConformance('embedded registry, anonymous', async () => await embedded())
registryConformance('embedded registry, Basic', async () => await embedded('basic'))
registryConformance('embedded registry, Bearer (own token issuer)', async () => await embedded('bearer'))
