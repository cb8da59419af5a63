/**
 * Conversion: `rafspeer convert` against `skopeo copy` of the same source image to another repository of the
 * same local registry, in the same run; plus the size of the RAFS image against the OCI image.
 *
 * Source: a 3-layer OCI image built with umoci from a synthetic image-like tree (bench/build.ts makeTree), pushed
 * with skopeo to the embedded registry. skopeo copies blob by blob (and may mount across repositories on the same
 * registry, which is what a user gets); convert downloads, rebuilds and pushes.
 */
import { execFile, execFileSync } from 'node:child_process'
import { promisify } from 'node:util'
import { mkdtemp, mkdir, rm, rename } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { RegistryClient, isIndex, startRegistryServer } from '../registry/index.js'
import { convertImage } from '../convert/index.js'
import { makeTree } from './build.js'

export interface ConvertBenchResult {
  sourceLayers: number
  ociBytes: number
  rafsBytes: number
  sizeRatio: number
  skopeoCopyMs: number
  skopeoCopyNoMountMs: number
  convertMs: number
  ratioVsSkopeo: number
  ratioVsSkopeoNoMount: number
}

const run = (cmd: string, args: string[]): void => { execFileSync(cmd, args, { stdio: 'ignore' }) }
// anything that talks to the registry must not block this process: the embedded registry runs in it
const runAsync = async (cmd: string, args: string[]): Promise<void> => { await promisify(execFile)(cmd, args, { maxBuffer: 16 << 20 }) }

async function imageBytes (client: RegistryClient, ref: string): Promise<number> {
  const m = await client.getManifest(ref)
  if (isIndex(m.json)) throw new Error(`${ref} is an index`)
  return m.json.layers.reduce((n, l) => n + l.size, 0) + m.json.config.size
}

export async function benchConvert (): Promise<ConvertBenchResult> {
  const work = await mkdtemp(join(tmpdir(), 'rafs-bench-convert-'))
  const server = await startRegistryServer({ root: join(work, 'registry') })
  const client = new RegistryClient({ plainHttp: 'auto' })
  try {
    // three layers: the tree split in parts, added one bundle at a time
    const layout = join(work, 'oci')
    run('umoci', ['init', '--layout', layout])
    run('umoci', ['new', '--image', `${layout}:src`])
    const tree = join(work, 'tree')
    await mkdir(tree)
    await makeTree(tree, { smallFiles: 3000, largeFiles: 4, largeSize: 32 << 20 })
    const parts = [['pkg0', 'pkg1', 'pkg2', 'pkg3', 'pkg4', 'pkg5', 'pkg6', 'pkg7', 'pkg8', 'pkg9'], ['bin'], []]
    for (const [i, part] of parts.entries()) {
      const bundle = join(work, `bundle${i}`)
      run('umoci', ['unpack', '--image', `${layout}:src`, bundle])
      const rootfs = join(bundle, 'rootfs')
      if (i < parts.length - 1) for (const p of part) await rename(join(tree, p), join(rootfs, p))
      else run('sh', ['-c', `cp -a "${tree}"/. "${rootfs}"/`])
      run('umoci', ['repack', '--image', `${layout}:src`, bundle])
      await rm(bundle, { recursive: true, force: true })
    }
    const host = server.host
    await runAsync('skopeo', ['copy', '--dest-tls-verify=false', `oci:${layout}:src`, `docker://${host}/bench/src:1`])

    let t = performance.now()
    await runAsync('skopeo', ['copy', '--src-tls-verify=false', '--dest-tls-verify=false', `docker://${host}/bench/src:1`, `docker://${host}/bench/copy:1`])
    const skopeoCopyMs = performance.now() - t
    // the same copy to another registry instance: no cross-repository mount possible, every byte moves
    const other = await startRegistryServer({ root: join(work, 'registry2') })
    try {
      t = performance.now()
      await runAsync('skopeo', ['copy', '--src-tls-verify=false', '--dest-tls-verify=false', `docker://${host}/bench/src:1`, `docker://${other.host}/bench/copy:1`])
    } finally {
      await other.stop()
    }
    const skopeoCopyNoMountMs = performance.now() - t

    t = performance.now()
    const report = await convertImage(`${host}/bench/src:1`, `${host}/bench/rafs:1`, { client, workDir: join(work, 'convert') })
    const convertMs = performance.now() - t

    const ociBytes = await imageBytes(client, `${host}/bench/src:1`)
    const rafsBytes = await imageBytes(client, `${host}/bench/rafs:1`)
    return {
      sourceLayers: report.layers.length,
      ociBytes,
      rafsBytes,
      sizeRatio: rafsBytes / ociBytes,
      skopeoCopyMs,
      skopeoCopyNoMountMs,
      convertMs,
      ratioVsSkopeo: skopeoCopyMs / convertMs,
      ratioVsSkopeoNoMount: skopeoCopyNoMountMs / convertMs
    }
  } finally {
    await client.close()
    await server.stop()
    await rm(work, { recursive: true, force: true })
  }
}

export function formatConvertBench (r: ConvertBenchResult): string {
  const mb = (n: number): string => (n / (1 << 20)).toFixed(1)
  return [
    `convert: ${r.sourceLayers}-layer OCI image, ${mb(r.ociBytes)} MiB (gzip layers)`,
    `  skopeo copy to another repository, same registry (baseline): ${r.skopeoCopyMs.toFixed(0)} ms`,
    `  skopeo copy to another registry (every byte moves):         ${r.skopeoCopyNoMountMs.toFixed(0)} ms`,
    `  rafspeer convert: ${r.convertMs.toFixed(0)} ms = ${r.ratioVsSkopeo.toFixed(2)}x skopeo-copy speed (same registry), ${r.ratioVsSkopeoNoMount.toFixed(2)}x (other registry)`,
    `  RAFS image ${mb(r.rafsBytes)} MiB = ${r.sizeRatio.toFixed(3)} of the OCI image`
  ].join('\n')
}
