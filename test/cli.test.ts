/**
 * The `rafspeer` command as a user runs it: build (dir and tar via stdin), check, inspect, unpack (dir and tar),
 * merge; and bad input that must end in exit 1 with one clear line, never a stack trace.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { execFileSync } from 'node:child_process'
import { mkdtemp, mkdir, writeFile, readFile, symlink, link, rm, readdir, copyFile, open } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { runCli, type CliResult } from './helpers/cli.js'
import { snapshotTree, diffTrees } from './helpers/tree.js'
import { NYDUS_FIXTURES } from './helpers/fixtures.js'

const isRoot = process.getuid?.() === 0

async function sourceTree (dir: string): Promise<void> {
  await mkdir(join(dir, 'etc', 'conf.d'), { recursive: true })
  await writeFile(join(dir, 'etc', 'hosts'), '127.0.0.1 localhost\n')
  await writeFile(join(dir, 'etc', 'conf.d', 'big'), Buffer.alloc(300_000, 'abcdefgh'))
  await writeFile(join(dir, 'random'), createHash('sha512').update('seed').digest().toString('hex').repeat(2000))
  await writeFile(join(dir, 'empty'), '')
  await symlink('etc/hosts', join(dir, 'hosts-link'))
  await link(join(dir, 'etc', 'hosts'), join(dir, 'hosts-hard'))
}

/** A failure a user sees: exit 1, a one-line `rafspeer: error:`, no stack frames. */
function assertCleanFailure (r: CliResult, pattern: RegExp): void {
  assert.equal(r.code, 1, `exit code (stdout: ${r.stdout} stderr: ${r.stderr})`)
  const text = r.stderr + r.stdout
  assert.match(text, pattern)
  assert.doesNotMatch(text, /^\s+at .+:\d+:\d+\)?$/m, 'no stack trace')
}

