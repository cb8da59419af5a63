/** Where the shared Nydus fixtures live: `../shared/fixtures/nydus` beside the repository (as in CI). */
import { existsSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

function repoRoot (): string {
  // works from the sources (tsx) and from dist/ alike: climb to the directory holding package.json
  let dir = dirname(fileURLToPath(import.meta.url))
  while (!existsSync(join(dir, 'package.json')) || dir.endsWith('/dist')) {
    const up = dirname(dir)
    if (up === dir) throw new Error('test fixtures: cannot find the repository root')
    dir = up
  }
  return dir
}

export const REPO_ROOT = repoRoot()
export const NYDUS_FIXTURES = process.env.RAFSPEER_FIXTURES ?? resolve(REPO_ROOT, '..', 'shared', 'fixtures', 'nydus')
