/**
 * `npm run bench`: every benchmark, each printed as ratios against a baseline measured in the same run.
 * Usage: node dist/bench/run.js [build] [convert] [warm] [cold] [cold-read] [p2p] [chunk-requests] [scheduler] [directory] [swarm] [mirror] [start] [attack] [--source DIR]
 *   [--runs N] [--bandwidth MiB/s] [--only kernel|fuse|lazy] [--tree DIR] [--fio-only] [--mode auto|fuse|erofs-lazy] [--nodes N] [--image-size MiB] [--fetch-only] [--mirrored-only] [--logs DIR]
 *   [--baseline-cli PATH]
 * `warm`, `cold` and `swarm` need root; they are left out of a bare run (no names) unless it runs as root. `--only`
 * limits `warm` to native plus the kernel targets, the FUSE ones or erofs-lazy; `--tree DIR` makes a copy of DIR
 * (e.g. the Linux source from Debian's linux-source-6.1) its small-file tree; `--fio-only` runs its fio workloads
 * alone (no small-file tree, no tar), to iterate quickly. `--bandwidth` caps the registry in `cold`,
 * whose `--baseline-cli PATH` times another build's `cli/main.js` in the same rounds, alternately with ours;
 * and the registry and every node in `swarm` (default 4 MiB/s, 8 nodes, 64 MiB), the registry in `mirror` (default 32 MiB/s,
 * 4 nodes with containerd each, 256 MiB). `start` (root) times an end-to-end container start, pull to first output line,
 * of a python3 image through overlayfs vs the rafspeer snapshotter (FUSE and auto); `--bandwidth` caps its registry
 * (default 50 MiB/s), `--runs` repeats its cold starts (default 1). `directory` compares the in-memory swarm directory
 * with the Redis Cluster one on a 3-master cluster it starts here (its Redis half is skipped without redis-server).
 * `attack` (named only) floods a default scheduler with fake identities and reports its memory and honest look-ups.
 * `credibility` (named only, root) runs the real `rafspeer sim` and the model with the same parameters side by side:
 *   `credibility [--nodes 2,4,8] [--bandwidth 4MiB,16MiB] [--image-size 64MiB] [--directory blobs|chunks] [--prefetch all]
 *   [--cold-calibration] [--calibration-nodes 3,6|none]` (lists of counts and sizes here; a bare size is MiB, as
 *   elsewhere). Before the compared runs it calibrates the model's CPU on this machine (per cap: one node alone, one
 *   node reading everything from another, swarms of 3 and 6 nodes; beside idle-priority loops keeping the cores warm
 *   unless `--cold-calibration`) and says what it fitted.
 */
import '../polyfill.js'
import { benchBuild, formatBuildBench } from './build.js'
import { benchConvert, formatConvertBench } from './convert.js'
import { benchWarmRead, formatWarmRead } from './warm-read.js'
import { benchColdStart, formatColdStart } from './cold-start.js'
import { benchColdRead, formatColdRead } from './cold-read.js'
import { benchSwarm, formatSwarmBench } from './swarm.js'
import { benchChunkExchange, formatChunkExchange } from './chunk-exchange.js'
import { benchChunkRequests, formatChunkRequests } from './chunk-requests.js'
import { benchScheduler, formatSchedulerBench } from './scheduler.js'
import { benchDirectory, formatDirectoryBench } from './directory.js'
import { benchMirror, formatMirrorBench } from './mirror.js'
import { benchContainerStart, formatContainerStart } from './container-start.js'
import { benchAttack, formatAttackBench } from './attack.js'
import { benchCredibility, formatCredibilityBench } from './credibility.js'
import { parseByteSize } from '../base/index.js'

