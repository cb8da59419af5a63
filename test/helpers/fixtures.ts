/** Where the test fixtures live: `test/fixtures` of this repository (found from the sources and from dist/ alike). */
import { existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

function repoRoot (): string {
  // climb to the directory holding package.json, past dist/
  let dir = dirname(fileURLToPath(import.meta.url))
  while (!existsSync(join(dir, 'package.json')) || dir.endsWith('/dist')) {
    const up = dirname(dir)
    if (up === dir) throw new Error('test fixtures: cannot find the repository root')
    dir = up
  }
  return dir
}

export const REPO_ROOT = repoRoot()
/** Real Nydus-written images (see its README for which nydus-image wrote each file). */
export const NYDUS_FIXTURES = join(REPO_ROOT, 'test', 'fixtures', 'nydus')
