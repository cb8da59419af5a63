/**
 * containerd's config for the snapshotter: the fragment, a merge into a file someone else wrote (everything of
 * theirs kept, the original backed up, numbers keeping their TOML types, written atomically, symlinks and modes
 * respected), files refused (version 1, version 3, not TOML), the undo, and — with a real containerd — that
 * `containerd config dump` reads our output (from its own `config default`) and shows our values.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { chmod, lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { parse, type TomlTable } from 'smol-toml'
import {
  ContainerdConfigError, renderSnapshotterConfig, unwriteSnapshotterConfig, writeSnapshotterConfig
} from './containerd-config.js'

const exec = promisify(execFile)
const CONTAINERD = process.env.RAFSPEER_CONTAINERD_BIN ?? '/usr/bin/containerd'
const SOCK = '/run/rafspeer/snapshotter.sock'
const CRI = 'io.containerd.grpc.v1.cri'
const NOW = (): Date => new Date('2026-12-02T10:00:00.000Z')

async function tempDir (t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'rafspeer-ctd-config-'))
  t.after(async () => { await rm(dir, { recursive: true, force: true }) })
  return dir
}

const get = (doc: unknown, ...path: string[]): unknown => path.reduce<unknown>((t, k) => (t as Record<string, unknown> | undefined)?.[k], doc)
const backupsIn = async (dir: string): Promise<string[]> => (await readdir(dir)).filter(f => f.includes('.rafspeer-backup-')).sort()

const isConfigError = (code: string, match?: RegExp) => (err: unknown): boolean => {
  assert.ok(err instanceof ContainerdConfigError, `not a ContainerdConfigError: ${String(err)}`)
  assert.equal(err.code, code, err.message)
  if (match !== undefined) assert.match(err.message, match)
  return true
}

/** A config as Debian and operators write them: comments, a registry config_path, a runtime, a float, a proxy plugin. */
const OPERATOR_CONFIG = `# our cluster's containerd
version = 2
root = "/var/lib/containerd"

[plugins]
  [plugins."io.containerd.gc.v1.scheduler"]
    pause_threshold = 0.02
    deletion_threshold = 0
    ratio = 1.0
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.9"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "/etc/containerd/certs.d"

[proxy_plugins]
  [proxy_plugins.stargz]
    type = "snapshot"
    address = "/run/containerd-stargz-grpc/containerd-stargz-grpc.sock"
`

test('the fragment: a proxy snapshot plugin and CRI\'s snapshotter with its labels on', () => {
  const text = renderSnapshotterConfig({ address: SOCK })
  assert.equal(text, [
    '# the rafspeer snapshotter (rafspeer snapshotter configure-containerd); restart containerd after a change',
    'version = 2',
    '',
    '[proxy_plugins.rafspeer]',
    '  type = "snapshot"',
    `  address = "${SOCK}"`,
    '',
    `[plugins."${CRI}".containerd]`,
    '  snapshotter = "rafspeer"',
    '  disable_snapshot_annotations = false',
    ''
  ].join('\n'))
  const doc = parse(text)
  assert.deepEqual({ ...get(doc, 'proxy_plugins', 'rafspeer') as object }, { type: 'snapshot', address: SOCK })
  assert.equal(get(doc, 'plugins', CRI, 'containerd', 'snapshotter'), 'rafspeer')
  assert.equal(get(doc, 'plugins', CRI, 'containerd', 'disable_snapshot_annotations'), false)

  const plain = parse(renderSnapshotterConfig({ address: SOCK, name: 'rafspeer.v2', criSnapshotter: false }))
  assert.equal(get(plain, 'proxy_plugins', 'rafspeer.v2', 'address'), SOCK, 'a dotted name is one quoted key')
  assert.equal(get(plain, 'plugins'), undefined, 'criSnapshotter: false leaves CRI alone')
})

test('bad options are refused with every problem at once', () => {
  assert.throws(() => renderSnapshotterConfig({ address: 'run/x.sock', name: 'raf speer' }),
    isConfigError('RAFSPEER_ERR_CONTAINERD_CONFIG_OPTIONS', /name "raf speer".*; address "run\/x.sock" is not an absolute/))
  assert.throws(() => renderSnapshotterConfig({ address: '/' + 'x'.repeat(200) }), isConfigError('RAFSPEER_ERR_CONTAINERD_CONFIG_OPTIONS', /longer than a unix socket/))
})