test('build, check, inspect and unpack a directory through the CLI', async () => {
  const work = await mkdtemp(join(tmpdir(), 'rafs-cli-'))
  try {
    const src = join(work, 'src')
    await sourceTree(src)
    const boot = join(work, 'image.boot')
    const blobs = join(work, 'blobs')
    const r = await runCli(['build', src, '-B', boot, '-D', blobs, '--blob-cache-dir', join(work, 'cache'), '--chunk-size', '0x10000', '-J', join(work, 'build.json')])
    assert.equal(r.code, 0, r.stderr)
    const report = JSON.parse(await readFile(join(work, 'build.json'), 'utf8')) as { blobs: string[], fs_version: string, stats: { files: number } }
    assert.equal(report.fs_version, '6')
    assert.equal(report.blobs.length, 1)
    const blobId = report.blobs[0]!
    assert.deepEqual(await readdir(blobs), [blobId])
    assert.equal(createHash('sha256').update(await readFile(join(blobs, blobId))).digest('hex'), blobId, 'blob named by its sha256')
    assert.deepEqual(await readdir(join(work, 'cache')), [`${blobId}.blob.data`])

    const check = await runCli(['check', boot, '-D', blobs, '--json'])
    assert.equal(check.code, 0, check.stdout + check.stderr)
    const cr = JSON.parse(check.stdout) as { ok: boolean, blobs: Array<{ chunksVerified: number, chunkCount: number }> }
    assert.equal(cr.ok, true)
    assert.equal(cr.blobs[0]!.chunksVerified, cr.blobs[0]!.chunkCount)
    assert.equal((await runCli(['check', boot, '--blob-cache-dir', join(work, 'cache')])).code, 0)

    const insp = await runCli(['inspect', boot, '--json', '--tree'])
    assert.equal(insp.code, 0, insp.stderr)
    const ir = JSON.parse(insp.stdout) as { counts: { files: number, symlinks: number, hardlinks: number }, tree: Array<{ path: string }> }
    assert.deepEqual([ir.counts.files, ir.counts.symlinks, ir.counts.hardlinks], [4, 1, 1])
    assert.ok(ir.tree.some((e) => e.path === '/etc/conf.d/big'))
    const text = (await runCli(['inspect', boot])).stdout
  assert.match(text, /^flags\s+0x[0-9a-f]+ \(.*COMPRESSION_ZSTD/m)
  assert.match(text, /^flags .*HASH_BLAKE3/m)

    const expected = await snapshotTree(src)
    assert.equal((await runCli(['unpack', boot, '-D', blobs, '-o', join(work, 'out')])).code, 0)
    assert.deepEqual(diffTrees(expected, await snapshotTree(join(work, 'out')), { ignore: ['mtimeSec', 'mtimeNsec'] }).filter((d) => !d.startsWith('"/":')), [])
    assert.equal((await runCli(['unpack', boot, '--blob-cache-dir', join(work, 'cache'), '-o', join(work, 'out.tar')])).code, 0)
    await mkdir(join(work, 'x'))
    execFileSync('tar', ['-xpf', join(work, 'out.tar'), '-C', join(work, 'x')])
    assert.deepEqual(diffTrees(expected, await snapshotTree(join(work, 'x')), { ignore: ['mtimeSec', 'mtimeNsec'] }).filter((d) => !d.startsWith('"/":')), [])
  } finally {
    await rm(work, { recursive: true, force: true })
  }
})

test('tar layers from stdin, merged with whiteouts, through the CLI', async () => {
  const work = await mkdtemp(join(tmpdir(), 'rafs-cli-'))
  try {
    await mkdir(join(work, 'l1', 'dir'), { recursive: true })
    await writeFile(join(work, 'l1', 'dir', 'gone'), 'lower')
    await writeFile(join(work, 'l1', 'keep'), 'lower keep')
    await mkdir(join(work, 'l2', 'dir'), { recursive: true })
    await writeFile(join(work, 'l2', 'dir', '.wh.gone'), '')
    await writeFile(join(work, 'l2', 'new'), 'upper')
    const boots: string[] = []
    for (const [i, layer] of ['l1', 'l2'].entries()) {
      const tarBytes = execFileSync('tar', ['-cz', '-C', join(work, layer), '.'])
      const boot = join(work, `layer${i}.boot`)
      const r = await runCli(['build', '-', '--type', 'targz-rafs', '-B', boot, '-D', join(work, 'blobs')], { input: tarBytes })
      assert.equal(r.code, 0, r.stderr)
      boots.push(boot)
    }
    const merged = join(work, 'merged.boot')
    const m = await runCli(['merge', ...boots, '-B', merged])
    assert.equal(m.code, 0, m.stderr)
    assert.equal((await runCli(['check', merged, '-D', join(work, 'blobs')])).code, 0)
    const ir = JSON.parse((await runCli(['inspect', merged, '--json', '--tree'])).stdout) as { blobs: unknown[], tree: Array<{ path: string }> }
    assert.equal(ir.blobs.length, 2)
    assert.deepEqual(ir.tree.map((e) => e.path).sort(), ['/', '/dir', '/keep', '/new'])
    assert.equal((await runCli(['unpack', merged, '-D', join(work, 'blobs'), '-o', join(work, 'out')])).code, 0)
    assert.equal(await readFile(join(work, 'out', 'keep'), 'utf8'), 'lower keep')
    assert.deepEqual(await readdir(join(work, 'out', 'dir')), [])
  } finally {
    await rm(work, { recursive: true, force: true })
  }
})

test('bad input ends in exit 1 with a clear one-line error', async () => {
  const work = await mkdtemp(join(tmpdir(), 'rafs-cli-'))
  try {
    const src = join(work, 'src')
    await sourceTree(src)
    const boot = join(work, 'image.boot')
    const blobs = join(work, 'blobs')
    assert.equal((await runCli(['build', src, '-B', boot, '-D', blobs])).code, 0)

    assertCleanFailure(await runCli(['build', join(work, 'nope'), '-B', join(work, 'x.boot'), '-D', blobs]), /nope/)
    assertCleanFailure(await runCli(['build', src, '-B', join(work, 'x.boot'), '-D', blobs, '--chunk-size', '0x1234']), /chunk.size/i)
    assertCleanFailure(await runCli(['build', join(src, 'etc', 'hosts'), '--type', 'tar-rafs', '-B', join(work, 'x.boot'), '-D', blobs]), /tar/i)

    await writeFile(join(work, 'garbage.boot'), Buffer.alloc(8192, 0x5a))
    assertCleanFailure(await runCli(['check', join(work, 'garbage.boot')]), /magic/i)
    assertCleanFailure(await runCli(['inspect', join(work, 'garbage.boot')]), /magic/i)
    const whole = await readFile(boot)
    await writeFile(join(work, 'truncated.boot'), whole.subarray(0, 5000))
    assertCleanFailure(await runCli(['check', join(work, 'truncated.boot')]), /4096|truncat|past the end|size/i)
    assertCleanFailure(await runCli(['unpack', boot, '-D', join(work, 'empty-dir'), '-o', join(work, 'o1')]), /not found|no such|ENOENT/i)

    // one flipped byte in the stored chunk data: check names the digest mismatch, unpack refuses to write bad data
    const [blobId] = await readdir(blobs)
    await copyFile(join(blobs, blobId!), join(work, 'blob.orig'))
    const fh = await open(join(blobs, blobId!), 'r+')
    const b = Buffer.alloc(1)
    await fh.read(b, 0, 1, 100)
    b[0] = b[0]! ^ 0xff
    await fh.write(b, 0, 1, 100)
    await fh.close()
    const bad = await runCli(['check', boot, '-D', blobs])
    assert.equal(bad.code, 1)
    assert.match(bad.stdout, /sha256|digest|decompress/i)
    assertCleanFailure(await runCli(['unpack', boot, '-D', blobs, '-o', join(work, 'o2')]), /digest|decompress/i)
    assertCleanFailure(await runCli(['nonsense-command']), /unknown command/i)
    // a snapshotter told to mount through a daemon that is not there stops at once, naming it
    assertCleanFailure(await runCli(['snapshotter', '--address', join(work, 'snap.sock'), '--daemon-socket', join(work, 'none.sock'), '--work-dir', join(work, 'w')]),
      /daemon-socket .*none\.sock\) does not answer.*RAFSPEER_ERR_SNAPSHOT_UNAVAILABLE/)
  } finally {
    await rm(work, { recursive: true, force: true })
  }
})

