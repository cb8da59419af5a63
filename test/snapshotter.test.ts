/**
 * The containerd remote snapshotter end to end: a real `rafspeer daemon` serving the snapshotter, a real containerd
 * 1.6 with its CRI plugin using it (`[proxy_plugins.rafspeer]`, snapshot labels on), real runc, the CNCF
 * distribution registry behind a counting proxy. Images are pulled with `rafspeer rpull` (CRI PullImage) and run
 * with `ctr run --snapshotter rafspeer`.
 *
 * Pinned here: a converted image's container starts and reads the right bytes while the registry has sent a small
 * fraction of the image; its OCI original through the overlayfs snapshotter prints the same; an ordinary OCI image
 * runs through the same snapshotter; two containers of one image share one mount, removed with the last of them;
 * a corrupt bootstrap layer and a registry gone at start give clear errors, and containerd and the snapshotter keep
 * serving.
 */
import '../polyfill.js'
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { gzipSync } from 'node:zlib'
import { RegistryClient } from '../registry/index.js'
import { writeHostsToml } from '../proxy/index.js'
import { containerRunSkipReason, startContainerd, type Containerd } from './helpers/containerd.js'
import { runCli } from './helpers/cli.js'
import { startDaemon, type TestDaemon } from './helpers/daemon.js'
import { distributionSkipReason, startDistribution, type Distribution } from './helpers/distribution.js'
import { buildLayeredImage, pushLayeredImage, type LayeredImage } from './helpers/layered-image.js'
import { startRegistryProxy, type RegistryProxy } from './helpers/registry-proxy.js'

const MiB = 1 << 20

/** A one-file ustar archive. */
function tarOf (name: string, body: Buffer): Buffer {
  const h = Buffer.alloc(512)
  h.write(name, 0); h.write('0000644\0', 100); h.write('0000000\0', 108); h.write('0000000\0', 116)
  h.write(body.length.toString(8).padStart(11, '0') + '\0', 124); h.write('00000000000\0', 136)
  h.write('        ', 148); h.write('0', 156); h.write('ustar\0', 257); h.write('00', 263)
  let sum = 0
  for (const b of h) sum += b
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148)
  const pad = Buffer.alloc((512 - body.length % 512) % 512)
  return Buffer.concat([h, body, pad, Buffer.alloc(1024)])
}
const NS = 'k8s.io'
const skip = containerRunSkipReason() ?? distributionSkipReason() ??
  (existsSync('/usr/bin/skopeo') ? undefined : '/usr/bin/skopeo missing (apt-get install skopeo)')

let dir: string
let reg: Distribution
let upstream: RegistryProxy
let daemon: TestDaemon
let containerd: Containerd
let img: LayeredImage
let snapRoot: string
const READ = ['/bin/busybox', 'sha256sum', '/data/layer-0/file-0.bin']

interface SnapshotterInfo { address: string, root: string, images: Array<{ manifestDigest: string, mountpoint: string, holders: string[], mounted: boolean }> }
const snapInfo = async (): Promise<SnapshotterInfo> => (await daemon.client.daemon() as unknown as { snapshotter: SnapshotterInfo }).snapshotter

async function rpull (ref: string): Promise<void> {
  const r = await runCli(['rpull', ref, '--address', containerd.address, '--timeout', '120'], { timeoutMs: 150_000 })
  assert.equal(r.code, 0, `rpull ${ref}: ${r.stderr}\n--- containerd ---\n${containerd.logs().slice(-3000)}\n--- daemon ---\n${daemon.log().slice(-3000)}`)
}

async function runIn (ref: string, id: string, cmd: string[], snapshotter = 'rafspeer'): Promise<string> {
  const r = await containerd.run(ref, id, cmd, { snapshotter, namespace: NS, timeoutMs: 120_000 })
  assert.equal(r.code, 0, `ctr run ${ref} (${snapshotter}): ${r.stderr}\n--- daemon ---\n${daemon.log().slice(-4000)}`)
  return r.stdout
}

