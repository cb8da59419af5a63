import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { after, before, describe, it } from 'node:test'
import { Readable } from 'node:stream'
import { gunzipSync, gzipSync } from 'node:zlib'
import { extractBootstrap, writeBootstrapLayer } from './bootstrap-layer.js'

const run = promisify(execFile)
const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`

describe('bootstrap layer', () => {
  let dir: string
  let boot: Buffer
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rafspeer-bootlayer-'))
    boot = Buffer.alloc(70_000)
    for (let i = 0; i < boot.length; i++) boot[i] = (i * 31) & 0xff
    await writeFile(join(dir, 'image.boot'), boot)
  })
  after(async () => { await rm(dir, { recursive: true, force: true }) })

  it('is deterministic, and its digest and diff_id are the sha256 of the .tar.gz and of the tar', async () => {
    const a = await writeBootstrapLayer(join(dir, 'image.boot'), join(dir, 'a.tar.gz'))
    await new Promise(resolve => setTimeout(resolve, 1100)) // a second later: no clock may leak in
    const b = await writeBootstrapLayer(join(dir, 'image.boot'), join(dir, 'b.tar.gz'))
    assert.deepEqual(a, b)
    const gz = await readFile(join(dir, 'a.tar.gz'))
    assert.equal(a.digest, sha(gz))
    assert.equal(a.size, gz.length)
    assert.equal(a.diffId, sha(gunzipSync(gz)))
  })

  it('extracts with tar: dir image 0755 and image/image.boot 0444, owned by 0:0, mtime 0', async () => {
    const { stdout } = await run('tar', ['--numeric-owner', '-tvzf', join(dir, 'a.tar.gz')])
    const lines = stdout.trim().split('\n')
    assert.equal(lines.length, 2)
    assert.match(lines[0]!, /^drwxr-xr-x 0\/0 +0 1970-01-01 00:00 image\/$/)
    assert.match(lines[1]!, /^-r--r--r-- 0\/0 +70000 1970-01-01 00:00 image\/image\.boot$/)
    const out = await mkdtemp(join(dir, 'x-'))
    await run('tar', ['-xzf', join(dir, 'a.tar.gz'), '-C', out])
    assert.ok((await readFile(join(out, 'image/image.boot'))).equals(boot))
    assert.equal((await stat(join(out, 'image/image.boot'))).mode & 0o777, 0o444)
  })

  it('extractBootstrap gets image.boot and the diff_id back from the layer stream', async () => {
    const layer = await writeBootstrapLayer(join(dir, 'image.boot'), join(dir, 'c.tar.gz'))
    const got = await extractBootstrap(createReadStream(join(dir, 'c.tar.gz')), join(dir, 'out.boot'), { gzip: true })
    assert.equal(got.path, 'image/image.boot')
    assert.equal(got.size, boot.length)
    assert.equal(got.diffId, layer.diffId)
    assert.ok((await readFile(join(dir, 'out.boot'))).equals(boot))
  })

  it('extractBootstrap of a large bootstrap waits on backpressure without piling up listeners', async () => {
    const big = randomBytes(6 << 20)
    await writeFile(join(dir, 'big.boot'), big)
    await writeBootstrapLayer(join(dir, 'big.boot'), join(dir, 'big.tar.gz'))
    const warnings: Error[] = []
    const onWarning = (w: Error): void => { warnings.push(w) }
    process.on('warning', onWarning)
    try {
      const got = await extractBootstrap(createReadStream(join(dir, 'big.tar.gz')), join(dir, 'big-out.boot'), { gzip: true })
      assert.equal(got.size, big.length)
      await new Promise(resolve => setImmediate(resolve))
    } finally {
      process.off('warning', onWarning)
    }
    assert.deepEqual(warnings.filter(w => w.name === 'MaxListenersExceededWarning').map(w => w.message), [])
  })

  it('extractBootstrap refuses a layer without a bootstrap', async () => {
    await run('tar', ['-czf', join(dir, 'empty.tar.gz'), '-C', dir, 'image.boot', '--transform', 's/image.boot/other/'])
    await assert.rejects(extractBootstrap(createReadStream(join(dir, 'empty.tar.gz')), join(dir, 'none.boot'), { gzip: true }),
      { code: 'RAFSPEER_ERR_NOT_NYDUS' })
  })

  it('extractBootstrap rejects a layer that is not a tar, whatever its size, and stops reading it', { timeout: 60_000 }, async () => {
    // gzip of random bytes: the tar reader gives up on the first header while the layer still streams (it used to
    // wait forever for the destroyed reader to drain)
    for (const size of [4096, 20_000, 200_000, 2_000_000]) {
      const bytes = gzipSync(randomBytes(size))
      let sent = 0
      const layer = Readable.from((function * () { for (let o = 0; o < bytes.length; o += 16384) { sent += 16384; yield bytes.subarray(o, o + 16384) } })())
      await assert.rejects(extractBootstrap(layer, join(dir, 'garbage.boot'), { gzip: true }), `${size} bytes of garbage`)
      if (size >= 2_000_000) assert.ok(sent < bytes.length, `read all ${bytes.length} bytes of a layer already known to be bad`)
    }
  })
})
