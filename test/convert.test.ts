/**
 * `rafspeer convert` and `check --image` end to end, against the real CNCF distribution registry and the embedded
 * one: a four-layer source image built with umoci (whiteouts, an opaque dir, hard links, symlinks, xattrs) and
 * pushed with skopeo is converted; the converted image, unpacked by our CLI from what the registry holds, must
 * equal `umoci unpack` of the source; check --image must pass with zero differences; skopeo must see the §17 layout;
 * a second convert pushes nothing; a source layer with wrong bytes fails naming its digest and pushes no manifest.
 */
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PassThrough } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { after, before, describe, it } from 'node:test'
import { gzipSync } from 'node:zlib'
import { checkRemoteImage, convertImage } from '../convert/index.js'
import { extractBootstrap, NydusAnnotations, NydusMediaTypes } from '../image/index.js'
import { RegistryClient, isIndex, type ImageManifest } from '../registry/index.js'
import { startRegistryServer } from '../registry/server.js'
import { TarWriter } from '../rafs/tar-writer.js'
import { runCli } from './helpers/cli.js'
import { distributionSkipReason, startDistribution } from './helpers/distribution.js'
import { buildSourceImage, ociToolsSkipReason, pushOciImage, skopeoInspectRaw, umociUnpack, type OciImage } from './helpers/oci-image.js'
import { diffTrees, snapshotTree } from './helpers/tree.js'

const skip = ociToolsSkipReason()
let work: string
let image: OciImage
let reference: string

before(async () => {
  if (skip !== undefined) return
  work = await mkdtemp(join(tmpdir(), 'rafspeer-convert-test-'))
  image = await buildSourceImage(join(work, 'source'))
  reference = await umociUnpack(image, join(work, 'reference'))
})
after(async () => { if (work !== undefined) await rm(work, { recursive: true, force: true }) })

/** Downloads the converted image (bootstrap + blobs) the way a node would, and unpacks it with our CLI. */
async function unpackConverted (client: RegistryClient, ref: string, repo: string, dir: string): Promise<string> {
  const m = await client.getManifest(ref)
  assert.ok(!isIndex(m.json))
  const blobs = join(dir, 'blobs')
  await mkdir(blobs, { recursive: true })
  const boot = m.json.layers.at(-1)!
  await extractBootstrap(await client.getBlob(repo, boot.digest), join(dir, 'image.boot'), { gzip: true })
  for (const l of m.json.layers.slice(0, -1)) {
    await pipeline(await client.getBlob(repo, l.digest), createWriteStream(join(blobs, l.digest.slice('sha256:'.length))))
  }
  const out = join(dir, 'rootfs')
  const res = await runCli(['unpack', join(dir, 'image.boot'), '-o', out, '-D', blobs])
  assert.equal(res.code, 0, res.stderr)
  return out
}

/** A registry that serves a valid manifest and config but wrong bytes (same length) for the layer. */
async function hostileRegistry (): Promise<{ host: string, layerDigest: string, close: () => Promise<void> }> {
  const tarOut = new PassThrough()
  const parts: Buffer[] = []
  tarOut.on('data', (b: Buffer) => parts.push(b))
  const w = new TarWriter(tarOut)
  const data = Buffer.from('the real content of the layer\n'.repeat(1000))
  await w.entry({ path: Buffer.from('file'), type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: 1, size: data.length })
  await w.writeData(data)
  await w.pad(data.length)
  await w.finish()
  const layer = gzipSync(Buffer.concat(parts))
  const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [sha(Buffer.concat(parts))] } }))
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: sha(layer), size: layer.length }]
  }))
  const wrong = Buffer.from(layer)
  for (let i = 100; i < wrong.length; i += 7) wrong[i] = wrong[i]! ^ 0xff
  const server: Server = createServer((req, res) => {
    const url = req.url ?? ''
    const send = (status: number, body: Buffer, type = 'application/octet-stream'): void => {
      res.writeHead(status, { 'content-type': type, 'content-length': body.length })
      res.end(req.method === 'HEAD' ? undefined : body)
    }
    if (url === '/v2/') send(200, Buffer.from('{}'), 'application/json')
    else if (url.startsWith('/v2/bad/src/manifests/')) send(200, manifest, 'application/vnd.oci.image.manifest.v1+json')
    else if (url === `/v2/bad/src/blobs/${sha(config)}`) send(200, config)
    else if (url === `/v2/bad/src/blobs/${sha(layer)}`) send(200, wrong)
    else send(404, Buffer.from('{"errors":[{"code":"NOT_FOUND"}]}'), 'application/json')
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    host: `127.0.0.1:${port}`,
    layerDigest: sha(layer),
    close: async () => { server.closeAllConnections(); await new Promise<void>(resolve => server.close(() => resolve())) }
  }
}

