/**
 * A node's reader, as its own process: walks a mounted image, hashes every file and prints the content map as
 * JSON on stdout. Readers must not share the orchestrator's process: a read of a FUSE mount holds one of libuv's
 * few pool threads until the daemon answers, and the daemon may be waiting for the embedded registry, which needs
 * those same threads to read its blobs.
 *
 * Usage: node reader.js MOUNTPOINT, or node reader.js - : loaded, it prints `ready` and a newline, then reads the
 * mountpoint from the first line of stdin. The orchestrator starts its readers that way before the reads begin: a
 * spawn blocks its event loop while the kernel copies its memory map (16 readers spawned at the start of the reads
 * held it 2.3 s, and the scheduler it runs answered nobody meanwhile), and a reader loading its modules would count
 * in its node's reading time.
 */
import { pathToFileURL } from 'node:url'
import { contentMap } from './source-tree.js'

async function main (root: string): Promise<void> {
  const map = await contentMap(root)
  process.stdout.write(JSON.stringify([...map]))
}

/** The first line of stdin (without its newline); undefined when stdin ends before one. */
async function firstLine (): Promise<string | undefined> {
  let buf = ''
  for await (const chunk of process.stdin) {
    buf += (chunk as Buffer).toString('utf8')
    const nl = buf.indexOf('\n')
    if (nl >= 0) {
      process.stdin.destroy()
      return buf.slice(0, nl)
    }
  }
  return undefined
}

async function run (arg: string): Promise<void> {
  let root = arg
  if (arg === '-') {
    process.stdout.write('ready\n')
    const line = await firstLine()
    if (line === undefined || line === '') throw new Error('no mountpoint on stdin')
    root = line
  }
  await main(root).catch((err: unknown) => { throw new Error(`reading ${root} failed: ${(err as Error).message}`) })
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const arg = process.argv[2]
  if (arg === undefined) {
    process.stderr.write('usage: reader MOUNTPOINT | reader -\n')
    process.exitCode = 2
  } else {
    run(arg).catch((err: unknown) => {
      process.stderr.write(`${(err as Error).message}\n`)
      process.exitCode = 1
    })
  }
}
