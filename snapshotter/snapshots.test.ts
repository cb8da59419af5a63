import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { link, lstat, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, dirname, join } from 'node:path'
import { promisify } from 'node:util'
import { Snapshots } from './snapshots.js'
import { TARGET_REF_LABEL, type RemoteLayers, type SnapshotInfo, type SnapshotMount } from './types.js'
import { deferOf, type TestCtx as Ctx } from '../test/helpers/defer.js'

const run = promisify(execFile)
const code = (c: string) => ({ code: `RAFSPEER_ERR_SNAPSHOT_${c}` })
const REMOTE = 'test/remote'

/** RemoteLayers over a real directory: each attached layer is a directory holding `from-<layer>` */
class FakeRemote implements RemoteLayers {
  readonly dir: string
  store?: Snapshots
  attaches: Array<{ holder: string, layer: string }> = []
  releases: Array<{ holder: string, stillStored: boolean }> = []
  holds = new Map<string, string>()
  failAttach?: Error
  failRelease?: Error
  dirName = (layer: string): string => layer.replace(/[^A-Za-z0-9]/g, '_')
  readonly #waiters: Array<{ holder: string, resolve: () => void }> = []

  constructor (dir: string) { this.dir = dir }

  claims = (labels: Readonly<Record<string, string>>): boolean => labels[REMOTE] === 'yes'
  isRemote = (labels: Readonly<Record<string, string>>): boolean => labels[REMOTE] === 'yes'

