/**
 * The registry mirror end to end, with real clients and a real registry: three `rafspeer daemon`s (child processes,
 * one embedding the scheduler) each serve a mirror; real containerd instances pull through them (`ctr --hosts-dir`
 * with a hosts.toml from `writeHostsToml`), skopeo copies through one (`registries.conf` mirror). The upstream is
 * the CNCF distribution registry behind a counting proxy, the test's own witness of the registry's egress.
 *
 * Pinned here: the registry sends an image's blobs about once for three pulls; a private repository's cached bytes
 * never reach a client the registry refuses; hostile neighbours are caught (a forged piece map: banned; wrong
 * pieces: refused) and the pull still succeeds with the right bytes; a neighbour frozen mid-transfer (SIGSTOP)
 * does not stall a pull.
 */
import '../polyfill.js'
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { BlobCache } from '../cache/index.js'
import { P2PNode, type MetricsJson } from '../peer/index.js'
import {
  MapServer, mapKey, pieceBlob, pieceChunk, pieceDigest, pieceLayout, pieceLength, writeHostsToml, type PieceLayout,
  type ProxyMetricsJson
} from '../proxy/index.js'
import { containerdSkipReason, contentDigests, startContainerd, type Containerd } from './helpers/containerd.js'
import { startDaemon, type TestDaemon } from './helpers/daemon.js'
import { distributionSkipReason, startDistribution, type Distribution } from './helpers/distribution.js'
import { buildLayeredImage, pushLayeredImage, type LayeredImage } from './helpers/layered-image.js'
import { startRegistryProxy, type RegistryProxy } from './helpers/registry-proxy.js'

const run = promisify(execFile)
const MiB = 1 << 20
const skip = containerdSkipReason() ?? distributionSkipReason() ??
  (existsSync('/usr/bin/skopeo') ? undefined : '/usr/bin/skopeo missing (apt-get install skopeo)')

interface MirrorNode { daemon: TestDaemon, mirror: string, peerId: string, containerd: Containerd, hostsDir: string }

let dir: string
let reg: Distribution
let upstream: RegistryProxy
let schedulerAddr: string
const nodes: MirrorNode[] = []

async function metrics (n: MirrorNode): Promise<MetricsJson & { proxy: ProxyMetricsJson }> {
  return await n.daemon.client.metricsJson() as MetricsJson & { proxy: ProxyMetricsJson }
}

/** A daemon with a mirror in the swarm, its own containerd, and a hosts dir routing `registries` through it. */
async function startNode (i: number, registries: string[]): Promise<MirrorNode> {
  const home = join(dir, `node${i}`)
  await mkdir(home, { recursive: true })
  const daemon = await startDaemon(home, {
    p2p: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    scheduler: i === 1 ? { embedded: true } : { address: schedulerAddr },
    // docker and skopeo send no ?ns=: their upstream is the default one
    proxy: { listen: '127.0.0.1:0', defaultUpstream: upstream.host, authTtlMs: 5_000, upstreamTimeoutMs: 5_000 },
    log: { level: 'debug', format: 'text' }
  })
  const info = await daemon.client.daemon()
  const mirror = (info.proxy as { listen: string }).listen
  const peerId = info.p2p!.peerId
  if (i === 1) schedulerAddr = info.p2p!.addrs.find(a => a.includes('/ip4/127.0.0.1/'))!
  const containerd = await startContainerd({ dir: home })
  const hostsDir = join(home, 'certs.d')
  await writeHostsToml({ hostsDir, mirror: `http://${mirror}`, registries })
  return { daemon, mirror, peerId, containerd, hostsDir }
}

before(async () => {
  if (skip !== undefined) return
  dir = await mkdtemp(join(tmpdir(), 'rafspeer-mirror-'))
  reg = await startDistribution()
  upstream = await startRegistryProxy(reg.host)
  for (const i of [1, 2, 3]) nodes.push(await startNode(i, [upstream.host]))
})

after(async () => {
  for (const n of nodes) {
    if (n.daemon.proc.exitCode === null) n.daemon.proc.kill('SIGCONT')
    await n.containerd.stop().catch(() => {})
    const code = await n.daemon.stop()
    if (code !== 0) process.stderr.write(n.daemon.log())
  }
  await upstream?.close()
  await reg?.stop()
  if (dir !== undefined) await rm(dir, { recursive: true, force: true })
})

