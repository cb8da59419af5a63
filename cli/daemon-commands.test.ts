/**
 * Argument handling of `daemon`, `mount`, `umount` and `status`: parsers, the mount request sent to the daemon,
 * config overrides, where the socket is found, and commander's refusals. The commands against a real daemon are
 * covered by test/lazy-mount.test.ts.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Command } from 'commander'
import {
  addDaemonOptions, buildMountRequest, clientSocket, daemonOverrides, formatMountInfo, formatStatus, parseLogLevel, parseMode, parsePrefetch,
  registerDaemonCommands, resolveSource, type DaemonFlags
} from './daemon-commands.js'
import type { MountInfo } from '../peer/index.js'

describe('daemon command arguments', () => {
  let dir: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rafspeer-cli-daemon-'))
    await writeFile(join(dir, 'list.txt'), '/etc\n')
    await writeFile(join(dir, 'bootstrap'), '')
  })
  after(async () => { await rm(dir, { recursive: true, force: true }) })

  it('parses modes, prefetch policies and log levels', () => {
    assert.equal(parseMode('kernel'), 'kernel')
    assert.throws(() => parseMode('nfs'), { code: 'commander.invalidArgument', message: /fuse, kernel/ })
    assert.equal(parsePrefetch('table'), 'table')
    assert.deepEqual(parsePrefetch('list.txt', dir), { file: join(dir, 'list.txt') })
    assert.throws(() => parsePrefetch('tabel', dir), /neither all, none, table nor an existing file/)
    assert.equal(parseLogLevel('trace'), 'debug')
    assert.throws(() => parseLogLevel('loud'), { code: 'commander.invalidArgument' })
  })

  it('builds the mount request with absolute paths', () => {
    assert.deepEqual(buildMountRequest('localhost:5000/app:v1', 'mnt', { mode: 'fuse', plainHttp: true }, dir),
      { source: 'localhost:5000/app:v1', mountpoint: join(dir, 'mnt'), mode: 'fuse', plainHttp: true })
    assert.deepEqual(buildMountRequest('bootstrap', '/mnt/x/', { blobDir: 'blobs', prefetch: 'none' }, dir),
      { source: join(dir, 'bootstrap'), mountpoint: '/mnt/x', prefetch: 'none', blobDir: join(dir, 'blobs') })
    assert.equal(resolveSource('./nothing-here', dir), join(dir, 'nothing-here'))
    assert.equal(resolveSource('ghcr.io/org/app@sha256:' + 'a'.repeat(64), dir), 'ghcr.io/org/app@sha256:' + 'a'.repeat(64))
    assert.throws(() => buildMountRequest(' ', '/m', {}, dir), /empty/)
  })

  it('lays flags over the config', () => {
    assert.deepEqual(daemonOverrides({ socket: 's.sock', workDir: '/w', cacheDir: 'c', logLevel: 'debug' }, dir),
      { socket: join(dir, 's.sock'), workDir: '/w', cache: { dir: join(dir, 'c') }, log: { level: 'debug' } })
    assert.deepEqual(daemonOverrides({}, dir), {})
    assert.deepEqual(daemonOverrides({ scheduler: ['/ip4/1.2.3.4/tcp/8002/p2p/x'], zone: 'eu|fra', p2pListen: ['/ip4/0.0.0.0/tcp/8003'] }, dir),
      { scheduler: { address: ['/ip4/1.2.3.4/tcp/8002/p2p/x'], zone: 'eu|fra' }, p2p: { listen: ['/ip4/0.0.0.0/tcp/8003'] } })
    assert.deepEqual(daemonOverrides({ embeddedScheduler: true }, dir), { scheduler: { embedded: true } })
    const parsed = addDaemonOptions(new Command('daemon')).exitOverride()
      .parse(['--scheduler', '/ip4/1.2.3.4/tcp/8002/p2p/x', '--scheduler', '/ip4/1.2.3.5/tcp/8002/p2p/y'], { from: 'user' }).opts<DaemonFlags>()
    assert.deepEqual(daemonOverrides(parsed, dir), { scheduler: { address: ['/ip4/1.2.3.4/tcp/8002/p2p/x', '/ip4/1.2.3.5/tcp/8002/p2p/y'] } }, '--scheduler is repeatable')
    assert.deepEqual(daemonOverrides({ snapshotterAddress: 'snap.sock', daemonSocket: 'r.sock' }, dir),
      { snapshotter: { address: join(dir, 'snap.sock'), daemonSocket: join(dir, 'r.sock') } })
    assert.deepEqual(daemonOverrides({ snapshotterAddress: '/s.sock' }, dir), { snapshotter: { address: '/s.sock' } })
    assert.deepEqual(daemonOverrides({ imageServiceAddress: 'i.sock', containerdAddress: '/c.sock' }, dir),
      { snapshotter: { imageServiceAddress: join(dir, 'i.sock'), containerdAddress: '/c.sock' } })
  })

  it('finds the socket: flag, environment, config, default', async () => {
    const cfg = join(dir, 'config.json')
    await writeFile(cfg, JSON.stringify({ socket: '/run/other/r.sock' }))
    assert.equal(await clientSocket({ socket: 'a.sock', config: cfg }, { RAFSPEER_SOCKET: '/e.sock' }, dir), join(dir, 'a.sock'))
    assert.equal(await clientSocket({ config: cfg }, { RAFSPEER_SOCKET: '/e.sock' }, dir), '/e.sock')
    assert.equal(await clientSocket({ config: cfg }, {}, dir), '/run/other/r.sock')
    assert.equal(await clientSocket({}, { RAFSPEER_CONFIG: cfg }, dir), '/run/other/r.sock')
    assert.equal(await clientSocket({}, {}, dir), '/run/rafspeer/rafspeer.sock')
  })

  it('commander refuses a bad --mode and a missing mountpoint before anything runs', async () => {
    const program = (): { program: Command, err: string[] } => {
      const err: string[] = []
      const p = new Command('rafspeer').exitOverride().configureOutput({ writeErr: s => { err.push(s) }, writeOut: () => {} })
      registerDaemonCommands(p)
      return { program: p, err }
    }
    const a = program()
    await assert.rejects(a.program.parseAsync(['node', 'rafspeer', 'mount', 'reg/app:1', '/mnt', '--mode', 'nfs']), { code: 'commander.invalidArgument', exitCode: 1 })
    assert.match(a.err.join(''), /--mode.*'nfs' is invalid.*fuse, kernel/)
    const b = program()
    await assert.rejects(b.program.parseAsync(['node', 'rafspeer', 'mount', 'reg/app:1']), { code: 'commander.missingArgument' })
    const c = program()
    await assert.rejects(c.program.parseAsync(['node', 'rafspeer', 'daemon', '--log-level', 'loud']), { code: 'commander.invalidArgument' })
  })

  it('a client command without a daemon fails with one clear line', async () => {
    const p = new Command('rafspeer').exitOverride()
    registerDaemonCommands(p)
    await assert.rejects(p.parseAsync(['node', 'rafspeer', 'status', '--socket', join(dir, 'none.sock')]),
      (err: Error & { code?: string }) => err.code === 'RAFSPEER_ERR_NO_DAEMON' && /rafspeer daemon/.test(err.message) && !err.message.includes('\n'))
    await assert.rejects(p.parseAsync(['node', 'rafspeer', 'mount', 'reg/app:1', '/mnt', '--cache-dir', '/c', '--socket', join(dir, 'none.sock')]),
      /--cache-dir applies with --foreground only/)
  })

  it('renders a mount and a status', () => {
    const info: MountInfo = {
      mountpoint: '/mnt/app', source: 'reg/app:1', requestedMode: 'auto', mode: 'fuse', manifestDigest: 'sha256:' + 'c'.repeat(64),
      bootstrapDigest: 'sha256:' + 'b'.repeat(64), bootstrapPath: '/w/b', blobs: [{ blobId: 'a', chunkCount: 10, chunksReferenced: 10, chunksPresent: 3, complete: false, readFromCache: false }],
      prefetch: { state: 'running', chunksTotal: 10, chunksDone: 3, bytesTotal: 40960, bytesDone: 0 }, mountedAt: '2025-01-01T00:00:00.000Z'
    }
    const text = formatMountInfo(info)
    assert.match(text, /^mounted reg\/app:1 at \/mnt\/app \(fuse, asked auto\)/)
    assert.match(text, /3\/10 referenced chunks present/)
    const status = formatStatus(
      { state: 'RUNNING', version: '0.1.0', pid: 1, startedAt: 'then', socket: '/s', workDir: '/w', cacheDir: '/c', mounts: 1 },
      [info],
      {
        images: [{ mountpoint: '/mnt/app', source: 'reg/app:1', mode: 'fuse', readCount: 2, readBytes: 2048, readErrors: 0, readTimeouts: 0, readWaitMaxMs: 812, readHandOffs: 3, bytesBySource: { cache: 1024, registry: 1024, peer: 0 }, cacheHitRatio: 0.5, prefetch: info.prefetch, prefetchFetchedBytes: 0 }],
        totals: { mounts: 1, readCount: 2, readBytes: 2048, readErrors: 0, readTimeouts: 0, bytesBySource: { cache: 1024, registry: 1024, peer: 0 }, cacheHitRatio: 0.5 },
        cache: { blobs: 1, completeBlobs: 0, pinnedBlobs: 0, images: 1, chunksPresent: 3, bytesPresent: 3, diskBytes: 12288, capBytes: undefined, hits: 0, misses: 0, verifyFailures: 0, evictions: 0, evictedBytes: 0, writeFailures: 0, recoveryChecked: 0, recoveryBad: 0, generation: 0 },
        fetchLatencyMs: { count: 3, p50: 5, p90: 9, p99: 9, max: 9 }
      })
    assert.match(status, /daemon +RUNNING/)
    assert.match(status, /\(no cap\)/)
    assert.match(status, /\/mnt\/app +fuse +reg\/app:1 \(cccccccccccc\) +read 2\.0 KiB \(50% cache, longest wait 812 ms, 3 chunks the swarm held past the hand-off\)/)
  })
})
