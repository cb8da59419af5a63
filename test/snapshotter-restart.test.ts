/**
 * The snapshotter in its own process (`rafspeer snapshotter --daemon-socket`), beside the `rafspeer daemon` that
 * mounts the images, as nydus-snapshotter runs beside nydusd: real containerd 1.6 with CRI, real runc, the CNCF
 * distribution registry behind a counting proxy.
 *
 * Pinned here: the snapshotter SIGKILLed and started again while a container runs on a lazy image → the container
 * goes on reading files it had not read before (fetched lazily by the daemon after the restart), its output equals
 * the OCI original's through overlayfs; the restarted snapshotter took the hold up again from its metadata, so the
 * container's removal unmounts the image; a new container then starts on the restarted snapshotter.
 */
import '../polyfill.js'
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { writeHostsToml } from '../proxy/index.js'
import { containerRunSkipReason, startContainerd, type Containerd } from './helpers/containerd.js'
import { cliArgv, startDaemon, type TestDaemon } from './helpers/daemon.js'
import { runCli } from './helpers/cli.js'
import { distributionSkipReason, startDistribution, type Distribution } from './helpers/distribution.js'
import { buildLayeredImage, pushLayeredImage } from './helpers/layered-image.js'
import { startRegistryProxy, type RegistryProxy } from './helpers/registry-proxy.js'
import { stopChild } from './helpers/process.js'

const MiB = 1 << 20
const NS = 'k8s.io'
const skip = containerRunSkipReason() ?? distributionSkipReason() ??
  (existsSync('/usr/bin/skopeo') ? undefined : '/usr/bin/skopeo missing (apt-get install skopeo)')

let dir: string
let reg: Distribution
let upstream: RegistryProxy
let daemon: TestDaemon
let containerd: Containerd
let address: string
let snapWork: string
let snap: { proc: ChildProcess, log: () => string } | undefined
let snapLogs = ''

