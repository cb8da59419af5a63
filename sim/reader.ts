/**
 * A node's reader, as its own process: walks a mounted image, hashes every file and prints the content map as
 * JSON on stdout. Readers must not share the orchestrator's process: a read of a FUSE mount holds one of libuv's
 * few pool threads until the daemon answers, and the daemon may be waiting for the embedded registry, which needs
 * those same threads to read its blobs.
 *
 * Usage: node reader.js MOUNTPOINT
 */
import { pathToFileURL } from 'node:url'
import { contentMap } from './source-tree.js'

async function main (root: string): Promise<void> {
  const map = await contentMap(root)
  process.stdout.write(JSON.stringify([...map]))
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const root = process.argv[2]
  if (root === undefined) {
    process.stderr.write('usage: reader MOUNTPOINT\n')
    process.exitCode = 2
  } else {
    main(root).catch((err: unknown) => {
      process.stderr.write(`reading ${root} failed: ${(err as Error).message}\n`)
      process.exitCode = 1
    })
  }
}
