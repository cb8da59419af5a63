/**
 * Range reads of a Nydus data blob through the mirror: a real RAFS image published to the embedded registry, its
 * manifest read through the mirror (which is how the mirror learns the blob is a RAFS blob), then ranges anywhere in
 * the blob answered with the upstream's exact bytes, every chunk they touch checked against the bootstrap; and a
 * blob the upstream corrupted cut before the bad chunk, no byte of it sent.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { request } from 'node:http'
import { mkdir, mkdtemp, open, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { silentLogger } from '../base/index.js'
import { BlobCache } from '../cache/index.js'
import { publishDirectory } from '../convert/index.js'
import { extractBootstrap } from '../image/index.js'
import { RafsReader } from '../rafs/index.js'
import { RegistryClient, startRegistryServer } from '../registry/index.js'
import { Mirror } from './mirror.js'

/** Every byte a client receives for `path` with `range`, and whether the body ended cleanly. */
async function receive (base: string, path: string, range: string): Promise<{ status: number, bytes: Buffer, complete: boolean }> {
  return await new Promise((resolve, reject) => {
    const req = request(base + path, { headers: { range } }, res => {
      const parts: Buffer[] = []
      res.on('data', (d: Buffer) => parts.push(d))
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, bytes: Buffer.concat(parts), complete: res.complete }) })
      res.on('error', () => { resolve({ status: res.statusCode ?? 0, bytes: Buffer.concat(parts), complete: false }) })
      res.on('aborted', () => { resolve({ status: res.statusCode ?? 0, bytes: Buffer.concat(parts), complete: false }) })
    })
    req.on('error', reject)
    req.end()
  })
}

test('ranges of a Nydus data blob are answered chunk by chunk, each checked; a corrupted chunk is never sent', async t => {
  const work = await mkdtemp(join(tmpdir(), 'rafspeer-rafs-ranges-'))
  const reg = await startRegistryServer({ root: join(work, 'reg') })
  const client = new RegistryClient()
  const mirrors: Array<{ mirror: Mirror, cache: BlobCache }> = []
  t.after(async () => {
    for (const m of mirrors) { await m.mirror.stop(); await m.cache.close() }
    await client.close(); await reg.stop(); await rm(work, { recursive: true, force: true })
  })
  const src = join(work, 'src')
  await mkdir(join(src, 'lib'), { recursive: true })
  await writeFile(join(src, 'lib/random.bin'), randomBytes(700_000))
  await writeFile(join(src, 'lib/text.txt'), Buffer.from('compressible line of text\n'.repeat(40_000)))
  await writeFile(join(src, 'small'), 'tiny\n')
  const published = await publishDirectory(src, `${reg.host}/nydus/app:v1`, { client, workDir: join(work, 'pub'), chunkSize: 64 << 10 })
  assert.equal(published.blobs.length, 1)
  const blobDigest = `sha256:${published.blobs[0]!.blobId}`
  const ref = { registry: reg.host, repository: 'nydus/app' }
  const blob = await client.fetchBlobRange(ref, blobDigest, 0, published.blobs[0]!.size - 1)

  const startMirror = async (name: string): Promise<string> => {
    const cache = await BlobCache.open(join(work, name, 'cache'))
    const mirror = await Mirror.start({ cache, logger: silentLogger }, {
      listen: '127.0.0.1:0', dir: join(work, name, 'proxy'), defaultUpstream: reg.host, upstreamTimeoutMs: 2_000, stallMs: 3_000
    })
    mirrors.push({ mirror, cache })
    const base = `http://${mirror.address}`
    // the manifest through the mirror tells it this blob is a RAFS data blob
    const m = await fetch(`${base}/v2/nydus/app/manifests/v1`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } })
    assert.equal(m.status, 200)
    await m.arrayBuffer()
    return base
  }

  const base = await startMirror('m1')
  const path = `/v2/nydus/app/blobs/${blobDigest}`
  const size = blob.length
  for (const [start, end] of [[0, 0], [0, 4095], [70_000, 70_001], [65_530, 200_000], [size - 100, size - 1], [1234, size - 1]] as Array<[number, number]>) {
    const r = await receive(base, path, `bytes=${start}-${end}`)
    assert.equal(r.status, 206, `${start}-${end}`)
    assert.ok(r.complete, `${start}-${end}`)
    assert.ok(r.bytes.equals(blob.subarray(start, end + 1)), `bytes ${start}-${end}`)
  }
  const counters = mirrors[0]!.mirror.metrics.json().rafsRanges
  assert.ok(counters.ranges >= 6 && counters.chunksVerified > 10, JSON.stringify(counters))
  assert.equal(counters.badChunks, 0)

  // the upstream now holds a blob with one byte of a chunk in the middle flipped
  const bootPath = join(work, 'image.boot')
  await extractBootstrap(await client.getBlob(ref, await bootstrapDigest(client, ref)), bootPath, { gzip: true })
  const reader = await RafsReader.open(bootPath)
  const chunks = [...reader.chunkTableEntries()].map(e => e.info).filter(c => c.compressedSize > 0).sort((a, b) => a.compressedOffset - b.compressedOffset)
  const victim = chunks[Math.floor(chunks.length / 2)]!
  const hex = blobDigest.slice(7)
  const fh = await open(join(work, 'reg', 'blobs', 'sha256', hex.slice(0, 2), hex), 'r+')
  const at = victim.compressedOffset + Math.floor(victim.compressedSize / 2)
  const one = Buffer.alloc(1)
  await fh.read(one, 0, 1, at)
  one[0] = one[0]! ^ 0xff
  await fh.write(one, 0, 1, at)
  await fh.close()

  const fresh = await startMirror('m2')
  const cut = await receive(fresh, path, `bytes=0-${size - 1}`)
  assert.equal(cut.status, 206)
  assert.equal(cut.complete, false, 'a response with a bad chunk must not end cleanly')
  assert.ok(cut.bytes.length <= victim.compressedOffset, `${cut.bytes.length} bytes sent, the bad chunk starts at ${victim.compressedOffset}`)
  assert.ok(cut.bytes.equals(blob.subarray(0, cut.bytes.length)), 'every byte sent is the true byte')
  // a range away from the bad chunk is still served
  const first = chunks[0]!
  const fine = await receive(fresh, path, `bytes=${first.compressedOffset}-${first.compressedOffset + first.compressedSize - 1}`)
  assert.ok(fine.complete)
  assert.ok(fine.bytes.equals(blob.subarray(first.compressedOffset, first.compressedOffset + first.compressedSize)))
  assert.equal(mirrors[1]!.mirror.metrics.json().rafsRanges.badChunks, 1)
  // the mirror keeps serving
  assert.equal((await fetch(`${fresh}/v2/`)).status, 200)
})

async function bootstrapDigest (client: RegistryClient, ref: { registry: string, repository: string }): Promise<string> {
  const { json: manifest } = await client.getManifest(`${ref.registry}/${ref.repository}:v1`)
  const layers = (manifest as { layers: Array<{ digest: string, annotations?: Record<string, string> }> }).layers
  const boot = layers.find(l => l.annotations?.['containerd.io/snapshot/nydus-bootstrap'] === 'true')
  assert.ok(boot !== undefined)
  return boot.digest
}
