import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { lstat, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import * as grpc from '@grpc/grpc-js'
import { RafspeerError } from '../base/index.js'
import { SnapshotterError } from './errors.js'
import { loadSnapshotsService, startSnapshotService, type SnapshotService } from './grpc-service.js'
import { Snapshots, type SnapshotStore } from './snapshots.js'
import { TARGET_REF_LABEL, type RemoteLayers } from './types.js'
import { deferOf, type TestCtx as Ctx } from '../test/helpers/defer.js'

const exec = promisify(execFile)


async function tempDir (t: Ctx): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'rafspeer-sngrpc-'))
  deferOf(t)(async () => { await rm(dir, { recursive: true, force: true }) })
  return dir
}

type Unary = (req: object, cb: (err: grpc.ServiceError | null, res: any) => void) => void
interface Client {
  call: (method: string, req: object) => Promise<any>
  list: (filters: string[]) => Promise<any[]>
}

function client (t: Ctx, address: string): Client {
  const { Client } = loadSnapshotsService()
  const c = new Client(`unix://${address}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & Record<string, Unary>
  deferOf(t)(async () => { c.close() })
  return {
    call: async (method, req) => await new Promise((resolve, reject) => {
      c[method]!.call(c, { snapshotter: 'rafspeer', ...req }, (err, res) => { err === null ? resolve(res) : reject(err) })
    }),
    list: async (filters) => await new Promise((resolve, reject) => {
      const msgs: any[] = []
      const s = (c as unknown as { List: (req: object) => grpc.ClientReadableStream<any> }).List({ snapshotter: 'rafspeer', filters })
      s.on('data', (m: any) => msgs.push(m))
      s.on('error', reject)
      s.on('end', () => resolve(msgs))
    })
  }
}

const status = (code: number) => (err: grpc.ServiceError) => {
  assert.equal(err.code, code, `${err.code} ${err.details}`)
  return true
}

async function serve (t: Ctx, opts: { remote?: RemoteLayers, store?: SnapshotStore } = {}): Promise<{ svc: SnapshotService, store: SnapshotStore, dir: string, c: Client }> {
  const dir = await tempDir(t)
  let store = opts.store
  if (store === undefined) {
    const s = new Snapshots({ remote: opts.remote }, { root: join(dir, 'root'), overlayIndexOff: false })
    await s.start()
    deferOf(t)(async () => { await s.stop() })
    store = s
  }
  const svc = await startSnapshotService({ snapshots: store }, { address: join(dir, 'run', 'snap.sock') })
  deferOf(t)(async () => { await svc.stop() })
  return { svc, store, dir, c: client(t, svc.address) }
}

test('every RPC answers with containerd messages and status codes', async (t) => {
  const remote: RemoteLayers = {
    claims: (l) => l.remote === 'yes', isRemote: (l) => l.remote === 'yes', attach: async () => '/nonexistent', release: async () => {}
  }
  const { c, store } = await serve(t, { remote })

  const p = await c.call('Prepare', { key: 'a', parent: '', labels: { l: '1' } })
  assert.equal(p.mounts.length, 1)
  assert.deepEqual({ ...p.mounts[0], source: '' }, { type: 'bind', source: '', target: '', options: ['rw', 'rbind'] })
  assert.match(p.mounts[0].source, /\/root\/snapshots\/1\/fs$/)
  await assert.rejects(c.call('Prepare', { key: 'a' }), status(grpc.status.ALREADY_EXISTS))
  await assert.rejects(c.call('Prepare', { key: '' }), status(grpc.status.INVALID_ARGUMENT))
  await assert.rejects(c.call('Prepare', { key: 'x', parent: 'missing' }), status(grpc.status.NOT_FOUND))
  await assert.rejects(c.call('Prepare', { key: 'x', parent: 'a' }), status(grpc.status.INVALID_ARGUMENT))
  await assert.rejects(c.call('Prepare', { key: 'x', labels: { k: 'v'.repeat(4096) } }), status(grpc.status.INVALID_ARGUMENT))
  assert.deepEqual(await c.call('Mounts', { key: 'a' }), p)

  assert.deepEqual(await c.call('Commit', { name: 'L1', key: 'a', labels: { c: '2' } }), {})
  await assert.rejects(c.call('Commit', { name: 'L1', key: 'a' }), status(grpc.status.ALREADY_EXISTS))
  await assert.rejects(c.call('Commit', { name: 'L2', key: 'a' }), status(grpc.status.NOT_FOUND))
  await assert.rejects(c.call('Mounts', { key: 'L1' }), status(grpc.status.FAILED_PRECONDITION))
  await assert.rejects(c.call('Mounts', { key: 'nope' }), status(grpc.status.NOT_FOUND))

  const v = await c.call('View', { key: 'v', parent: 'L1' })
  assert.deepEqual(v.mounts.map((m: any) => [m.type, m.options]), [['bind', ['ro', 'rbind']]])
  await assert.rejects(c.call('Commit', { name: 'L2', key: 'v' }), status(grpc.status.FAILED_PRECONDITION))
  const o = await c.call('Prepare', { key: 'o', parent: 'L1' })
  assert.equal(o.mounts[0].type, 'overlay')
  assert.equal(o.mounts[0].source, 'overlay')

  const st = await c.call('Stat', { key: 'L1' })
  const info = await store.stat('L1')
  assert.deepEqual(st.info, {
    name: 'L1',
    parent: '',
    kind: 'COMMITTED',
    createdAt: { seconds: Math.floor(info.createdAt.getTime() / 1000), nanos: (info.createdAt.getTime() % 1000) * 1e6 },
    updatedAt: { seconds: Math.floor(info.updatedAt.getTime() / 1000), nanos: (info.updatedAt.getTime() % 1000) * 1e6 },
    labels: { c: '2' }
  })
  assert.equal((await c.call('Stat', { key: 'v' })).info.kind, 'VIEW')
  assert.equal((await c.call('Stat', { key: 'o' })).info.kind, 'ACTIVE')
  await assert.rejects(c.call('Stat', { key: 'nope' }), status(grpc.status.NOT_FOUND))

  const u = await c.call('Update', { info: { name: 'L1', labels: { x: 'y', c: 'ignored' } }, updateMask: { paths: ['labels.x'] } })
  assert.deepEqual(u.info.labels, { c: '2', x: 'y' })
  assert.deepEqual((await store.stat('L1')).labels, { c: '2', x: 'y' })
  assert.deepEqual((await c.call('Update', { info: { name: 'L1', labels: { only: '1' } } })).info.labels, { only: '1' }, 'no mask replaces the labels')
  await assert.rejects(c.call('Update', { info: { name: 'L1' }, updateMask: { paths: ['kind'] } }), status(grpc.status.INVALID_ARGUMENT))
  await assert.rejects(c.call('Update', {}), status(grpc.status.INVALID_ARGUMENT))
  await assert.rejects(c.call('Update', { info: { name: 'nope' } }), status(grpc.status.NOT_FOUND))

  const usage = await c.call('Usage', { key: 'L1' })
  assert.deepEqual(usage, await store.usage('L1'))
  assert.ok(usage.inodes >= 1 && usage.size > 0)
  await assert.rejects(c.call('Usage', { key: 'nope' }), status(grpc.status.NOT_FOUND))

  // a claimed remote layer: ALREADY_EXISTS, then containerd Stats the target
  await assert.rejects(c.call('Prepare', { key: 'extract-r', parent: 'L1', labels: { [TARGET_REF_LABEL]: 'sha256:r', remote: 'yes' } }), status(grpc.status.ALREADY_EXISTS))
  assert.equal((await c.call('Stat', { key: 'sha256:r' })).info.parent, 'L1')
  await assert.rejects(c.call('Remove', { key: 'L1' }), status(grpc.status.FAILED_PRECONDITION))
  await assert.rejects(c.call('Remove', { key: 'nope' }), status(grpc.status.NOT_FOUND))
  assert.deepEqual(await c.call('Remove', { key: 'v' }), {})
  assert.deepEqual(await c.call('Cleanup', {}), {})
  assert.deepEqual((await store.list()).map(i => i.name), ['L1', 'o', 'sha256:r'])
})

test('List streams infos in batches and honours filters; a bad filter is INVALID_ARGUMENT', async (t) => {
  const { c, store } = await serve(t)
  await store.prepare('a', '')
  await store.commit('base', 'a', { tier: 'base' })
  for (let i = 0; i < 150; i++) await store.view(`v${String(i).padStart(3, '0')}`, 'base', i % 2 === 0 ? { even: 'yes' } : {})
  const all = await c.list([])
  assert.deepEqual(all.map(m => m.info.length), [100, 51])
  assert.equal(all.flatMap(m => m.info).length, 151)
  const evens = (await c.list(['labels.even==yes'])).flatMap(m => m.info)
  assert.equal(evens.length, 75)
  const either = (await c.list(['kind==committed', 'name==v001'])).flatMap(m => m.info.map((i: any) => `${i.name}:${i.kind}`))
  assert.deepEqual(either, ['base:COMMITTED', 'v001:VIEW'])
  await assert.rejects(c.list(['name==']), status(grpc.status.INVALID_ARGUMENT))
  assert.deepEqual(await c.list(['name==nothing']), [])
})

test('errors the store did not expect map to UNKNOWN or INTERNAL with their message', async (t) => {
  const fail = (err: unknown) => async () => { throw err }
  const store = {
    stat: fail(new Error('disk on fire')),
    usage: fail(new RafspeerError('RAFSPEER_ERR_OTHER', 'something of ours')),
    mounts: fail(new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_MOUNT', 'cannot mount layer x')),
    cleanup: fail(new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_UNAVAILABLE', 'stopping')),
    list: fail(new Error('list broke'))
  } as unknown as SnapshotStore
  const { c } = await serve(t, { store })
  await assert.rejects(c.call('Stat', { key: 'k' }), (err: grpc.ServiceError) => {
    assert.equal(err.code, grpc.status.INTERNAL)
    assert.match(err.details, /disk on fire/)
    return true
  })
  await assert.rejects(c.call('Usage', { key: 'k' }), (err: grpc.ServiceError) => {
    assert.equal(err.code, grpc.status.UNKNOWN)
    assert.match(err.details, /RAFSPEER_ERR_OTHER: something of ours/)
    return true
  })
  await assert.rejects(c.call('Mounts', { key: 'k' }), (err: grpc.ServiceError) => {
    assert.equal(err.code, grpc.status.UNKNOWN)
    assert.match(err.details, /cannot mount layer x/)
    return true
  })
  await assert.rejects(c.call('Cleanup', {}), status(grpc.status.UNAVAILABLE))
  await assert.rejects(c.list([]), status(grpc.status.INTERNAL))
  // the server is still up after all that
  await assert.rejects(c.call('Stat', { key: 'k' }), status(grpc.status.INTERNAL))
})

test('the socket: parent dir made, mode 0600, a stale one replaced, a live one or a non-socket refused, removed at stop', async (t) => {
  const dir = await tempDir(t)
  const store = { stat: async () => { throw new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_NOT_FOUND', 'none') } } as unknown as SnapshotStore
  const address = join(dir, 'deep', 'er', 'snap.sock')

  // a stale socket: its server was killed without unlinking it
  await mkdir(join(dir, 'deep', 'er'), { recursive: true })
  const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(address)}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] })
  deferOf(t)(async () => { child.kill('SIGKILL') })
  await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()))
  child.kill('SIGKILL')
  await new Promise(resolve => child.once('exit', resolve))
  assert.ok((await lstat(address)).isSocket())

  const svc = await startSnapshotService({ snapshots: store }, { address })
  deferOf(t)(async () => { await svc.stop() })
  assert.equal((await lstat(address)).mode & 0o777, 0o600)
  const c = client(t, address)
  await assert.rejects(c.call('Stat', { key: 'k' }), status(grpc.status.NOT_FOUND))

  await assert.rejects(startSnapshotService({ snapshots: store }, { address }), (err: SnapshotterError) => {
    assert.equal(err.code, 'RAFSPEER_ERR_SNAPSHOT_LISTEN')
    assert.match(err.message, /another server is listening/)
    return true
  })
  const file = join(dir, 'plain-file')
  await writeFile(file, 'not a socket')
  await assert.rejects(startSnapshotService({ snapshots: store }, { address: file }), { code: 'RAFSPEER_ERR_SNAPSHOT_LISTEN' })
  assert.equal(readFileSync(file, 'utf8'), 'not a socket')

  await svc.stop()
  assert.equal(existsSync(address), false)
  await assert.rejects(c.call('Stat', { key: 'k' }), status(grpc.status.UNAVAILABLE))
})

// ---- a real containerd 1.6 talking to the store through its proxy plugin -----------------------------------

const CONTAINERD = '/usr/bin/containerd'
const CTR = '/usr/bin/ctr'

function containerdSkipReason (): string | undefined {
  for (const bin of [CONTAINERD, CTR]) if (!existsSync(bin)) return `${bin} missing`
  if (process.getuid?.() !== 0) return 'containerd needs root'
  return undefined
}

/** a throwaway containerd with only what a snapshot test needs, and `rafspeer` declared as a proxy snapshotter */
async function startContainerd (t: Ctx, dir: string, snapshotterSocket: string): Promise<{ ctr: (...args: string[]) => Promise<string>, log: () => string }> {
  const address = join(dir, 'c.sock')
  const q = JSON.stringify
  await mkdir(join(dir, 'tmp'), { recursive: true })
  await writeFile(join(dir, 'config.toml'), [
    'version = 2',
    `root = ${q(join(dir, 'root'))}`,
    `state = ${q(join(dir, 'state'))}`,
    `temp = ${q(join(dir, 'tmp'))}`,
    'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", ' +
      '"io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]',
    `[grpc]\n  address = ${q(address)}`,
    `[plugins."io.containerd.internal.v1.opt"]\n  path = ${q(join(dir, 'opt'))}`,
    // debug: the log tells when the garbage collector has run
    '[debug]\n  level = "debug"',
    `[proxy_plugins.rafspeer]\n  type = "snapshot"\n  address = ${q(snapshotterSocket)}`,
    ''
  ].join('\n'))
  const child: ChildProcess = spawn(CONTAINERD, ['--config', join(dir, 'config.toml')], {
    stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, TMPDIR: join(dir, 'tmp') }
  })
  let log = ''
  child.stderr!.setEncoding('utf8').on('data', (s: string) => { log = (log + s).slice(-16384) })
  deferOf(t)(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    const exited = new Promise(resolve => child.once('exit', resolve))
    child.kill('SIGTERM')
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
    await exited
    clearTimeout(timer)
  })
  const ctr = async (...args: string[]): Promise<string> => {
    try {
      const { stdout } = await exec(CTR, ['--address', address, '--namespace', 'default', ...args], { timeout: 30_000 })
      return stdout
    } catch (err) {
      const e = err as { stderr?: string, message: string }
      throw new Error(`ctr ${args.join(' ')}: ${e.stderr ?? e.message}\ncontainerd: ${log}`)
    }
  }
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`containerd exited: ${log}`)
    try { await ctr('version'); break } catch (err) {
      if (i > 400) throw err
      await new Promise(resolve => setTimeout(resolve, 50))
    }
  }
  // snapshots made by ctr have no lease: wait for the collection containerd runs after startup, so that it cannot
  // take them before the test marks them as roots
  for (let i = 0; !/garbage collected/.test(log); i++) {
    if (i > 400) throw new Error(`containerd never collected garbage: ${log}`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  return { ctr, log: () => log }
}

test('containerd 1.6 drives the store through [proxy_plugins] with ctr snapshots', { skip: containerdSkipReason() }, async (t) => {
  const { svc, store, dir } = await serve(t)
  const { ctr, log } = await startContainerd(t, join(dir, 'containerd'), svc.address)
  const snap = async (...args: string[]): Promise<string> => await ctr('snapshots', '--snapshotter', 'rafspeer', ...args)
  // containerd's metadata layer names backend snapshots `<namespace>/<seq>/<key>`
  const ours = async (suffix: string): Promise<{ name: string, kind: string, parent: string, labels: Record<string, string> } | undefined> =>
    (await store.list()).find(i => i.name.endsWith(`/${suffix}`))

  await snap('prepare', 'k1')
  const k1 = await ours('k1')
  assert.equal(k1?.kind, 'active')
  const mounts1 = await snap('mounts', '/mnt/target', 'k1')
  assert.match(mounts1, /mount -t bind .*\/snapshots\/1\/fs \/mnt\/target -o rw,rbind/)

  await snap('commit', 'c1', 'k1')
  assert.equal(await ours('k1'), undefined)
  const c1 = await ours('c1')
  assert.equal(c1?.kind, 'committed')

  await snap('prepare', 'k2', 'c1')
  const k2 = await ours('k2')
  assert.equal(k2?.parent, c1!.name)
  assert.match(await snap('mounts', '/mnt/target', 'k2'), /mount -t overlay overlay \/mnt\/target -o workdir=.*,upperdir=.*,lowerdir=.*\/snapshots\/1\/fs/)
  await snap('view', 'v1', 'c1')
  assert.equal((await ours('v1'))?.kind, 'view')

  const ls = await snap('ls')
  assert.match(ls, /^c1\s+Committed/m)
  assert.match(ls, /^k2\s+c1\s+Active/m)
  assert.match(ls, /^v1\s+c1\s+View/m)
  const info = JSON.parse(await snap('info', 'c1'))
  assert.equal(info.Kind, 'Committed')
  assert.equal(info.Name, 'c1')

  // containerd keeps most labels itself and hands its `containerd.io/snapshot/` ones to the snapshotter
  await snap('label', 'c1', 'containerd.io/snapshot/rafspeer-test=yes')
  assert.equal((await ours('c1'))?.labels['containerd.io/snapshot/rafspeer-test'], 'yes')
  assert.match(await snap('usage', 'c1'), /c1/)

  // a removal makes containerd collect garbage, which removes unreferenced snapshots: these are roots until removed
  for (const k of ['c1', 'k2', 'v1']) await snap('label', k, 'containerd.io/gc.root=test')
  await snap('rm', 'k2')
  await snap('rm', 'v1')
  await assert.rejects(snap('info', 'k2'), /not found/)
  await snap('rm', 'c1')
  assert.doesNotMatch(await snap('ls'), /c1|k2|v1/)
  // containerd's metadata forgets at once; its garbage collector then calls our Remove, children first. A removal
  // that lands while a collection runs is left to the next one, which only another removal starts: nudge it.
  for (let i = 0; ; i++) {
    const left = (await store.list()).filter(x => /\/(c1|k2|v1)$/.test(x.name))
    if (left.length === 0) break
    if (i >= 100) assert.fail(`containerd never removed ${left.map(x => x.name).join(', ')}: ${log()}`)
    await snap('prepare', `nudge-${i}`)
    await snap('rm', `nudge-${i}`)
    await new Promise(resolve => setTimeout(resolve, 100))
  }
})
