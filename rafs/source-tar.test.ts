import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { gzipSync } from 'node:zlib'
import tar from 'tar-stream'
import { tarSource, type TarStats } from './source-tar.js'
import type { ChunkInfo, RafsInode } from './model.js'
import type { ChunkSink } from './source.js'

const CHUNK = 4096

/** Cuts files into 4 KiB chunks and remembers every chunk's bytes, so tests can read files back. */
class FakeSink implements ChunkSink {
  readonly data = new Map<ChunkInfo, Buffer>()
  pieces = 0
  consumed = 0
  delay = false
  addFile = async (input: AsyncIterable<Uint8Array> | Uint8Array): Promise<ChunkInfo[]> => {
    assert.ok(!(input instanceof Uint8Array), 'tar files must be streamed')
    const parts: Buffer[] = []
    for await (const p of input) {
      this.pieces++
      this.consumed += p.length
      parts.push(Buffer.from(p))
      if (this.delay) await new Promise(resolve => setImmediate(resolve))
    }
    const all = Buffer.concat(parts)
    const out: ChunkInfo[] = []
    for (let off = 0; off < all.length; off += CHUNK) {
      const bytes = all.subarray(off, off + CHUNK)
      const ci: ChunkInfo = {
        digest: createHash('sha256').update(bytes).digest(),
        blobIndex: 0,
        index: this.data.size,
        compressedOffset: 0,
        compressedSize: bytes.length,
        uncompressedOffset: 0,
        uncompressedSize: bytes.length,
        compressed: false,
        fileOffset: off
      }
      this.data.set(ci, bytes)
      out.push(ci)
    }
    return out
  }

  contents (inode: RafsInode): Buffer {
    return Buffer.concat((inode.chunks ?? []).map(c => this.data.get(c)!))
  }
}

type Entry = Parameters<tar.Pack['entry']>[0] & { pax?: Record<string, string> }

async function packTar (entries: Array<[Entry, (string | Buffer)?]>): Promise<Buffer> {
  const p = tar.pack()
  for (const [h, body] of entries) p.entry(h, body ?? '')
  p.finalize()
  const parts: Buffer[] = []
  for await (const b of p as unknown as AsyncIterable<Buffer>) parts.push(b)
  return Buffer.concat(parts)
}

/** A ustar header built by hand, for what pack() cannot express: raw name bytes, the old '\0' type flag. */
function rawHeader (name: Buffer, typeflag: number, size: number, extra: { linkname?: Buffer, mode?: number } = {}): Buffer {
  const b = Buffer.alloc(512)
  name.copy(b, 0)
  const oct = (v: number, len: number, off: number): void => { b.write(v.toString(8).padStart(len - 1, '0') + '\0', off, 'latin1') }
  oct(extra.mode ?? 0o644, 8, 100)
  oct(0, 8, 108)
  oct(0, 8, 116)
  oct(size, 12, 124)
  oct(1700000000, 12, 136)
  b[156] = typeflag
  extra.linkname?.copy(b, 157)
  b.write('ustar\x0000', 257, 'latin1')
  b.fill(0x20, 148, 156)
  let sum = 0
  for (const x of b) sum += x
  b.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1')
  return b
}
const pad = (data: Buffer): Buffer => Buffer.concat([data, Buffer.alloc((512 - data.length % 512) % 512)])
function paxRecords (records: Array<[string, Buffer]>): Buffer {
  return Buffer.concat(records.map(([k, v]) => {
    const body = Buffer.concat([Buffer.from(` ${k}=`), v, Buffer.from('\n')])
    let len = body.length + 1
    while (String(len).length + body.length > len) len++
    return Buffer.concat([Buffer.from(String(len)), body])
  }))
}

