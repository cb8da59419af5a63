/**
 * Hostile bootstraps: whatever the bytes, reading and checking end in success or a RafsFormatError (or a lookup
 * ENOENT/ENOTDIR), never a TypeError/RangeError, a hang or a huge allocation.
 */
import { NYDUS_FIXTURES } from '../test/helpers/fixtures.js'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import fc from 'fast-check'
import { RafsReader } from './reader.js'
import { checkImage } from './check.js'
import { RafsFormatError } from './layout.js'
import { walk } from './model.js'

const FIX = NYDUS_FIXTURES
const FIXTURES = [readFileSync(join(FIX, 'rafs-v6-2.2.boot')), readFileSync(join(FIX, '2fa78cad-inline-image.boot'))]

function allowed (err: unknown): boolean {
  if (err instanceof RafsFormatError) return true
  const code = (err as { code?: string }).code
  return code === 'ENOENT' || code === 'ENOTDIR'
}

/** Everything a consumer would do with a reader; returns normally or throws. */
function exercise (buf: Buffer): void {
  const r = RafsReader.fromBuffer(buf, 'hostile')
  const img = r.toImage()
  for (const [path, inode] of walk(img.root)) {
    const nid = r.lookup(path)
    const ri = r.inode(nid)
    r.xattrs(nid)
    if (ri.type === 'file') r.mapRange(nid, 0, ri.size)
    if (ri.type === 'symlink') r.readlink(nid)
    if (inode.type === 'dir') r.readdir(nid)
  }
}

async function survive (buf: Buffer, dir: string): Promise<void> {
  const t0 = Date.now()
  try { exercise(buf) } catch (err) {
    assert.ok(allowed(err), `unexpected ${(err as Error).name}: ${(err as Error).stack ?? ''}`)
  }
  const p = join(dir, 'boot')
  writeFileSync(p, buf)
  try {
    const report = await checkImage(p)
    assert.equal(typeof report.ok, 'boolean')
  } catch (err) {
    assert.ok(err instanceof RafsFormatError, `checkImage threw ${(err as Error).stack ?? ''}`)
  }
  assert.ok(Date.now() - t0 < 2000, 'took too long')
}

// [offset, width] of fields worth setting to absurd values: superblock, extension, device slot, blob table,
// root and file inodes, dirents, chunk slots and the chunk table
const FIELDS: Array<[number, number]> = [
  [0x404, 4], [0x408, 4], [0x40c, 1], [0x40d, 1], [0x40e, 2], [0x410, 8], [0x424, 4], [0x428, 4], [0x42c, 4], [0x450, 4],
  [0x456, 2], [0x458, 2], [0x45a, 1], [0x480, 8], [0x488, 8], [0x490, 4], [0x494, 4], [0x498, 8], [0x4a0, 8],
  [0x4a8, 8], [0x4b0, 4], [0x5c0, 4], [0x1040, 4], [0x1044, 4], [0x1048, 4], [0x104c, 4], [0x1050, 4], [0x1054, 4],
  [0x1058, 8], [0x1060, 8], [0x1068, 4], [0x106c, 4], [0x1070, 8], [0x1078, 8], [0x1080, 8],
  [0x3000, 2], [0x3002, 2], [0x3004, 2], [0x3008, 8], [0x3010, 4], [0x302c, 4],
  [0x3040, 8], [0x3048, 2], [0x304a, 1], [0x3054, 2], [0x3058, 8], [0x3060, 2], [0x3062, 1], [0x3064, 8], [0x306c, 2],
  [0x30a0, 2], [0x30a2, 2], [0x30a4, 2], [0x30a8, 8], [0x30b0, 4], [0x30e0, 2], [0x30e2, 2], [0x30e4, 4],
  [0x3100, 2], [0x3108, 8], [0x3140, 8], [0x4020, 4], [0x4024, 4], [0x4028, 4], [0x402c, 4], [0x4030, 8], [0x4038, 8], [0x4048, 4]
]
const ABSURD = [0n, 1n, 0x7fn, 0xffn, 0xfffn, 0x1000n, 0xffffn, 0x7fffffffn, 0x80000000n, 0xffffffffn, 0x100000000n, 0x1fffffffffffffn, 0xffffffffffffffffn]

