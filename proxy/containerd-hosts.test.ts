import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  HOSTS_TOML_MARKER, criConfigHint, parseMirrorUrl, registryNameProblem, removeHostsToml, writeHostsToml
} from './containerd-hosts.js'

const MIRROR = 'http://127.0.0.1:5002'

async function withDir (fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'rafspeer-hosts-'))
  try { await fn(dir) } finally { await rm(dir, { recursive: true, force: true }) }
}

let tick = 0
const clock = (): Date => new Date(Date.UTC(2030, 0, 1, 0, 0, tick++))

test('a fresh write creates one hosts.toml per registry, mirror first, docker.io served by registry-1', async () => {
  await withDir(async (dir) => {
    const hostsDir = join(dir, 'certs.d')
    const results = await writeHostsToml({ hostsDir, mirror: MIRROR, registries: ['docker.io', 'ghcr.io'] })
    assert.deepEqual(results.map(r => [r.registry, r.action]), [['docker.io', 'created'], ['ghcr.io', 'created']])
    const docker = await readFile(join(hostsDir, 'docker.io', 'hosts.toml'), 'utf8')
    assert.equal(docker, [
      HOSTS_TOML_MARKER,
      'server = "https://registry-1.docker.io"',
      '',
      '[host."http://127.0.0.1:5002"]',
      '  capabilities = ["pull", "resolve"]',
      ''
    ].join('\n'))
    assert.match(await readFile(join(hostsDir, 'ghcr.io', 'hosts.toml'), 'utf8'), /^server = "https:\/\/ghcr\.io"$/m)
    assert.equal((await stat(join(hostsDir, 'ghcr.io'))).mode & 0o777, 0o755)
    // no temp files left behind
    assert.deepEqual(await readdir(join(hostsDir, 'ghcr.io')), ['hosts.toml'])
  })
})

test('loopback registries are reached over plain http; _default has no server line', async () => {
  await withDir(async (dir) => {
    const results = await writeHostsToml({
      hostsDir: dir, mirror: 'https://mirror.example:8443/', registries: ['127.0.0.1:5000', 'localhost:5001', 'reg.example:5000'], all: true
    })
    const text = Object.fromEntries(results.map(r => [r.registry, r.content]))
    assert.match(text['127.0.0.1:5000']!, /^server = "http:\/\/127\.0\.0\.1:5000"$/m)
    assert.match(text['localhost:5001']!, /^server = "http:\/\/localhost:5001"$/m)
    assert.match(text['reg.example:5000']!, /^server = "https:\/\/reg\.example:5000"$/m)
    assert.doesNotMatch(text._default!, /server =/)
    assert.match(text._default!, /^\[host\."https:\/\/mirror\.example:8443"\]$/m)
    assert.equal(await readFile(join(dir, '_default', 'hosts.toml'), 'utf8'), text._default)
  })
})

test('someone else\'s hosts.toml is backed up once; re-runs replace only ours; remove restores it', async () => {
  await withDir(async (dir) => {
    const theirs = 'server = "https://ghcr.io"\n\n[host."https://other-mirror"]\n  capabilities = ["pull"]\n'
    await mkdir(join(dir, 'ghcr.io'))
    await writeFile(join(dir, 'ghcr.io', 'hosts.toml'), theirs)

    const [first] = await writeHostsToml({ hostsDir: dir, mirror: MIRROR, registries: ['ghcr.io'], now: clock })
    assert.equal(first!.action, 'backed-up')
    assert.equal(await readFile(first!.backup!, 'utf8'), theirs)
    assert.match(first!.backup!, /hosts\.toml\.rafspeer-backup-2030-01-01T00-00-\d\d-000Z$/)

    const [same] = await writeHostsToml({ hostsDir: dir, mirror: MIRROR, registries: ['ghcr.io'], now: clock })
    assert.equal(same!.action, 'unchanged')
    const [moved] = await writeHostsToml({ hostsDir: dir, mirror: 'http://127.0.0.1:6000', registries: ['ghcr.io'], now: clock })
    assert.equal(moved!.action, 'replaced')
    assert.equal(moved!.backup, undefined)
    const files = await readdir(join(dir, 'ghcr.io'))
    assert.equal(files.filter(f => f.includes('rafspeer-backup')).length, 1, files.join(' '))

    const [undone] = await removeHostsToml({ hostsDir: dir, registries: ['ghcr.io'] })
    assert.equal(undone!.action, 'restored')
    assert.equal(await readFile(join(dir, 'ghcr.io', 'hosts.toml'), 'utf8'), theirs)
    assert.deepEqual(await readdir(join(dir, 'ghcr.io')), ['hosts.toml'])
    const [again] = await removeHostsToml({ hostsDir: dir, registries: ['ghcr.io'] })
    assert.equal(again!.action, 'kept')
  })
})

