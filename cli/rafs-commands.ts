/**
 * build / merge / check / inspect / unpack: the image-format commands, in nydus-image's vocabulary.
 * Each action imports its implementation when it runs, so parsing and `--help` load only commander.
 */
import { createReadStream } from 'node:fs'
import { stat } from 'node:fs/promises'
import { Command, Option } from 'commander'
import { parseSize, parseCompressor, parseDigester, readPrefetchList, writeJson, formatBytes } from './util.js'
import { runImageCheck } from './convert-commands.js'

interface BuildFlags {
  bootstrap: string
  blobDir: string
  type: 'dir-rafs' | 'tar-rafs' | 'targz-rafs'
  compressor: ReturnType<typeof parseCompressor>
  digester: ReturnType<typeof parseDigester>
  chunkSize?: number
  blobCacheDir?: string
  outputJson?: string
  prefetchFiles?: string
  json?: boolean
}

export function registerRafsCommands (program: Command): void {
  program.command('build')
    .alias('create')
    .description('build a RAFS v6 image (bootstrap + data blob) from a directory or an OCI layer tar / tar.gz')
    .argument('<source>', "directory, or tar file ('-' for stdin) with --type tar-rafs|targz-rafs")
    .requiredOption('-B, --bootstrap <file>', 'where to write the bootstrap (metadata)')
    .requiredOption('-D, --blob-dir <dir>', 'where to write the data blob, named by its sha256 hex')
    .addOption(new Option('-t, --type <type>', 'source type').choices(['dir-rafs', 'tar-rafs', 'targz-rafs']).default('dir-rafs'))
    .option('--compressor <algo>', 'chunk compression: zstd, none, lz4_block', parseCompressor, 'zstd')
    .option('--digester <algo>', 'chunk digest: blake3, sha256', parseDigester, 'blake3')
    .option('--chunk-size <size>', 'chunk size, a power of two from 0x1000 to 0x1000000 (default 0x100000)', parseSize)
    .option('--blob-cache-dir <dir>', 'also write the uncompressed views <blob-id>.blob.data (kernel-mountable devices)')
    .option('--prefetch-files <file>', "newline-separated absolute paths to prefetch ('-' for stdin)")
    .option('-J, --output-json <file>', 'write a JSON report of the build')
    .option('--json', 'print the JSON report on stdout instead of text')
    .action(async (source: string, f: BuildFlags) => {
      const { buildImage, directorySource, tarSource } = await import('../rafs/index.js')
      let src
      if (f.type === 'dir-rafs') {
        const st = await stat(source).catch((err: Error) => { throw new Error(`source ${source}: ${err.message}`) })
        if (!st.isDirectory()) throw new Error(`source ${source} is not a directory (use --type tar-rafs or targz-rafs for tar files)`)
        src = directorySource(source)
      } else {
        const input = source === '-' ? process.stdin : createReadStream(source)
        src = tarSource(input, { gzip: f.type === 'targz-rafs' ? true : 'auto' })
      }
      const prefetchFiles = f.prefetchFiles !== undefined ? await readPrefetchList(f.prefetchFiles) : undefined
      const res = await buildImage(src, {
        bootstrap: f.bootstrap,
        blobDir: f.blobDir,
        blobCacheDir: f.blobCacheDir,
        compressor: f.compressor,
        digester: f.digester,
        ...(f.chunkSize !== undefined ? { chunkSize: f.chunkSize } : {}),
        prefetchFiles
      })
      const report = {
        version: 'rafspeer',
        fs_version: '6',
        bootstrap: res.bootstrap,
        compressor: f.compressor,
        digester: f.digester,
        chunk_size: '0x' + res.image.chunkSize.toString(16),
        blobs: res.blobs.map((b) => b.blobId),
        blob_details: res.blobs,
        stats: res.stats
      }
      await writeJson(f.outputJson, report)
      if (f.json === true) { process.stdout.write(JSON.stringify(report, null, 2) + '\n'); return }
      const s = res.stats
      process.stdout.write(`bootstrap: ${res.bootstrap}\n`)
      for (const b of res.blobs) {
        process.stdout.write(`blob: ${b.blobId} (${formatBytes(b.size)} stored, ${formatBytes(b.uncompressedSize)} uncompressed, ${b.chunkCount} chunks)${b.viewPath !== undefined ? `\nview: ${b.viewPath}` : ''}\n`)
      }
      if (res.blobs.length === 0) process.stdout.write('blob: none (the tree holds no file data)\n')
      process.stdout.write(`${s.inodes} inodes (${s.files} files, ${s.dirs} dirs, ${s.symlinks} symlinks, ${s.others} others), ${formatBytes(s.dataBytes)} of data, ${s.chunks} chunks (${s.dedupedChunks} deduplicated), ${(s.elapsedMs / 1000).toFixed(2)} s\n`)
    })

  program.command('merge')
    .description('merge per-layer bootstraps (bottom to top) into one, applying OCI whiteouts and opaque directories')
    .argument('<bootstraps...>', 'layer bootstraps, lowest layer first')
    .requiredOption('-B, --bootstrap <file>', 'where to write the merged bootstrap')
    .option('-J, --output-json <file>', 'write a JSON report')
    .action(async (layers: string[], f: { bootstrap: string, outputJson?: string }) => {
      const { mergeBootstraps } = await import('../rafs/index.js')
      const res = await mergeBootstraps(layers, f.bootstrap)
      await writeJson(f.outputJson, { bootstrap: f.bootstrap, layers, blobs: res.blobs })
      process.stdout.write(`bootstrap: ${f.bootstrap}\n${res.blobs.map((b, i) => `blob ${i}: ${b}`).join('\n')}\n`)
    })

  program.command('check')
    .description('validate a bootstrap against every RAFS v6 rule (with blobs, decompress and verify every chunk), or with --image a RAFS image in a registry')
    .argument('[bootstrap]', 'bootstrap file')
    .option('-D, --blob-dir <dir>', 'directory with the data blobs (named by id): verify every chunk')
    .option('--blob-cache-dir <dir>', 'directory with uncompressed views <blob-id>.blob.data: verify every chunk')
    .option('--image <ref>', 'check a RAFS image in a registry: manifest, bootstrap, every blob\'s ToC, ci array and chunk digests, config')
    .option('--source <ref>', 'with --image: the OCI image it was converted from; compare the trees file by file')
    .option('--platform <os/arch>', 'with --image: platform to pick from an index (default: the host\'s)')
    .option('--plain-http', 'with --image: plain HTTP for every registry (loopback registries use it anyway)')
    .option('-J, --output-json <file>', 'write the JSON report')
    .option('--json', 'print the JSON report on stdout')
    .action(async (bootstrap: string | undefined, f: { blobDir?: string, blobCacheDir?: string, outputJson?: string, json?: boolean, image?: string, source?: string, platform?: string, plainHttp?: boolean }) => {
      if (f.image !== undefined) {
        if (bootstrap !== undefined) throw new Error('give either a BOOTSTRAP file or --image REF, not both')
        await runImageCheck(f.image, f)
        return
      }
      if (bootstrap === undefined) throw new Error('check needs a BOOTSTRAP file or --image REF')
      const { checkImage } = await import('../rafs/index.js')
      const report = await checkImage(bootstrap, { blobDir: f.blobDir, blobCacheDir: f.blobCacheDir })
      await writeJson(f.outputJson, report)
      if (f.json === true) process.stdout.write(JSON.stringify(report, null, 2) + '\n')
      else {
        for (const e of report.errors) process.stdout.write(`error: ${e}\n`)
        for (const w of report.warnings) process.stdout.write(`warning: ${w}\n`)
        for (const b of report.blobs) {
          const v = b.chunksVerified !== undefined ? `, ${b.chunksVerified} chunks verified` : ''
          process.stdout.write(`blob ${b.index}: ${b.blobId} ${b.chunkCount} chunks${v}\n`)
        }
        process.stdout.write(report.ok ? `OK: ${bootstrap} is a valid RAFS v6 image\n` : `FAILED: ${report.errors.length} error(s) in ${bootstrap}\n`)
      }
      if (!report.ok) process.exitCode = 1
    })

  program.command('inspect')
    .description('show the superblock, flags, blobs and counts of a bootstrap (and the tree with --tree)')
    .argument('<bootstrap>', 'bootstrap file')
    .option('--tree', 'list every inode with its chunks')
    .option('--json', 'JSON output')
    .action(async (bootstrap: string, f: { tree?: boolean, json?: boolean }) => {
      const { inspectBootstrap, formatInspect } = await import('../rafs/index.js')
      const report = await inspectBootstrap(bootstrap, { tree: f.tree === true })
      process.stdout.write((f.json === true ? JSON.stringify(report, null, 2) : formatInspect(report)) + '\n')
    })

  program.command('unpack')
    .description('extract a RAFS image into a directory or a tar file (every chunk verified)')
    .argument('<bootstrap>', 'bootstrap file')
    .option('-D, --blob-dir <dir>', 'directory with the data blobs (named by id)')
    .option('--blob-cache-dir <dir>', 'directory with uncompressed views <blob-id>.blob.data')
    .requiredOption('-o, --output <path>', 'target directory, or FILE.tar')
    .option('-J, --output-json <file>', 'write a JSON report')
    .action(async (bootstrap: string, f: { blobDir?: string, blobCacheDir?: string, output: string, outputJson?: string }) => {
      const { unpackImage } = await import('../rafs/index.js')
      const res = await unpackImage(bootstrap, f.output, { blobDir: f.blobDir, blobCacheDir: f.blobCacheDir })
      await writeJson(f.outputJson, res)
      for (const w of res.warnings) process.stderr.write(`warning: ${w}\n`)
      process.stdout.write(`${res.output}: ${res.files} files, ${res.dirs} dirs, ${res.symlinks} symlinks, ${res.hardlinks} hard links, ${res.others} others, ${formatBytes(res.bytes)}\n`)
    })
}
