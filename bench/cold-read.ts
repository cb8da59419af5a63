/**
 * Cold reads through a lazy mount: how fast a whole image reads while every chunk still has to come from the
 * registry (fetch, decompress, verify, cache, answer), against the same tree read from the native disk in the
 * same run, and against the eager way of getting it: download every blob (`skopeo copy` to an OCI layout) and
 * unpack it (`rafspeer unpack`, every chunk verified). The registry is the embedded one on loopback without a
 * bandwidth cap, so what is measured is the read path's own cost (CPU on two cores), not a network.
 *
 * Per run: the native tar of the source tree (page cache dropped); download + unpack into empty directories; then
 * with empty cache and work directories, `rafspeer mount REF MNT --foreground --mode MODE --prefetch none` as a
 * child process, `tar -cf - . | cat` through the mount (cold: nothing cached, page cache dropped), then the same
 * tar again (warm: every chunk cached, page cache dropped). Ratio = native time / mount time (above 1: faster
 * than the disk); lazy/eager = cold tar time / (download + unpack) time (below 1: the lazy read is faster).
 *
 * The registry runs on this process's event loop; everything that touches the mount runs as a child process.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises'
import { promisify } from 'node:util'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { publishDirectory } from '../convert/index.js'
import { RegistryClient, startRegistryServer } from '../registry/index.js'
import { generateTree } from '../sim/index.js'
import { dropCaches, forceUnmountUnder, machineNotes, median, mountsUnder, tarSeconds, waitFor } from './measure.js'

export interface ColdReadOptions {
  /** bytes of file data in the generated tree (256 MiB) */
  imageBytes?: number
  /** mount mode of the lazy mount (default `auto`: erofs-lazy where the host can, else fuse) */
  mountMode?: 'auto' | 'fuse' | 'erofs-lazy'
  runs?: number
  workParent?: string
}

export interface ColdReadRun { nativeS: number, eagerS: number, coldS: number, warmS: number }

export interface ColdReadResult {
  machine: string
  image: { files: number, bytes: number, blobBytes: number }
  runs: ColdReadRun[]
  median: ColdReadRun
  /** native tar time / tar time through the mount */
  coldRatio: number
  warmRatio: number
  /** cold lazy tar / (download + unpack) */
  lazyOverEager: number
  mountMode: string
}

const execFileP = promisify(execFile)
const CLI = join(dirname(fileURLToPath(import.meta.url)), '..', 'cli', 'main.js')

async function withMount<T> (ref: string, dir: string, mountMode: string, body: (mnt: string) => Promise<T>): Promise<T> {
  const mnt = join(dir, 'mnt')
  for (const d of ['mnt', 'cache', 'work']) await mkdir(join(dir, d), { recursive: true })
  let exited: string | undefined
  let stderr = ''
  const child: ChildProcess = spawn(process.execPath, [CLI, 'mount', ref, mnt, '--foreground', '--cache-dir', join(dir, 'cache'),
    '--work-dir', join(dir, 'work'), '--socket', join(dir, 'admin.sock'), '--prefetch', 'none', '--mode', mountMode], { stdio: ['ignore', 'ignore', 'pipe'] })
  child.stderr!.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-4000) })
  child.on('exit', (code, signal) => { exited = `rafspeer mount exited (${code ?? signal}): ${stderr.trim()}` })
  try {
    if (!await waitFor(async () => exited !== undefined || (await mountsUnder(mnt)).length > 0, 60_000) || exited !== undefined) {
      throw new Error(exited ?? 'rafspeer mount: not mounted within 60 s')
    }
    return await body(mnt)
  } finally {
    if (exited === undefined) {
      const gone = new Promise(resolve => child.once('exit', resolve))
      child.kill('SIGTERM')
      await Promise.race([gone, new Promise(resolve => setTimeout(resolve, 15_000))])
      if (exited === undefined) child.kill('SIGKILL')
    }
    if (!await waitFor(async () => (await mountsUnder(mnt)).length === 0, 10_000)) await forceUnmountUnder(mnt)
  }
}

/**
 * The eager way, timed from an empty directory with the page cache dropped: every blob of the image downloaded
 * (skopeo, a child process: the registry lives on this event loop), the bootstrap taken from its layer, the tree
 * unpacked with every chunk verified.
 */