async function build (tarBytes: Buffer | AsyncIterable<Uint8Array>, opts: { gzip?: boolean | 'auto' } = {}): Promise<{ root: RafsInode, sink: FakeSink, stats: TarStats }> {
  const sink = new FakeSink()
  const stats: TarStats = { entries: 0, files: 0, fileBytes: 0, hardLinks: 0, whiteouts: 0, opaques: 0 }
  const input = Buffer.isBuffer(tarBytes) ? pieces(tarBytes, 1000) : tarBytes
  const root = await tarSource(input, { ...opts, stats })(sink)
  return { root, sink, stats }
}
async function * pieces (b: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let i = 0; i < b.length; i += size) yield b.subarray(i, i + size)
}
function at (root: RafsInode, path: string): RafsInode {
  let n = root
  for (const part of path.split('/').filter(Boolean)) {
    const next = n.children?.get(Buffer.from(part).toString('latin1'))
    assert.ok(next !== undefined, `missing ${path}`)
    n = next
  }
  return n
}
const names = (dir: RafsInode): string[] => [...dir.children!.keys()].sort()
const mtime = new Date(1700000000 * 1000)

test('every entry type, with modes, owners, times and device numbers', async () => {
  const big = Buffer.from(Array.from({ length: 50_000 }, (_, i) => (i * 7) & 0xff))
  const t = await packTar([
    [{ name: './', type: 'directory', mode: 0o755, mtime }],
    [{ name: 'bin/', type: 'directory', mode: 0o711, uid: 5, gid: 6, mtime }],
    [{ name: 'bin/su', mode: 0o4755, uid: 0, gid: 0, mtime }, 'su!'],
    [{ name: 'bin/big', mode: 0o644, mtime }, big],
    [{ name: 'bin/empty', mode: 0o600, mtime }],
    [{ name: 'tmp', type: 'directory', mode: 0o1777, mtime }],
    [{ name: 'bin/sh', type: 'symlink', linkname: '/bin/busybox', mode: 0o644, mtime }],
    [{ name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666, mtime }],
    [{ name: 'dev/sda', type: 'block-device', devmajor: 8, devminor: 0, mode: 0o660, mtime }],
    [{ name: 'run/fifo', type: 'fifo', mode: 0o2644, mtime }],
    [{ name: 'c', type: 'contiguous-file', mode: 0o644, mtime }, 'contiguous']
  ])
  const { root, sink, stats } = await build(t)
  assert.deepEqual(names(root), ['bin', 'c', 'dev', 'run', 'tmp'])
  assert.equal(at(root, 'bin').mode, 0o40711)
  assert.equal(at(root, 'bin').uid, 5)
  assert.equal(at(root, 'bin').gid, 6)
  assert.equal(at(root, 'bin/su').mode, 0o104755)
  assert.equal(sink.contents(at(root, 'bin/su')).toString(), 'su!')
  assert.equal(at(root, 'bin/big').size, 50_000)
  assert.equal(at(root, 'bin/big').chunks!.length, Math.ceil(50_000 / CHUNK))
  assert.ok(sink.contents(at(root, 'bin/big')).equals(big))
  assert.equal(at(root, 'bin/empty').size, 0)
  assert.deepEqual(at(root, 'bin/empty').chunks, [])
  assert.equal(at(root, 'tmp').mode, 0o41777)
  assert.equal(at(root, 'bin/sh').type, 'symlink')
  assert.equal(at(root, 'bin/sh').target!.toString(), '/bin/busybox')
  assert.equal(at(root, 'bin/sh').mode, 0o120777)
  const nul = at(root, 'dev/null')
  assert.deepEqual([nul.type, nul.mode, nul.rdevMajor, nul.rdevMinor], ['chr', 0o20666, 1, 3])
  const sda = at(root, 'dev/sda')
  assert.deepEqual([sda.type, sda.mode, sda.rdevMajor, sda.rdevMinor], ['blk', 0o60660, 8, 0])
  assert.deepEqual([at(root, 'run/fifo').type, at(root, 'run/fifo').mode], ['fifo', 0o12644])
  assert.equal(sink.contents(at(root, 'c')).toString(), 'contiguous')
  assert.equal(at(root, 'bin/su').mtime, 1700000000)
  // implicit parents: root-owned 0755 directories
  assert.equal(at(root, 'dev').mode, 0o40755)
  assert.equal(stats.files, 4)
  assert.equal(stats.entries, 11)
})

