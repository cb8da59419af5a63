/**
 * The CRI image client against two servers: a grpc-js stand-in serving the same trimmed proto (what the client puts
 * on the wire, every error mapping, deadlines and cancels, without root), and a real containerd 1.6 with its CRI
 * plugin on, pulling from rafspeer's embedded registry on loopback (pull → status → run → remove, a missing tag,
 * a private repository with and without credentials, a stopped containerd, a containerd without CRI).
 */
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as grpc from '@grpc/grpc-js'
import * as protoLoader from '@grpc/proto-loader'
import { writeHostsToml } from '../proxy/index.js'
import { startRegistryServer, type RegistryServer } from '../registry/index.js'
import { containerdSkipReason, startContainerd, CRI_NAMESPACE, type Containerd } from '../test/helpers/containerd.js'
import { buildLayeredImage, pushLayeredImage, type LayeredImage } from '../test/helpers/layered-image.js'
import { CriError, CriImageClient } from './index.js'

const PROTO_DIR = fileURLToPath(new URL('../../snapshotter/proto/', import.meta.url))

async function tempDir (t: { after: (fn: () => Promise<void>) => void }, prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  t.after(async () => { await rm(dir, { recursive: true, force: true }) })
  return dir
}

type Handlers = Partial<Record<'ListImages' | 'ImageStatus' | 'PullImage' | 'RemoveImage', grpc.handleUnaryCall<any, any>>>

/** A grpc server on a unix socket serving `handlers` as runtime.v1.ImageService (none: a server without CRI). */
async function fakeCri (t: { after: (fn: () => Promise<void>) => void }, handlers: Handlers | undefined): Promise<string> {
  const dir = await tempDir(t, 'rafspeer-cri-fake-')
  const socket = join(dir, 'cri.sock')
  const def = protoLoader.loadSync('cri/runtime/v1/api.proto', {
    includeDirs: [PROTO_DIR], keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true
  })
  const pkg = grpc.loadPackageDefinition(def) as unknown as { runtime: { v1: { ImageService: grpc.ServiceClientConstructor } } }
  const server = new grpc.Server()
  if (handlers !== undefined) {
    const unimplemented: grpc.handleUnaryCall<any, any> = (_call, cb) => cb({ code: grpc.status.UNIMPLEMENTED, details: 'not in this fake' })
    server.addService(pkg.runtime.v1.ImageService.service, {
      ListImages: handlers.ListImages ?? unimplemented,
      ImageStatus: handlers.ImageStatus ?? unimplemented,
      PullImage: handlers.PullImage ?? unimplemented,
      RemoveImage: handlers.RemoveImage ?? unimplemented
    })
  }
  await new Promise<void>((resolve, reject) => {
    server.bindAsync(`unix://${socket}`, grpc.ServerCredentials.createInsecure(), (err) => { err !== null ? reject(err) : resolve() })
  })
  t.after(async () => { server.forceShutdown() })
  return socket
}

function client (t: { after: (fn: () => Promise<void>) => void }, address: string, init: { timeoutMs?: number, pullTimeoutMs?: number } = {}): CriImageClient {
  const c = new CriImageClient({ address, ...init })
  t.after(async () => { c.close() })
  return c
}

const isCri = (code: string, match?: RegExp) => (err: unknown): boolean => {
  assert.ok(err instanceof CriError, `not a CriError: ${String(err)}`)
  assert.equal(err.code, code, err.message)
  if (match !== undefined) assert.match(err.message, match)
  return true
}

const IMAGE = {
  id: 'sha256:' + 'c'.repeat(64),
  repoTags: ['reg.example:5000/app:1'],
  repoDigests: ['reg.example:5000/app@sha256:' + 'd'.repeat(64)],
  size: 5_000_000_123
}

