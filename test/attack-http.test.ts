/**
 * The admin API in front of the real mount manager, under requests that race: concurrent unmounts of one mountpoint
 * (and a mount racing them) are answered 204 once and 409 `RAFSPEER_ERR_MOUNT_BUSY` otherwise, never 500.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { packageVersion } from '../base/index.js'
import { BlobCache } from '../cache/index.js'
import { DaemonMetrics, startAdminApi, type AdminApi, type DaemonInfo } from '../peer/daemon/index.js'
import { FuseNativeBackend, MountManager } from '../peer/mount/index.js'
import { buildFromDirectory } from '../rafs/index.js'

const fuseSkip = process.getuid?.() !== 0 ? 'needs root (FUSE)' : undefined

interface Answer { status: number, code: string | undefined }

/** One request over the admin socket, on its own connection. */
async function call (socketPath: string, method: string, path: string, body?: string): Promise<Answer> {
  return await new Promise((resolve, reject) => {
    const req = request({ socketPath, method, path, agent: false, headers: body !== undefined ? { 'content-type': 'application/json' } : {} }, res => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => { text += c })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, code: text === '' ? undefined : (JSON.parse(text) as { code?: string }).code }))
    })
    req.on('error', reject)
    req.end(body)
  })
}

describe('admin API over the real mount manager: racing mounts and unmounts', { skip: fuseSkip }, () => {
  let work: string
  let cache: BlobCache
  let mounts: MountManager
  let api: AdminApi
  let socket: string
  let mountBody: string
  let mnt: string

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'rafspeer-attack-http-'))
    const src = join(work, 'src')
    await mkdir(src)
    await writeFile(join(src, 'hello.txt'), 'hello\n')
    const bootstrap = join(work, 'image.boot')
    const blobDir = join(work, 'blobs')
    await mkdir(blobDir)
    await buildFromDirectory(src, { bootstrap, blobDir })
    cache = await BlobCache.open(join(work, 'cache'))
    mounts = new MountManager({ cache, fuse: new FuseNativeBackend() }, { workDir: join(work, 'wd') })
    socket = join(work, 'api.sock')
    mnt = join(work, 'mnt')
    mountBody = JSON.stringify({ source: bootstrap, blobDir, mountpoint: mnt, mode: 'fuse', prefetch: 'none' })
    const daemonInfo = (): DaemonInfo => ({
      state: 'RUNNING', version: packageVersion(), pid: process.pid, startedAt: '', socket, workDir: work, cacheDir: join(work, 'cache'), mounts: mounts.list().length
    })
    const metrics = new DaemonMetrics({ service: mounts, cacheStats: () => cache.stats() }, { defaultMetrics: false })
    api = await startAdminApi({ service: mounts, cacheStats: () => cache.stats(), daemonInfo, metrics }, { socket })
  })

  after(async () => {
    await api?.close()
    await mounts?.stop()
    await cache?.close()
    if (work !== undefined) await rm(work, { recursive: true, force: true })
  })

  it('concurrent DELETEs of one mountpoint: one 204, the rest 409 MOUNT_BUSY (or 404 once it is gone), never 500', async () => {
    for (let round = 0; round < 3; round++) {
      assert.equal((await call(socket, 'POST', '/api/v1/mounts', mountBody)).status, 201)
      const del = `/api/v1/mounts?mountpoint=${encodeURIComponent(mnt)}`
      const answers = await Promise.all([...Array.from({ length: 4 }, async () => await call(socket, 'DELETE', del)),
        call(socket, 'POST', '/api/v1/mounts', mountBody)])
      const deletes = answers.slice(0, 4)
      const racingMount = answers[4]!
      assert.ok(answers.every(a => a.status < 500), JSON.stringify(answers))
      assert.equal(deletes.filter(a => a.status === 204).length, 1, JSON.stringify(answers))
      for (const a of deletes.filter(a => a.status !== 204)) {
        assert.ok((a.status === 409 && a.code === 'RAFSPEER_ERR_MOUNT_BUSY') || (a.status === 404 && a.code === 'RAFSPEER_ERR_NOT_MOUNTED'), JSON.stringify(a))
      }
      assert.ok(deletes.some(a => a.status === 409), `no DELETE overlapped the first: ${JSON.stringify(answers)}`)
      // the mount raced the unmount: refused as busy, or (arriving after it) mounted again
      if (racingMount.status === 201) assert.equal((await call(socket, 'DELETE', del)).status, 204)
      else assert.deepEqual(racingMount, { status: 409, code: 'RAFSPEER_ERR_MOUNT_BUSY' })
      assert.deepEqual(mounts.list(), [])
    }
  })
})
