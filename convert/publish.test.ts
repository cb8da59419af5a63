/** publishDirectory: a directory becomes a RAFS image in the embedded registry that `check --image` passes. */
import assert from 'node:assert/strict'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { RegistryClient } from '../registry/index.js'
import { startRegistryServer } from '../registry/server.js'
import { checkRemoteImage, publishDirectory } from './index.js'

test('a published directory is a valid RAFS image whose blob bytes are what the registry holds', async t => {
  const work = await mkdtemp(join(tmpdir(), 'rafspeer-publish-'))
  const reg = await startRegistryServer({ root: join(work, 'reg') })
  const client = new RegistryClient()
  t.after(async () => { await client.close(); await reg.stop(); await rm(work, { recursive: true, force: true }) })
  const src = join(work, 'src')
  await mkdir(join(src, 'sub'), { recursive: true })
  await writeFile(join(src, 'sub/a.txt'), 'published\n')
  await writeFile(join(src, 'b.bin'), Buffer.alloc(3 << 20, 7))
  const r = await publishDirectory(src, `${reg.host}/pub/app:v1`, { client, workDir: work, prefetchFiles: ['/sub/a.txt'] })
  assert.match(r.manifestDigest, /^sha256:[0-9a-f]{64}$/)
  assert.equal(r.blobs.length, 1)
  // the layout: a.txt's one small chunk and b.bin's three equal 1 MiB chunks stored once
  assert.deepEqual([...r.chunkSizes[0]!].sort((x, y) => x - y), [10, 1 << 20])
  const report = await checkRemoteImage(`${reg.host}/pub/app:v1`, { client, workDir: work })
  assert.deepEqual(report.errors, [])
  assert.equal(report.ok, true)
  // publishing again pushes nothing new and names the same manifest content
  const again = await publishDirectory(src, `${reg.host}/pub/app:v1`, { client, workDir: work })
  assert.equal(again.blobBytes, r.blobBytes)
})
