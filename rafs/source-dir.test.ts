import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chmod, chown, link, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setAttributeSync } from '@napi-rs/xattr'
import { BlobWriter } from './blob-writer.js'
import { directorySource, splitRdev } from './source-dir.js'
import { nameKey, walk, type ChunkInfo, type RafsInode } from './model.js'
import type { ChunkSink } from './source.js'

const isRoot = process.getuid?.() === 0

/** A sink that keeps every file's bytes, in call order, and hands out fake chunk lists. */
class RecordingSink implements ChunkSink {
  files: Buffer[] = []
  async addFile (data: AsyncIterable<Uint8Array> | Uint8Array): Promise<ChunkInfo[]> {
    const parts: Buffer[] = []
    if (data instanceof Uint8Array) parts.push(Buffer.from(data))
    else for await (const p of data) parts.push(Buffer.from(p))
    const bytes = Buffer.concat(parts)
    this.files.push(bytes)
    return bytes.length === 0 ? [] : [{ digest: Buffer.alloc(32), blobIndex: 0, index: this.files.length, compressedOffset: 0, compressedSize: bytes.length, uncompressedOffset: 0, uncompressedSize: bytes.length, compressed: false, fileOffset: 0 }]
  }
}

const child = (dir: RafsInode, ...names: Array<string | Buffer>): RafsInode => {
  let node = dir
  for (const n of names) {
    const next = node.children?.get(nameKey(n))
    assert.ok(next !== undefined, `missing ${String(n)}`)
    node = next
  }
  return node
}