test('pull sends the image and each kind of credentials as CRI AuthConfig fields, and returns the image ref', async (t) => {
  const seen: any[] = []
  const socket = await fakeCri(t, {
    PullImage: (call, cb) => { seen.push(call.request); cb(null, { imageRef: IMAGE.id }) }
  })
  const cri = client(t, socket)
  assert.deepEqual(await cri.pull('reg.example:5000/app:1'), { imageRef: IMAGE.id })
  await cri.pull('a:1', { auth: { username: 'u', password: 'p' } })
  await cri.pull('a:2', { auth: { auth: Buffer.from('u:p').toString('base64') } })
  await cri.pull('a:3', { auth: { identityToken: 'id-tok', serverAddress: 'reg.example:5000' } })
  await cri.pull('a:4', { auth: { registryToken: 'reg-tok' } })
  assert.equal(seen[0].image.image, 'reg.example:5000/app:1')
  assert.equal(seen[0].auth, null, 'no credentials were given, none may be sent')
  const auths = seen.slice(1).map(r => r.auth)
  const empty = { username: '', password: '', auth: '', serverAddress: '', identityToken: '', registryToken: '' }
  assert.deepEqual(auths, [
    { ...empty, username: 'u', password: 'p' },
    { ...empty, auth: 'dTpw' },
    { ...empty, identityToken: 'id-tok', serverAddress: 'reg.example:5000' },
    { ...empty, registryToken: 'reg-tok' }
  ])
})

test('status, list and remove map CRI images; an absent image is undefined', async (t) => {
  const removed: string[] = []
  const socket = await fakeCri(t, {
    ImageStatus: (call, cb) => cb(null, call.request.image.image === 'there' ? { image: IMAGE } : {}),
    ListImages: (_call, cb) => cb(null, { images: [IMAGE, { ...IMAGE, id: 'sha256:' + 'e'.repeat(64), repoTags: [] }] }),
    RemoveImage: (call, cb) => { removed.push(call.request.image.image); cb(null, {}) }
  })
  const cri = client(t, socket)
  assert.deepEqual(await cri.status('there'), IMAGE)
  assert.equal(await cri.status('absent'), undefined)
  const list = await cri.list()
  assert.deepEqual(list.map(i => i.id), [IMAGE.id, 'sha256:' + 'e'.repeat(64)])
  assert.deepEqual(list[1]!.repoTags, [])
  await cri.remove('there')
  assert.deepEqual(removed, ['there'])
})

test('containerd\'s answer to a failed pull is kept in a RAFSPEER_ERR_CRI_PULL; other calls fail with RAFSPEER_ERR_CRI_FAILED', async (t) => {
  const socket = await fakeCri(t, {
    PullImage: (_call, cb) => cb({ code: grpc.status.NOT_FOUND, details: 'failed to resolve reference "x:1": x:1: not found' }),
    ImageStatus: (_call, cb) => cb({ code: grpc.status.INTERNAL, details: 'boom' })
  })
  const cri = client(t, socket)
  await assert.rejects(cri.pull('x:1'), (err: unknown) => {
    isCri('RAFSPEER_ERR_CRI_PULL', /could not pull x:1: failed to resolve reference "x:1": x:1: not found/)(err)
    assert.equal((err as CriError).grpcCode, grpc.status.NOT_FOUND)
    return true
  })
  await assert.rejects(cri.status('x:1'), isCri('RAFSPEER_ERR_CRI_FAILED', /ImageStatus of x:1 .* failed: INTERNAL: boom/))
})

test('an UNAVAILABLE containerd sends (a snapshotter it could not dial) is a pull error, not "containerd unreachable"', async (t) => {
  const socket = await fakeCri(t, {
    PullImage: (_call, cb) => cb({ code: grpc.status.UNAVAILABLE, details: 'failed to prepare extraction snapshot: dial unix:///run/x.sock: timeout' })
  })
  await assert.rejects(client(t, socket).pull('x:1'),
    isCri('RAFSPEER_ERR_CRI_PULL', /could not pull x:1: failed to prepare extraction snapshot: .*\/run\/x\.sock.*is the snapshotter running\?/))
})