async function pushImage (name: string, layers: number[], seed: string): Promise<LayeredImage> {
  const img = await buildLayeredImage(join(dir, `img-${name}`), { layers, seed, gzipLevel: 0 })
  await pushLayeredImage(img, `${reg.host}/mirror/${name}:1`)
  return img
}

async function pull (n: MirrorNode, ref: string, user?: string): Promise<void> {
  const r = await n.containerd.pull(ref, { hostsDir: n.hostsDir, timeoutMs: 120_000, ...(user !== undefined ? { user } : {}) })
  assert.equal(r.code, 0, `${ref} through ${n.mirror}: ${r.stderr.slice(-2000)}\n--- daemon ---\n${n.daemon.log().slice(-4000)}`)
}

test('three containerd pull one image through their nodes\' mirrors: the registry sends its blobs about once', { skip, timeout: 240_000 }, async () => {
  const img = await pushImage('app', [12 * MiB, 20 * MiB, 6 * MiB], 'mirror-app')
  const ref = `${upstream.host}/mirror/app:1`
  upstream.reset()
  await pull(nodes[0]!, ref)
  const first = upstream.blobBytes
  await Promise.all([pull(nodes[1]!, ref), pull(nodes[2]!, ref)])
  for (const n of nodes) assert.deepEqual(await contentDigests(n.containerd, ref), img.layerDigests)
  const ratio = upstream.blobBytes / img.totalBlobBytes
  assert.ok(ratio <= 1.1, `registry sent ${upstream.blobBytes} blob bytes for an image of ${img.totalBlobBytes} (${ratio.toFixed(3)}x; first pull ${first})`)
  const peerBytes = (await Promise.all(nodes.slice(1).map(async n => (await metrics(n)).proxy.bytesBySource.peer))).reduce((a, b) => a + b, 0)
  assert.ok(peerBytes >= img.totalBlobBytes, `nodes 2 and 3 took only ${peerBytes} bytes from peers`)
})

