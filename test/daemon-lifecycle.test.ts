/**
 * A daemon outlives no one: `rafspeer daemon --exit-with-parent` stops (unmounting everything) when its stdin, a
 * pipe from the process that started it, closes — which the kernel does when that process dies, even by SIGKILL.
 * `rafspeer sim` starts its daemons so: a swarm run killed outright leaves no daemon and no mount behind (before,
 * eight daemons kept serving eight FUSE mounts under the run's directory).
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { after, before, describe, it } from 'node:test'
import { buildFromDirectory } from '../rafs/index.js'
import { cliArgv, mountsUnder, startDaemon } from './helpers/daemon.js'
import { eventually } from './helpers/eventually.js'
import { swarmSkipReason } from './helpers/swarm.js'

const skip = swarmSkipReason()

/** pids whose command line mentions `text` (this process excluded) */
async function processesMentioning (text: string): Promise<number[]> {
  const found: number[] = []
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue
    const cmd = await readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '')
    if (cmd.includes(text)) found.push(Number(name))
  }
  return found
}

let work: string
before(async () => { work = await mkdtemp(join(tmpdir(), 'rafspeer-lifecycle-')) })
after(async () => { if (work !== undefined) await rm(work, { recursive: true, force: true }) })

describe('a daemon that exits with its parent', () => {
  it('refuses --exit-with-parent when stdin is not a pipe, with a clear error', async () => {
    const dir = join(work, 'refuse')
    await mkdir(dir, { recursive: true })
    const cfg = join(dir, 'daemon.json')
    await writeFile(cfg, JSON.stringify({ version: 1, socket: join(dir, 'a.sock'), workDir: join(dir, 'work'), cache: { dir: join(dir, 'cache') } }))
    const proc = spawn(process.execPath, cliArgv(['daemon', '--config', cfg, '--exit-with-parent']), { stdio: ['ignore', 'pipe', 'pipe'] })
    let err = ''
    proc.stderr.on('data', (b: Buffer) => { err += b.toString() })
    const code = await new Promise<number | null>(resolve => proc.once('exit', c => resolve(c)))
    assert.equal(code, 1)
    assert.match(err, /--exit-with-parent needs stdin to be a pipe/)
    assert.equal(err.trim().split('\n').length, 1, err)
  })

  it('stdin closing stops it like SIGTERM: its mounts unmounted, exit 0', { skip }, async () => {
    const dir = join(work, 'pipe')
    const src = join(dir, 'src')
    await mkdir(src, { recursive: true })
    await writeFile(join(src, 'hello.txt'), 'hello\n')
    const blobDir = join(dir, 'blobs')
    await mkdir(blobDir)
    await buildFromDirectory(src, { bootstrap: join(dir, 'image.boot'), blobDir })
    const d = await startDaemon(dir, { prefetch: { policy: 'none' } }, { exitWithParent: true })
    try {
      const mnt = join(dir, 'mnt')
      await d.client.mount({ source: join(dir, 'image.boot'), blobDir, mountpoint: mnt, mode: 'fuse' })
      assert.equal(await readFile(join(mnt, 'hello.txt'), 'utf8'), 'hello\n')
      const exited = new Promise<number | null>(resolve => d.proc.once('exit', c => resolve(c)))
      d.proc.stdin?.end()
      assert.equal(await exited, 0, d.log())
      assert.deepEqual(await mountsUnder(dir), [])
      assert.match(d.log(), /parent gone: stopping/)
    } finally {
      await d.kill()
    }
  })
})

describe('a swarm run killed outright', { skip }, () => {
  it('SIGKILL of the process running runSwarm: its daemons stop and unmount', async () => {
    const runs = join(work, 'swarm')
    await mkdir(runs)
    const fromSources = import.meta.url.endsWith('.ts')
    const sim = fileURLToPath(new URL(fromSources ? '../sim/index.ts' : '../sim/index.js', import.meta.url))
    const polyfill = fileURLToPath(new URL(fromSources ? '../polyfill.ts' : '../polyfill.js', import.meta.url))
    const script = `await import(${JSON.stringify(polyfill)}); const { runSwarm } = await import(${JSON.stringify(sim)});
      await runSwarm({ nodes: 2, imageBytes: 8 << 20, bandwidth: 1 << 20, workDir: ${JSON.stringify(runs)} })`
    const main = join(work, 'run-swarm.mjs')
    await writeFile(main, script)
    const proc = spawn(process.execPath, [...(fromSources ? ['--import', 'tsx'] : []), main], { stdio: ['ignore', 'ignore', 'pipe'] })
    let err = ''
    proc.stderr.on('data', (b: Buffer) => { err += b.toString() })
    const exited = new Promise<void>(resolve => proc.once('exit', () => resolve()))
    try {
      // the nodes mounted and reading (1 MiB/s: the 8 MiB image takes ~12 s; erofs-lazy is two mounts a node)
      await eventually(async () => {
        if (proc.exitCode !== null) throw new Error(`runSwarm ended before its nodes mounted: ${err}`)
        assert.ok((await mountsUnder(runs)).length >= 2, err)
      }, 60_000, 200)
      assert.equal((await processesMentioning(runs)).length >= 2, true)
    } finally {
      proc.kill('SIGKILL')
      await exited
    }
    await eventually(async () => {
      assert.deepEqual(await mountsUnder(runs), [])
      assert.deepEqual(await processesMentioning(runs), [])
    }, 30_000, 200)
  })
})
