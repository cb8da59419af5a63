/**
 * Read speed once the data is local: the same tree read from the native disk (baseline), through a rafspeer FUSE
 * mount whose blob cache is complete, and through kernel EROFS mounts of that cache, all in the same run.
 *
 * State for every run: rafspeer's cache warm (every chunk present and verified, prefetch `all` settled), the
 * page cache cold (`sync; echo 3 > /proc/sys/vm/drop_caches` before each run), so every target reads from the
 * same disk. Workloads: fio sequential read (1 MiB, psync) of the big files, fio 4 KiB random read (psync,
 * 1 and 4 jobs), and `tar -cf - . | cat >/dev/null` of the small-file tree and of the whole tree. Each runs
 * `runs` times; the median is reported, with ratios against native next to the published anchors (nydusd FUSE
 * 0.70x sequential, 0.76x random, 0.33x tar of small files; EROFS over loop 0.90x sequential). Every target is
 * mounted at once and the samples are interleaved (run r of a workload on every target, each run starting with
 * another target), so the drift of this shared VM's load and disk falls on all targets alike.
 *
 * The FUSE server runs on this process's event loop: every measurement is an asynchronous child process.
 * More measurements explain the figures: the kernel's FUSE tracepoints over one run of each FUSE workload
 * (requests per file or per IO, server time per request, and the JS time of `ImageFiles.read`); the tar over a
 * no-op fuse-native filesystem serving the tree's metadata from memory (`fuse-noop.ts`), the most any
 * fuse-native server on one event loop can do. Kernel targets, each its own mount of the same cache files:
 * `kernel` is `kernelMount`'s defaults, which `MountManager`'s kernel mode uses (blob loop devices with direct
 * I/O, the bootstrap's buffered); `kernel-buffered` every loop device buffered (before direct I/O became the
 * default); `kernel-dio-all` the bootstrap's device with direct I/O too. `only: 'kernel'` measures native and the
 * kernel targets alone (the cache is still filled through the FUSE mount's prefetch).
 */
import { mkdir, rm, mkdtemp, readFile, rmdir } from 'node:fs/promises'
import { loadavg } from 'node:os'
import { basename, join } from 'node:path'
import { BlobCache } from '../cache/index.js'
import { buildFromDirectory } from '../rafs/index.js'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import {
  FuseNativeBackend, MountManager, kernelMount, type BlobFsStats, type KernelDevice, type KernelMount, type KernelMountOptions
} from '../peer/index.js'
import { dropCaches, fio, forceUnmountUnder, machineNotes, median, tarSeconds } from './measure.js'
import { traceFuse, type FuseTrace } from './fuse-trace.js'
import { mountNoopFuse } from './fuse-noop.js'
import { TimedBackend, makeWarmTree, type WarmTree } from './warm-setup.js'

const execFileP = promisify(execFile)

export interface WarmReadOptions {
  /** small files, 1–16 KiB each (default 20000) */
  smallFiles?: number
  bigFiles?: number
  /** default 256 MiB: 4 × 256 MiB = 1 GiB for fio */
  bigFileBytes?: number
  /** repetitions of each measurement; the median is reported (default 5: this VM's disk is noisy) */
  runs?: number
  /** bytes each random-read job reads (default 32 MiB: 8192 reads of 4 KiB) */
  randBytesPerJob?: number
  /** parent of the work directory; must be on the native disk (default /var/tmp) */
  workParent?: string
  /** native plus only the FUSE targets (FUSE, traces, no-op), the kernel ones, or erofs-lazy (default: all) */
  only?: 'fuse' | 'kernel' | 'lazy'
  /** a directory copied in as the small-file tree (`share/`) instead of generated files, e.g. a Linux source tree */
  smallTree?: string
  /** the fio workloads alone, on the big files (no small-file tree, no tar, no traces): quick, for iterating */
  fioOnly?: boolean
}

export type WorkloadName = 'seq' | 'rand1' | 'rand4' | 'tarSmall' | 'tarAll'
export const WORKLOADS: WorkloadName[] = ['seq', 'rand1', 'rand4', 'tarSmall', 'tarAll']
const FIO_WORKLOADS: WorkloadName[] = ['seq', 'rand1', 'rand4']
export type TargetName = 'native' | 'fuse' | 'erofs-lazy' | 'erofs-lazy-direct' | 'erofs-lazy-buffered' | 'erofs-lazy-fuse' |
  'kernel' | 'kernel-direct' | 'kernel-loop' | 'kernel-buffered' | 'fuse-noop'
