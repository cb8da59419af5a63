/**
 * RafsLayers' bookkeeping over a mount service that records calls (the real mounts run in
 * test/snapshotter*.test.ts): one mount per image shared by its holders, the last release unmounts, a mount the
 * service already has is taken up (a snapshotter restarted beside its daemon), a lost one is mounted again, unheld
 * mounts are swept, `stop({ keepMounts })` leaves the daemon's mounts alone, and an image nobody holds stays
 * mounted for its idle time.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { MountInfo, MountRequest } from '../peer/index.js'
import { RafsLayers, type ImageMounter } from './rafs-layers.js'
import { CRI_IMAGE_REF_LABEL, CRI_MANIFEST_DIGEST_LABEL, NYDUS_BLOB_LABEL, type SnapshotInfo } from './types.js'

const digest = (c: string): string => `sha256:${c.repeat(64)}`

function layerOf (manifest: string): SnapshotInfo {
  const now = new Date()
  return {
    name: `chain-${manifest.slice(7, 12)}`,
    parent: '',
    kind: 'committed',
    createdAt: now,
    updatedAt: now,
    labels: { [NYDUS_BLOB_LABEL]: 'true', [CRI_IMAGE_REF_LABEL]: 'reg.example:5000/app:v1', [CRI_MANIFEST_DIGEST_LABEL]: manifest }
  }
}

/** a daemon's mount table, kept in memory; every call recorded */
function recordingMounter (): ImageMounter & { calls: string[], table: Map<string, string> } {
  const table = new Map<string, string>()
  const calls: string[] = []
  return {
    calls,
    table,
    mount: async (req: MountRequest) => {
      calls.push(`mount ${req.mountpoint}`)
      table.set(req.mountpoint, req.source)
      return { source: req.source, mountpoint: req.mountpoint, mode: 'fuse' } as unknown as MountInfo
    },
    unmount: async (mountpoint: string) => {
      calls.push(`unmount ${mountpoint}`)
      table.delete(mountpoint)
    },
    list: async () => [...table].map(([mountpoint, source]) => ({ mountpoint, source }) as unknown as MountInfo)
  }
}

async function withDir (fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'rafspeer-layers-'))
  try { await fn(dir) } finally { await rm(dir, { recursive: true, force: true }) }
}

test('holders of one image share one mount; the last release unmounts it', async () => {
  await withDir(async (dir) => {
    const m = recordingMounter()
    const layers = new RafsLayers({ mounts: m }, { dir, idleUnmountMs: 0 })
    const a = await layers.attach('c1', layerOf(digest('a')))
    assert.equal(await layers.attach('c2', layerOf(digest('a'))), a)
    assert.equal(a, join(dir, 'a'.repeat(64)))
    assert.deepEqual(layers.list().map(i => [i.holders, i.mounted]), [[['c1', 'c2'], true]])
    await layers.release('c1')
    assert.deepEqual(m.calls, [`mount ${a}`])
    await layers.release('c2')
    assert.deepEqual(m.calls, [`mount ${a}`, `unmount ${a}`])
    assert.deepEqual(layers.list(), [])
  })
})

test('an image being unmounted stays listed, unmounting, until its mount is gone', async () => {
  await withDir(async (dir) => {
    const m = recordingMounter()
    let finish: () => void = () => {}
    const unmount = m.unmount
    m.unmount = async (mp: string) => { await new Promise<void>(resolve => { finish = resolve }); await unmount(mp) }
    const layers = new RafsLayers({ mounts: m }, { dir, idleUnmountMs: 0 })
    const a = await layers.attach('c1', layerOf(digest('a')))
    const released = layers.release('c1')
    await new Promise(resolve => setImmediate(resolve))
    assert.deepEqual(layers.list().map(i => [i.mountpoint, i.holders, i.unmounting]), [[a, [], true]])
    finish()
    await released
    assert.deepEqual(layers.list(), [])
    assert.equal(m.table.size, 0)
  })
})

test('a restarted snapshotter takes up the mount its daemon kept, and sweeps mounts nobody holds', async () => {
  await withDir(async (dir) => {
    const m = recordingMounter()
    const first = new RafsLayers({ mounts: m }, { dir, idleUnmountMs: 0 })
    const a = await first.attach('c1', layerOf(digest('a')))
    const b = await first.attach('c2', layerOf(digest('b')))
    await first.stop({ keepMounts: true })
    assert.deepEqual([...m.table.keys()], [a, b], 'stop({ keepMounts }) leaves them to the daemon')

    // c2's snapshot was removed while the snapshotter was down: only c1 is re-attached
    const second = new RafsLayers({ mounts: m }, { dir, idleUnmountMs: 0 })
    assert.equal(await second.attach('c1', layerOf(digest('a'))), a)
    assert.deepEqual(m.calls, [`mount ${a}`, `mount ${b}`], 'taken up, not mounted again')
    m.table.set('/elsewhere/' + 'c'.repeat(64), 'not ours')
    assert.deepEqual(await second.sweep(), [b])
    assert.deepEqual([...m.table.keys()].sort(), [a, '/elsewhere/' + 'c'.repeat(64)].sort())
    await second.stop()
    assert.equal(m.table.has(a), false, 'a plain stop unmounts')
  })
})

