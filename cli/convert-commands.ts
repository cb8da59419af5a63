/**
 * `convert` and `check --image`: OCI image → RAFS image in a registry, and the check of such an image in place.
 * The work lives in `convert/`; this file parses flags and renders progress (a bar per layer on a terminal, plain
 * lines otherwise, JSON with --json). The converter and the progress bars are imported when an action runs, so
 * parsing and `--help` stay light.
 */
import type { Command } from 'commander'
import type { SingleBar } from 'cli-progress'
import type { ConvertProgress, ConvertReport } from '../convert/index.js'
import type { Compressor, Digester } from '../rafs/index.js'
import { formatBytes, parseCompressor, parseDigester, parseSize, readPrefetchList, writeJson } from './util.js'

interface ConvertFlags {
  platform?: string
  compressor: Compressor
  chunkSize?: number
  digester: Digester
  plainHttp?: boolean
  workDir?: string
  prefetchFiles?: string
  outputJson?: string
  json?: boolean
}

interface CheckFlags {
  source?: string
  platform?: string
  plainHttp?: boolean
  outputJson?: string
  json?: boolean
}

const short = (digest: string): string => digest.replace(/^sha256:/, '').slice(0, 12)

/** Progress as one bar per layer (TTY) or one line per step (pipes, CI logs). */
async function progressRenderer (tty: boolean): Promise<{ onProgress: (ev: ConvertProgress) => void, stop: () => void }> {
  if (!tty) {
    return {
      onProgress: (ev) => {
        const line = ev.type === 'manifest' ? `source ${ev.digest}: ${ev.layers.length} layers`
          : ev.type === 'layer' && ev.phase === 'done' ? `layer ${ev.index} ${short(ev.digest)}: ${formatBytes(ev.downloaded)} read, ${ev.chunks} chunks${ev.blobId !== undefined ? `, blob ${short(ev.blobId)}` : ', no file data'}`
            : ev.type === 'merged' ? `merged: ${ev.blobs} blobs, bootstrap layer ${formatBytes(ev.bootstrapSize)}`
              : ev.type === 'prefetch' ? `prefetch table: ${ev.entries} entries`
              : ev.type === 'push' && ev.phase === 'done' ? `push ${ev.label} ${short(ev.digest)}: ${ev.outcome === 'uploaded' ? `uploaded ${formatBytes(ev.size)}` : ev.outcome}`
                : ev.type === 'pushed' ? `manifest pushed: ${ev.digest}` : undefined
        if (line !== undefined) process.stderr.write(line + '\n')
      },
      stop: () => {}
    }
  }
  const { default: cliProgress } = await import('cli-progress')
  const multi = new cliProgress.MultiBar({
    format: '{name} [{bar}] {percentage}% | {value_h}/{total_h} | {chunks} chunks {status}',
    hideCursor: true,
    clearOnComplete: false,
    stream: process.stderr
  }, cliProgress.Presets.shades_classic)
  const bars = new Map<number, SingleBar>()
  const payload = (ev: Extract<ConvertProgress, { type: 'layer' }>, status: string): Record<string, unknown> =>
    ({ name: `layer ${ev.index} ${short(ev.digest)}`, chunks: ev.chunks, status, value_h: formatBytes(ev.downloaded), total_h: formatBytes(ev.size) })
  return {
    onProgress: (ev) => {
      if (ev.type === 'layer') {
        let bar = bars.get(ev.index)
        if (bar === undefined) bars.set(ev.index, bar = multi.create(Math.max(ev.size, 1), 0, payload(ev, '')))
        bar.update(Math.min(ev.downloaded, Math.max(ev.size, 1)), payload(ev, ev.phase === 'done' ? (ev.blobId !== undefined ? 'done' : 'done (no data)') : ''))
      } else if (ev.type === 'push' && ev.phase === 'done') {
        multi.log(`push ${ev.label} ${short(ev.digest)}: ${ev.outcome === 'uploaded' ? `uploaded ${formatBytes(ev.size)}` : ev.outcome}\n`)
      }
    },
    stop: () => { multi.stop() }
  }
}