const args = process.argv.slice(2)
const sourceAt = args.indexOf('--source')
const source = sourceAt >= 0 ? args[sourceAt + 1] : undefined
const valued = new Set(['--mode', '--tree', '--source', '--runs', '--bandwidth', '--only', '--nodes', '--image-size', '--logs', '--baseline-cli', '--directory', '--prefetch'])
const flag = (name: string): number | undefined => {
  const at = args.indexOf(name)
  if (at < 0) return undefined
  const v = Number(args[at + 1])
  if (!(v > 0)) throw new Error(`${name} wants a positive number, got ${args[at + 1]}`)
  return v
}
const onlyAt = args.indexOf('--only')
const only = onlyAt >= 0 ? args[onlyAt + 1] : undefined
if (only !== undefined && only !== 'kernel' && only !== 'fuse' && only !== 'lazy') throw new Error(`--only wants kernel, fuse or lazy, got ${only}`)
/** a comma-separated list of sizes (a bare number is MiB) */
const sizes = (name: string): number[] | undefined => {
  const at = args.indexOf(name)
  if (at < 0) return undefined
  return (args[at + 1] ?? '').split(',').map(v => {
    const n = /^\d+(\.\d+)?$/.test(v.trim()) ? Number(v) * (1 << 20) : parseByteSize(v)
    if (n === undefined || !(n > 0)) throw new Error(`${name} wants sizes such as 4MiB,16MiB, got ${args[at + 1]}`)
    return n
  })
}
const runs = flag('--runs')
const which = args.filter((a, i) => !a.startsWith('--') && !valued.has(args[i - 1] ?? ''))
// credibility reads --bandwidth as a list of sizes; the others as one number of MiB
const bandwidthMiB = which.length === 1 && which[0] === 'credibility' ? undefined : flag('--bandwidth')
const root = process.getuid?.() === 0
const want = (name: string): boolean => which.includes(name) || (which.length === 0 && name !== 'attack' && name !== 'credibility' && (root || !['warm', 'cold', 'cold-read', 'swarm', 'mirror', 'start'].includes(name)))

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
  const treeAt = args.indexOf('--tree')
  const r = await benchWarmRead({
    ...(runs !== undefined ? { runs } : {}), ...(only !== undefined ? { only } : {}), ...(treeAt >= 0 ? { smallTree: args[treeAt + 1]! } : {}),
    fioOnly: args.includes('--fio-only')
  })
  process.stdout.write(formatWarmRead(r) + '\n')
  process.stdout.write(JSON.stringify({ bench: 'warm', ...r }) + '\n')
}

if (want('cold')) {
  const modeAt = args.indexOf('--mode')
  const mountMode = modeAt >= 0 ? args[modeAt + 1] as 'auto' | 'fuse' | 'erofs-lazy' : undefined
  const baselineAt = args.indexOf('--baseline-cli')
  const baselineCli = baselineAt >= 0 ? args[baselineAt + 1] : undefined
  const r = await benchColdStart({
    ...(runs !== undefined ? { runs } : {}), ...(bandwidthMiB !== undefined ? { bandwidth: bandwidthMiB * (1 << 20) } : {}), ...(mountMode !== undefined ? { mountMode } : {}),
    ...(baselineCli !== undefined ? { baselineCli } : {})
  })
  process.stdout.write(formatColdStart(r) + '\n')
  process.stdout.write(JSON.stringify({ bench: 'cold', ...r }) + '\n')
}

if (want('cold-read')) {
  const imageMiB = flag('--image-size')
  const modeAt = args.indexOf('--mode')
  const mountMode = modeAt >= 0 ? args[modeAt + 1] as 'auto' | 'fuse' | 'erofs-lazy' : undefined
  const r = await benchColdRead({ ...(runs !== undefined ? { runs } : {}), ...(imageMiB !== undefined ? { imageBytes: imageMiB * (1 << 20) } : {}), ...(mountMode !== undefined ? { mountMode } : {}) })
  process.stdout.write(formatColdRead(r) + '\n')
  process.stdout.write(JSON.stringify({ bench: 'cold-read', ...r }) + '\n')
}

if (want('p2p')) {
  const r = await benchChunkExchange()
  process.stdout.write(formatChunkExchange(r) + '\n')
  process.stdout.write(JSON.stringify({ bench: 'p2p', ...r }) + '\n')
}

if (want('chunk-requests')) {
  const r = await benchChunkRequests({ ...(runs !== undefined ? { runs } : {}) })
  process.stdout.write(formatChunkRequests(r) + '\n')
  process.stdout.write(JSON.stringify({ bench: 'chunk-requests', ...r }) + '\n')
}

if (want('scheduler')) {
  const r = await benchScheduler()
  process.stdout.write(formatSchedulerBench(r) + '\n')
  process.stdout.write(JSON.stringify({ bench: 'scheduler', ...r }) + '\n')
}

if (want('directory')) {
  const r = await benchDirectory()
  process.stdout.write(formatDirectoryBench(r) + '\n')
  process.stdout.write(JSON.stringify({ bench: 'directory', ...r }) + '\n')
}

