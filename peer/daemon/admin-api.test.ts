import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { packageVersion } from '../../base/index.js'
import type { CacheStats } from '../../cache/index.js'
import type { FetchCounters, FetchSample } from '../fetch/index.js'
import type { MountInfo, MountRequest, MountService, MountStats } from '../mount/index.js'
import { startAdminApi, type AdminApi, type DaemonInfo } from './admin-api.js'
import { AdminClient, AdminClientError } from './admin-client.js'
import { parseDaemonConfig } from './config.js'
import { Daemon } from './daemon.js'
import { DaemonMetrics, type MetricsJson } from './metrics.js'
import { slowloris, timed } from '../../test/helpers/slowloris.js'

const VERSION = packageVersion()

const coded = (code: string, message: string): Error => Object.assign(new Error(message), { code })

const counters = (): FetchCounters => ({
  bytesBySource: { cache: 0, registry: 0, peer: 0 },
  reads: 0, readBytes: 0, readTimeouts: 0, chunksFromCache: 0, chunksFetched: 0, chunksCopied: 0, chunksAmplified: 0, prefetchChunks: 0, prefetchBytes: 0, batches: 0,
  sourceAttempts: 0, retries: 0, singleFlightJoins: 0, verifyFailures: 0, cacheReadFailures: 0, cachePutFailures: 0, readWaitMaxMs: 0, readHandOffs: 0, idleExtensions: 0
})

/** An in-memory mount service: the API's collaborator (the real MountManager is tested on its own). */
class FakeMounts implements MountService {
  readonly mounted = new Map<string, { info: MountInfo, stats: MountStats }>()
  samples: Array<FetchSample & { mountpoint: string }> = []
  stopped = false
  private n = 0

  async mount (req: MountRequest, opts: { signal?: AbortSignal } = {}): Promise<MountInfo> {
    if (req.source === 'slow') {
      await new Promise((_resolve, reject) => opts.signal?.addEventListener('abort', () => reject(coded('RAFSPEER_ERR_ABORTED', 'mount aborted'))))
    }
    if (req.source === 'crash') throw new Error('unexpected failure')
    if (req.source === 'busy') throw coded('RAFSPEER_ERR_MOUNT_BUSY', `${req.mountpoint} is being mounted or unmounted right now`)
    if (req.source.startsWith('delayed:')) await new Promise(resolve => setTimeout(resolve, Number(req.source.slice(8))))
    if (req.source === 'missing') throw coded('RAFSPEER_ERR_REGISTRY_NOT_FOUND', 'manifest not found')
    if (this.mounted.has(req.mountpoint)) throw coded('RAFSPEER_ERR_ALREADY_MOUNTED', `${req.mountpoint} is already mounted`)
    const mode = req.mode === 'kernel' ? 'kernel' : 'fuse'
    const prefetch = { state: 'done' as const, chunksTotal: 4, chunksDone: 4, bytesTotal: 4096, bytesDone: 0 }
    const info: MountInfo = {
      mountpoint: req.mountpoint, source: req.source, requestedMode: req.mode ?? 'auto', mode,
      bootstrapDigest: 'sha256:' + 'b'.repeat(64), bootstrapPath: '/work/bootstrap', blobs: [{ blobId: 'a'.repeat(64), chunkCount: 8, chunksReferenced: 8, chunksPresent: 4, complete: false, readFromCache: false }],
      prefetch, mountedAt: new Date(Date.now() + this.n++).toISOString()
    }
    this.mounted.set(req.mountpoint, { info, stats: { mountpoint: req.mountpoint, source: req.source, mode, reads: 0, readBytes: 0, readErrors: 0, fetch: counters(), prefetch } })
    return info
  }

  async unmount (mountpoint: string): Promise<void> {
    if (!this.mounted.delete(mountpoint)) throw coded('RAFSPEER_ERR_NOT_MOUNTED', `nothing of ours is mounted at ${mountpoint}`)
  }

  list (): MountInfo[] { return [...this.mounted.values()].map(m => m.info) }
  stats (): MountStats[] { return [...this.mounted.values()].map(m => structuredClone(m.stats)) }
  drainFetchSamples (): Array<FetchSample & { mountpoint: string }> { const s = this.samples; this.samples = []; return s }
  async stop (): Promise<void> { this.stopped = true; this.mounted.clear() }

