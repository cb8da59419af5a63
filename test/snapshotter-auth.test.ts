/**
 * Registry credentials of a CRI pull serve the lazy reads of its image: a private image in the CNCF distribution
 * registry (htpasswd), a `rafspeer daemon` with the snapshotter and its CRI image service (which forwards to a real
 * containerd 1.6) and no credentials of its own (an empty Docker config), real runc.
 *
 * Pinned here: `rafspeer rpull --user` through the image service → the container reads the right bytes, fetched
 * lazily with the pull's credentials; the same kind of pull straight to containerd (the snapshotter never sees the
 * credentials) → the start fails with a clear authentication error; the image service passes other calls through.
 */
import '../polyfill.js'
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { writeHostsToml } from '../proxy/index.js'
import { CriImageClient } from '../cri/index.js'
import { containerRunSkipReason, startContainerd, type Containerd } from './helpers/containerd.js'
import { runCli } from './helpers/cli.js'
import { startDaemon, type TestDaemon } from './helpers/daemon.js'
import { distributionSkipReason, startDistribution, type Distribution } from './helpers/distribution.js'
import { buildLayeredImage, pushLayeredImage } from './helpers/layered-image.js'

const MiB = 1 << 20
const NS = 'k8s.io'
const USER = 'puller'
const PASSWORD = 's3cret-pull'
const skip = containerRunSkipReason() ?? distributionSkipReason() ??
  (existsSync('/usr/bin/skopeo') ? undefined : '/usr/bin/skopeo missing (apt-get install skopeo)') ??
  (existsSync('/usr/bin/htpasswd') ? undefined : 'htpasswd missing (apt-get install apache2-utils)')

let dir: string
let reg: Distribution
let daemon: TestDaemon
let containerd: Containerd
let imageService: string
const savedDockerConfig = process.env.DOCKER_CONFIG
const READ = ['/bin/busybox', 'sha256sum', '/data/layer-1/file-0.bin']

before(async () => {
  if (skip !== undefined) return
  dir = await mkdtemp(join(tmpdir(), 'rafspeer-snapauth-'))
  reg = await startDistribution({ htpasswd: { user: USER, password: PASSWORD } })
  const img = await buildLayeredImage(join(dir, 'img'), { layers: [1 * MiB, 4 * MiB], seed: 'snapshotter-auth', gzipLevel: 0 })
  await pushLayeredImage(img, `${reg.host}/private/app:oci`, { creds: `${USER}:${PASSWORD}` })
  // another image (other bytes: nothing of it can come from the daemon's cache)
  const img2 = await buildLayeredImage(join(dir, 'img2'), { layers: [1 * MiB, 4 * MiB], seed: 'snapshotter-auth-2', gzipLevel: 0 })
  await pushLayeredImage(img2, `${reg.host}/private/other:oci`, { creds: `${USER}:${PASSWORD}` })
  // `rafspeer convert` reads the credentials from a Docker config; the daemon gets an empty one
  const withAuth = join(dir, 'docker-auth')
  const empty = join(dir, 'docker-empty')
  await mkdir(withAuth, { recursive: true })
  await mkdir(empty, { recursive: true })
  const auth = Buffer.from(`${USER}:${PASSWORD}`).toString('base64')
  await writeFile(join(withAuth, 'config.json'), JSON.stringify({ auths: { [reg.host]: { auth } } }))
  process.env.DOCKER_CONFIG = withAuth
  try {
    for (const repo of ['app', 'other']) {
      const conv = await runCli(['convert', `${reg.host}/private/${repo}:oci`, `${reg.host}/private/${repo}:nydus`], { timeoutMs: 120_000 })
      assert.equal(conv.code, 0, conv.stderr)
    }
  } finally {
    process.env.DOCKER_CONFIG = empty
  }
  const home = join(dir, 'node')
  await mkdir(home, { recursive: true })
  imageService = join(dir, 'image.sock')
  containerd = await startContainerd({ dir, namespace: NS, cri: { snapshotter: 'rafspeer', configPath: await hosts() }, proxyPlugins: { rafspeer: join(dir, 'snap.sock') } })
  daemon = await startDaemon(home, {
    snapshotter: { address: join(dir, 'snap.sock'), idleUnmountMs: 0, imageServiceAddress: imageService, containerdAddress: containerd.address },
    fetch: { retries: 1 },
    log: { level: 'debug', format: 'text' }
  })
  // containerd came first (the daemon needs its socket): it dials the snapshotter again after its backoff
  await containerd.waitForSnapshotter('rafspeer', { namespace: NS })
})

