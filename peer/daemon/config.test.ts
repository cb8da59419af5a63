import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ConfigError, DEFAULT_DAEMON_CONFIG, loadDaemonConfig, parseDaemonConfig } from './config.js'

async function withFile (content: string, f: (path: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'rafspeer-config-'))
  try {
    const path = join(dir, 'config.json')
    await writeFile(path, content)
    await f(path)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

describe('daemon config', () => {
  it('gives every default for an absent file', async () => {
    const c = await loadDaemonConfig(undefined)
    assert.deepEqual(c, {
      version: 1,
      socket: '/run/rafspeer/rafspeer.sock',
      workDir: '/var/lib/rafspeer',
      cache: { dir: '/var/lib/rafspeer/cache', capBytes: 0 },
      fetch: { amplifyBytes: 1 << 20, concurrency: 8, timeoutMs: 10_000, retries: 2, deadlineMs: 30_000, readaheadBytes: 4 << 20, downloadBytesPerSecond: 0 },
      p2p: {
        enabled: false,
        listen: ['/ip4/0.0.0.0/tcp/0'],
        keyFile: '/var/lib/rafspeer/peer.key',
        maxConcurrentUploads: 16,
        uploadBytesPerSecond: 0,
        maxHolders: 3,
        hedgeAfterMs: 300,
        requestTimeoutMs: 3_000,
        banThreshold: 3,
        claimWaitMs: 20_000,
        directory: 'blobs',
        maxConnections: 256,
        idleConnectionMs: 30_000
      },
      scheduler: { embedded: false, zone: '', resolveTimeoutMs: 200, heartbeatMs: 5_000 },
      prefetch: { policy: 'table', bandwidthBytesPerSecond: 0 },
      mount: { defaultMode: 'auto', directRead: 'auto' },
      fuse: { kernelCache: true, entryTimeoutS: 86_400, attrTimeoutS: 86_400, allowOther: true },
      lazyKernel: { threads: 4, maxReadBytes: 1 << 20, directIo: false },
      registry: { plainHttp: 'auto' },
      proxy: { upstreams: {}, restrictUpstreams: false, authTtlMs: 60_000, pieceBytes: 4 << 20, upstreamTimeoutMs: 10_000, stallMs: 30_000 },
      snapshotter: { mode: 'auto', root: '/var/lib/rafspeer/snapshotter', containerdAddress: '/run/containerd/containerd.sock', idleUnmountMs: 30_000 },
      metrics: {},
      log: { level: 'info', format: 'json' },
      runtime: { heapGrowingPercent: 300 }
    })
    assert.deepEqual(DEFAULT_DAEMON_CONFIG, c)
  })

  it('takes the registry mirror: listen address, upstreams, piece size; refuses bad ones all at once', () => {
    const c = parseDaemonConfig({ proxy: { listen: '127.0.0.1:5002', defaultUpstream: 'docker.io', upstreams: { 'reg.lan:5000': { plainHttp: true } }, pieceBytes: '1MiB' } })
    assert.equal(c.proxy.listen, '127.0.0.1:5002')
    assert.equal(c.proxy.defaultUpstream, 'docker.io')
    assert.equal(c.proxy.upstreams['reg.lan:5000']?.plainHttp, true)
    assert.equal(c.proxy.pieceBytes, 1 << 20)
    assert.throws(() => parseDaemonConfig({ proxy: { listen: 'nope', defaultUpstream: 'http://docker.io', pieceBytes: 100_000, extra: 1 } }), (err: ConfigError) => {
      assert.deepEqual(err.problems.map(p => p.split(':')[0]).sort(), ['proxy.defaultUpstream', 'proxy.extra', 'proxy.listen', 'proxy.pieceBytes'])
      return true
    })
  })

  it('takes the snapshotter: socket, root under workDir unless told, mode; refuses a socket path too long for sun_path', () => {
    const c = parseDaemonConfig({ workDir: '/srv/rs', snapshotter: { address: '/run/rafspeer/snapshotter.sock', mode: 'fuse' } })
    assert.equal(c.snapshotter.address, '/run/rafspeer/snapshotter.sock')
    assert.equal(c.snapshotter.root, '/srv/rs/snapshotter')
    assert.equal(c.snapshotter.mode, 'fuse')
    const d = parseDaemonConfig({ snapshotter: { address: '/s.sock', daemonSocket: '/r.sock', imageServiceAddress: '/i.sock', containerdAddress: '/c.sock' } })
    assert.deepEqual([d.snapshotter.daemonSocket, d.snapshotter.imageServiceAddress, d.snapshotter.containerdAddress], ['/r.sock', '/i.sock', '/c.sock'])
    assert.throws(() => parseDaemonConfig({ snapshotter: { address: '/' + 'x'.repeat(120), mode: 'lazy', imageServiceAddress: '/' + 'y'.repeat(120) } }), (err: ConfigError) => {
      assert.deepEqual(err.problems.map(p => p.split(':')[0]).sort(), ['snapshotter.address', 'snapshotter.imageServiceAddress', 'snapshotter.mode'])
      return true
    })
  })

  it('turns P2P on with a scheduler; checks multiaddrs', () => {
    const id = '12D3KooWSEXxo9PoqLdBzDU5FJ4gCRA7fvpHssWd3SLkquxbsnck'
    const c = parseDaemonConfig({ workDir: '/srv/r', scheduler: { address: `/ip4/10.0.0.5/tcp/8002/p2p/${id}` }, p2p: { uploadBytesPerSecond: '100MiB' } })
    assert.equal(c.p2p.enabled, true)
    assert.equal(c.p2p.keyFile, '/srv/r/peer.key')
    assert.equal(c.p2p.uploadBytesPerSecond, 100 << 20)
    assert.equal(parseDaemonConfig({ scheduler: { embedded: true } }).p2p.enabled, true)
    assert.equal(parseDaemonConfig({ scheduler: { embedded: true }, p2p: { enabled: false } }).p2p.enabled, false)
    assert.throws(() => parseDaemonConfig({ scheduler: { address: '/ip4/10.0.0.5/tcp/8002' }, p2p: { listen: ['tcp://x'] } }), (err: ConfigError) => {
      assert.equal(err.problems.length, 2)
      assert.match(err.problems.join('\n'), /scheduler\.address: .*naming its peer/)
      assert.match(err.problems.join('\n'), /p2p\.listen\.0: .*not a multiaddr/)
      return true
    })
  })

  it('takes one scheduler address or a list; refuses a bad one by its index, and an empty list', () => {
    const id = '12D3KooWSEXxo9PoqLdBzDU5FJ4gCRA7fvpHssWd3SLkquxbsnck'
    const a = `/ip4/10.0.0.5/tcp/8002/p2p/${id}`
    const b = `/ip4/10.0.0.6/tcp/8002/p2p/${id}`
    assert.deepEqual(parseDaemonConfig({ scheduler: { address: a } }).scheduler.address, [a])
    assert.deepEqual(parseDaemonConfig({ scheduler: { address: [a, b] } }).scheduler.address, [a, b])
    assert.equal(parseDaemonConfig({ scheduler: { address: [a, b] } }).p2p.enabled, true)
    assert.throws(() => parseDaemonConfig({ scheduler: { address: [a, '/ip4/10.0.0.6/tcp/8002'] } }), (err: ConfigError) => {
      assert.deepEqual(err.problems.length, 1)
      assert.match(err.problems[0]!, /^scheduler\.address\.1: .*naming its peer/)
      return true
    })
    assert.throws(() => parseDaemonConfig({ scheduler: { address: [] } }), /scheduler\.address: an empty list/)
    assert.throws(() => parseDaemonConfig({ scheduler: { address: 7 } }), /scheduler\.address: expected a scheduler multiaddr or a list/)
  })

  it('keeps an embedded scheduler\'s directory on Redis: seeds checked; only embedded, only at blob level', () => {
    const c = parseDaemonConfig({ scheduler: { embedded: true, redis: ['10.0.0.1:7000', 'redis://u:p@10.0.0.2:7001'] }, p2p: { directory: 'blobs' } })
    assert.deepEqual(c.scheduler.redis, ['10.0.0.1:7000', 'redis://u:p@10.0.0.2:7001'])
    assert.equal(DEFAULT_DAEMON_CONFIG.scheduler.redis, undefined)
    assert.throws(() => parseDaemonConfig({ scheduler: { embedded: true, redis: ['http://10.0.0.1', '10.0.0.2:7000/3'] }, p2p: { directory: 'blobs' } }), (err: ConfigError) => {
      assert.deepEqual(err.problems.map(p => p.split(':')[0]), ['scheduler.redis.0', 'scheduler.redis.1'])
      assert.match(err.problems[0]!, /not redis:\/\//)
      return true
    })
    assert.throws(() => parseDaemonConfig({ scheduler: { redis: [] } }), /scheduler\.redis: an empty list/)
    assert.throws(() => parseDaemonConfig({ scheduler: { redis: ['10.0.0.1:7000'] }, p2p: { directory: 'chunks' } }), (err: ConfigError) => {
      assert.equal(err.problems.length, 2)
      assert.match(err.problems[0]!, /^scheduler\.redis: only an embedded scheduler/)
      assert.match(err.problems[1]!, /^scheduler\.redis: .*p2p\.directory "blobs"/)
      return true
    })
  })

  it('takes the connection limits and the per-neighbour upload share; refuses out-of-range ones at once', () => {
    const c = parseDaemonConfig({ p2p: { maxConnections: 64, maxConnectionsPerIp: 4, idleConnectionMs: 0, maxUploadsPerPeer: 2, maxUrgentUploads: 0 } })
    assert.equal(c.p2p.maxUrgentUploads, 0)
    assert.equal(parseDaemonConfig({}).p2p.maxUrgentUploads, undefined, 'absent: the chunk server takes a quarter of maxConcurrentUploads')
    assert.equal(c.p2p.maxConnections, 64)
    assert.equal(c.p2p.maxConnectionsPerIp, 4)
    assert.equal(c.p2p.idleConnectionMs, 0)
    assert.equal(c.p2p.maxUploadsPerPeer, 2)
    assert.throws(() => parseDaemonConfig({ p2p: { maxConnections: 2, maxConnectionsPerIp: 0, idleConnectionMs: -1, maxUploadsPerPeer: 1.5, maxUrgentUploads: -1 } }), (err: ConfigError) => {
      assert.deepEqual(err.problems.map(p => p.split(':')[0]).sort(), ['p2p.idleConnectionMs', 'p2p.maxConnections', 'p2p.maxConnectionsPerIp', 'p2p.maxUploadsPerPeer', 'p2p.maxUrgentUploads'])
      return true
    })
  })

  it('puts the cache under workDir unless told otherwise', () => {
    assert.equal(parseDaemonConfig({ workDir: '/srv/r' }).cache.dir, '/srv/r/cache')
    assert.equal(parseDaemonConfig({ workDir: '/srv/r', cache: { dir: '/fast/c' } }).cache.dir, '/fast/c')
  })

  it('parses sizes with units', async () => {
    await withFile(JSON.stringify({ cache: { capBytes: '20GiB' }, fetch: { amplifyBytes: '0x100000' }, prefetch: { bandwidthBytesPerSecond: '50MiB' } }), async (path) => {
      const c = await loadDaemonConfig(path)
      assert.equal(c.cache.capBytes, 20 * 2 ** 30)
      assert.equal(c.fetch.amplifyBytes, 1 << 20)
      assert.equal(c.prefetch.bandwidthBytesPerSecond, 50 * 2 ** 20)
    })
  })

  it('lays overrides over the file', async () => {
    await withFile(JSON.stringify({ socket: '/tmp/a.sock', log: { level: 'warn', format: 'text' } }), async (path) => {
      const c = await loadDaemonConfig(path, { socket: '/tmp/b.sock', log: { level: 'debug' }, cache: { dir: undefined } })
      assert.equal(c.socket, '/tmp/b.sock')
      assert.deepEqual(c.log, { level: 'debug', format: 'text' })
    })
  })

  it('reports every problem at once in one error', async () => {
    const raw = {
      socket: 'relative.sock',
      cache: { capBytes: '20 parsecs' },
      fetch: { concurrency: 0, retries: 1.5 },
      prefetch: { policy: 'some' },
      registry: { plainHttp: 'yes' },
      metrics: { listen: 'nowhere' },
      runtime: { heapGrowingPercent: -5 }
    }
    await withFile(JSON.stringify(raw), async (path) => {
      const err = await loadDaemonConfig(path).then(() => undefined, (e: unknown) => e)
      assert.ok(err instanceof ConfigError)
      assert.equal(err.code, 'RAFSPEER_ERR_CONFIG')
      for (const at of ['socket:', 'cache.capBytes:', 'fetch.concurrency:', 'fetch.retries:', 'prefetch.policy:', 'registry.plainHttp:', 'metrics.listen:', 'runtime.heapGrowingPercent:']) {
        assert.ok(err.message.includes(at), `${at} in ${err.message}`)
      }
      assert.equal(err.problems.length, 8)
      assert.ok(err.message.includes(path))
      assert.ok(!err.message.includes('\n'))
    })
  })

  it('rejects unknown keys, nested too', () => {
    assert.throws(() => parseDaemonConfig({ sockt: '/x', fetch: { concurency: 4 } }), (err: ConfigError) => {
      assert.deepEqual([...err.problems].sort(), ['fetch.concurency: unknown key', 'sockt: unknown key'])
      return true
    })
  })

  it('refuses a bad version, a non-object and bad JSON', async () => {
    assert.throws(() => parseDaemonConfig({ version: 2 }), /version: only version 1/)
    assert.throws(() => parseDaemonConfig([]), { code: 'RAFSPEER_ERR_CONFIG' })
    await withFile('{ "socket": ', async (path) => {
      await assert.rejects(loadDaemonConfig(path), { code: 'RAFSPEER_ERR_CONFIG', message: /not valid JSON/ })
    })
    await assert.rejects(loadDaemonConfig('/nonexistent/rafspeer.json'), { code: 'RAFSPEER_ERR_CONFIG', message: /cannot read/ })
  })

  it('is deeply frozen', () => {
    const c = parseDaemonConfig({})
    assert.ok(Object.isFrozen(c))
    assert.ok(Object.isFrozen(c.fetch))
    assert.throws(() => { (c.fetch as { concurrency: number }).concurrency = 1 }, TypeError)
  })
})
