/**
 * Crash consistency and corruption: a writer SIGKILLed mid-way leaves only chunks that verify; flipped bytes in a
 * cache file are never served with verify on, and verifyAll unmarks them.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { open, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { test } from 'node:test'
import { BlobCache } from './index.js'
import { buildBlob, tempDir, type BuiltBlob } from './test-support.js'

// the same test runs from the sources (tsx) and from dist/ (compiled .js)
const FROM_SOURCES = import.meta.url.endsWith('.ts')
const CHILD = fileURLToPath(new URL(FROM_SOURCES ? './crash-child.fixture.ts' : './crash-child.fixture.js', import.meta.url))

async function runAndKill (jobPath: string, killAfter: number): Promise<void> {
  const child = spawn(process.execPath, [...(FROM_SOURCES ? ['--import', 'tsx'] : []), CHILD, jobPath], { stdio: ['ignore', 'pipe', 'inherit'] })
  const exited = new Promise<NodeJS.Signals | null>(resolve => child.on('exit', (_code, signal) => resolve(signal)))
  await new Promise<void>((resolve, reject) => {
    let out = ''
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString()
      const m = [...out.matchAll(/progress (\d+)/g)].pop()
      if ((m !== undefined && Number(m[1]) >= killAfter) || out.includes('finished')) resolve()
    })
    child.on('exit', code => reject(new Error(`child exited early with ${code}`)))
  })
  child.kill('SIGKILL')
  assert.equal(await exited, 'SIGKILL')
}

async function flip (path: string, offset: number): Promise<void> {
  const fh = await open(path, 'r+')
  const b = Buffer.alloc(1)
  await fh.read(b, 0, 1, offset)
  b[0] = b[0]! ^ 0xff
  await fh.write(b, 0, 1, offset)
  await fh.close()
}

function jobFile (b: BuiltBlob, cacheDir: string): string {
  return JSON.stringify({
    cacheDir,
    blobPath: b.blobPath,
    blob: { ...b.blob, blobTocDigest: b.blob.blobTocDigest.toString('hex') },
    chunks: b.chunks.map(c => ({ ...c, digest: c.digest.toString('hex') }))
  })
}

test('SIGKILL mid-way: reopen re-verifies, every chunk marked present verifies; corruption is caught', async t => {
  const dir = await tempDir(t)
  const b = await buildBlob(dir, Array.from({ length: 40 }, () => 60_000), { chunkSize: 4096 })
  assert.ok(b.chunks.length > 500)
  const cacheDir = join(dir, 'cache')
  const jobPath = join(dir, 'job.json')
  await writeFile(jobPath, jobFile(b, cacheDir))
  await runAndKill(jobPath, 128)

  const cache = await BlobCache.open(cacheDir)
  t.after(async () => { await cache.close() })
  const s = cache.stats()
  assert.ok(s.recoveryChecked > 0, 'an unclean shutdown must trigger re-verification')
  assert.equal(s.recoveryBad, 0)
  const present = b.chunks.filter(c => cache.has(b.blob.blobId, c.index))
  assert.ok(present.length >= 128 && present.length < b.chunks.length, `killed mid-way: ${present.length} of ${b.chunks.length} present`)
  for (const c of present) assert.deepEqual(await cache.readChunk(b.blob.blobId, c, { verify: true }), b.plain[c.index])
  assert.deepEqual(await cache.verifyAll(), { checked: present.length, bad: 0, bytes: present.reduce((n, c) => n + c.uncompressedSize, 0) })

  // flipped bytes: verify on → never served, unmarked, counted
  const [x, y] = present
  await flip(cache.blobPath(b.blob.blobId), x!.uncompressedOffset + 100)
  assert.notDeepEqual(await cache.readChunk(b.blob.blobId, x!), b.plain[x!.index], 'without verify the bad bytes come back')
  assert.equal(await cache.readChunk(b.blob.blobId, x!, { verify: true }), undefined)
  assert.equal(cache.has(b.blob.blobId, x!.index), false)
  assert.equal(cache.stats().verifyFailures, 1)
  // verifyAll finds the next one
  await flip(cache.blobPath(b.blob.blobId), y!.uncompressedOffset + y!.uncompressedSize - 1)
  const r = await cache.verifyAll(b.blob.blobId)
  assert.equal(r.bad, 1)
  assert.equal(r.checked, present.length - 1)
  assert.equal(cache.has(b.blob.blobId, y!.index), false)
  assert.equal(cache.stats().verifyFailures, 2)
  // refetched → correct again
  assert.equal(await cache.putChunk(b.blob.blobId, x!, b.plain[x!.index]!), true)
  assert.deepEqual(await cache.readChunk(b.blob.blobId, x!, { verify: true }), b.plain[x!.index])
})

test('an unclean shutdown after a clean one re-verifies only chunks marked since the checkpoint', async t => {
  const dir = await tempDir(t)
  const b = await buildBlob(dir, Array.from({ length: 40 }, () => 60_000), { chunkSize: 4096 })
  const cacheDir = join(dir, 'cache')
  const first = b.chunks.slice(0, 50)
  const cache = await BlobCache.open(cacheDir)
  await cache.registerBlob(b.blob)
  for (const c of first) await cache.putChunk(b.blob.blobId, c, b.plain[c.index]!)
  await cache.close()

  const jobPath = join(dir, 'job.json')
  await writeFile(jobPath, jobFile(b, cacheDir))
  await runAndKill(jobPath, 128)
  const again = await BlobCache.open(cacheDir)
  t.after(async () => { await again.close() })
  const s = again.stats()
  assert.equal(s.recoveryBad, 0)
  assert.equal(s.recoveryChecked, s.chunksPresent - first.length, 'chunks from the clean session are not re-hashed')
})