  attach = async (holder: string, layer: SnapshotInfo): Promise<string> => {
    if (this.failAttach !== undefined) throw this.failAttach
    const d = join(this.dir, this.dirName(layer.name))
    await mkdir(d, { recursive: true })
    await writeFile(join(d, `from-${this.dirName(layer.name)}`), layer.name)
    this.holds.set(holder, layer.name)
    this.attaches.push({ holder, layer: layer.name })
    for (const w of this.#waiters.filter(w => w.holder === holder)) w.resolve()
    return d
  }

  release = async (holder: string): Promise<void> => {
    if (this.failRelease !== undefined) throw this.failRelease
    const stillStored = this.store === undefined ? false : await this.store.stat(holder).then(() => true, () => false)
    this.releases.push({ holder, stillStored })
    this.holds.delete(holder)
  }

  /** resolves once `holder` has been attached */
  async attached (holder: string): Promise<void> {
    if (this.attaches.some(a => a.holder === holder)) return
    await new Promise<void>(resolve => this.#waiters.push({ holder, resolve }))
  }
}


async function tempDir (t: Ctx, prefix = 'rafspeer-snap-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  deferOf(t)(async () => { await rm(dir, { recursive: true, force: true }) })
  return dir
}

async function openStore (t: Ctx, opts: { root?: string, remote?: FakeRemote } = {}): Promise<Snapshots> {
  const root = opts.root ?? join(await tempDir(t), 'root')
  const s = new Snapshots({ remote: opts.remote }, { root, overlayIndexOff: false })
  if (opts.remote !== undefined) opts.remote.store = s
  await s.start()
  deferOf(t)(async () => { await s.stop() })
  return s
}

/** the snapshot's own fs directory, from its mounts */
function upper (mounts: SnapshotMount[]): string {
  const m = mounts[0]!
  if (m.type === 'bind') return m.source
  const u = m.options.find(o => o.startsWith('upperdir='))
  assert.ok(u !== undefined, `no upperdir in ${JSON.stringify(m)}`)
  return u.slice('upperdir='.length)
}
const idOf = (fs: string): number => Number(basename(dirname(fs)))

/** a committed layer `name` (on `parent`) holding `files` */
async function layer (s: Snapshots, name: string, parent: string, files: Record<string, string> = {}, labels: Record<string, string> = {}): Promise<string> {
  const fs = upper(await s.prepare(`extract-${name}`, parent))
  for (const [f, data] of Object.entries(files)) await writeFile(join(fs, f), data)
  await s.commit(name, `extract-${name}`, labels)
  return fs
}

test('prepare, view and commit give containerd overlay snapshotter mounts', async (t) => {
  const s = await openStore(t)
  const m0 = await s.prepare('a', '', { l: '1' })
  assert.equal(m0.length, 1)
  assert.deepEqual({ ...m0[0], source: '' }, { type: 'bind', source: '', options: ['rw', 'rbind'] })
  const fsA = m0[0]!.source
  assert.equal(basename(fsA), 'fs')
  assert.ok((await stat(join(dirname(fsA), 'work'))).isDirectory())
  assert.deepEqual(await s.mounts('a'), m0, 'mounts recomputes the same answer')
  assert.deepEqual(await readdir(join(s.root, 'snapshots')), [String(idOf(fsA))], 'no temporary directory is left')

  await writeFile(join(fsA, 'one'), '1')
  await s.commit('L1', 'a', { c: 'x' })
  const l1 = await s.stat('L1')
  assert.equal(l1.kind, 'committed')
  assert.deepEqual(l1.labels, { c: 'x' })
  assert.equal(existsSync(join(dirname(fsA), 'work')), false, 'a committed snapshot has no work dir')
  await assert.rejects(s.stat('a'), code('NOT_FOUND'), 'the active key is gone')

  const fsL2 = await layer(s, 'L2', 'L1', { two: '2' })
  const m = await s.prepare('c', 'L2')
  const fsC = upper(m)
  assert.ok(idOf(fsC) > idOf(fsL2) && idOf(fsL2) > idOf(fsA), 'ids increase')
  assert.deepEqual(m, [{
    type: 'overlay',
    source: 'overlay',
    options: [`workdir=${join(dirname(fsC), 'work')}`, `upperdir=${fsC}`, `lowerdir=${fsL2}:${fsA}`]
  }])

  const v0 = await s.view('v0', '')
  assert.deepEqual(v0, [{ type: 'bind', source: join(s.root, 'snapshots', String(idOf(fsC) + 1), 'fs'), options: ['ro', 'rbind'] }], 'a view without parent: its own empty fs, read-only')
  assert.deepEqual(await readdir(v0[0]!.source), [])
  assert.equal(existsSync(join(dirname(v0[0]!.source), 'work')), false, 'a view has no work dir')
  assert.deepEqual(await s.view('v1', 'L1'), [{ type: 'bind', source: fsA, options: ['ro', 'rbind'] }])
  assert.deepEqual(await s.view('v2', 'L2'), [{ type: 'overlay', source: 'overlay', options: [`lowerdir=${fsL2}:${fsA}`] }])
  assert.deepEqual(await s.mounts('v2'), await s.view('v3', 'L2'))
  assert.equal((await s.stat('v2')).kind, 'view')
  assert.equal((await s.stat('v2')).parent, 'L2')
})

test('index=off is added to overlay mounts when asked', async (t) => {
  const root = join(await tempDir(t), 'root')
  const s = new Snapshots({}, { root, overlayIndexOff: true })
  await s.start()
  deferOf(t)(async () => { await s.stop() })
  await layer(s, 'L1', '')
  assert.equal((await s.prepare('c', 'L1'))[0]!.options[0], 'index=off')
  assert.deepEqual((await s.prepare('c0', ''))[0]!.options, ['rw', 'rbind'], 'not on a bind')
})

test('every error case answers containerd error class', async (t) => {
  const s = await openStore(t)
  await layer(s, 'L1', '')
  await s.prepare('act', 'L1')
  await s.view('vw', 'L1')

  await assert.rejects(s.prepare('act', 'L1'), code('ALREADY_EXISTS'))
  await assert.rejects(s.prepare('L1', ''), code('ALREADY_EXISTS'))
  await assert.rejects(s.view('vw', ''), code('ALREADY_EXISTS'))
  await assert.rejects(s.prepare('x', 'missing'), code('NOT_FOUND'))
  await assert.rejects(s.view('x', 'missing'), code('NOT_FOUND'))
  // containerd's storage answers InvalidArgument for a parent that is not committed
  await assert.rejects(s.prepare('x', 'act'), code('INVALID_ARGUMENT'))
  await assert.rejects(s.view('x', 'vw'), code('INVALID_ARGUMENT'))
  await assert.rejects(s.prepare('', ''), code('INVALID_ARGUMENT'))
  await assert.rejects(s.prepare('x', '', { k: 'v'.repeat(4096) }), code('INVALID_ARGUMENT'))

  await assert.rejects(s.commit('L1', 'act'), code('ALREADY_EXISTS'))
  await assert.rejects(s.commit('n', 'missing'), code('NOT_FOUND'))
  await assert.rejects(s.commit('n', 'vw'), code('FAILED_PRECONDITION'))
  await assert.rejects(s.commit('n', 'L1'), code('FAILED_PRECONDITION'))
  await assert.rejects(s.commit('n', 'act', { k: 'v'.repeat(4096) }), code('INVALID_ARGUMENT'))

  await assert.rejects(s.remove('missing'), code('NOT_FOUND'))
  await assert.rejects(s.remove('L1'), code('FAILED_PRECONDITION'), 'L1 has children')
  await assert.rejects(s.mounts('missing'), code('NOT_FOUND'))
  await assert.rejects(s.mounts('L1'), code('FAILED_PRECONDITION'))
  await assert.rejects(s.stat('missing'), code('NOT_FOUND'))
  await assert.rejects(s.usage('missing'), code('NOT_FOUND'))
  await assert.rejects(s.update({ name: 'missing', labels: {} }), code('NOT_FOUND'))
  await assert.rejects(s.update({ name: 'L1', labels: {} }, ['parent']), code('INVALID_ARGUMENT'))
  await assert.rejects(s.update({ name: 'L1', labels: { k: 'v'.repeat(4096) } }), code('INVALID_ARGUMENT'))
  await assert.rejects(s.list(['name==']), code('INVALID_ARGUMENT'))

  // nothing above changed the store
  assert.deepEqual((await s.list()).map(i => `${i.name}:${i.kind}`), ['L1:committed', 'act:active', 'vw:view'])
  // after the children are gone the parent goes
  await s.remove('act')
  await s.remove('vw')
  await s.remove('L1')
  assert.deepEqual(await s.list(), [])
  assert.deepEqual(await readdir(join(s.root, 'snapshots')), [], 'removed directories are gone')
})

test('update changes labels only; stat and list see it', async (t) => {
  const s = await openStore(t)
  await layer(s, 'L1', '', {}, { a: '1', b: '2' })
  const before = await s.stat('L1')
  let info = await s.update({ name: 'L1', labels: { b: '3', c: '4' } }, ['labels.b', 'labels.c', 'labels.a'])
  assert.deepEqual(info.labels, { b: '3', c: '4' })
  assert.equal(info.kind, 'committed')
  assert.equal(info.createdAt.getTime(), before.createdAt.getTime())
  assert.ok(info.updatedAt > before.updatedAt)
  assert.deepEqual(await s.stat('L1'), info)
  info = await s.update({ name: 'L1', labels: { z: '9' } })
  assert.deepEqual(info.labels, { z: '9' })
  assert.deepEqual((await s.list(['labels.z==9'])).map(i => i.name), ['L1'])
})

test('list filters by name, parent, kind and labels', async (t) => {
  const s = await openStore(t)
  await layer(s, 'sha256:one', '', {}, { 'containerd.io/snapshot.ref': 'sha256:one' })
  await layer(s, 'sha256:two', 'sha256:one')
  await s.prepare('default/3/c', 'sha256:two', { 'containerd.io/snapshot/x': 'y' })
  await s.view('view-1', 'sha256:one')
  const names = async (...f: string[]): Promise<string[]> => (await s.list(f)).map(i => i.name)
  assert.deepEqual(await names(), ['default/3/c', 'sha256:one', 'sha256:two', 'view-1'])
  assert.deepEqual(await names('kind==committed'), ['sha256:one', 'sha256:two'])
  assert.deepEqual(await names('kind==active', 'kind==view'), ['default/3/c', 'view-1'])
  assert.deepEqual(await names('parent==sha256:one'), ['sha256:two', 'view-1'])
  assert.deepEqual(await names('parent==sha256:one,kind==view'), ['view-1'])
  assert.deepEqual(await names('labels."containerd.io/snapshot.ref"==sha256:one'), ['sha256:one'])
  assert.deepEqual(await names('labels."containerd.io/snapshot/x"'), ['default/3/c'])
  assert.deepEqual(await names('name~=^sha256:t'), ['sha256:two'])
})

test('usage: active measured now (hard links once), committed as recorded, views and remote layers zero', async (t) => {
  const remote = new FakeRemote(await tempDir(t))
  const s = await openStore(t, { remote })
  const fs = upper(await s.prepare('a', ''))
  await writeFile(join(fs, 'data'), Buffer.alloc(100_000, 1))
  await link(join(fs, 'data'), join(fs, 'again'))
  await mkdir(join(fs, 'dir'))
  const blocks = (await lstat(fs)).blocks + (await lstat(join(fs, 'data'))).blocks + (await lstat(join(fs, 'dir'))).blocks
  const expected = { size: blocks * 512, inodes: 3 }
  assert.deepEqual(await s.usage('a'), expected)
  await s.commit('L1', 'a')
  await rm(join(fs, 'data'))
  assert.deepEqual(await s.usage('L1'), expected, 'recorded at commit')
  await s.view('v', 'L1')
  assert.deepEqual(await s.usage('v'), { size: 0, inodes: 0 })
  await assert.rejects(s.prepare('x', 'L1', { [TARGET_REF_LABEL]: 'R', [REMOTE]: 'yes' }), code('ALREADY_EXISTS'))
  assert.deepEqual(await s.usage('R'), { size: 0, inodes: 0 })
})

test('a claimed layer is committed at once under its target name; its key is never created', async (t) => {
  const remote = new FakeRemote(await tempDir(t))
  const s = await openStore(t, { remote })
  const labels = { [TARGET_REF_LABEL]: 'sha256:L1', [REMOTE]: 'yes', other: 'kept' }
  await assert.rejects(s.prepare('extract-1', '', labels), (err: Error & { code: string }) => {
    assert.equal(err.code, 'RAFSPEER_ERR_SNAPSHOT_ALREADY_EXISTS')
    assert.match(err.message, /sha256:L1/)
    return true
  })
  const l1 = await s.stat('sha256:L1')
  assert.equal(l1.kind, 'committed')
  assert.equal(l1.parent, '')
  assert.deepEqual(l1.labels, labels)
  await assert.rejects(s.stat('extract-1'), code('NOT_FOUND'))
  // a second pull of the same layer
  await assert.rejects(s.prepare('extract-2', '', labels), code('ALREADY_EXISTS'))

  // many pulls at once of the next layer: one committed snapshot
  const l2 = { [TARGET_REF_LABEL]: 'sha256:L2', [REMOTE]: 'yes' }
  const results = await Promise.allSettled(Array.from({ length: 8 }, async (_, i) => await s.prepare(`extract-2-${i}`, 'sha256:L1', l2)))
  for (const r of results) assert.equal(r.status === 'rejected' && (r.reason as { code: string }).code, 'RAFSPEER_ERR_SNAPSHOT_ALREADY_EXISTS')
  assert.deepEqual((await s.list()).map(i => `${i.name}<-${i.parent}`), ['sha256:L1<-', 'sha256:L2<-sha256:L1'])
  assert.equal(remote.attaches.length, 0, 'claiming mounts nothing')

  // the parent rules still hold
  await assert.rejects(s.prepare('e', 'missing', { [TARGET_REF_LABEL]: 'sha256:L3', [REMOTE]: 'yes' }), code('NOT_FOUND'))
  // a layer not claimed is unpacked as usual
  const m = await s.prepare('extract-3', 'sha256:L2', { [TARGET_REF_LABEL]: 'sha256:U3' })
  assert.equal((await s.stat('extract-3')).kind, 'active')
  assert.equal(m[0]!.type, 'overlay')
  await assert.rejects(s.stat('sha256:U3'), code('NOT_FOUND'))
})

/** sha256:R1 <- sha256:R2 (both remote) <- U3 (ordinary, holds `u3`) */
async function remoteChain (s: Snapshots): Promise<string> {
  await assert.rejects(s.prepare('e1', '', { [TARGET_REF_LABEL]: 'sha256:R1', [REMOTE]: 'yes' }), code('ALREADY_EXISTS'))
  await assert.rejects(s.prepare('e2', 'sha256:R1', { [TARGET_REF_LABEL]: 'sha256:R2', [REMOTE]: 'yes' }), code('ALREADY_EXISTS'))
  return await layer(s, 'U3', 'sha256:R2', { u3: 'ordinary' })
}

test('a chain holding a remote layer ends with the directory attach returns; remove and commit release', async (t) => {
  const remote = new FakeRemote(await tempDir(t))
  const s = await openStore(t, { remote })
  const fsU3 = await remoteChain(s)
  // preparing U3's own layer on R2 attached R2 for its extract key, and its commit released it
  assert.deepEqual(remote.attaches, [{ holder: 'extract-U3', layer: 'sha256:R2' }])
  assert.deepEqual(remote.releases.map(r => r.holder), ['extract-U3'])
  assert.deepEqual(remote.holds, new Map())

  const r2dir = join(remote.dir, remote.dirName('sha256:R2'))
  const m = await s.prepare('c1', 'U3')
  const fsC1 = upper(m)
  assert.deepEqual(m[0]!.options, [`workdir=${join(dirname(fsC1), 'work')}`, `upperdir=${fsC1}`, `lowerdir=${fsU3}:${r2dir}`])
  assert.deepEqual(remote.attaches.at(-1), { holder: 'c1', layer: 'sha256:R2' }, 'the nearest remote layer, R1 is below it')
  assert.deepEqual(await s.mounts('c1'), m)
  assert.equal(remote.attaches.filter(a => a.holder === 'c1').length, 2, 'mounts attaches again (idempotent per holder)')

  // a view straight on a remote layer: a read-only bind of its directory
  assert.deepEqual(await s.view('v1', 'sha256:R2'), [{ type: 'bind', source: r2dir, options: ['ro', 'rbind'] }])
  // an active straight on it: overlay with the one lowerdir
  const m2 = await s.prepare('c2', 'sha256:R1')
  assert.equal(m2[0]!.options.at(-1), `lowerdir=${join(remote.dir, remote.dirName('sha256:R1'))}`)

  // a release that fails keeps the snapshot (containerd's collector skips FAILED_PRECONDITION and goes on)
  remote.failRelease = new Error('umount: target is busy')
  await assert.rejects(s.remove('c1'), (err: Error & { code: string }) => {
    assert.equal(err.code, 'RAFSPEER_ERR_SNAPSHOT_FAILED_PRECONDITION')
    assert.match(err.message, /target is busy/)
    return true
  })
  assert.equal((await s.stat('c1')).kind, 'active')
  remote.failRelease = undefined
  await s.remove('c1')
  assert.deepEqual(remote.releases.at(-1), { holder: 'c1', stillStored: true }, 'released before the metadata went')
  await s.remove('v1')
  assert.deepEqual(remote.releases.at(-1), { holder: 'v1', stillStored: true })
  await s.commit('C2', 'c2')
  assert.equal(remote.releases.at(-1)!.holder, 'c2')
  assert.deepEqual([...remote.holds.keys()], [])
  // removing an ordinary chain releases nothing
  const before = remote.releases.length
  await s.prepare('plain', '')
  await s.remove('plain')
  assert.equal(remote.releases.length, before)
})

test('a failed attach fails the prepare with RAFSPEER_ERR_SNAPSHOT_MOUNT and leaves no key', async (t) => {
  const remote = new FakeRemote(await tempDir(t))
  const s = await openStore(t, { remote })
  await remoteChain(s)
  remote.failAttach = new Error('registry gone')
  await assert.rejects(s.prepare('c1', 'U3'), (err: Error & { code: string }) => {
    assert.equal(err.code, 'RAFSPEER_ERR_SNAPSHOT_MOUNT')
    assert.match(err.message, /registry gone/)
    assert.match(err.message, /sha256:R2/)
    return true
  })
  await assert.rejects(s.stat('c1'), code('NOT_FOUND'))
  assert.equal(remote.releases.at(-1)!.holder, 'c1')
  await assert.rejects(s.view('v1', 'U3'), code('MOUNT'))
  await assert.rejects(s.stat('v1'), code('NOT_FOUND'))
  // a directory overlay cannot take
  remote.failAttach = undefined
  remote.dirName = (l: string) => l
  await assert.rejects(s.prepare('c2', 'U3'), code('MOUNT'))
})

test('a restart keeps everything, re-attaches holders, never reuses an id, and cleanup removes garbage', async (t) => {
  const root = join(await tempDir(t), 'root')
  const remote = new FakeRemote(await tempDir(t))
  const s = new Snapshots({ remote }, { root, overlayIndexOff: false })
  remote.store = s
  await s.start()
  deferOf(t)(async () => { await s.stop() })
  await remoteChain(s)
  const fsC1 = upper(await s.prepare('c1', 'U3', { l: 'v' }))
  await s.view('v1', 'U3')
  const fsPlain = upper(await s.prepare('plain', ''))
  const listed = await s.list()
  await s.stop()
  await assert.rejects(s.stat('c1'), code('UNAVAILABLE'))

  // what a crash leaves: a directory the metadata never recorded, a half-made and a half-removed one
  await mkdir(join(root, 'snapshots', '50', 'fs'), { recursive: true })
  await mkdir(join(root, 'snapshots', 'new-abc', 'fs'), { recursive: true })
  await mkdir(join(root, 'snapshots', 'rm-2-dead', 'work', 'work'), { recursive: true })

  const remote2 = new FakeRemote(remote.dir)
  const s2 = await openStore(t, { root, remote: remote2 })
  assert.deepEqual(await s2.list(), listed)
  await remote2.attached('c1')
  await remote2.attached('v1')
  assert.deepEqual(remote2.attaches.map(a => `${a.holder}:${a.layer}`).sort(), ['c1:sha256:R2', 'v1:sha256:R2'])
  assert.equal(upper(await s2.mounts('c1')), fsC1)
  const fsNew = upper(await s2.prepare('after', ''))
  assert.ok(idOf(fsNew) > 50, `id ${idOf(fsNew)} must skip the directory left on disk`)
  await s2.cleanup()
  const left = (await readdir(join(root, 'snapshots'))).sort()
  assert.ok(!left.includes('50') && !left.includes('new-abc') && !left.includes('rm-2-dead'), left.join(' '))
  // U3, c1, v1, plain, after own directories (the remote layers have none)
  assert.equal(left.length, 5, left.join(' '))
  for (const fs of [fsC1, fsPlain, fsNew]) assert.ok(left.includes(String(idOf(fs))), `${fs} is owned`)
  await s2.stop()

  // without its remote layers, a store cannot serve a chain that holds one
  const plain = await openStore(t, { root })
  await assert.rejects(plain.mounts('c1'), code('UNAVAILABLE'))
  assert.equal((await plain.mounts('plain'))[0]!.type, 'bind')
})

function overlaySkipReason (): string | undefined {
  if (process.getuid?.() !== 0) return 'mounting needs root'
  try {
    if (!/\toverlay$/m.test(readFileSync('/proc/filesystems', 'utf8'))) return 'the kernel has no overlay filesystem'
  } catch {
    return '/proc/filesystems is unreadable'
  }
  return undefined
}

async function mountAll (t: Ctx, mounts: SnapshotMount[], target: string): Promise<void> {
  await mkdir(target, { recursive: true })
  const m = mounts[0]!
  const args = m.type === 'bind' ? ['--bind', '-o', m.options.join(','), m.source, target] : ['-t', m.type, m.source, '-o', m.options.join(','), target]
  await run('mount', args)
  // a read-only bind takes a remount to become read-only
  if (m.type === 'bind' && m.options.includes('ro')) await run('mount', ['-o', 'remount,bind,ro', target])
  deferOf(t)(async () => {
    if (!readFileSync('/proc/mounts', 'utf8').split('\n').some(l => l.split(' ')[1] === target)) return
    await run('umount', [target]).catch(async () => await run('umount', ['-l', target]))
  })
}

test('the mounts work with mount(8): overlay on an ordinary and a remote layer, rw bind, ro view', { skip: overlaySkipReason() }, async (t) => {
  const dir = await tempDir(t)
  const remote = new FakeRemote(join(dir, 'remote'))
  const s = await openStore(t, { root: join(dir, 'root'), remote })
  // unpack a base layer through its rw bind mount, as containerd does
  const base = await s.prepare('extract-base', '')
  await mountAll(t, base, join(dir, 'm-base'))
  await writeFile(join(dir, 'm-base', 'hello'), 'from base')
  await run('umount', [join(dir, 'm-base')])
  await s.commit('base', 'extract-base')

  const c = await s.prepare('c', 'base')
  assert.equal(c[0]!.type, 'overlay')
  await mountAll(t, c, join(dir, 'm-c'))
  assert.equal(await readFile(join(dir, 'm-c', 'hello'), 'utf8'), 'from base')
  await writeFile(join(dir, 'm-c', 'new'), 'written in c')
  await run('umount', [join(dir, 'm-c')])
  assert.equal(await readFile(join(upper(c), 'new'), 'utf8'), 'written in c', 'writes land in the upper dir')
  assert.equal(existsSync(join(upper(base), 'new')), false, 'and not in the layer below')

  const v = await s.view('v', 'base')
  await mountAll(t, v, join(dir, 'm-v'))
  assert.equal(await readFile(join(dir, 'm-v', 'hello'), 'utf8'), 'from base')
  await assert.rejects(writeFile(join(dir, 'm-v', 'x'), 'x'), { code: 'EROFS' })

  await remoteChain(s)
  const r = await s.prepare('rc', 'U3')
  await mountAll(t, r, join(dir, 'm-r'))
  assert.deepEqual((await readdir(join(dir, 'm-r'))).sort(), ['from-sha256_R2', 'u3'])
  assert.equal(await readFile(join(dir, 'm-r', 'from-sha256_R2'), 'utf8'), 'sha256:R2')
})