test('no file: the fragment is written (parent made), mode 0644, no backup', async (t) => {
  const dir = await tempDir(t)
  const file = join(dir, 'etc', 'containerd', 'config.toml')
  const r = await writeSnapshotterConfig(file, { address: SOCK })
  assert.equal(r.action, 'created')
  assert.equal(r.backup, undefined)
  assert.equal(await readFile(file, 'utf8'), renderSnapshotterConfig({ address: SOCK }))
  assert.equal(r.content, renderSnapshotterConfig({ address: SOCK }))
  assert.equal((await stat(file)).mode & 0o777, 0o644)
  assert.deepEqual(await readdir(join(dir, 'etc', 'containerd')), ['config.toml'], 'no temporary file left')
})

test('an operator\'s file: our keys merged in, theirs kept (types too), the original backed up byte for byte', async (t) => {
  const dir = await tempDir(t)
  const file = join(dir, 'config.toml')
  await writeFile(file, OPERATOR_CONFIG)
  await chmod(file, 0o600)
  const r = await writeSnapshotterConfig(file, { address: SOCK, now: NOW })
  assert.equal(r.action, 'updated')
  assert.equal(r.backup, `${file}.rafspeer-backup-2026-12-02T10-00-00-000Z`)
  assert.equal(await readFile(r.backup, 'utf8'), OPERATOR_CONFIG)
  const text = await readFile(file, 'utf8')
  assert.equal(text, r.content)
  assert.match(text, /^# rewritten by rafspeer.*\n# the file as it was, with its comments: .*rafspeer-backup-2026-12-02T10-00-00-000Z\n/)
  const doc = parse(text, { integersAsBigInt: true })
  assert.equal(doc.version, 2n)
  assert.equal(get(doc, 'root'), '/var/lib/containerd')
  // ours
  assert.equal(get(doc, 'proxy_plugins', 'rafspeer', 'type'), 'snapshot')
  assert.equal(get(doc, 'proxy_plugins', 'rafspeer', 'address'), SOCK)
  assert.equal(get(doc, 'plugins', CRI, 'containerd', 'snapshotter'), 'rafspeer')
  assert.equal(get(doc, 'plugins', CRI, 'containerd', 'disable_snapshot_annotations'), false)
  // theirs
  assert.equal(get(doc, 'proxy_plugins', 'stargz', 'address'), '/run/containerd-stargz-grpc/containerd-stargz-grpc.sock')
  assert.equal(get(doc, 'plugins', CRI, 'registry', 'config_path'), '/etc/containerd/certs.d')
  assert.equal(get(doc, 'plugins', CRI, 'sandbox_image'), 'registry.k8s.io/pause:3.9')
  assert.equal(get(doc, 'plugins', CRI, 'cni', 'bin_dir'), '/usr/lib/cni')
  assert.equal(get(doc, 'plugins', CRI, 'containerd', 'default_runtime_name'), 'runc')
  assert.equal(get(doc, 'plugins', CRI, 'containerd', 'runtimes', 'runc', 'runtime_type'), 'io.containerd.runc.v2')
  assert.equal(get(doc, 'plugins', 'io.containerd.gc.v1.scheduler', 'deletion_threshold'), 0n, 'an integer stays an integer')
  assert.equal(get(doc, 'plugins', 'io.containerd.gc.v1.scheduler', 'pause_threshold'), 0.02)
  assert.match(text, /ratio = 1\.0\n/, 'a float stays a float')
  assert.equal((await stat(file)).mode & 0o777, 0o600, 'the file keeps its mode')
  assert.deepEqual(r.warnings, ['CRI\'s snapshotter was "overlayfs": images CRI pulled into it must be pulled again to run on rafspeer'])

  // again: nothing to do, no second backup
  const again = await writeSnapshotterConfig(file, { address: SOCK, now: NOW })
  assert.equal(again.action, 'unchanged')
  assert.equal(again.backup, undefined)
  assert.equal(await readFile(file, 'utf8'), text)
  assert.equal((await backupsIn(dir)).length, 1)

  // a new socket: rewritten, backed up under a name of its own even within the same millisecond
  const moved = await writeSnapshotterConfig(file, { address: '/run/rafspeer/other.sock', now: NOW })
  assert.equal(moved.action, 'updated')
  assert.equal(moved.backup, `${file}.rafspeer-backup-2026-12-02T10-00-00-000Z-1`)
  assert.deepEqual(moved.warnings, [`proxy_plugins.rafspeer pointed at ${SOCK}; it now points at /run/rafspeer/other.sock`])
  assert.equal(get(parse(await readFile(file, 'utf8')), 'proxy_plugins', 'rafspeer', 'address'), '/run/rafspeer/other.sock')
})

test('warnings: the CRI plugin disabled, imports that may override', async (t) => {
  const dir = await tempDir(t)
  const file = join(dir, 'config.toml')
  await writeFile(file, 'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\nimports = ["/etc/containerd/conf.d/*.toml"]\n')
  const r = await writeSnapshotterConfig(file, { address: SOCK })
  assert.equal(r.warnings.length, 2, r.warnings.join('\n'))
  assert.match(r.warnings[0]!, /disables the CRI plugin \(disabled_plugins\).*remove it/)
  assert.match(r.warnings[1]!, /imports \/etc\/containerd\/conf\.d\/\*\.toml: a snapshotter or proxy_plugins\.rafspeer set there overrides/)
})

test('refused and left untouched: version 1 (no version key), version 3, not TOML, a non-table where a table belongs', async (t) => {
  const dir = await tempDir(t)
  const cases: Array<[string, string, RegExp]> = [
    // what Docker's containerd.io package ships
    ['disabled_plugins = ["cri"]\n', 'RAFSPEER_ERR_CONTAINERD_CONFIG_VERSION', /no `version` key, so containerd reads it as config version 1; .*Convert it first/],
    ['version = 3\n', 'RAFSPEER_ERR_CONTAINERD_CONFIG_VERSION', /is containerd config version 3; rafspeer edits version 2/],
    ['version = 2\n[plugins\n', 'RAFSPEER_ERR_CONTAINERD_CONFIG_INVALID', /is not valid TOML/],
    ['version = 2\nproxy_plugins = "nope"\n', 'RAFSPEER_ERR_CONTAINERD_CONFIG_INVALID', /proxy_plugins is a string, where containerd wants a table/]
  ]
  for (const [i, [text, code, match]] of cases.entries()) {
    const file = join(dir, `config-${i}.toml`)
    await writeFile(file, text)
    await assert.rejects(writeSnapshotterConfig(file, { address: SOCK }), isConfigError(code, match))
    assert.equal(await readFile(file, 'utf8'), text)
  }
  assert.deepEqual(await backupsIn(dir), [])
})

test('an empty file counts as none; a symlinked config is written through the link; dryRun touches nothing', async (t) => {
  const dir = await tempDir(t)
  const empty = join(dir, 'empty.toml')
  await writeFile(empty, '# nothing yet\n')
  const r = await writeSnapshotterConfig(empty, { address: SOCK })
  assert.equal(r.action, 'updated')
  assert.equal(await readFile(empty, 'utf8'), renderSnapshotterConfig({ address: SOCK }))
  assert.equal(await readFile(r.backup!, 'utf8'), '# nothing yet\n')

  await mkdir(join(dir, 'real'))
  const target = join(dir, 'real', 'config.toml')
  await writeFile(target, OPERATOR_CONFIG)
  const link = join(dir, 'config.toml')
  await symlink(target, link)
  const viaLink = await writeSnapshotterConfig(link, { address: SOCK })
  assert.equal(viaLink.path, target)
  assert.ok((await lstat(link)).isSymbolicLink(), 'the link is still a link')
  assert.equal(await readlink(link), target)
  assert.equal(get(parse(await readFile(link, 'utf8')), 'proxy_plugins', 'rafspeer', 'address'), SOCK)
  assert.ok(viaLink.backup?.startsWith(target + '.rafspeer-backup-'))

  const dry = join(dir, 'dry.toml')
  await writeFile(dry, OPERATOR_CONFIG)
  const d = await writeSnapshotterConfig(dry, { address: SOCK, dryRun: true })
  assert.equal(d.action, 'updated')
  assert.equal(get(parse(d.content), 'proxy_plugins', 'rafspeer', 'address'), SOCK)
  assert.equal(await readFile(dry, 'utf8'), OPERATOR_CONFIG)
  assert.equal((await writeSnapshotterConfig(join(dir, 'none.toml'), { address: SOCK, dryRun: true })).action, 'created')
  assert.ok(!existsSync(join(dir, 'none.toml')))
})

test('unwrite takes our keys out and keeps the rest; a file of ours alone goes; CRI\'s snapshotter is touched only when ours', async (t) => {
  const dir = await tempDir(t)
  const file = join(dir, 'config.toml')
  await writeFile(file, OPERATOR_CONFIG)
  await writeSnapshotterConfig(file, { address: SOCK })
  const u = await unwriteSnapshotterConfig(file, { now: NOW })
  assert.equal(u.action, 'updated')
  assert.ok(u.backup !== undefined && existsSync(u.backup))
  const doc = parse(await readFile(file, 'utf8')) as TomlTable
  assert.equal(get(doc, 'proxy_plugins', 'rafspeer'), undefined)
  assert.equal(get(doc, 'proxy_plugins', 'stargz', 'type'), 'snapshot')
  assert.equal(get(doc, 'plugins', CRI, 'containerd', 'snapshotter'), undefined)
  assert.equal(get(doc, 'plugins', CRI, 'containerd', 'disable_snapshot_annotations'), undefined)
  assert.equal(get(doc, 'plugins', CRI, 'containerd', 'default_runtime_name'), 'runc')
  assert.equal(get(doc, 'plugins', CRI, 'registry', 'config_path'), '/etc/containerd/certs.d')
  assert.equal((await unwriteSnapshotterConfig(file)).action, 'unchanged')

  // someone else's CRI snapshotter stays, with its labels setting
  const other = join(dir, 'other.toml')
  await writeFile(other, `version = 2\n[proxy_plugins.rafspeer]\ntype = "snapshot"\naddress = "${SOCK}"\n[plugins."${CRI}".containerd]\nsnapshotter = "stargz"\ndisable_snapshot_annotations = false\n`)
  assert.equal((await unwriteSnapshotterConfig(other)).action, 'updated')
  const o = parse(await readFile(other, 'utf8'))
  assert.equal(get(o, 'proxy_plugins'), undefined, 'an emptied proxy_plugins table goes')
  assert.equal(get(o, 'plugins', CRI, 'containerd', 'snapshotter'), 'stargz')
  assert.equal(get(o, 'plugins', CRI, 'containerd', 'disable_snapshot_annotations'), false)

  const ours = join(dir, 'ours.toml')
  await writeSnapshotterConfig(ours, { address: SOCK })
  assert.equal((await unwriteSnapshotterConfig(ours)).action, 'removed')
  assert.ok(!existsSync(ours))
  assert.equal((await unwriteSnapshotterConfig(ours)).action, 'absent')
})

const containerdSkip = existsSync(CONTAINERD) ? undefined : `${CONTAINERD} missing (apt-get install containerd)`

/** `containerd --config FILE config dump`, parsed: the config containerd itself would run with. */
async function dump (file: string): Promise<TomlTable> {
  const { stdout } = await exec(CONTAINERD, ['--config', file, 'config', 'dump'], { timeout: 30_000, maxBuffer: 16 << 20 })
  return parse(stdout)
}

test('containerd reads what we write: the fragment alone, merged into its own `config default`, and undone', { skip: containerdSkip }, async (t) => {
  const dir = await tempDir(t)
  const fragment = join(dir, 'fragment.toml')
  await writeSnapshotterConfig(fragment, { address: SOCK })
  const f = await dump(fragment)
  assert.equal(get(f, 'proxy_plugins', 'rafspeer', 'type'), 'snapshot')
  assert.equal(get(f, 'proxy_plugins', 'rafspeer', 'address'), SOCK)
  assert.equal(get(f, 'plugins', CRI, 'containerd', 'snapshotter'), 'rafspeer')
  assert.equal(get(f, 'plugins', CRI, 'containerd', 'disable_snapshot_annotations'), false)

  const file = join(dir, 'config.toml')
  const { stdout: defaults } = await exec(CONTAINERD, ['config', 'default'], { timeout: 30_000, maxBuffer: 16 << 20 })
  // an operator's touch, which must survive: CRI reading hosts.toml files
  await writeFile(file, defaults.replace(/config_path = ""/, 'config_path = "/etc/containerd/certs.d"'))
  const before = await dump(file)
  assert.equal(get(before, 'plugins', CRI, 'containerd', 'disable_snapshot_annotations'), true, 'containerd 1.6\'s default')
  const r = await writeSnapshotterConfig(file, { address: SOCK })
  assert.equal(r.action, 'updated')
  const after = await dump(file)
  assert.equal(get(after, 'proxy_plugins', 'rafspeer', 'address'), SOCK)
  assert.equal(get(after, 'plugins', CRI, 'containerd', 'snapshotter'), 'rafspeer')
  assert.equal(get(after, 'plugins', CRI, 'containerd', 'disable_snapshot_annotations'), false)
  assert.equal(get(after, 'plugins', CRI, 'registry', 'config_path'), '/etc/containerd/certs.d')
  // everything else exactly as containerd had it
  const strip = (d: TomlTable): TomlTable => {
    const c = structuredClone(d)
    delete (get(c, 'proxy_plugins') as TomlTable).rafspeer
    const ctd = get(c, 'plugins', CRI, 'containerd') as TomlTable
    delete ctd.snapshotter
    delete ctd.disable_snapshot_annotations
    delete c.imports // containerd lists the file it read
    return c
  }
  assert.deepEqual(strip(after), strip(before))

  await unwriteSnapshotterConfig(file)
  const undone = await dump(file)
  assert.equal(get(undone, 'proxy_plugins', 'rafspeer'), undefined)
  assert.equal(get(undone, 'plugins', CRI, 'containerd', 'snapshotter'), 'overlayfs')
  assert.equal(get(undone, 'plugins', CRI, 'containerd', 'disable_snapshot_annotations'), true)
  assert.equal(get(undone, 'plugins', CRI, 'registry', 'config_path'), '/etc/containerd/certs.d')
})