const TARGETS: TargetName[] = ['native', 'fuse', 'erofs-lazy', 'erofs-lazy-direct', 'erofs-lazy-buffered', 'erofs-lazy-fuse', 'kernel',
  'kernel-direct', 'kernel-loop', 'kernel-buffered', 'fuse-noop']
/**
 * `kernel` is `kernelMount`'s defaults (file-backed where the kernel can, buffered reads of the cache files),
 * `kernel-direct` the same with EROFS's direct reads (`MountManager`'s kernel mode picks one of the two per image:
 * `directRead`); `kernel-loop` the loop devices with direct I/O it used before, `kernel-buffered` buffered loops
 */
const KERNEL_VARIANTS: Array<[TargetName, KernelMountOptions]> = [['kernel', {}], ['kernel-direct', { directRead: true }],
  ['kernel-loop', { backing: 'loop' }], ['kernel-buffered', { backing: 'loop', directIo: false }]]

/** seq/rand: MB/s (10^6) and IOPS; tar: seconds. `load1` is the 1-minute load average before each sample. */
export interface WorkloadResult { samples: number[], median: number, unit: 'MB/s' | 's', iops?: number, load1: number[] }

export interface TargetResult {
  target: TargetName
  workloads: Partial<Record<WorkloadName, WorkloadResult>>
  /** kernel targets: each loop device's backing file (name only) and whether the kernel ran it with direct I/O */
  loops?: Array<{ file: string, directIo: boolean }>
}

export type TracedRun = FuseTrace & {
  workload: WorkloadName
  /** files for tar, fio IOs for fio */
  units: number
  requestsPerUnit: number
  /** `ImageFiles.read` as JS saw it during the run: calls and mean time (rafspeer only) */
  jsReads?: { count: number, meanUs: number }
}

export interface WarmReadResult {
  machine: string
  tree: WarmTree
  runs: number
  setup: { buildMs: number, prefetchMs: number, prefetchChunks: number }
  targets: TargetResult[]
  /** throughput ratio target/native for MB/s workloads, native/target time for tar: above 1 is faster than native */
  ratios: Partial<Record<TargetName, Partial<Record<WorkloadName, number>>>>
  /** `ImageFiles.read` calls of every FUSE run (traced ones included), from the mount's stats; absent with `only: 'kernel'` */
  fuseReads?: { reads: number, readBytes: number, readErrors: number, fromCacheBytes: number }
  /** one traced run each (page cache cold) */
  traces: Array<TracedRun & { target: 'fuse' | 'fuse-noop' }>
  /** the erofs-lazy target's blob files over all its runs: READs answered natively vs misses, READ sizes */
  lazyKernel?: BlobFsStats
  /** the `erofs-lazy` target (the mount manager's `directRead: auto`) reads its blob files with direct I/O */
  lazyDirectRead?: boolean
}

export const ANCHORS: Partial<Record<WorkloadName, string>> = {
  seq: 'nydusd FUSE 0.70x / EROFS loop 0.90x (fio read)',
  rand1: 'nydusd FUSE 0.76x / EROFS loop 0.84x (fio randread)',
  rand4: 'nydusd FUSE 0.76x / EROFS loop 0.84x (fio randread)',
  tarSmall: 'nydusd FUSE 0.33x / EROFS loop 1.89x (tar of many small files)'
}

interface Sample { value: number, iops?: number, units: number }

/** One run of `w` on the tree at `root`; the caller drops caches first. */
async function runWorkload (w: WorkloadName, root: string, bigFiles: number, randBytes: number, smallFiles: number): Promise<Sample> {
  const big = Array.from({ length: bigFiles }, (_, i) => join(root, 'big', `data${i}.bin`))
  if (w === 'seq' || w === 'rand1' || w === 'rand4') {
    const f = w === 'seq'
      ? await fio(big, ['--rw=read', '--bs=1M', '--file_service_type=sequential'])
      : await fio(big, ['--rw=randread', '--bs=4k', '--iodepth=1', `--numjobs=${w === 'rand1' ? 1 : 4}`, '--randrepeat=0', `--io_size=${randBytes}`])
    return { value: f.bwBytes / 1e6, iops: f.iops, units: Math.round(f.ioBytes / (w === 'seq' ? 1 << 20 : 4096)) }
  }
  const value = await tarSeconds(w === 'tarSmall' ? join(root, 'share') : root)
  return { value, units: w === 'tarSmall' ? smallFiles : smallFiles + bigFiles }
}