function printConvert (r: ConvertReport): void {
  process.stdout.write(`${r.source} (${r.sourceDigest})\n→ ${r.target} (${r.targetDigest})\n`)
  for (const [i, l] of r.layers.entries()) {
    process.stdout.write(`layer ${i} ${l.sourceDigest}: ${l.blobId !== undefined ? `blob ${l.blobId} (${formatBytes(l.blobSize ?? 0)}, ${l.chunks} chunks, ${l.push ?? ''})` : 'no file data, no blob'}\n`)
  }
  process.stdout.write(`bootstrap layer ${r.bootstrap.digest} (${formatBytes(r.bootstrap.size)}, ${r.bootstrap.push})\n`)
  if (r.prefetch !== undefined) process.stdout.write(`prefetch table ${r.prefetch.entries} entries (${r.prefetch.listed} paths listed, ${r.prefetch.missing.length} not in the image)\n`)
  process.stdout.write(`done in ${(r.elapsedMs / 1000).toFixed(2)} s\n`)
}

export function registerConvertCommands (program: Command): void {
  program.command('convert')
    .description('convert an OCI image in a registry into a RAFS (Nydus) image pushed to a registry')
    .argument('<source>', 'source image reference, e.g. 127.0.0.1:5000/app:1.0')
    .argument('<target>', 'target image reference, e.g. 127.0.0.1:5000/app:1.0-rafs')
    .option('--platform <os/arch>', 'platform to pick from an index (default: the host\'s)')
    .option('--compressor <algo>', 'chunk compression: zstd, none, lz4_block', parseCompressor, 'zstd')
    .option('--chunk-size <size>', 'chunk size, a power of two from 0x1000 to 0x1000000 (default 0x100000)', parseSize)
    .option('--digester <algo>', 'chunk digest: blake3, sha256', parseDigester, 'blake3')
    .option('--plain-http', 'use plain HTTP for every registry (loopback registries use it anyway)')
    .option('--work-dir <dir>', 'where temporary blobs and bootstraps go (default: the OS temp dir)')
    .option('--prefetch-files <file>', "absolute image paths, one a line, hottest first ('-' for stdin; `rafspeer access-list` writes them): the merged bootstrap's prefetch table")
    .option('-J, --output-json <file>', 'write the JSON report')
    .option('--json', 'print the JSON report on stdout')
    .action(async (source: string, target: string, f: ConvertFlags) => {
      const prefetchFiles = f.prefetchFiles !== undefined ? await readPrefetchList(f.prefetchFiles) : undefined
      const { convertImage } = await import('../convert/index.js')
      const progress = await progressRenderer(process.stderr.isTTY === true && f.json !== true)
      let report: ConvertReport
      try {
        report = await convertImage(source, target, {
          compressor: f.compressor,
          ...(f.chunkSize !== undefined ? { chunkSize: f.chunkSize } : {}),
          digester: f.digester,
          plainHttp: f.plainHttp === true ? true : 'auto',
          onProgress: progress.onProgress,
          ...(f.platform !== undefined ? { platform: f.platform } : {}),
          ...(f.workDir !== undefined ? { workDir: f.workDir } : {}),
          ...(prefetchFiles !== undefined ? { prefetchFiles } : {})
        })
      } finally {
        progress.stop()
      }
      for (const p of report.prefetch?.missing ?? []) process.stderr.write(`warning: prefetch path ${p} is not in the image: skipped\n`)
      await writeJson(f.outputJson, report)
      if (f.json === true) process.stdout.write(JSON.stringify(report, null, 2) + '\n')
      else printConvert(report)
    })
}

/** The action of `check --image REF [--source REF]`. */
export async function runImageCheck (ref: string, f: CheckFlags): Promise<void> {
  const { checkRemoteImage } = await import('../convert/index.js')
  const report = await checkRemoteImage(ref, {
    plainHttp: f.plainHttp === true ? true : 'auto',
    ...(f.source !== undefined ? { source: f.source } : {}),
    ...(f.platform !== undefined ? { platform: f.platform } : {})
  })
  await writeJson(f.outputJson, report)
  if (f.json === true) process.stdout.write(JSON.stringify(report, null, 2) + '\n')
  else {
    for (const e of report.errors) process.stdout.write(`error: ${e}\n`)
    for (const w of report.warnings) process.stdout.write(`warning: ${w}\n`)
    for (const b of report.blobs) process.stdout.write(`blob ${b.index}: ${b.blobId} ${b.chunkCount} chunks, ${b.chunksVerified} verified\n`)
    if (report.compared !== undefined) process.stdout.write(`compared ${report.compared.entries} entries with ${f.source ?? ''}: ${report.compared.differences.length} differences\n`)
    process.stdout.write(report.ok ? `OK: ${ref} (${report.manifest.digest}) is a valid RAFS image\n` : `FAILED: ${report.errors.length} error(s) in ${ref}\n`)
  }
  if (!report.ok) process.exitCode = 1
}