const mutation = fc.oneof(
  fc.record({ kind: fc.constant('bytes' as const), edits: fc.array(fc.tuple(fc.nat(20479), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 24 }) }),
  fc.record({ kind: fc.constant('hot-bytes' as const), edits: fc.array(fc.tuple(fc.constantFrom(0x400, 0x480, 0x580, 0x1000, 0x3000, 0x30a0, 0x3100, 0x4000), fc.nat(255), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }) }),
  fc.record({ kind: fc.constant('truncate' as const), len: fc.nat(20480) }),
  fc.record({ kind: fc.constant('field' as const), fields: fc.array(fc.tuple(fc.constantFrom(...FIELDS), fc.oneof(fc.constantFrom(...ABSURD), fc.bigInt({ min: 0n, max: 0xffffffffffffffffn }))), { minLength: 1, maxLength: 3 }) })
)

type Mutation = typeof mutation extends fc.Arbitrary<infer T> ? T : never

function apply (base: Buffer, m: Mutation): Buffer {
  if (m.kind === 'truncate') return Buffer.from(base.subarray(0, m.len))
  const b = Buffer.from(base)
  if (m.kind === 'bytes') for (const [o, v] of m.edits) b[o % b.length] = v
  else if (m.kind === 'hot-bytes') for (const [o, d, v] of m.edits) b[(o + d) % b.length] = v
  else {
    for (const [[off, width], v] of m.fields) {
      const bytes = Buffer.alloc(8)
      bytes.writeBigUInt64LE(v & 0xffffffffffffffffn)
      bytes.copy(b, off, 0, width)
    }
  }
  return b
}

test('mutated fixture bootstraps: RafsFormatError or success, quickly', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'rafs-hostile-'))
  try {
    await fc.assert(fc.asyncProperty(fc.constantFrom(0, 1), mutation, async (which, m) => {
      await survive(apply(FIXTURES[which]!, m), dir)
    }), { numRuns: Number(process.env.HOSTILE_RUNS ?? 300), seed: Number(process.env.HOSTILE_SEED ?? 20261122) })
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

/** The 2.2 fixture with a few crafted edits; the root dirents sit at 0x3040 ('.', '..', lib.rs, sync_io.rs). */
function crafted (edit: (b: Buffer) => void): Buffer {
  const b = Buffer.from(FIXTURES[0]!)
  edit(b)
  return b
}

const CASES: Array<[string, Buffer, RegExp]> = [
  ['a child that is the root again', crafted(b => { b.writeBigUInt64LE(128n, 0x3058); b[0x3062] = 2 }), /nid 128 is reached twice/],
  ['a dirent nameoff past the block', crafted(b => { b.writeUInt16LE(5000, 0x306c) }), /nameoff 5000/],
  ['an absurd chunk count', crafted(b => { b.writeBigUInt64LE(1n << 50n, 0x30a8) }), /chunk slots for size .* run past the end/],
  ['an inode nid out of range', crafted(b => { b.writeBigUInt64LE(0xffffffffn, 0x3064) }), /nid 4294967295.*past the end/],
  ['a nid past 2^53', crafted(b => { b.writeBigUInt64LE(1n << 60n, 0x3064) }), /absurd nid/],
  ['a slot naming a missing chunk', crafted(b => { b.writeUInt16LE(1, 0x30e0) }), /failed to get chunk info for chunk 0\/1\/0/],
  ['unknown incompat bits', crafted(b => { b.writeUInt32LE(0x1c, 0x450) }), /feature_incompat 0x1c has unsupported bits 0x10/],
  ['an inline tail crossing the block', crafted(b => { b.writeBigUInt64LE(4050n, 0x3008) }), /crosses a block boundary/]
]

for (const [what, buf, re] of CASES) {
  test(`crafted: ${what}`, async () => {
    assert.throws(() => exercise(buf), (err: unknown) => err instanceof RafsFormatError && re.test(err.message))
    const dir = mkdtempSync(join(tmpdir(), 'rafs-hostile-'))
    try {
      writeFileSync(join(dir, 'boot'), buf)
      const report = await checkImage(join(dir, 'boot'))
      assert.equal(report.ok, false)
      assert.ok(report.errors.some(e => re.test(e)), report.errors.join('\n'))
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
}