async function downloadAndUnpack (ref: string, dir: string): Promise<number> {
  await mkdir(dir, { recursive: true })
  await dropCaches()
  const t = performance.now()
  const layout = join(dir, 'layout')
  await execFileP('skopeo', ['copy', '--src-tls-verify=false', `docker://${ref}`, `oci:${layout}:img`])
  const index = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> }
  const manifest = JSON.parse(await readFile(join(layout, 'blobs', 'sha256', index.manifests[0]!.digest.slice(7)), 'utf8')) as { layers: Array<{ digest: string }> }
  const bootLayer = join(layout, 'blobs', 'sha256', manifest.layers.at(-1)!.digest.slice(7))
  await execFileP('tar', ['-xzf', bootLayer, '-C', dir, 'image/image.boot'])
  await execFileP(process.execPath, [CLI, 'unpack', join(dir, 'image', 'image.boot'), '--blob-dir', join(layout, 'blobs', 'sha256'), '--output', join(dir, 'tree')])
  const s = (performance.now() - t) / 1000
  await rm(dir, { recursive: true, force: true })
  return s
}

export async function benchColdRead (opts: ColdReadOptions = {}): Promise<ColdReadResult> {
  if (process.getuid?.() !== 0) throw new Error('the cold-read bench needs root (FUSE, drop_caches)')
  const work = await mkdtemp(join(opts.workParent ?? tmpdir(), 'rafs-bench-coldread-'))
  const registry = await startRegistryServer({ root: join(work, 'registry'), host: '127.0.0.1', port: 0 })
  try {
    const src = join(work, 'src')
    const tree = await generateTree(src, opts.imageBytes ?? 256 << 20)
    const ref = `${registry.host}/bench/cold:v1`
    const published = await publishDirectory(src, ref, { client: new RegistryClient({ plainHttp: 'auto' }), workDir: join(work, 'publish') })
    const runs: ColdReadRun[] = []
    const mountMode = opts.mountMode ?? 'auto'
    for (let i = 0; i < (opts.runs ?? 3); i++) {
      // the baseline first, before this run's daemon writes anything to the disk
      await dropCaches()
      const nativeS = await tarSeconds(src)
      const eagerS = await downloadAndUnpack(ref, join(work, `eager${i}`))
      const dir = join(work, `run${i}`)
      const r = await withMount(ref, dir, mountMode, async (mnt) => {
        await dropCaches()
        const coldS = await tarSeconds(mnt)
        await dropCaches()
        const warmS = await tarSeconds(mnt)
        return { coldS, warmS }
      })
      await rm(dir, { recursive: true, force: true })
      runs.push({ nativeS, eagerS, ...r })
    }
    const med = { nativeS: median(runs.map(r => r.nativeS)), eagerS: median(runs.map(r => r.eagerS)), coldS: median(runs.map(r => r.coldS)), warmS: median(runs.map(r => r.warmS)) }
    return {
      machine: await machineNotes(),
      image: { files: tree.files, bytes: tree.bytes, blobBytes: published.blobBytes },
      runs,
      median: med,
      coldRatio: med.nativeS / med.coldS,
      warmRatio: med.nativeS / med.warmS,
      lazyOverEager: med.coldS / med.eagerS,
      mountMode
    }
  } finally {
    await registry.stop()
    await rm(work, { recursive: true, force: true })
  }
}

export function formatColdRead (r: ColdReadResult): string {
  const s = (x: number): string => `${x.toFixed(2)} s`
  return [
    `cold reads through a lazy mount, --mode ${r.mountMode} (${r.machine})`,
    `image: ${r.image.files} files, ${(r.image.bytes / 2 ** 20).toFixed(0)} MiB (${(r.image.blobBytes / 2 ** 20).toFixed(0)} MiB of blobs); median of ${r.runs.length}`,
    `  native tar            ${s(r.median.nativeS)}`,
    `  download + unpack     ${s(r.median.eagerS)}  (skopeo copy of every blob, rafspeer unpack)`,
    `  lazy mount, cold tar  ${s(r.median.coldS)}  = ${r.coldRatio.toFixed(2)}x native, ${r.lazyOverEager.toFixed(2)}x the download + unpack time`,
    `  lazy mount, warm tar  ${s(r.median.warmS)}  = ${r.warmRatio.toFixed(2)}x native`,
    `  runs (native / eager / cold / warm): ${r.runs.map(x => `${s(x.nativeS)} / ${s(x.eagerS)} / ${s(x.coldS)} / ${s(x.warmS)}`).join(' · ')}`
  ].join('\n')
}