/** hosts.toml: the registry over plain HTTP */
async function hosts (): Promise<string> {
  const hostsDir = join(dir, 'certs.d')
  await writeHostsToml({ hostsDir, mirror: `http://${reg.host}`, registries: [reg.host] })
  return hostsDir
}

after(async () => {
  await containerd?.stop().catch(() => {})
  if (daemon !== undefined) {
    const code = await daemon.stop()
    if (code !== 0) process.stderr.write(daemon.log())
  }
  await reg?.stop()
  if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  if (savedDockerConfig === undefined) delete process.env.DOCKER_CONFIG
  else process.env.DOCKER_CONFIG = savedDockerConfig
})

test("a CRI pull's credentials serve the lazy reads of its image; without them the start fails clearly", { skip, timeout: 300_000 }, async () => {
  const ref = `${reg.host}/private/app:nydus`
  const pulled = await runCli(['rpull', ref, '--address', imageService, '--user', `${USER}:${PASSWORD}`, '--timeout', '120'], { timeoutMs: 150_000 })
  assert.equal(pulled.code, 0, `${pulled.stderr}\n${daemon.log().slice(-3000)}`)
  assert.match(daemon.log(), /credentials of the pull of .*private\/app:nydus kept for lazy reads of .*private\/app/)
  const oci = await containerd.pull(`${reg.host}/private/app:oci`, { plainHttp: true, user: `${USER}:${PASSWORD}`, timeoutMs: 120_000 })
  assert.equal(oci.code, 0, oci.stderr)
  const expected = await containerd.run(`${reg.host}/private/app:oci`, 'oci-1', READ, { snapshotter: 'overlayfs', namespace: NS, timeoutMs: 120_000 })
  assert.equal(expected.code, 0, expected.stderr)

  const lazy = await containerd.run(ref, 'lazy-1', READ, { snapshotter: 'rafspeer', namespace: NS, timeoutMs: 120_000 })
  assert.equal(lazy.code, 0, `${lazy.stderr}\n--- daemon ---\n${daemon.log().slice(-4000)}`)
  assert.equal(lazy.stdout.trim(), expected.stdout.trim())

  // the other calls of the image service pass through to containerd
  const cri = new CriImageClient({ address: imageService })
  try {
    assert.ok((await cri.list()).some(i => i.repoTags.includes(ref)))
    assert.equal((await cri.status(ref))?.repoTags.includes(ref), true)
  } finally {
    cri.close()
  }

  // pulled straight from containerd: containerd has the credentials, the snapshotter does not
  const other = `${reg.host}/private/other:nydus`
  const direct = await runCli(['rpull', other, '--address', containerd.address, '--user', `${USER}:${PASSWORD}`, '--timeout', '120'], { timeoutMs: 150_000 })
  assert.equal(direct.code, 0, direct.stderr)
  const denied = await containerd.run(other, 'denied-1', READ, { snapshotter: 'rafspeer', namespace: NS, timeoutMs: 120_000 })
  assert.notEqual(denied.code, 0)
  assert.match(denied.stderr, /RAFSPEER_ERR_REGISTRY_AUTH: authentication required but no credentials/, denied.stderr)
  assert.equal(daemon.proc.exitCode, null)
})