interface Shape { bigFiles: number, randBytes: number, smallFiles: number, runs: number }

interface Place { target: TargetName, root: string, loops?: TargetResult['loops'] }

/**
 * Every target on the same workload before the next workload, run by run, each run starting with another target:
 * this VM's load and disk drift over minutes, and interleaving spreads the drift over all targets alike.
 */
async function measureTargets (places: Place[], s: Shape, only: WorkloadName[] = WORKLOADS): Promise<TargetResult[]> {
  const results = places.map((p): TargetResult => ({ target: p.target, workloads: {}, ...(p.loops !== undefined ? { loops: p.loops } : {}) }))
  for (const w of only) {
    const samples = places.map(() => [] as number[])
    const iops = places.map(() => [] as number[])
    const load1 = places.map(() => [] as number[])
    for (let r = 0; r < s.runs; r++) {
      for (let k = 0; k < places.length; k++) {
        const i = (r + k) % places.length
        await dropCaches()
        load1[i]!.push(Number(loadavg()[0]!.toFixed(2)))
        const x = await runWorkload(w, places[i]!.root, s.bigFiles, s.randBytes, s.smallFiles)
        samples[i]!.push(x.value)
        if (x.iops !== undefined) iops[i]!.push(x.iops)
      }
    }
    for (const [i, res] of results.entries()) {
      res.workloads[w] = { samples: samples[i]!, median: median(samples[i]!), unit: w.startsWith('tar') ? 's' : 'MB/s', ...(iops[i]!.length > 0 ? { iops: median(iops[i]!) } : {}), load1: load1[i]! }
      process.stderr.write(`warm: ${res.target} ${w}: ${samples[i]!.map(v => v.toFixed(2)).join(' ')} (load ${load1[i]!.join(' ')})\n`)
    }
  }
  return results
}

/** One run of `w` under the FUSE tracepoints, page cache cold. */
async function traced (w: WorkloadName, mountpoint: string, s: Shape, timed?: TimedBackend): Promise<TracedRun | undefined> {
  await dropCaches()
  const r0 = timed?.reads ?? 0
  const ms0 = timed?.readMs ?? 0
  let units = 0
  const t = await traceFuse(mountpoint, async () => { units = (await runWorkload(w, mountpoint, s.bigFiles, s.randBytes, s.smallFiles)).units })
  if (t === undefined) return undefined
  const n = (timed?.reads ?? 0) - r0
  return {
    ...t,
    workload: w,
    units,
    requestsPerUnit: t.requests / Math.max(1, units),
    ...(timed !== undefined ? { jsReads: { count: n, meanUs: n > 0 ? ((timed.readMs - ms0) * 1000) / n : 0 } } : {})
  }
}

/** A kernel mount's loop devices as the kernel runs them (sysfs `loop/dio`), not as asked. */
async function loopModes (devices: KernelDevice[]): Promise<NonNullable<TargetResult['loops']>> {
  const out: NonNullable<TargetResult['loops']> = []
  for (const d of devices) {
    out.push({ file: basename(d.file), directIo: (await readFile(`/sys/block/${basename(d.device)}/loop/dio`, 'utf8')).trim() === '1' })
  }
  return out
}

function ratiosOf (targets: TargetResult[]): WarmReadResult['ratios'] {
  const native = targets.find(t => t.target === 'native')!
  const out: WarmReadResult['ratios'] = {}
  for (const t of targets) {
    if (t.target === 'native') continue
    const r: Partial<Record<WorkloadName, number>> = {}
    for (const [w, v] of Object.entries(t.workloads) as Array<[WorkloadName, WorkloadResult]>) {
      const base = native.workloads[w]
      if (base !== undefined) r[w] = v.unit === 's' ? base.median / v.median : v.median / base.median
    }
    out[t.target] = r
  }
  return out
}

