/**
 * `rafspeer proxy` as an operator runs it: `configure-containerd` writes hosts.toml (keeping the operator's file as
 * a backup, harmless to re-run, undone by `unconfigure-containerd`), bad input is one clear line; `rafspeer proxy
 * --listen` serves `/v2/` until SIGTERM, then exits 0.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { runCli } from './helpers/cli.js'
import { cliArgv } from './helpers/daemon.js'

test('proxy configure-containerd writes hosts.toml, keeps the operator\'s as a backup, and is undone', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'rafspeer-cli-hosts-'))
  try {
    const hosts = join(dir, 'certs.d')
    await mkdir(join(hosts, 'ghcr.io'), { recursive: true })
    await writeFile(join(hosts, 'ghcr.io', 'hosts.toml'), 'server = "https://ghcr.io"\n# the operator\'s own\n')
    const r = await runCli(['proxy', 'configure-containerd', '--hosts-dir', hosts, '--mirror', 'http://127.0.0.1:5002', 'docker.io', 'ghcr.io', '127.0.0.1:5000'])
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /config_path = ".*certs\.d"/)
    const docker = await readFile(join(hosts, 'docker.io', 'hosts.toml'), 'utf8')
    assert.match(docker, /^server = "https:\/\/registry-1\.docker\.io"$/m)
    assert.match(docker, /^\[host\."http:\/\/127\.0\.0\.1:5002"\]$/m)
    assert.match(docker, /capabilities = \["pull", "resolve"\]/)
    assert.match(await readFile(join(hosts, '127.0.0.1:5000', 'hosts.toml'), 'utf8'), /^server = "http:\/\/127\.0\.0\.1:5000"$/m)
    const ghcr = await readdir(join(hosts, 'ghcr.io'))
    assert.equal(ghcr.filter(n => n.startsWith('hosts.toml.rafspeer-backup-')).length, 1, ghcr.join(' '))
    // again: nothing new to keep
    const again = await runCli(['proxy', 'configure-containerd', '--hosts-dir', hosts, '--mirror', 'http://127.0.0.1:5002', 'ghcr.io', '--json'])
    assert.equal(again.code, 0, again.stderr)
    assert.equal((JSON.parse(again.stdout) as { results: Array<{ action: string }> }).results[0]!.action, 'unchanged')
    const undo = await runCli(['proxy', 'unconfigure-containerd', '--hosts-dir', hosts, 'ghcr.io', 'docker.io'])
    assert.equal(undo.code, 0, undo.stderr)
    assert.match(await readFile(join(hosts, 'ghcr.io', 'hosts.toml'), 'utf8'), /the operator's own/)
    await assert.rejects(readFile(join(hosts, 'docker.io', 'hosts.toml')))
    for (const args of [['--mirror', 'ftp://x', 'docker.io'], ['--mirror', 'http://127.0.0.1:5002'], ['--mirror', 'http://127.0.0.1:5002', 'Not_A_Host!']]) {
      const bad = await runCli(['proxy', 'configure-containerd', '--hosts-dir', hosts, ...args])
      assert.equal(bad.code, 1, bad.stdout)
      assert.match(bad.stderr, /^rafspeer: error: .+/)
      assert.doesNotMatch(bad.stderr, /^\s+at /m)
    }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})

test('rafspeer proxy --listen serves /v2/ until SIGTERM, then exits 0; a bad address is one line', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'rafspeer-cli-proxy-'))
  try {
    const bad = await runCli(['proxy', '--listen', 'nowhere', '--work-dir', join(dir, 'w'), '--socket', join(dir, 's.sock')])
    assert.equal(bad.code, 1)
    assert.match(bad.stderr, /proxy\.listen: expected host:port/)
    const child = spawn(process.execPath, cliArgv(['proxy', '--listen', '127.0.0.1:0', '--upstream', '127.0.0.1:9', '--work-dir', join(dir, 'w'),
      '--socket', join(dir, 's.sock'), '--log-level', 'info']), { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    child.stderr.on('data', (b: Buffer) => { out += b.toString() })
    child.stdout.on('data', (b: Buffer) => { out += b.toString() })
    const exited = new Promise<number | null>(resolve => child.once('exit', code => { resolve(code) }))
    let url: string | undefined
    for (let i = 0; i < 300 && url === undefined; i++) {
      url = /registry mirror on (http:\/\/127\.0\.0\.1:\d+)/.exec(out)?.[1]
      if (url === undefined) await new Promise(resolve => setTimeout(resolve, 50))
    }
    assert.ok(url !== undefined, out)
    const res = await fetch(`${url}/v2/`)
    assert.equal(res.status, 200)
    assert.equal(res.headers.get('docker-distribution-api-version'), 'registry/2.0')
    // the upstream does not exist: a quick OCI error, not a hang
    const blob = await fetch(`${url}/v2/library/app/blobs/sha256:${'a'.repeat(64)}`)
    assert.equal(blob.status, 404)
    assert.match(await blob.text(), /BLOB_UNKNOWN/)
    child.kill('SIGTERM')
    assert.equal(await exited, 0, out)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})
