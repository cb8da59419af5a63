/**
 * `npm run bench`: every benchmark, each printed as ratios against a baseline measured in the same run.
 * Usage: node dist/bench/run.js [build] [convert] [warm] [cold] [--source DIR] [--runs N] [--bandwidth MiB/s]
 *   [--only kernel|fuse]
 * `warm` and `cold` need root; they are left out of a bare run (no names) unless it runs as root. `--only` limits
 * `warm` to native plus the kernel targets or plus the FUSE ones.
 */
import '../polyfill.js'
import { benchBuild, formatBuildBench } from './build.js'
import { benchConvert, formatConvertBench } from './convert.js'
import { benchWarmRead, formatWarmRead } from './warm-read.js'
import { benchColdStart, formatColdStart } from './cold-start.js'

const args = process.argv.slice(2)
const sourceAt = args.indexOf('--source')
const source = sourceAt >= 0 ? args[sourceAt + 1] : undefined
const valued = new Set(['--source', '--runs', '--bandwidth', '--only'])
const flag = (name: string): number | undefined => {
  const at = args.indexOf(name)
  if (at < 0) return undefined
  const v = Number(args[at + 1])
  if (!(v > 0)) throw new Error(`${name} wants a positive number, got ${args[at + 1]}`)
  return v
}
const onlyAt = args.indexOf('--only')
const only = onlyAt >= 0 ? args[onlyAt + 1] : undefined
if (only !== undefined && only !== 'kernel' && only !== 'fuse') throw new Error(`--only wants kernel or fuse, got ${only}`)
const runs = flag('--runs')
const bandwidthMiB = flag('--bandwidth')
const which = args.filter((a, i) => !a.startsWith('--') && !valued.has(args[i - 1] ?? ''))
const root = process.getuid?.() === 0
const want = (name: string): boolean => which.includes(name) || (which.length === 0 && (root || !['warm', 'cold'].includes(name)))

if (want('build')) {
  const r = await benchBuild(source)
  process.stdout.write(formatBuildBench(r) + '\n')
  process.stdout.write(JSON.stringify({ bench: 'build', ...r }) + '\n')
}

if (want('convert')) {
  const r = await benchConvert()
  process.stdout.write(formatConvertBench(r) + '\n')
  process.stdout.write(JSON.stringify({ bench: 'convert', ...r }) + '\n')
}

if (want('warm')) {
  const r = await benchWarmRead({ ...(runs !== undefined ? { runs } : {}), ...(only !== undefined ? { only } : {}) })
  process.stdout.write(formatWarmRead(r) + '\n')
  process.stdout.write(JSON.stringify({ bench: 'warm', ...r }) + '\n')
}

if (want('cold')) {
  const r = await benchColdStart({ ...(runs !== undefined ? { runs } : {}), ...(bandwidthMiB !== undefined ? { bandwidth: bandwidthMiB * (1 << 20) } : {}) })
  process.stdout.write(formatColdStart(r) + '\n')
  process.stdout.write(JSON.stringify({ bench: 'cold', ...r }) + '\n')
}