test('a server without the CRI image service is RAFSPEER_ERR_CRI_UNAVAILABLE that names the cri plugin', async (t) => {
  const socket = await fakeCri(t, undefined)
  await assert.rejects(client(t, socket).pull('x:1'), isCri('RAFSPEER_ERR_CRI_UNAVAILABLE', /has no CRI v1 image service.*cri plugin disabled/))
})

test('no socket at the address is RAFSPEER_ERR_CRI_UNAVAILABLE at once, not after the deadline', async (t) => {
  const dir = await tempDir(t, 'rafspeer-cri-none-')
  const cri = client(t, join(dir, 'containerd.sock'), { timeoutMs: 3_600_000, pullTimeoutMs: 3_600_000 })
  await assert.rejects(cri.list(), isCri('RAFSPEER_ERR_CRI_UNAVAILABLE', /no socket at .*containerd\.sock.*is containerd running/))
  await assert.rejects(cri.pull('x:1'), isCri('RAFSPEER_ERR_CRI_UNAVAILABLE'))
})

test('a call past its deadline is RAFSPEER_ERR_CRI_TIMEOUT; an abort cancels the call on the server and rejects with the reason', { timeout: 30_000 }, async (t) => {
  let cancelled = 0
  let started!: () => void
  let calls = 0
  const socket = await fakeCri(t, {
    // never answers: only a deadline or a cancel ends these calls
    PullImage: (call) => { calls++; call.on('cancelled', () => { cancelled++ }); started?.() },
    ListImages: () => { calls++ }
  })
  const cri = client(t, socket, { timeoutMs: 300 })
  await assert.rejects(cri.list(), isCri('RAFSPEER_ERR_CRI_TIMEOUT', /ListImages on containerd at .* did not finish/))
  await assert.rejects(cri.pull('slow:1', { timeoutMs: 300 }), isCri('RAFSPEER_ERR_CRI_TIMEOUT', /PullImage of slow:1/))

  const reason = new Error('user gave up')
  const ac = new AbortController()
  const onServer = new Promise<void>(resolve => { started = resolve })
  const pulling = cri.pull('slow:2', { signal: ac.signal })
  await onServer
  const before = cancelled
  ac.abort(reason)
  await assert.rejects(pulling, (err: unknown) => err === reason)
  // the server hears the cancel (grpc RST_STREAM), so containerd stops pulling
  while (cancelled === before) await new Promise(resolve => setTimeout(resolve, 10))

  const callsBefore = calls
  await assert.rejects(cri.pull('slow:3', { signal: AbortSignal.abort(reason) }), (err: unknown) => err === reason)
  assert.equal(calls, callsBefore, 'an aborted signal sends nothing')
})

// ---------------------------------------------------------------------------------------------------------------
// a real containerd

const skip = containerdSkipReason() ?? (existsSync('/usr/bin/skopeo') ? undefined : '/usr/bin/skopeo missing (apt-get install skopeo)')
if (skip !== undefined) process.stdout.write(`# skipping the real containerd tests: ${skip}\n`)

