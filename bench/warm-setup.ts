/**
 * Pieces of the warm-read bench that are not measurement: the test tree, a timing shim around the FUSE backend,
 * and the loop devices behind a kernel mount.
 */
import { mkdir, open, readdir, readFile, writeFile } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import type { FuseBackend, FuseMountHandle, FuseMountOptions, ImageFiles } from '../peer/index.js'
import { run } from './measure.js'

export interface WarmTree { smallFiles: number, smallBytes: number, dirs: number, bigFiles: number, bigBytes: number }

/**
 * `share/`: small files of 1–16 KiB in nested directories like /usr/share (pkgNNN/{doc,lib,man}/subN: at 20k
 * files, 2801 directories, 1200 of them holding ~17 files); `big/dataN.bin`: the fio files. Sizes and names are
 * deterministic; data is random (incompressible, no chunk dedup).
 */
export async function makeWarmTree (root: string, smallFiles: number, bigFiles: number, bigFileBytes: number): Promise<WarmTree> {
  const pool = randomBytes(32 << 20)
  let smallBytes = 0
  const dirs = new Set<string>()
  for (let i = 0; i < smallFiles; i++) {
    const parts = ['share', `pkg${String(i % 400).padStart(3, '0')}`, ['doc', 'lib', 'man'][i % 3]!, `sub${(i >> 3) % 2}`]
    const d = join(root, ...parts)
    if (!dirs.has(d)) {
      await mkdir(d, { recursive: true })
      for (let k = 1; k <= parts.length; k++) dirs.add(join(root, ...parts.slice(0, k)))
    }
    const size = 1024 + (Math.imul(i, 2654435761) >>> 0) % (15 * 1024 + 1)
    const at = (Math.imul(i, 40503) >>> 0) % (pool.length - size)
    await writeFile(join(d, `file${i}.dat`), pool.subarray(at, at + size))
    smallBytes += size
  }
  await mkdir(join(root, 'big'), { recursive: true })
  for (let i = 0; i < bigFiles; i++) {
    const fh = await open(join(root, 'big', `data${i}.bin`), 'w')
    try {
      for (let off = 0; off < bigFileBytes; off += 16 << 20) await fh.write(randomBytes(Math.min(16 << 20, bigFileBytes - off)))
    } finally {
      await fh.close()
    }
  }
  return { smallFiles, smallBytes, dirs: dirs.size, bigFiles, bigBytes: bigFiles * bigFileBytes }
}

/**
 * The real backend, with each `ImageFiles.read` timed in JS (from the call to its promise settling; two
 * `performance.now()` calls, well under a microsecond). Against the kernel's time for the same READs, the
 * difference is what the binding and its thread hand-offs cost.
 */
export class TimedBackend implements FuseBackend {
  readonly name: string
  reads = 0
  readMs = 0
  constructor (private readonly inner: FuseBackend) { this.name = inner.name }

  async mount (mountpoint: string, files: ImageFiles, opts?: FuseMountOptions): Promise<FuseMountHandle> {
    return await this.inner.mount(mountpoint, {
      reader: files.reader,
      read: async (nid, offset, length, buf, signal) => {
        const t = performance.now()
        try {
          return await files.read(nid, offset, length, buf, signal)
        } finally {
          this.reads++
          this.readMs += performance.now() - t
        }
      }
    }, opts)
  }
}

/** Loop devices whose backing file is under `dir` (`/dev/loopN`). */
export async function loopDevicesUnder (dir: string): Promise<string[]> {
  const out: string[] = []
  for (const name of await readdir('/sys/block')) {
    if (!name.startsWith('loop')) continue
    const backing = await readFile(`/sys/block/${name}/loop/backing_file`, 'utf8').catch(() => '')
    if (backing.startsWith(dir + '/')) out.push(`/dev/${name}`)
  }
  return out
}

/** Switches live loop devices to direct I/O on their backing files (`losetup --direct-io=on`). */
export async function setLoopDirectIo (devices: string[]): Promise<void> {
  for (const d of devices) await run('losetup', ['--direct-io=on', d])
}
