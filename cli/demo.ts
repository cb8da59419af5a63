/**
 * `rafspeer demo`: the main job on embedded defaults. A swarm on this machine: the embedded registry, a scheduler
 * and three peer daemons; a sample image (by default the npm installation that ships with Node.js) built as RAFS v6
 * and pushed; every peer mounts it lazily with FUSE and reads it all, checked file by file against the source; a
 * report of bytes by source (registry, peers, cache) per peer. Cleans up after itself, also on Ctrl-C.
 *
 * `--offline` runs the format walk-through instead: build, check chunk by chunk, unpack and compare, kernel mount.
 */
import { existsSync } from 'node:fs'
import { lstat, mkdir, mkdtemp, readdir, readlink, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { InvalidArgumentError, type Command } from 'commander'
import { formatBytes, sha256File } from '../base/index.js'

function defaultSource (): string {
  const candidates = [
    join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm'),
    resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'node_modules')
  ]
  return candidates.find((c) => existsSync(c)) ?? process.cwd()
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
    .description('the swarm on this machine: embedded registry, a scheduler and 3 peers; a sample image pushed, mounted lazily and read by every peer; bytes by source per peer (--offline: the format walk-through)')
    .option('--source <dir>', 'directory to turn into an image (default: the npm that ships with Node.js)')
    .option('--nodes <n>', 'peer daemons', (v: string) => {
      const n = Number(v)
      if (!Number.isInteger(n) || n < 1 || n > 16) throw new InvalidArgumentError('expected 1 to 16')
      return n
    }, 3)
    .option('--work <dir>', 'working directory (default: a temporary one, removed afterwards)')
    .option('--offline', 'no daemons: build, check, unpack and compare, then mount with the kernel')
    .action(async (f: { source?: string, work?: string, nodes: number, offline?: boolean }) => {
      const source = f.source ?? defaultSource()
      if (f.offline === true) return await offlineDemo(source, f.work)
      const why = process.getuid?.() !== 0 ? 'FUSE mounts need root' : !existsSync('/dev/fuse') ? 'there is no /dev/fuse' : undefined
      if (why !== undefined) throw Object.assign(new Error(`the swarm demo cannot run here (${why}); try rafspeer demo --offline`), { code: 'RAFSPEER_ERR_DEMO' })
      const { runSwarm, formatSwarmReport } = await import('../sim/index.js')
      const say = (line: string): void => { process.stdout.write(line + '\n') }
      const controller = new AbortController()
      const onSignal = (): void => { say('interrupted: stopping the peers and cleaning up'); controller.abort(new Error('interrupted')) }
      process.once('SIGINT', onSignal)
      process.once('SIGTERM', onSignal)
      try {
        say(`rafspeer demo: ${f.nodes} peers, a scheduler and the embedded registry on this machine; image: ${source}`)
        // the first peer starts a little ahead, so the others find most chunks at a neighbour
        const report = await runSwarm({ nodes: f.nodes, source, staggerMs: 1500, signal: controller.signal, log: say, ...(f.work !== undefined ? { workDir: f.work } : {}) })
        say('')
        say(formatSwarmReport(report))
        if (!report.verifiedOk) process.exitCode = 1
        else say(`demo OK: the registry sent ${(report.registryBytes / report.blobBytes).toFixed(2)}x the image's blobs for ${report.nodes.length} peers`)
      } finally {
        process.off('SIGINT', onSignal)
        process.off('SIGTERM', onSignal)
      }
    })
}

async function offlineDemo (source: string, workDir: string | undefined): Promise<void> {
  const work = workDir ?? await mkdtemp(join(tmpdir(), 'rafspeer-demo-'))
  const say = (s: string): void => { process.stdout.write(s + '\n') }
  const [{ buildImage, directorySource, checkImage, unpackImage }, { kernelMount, kernelModeUnavailable }] = await Promise.all([
    import('../rafs/index.js'), import('../peer/index.js')
  ])
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
    if (workDir === undefined) await rm(work, { recursive: true, force: true })
  }
}