test('pax: long path, long link target, big ids, fractional mtime, xattrs of both dialects', async () => {
  const longDir = 'd'.repeat(120)
  const longName = `${longDir}/${'f'.repeat(200)}`
  const t = await packTar([
    [{ name: longName, mode: 0o644, mtime }, 'long'],
    [{ name: 'ln', type: 'symlink', linkname: 'x/'.repeat(80) + 'end', mtime }],
    [{
      name: 'attrs',
      mode: 0o644,
      mtime,
      pax: {
        mtime: '1700000001.123456789',
        uid: '3000000000',
        gid: '70000',
        'SCHILY.xattr.user.foo': 'bar',
        'SCHILY.xattr.trusted.overlay.opaque': 'y',
        'SCHILY.xattr.bogus.name': 'dropped',
        'LIBARCHIVE.xattr.user.with%20space': Buffer.from('v1').toString('base64'),
        'LIBARCHIVE.xattr.security.selinux': Buffer.from('ctx\0').toString('base64')
      }
    }, 'x'],
    [{ name: 'neg', mode: 0o644, mtime, pax: { mtime: '-5.5' } }]
  ])
  const { root, sink } = await build(t)
  assert.equal(sink.contents(at(root, longName)).toString(), 'long')
  assert.equal(at(root, 'ln').target!.toString(), 'x/'.repeat(80) + 'end')
  const a = at(root, 'attrs')
  assert.equal(a.mtime, 1700000001)
  assert.equal(a.mtimeNsec, 123456789)
  assert.equal(a.uid, 3000000000)
  assert.equal(a.gid, 70000)
  assert.deepEqual(Object.fromEntries([...a.xattrs].map(([k, v]) => [k, v.toString()])), {
    'user.foo': 'bar',
    'trusted.overlay.opaque': 'y',
    'user.with space': 'v1',
    'security.selinux': 'ctx\0'
  })
  assert.equal(at(root, 'neg').mtime, 0)
})

test('non-UTF-8 names and binary xattr values survive byte for byte', async () => {
  const rawName = Buffer.from([0x66, 0xff, 0xfe, 0x2e, 0x74]) // "f\xff\xfe.t"
  const paxName = Buffer.from([0x70, 0xe9]) // latin1 "pé", invalid UTF-8
  const cap = Buffer.from([0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0x80, 0xff, 0x0a, 0x00])
  const pax = paxRecords([['path', paxName], ['SCHILY.xattr.security.capability', cap]])
  const t = Buffer.concat([
    rawHeader(rawName, 0x30, 2), pad(Buffer.from('hi')),
    rawHeader(Buffer.from('PaxHeader'), 0x78, pax.length), pad(pax),
    rawHeader(Buffer.from('ignored'), 0x30, 0),
    Buffer.alloc(1024)
  ])
  const { root, sink } = await build(t)
  assert.deepEqual(names(root), [paxName.toString('latin1'), rawName.toString('latin1')].sort())
  assert.equal(sink.contents(root.children!.get(rawName.toString('latin1'))!).toString(), 'hi')
  assert.ok(root.children!.get(paxName.toString('latin1'))!.xattrs.get('security.capability')!.equals(cap))
})

test('old NUL type flag, GNU long names and the trailing-slash directory convention', async () => {
  const long = Buffer.from('g'.repeat(150))
  const t = Buffer.concat([
    rawHeader(Buffer.from('olddir/'), 0, 0, { mode: 0o750 }),
    rawHeader(Buffer.from('olddir/file'), 0, 3), pad(Buffer.from('old')),
    rawHeader(Buffer.from('././@LongLink'), 0x4c, long.length + 1), pad(Buffer.concat([long, Buffer.from([0])])),
    rawHeader(long.subarray(0, 100), 0x30, 1), pad(Buffer.from('L')),
    Buffer.alloc(1024)
  ])
  const { root, sink } = await build(t)
  assert.equal(at(root, 'olddir').mode, 0o40750)
  assert.equal(sink.contents(at(root, 'olddir/file')).toString(), 'old')
  assert.equal(sink.contents(at(root, long.toString())).toString(), 'L')
})

