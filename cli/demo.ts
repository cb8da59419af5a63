/**
 * `rafspeer demo`: the main job on embedded defaults. Builds a RAFS v6 image of a real directory (by default the
 * npm installation that ships with Node.js), checks it chunk by chunk, unpacks it and compares the result with
 * the source file by file, then mounts it with the kernel's EROFS driver and compares again. Later capabilities (registry, lazy mounts, peers) extend this same walk-through.
 */
import { createHash } from 'node:crypto'
import { createReadStream, existsSync } from 'node:fs'
import { lstat, mkdtemp, readdir, readlink, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Command } from 'commander'
import { buildImage } from '../rafs/build.js'
import { directorySource } from '../rafs/source-dir.js'
import { checkImage } from '../rafs/check.js'
import { unpackImage } from '../rafs/unpack.js'
import { formatBytes } from './util.js'
import { kernelMount, kernelModeUnavailable } from '../peer/kernel-mount.js'
import { mkdir } from 'node:fs/promises'

function defaultSource (): string {
  const candidates = [
    join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm'),
    resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'node_modules')
  ]
  return candidates.find((c) => existsSync(c)) ?? process.cwd()
}

async function sha256File (path: string): Promise<string> {
  const h = createHash('sha256')
  for await (const piece of createReadStream(path)) h.update(piece as Buffer)
  return h.digest('hex')
}

/** Compares two trees by type, permission bits, size, content hash and symlink target; returns the differences. */
async function compareTrees (a: string, b: string, limit = 20): Promise<{ entries: number, differences: string[] }> {
  const differences: string[] = []
  let entries = 0
  const stack = ['']
  while (stack.length > 0 && differences.length < limit) {
    const rel = stack.pop()!
    const [sa, sb] = await Promise.all([lstat(join(a, rel)), lstat(join(b, rel)).catch(() => undefined)])
    entries++
    if (sb === undefined) { differences.push(`${rel || '/'}: missing`); continue }
    if ((sa.mode & 0o177777) !== (sb.mode & 0o177777)) differences.push(`${rel || '/'}: mode ${sa.mode.toString(8)} vs ${sb.mode.toString(8)}`)
    if (sa.isFile() && (sa.size !== sb.size || await sha256File(join(a, rel)) !== await sha256File(join(b, rel)))) differences.push(`${rel}: content differs`)
    if (sa.isSymbolicLink() && await readlink(join(a, rel)) !== await readlink(join(b, rel))) differences.push(`${rel}: link target differs`)
    if (sa.isDirectory()) for (const name of await readdir(join(a, rel))) stack.push(join(rel, name))
  }
  return { entries, differences }
}

export function registerDemoCommand (program: Command): void {
  program.command('demo')
    .description('build, check, unpack and compare a RAFS image of a real directory, with embedded defaults')
    .option('--source <dir>', 'directory to turn into an image (default: the npm that ships with Node.js)')
    .option('--work <dir>', 'working directory (default: a temporary one, removed afterwards)')
    .action(async (f: { source?: string, work?: string }) => {
      const source = f.source ?? defaultSource()
      const work = f.work ?? await mkdtemp(join(tmpdir(), 'rafspeer-demo-'))
      const say = (s: string): void => { process.stdout.write(s + '\n') }
      try {
        say(`1. build: ${source}`)
        const bootstrap = join(work, 'image.boot')
        const built = await buildImage(directorySource(source), { bootstrap, blobDir: join(work, 'blobs'), blobCacheDir: join(work, 'cache') })
        const s = built.stats
        const stored = built.blobs.reduce((n, b) => n + b.size, 0)
        say(`   ${s.inodes} inodes, ${formatBytes(s.dataBytes)} of file data -> ${formatBytes(stored)} in ${built.blobs.length} blob(s), ${s.chunks} chunks (${s.dedupedChunks} deduplicated), ${(s.elapsedMs / 1000).toFixed(2)} s`)
        for (const b of built.blobs) say(`   blob ${b.blobId}`)

        say('2. check: every structural rule, every chunk decompressed and its digest verified')
        const report = await checkImage(bootstrap, { blobDir: join(work, 'blobs') })
        const verified = report.blobs.reduce((n, b) => n + (b.chunksVerified ?? 0), 0)
        say(`   ${report.ok ? 'OK' : 'FAILED'}: ${verified} chunks verified, ${report.errors.length} errors`)
        for (const e of report.errors.slice(0, 10)) say(`   error: ${e}`)

        say('3. unpack and compare with the source')
        const out = join(work, 'unpacked')
        const unpacked = await unpackImage(bootstrap, out, { blobDir: join(work, 'blobs') })
        const cmp = await compareTrees(source, out)
        say(`   ${unpacked.files} files, ${unpacked.dirs} dirs, ${unpacked.symlinks} symlinks unpacked; ${cmp.entries} entries compared, ${cmp.differences.length} differences`)
        for (const d of cmp.differences) say(`   differs: ${d}`)
        let kernelDiffs = 0
        const why = await kernelModeUnavailable()
        if (why === undefined) {
          say('4. kernel mode: mount bootstrap + uncompressed views with the kernel EROFS driver, compare with the source')
          const mnt = join(work, 'mnt')
          await mkdir(mnt)
          const m = await kernelMount(bootstrap, built.blobs.map((b) => b.viewPath!), mnt)
          try {
            const k = await compareTrees(source, mnt)
            kernelDiffs = k.differences.length
            say(`   ${k.entries} entries compared through the kernel mount, ${k.differences.length} differences`)
            for (const d of k.differences) say(`   differs: ${d}`)
          } finally {
            await m.unmount()
          }
        } else say(`4. kernel mode skipped: ${why}`)
        if (!report.ok || cmp.differences.length > 0 || kernelDiffs > 0) process.exitCode = 1
        else say('demo OK')
      } finally {
        if (f.work === undefined) await rm(work, { recursive: true, force: true })
      }
    })
}