/** containerd removes a deleted container's snapshot from the snapshotter in its garbage collection, a moment later */
async function noImagesMounted (): Promise<void> {
  let info: SnapshotterInfo | undefined
  for (let i = 0; i < 300; i++) {
    info = await snapInfo()
    if (info.images.length === 0) break
    // containerd may have dropped the deletion from its collector's books (see nudgeGc)
    if (i % 20 === 19) await containerd.nudgeGc(NS)
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  const log = (): string => `\n--- daemon ---\n${daemon.log().slice(-6000)}\n--- containerd ---\n${containerd.logs().slice(-3000)}`
  assert.deepEqual(info!.images, [], JSON.stringify(info!.images) + log())
  assert.deepEqual(await rafsMounts(), [], log())
}

const rafsMounts = async (): Promise<string[]> =>
  (await readFile('/proc/self/mounts', 'utf8')).split('\n').map(l => l.split(' ')[1] ?? '').filter(m => m.startsWith(snapRoot))

before(async () => {
  if (skip !== undefined) return
  dir = await mkdtemp(join(tmpdir(), 'rafspeer-snap-'))
  reg = await startDistribution()
  upstream = await startRegistryProxy(reg.host)
  img = await buildLayeredImage(join(dir, 'img'), { layers: [2 * MiB, 24 * MiB, 24 * MiB], seed: 'snapshotter', gzipLevel: 0 })
  await pushLayeredImage(img, `${reg.host}/kit/app:oci`)
  const conv = await runCli(['convert', `${reg.host}/kit/app:oci`, `${reg.host}/kit/app:nydus`], { timeoutMs: 120_000 })
  assert.equal(conv.code, 0, conv.stderr)
  const home = join(dir, 'node')
  await mkdir(home, { recursive: true })
  const address = join(dir, 'snap.sock')
  snapRoot = join(home, 'work', 'snapshotter')
  daemon = await startDaemon(home, { snapshotter: { address, idleUnmountMs: 0 }, fetch: { retries: 1 }, log: { level: 'debug', format: 'text' } })
  const hostsDir = join(dir, 'certs.d')
  await writeHostsToml({ hostsDir, mirror: `http://${upstream.host}`, registries: [upstream.host, reg.host] })
  containerd = await startContainerd({ dir, namespace: NS, cri: { snapshotter: 'rafspeer', configPath: hostsDir }, proxyPlugins: { rafspeer: address } })
})

after(async () => {
  await containerd?.stop().catch(() => {})
  if (daemon !== undefined) {
    const code = await daemon.stop()
    if (code !== 0) process.stderr.write(daemon.log())
  }
  await upstream?.close()
  await reg?.stop()
  if (dir !== undefined) await rm(dir, { recursive: true, force: true })
})

let lazyOutput = ''

test('a converted image starts from a lazy mount: containerd downloads no layer, the registry sends a small part of it', { skip, timeout: 300_000 }, async () => {
  const ref = `${upstream.host}/kit/app:nydus`
  upstream.reset()
  await rpull(ref)
  assert.equal(upstream.blobBytes < 64 * 1024, true, `the pull alone fetched ${upstream.blobBytes} blob bytes (manifest and config only expected)`)
  const out = await runIn(ref, 'lazy-1', READ)
  lazyOutput = out.trim()
  assert.match(lazyOutput, /^[0-9a-f]{64} {2}\/data\/layer-0\/file-0\.bin$/)
  const imageBytes = img.layerSizes.reduce((a, b) => a + b, 0)
  const ratio = upstream.blobBytes / imageBytes
  assert.ok(ratio < 0.35, `the registry sent ${upstream.blobBytes} blob bytes for an image of ${imageBytes} (${ratio.toFixed(3)})`)
  // the container is gone (--rm): so is its image mount
  await noImagesMounted()
})

test('the OCI original through the overlayfs snapshotter prints the same', { skip, timeout: 300_000 }, async () => {
  assert.notEqual(lazyOutput, '', 'needs the lazy run first')
  const ref = `${reg.host}/kit/app:oci`
  const pulled = await containerd.pull(ref, { plainHttp: true, timeoutMs: 120_000 })
  assert.equal(pulled.code, 0, pulled.stderr)
  assert.equal((await runIn(ref, 'oci-1', READ, 'overlayfs')).trim(), lazyOutput)
  // the ordinary OCI image through the rafspeer snapshotter too: containerd unpacks it into our overlays
  await rpull(`${upstream.host}/kit/app:oci`)
  assert.equal((await runIn(`${upstream.host}/kit/app:oci`, 'oci-2', READ)).trim(), lazyOutput)
})

test('two containers of one image share one mount; the last one removed unmounts it', { skip, timeout: 300_000 }, async () => {
  const ref = `${upstream.host}/kit/app:nydus`
  await rpull(ref)
  const cmd = ['/bin/busybox', 'sh', '-c', 'cat /data/layer-1/file-0.bin > /dev/null && sleep 4 && echo done']
  const runs = [runIn(ref, 'share-1', cmd), runIn(ref, 'share-2', cmd)]
  let seen: SnapshotterInfo['images'] = []
  for (let i = 0; i < 60; i++) {
    seen = (await snapInfo()).images
    if (seen.length === 1 && seen[0]!.holders.length === 2 && seen[0]!.mounted) break
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  assert.equal(seen.length, 1, JSON.stringify(seen))
  assert.equal(seen[0]!.holders.length, 2, JSON.stringify(seen))
  assert.deepEqual(await rafsMounts(), [seen[0]!.mountpoint])
  for (const out of await Promise.all(runs)) assert.equal(out.trim(), 'done')
  await noImagesMounted()
})

test('a corrupt bootstrap layer and a registry gone at start: clear errors, containerd and the snapshotter keep serving', { skip, timeout: 300_000 }, async () => {
  // the converted image with its bootstrap layer replaced (and the config naming that layer): a well-formed layer
  // whose bootstrap is garbage, and a layer that is not a tar at all (its start once hung)
  const client = new RegistryClient({ plainHttp: true })
  const { json: manifest } = await client.getManifest(`${reg.host}/kit/app:nydus`)
  const base = manifest as { config: { digest: string, size: number }, layers: Array<{ digest: string, size: number, annotations?: Record<string, string> }> }
  const baseConfig = (await client.fetchBlobRange({ registry: reg.host, repository: 'kit/app' }, base.config.digest, 0, base.config.size - 1)).toString()
  const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`
  const boot = base.layers.findIndex(l => l.annotations?.['containerd.io/snapshot/nydus-bootstrap'] === 'true')
  assert.ok(boot >= 0)
  const variants: Array<[string, Buffer]> = [['corrupt', tarOf('image/image.boot', randomBytes(8192))], ['nottar', randomBytes(2 << 20)]]
  for (const [tag, garbage] of variants) {
    const m = structuredClone(base)
    const config = JSON.parse(baseConfig) as { rootfs: { diff_ids: string[] } }
    const layer = gzipSync(garbage)
    m.layers[boot] = { ...m.layers[boot]!, digest: sha(layer), size: layer.length }
    config.rootfs.diff_ids[boot] = sha(garbage)
    const configBytes = Buffer.from(JSON.stringify(config))
    m.config = { ...m.config, digest: sha(configBytes), size: configBytes.length }
    for (const b of [layer, configBytes]) await client.pushBlob(`${reg.host}/kit/app`, sha(b), b.length, () => (async function * () { yield b })())
    await client.putManifest(`${reg.host}/kit/app:${tag}`, 'application/vnd.oci.image.manifest.v1+json', Buffer.from(JSON.stringify(m)))
  }
  await client.close()

  for (const [tag] of variants) {
    const ref = `${upstream.host}/kit/app:${tag}`
    await rpull(ref)
    const bad = await containerd.run(ref, `${tag}-1`, READ, { snapshotter: 'rafspeer', namespace: NS, timeoutMs: 120_000 })
    assert.notEqual(bad.code, 0, tag)
    assert.match(bad.stderr, /RAFSPEER_ERR|bootstrap|mount/i, `${tag}: ${bad.stderr}`)
  }

  // a registry gone between the pull and the start
  const other = await buildLayeredImage(join(dir, 'img2'), { layers: [1 * MiB, 2 * MiB], seed: 'snapshotter-2', gzipLevel: 0 })
  await pushLayeredImage(other, `${reg.host}/kit/other:oci`)
  const conv = await runCli(['convert', `${reg.host}/kit/other:oci`, `${reg.host}/kit/other:nydus`], { timeoutMs: 120_000 })
  assert.equal(conv.code, 0, conv.stderr)
  await rpull(`${upstream.host}/kit/other:nydus`)
  upstream.mode = 'down'
  try {
    const t0 = Date.now()
    const gone = await containerd.run(`${upstream.host}/kit/other:nydus`, 'gone-1', READ, { snapshotter: 'rafspeer', namespace: NS, timeoutMs: 120_000 })
    assert.notEqual(gone.code, 0)
    assert.ok(Date.now() - t0 < 100_000, 'the failed start took too long')
    assert.match(gone.stderr, /RAFSPEER_ERR|registry|503/i, gone.stderr)
  } finally {
    upstream.mode = 'pass'
  }
  // both still serve
  assert.equal((await runIn(`${upstream.host}/kit/app:nydus`, 'after-1', READ)).trim(), lazyOutput)
  assert.equal(daemon.proc.exitCode, null)
  await noImagesMounted()
})
