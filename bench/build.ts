/**
 * Image build speed: `rafspeer build` against `mkfs.erofs` on the same tree in the same run.
 *
 * Baseline: mkfs.erofs 1.5 with 1 MiB chunks and a separate blob device (`--chunksize=1048576 --blobdev=`), the
 * closest thing erofs-utils has to a RAFS build (uncompressed, no digests). We report ratios of wall time
 * (baseline / ours: above 1 means faster than mkfs.erofs) for: rafspeer with compression none and zstd, and the
 * stored size against the source bytes. The tree is the synthetic one below, or any directory (`--source DIR`,
 * e.g. the Linux source tree).
 *
 * Each round times mkfs.erofs, then none, then zstd, and the figures are the medians over the rounds (the
 * ratios are per round, so a neighbour's load that comes and goes hits both sides of the ratio it spoils).
 * The page cache is warmed before every timed build, not once: this machine's memory reclaim pages out file
 * data idle for a minute, which would hand whoever runs last a colder cache.
 */
import { execFileSync, spawnSync } from 'node:child_process'
import { mkdtemp, mkdir, rm, writeFile, stat, readdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { buildFromDirectory } from '../rafs/index.js'
import type { Compressor } from '../rafs/index.js'

export interface BuildBenchResult {
  source: string
  sourceBytes: number
  entries: number
  rounds: number
  mkfsErofsMs: number
  runs: Array<{ compressor: Compressor, ms: number, ratioVsMkfs: number, storedBytes: number, storedRatio: number }>
}

export interface BuildBenchOptions {
  /** rounds of (mkfs.erofs, none, zstd); default 3 */
  rounds?: number
}

/** A synthetic tree shaped like a container image: many small text-like files plus some large binaries. */
export async function makeTree (dir: string, opts: { smallFiles?: number, largeFiles?: number, largeSize?: number } = {}): Promise<void> {
  const small = opts.smallFiles ?? 4000
  const large = opts.largeFiles ?? 6
  const largeSize = opts.largeSize ?? 48 << 20
  const words = 'lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore'.split(' ')
  for (let i = 0; i < small; i++) {
    const d = join(dir, `pkg${i % 40}`, `mod${i % 7}`)
    if (i < 280) await mkdir(d, { recursive: true })
    const n = 200 + (i * 7919) % 12000
    let s = ''
    while (s.length < n) s += words[(s.length * 31 + i) % words.length] + (s.length % 80 < 6 ? '\n' : ' ')
    await writeFile(join(d, `file${i}.txt`), s)
  }
  await mkdir(join(dir, 'bin'), { recursive: true })
  for (let i = 0; i < large; i++) {
    // half random (incompressible, like model weights), half repetitive (like binaries with padding)
    const b = i % 2 === 0 ? randomBytes(largeSize) : Buffer.alloc(largeSize, `block${i}-`.repeat(100))
    await writeFile(join(dir, 'bin', `blob${i}.bin`), b)
  }
}

async function treeStats (dir: string): Promise<{ bytes: number, entries: number }> {
  let bytes = 0
  let entries = 0
  const stack = [dir]
  while (stack.length > 0) {
    const d = stack.pop()!
    for (const e of await readdir(d, { withFileTypes: true })) {
      entries++
      const p = join(d, e.name)
      if (e.isDirectory()) stack.push(p)
      else if (e.isFile()) bytes += (await stat(p)).size
    }
  }
  return { bytes, entries }
}

function settle (src: string): void {
  // dirty pages of the previous build are written back first, so the next one does not pay for them
  spawnSync('sh', ['-c', 'sync'])
  execFileSync('tar', ['-cf', '/dev/null', '-C', src, '.'])
  execFileSync('sh', ['-c', `find "${src}" -type f -exec cat {} + > /dev/null`])
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 === 1 ? s[s.length >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2
}

export async function benchBuild (source?: string, opts: BuildBenchOptions = {}): Promise<BuildBenchResult> {
  const rounds = opts.rounds ?? 3
  const work = await mkdtemp(join(tmpdir(), 'rafs-bench-build-'))
  try {
    let src = source
    if (src === undefined) {
      src = join(work, 'src')
      await mkdir(src)
      await makeTree(src)
    }
    const { bytes, entries } = await treeStats(src)
    const compressors: Compressor[] = ['none', 'zstd']
    const mkfsMs: number[] = []
    const ms = new Map<Compressor, number[]>(compressors.map(c => [c, []]))
    const ratios = new Map<Compressor, number[]>(compressors.map(c => [c, []]))
    const stored = new Map<Compressor, number>()
    for (let round = 0; round < rounds; round++) {
      settle(src)
      const t0 = performance.now()
      execFileSync('mkfs.erofs', ['--quiet', '--chunksize=1048576', `--blobdev=${join(work, 'mkfs.blob')}`, join(work, 'mkfs.img'), src], { stdio: 'ignore' })
      const base = performance.now() - t0
      mkfsMs.push(base)
      await rm(join(work, 'mkfs.blob'), { force: true })
      await rm(join(work, 'mkfs.img'), { force: true })
      for (const compressor of compressors) {
        settle(src)
        const out = join(work, compressor)
        const t = performance.now()
        const res = await buildFromDirectory(src, { bootstrap: join(out, 'image.boot'), blobDir: join(out, 'blobs'), compressor })
        const took = performance.now() - t
        ms.get(compressor)!.push(took)
        ratios.get(compressor)!.push(base / took)
        stored.set(compressor, res.blobs.reduce((n, b) => n + b.size, 0) + (await stat(res.bootstrap)).size)
        await rm(out, { recursive: true, force: true })
      }
    }
    return {
      source: source ?? 'synthetic tree (4000 small text files, 6 × 48 MiB binaries)',
      sourceBytes: bytes,
      entries,
      rounds,
      mkfsErofsMs: median(mkfsMs),
      runs: compressors.map(compressor => ({
        compressor,
        ms: median(ms.get(compressor)!),
        ratioVsMkfs: median(ratios.get(compressor)!),
        storedBytes: stored.get(compressor)!,
        storedRatio: stored.get(compressor)! / bytes
      }))
    }
  } finally {
    await rm(work, { recursive: true, force: true })
  }
}

export function formatBuildBench (r: BuildBenchResult): string {
  const mb = (n: number): string => (n / (1 << 20)).toFixed(1)
  const lines = [
    `build: ${r.source}: ${r.entries} entries, ${mb(r.sourceBytes)} MiB (medians of ${r.rounds} rounds)`,
    `  mkfs.erofs --chunksize=1048576 --blobdev (baseline): ${r.mkfsErofsMs.toFixed(0)} ms (${(r.sourceBytes / (1 << 20) / (r.mkfsErofsMs / 1000)).toFixed(0)} MiB/s)`
  ]
  for (const run of r.runs) {
    lines.push(`  rafspeer build --compressor ${run.compressor}: ${run.ms.toFixed(0)} ms (${(r.sourceBytes / (1 << 20) / (run.ms / 1000)).toFixed(0)} MiB/s) = ${run.ratioVsMkfs.toFixed(2)}x mkfs.erofs speed; stored ${mb(run.storedBytes)} MiB = ${run.storedRatio.toFixed(3)} of source`)
  }
  return lines.join('\n')
}
