/** The rafspeer package version, from the package.json above this file (the same code runs from dist/ and sources). */
import { existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

let cached: string | undefined

export function packageVersion (): string {
  if (cached !== undefined) return cached
  for (let dir = dirname(fileURLToPath(import.meta.url)); dir !== dirname(dir); dir = dirname(dir)) {
    const p = join(dir, 'package.json')
    if (existsSync(p)) return (cached = (JSON.parse(readFileSync(p, 'utf8')) as { version: string }).version)
  }
  return (cached = '0.0.0')
}