if (want('swarm')) {
  const nodes = flag('--nodes')
  const imageMiB = flag('--image-size')
  const r = await benchSwarm({
    ...(nodes !== undefined ? { nodes } : {}),
    ...(imageMiB !== undefined ? { imageBytes: imageMiB * (1 << 20) } : {}),
    ...(bandwidthMiB !== undefined ? { bandwidth: bandwidthMiB * (1 << 20) } : {}),
    log: line => { process.stderr.write(line + '\n') }
  })
  process.stdout.write(formatSwarmBench(r) + '\n')
  process.stdout.write(JSON.stringify({ bench: 'swarm', ...r }) + '\n')
}

if (want('mirror')) {
  const nodes = flag('--nodes')
  const imageMiB = flag('--image-size')
  const r = await benchMirror({
    ...(nodes !== undefined ? { nodes } : {}),
    ...(imageMiB !== undefined ? { imageBytes: imageMiB * (1 << 20) } : {}),
    ...(bandwidthMiB !== undefined ? { bandwidth: bandwidthMiB * (1 << 20) } : {}),
    fetchOnly: args.includes('--fetch-only'),
    mirroredOnly: args.includes('--mirrored-only'),
    ...(args.includes('--logs') ? { logsDir: args[args.indexOf('--logs') + 1]! } : {}),
    log: line => { process.stderr.write(line + '\n') }
  })
  process.stdout.write(formatMirrorBench(r) + '\n')
  process.stdout.write(JSON.stringify({ bench: 'mirror', ...r }) + '\n')
}

if (want('start')) {
  const r = await benchContainerStart({
    ...(runs !== undefined ? { runs } : {}),
    ...(bandwidthMiB !== undefined ? { bandwidth: bandwidthMiB * (1 << 20) } : {}),
    ...(args.includes('--logs') ? { logsDir: args[args.indexOf('--logs') + 1]! } : {}),
    log: line => { process.stderr.write(line + '\n') }
  })
  process.stdout.write(formatContainerStart(r) + '\n')
  process.stdout.write(JSON.stringify({ bench: 'start', ...r }) + '\n')
}

if (want('attack')) {
  const r = await benchAttack()
  process.stdout.write(formatAttackBench(r) + '\n')
  process.stdout.write(JSON.stringify({ bench: 'attack', ...r }) + '\n')
}

if (want('credibility')) {
  const nodesAt = args.indexOf('--nodes')
  const nodes = nodesAt >= 0 ? (args[nodesAt + 1] ?? '').split(',').map(Number) : undefined
  if (nodes !== undefined && !nodes.every(n => Number.isInteger(n) && n >= 1 && n <= 64)) throw new Error(`--nodes wants counts from 1 to 64 such as 2,4,8, got ${args[nodesAt + 1]}`)
  const directoryAt = args.indexOf('--directory')
  const directory = directoryAt >= 0 ? args[directoryAt + 1] : undefined
  if (directory !== undefined && directory !== 'blobs' && directory !== 'chunks') throw new Error(`--directory wants blobs or chunks, got ${directory}`)
  const imageBytes = sizes('--image-size')?.[0]
  const bandwidths = sizes('--bandwidth')
  const prefetchAt = args.indexOf('--prefetch')
  const prefetch = prefetchAt >= 0 ? args[prefetchAt + 1] : undefined
  if (prefetch !== undefined && prefetch !== 'all' && prefetch !== 'none') throw new Error(`--prefetch wants all or none, got ${prefetch}`)
  const calAt = args.indexOf('--calibration-nodes')
  const calibrationNodes = calAt >= 0 ? (args[calAt + 1] ?? '').split(',').filter(x => x !== '' && x !== 'none').map(Number) : undefined
  const r = await benchCredibility({
    ...(calibrationNodes !== undefined ? { calibrationNodes } : {}),
    ...(args.includes('--cold-calibration') ? { warmCalibration: false } : {}),
    ...(prefetch !== undefined ? { prefetch } : {}),
    ...(nodes !== undefined ? { nodes } : {}),
    ...(bandwidths !== undefined ? { bandwidths } : {}),
    ...(imageBytes !== undefined ? { imageBytes } : {}),
    ...(directory !== undefined ? { directory } : {}),
    log: line => { process.stderr.write(line + '\n') }
  })
  process.stdout.write(formatCredibilityBench(r) + '\n')
  process.stdout.write(JSON.stringify({ bench: 'credibility', ...r }) + '\n')
}
