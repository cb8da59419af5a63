import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ManifestStore } from './manifest-store.js'

const OCI = 'application/vnd.oci.image.manifest.v1+json'
const INDEX = 'application/vnd.oci.image.index.v1+json'

async function withDir (fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'rafspeer-manifests-'))
  try { await fn(dir) } finally { await rm(dir, { recursive: true, force: true }) }
}

function manifest (n: number, alg: 'sha256' | 'sha512' = 'sha256'): { digest: string, bytes: Buffer } {
  const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, n }) + '\n')
  return { digest: `${alg}:${createHash(alg).update(bytes).digest('hex')}`, bytes }
}

const fileOf = (dir: string, digest: string): string => join(dir, digest.replace(':', '-'))

test('put then get returns the bytes and their media type, sha256 and sha512', async () => {
  await withDir(async (dir) => {
    const store = new ManifestStore(dir)
    const a = manifest(1)
    const b = manifest(2, 'sha512')
    await store.put(a.digest, OCI, a.bytes)
    await store.put(b.digest, INDEX, b.bytes)
    assert.deepEqual(await store.get(a.digest), { mediaType: OCI, bytes: a.bytes })
    assert.deepEqual(await store.get(b.digest), { mediaType: INDEX, bytes: b.bytes })
    assert.deepEqual((await readdir(dir)).sort(), [a.digest, b.digest].map(d => d.replace(':', '-')).sort(), 'no temp files left')
  })
})

test('bytes that hold newlines survive; a newline in the media type is dropped', async () => {
  await withDir(async (dir) => {
    const store = new ManifestStore(dir)
    const bytes = Buffer.from('{\n  "schemaVersion": 2\n}\n')
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`
    await store.put(digest, `${OCI}\r\nx-evil: 1`, bytes)
    assert.deepEqual(await store.get(digest), { mediaType: `${OCI}x-evil: 1`, bytes })
  })
})

test('a digest never stored is undefined, and the directory is created on first use', async () => {
  await withDir(async (dir) => {
    const store = new ManifestStore(join(dir, 'a', 'b'))
    assert.equal(await store.get(manifest(1).digest), undefined)
    assert.deepEqual(await readdir(join(dir, 'a', 'b')), [])
  })
})

test('a file whose bytes no longer match its digest is undefined and removed', async () => {
  await withDir(async (dir) => {
    const store = new ManifestStore(dir)
    const a = manifest(1)
    await store.put(a.digest, OCI, a.bytes)
    const file = fileOf(dir, a.digest)
    const text = await readFile(file, 'utf8')
    await writeFile(file, text.replace('"n":1', '"n":7'))
    assert.equal(await store.get(a.digest), undefined)
    assert.deepEqual(await readdir(dir), [])
    assert.equal(await store.get(a.digest), undefined)
  })
})

test('a file found at start without a media-type line, or with wrong bytes, is undefined and removed', async () => {
  await withDir(async (dir) => {
    const a = manifest(1)
    const b = manifest(2)
    await writeFile(fileOf(dir, a.digest), a.bytes.subarray(0, a.bytes.length - 1))
    await writeFile(fileOf(dir, b.digest), Buffer.concat([Buffer.from(`${OCI}\n`), manifest(3).bytes]))
    const store = new ManifestStore(dir)
    assert.equal(await store.get(a.digest), undefined)
    assert.equal(await store.get(b.digest), undefined)
    assert.deepEqual(await readdir(dir), [])
  })
})

test('a file deleted behind the store\'s back is undefined', async () => {
  await withDir(async (dir) => {
    const store = new ManifestStore(dir)
    const a = manifest(1)
    await store.put(a.digest, OCI, a.bytes)
    await rm(fileOf(dir, a.digest))
    assert.equal(await store.get(a.digest), undefined)
  })
})

test('past maxEntries the least recently used goes, and a get counts as a use', async () => {
  await withDir(async (dir) => {
    const store = new ManifestStore(dir, 3)
    const [a, b, c, d, e] = [1, 2, 3, 4, 5].map(n => manifest(n))
    for (const m of [a, b, c]) await store.put(m.digest, OCI, m.bytes)
    assert.ok(await store.get(a.digest))
    await store.put(d.digest, OCI, d.bytes)
    assert.equal(await store.get(b.digest), undefined, 'b was least recently used')
    for (const m of [a, c, d]) assert.ok(await store.get(m.digest))
    // uses now: a, c, d (oldest first); putting again also counts as a use
    await store.put(a.digest, OCI, a.bytes)
    await store.put(e.digest, OCI, e.bytes)
    assert.equal(await store.get(c.digest), undefined, 'c was least recently used')
    assert.deepEqual((await readdir(dir)).sort(), [a, d, e].map(m => m.digest.replace(':', '-')).sort())
  })
})

test('a new store over the same directory finds the old entries, oldest file first out', async () => {
  await withDir(async (dir) => {
    const first = new ManifestStore(dir)
    const [a, b, c, d] = [1, 2, 3, 4].map(n => manifest(n))
    for (const m of [a, b, c]) await first.put(m.digest, OCI, m.bytes)
    await writeFile(join(dir, 'unrelated'), 'x')
    // mtimes decide the order after a restart; make them distinct
    for (const [i, m] of [a, b, c].entries()) await utimes(fileOf(dir, m.digest), 1_000_000 + i, 1_000_000 + i)

    const second = new ManifestStore(dir, 3)
    assert.deepEqual(await second.get(b.digest), { mediaType: OCI, bytes: b.bytes })
    await second.put(d.digest, OCI, d.bytes)
    assert.equal(await second.get(a.digest), undefined, 'a has the oldest file and was not used since the restart')
    for (const m of [b, c, d]) assert.ok(await second.get(m.digest))
  })
})

test('a get before a restart still counts as a use after it', async () => {
  await withDir(async (dir) => {
    const first = new ManifestStore(dir, 3)
    const [a, b, c, d] = [1, 2, 3, 4].map(n => manifest(n))
    for (const m of [a, b, c]) await first.put(m.digest, OCI, m.bytes)
    for (const [i, m] of [a, b, c].entries()) await utimes(fileOf(dir, m.digest), 1_000_000 + i, 1_000_000 + i)
    assert.ok(await first.get(a.digest), 'a is now the most recently used')

    const second = new ManifestStore(dir, 3)
    await second.put(d.digest, OCI, d.bytes)
    assert.ok(await second.get(a.digest), 'a was used last before the restart and should survive')
    assert.equal(await second.get(b.digest), undefined, 'b is the least recently used')
  })
})

test('two puts of the same manifest at once both resolve', async () => {
  await withDir(async (dir) => {
    const store = new ManifestStore(dir)
    const a = manifest(1)
    await Promise.all([store.put(a.digest, OCI, a.bytes), store.put(a.digest, OCI, a.bytes)])
    assert.deepEqual(await store.get(a.digest), { mediaType: OCI, bytes: a.bytes })
  })
})