  /** Simulates reads on a mount. */
  read (mountpoint: string, bytes: number, fromCache: number): void {
    const s = this.mounted.get(mountpoint)!.stats
    s.reads++
    s.readBytes += bytes
    s.fetch.reads++
    s.fetch.readBytes += bytes
    s.fetch.bytesBySource.cache += fromCache
    s.fetch.bytesBySource.registry += bytes - fromCache
  }
}

const cacheStats = (): CacheStats => ({
  blobs: 2, completeBlobs: 1, pinnedBlobs: 0, images: 1, chunksPresent: 10, bytesPresent: 40_000, diskBytes: 40_960,
  capBytes: 1 << 30, hits: 7, misses: 3, verifyFailures: 1, evictions: 0, evictedBytes: 0, writeFailures: 0,
  recoveryChecked: 0, recoveryBad: 0, generation: 1
})

interface Raw { status: number, headers: Record<string, string | string[] | undefined>, body: string }

/** A raw HTTP call over the socket, for what the client would never send. */
async function raw (socketPath: string, method: string, path: string, body?: Buffer | string, headers: Record<string, string> = {}): Promise<Raw> {
  return await new Promise((resolve, reject) => {
    const req = request({ socketPath, method, path, agent: false, headers }, res => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => { text += c })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }))
    })
    req.on('error', reject)
    req.end(body)
  })
}

async function tcpGet (address: string, path: string): Promise<Raw> {
  const res = await fetch(`http://${address}${path}`)
  return { status: res.status, headers: Object.fromEntries(res.headers), body: await res.text() }
}

/** Every line of a Prometheus text exposition is a comment or `name{labels} value`. */
function parsePrometheus (text: string): Array<{ name: string, labels: string, value: number }> {
  const out = []
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('# HELP ') || line.startsWith('# TYPE ')) continue
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$/.exec(line)
    assert.ok(m !== null, `not a sample line: ${line}`)
    const value = m[3] === '+Inf' ? Infinity : Number(m[3])
    // prom-client writes NaN as `Nan`; Prometheus parses floats case-insensitively
    assert.ok(!Number.isNaN(value) || m[3]!.toLowerCase() === 'nan', `bad value in ${line}`)
    out.push({ name: m[1]!, labels: m[2] ?? '', value })
  }
  return out
}

const sample = (text: string, name: string, labels = ''): number | undefined =>
  parsePrometheus(text).find(s => s.name === name && s.labels === labels)?.value

