/**
 * The access log maps what a mount saw back to image paths in first-read order: files (FUSE) and chunks
 * (erofs-lazy) each once, a chunk shared by identical files naming them all, hard links by their first path, and
 * files without data never listed.
 */
import assert from 'node:assert/strict'
import { link, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { buildFromDirectory, RafsReader } from '../../rafs/index.js'
import { AccessLog } from './access-log.js'

let work: string
let reader: RafsReader

const bytes = (n: number, seed: number): Buffer => {
  const b = Buffer.allocUnsafe(n)
  let x = seed
  for (let i = 0; i < n; i++) { x = (x * 1103515245 + 12345) >>> 0; b[i] = x >>> 24 }
  return b
}

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'rafspeer-access-log-'))
  const src = join(work, 'src')
  await mkdir(join(src, 'lib/pkg'), { recursive: true })
  await writeFile(join(src, 'lib/a.py'), bytes(5000, 1))
  await writeFile(join(src, 'lib/pkg/b.py'), bytes(300_000, 2))
  await writeFile(join(src, 'lib/pkg/copy-of-a.py'), bytes(5000, 1))
  await writeFile(join(src, 'lib/empty.py'), '')
  await writeFile(join(src, 'big'), bytes(3 << 20, 3))
  await link(join(src, 'big'), join(src, 'lib/zz-big-link'))
  await buildFromDirectory(src, { bootstrap: join(work, 'boot'), blobDir: join(work, 'blobs'), chunkSize: 1 << 20 })
  reader = await RafsReader.open(join(work, 'boot'))
})
after(async () => { if (work !== undefined) await rm(work, { recursive: true, force: true }) })

const chunksOf = (path: string): Array<{ bi: number, ci: number }> => {
  const nid = reader.lookup(path)
  return reader.mapRange(nid, 0, reader.inode(nid).size).map(p => ({ bi: p.chunk.blobIndex, ci: p.chunk.index }))
}

describe('access log', () => {
  it('lists files read through FUSE in first-read order, each once', () => {
    const log = new AccessLog(reader)
    for (const p of ['/lib/pkg/b.py', '/big', '/lib/pkg/b.py', '/lib/a.py']) log.fileRead(reader.lookup(p))
    assert.deepEqual(log.paths(), ['/lib/pkg/b.py', '/big', '/lib/a.py'])
    assert.equal(log.size, 3)
  })

  it('maps chunks back to their files, in the order of each file\'s first chunk', () => {
    const log = new AccessLog(reader)
    assert.deepEqual(log.paths(), [])
    const big = chunksOf('/big')
    assert.equal(big.length, 3)
    log.chunkRead(big[2]!.bi, big[2]!.ci) // a read in the middle of a file names the file
    const b = chunksOf('/lib/pkg/b.py')[0]!
    log.chunkRead(b.bi, b.ci)
    log.chunkRead(big[0]!.bi, big[0]!.ci)
    const a = chunksOf('/lib/a.py')[0]!
    log.chunkRead(a.bi, a.ci)
    // a hard link is one file, named by its first path; identical files share their chunk and are both named
    assert.deepEqual(log.paths(), ['/big', '/lib/pkg/b.py', '/lib/a.py', '/lib/pkg/copy-of-a.py'])
    assert.deepEqual(chunksOf('/lib/pkg/copy-of-a.py'), [a], 'the build deduplicated the identical file')
  })

  it('mixes both kinds in one order and ignores chunks no file holds', () => {
    const log = new AccessLog(reader)
    log.chunkRead(0, 1_000_000)
    log.fileRead(reader.lookup('/lib/a.py'))
    const b = chunksOf('/lib/pkg/b.py')[0]!
    log.chunkRead(b.bi, b.ci)
    log.chunkRead(b.bi, b.ci)
    assert.deepEqual(log.paths(), ['/lib/a.py', '/lib/pkg/b.py'])
  })
})