test('remove deletes our file and its directory when there is no backup', async () => {
  await withDir(async (dir) => {
    await writeHostsToml({ hostsDir: dir, mirror: MIRROR, registries: ['docker.io'] })
    assert.deepEqual((await removeHostsToml({ hostsDir: dir, registries: ['docker.io'] })).map(r => r.action), ['removed'])
    assert.deepEqual(await readdir(dir), [])
    assert.deepEqual((await removeHostsToml({ hostsDir: dir, registries: ['docker.io'] })).map(r => r.action), ['absent'])
  })
})

test('a dry run reports what it would do and writes nothing', async () => {
  await withDir(async (dir) => {
    const results = await writeHostsToml({ hostsDir: join(dir, 'h'), mirror: MIRROR, registries: ['quay.io'], dryRun: true })
    assert.equal(results[0]!.action, 'created')
    assert.match(results[0]!.content, /^server = "https:\/\/quay\.io"$/m)
    assert.deepEqual(await readdir(dir), [])
  })
})

test('invalid mirrors and registry names are refused with every problem named', async () => {
  for (const bad of ['127.0.0.1:5002', 'ftp://mirror', 'http://mirror/v2/', 'http://mirror?x=1', 'http://u:p@mirror', 'http://mirror:99999']) {
    assert.throws(() => parseMirrorUrl(bad), { code: 'RAFSPEER_ERR_HOSTS_INVALID' }, bad)
  }
  assert.equal(parseMirrorUrl('http://127.0.0.1:5002/'), MIRROR)
  assert.equal(parseMirrorUrl('HTTPS://Mirror.Example'), 'https://mirror.example')
  for (const bad of ['Docker.io', 'docker.io/library', 'https://ghcr.io', 'ghcr.io:0', 'ghcr.io:70000', '-bad.example', '', '_DEFAULT']) {
    assert.notEqual(registryNameProblem(bad), undefined, bad)
  }
  for (const good of ['docker.io', '127.0.0.1:5000', 'localhost', '[::1]:5000', '_default', 'a-b.c-d.example:443']) {
    assert.equal(registryNameProblem(good), undefined, good)
  }
  await withDir(async (dir) => {
    await assert.rejects(writeHostsToml({ hostsDir: dir, mirror: MIRROR, registries: ['Docker.io', 'ghcr.io/x'] }),
      (err: Error & { code?: string }) => err.code === 'RAFSPEER_ERR_HOSTS_INVALID' && /Docker\.io/.test(err.message) && /ghcr\.io\/x/.test(err.message))
    await assert.rejects(writeHostsToml({ hostsDir: dir, mirror: MIRROR, registries: [] }), { code: 'RAFSPEER_ERR_HOSTS_INVALID' })
    await assert.rejects(writeHostsToml({ hostsDir: dir, mirror: 'http://m/x', registries: ['docker.io'] }), { code: 'RAFSPEER_ERR_HOSTS_INVALID' })
    assert.deepEqual(await readdir(dir), [])
  })
})

test('a hosts dir that cannot be written fails with RAFSPEER_ERR_HOSTS_WRITE and the cause', async () => {
  await withDir(async (dir) => {
    const file = join(dir, 'not-a-dir')
    await writeFile(file, '')
    await assert.rejects(writeHostsToml({ hostsDir: file, mirror: MIRROR, registries: ['docker.io'] }),
      (err: Error & { code?: string }) => err.code === 'RAFSPEER_ERR_HOSTS_WRITE' && err.cause !== undefined)
  })
})

test('the CRI hint names the hosts dir and tells ctr users about --hosts-dir', () => {
  const hint = criConfigHint('/etc/containerd/certs.d')
  assert.match(hint, /^\[plugins\."io\.containerd\.grpc\.v1\.cri"\.registry\]\n {2}config_path = "\/etc\/containerd\/certs\.d"$/m)
  assert.match(hint, /--hosts-dir \/etc\/containerd\/certs\.d/)
})
