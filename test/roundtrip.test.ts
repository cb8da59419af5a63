/**
 * Property test: any generated tree → build → our reader (unpack to a directory, and to a tar extracted by GNU tar)
 * → the same content, mode, uid/gid, mtime, nlink, rdev, xattrs and symlink targets as the source.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdtemp, mkdir, writeFile, symlink, link, lchown, chmod, lutimes, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import fc from 'fast-check'
import { setAttributeSync } from '@napi-rs/xattr'
import { buildFromDirectory } from '../rafs/build.js'
import { unpackImage } from '../rafs/unpack.js'
import { snapshotTree, diffTrees } from './helpers/tree.js'
import type { Compressor, Digester } from '../rafs/index.js'

const CHUNK = 0x1000
const isRoot = process.getuid?.() === 0

type Node =
  | { kind: 'file', size: number, seed: number }
  | { kind: 'dir', children: Array<[string, Node]> }
  | { kind: 'symlink', target: string }
  | { kind: 'fifo' }
  | { kind: 'chr', major: number, minor: number }
  | { kind: 'hardlink' }

interface Meta { mode: number, uid: number, gid: number, mtime: number, nsec: number, xattr?: [string, number[]] }

// names that stress ordering: before '.', bytes above 0x7f (valid UTF-8 here so xattr tools can address them), long
const nameArb = fc.oneof(
  fc.stringMatching(/^[a-z]{1,8}$/),
  fc.constantFrom('!', '-x', '#a', '.hidden', '..dots', 'ünïcødé', 'x'.repeat(255), 'Z', '~tilde')
)
const sizeArb = fc.oneof(fc.constantFrom(0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7), fc.integer({ min: 0, max: 5 * CHUNK }))
const metaArb: fc.Arbitrary<Meta> = fc.record({
  mode: fc.oneof(fc.constantFrom(0o755, 0o644, 0o4755, 0o2755, 0o1777, 0o600, 0o444), fc.integer({ min: 0, max: 0o7777 })),
  uid: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 70000 })),
  gid: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 70000 })),
  mtime: fc.integer({ min: 0, max: 2 ** 32 + 1000 }),
  nsec: fc.integer({ min: 0, max: 999_999_999 }),
  xattr: fc.option(fc.tuple(fc.constantFrom('user.a', 'user.mime_type', 'trusted.overlay.opaque', 'security.x'), fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 40 })), { nil: undefined })
})

const leafArb: fc.Arbitrary<Node> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ kind: fc.constant('file' as const), size: sizeArb, seed: fc.integer({ min: 0, max: 3 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('symlink' as const), target: fc.oneof(fc.constant('a'), fc.stringMatching(/^[a-z/.]{1,60}$/), fc.constant('t'.repeat(4095))) }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'fifo' as const }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('chr' as const), major: fc.integer({ min: 1, max: 300 }), minor: fc.integer({ min: 0, max: 70000 }) }) },
  { weight: 2, arbitrary: fc.constant({ kind: 'hardlink' as const }) }
)
const treeArb = fc.letrec((tie) => ({
  dir: fc.record({
    kind: fc.constant('dir' as const),
    children: fc.uniqueArray(fc.tuple(nameArb, fc.oneof({ depthSize: 'small', withCrossShrink: true }, tie('leaf'), tie('dir'))), { selector: ([n]) => n, maxLength: 8 })
  }),
  leaf: leafArb
})).dir as fc.Arbitrary<Node & { kind: 'dir' }>

function content (size: number, seed: number): Buffer {
  // seeds repeat on purpose: identical files exercise chunk dedup
  const b = Buffer.alloc(size)
  for (let i = 0; i < size; i++) b[i] = seed === 0 ? 0 : (i * 31 + seed * 7 + (i >> 9)) & 0xff
  return b
}

async function materialise (dir: string, node: Node & { kind: 'dir' }, metas: Meta[]): Promise<void> {
  let firstFile: string | undefined
  let m = 0
  const apply = async (path: string, isLink: boolean, userXattrOk = true): Promise<void> => {
    const meta = metas[m++ % metas.length]!
    // Linux allows user.* only on regular files and directories; trusted.* and security.* go anywhere
    if (meta.xattr !== undefined && (userXattrOk || !meta.xattr[0].startsWith('user.'))) setAttributeSync(path, meta.xattr[0], Buffer.from(meta.xattr[1]))
    await lchown(path, meta.uid, meta.gid)
    if (!isLink) await chmod(path, meta.mode)
    await lutimes(path, meta.mtime + meta.nsec / 1e9, meta.mtime + meta.nsec / 1e9)
  }
  const walk = async (path: string, n: Node & { kind: 'dir' }): Promise<void> => {
    for (const [name, child] of n.children) {
      const p = join(path, name)
      switch (child.kind) {
        case 'file': await writeFile(p, content(child.size, child.seed)); firstFile ??= p; await apply(p, false); break
        case 'symlink': await symlink(child.target, p); await apply(p, true, false); break
        case 'fifo': execFileSync('mknod', [p, 'p']); await apply(p, false, false); break
        case 'chr': execFileSync('mknod', [p, 'c', String(child.major), String(child.minor)]); await apply(p, false, false); break
        case 'hardlink':
          if (firstFile === undefined) { await writeFile(p, 'lonely'); firstFile = p } else await link(firstFile, p)
          break
        case 'dir': await mkdir(p); await walk(p, child); await apply(p, false); break
      }
    }
  }
  await walk(dir, node)
  // the root itself is compared too
  await chmod(dir, 0o755)
  await lutimes(dir, 1_700_000_000, 1_700_000_000)
}

const variants: Array<{ compressor: Compressor, digester: Digester }> = [
  { compressor: 'zstd', digester: 'blake3' },
  { compressor: 'none', digester: 'sha256' },
  { compressor: 'lz4_block', digester: 'blake3' }
]

test('generated trees survive build → reader → unpack (dir and tar) unchanged', { skip: isRoot ? false : 'needs root (mknod, chown, trusted.* xattrs)', timeout: 600_000 }, async () => {
  let run = 0
  await fc.assert(fc.asyncProperty(treeArb, fc.array(metaArb, { minLength: 1, maxLength: 12 }), async (tree, metas) => {
    const work = await mkdtemp(join(tmpdir(), 'rafs-roundtrip-'))
    try {
      const v = variants[run++ % variants.length]!
      const src = join(work, 'src')
      await mkdir(src)
      await materialise(src, tree, metas)
      await buildFromDirectory(src, { bootstrap: join(work, 'image.boot'), blobDir: join(work, 'blobs'), chunkSize: CHUNK, ...v })
      const expected = await snapshotTree(src)

      await unpackImage(join(work, 'image.boot'), join(work, 'out'), { blobDir: join(work, 'blobs') })
      assert.deepEqual(diffTrees(expected, await snapshotTree(join(work, 'out'))), [], `unpack to dir (${v.compressor}/${v.digester})`)

      await unpackImage(join(work, 'image.boot'), join(work, 'out.tar'), { blobDir: join(work, 'blobs') })
      await mkdir(join(work, 'fromtar'))
      execFileSync('tar', ['--warning=no-timestamp', '--xattrs', '--xattrs-include=*', '--numeric-owner', '-xpf', join(work, 'out.tar'), '-C', join(work, 'fromtar')])
      // GNU tar gives extracted dirs the archived mtime only after their content; sockets are not in tars
      assert.deepEqual(diffTrees(expected, await snapshotTree(join(work, 'fromtar'))), [], `unpack to tar (${v.compressor}/${v.digester})`)
    } finally {
      await rm(work, { recursive: true, force: true })
    }
  }), { numRuns: 24 })
})
