/** Small CLI plumbing shared by the commands: option parsers, JSON output, error reporting. */
import { readFile, writeFile } from 'node:fs/promises'
import { InvalidArgumentError } from 'commander'
import { parseByteSize } from '../base/index.js'
import type { Compressor, Digester } from '../rafs/index.js'

export { formatBytes } from '../base/index.js'

// every choice the format has, checked against its types (gzip chunks are Nydus's legacy: never written)
const COMPRESSORS: Record<Exclude<Compressor, 'gzip'>, true> = { zstd: true, none: true, lz4_block: true }
const DIGESTERS: Record<Digester, true> = { blake3: true, sha256: true }

/** Parses a size: decimal, 0x-hex (nydus-image writes chunk sizes as 0x100000) or with a unit (`1MiB`). */
export function parseSize (value: string): number {
  const n = parseByteSize(value)
  if (n === undefined) throw new InvalidArgumentError(`'${value}' is not a number (decimal or 0x-hex)`)
  return n
}

export function parseCompressor (value: string): Compressor {
  if (!Object.hasOwn(COMPRESSORS, value)) throw new InvalidArgumentError(`compressor must be one of ${Object.keys(COMPRESSORS).join(', ')} (got '${value}')`)
  return value as Compressor
}

export function parseDigester (value: string): Digester {
  if (!Object.hasOwn(DIGESTERS, value)) throw new InvalidArgumentError(`digester must be blake3 or sha256 (got '${value}')`)
  return value as Digester
}

export async function writeJson (path: string | undefined, value: unknown): Promise<void> {
  if (path === undefined) return
  await writeFile(path, JSON.stringify(value, null, 2) + '\n')
}

/** Resolves at the first SIGINT or SIGTERM (a foreground server's run ends there). */
export async function untilSignal (): Promise<void> {
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      process.off('SIGINT', stop)
      process.off('SIGTERM', stop)
      resolve()
    }
    process.once('SIGINT', stop)
    process.once('SIGTERM', stop)
  })
}

/** Errors reach the user as one line naming the cause; a stack trace only with RAFSPEER_DEBUG=1. */
export function reportError (err: unknown): number {
  const e = err as Error & { code?: string }
  const code = typeof e?.code === 'string' ? ` [${e.code}]` : ''
  process.stderr.write(`rafspeer: error: ${e?.message ?? String(err)}${code}\n`)
  if (process.env.RAFSPEER_DEBUG === '1' && e?.stack !== undefined) process.stderr.write(e.stack + '\n')
  return 1
}

/**
 * A prefetch list: one absolute image path per line (`rafspeer access-list` writes them), blank lines and `#`
 * comments skipped; `-` reads stdin.
 */
export async function readPrefetchList (file: string): Promise<string[]> {
  const text = file === '-'
    ? await new Promise<string>((resolve, reject) => {
      let s = ''
      process.stdin.setEncoding('utf8').on('data', (d: string) => { s += d }).on('end', () => resolve(s)).on('error', reject)
    })
    : await readFile(file, 'utf8').catch((err: Error) => { throw new Error(`prefetch list ${file}: ${err.message}`) })
  return text.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'))
}