export async function benchWarmRead (opts: WarmReadOptions = {}): Promise<WarmReadResult> {
  if (process.getuid?.() !== 0) throw new Error('the warm-read bench needs root (drop_caches, FUSE, loop devices)')
  const smallFiles = opts.smallFiles ?? 20_000
  const bigFiles = opts.bigFiles ?? 4
  const bigFileBytes = opts.bigFileBytes ?? 256 << 20
  const shape: Shape = { bigFiles, smallFiles, runs: opts.runs ?? 5, randBytes: opts.randBytesPerJob ?? 32 << 20 }
  const work = await mkdtemp(join(opts.workParent ?? '/var/tmp', 'rafs-bench-warm-'))
  let cache: BlobCache | undefined
  let mm: MountManager | undefined
  try {
    const tree = join(work, 'tree')
    process.stderr.write(`warm: writing the tree under ${tree}\n`)
    const fioOnly = opts.fioOnly === true
    const treeInfo = await makeWarmTree(tree, opts.smallTree !== undefined || fioOnly ? 0 : smallFiles, bigFiles, bigFileBytes)
    if (fioOnly) shape.smallFiles = 0
    if (opts.smallTree !== undefined && !fioOnly) {
      await execFileP('cp', ['-a', opts.smallTree, join(tree, 'share')])
      const counted = await execFileP('bash', ['-c', `find ${join(tree, 'share')} -type f | wc -l; du -sb ${join(tree, 'share')} | cut -f1; find ${join(tree, 'share')} -type d | wc -l`])
      const [files = '0', bytes = '0', dirs = '0'] = counted.stdout.trim().split('\n')
      treeInfo.smallFiles = Number(files)
      treeInfo.smallBytes = Number(bytes)
      treeInfo.dirs = Number(dirs)
      shape.smallFiles = treeInfo.smallFiles
    }
    let t = performance.now()
    const built = await buildFromDirectory(tree, { bootstrap: join(work, 'image', 'image.boot'), blobDir: join(work, 'image', 'blobs') })
    const buildMs = performance.now() - t

    const cacheDir = join(work, 'cache')
    cache = await BlobCache.open(cacheDir)
    const timed = new TimedBackend(new FuseNativeBackend())
    mm = new MountManager({ cache, fuse: timed }, { workDir: join(work, 'daemon') })
    const mnt = join(work, 'mnt')
    await mkdir(mnt)
    const local = { source: built.bootstrap, blobDir: join(work, 'image', 'blobs'), mountpoint: mnt }
    t = performance.now()
    await mm.mount({ ...local, mode: 'fuse', prefetch: 'all' })
    const pf = await mm.prefetchSettled(mnt)
    const prefetchMs = performance.now() - t
    if (pf.state !== 'done') throw new Error(`prefetch ended ${pf.state}: ${pf.error ?? ''}`)
    process.stderr.write(`warm: prefetched ${pf.chunksDone} chunks in ${prefetchMs.toFixed(0)} ms; measuring\n`)

    // native, FUSE (the mount manager's mount above) and the kernel mounts of the same cache files, all mounted
    // at once and measured interleaved
    const places: Place[] = [{ target: 'native', root: tree }]
    if (opts.only === undefined || opts.only === 'fuse') places.push({ target: 'fuse', root: mnt })
    const kernels: KernelMount[] = []
    let targets: TargetResult[]
    let lazyKernel: WarmReadResult['lazyKernel']
    const lazyMnt = join(work, 'erofs-lazy')
    const lazyFuseMnt = join(work, 'erofs-lazy-fuse')
    let mmFuse: MountManager | undefined
    let mmOther: MountManager | undefined
    let lazyDirectRead: boolean | undefined
    try {
      if (opts.only === undefined || opts.only === 'lazy') {
        // the same cache, every chunk verified by this process: the blob is complete when the mount starts, and the
        // kernel reads its cache file directly
        await mkdir(lazyMnt)
        const lazy = await mm.mount({ ...local, mountpoint: lazyMnt, mode: 'erofs-lazy', prefetch: 'none' })
        places.push({ target: 'erofs-lazy', root: lazyMnt })
        // the other choice of `directRead` than the one the mount manager made for this image, for comparison
        const other = lazy.directRead === true ? 'off' : 'on'
        lazyDirectRead = lazy.directRead === true
        mmOther = new MountManager({ cache, fuse: timed }, { workDir: join(work, 'daemon-other'), directRead: other })
        const otherTarget: TargetName = other === 'on' ? 'erofs-lazy-direct' : 'erofs-lazy-buffered'
        const otherMnt = join(work, otherTarget)
        await mkdir(otherMnt)
        await mmOther.mount({ ...local, mountpoint: otherMnt, mode: 'erofs-lazy', prefetch: 'none' })
        places.push({ target: otherTarget, root: otherMnt })
        // the blob as a blob file though complete: its READs all take the native fast path, as a blob's cached
        // ranges do while it is still being fetched
        mmFuse = new MountManager({ cache, fuse: timed }, { workDir: join(work, 'daemon-fuse'), completeBlobsFromCache: false })
        await mkdir(lazyFuseMnt)
        await mmFuse.mount({ ...local, mountpoint: lazyFuseMnt, mode: 'erofs-lazy', prefetch: 'none' })
        places.push({ target: 'erofs-lazy-fuse', root: lazyFuseMnt })
      }
      if (opts.only === undefined || opts.only === 'kernel') {
        const blobFiles: string[] = []
        for (const b of built.blobs) blobFiles.push(cache.blobPath(b.blobId))
        for (const [target, kopts] of KERNEL_VARIANTS) {
          const dir = join(work, target)
          await mkdir(dir)
          const km = await kernelMount(built.bootstrap, blobFiles, dir, kopts)
          kernels.push(km)
          places.push({ target, root: dir, ...(km.backing === 'loop' ? { loops: await loopModes(km.devices) } : {}) })
        }
      }
      targets = await measureTargets(places, shape, fioOnly ? FIO_WORKLOADS : WORKLOADS)
      lazyKernel = mmFuse?.lazyKernelStats()
      const direct = mm.lazyKernelStats()
      if (direct !== undefined) process.stderr.write(`warm: erofs-lazy over the cache files: ${direct.requests} FUSE requests\n`)
    } finally {
      for (const km of kernels) await km.unmount()
      if (mm.get(lazyMnt) !== undefined) await mm.unmount(lazyMnt)
      await mmFuse?.stop()
      await mmOther?.stop()
    }

    const traces: WarmReadResult['traces'] = []
    let fuseReads: WarmReadResult['fuseReads'] | undefined
    if ((opts.only === undefined || opts.only === 'fuse') && !fioOnly) {
      for (const w of ['tarSmall', 'tarAll', 'seq', 'rand1'] as const) {
        const tr = await traced(w, mnt, shape, timed)
        if (tr !== undefined) traces.push({ ...tr, target: 'fuse' })
      }
      const st = mm.stats()[0]!
      fuseReads = { reads: st.reads, readBytes: st.readBytes, readErrors: st.readErrors, fromCacheBytes: st.fetch.bytesBySource.cache }
    }
    await mm.unmount(mnt)

    // the ceiling of the binding, for tar (the fio figures are bound by data, which the no-op does not move)
    if ((opts.only === undefined || opts.only === 'fuse') && !fioOnly) {
      const noopMnt = join(work, 'noop')
      await mkdir(noopMnt)
      const noop = await mountNoopFuse(tree, noopMnt)
      try {
        targets.push(...await measureTargets([{ target: 'fuse-noop', root: noopMnt }], shape, ['tarSmall']))
        const tr = await traced('tarSmall', noopMnt, shape)
        if (tr !== undefined) traces.push({ ...tr, target: 'fuse-noop' })
      } finally {
        await noop.unmount()
      }
    }

    return {
      machine: await machineNotes(),
      tree: treeInfo,
      runs: shape.runs,
      setup: { buildMs, prefetchMs, prefetchChunks: pf.chunksDone },
      targets,
      ratios: ratiosOf(targets),
      ...(fuseReads !== undefined ? { fuseReads } : {}),
      ...(lazyKernel !== undefined ? { lazyKernel } : {}),
      ...(lazyDirectRead !== undefined ? { lazyDirectRead } : {}),
      traces
    }
  } finally {
    await mm?.stop().catch(() => {})
    await cache?.close().catch(() => {})
    const left = await forceUnmountUnder(work)
    if (left.length > 0) process.stderr.write(`warm: had to detach ${left.join(', ')}\n`)
    await rm(work, { recursive: true, force: true }).catch(async () => { await rmdir(work).catch(() => {}) })
  }
}