function suite (name: string, start: () => Promise<{ host: string, stop: () => Promise<void> }>, skipReason: string | undefined): void {
  describe(name, { skip: skip ?? skipReason ?? false }, () => {
    let reg: { host: string, stop: () => Promise<void> }
    let client: RegistryClient
    let src: string
    let dst: string
    let first: { targetDigest: string, layers: Array<{ blobId?: string }> }

    before(async () => {
      reg = await start()
      client = new RegistryClient({ plainHttp: true })
      src = `${reg.host}/demo/src:1`
      dst = `${reg.host}/demo/rafs:1`
      await pushOciImage(image, src)
    })
    after(async () => {
      await client?.close()
      await reg?.stop()
    })

    it('converts with the CLI: one blob per layer with file data, none for the data-less layer', async () => {
      const res = await runCli(['convert', src, dst, '--json'])
      assert.equal(res.code, 0, res.stderr)
      const report = JSON.parse(res.stdout) as { targetDigest: string, layers: Array<{ blobId?: string, skippedPush: boolean }>, bootstrap: { diffId: string } }
      assert.equal(report.layers.length, 4)
      assert.ok(report.layers.slice(0, 3).every(l => l.blobId !== undefined && !l.skippedPush), res.stdout)
      assert.equal(report.layers[3]!.blobId, undefined, 'layer 4 has no file data')
      first = report
    })

    it('(a) equals `umoci unpack` of the source, unpacked by `rafspeer unpack` from what the registry holds', async () => {
      const dir = await mkdtemp(join(work, `unpack-${name.replace(/\W+/g, '-')}-`))
      const rootfs = await unpackConverted(client, dst, `${reg.host}/demo/rafs`, dir)
      const want = await snapshotTree(reference)
      const got = await snapshotTree(rootfs)
      // Nothing is ignored: every field of every entry (the root's mtime, dir mtimes, owners, modes, xattrs incl.
      // trusted.*, hard-link groups, fifo, content) must match; the raw layers carry an explicit root entry, so even
      // the root's mtime is defined by the image.
      assert.deepEqual(diffTrees(want, got), [])
      assert.ok(want.size >= 25, `the reference has ${want.size} entries`)
    })

    it('(b) check --image passes and finds no difference from the source, file by file', async () => {
      const report = await checkRemoteImage(dst, { source: src, client })
      assert.deepEqual(report.errors, [])
      assert.equal(report.ok, true)
      assert.equal(report.blobs.length, 3)
      assert.ok(report.blobs.every(b => b.inManifest && b.tailOk && b.chunksVerified === b.chunkCount))
      assert.deepEqual(report.compared?.differences, [])
      assert.ok((report.compared?.entries ?? 0) >= 25)
      const cli = await runCli(['check', '--image', dst, '--source', src])
      assert.equal(cli.code, 0, cli.stdout + cli.stderr)
      assert.match(cli.stdout, /OK: /)
    })

    it('(c) skopeo sees the §17 layout', async () => {
      const m = await skopeoInspectRaw(dst) as ImageManifest
      assert.equal(m.mediaType, NydusMediaTypes.manifest)
      assert.equal(m.config.mediaType, NydusMediaTypes.config)
      assert.equal(m.layers.length, 4)
      m.layers.slice(0, 3).forEach((l, i) => {
        assert.equal(l.mediaType, NydusMediaTypes.blob)
        assert.equal(l.digest, `sha256:${first.layers[i]!.blobId!}`)
        assert.deepEqual(l.annotations, { [NydusAnnotations.blob]: 'true' })
      })
      const boot = m.layers[3]!
      assert.equal(boot.mediaType, 'application/vnd.oci.image.layer.v1.tar+gzip')
      assert.deepEqual(boot.annotations, { [NydusAnnotations.bootstrap]: 'true', [NydusAnnotations.fsVersion]: '6' })
    })

    it('(d) converting again pushes no blob and yields the same manifest', async () => {
      const again = await convertImage(src, dst, { client })
      assert.equal(again.targetDigest, first.targetDigest)
      for (const l of again.layers.filter(x => x.blobId !== undefined)) assert.equal(l.skippedPush, true, l.sourceDigest)
      assert.equal(again.bootstrap.push, 'exists')
    })

    it('mounts blobs from the source repository when both live on one registry', async () => {
      // the source repository gets the converted blobs under another tag, so a second target can mount them
      await convertImage(src, `${reg.host}/demo/src:rafs`, { client })
      const r = await convertImage(src, `${reg.host}/other/rafs:1`, { client })
      for (const l of r.layers.filter(x => x.blobId !== undefined)) assert.equal(l.push, 'mounted', l.sourceDigest)
    })

    it('(e) a source layer with wrong bytes fails naming its digest, and no manifest reaches the target', async () => {
      const hostile = await hostileRegistry()
      try {
        const target = `${reg.host}/demo/never:1`
        await assert.rejects(convertImage(`${hostile.host}/bad/src:1`, target, { client }), (err: Error & { code?: string }) => {
          assert.equal(err.code, 'RAFSPEER_ERR_CONVERT_LAYER')
          assert.ok(err.message.includes(hostile.layerDigest), err.message)
          assert.match(err.message, /digest/i)
          return true
        })
        assert.equal(await client.headManifest(target), undefined)
      } finally {
        await hostile.close()
      }
    })
  })
}

suite('convert against the real distribution registry', async () => await startDistribution(), distributionSkipReason())
suite('convert against the embedded registry', async () => {
  const root = await mkdtemp(join(tmpdir(), 'rafspeer-embedded-'))
  const server = await startRegistryServer({ root })
  return { host: server.host, stop: async () => { await server.stop(); await rm(root, { recursive: true, force: true }) } }
}, undefined)

