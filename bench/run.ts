/**
 * `npm run bench`: every benchmark, each printed as ratios against a baseline measured in the same run.
 * Usage: node dist/bench/run.js [build] [convert] [--source DIR]
 */
import '../polyfill.js'
import { benchBuild, formatBuildBench } from './build.js'
import { benchConvert, formatConvertBench } from './convert.js'

const args = process.argv.slice(2)
const sourceAt = args.indexOf('--source')
const source = sourceAt >= 0 ? args[sourceAt + 1] : undefined
const which = args.filter((a, i) => !a.startsWith('--') && args[i - 1] !== '--source')
const want = (name: string): boolean => which.length === 0 || which.includes(name)

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