describe('with a real containerd and its CRI plugin', { skip, timeout: 300_000 }, () => {
  const USER = 'cri-user'
  const PASSWORD = 'cri-pa55'
  let dir: string
  let reg: RegistryServer
  let priv: RegistryServer
  let slow: RegistryServer
  let img: LayeredImage
  let c: Containerd
  let cri: CriImageClient

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rafspeer-cri-'))
    reg = await startRegistryServer({ root: join(dir, 'reg') })
    priv = await startRegistryServer({ root: join(dir, 'priv'), auth: { basic: { user: USER, password: PASSWORD } } })
    // 64 KiB/s: the image's ~2 MiB (busybox) takes half a minute, long enough to abort or time out mid-pull
    slow = await startRegistryServer({ root: join(dir, 'slow'), bandwidthLimit: 64 << 10 })
    img = await buildLayeredImage(join(dir, 'img'), { layers: [64 << 10], seed: 'cri-client', gzipLevel: 0 })
    await pushLayeredImage(img, `${reg.host}/cri/app:1`)
    await pushLayeredImage(img, `${priv.host}/team/secret:1`, { creds: `${USER}:${PASSWORD}` })
    await pushLayeredImage(img, `${slow.host}/cri/slow:1`)
    // CRI reaches a plain-HTTP registry through a hosts.toml naming its http:// endpoint
    const hostsDir = join(dir, 'certs.d')
    for (const r of [reg, priv, slow]) await writeHostsToml({ hostsDir, mirror: r.url, registries: [r.host] })
    c = await startContainerd({ cri: { snapshotter: 'overlayfs', configPath: hostsDir } })
    cri = new CriImageClient({ address: c.address })
  })

  after(async () => {
    cri?.close()
    await c?.stop()
    for (const r of [reg, priv, slow]) await r?.stop()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  test('pull, status with the manifest digest, list, remove', async () => {
    const ref = `${reg.host}/cri/app:1`
    const { imageRef } = await cri.pull(ref)
    assert.equal(imageRef, img.configDigest)
    const st = await cri.status(ref)
    assert.ok(st !== undefined, 'pulled image has no status')
    assert.equal(st.id, img.configDigest)
    assert.deepEqual(st.repoTags, [ref])
    assert.deepEqual(st.repoDigests, [`${reg.host}/cri/app@${img.manifestDigest}`])
    assert.ok(st.size > 0)
    assert.deepEqual(await cri.status(img.configDigest), st, 'status by image id')
    assert.ok((await cri.list()).some(i => i.id === img.configDigest))
    // CRI's images are containerd's, in the k8s.io namespace
    const ls = await c.ctr(['images', 'ls', '-q'], { namespace: CRI_NAMESPACE, timeoutMs: 10_000 })
    assert.ok(ls.stdout.split('\n').includes(ref), ls.stdout)
    await cri.remove(ref)
    assert.equal(await cri.status(ref), undefined)
    assert.ok(!(await cri.list()).some(i => i.repoTags.includes(ref)))
    await cri.remove(ref) // removing an absent image is no error
  })

  test('ctr run of the pulled image (k8s.io namespace, the CRI snapshotter) prints what it ran', async (t) => {
    if (!img.runnable) { t.skip('busybox-static is not installed: the image has no /bin/busybox'); return }
    if (!existsSync('/usr/sbin/runc') && !existsSync('/usr/bin/runc')) { t.skip('runc is not installed'); return }
    const ref = `${reg.host}/cri/app:1`
    await cri.pull(ref)
    t.after(async () => { await cri.remove(ref) })
    const r = await c.run(ref, 'cri-client-run', ['/bin/busybox', 'echo', 'pulled through CRI'],
      { namespace: CRI_NAMESPACE, snapshotter: 'overlayfs', timeoutMs: 60_000 })
    assert.equal(r.code, 0, `${r.stderr}\n${c.logs().slice(-2000)}`)
    assert.equal(r.stdout.trim(), 'pulled through CRI')
    const left = await c.ctr(['containers', 'ls', '-q'], { namespace: CRI_NAMESPACE, timeoutMs: 10_000 })
    assert.equal(left.stdout.trim(), '', '--rm left the container behind')
  })

  test('(the helper) a run past its timeout is killed, and its container removed', async (t) => {
    if (!img.runnable) { t.skip('busybox-static is not installed: the image has no /bin/busybox'); return }
    const ref = `${reg.host}/cri/app:1`
    await cri.pull(ref)
    t.after(async () => { await cri.remove(ref) })
    const r = await c.run(ref, 'cri-client-sleep', ['/bin/busybox', 'sleep', '600'], { namespace: CRI_NAMESPACE, timeoutMs: 2_000 })
    assert.equal(r.timedOut, true)
    assert.equal(r.code, null)
    const left = await c.ctr(['containers', 'ls', '-q'], { namespace: CRI_NAMESPACE, timeoutMs: 10_000 })
    assert.equal(left.stdout.trim(), '', 'the timed-out container is still there')
  })

  test('a missing tag is a RAFSPEER_ERR_CRI_PULL carrying containerd\'s "not found"', async () => {
    await assert.rejects(cri.pull(`${reg.host}/cri/app:nope`), isCri('RAFSPEER_ERR_CRI_PULL', /cri\/app:nope.*not found/))
  })

  test('a private repository: refused without credentials, pulled with username/password and with `auth`', async () => {
    const ref = `${priv.host}/team/secret:1`
    await assert.rejects(cri.pull(ref), isCri('RAFSPEER_ERR_CRI_PULL', /401|unauthori[sz]ed/i))
    await assert.rejects(cri.pull(ref, { auth: { username: USER, password: 'wrong' } }), isCri('RAFSPEER_ERR_CRI_PULL', /401|unauthori[sz]ed/i))
    assert.equal(await cri.status(ref), undefined)
    assert.equal((await cri.pull(ref, { auth: { username: USER, password: PASSWORD } })).imageRef, img.configDigest)
    assert.deepEqual((await cri.status(ref))?.repoDigests, [`${priv.host}/team/secret@${img.manifestDigest}`])
    await cri.remove(ref)
    const auth = Buffer.from(`${USER}:${PASSWORD}`).toString('base64')
    assert.equal((await cri.pull(ref, { auth: { auth } })).imageRef, img.configDigest)
    await cri.remove(ref)
  })

  test('a pull past its deadline is RAFSPEER_ERR_CRI_TIMEOUT; an aborted pull rejects with the reason and leaves no image', async () => {
    const ref = `${slow.host}/cri/slow:1`
    await assert.rejects(cri.pull(ref, { timeoutMs: 1_000 }), isCri('RAFSPEER_ERR_CRI_TIMEOUT'))
    const ac = new AbortController()
    const reason = new Error('stop pulling')
    const sentBefore = slow.counters.bytesServed()
    const pulling = cri.pull(ref, { signal: ac.signal })
    let settled = false
    pulling.then(() => { settled = true }, () => { settled = true })
    // abort once blob bytes flow: the pull is under way in containerd
    while (slow.counters.bytesServed() === sentBefore && !settled) await new Promise(resolve => setTimeout(resolve, 20))
    ac.abort(reason)
    await assert.rejects(pulling, (err: unknown) => err === reason)
    assert.equal(await cri.status(ref), undefined)
  })

  test('(the helper) a proxy snapshotter made CRI\'s: containerd lists it, and a CRI pull goes to its socket', async (t) => {
    const socket = join(dir, 'no-snapshotter.sock')
    const px = await startContainerd({ cri: { snapshotter: 'rafspeer', configPath: join(dir, 'certs.d') }, proxyPlugins: { rafspeer: socket } })
    t.after(async () => { await px.stop() })
    const plugins = await px.ctr(['plugins', 'ls'], { timeoutMs: 10_000 })
    assert.match(plugins.stdout, /io\.containerd\.snapshotter\.v1\s+rafspeer\s+.*ok/)
    const pxCri = new CriImageClient({ address: px.address })
    t.after(async () => { pxCri.close() })
    // nothing serves the socket: the unpack's first Prepare fails there
    await assert.rejects(pxCri.pull(`${reg.host}/cri/app:1`), (err: unknown) => {
      isCri('RAFSPEER_ERR_CRI_PULL', /is the snapshotter running\?/)(err)
      assert.ok((err as Error).message.includes(socket), (err as Error).message)
      return true
    })
  })

  test('a containerd without the CRI plugin, then a stopped one: RAFSPEER_ERR_CRI_UNAVAILABLE', async (t) => {
    const plain = await startContainerd()
    t.after(async () => { await plain.stop() })
    const noCri = new CriImageClient({ address: plain.address, timeoutMs: 3_600_000 })
    t.after(async () => { noCri.close() })
    await assert.rejects(noCri.list(), isCri('RAFSPEER_ERR_CRI_UNAVAILABLE', /no CRI v1 image service/))
    await plain.stop()
    await assert.rejects(noCri.pull('x:1'), isCri('RAFSPEER_ERR_CRI_UNAVAILABLE', /cannot reach containerd/))
  })
})
