import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { warmCores } from './warm-cores.js'

const alive = (pid: number): boolean => { try { process.kill(pid, 0); return true } catch { return false } }
/** running: neither gone nor a zombie (an orphan's reaper may be slow to reap) */
const running = async (pid: number): Promise<boolean> => { try { return (await stat(pid))[0] !== 'Z' } catch { return false } }
const stat = async (pid: number): Promise<string[]> => { const s = await readFile(`/proc/${pid}/stat`, 'utf8'); return s.slice(s.lastIndexOf(')') + 2).split(' ') }
const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

test('warm cores: idle-priority loops, out of this process\'s CPU until stopped, gone on stop', async () => {
  const ownChildren = async (): Promise<number> => { const f = await stat(process.pid); return Number(f[13]) + Number(f[14]) }
  const children0 = await ownChildren()
  const warm = await warmCores(2)
  try {
    assert.equal(warm.pids.length, 2)
    for (const pid of warm.pids) {
      const f = await stat(pid)
      // nice (19th field of proc(5), 16th after the command) is 19; policy (41st, 38th after) 5 = SCHED_IDLE
      assert.equal(Number(f[16]), 19)
      if (warm.policy === 'idle') assert.equal(Number(f[38]), 5)
    }
    // they spin: CPU time grows
    const before = await Promise.all(warm.pids.map(async p => { const f = await stat(p); return Number(f[11]) + Number(f[12]) }))
    await sleep(400)
    const after = await Promise.all(warm.pids.map(async p => { const f = await stat(p); return Number(f[11]) + Number(f[12]) }))
    assert.ok(after.some((t, i) => t > before[i]!), `${before} → ${after}`)
    // cutime and cstime (16th, 17th: 13th, 14th after the command) count reaped children only
    assert.equal(await ownChildren(), children0)
  } finally {
    await warm.stop()
  }
  assert.ok(warm.pids.every(p => !alive(p)), 'loops left after stop')
})

test('warm cores: the loops end by themselves when their owner is killed', async () => {
  const mod = fileURLToPath(new URL('./warm-cores.js', import.meta.url))
  const child = spawn(process.execPath, ['--input-type=module', '-e',
    `const { warmCores } = await import(${JSON.stringify(mod)}); const w = await warmCores(2); console.log(w.pids.join(' ')); setInterval(() => {}, 1000)`],
  { stdio: ['ignore', 'pipe', 'inherit'] })
  const pids = await new Promise<number[]>((resolve, reject) => {
    let out = ''
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); if (out.includes('\n')) resolve(out.trim().split(' ').map(Number)) })
    child.on('exit', code => { reject(new Error(`owner exited early: ${code}`)) })
  })
  assert.equal(pids.length, 2)
  assert.ok(pids.every(alive))
  child.kill('SIGKILL')
  let left = pids
  for (let i = 0; i < 50 && left.length > 0; i++) {
    await sleep(100)
    const still = await Promise.all(pids.map(running))
    left = pids.filter((_, j) => still[j])
  }
  assert.deepEqual(left, [], 'loops outlived their owner by 5 s')
})

test('warm cores: zero loops, and counts out of range refused', async () => {
  const none = await warmCores(0)
  assert.deepEqual(none.pids, [])
  await none.stop()
  await assert.rejects(warmCores(-1), RangeError)
  await assert.rejects(warmCores(1.5), RangeError)
})