const LABEL: Record<WorkloadName, string> = {
  seq: 'fio read 1 MiB (big files)',
  rand1: 'fio randread 4 KiB, 1 job',
  rand4: 'fio randread 4 KiB, 4 jobs',
  tarSmall: 'tar of the small files',
  tarAll: 'tar of the whole tree'
}

export function formatWarmRead (r: WarmReadResult): string {
  const mib = (n: number): string => (n / (1 << 20)).toFixed(0)
  const by = (t: TargetName): TargetResult | undefined => r.targets.find(x => x.target === t)
  const cell = (t: TargetName, w: WorkloadName): string => {
    const v = by(t)?.workloads[w]
    if (v === undefined) return ''
    const value = v.unit === 's' ? `${v.median.toFixed(2)} s` : `${v.median.toFixed(0)} MB/s`
    const ratio = t === 'native' ? '' : ` = ${r.ratios[t]?.[w]?.toFixed(2)}x`
    return ` | ${t} ${value}${ratio}`
  }
  const lines = [
    `warm read: ${r.tree.smallFiles} small files (${mib(r.tree.smallBytes)} MiB in ${r.tree.dirs} dirs) + ` +
      `${r.tree.bigFiles} × ${mib(r.tree.bigBytes / r.tree.bigFiles)} MiB; ${r.machine}`,
    `  state: rafspeer cache warm (prefetch all settled), page cache cold (sync; drop_caches 3 before every run); median of ${r.runs}`,
    `  setup: build ${(r.setup.buildMs / 1000).toFixed(1)} s, prefetch ${r.setup.prefetchChunks} chunks ${(r.setup.prefetchMs / 1000).toFixed(1)} s`
  ]
  for (const w of WORKLOADS) {
    if (r.targets.every(t => t.workloads[w] === undefined)) continue // not measured (--fio-only)
    lines.push(`  ${LABEL[w]}:` + TARGETS.map(t => cell(t, w)).join('').slice(2) +
      (ANCHORS[w] !== undefined ? `   [anchor: ${ANCHORS[w]}]` : ''))
  }
  for (const t of r.targets) {
    if (t.loops !== undefined) lines.push(`  ${t.target} loop devices: ${t.loops.map(l => `${l.file.replace(/^([0-9a-f]{12})[0-9a-f]{20,}/, '$1…')} ${l.directIo ? 'direct I/O' : 'buffered'}`).join(', ')}`)
  }
  if (r.lazyDirectRead !== undefined) lines.push(`  erofs-lazy: directRead auto chose ${r.lazyDirectRead ? 'direct' : 'buffered'} reads for this image`)
  if (r.lazyKernel !== undefined) {
    const k = r.lazyKernel
    const sizes = k.readSizes.map((n, i) => n > 0 ? `${4 << i} KiB × ${n}` : '').filter(x => x !== '').join(', ')
    lines.push(`  erofs-lazy-fuse blob files: ${k.requests} FUSE requests, ${k.fastReads} READs answered natively (${mib(k.fastBytes)} MiB), ${k.misses} misses; READ sizes ${sizes}`)
  }
  for (const tr of r.traces) {
    const top = Object.entries(tr.ops).sort((a, b) => b[1].count - a[1].count)
      .map(([op, s]) => `${op.replace('FUSE_', '')} ${s.count} × ${s.meanUs.toFixed(0)} µs`).join(', ')
    const unit = tr.workload.startsWith('tar') ? 'file' : 'IO'
    lines.push(`  traced ${tr.target} ${LABEL[tr.workload]}: ${tr.requests} requests = ${tr.requestsPerUnit.toFixed(2)} per ${unit}; ` +
      `server busy ${(tr.serverMs / 1000).toFixed(2)} s in ${(tr.wallMs / 1000).toFixed(2)} s${tr.lost > 0 ? ` (${tr.lost} events lost)` : ''}: ${top}` +
      (tr.jsReads !== undefined ? `; of a READ, ImageFiles.read in JS ${tr.jsReads.meanUs.toFixed(0)} µs` : ''))
  }
  return lines.join('\n')
}