test('path spellings normalise; implicit parents are replaced in place; later entries win', async () => {
  const t = await packTar([
    [{ name: './a/b/c', mode: 0o644, mtime }, 'first'],
    [{ name: '/a/b/', type: 'directory', mode: 0o700, uid: 9, mtime }],
    [{ name: 'a//b/./d', mode: 0o644, mtime }, 'd'],
    [{ name: 'a/b/c', mode: 0o600, mtime }, 'second'],
    [{ name: 'a/b', type: 'directory', mode: 0o750, mtime }],
    [{ name: 'a/x/../y', mode: 0o644, mtime }, 'y'],
    [{ name: 'e', mode: 0o644, mtime }, 'file'],
    [{ name: 'e', type: 'directory', mode: 0o755, mtime }],
    [{ name: 'e/in', mode: 0o644, mtime }],
    [{ name: 'f/g', mode: 0o644, mtime }],
    [{ name: 'f', mode: 0o644, mtime }, 'file over dir']
  ])
  const { root, sink } = await build(t)
  const b = at(root, 'a/b')
  assert.equal(b.mode, 0o40750)
  assert.equal(b.uid, 0)
  assert.deepEqual(names(b), ['c', 'd'])
  // a/b got its own entry; a never did, nor did the root (no './' entry): a merge keeps the lower ones' attributes
  assert.equal(b.implicit, undefined)
  assert.equal(at(root, 'a').implicit, true)
  assert.equal(root.implicit, true)
  assert.equal(sink.contents(at(root, 'a/b/c')).toString(), 'second')
  assert.deepEqual(names(at(root, 'a')), ['b', 'y'])
  assert.deepEqual(names(at(root, 'e')), ['in'])
  assert.equal(at(root, 'f').type, 'file')
})

test('hard links are one inode; a missing target is an error', async () => {
  const t = await packTar([
    [{ name: 'a/file', mode: 0o644, mtime }, 'shared'],
    [{ name: 'b/link', type: 'link', linkname: './a/file', mtime }],
    [{ name: 'sym', type: 'symlink', linkname: 'a/file', mtime }],
    [{ name: 'symlink-link', type: 'link', linkname: 'sym', mtime }],
    [{ name: '.wh.gone', type: 'link', linkname: '/a/file', mtime }]
  ])
  const { root, stats } = await build(t)
  assert.equal(at(root, 'a/file'), at(root, 'b/link'))
  assert.equal(at(root, 'a/file'), at(root, '.wh.gone'))
  assert.equal(at(root, 'sym'), at(root, 'symlink-link'))
  assert.equal(stats.hardLinks, 3)
  assert.equal(stats.whiteouts, 1)

  const bad = await packTar([[{ name: 'link', type: 'link', linkname: 'nowhere', mtime }]])
  await assert.rejects(build(bad), (e: Error & { code?: string }) =>
    e.code === 'RAFSPEER_ERR_BAD_TAR' && /"link".*"nowhere"/.test(e.message))
})

test('whiteouts and opaque markers are kept as entries', async () => {
  const t = await packTar([
    [{ name: 'd/.wh..wh..opq', mode: 0o644, mtime }],
    [{ name: 'd/.wh.old', mode: 0o644, mtime }],
    [{ name: '.wh.top', mode: 0o644, mtime }]
  ])
  const { root, stats } = await build(t)
  assert.deepEqual(names(root), ['.wh.top', 'd'])
  assert.deepEqual(names(at(root, 'd')), ['.wh..wh..opq', '.wh.old'])
  assert.deepEqual([stats.whiteouts, stats.opaques], [2, 1])
})