describe('directorySource', () => {
  let dir: string
  let src: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rafs-source-dir-'))
    src = join(dir, 'src')
    await mkdir(join(src, 'sub', 'deeper'), { recursive: true })
    await writeFile(join(src, 'b.txt'), 'bee')
    await writeFile(join(src, 'a.txt'), 'ay')
    await writeFile(join(src, 'sub', 'deeper', 'z'), 'zed')
    await writeFile(join(src, 'sub', 'c'), 'sea')
    await writeFile(join(src, 'empty'), '')
    await link(join(src, 'a.txt'), join(src, 'sub', 'hard'))
    await symlink('a.txt', join(src, 'link'))
    await symlink(Buffer.from([0x74, 0xff, 0x2f, 0x78]), Buffer.from(join(src, 'rawlink')))
    await writeFile(Buffer.concat([Buffer.from(src + '/'), Buffer.from([0x6e, 0xe9])]), 'latin1 name')
    execFileSync('mkfifo', [join(src, 'fifo')])
    execFileSync('python3', ['-c', 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', join(src, 'sock')])
    execFileSync('touch', ['-h', '-d', '2001-02-03 04:05:06.123456789Z', join(src, 'b.txt')])
    execFileSync('touch', ['-h', '-d', '1969-12-31 23:59:58.250000000Z', join(src, 'a.txt')])
    setAttributeSync(join(src, 'b.txt'), 'user.color', 'blue')
    setAttributeSync(join(src, 'b.txt'), 'user.empty', '')
    if (isRoot) {
      await chown(join(src, 'b.txt'), 1234, 56789)
      execFileSync('chown', ['-h', '4242:4343', join(src, 'link')])
      setAttributeSync(join(src, 'sub'), 'trusted.overlay.opaque', 'y')
      execFileSync('mknod', [join(src, 'null'), 'c', '1', '3'])
      execFileSync('mknod', [join(src, 'loop'), 'b', '7', '0'])
      execFileSync('mknod', [join(src, 'bigdev'), 'c', '300', '70000'])
    }
    // after chown, which clears setuid
    await chmod(join(src, 'b.txt'), 0o4751)
    await chmod(join(src, 'sub'), 0o1777)
  })
  after(async () => { await rm(dir, { recursive: true, force: true }) })

  it('reads types, modes, owners, times, targets and raw names', async () => {
    const sink = new RecordingSink()
    const root = await directorySource(src)(sink)
    assert.equal(root.type, 'dir')
    const b = child(root, 'b.txt')
    assert.equal(b.type, 'file')
    assert.equal(b.mode, 0o104751)
    assert.equal(b.size, 3)
    assert.deepEqual([b.mtime, b.mtimeNsec], [981173106, 123456789])
    const a = child(root, 'a.txt')
    assert.deepEqual([a.mtime, a.mtimeNsec], [-2, 250000000], 'pre-epoch nsec stays positive')
    assert.equal(child(root, 'sub').mode, 0o41777)
    assert.equal(child(root, 'sub').type, 'dir')
    const link = child(root, 'link')
    assert.equal(link.type, 'symlink')
    assert.deepEqual(link.target, Buffer.from('a.txt'))
    assert.deepEqual(child(root, 'rawlink').target, Buffer.from([0x74, 0xff, 0x2f, 0x78]))
    assert.equal(child(root, Buffer.from([0x6e, 0xe9])).size, 'latin1 name'.length)
    assert.equal(child(root, 'fifo').type, 'fifo')
    assert.equal(child(root, 'sock').type, 'sock')
    assert.equal(child(root, 'sock').mode & 0o170000, 0o140000)
    const empty = child(root, 'empty')
    assert.deepEqual([empty.size, empty.chunks], [0, []])
    if (isRoot) {
      assert.deepEqual([b.uid, b.gid], [1234, 56789])
      assert.deepEqual([link.uid, link.gid], [4242, 4343], 'symlink owner is its own, not its target\'s')
    }
    // never "." or ".." in children
    assert.ok(![...root.children!.keys()].some(k => k === '.' || k === '..'))
  })

  it('feeds files depth-first in byte order of names, each hard link once', async () => {
    const sink = new RecordingSink()
    await directorySource(src)(sink)
    // a.txt, b.txt, n\xe9 (0x6e... after "link"), sub/c, sub/deeper/z; empty files are not read; sub/hard is a link
    assert.deepEqual(sink.files.map(f => f.toString()), ['ay', 'bee', 'latin1 name', 'sea', 'zed'])
  })

  it('collapses hard links into one inode object', async () => {
    const root = await directorySource(src)(new RecordingSink())
    assert.equal(child(root, 'a.txt'), child(root, 'sub', 'hard'))
    let count = 0
    for (const [, inode] of walk(root)) if (inode === child(root, 'a.txt')) count++
    assert.equal(count, 2)
  })

  it('reads extended attributes RAFS can store', async () => {
    const root = await directorySource(src)(new RecordingSink())
    const b = child(root, 'b.txt')
    assert.deepEqual([...b.xattrs.entries()], [['user.color', Buffer.from('blue')], ['user.empty', Buffer.alloc(0)]])
    if (isRoot) assert.deepEqual(child(root, 'sub').xattrs.get('trusted.overlay.opaque'), Buffer.from('y'))
    assert.equal(child(root, 'link').xattrs.size, 0, 'a symlink does not show its target\'s xattrs')
    const plain = await directorySource(src, { xattrs: false })(new RecordingSink())
    assert.equal(child(plain, 'b.txt').xattrs.size, 0)
  })

  it('reads device numbers, including majors and minors past 8 bits', { skip: !isRoot && 'needs root for mknod' }, async () => {
    const root = await directorySource(src)(new RecordingSink())
    const nul = child(root, 'null')
    assert.deepEqual([nul.type, nul.rdevMajor, nul.rdevMinor], ['chr', 1, 3])
    const loop = child(root, 'loop')
    assert.deepEqual([loop.type, loop.rdevMajor, loop.rdevMinor], ['blk', 7, 0])
    const big = child(root, 'bigdev')
    assert.deepEqual([big.rdevMajor, big.rdevMinor], [300, 70000])
  })

  it('splits dev_t like glibc', () => {
    assert.deepEqual(splitRdev(0x103n), { major: 1, minor: 3 })
    // major 0x12345, minor 0x6789a in the 64-bit glibc encoding
    const dev = (0x12345n & 0xfffn) << 8n | (0x12345n & ~0xfffn) << 32n | (0x6789an & 0xffn) | (0x6789an & ~0xffn) << 12n
    assert.deepEqual(splitRdev(dev), { major: 0x12345, minor: 0x6789a })
  })

  it('streams real files into a BlobWriter', async () => {
    const d = await mkdtemp(join(dir, 'real-'))
    const tree = join(d, 'tree')
    await mkdir(tree)
    const big = randomBytes(3 * 65536 + 7)
    await writeFile(join(tree, 'big'), big)
    await writeFile(join(tree, 'copy'), big)
    await writeFile(join(tree, 'zero'), '')
    const writer = new BlobWriter({ blobDir: join(d, 'blobs'), blobCacheDir: join(d, 'cache'), chunkSize: 65536 })
    const root = await directorySource(tree)(writer)
    const info = await writer.finish()
    assert.equal(info!.chunkCount, 4)
    const bigNode = child(root, 'big')
    assert.equal(bigNode.size, big.length)
    assert.equal(bigNode.chunks!.length, 4)
    assert.deepEqual(bigNode.chunks, child(root, 'copy').chunks)
    assert.equal(bigNode.chunks![3], child(root, 'copy').chunks![3])
    assert.deepEqual(child(root, 'zero').chunks, [])
    const view = await readFile(join(d, 'cache', `${info!.blobId}.blob.data`))
    const rebuilt = Buffer.concat(bigNode.chunks!.map(c => view.subarray(c.uncompressedOffset, c.uncompressedOffset + c.uncompressedSize)))
    assert.deepEqual(rebuilt, big)
  })

  it('names the path when a file cannot be read', async (t) => {
    const d = await mkdtemp(join(dir, 'broken-'))
    await chmod(dir, 0o755)
    await chmod(d, 0o755)
    await writeFile(join(d, 'secret'), 'data', { mode: 0o000 })
    await assert.rejects(directorySource(join(d, 'nope'))(new RecordingSink()), { code: 'RAFSPEER_ERR_SOURCE' })
    if (isRoot) {
      // root reads anything: walk as nobody in a child process
      const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js'
      const modulePath = join(import.meta.dirname, 'source-dir' + ext)
      // the checkout may sit under a 0700 directory (mktemp -d) that nobody cannot traverse
      const probe = spawnSync(process.execPath, ['-e', 'require("fs").accessSync(process.argv[1])', modulePath], { uid: 65534, gid: 65534 })
      if (probe.status !== 0) {
        t.skip(`the user nobody cannot read ${modulePath}`)
        return
      }
      const script = `import('${modulePath}').then(m => m.directorySource(process.argv[1])({ addFile: async () => [] }))
        .then(() => process.exit(0), e => { console.log(JSON.stringify({ code: e.code, message: e.message })); process.exit(0) })`
      const res = spawnSync(process.execPath, [...(ext === '.ts' ? ['--import', 'tsx'] : []), '-e', script, d], { uid: 65534, gid: 65534, encoding: 'utf8', cwd: import.meta.dirname })
      const err = JSON.parse(res.stdout.trim()) as { code: string, message: string }
      assert.equal(err.code, 'RAFSPEER_ERR_SOURCE')
      assert.match(err.message, /secret/)
    } else {
      await assert.rejects(directorySource(d)(new RecordingSink()), { code: 'RAFSPEER_ERR_SOURCE', message: /secret/ })
    }
  })

  it('stops when the signal aborts', async () => {
    const ac = new AbortController()
    ac.abort()
    await assert.rejects(directorySource(src)(new RecordingSink(), { signal: ac.signal }), { name: 'AbortError' })
  })
})