describe('admin API', () => {
  let dir: string
  let socket: string
  let service: FakeMounts
  let api: AdminApi
  let client: AdminClient
  let state: DaemonInfo['state']

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rafspeer-api-'))
    socket = join(dir, 'run', 'rafspeer.sock')
    service = new FakeMounts()
    state = 'RUNNING'
    const daemonInfo = (): DaemonInfo => ({
      state, version: VERSION, pid: process.pid, startedAt: '2025-01-01T00:00:00.000Z', socket, workDir: dir, cacheDir: join(dir, 'cache'), mounts: service.list().length
    })
    const metrics = new DaemonMetrics({ service, cacheStats }, { defaultMetrics: true })
    api = await startAdminApi({ service, cacheStats, daemonInfo, metrics }, { socket, tcp: '127.0.0.1:0' })
    client = new AdminClient(socket)
  })

  after(async () => {
    await api.close()
    await rm(dir, { recursive: true, force: true })
  })

  it('creates the socket directory and makes the socket 0600', async () => {
    const st = await stat(socket)
    assert.ok(st.isSocket())
    assert.equal(st.mode & 0o777, 0o600)
  })

  it('GET /api/v1/daemon', async () => {
    const info = await client.daemon()
    assert.equal(info.state, 'RUNNING')
    assert.equal(info.version, VERSION)
    assert.equal(info.pid, process.pid)
    assert.equal(info.socket, socket)
    assert.equal(info.mounts, 0)
  })

  it('mounts, lists and unmounts', async () => {
    const info = await client.mount({ source: 'localhost:5000/app:v1', mountpoint: '/mnt/app', mode: 'fuse', prefetch: { paths: ['/etc'] } })
    assert.equal(info.mountpoint, '/mnt/app')
    assert.equal(info.mode, 'fuse')
    const r = await raw(socket, 'POST', '/api/v1/mounts', JSON.stringify({ source: 'x', mountpoint: '/mnt/b//c/', plainHttp: 'auto', credentials: { username: 'u', password: 'pw-not-echoed' } }))
    assert.equal(r.status, 201)
    assert.doesNotMatch(r.body, /pw-not-echoed/)
    assert.equal(JSON.parse(r.body).mountpoint, '/mnt/b/c/')
    assert.deepEqual((await client.mounts()).map(m => m.mountpoint), ['/mnt/app', '/mnt/b/c/'])
    assert.equal((await client.daemon()).mounts, 2)
    const del = await raw(socket, 'DELETE', '/api/v1/mounts?mountpoint=%2Fmnt%2Fb%2Fc%2F')
    assert.equal(del.status, 204)
    assert.equal(del.body, '')
    await client.unmount('/mnt/app')
    assert.deepEqual(await client.mounts(), [])
  })

  it('maps error codes to statuses', async () => {
    await client.mount({ source: 'a', mountpoint: '/mnt/dup' })
    await assert.rejects(client.mount({ source: 'a', mountpoint: '/mnt/dup' }),
      (err: AdminClientError) => err.code === 'RAFSPEER_ERR_ALREADY_MOUNTED' && err.status === 409 && /already mounted/.test(err.message))
    await assert.rejects(client.unmount('/mnt/nothing'), { code: 'RAFSPEER_ERR_NOT_MOUNTED', status: 404 })
    await assert.rejects(client.mount({ source: 'missing', mountpoint: '/mnt/m' }), { code: 'RAFSPEER_ERR_REGISTRY_NOT_FOUND', status: 500, message: 'manifest not found' })
    await assert.rejects(client.mount({ source: 'crash', mountpoint: '/mnt/m' }), { code: 'RAFSPEER_ERR_INTERNAL', status: 500, message: 'unexpected failure' })
    await assert.rejects(client.mount({ source: 'busy', mountpoint: '/mnt/m' }), { code: 'RAFSPEER_ERR_MOUNT_BUSY', status: 409 })
    await client.unmount('/mnt/dup')
  })

  it('validates mount requests, naming every problem', async () => {
    const r = await raw(socket, 'POST', '/api/v1/mounts', JSON.stringify({ source: '', mountpoint: 'mnt/rel', mode: 'nfs', prefetch: { file: 'list.txt' }, extra: 1 }))
    assert.equal(r.status, 400)
    const e = JSON.parse(r.body) as { code: string, message: string }
    assert.equal(e.code, 'RAFSPEER_ERR_BAD_REQUEST')
    for (const k of ['source', 'mountpoint', 'mode', 'prefetch', 'extra']) assert.ok(e.message.includes(k), `${k} in ${e.message}`)
    for (const body of ['[]', '"x"', '{"mountpoint":"/m"}', '{"source":1,"mountpoint":"/m"}', '{"source":"s","mountpoint":"/m","plainHttp":"yes"}',
      '{"source":"s","mountpoint":"/m","credentials":{"username":"u"}}', '{"source":"s","mountpoint":"/m","credentials":{"username":"","password":"p"}}',
      '{"source":"s","mountpoint":"/m","credentials":{"username":"u","password":"p","token":"t"}}']) {
      assert.equal((await raw(socket, 'POST', '/api/v1/mounts', body)).status, 400, body)
    }
    assert.equal((await raw(socket, 'DELETE', '/api/v1/mounts')).status, 400)
    assert.equal((await raw(socket, 'DELETE', '/api/v1/mounts?mountpoint=rel')).status, 400)
  })

  it('answers malformed JSON with 400 and keeps serving', async () => {
    const r = await raw(socket, 'POST', '/api/v1/mounts', '{"source": "a", mountpoint')
    assert.equal(r.status, 400)
    assert.match(JSON.parse(r.body).message, /not JSON/)
    assert.equal((await client.daemon()).state, 'RUNNING')
  })

  it('answers unknown routes with 404 and wrong methods with 405', async () => {
    const r404 = await raw(socket, 'GET', '/api/v9/nothing')
    assert.equal(r404.status, 404)
    assert.equal(JSON.parse(r404.body).code, 'RAFSPEER_ERR_NOT_FOUND')
    const r405 = await raw(socket, 'PUT', '/api/v1/daemon', '{}')
    assert.equal(r405.status, 405)
    assert.equal(r405.headers.allow, 'GET')
    assert.equal(JSON.parse(r405.body).code, 'RAFSPEER_ERR_METHOD_NOT_ALLOWED')
    assert.equal((await raw(socket, 'PATCH', '/api/v1/mounts')).headers.allow, 'GET, POST, DELETE')
  })

  it('refuses bodies over 1 MiB and keeps serving', async () => {
    const big = Buffer.alloc(2 << 20, 0x20)
    const r = await raw(socket, 'POST', '/api/v1/mounts', big)
    assert.equal(r.status, 413)
    assert.equal(JSON.parse(r.body).code, 'RAFSPEER_ERR_BODY_TOO_LARGE')
    // far too large: answered (or cut) at once, never read into memory
    const huge = await raw(socket, 'POST', '/api/v1/mounts', undefined, { 'content-length': String(1 << 30) }).catch((err: Error) => err)
    if (!(huge instanceof Error)) assert.equal(huge.status, 413)
    assert.equal((await client.daemon()).state, 'RUNNING')
  })

  it('serves Prometheus text with rafspeer_ metrics and a latency histogram', async () => {
    await client.mount({ source: 'reg/app:1', mountpoint: '/mnt/p' })
    service.read('/mnt/p', 1000, 250)
    service.samples.push({ mountpoint: '/mnt/p', source: 'registry', ms: 42, chunks: 2, bytes: 2000, ok: true },
      { mountpoint: '/mnt/p', source: 'peer:12D3KooW', ms: 3, chunks: 1, bytes: 1000, ok: true },
      { mountpoint: '/mnt/p', source: 'registry', ms: 1500, chunks: 1, bytes: 1000, ok: false })
    const text = await client.prometheus()
    parsePrometheus(text)
    assert.match(text, /# TYPE rafspeer_read_bytes_total counter/)
    assert.match(text, /# TYPE rafspeer_fetch_duration_seconds histogram/)
    assert.match(text, /process_cpu_user_seconds_total/)
    const mp = '{mountpoint="/mnt/p"}'
    assert.equal(sample(text, 'rafspeer_reads_total', mp), 1)
    assert.equal(sample(text, 'rafspeer_read_bytes_total', mp), 1000)
    assert.equal(sample(text, 'rafspeer_fetched_bytes_total', '{mountpoint="/mnt/p",source="cache"}'), 250)
    assert.equal(sample(text, 'rafspeer_fetched_bytes_total', '{mountpoint="/mnt/p",source="registry"}'), 750)
    assert.equal(sample(text, 'rafspeer_cache_hit_ratio', mp), 0.25)
    assert.equal(sample(text, 'rafspeer_mounts', '{mode="fuse"}'), 1)
    assert.equal(sample(text, 'rafspeer_mounts', '{mode="kernel"}'), 0)
    assert.equal(sample(text, 'rafspeer_cache_bytes'), 40_960)
    assert.equal(sample(text, 'rafspeer_cache_capacity_bytes'), 1 << 30)
    assert.equal(sample(text, 'rafspeer_cache_verify_failures_total'), 1)
    assert.equal(sample(text, 'rafspeer_prefetch_chunks_done', mp), 4)
    assert.equal(sample(text, 'rafspeer_fetch_duration_seconds_bucket', '{le="0.05",source="registry",outcome="ok"}'), 1)
    assert.equal(sample(text, 'rafspeer_fetch_duration_seconds_bucket', '{le="+Inf",source="registry",outcome="error"}'), 1)
    assert.equal(sample(text, 'rafspeer_fetch_duration_seconds_count', '{source="peer",outcome="ok"}'), 1)

    // counters follow the service between scrapes, and restart with a new mount at the same place
    service.read('/mnt/p', 500, 500)
    const text2 = await client.prometheus()
    assert.equal(sample(text2, 'rafspeer_read_bytes_total', mp), 1500)
    assert.equal(sample(text2, 'rafspeer_fetch_duration_seconds_count', '{source="peer",outcome="ok"}'), 1)
    await client.unmount('/mnt/p')
    assert.equal(sample(await client.prometheus(), 'rafspeer_read_bytes_total', mp), undefined)
    await client.mount({ source: 'reg/app:1', mountpoint: '/mnt/p' })
    service.read('/mnt/p', 10, 0)
    assert.equal(sample(await client.prometheus(), 'rafspeer_read_bytes_total', mp), 10)
    await client.unmount('/mnt/p')
  })

  it('serves the metrics JSON view', async () => {
    await client.mount({ source: 'reg/j:1', mountpoint: '/mnt/j', mode: 'kernel' })
    service.read('/mnt/j', 4000, 1000)
    for (let i = 1; i <= 100; i++) service.samples.push({ mountpoint: '/mnt/j', source: 'registry', ms: i, chunks: 1, bytes: 1, ok: true })
    const m: MetricsJson = await client.metricsJson()
    assert.deepEqual(m.images, [{
      mountpoint: '/mnt/j', source: 'reg/j:1', mode: 'kernel', readCount: 1, readBytes: 4000, readErrors: 0, readTimeouts: 0, readWaitMaxMs: 0, readHandOffs: 0,
      bytesBySource: { cache: 1000, registry: 3000, peer: 0 }, cacheHitRatio: 0.25,
      prefetch: { state: 'done', chunksTotal: 4, chunksDone: 4, bytesTotal: 4096, bytesDone: 0 }, prefetchFetchedBytes: 0
    }])
    assert.deepEqual(m.totals, { mounts: 1, readCount: 1, readBytes: 4000, readErrors: 0, readTimeouts: 0, bytesBySource: { cache: 1000, registry: 3000, peer: 0 }, cacheHitRatio: 0.25 })
    assert.deepEqual(m.cache, cacheStats())
    // earlier samples went to Prometheus scrapes' window too: the window holds the latest ones
    assert.equal(m.fetchLatencyMs.max, 1500)
    assert.ok(m.fetchLatencyMs.count >= 100)
    assert.ok(m.fetchLatencyMs.p50 >= 40 && m.fetchLatencyMs.p50 <= 60, JSON.stringify(m.fetchLatencyMs))
    await client.unmount('/mnt/j')
  })

  it('serves only /metrics over TCP', async () => {
    assert.ok(api.tcpAddress !== undefined)
    const r = await tcpGet(api.tcpAddress, '/metrics')
    assert.equal(r.status, 200)
    assert.match(String(r.headers['content-type']), /text\/plain/)
    assert.match(r.body, /rafspeer_mounts/)
    assert.equal((await tcpGet(api.tcpAddress, '/api/v1/daemon')).status, 404)
  })

  it('refuses a second daemon on a live socket', async () => {
    const metrics = new DaemonMetrics({ service, cacheStats }, { defaultMetrics: false })
    await assert.rejects(startAdminApi({ service, cacheStats, daemonInfo: () => { throw new Error('unused') }, metrics }, { socket }),
      { code: 'RAFSPEER_ERR_DAEMON_RUNNING', message: /another rafspeer daemon is listening/ })
    assert.equal((await client.daemon()).state, 'RUNNING')
  })

  it('refuses mounts while stopping', async () => {
    state = 'STOPPING'
    try {
      await assert.rejects(client.mount({ source: 'a', mountpoint: '/mnt/s' }), { code: 'RAFSPEER_ERR_DAEMON_STOPPING', status: 503 })
    } finally { state = 'RUNNING' }
  })
})