test('check on the Nydus fixtures: structure valid, chunks verify, the renamed blob is reported', async () => {
  const boot = join(NYDUS_FIXTURES, 'rafs-v6-2.2.boot')
  assert.equal((await runCli(['check', boot])).code, 0)
  assert.equal((await runCli(['check', boot, '--blob-cache-dir', NYDUS_FIXTURES])).code, 0)
  const withBlob = await runCli(['check', boot, '-D', NYDUS_FIXTURES, '--json'])
  assert.equal(withBlob.code, 1, 'the fixture blob was edited upstream: its sha256 is not its name')
  const report = JSON.parse(withBlob.stdout) as { errors: string[], blobs: Array<{ chunksVerified: number }> }
  assert.equal(report.errors.length, 1)
  assert.match(report.errors[0]!, /4b16fb83/)
  assert.equal(report.blobs[0]!.chunksVerified, 2)
})

test('unpack of the Nydus fixture from its blob and from its view are identical', { skip: isRoot ? false : 'needs root to chown' }, async () => {
  const work = await mkdtemp(join(tmpdir(), 'rafs-cli-'))
  try {
    const boot = join(NYDUS_FIXTURES, 'rafs-v6-2.2.boot')
    assert.equal((await runCli(['unpack', boot, '-D', NYDUS_FIXTURES, '-o', join(work, 'a')])).code, 0)
    await mkdir(join(work, 'views'))
    const blobId = 'be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef'
    await copyFile(join(NYDUS_FIXTURES, `${blobId}.blob.data`), join(work, 'views', `${blobId}.blob.data`))
    assert.equal((await runCli(['unpack', boot, '--blob-cache-dir', join(work, 'views'), '-o', join(work, 'b')])).code, 0)
    assert.deepEqual(diffTrees(await snapshotTree(join(work, 'a')), await snapshotTree(join(work, 'b'))), [])
    assert.equal((await readFile(join(work, 'a', 'lib.rs'))).length, 16931)
  } finally {
    await rm(work, { recursive: true, force: true })
  }
})

