/**
 * The daemon's heap growth: which flag it sets and when it leaves node's own; and, in a child node, that V8 honours
 * the factor set at run time (its collections then size the next limit with it), which is what the daemon relies on.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { DEFAULT_HEAP_GROWING_PERCENT, heapGrowingFlag, setHeapGrowth } from './heap.js'

test('heap growth: sets --heap-growing-percent unless node has one; 0 leaves V8 its own', () => {
  const set: string[] = []
  const setFlags = (f: string): void => { set.push(f) }
  assert.deepEqual(setHeapGrowth(300, { execArgv: ['--enable-source-maps'], setFlags }), { state: 'set', percent: 300 })
  assert.deepEqual(set, ['--heap-growing-percent=300'])
  assert.deepEqual(setHeapGrowth(300, { execArgv: ['--heap_growing_percent=50'], setFlags }), { state: 'node-flag', flag: '--heap_growing_percent=50' })
  assert.deepEqual(setHeapGrowth(300, { execArgv: ['--heap-growing-percent', '50'], setFlags }), { state: 'node-flag', flag: '--heap-growing-percent' })
  assert.deepEqual(setHeapGrowth(0, { execArgv: [], setFlags }), { state: 'v8-default' })
  assert.deepEqual(set, ['--heap-growing-percent=300'], 'nothing set after the first')
  assert.throws(() => setHeapGrowth(-1, { setFlags }), RangeError)
  assert.throws(() => setHeapGrowth(2.5, { setFlags }), RangeError)
  assert.equal(heapGrowingFlag(['--heap-growing-percentage=3']), undefined)
  assert.equal(DEFAULT_HEAP_GROWING_PERCENT, 300)
})

test('heap growth: V8 sizes the limits after full collections with the factor set at run time', () => {
  const heapJs = fileURLToPath(new URL('./heap.js', import.meta.url))
  // a child that fills its heap a little, collects, sets the factor, then collects again: V8 prints each limit it
  // computes with the factor it used (`--trace-gc-verbose`: "[HeapController] Limit: old size: …, new limit: … (2.5)")
  const script = `
    const { setHeapGrowth } = await import(${JSON.stringify(heapJs)})
    const keep = []
    const fill = () => { for (let i = 0; i < 200_000; i++) keep.push({ i, s: 'x' + i }) }
    fill(); gc(); gc()
    console.log('--- set:', JSON.stringify(setHeapGrowth(150)))
    fill(); gc(); gc()
    console.log('--- kept', keep.length)
  `
  const r = spawnSync(process.execPath, ['--expose-gc', '--trace-gc-verbose', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 })
  assert.equal(r.status, 0, r.stderr)
  const [before, after] = r.stdout.split('--- set:')
  assert.ok(after !== undefined && after.includes('"state":"set"'), r.stdout.slice(-2000))
  // V8 11 (Node 20) prints the factor it used on the limit's line; later V8s apply the flag before their "factor" line
  const factors = (text: string): string[] => {
    const limits = [...text.matchAll(/\[HeapController\] Limit: .*\(([\d.]+)\)/g)].map(m => m[1]!)
    return limits.length > 0 ? limits : [...text.matchAll(/\[HeapController\] factor ([\d.]+)/g)].map(m => m[1]!)
  }
  assert.ok(factors(before!).length > 0, 'V8 prints the factor of its limits')
  assert.ok(!factors(before!).every(f => f === '2.5'), `before: ${factors(before!).join(' ')}`)
  const set = factors(after)
  assert.ok(set.length >= 2, `after: ${set.join(' ')}`)
  assert.ok(set.every(f => f === '2.5'), `every limit after the call grows 2.5×: ${set.join(' ')}`)
})