describe('admin API socket handling', () => {
  let dir: string
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'rafspeer-sock-')) })
  after(async () => { await rm(dir, { recursive: true, force: true }) })

  const start = async (socket: string): Promise<AdminApi> => {
    const service = new FakeMounts()
    const metrics = new DaemonMetrics({ service, cacheStats }, { defaultMetrics: false })
    const daemonInfo = (): DaemonInfo => ({ state: 'RUNNING', version: VERSION, pid: process.pid, startedAt: '', socket, workDir: dir, cacheDir: dir, mounts: 0 })
    return await startAdminApi({ service, cacheStats, daemonInfo, metrics }, { socket })
  }

  it('replaces a stale socket file left by a dead daemon', async () => {
    const socket = join(dir, 'stale.sock')
    // a process that listens and dies without cleaning up
    const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(socket)}, () => process.kill(process.pid, 'SIGKILL'))`])
    await new Promise(resolve => child.on('exit', resolve))
    assert.ok(existsSync(socket), 'the dead process left its socket')
    const api = await start(socket)
    try {
      assert.equal((await new AdminClient(socket).daemon()).state, 'RUNNING')
    } finally { await api.close() }
    assert.ok(!existsSync(socket), 'close removes the socket')
  })

  it('refuses to replace a file that is not a socket', async () => {
    const socket = join(dir, 'file.sock')
    await writeFile(socket, 'precious')
    await assert.rejects(start(socket), { code: 'RAFSPEER_ERR_SOCKET_IN_USE' })
  })

  it('tells the client to start a daemon when none answers', async () => {
    await assert.rejects(new AdminClient(join(dir, 'none.sock')).daemon(),
      (err: AdminClientError) => err.code === 'RAFSPEER_ERR_NO_DAEMON' && err.message.includes('rafspeer daemon'))
  })

  it('aborts a pending mount when closing', async () => {
    const socket = join(dir, 'close.sock')
    const api = await start(socket)
    const pending = new AdminClient(socket).mount({ source: 'slow', mountpoint: '/mnt/slow' }).then(() => undefined, (e: unknown) => e)
    await new Promise(resolve => setTimeout(resolve, 50))
    await api.close()
    const err = await pending
    assert.ok(err instanceof AdminClientError, String(err))
  })
})

describe('admin API under slow clients', () => {
  const HEADERS_TIMEOUT_MS = 1_000
  /** what the server's deadline check may add (a quarter of the deadline), plus a loaded machine's scheduling */
  const MARGIN_MS = 2_000
  let dir: string
  let socket: string
  let api: AdminApi

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rafspeer-api-slow-'))
    socket = join(dir, 'slow.sock')
    const service = new FakeMounts()
    const metrics = new DaemonMetrics({ service, cacheStats }, { defaultMetrics: false })
    const daemonInfo = (): DaemonInfo => ({ state: 'RUNNING', version: VERSION, pid: process.pid, startedAt: '', socket, workDir: dir, cacheDir: dir, mounts: 0 })
    api = await startAdminApi({ service, cacheStats, daemonInfo, metrics },
      { socket, tcp: '127.0.0.1:0', headersTimeoutMs: HEADERS_TIMEOUT_MS, requestTimeoutMs: HEADERS_TIMEOUT_MS })
  })
  after(async () => {
    await api.close()
    await rm(dir, { recursive: true, force: true })
  })

  const closedInTime = (r: Awaited<ReturnType<typeof slowloris>['done']>): void => {
    assert.equal(r.stillOpen, 0)
    assert.equal(r.closedAfterMs.length, r.sockets)
    assert.ok(r.closedAfterMs[0]! >= HEADERS_TIMEOUT_MS * 0.9, `closed before the deadline: ${r.closedAfterMs[0]} ms`)
    assert.ok(r.closedAfterMs.at(-1)! <= HEADERS_TIMEOUT_MS + MARGIN_MS, `closed late: ${r.closedAfterMs.at(-1)} ms`)
    assert.deepEqual(Object.keys(r.answers), ['HTTP/1.1 408 Request Timeout'])
  }

  it('slowloris on the Unix socket: every socket closed within the headers timeout, the API answers meanwhile', async t => {
    const attack = slowloris({ path: socket }, { sockets: 50, dripMs: 200, giveUpMs: HEADERS_TIMEOUT_MS + 10_000, head: 'GET /api/v1/daemon HTTP/1.1\r\nHost: x\r\n' })
    await attack.connected
    const honest = await timed(async () => await new AdminClient(socket).daemon())
    assert.equal(honest.value.state, 'RUNNING')
    const r = await attack.done
    t.diagnostic(`unix socket: 50 slowloris sockets closed after ${Math.round(r.closedAfterMs[0]!)}..${Math.round(r.closedAfterMs.at(-1)!)} ms ` +
      `(headers timeout ${HEADERS_TIMEOUT_MS} ms); honest GET /api/v1/daemon during the attack: ${honest.ms.toFixed(1)} ms`)
    closedInTime(r)
  })

  it('slowloris on the TCP /metrics listener: every socket closed within the headers timeout, /metrics answers meanwhile', async t => {
    const [host, port] = [api.tcpAddress!.slice(0, api.tcpAddress!.lastIndexOf(':')), Number(api.tcpAddress!.split(':').pop())]
    const attack = slowloris({ port, host }, { sockets: 50, dripMs: 200, giveUpMs: HEADERS_TIMEOUT_MS + 10_000, head: 'GET /metrics HTTP/1.1\r\nHost: x\r\n' })
    await attack.connected
    const honest = await timed(async () => await tcpGet(api.tcpAddress!, '/metrics'))
    assert.equal(honest.value.status, 200)
    const r = await attack.done
    t.diagnostic(`tcp /metrics: 50 slowloris sockets closed after ${Math.round(r.closedAfterMs[0]!)}..${Math.round(r.closedAfterMs.at(-1)!)} ms ` +
      `(headers timeout ${HEADERS_TIMEOUT_MS} ms); honest GET /metrics during the attack: ${honest.ms.toFixed(1)} ms`)
    closedInTime(r)
  })

  it('a mount that takes longer than the request timeout is still answered (the deadline covers receiving the request only)', async () => {
    const info = await new AdminClient(socket).mount({ source: `delayed:${HEADERS_TIMEOUT_MS * 2}`, mountpoint: '/mnt/slow-answer' })
    assert.equal(info.mountpoint, '/mnt/slow-answer')
  })
})

describe('Daemon', () => {
  it('assembles its node and serves the API; stop() stops the node; a second daemon on the socket is refused before assembling', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'rafspeer-daemon-'))
    let cleanup = async (): Promise<void> => {}
    try {
      const config = parseDaemonConfig({ workDir: join(dir, 'work'), socket: join(dir, 'd.sock'), log: { level: 'error' } })
      const service = new FakeMounts()
      let gotCacheDir = ''
      let nodeStopped = false
      const daemon = new Daemon({
        assemble: async (cfg) => {
          gotCacheDir = cfg.cache.dir
          return { mounts: service, cacheStats, stop: async () => { await service.stop(); nodeStopped = true } }
        }
      }, { config, defaultMetrics: false })
      await daemon.start()
      cleanup = async () => { await daemon.stop() }
      assert.equal(gotCacheDir, join(dir, 'work', 'cache'))
      const client = new AdminClient(config.socket)
      await client.mount({ source: 'x', mountpoint: '/mnt/x' })
      const info = await client.daemon()
      assert.deepEqual([info.state, info.mounts, info.cacheDir, info.version], ['RUNNING', 1, config.cache.dir, VERSION])
      assert.deepEqual((await client.metricsJson()).cache, cacheStats(), 'the node\'s cache numbers are served')

      let assembled = false
      const second = new Daemon({
        assemble: async () => { assembled = true; return { mounts: new FakeMounts(), cacheStats, stop: async () => {} } }
      }, { config, defaultMetrics: false })
      await assert.rejects(second.start(), { code: 'RAFSPEER_ERR_DAEMON_RUNNING' })
      assert.ok(!assembled, 'refused before touching the cache')
      assert.equal(second.state, 'STOPPED')

      await daemon.stop()
      assert.equal(daemon.state, 'STOPPED')
      assert.ok(service.stopped && nodeStopped)
      assert.ok(!existsSync(config.socket))
      await assert.rejects(client.daemon(), { code: 'RAFSPEER_ERR_NO_DAEMON' })
      await daemon.stop()

      const failing = new Daemon({
        assemble: async () => { throw coded('RAFSPEER_ERR_MOUNT', 'no FUSE here') }
      }, { config, defaultMetrics: false })
      await assert.rejects(failing.start(), { code: 'RAFSPEER_ERR_MOUNT' })
      assert.equal(failing.state, 'STOPPED')
      assert.ok(!existsSync(config.socket), 'a failed start serves nothing')
    } finally {
      await cleanup()
      await rm(dir, { recursive: true, force: true })
    }
  })
})