test('demo --offline: build, check, unpack and (as root) kernel-mount a directory, all equal to the source', async () => {
  const work = await mkdtemp(join(tmpdir(), 'rafs-cli-'))
  try {
    await sourceTree(join(work, 'src'))
    const r = await runCli(['demo', '--offline', '--source', join(work, 'src')])
    assert.equal(r.code, 0, r.stdout + r.stderr)
    assert.match(r.stdout, /0 differences/)
    assert.match(r.stdout, /demo OK/)
  } finally {
    await rm(work, { recursive: true, force: true })
  }
})

test('demo: registry, scheduler and 3 peers; every peer reads the image; bytes by source per peer; nothing left behind', { skip: process.getuid?.() !== 0 ? 'needs root (FUSE)' : undefined }, async () => {
  const work = await mkdtemp(join(tmpdir(), 'rafs-cli-'))
  try {
    await sourceTree(join(work, 'src'))
    const r = await runCli(['demo', '--source', join(work, 'src'), '--work', work], { timeoutMs: 300_000 })
    assert.equal(r.code, 0, r.stdout + r.stderr)
    assert.match(r.stdout, /every node read exactly the published tree/)
    assert.match(r.stdout, /demo OK/)
    // one row per peer: node, time, registry, peers, cache, uploaded
    const rows = r.stdout.split('\n').filter(l => /^ {2}[1-3] +(erofs-lazy|fuse|kernel) +\d/.test(l))
    assert.equal(rows.length, 3, r.stdout)
    // the run directory is gone, and no mount is left under it
    assert.deepEqual((await readdir(work)).filter(n => n.startsWith('rafspeer-swarm-')), [])
    assert.equal((await readFile('/proc/mounts', 'utf8')).includes(work), false)
  } finally {
    await rm(work, { recursive: true, force: true })
  }
})

test('sim: 2 real daemons, a scheduler and the embedded registry; one JSON report; bad flags are one-line errors', { skip: process.getuid?.() !== 0 ? 'needs root (FUSE)' : undefined }, async () => {
  const bad = await runCli(['sim', '--nodes', '0'])
  assert.equal(bad.code, 1)
  assert.match(bad.stderr, /--nodes/)
  const staggerMs = 4000
  const r = await runCli(['sim', '--nodes', '2', '--image-size', '8MiB', '--bandwidth', '64MiB', '--stagger-ms', String(staggerMs), '--json'], { timeoutMs: 180_000 })
  assert.equal(r.code, 0, r.stdout + r.stderr)
  const report = JSON.parse(r.stdout) as { imageBytes: number, blobBytes: number, registryBytes: number, peerBytes: number, verifiedOk: boolean, wallMs: number, nodes: Array<{ id: number, completionMs: number, startMs: number, mountMs: number, readWaitMaxMs: number, registryBytes: number, peerBytes: number }> }
  // a staggered node's completion is its own time, from its own start (8 MiB from a neighbour: well under the stagger)
  const second = report.nodes.find(n => n.id === 2)!
  assert.ok(Math.abs(second.startMs - staggerMs) < 1000, `node 2 started at ${second.startMs} ms`)
  assert.ok(second.completionMs < staggerMs, `node 2 reported ${second.completionMs} ms, its stagger included`)
  assert.equal(report.verifiedOk, true)
  assert.equal(report.nodes.length, 2)
  assert.ok(report.imageBytes >= 8 << 20)
  // two nodes reading the same image at once cost the registry about one copy
  assert.ok(report.registryBytes <= 1.1 * report.blobBytes + (1 << 20), `registry sent ${report.registryBytes} for ${report.blobBytes}`)
  assert.ok(report.peerBytes > 0)
  for (const n of report.nodes) assert.ok(n.completionMs > 0 && n.registryBytes + n.peerBytes >= report.imageBytes)
  // the mount is part of a node's time, and a part only
  for (const n of report.nodes) assert.ok(n.mountMs > 0 && n.mountMs < n.completionMs, `node ${n.id}: mount ${n.mountMs} of ${n.completionMs} ms`)
  // every node fetched what it read: its reads waited, within its reading time
  for (const n of report.nodes) assert.ok(n.readWaitMaxMs > 0 && n.readWaitMaxMs < n.completionMs - n.mountMs, `node ${n.id}: longest read wait ${n.readWaitMaxMs} ms`)
})