/** `rafspeer snapshotter --daemon-socket`, up once its socket answers containerd's List (a Unix socket file) */
async function startSnapshotter (): Promise<void> {
  // an image nobody holds is unmounted at once (not after the default idle time), so the test can see it go
  const config = join(dir, 'snapshotter.json')
  await writeFile(config, JSON.stringify({ snapshotter: { idleUnmountMs: 0 } }))
  const proc = spawn(process.execPath, cliArgv(['snapshotter', '--address', address, '--daemon-socket', daemon.socket,
    '--work-dir', snapWork, '--config', config, '--log-level', 'debug']), { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  const take = (b: Buffer): void => { out += b.toString(); snapLogs += b.toString() }
  proc.stdout?.on('data', take)
  proc.stderr?.on('data', take)
  const deadline = Date.now() + 30_000
  while (!/containerd snapshotter on/.test(out)) {
    if (proc.exitCode !== null) throw new Error(`the snapshotter exited with ${proc.exitCode}:\n${out}`)
    if (Date.now() > deadline) { proc.kill('SIGKILL'); throw new Error(`the snapshotter did not start within 30 s:\n${out}`) }
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  snap = { proc, log: () => out }
}

async function killSnapshotter (): Promise<void> {
  if (snap === undefined) return
  const { proc } = snap
  snap = undefined
  if (proc.exitCode === null) {
    const gone = new Promise(resolve => proc.once('exit', resolve))
    proc.kill('SIGKILL')
    await gone
  }
}

const imageMounts = async (): Promise<string[]> =>
  (await daemon.client.mounts()).map(m => m.mountpoint).filter(m => m.startsWith(join(snapWork, 'snapshotter', 'images')))

async function rpull (ref: string): Promise<void> {
  const r = await runCli(['rpull', ref, '--address', containerd.address, '--timeout', '120'], { timeoutMs: 150_000 })
  assert.equal(r.code, 0, `rpull ${ref}: ${r.stderr}\n--- snapshotter ---\n${snapLogs.slice(-3000)}`)
}

before(async () => {
  if (skip !== undefined) return
  dir = await mkdtemp(join(tmpdir(), 'rafspeer-snaprs-'))
  reg = await startDistribution()
  upstream = await startRegistryProxy(reg.host)
  const img = await buildLayeredImage(join(dir, 'img'), { layers: [2 * MiB, 8 * MiB, 8 * MiB], seed: 'snapshotter-restart', gzipLevel: 0 })
  await pushLayeredImage(img, `${reg.host}/kit/app:oci`)
  const conv = await runCli(['convert', `${reg.host}/kit/app:oci`, `${reg.host}/kit/app:nydus`], { timeoutMs: 120_000 })
  assert.equal(conv.code, 0, conv.stderr)
  const home = join(dir, 'node')
  await mkdir(home, { recursive: true })
  daemon = await startDaemon(home, { fetch: { retries: 1 }, log: { level: 'debug', format: 'text' } })
  address = join(dir, 'snap.sock')
  snapWork = join(dir, 'snap')
  await startSnapshotter()
  const hostsDir = join(dir, 'certs.d')
  await writeHostsToml({ hostsDir, mirror: `http://${upstream.host}`, registries: [upstream.host, reg.host] })
  containerd = await startContainerd({ dir, namespace: NS, cri: { snapshotter: 'rafspeer', configPath: hostsDir }, proxyPlugins: { rafspeer: address } })
})

after(async () => {
  await containerd?.stop().catch(() => {})
  if (snap !== undefined) await stopChild(snap.proc).catch(() => {})
  if (daemon !== undefined) {
    const code = await daemon.stop()
    if (code !== 0) process.stderr.write(daemon.log())
  }
  await upstream?.close()
  await reg?.stop()
  if (dir !== undefined) await rm(dir, { recursive: true, force: true })
})

test('a running container keeps reading its lazy image while the snapshotter is killed and started again', { skip, timeout: 300_000 }, async () => {
  // the file read after the restart is in a layer nothing read before it: its chunks come from the registry then
  const script = 'sha256sum /data/layer-0/file-0.bin && sleep 6 && sha256sum /data/layer-2/file-0.bin'
  const cmd = ['/bin/busybox', 'sh', '-c', script]
  const expected = await (async () => {
    const pulled = await containerd.pull(`${reg.host}/kit/app:oci`, { plainHttp: true, timeoutMs: 120_000 })
    assert.equal(pulled.code, 0, pulled.stderr)
    const r = await containerd.run(`${reg.host}/kit/app:oci`, 'oci-1', ['/bin/busybox', 'sh', '-c', script.replace('sleep 6 && ', '')], { snapshotter: 'overlayfs', namespace: NS, timeoutMs: 120_000 })
    assert.equal(r.code, 0, r.stderr)
    return r.stdout.trim()
  })()
  assert.equal(expected.split('\n').length, 2, expected)

  const ref = `${upstream.host}/kit/app:nydus`
  await rpull(ref)
  upstream.reset()
  const running = containerd.run(ref, 'lazy-1', cmd, { snapshotter: 'rafspeer', namespace: NS, timeoutMs: 120_000 })
  // killed once the task runs (a kill while containerd still asks for the mounts fails the start, as it would
  // with any snapshotter)
  for (let i = 0; ; i++) {
    const tasks = await containerd.ctr(['tasks', 'ls'], { namespace: NS })
    if (/^lazy-1\s+\d+\s+RUNNING/m.test(tasks.stdout)) break
    assert.ok(i < 600, `the container never ran: ${tasks.stdout}\n${snapLogs.slice(-3000)}`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  const mounts = await imageMounts()
  assert.equal(mounts.length, 1, `the daemon does not hold the image's mount:\n${snapLogs.slice(-3000)}`)
  const before = upstream.blobBytes
  await killSnapshotter()
  await startSnapshotter()
  assert.match(snap!.log(), /re-attached the remote layer of/, snap!.log())

  const r = await running
  assert.equal(r.code, 0, `${r.stderr}\n--- snapshotter ---\n${snapLogs.slice(-4000)}\n--- daemon ---\n${daemon.log().slice(-3000)}`)
  assert.equal(r.stdout.trim(), expected)
  assert.ok(upstream.blobBytes > before, 'the second file was read lazily, after the restart')
  assert.deepEqual(await imageMounts(), mounts, 'the daemon kept the mount (one, the same)')

  // the container is gone (--rm): the restarted snapshotter holds it no more, and the daemon unmounts the image
  let left = mounts
  for (let i = 0; i < 300 && left.length > 0; i++) {
    if (i % 20 === 19) await containerd.nudgeGc(NS)
    await new Promise(resolve => setTimeout(resolve, 100))
    left = await imageMounts()
  }
  assert.deepEqual(left, [], snapLogs.slice(-3000))

  // and the restarted snapshotter starts new containers
  const again = await containerd.run(ref, 'lazy-2', ['/bin/busybox', 'sha256sum', '/data/layer-0/file-0.bin'], { snapshotter: 'rafspeer', namespace: NS, timeoutMs: 120_000 })
  assert.equal(again.code, 0, again.stderr)
  assert.equal(again.stdout.trim(), expected.split('\n')[0])
})