test('gzip is sniffed, or forced', async () => {
  const t = await packTar([[{ name: 'z', mode: 0o644, mtime }, 'zipped']])
  const gz = gzipSync(t)
  for (const opts of [{}, { gzip: true }, { gzip: 'auto' as const }]) {
    const { root, sink } = await build(gz, opts)
    assert.equal(sink.contents(at(root, 'z')).toString(), 'zipped')
  }
  const { root } = await build(t, { gzip: false })
  assert.deepEqual(names(root), ['z'])
  await assert.rejects(build(gzipSync(t).subarray(0, 40)), { code: 'RAFSPEER_ERR_BAD_TAR' })
})

test('truncated, corrupt and escaping archives fail with a clear error', async () => {
  const t = await packTar([
    [{ name: 'ok', mode: 0o644, mtime }, 'fine'],
    [{ name: 'cut', mode: 0o644, mtime }, Buffer.alloc(100_000, 1)]
  ])
  const isBad = (re: RegExp) => (e: Error & { code?: string }) => e.code === 'RAFSPEER_ERR_BAD_TAR' && re.test(e.message)
  await assert.rejects(build(t.subarray(0, 1024 + 50_000)), isBad(/"cut"/))
  await assert.rejects(build(t.subarray(0, 1024 + 200)), isBad(/./))
  await assert.rejects(build(Buffer.concat([t.subarray(0, 1536), Buffer.alloc(512, 7)])), isBad(/./))
  await assert.rejects(build(await packTar([[{ name: '../etc/passwd', mode: 0o644, mtime }]])), isBad(/escapes/))
  await assert.rejects(build(await packTar([[{ name: 'a/../../x', mode: 0o644, mtime }]])), isBad(/escapes/))
  await assert.rejects(build(await packTar([
    [{ name: 'f', mode: 0o644, mtime }],
    [{ name: 'f/child', mode: 0o644, mtime }]
  ])), isBad(/not a directory/))
  await assert.rejects(build(Buffer.from('this is not a tar archive at all'.repeat(20))), isBad(/./))
  const sparse = Buffer.concat([rawHeader(Buffer.from('sparse'), 0x53, 0), Buffer.alloc(1024)])
  await assert.rejects(build(sparse), isBad(/"sparse" has unsupported type/))
  async function * failing (): AsyncGenerator<Buffer> {
    yield t.subarray(0, 2048)
    throw new Error('connection reset')
  }
  await assert.rejects(build(failing()), isBad(/connection reset/))
  const ac = new AbortController()
  ac.abort()
  await assert.rejects(tarSource(pieces(t, 512))(new FakeSink(), { signal: ac.signal }), { name: 'AbortError' })
  // the sink's own failure passes through unchanged
  const diskFull = Object.assign(new Error('no space left'), { code: 'ENOSPC' })
  const failingSink: ChunkSink = { addFile: async (data) => { for await (const _ of data as AsyncIterable<Uint8Array>) throw diskFull; return [] } }
  await assert.rejects(tarSource(pieces(t, 512))(failingSink), (e) => e === diskFull)
  // a source can be read once only
  const src = tarSource(pieces(t, 512))
  await src(new FakeSink())
  await assert.rejects(src(new FakeSink()), /only once/)
})

test('file data is streamed with backpressure: the reader never runs far ahead of the sink', async () => {
  const size = 16 * 1024 * 1024
  let produced = 0
  let maxLead = 0
  const sink = new FakeSink()
  sink.delay = true
  async function * lazy (): AsyncGenerator<Buffer> {
    const parts = [rawHeader(Buffer.from('huge'), 0x30, size)]
    const piece = Buffer.alloc(64 * 1024, 0xab)
    for (let sent = 0; sent < size; sent += piece.length) parts.push(piece)
    parts.push(Buffer.alloc(1024))
    for (const p of parts) {
      produced += p.length
      maxLead = Math.max(maxLead, produced - sink.consumed)
      yield p
    }
  }
  const root = await tarSource(lazy())(sink)
  assert.equal(at(root, 'huge').size, size)
  assert.equal(sink.consumed, size)
  assert.ok(sink.pieces > 10, 'file arrives in pieces')
  assert.ok(maxLead < 2 * 1024 * 1024, `reader ran ${maxLead} bytes ahead of the sink`)
})