test('skopeo copies through a mirror named in registries.conf (it asks GET /v2/ first)', { skip, timeout: 120_000 }, async () => {
  const img = await pushImage('tool', [3 * MiB], 'mirror-tool')
  const conf = join(dir, 'registries.conf')
  await writeFile(conf, `[[registry]]\nlocation = "${upstream.host}"\ninsecure = true\n[[registry.mirror]]\nlocation = "${nodes[1]!.mirror}"\ninsecure = true\n`)
  const before = (await metrics(nodes[1]!)).proxy.requests
  const out = join(dir, 'skopeo-out')
  await run('skopeo', ['--registries-conf', conf, 'copy', '--src-tls-verify=false', `docker://${upstream.host}/mirror/tool:1`, `oci:${out}:1`])
  const after = (await metrics(nodes[1]!)).proxy.requests
  assert.ok((after['base 200'] ?? 0) > (before['base 200'] ?? 0), 'skopeo never asked the mirror GET /v2/')
  assert.ok((after['blob 200'] ?? 0) >= (before['blob 200'] ?? 0) + img.layerDigests.length, JSON.stringify(after))
  const index = JSON.parse(await readFile(join(out, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> }
  assert.equal(index.manifests[0]!.digest, img.manifestDigest)
})

test('a private repository: a client the registry refuses gets 401 although a neighbour holds every blob', { skip, timeout: 180_000 }, async () => {
  const user = 'mirror'
  const password = 'pa55-mirror'
  const priv = await startDistribution({ htpasswd: { user, password } })
  const privUp = await startRegistryProxy(priv.host)
  try {
    const img = await buildLayeredImage(join(dir, 'img-private'), { layers: [8 * MiB, 4 * MiB], seed: 'mirror-private', gzipLevel: 0 })
    await pushLayeredImage(img, `${priv.host}/team/secret:1`, { creds: `${user}:${password}` })
    const ref = `${privUp.host}/team/secret:1`
    const [n1, n2] = nodes as [MirrorNode, MirrorNode]
    for (const n of [n1, n2]) await writeHostsToml({ hostsDir: n.hostsDir, mirror: `http://${n.mirror}`, registries: [privUp.host] })
    await pull(n1, ref, `${user}:${password}`)
    const afterFirst = privUp.blobBytes
    // node 2's mirror could serve every byte from node 1: it must not, to a client the registry refuses
    const anonymous = await n2.containerd.pull(ref, { hostsDir: n2.hostsDir, timeoutMs: 60_000 })
    assert.notEqual(anonymous.code, 0)
    assert.match(anonymous.stderr, /401/)
    const wrong = await n2.containerd.pull(ref, { hostsDir: n2.hostsDir, timeoutMs: 60_000, user: `${user}:wrong` })
    assert.notEqual(wrong.code, 0)
    assert.match(wrong.stderr, /401/)
    // nor to a client that skips the tag and asks for the digests it knows
    const layer = `http://${n2.mirror}/v2/team/secret/blobs/${img.layerDigests[0]!}?ns=${encodeURIComponent(privUp.host)}`
    const manifest = `http://${n2.mirror}/v2/team/secret/manifests/${img.manifestDigest}?ns=${encodeURIComponent(privUp.host)}`
    for (const authorization of [undefined, `Basic ${Buffer.from(`${user}:wrong`).toString('base64')}`]) {
      for (const url of [layer, manifest]) {
        const res = await fetch(url, authorization !== undefined ? { headers: { authorization } } : {})
        const body = await res.text()
        assert.equal(res.status, 401, `${url}: ${res.status} ${body.slice(0, 200)}`)
        assert.match(res.headers.get('www-authenticate') ?? '', /^Basic realm=/)
        assert.match(body, /UNAUTHORIZED/)
      }
    }
    const servedBefore = (await metrics(n2)).proxy.servedBytes
    await pull(n2, ref, `${user}:${password}`)
    assert.deepEqual(await contentDigests(n2.containerd, ref), img.layerDigests)
    const m2 = await metrics(n2)
    assert.ok(m2.proxy.servedBytes - servedBefore >= img.totalBlobBytes - 4096, 'node 2 served the blobs')
    assert.ok(privUp.blobBytes - afterFirst <= img.totalBlobBytes * 0.1, `the registry sent ${privUp.blobBytes - afterFirst} more blob bytes; node 1 had them all`)
    assert.ok(m2.proxy.auth.denied >= 4, JSON.stringify(m2.proxy.auth))
  } finally {
    await privUp.close()
    await priv.stop()
  }
})

/** A peer that joins the swarm to lie: it announces piece maps and serves pieces, both wrong. */
async function startHostile (name: string, lies: { forged: Array<{ digest: string, size: number }>, wrongPieces: Array<{ digest: string, file: string }> }): Promise<{ peerId: string, stop: () => Promise<void> }> {
  const cache = await BlobCache.open(join(dir, `${name}-cache`))
  const node = await P2PNode.start({ cache }, { listen: ['/ip4/127.0.0.1/tcp/0'], scheduler: { address: schedulerAddr } })
  cache.events.on('stored', d => { node.onChunksStored(d) })
  const maps = new Map<string, { layout: PieceLayout, digests: Buffer[] }>()
  // a map of random pieces, with the blob's true size (it passes the size check, it fails the digest)
  for (const { digest, size } of lies.forged) {
    const layout = pieceLayout(digest, size)
    await cache.registerBlob(pieceBlob(layout))
    const digests: Buffer[] = []
    for (let i = 0; i < layout.count; i++) {
      const bytes = Buffer.alloc(pieceLength(layout, i), i + 7)
      const d = pieceDigest(bytes)
      await cache.putChunk(layout.blobId, pieceChunk(layout, i, d), bytes)
      digests.push(d)
    }
    maps.set(digest, { layout, digests })
  }
  // the true map, and garbage where its pieces should be
  for (const { digest, file } of lies.wrongPieces) {
    const blob = await readFile(file)
    const layout = pieceLayout(digest, blob.length)
    await cache.registerBlob(pieceBlob(layout))
    const digests: Buffer[] = []
    for (let i = 0; i < layout.count; i++) {
      const bytes = blob.subarray(i * layout.pieceBytes, i * layout.pieceBytes + pieceLength(layout, i))
      const d = pieceDigest(bytes)
      await cache.putChunk(layout.blobId, pieceChunk(layout, i, d), bytes)
      digests.push(d)
    }
    maps.set(digest, { layout, digests })
    const fh = await open(cache.blobPath(layout.blobId), 'r+')
    await fh.write(Buffer.alloc(blob.length, 0x5a), 0, blob.length, 0)
    await fh.close()
  }
  const server = new MapServer({ libp2p: node.host, maps: { servable: async d => { const m = maps.get(d); return m === undefined ? undefined : { ...m, final: true } }, changed: async () => {} } })
  await server.start()
  node.announce([...maps.keys()].map(mapKey))
  return {
    peerId: node.peerId,
    stop: async () => { await server.stop(); await node.stop(); await cache.close() }
  }
}

test('hostile neighbours are caught: the forger of a piece map banned, wrong pieces refused, the pull gets the right bytes', { skip, timeout: 180_000 }, async () => {
  const img = await pushImage('target', [9 * MiB, 7 * MiB], 'mirror-target')
  const blobFile = (d: string): string => join(img.layout, 'blobs', 'sha256', d.slice('sha256:'.length))
  const [forged, wrong] = img.layerDigests as [string, string]
  // two liars: one banned for its forged map would never be asked for the wrong pieces of the other lie
  const liar = await startHostile('liar', { forged: [{ digest: forged, size: img.layerSizes[0]! }], wrongPieces: [] })
  const corrupt = await startHostile('corrupt', { forged: [], wrongPieces: [{ digest: wrong, file: blobFile(wrong) }] }).catch(async (err) => {
    await liar.stop()
    throw err
  })
  try {
    // the scheduler hears of the hostile's holdings within a heartbeat
    await new Promise(resolve => setTimeout(resolve, 500))
    const n3 = nodes[2]!
    const ref = `${upstream.host}/mirror/target:1`
    upstream.reset()
    await pull(n3, ref)
    assert.deepEqual(await contentDigests(n3.containerd, ref), img.layerDigests)
    const m = await metrics(n3)
    // the forger is banned at once; a sender of wrong pieces is banned after `banThreshold` of them (this blob has two)
    assert.ok((m.proxy.neighbours?.bannedPeers ?? 0) >= 1, `hostile not banned: ${JSON.stringify(m.proxy.neighbours)}`)
    assert.ok(m.proxy.blobs.forgedMaps >= 1, JSON.stringify(m.proxy.blobs))
    assert.match(n3.daemon.log(), new RegExp(`peer:${liar.peerId}.*banned`))
    assert.ok((m.proxy.neighbours?.badChunks ?? 0) >= 1, JSON.stringify(m.proxy.neighbours))
    // what the registry sent: the blobs once, plus at most the pieces the liar made us fetch twice
    assert.ok(upstream.blobBytes <= img.totalBlobBytes * 2, `${upstream.blobBytes} for ${img.totalBlobBytes}`)
  } finally {
    await liar.stop()
    await corrupt.stop()
  }
})

test('a neighbour frozen (SIGSTOP) mid-transfer does not stall a pull: the rest comes from elsewhere', { skip, timeout: 180_000 }, async () => {
  const img = await pushImage('big', [48 * MiB], 'mirror-big')
  const ref = `${upstream.host}/mirror/big:1`
  const [n1, n2] = nodes as [MirrorNode, MirrorNode]
  await pull(n1, ref)
  upstream.reset()
  // freeze node 1 as soon as node 2 has taken some bytes from it
  const before = (await metrics(n2)).proxy.neighbours?.bytesFromPeers ?? 0
  const t0 = Date.now()
  const pulling = pull(n2, ref)
  for (let i = 0; i < 400; i++) {
    if (((await metrics(n2)).proxy.neighbours?.bytesFromPeers ?? 0) > before) break
    await new Promise(resolve => setTimeout(resolve, 10))
  }
  n1.daemon.proc.kill('SIGSTOP')
  try {
    await pulling
  } finally {
    n1.daemon.proc.kill('SIGCONT')
  }
  const ms = Date.now() - t0
  assert.deepEqual(await contentDigests(n2.containerd, ref), img.layerDigests)
  assert.ok(ms < 60_000, `the pull took ${ms} ms`)
  assert.ok(upstream.blobBytes <= img.totalBlobBytes * 1.1, `${upstream.blobBytes} for ${img.totalBlobBytes}`)
})