test('an image its daemon lost (the daemon restarted) is mounted again for the next holder', async () => {
  await withDir(async (dir) => {
    const m = recordingMounter()
    const layers = new RafsLayers({ mounts: m }, { dir, idleUnmountMs: 0 })
    const a = await layers.attach('c1', layerOf(digest('a')))
    m.table.clear()
    assert.equal(await layers.attach('c2', layerOf(digest('a'))), a)
    assert.deepEqual(m.calls, [`mount ${a}`, `mount ${a}`])
    assert.deepEqual(layers.list().map(i => [i.holders, i.mounted]), [[['c1', 'c2'], true]])
  })
})

test('a failed mount reaches every holder waiting on it and is forgotten', async () => {
  await withDir(async (dir) => {
    const m = recordingMounter()
    m.mount = async () => { throw new Error('registry gone') }
    const layers = new RafsLayers({ mounts: m }, { dir, idleUnmountMs: 0 })
    const both = await Promise.allSettled([layers.attach('c1', layerOf(digest('a'))), layers.attach('c2', layerOf(digest('a')))])
    for (const r of both) {
      assert.equal(r.status, 'rejected')
      assert.match(String((r as PromiseRejectedResult).reason), /RAFSPEER_ERR_SNAPSHOT_MOUNT|registry gone/)
    }
    assert.deepEqual(layers.list(), [])
  })
})

test('an image nobody holds stays mounted for its idle time: the next container takes it again, else it goes', async () => {
  await withDir(async (dir) => {
    const m = recordingMounter()
    const layers = new RafsLayers({ mounts: m }, { dir, idleUnmountMs: 150 })
    const a = await layers.attach('c1', layerOf(digest('a')))
    await layers.release('c1')
    assert.deepEqual(layers.list().map(i => [i.holders, i.mounted]), [[[], true]], 'idle, still mounted')
    assert.equal(await layers.attach('c2', layerOf(digest('a'))), a)
    await new Promise(resolve => setTimeout(resolve, 300))
    assert.deepEqual(m.calls, [`mount ${a}`], 'taken again: no unmount, no second mount')
    await layers.release('c2')
    await new Promise(resolve => setTimeout(resolve, 300))
    assert.deepEqual(m.calls, [`mount ${a}`, `unmount ${a}`])
    assert.deepEqual(layers.list(), [])

    // stop() unmounts idle images at once
    const b = await layers.attach('c3', layerOf(digest('b')))
    await layers.release('c3')
    await layers.stop()
    assert.deepEqual(m.calls.slice(2), [`mount ${b}`, `unmount ${b}`])
  })
})

test('a pulled layer mounts its image ahead of the first container, once, held by nobody; not with idleUnmountMs 0', async () => {
  await withDir(async (dir) => {
    const m = recordingMounter()
    const layers = new RafsLayers({ mounts: m }, { dir, idleUnmountMs: 60_000 })
    const labels = layerOf(digest('a')).labels
    layers.pulled(labels)
    layers.pulled(labels) // every layer of the pull says so
    layers.pulled({ [NYDUS_BLOB_LABEL]: 'true' }) // no image named: nothing to do
    for (let i = 0; i < 100 && layers.list()[0]?.holders.length !== 0; i++) await new Promise(resolve => setTimeout(resolve, 10))
    const mp = join(dir, 'a'.repeat(64))
    assert.deepEqual(layers.list().map(i => [i.mountpoint, i.holders, i.mounted]), [[mp, [], true]])
    assert.deepEqual(m.calls, [`mount ${mp}`])
    // the container's hold takes the mount up: no second mount
    assert.equal(await layers.attach('c1', layerOf(digest('a'))), mp)
    assert.deepEqual(m.calls, [`mount ${mp}`])
    await layers.stop()
    assert.deepEqual(m.calls, [`mount ${mp}`, `unmount ${mp}`])

    const eager = recordingMounter()
    const off = new RafsLayers({ mounts: eager }, { dir, idleUnmountMs: 0 })
    off.pulled(labels)
    await new Promise(resolve => setTimeout(resolve, 50))
    assert.deepEqual(eager.calls, [], 'nothing would keep it mounted')
  })
})
