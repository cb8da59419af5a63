/** Small CLI plumbing shared by the commands: option parsers, JSON output, error reporting. */
import { writeFile } from 'node:fs/promises'
import { InvalidArgumentError } from 'commander'
import { CompressorCode, DigesterCode, type Compressor, type Digester } from '../rafs/layout.js'

/** Parses a size given in decimal or 0x-hex (nydus-image writes chunk sizes as 0x100000). */
export function parseSize (value: string): number {
  const n = /^0x[0-9a-f]+$/i.test(value) ? parseInt(value.slice(2), 16) : /^\d+$/.test(value) ? parseInt(value, 10) : NaN
  if (!Number.isSafeInteger(n)) throw new InvalidArgumentError(`'${value}' is not a number (decimal or 0x-hex)`)
  return n
}

export function parseCompressor (value: string): Compressor {
  if (value === 'gzip' || !(value in CompressorCode)) throw new InvalidArgumentError(`compressor must be one of zstd, none, lz4_block (got '${value}')`)
  return value as Compressor
}

export function parseDigester (value: string): Digester {
  if (!(value in DigesterCode)) throw new InvalidArgumentError(`digester must be blake3 or sha256 (got '${value}')`)
  return value as Digester
}

export async function writeJson (path: string | undefined, value: unknown): Promise<void> {
  if (path === undefined) return
  await writeFile(path, JSON.stringify(value, null, 2) + '\n')
}

/** Errors reach the user as one line naming the cause; a stack trace only with RAFSPEER_DEBUG=1. */
export function reportError (err: unknown): number {
  const e = err as Error & { code?: string }
  const code = typeof e?.code === 'string' ? ` [${e.code}]` : ''
  process.stderr.write(`rafspeer: error: ${e?.message ?? String(err)}${code}\n`)
  if (process.env.RAFSPEER_DEBUG === '1' && e?.stack !== undefined) process.stderr.write(e.stack + '\n')
  return 1
}

export function formatBytes (n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  let v = n
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++ }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`
}
